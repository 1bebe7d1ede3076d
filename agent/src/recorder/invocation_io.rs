//! The input and output of each invocation: its first request and its last
//! response, put on the `invocation` record when the invocation ends, so
//! the `invoke_agent` span (the root of the invocation's trace) shows what
//! went in and what came out (MLflow's Request/Response columns, Phoenix's
//! input/output).
//!
//! The recorder sees every record; for each transaction with a text body
//! it keeps, per invocation, the request body of the call that started
//! first and the response body of the call that ended last (by the calls'
//! own start and end times, not the order records arrive in: a keep-alive
//! connection's record can come after a later call's), with that call's
//! `egret.genai.api` so an exporter can assemble a streamed answer, each
//! cut to [`MAX_BODY`] bytes. The bodies are the records' own, after redaction. State is
//! bounded: at most [`MAX_TRACKED`] invocations; when full, entries not
//! seen for [`IDLE`] are dropped first, and an invocation that finds no
//! room is counted ([`InvocationIo::untracked`]) and its span simply has
//! no input/output. After an agent restart the invocations still running
//! start over from their next transaction. When neither the spool's
//! content mode nor any exporter's keeps bodies, the recorder does not
//! call it at all (no copies for nobody).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{record::Record, semconv as sc};

/// Longest body kept per side, in bytes (cut at a character boundary).
pub const MAX_BODY: usize = 8 * 1024;
/// Most invocations tracked at once.
pub const MAX_TRACKED: usize = 4096;
/// An entry not seen for this long may be dropped when the map is full
/// (an invocation whose record never came: a transaction that arrived
/// after its invocation ended).
pub const IDLE: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Io {
    /// The request of the call that started first, and its start.
    request: Option<(i64, String)>,
    /// The response of the call that ended last, its end and its API.
    response: Option<(i64, String, Option<String>)>,
    seen: Instant,
}

/// Per-invocation first request and last response. See the module docs.
#[derive(Debug, Default)]
pub struct InvocationIo {
    map: HashMap<String, Io>,
    untracked: u64,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_BODY);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A record's body text under `key`, unless it is base64 (binary).
fn text<'a>(rec: &'a Record, key: &str, b64: &str) -> Option<&'a str> {
    if rec.get_bool(b64) == Some(true) {
        return None;
    }
    rec.get_str(key).filter(|b| !b.is_empty())
}

impl InvocationIo {
    /// Invocations that found no room (their span has no input/output).
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Forgets every invocation (nothing downstream wants bodies now).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Invocations tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Notes a transaction's bodies, or completes an invocation record with
    /// what was noted for it.
    pub fn observe(&mut self, rec: &mut Record) {
        match rec.kind() {
            sc::KIND_TRANSACTION => self.note(rec),
            sc::KIND_INVOCATION => self.complete(rec),
            _ => {}
        }
    }

    fn note(&mut self, rec: &Record) {
        let Some(inv) = rec.invocation_id() else {
            return;
        };
        let request = text(rec, sc::REQUEST_BODY, sc::REQUEST_BODY_B64);
        let response = text(rec, sc::RESPONSE_BODY, sc::RESPONSE_BODY_B64);
        if request.is_none() && response.is_none() {
            return;
        }
        let now = Instant::now();
        if !self.map.contains_key(inv) {
            if self.map.len() >= MAX_TRACKED {
                self.map.retain(|_, io| now.duration_since(io.seen) < IDLE);
            }
            if self.map.len() >= MAX_TRACKED {
                self.untracked += 1;
                return;
            }
            self.map.insert(
                inv.to_owned(),
                Io {
                    request: None,
                    response: None,
                    seen: now,
                },
            );
        }
        let io = self.map.get_mut(inv).expect("inserted above");
        io.seen = now;
        // Records arrive in the order their transactions were sealed, which
        // is not the order the calls ran (a keep-alive connection's record
        // can come after a later call's): the call's own times decide.
        let start = rec.get_i64(sc::START_TIME).unwrap_or(i64::MAX);
        let end = rec.get_i64(sc::END_TIME).unwrap_or(i64::MIN);
        if let Some(r) = request {
            if io.request.as_ref().is_none_or(|(t, _)| start < *t) {
                io.request = Some((start, cut(r)));
            }
        }
        if let Some(r) = response {
            if io.response.as_ref().is_none_or(|(t, _, _)| end >= *t) {
                let api = rec.get_str(sc::GENAI_API).map(str::to_owned);
                io.response = Some((end, cut(r), api));
            }
        }
    }

    fn complete(&mut self, rec: &mut Record) {
        let Some(io) = rec.invocation_id().and_then(|inv| self.map.remove(inv)) else {
            return;
        };
        if let Some((_, r)) = io.request {
            rec.set(sc::REQUEST_BODY, r);
        }
        if let Some((_, r, api)) = io.response {
            rec.set(sc::RESPONSE_BODY, r);
            rec.set_opt(sc::GENAI_API, api);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(inv: &str, req: &str, resp: &str, api: &str) -> Record {
        static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        let t = CLOCK.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::START_TIME, t);
        r.set(sc::END_TIME, t + 5);
        r.set(sc::INVOCATION_ID, inv.to_owned());
        if !req.is_empty() {
            r.set(sc::REQUEST_BODY, req.to_owned());
        }
        if !resp.is_empty() {
            r.set(sc::RESPONSE_BODY, resp.to_owned());
        }
        r.set(sc::GENAI_API, api.to_owned());
        r
    }

    fn ended(inv: &str) -> Record {
        let mut r = Record::new(sc::KIND_INVOCATION);
        r.set(sc::INVOCATION_ID, inv.to_owned());
        r
    }

    #[test]
    fn first_request_and_last_response_reach_the_invocation_record() {
        let mut io = InvocationIo::default();
        for mut r in [
            txn("a", "first", "one", "openai.chat_completions"),
            txn("b", "other", "x", "mcp"),
            txn("a", "second", "two", "anthropic.messages"),
            txn("a", "third", "", "openai.responses"),
        ] {
            io.observe(&mut r);
        }
        let mut b64 = txn("a", "bin", "bin", "mcp");
        b64.set(sc::RESPONSE_BODY_B64, true);
        b64.set(sc::REQUEST_BODY_B64, true);
        io.observe(&mut b64);
        let mut a = ended("a");
        io.observe(&mut a);
        assert_eq!(a.get_str(sc::REQUEST_BODY), Some("first"));
        assert_eq!(a.get_str(sc::RESPONSE_BODY), Some("two"));
        assert_eq!(a.get_str(sc::GENAI_API), Some("anthropic.messages"));
        assert_eq!(io.len(), 1, "a is forgotten once ended, b stays");
        // An invocation that made no call with a body: nothing added.
        let mut c = ended("c");
        io.observe(&mut c);
        assert!(c.get(sc::REQUEST_BODY).is_none());
    }

    #[test]
    fn the_calls_times_decide_not_the_order_records_arrive_in() {
        let mut io = InvocationIo::default();
        let mut early = txn("a", "early", "early answer", "openai.chat_completions");
        let mut late = txn("a", "late", "late answer", "anthropic.messages");
        // The later call's record arrives first.
        io.observe(&mut late);
        io.observe(&mut early);
        let mut a = ended("a");
        io.observe(&mut a);
        assert_eq!(a.get_str(sc::REQUEST_BODY), Some("early"));
        assert_eq!(a.get_str(sc::RESPONSE_BODY), Some("late answer"));
        assert_eq!(a.get_str(sc::GENAI_API), Some("anthropic.messages"));
    }

    #[test]
    fn bodies_are_cut_at_a_character_boundary() {
        let mut io = InvocationIo::default();
        let long = "é".repeat(MAX_BODY);
        let mut r = txn("a", &long, &long, "x");
        io.observe(&mut r);
        let mut a = ended("a");
        io.observe(&mut a);
        let got = a.get_str(sc::REQUEST_BODY).unwrap();
        assert!(got.len() <= MAX_BODY && got.len() >= MAX_BODY - 1);
        assert!(long.starts_with(got));
    }

    #[test]
    fn state_is_bounded_and_overflow_is_counted() {
        let mut io = InvocationIo::default();
        for i in 0..MAX_TRACKED + 10 {
            io.observe(&mut txn(&format!("inv-{i}"), "q", "a", "x"));
        }
        assert_eq!(io.len(), MAX_TRACKED);
        assert_eq!(io.untracked(), 10);
        // Still-tracked invocations keep their bodies.
        let mut first = ended("inv-0");
        io.observe(&mut first);
        assert_eq!(first.get_str(sc::REQUEST_BODY), Some("q"));
    }
}
