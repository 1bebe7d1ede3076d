//! Daily budgets per agent (namespace/name), UTC days: tokens, USD, or both.
//!
//! Usage is counted from parsed responses (input + output tokens) and from
//! their price (`egret.cost.usd`, counted in micro-USD). A transaction with
//! usage that could not be priced exhausts a USD budget: fail closed, so an
//! unpriced model is no way around it. Over budget, requests are answered
//! with HTTP 429 in the provider's own error format and never forwarded.
//! State is persisted so a restart keeps the day's usage.
//!
//! Sums saturate (a provider reporting absurd counts exhausts the budget,
//! it never wraps it back to zero). The file is written by a writer thread
//! of its own, never on the proxy's runtime: [`Budgets::add`] only marks
//! the state dirty; the writer coalesces marks into one durable write
//! (fsync'd, atomic rename, fsync'd directory, mode 0600).
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{BudgetConfig, GatewayConfig},
    record::{AttrValue, Record},
    semconv as sc,
};

/// The budget state of one agent at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetStatus {
    /// Tokens used today.
    pub used: u64,
    /// The token budget, if the agent has one.
    pub max: Option<u64>,
    /// Micro-USD used today (priced transactions).
    pub used_usd_micros: u64,
    /// The USD budget in micro-USD, if the agent has one.
    pub max_usd_micros: Option<u64>,
    /// Transactions with usage but no price today.
    pub unpriced: u64,
}

impl BudgetStatus {
    pub fn exhausted(&self) -> bool {
        self.max.is_some_and(|m| self.used >= m) || self.usd_exhausted()
    }
    /// The USD budget is used up, or cannot be known (an unpriced
    /// transaction with usage).
    pub fn usd_exhausted(&self) -> bool {
        self.max_usd_micros
            .is_some_and(|m| self.used_usd_micros >= m || self.unpriced > 0)
    }
}

/// What one transaction charges: its tokens, and its price when it has one
/// (`None` with tokens > 0: unpriced).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    pub tokens: u64,
    pub usd: Option<f64>,
}

/// A sealed transaction's charge: its input + output tokens and its
/// `egret.cost.usd` (set before budgets are charged).
pub fn charge_of(rec: &Record) -> Charge {
    // Saturating: provider-supplied counts cannot wrap the budget.
    let tokens = transaction_tokens(
        rec.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS),
        rec.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS),
    );
    let usd = match rec.get(sc::COST_USD) {
        Some(AttrValue::Float(f)) if f.is_finite() && *f >= 0.0 => Some(*f),
        _ => None,
    };
    Charge { tokens, usd }
}

/// Writes the budget's state into a record: the token budget's use and
/// maximum when it has one, the USD budget's when it has one, and
/// `egret.budget.unpriced` on a charged transaction that had usage but no
/// price under a USD budget.
pub fn annotate(rec: &mut Record, st: &BudgetStatus, charged: Option<Charge>) {
    if let Some(max) = st.max {
        rec.set(sc::BUDGET_DAILY_USED, st.used);
        rec.set(sc::BUDGET_DAILY_MAX, max);
    }
    if let Some(max) = st.max_usd_micros {
        rec.set(sc::BUDGET_DAILY_USED_USD, st.used_usd_micros as f64 / 1e6);
        rec.set(sc::BUDGET_DAILY_MAX_USD, max as f64 / 1e6);
        if charged.is_some_and(|c| c.usd.is_none() && c.tokens > 0) {
            rec.set(sc::BUDGET_UNPRICED, true);
        }
    }
}

/// USD as micro-USD, rounded up (never under-counts), saturating.
fn micros(usd: f64) -> u64 {
    let m = (usd * 1e6).ceil();
    if m.is_nan() || m <= 0.0 {
        0
    } else if m >= u64::MAX as f64 {
        u64::MAX
    } else {
        m as u64
    }
}

/// The tokens a transaction counts against a budget: input + output,
/// negative counts as 0, saturating at `u64::MAX` (never wraps).
pub fn transaction_tokens(input: Option<i64>, output: Option<i64>) -> u64 {
    let n = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
    n(input).saturating_add(n(output))
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// "gateway/namespace/name" → (UTC day number, tokens used).
    used: HashMap<String, (i64, u64)>,
    /// → (UTC day number, micro-USD used, unpriced transactions).
    #[serde(default)]
    usd: HashMap<String, (i64, u64, u64)>,
}

#[derive(Default)]
struct Writes {
    /// Changes made to the state so far.
    requested: u64,
    /// Changes known to be on disk.
    written: u64,
    /// The writer failed its last attempt (logged once per episode).
    failing: bool,
    stop: bool,
}

struct Shared {
    file: Option<PathBuf>,
    state: Mutex<State>,
    writes: Mutex<Writes>,
    cond: Condvar,
}

pub struct Budgets {
    shared: Arc<Shared>,
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

impl Shared {
    fn writes(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: one durable write per burst of changes.
    fn write_loop(&self, file: PathBuf) {
        loop {
            let target = {
                let mut w = self.writes();
                while w.requested == w.written && !w.stop {
                    w = self.cond.wait(w).unwrap_or_else(|p| p.into_inner());
                }
                if w.requested == w.written {
                    return;
                }
                w.requested
            };
            // Taken after `target`: the bytes hold at least those changes.
            let bytes = {
                let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::to_vec(&*st)
            };
            let res = bytes.map_err(|e| e.to_string()).and_then(|b| {
                crate::statefile::write_durable(&file, &b).map_err(|e| e.to_string())
            });
            let mut w = self.writes();
            match res {
                Ok(()) => {
                    if w.failing {
                        tracing::info!(file = %file.display(), "persisting budget usage works again");
                    }
                    w.failing = false;
                    w.written = w.written.max(target);
                }
                Err(e) => {
                    if !w.failing {
                        tracing::warn!(file = %file.display(), "persisting budget usage failed: {e}");
                    }
                    w.failing = true;
                    // Retried with the next change; at shutdown, given up.
                    w.written = w.written.max(target);
                }
            }
            self.cond.notify_all();
        }
    }
}

impl Budgets {
    pub fn open(file: Option<PathBuf>) -> Budgets {
        let state = match file.as_ref().map(std::fs::read) {
            Some(Ok(b)) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = ?file, "budget usage unreadable, starting from zero: {e}");
                State::default()
            }),
            _ => State::default(),
        };
        if let Some(f) = &file {
            if let Err(e) = crate::statefile::restrict_file(f) {
                tracing::warn!("budget usage file: {e}");
            }
        }
        let shared = Arc::new(Shared {
            file: file.clone(),
            state: Mutex::new(state),
            writes: Mutex::new(Writes::default()),
            cond: Condvar::new(),
        });
        if let Some(f) = file {
            let me = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("egret-budgets".into())
                .spawn(move || me.write_loop(f));
            if let Err(e) = spawned {
                tracing::warn!("budget writer thread: {e}; usage is not persisted");
            }
        }
        Budgets { shared }
    }

    /// The agent's status, or None when no budget applies to it.
    pub fn status(&self, gw: &GatewayConfig, ns: &str, name: &str) -> Option<BudgetStatus> {
        let b = find(gw, ns, name)?;
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(gw, ns, name);
        let day = today();
        let used = match st.used.get(&k) {
            Some((d, used)) if *d == day => *used,
            _ => 0,
        };
        let (used_usd_micros, unpriced) = match st.usd.get(&k) {
            Some((d, u, n)) if *d == day => (*u, *n),
            _ => (0, 0),
        };
        Some(BudgetStatus {
            used,
            max: b.daily_tokens,
            used_usd_micros,
            max_usd_micros: b.daily_usd.map(micros),
            unpriced,
        })
    }

    /// Adds a transaction's charge to the agent's day; returns the new
    /// status. Never blocks on the disk: the writer thread persists the
    /// change.
    pub fn add(
        &self,
        gw: &GatewayConfig,
        ns: &str,
        name: &str,
        charge: Charge,
    ) -> Option<BudgetStatus> {
        let b = find(gw, ns, name)?;
        let day = today();
        let k = key(gw, ns, name);
        let status = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let e = st.used.entry(k.clone()).or_insert((day, 0));
            if e.0 != day {
                *e = (day, 0);
            }
            e.1 = e.1.saturating_add(charge.tokens);
            let used = e.1;
            let u = st.usd.entry(k).or_insert((day, 0, 0));
            if u.0 != day {
                *u = (day, 0, 0);
            }
            match charge.usd {
                Some(usd) => u.1 = u.1.saturating_add(micros(usd)),
                None if charge.tokens > 0 => u.2 = u.2.saturating_add(1),
                None => {}
            }
            BudgetStatus {
                used,
                max: b.daily_tokens,
                used_usd_micros: u.1,
                max_usd_micros: b.daily_usd.map(micros),
                unpriced: u.2,
            }
        };
        if self.shared.file.is_some() {
            self.shared.writes().requested += 1;
            self.shared.cond.notify_all();
        }
        Some(status)
    }

    /// Blocks until every change made so far was written (or the attempt
    /// failed). Blocking: call off the async runtime.
    pub fn flush(&self) {
        if self.shared.file.is_none() {
            return;
        }
        let mut w = self.shared.writes();
        let target = w.requested;
        while w.written < target {
            w = self.shared.cond.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Budgets {
    /// The writer finishes a pending write, then exits.
    fn drop(&mut self) {
        self.shared.writes().stop = true;
        self.shared.cond.notify_all();
    }
}

/// What the 429 says: which budget, how much of it is used.
pub fn exhausted_message(status: &BudgetStatus) -> String {
    match (status.max, status.max_usd_micros) {
        (Some(max), _) if status.used >= max => format!(
            "egret: daily token budget exhausted ({} of {max} tokens used)",
            status.used
        ),
        (_, Some(_)) if status.unpriced > 0 => format!(
            "egret: daily USD budget cannot be counted: {} transaction(s) today used a model without a price (add it to pricing.models)",
            status.unpriced
        ),
        (_, Some(max)) => format!(
            "egret: daily USD budget exhausted (${:.6} of ${:.6} used)",
            status.used_usd_micros as f64 / 1e6,
            max as f64 / 1e6
        ),
        _ => "egret: daily budget exhausted".to_owned(),
    }
}

/// The 429 body a provider's own clients understand.
pub fn exhausted_body(provider: Option<&str>, status: &BudgetStatus) -> (String, &'static str) {
    let msg = exhausted_message(status);
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

    fn gateway() -> Config {
        Config::parse(
            "gateways:\n- name: g\n  budgets: [{namespace: ns, name: bot, dailyTokens: 100}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn budget_counts_and_persists() {
        let cfg = gateway();
        let gw = &cfg.gateways[0];
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("budgets.json");
        let b = Budgets::open(Some(f.clone()));
        assert_eq!(b.status(gw, "ns", "other"), None);
        assert!(!b.status(gw, "ns", "bot").unwrap().exhausted());
        b.add(
            gw,
            "ns",
            "bot",
            Charge {
                tokens: 60,
                usd: None,
            },
        );
        let s = b
            .add(
                gw,
                "ns",
                "bot",
                Charge {
                    tokens: 40,
                    usd: None,
                },
            )
            .unwrap();
        assert!(s.exhausted());
        b.flush();
        let again = Budgets::open(Some(f.clone()));
        assert_eq!(again.status(gw, "ns", "bot").unwrap().used, 100);
        let (body, _) = exhausted_body(Some("anthropic"), &s);
        assert!(body.contains("rate_limit_error"));
    }

    #[test]
    fn the_written_file_is_durable_json_0600_with_the_latest_usage() {
        let cfg = gateway();
        let gw = &cfg.gateways[0];
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("budgets.json");
        let b = Budgets::open(Some(f.clone()));
        for _ in 0..50 {
            b.add(
                gw,
                "ns",
                "bot",
                Charge {
                    tokens: 3,
                    usd: None,
                },
            );
        }
        b.flush();
        let on_disk: State = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(on_disk.used["g/ns/bot"].1, 150);
        assert_eq!(crate::statefile::tests::mode_of(&f), 0o600);
        assert!(!crate::statefile::tmp_path(&f).exists());
    }

    #[test]
    fn add_returns_while_the_write_is_stuck() {
        // The writer's temporary file is a FIFO: opening it for writing
        // blocks until a reader comes, like a disk that does not answer.
        let cfg = gateway();
        let gw = &cfg.gateways[0];
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("budgets.json");
        let fifo = crate::statefile::tmp_path(&f);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let b = Budgets::open(Some(f.clone()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::scope(|s| {
            s.spawn(|| {
                b.add(
                    gw,
                    "ns",
                    "bot",
                    Charge {
                        tokens: 1,
                        usd: None,
                    },
                );
                b.add(
                    gw,
                    "ns",
                    "bot",
                    Charge {
                        tokens: 2,
                        usd: None,
                    },
                );
                tx.send(()).unwrap();
            });
            let returned = rx.recv_timeout(std::time::Duration::from_secs(20));
            // Unstick the writer either way: a reader on the FIFO.
            let reader = std::fs::File::open(&fifo).unwrap();
            assert!(returned.is_ok(), "add() waited for the disk");
            reader
        });
        // The stuck attempt failed (fsync on a FIFO); the next one lands.
        b.flush();
        drop(reader);
        let _ = std::fs::remove_file(&fifo);
        b.add(
            gw,
            "ns",
            "bot",
            Charge {
                tokens: 4,
                usd: None,
            },
        );
        b.flush();
        let on_disk: State = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(on_disk.used["g/ns/bot"].1, 7);
    }

    /// A USD budget counts priced transactions (rounded up to the
    /// micro-dollar) and is exhausted by one with usage and no price.
    #[test]
    fn usd_budget_counts_cost_and_fails_closed_on_unpriced_usage() {
        let cfg = Config::parse(
            "gateways:\n- name: g\n  budgets: [{namespace: ns, name: bot, dailyUsd: 0.01}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let gw = &cfg.gateways[0];
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("budgets.json");
        let b = Budgets::open(Some(f.clone()));
        let st = b.status(gw, "ns", "bot").unwrap();
        assert_eq!((st.max, st.max_usd_micros), (None, Some(10_000)));
        let charge = |usd| Charge {
            tokens: 1_000_000,
            usd: Some(usd),
        };
        let s = b.add(gw, "ns", "bot", charge(0.004)).unwrap();
        assert!(
            !s.exhausted(),
            "tokens do not count against a USD-only budget"
        );
        let s = b.add(gw, "ns", "bot", charge(0.0000001)).unwrap();
        assert_eq!(s.used_usd_micros, 4_001, "rounded up, never under");
        let s = b.add(gw, "ns", "bot", charge(0.006)).unwrap();
        assert!(s.exhausted());
        assert!(exhausted_message(&s).contains("USD budget exhausted"));
        // Nothing charged without usage; usage without a price: exhausted.
        let other = Config::parse(
            "gateways:\n- name: g\n  budgets: [{namespace: ns, name: '', dailyUsd: 5, dailyTokens: 1000000}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let gw = &other.gateways[0];
        let s = b
            .add(
                gw,
                "ns",
                "x",
                Charge {
                    tokens: 0,
                    usd: None,
                },
            )
            .unwrap();
        assert!(!s.exhausted());
        let s = b
            .add(
                gw,
                "ns",
                "x",
                Charge {
                    tokens: 5,
                    usd: None,
                },
            )
            .unwrap();
        assert_eq!(s.unpriced, 1);
        assert!(s.exhausted() && s.usd_exhausted());
        assert!(exhausted_message(&s).contains("without a price"));
        b.flush();
        let again = Budgets::open(Some(f));
        assert_eq!(
            again.status(gw, "ns", "x").unwrap().unpriced,
            1,
            "persisted"
        );
        for bad in ["dailyUsd: 0", "dailyUsd: -1", "namespace: ns"] {
            let e = Config::parse(
                &format!("gateways:\n- name: g\n  budgets: [{{{bad}}}]\n"),
                std::path::Path::new("t.yaml"),
            );
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn sums_saturate_at_the_edge() {
        assert_eq!(
            transaction_tokens(Some(i64::MAX), Some(i64::MAX)),
            2 * i64::MAX as u64
        );
        assert_eq!(
            transaction_tokens(Some(i64::MAX), Some(1)),
            i64::MAX as u64 + 1
        );
        assert_eq!(transaction_tokens(Some(-5), Some(7)), 7);
        assert_eq!(transaction_tokens(None, None), 0);
        let cfg = gateway();
        let gw = &cfg.gateways[0];
        let b = Budgets::open(None);
        b.add(
            gw,
            "ns",
            "bot",
            Charge {
                tokens: u64::MAX - 1,
                usd: None,
            },
        );
        let s = b
            .add(
                gw,
                "ns",
                "bot",
                Charge {
                    tokens: 10,
                    usd: None,
                },
            )
            .unwrap();
        assert_eq!(s.used, u64::MAX);
        assert!(s.exhausted());
        let s = b
            .add(
                gw,
                "ns",
                "bot",
                Charge {
                    tokens: u64::MAX,
                    usd: None,
                },
            )
            .unwrap();
        assert_eq!(s.used, u64::MAX);
    }
}
