//! Resource bounds per sandbox, so one sandbox cannot exhaust the agent
//! (and with it every sandbox's egress, which fails closed).
//!
//! Three budgets, each held by a guard that gives back on drop:
//! * connections a sandbox has open through the proxy;
//! * requests in flight (HTTP/1 exchanges and HTTP/2 streams, over all of
//!   its connections);
//! * request bytes buffered whole (for the provider parser and the usage
//!   rewrite) — per sandbox and node-wide. Over it a request is streamed
//!   instead of buffered: it still succeeds.
//!
//! Refusals are counted per reason (`/metrics`) and the request ones are
//! recorded as transactions.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::config::LimitsConfig;

/// Who a budget belongs to: the sandbox cgroup (kernel attribution), or
/// the invocation a trusted dialer named.
pub type Key = u64;

/// What was refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct Refusals {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Requests streamed instead of buffered (not refused: bounded).
    pub buffer_spills: AtomicU64,
}

#[derive(Debug, Default)]
struct Counts {
    connections: HashMap<Key, usize>,
    requests: HashMap<Key, usize>,
    buffered: HashMap<Key, usize>,
    buffered_total: usize,
}

#[derive(Debug)]
pub struct Admission {
    limits: LimitsConfig,
    counts: Mutex<Counts>,
    pub refusals: Refusals,
}

/// Which budget a guard holds.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Connections,
    Requests,
    Buffered(usize),
}

/// Gives its share back when dropped.
#[derive(Debug)]
pub struct Guard {
    admission: Arc<Admission>,
    key: Key,
    budget: Budget,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (map, n) = match self.budget {
            Budget::Connections => (&mut c.connections, 1),
            Budget::Requests => (&mut c.requests, 1),
            Budget::Buffered(n) => {
                c.buffered_total = c.buffered_total.saturating_sub(n);
                (&mut c.buffered, n)
            }
        };
        if let Some(v) = map.get_mut(&self.key) {
            *v = v.saturating_sub(n);
            if *v == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: LimitsConfig) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::default(),
            refusals: Refusals::default(),
        })
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    fn take(self: &Arc<Self>, key: Key, budget: Budget) -> Option<Guard> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let ok = match budget {
            Budget::Connections => {
                let v = c.connections.entry(key).or_default();
                (*v < self.limits.max_connections_per_sandbox).then(|| *v += 1)
            }
            Budget::Requests => {
                let v = c.requests.entry(key).or_default();
                (*v < self.limits.max_requests_per_sandbox).then(|| *v += 1)
            }
            Budget::Buffered(n) => {
                let total = c.buffered_total;
                let v = c.buffered.entry(key).or_default();
                (*v + n <= self.limits.buffer_bytes_per_sandbox
                    && total + n <= self.limits.buffer_bytes)
                    .then(|| *v += n)
                    .map(|()| c.buffered_total += n)
            }
        };
        if ok.is_none() {
            // Keep the maps free of zero entries made by `entry`.
            let map = match budget {
                Budget::Connections => &mut c.connections,
                Budget::Requests => &mut c.requests,
                Budget::Buffered(_) => &mut c.buffered,
            };
            if map.get(&key) == Some(&0) {
                map.remove(&key);
            }
        }
        drop(c);
        let counter = match budget {
            Budget::Connections => &self.refusals.connections,
            Budget::Requests => &self.refusals.requests,
            Budget::Buffered(_) => &self.refusals.buffer_spills,
        };
        match ok {
            Some(()) => Some(Guard {
                admission: self.clone(),
                key,
                budget,
            }),
            None => {
                counter.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// One more connection for `key`, or None at its limit.
    pub fn connection(self: &Arc<Self>, key: Key) -> Option<Guard> {
        self.take(key, Budget::Connections)
    }

    /// One more request in flight for `key`, or None at its limit.
    pub fn request(self: &Arc<Self>, key: Key) -> Option<Guard> {
        self.take(key, Budget::Requests)
    }

    /// `n` request bytes to buffer for `key`, or None (stream instead).
    pub fn buffer(self: &Arc<Self>, key: Key, n: usize) -> Option<Guard> {
        self.take(key, Budget::Buffered(n))
    }

    /// (sandboxes with connections, total buffered bytes), for `/status`.
    pub fn usage(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.connections.len(), c.buffered_total)
    }
}

/// The budget key of a connection's origin.
pub fn key_of(origin: &super::Origin) -> Key {
    if origin.cookie != 0 {
        return origin.tag.cgroup_id;
    }
    // A trusted dialer: per invocation it named (kept apart from cgroup
    // ids by the top bit).
    let id = origin
        .attribution
        .as_ref()
        .map_or("", |a| a.invocation_id.as_str());
    crate::record::invocation_key(id) | (1 << 63)
}

impl crate::admin::Report for Admission {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let a = &self.refusals;
        m.counter(
            "egret_sandbox_limit_refusals",
            "Connections closed and requests refused (429) because a sandbox was at its limit",
            &[
                (
                    vec![("limit", "connections".into())],
                    a.connections.load(Ordering::Relaxed),
                ),
                (
                    vec![("limit", "requests".into())],
                    a.requests.load(Ordering::Relaxed),
                ),
            ],
        )?;
        m.counter(
            "egret_request_bodies_streamed_over_budget",
            "Request bodies streamed instead of buffered whole: the sandbox's or the node's buffer budget was used up",
            &[(vec![], a.buffer_spills.load(Ordering::Relaxed))],
        )?;
        let (sandboxes, buffered) = self.usage();
        m.gauge(
            "egret_request_bytes_buffered",
            "Request body bytes held whole by the proxy right now",
            &[(vec![], buffered as i64)],
        )?;
        m.gauge(
            "egret_sandboxes_with_connections",
            "Sandboxes with at least one connection through the proxy",
            &[(vec![], sandboxes as i64)],
        )
    }

    fn status(&self, _: &mut crate::admin::Status) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_connections_per_sandbox: 2,
            max_requests_per_sandbox: 3,
            buffer_bytes: 100,
            buffer_bytes_per_sandbox: 60,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn budgets_are_per_sandbox_and_given_back() {
        let a = Admission::new(limits());
        let c1 = a.connection(1).unwrap();
        let _c2 = a.connection(1).unwrap();
        assert!(a.connection(1).is_none(), "third connection of sandbox 1");
        assert!(a.connection(2).is_some(), "another sandbox is not affected");
        drop(c1);
        assert!(a.connection(1).is_some(), "given back on drop");
        let r: Vec<Guard> = (0..3).map(|_| a.request(7).unwrap()).collect();
        assert!(a.request(7).is_none());
        drop(r);
        assert!(a.request(7).is_some());
        assert_eq!(a.refusals.connections.load(Ordering::Relaxed), 1);
        assert_eq!(a.refusals.requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn buffering_is_bounded_per_sandbox_and_node_wide() {
        let a = Admission::new(limits());
        let b1 = a.buffer(1, 50).unwrap();
        assert!(a.buffer(1, 20).is_none(), "over the sandbox's 60");
        let b2 = a.buffer(2, 45).unwrap();
        assert!(a.buffer(3, 10).is_none(), "over the node's 100");
        assert_eq!(a.usage().1, 95);
        drop((b1, b2));
        assert_eq!(a.usage(), (0, 0));
        assert!(a.buffer(3, 60).is_some());
        assert_eq!(a.refusals.buffer_spills.load(Ordering::Relaxed), 2);
        // No zero entries linger.
        assert!(a.counts.lock().unwrap().buffered.len() <= 1);
    }
}
