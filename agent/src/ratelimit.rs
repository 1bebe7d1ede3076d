//! Rate-limited logging for events a sandbox (or any peer) can cause at
//! will: refused connections, failed TLS handshakes, refused PROXY headers.
//! Counters still count every event; the log gets at most [`BURST`] lines
//! per reason per [`INTERVAL`], and the first line after that says how many
//! were left out (its `suppressed` field).
//!
//! ```
//! # use egret::ratelimit::{LogLimiter, Reason};
//! static LIMIT: LogLimiter = LogLimiter::new();
//! if let Some(suppressed) = LIMIT.check(Reason::RefusedUnlinked) {
//!     tracing::warn!(suppressed, "refused a connection the kernel did not redirect");
//! }
//! ```
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The window lines are counted in, per reason.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Lines per reason per window: a few distinct events (e.g. two different
/// bad headers) still show; a flood does not.
pub const BURST: u32 = 5;

/// What a rate-limited line is about. One budget of lines per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Redirect listener: a connection the kernel did not link.
    RefusedUnlinked,
    /// Redirect listener: non-HTTP bytes where the policy refuses them.
    RefusedNonHttp,
    /// Splice: dialling the original destination failed.
    UpstreamConnect,
    /// An accept(2) error (e.g. out of file descriptors).
    Accept,
    /// TLS handshake with a sandbox failed or timed out.
    SandboxTls,
    /// No leaf certificate could be made for a client's SNI.
    LeafCert,
    /// PROXY protocol listener: a peer outside `trustedCidrs`.
    ProxyUntrustedPeer,
    /// PROXY protocol listener: a sandbox socket as the peer.
    ProxySandboxPeer,
    /// PROXY protocol listener: no valid v2 header.
    ProxyBadHeader,
    /// PROXY protocol listener: the header names no usable destination.
    ProxyNoDestination,
    /// An exchange's upstream failed (connect, TLS, request).
    UpstreamRequest,
    /// A flow whose (slot, generation) the registry no longer knows.
    UnknownAttribution,
    /// A sandbox at its connection limit.
    SandboxLimit,
    /// A sandbox at its share of the record queue.
    QueueShare,
    /// MCP HTTP+SSE: the pending-request registry is full.
    McpPendingOverflow,
}

impl Reason {
    const ALL: [Reason; 15] = [
        Reason::RefusedUnlinked,
        Reason::RefusedNonHttp,
        Reason::UpstreamConnect,
        Reason::Accept,
        Reason::SandboxTls,
        Reason::LeafCert,
        Reason::ProxyUntrustedPeer,
        Reason::ProxySandboxPeer,
        Reason::ProxyBadHeader,
        Reason::ProxyNoDestination,
        Reason::UpstreamRequest,
        Reason::UnknownAttribution,
        Reason::SandboxLimit,
        Reason::QueueShare,
        Reason::McpPendingOverflow,
    ];
    const COUNT: usize = Self::ALL.len();

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy)]
struct Slot {
    /// Start of the current window.
    start: Option<Instant>,
    /// Lines logged in it.
    logged: u32,
    /// Events left out since the last line.
    suppressed: u64,
}

/// One window per reason. `const`-constructible, so a `static` serves the
/// whole process.
pub struct LogLimiter {
    slots: Mutex<[Slot; Reason::COUNT]>,
    interval: Duration,
    burst: u32,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// [`BURST`] lines per reason per [`INTERVAL`].
    pub const fn new() -> LogLimiter {
        Self::with(INTERVAL, BURST)
    }

    /// `burst` lines per reason per `interval`.
    pub const fn with(interval: Duration, burst: u32) -> LogLimiter {
        LogLimiter {
            slots: Mutex::new(
                [Slot {
                    start: None,
                    logged: 0,
                    suppressed: 0,
                }; Reason::COUNT],
            ),
            interval,
            burst,
        }
    }

    /// `Some(n)`: log this event now, saying `n` earlier ones were left out
    /// since the last line of this reason. `None`: leave it out.
    pub fn check(&self, reason: Reason) -> Option<u64> {
        self.check_at(reason, Instant::now())
    }

    /// [`Self::check`] at a given time (tests inject the clock).
    pub fn check_at(&self, reason: Reason, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[reason.index()];
        let in_window = slot
            .start
            .is_some_and(|start| now.saturating_duration_since(start) < self.interval);
        if !in_window {
            slot.start = Some(now);
            slot.logged = 0;
        }
        if slot.logged < self.burst {
            slot.logged += 1;
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed = slot.suppressed.saturating_add(1);
            None
        }
    }
}

/// The process-wide limiter behind the log sites.
pub static LOG: LogLimiter = LogLimiter::new();

/// `limited!(Reason, level, fields..., "message")`: a `tracing` event
/// through [`LOG`], with a `suppressed` field.
#[macro_export]
macro_rules! limited {
    ($reason:ident, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) =
            $crate::ratelimit::LOG.check($crate::ratelimit::Reason::$reason)
        {
            tracing::$level!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_and_the_next_counts_the_rest() {
        let l = LogLimiter::with(Duration::from_secs(10), 1);
        let t0 = Instant::now();
        let at = |s: u64, ms: u64| t0 + Duration::from_secs(s) + Duration::from_millis(ms);
        assert_eq!(l.check_at(Reason::RefusedUnlinked, t0), Some(0));
        // A flood within the interval: left out, counted.
        for i in 1..=1000 {
            assert_eq!(l.check_at(Reason::RefusedUnlinked, at(0, i)), None);
        }
        assert_eq!(l.check_at(Reason::RefusedUnlinked, at(9, 999)), None);
        // Another reason has its own window.
        assert_eq!(l.check_at(Reason::SandboxTls, at(5, 0)), Some(0));
        assert_eq!(l.check_at(Reason::SandboxTls, at(6, 0)), None);
        // The interval is over: one line, saying how many were left out.
        assert_eq!(l.check_at(Reason::RefusedUnlinked, at(10, 0)), Some(1001));
        assert_eq!(l.check_at(Reason::RefusedUnlinked, at(10, 1)), None);
        // After a quiet spell the count starts over.
        assert_eq!(l.check_at(Reason::RefusedUnlinked, at(60, 0)), Some(1));
        assert_eq!(l.check_at(Reason::RefusedUnlinked, at(120, 0)), Some(0));
        assert_eq!(l.check_at(Reason::SandboxTls, at(120, 0)), Some(1));
    }

    #[test]
    fn a_burst_of_distinct_events_shows_then_the_flood_is_counted() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for i in 0..u64::from(BURST) {
            assert_eq!(l.check_at(Reason::ProxyBadHeader, ms(i)), Some(0));
        }
        for i in 0..500 {
            assert_eq!(l.check_at(Reason::ProxyBadHeader, ms(100 + i)), None);
        }
        assert_eq!(l.check_at(Reason::ProxySandboxPeer, ms(700)), Some(0));
        let next = t0 + INTERVAL;
        assert_eq!(l.check_at(Reason::ProxyBadHeader, next), Some(500));
        assert_eq!(
            l.check_at(Reason::ProxyBadHeader, next + Duration::from_millis(1)),
            Some(0)
        );
    }

    #[test]
    fn a_clock_going_backwards_suppresses_rather_than_floods() {
        let l = LogLimiter::with(Duration::from_secs(10), 1);
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(l.check_at(Reason::Accept, t0), Some(0));
        assert_eq!(
            l.check_at(Reason::Accept, t0 - Duration::from_secs(50)),
            None
        );
    }

    #[test]
    fn every_reason_has_its_own_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
