//! Exponential backoff with full jitter, kept per endpoint, and the small random source
//! it draws from. Pure: the caller passes the random source and keeps the clock.

use std::time::Duration;

/// A xorshift64* generator: enough to spread reconnects, cheap, and seedable in tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero forever.
        Rng(seed | 1)
    }

    /// Seeded from the clock and the process id, for the daemon.
    pub fn from_entropy() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `base` doubling per failure up to `max`; each delay is drawn uniformly from
/// `[0, ceiling]` ("full jitter"), so a thousand connections that failed together do not
/// come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The same bounds as `other` (whatever the progress).
    pub fn same_bounds(&self, other: &Backoff) -> bool {
        self.base == other.base && self.max == other.max
    }

    /// The ceiling the next delay is drawn under.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Draw the next delay and double the ceiling for the one after.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rng.unit())
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_base_and_caps_at_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = Rng::new(7);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_spread_out() {
        let mut rng = Rng::new(42);
        let mut delays = Vec::new();
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            delays.push(b.next_delay(&mut rng));
        }
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        let late = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(750))
            .count();
        // Uniform: about a quarter each; far from all-at-once.
        assert!((150..350).contains(&early), "early={early}");
        assert!((150..350).contains(&late), "late={late}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
