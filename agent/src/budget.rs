//! Daily token budgets per agent (namespace/name), UTC days.
//!
//! Usage is counted from parsed responses (input + output tokens). Over
//! budget, requests are answered with HTTP 429 in the provider's own error
//! format and never forwarded. State is persisted so a restart keeps the
//! day's usage.
use std::{collections::HashMap, path::PathBuf, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{BudgetConfig, GatewayConfig};

/// The budget state of one agent at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub used: u64,
    pub max: u64,
}

impl BudgetStatus {
    pub fn exhausted(&self) -> bool {
        self.used >= self.max
    }
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// "gateway/namespace/name" → (UTC day number, tokens used).
    used: HashMap<String, (i64, u64)>,
}

pub struct Budgets {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

fn today() -> i64 {
    crate::record::now_unix_nanos() / (86_400 * 1_000_000_000)
}

fn find<'a>(gw: &'a GatewayConfig, ns: &str, name: &str) -> Option<&'a BudgetConfig> {
    gw.budgets.iter().find(|b| {
        (b.namespace.is_empty() || b.namespace == ns) && (b.name.is_empty() || b.name == name)
    })
}

fn key(gw: &GatewayConfig, ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", gw.name)
}

impl Budgets {
    pub fn open(file: Option<PathBuf>) -> Budgets {
        let state = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Budgets {
            file,
            state: Mutex::new(state),
        }
    }

    /// The agent's status, or None when no budget applies to it.
    pub fn status(&self, gw: &GatewayConfig, ns: &str, name: &str) -> Option<BudgetStatus> {
        let b = find(gw, ns, name)?;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let used = match st.used.get(&key(gw, ns, name)) {
            Some((day, used)) if *day == today() => *used,
            _ => 0,
        };
        Some(BudgetStatus {
            used,
            max: b.daily_tokens,
        })
    }

    /// Adds tokens to the agent's day; returns the new status.
    pub fn add(
        &self,
        gw: &GatewayConfig,
        ns: &str,
        name: &str,
        tokens: u64,
    ) -> Option<BudgetStatus> {
        let b = find(gw, ns, name)?;
        let day = today();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let e = st.used.entry(key(gw, ns, name)).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 = e.1.saturating_add(tokens);
        let status = BudgetStatus {
            used: e.1,
            max: b.daily_tokens,
        };
        if let Some(f) = &self.file {
            if let Ok(bytes) = serde_json::to_vec(&*st) {
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, bytes)
                    .and_then(|_| std::fs::rename(&tmp, f))
                    .is_err()
                {
                    tracing::warn!(file = %f.display(), "persisting budget usage failed");
                }
            }
        }
        Some(status)
    }
}

/// The 429 body a provider's own clients understand.
pub fn exhausted_body(provider: Option<&str>, status: &BudgetStatus) -> (String, &'static str) {
    let msg = format!(
        "egret: daily token budget exhausted ({} of {} tokens used)",
        status.used, status.max
    );
    let body = match provider {
        Some("anthropic") => serde_json::json!({
            "type": "error",
            "error": {"type": "rate_limit_error", "message": msg}
        }),
        Some("openai") => serde_json::json!({
            "error": {"message": msg, "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}
        }),
        Some("google") => serde_json::json!({
            "error": {"code": 429, "message": msg, "status": "RESOURCE_EXHAUSTED"}
        }),
        _ => serde_json::json!({"error": {"type": "budget_exhausted", "message": msg}}),
    };
    (body.to_string(), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn budget_counts_and_persists() {
        let cfg = Config::parse(
            "gateways:\n- name: g\n  budgets: [{namespace: ns, name: bot, dailyTokens: 100}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let gw = &cfg.gateways[0];
        let f = std::env::temp_dir().join(format!("egret-budget-{}.json", std::process::id()));
        let b = Budgets::open(Some(f.clone()));
        assert_eq!(b.status(gw, "ns", "other"), None);
        assert!(!b.status(gw, "ns", "bot").unwrap().exhausted());
        b.add(gw, "ns", "bot", 60);
        let s = b.add(gw, "ns", "bot", 40).unwrap();
        assert!(s.exhausted());
        let again = Budgets::open(Some(f.clone()));
        assert_eq!(again.status(gw, "ns", "bot").unwrap().used, 100);
        let (body, _) = exhausted_body(Some("anthropic"), &s);
        assert!(body.contains("rate_limit_error"));
        std::fs::remove_file(f).unwrap();
    }
}
