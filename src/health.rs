//! One endpoint's health: `up → suspect → down → probing → up`, its consecutive
//! failures and its backoff. Pure: every input carries `now`.

use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Rng};
use crate::event::Cause;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// In rotation.
    Up,
    /// A connection on it died in a way that smells of a sick path; replacements go
    /// elsewhere while any endpoint is up, and its own connections are pinged now.
    Suspect,
    /// `down_after` consecutive failures; only probed, one attempt at a time, on backoff.
    Down,
    /// A probe connection is in flight; back to up once the probe passes a heartbeat.
    Probing,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Suspect => "suspect",
            State::Down => "down",
            State::Probing => "probing",
        }
    }
}

/// A change worth telling the operator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Suspect,
    Down,
    /// Back in rotation; `since` is when it left.
    Up {
        from: State,
        since: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    /// When the current state began.
    since: Instant,
    /// When it last left `Up` (suspect, down and probing are one outage).
    out_since: Instant,
    failures: u32,
    down_after: u32,
    backoff: Backoff,
    backoff_reset: Duration,
    next_attempt: Instant,
    healthy_since: Option<Instant>,
}

impl Health {
    pub fn new(down_after: u32, backoff: Backoff, backoff_reset: Duration, now: Instant) -> Health {
        Health {
            state: State::Up,
            since: now,
            out_since: now,
            failures: 0,
            down_after: down_after.max(1),
            backoff,
            backoff_reset,
            next_attempt: now,
            healthy_since: None,
        }
    }

    /// New limits from a reload. The state stays; a changed backoff starts over.
    pub fn retune(&mut self, down_after: u32, backoff: Backoff, backoff_reset: Duration) {
        self.down_after = down_after.max(1);
        self.backoff_reset = backoff_reset;
        if !self.backoff.same_bounds(&backoff) {
            self.backoff = backoff;
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// When the current outage began (suspect, down and probing are one); `None`
    /// while in rotation.
    pub fn out_since(&self) -> Option<Instant> {
        (self.state != State::Up).then_some(self.out_since)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the next attempt may start, if the endpoint is being paced.
    pub fn next_attempt(&self) -> Option<Instant> {
        (self.state != State::Up).then_some(self.next_attempt)
    }

    fn enter(&mut self, state: State, now: Instant) {
        if self.state == State::Up {
            self.out_since = now;
        }
        self.state = state;
        self.since = now;
    }

    /// A connect attempt failed, or a connection died in a way that counts against the
    /// endpoint. Schedules the next attempt on the backoff.
    pub fn failed(&mut self, cause: &Cause, now: Instant, rng: &mut Rng) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        self.healthy_since = None;
        self.next_attempt = now + self.backoff.next_delay(rng);
        match self.state {
            State::Down => None,
            State::Probing => {
                // The probe failed: back to waiting, quietly (the endpoint was down already).
                self.enter(State::Down, now);
                None
            }
            _ if self.failures >= self.down_after => {
                self.enter(State::Down, now);
                Some(Transition::Down)
            }
            State::Up if cause.suspects_endpoint() || cause.is_connect_failure() => {
                self.enter(State::Suspect, now);
                Some(Transition::Suspect)
            }
            _ => None,
        }
    }

    /// A connection that had been up died in a way that counts against the endpoint.
    /// While the endpoint is in rotation (or suspect) that is a failure like any other;
    /// once it is out, the deaths of connections made before are counted but neither
    /// pace the next probe further nor end a probe in flight: the thousand connections
    /// one upstream restart drops are one sign, not a thousand steps of backoff.
    pub fn lost(&mut self, cause: &Cause, now: Instant, rng: &mut Rng) -> Option<Transition> {
        match self.state {
            State::Up | State::Suspect => self.failed(cause, now, rng),
            State::Down | State::Probing => {
                self.failures = self.failures.saturating_add(1);
                self.healthy_since = None;
                None
            }
        }
    }

    /// A heartbeat sent at `sent` came back. Pongs to pings sent before the endpoint fell
    /// from grace prove nothing about it now.
    pub fn passed_heartbeat(&mut self, sent: Instant, now: Instant) -> Option<Transition> {
        if self.state != State::Up && sent < self.since {
            return None;
        }
        self.failures = 0;
        self.healthy_since.get_or_insert(now);
        if self.state == State::Up {
            return None;
        }
        let (from, since) = (self.state, self.out_since);
        self.enter(State::Up, now);
        Some(Transition::Up { from, since })
    }

    /// Whether a new connection may be attempted now, given the attempts in flight.
    pub fn may_attempt(&self, now: Instant, in_flight: u32) -> bool {
        match self.state {
            State::Up => true,
            State::Suspect | State::Down => in_flight == 0 && now >= self.next_attempt,
            State::Probing => false,
        }
    }

    /// An attempt starts; on a down endpoint it is the probe.
    pub fn attempting(&mut self, now: Instant) {
        if self.state == State::Down {
            self.enter(State::Probing, now);
        }
    }

    /// The probe was closed by us before it could pass or fail (retired, or its pool
    /// reconfigured): back to waiting, with the next probe due as already scheduled.
    pub fn abandoned(&mut self, now: Instant) {
        if self.state == State::Probing {
            self.enter(State::Down, now);
        }
    }

    /// The backoff starts over only after the endpoint stayed healthy for
    /// `backoff_reset`, so a flapping endpoint keeps being paced.
    pub fn tick(&mut self, now: Instant) {
        if let Some(since) = self.healthy_since
            && now.saturating_duration_since(since) >= self.backoff_reset
        {
            self.backoff.reset();
        }
    }

    /// The ceiling of the next backoff delay (for log lines).
    pub fn backoff_ceiling(&self) -> Duration {
        self.backoff.ceiling()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn health(now: Instant) -> Health {
        Health::new(3, Backoff::new(ms(100), ms(10_000)), ms(30_000), now)
    }

    #[test]
    fn heartbeat_timeout_makes_an_up_endpoint_suspect_at_once() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        assert_eq!(
            h.failed(&Cause::HeartbeatTimeout, t0, &mut rng),
            Some(Transition::Suspect)
        );
        assert_eq!(h.state(), State::Suspect);
    }

    #[test]
    fn consecutive_failures_take_it_down_and_one_probe_at_a_time_follows() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        h.failed(&Cause::Refused, t0, &mut rng);
        assert_eq!(h.failed(&Cause::Refused, t0, &mut rng), None);
        assert_eq!(
            h.failed(&Cause::Refused, t0, &mut rng),
            Some(Transition::Down)
        );
        let due = h.next_attempt().unwrap();
        assert!(!h.may_attempt(due - ms(1), 0) || due == t0);
        assert!(h.may_attempt(due, 0));
        assert!(!h.may_attempt(due, 1), "one attempt in flight at most");
        h.attempting(due);
        assert_eq!(h.state(), State::Probing);
        assert!(!h.may_attempt(due + ms(60_000), 0));
        // The probe fails: down again, quietly, further out.
        assert_eq!(h.failed(&Cause::Refused, due, &mut rng), None);
        assert_eq!(h.state(), State::Down);
        assert!(h.backoff_ceiling() >= ms(800));
    }

    #[test]
    fn a_thousand_deaths_at_once_pace_the_next_probe_like_the_first_few() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            h.lost(&Cause::Reset, t0, &mut rng);
        }
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.failures(), 1000);
        // Three steps of a 100 ms backoff (down_after = 3), not a thousand: well
        // under the 10 s ceiling.
        let due = h.next_attempt().unwrap();
        assert!(due <= t0 + ms(1_000), "next probe {:?} out", due - t0);
        h.attempting(due);
        // An old connection dying while the probe is out does not end the probe.
        assert_eq!(h.lost(&Cause::Reset, due, &mut rng), None);
        assert_eq!(h.state(), State::Probing);
    }

    #[test]
    fn a_probe_that_passes_a_heartbeat_brings_it_back_up() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        for _ in 0..3 {
            h.failed(&Cause::Refused, t0, &mut rng);
        }
        let t1 = t0 + ms(20_000);
        h.attempting(t1);
        let t2 = t1 + ms(5);
        assert_eq!(
            h.passed_heartbeat(t2, t2 + ms(1)),
            Some(Transition::Up {
                from: State::Probing,
                since: t0
            })
        );
        assert_eq!(h.failures(), 0);
        assert!(h.may_attempt(t2, 5));
    }

    #[test]
    fn a_pong_to_a_ping_sent_before_the_suspicion_proves_nothing() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        let ping_sent = t0 + ms(10);
        h.failed(&Cause::Reset, t0 + ms(20), &mut rng);
        assert_eq!(h.passed_heartbeat(ping_sent, t0 + ms(30)), None);
        assert_eq!(h.state(), State::Suspect);
        assert!(h.passed_heartbeat(t0 + ms(40), t0 + ms(41)).is_some());
    }

    #[test]
    fn backoff_resets_only_after_staying_healthy() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        for _ in 0..5 {
            h.failed(&Cause::Refused, t0, &mut rng);
        }
        let grown = h.backoff_ceiling();
        h.passed_heartbeat(t0 + ms(1), t0 + ms(1));
        h.tick(t0 + ms(29_000));
        assert_eq!(
            h.backoff_ceiling(),
            grown,
            "flapping endpoint keeps its pace"
        );
        h.tick(t0 + ms(30_002));
        assert_eq!(h.backoff_ceiling(), ms(100));
    }

    #[test]
    fn a_clean_close_by_the_upstream_is_not_a_suspicion() {
        let t0 = Instant::now();
        let mut h = health(t0);
        let mut rng = Rng::new(3);
        assert_eq!(
            h.failed(&Cause::Closed(1000, String::new()), t0, &mut rng),
            None
        );
        assert_eq!(h.state(), State::Up);
    }
}
