//! `pricing`: the price table that turns usage into `egret.cost.usd`
//! (applied by the `cost` module).
use schemars::JsonSchema;
use serde::Deserialize;

/// The price table: the shipped default with these entries over it.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PricingConfig {
    /// Start from egret's shipped table (its date and sources are in
    /// `docs/cost.md`); `false` prices only what `models` lists.
    pub include_defaults: bool,
    /// Prices per provider and model; an entry for a provider and model the
    /// shipped table has replaces it.
    pub models: Vec<ModelPrice>,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            include_defaults: true,
            models: Vec::new(),
        }
    }
}

/// USD per million tokens of one model at one provider.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelPrice {
    /// `gen_ai.provider.name` (`openai`, `anthropic`, `gcp.gemini`, a
    /// route's own provider name, …).
    pub provider: String,
    /// The model as the provider names it in responses; a dated snapshot
    /// (`gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`) is priced as
    /// its undated name when it has no entry of its own.
    pub model: String,
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens (reasoning included). Unset: only for models without
    /// output (embeddings).
    #[serde(default)]
    pub output: Option<f64>,
    /// Input tokens read from the provider's prompt cache.
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Input tokens written to the prompt cache (Anthropic: five-minute TTL).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Input tokens written to the prompt cache with a one-hour TTL.
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Other prices for requests whose input exceeds `above` tokens.
    #[serde(default)]
    pub long_context: Option<LongContextPrice>,
}

/// Prices for long requests (the whole request is priced at these).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LongContextPrice {
    /// Input tokens above which these prices apply.
    pub above: u64,
    pub input: f64,
    #[serde(default)]
    pub output: Option<f64>,
    #[serde(default)]
    pub cache_read: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
}

/// One set of rates (USD per million tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: Option<f64>,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_write_1h: Option<f64>,
}

impl ModelPrice {
    pub fn rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            cache_write_1h: self.cache_write_1h,
        }
    }
}

impl LongContextPrice {
    pub fn rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            cache_write_1h: self.cache_write_1h,
        }
    }
}
