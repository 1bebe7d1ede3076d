//! `deploy/grafana/egret.json` against the real thing, without Grafana
//! (Debian does not package it): real transactions go through a running
//! agent into a real ClickHouse (Debian's 18.16) and its `/metrics`; then
//! every ClickHouse query of the dashboard (panels and variables), with the
//! Altinity plugin's macros and the dashboard's variables substituted as
//! `deploy/grafana/README.md` describes, runs against that server and must
//! return the rows those transactions imply, and every PromQL expression's
//! metric and label names must exist in the agent's `/metrics` text, and
//! evaluate without error and with a result on a real Prometheus (Debian's
//! `prometheus`) scraping that agent.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bpf_tests::{clickhouse_rig::ClickHouseRig, prometheus_rig::PrometheusRig, world::*, *};
use egret::{
    record::{AttrValue, Record},
    semconv as sc,
};
use serde_json::Value;

fn dashboard() -> Value {
    let path = workspace_root().join("deploy/grafana/egret.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/egret.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// One query of the dashboard: where it is, its datasource type, its text.
#[derive(Debug)]
struct Query {
    at: String,
    datasource: String,
    text: String,
}

/// Every query: panel targets (`expr` for Prometheus, `query` for
/// ClickHouse) and query variables.
fn queries(d: &Value) -> Vec<Query> {
    fn ds_type(v: &Value) -> String {
        v["datasource"]["type"].as_str().unwrap_or("").to_owned()
    }
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            let at = format!(
                "panel {:?} {}",
                p["title"].as_str().unwrap_or(""),
                t["refId"].as_str().unwrap_or("")
            );
            let text = t["expr"].as_str().or(t["query"].as_str());
            let text = text.unwrap_or_else(|| panic!("{at}: no query"));
            assert_eq!(ds_type(t), ds_type(p), "{at}: target and panel datasource");
            out.push(Query {
                at,
                datasource: ds_type(t),
                text: text.to_owned(),
            });
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let text = v["query"]["query"].as_str().or(v["query"].as_str());
        out.push(Query {
            at: format!("variable {}", v["name"].as_str().unwrap_or("")),
            datasource: ds_type(v),
            text: text.expect("variable query").to_owned(),
        });
    }
    out
}

/// The SQL the Altinity ClickHouse plugin would send, made deterministic:
/// `${database}`, `$interval` (60 s), `$timeFilterByColumn(col)` (the
/// range `from..to`, Unix seconds) and `$invocation_id`.
fn render_sql(q: &str, db: &str, from: u64, to: u64, inv: &str) -> String {
    let mut s = q.replace("${database}", db).replace("$database", db);
    while let Some(i) = s.find("$timeFilterByColumn(") {
        let rest = &s[i + "$timeFilterByColumn(".len()..];
        let end = rest.find(')').expect("closing parenthesis");
        let col = rest[..end].trim().to_owned();
        let filter = format!("({col} >= toDateTime({from}) AND {col} <= toDateTime({to}))");
        s.replace_range(i..i + "$timeFilterByColumn(".len() + end + 1, &filter);
    }
    let s = s
        .replace("$interval", "60")
        .replace("${invocation_id}", inv)
        .replace("$invocation_id", inv);
    assert!(
        !s.contains('$'),
        "an unknown macro or variable is left:\n{s}"
    );
    s
}

/// `FORMAT JSON` rows as objects (64-bit integers may come quoted).
fn run(ch: &ClickHouseRig, at: &str, sql: &str) -> Vec<serde_json::Map<String, Value>> {
    let body = ch
        .query(&format!("{sql}\nFORMAT JSON"))
        .unwrap_or_else(|e| panic!("{at}: ClickHouse refused the query: {e}\n{sql}"));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{at}: {e}: {body}"));
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

// ---- PromQL ---------------------------------------------------------------

/// Words of PromQL that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "by",
    "without",
    "label_values",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
];

/// The metric names and, per metric, the label names an expression uses
/// (matchers `{…}`, `by (…)` groupings apply to every metric of it;
/// `label_values(metric, label)` names one of each).
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut last_word = String::new();
    let mut in_label_values = false;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            // A string: skip it.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'{' {
            // Matchers: the label names before each operator.
            let end = expr[i..].find('}').map(|e| i + e).expect("closing brace");
            let mut inner = &expr[i + 1..end];
            while !inner.trim().is_empty() {
                let op = inner.find(['=', '!']).expect("a matcher operator");
                labels.insert(inner[..op].trim().trim_start_matches(',').trim().to_owned());
                let q1 = inner.find('"').expect("a quoted value");
                let q2 = q1 + 1 + inner[q1 + 1..].find('"').expect("closing quote");
                inner = inner[q2 + 1..].trim_start_matches([',', ' ']);
            }
            i = end + 1;
        } else if c == b'[' {
            i += expr[i..].find(']').expect("closing bracket") + 1;
        } else if c == b'(' && (last_word == "by" || last_word == "without") {
            let end = i + expr[i..].find(')').expect("closing parenthesis");
            for l in expr[i + 1..end].split(',') {
                labels.insert(l.trim().to_owned());
            }
            i = end + 1;
            last_word.clear();
        } else if ident(c) && !c.is_ascii_digit() {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if in_label_values && !metrics.is_empty() {
                labels.insert(w.to_owned());
            } else if w == "label_values" {
                in_label_values = true;
            } else if !PROMQL_WORDS.contains(&w) {
                metrics.insert(w.to_owned());
            }
            last_word = w.to_owned();
        } else {
            if !c.is_ascii_whitespace() {
                last_word.clear();
            }
            i += 1;
        }
    }
    labels.remove("");
    (metrics, labels)
}

/// Sample name → the label names it carries anywhere in `text`.
fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match l.find(['{', ' ']) {
            Some(i) => (&l[..i], &l[i..]),
            None => continue,
        };
        let set = out.entry(name.to_owned()).or_default();
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            for pair in inner.0.split("\",") {
                if let Some((k, _)) = pair.split_once("=\"") {
                    set.insert(k.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    out
}

/// An expression as Grafana would send it to Prometheus: `$namespace` (all)
/// → `.*`, `$__rate_interval` → `1m`; the variable function
/// `label_values(m, l)` as the series query it stands for.
fn promql_for_prometheus(expr: &str) -> String {
    let e = expr
        .replace("$namespace", ".*")
        .replace("$__rate_interval", "1m");
    if let Some(args) = e
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        let (m, l) = args.split_once(',').expect("label_values(metric, label)");
        return format!("count by ({}) ({})", l.trim(), m.trim());
    }
    assert!(!e.contains('$'), "an unknown variable is left: {e}");
    e
}

#[test]
fn promql_names_are_extracted() {
    let (m, l) = promql_names(
        r#"histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate(egret_request_duration_seconds_bucket{agent_namespace=~"$namespace",error_type!=""}[$__rate_interval]))) / max by (instrument) (egret_metric_series)"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        [
            "egret_metric_series",
            "egret_request_duration_seconds_bucket"
        ]
    );
    assert_eq!(
        l.into_iter().collect::<Vec<_>>(),
        [
            "agent_namespace",
            "error_type",
            "gen_ai_request_model",
            "instrument",
            "le"
        ]
    );
    let (m, l) = promql_names("label_values(egret_requests_total, agent_namespace)");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["egret_requests_total"]);
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["agent_namespace"]);
}

#[test]
fn sql_is_rendered_deterministically() {
    let s = render_sql(
        "SELECT (intDiv(toUInt32(event_time), $interval) * $interval) FROM ${database}.transactions WHERE $timeFilterByColumn(event_time) AND invocation_id = '$invocation_id'",
        "db",
        10,
        20,
        "inv-1",
    );
    assert_eq!(
        s,
        "SELECT (intDiv(toUInt32(event_time), 60) * 60) FROM db.transactions WHERE (event_time >= toDateTime(10) AND event_time <= toDateTime(20)) AND invocation_id = 'inv-1'"
    );
}

/// The dashboard's SQL on ClickHouse 18.16 over rows a running agent wrote,
/// and its PromQL names in that agent's `/metrics`.
#[test]
fn grafana_dashboard_queries_run_on_real_egret_data() {
    if !require_privileges("grafana_dashboard") {
        return;
    }
    let Some(ch) = ClickHouseRig::start_or_skip("grafana_dashboard") else {
        return;
    };
    let db = "egret_dashboard";
    // A budget of 1 token (the streamed call uses it up) and a cap of 3
    // series per instrument: the fourth request label set lands in the
    // overflow series, so every panel's series exist.
    let w = World::with(WorldOptions {
        extra_yaml: format!(
            "store:\n  clickhouse:\n    url: {}\n    database: {db}\n    flushInterval: 200ms\n\
             gateways:\n- name: dash-gw\n  defaultPolicy: deny-all\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  - {{name: openai, hosts: [api.openai.com], provider: openai}}\n  budgets:\n  - {{namespace: tests, name: '', dailyTokens: 1}}\n",
            ch.url()
        ),
        agent: AgentOptions {
            node_yaml: "metrics:\n  maxSeries: 3\n".into(),
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let inv = unique("inv-dash-");
    let cg = w.sandbox(&inv, None);
    let call = |model: &str, stream: bool| {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":8,"stream":{stream},"messages":[{{"role":"user","content":"tell me about herons"}}]}}"#
        );
        w.curl(
            &cg,
            &[
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
                "-H",
                "x-api-key: sk-ant-test",
                "-H",
                "anthropic-version: 2023-06-01",
                "-H",
                "x-mock-delay-ms: 20",
                "-d",
                &body,
                "https://api.anthropic.com/v1/messages",
            ],
        );
    };
    // In this order (each recorded before the next): a policy refusal, a
    // streamed call (which uses the budget up), a call the budget refuses
    // — their label sets are kept — and another budget refusal, through
    // another route, that goes to the overflow series.
    w.curl(&cg, &["-o", "/dev/null", "https://denied.example/"]);
    w.transactions(&inv, 1);
    call("claude-sonnet-4-5", true);
    w.transactions(&inv, 2);
    call("claude-haiku-4-5", false);
    w.transactions(&inv, 3);
    w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            "https://api.openai.com/v1/chat/completions",
        ],
    );
    let mut recs = w.transactions(&inv, 4);
    recs.sort_by_key(Record::start_ns);
    assert_eq!(recs.len(), 4);
    assert_eq!(
        recs.iter()
            .filter(|r| r.get_bool(sc::BUDGET_DENIED) == Some(true))
            .count(),
        2,
        "two calls refused by the budget"
    );
    let flows = w
        .agent
        .wait_records("the invocation's flows", |r| {
            r.iter()
                .filter(|x| x.kind() == sc::KIND_FLOW && x.invocation_id() == Some(&inv))
                .count()
                >= 4
        })
        .into_iter()
        .filter(|x| x.kind() == sc::KIND_FLOW && x.invocation_id() == Some(&inv))
        .count();
    // Everything in ClickHouse.
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    loop {
        let sql =
            |t: &str| format!("SELECT count() FROM {db}.{t} FINAL WHERE invocation_id = '{inv}'");
        let (t, f) = (
            ch.query_u64(&sql("transactions")).unwrap_or(0),
            ch.query_u64(&sql("flows")).unwrap_or(0),
        );
        if t == 4 && f == flows as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ClickHouse has {t} transactions, {f} flows"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let in_tokens: i64 = recs
        .iter()
        .filter_map(|r| r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS))
        .sum();
    assert!(in_tokens > 0, "the mock reports usage");
    let streamed = recs
        .iter()
        .find(|r| r.get_bool(sc::GEN_AI_REQUEST_STREAM) == Some(true))
        .unwrap();
    let ttfb = match streamed.get(sc::TTFB_MS) {
        Some(AttrValue::Float(f)) => *f,
        other => panic!("ttfb {other:?}"),
    };

    let d = dashboard();
    let all = queries(&d);
    let now = u64::try_from(egret::record::now_unix_nanos() / 1_000_000_000).unwrap();
    let (from, to) = (now - 3600, now + 60);
    let mut sql_run = 0;
    let mut checked = BTreeSet::new();
    let mut promql_checked = 0;
    let metrics_text = w.agent.metrics();
    let families = exposed(&metrics_text);
    for q in &all {
        match q.datasource.as_str() {
            "vertamedia-clickhouse-datasource" => {
                let sql = render_sql(&q.text, db, from, to, &inv);
                let rows = run(&ch, &q.at, &sql);
                assert!(!rows.is_empty(), "{}: no rows\n{sql}", q.at);
                if let Some(what) = check_rows(&q.at, &rows, &recs, flows, &inv, in_tokens, ttfb) {
                    checked.insert(what);
                }
                sql_run += 1;
            }
            "prometheus" => {
                let (metrics, labels) = promql_names(&q.text);
                assert!(!metrics.is_empty(), "{}: no metric in {}", q.at, q.text);
                for m in &metrics {
                    let have = families.get(m).unwrap_or_else(|| {
                        panic!("{}: {m} is not in /metrics:\n{metrics_text}", q.at)
                    });
                    for l in &labels {
                        // A label of the expression belongs to one of its metrics.
                        let anywhere = metrics
                            .iter()
                            .any(|m| families.get(m).is_some_and(|s| s.contains(l)));
                        assert!(
                            anywhere,
                            "{}: label {l} is on none of {metrics:?} ({have:?})",
                            q.at
                        );
                    }
                }
                promql_checked += 1;
            }
            other => panic!("{}: unexpected datasource {other:?}", q.at),
        }
    }
    // The same expressions on a real Prometheus scraping the agent: each
    // must parse, evaluate and have a result (every panel's series exist).
    let target = format!("{}:{}", w.agent.admin_ip, w.agent.admin_port);
    if let Some(prom) = PrometheusRig::start_or_skip("grafana_dashboard", &target) {
        let deadline = Instant::now() + patience(Duration::from_secs(60));
        // Two scrapes at least, so rate() has samples.
        loop {
            let r = prom
                .query("count_over_time(egret_requests_total[1m])")
                .unwrap();
            if r.iter()
                .any(|s| num(&s["value"][1]).is_some_and(|n| n >= 2.0))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape twice: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for q in all.iter().filter(|q| q.datasource == "prometheus") {
            let expr = promql_for_prometheus(&q.text);
            let result = prom
                .query(&expr)
                .unwrap_or_else(|e| panic!("{}: Prometheus: {e}", q.at));
            assert!(!result.is_empty(), "{}: no series for {expr}", q.at);
            if q.at == "variable namespace" {
                assert_eq!(result[0]["metric"]["agent_namespace"], "tests");
            }
        }
    }
    assert!(sql_run >= 8, "{sql_run} SQL queries");
    assert_eq!(
        checked.len(),
        7,
        "panels checked for their values: {checked:?}"
    );
    assert!(promql_checked >= 10, "{promql_checked} PromQL expressions");
}

/// What each ClickHouse panel must show for the four calls (a policy
/// refusal, a streamed call, two budget refusals) of `inv`.
fn check_rows(
    at: &str,
    rows: &[serde_json::Map<String, Value>],
    recs: &[Record],
    flows: usize,
    inv: &str,
    in_tokens: i64,
    ttfb: f64,
) -> Option<&'static str> {
    let col_sum = |k: &str| rows.iter().filter_map(|r| num(&r[k])).sum::<f64>();
    let series_sum = || -> f64 {
        rows.iter()
            .flat_map(|r| r["groupArr"].as_array().unwrap().clone())
            .filter_map(|pair| num(&pair[1]))
            .sum()
    };
    if at.contains("Calls, tokens, cost, errors") {
        assert_eq!(col_sum("calls"), 4.0, "{at}: {rows:?}");
        assert_eq!(col_sum("errors"), 3.0, "{at}: {rows:?}");
        assert_eq!(col_sum("input_tokens"), in_tokens as f64, "{at}");
        let sonnet = rows
            .iter()
            .find(|r| r["model"] == "claude-sonnet-4-5")
            .unwrap_or_else(|| panic!("{at}: {rows:?}"));
        assert_eq!(sonnet["agent_namespace"], "tests");
        // Cost from the records' egret.cost.usd (the shipped table prices
        // claude-sonnet-4-5); the refusals below have none: NULL, not 0.
        let cost: f64 = recs
            .iter()
            .filter_map(|r| match r.get(sc::COST_USD) {
                Some(AttrValue::Float(f)) => Some(*f),
                _ => None,
            })
            .sum();
        assert!(cost > 0.0, "the streamed call is priced");
        let shown = num(&sonnet["cost_usd"]).expect("cost of the priced call");
        assert!((shown - cost).abs() < 1e-12, "{shown} vs {cost}");
        let t = num(&sonnet["ttft_p95_ms"]).expect("TTFT of the streamed call");
        assert!(
            (t - (ttfb * 10.0).round() / 10.0).abs() < 0.06,
            "{t} vs {ttfb}"
        );
        // The refusals: no provider, no model, no usage (NULL, not 0).
        let refused = rows
            .iter()
            .find(|r| r["provider"].is_null())
            .unwrap_or_else(|| panic!("{at}: the refusals: {rows:?}"));
        assert_eq!(num(&refused["calls"]), Some(3.0), "{at}: {rows:?}");
        assert!(refused["input_tokens"].is_null(), "no usage is NULL, not 0");
        assert!(refused["cost_usd"].is_null(), "no cost is NULL, not 0");
        assert!(
            refused["ttft_p95_ms"].is_null(),
            "unstreamed calls have no TTFT"
        );
        return Some("per agent and model");
    } else if at.contains("Calls per model") {
        assert_eq!(series_sum(), 4.0, "{at}: {rows:?}");
        return Some("calls per model");
    } else if at.contains("Tokens per model") && at.ends_with('A') {
        assert_eq!(series_sum(), in_tokens as f64, "{at}: {rows:?}");
        return Some("input tokens per model");
    } else if at.contains("Errors by type") {
        assert_eq!(col_sum("calls"), 3.0, "{at}: {rows:?}");
        let policy = rows
            .iter()
            .find(|r| r["error_type"] == "policy_denied")
            .unwrap();
        assert_eq!(num(&policy["status"]), Some(403.0));
        // Budget refusals carry no provider or model (the request is not
        // parsed): one group of two.
        let budget = rows
            .iter()
            .find(|r| r["error_type"] == "budget_exhausted")
            .unwrap();
        assert_eq!(num(&budget["status"]), Some(429.0));
        assert_eq!(num(&budget["calls"]), Some(2.0), "{at}: {rows:?}");
        return Some("errors");
    } else if at.contains("Every call of invocation") {
        let ids: Vec<&str> = rows
            .iter()
            .map(|r| r["record_id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = recs.iter().map(Record::id).collect();
        assert_eq!(ids, want, "{at}: every call, in order");
        assert_eq!(num(&rows[1]["stream"]), Some(1.0));
        return Some("drill-down calls");
    } else if at.contains("Connections of invocation") {
        assert_eq!(rows.len(), flows, "{at}: {rows:?}");
        assert!(rows
            .iter()
            .all(|r| num(&r["bytes_sent"]).is_some_and(|b| b > 0.0)));
        return Some("drill-down connections");
    } else if at == "variable invocation_id" {
        assert!(
            rows.iter().any(|r| r["invocation_id"] == inv),
            "{at}: {rows:?}"
        );
        return Some("invocation variable");
    }
    None
}
