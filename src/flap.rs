//! Flap damping, as BGP damps routes: each time an endpoint leaves rotation its
//! penalty grows by one, and the penalty halves every half-life. Above `suppress` the
//! endpoint is damped (kept out of rotation while another can serve); it returns once
//! the penalty decays below `reuse`. Pure: every input carries `now`.

use std::time::{Duration, Instant};

/// The pool's thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Damping {
    pub half_life: Duration,
    pub suppress: f64,
    pub reuse: f64,
}

/// One endpoint's penalty.
#[derive(Debug, Clone)]
pub struct Penalty {
    value: f64,
    at: Instant,
    damped: bool,
    /// Times it left rotation, ever.
    flaps: u32,
}

impl Penalty {
    pub fn new(now: Instant) -> Penalty {
        Penalty {
            value: 0.0,
            at: now,
            damped: false,
            flaps: 0,
        }
    }

    /// The penalty decayed to `now`.
    pub fn value(&self, d: &Damping, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(elapsed / d.half_life.as_secs_f64().max(1e-9))
    }

    pub fn damped(&self) -> bool {
        self.damped
    }

    pub fn flaps(&self) -> u32 {
        self.flaps
    }

    /// The endpoint left rotation. Returns true if that damps it.
    pub fn flap(&mut self, d: &Damping, now: Instant) -> bool {
        self.value = self.value(d, now) + 1.0;
        self.at = now;
        self.flaps = self.flaps.saturating_add(1);
        if !self.damped && self.value >= d.suppress {
            self.damped = true;
            return true;
        }
        false
    }

    /// Returns true if the penalty has decayed below `reuse`, releasing the endpoint.
    pub fn release(&mut self, d: &Damping, now: Instant) -> bool {
        if self.damped && self.value(d, now) < d.reuse {
            self.damped = false;
            return true;
        }
        false
    }

    /// When a damped endpoint's penalty reaches `reuse`.
    pub fn release_at(&self, d: &Damping) -> Option<Instant> {
        if !self.damped || self.value <= d.reuse {
            return self.damped.then_some(self.at);
        }
        let halvings = (self.value / d.reuse).log2();
        Some(self.at + d.half_life.mul_f64(halvings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAMPING: Damping = Damping {
        half_life: Duration::from_secs(60),
        suppress: 3.0,
        reuse: 1.0,
    };

    #[test]
    fn the_penalty_halves_every_half_life() {
        let t0 = Instant::now();
        let mut p = Penalty::new(t0);
        p.flap(&DAMPING, t0);
        p.flap(&DAMPING, t0);
        assert!((p.value(&DAMPING, t0) - 2.0).abs() < 1e-9);
        let later = t0 + Duration::from_secs(60);
        assert!((p.value(&DAMPING, later) - 1.0).abs() < 1e-9);
        assert!((p.value(&DAMPING, later + Duration::from_secs(120)) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn rapid_flaps_damp_and_a_quiet_spell_releases_at_the_predicted_time() {
        let t0 = Instant::now();
        let mut p = Penalty::new(t0);
        let s = Duration::from_secs;
        assert!(!p.flap(&DAMPING, t0));
        assert!(!p.flap(&DAMPING, t0 + s(5)));
        assert!(!p.flap(&DAMPING, t0 + s(10)), "2.8: not yet");
        assert!(
            p.flap(&DAMPING, t0 + s(15)),
            "a fourth flap within seconds damps"
        );
        assert!(p.damped());
        assert!(!p.flap(&DAMPING, t0 + s(20)), "damped once, not again");
        assert_eq!(p.flaps(), 5);
        let release = p.release_at(&DAMPING).unwrap();
        // About 4.5 at 20 s: log2(4.5) ≈ 2.2 half-lives later.
        let wait = release - (t0 + s(20));
        assert!((s(125)..s(135)).contains(&wait), "{wait:?}");
        assert!(!p.release(&DAMPING, release - Duration::from_millis(10)));
        assert!(p.release(&DAMPING, release + Duration::from_millis(10)));
        assert!(!p.damped());
        assert_eq!(p.release_at(&DAMPING), None);
    }

    #[test]
    fn slow_flaps_never_damp() {
        let t0 = Instant::now();
        let mut p = Penalty::new(t0);
        // One flap every two minutes settles near 1.33: below suppress for ever.
        for i in 0..50 {
            assert!(!p.flap(&DAMPING, t0 + Duration::from_secs(120 * i)));
        }
        assert!(p.value(&DAMPING, t0 + Duration::from_secs(120 * 49)) < 1.5);
    }
}
