//! How long a failed job stays hidden before SQS delivers it again: exponential backoff on
//! `ApproximateReceiveCount` with "equal jitter", capped, never shorter than the service's
//! `Retry-After`.
//!
//! | Receive | Window (defaults: base 30 s, cap 900 s) |
//! |---|---|
//! | 1 | 15–30 s |
//! | 2 | 30–60 s |
//! | 3 | 60–120 s |
//! | 4 | 120–240 s |
//! | 5 | 240–480 s |
//! | 6+ | 450–900 s |
//!
//! Each window starts where the previous one ends, so the delays grow whatever the jitter; the
//! jitter spreads jobs that failed together (one CRM outage) over half the window. The jitter
//! source is passed in ([`Jitter`]), so tests are deterministic.

use std::time::Duration;

/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// The backoff of a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The upper end of the first window; doubles per receive.
    pub base: Duration,
    /// The longest backoff (a `Retry-After` may ask for more).
    pub max: Duration,
}

impl Backoff {
    /// The default first backoff, as the webhook functions' first retry.
    pub const DEFAULT_BASE: Duration = Duration::from_secs(30);
    /// The default cap (15 minutes, as the webhook functions' longest retry delay).
    pub const DEFAULT_MAX: Duration = Duration::from_secs(900);

    /// The visibility timeout after the `receive_count`-th delivery failed (1 for the first),
    /// with `jitter` in `[0, 1]` (clamped) picking a point in the upper half of the window, at
    /// least `retry_after`, at most [`MAX_VISIBILITY`].
    pub fn delay(
        &self,
        receive_count: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(20);
        let window = self.base.saturating_mul(1 << exponent).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = window / 2;
        let delay = half + (window - half).mul_f64(jitter);
        delay
            .max(retry_after.unwrap_or_default())
            .min(MAX_VISIBILITY)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Self::DEFAULT_BASE,
            max: Self::DEFAULT_MAX,
        }
    }
}

/// A source of jitter: a fraction in `[0, 1]`.
pub trait Jitter: Send + Sync {
    /// The next fraction.
    fn fraction(&self) -> f64;
}

/// Random jitter: a uniform fraction in `[0, 1)` from `fastrand`'s thread-local generator (not
/// cryptographic: it only spreads retries).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn fraction(&self) -> f64 {
        fastrand::f64()
    }
}

/// The same fraction every time (tests, and `0.0` for "no jitter").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn fraction(&self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_double_per_receive_until_the_cap() {
        let backoff = Backoff::default();
        let top: Vec<_> = (1..=7).map(|n| backoff.delay(n, None, 1.0)).collect();
        assert_eq!(
            top,
            [
                secs(30),
                secs(60),
                secs(120),
                secs(240),
                secs(480),
                secs(900),
                secs(900)
            ]
        );
        let bottom: Vec<_> = (1..=7).map(|n| backoff.delay(n, None, 0.0)).collect();
        assert_eq!(
            bottom,
            [
                secs(15),
                secs(30),
                secs(60),
                secs(120),
                secs(240),
                secs(450),
                secs(450)
            ]
        );
        assert_eq!(backoff.delay(0, None, 1.0), secs(30), "0 counts as 1");
        assert_eq!(backoff.delay(u32::MAX, None, 1.0), secs(900), "no overflow");
    }

    #[test]
    fn delays_never_shrink_whatever_the_jitter() {
        let backoff = Backoff::default();
        for n in 1..12 {
            let worst_next = backoff.delay(n + 1, None, 0.0);
            let best_this = backoff.delay(n, None, 1.0);
            assert!(worst_next >= best_this.min(backoff.max / 2), "receive {n}");
            assert!(backoff.delay(n, None, 1.0) <= backoff.max);
        }
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_window() {
        let backoff = Backoff::default();
        let random = RandomJitter;
        for _ in 0..200 {
            let fraction = random.fraction();
            assert!((0.0..=1.0).contains(&fraction), "{fraction}");
            let delay = backoff.delay(3, None, fraction);
            assert!((secs(60)..=secs(120)).contains(&delay), "{delay:?}");
        }
        assert_eq!(backoff.delay(3, None, -4.0), secs(60), "clamped");
        assert_eq!(backoff.delay(3, None, 9.0), secs(120), "clamped");
        assert_eq!(backoff.delay(3, None, f64::NAN), secs(60));
        assert_eq!(backoff.delay(2, None, 0.5), secs(45));
    }

    #[test]
    fn retry_after_is_honoured_even_beyond_the_cap_up_to_twelve_hours() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1, Some(secs(120)), 0.0), secs(120));
        assert_eq!(
            backoff.delay(5, Some(secs(10)), 1.0),
            secs(480),
            "a short Retry-After does not shorten the backoff"
        );
        assert_eq!(backoff.delay(1, Some(secs(3600)), 0.0), secs(3600));
        assert_eq!(backoff.delay(1, Some(secs(86_400)), 0.0), MAX_VISIBILITY);
    }

    #[test]
    fn a_custom_backoff_applies_its_own_base_and_cap() {
        let backoff = Backoff {
            base: secs(2),
            max: secs(10),
        };
        let delays: Vec<_> = (1..=5).map(|n| backoff.delay(n, None, 1.0)).collect();
        assert_eq!(delays, [secs(2), secs(4), secs(8), secs(10), secs(10)]);
    }
}
