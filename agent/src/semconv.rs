//! Every attribute name egret emits, in one place.
//!
//! The same names are used for `egret records --json` keys, OTLP attributes
//! and (dots → underscores) ClickHouse columns. GenAI names follow the
//! OpenTelemetry semantic conventions v1.41.1 (see `docs/attributes.md`).
//!
//! `docs/semconv/` is egret's semantic-convention registry (OpenTelemetry
//! YAML): every name here is in it, and every name in it is here
//! (`agent/tests/semconv_registry.rs` compares them, names and types).
//! The attributes egret defines itself, with their types, are listed in
//! [`DEFINED`]; every other attribute name is one of the core registry's.

// Record envelope.
pub const RECORD_KIND: &str = "egret.record.kind";
pub const RECORD_ID: &str = "egret.record.id";
pub const START_TIME: &str = "egret.start_time_unix_nano";
pub const END_TIME: &str = "egret.end_time_unix_nano";
pub const TRANSACTION_ID: &str = "egret.transaction.id";

// Attribution.
pub const INVOCATION_ID: &str = "invocation.id";
pub const AGENT_KIND: &str = "agent.kind";
pub const AGENT_NAMESPACE: &str = "agent.namespace";
pub const AGENT_NAME: &str = "agent.name";
pub const AGENT_UID: &str = "agent.uid";
pub const AGENT_REVISION: &str = "agent.revision";
/// The GenAI conventions' agent names, sent over OTLP beside `agent.*`:
/// `gen_ai.agent.name` = `agent.name`, `gen_ai.agent.id` = `agent.uid`.
pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
pub const GEN_AI_AGENT_ID: &str = "gen_ai.agent.id";
pub const SANDBOX_ID: &str = "egret.sandbox.id";
pub const ATTRIBUTION_SOURCE: &str = "egret.attribution.source";

// gen_ai.*
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
pub const GEN_AI_SYSTEM: &str = "gen_ai.system";
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
/// The name of `gen_ai.usage.cache_write.input_tokens` before
/// semantic-conventions-genai v0.1.0; kept beside it while consumers move.
pub const GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: &str =
    "gen_ai.usage.cache_creation.input_tokens";
pub const GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: &str = "gen_ai.usage.cache_write.input_tokens";
pub const GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
/// Usage split by modality (semantic-conventions-genai v0.1.0's usage
/// breakdown), each a part of its total: text, image, audio.
pub const GEN_AI_USAGE_TEXT_INPUT_TOKENS: &str = "gen_ai.usage.text.input_tokens";
pub const GEN_AI_USAGE_IMAGE_INPUT_TOKENS: &str = "gen_ai.usage.image.input_tokens";
pub const GEN_AI_USAGE_AUDIO_INPUT_TOKENS: &str = "gen_ai.usage.audio.input_tokens";
pub const GEN_AI_USAGE_TEXT_CACHE_READ_INPUT_TOKENS: &str =
    "gen_ai.usage.text.cache_read.input_tokens";
pub const GEN_AI_USAGE_IMAGE_CACHE_READ_INPUT_TOKENS: &str =
    "gen_ai.usage.image.cache_read.input_tokens";
pub const GEN_AI_USAGE_AUDIO_CACHE_READ_INPUT_TOKENS: &str =
    "gen_ai.usage.audio.cache_read.input_tokens";
pub const GEN_AI_USAGE_TEXT_OUTPUT_TOKENS: &str = "gen_ai.usage.text.output_tokens";
pub const GEN_AI_USAGE_IMAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.image.output_tokens";
pub const GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS: &str = "gen_ai.usage.audio.output_tokens";
/// The breakdown's names by part (input, cache read, output), then by
/// modality (text, image, audio).
pub const GEN_AI_USAGE_BY_MODALITY: [[&str; 3]; 3] = [
    [
        GEN_AI_USAGE_TEXT_INPUT_TOKENS,
        GEN_AI_USAGE_IMAGE_INPUT_TOKENS,
        GEN_AI_USAGE_AUDIO_INPUT_TOKENS,
    ],
    [
        GEN_AI_USAGE_TEXT_CACHE_READ_INPUT_TOKENS,
        GEN_AI_USAGE_IMAGE_CACHE_READ_INPUT_TOKENS,
        GEN_AI_USAGE_AUDIO_CACHE_READ_INPUT_TOKENS,
    ],
    [
        GEN_AI_USAGE_TEXT_OUTPUT_TOKENS,
        GEN_AI_USAGE_IMAGE_OUTPUT_TOKENS,
        GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS,
    ],
];
/// Of `gen_ai.usage.cache_write.input_tokens`, those written with a one-hour
/// time-to-live (priced above five-minute writes).
pub const USAGE_CACHE_WRITE_1H_INPUT_TOKENS: &str = "egret.usage.cache_write_1h.input_tokens";
/// What the transaction cost, in USD, from the price table.
pub const COST_USD: &str = "egret.cost.usd";
/// Which price table priced it: `default:<date>` or `config`.
pub const COST_SOURCE: &str = "egret.cost.source";
// Request parameters, as the client sent them.
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
pub const GEN_AI_REQUEST_TOP_K: &str = "gen_ai.request.top_k";
pub const GEN_AI_REQUEST_STOP_SEQUENCES: &str = "gen_ai.request.stop_sequences";
pub const GEN_AI_REQUEST_SEED: &str = "gen_ai.request.seed";
pub const GEN_AI_REQUEST_FREQUENCY_PENALTY: &str = "gen_ai.request.frequency_penalty";
pub const GEN_AI_REQUEST_PRESENCE_PENALTY: &str = "gen_ai.request.presence_penalty";
pub const GEN_AI_REQUEST_CHOICE_COUNT: &str = "gen_ai.request.choice.count";
pub const GEN_AI_OUTPUT_TYPE: &str = "gen_ai.output.type";
/// Seconds from the request to the first chunk of a streamed response.
pub const GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
pub const GEN_AI_CONVERSATION_ID: &str = "gen_ai.conversation.id";
pub const GEN_AI_REQUEST_STREAM: &str = "gen_ai.request.stream";
pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
pub const MCP_METHOD_NAME: &str = "mcp.method.name";
pub const MCP_SESSION_ID: &str = "mcp.session.id";
pub const JSONRPC_REQUEST_ID: &str = "jsonrpc.request.id";

// http / network.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const NETWORK_TRANSPORT: &str = "network.transport";
pub const NETWORK_TYPE: &str = "network.type";
pub const ERROR_TYPE: &str = "error.type";
pub const PROCESS_PID: &str = "process.pid";

// egret.*
pub const COMPONENT: &str = "egret.component";
pub const ROUTE_NAME: &str = "egret.route.name";
pub const ROUTE_MATCHED: &str = "egret.route.matched";
pub const DST_NAME: &str = "egret.dst.name";
pub const REQ_BYTES: &str = "egret.req.bytes";
pub const RESP_BYTES: &str = "egret.resp.bytes";
pub const REQ_TRUNCATED: &str = "egret.req.truncated";
pub const RESP_TRUNCATED: &str = "egret.resp.truncated";
pub const BODY_BYTES: &str = "egret.body.bytes";
pub const BODY_TRUNCATED: &str = "egret.body.truncated";
pub const BODY_USAGE_VISIBLE: &str = "egret.body.usage_visible";
pub const BODY_REQUEST_REWRITTEN: &str = "egret.body.request_rewritten";
pub const DURATION_MS: &str = "egret.duration_ms";
pub const TTFB_MS: &str = "egret.ttfb_ms";
pub const BUDGET_DENIED: &str = "egret.budget.denied";
pub const BUDGET_DAILY_USED: &str = "egret.budget.daily_used";
pub const BUDGET_DAILY_MAX: &str = "egret.budget.daily_max";
/// USD used today against the agent's daily USD budget (after this
/// transaction, or before a refused request).
pub const BUDGET_DAILY_USED_USD: &str = "egret.budget.daily_used_usd";
/// The agent's daily USD budget.
pub const BUDGET_DAILY_MAX_USD: &str = "egret.budget.daily_max_usd";
/// A transaction with usage and no price, under a USD budget (which it
/// exhausts: fail closed).
pub const BUDGET_UNPRICED: &str = "egret.budget.unpriced";
pub const POLICY_DENIED: &str = "egret.policy.denied";
pub const L4_BYTES_SANDBOX_TX: &str = "egret.l4.bytes_sandbox_tx";
pub const L4_BYTES_SANDBOX_RX: &str = "egret.l4.bytes_sandbox_rx";
pub const L4_BYTES_UPSTREAM: &str = "egret.l4.bytes_upstream";
pub const L4_BYTES_DOWNSTREAM: &str = "egret.l4.bytes_downstream";
pub const L4_WIRE_BYTES_SANDBOX_TX: &str = "egret.l4.wire_bytes_sandbox_tx";
pub const L4_WIRE_BYTES_SANDBOX_RX: &str = "egret.l4.wire_bytes_sandbox_rx";
pub const L4_SEGS_SANDBOX_TX: &str = "egret.l4.segs_sandbox_tx";
pub const L4_SEGS_SANDBOX_RX: &str = "egret.l4.segs_sandbox_rx";
pub const L4_TCP_BYTES_ACKED: &str = "egret.l4.tcp_bytes_acked";
pub const L4_TCP_BYTES_RECEIVED: &str = "egret.l4.tcp_bytes_received";
pub const L4_REDIRECTED: &str = "egret.l4.redirected";
/// Plain HTTP: the Host the sandbox claimed when it does not resolve to the
/// dialled address (the record names the address instead).
pub const DST_CLAIMED_NAME: &str = "egret.dst.claimed_name";
/// The request body was streamed, not buffered whole, because the
/// sandbox's or the node's buffer budget was used up.
pub const BODY_STREAMED_OVER_BUDGET: &str = "egret.body.streamed_over_budget";
pub const L4_COUNTERS_MISSING: &str = "egret.l4.counters_missing";
/// Sandbox bytes of the TLS handshake, on a connection's first transaction.
pub const L4_HANDSHAKE_BYTES_SANDBOX_TX: &str = "egret.l4.handshake_bytes_sandbox_tx";
pub const L4_HANDSHAKE_BYTES_SANDBOX_RX: &str = "egret.l4.handshake_bytes_sandbox_rx";
pub const SOCKET_COOKIE: &str = "egret.socket.cookie";
pub const NETNS_COOKIE: &str = "egret.netns.cookie";
pub const CGROUP_ID: &str = "egret.cgroup.id";
pub const API_KEY_ID: &str = "egret.api_key.id";
pub const REQUEST_BODY: &str = "egret.request.body";
pub const RESPONSE_BODY: &str = "egret.response.body";
pub const REQUEST_CONTENT_TYPE: &str = "egret.request.content_type";
pub const RESPONSE_CONTENT_TYPE: &str = "egret.response.content_type";
pub const PARSE_ERROR: &str = "egret.parse.error";
/// The provider API whose format egret parsed (`openai.chat_completions`,
/// `anthropic.messages`, …).
pub const GENAI_API: &str = "egret.genai.api";
/// Opt-in structured content (GenAI conventions), exported only, assembled
/// from the captured bodies at encode time.
/// On spans with structured content: false when it is partial (a body cut
/// by the capture bound, a stream that did not end, or an attribute over
/// the export bound and left out).
pub const MESSAGES_COMPLETE: &str = "egret.messages.complete";
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
pub const GEN_AI_SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
pub const GEN_AI_TOOL_DEFINITIONS: &str = "gen_ai.tool.definitions";
pub const TRACE_ID: &str = "egret.trace_id";
pub const SPAN_ID: &str = "egret.span_id";
pub const PARENT_SPAN_ID: &str = "egret.parent_span_id";
/// The kept request / response body is base64 (its bytes were not UTF-8).
pub const REQUEST_BODY_B64: &str = "egret.request.body_b64";
pub const RESPONSE_BODY_B64: &str = "egret.response.body_b64";
/// The body's `Content-Encoding` on the wire (`gzip`, `br`, …), when not
/// identity. The kept body is decoded unless `*_body_decode_error` says why not.
pub const REQUEST_CONTENT_ENCODING: &str = "egret.request.content_encoding";
pub const RESPONSE_CONTENT_ENCODING: &str = "egret.response.content_encoding";
/// Why a content-encoded body could not be kept decoded
/// (`unsupported_content_encoding`, `decode_failed`, `incomplete`).
pub const REQUEST_BODY_DECODE_ERROR: &str = "egret.request.body_decode_error";
pub const RESPONSE_BODY_DECODE_ERROR: &str = "egret.response.body_decode_error";
/// Replacements `redaction` rules made in the record (absent: none).
pub const REDACTION_COUNT: &str = "egret.redaction.count";
/// The names of the rules that made them (sorted).
pub const REDACTION_RULES: &str = "egret.redaction.rules";
/// Why the request / response body was left out rather than redacted
/// (`unparsed_json`: JSON pointer rules and a body that does not parse).
pub const REQUEST_BODY_REDACTION_DROPPED: &str = "egret.request.body_redaction_dropped";
pub const RESPONSE_BODY_REDACTION_DROPPED: &str = "egret.response.body_redaction_dropped";
pub const GATEWAY_NAME: &str = "egret.gateway.name";
/// WebSocket sessions (`proxy::websocket`): `session` on the upgrade's
/// record, `response` on each model response's.
pub const WEBSOCKET_KIND: &str = "egret.websocket.kind";
/// The upgrade record's `egret.record.id`, on it and on its responses.
pub const WEBSOCKET_SESSION_ID: &str = "egret.websocket.session_id";
/// Response records the session produced (on the session record).
pub const WEBSOCKET_RESPONSES: &str = "egret.websocket.responses";
/// Messages relayed but not parsed for their size (on the session record).
pub const WEBSOCKET_MESSAGES_SKIPPED: &str = "egret.websocket.messages_skipped";
/// The status code of the first close frame (1005: none given).
pub const WEBSOCKET_CLOSE_CODE: &str = "egret.websocket.close_code";

/// Values of [`RECORD_KIND`].
pub const KIND_FLOW: &str = "flow";
pub const KIND_TRANSACTION: &str = "transaction";
/// An invocation, from its first registration to its last unregistration:
/// the `invoke_agent` span that parents every call it made.
pub const KIND_INVOCATION: &str = "invocation";

/// Values of [`COMPONENT`].
pub const COMPONENT_PROXY: &str = "egress-proxy";
pub const COMPONENT_FLOW: &str = "l4-flow";

/// ClickHouse column name for an attribute: dots become underscores.
pub fn column_name(attr: &str) -> String {
    attr.replace('.', "_")
}

// Added with the provider parsers (`genai`): MCP / JSON-RPC attributes of
// the OTel MCP semantic conventions.
pub const GEN_AI_PROMPT_NAME: &str = "gen_ai.prompt.name";
pub const MCP_RESOURCE_URI: &str = "mcp.resource.uri";
pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
// MCP JSON-RPC batches: one entry per message in each parallel array
// (bounded; `docs/attributes.md`, "MCP batches").
pub const MCP_BATCH_SIZE: &str = "egret.mcp.batch.size";
pub const MCP_BATCH_METHOD_NAMES: &str = "egret.mcp.batch.method_names";
pub const MCP_BATCH_REQUEST_IDS: &str = "egret.mcp.batch.request_ids";
pub const MCP_BATCH_TARGETS: &str = "egret.mcp.batch.targets";
pub const MCP_BATCH_ERROR_TYPES: &str = "egret.mcp.batch.error_types";
pub const MCP_BATCH_UNRECORDED: &str = "egret.mcp.batch.unrecorded";
/// On a batch message's own span: its position in the batch.
pub const MCP_BATCH_INDEX: &str = "egret.mcp.batch.index";
/// What became of the trace context in `params._meta` of an MCP request.
pub const MCP_TRACE_CONTEXT: &str = "egret.mcp.trace_context";
// MCP's legacy HTTP+SSE transport (protocol revision 2024-11-05; the
// proxy's `mcp_legacy` registry, `docs/attributes.md`, "MCP over HTTP+SSE").
/// The MCP transport of a record that is not streamable HTTP.
pub const MCP_TRANSPORT: &str = "egret.mcp.transport";
/// Value of [`MCP_TRANSPORT`]: the legacy HTTP+SSE transport.
pub const MCP_TRANSPORT_SSE: &str = "sse";
/// On a legacy stream's `GET` record: the endpoint it announced.
pub const MCP_SSE_ENDPOINT: &str = "egret.mcp.sse.endpoint";
/// On a legacy stream's `GET` record: its `message` events.
pub const MCP_SSE_MESSAGES: &str = "egret.mcp.sse.message_events";
/// On a legacy stream's `GET` record: events not followed (bound).
pub const MCP_SSE_DROPPED: &str = "egret.mcp.sse.dropped";
/// On a legacy `POST`: where its JSON-RPC answer came from, or why none
/// is on the record (values below).
pub const MCP_ANSWER: &str = "egret.mcp.answer";
/// The answer came on the session's stream.
pub const MCP_ANSWER_STREAM: &str = "stream";
/// No answer within `node.mcp.unansweredTimeout`.
pub const MCP_ANSWER_TIMEOUT: &str = "timeout";
/// The session's stream ended before the answer.
pub const MCP_ANSWER_STREAM_CLOSED: &str = "stream_closed";
/// The agent shut down before the answer.
pub const MCP_ANSWER_AGENT_SHUTDOWN: &str = "agent_shutdown";
/// The pending-request registry was full: not followed.
pub const MCP_ANSWER_OVERFLOW: &str = "overflow";
/// Another request of the session with the same id was still pending:
/// not followed.
pub const MCP_ANSWER_ID_REUSED: &str = "id_reused";
/// On a legacy `POST`: from the request to its `202 Accepted`, ms (the
/// record's duration runs to the answer).
pub const MCP_ACCEPTED_MS: &str = "egret.mcp.accepted_ms";
// OTLP export (sink::otlp). Names a backend reads, beside the record's own.
/// Event names: the LogRecord `event_name` field of each record's log.
pub const EVENT_TRANSACTION: &str = "egret.transaction";
pub const EVENT_INVOCATION: &str = "egret.invocation";
pub const EVENT_FLOW: &str = "egret.flow";
// Resource.
pub const SERVICE_NAME: &str = "service.name";
pub const SERVICE_VERSION: &str = "service.version";
pub const HOST_NAME: &str = "host.name";
pub const K8S_NODE_NAME: &str = "k8s.node.name";
// Metrics and their attributes.
pub const METRIC_GEN_AI_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub const METRIC_GEN_AI_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
pub const METRIC_TRANSACTIONS: &str = "egret.transactions";
pub const METRIC_FLOWS: &str = "egret.flows";
pub const METRIC_L4_BYTES: &str = "egret.l4.bytes";
pub const METRIC_OTLP_DROPPED: &str = "egret.otlp.dropped";
/// Every transaction, by the request keys (`docs/otlp.md`, "Metrics").
pub const METRIC_REQUESTS: &str = "egret.requests";
pub const METRIC_REQUEST_DURATION: &str = "egret.request.duration";
pub const METRIC_REQUEST_TOKENS: &str = "egret.request.tokens";
pub const METRIC_REQUEST_COST: &str = "egret.request.cost";
// semantic-conventions-genai v0.1.0 streaming metrics (client inference).
pub const METRIC_GEN_AI_TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.inference.time_to_first_chunk";
pub const METRIC_GEN_AI_TIME_PER_OUTPUT_CHUNK: &str =
    "gen_ai.client.inference.time_per_output_chunk";
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
/// `1xx` … `5xx`, or `none` when no response status was seen.
pub const HTTP_STATUS_CLASS: &str = "egret.http.status_class";
/// `transmit` (sandbox → network) or `receive`.
pub const NETWORK_IO_DIRECTION: &str = "network.io.direction";
/// `traces`, `logs` or `metrics`.
pub const OTLP_SIGNAL: &str = "egret.otlp.signal";
/// Marks the series that absorbs points once an instrument's series cap is hit.
pub const OTEL_METRIC_OVERFLOW: &str = "otel.metric.overflow";
// OpenInference convention profile.
pub const OPENINFERENCE_SPAN_KIND: &str = "openinference.span.kind";
pub const OPENINFERENCE_PROJECT_NAME: &str = "openinference.project.name";
pub const LLM_MODEL_NAME: &str = "llm.model_name";
pub const LLM_PROVIDER: &str = "llm.provider";
pub const LLM_SYSTEM: &str = "llm.system";
pub const LLM_TOKEN_COUNT_PROMPT: &str = "llm.token_count.prompt";
pub const LLM_TOKEN_COUNT_COMPLETION: &str = "llm.token_count.completion";
pub const LLM_TOKEN_COUNT_TOTAL: &str = "llm.token_count.total";
pub const LLM_TOKEN_COUNT_PROMPT_CACHE_READ: &str = "llm.token_count.prompt_details.cache_read";
pub const LLM_TOKEN_COUNT_PROMPT_CACHE_WRITE: &str = "llm.token_count.prompt_details.cache_write";
pub const INPUT_VALUE: &str = "input.value";
pub const INPUT_MIME_TYPE: &str = "input.mime_type";
pub const OUTPUT_VALUE: &str = "output.value";
pub const OUTPUT_MIME_TYPE: &str = "output.mime_type";
pub const TOOL_NAME: &str = "tool.name";
/// OpenInference messages, flattened:
/// `llm.input_messages.{i}.message.{role,content,tool_calls.{j}.tool_call.…}`.
pub const LLM_INPUT_MESSAGES: &str = "llm.input_messages";
pub const LLM_OUTPUT_MESSAGES: &str = "llm.output_messages";
/// OpenInference: the request's generation parameters as a JSON object.
pub const LLM_INVOCATION_PARAMETERS: &str = "llm.invocation_parameters";
/// OpenInference tools, flattened: `llm.tools.{i}.tool.json_schema`.
pub const LLM_TOOLS: &str = "llm.tools";
/// Session grouping (OpenInference, MLflow): the invocation id.
pub const SESSION_ID: &str = "session.id";
// MLflow convention profile.
pub const MLFLOW_SPAN_INPUTS: &str = "mlflow.spanInputs";
pub const MLFLOW_SPAN_OUTPUTS: &str = "mlflow.spanOutputs";
pub const MLFLOW_SPAN_TYPE: &str = "mlflow.spanType";
// Values of `egret.attribution.source`.
/// Attribution from the kernel tag of the sandbox socket.
pub const ATTRIBUTION_SOURCE_KERNEL: &str = "kernel";
/// Attribution from a trusted dialer's PROXY protocol v2 TLVs.
pub const ATTRIBUTION_SOURCE_PROXY_PROTOCOL: &str = "proxy-protocol";

/// Record attributes that hold exchanged content (body text and what
/// describes it): exported only by OTLP exporters with `content: full`.
pub const CONTENT: &[&str] = &[
    REQUEST_BODY,
    RESPONSE_BODY,
    REQUEST_BODY_B64,
    RESPONSE_BODY_B64,
];
/// Record attributes read from the content that name or identify what was
/// said (paths, ids, tool and prompt names, stop sequences): dropped by
/// exporters with `content: none`, which keep the envelope only.
pub const CONTENT_DETAIL: &[&str] = &[
    URL_PATH,
    GEN_AI_RESPONSE_ID,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_REQUEST_STOP_SEQUENCES,
    GEN_AI_TOOL_NAME,
    GEN_AI_PROMPT_NAME,
    MCP_RESOURCE_URI,
    MCP_SESSION_ID,
    JSONRPC_REQUEST_ID,
    WEBSOCKET_SESSION_ID,
    MCP_BATCH_REQUEST_IDS,
    MCP_BATCH_TARGETS,
    MCP_SSE_ENDPOINT,
];

/// Value type of an attribute, as the semantic-convention YAML names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Int,
    Double,
    Boolean,
    StringArray,
}

impl AttrType {
    /// The name in semantic-convention YAML (`type:`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Int => "int",
            AttrType::Double => "double",
            AttrType::Boolean => "boolean",
            AttrType::StringArray => "string[]",
        }
    }
}

/// Every attribute egret's registry (`docs/semconv/`) defines, with its
/// type: `egret.*`, the seed contract (`invocation.id`, `agent.*`), the
/// OpenInference and MLflow profile names (no OpenTelemetry registry has
/// them) and `otel.metric.overflow` (named by the metrics SDK
/// specification, not by the registry), and two GenAI names of
/// semantic-conventions-genai v0.1.0 names that the core registry egret depends on
/// lacks. The other attribute names above
/// are the core registry's, referenced from egret's.
pub const DEFINED: &[(&str, AttrType)] = {
    use AttrType::{Boolean as B, Double as D, Int as I, String as S, StringArray as SA};
    &[
        // semantic-conventions-genai v0.1.0 names the core registry lacks.
        (GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, I),
        (GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, I),
        (GEN_AI_USAGE_TEXT_INPUT_TOKENS, I),
        (GEN_AI_USAGE_IMAGE_INPUT_TOKENS, I),
        (GEN_AI_USAGE_AUDIO_INPUT_TOKENS, I),
        (GEN_AI_USAGE_TEXT_CACHE_READ_INPUT_TOKENS, I),
        (GEN_AI_USAGE_IMAGE_CACHE_READ_INPUT_TOKENS, I),
        (GEN_AI_USAGE_AUDIO_CACHE_READ_INPUT_TOKENS, I),
        (GEN_AI_USAGE_TEXT_OUTPUT_TOKENS, I),
        (GEN_AI_USAGE_IMAGE_OUTPUT_TOKENS, I),
        (GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS, I),
        (USAGE_CACHE_WRITE_1H_INPUT_TOKENS, I),
        (COST_USD, D),
        (COST_SOURCE, S),
        (RECORD_KIND, S),
        (RECORD_ID, S),
        (START_TIME, I),
        (END_TIME, I),
        (TRANSACTION_ID, S),
        (INVOCATION_ID, S),
        (AGENT_KIND, S),
        (AGENT_NAMESPACE, S),
        (AGENT_NAME, S),
        (AGENT_UID, S),
        (AGENT_REVISION, S),
        (SANDBOX_ID, S),
        (ATTRIBUTION_SOURCE, S),
        (COMPONENT, S),
        (ROUTE_NAME, S),
        (ROUTE_MATCHED, B),
        (DST_NAME, S),
        (REQ_BYTES, I),
        (RESP_BYTES, I),
        (REQ_TRUNCATED, B),
        (RESP_TRUNCATED, B),
        (BODY_BYTES, I),
        (BODY_TRUNCATED, B),
        (BODY_USAGE_VISIBLE, B),
        (BODY_REQUEST_REWRITTEN, B),
        (DURATION_MS, D),
        (TTFB_MS, D),
        (BUDGET_DENIED, B),
        (BUDGET_DAILY_USED, I),
        (BUDGET_DAILY_MAX, I),
        (BUDGET_DAILY_USED_USD, D),
        (BUDGET_DAILY_MAX_USD, D),
        (BUDGET_UNPRICED, B),
        (POLICY_DENIED, B),
        (L4_BYTES_SANDBOX_TX, I),
        (L4_BYTES_SANDBOX_RX, I),
        (L4_BYTES_UPSTREAM, I),
        (L4_BYTES_DOWNSTREAM, I),
        (L4_WIRE_BYTES_SANDBOX_TX, I),
        (L4_WIRE_BYTES_SANDBOX_RX, I),
        (L4_SEGS_SANDBOX_TX, I),
        (L4_SEGS_SANDBOX_RX, I),
        (L4_TCP_BYTES_ACKED, I),
        (L4_TCP_BYTES_RECEIVED, I),
        (L4_REDIRECTED, B),
        (DST_CLAIMED_NAME, S),
        (BODY_STREAMED_OVER_BUDGET, B),
        (L4_COUNTERS_MISSING, B),
        (L4_HANDSHAKE_BYTES_SANDBOX_TX, I),
        (L4_HANDSHAKE_BYTES_SANDBOX_RX, I),
        (SOCKET_COOKIE, S),
        (NETNS_COOKIE, S),
        (CGROUP_ID, S),
        (API_KEY_ID, S),
        (REQUEST_BODY, S),
        (RESPONSE_BODY, S),
        (REQUEST_CONTENT_TYPE, S),
        (RESPONSE_CONTENT_TYPE, S),
        (PARSE_ERROR, S),
        (TRACE_ID, S),
        (SPAN_ID, S),
        (PARENT_SPAN_ID, S),
        (REQUEST_BODY_B64, B),
        (RESPONSE_BODY_B64, B),
        (REQUEST_CONTENT_ENCODING, S),
        (RESPONSE_CONTENT_ENCODING, S),
        (REQUEST_BODY_DECODE_ERROR, S),
        (RESPONSE_BODY_DECODE_ERROR, S),
        (REDACTION_COUNT, I),
        (REDACTION_RULES, SA),
        (REQUEST_BODY_REDACTION_DROPPED, S),
        (RESPONSE_BODY_REDACTION_DROPPED, S),
        (GATEWAY_NAME, S),
        (WEBSOCKET_KIND, S),
        (WEBSOCKET_SESSION_ID, S),
        (WEBSOCKET_RESPONSES, I),
        (WEBSOCKET_MESSAGES_SKIPPED, I),
        (WEBSOCKET_CLOSE_CODE, I),
        (HTTP_STATUS_CLASS, S),
        (OTLP_SIGNAL, S),
        (OTEL_METRIC_OVERFLOW, B),
        (OPENINFERENCE_SPAN_KIND, S),
        (OPENINFERENCE_PROJECT_NAME, S),
        (LLM_MODEL_NAME, S),
        (LLM_PROVIDER, S),
        (LLM_SYSTEM, S),
        (LLM_TOKEN_COUNT_PROMPT, I),
        (LLM_TOKEN_COUNT_COMPLETION, I),
        (LLM_TOKEN_COUNT_TOTAL, I),
        (LLM_TOKEN_COUNT_PROMPT_CACHE_READ, I),
        (LLM_TOKEN_COUNT_PROMPT_CACHE_WRITE, I),
        (INPUT_VALUE, S),
        (INPUT_MIME_TYPE, S),
        (OUTPUT_VALUE, S),
        (OUTPUT_MIME_TYPE, S),
        (TOOL_NAME, S),
        (MLFLOW_SPAN_INPUTS, S),
        (MLFLOW_SPAN_OUTPUTS, S),
        (MLFLOW_SPAN_TYPE, S),
        (GENAI_API, S),
        (MESSAGES_COMPLETE, B),
        (LLM_INPUT_MESSAGES, S),
        (LLM_OUTPUT_MESSAGES, S),
        (LLM_INVOCATION_PARAMETERS, S),
        (LLM_TOOLS, S),
        (MCP_BATCH_SIZE, I),
        (MCP_BATCH_METHOD_NAMES, SA),
        (MCP_BATCH_REQUEST_IDS, SA),
        (MCP_BATCH_TARGETS, SA),
        (MCP_BATCH_ERROR_TYPES, SA),
        (MCP_BATCH_UNRECORDED, I),
        (MCP_BATCH_INDEX, I),
        (MCP_TRACE_CONTEXT, S),
        (MCP_TRANSPORT, S),
        (MCP_SSE_ENDPOINT, S),
        (MCP_SSE_MESSAGES, I),
        (MCP_SSE_DROPPED, I),
        (MCP_ANSWER, S),
        (MCP_ACCEPTED_MS, D),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The content attributes are egret's own, and every defined name
    /// that carries text of the exchange is in [`CONTENT`] (or produced only
    /// by the convention profiles, which check the content mode
    /// themselves), so a new content attribute cannot reach a
    /// `metadata` or `none` exporter by default.
    #[test]
    fn content_lists_cover_the_content_attributes() {
        let defined = |n: &str| DEFINED.iter().any(|(d, _)| *d == n);
        for n in CONTENT {
            assert!(defined(n), "{n} is not defined");
        }
        let profile_values = [
            INPUT_VALUE,
            OUTPUT_VALUE,
            LLM_INPUT_MESSAGES,
            LLM_OUTPUT_MESSAGES,
            LLM_INVOCATION_PARAMETERS,
            MLFLOW_SPAN_INPUTS,
            MLFLOW_SPAN_OUTPUTS,
        ];
        for (n, _) in DEFINED {
            let looks_like_content = [
                ".body",
                "_b64",
                ".messages",
                "instructions",
                "definitions",
                "arguments",
                ".value",
                "spanInputs",
                "spanOutputs",
                "_messages",
                "_parameters",
            ]
            .iter()
            .any(|p| n.ends_with(p));
            if looks_like_content {
                assert!(
                    CONTENT.contains(n) || profile_values.contains(n),
                    "{n} looks like content but is not in semconv::CONTENT"
                );
            }
        }
    }
}
