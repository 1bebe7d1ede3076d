//! Record sinks: destinations fed from the spool through a [`Cursor`].
//!
//! Every sink follows the same contract: read a batch from its cursor,
//! deliver it, and [`Cursor::commit`] only after the destination
//! acknowledged. Failures are retried with [`Backoff`]; nothing is lost while
//! a destination is down, because the spool keeps what was not committed.
//!
//! [`Cursor`]: crate::store::Cursor
//! [`Cursor::commit`]: crate::store::Cursor::commit
use std::time::Duration;

pub mod clickhouse;
pub mod otlp;

pub use self::clickhouse::{query_records, ClickHouseSink, SinkError};

/// Exponential backoff with "equal jitter": the n-th delay is uniformly
/// drawn from `[d/2, d]` where `d = min(max, base * 2^n)`, so retries of many
/// agents against one recovering server spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = crate::record::now_unix_nanos() as u64 ^ (&base as *const _ as u64);
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: jitter needs no cryptographic quality.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        exp.mul_f64(0.5 + 0.5 * frac)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        for x in &d[5..] {
            assert!(
                *x >= Duration::from_secs(1) && *x <= Duration::from_secs(2),
                "{x:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
