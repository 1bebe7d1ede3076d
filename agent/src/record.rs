//! The one record schema behind every output.
//!
//! A [`Record`] is a flat map from attribute name (see [`crate::semconv`]) to
//! value. `egret records --json` prints it as is, OTLP exporters turn each
//! entry into a `KeyValue`, ClickHouse maps names to columns (dots →
//! underscores). Two kinds exist: `flow` (one per TCP connection, from the
//! kernel's close event) and `transaction` (one per HTTP exchange).
use std::{
    borrow::Cow,
    sync::{atomic::AtomicU64, Arc},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::semconv as sc;

/// An attribute value. JSON-compatible; arrays are string arrays only
/// (`gen_ai.response.finish_reasons`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    StrArray(Vec<String>),
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::StrArray(v)
    }
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// One flow or transaction record.
///
/// Keys are the `&'static` names from [`crate::semconv`] (borrowed, not
/// allocated: a transaction sets ~50 of them on the proxy's hot path);
/// records read back from storage own theirs. Serialized as a map, names
/// in alphabetical order; [`Record::iter`] goes in the map's own order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    attrs: Attrs,
    /// The gaps between a streamed response's chunks, for the metrics the
    /// recorder counts; not an attribute (never stored or exported as one).
    chunk_gaps: Option<Box<ChunkGaps>>,
}

/// Bucket bounds (seconds) of `gen_ai.client.inference.time_per_output_chunk`
/// and `time_to_first_chunk`, as semantic-conventions-genai v0.1.0 gives them.
pub const CHUNK_SECONDS_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// A streamed response's inter-chunk gaps as a fixed histogram over
/// [`CHUNK_SECONDS_BOUNDS`]: one observation per chunk after the first,
/// from the previous chunk's arrival to this one's. Bounded whatever the
/// stream's length (no list of gaps is kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkGaps {
    /// Bucket `i` holds (bound[i-1], bound[i]]; the last one (bound[13], +inf).
    pub buckets: [u64; CHUNK_SECONDS_BOUNDS.len() + 1],
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl ChunkGaps {
    /// One gap, in seconds.
    pub fn observe(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        let i = CHUNK_SECONDS_BOUNDS.partition_point(|b| *b < secs);
        self.buckets[i] += 1;
        if self.count == 0 {
            self.min = secs;
            self.max = secs;
        } else {
            self.min = self.min.min(secs);
            self.max = self.max.max(secs);
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// The attributes: a vector sorted by [`key_order`], one entry per name. A
/// record holds ~50 and is built once, read a few times and dropped: one
/// allocation (not a tree's nodes), a binary search per access, and clones
/// and drops that walk one slice.
#[derive(Clone, Debug, Default, PartialEq)]
struct Attrs(Vec<(Cow<'static, str>, AttrValue)>);

/// The map's order: by length, then by bytes. Most steps of a search end on
/// the lengths (names share long prefixes — `gen_ai.usage.` — so a
/// lexicographic compare is a `memcmp` call each time), and a name compared
/// with the very constant it was set with is equal without reading it (the
/// `semconv` names are `&'static str` constants: same address).
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        if std::ptr::eq(a.as_ptr(), b.as_ptr()) {
            std::cmp::Ordering::Equal
        } else {
            a.as_bytes().cmp(b.as_bytes())
        }
    })
}

impl Attrs {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| key_order(k, key))
    }

    fn insert(&mut self, key: Cow<'static, str>, value: AttrValue) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                if self.0.capacity() == 0 {
                    // A transaction's usual count: one allocation.
                    self.0.reserve_exact(64);
                }
                self.0.insert(i, (key, value));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&AttrValue> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut AttrValue> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    fn remove(&mut self, key: &str) -> Option<AttrValue> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut attrs: Vec<(&str, &AttrValue)> = self.iter().collect();
        attrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(attrs)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Record;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of attributes")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Record, A::Error> {
                let mut r = Record::default();
                // A repeated name: the last value wins.
                while let Some((k, v)) = m.next_entry::<String, AttrValue>()? {
                    r.attrs.insert(Cow::Owned(k), v);
                }
                Ok(r)
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Record {
    /// A new record of `kind` (`flow` or `transaction`) with a fresh id.
    pub fn new(kind: &'static str) -> Self {
        let mut r = Record::default();
        r.set(sc::RECORD_KIND, kind);
        r.set(sc::RECORD_ID, uuid::Uuid::now_v7().to_string());
        r
    }

    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        self.attrs.insert(key.into(), value.into());
    }

    /// Sets `key` only when `value` is present.
    pub fn set_opt<V: Into<AttrValue>>(
        &mut self,
        key: impl Into<Cow<'static, str>>,
        value: Option<V>,
    ) {
        if let Some(v) = value {
            self.set(key, v);
        }
    }

    /// Attaches a streamed response's chunk gaps (see [`ChunkGaps`]).
    pub fn set_chunk_gaps(&mut self, gaps: ChunkGaps) {
        self.chunk_gaps = Some(Box::new(gaps));
    }

    /// The chunk gaps the proxy measured, while the record is in memory
    /// (records read back from storage have none).
    pub fn chunk_gaps(&self) -> Option<&ChunkGaps> {
        self.chunk_gaps.as_deref()
    }

    pub fn remove(&mut self, key: &str) -> Option<AttrValue> {
        self.attrs.remove(key)
    }

    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(AttrValue::as_str)
    }
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(AttrValue::as_i64)
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(AttrValue::as_bool)
    }

    pub fn kind(&self) -> &str {
        self.get_str(sc::RECORD_KIND).unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.get_str(sc::RECORD_ID).unwrap_or("")
    }
    pub fn invocation_id(&self) -> Option<&str> {
        self.get_str(sc::INVOCATION_ID)
    }
    pub fn start_ns(&self) -> i64 {
        self.get_i64(sc::START_TIME).unwrap_or(0)
    }
    pub fn end_ns(&self) -> i64 {
        self.get_i64(sc::END_TIME).unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.attrs.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Mutable access to a string attribute (absent or not a string: None).
    pub fn get_str_mut(&mut self, key: &str) -> Option<&mut String> {
        match self.attrs.get_mut(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Mutable access to a string-array attribute.
    pub fn get_str_array_mut(&mut self, key: &str) -> Option<&mut Vec<String>> {
        match self.attrs.get_mut(key) {
            Some(AttrValue::StrArray(a)) => Some(a),
            _ => None,
        }
    }

    /// Keeps only the attributes whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.attrs.0.retain(|(k, _)| keep(k));
    }

    /// The record as it serializes with only the attributes `keep` accepts
    /// (what a store writes under a content mode), without copying it.
    pub fn filtered<F: Fn(&str) -> bool>(&self, keep: F) -> Filtered<'_, F> {
        Filtered { rec: self, keep }
    }

    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("record serializes")
    }
}

/// A record seen through an attribute filter ([`Record::filtered`]);
/// serializes like the record would with only the kept attributes.
pub struct Filtered<'a, F> {
    rec: &'a Record,
    keep: F,
}

impl<F: Fn(&str) -> bool> Serialize for Filtered<'_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut attrs: Vec<(&str, &AttrValue)> =
            self.rec.iter().filter(|(k, _)| (self.keep)(k)).collect();
        attrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(attrs)
    }
}

/// Lowercase hex of `bytes` (the form of the ids records carry).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Wall-clock now in Unix nanoseconds.
pub fn now_unix_nanos() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Counters kept by the recorder.
#[derive(Debug)]
pub struct RecordStats {
    pub flows: AtomicU64,
    pub transactions: AtomicU64,
    /// Transaction records the proxy could not queue (queue full or closed).
    pub queue_dropped: AtomicU64,
    pub spool_dropped: AtomicU64,
    /// Flow records (close events already read off the ring buffer) that
    /// could not be handed to the recorder: queue full past the wait, or
    /// closed.
    pub flow_dropped: AtomicU64,
    pub tail_lagged: AtomicU64,
    /// Invocations whose first request and last response were not kept
    /// for their `invoke_agent` span (too many invocations at once).
    pub invocation_io_untracked: AtomicU64,
    /// Each sandbox's share of the record queue (also held by the proxy).
    pub queue: Arc<QueueShares>,
}

/// Records one sandbox may have queued for the recorder at once (a quarter
/// of the queue).
pub const QUEUED_PER_SANDBOX: usize = 16_384;

impl Default for RecordStats {
    fn default() -> Self {
        RecordStats {
            flows: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            queue_dropped: AtomicU64::new(0),
            spool_dropped: AtomicU64::new(0),
            flow_dropped: AtomicU64::new(0),
            tail_lagged: AtomicU64::new(0),
            invocation_io_untracked: AtomicU64::new(0),
            queue: Arc::new(QueueShares::new(QUEUED_PER_SANDBOX)),
        }
    }
}

impl crate::admin::Report for RecordStats {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        m.counter(
            "egret_records_over_sandbox_share",
            "Records dropped because their sandbox had its share of the record queue queued",
            &[(vec![], self.queue.dropped.load(Relaxed))],
        )?;
        m.counter(
            "egret_records",
            "Records written to the spool, by kind",
            &[
                (vec![("kind", "flow".into())], self.flows.load(Relaxed)),
                (
                    vec![("kind", "transaction".into())],
                    self.transactions.load(Relaxed),
                ),
            ],
        )?;
        m.counter(
            "egret_records_dropped",
            "Records lost before the spool, by stage (queue full, flow record not queued, spool full or failing)",
            &[
                (vec![("stage", "queue".into())], self.queue_dropped.load(Relaxed)),
                (vec![("stage", "flow".into())], self.flow_dropped.load(Relaxed)),
                (vec![("stage", "spool".into())], self.spool_dropped.load(Relaxed)),
            ],
        )?;
        m.counter(
            "egret_tail_lagged",
            "Records a slow `egret tail` client skipped",
            &[(vec![], self.tail_lagged.load(Relaxed))],
        )?;
        m.counter(
            "egret_invocation_io_untracked",
            "Transactions whose bodies could not be kept for their invocation's span input/output (too many invocations at once)",
            &[(vec![], self.invocation_io_untracked.load(Relaxed))],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        use std::sync::atomic::Ordering::Relaxed;
        // Invocations that lost records to their share of the record queue.
        s.insert(
            "records_over_share".into(),
            serde_json::json!(self
                .queue
                .dropped_by
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()),
        );
        s.insert(
            "records".into(),
            serde_json::json!({
                "flows": self.flows.load(Relaxed),
                "transactions": self.transactions.load(Relaxed),
                "dropped_queue": self.queue_dropped.load(Relaxed),
                "dropped_flow": self.flow_dropped.load(Relaxed),
                "dropped_spool": self.spool_dropped.load(Relaxed),
            }),
        );
    }
}

/// Which records a reader wants (`egret records` flags); an unset field
/// matches everything. Matching is exact, on the attributes as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub invocation_id: Option<String>,
    pub agent_name: Option<String>,
    pub agent_namespace: Option<String>,
    /// `transaction` or `flow`.
    pub kind: Option<String>,
    /// The response model, else the request model.
    pub model: Option<String>,
    /// `gen_ai.provider.name`.
    pub provider: Option<String>,
    /// `http.response.status_code`.
    pub status: Option<i64>,
    /// `error.type`.
    pub error_type: Option<String>,
    /// Records that ended at or after this (Unix ns).
    pub since_ns: Option<i64>,
    /// Records that started before this (Unix ns).
    pub until_ns: Option<i64>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        eq(&self.invocation_id, r.invocation_id())
            && eq(&self.agent_name, r.get_str(sc::AGENT_NAME))
            && eq(&self.agent_namespace, r.get_str(sc::AGENT_NAMESPACE))
            && eq(&self.kind, Some(r.kind()))
            && eq(
                &self.model,
                r.get_str(sc::GEN_AI_RESPONSE_MODEL)
                    .or_else(|| r.get_str(sc::GEN_AI_REQUEST_MODEL)),
            )
            && eq(&self.provider, r.get_str(sc::GEN_AI_PROVIDER_NAME))
            && self
                .status
                .is_none_or(|s| r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) == Some(s))
            && eq(&self.error_type, r.get_str(sc::ERROR_TYPE))
            && self.since_ns.is_none_or(|t| r.end_ns() >= t)
            && self.until_ns.is_none_or(|t| r.start_ns() < t)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attributes_are_one_per_name_and_serialize_in_name_order() {
        let mut r = Record::default();
        for (k, v) in [("b", 1i64), ("d", 2), ("a", 3), ("c", 4), ("b", 5)] {
            r.set(k, v);
        }
        let names: Vec<&str> = r.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        // The map's order is by length first; serialized, alphabetical.
        let mut l = Record::default();
        for k in ["ccc", "a", "bb", "aa", "b"] {
            l.set(k, 1i64);
        }
        let names: Vec<&str> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b", "aa", "bb", "ccc"]);
        assert_eq!(l.to_json_line(), r#"{"a":1,"aa":1,"b":1,"bb":1,"ccc":1}"#);
        // A name equal by value but not by address is found.
        let owned = String::from("bb");
        assert_eq!(l.get_i64(&owned), Some(1));
        assert_eq!(r.get_i64("b"), Some(5));
        assert_eq!(r.remove("c"), Some(AttrValue::Int(4)));
        assert_eq!(r.remove("c"), None);
        assert_eq!(r.get("zz"), None);
        r.set("s", "x");
        r.get_str_mut("s").unwrap().push('y');
        assert_eq!(r.get_str("s"), Some("xy"));
        r.retain(|k| k != "a");
        assert_eq!(r.to_json_line(), r#"{"b":5,"d":2,"s":"xy"}"#);
        // Read back (owned names): equal, in order; a repeated name keeps
        // its last value.
        let back: Record = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(back, r);
        let dup: Record = serde_json::from_str(r#"{"z":1,"a":2,"z":3}"#).unwrap();
        assert_eq!(dup.to_json_line(), r#"{"a":2,"z":3}"#);
    }

    #[test]
    fn filters_match_exactly_and_unset_fields_match_all() {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::INVOCATION_ID, "inv-1");
        r.set(sc::AGENT_NAME, "coder");
        r.set(sc::GEN_AI_REQUEST_MODEL, "gpt-4o");
        r.set(sc::GEN_AI_RESPONSE_MODEL, "gpt-4o-2024-11-20");
        r.set(sc::GEN_AI_PROVIDER_NAME, "openai");
        r.set(sc::HTTP_RESPONSE_STATUS_CODE, 429i64);
        r.set(sc::ERROR_TYPE, "rate_limit_exceeded");
        r.set(sc::START_TIME, 100i64);
        r.set(sc::END_TIME, 200i64);
        assert!(Filter::default().matches(&r));
        let f = |g: fn(&mut Filter)| {
            let mut f = Filter::default();
            g(&mut f);
            f.matches(&r)
        };
        assert!(f(|f| f.invocation_id = Some("inv-1".into())));
        assert!(!f(|f| f.invocation_id = Some("inv-2".into())));
        assert!(f(|f| f.model = Some("gpt-4o-2024-11-20".into())));
        assert!(
            !f(|f| f.model = Some("gpt-4o".into())),
            "the response model wins"
        );
        assert!(f(|f| f.provider = Some("openai".into())));
        assert!(
            !f(|f| f.agent_namespace = Some("ns".into())),
            "absent never matches"
        );
        assert!(f(|f| f.status = Some(429)));
        assert!(!f(|f| f.status = Some(200)));
        assert!(f(|f| f.error_type = Some("rate_limit_exceeded".into())));
        assert!(f(|f| f.kind = Some("transaction".into())));
        assert!(!f(|f| f.kind = Some("flow".into())));
        assert!(f(|f| f.since_ns = Some(200)));
        assert!(!f(|f| f.since_ns = Some(201)));
        assert!(f(|f| f.until_ns = Some(101)));
        assert!(!f(|f| f.until_ns = Some(100)));
    }

    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
    }

    #[test]
    fn json_round_trip_keeps_types() {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::INVOCATION_ID, "inv-1");
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 12u64);
        r.set(sc::GEN_AI_REQUEST_STREAM, true);
        r.set(sc::DURATION_MS, 1.5);
        r.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, vec!["stop".to_owned()]);
        let line = r.to_json_line();
        assert!(line.contains("\"invocation.id\":\"inv-1\""), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.kind(), "transaction");
        assert_eq!(back.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(12));
    }

    #[test]
    fn a_filtered_view_serializes_like_the_retained_record() {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::REQUEST_BODY, "secret");
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 3u64);
        let view = serde_json::to_string(&r.filtered(|k| k != sc::REQUEST_BODY)).unwrap();
        let mut kept = r.clone();
        kept.retain(|k| k != sc::REQUEST_BODY);
        assert_eq!(view, kept.to_json_line());
        assert!(
            !view.contains("secret") && view.contains("input_tokens"),
            "{view}"
        );
        r.get_str_mut(sc::REQUEST_BODY).unwrap().push('!');
        assert_eq!(r.get_str(sc::REQUEST_BODY), Some("secret!"));
        assert!(r.get_str_mut(sc::GEN_AI_USAGE_INPUT_TOKENS).is_none());
    }

    #[test]
    fn chunk_gaps_are_bucketed_and_never_serialized() {
        let mut g = ChunkGaps::default();
        for s in [0.01, 0.011, 100.0, -1.0, f64::NAN] {
            g.observe(s);
        }
        assert_eq!(g.count, 3, "negative and NaN gaps are not observations");
        assert_eq!(g.buckets[0], 1, "0.01 is in (-inf, 0.01]");
        assert_eq!(g.buckets[1], 1, "0.011 is in (0.01, 0.02]");
        assert_eq!(g.buckets[CHUNK_SECONDS_BOUNDS.len()], 1, "100 s overflows");
        assert_eq!((g.min, g.max), (0.01, 100.0));
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set_chunk_gaps(g.clone());
        assert_eq!(r.chunk_gaps(), Some(&g));
        let line = r.to_json_line();
        assert!(!line.contains("chunk"), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back.chunk_gaps(), None);
    }
}

/// A cheap, stable key for an invocation id in per-sandbox budgets (FNV-1a;
/// not a secret, nothing to guess).
pub fn invocation_key(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Each sandbox's share of the record queue between the proxy/close loop
/// and the recorder, so one sandbox's volume cannot decide what the others
/// lose when the recorder falls behind: a record is admitted only while its
/// invocation has fewer than `max` queued; the recorder releases it.
#[derive(Debug)]
pub struct QueueShares {
    max: usize,
    queued: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
    /// Records refused because their sandbox had its share queued.
    pub dropped: std::sync::atomic::AtomicU64,
    /// The invocations that lost records that way, with how many (at most
    /// [`QueueShares::REPORTED`] kept).
    pub dropped_by: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl QueueShares {
    /// Invocations kept in `dropped_by`.
    pub const REPORTED: usize = 256;

    pub fn new(max: usize) -> QueueShares {
        QueueShares {
            max,
            queued: Default::default(),
            dropped: Default::default(),
            dropped_by: Default::default(),
        }
    }

    fn key(rec: &Record) -> u64 {
        invocation_key(rec.invocation_id().unwrap_or(""))
    }

    /// Takes a place in the queue for `rec`; false (counted for its
    /// invocation) when its sandbox has its share queued.
    pub fn admit(&self, rec: &Record) -> bool {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.entry(Self::key(rec)).or_default();
        if *n < self.max {
            *n += 1;
            return true;
        }
        drop(q);
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut by = self.dropped_by.lock().unwrap_or_else(|p| p.into_inner());
        let inv = rec.invocation_id().unwrap_or("").to_owned();
        if by.len() < Self::REPORTED || by.contains_key(&inv) {
            *by.entry(inv).or_default() += 1;
        }
        false
    }

    /// Takes a place for `rec` whatever its sandbox has queued: for the
    /// records the host's control path writes (one per invocation), which a
    /// sandbox cannot multiply.
    pub fn admit_always(&self, rec: &Record) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        *q.entry(Self::key(rec)).or_default() += 1;
    }

    /// Gives `rec`'s place back (taken off the queue, or never queued).
    pub fn release(&self, rec: &Record) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let k = Self::key(rec);
        if let Some(n) = q.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                q.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod queue_share_tests {
    use super::*;

    fn rec(inv: &str) -> Record {
        let mut r = Record::new(crate::semconv::KIND_TRANSACTION);
        r.set(crate::semconv::INVOCATION_ID, inv);
        r
    }

    #[test]
    fn one_invocation_cannot_take_the_queue() {
        let s = QueueShares::new(3);
        let loud: Vec<Record> = (0..5).map(|_| rec("loud")).collect();
        let admitted = loud.iter().filter(|r| s.admit(r)).count();
        assert_eq!(admitted, 3);
        assert!(s.admit(&rec("quiet")), "another sandbox still gets in");
        assert_eq!(s.dropped.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(s.dropped_by.lock().unwrap().get("loud"), Some(&2));
        // The recorder takes one: one more place for it.
        s.release(&loud[0]);
        assert!(s.admit(&loud[1]));
        assert!(!s.admit(&loud[2]));
    }
}
