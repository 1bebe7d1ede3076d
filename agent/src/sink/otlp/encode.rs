//! Records → OTLP protobuf messages (spans, log records), ids, sampling.
//!
//! Everything here is pure and synchronous; the exporter calls it on its
//! own task, never on the capture path (except [`sampled`], which only
//! hashes one string).
use std::{collections::BTreeMap, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};
use sha2::{Digest, Sha256};

use super::settings::Conventions;
use crate::{
    attribution::{invocation_span_id, OPERATION_INVOKE_AGENT},
    config::ContentMode,
    genai::{
        messages::{self, Bodies, Content, Part},
        Api,
    },
    record::{AttrValue, Record},
    semconv as sc,
};

/// Instrumentation scope of everything egret exports.
pub const SCOPE_NAME: &str = "egret";
/// Semantic conventions release the attributes follow (egret's registry,
/// `docs/semconv/`, depends on the same one).
pub const SEMCONV_SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.1";
/// Longest `input.value` / `output.value` / `mlflow.span*` value, in bytes.
pub const MAX_CONVENTION_VALUE_BYTES: usize = 32 * 1024;

/// Longest structured-content attribute (`gen_ai.input.messages`, …), in
/// bytes of JSON; a longer one is left out and the span says
/// `egret.messages.complete = false`.
pub const MAX_MESSAGES_VALUE_BYTES: usize = 4 * MAX_CONVENTION_VALUE_BYTES;

/// Span flags: sampled trace flag + "has is_remote" (+ "is remote").
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// One queued record and, for the dev tee, the gateway it came through.
#[derive(Debug, Clone)]
pub struct Item {
    pub gateway: Option<Arc<str>>,
    pub rec: Arc<Record>,
}

/// What encoding needs besides the records.
#[derive(Debug, Clone)]
pub struct EncodeContext {
    pub resource: BTreeMap<String, AttrValue>,
    pub conventions: Conventions,
}

/// Attributes never copied onto spans (carried by span fields, or bodies:
/// spans carry metadata only).
const SPAN_SKIP: &[&str] = &[
    sc::REQUEST_BODY,
    sc::RESPONSE_BODY,
    sc::REQUEST_BODY_B64,
    sc::RESPONSE_BODY_B64,
    sc::TRACE_ID,
    sc::SPAN_ID,
    sc::PARENT_SPAN_ID,
    sc::START_TIME,
    sc::END_TIME,
];
/// Attributes never copied onto log records (bodies go in the log body).
const LOG_SKIP: &[&str] = &[
    sc::REQUEST_BODY,
    sc::RESPONSE_BODY,
    sc::TRACE_ID,
    sc::SPAN_ID,
    sc::PARENT_SPAN_ID,
    sc::START_TIME,
    sc::END_TIME,
];

// ---- values ---------------------------------------------------------------

pub fn any_value(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Float(f) => any_value::Value::DoubleValue(*f),
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::StrArray(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(|s| str_value(s)).collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

pub fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

pub fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, str_value(value))
}

fn kv_i64(key: &str, value: i64) -> KeyValue {
    kv(
        key,
        AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        },
    )
}

/// Resource message for a group of records.
pub fn resource(base: &BTreeMap<String, AttrValue>, gateway: Option<&str>) -> Resource {
    let mut attributes: Vec<KeyValue> = base.iter().map(|(k, v)| kv(k, any_value(v))).collect();
    if let Some(g) = gateway {
        if !base.contains_key(sc::GATEWAY_NAME) {
            attributes.push(kv_str(sc::GATEWAY_NAME, g));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

// ---- ids and sampling -----------------------------------------------------

/// Parses a lowercase/uppercase hex id of exactly `N` bytes; all-zero is invalid.
pub fn parse_hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    if out.iter().all(|b| *b == 0) {
        return None;
    }
    Some(out)
}

fn digest(domain: &str, seed: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0u8]);
    h.update(seed.as_bytes());
    h.finalize().into()
}

/// Deterministic trace id for `seed` (a record or transaction id), so a
/// re-sent record gets the same ids.
pub fn derive_trace_id(seed: &str) -> [u8; 16] {
    let d = digest("egret.trace_id", seed);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    if out.iter().all(|b| *b == 0) {
        out[15] = 1;
    }
    out
}

/// Deterministic span id for `seed`.
pub fn derive_span_id(seed: &str) -> [u8; 8] {
    let d = digest("egret.span_id", seed);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    if out.iter().all(|b| *b == 0) {
        out[7] = 1;
    }
    out
}

/// Whether a record is kept for traces and logs at `ratio`. The decision
/// hashes `invocation.id` (SHA-256, first 8 bytes big-endian, top 53 bits
/// as a fraction of 1) so every record of one invocation goes the same way;
/// records without an invocation hash their record id.
pub fn sampled(rec: &Record, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let key = rec
        .invocation_id()
        .filter(|s| !s.is_empty())
        .unwrap_or(rec.id());
    sample_key(key) < ratio
}

/// The sampling position of `key` in [0, 1).
pub fn sample_key(key: &str) -> f64 {
    let d = digest("egret.sampling", key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Trace context of a record's span (or of a log record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from outside egret (a registered traceparent).
    pub remote_parent: bool,
}

impl SpanIds {
    pub fn flags(&self) -> u32 {
        let remote = if self.parent_span_id.is_some() && self.remote_parent {
            FLAG_IS_REMOTE
        } else {
            0
        };
        FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote
    }
}

fn hex_attr<const N: usize>(rec: &Record, key: &str) -> Option<[u8; N]> {
    rec.get_str(key).and_then(parse_hex_id::<N>)
}

/// The transaction id a record belongs to: its `egret.transaction.id`,
/// else (transactions) its record id.
fn transaction_seed(rec: &Record) -> Option<&str> {
    match rec.get_str(sc::TRANSACTION_ID).filter(|s| !s.is_empty()) {
        Some(t) => Some(t),
        None if rec.kind() == sc::KIND_TRANSACTION && !rec.id().is_empty() => Some(rec.id()),
        None => None,
    }
}

/// Ids of the span a record becomes, or `None` when it becomes no span
/// (flows without a transaction, records without any id).
///
/// Transactions: `egret.trace_id` / `egret.span_id` / `egret.parent_span_id`
/// when the proxy set them (the parent is then remote: the invocation's
/// registered traceparent), else derived from the transaction id.
/// Flows with `egret.transaction.id`: the trace of that transaction and,
/// unless the proxy set ids, a child of the transaction's span.
pub fn span_ids(rec: &Record) -> Option<SpanIds> {
    let explicit_trace = hex_attr::<16>(rec, sc::TRACE_ID);
    let explicit_parent = hex_attr::<8>(rec, sc::PARENT_SPAN_ID);
    if rec.kind() == sc::KIND_INVOCATION {
        // Its parent, when it has one, is the orchestrator's registered span.
        return Some(SpanIds {
            trace_id: explicit_trace?,
            span_id: hex_attr::<8>(rec, sc::SPAN_ID)?,
            parent_span_id: explicit_parent,
            remote_parent: explicit_parent.is_some(),
        });
    }
    let txn = transaction_seed(rec)?;
    if rec.kind() == sc::KIND_TRANSACTION {
        // The parent is egret's own invocation span (local), or the
        // sandbox's traceparent (remote).
        let invocation_span = rec
            .invocation_id()
            .and_then(|inv| parse_hex_id::<8>(&invocation_span_id(inv)));
        return Some(SpanIds {
            trace_id: explicit_trace.unwrap_or_else(|| derive_trace_id(txn)),
            span_id: hex_attr::<8>(rec, sc::SPAN_ID).unwrap_or_else(|| derive_span_id(txn)),
            parent_span_id: explicit_parent,
            remote_parent: explicit_parent.is_some() && explicit_parent != invocation_span,
        });
    }
    if rec.kind() == sc::KIND_FLOW && rec.get_str(sc::TRANSACTION_ID).is_some() {
        let own = if rec.id().is_empty() { txn } else { rec.id() };
        let span_id = hex_attr::<8>(rec, sc::SPAN_ID)
            .filter(|s| *s != derive_span_id(txn))
            .unwrap_or_else(|| derive_span_id(&format!("flow:{own}")));
        return Some(SpanIds {
            trace_id: explicit_trace.unwrap_or_else(|| derive_trace_id(txn)),
            span_id,
            parent_span_id: explicit_parent.or_else(|| Some(derive_span_id(txn))),
            remote_parent: false,
        });
    }
    None
}

// ---- spans ----------------------------------------------------------------

/// `{gen_ai.operation.name} {gen_ai.request.model}` when both exist; else
/// `{operation} {tool}`; else `{mcp.method.name} [{tool}]`; else the HTTP
/// method; else the record kind.
pub fn span_name(rec: &Record) -> String {
    span_name_with(rec, true)
}

/// [`span_name`], without tool and prompt names unless `details` (an
/// exporter with `content: none` sends no content details, in names
/// neither).
fn span_name_with(rec: &Record, details: bool) -> String {
    if rec.kind() == sc::KIND_INVOCATION {
        return match rec.get_str(sc::AGENT_NAME).filter(|s| !s.is_empty()) {
            Some(agent) => format!("{} {agent}", OPERATION_INVOKE_AGENT),
            None => OPERATION_INVOKE_AGENT.to_owned(),
        };
    }
    let op = rec
        .get_str(sc::GEN_AI_OPERATION_NAME)
        .filter(|s| !s.is_empty());
    let model = rec
        .get_str(sc::GEN_AI_REQUEST_MODEL)
        .filter(|s| !s.is_empty());
    let tool = rec
        .get_str(sc::GEN_AI_TOOL_NAME)
        .filter(|s| details && !s.is_empty());
    let mcp = rec.get_str(sc::MCP_METHOD_NAME).filter(|s| !s.is_empty());
    // MCP: `{mcp.method.name} {target}`, the target a tool or prompt name.
    let target = tool.or_else(|| {
        rec.get_str(sc::GEN_AI_PROMPT_NAME)
            .filter(|s| details && !s.is_empty())
    });
    match (op, model, tool, mcp) {
        (_, _, _, Some(m)) => match target {
            Some(t) => format!("{m} {t}"),
            None => m.to_owned(),
        },
        (Some(op), Some(model), _, _) => format!("{op} {model}"),
        (Some(op), None, Some(tool), _) => format!("{op} {tool}"),
        _ => match rec
            .get_str(sc::HTTP_REQUEST_METHOD)
            .filter(|s| !s.is_empty())
        {
            Some(m) => m.to_owned(),
            None if rec.kind() == sc::KIND_FLOW => sc::EVENT_FLOW.to_owned(),
            None => sc::EVENT_TRANSACTION.to_owned(),
        },
    }
}

fn status_code(rec: &Record) -> Option<i64> {
    rec.get_i64(sc::HTTP_RESPONSE_STATUS_CODE)
        .filter(|c| *c > 0)
}

fn error_type(rec: &Record) -> Option<&str> {
    rec.get_str(sc::ERROR_TYPE).filter(|s| !s.is_empty())
}

/// ERROR for a 5xx response or any `error.type`; UNSET otherwise.
pub fn span_status(rec: &Record) -> Status {
    let code = status_code(rec);
    if let Some(e) = error_type(rec) {
        return Status {
            message: e.to_owned(),
            code: StatusCode::Error as i32,
        };
    }
    match code {
        Some(c) if c >= 500 => Status {
            message: format!("HTTP {c}"),
            code: StatusCode::Error as i32,
        },
        _ => Status::default(),
    }
}

fn clamp_ns(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Start and end of a record in Unix ns (end ≥ start).
pub fn times(rec: &Record, now_ns: u64) -> (u64, u64) {
    let start = rec.get_i64(sc::START_TIME).map(clamp_ns);
    let end = rec.get_i64(sc::END_TIME).map(clamp_ns);
    let dur_ns = rec
        .get(sc::DURATION_MS)
        .and_then(|v| match v {
            AttrValue::Float(f) if f.is_finite() && *f >= 0.0 => Some((*f * 1e6) as u64),
            AttrValue::Int(i) => u64::try_from(*i)
                .ok()
                .map(|ms| ms.saturating_mul(1_000_000)),
            _ => None,
        })
        .unwrap_or(0);
    match (start, end) {
        (Some(s), Some(e)) => (s, e.max(s)),
        (Some(s), None) => (s, s.saturating_add(dur_ns)),
        (None, Some(e)) => (e.saturating_sub(dur_ns), e),
        (None, None) => (now_ns.saturating_sub(dur_ns), now_ns),
    }
}

/// A record's attributes for a span or log record: all but `skip`, without
/// the deprecated `gen_ai.system` unless the gateway asks for it, and with
/// the GenAI agent names beside the seed contract's `agent.*`
/// (`gen_ai.agent.name` = `agent.name`, `gen_ai.agent.id` = `agent.uid`).
fn record_attributes(rec: &Record, skip: &[&str], conventions: Conventions) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = rec
        .iter()
        .filter(|(k, _)| !skip.contains(k))
        .filter(|(k, _)| conventions.gen_ai_system || *k != sc::GEN_AI_SYSTEM)
        .filter(|(k, _)| {
            conventions.legacy_cache_creation || *k != sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
        })
        .filter(|(k, _)| conventions.keeps(k))
        .map(|(k, v)| kv(k, any_value(v)))
        .collect();
    for (from, to) in [
        (sc::AGENT_NAME, sc::GEN_AI_AGENT_NAME),
        (sc::AGENT_UID, sc::GEN_AI_AGENT_ID),
    ] {
        if let Some(v) = rec.get_str(from).filter(|v| !v.is_empty()) {
            if rec.get(to).is_none() {
                out.push(kv_str(to, v));
            }
        }
    }
    out
}

/// One span for a transaction (or a flow carrying `egret.transaction.id`).
pub fn span(rec: &Record, conventions: Conventions, now_ns: u64) -> Option<Span> {
    let ids = span_ids(rec)?;
    let (start, end) = times(rec, now_ns);
    let mut attributes = record_attributes(rec, SPAN_SKIP, conventions);
    if rec.kind() == sc::KIND_TRANSACTION {
        let content = structured_content(rec, conventions);
        add_convention_attributes(rec, conventions, content.as_ref(), &mut attributes);
        if conventions.messages {
            if let Some(c) = &content {
                add_messages(c, &mut attributes);
            }
        }
    } else if conventions.openinference || conventions.mlflow {
        if let Some(inv) = rec.invocation_id() {
            attributes.push(kv_str(sc::SESSION_ID, inv));
        }
        if rec.kind() == sc::KIND_INVOCATION {
            if conventions.openinference {
                attributes.push(kv_str(sc::OPENINFERENCE_SPAN_KIND, "AGENT"));
            }
            if conventions.mlflow {
                attributes.push(kv_str(sc::MLFLOW_SPAN_TYPE, &json_string("AGENT")));
            }
            // Its first request and last response (the recorder put them
            // on the record): the root span's input and output.
            let content = structured_content(rec, conventions);
            add_convention_values(rec, conventions, content.as_ref(), &mut attributes);
        }
    }
    Some(Span {
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        parent_span_id: ids.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: ids.flags(),
        name: span_name_with(rec, conventions.content != ContentMode::None),
        // An invocation runs inside the node (INTERNAL); calls leave it.
        kind: if rec.kind() == sc::KIND_INVOCATION {
            SpanKind::Internal as i32
        } else {
            SpanKind::Client as i32
        },
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(span_status(rec)),
        ..Default::default()
    })
}

fn nonempty(v: &[String], i: usize) -> Option<&str> {
    v.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

/// The record attributes a batch message's span repeats (context: who
/// called whom), when the exporter keeps them.
const BATCH_SPAN_CONTEXT: &[&str] = &[
    sc::INVOCATION_ID,
    sc::AGENT_NAME,
    sc::SANDBOX_ID,
    sc::GATEWAY_NAME,
    sc::GEN_AI_PROVIDER_NAME,
    sc::SERVER_ADDRESS,
    sc::SERVER_PORT,
    sc::MCP_SESSION_ID,
    sc::MCP_PROTOCOL_VERSION,
];

fn str_array<'a>(rec: &'a Record, key: &str) -> &'a [String] {
    match rec.get(key) {
        Some(AttrValue::StrArray(v)) => v,
        _ => &[],
    }
}

/// One span per message of an MCP JSON-RPC batch (`egret.mcp.batch.*`),
/// children of the transaction's span, as a single message's span would
/// be: name `{mcp.method.name} {target}`, `mcp.method.name`,
/// `jsonrpc.request.id`, `gen_ai.tool.name` / `gen_ai.prompt.name`,
/// `gen_ai.operation.name = execute_tool` for tools/call, `error.type` (and
/// `rpc.response.status_code` for a JSON-RPC code), `egret.mcp.batch.index`
/// and `egret.transaction.id` (the record's id). Ids are derived from the
/// transaction's span id and the index, so a re-sent record gives the same.
pub fn batch_spans(rec: &Record, conventions: Conventions, now_ns: u64) -> Vec<Span> {
    let methods = str_array(rec, sc::MCP_BATCH_METHOD_NAMES);
    if rec.kind() != sc::KIND_TRANSACTION || methods.is_empty() {
        return Vec::new();
    }
    let Some(parent) = span_ids(rec) else {
        return Vec::new();
    };
    let ids = str_array(rec, sc::MCP_BATCH_REQUEST_IDS);
    let targets = str_array(rec, sc::MCP_BATCH_TARGETS);
    let errors = str_array(rec, sc::MCP_BATCH_ERROR_TYPES);
    let details = conventions.content != ContentMode::None;
    let (start, end) = times(rec, now_ns);
    let parent_hex: String = parent.span_id.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = Vec::with_capacity(methods.len());
    for (i, method) in methods.iter().enumerate() {
        let mut attributes = Vec::new();
        let mut keep = |key: &str, value: AnyValue| {
            if conventions.keeps(key) {
                attributes.push(kv(key, value));
            }
        };
        let target = nonempty(targets, i);
        if !method.is_empty() {
            keep(sc::MCP_METHOD_NAME, str_value(method));
        }
        if let Some(id) = nonempty(ids, i) {
            keep(sc::JSONRPC_REQUEST_ID, str_value(id));
        }
        match (method.as_str(), target) {
            ("tools/call", Some(t)) => keep(sc::GEN_AI_TOOL_NAME, str_value(t)),
            ("prompts/get", Some(t)) => keep(sc::GEN_AI_PROMPT_NAME, str_value(t)),
            _ => {}
        }
        if method == "tools/call" {
            keep(sc::GEN_AI_OPERATION_NAME, str_value("execute_tool"));
        }
        let error = nonempty(errors, i);
        if let Some(e) = error {
            keep(sc::ERROR_TYPE, str_value(e));
            if e.parse::<i64>().is_ok() {
                keep(sc::RPC_RESPONSE_STATUS_CODE, str_value(e));
            }
        }
        keep(
            sc::MCP_BATCH_INDEX,
            AnyValue {
                value: Some(any_value::Value::IntValue(i as i64)),
            },
        );
        if !rec.id().is_empty() {
            keep(sc::TRANSACTION_ID, str_value(rec.id()));
        }
        for key in BATCH_SPAN_CONTEXT {
            if let Some(v) = rec.get(key) {
                keep(key, any_value(v));
            }
        }
        let name = match (method.is_empty(), target.filter(|_| details)) {
            (true, _) => "response".to_owned(),
            (false, Some(t)) => format!("{method} {t}"),
            (false, None) => method.clone(),
        };
        out.push(Span {
            trace_id: parent.trace_id.to_vec(),
            span_id: derive_span_id(&format!("mcp.batch:{parent_hex}:{i}")).to_vec(),
            parent_span_id: parent.span_id.to_vec(),
            flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
            name,
            kind: SpanKind::Client as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: Some(match error {
                Some(e) => Status {
                    message: e.to_owned(),
                    code: StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Default::default()
        });
    }
    out
}

// ---- conventions ----------------------------------------------------------

/// What kind of GenAI step a transaction is (drives OpenInference and
/// MLflow span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Llm,
    Embedding,
    Tool,
    Other,
}

pub fn step_kind(rec: &Record) -> StepKind {
    let op = rec.get_str(sc::GEN_AI_OPERATION_NAME).unwrap_or("");
    let mcp = rec.get_str(sc::MCP_METHOD_NAME).unwrap_or("");
    match op {
        "chat" | "generate_content" | "text_completion" => StepKind::Llm,
        "embeddings" => StepKind::Embedding,
        "execute_tool" => StepKind::Tool,
        _ if mcp == "tools/call" => StepKind::Tool,
        _ => StepKind::Other,
    }
}

/// OpenInference `llm.provider` for a GenAI `gen_ai.provider.name`.
fn openinference_provider(provider: &str) -> &str {
    match provider {
        p if p.starts_with("gcp.") => "google",
        p if p.starts_with("aws.") => "aws",
        p if p.starts_with("azure.") => "azure",
        p => p,
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// A captured body usable as a convention value: UTF-8 text (not base64:
/// `b64_key` is that body's flag), cut to [`MAX_CONVENTION_VALUE_BYTES`],
/// and whether it is whole JSON.
fn convention_body<'a>(rec: &'a Record, key: &str, b64_key: &str) -> Option<(&'a str, bool)> {
    if rec.get_bool(b64_key) == Some(true) {
        return None;
    }
    let body = rec.get_str(key).filter(|b| !b.is_empty())?;
    let (text, cut) = truncate_utf8(body, MAX_CONVENTION_VALUE_BYTES);
    Some((text, !cut && is_json(text)))
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The conversation of a transaction, when an exporter will send it (the
/// GenAI content attributes, OpenInference messages or MLflow outputs) and
/// the content mode allows it.
fn structured_content(rec: &Record, conv: Conventions) -> Option<Content> {
    if conv.content != ContentMode::Full || !(conv.messages || conv.openinference || conv.mlflow) {
        return None;
    }
    let api = Api::from_name(rec.get_str(sc::GENAI_API)?)?;
    let request = (rec.get_bool(sc::REQUEST_BODY_B64) != Some(true))
        .then(|| rec.get_str(sc::REQUEST_BODY))
        .flatten();
    messages::assemble(
        api,
        Bodies {
            request,
            response: rec.get_str(sc::RESPONSE_BODY),
            response_base64: rec.get_bool(sc::RESPONSE_BODY_B64) == Some(true),
            truncated: rec.get_bool(sc::BODY_TRUNCATED) == Some(true)
                || rec.get_bool(sc::REQ_TRUNCATED) == Some(true)
                || rec.get_bool(sc::RESP_TRUNCATED) == Some(true),
        },
    )
}

/// The GenAI conventions' opt-in content attributes.
fn add_messages(c: &Content, out: &mut Vec<KeyValue>) {
    let mut complete = c.complete;
    for (key, json) in [
        (sc::GEN_AI_SYSTEM_INSTRUCTIONS, c.system_json()),
        (sc::GEN_AI_INPUT_MESSAGES, c.input_json()),
        (sc::GEN_AI_OUTPUT_MESSAGES, c.output_json()),
        (sc::GEN_AI_TOOL_DEFINITIONS, c.tools_json()),
    ] {
        match json {
            Some(j) if j.len() <= MAX_MESSAGES_VALUE_BYTES => out.push(kv_str(key, &j)),
            Some(_) => complete = false,
            None => {}
        }
    }
    out.push(kv(
        sc::MESSAGES_COMPLETE,
        AnyValue {
            value: Some(any_value::Value::BoolValue(complete)),
        },
    ));
}

/// OpenInference's flattened messages:
/// `llm.{input,output}_messages.{i}.message.{role,content}` and
/// `….message.tool_calls.{j}.tool_call.{id,function.name,function.arguments}`;
/// a tool response is a `tool` message with `message.tool_call_id`.
fn add_openinference_messages(c: &Content, out: &mut Vec<KeyValue>) {
    let mut flat = |prefix: &str, i: usize, role: &str, parts: &[Part]| {
        let at = format!("{prefix}.{i}.message");
        out.push(kv_str(&format!("{at}.role"), role));
        let mut text = String::new();
        let mut calls = 0usize;
        for p in parts {
            match p {
                Part::Text { content } => text.push_str(content),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let call = format!("{at}.tool_calls.{calls}.tool_call");
                    if let Some(id) = id {
                        out.push(kv_str(&format!("{call}.id"), id));
                    }
                    out.push(kv_str(&format!("{call}.function.name"), name));
                    if let Some(a) = arguments {
                        out.push(kv_str(
                            &format!("{call}.function.arguments"),
                            &a.to_string(),
                        ));
                    }
                    calls += 1;
                }
                Part::ToolCallResponse { id, response } => {
                    if let Some(id) = id {
                        out.push(kv_str(&format!("{at}.tool_call_id"), id));
                    }
                    match response {
                        serde_json::Value::String(t) => text.push_str(t),
                        other => text.push_str(&other.to_string()),
                    }
                }
                Part::Reasoning { .. } | Part::Blob { .. } | Part::Uri { .. } => {}
            }
        }
        if !text.is_empty() {
            let (t, _) = truncate_utf8(&text, MAX_CONVENTION_VALUE_BYTES);
            out.push(kv_str(&format!("{at}.content"), t));
        }
    };
    let mut i = 0;
    if !c.system_instructions.is_empty() {
        flat(sc::LLM_INPUT_MESSAGES, i, "system", &c.system_instructions);
        i += 1;
    }
    for m in &c.input {
        flat(sc::LLM_INPUT_MESSAGES, i, &m.role, &m.parts);
        i += 1;
    }
    for (i, m) in c.output.iter().enumerate() {
        flat(sc::LLM_OUTPUT_MESSAGES, i, &m.role, &m.parts);
    }
    if let Some(p) = c.parameters_json() {
        out.push(kv_str(sc::LLM_INVOCATION_PARAMETERS, &p));
    }
    // The provider's own tool objects, as OpenInference instrumentations
    // record them (Phoenix's playground tells the API by their shape).
    for (i, t) in c.raw_tools.iter().enumerate() {
        out.push(kv_str(
            &format!("{}.{i}.tool.json_schema", sc::LLM_TOOLS),
            &t.to_string(),
        ));
    }
}

/// The profiles' input and output values (`input.value` / `output.value`,
/// `mlflow.spanInputs` / `mlflow.spanOutputs`) from the record's bodies, in
/// `content: full` only: a transaction's own, or an invocation's first
/// request and last response.
fn add_convention_values(
    rec: &Record,
    conv: Conventions,
    content: Option<&Content>,
    out: &mut Vec<KeyValue>,
) {
    if conv.content != ContentMode::Full {
        return;
    }
    let request = convention_body(rec, sc::REQUEST_BODY, sc::REQUEST_BODY_B64);
    let response = convention_body(rec, sc::RESPONSE_BODY, sc::RESPONSE_BODY_B64);
    if conv.openinference {
        let mime = |json: bool| {
            if json {
                "application/json"
            } else {
                "text/plain"
            }
        };
        if let Some((text, json)) = request {
            out.push(kv_str(sc::INPUT_VALUE, text));
            out.push(kv_str(sc::INPUT_MIME_TYPE, mime(json)));
        }
        if let Some((text, json)) = response {
            out.push(kv_str(sc::OUTPUT_VALUE, text));
            out.push(kv_str(sc::OUTPUT_MIME_TYPE, mime(json)));
        }
    }
    if conv.mlflow {
        // MLflow reads its own attributes with json.loads: every value is
        // JSON text (a JSON body as is, anything else as a JSON string).
        let as_json = |(text, json): (&str, bool)| {
            if json {
                text.to_owned()
            } else {
                json_string(text)
            }
        };
        let fits = |j: &String| j.len() <= MAX_CONVENTION_VALUE_BYTES;
        // A call's span: the conversation as messages (system first), which
        // MLflow's chat view renders for every API; the invocation's root
        // span keeps the first request as sent (MLflow's Request column
        // reads the user text out of it).
        let conversation = content
            .filter(|_| rec.kind() == sc::KIND_TRANSACTION)
            .and_then(Content::conversation_json)
            .filter(fits);
        if let Some(j) = conversation {
            out.push(kv_str(sc::MLFLOW_SPAN_INPUTS, &j));
        } else if let Some(b) = request {
            out.push(kv_str(sc::MLFLOW_SPAN_INPUTS, &as_json(b)));
        }
        // Output messages for a call; for the root span only when the last
        // answer was streamed (the raw JSON gives MLflow's Response column
        // its text, the raw event stream would not).
        let assembled = content
            .filter(|_| {
                rec.kind() == sc::KIND_TRANSACTION || response.is_some_and(|(_, json)| !json)
            })
            .and_then(Content::output_json)
            .filter(fits);
        if let Some(j) = assembled {
            out.push(kv_str(sc::MLFLOW_SPAN_OUTPUTS, &j));
        } else if let Some(b) = response {
            out.push(kv_str(sc::MLFLOW_SPAN_OUTPUTS, &as_json(b)));
        }
    }
}

fn add_convention_attributes(
    rec: &Record,
    conv: Conventions,
    content: Option<&Content>,
    out: &mut Vec<KeyValue>,
) {
    if !(conv.openinference || conv.mlflow) {
        return;
    }
    let kind = step_kind(rec);
    if let Some(inv) = rec.invocation_id() {
        out.push(kv_str(sc::SESSION_ID, inv));
    }
    if conv.openinference {
        let oi_kind = match kind {
            StepKind::Llm => "LLM",
            StepKind::Embedding => "EMBEDDING",
            StepKind::Tool => "TOOL",
            StepKind::Other => "CHAIN",
        };
        out.push(kv_str(sc::OPENINFERENCE_SPAN_KIND, oi_kind));
        let model = rec
            .get_str(sc::GEN_AI_RESPONSE_MODEL)
            .or_else(|| rec.get_str(sc::GEN_AI_REQUEST_MODEL));
        if let Some(m) = model {
            out.push(kv_str(sc::LLM_MODEL_NAME, m));
        }
        if let Some(p) = rec.get_str(sc::GEN_AI_PROVIDER_NAME) {
            out.push(kv_str(sc::LLM_PROVIDER, openinference_provider(p)));
            out.push(kv_str(sc::LLM_SYSTEM, p));
        }
        let input = rec.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS);
        let output = rec.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS);
        if let Some(i) = input {
            out.push(kv_i64(sc::LLM_TOKEN_COUNT_PROMPT, i));
        }
        if let Some(o) = output {
            out.push(kv_i64(sc::LLM_TOKEN_COUNT_COMPLETION, o));
        }
        if input.is_some() || output.is_some() {
            out.push(kv_i64(
                sc::LLM_TOKEN_COUNT_TOTAL,
                input.unwrap_or(0).saturating_add(output.unwrap_or(0)),
            ));
        }
        if let Some(c) = rec.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) {
            out.push(kv_i64(sc::LLM_TOKEN_COUNT_PROMPT_CACHE_READ, c));
        }
        if let Some(c) = rec
            .get_i64(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS)
            .or_else(|| rec.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS))
        {
            out.push(kv_i64(sc::LLM_TOKEN_COUNT_PROMPT_CACHE_WRITE, c));
        }
        if kind == StepKind::Tool && conv.keeps(sc::GEN_AI_TOOL_NAME) {
            if let Some(t) = rec.get_str(sc::GEN_AI_TOOL_NAME) {
                out.push(kv_str(sc::TOOL_NAME, t));
            }
        }
        if let Some(c) = content {
            add_openinference_messages(c, out);
        }
    }
    add_convention_values(rec, conv, content, out);
    if conv.mlflow {
        let t = match kind {
            StepKind::Llm | StepKind::Embedding => "LLM",
            StepKind::Tool => "TOOL",
            StepKind::Other => "UNKNOWN",
        };
        out.push(kv_str(sc::MLFLOW_SPAN_TYPE, &json_string(t)));
    }
}

// ---- logs -----------------------------------------------------------------

/// Log severity for a record: 5xx or a transport error (`error.type`
/// without a status, or with a 1xx–3xx one) ERROR, 4xx WARN, else INFO.
pub fn severity(rec: &Record) -> (SeverityNumber, &'static str) {
    let err = error_type(rec).is_some();
    match status_code(rec) {
        Some(c) if c >= 500 => (SeverityNumber::Error, "ERROR"),
        Some(c) if c >= 400 => (SeverityNumber::Warn, "WARN"),
        _ if err => (SeverityNumber::Error, "ERROR"),
        _ => (SeverityNumber::Info, "INFO"),
    }
}

/// One log record per transaction (bodies in a `{request, response}`
/// KvList body) or flow (no body, INFO). The event name is the LogRecord's
/// `event_name` field (OTLP proto ≥ 1.5), not an attribute.
pub fn log_record(rec: &Record, conventions: Conventions, now_ns: u64) -> Option<LogRecord> {
    let (event, (sev, sev_text)) = match rec.kind() {
        sc::KIND_TRANSACTION => (sc::EVENT_TRANSACTION, severity(rec)),
        sc::KIND_FLOW => (sc::EVENT_FLOW, (SeverityNumber::Info, "INFO")),
        sc::KIND_INVOCATION => (sc::EVENT_INVOCATION, (SeverityNumber::Info, "INFO")),
        _ => return None,
    };
    let (_, end) = times(rec, now_ns);
    let attributes = record_attributes(rec, LOG_SKIP, conventions);
    let mut body_kv = Vec::new();
    if rec.kind() == sc::KIND_TRANSACTION && conventions.content == ContentMode::Full {
        for (name, key) in [
            ("request", sc::REQUEST_BODY),
            ("response", sc::RESPONSE_BODY),
        ] {
            if let Some(b) = rec.get_str(key) {
                body_kv.push(kv_str(name, b));
            }
        }
    }
    let body = (!body_kv.is_empty()).then_some(AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: body_kv,
        })),
    });
    let (trace_id, span_id, flags) = match span_ids(rec) {
        Some(ids) => (ids.trace_id.to_vec(), ids.span_id.to_vec(), FLAG_SAMPLED),
        None => match hex_attr::<16>(rec, sc::TRACE_ID) {
            // A flow of a traced invocation without a transaction: the trace only.
            Some(t) => (t.to_vec(), Vec::new(), FLAG_SAMPLED),
            None => (Vec::new(), Vec::new(), 0),
        },
    };
    Some(LogRecord {
        time_unix_nano: end,
        observed_time_unix_nano: now_ns,
        severity_number: sev as i32,
        severity_text: sev_text.to_owned(),
        body,
        attributes,
        flags,
        trace_id,
        span_id,
        event_name: event.to_owned(),
        ..Default::default()
    })
}

// ---- requests -------------------------------------------------------------

/// Groups items by gateway (dev tee) keeping first-seen order.
fn by_gateway(items: &[Item]) -> Vec<(Option<&str>, Vec<&Record>)> {
    let mut groups: Vec<(Option<&str>, Vec<&Record>)> = Vec::new();
    for it in items {
        let g = it.gateway.as_deref();
        match groups.iter_mut().find(|(k, _)| *k == g) {
            Some((_, v)) => v.push(&it.rec),
            None => groups.push((g, vec![&it.rec])),
        }
    }
    groups
}

/// The traces request for a batch, and how many spans it holds.
pub fn traces_request(
    items: &[Item],
    ctx: &EncodeContext,
    now_ns: u64,
) -> (ExportTraceServiceRequest, usize) {
    let mut n = 0;
    let mut resource_spans = Vec::new();
    for (gateway, recs) in by_gateway(items) {
        let spans: Vec<Span> = recs
            .iter()
            .flat_map(|r| {
                let own = span(r, ctx.conventions, now_ns);
                let batch = if own.is_some() {
                    batch_spans(r, ctx.conventions, now_ns)
                } else {
                    Vec::new()
                };
                own.into_iter().chain(batch)
            })
            .collect();
        if spans.is_empty() {
            continue;
        }
        n += spans.len();
        resource_spans.push(ResourceSpans {
            resource: Some(resource(&ctx.resource, gateway)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                schema_url: SEMCONV_SCHEMA_URL.to_owned(),
            }],
            schema_url: String::new(),
        });
    }
    (ExportTraceServiceRequest { resource_spans }, n)
}

/// The logs request for a batch, and how many log records it holds.
pub fn logs_request(
    items: &[Item],
    ctx: &EncodeContext,
    now_ns: u64,
) -> (ExportLogsServiceRequest, usize) {
    let mut n = 0;
    let mut resource_logs = Vec::new();
    for (gateway, recs) in by_gateway(items) {
        let log_records: Vec<LogRecord> = recs
            .iter()
            .filter_map(|r| log_record(r, ctx.conventions, now_ns))
            .collect();
        if log_records.is_empty() {
            continue;
        }
        n += log_records.len();
        resource_logs.push(ResourceLogs {
            resource: Some(resource(&ctx.resource, gateway)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records,
                schema_url: SEMCONV_SCHEMA_URL.to_owned(),
            }],
            schema_url: String::new(),
        });
    }
    (ExportLogsServiceRequest { resource_logs }, n)
}

/// Whether a record becomes a span at all (transactions; flows with a
/// transaction id).
pub fn has_span(rec: &Record) -> bool {
    match rec.kind() {
        sc::KIND_TRANSACTION | sc::KIND_INVOCATION => true,
        sc::KIND_FLOW => rec.get_str(sc::TRANSACTION_ID).is_some(),
        _ => false,
    }
}

/// Whether a record becomes a log record.
pub fn has_log(rec: &Record) -> bool {
    matches!(
        rec.kind(),
        sc::KIND_TRANSACTION | sc::KIND_FLOW | sc::KIND_INVOCATION
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    pub(crate) fn txn(status: i64) -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::INVOCATION_ID, "inv-1");
        r.set(sc::GEN_AI_OPERATION_NAME, "chat");
        r.set(sc::GEN_AI_REQUEST_MODEL, "gpt-4o");
        r.set(sc::GEN_AI_RESPONSE_MODEL, "gpt-4o-2024-08-06");
        r.set(sc::GEN_AI_PROVIDER_NAME, "openai");
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 12i64);
        r.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, 30i64);
        r.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, vec!["stop".to_owned()]);
        r.set(sc::HTTP_REQUEST_METHOD, "POST");
        r.set(sc::HTTP_RESPONSE_STATUS_CODE, status);
        r.set(sc::SERVER_ADDRESS, "api.openai.com");
        r.set(sc::SERVER_PORT, 443i64);
        r.set(sc::START_TIME, 1_700_000_000_000_000_000i64);
        r.set(sc::END_TIME, 1_700_000_001_500_000_000i64);
        r.set(sc::DURATION_MS, 1500.0);
        r.set(sc::REQUEST_BODY, r#"{"model":"gpt-4o","messages":[]}"#);
        r.set(sc::RESPONSE_BODY, r#"{"id":"x","choices":[]}"#);
        r.set(sc::REQUEST_CONTENT_TYPE, "application/json");
        r
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        match attr(attrs, key) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn ctx(conventions: Conventions) -> EncodeContext {
        let mut resource = BTreeMap::new();
        resource.insert(sc::SERVICE_NAME.to_owned(), AttrValue::from("egret"));
        EncodeContext {
            resource,
            conventions,
        }
    }

    fn item(r: Record) -> Item {
        Item {
            gateway: None,
            rec: Arc::new(r),
        }
    }

    #[test]
    fn mcp_batch_messages_become_child_spans() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::RECORD_ID, "txn-1");
        r.set(sc::INVOCATION_ID, "inv-1");
        r.set(sc::TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736");
        r.set(sc::SPAN_ID, "00f067aa0ba902b7");
        r.set(sc::MCP_METHOD_NAME, "tools/call");
        r.set(sc::GEN_AI_TOOL_NAME, "echo");
        r.set(sc::MCP_SESSION_ID, "sess-1");
        r.set(sc::MCP_BATCH_SIZE, 4i64);
        r.set(
            sc::MCP_BATCH_METHOD_NAMES,
            v(&[
                "tools/call",
                "notifications/progress",
                "prompts/get",
                "nope",
            ]),
        );
        r.set(sc::MCP_BATCH_REQUEST_IDS, v(&["1", "", "b", "4"]));
        r.set(sc::MCP_BATCH_TARGETS, v(&["echo", "", "summarize", ""]));
        r.set(
            sc::MCP_BATCH_ERROR_TYPES,
            v(&["tool_error", "", "", "-32601"]),
        );
        let (req, n) = traces_request(&[item(r.clone())], &ctx(Conventions::default()), 5);
        assert_eq!(n, 5, "the exchange's span and one per message");
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        let parent = &spans[0];
        assert_eq!(parent.name, "tools/call echo");
        let kids = &spans[1..];
        let names: Vec<&str> = kids.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tools/call echo",
                "notifications/progress",
                "prompts/get summarize",
                "nope"
            ]
        );
        for (i, k) in kids.iter().enumerate() {
            assert_eq!(k.trace_id, parent.trace_id);
            assert_eq!(k.parent_span_id, parent.span_id);
            assert_ne!(k.span_id, parent.span_id);
            assert_eq!(attr_str(&k.attributes, sc::TRANSACTION_ID), Some("txn-1"));
            assert_eq!(attr_str(&k.attributes, sc::MCP_SESSION_ID), Some("sess-1"));
            assert_eq!(
                attr(&k.attributes, sc::MCP_BATCH_INDEX),
                Some(&any_value::Value::IntValue(i as i64))
            );
        }
        let a = |i: usize, k: &str| attr_str(&kids[i].attributes, k).map(str::to_owned);
        assert_eq!(
            a(0, sc::GEN_AI_OPERATION_NAME).as_deref(),
            Some("execute_tool")
        );
        assert_eq!(a(0, sc::GEN_AI_TOOL_NAME).as_deref(), Some("echo"));
        assert_eq!(a(0, sc::JSONRPC_REQUEST_ID).as_deref(), Some("1"));
        assert_eq!(a(0, sc::ERROR_TYPE).as_deref(), Some("tool_error"));
        assert_eq!(a(0, sc::RPC_RESPONSE_STATUS_CODE), None);
        assert_eq!(
            kids[0].status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(a(1, sc::JSONRPC_REQUEST_ID), None);
        assert_eq!(a(1, sc::ERROR_TYPE), None);
        assert_eq!(
            kids[1].status.as_ref().unwrap().code,
            StatusCode::Unset as i32
        );
        assert_eq!(a(2, sc::GEN_AI_PROMPT_NAME).as_deref(), Some("summarize"));
        assert_eq!(a(2, sc::GEN_AI_OPERATION_NAME), None);
        assert_eq!(a(3, sc::ERROR_TYPE).as_deref(), Some("-32601"));
        assert_eq!(
            a(3, sc::RPC_RESPONSE_STATUS_CODE).as_deref(),
            Some("-32601")
        );
        // Deterministic: a re-sent record gives the same ids.
        let (again, _) = traces_request(&[item(r.clone())], &ctx(Conventions::default()), 9);
        assert_eq!(
            again.resource_spans[0].scope_spans[0].spans[1].span_id,
            kids[0].span_id
        );
        // content: none drops names and ids, in span names too.
        let none = Conventions {
            content: ContentMode::None,
            ..Conventions::default()
        };
        let (req, _) = traces_request(&[item(r)], &ctx(none), 5);
        let kids = &req.resource_spans[0].scope_spans[0].spans[1..];
        assert_eq!(kids[0].name, "tools/call");
        assert_eq!(attr_str(&kids[0].attributes, sc::GEN_AI_TOOL_NAME), None);
        assert_eq!(attr_str(&kids[0].attributes, sc::JSONRPC_REQUEST_ID), None);
        assert_eq!(
            attr_str(&kids[0].attributes, sc::ERROR_TYPE),
            Some("tool_error")
        );
        // Not a batch: no children.
        let (_, n) = traces_request(&[item(txn(200))], &ctx(Conventions::default()), 5);
        assert_eq!(n, 1);
    }

    #[test]
    fn span_round_trips_through_protobuf() {
        let mut r = txn(200);
        r.set(sc::TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736");
        r.set(sc::SPAN_ID, "00f067aa0ba902b7");
        r.set(sc::PARENT_SPAN_ID, "53995c3f42cd8ad8");
        let (req, n) = traces_request(&[item(r)], &ctx(Conventions::default()), 5);
        assert_eq!(n, 1);
        let bytes = req.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &back.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(attr_str(&res.attributes, sc::SERVICE_NAME), Some("egret"));
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, SCOPE_NAME);
        let s = &ss.spans[0];
        assert_eq!(s.name, "chat gpt-4o");
        assert_eq!(s.kind, SpanKind::Client as i32);
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s.span_id), "00f067aa0ba902b7");
        assert_eq!(hex(&s.parent_span_id), "53995c3f42cd8ad8");
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano, 1_700_000_001_500_000_000);
        assert_eq!(s.status.as_ref().unwrap().code, StatusCode::Unset as i32);
        assert_eq!(
            attr_str(&s.attributes, sc::GEN_AI_PROVIDER_NAME),
            Some("openai")
        );
        assert_eq!(
            attr(&s.attributes, sc::GEN_AI_USAGE_INPUT_TOKENS),
            Some(&any_value::Value::IntValue(12))
        );
        assert_eq!(
            attr(&s.attributes, sc::DURATION_MS),
            Some(&any_value::Value::DoubleValue(1500.0))
        );
        match attr(&s.attributes, sc::GEN_AI_RESPONSE_FINISH_REASONS) {
            Some(any_value::Value::ArrayValue(a)) => {
                assert_eq!(a.values, vec![str_value("stop")]);
            }
            other => panic!("finish reasons: {other:?}"),
        }
        for hidden in [
            sc::REQUEST_BODY,
            sc::RESPONSE_BODY,
            sc::TRACE_ID,
            sc::SPAN_ID,
            sc::START_TIME,
        ] {
            assert!(attr(&s.attributes, hidden).is_none(), "{hidden} leaked");
        }
        assert_eq!(
            attr_str(&s.attributes, sc::RECORD_ID),
            Some(txn_id(&s.attributes))
        );
        // No convention attributes without a profile.
        assert!(attr(&s.attributes, sc::OPENINFERENCE_SPAN_KIND).is_none());
    }

    fn txn_id(attrs: &[KeyValue]) -> &str {
        attr_str(attrs, sc::RECORD_ID).unwrap()
    }

    pub(crate) fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ids_are_deterministic_without_trace_context() {
        let r = txn(200);
        let a = span(&r, Conventions::default(), 0).unwrap();
        let b = span(&r.clone(), Conventions::default(), 99).unwrap();
        assert_eq!(a.trace_id, b.trace_id);
        assert_eq!(a.span_id, b.span_id);
        assert_eq!(a.trace_id, derive_trace_id(r.id()).to_vec());
        assert!(a.parent_span_id.is_empty());
        assert_eq!(a.flags, 0x101);
        let other = span(&txn(200), Conventions::default(), 0).unwrap();
        assert_ne!(a.trace_id, other.trace_id);
        // Malformed ids fall back to derived ones.
        let mut bad = r.clone();
        bad.set(sc::TRACE_ID, "zz");
        bad.set(sc::SPAN_ID, "0000000000000000");
        let c = span(&bad, Conventions::default(), 0).unwrap();
        assert_eq!(c.trace_id, a.trace_id);
        assert_eq!(c.span_id, a.span_id);
    }

    #[test]
    fn flows_become_spans_only_with_a_transaction() {
        let mut flow = Record::new(sc::KIND_FLOW);
        flow.set(sc::SERVER_ADDRESS, "10.0.0.1");
        assert!(span(&flow, Conventions::default(), 0).is_none());
        assert!(!has_span(&flow));
        let t = txn(200);
        flow.set(sc::TRANSACTION_ID, t.id());
        let fs = span(&flow, Conventions::default(), 0).unwrap();
        let ts = span(&t, Conventions::default(), 0).unwrap();
        assert_eq!(fs.trace_id, ts.trace_id);
        assert_eq!(fs.parent_span_id, ts.span_id);
        assert_ne!(fs.span_id, ts.span_id);
        assert_eq!(fs.name, sc::EVENT_FLOW);
        let (req, n) = traces_request(
            &[item(Record::new(sc::KIND_FLOW)), item(flow)],
            &ctx(Conventions::default()),
            0,
        );
        assert_eq!(n, 1);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 1);
    }

    /// An invocation record becomes an INTERNAL `invoke_agent {agent}` span
    /// and its log; a call of that invocation is its local child, and a
    /// call under the sandbox's own traceparent keeps a remote parent.
    #[test]
    fn invocation_span_parents_the_calls() {
        let a = crate::attribution::Attribution {
            invocation_id: "inv-1".into(),
            agent_name: "coder".into(),
            ..Default::default()
        };
        let root = a.trace_root();
        let mut inv = Record::new(sc::KIND_INVOCATION);
        a.apply(&mut inv);
        inv.set(sc::GEN_AI_OPERATION_NAME, OPERATION_INVOKE_AGENT);
        inv.set(sc::TRACE_ID, root.trace_id.as_str());
        inv.set(sc::SPAN_ID, root.span_id.as_str());
        inv.set(sc::START_TIME, 1i64);
        inv.set(sc::END_TIME, 9i64);
        let s = span(&inv, Conventions::default(), 0).unwrap();
        assert_eq!(s.name, "invoke_agent coder");
        assert_eq!(s.kind, SpanKind::Internal as i32);
        assert!(s.parent_span_id.is_empty());
        assert!(has_log(&inv) && log_record(&inv, Conventions::default(), 0).is_some());

        let mut call = txn(200);
        call.set(sc::TRACE_ID, root.trace_id.as_str());
        call.set(sc::SPAN_ID, "00f067aa0ba902b7");
        call.set(sc::PARENT_SPAN_ID, root.span_id.as_str());
        let c = span(&call, Conventions::default(), 0).unwrap();
        assert_eq!(
            (c.trace_id.clone(), c.parent_span_id.clone()),
            (s.trace_id.clone(), s.span_id.clone())
        );
        assert_eq!(
            c.flags & FLAG_IS_REMOTE,
            0,
            "egret's own span is a local parent"
        );
        call.set(sc::PARENT_SPAN_ID, "b7ad6b7169203331");
        let c = span(&call, Conventions::default(), 0).unwrap();
        assert_ne!(c.flags & FLAG_IS_REMOTE, 0, "the sandbox's span is remote");
    }

    #[test]
    fn span_names_and_status() {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::HTTP_REQUEST_METHOD, "GET");
        assert_eq!(span_name(&r), "GET");
        r.set(sc::GEN_AI_OPERATION_NAME, "chat");
        assert_eq!(span_name(&r), "GET");
        r.set(sc::GEN_AI_TOOL_NAME, "search");
        assert_eq!(span_name(&r), "chat search");
        r.set(sc::GEN_AI_REQUEST_MODEL, "m");
        assert_eq!(span_name(&r), "chat m");
        let mut m = Record::new(sc::KIND_TRANSACTION);
        m.set(sc::MCP_METHOD_NAME, "tools/call");
        m.set(sc::GEN_AI_TOOL_NAME, "search");
        assert_eq!(span_name(&m), "tools/call search");
        // The MCP name wins over the GenAI operation tools/call also has.
        m.set(sc::GEN_AI_OPERATION_NAME, "execute_tool");
        assert_eq!(span_name(&m), "tools/call search");
        let mut p = Record::new(sc::KIND_TRANSACTION);
        p.set(sc::MCP_METHOD_NAME, "prompts/get");
        p.set(sc::GEN_AI_PROMPT_NAME, "summarize");
        assert_eq!(span_name(&p), "prompts/get summarize");
        p.set(sc::MCP_METHOD_NAME, "initialize");
        p.remove(sc::GEN_AI_PROMPT_NAME);
        assert_eq!(span_name(&p), "initialize");
        assert_eq!(
            span_name(&Record::new(sc::KIND_TRANSACTION)),
            "egret.transaction"
        );

        assert_eq!(span_status(&txn(200)).code, StatusCode::Unset as i32);
        assert_eq!(span_status(&txn(404)).code, StatusCode::Unset as i32);
        let s = span_status(&txn(503));
        assert_eq!(
            (s.code, s.message.as_str()),
            (StatusCode::Error as i32, "HTTP 503")
        );
        let mut e = txn(200);
        e.remove(sc::HTTP_RESPONSE_STATUS_CODE);
        e.set(sc::ERROR_TYPE, "connection_reset");
        let s = span_status(&e);
        assert_eq!(
            (s.code, s.message.as_str()),
            (StatusCode::Error as i32, "connection_reset")
        );
    }

    #[test]
    fn log_severity_per_status() {
        for (status, sev, text) in [
            (200, SeverityNumber::Info, "INFO"),
            (204, SeverityNumber::Info, "INFO"),
            (302, SeverityNumber::Info, "INFO"),
            (400, SeverityNumber::Warn, "WARN"),
            (429, SeverityNumber::Warn, "WARN"),
            (500, SeverityNumber::Error, "ERROR"),
            (503, SeverityNumber::Error, "ERROR"),
        ] {
            let l = log_record(&txn(status), Conventions::default(), 0).unwrap();
            assert_eq!(l.severity_number, sev as i32, "{status}");
            assert_eq!(l.severity_text, text);
            assert_eq!(
                sev as i32,
                match text {
                    "INFO" => 9,
                    "WARN" => 13,
                    _ => 17,
                }
            );
        }
        let mut e = txn(200);
        e.remove(sc::HTTP_RESPONSE_STATUS_CODE);
        e.set(sc::ERROR_TYPE, "timeout");
        assert_eq!(
            log_record(&e, Conventions::default(), 0)
                .unwrap()
                .severity_number,
            17
        );
        let flow = Record::new(sc::KIND_FLOW);
        let l = log_record(&flow, Conventions::default(), 0).unwrap();
        assert_eq!(l.severity_number, 9);
        assert_eq!(l.event_name, sc::EVENT_FLOW);
        assert!(l.trace_id.is_empty() && l.body.is_none());
    }

    #[test]
    fn log_carries_bodies_and_joins_the_span() {
        let r = txn(200);
        let (req, n) = logs_request(&[item(r.clone())], &ctx(Conventions::default()), 7);
        assert_eq!(n, 1);
        let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let l = &back.resource_logs[0].scope_logs[0].log_records[0];
        let s = span(&r, Conventions::default(), 0).unwrap();
        assert_eq!(l.trace_id, s.trace_id);
        assert_eq!(l.span_id, s.span_id);
        assert_eq!(l.event_name, sc::EVENT_TRANSACTION);
        // The event name is the field only: the `event.name` attribute is
        // deprecated.
        assert!(attr(&l.attributes, "event.name").is_none());
        assert_eq!(l.time_unix_nano, 1_700_000_001_500_000_000);
        assert_eq!(l.observed_time_unix_nano, 7);
        assert!(attr(&l.attributes, sc::REQUEST_BODY).is_none());
        match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::KvlistValue(kvl)) => {
                assert_eq!(
                    attr_str(&kvl.values, "request"),
                    Some(r#"{"model":"gpt-4o","messages":[]}"#)
                );
                assert_eq!(
                    attr_str(&kvl.values, "response"),
                    Some(r#"{"id":"x","choices":[]}"#)
                );
            }
            other => panic!("body {other:?}"),
        }
        // base64 bodies are passed through with their direction's flag and
        // content encoding as attributes; spans carry the encoding only.
        let mut b = txn(200);
        b.set(sc::RESPONSE_BODY_B64, true);
        b.set(sc::REQUEST_BODY_B64, false);
        b.set(sc::RESPONSE_BODY, "AAEC");
        b.set(sc::RESPONSE_CONTENT_ENCODING, "gzip");
        b.set(sc::RESPONSE_BODY_DECODE_ERROR, "decode_failed");
        let l = log_record(&b, Conventions::default(), 0).unwrap();
        assert_eq!(
            attr(&l.attributes, sc::RESPONSE_BODY_B64),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            attr(&l.attributes, sc::REQUEST_BODY_B64),
            Some(&any_value::Value::BoolValue(false))
        );
        assert_eq!(
            attr_str(&l.attributes, sc::RESPONSE_CONTENT_ENCODING),
            Some("gzip")
        );
        assert_eq!(
            attr_str(&l.attributes, sc::RESPONSE_BODY_DECODE_ERROR),
            Some("decode_failed")
        );
        let s = span(&b, Conventions::default(), 0).unwrap();
        assert!(attr(&s.attributes, sc::RESPONSE_BODY_B64).is_none());
        assert_eq!(
            attr_str(&s.attributes, sc::RESPONSE_CONTENT_ENCODING),
            Some("gzip")
        );
    }

    /// `content: metadata` drops every body, `none` also the details read
    /// from the content (path, ids, tool name, also in the span name);
    /// both keep the envelope, the model and the token counts.
    #[test]
    fn content_modes_keep_what_they_promise() {
        let mut r = txn(200);
        r.set(sc::URL_PATH, "/v1/chat/completions");
        r.set(sc::GEN_AI_CONVERSATION_ID, "conv_secret");
        r.set(sc::MCP_METHOD_NAME, "tools/call");
        r.set(sc::GEN_AI_TOOL_NAME, "delete_everything");
        r.set(sc::REQUEST_BODY_B64, false);
        let text = |content: ContentMode| {
            let conv = Conventions {
                openinference: true,
                mlflow: true,
                content,
                ..Conventions::default()
            };
            let span = span(&r, conv, 0).unwrap();
            let log = log_record(&r, conv, 0).unwrap();
            (format!("{span:?}"), format!("{log:?}"), span.name)
        };
        let (span, log, name) = text(ContentMode::Full);
        assert!(log.contains("\\\"messages\\\"") && span.contains("input.value"));
        assert!(span.contains("conv_secret") && name == "tools/call delete_everything");
        for mode in [ContentMode::Metadata, ContentMode::None] {
            let (span, log, name) = text(mode);
            for gone in [
                "messages",
                "choices",
                sc::INPUT_VALUE,
                sc::OUTPUT_VALUE,
                sc::MLFLOW_SPAN_INPUTS,
                sc::REQUEST_BODY_B64,
            ] {
                assert!(
                    !span.contains(gone) && !log.contains(gone),
                    "{mode:?}: {gone}"
                );
            }
            for kept in [sc::GEN_AI_USAGE_OUTPUT_TOKENS, "gpt-4o", "invocation.id"] {
                assert!(
                    span.contains(kept) && log.contains(kept),
                    "{mode:?}: {kept}"
                );
            }
            let details = mode == ContentMode::Metadata;
            for d in ["conv_secret", "/v1/chat/completions", "delete_everything"] {
                assert_eq!(span.contains(d), details, "{mode:?}: {d} in span");
                assert_eq!(log.contains(d), details, "{mode:?}: {d} in log");
            }
            let want = if details {
                "tools/call delete_everything"
            } else {
                "tools/call"
            };
            assert_eq!(name, want);
        }
    }

    #[test]
    fn openinference_profile() {
        let mut r = txn(200);
        r.set(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 4i64);
        let conv = Conventions {
            openinference: true,
            mlflow: false,
            gen_ai_system: false,
            legacy_cache_creation: true,
            content: ContentMode::Full,
            messages: false,
        };
        let s = span(&r, conv, 0).unwrap();
        let a = &s.attributes;
        assert_eq!(attr_str(a, sc::OPENINFERENCE_SPAN_KIND), Some("LLM"));
        assert_eq!(attr_str(a, sc::LLM_MODEL_NAME), Some("gpt-4o-2024-08-06"));
        assert_eq!(attr_str(a, sc::LLM_PROVIDER), Some("openai"));
        assert_eq!(
            attr(a, sc::LLM_TOKEN_COUNT_PROMPT),
            Some(&any_value::Value::IntValue(12))
        );
        assert_eq!(
            attr(a, sc::LLM_TOKEN_COUNT_COMPLETION),
            Some(&any_value::Value::IntValue(30))
        );
        assert_eq!(
            attr(a, sc::LLM_TOKEN_COUNT_TOTAL),
            Some(&any_value::Value::IntValue(42))
        );
        assert_eq!(
            attr(a, sc::LLM_TOKEN_COUNT_PROMPT_CACHE_READ),
            Some(&any_value::Value::IntValue(4))
        );
        assert_eq!(
            attr_str(a, sc::INPUT_VALUE),
            Some(r#"{"model":"gpt-4o","messages":[]}"#)
        );
        assert_eq!(attr_str(a, sc::INPUT_MIME_TYPE), Some("application/json"));
        assert_eq!(attr_str(a, sc::OUTPUT_MIME_TYPE), Some("application/json"));
        assert_eq!(attr_str(a, sc::SESSION_ID), Some("inv-1"));
        assert!(attr(a, sc::MLFLOW_SPAN_TYPE).is_none());

        let mut tool = Record::new(sc::KIND_TRANSACTION);
        tool.set(sc::MCP_METHOD_NAME, "tools/call");
        tool.set(sc::GEN_AI_TOOL_NAME, "search");
        tool.set(sc::RESPONSE_BODY, "data: {\"x\":1}\n\n");
        let s = span(&tool, conv, 0).unwrap();
        assert_eq!(
            attr_str(&s.attributes, sc::OPENINFERENCE_SPAN_KIND),
            Some("TOOL")
        );
        assert_eq!(attr_str(&s.attributes, sc::TOOL_NAME), Some("search"));
        assert_eq!(
            attr_str(&s.attributes, sc::OUTPUT_MIME_TYPE),
            Some("text/plain")
        );
        let plain = Record::new(sc::KIND_TRANSACTION);
        let s = span(&plain, conv, 0).unwrap();
        assert_eq!(
            attr_str(&s.attributes, sc::OPENINFERENCE_SPAN_KIND),
            Some("CHAIN")
        );

        // Long bodies are cut on a char boundary and lose the JSON mime type.
        let mut big = txn(200);
        big.set(
            sc::REQUEST_BODY,
            format!("{{\"a\":\"{}\"}}", "é".repeat(40_000)),
        );
        let s = span(&big, conv, 0).unwrap();
        let v = attr_str(&s.attributes, sc::INPUT_VALUE).unwrap();
        assert!(v.len() <= MAX_CONVENTION_VALUE_BYTES);
        assert_eq!(
            attr_str(&s.attributes, sc::INPUT_MIME_TYPE),
            Some("text/plain")
        );
        // base64 bodies are not offered as input/output text; the flag is
        // per direction (a text request beside a base64 response).
        let mut b = txn(200);
        b.set(sc::REQUEST_BODY_B64, true);
        let s = span(&b, conv, 0).unwrap();
        assert!(attr(&s.attributes, sc::INPUT_VALUE).is_none());
        assert!(attr(&s.attributes, sc::OUTPUT_VALUE).is_some());
        let mut b = txn(200);
        b.set(sc::RESPONSE_BODY_B64, true);
        let s = span(&b, conv, 0).unwrap();
        assert!(attr(&s.attributes, sc::INPUT_VALUE).is_some());
        assert!(attr(&s.attributes, sc::OUTPUT_VALUE).is_none());
    }

    #[test]
    fn mlflow_profile() {
        let conv = Conventions {
            openinference: false,
            mlflow: true,
            gen_ai_system: false,
            legacy_cache_creation: true,
            content: ContentMode::Full,
            messages: false,
        };
        let mut r = txn(200);
        r.set(sc::RESPONSE_BODY, "event: message_start\ndata: {}\n\n");
        let s = span(&r, conv, 0).unwrap();
        let a = &s.attributes;
        assert_eq!(
            attr_str(a, sc::MLFLOW_SPAN_INPUTS),
            Some(r#"{"model":"gpt-4o","messages":[]}"#)
        );
        let out = attr_str(a, sc::MLFLOW_SPAN_OUTPUTS).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!("event: message_start\ndata: {}\n\n")
        );
        assert_eq!(attr_str(a, sc::MLFLOW_SPAN_TYPE), Some("\"LLM\""));
        assert_eq!(attr_str(a, sc::SESSION_ID), Some("inv-1"));
        assert!(attr(a, sc::OPENINFERENCE_SPAN_KIND).is_none());
        let mut t = Record::new(sc::KIND_TRANSACTION);
        t.set(sc::MCP_METHOD_NAME, "tools/call");
        let s = span(&t, conv, 0).unwrap();
        assert_eq!(
            attr_str(&s.attributes, sc::MLFLOW_SPAN_TYPE),
            Some("\"TOOL\"")
        );
        let s = span(&Record::new(sc::KIND_TRANSACTION), conv, 0).unwrap();
        assert_eq!(
            attr_str(&s.attributes, sc::MLFLOW_SPAN_TYPE),
            Some("\"UNKNOWN\"")
        );
    }

    #[test]
    fn structured_content_from_a_streamed_chat_under_each_mode() {
        let mut r = txn(200);
        r.set(sc::GENAI_API, "openai.chat_completions");
        r.set(
            sc::REQUEST_BODY,
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        r.set(
            sc::RESPONSE_BODY,
            concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
                "data: [DONE]\n\n"
            ),
        );
        let all = Conventions {
            openinference: true,
            mlflow: true,
            messages: true,
            ..Conventions::default()
        };
        let s = span(&r, all, 0).unwrap();
        let a = &s.attributes;
        let json = |k| serde_json::from_str::<serde_json::Value>(attr_str(a, k).unwrap()).unwrap();
        let output = serde_json::json!([{"role": "assistant", "finish_reason": "stop",
            "parts": [{"type": "text", "content": "Hello"}]}]);
        assert_eq!(json(sc::GEN_AI_OUTPUT_MESSAGES), output);
        assert_eq!(
            json(sc::GEN_AI_INPUT_MESSAGES),
            serde_json::json!([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
        );
        assert_eq!(json(sc::GEN_AI_TOOL_DEFINITIONS)[0]["name"], "f");
        // OpenInference gets the provider's own tool object, not the flat
        // definition (Phoenix tells the API by its shape).
        assert_eq!(
            json("llm.tools.0.tool.json_schema"),
            serde_json::json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(
            attr(a, sc::MESSAGES_COMPLETE),
            Some(&any_value::Value::BoolValue(true))
        );
        assert_eq!(
            attr_str(a, "llm.output_messages.0.message.content"),
            Some("Hello")
        );
        assert_eq!(
            attr_str(a, "llm.input_messages.0.message.role"),
            Some("user")
        );
        assert_eq!(
            json(sc::LLM_INVOCATION_PARAMETERS),
            serde_json::json!({"model": "gpt-4o", "stream": true})
        );
        assert_eq!(json(sc::MLFLOW_SPAN_OUTPUTS), output, "not the raw stream");
        // Opt-in: without `messages` only the profiles' own attributes.
        let s = span(
            &r,
            Conventions {
                messages: false,
                ..all
            },
            0,
        )
        .unwrap();
        assert!(attr(&s.attributes, sc::GEN_AI_OUTPUT_MESSAGES).is_none());
        assert!(attr_str(&s.attributes, "llm.output_messages.0.message.content").is_some());
        // No content: nothing assembled, whatever else is on.
        for content in [ContentMode::Metadata, ContentMode::None] {
            let s = span(&r, Conventions { content, ..all }, 0).unwrap();
            for kv in &s.attributes {
                assert!(
                    !kv.key.contains("messages")
                        && !kv.key.starts_with("llm.invocation")
                        && kv.key != sc::MLFLOW_SPAN_OUTPUTS,
                    "{content:?}: {}",
                    kv.key
                );
            }
        }
        // A cut body: sent, and marked partial.
        r.set(sc::BODY_TRUNCATED, true);
        let s = span(&r, all, 0).unwrap();
        assert_eq!(
            attr(&s.attributes, sc::MESSAGES_COMPLETE),
            Some(&any_value::Value::BoolValue(false))
        );
    }

    #[test]
    fn invocation_span_carries_its_first_request_and_last_response() {
        let mut inv = Record::new(sc::KIND_INVOCATION);
        inv.set(sc::INVOCATION_ID, "inv-io");
        inv.set(sc::AGENT_NAME, "planner");
        inv.set(sc::TRACE_ID, "0af7651916cd43dd8448eb211c80319c");
        inv.set(sc::SPAN_ID, "b7ad6b7169203331");
        inv.set(sc::START_TIME, 1_700_000_000_000_000_000i64);
        inv.set(sc::END_TIME, 1_700_000_009_000_000_000i64);
        inv.set(
            sc::REQUEST_BODY,
            r#"{"messages":[{"role":"user","content":"plan"}]}"#,
        );
        inv.set(
            sc::RESPONSE_BODY,
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"done\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        inv.set(sc::GENAI_API, "anthropic.messages");
        let conv = Conventions {
            openinference: true,
            mlflow: true,
            ..Conventions::default()
        };
        let s = span(&inv, conv, 0).unwrap();
        let a = &s.attributes;
        assert_eq!(
            attr_str(a, sc::MLFLOW_SPAN_INPUTS),
            Some(r#"{"messages":[{"role":"user","content":"plan"}]}"#)
        );
        let out: serde_json::Value =
            serde_json::from_str(attr_str(a, sc::MLFLOW_SPAN_OUTPUTS).unwrap()).unwrap();
        assert_eq!(out[0]["parts"][0]["content"], "done");
        assert_eq!(attr_str(a, sc::INPUT_MIME_TYPE), Some("application/json"));
        assert!(attr_str(a, sc::OUTPUT_VALUE)
            .unwrap()
            .contains("text_delta"));
        assert!(
            attr(a, sc::REQUEST_BODY).is_none(),
            "bodies are not span attributes"
        );
        // Not in `metadata` or `none`.
        for content in [ContentMode::Metadata, ContentMode::None] {
            let s = span(&inv, Conventions { content, ..conv }, 0).unwrap();
            assert!(attr(&s.attributes, sc::MLFLOW_SPAN_INPUTS).is_none());
            assert!(attr(&s.attributes, sc::INPUT_VALUE).is_none());
        }
    }

    #[test]
    fn sampling_is_consistent_per_invocation() {
        let mut kept = 0;
        for i in 0..2000 {
            let inv = format!("inv-{i}");
            let decisions: Vec<bool> = (0..5)
                .map(|_| {
                    let mut r = Record::new(sc::KIND_TRANSACTION);
                    r.set(sc::INVOCATION_ID, inv.as_str());
                    sampled(&r, 0.25)
                })
                .collect();
            assert!(decisions.iter().all(|d| *d == decisions[0]), "{inv}");
            if decisions[0] {
                kept += 1;
            }
        }
        assert!((350..650).contains(&kept), "kept {kept} of 2000 at 0.25");
        let r = Record::new(sc::KIND_FLOW);
        assert!(sampled(&r, 1.0));
        assert!(!sampled(&r, 0.0));
        // Without an invocation the record id decides, stably.
        assert_eq!(sampled(&r, 0.5), sampled(&r.clone(), 0.5));
        // A key kept at a lower ratio is kept at every higher one.
        for i in 0..200 {
            let k = format!("k{i}");
            let p = sample_key(&k);
            assert!((0.0..1.0).contains(&p));
        }
    }

    #[test]
    fn tee_groups_by_gateway() {
        let a = Item {
            gateway: Some(Arc::from("a")),
            rec: Arc::new(txn(200)),
        };
        let b = Item {
            gateway: Some(Arc::from("b")),
            rec: Arc::new(txn(200)),
        };
        let (req, n) = traces_request(&[a.clone(), b, a], &ctx(Conventions::default()), 0);
        assert_eq!(n, 3);
        assert_eq!(req.resource_spans.len(), 2);
        let res = req.resource_spans[1].resource.as_ref().unwrap();
        assert_eq!(attr_str(&res.attributes, sc::GATEWAY_NAME), Some("b"));
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[test]
    fn the_old_cache_write_name_goes_while_switched_on() {
        let mut r = txn(200);
        r.set(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, 512i64);
        r.set(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, 512i64);
        let on = Conventions::default();
        let off = Conventions {
            legacy_cache_creation: false,
            ..on
        };
        for (conv, old) in [(on, true), (off, false)] {
            let s = span(&r, conv, 0).unwrap();
            let l = log_record(&r, conv, 0).unwrap();
            for attrs in [&s.attributes, &l.attributes] {
                assert!(attr(attrs, sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS).is_some());
                assert_eq!(
                    attr(attrs, sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS).is_some(),
                    old
                );
            }
        }
    }

    #[test]
    fn gen_ai_system_only_when_asked_and_agent_names_beside_agent() {
        let mut r = txn(200);
        r.set(sc::GEN_AI_SYSTEM, "openai");
        r.set(sc::AGENT_NAME, "coder");
        r.set(sc::AGENT_UID, "uid-7");
        let off = Conventions::default();
        let on = Conventions {
            gen_ai_system: true,
            ..Conventions::default()
        };
        let s = span(&r, off, 0).unwrap();
        let l = log_record(&r, off, 0).unwrap();
        for attrs in [&s.attributes, &l.attributes] {
            assert!(attr(attrs, sc::GEN_AI_SYSTEM).is_none());
            assert_eq!(attr_str(attrs, sc::GEN_AI_PROVIDER_NAME), Some("openai"));
            assert_eq!(attr_str(attrs, sc::AGENT_NAME), Some("coder"));
            assert_eq!(attr_str(attrs, sc::GEN_AI_AGENT_NAME), Some("coder"));
            assert_eq!(attr_str(attrs, sc::AGENT_UID), Some("uid-7"));
            assert_eq!(attr_str(attrs, sc::GEN_AI_AGENT_ID), Some("uid-7"));
            let keys: Vec<&str> = attrs.iter().map(|a| a.key.as_str()).collect();
            let mut dedup = keys.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(keys.len(), dedup.len(), "duplicate keys: {keys:?}");
        }
        let s = span(&r, on, 0).unwrap();
        let l = log_record(&r, on, 0).unwrap();
        assert_eq!(attr_str(&s.attributes, sc::GEN_AI_SYSTEM), Some("openai"));
        assert_eq!(attr_str(&l.attributes, sc::GEN_AI_SYSTEM), Some("openai"));
        // No agent attribution, no GenAI agent names.
        let s = span(&txn(200), off, 0).unwrap();
        assert!(attr(&s.attributes, sc::GEN_AI_AGENT_NAME).is_none());
        assert!(attr(&s.attributes, sc::GEN_AI_AGENT_ID).is_none());
    }

    #[test]
    fn hex_ids() {
        assert_eq!(parse_hex_id::<2>("0aFF"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex_id::<2>("0a"), None);
        assert_eq!(parse_hex_id::<2>("0000"), None);
        assert_eq!(parse_hex_id::<2>("0g00"), None);
        assert_eq!(truncate_utf8("héllo", 2), ("h", true));
        assert_eq!(truncate_utf8("hé", 10), ("hé", false));
    }

    #[test]
    fn times_fill_gaps() {
        let mut r = Record::new(sc::KIND_FLOW);
        r.set(sc::START_TIME, 1_000i64);
        r.set(sc::DURATION_MS, 2.0);
        assert_eq!(times(&r, 0), (1_000, 2_001_000));
        r.set(sc::END_TIME, 500i64);
        assert_eq!(times(&r, 0), (1_000, 1_000));
        let mut e = Record::new(sc::KIND_FLOW);
        e.set(sc::DURATION_MS, 1i64);
        assert_eq!(times(&e, 5_000_000), (4_000_000, 5_000_000));
    }
}
