//! What a transaction cost: the price table (USD per million tokens, per
//! provider and model) applied to the usage the provider reported.
//!
//! The table is the shipped default (`cost/prices.yaml`, with the date it
//! was transcribed and its sources) with the config's `pricing.models` over
//! it. A transaction is priced only when everything it used has a price:
//! a model not in the table, or a token class its entry has no price for
//! (cache reads of a model without `cacheRead`), leaves it unpriced — no
//! `egret.cost.usd` at all, never a guessed or zero cost.
//!
//! Usage follows the GenAI conventions: `gen_ai.usage.input_tokens`
//! includes the cache reads and writes, `gen_ai.usage.output_tokens`
//! includes reasoning tokens (billed as output by every provider in the
//! table). So
//!
//! ```text
//! cost = (input − cache_read − cache_write) × input
//!      + cache_read × cacheRead
//!      + (cache_write − cache_write_1h) × cacheWrite + cache_write_1h × cacheWrite1h
//!      + output × output                                   (all ÷ 1e6)
//! ```
//!
//! with the `longContext` prices instead when the input exceeds their
//! threshold (whole request, as the providers bill it).
use std::collections::HashMap;

use crate::{
    config::{ModelPrice, PricingConfig, Rates},
    record::Record,
    semconv as sc,
};

/// The shipped default table.
const DEFAULT_TABLE: &str = include_str!("cost/prices.yaml");

/// The shipped table's file shape.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultTable {
    date: String,
    #[allow(dead_code)]
    sources: std::collections::BTreeMap<String, String>,
    models: Vec<ModelPrice>,
}

/// Why the price table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("the embedded price table does not parse: {0}")]
    Default(#[from] serde_norway::Error),
    #[error("pricing.models: {provider} {model}: {reason}")]
    Invalid {
        provider: String,
        model: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    price: ModelPrice,
    /// `default:<date>` or `config`.
    source: String,
}

/// The price table in force.
#[derive(Debug, Clone)]
pub struct Prices {
    /// (provider, lowercase model) → entry.
    table: HashMap<(String, String), Entry>,
    default_date: String,
}

/// A transaction's price.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub usd: f64,
    /// Which table priced it: `default:<date>` or `config`.
    pub source: String,
}

fn check(p: &ModelPrice) -> Result<(), CostError> {
    let bad = |reason: &str| CostError::Invalid {
        provider: p.provider.clone(),
        model: p.model.clone(),
        reason: reason.to_owned(),
    };
    let rates = std::iter::once(p.rates()).chain(p.long_context.as_ref().map(|l| l.rates()));
    for r in rates {
        let all = [
            Some(r.input),
            r.output,
            r.cache_read,
            r.cache_write,
            r.cache_write_1h,
        ];
        if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(bad("prices must be finite and not negative"));
        }
    }
    if p.model.trim().is_empty() || p.provider.trim().is_empty() {
        return Err(bad("provider and model must not be empty"));
    }
    Ok(())
}

impl Prices {
    /// The default table with `cfg`'s entries over it (same provider and
    /// model: the config's wins).
    pub fn new(cfg: &PricingConfig) -> Result<Prices, CostError> {
        let default: DefaultTable = serde_norway::from_str(DEFAULT_TABLE)?;
        let mut table = HashMap::new();
        let mut add = |p: &ModelPrice, source: String| -> Result<(), CostError> {
            check(p)?;
            table.insert(
                (p.provider.clone(), p.model.to_ascii_lowercase()),
                Entry {
                    price: p.clone(),
                    source,
                },
            );
            Ok(())
        };
        if cfg.include_defaults {
            for p in &default.models {
                add(p, format!("default:{}", default.date))?;
            }
        }
        for p in &cfg.models {
            add(p, "config".to_owned())?;
        }
        Ok(Prices {
            table,
            default_date: default.date,
        })
    }

    /// The date the shipped table was transcribed.
    pub fn default_date(&self) -> &str {
        &self.default_date
    }

    fn entry(&self, provider: &str, model: &str) -> Option<&Entry> {
        let model = model.to_ascii_lowercase();
        let get = |m: &str| self.table.get(&(provider.to_owned(), m.to_owned()));
        get(&model).or_else(|| get(strip_snapshot(&model)?))
    }

    /// The cost of a transaction record, or `None` when it is not fully
    /// priceable (no usage, no provider or model, no entry, a token class
    /// without a price, inconsistent counts).
    pub fn cost(&self, rec: &Record) -> Option<Cost> {
        let provider = rec.get_str(sc::GEN_AI_PROVIDER_NAME)?;
        let entry = [sc::GEN_AI_RESPONSE_MODEL, sc::GEN_AI_REQUEST_MODEL]
            .iter()
            .filter_map(|k| rec.get_str(k).filter(|m| !m.is_empty()))
            .find_map(|m| self.entry(provider, m))?;
        let count = |k: &str| match rec.get_i64(k) {
            Some(n) if n >= 0 => Some(Some(n as u64)),
            Some(_) => None,
            None => Some(None),
        };
        let input = count(sc::GEN_AI_USAGE_INPUT_TOKENS)?;
        let output = count(sc::GEN_AI_USAGE_OUTPUT_TOKENS)?;
        let cache_read = count(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)?.unwrap_or(0);
        let cache_write = count(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS)?.unwrap_or(0);
        let write_1h = count(sc::USAGE_CACHE_WRITE_1H_INPUT_TOKENS)?.unwrap_or(0);
        let input = input?;
        // An embedding has no output; any other operation needs its count.
        let output = match output {
            Some(o) => o,
            None if rec.get_str(sc::GEN_AI_OPERATION_NAME) == Some("embeddings") => 0,
            None => return None,
        };
        let uncached = input.checked_sub(cache_read)?.checked_sub(cache_write)?;
        let write_5m = cache_write.checked_sub(write_1h)?;
        let p = &entry.price;
        let rates: Rates = match &p.long_context {
            Some(l) if input > l.above => l.rates(),
            _ => p.rates(),
        };
        let priced = |n: u64, rate: Option<f64>| -> Option<f64> {
            match (n, rate) {
                (0, _) => Some(0.0),
                (n, Some(r)) => Some(n as f64 * r),
                (_, None) => None,
            }
        };
        let micro = priced(uncached, Some(rates.input))?
            + priced(cache_read, rates.cache_read)?
            + priced(write_5m, rates.cache_write)?
            + priced(write_1h, rates.cache_write_1h)?
            + priced(output, rates.output)?;
        Some(Cost {
            usd: micro / 1e6,
            source: entry.source.clone(),
        })
    }

    /// Sets `egret.cost.usd` and `egret.cost.source` on a priceable record.
    pub fn apply(&self, rec: &mut Record) {
        if let Some(c) = self.cost(rec) {
            rec.set(sc::COST_USD, c.usd);
            rec.set(sc::COST_SOURCE, c.source);
        }
    }
}

/// `model` without a dated snapshot suffix (`-2024-08-06`, `-20250929`,
/// `@20250929`): the name its price is listed under. Only dates are
/// stripped, so `gpt-4o-mini` never falls back to `gpt-4o`'s price.
fn strip_snapshot(model: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // `-YYYY-MM-DD`
    if model.len() > 11 {
        let (head, tail) = model.split_at(model.len() - 11);
        let p: Vec<&str> = tail.split('-').collect();
        if p.len() == 4
            && p[0].is_empty()
            && p[1].len() == 4
            && p[2].len() == 2
            && p[3].len() == 2
            && p[1..].iter().all(|x| digits(x))
        {
            return Some(head);
        }
    }
    // `-YYYYMMDD` / `@YYYYMMDD`
    if model.len() > 9 {
        let (head, tail) = model.split_at(model.len() - 9);
        if (tail.starts_with('-') || tail.starts_with('@')) && digits(&tail[1..]) {
            return Some(head);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(provider: &str, model: &str, input: i64, output: i64) -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::GEN_AI_PROVIDER_NAME, provider);
        r.set(sc::GEN_AI_RESPONSE_MODEL, model);
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, input);
        r.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, output);
        r
    }

    fn defaults() -> Prices {
        Prices::new(&PricingConfig::default()).unwrap()
    }

    fn usd(p: &Prices, r: &Record) -> Option<f64> {
        p.cost(r).map(|c| (c.usd * 1e9).round() / 1e9)
    }

    #[test]
    fn plain_usage_at_the_listed_rates() {
        let p = defaults();
        // 1M in at $2.50, 0.5M out at $10.
        let r = rec("openai", "gpt-4o-2024-08-06", 1_000_000, 500_000);
        let c = p.cost(&r).unwrap();
        assert_eq!(usd(&p, &r), Some(7.5));
        assert_eq!(c.source, format!("default:{}", p.default_date()));
        // The dated snapshot of the mini model is the mini's price, never
        // gpt-4o's.
        let mini = rec("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000);
        assert_eq!(usd(&p, &mini), Some(0.75));
    }

    /// Cached input is part of the input count and priced at its own rate;
    /// Anthropic's one-hour cache writes at theirs.
    #[test]
    fn cache_reads_and_both_write_tiers() {
        let p = defaults();
        let mut r = rec(
            "anthropic",
            "claude-sonnet-4-5-20250929",
            1_000 + 10_000 + 3_000,
            500,
        );
        r.set(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 10_000i64);
        r.set(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, 3_000i64);
        r.set(sc::USAGE_CACHE_WRITE_1H_INPUT_TOKENS, 1_000i64);
        // 1000×3 + 10000×0.3 + 2000×3.75 + 1000×6 + 500×15 = 27000 µ$.
        assert_eq!(usd(&p, &r), Some(0.027));
        let mut openai = rec("openai", "gpt-4o", 2_000, 100);
        openai.set(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 1_024i64);
        // 976×2.5 + 1024×1.25 + 100×10 = 4720 µ$.
        assert_eq!(usd(&p, &openai), Some(0.00472));
    }

    #[test]
    fn long_context_rates_above_the_threshold() {
        let p = defaults();
        let r = rec("anthropic", "claude-sonnet-4-5", 200_001, 1_000);
        assert_eq!(usd(&p, &r), Some((200_001.0 * 6.0 + 1_000.0 * 22.5) / 1e6));
        let r = rec("anthropic", "claude-sonnet-4-5", 200_000, 1_000);
        assert_eq!(usd(&p, &r), Some((200_000.0 * 3.0 + 1_000.0 * 15.0) / 1e6));
    }

    /// Unknown is never written as a cost: no entry, a class without a
    /// price, missing or inconsistent counts leave the record unpriced.
    #[test]
    fn unpriced_rather_than_guessed() {
        let p = defaults();
        assert!(p.cost(&rec("openai", "gpt-4o-turbo-x", 10, 10)).is_none());
        assert!(
            p.cost(&rec("groq", "gpt-4o", 10, 10)).is_none(),
            "provider matters"
        );
        let mut cached = rec("gcp.gemini", "gemini-2.5-flash", 100, 10);
        assert!(p.cost(&cached).is_some());
        cached.set(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 50i64);
        assert!(p.cost(&cached).is_none(), "no cache price listed");
        let mut no_out = rec("openai", "gpt-4o", 10, 0);
        no_out.remove(sc::GEN_AI_USAGE_OUTPUT_TOKENS);
        assert!(p.cost(&no_out).is_none());
        no_out.set(sc::GEN_AI_OPERATION_NAME, "embeddings");
        no_out.set(sc::GEN_AI_RESPONSE_MODEL, "text-embedding-3-small");
        assert_eq!(usd(&p, &no_out), Some(2e-7));
        let mut bad = rec("openai", "gpt-4o", 10, 10);
        bad.set(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 11i64);
        assert!(p.cost(&bad).is_none(), "more cached than input");
        let mut none = Record::new(sc::KIND_TRANSACTION);
        none.set(sc::GEN_AI_PROVIDER_NAME, "openai");
        none.set(sc::GEN_AI_REQUEST_MODEL, "gpt-4o");
        assert!(p.cost(&none).is_none(), "no usage");
    }

    #[test]
    fn config_entries_override_and_extend() {
        let cfg: PricingConfig = serde_norway::from_str(
            "models:\n- {provider: openai, model: gpt-4o, input: 1, output: 2}\n\
             - {provider: vllm, model: llama-3.1-70b, input: 0.5, output: 0.5}\n",
        )
        .unwrap();
        let p = Prices::new(&cfg).unwrap();
        let c = p
            .cost(&rec("openai", "gpt-4o", 1_000_000, 1_000_000))
            .unwrap();
        assert_eq!((c.usd, c.source.as_str()), (3.0, "config"));
        assert!(p
            .cost(&rec("vllm", "llama-3.1-70b", 2_000_000, 0))
            .is_some());
        let only: PricingConfig = serde_norway::from_str(
            "includeDefaults: false\nmodels:\n- {provider: vllm, model: m, input: 1, output: 1}\n",
        )
        .unwrap();
        let p = Prices::new(&only).unwrap();
        assert!(p.cost(&rec("openai", "gpt-4o", 1, 1)).is_none());
        let bad: PricingConfig =
            serde_norway::from_str("models:\n- {provider: x, model: m, input: -1}\n").unwrap();
        assert!(Prices::new(&bad)
            .unwrap_err()
            .to_string()
            .contains("not negative"));
    }

    #[test]
    fn snapshot_suffixes() {
        assert_eq!(strip_snapshot("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_snapshot("claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            strip_snapshot("claude-3-5-haiku@20241022"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(strip_snapshot("gpt-4o-mini"), None);
        assert_eq!(strip_snapshot("gemini-2.5-flash-preview-05-20"), None);
    }
}
