//! `gateways[]`: which sandboxes a gateway applies to (selector) and what
//! applies to them — routes and the default policy, token budgets, body
//! capture, non-HTTP handling, OTLP export.
use schemars::JsonSchema;
use serde::Deserialize;

use super::OtlpConfig;

/// What a gateway does with connections that match no route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    DenyAll,
    AllowAll,
}

/// A set of sandboxes (by registration attributes) and what applies to them.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    pub name: String,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Daily token budgets per agent.
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub capture_body: CaptureBodyConfig,
    /// Rewrite OpenAI streaming requests to include usage (and hide the extra
    /// usage chunk from the client) so token counts are always captured.
    #[serde(default = "yes")]
    pub rewrite_stream_usage: bool,
    /// What to do with a captured-port connection that is not TLS or HTTP:
    /// `passthrough` (splice, flow record only) or `refuse`.
    #[serde(default)]
    pub non_http: NonHttpPolicy,
    /// The gateway's primary OTLP exporter (see `docs/otlp.md`); the
    /// standard `OTEL_*` variables fill in what it leaves unset.
    #[serde(default)]
    pub otlp: OtlpConfig,
    /// More OTLP exporters (a tenant's beside the operator's, say), each
    /// with its own `name`, `endpoint`, headers, signals, sampling and
    /// content mode; every record of the gateway reaches each of them.
    /// Variables naming where or with which credentials
    /// (`OTEL_EXPORTER_OTLP_*ENDPOINT`, `*HEADERS`, `*CERTIFICATE`,
    /// `*CLIENT_*`) never apply to these.
    #[serde(default)]
    pub exporters: Vec<OtlpConfig>,
}

impl GatewayConfig {
    /// Every OTLP exporter section with its config path: the primary
    /// (`otlp`) then `exporters[i]`.
    pub fn otlp_exporters(&self) -> impl Iterator<Item = (String, &OtlpConfig)> {
        std::iter::once(("otlp".to_owned(), &self.otlp)).chain(
            self.exporters
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("exporters[{i}]"), e)),
        )
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NonHttpPolicy {
    #[default]
    Passthrough,
    Refuse,
}

/// A daily budget for one agent (UTC day): tokens, USD, or both.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetConfig {
    /// Agent namespace; empty matches any.
    #[serde(default)]
    pub namespace: String,
    /// Agent name; empty matches any.
    #[serde(default)]
    pub name: String,
    /// Input + output tokens per UTC day.
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// USD per UTC day, from `egret.cost.usd` (`docs/cost.md`). A
    /// transaction with usage that cannot be priced exhausts it (fail
    /// closed: an unpriced model is no way around the budget).
    #[serde(default)]
    pub daily_usd: Option<f64>,
}

/// Body capture per direction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CaptureBodyConfig {
    /// Bytes kept per direction (request, response).
    pub max_bytes: usize,
    /// Content types (without parameters) whose bodies are kept.
    pub include_content_types: Vec<String>,
}

impl Default for CaptureBodyConfig {
    fn default() -> Self {
        CaptureBodyConfig {
            max_bytes: 64 * 1024,
            include_content_types: vec![
                "application/json".into(),
                "application/x-ndjson".into(),
                "text/event-stream".into(),
                // Bedrock's ConverseStream / InvokeModelWithResponseStream
                // (binary: kept base64).
                "application/vnd.amazon.eventstream".into(),
            ],
        }
    }
}

/// Which sandboxes a gateway applies to; empty lists match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Selector {
    pub namespaces: Vec<String>,
    pub agent_names: Vec<String>,
    pub agent_kinds: Vec<String>,
}

/// Hosts (exact or `*.suffix`) allowed and how their traffic is understood.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<String>,
    /// Who the hosts are: `http` (the default: egret finds the provider
    /// from the host, the path and the body), `mcp`, a provider egret
    /// knows (`openai`, `anthropic`, `google`, `azure.ai.openai`,
    /// `gcp.vertex_ai`, `aws.bedrock`, `groq`, `ollama`, … — docs/attributes.md,
    /// "Provider table"), or any other name with a `format`.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The wire format to parse (`anthropic`, `openai`, `google`,
    /// `ollama`, `bedrock`): required for a provider egret does not know (e.g.
    /// `provider: vllm, format: openai`); for a known one it fixes the
    /// format instead of finding it from the path.
    #[serde(default)]
    pub format: Option<crate::providers::Provider>,
}

fn default_provider() -> String {
    "http".to_owned()
}
