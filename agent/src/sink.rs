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

pub use self::clickhouse::{query_records, ClickHouseConfig, ClickHouseSink, SinkError};

/// `${NAME}` in a config value could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("environment variable {0} (referenced as ${{{0}}}) is not set")]
    Missing(String),
    #[error("unterminated ${{ in {0:?}")]
    Unterminated(String),
}

/// Expands `${NAME}` references from the process environment (`$$` is a
/// literal `$`; a lone `$` is kept). Used for credentials in the config so
/// secrets can come from a Kubernetes Secret via env vars.
pub fn expand_env(s: &str) -> Result<String, EnvError> {
    expand_with(s, |name| std::env::var(name).ok())
}

fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| EnvError::Unterminated(s.to_owned()))?;
            let name = &tail[..end];
            let value = lookup(name).ok_or_else(|| EnvError::Missing(name.to_owned()))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

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
    fn env_expansion() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_owned());
        assert_eq!(expand_with("${PW}", env).unwrap(), "s3cret");
        assert_eq!(expand_with("a-${PW}-b", env).unwrap(), "a-s3cret-b");
        assert_eq!(expand_with("cost $5 $$", env).unwrap(), "cost $5 $");
        assert_eq!(expand_with("plain", env).unwrap(), "plain");
        assert_eq!(
            expand_with("${NOPE}", env),
            Err(EnvError::Missing("NOPE".into()))
        );
        assert!(matches!(
            expand_with("${PW", env),
            Err(EnvError::Unterminated(_))
        ));
    }

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
