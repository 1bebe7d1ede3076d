//! OTLP exporter end to end: retries against a local hyper server, queue
//! overflow accounting, the dev tee, and an independent receiver built on
//! PyPI's `opentelemetry-proto` (`bpf-tests/clients/otlp_receiver.py`).
//!
//! The Python tests need a venv (`$EGRET_VENV`, default `<repo>/.venv`)
//! with `opentelemetry-proto` and `grpcio`; without it they print why they
//! skip, or fail when `CI` is set.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use egret::{
    config::{Compression, Convention, OtlpConfig, Protocol, SignalsConfig},
    record::Record,
    semconv as sc,
    sink::otlp::{
        resolve, settings, ExportOptions, HttpClient, LinkState, OtlpExporter, OtlpSinks,
        RetryPolicy, SignalStatus,
    },
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{any_value, KeyValue},
    metrics::v1::metric::Data,
};
use prost::Message;
use serde_json::Value;

// ---- helpers ----------------------------------------------------------------

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The semantic-conventions release of every scope (and of docs/semconv).
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.1";
const PARENT: &str = "00f067aa0ba902b7";

fn txn(status: i64) -> Record {
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(sc::INVOCATION_ID, "inv-42");
    r.set(sc::AGENT_NAME, "coder");
    r.set(sc::AGENT_UID, "uid-42");
    r.set(sc::GEN_AI_PROVIDER_NAME, "openai");
    // The deprecated name, as the provider parser writes it on records.
    r.set(sc::GEN_AI_SYSTEM, "openai");
    r.set(sc::GEN_AI_OPERATION_NAME, "chat");
    r.set(sc::GEN_AI_REQUEST_MODEL, "gpt-4o");
    r.set(sc::GEN_AI_RESPONSE_MODEL, "gpt-4o-2024-08-06");
    r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 20i64);
    r.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, 300i64);
    r.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, vec!["stop".to_owned()]);
    r.set(sc::HTTP_REQUEST_METHOD, "POST");
    r.set(sc::HTTP_RESPONSE_STATUS_CODE, status);
    r.set(sc::SERVER_ADDRESS, "api.openai.com");
    r.set(sc::SERVER_PORT, 443i64);
    r.set(sc::URL_PATH, "/v1/chat/completions");
    r.set(sc::START_TIME, 1_700_000_000_000_000_000i64);
    r.set(sc::END_TIME, 1_700_000_000_250_000_000i64);
    r.set(sc::DURATION_MS, 250.0);
    r.set(
        sc::REQUEST_BODY,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
    );
    r.set(
        sc::RESPONSE_BODY,
        r#"{"id":"c1","choices":[{"message":{"content":"hello"}}]}"#,
    );
    r.set(sc::REQUEST_CONTENT_TYPE, "application/json");
    r.set(sc::RESPONSE_CONTENT_TYPE, "application/json");
    r
}

fn fast_opts() -> ExportOptions {
    ExportOptions {
        flush_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
        },
        ..ExportOptions::default()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn traces_only(endpoint: &str) -> OtlpConfig {
    OtlpConfig {
        endpoint: Some(endpoint.to_owned()),
        signals: SignalsConfig {
            traces: true,
            logs: false,
            metrics: false,
        },
        timeout: Some(Duration::from_secs(5)),
        ..OtlpConfig::default()
    }
}

fn client() -> HttpClient {
    HttpClient::new().expect("TLS client")
}

fn signal<'a>(exp: &'a [SignalStatus], name: &str) -> &'a SignalStatus {
    exp.iter()
        .find(|s| s.signal.as_str() == name)
        .unwrap_or_else(|| panic!("no {name} in {exp:?}"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone)]
struct Captured {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP/1.1 server answering request `i` with `reply(i)`.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(
        reply: impl Fn(usize) -> (StatusCode, Vec<(&'static str, &'static str)>) + Send + Sync + 'static,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let reply = reply.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let i = {
                                let mut s = seen.lock().unwrap();
                                s.push(Captured {
                                    path: parts.uri.path().to_owned(),
                                    headers: parts.headers,
                                    body,
                                });
                                s.len() - 1
                            };
                            let (status, headers) = reply(i);
                            let mut resp = Response::builder().status(status);
                            for (k, v) in headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        TestServer { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gzip body");
    out
}

// ---- retry and failure behaviour ------------------------------------------------

#[tokio::test]
async fn retries_503_honouring_retry_after_then_succeeds() {
    let srv = TestServer::start(|i| {
        if i == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, vec![("retry-after", "1")])
        } else {
            (StatusCode::OK, vec![])
        }
    })
    .await;
    let mut cfg = traces_only(&srv.url());
    cfg.headers
        .insert("x-team".into(), "${EGRET_TEST_TEAM}".into());
    let env = |k: &str| (k == "EGRET_TEST_TEAM").then(|| "t-123".to_owned());
    let settings = resolve("gw", &cfg, &env).unwrap().unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();

    let t0 = Instant::now();
    let mut rec = txn(200);
    rec.set(sc::TRACE_ID, TRACE);
    exp.offer(&rec);
    wait_for("the span to be accepted", || {
        signal(&exp.status().signals, "traces").sent == 1
    })
    .await;
    let elapsed = t0.elapsed();
    // The 10 ms backoff would retry at once: waiting ~1 s is Retry-After.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");

    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!(t.state, LinkState::Connected);
    assert_eq!((t.retries, t.dropped), (1, 0));
    assert!(
        t.last_error.as_deref().unwrap_or("").contains("503"),
        "{t:?}"
    );
    assert_eq!(t.endpoint, format!("{}/v1/traces", srv.url()));

    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    let req = &seen[1];
    assert_eq!(req.path, "/v1/traces");
    assert_eq!(req.headers["content-type"], "application/x-protobuf");
    assert_eq!(req.headers["content-encoding"], "gzip");
    assert_eq!(req.headers["x-team"], "t-123");
    let decoded = ExportTraceServiceRequest::decode(gunzip(&req.body).as_slice()).unwrap();
    let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "chat gpt-4o");
    assert_eq!(hex(&span.trace_id), TRACE);
    // Both attempts carried the same payload.
    assert_eq!(seen[0].body, seen[1].body);
    exp.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_counts_the_drop() {
    let srv = TestServer::start(|_| (StatusCode::BAD_GATEWAY, vec![])).await;
    let settings = resolve("gw", &traces_only(&srv.url()), &no_env)
        .unwrap()
        .unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    exp.offer(&txn(200));
    wait_for("the batch to be dropped", || {
        signal(&exp.status().signals, "traces").dropped == 1
    })
    .await;
    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!(t.state, LinkState::Error);
    assert_eq!((t.sent, t.retries), (0, 2));
    assert_eq!(srv.seen().len(), 3);
    exp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let srv = TestServer::start(|_| (StatusCode::UNAUTHORIZED, vec![])).await;
    let settings = resolve("gw", &traces_only(&srv.url()), &no_env)
        .unwrap()
        .unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    exp.offer(&txn(200));
    wait_for("the batch to be dropped", || {
        signal(&exp.status().signals, "traces").dropped == 1
    })
    .await;
    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!((t.state, t.retries), (LinkState::Error, 0));
    assert!(
        t.last_error.as_deref().unwrap_or("").contains("401"),
        "{t:?}"
    );
    assert_eq!(srv.seen().len(), 1);
    exp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn transport_errors_are_retried_and_show_disconnected() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let settings = resolve(
        "gw",
        &traces_only(&format!("http://127.0.0.1:{port}")),
        &no_env,
    )
    .unwrap()
    .unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    assert_eq!(
        signal(&exp.status().signals, "traces").state,
        LinkState::Disconnected
    );
    exp.offer(&txn(200));
    wait_for("the batch to be dropped", || {
        signal(&exp.status().signals, "traces").dropped == 1
    })
    .await;
    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!((t.state, t.retries), (LinkState::Disconnected, 2));
    assert!(t.last_error.is_some());
    exp.shutdown(Duration::from_secs(1)).await;
}

/// A receiver that accepts connections and never answers: at the shutdown
/// deadline the batch in flight and the records still queued are given up,
/// and every one of them is counted as dropped.
#[tokio::test]
async fn items_abandoned_at_the_shutdown_deadline_are_counted() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::unbounded_channel();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            let _ = conn_tx.send(());
            held.push(sock); // read nothing, answer nothing
        }
    });
    let cfg = OtlpConfig {
        timeout: Some(Duration::from_secs(60)),
        ..traces_only(&format!("http://{addr}"))
    };
    let opts = ExportOptions {
        max_batch: 2,
        ..fast_opts()
    };
    let exp = OtlpExporter::start(
        resolve("gw", &cfg, &no_env).unwrap().unwrap(),
        opts,
        client(),
    )
    .unwrap();
    for _ in 0..5 {
        exp.offer(&txn(200));
    }
    // The first batch is on the wire and waits for an answer.
    tokio::time::timeout(Duration::from_secs(15), conn_rx.recv())
        .await
        .expect("the exporter connects")
        .unwrap();
    let t0 = Instant::now();
    exp.shutdown(Duration::from_millis(300)).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!(t.sent, 0, "{t:?}");
    assert_eq!(t.dropped, 5, "every abandoned record is counted: {t:?}");
    silent.abort();
}

// ---- standard variables ------------------------------------------------------------

/// `OTEL_METRIC_EXPORT_INTERVAL` sets the export period (it was ignored:
/// nothing arrived within 12 s with 1000). With 300 ms, the receiver sees
/// three metric exports well before the default 60 s, while the exporter
/// runs (not the export at shutdown).
#[tokio::test]
async fn metric_export_interval_from_the_environment() {
    let srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let cfg = OtlpConfig {
        endpoint: Some(srv.url()),
        signals: SignalsConfig {
            traces: false,
            logs: false,
            metrics: true,
        },
        ..OtlpConfig::default()
    };
    let env = |k: &str| (k == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "300".to_owned());
    let settings = resolve("gw", &cfg, &env).unwrap().unwrap();
    assert_eq!(settings.metrics_interval, Duration::from_millis(300));
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    exp.offer(&txn(200));
    let t0 = Instant::now();
    let metric_posts = || {
        srv.seen()
            .iter()
            .filter(|c| c.path == "/v1/metrics")
            .count()
    };
    // Three periods plus slack for a loaded machine; far below 60 s.
    let deadline = Duration::from_millis(300 * 3) + Duration::from_secs(4);
    while metric_posts() < 3 {
        assert!(
            t0.elapsed() < deadline,
            "{} metric exports after {:?}",
            metric_posts(),
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = ExportMetricsServiceRequest::decode(
        gunzip(
            &srv.seen()
                .iter()
                .find(|c| c.path == "/v1/metrics")
                .unwrap()
                .body,
        )
        .as_slice(),
    )
    .unwrap();
    let names: Vec<&str> = first.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert!(names.contains(&sc::METRIC_TRANSACTIONS), "{names:?}");
    exp.shutdown(Duration::from_secs(2)).await;
}

/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta`: sums and
/// histograms are delta, and an export after an idle period carries no
/// points of the counts sent before.
#[tokio::test]
async fn delta_temporality_from_the_environment() {
    use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
    let srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let cfg = OtlpConfig {
        endpoint: Some(srv.url()),
        signals: SignalsConfig {
            traces: false,
            logs: false,
            metrics: true,
        },
        ..OtlpConfig::default()
    };
    let env = |k: &str| match k {
        "OTEL_METRIC_EXPORT_INTERVAL" => Some("200".to_owned()),
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE" => Some("delta".to_owned()),
        _ => None,
    };
    let exp = OtlpExporter::start(
        resolve("gw", &cfg, &env).unwrap().unwrap(),
        fast_opts(),
        client(),
    )
    .unwrap();
    exp.offer(&txn(200));
    let exports = || -> Vec<ExportMetricsServiceRequest> {
        srv.seen()
            .iter()
            .filter(|c| c.path == "/v1/metrics")
            .map(|c| ExportMetricsServiceRequest::decode(gunzip(&c.body).as_slice()).unwrap())
            .collect()
    };
    wait_for("two metric exports", || exports().len() >= 2).await;
    exp.shutdown(Duration::from_secs(2)).await;
    let all = exports();
    let transactions = |r: &ExportMetricsServiceRequest| {
        r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == sc::METRIC_TRANSACTIONS)
            .cloned()
    };
    let first = transactions(&all[0]).expect("the transaction in the first export");
    let Some(Data::Sum(sum)) = first.data else {
        panic!("{first:?}")
    };
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    assert!(
        all[1..].iter().all(|r| transactions(r).is_none()),
        "later exports repeat nothing"
    );
}

// ---- queueing ---------------------------------------------------------------------

/// On a current-thread runtime the workers cannot run while the test
/// offers synchronously: exactly `queueCapacity` records are queued per
/// signal, the rest dropped and counted, and `offer` never waits.
#[tokio::test(flavor = "current_thread")]
async fn full_queue_drops_and_counts() {
    let srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let cfg = OtlpConfig {
        endpoint: Some(srv.url()),
        queue_capacity: Some(2),
        signals: SignalsConfig {
            traces: true,
            logs: true,
            metrics: false,
        },
        ..OtlpConfig::default()
    };
    let exp = OtlpExporter::start(
        resolve("gw", &cfg, &no_env).unwrap().unwrap(),
        fast_opts(),
        client(),
    )
    .unwrap();
    let t0 = Instant::now();
    for _ in 0..10 {
        exp.offer(&txn(200));
    }
    // A flow without a transaction: logs only.
    exp.offer(&Record::new(sc::KIND_FLOW));
    assert!(t0.elapsed() < Duration::from_millis(500));
    let st = exp.status();
    let (t, l) = (signal(&st.signals, "traces"), signal(&st.signals, "logs"));
    assert_eq!((t.queued, t.dropped), (2, 8));
    assert_eq!((l.queued, l.dropped), (2, 9));

    exp.shutdown(Duration::from_secs(5)).await;
    let st = exp.status();
    assert_eq!(signal(&st.signals, "traces").sent, 2);
    assert_eq!(signal(&st.signals, "logs").sent, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn sampling_keeps_or_drops_whole_invocations() {
    let srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let cfg = OtlpConfig {
        endpoint: Some(srv.url()),
        sampling: 0.5,
        signals: SignalsConfig {
            traces: true,
            logs: false,
            metrics: false,
        },
        ..OtlpConfig::default()
    };
    let exp = OtlpExporter::start(
        resolve("gw", &cfg, &no_env).unwrap().unwrap(),
        fast_opts(),
        client(),
    )
    .unwrap();
    let mut expected = 0;
    for i in 0..40 {
        let inv = format!("inv-{i}");
        let keep = settings_sample(&inv);
        for _ in 0..3 {
            let mut r = txn(200);
            r.set(sc::INVOCATION_ID, inv.as_str());
            exp.offer(&r);
        }
        if keep {
            expected += 3;
        }
    }
    assert!(expected > 0 && expected < 120, "{expected}");
    exp.shutdown(Duration::from_secs(5)).await;
    let st = exp.status();
    assert_eq!(signal(&st.signals, "traces").sent, expected);
    // Every span of a kept invocation arrived; none of a dropped one.
    let mut per_inv: BTreeMap<String, usize> = BTreeMap::new();
    for req in srv.seen() {
        let d = ExportTraceServiceRequest::decode(gunzip(&req.body).as_slice()).unwrap();
        for s in d
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let inv = s
                .attributes
                .iter()
                .find(|a| a.key == sc::INVOCATION_ID)
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{v:?}"))
                .unwrap();
            *per_inv.entry(inv).or_default() += 1;
        }
    }
    assert!(per_inv.values().all(|n| *n == 3), "{per_inv:?}");
}

fn settings_sample(inv: &str) -> bool {
    egret::sink::otlp::encode::sample_key(inv) < 0.5
}

#[tokio::test]
async fn dev_tee_receives_every_gateway() {
    let gw_srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let tee_srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let yaml = format!(
        "gateways:\n  - name: a\n    otlp:\n      endpoint: {}\n      signals: {{logs: false, metrics: false}}\n  - name: b\n",
        gw_srv.url()
    );
    let cfg = egret::config::Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let (sinks, warnings) =
        OtlpSinks::from_config(&cfg, Some(&tee_srv.url()), &no_env, fast_opts()).unwrap();
    assert!(warnings.is_empty());
    assert!(sinks.gateway("a").len() == 1 && sinks.gateway("b").is_empty());
    sinks.offer("a", &txn(200));
    sinks.offer("b", &txn(500));
    sinks.shutdown(Duration::from_secs(5)).await;

    let status = sinks.status();
    assert_eq!(status.len(), 2);
    assert_eq!(status[0].name, "a");
    assert_eq!(signal(&status[0].signals, "traces").sent, 1);
    assert_eq!(status[1].name, "dev-tee");
    assert_eq!(signal(&status[1].signals, "traces").sent, 2);
    assert_eq!(signal(&status[1].signals, "logs").sent, 2);

    let tee_traces: Vec<ExportTraceServiceRequest> = tee_srv
        .seen()
        .iter()
        .filter(|c| c.path == "/v1/traces")
        .map(|c| ExportTraceServiceRequest::decode(gunzip(&c.body).as_slice()).unwrap())
        .collect();
    let gateways: Vec<String> = tee_traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|rs| {
            rs.resource
                .as_ref()?
                .attributes
                .iter()
                .find_map(|a| (a.key == sc::GATEWAY_NAME).then(|| format!("{:?}", a.value)))
        })
        .collect();
    assert_eq!(gateways.len(), 2, "{gateways:?}");
    assert!(gateways[0].contains("\"a\"") && gateways[1].contains("\"b\""));
    assert!(tee_srv.seen().iter().any(|c| c.path == "/v1/metrics"));
    assert!(gw_srv.seen().iter().all(|c| c.path == "/v1/traces"));
}

// ---- semantic-conventions hygiene, decoded from the wire -------------------------

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// What one gateway's receiver got: span, log and gen_ai metric point
/// attributes, log event names, scope schema URLs.
#[derive(Default)]
struct Wire {
    spans: Vec<Vec<KeyValue>>,
    logs: Vec<(String, Vec<KeyValue>)>,
    gen_ai_points: Vec<Vec<KeyValue>>,
    schema_urls: Vec<String>,
}

fn decode_wire(seen: &[Captured]) -> Wire {
    let mut w = Wire::default();
    for c in seen {
        let body = gunzip(&c.body);
        match c.path.as_str() {
            "/v1/traces" => {
                let r = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                for ss in r.resource_spans.iter().flat_map(|rs| &rs.scope_spans) {
                    w.schema_urls.push(ss.schema_url.clone());
                    w.spans
                        .extend(ss.spans.iter().map(|s| s.attributes.clone()));
                }
            }
            "/v1/logs" => {
                let r = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
                for sl in r.resource_logs.iter().flat_map(|rl| &rl.scope_logs) {
                    w.schema_urls.push(sl.schema_url.clone());
                    w.logs.extend(
                        sl.log_records
                            .iter()
                            .map(|l| (l.event_name.clone(), l.attributes.clone())),
                    );
                }
            }
            "/v1/metrics" => {
                let r = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
                for sm in r.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics) {
                    w.schema_urls.push(sm.schema_url.clone());
                    for m in sm.metrics.iter().filter(|m| m.name.starts_with("gen_ai.")) {
                        if let Some(Data::Histogram(h)) = &m.data {
                            w.gen_ai_points
                                .extend(h.data_points.iter().map(|p| p.attributes.clone()));
                        }
                    }
                }
            }
            other => panic!("unexpected path {other}"),
        }
    }
    w
}

#[tokio::test]
async fn conventions_hygiene_and_the_gen_ai_system_switch() {
    let off_srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let on_srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let yaml = format!(
        "gateways:\n  - name: off\n    otlp:\n      endpoint: {}\n  - name: on\n    otlp:\n      \
         endpoint: {}\n      emitGenAiSystem: true\n",
        off_srv.url(),
        on_srv.url()
    );
    let cfg = egret::config::Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let (sinks, _) = OtlpSinks::from_config(&cfg, None, &no_env, fast_opts()).unwrap();
    let mut flow = Record::new(sc::KIND_FLOW);
    flow.set(sc::AGENT_NAME, "coder");
    flow.set(sc::SERVER_ADDRESS, "10.0.0.9");
    flow.set(sc::SERVER_PORT, 443i64);
    for gw in ["off", "on"] {
        sinks.offer(gw, &txn(200));
        sinks.offer(gw, &flow);
    }
    sinks.shutdown(Duration::from_secs(5)).await;

    for (srv, system) in [(&off_srv, false), (&on_srv, true)] {
        let w = decode_wire(&srv.seen());
        assert_eq!(w.spans.len(), 1);
        assert_eq!(w.logs.len(), 2);
        assert!(!w.gen_ai_points.is_empty());
        let txn_log = &w
            .logs
            .iter()
            .find(|(e, _)| e == sc::EVENT_TRANSACTION)
            .expect("the transaction's log record")
            .1;
        // (a) gen_ai.system only when the gateway asks for it.
        for attrs in [&w.spans[0], txn_log] {
            assert_eq!(
                str_attr(attrs, sc::GEN_AI_SYSTEM).is_some(),
                system,
                "gen_ai.system with emitGenAiSystem={system}"
            );
            assert_eq!(str_attr(attrs, sc::GEN_AI_PROVIDER_NAME), Some("openai"));
        }
        // (b) the event name is the LogRecord field, never an attribute.
        let mut events: Vec<&str> = w.logs.iter().map(|(e, _)| e.as_str()).collect();
        events.sort_unstable();
        assert_eq!(events, [sc::EVENT_FLOW, sc::EVENT_TRANSACTION]);
        assert!(w.logs.iter().all(|(_, a)| attr(a, "event.name").is_none()));
        // (c) server.port beside server.address: spans, logs, gen_ai points.
        let all = w
            .spans
            .iter()
            .chain(w.logs.iter().map(|(_, a)| a))
            .chain(&w.gen_ai_points);
        for attrs in all {
            assert!(str_attr(attrs, sc::SERVER_ADDRESS).is_some());
            assert_eq!(
                attr(attrs, sc::SERVER_PORT),
                Some(&any_value::Value::IntValue(443))
            );
        }
        // (d) gen_ai.agent.* beside the seed contract's agent.*.
        for attrs in w.spans.iter().chain(w.logs.iter().map(|(_, a)| a)) {
            assert_eq!(str_attr(attrs, sc::AGENT_NAME), Some("coder"));
            assert_eq!(str_attr(attrs, sc::GEN_AI_AGENT_NAME), Some("coder"));
        }
        assert_eq!(str_attr(txn_log, sc::GEN_AI_AGENT_ID), Some("uid-42"));
        assert_eq!(str_attr(&w.spans[0], sc::GEN_AI_AGENT_ID), Some("uid-42"));
        assert!(
            w.schema_urls.iter().all(|u| u == SCHEMA_URL),
            "{:?}",
            w.schema_urls
        );
    }
}

// ---- independent receiver (PyPI opentelemetry-proto) -------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The venv's python when it can import `opentelemetry.proto`.
fn receiver_python() -> Result<PathBuf, String> {
    let venv = std::env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let py = venv.join("bin/python");
    if !py.exists() {
        return Err(format!("no python at {}", py.display()));
    }
    let ok = Command::new(&py)
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2, grpc",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!(
            "{} cannot import opentelemetry.proto and grpc (pip install opentelemetry-proto grpcio)",
            py.display()
        ));
    }
    Ok(py)
}

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(py: &Path) -> Receiver {
        Receiver::start_with(py, &[])
    }

    fn start_with(py: &Path, extra: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("otlp.jsonl");
        let mut child = Command::new(py)
            .arg(repo_root().join("bpf-tests/clients/otlp_receiver.py"))
            .args(extra)
            .args(["--port", "0", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start otlp_receiver.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver did not start: {line:?}"));
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn independent_receiver_decodes_traces_logs_and_metrics() {
    let py = match receiver_python() {
        Ok(py) => py,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI: the OTLP receiver venv is required: {why}")
        }
        Err(why) => {
            eprintln!("skipping independent_receiver_decodes_traces_logs_and_metrics: {why}");
            return;
        }
    };
    let rx = Receiver::start(&py);
    let cfg = OtlpConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", rx.port)),
        headers: [("x-api-key".to_owned(), "${EGRET_TEST_KEY}".to_owned())].into(),
        conventions: vec![Convention::OpenInference, Convention::Mlflow],
        ..OtlpConfig::default()
    };
    let env = |k: &str| match k {
        "EGRET_TEST_KEY" => Some("s3cret".to_owned()),
        "OTEL_SERVICE_NAME" => Some("egret-test".to_owned()),
        "K8S_NODE_NAME" => Some("node-7".to_owned()),
        _ => None,
    };
    let settings = settings::resolve("gw", &cfg, &env).unwrap().unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();

    let mut ok = txn(200);
    ok.set(sc::TRACE_ID, TRACE);
    ok.set(sc::PARENT_SPAN_ID, PARENT);
    let failed = txn(503);
    let mut flow = Record::new(sc::KIND_FLOW);
    flow.set(sc::INVOCATION_ID, "inv-42");
    flow.set(sc::TRANSACTION_ID, failed.id());
    flow.set(sc::L4_BYTES_SANDBOX_TX, 1000i64);
    flow.set(sc::L4_BYTES_SANDBOX_RX, 5000i64);
    let lone_flow = Record::new(sc::KIND_FLOW);
    for r in [&ok, &failed, &flow, &lone_flow] {
        exp.offer(r);
    }
    exp.shutdown(Duration::from_secs(10)).await;

    let st = exp.status();
    assert!(
        st.signals
            .iter()
            .all(|s| s.state == LinkState::Connected && s.dropped == 0),
        "{st:?}"
    );
    let lines = rx.lines();
    let by = |sig: &str| -> Vec<&Value> { lines.iter().filter(|l| l["signal"] == sig).collect() };

    // Requests: protobuf, gzip, configured headers, MLflow's experiment header.
    let reqs = by("request");
    assert!(reqs.len() >= 3, "{reqs:?}");
    for r in &reqs {
        assert_eq!(r["status"], 200);
        assert_eq!(r["content_type"], "application/x-protobuf");
        assert_eq!(r["content_encoding"], "gzip");
        assert_eq!(r["headers"]["x-api-key"], "s3cret");
        assert_eq!(r["headers"]["x-mlflow-experiment-id"], "0");
    }

    // Traces: two transactions + the flow with a transaction id.
    let spans = by("traces");
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let s = spans.iter().find(|s| s["trace_id"] == TRACE).unwrap();
    assert_eq!(s["name"], "chat gpt-4o");
    assert_eq!(s["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(s["parent_span_id"], PARENT);
    assert_eq!(s["span_id"].as_str().unwrap().len(), 16);
    assert_eq!(s["start_time_unix_nano"], 1_700_000_000_000_000_000u64);
    assert_eq!(s["end_time_unix_nano"], 1_700_000_000_250_000_000u64);
    assert_eq!(s["status"]["code"], 0);
    let a = &s["attributes"];
    assert_eq!(a[sc::GEN_AI_REQUEST_MODEL], "gpt-4o");
    assert_eq!(a[sc::GEN_AI_USAGE_OUTPUT_TOKENS], 300);
    assert_eq!(
        a[sc::GEN_AI_RESPONSE_FINISH_REASONS],
        serde_json::json!(["stop"])
    );
    assert_eq!(a[sc::INVOCATION_ID], "inv-42");
    assert!(a.get(sc::REQUEST_BODY).is_none() && a.get(sc::TRACE_ID).is_none());
    // Conventions hygiene: no deprecated `gen_ai.system` by default, the
    // GenAI agent names beside `agent.*`, `server.port` with `server.address`.
    assert!(a.get(sc::GEN_AI_SYSTEM).is_none(), "{a}");
    assert_eq!(a[sc::GEN_AI_PROVIDER_NAME], "openai");
    assert_eq!(a[sc::AGENT_NAME], "coder");
    assert_eq!(a[sc::GEN_AI_AGENT_NAME], "coder");
    assert_eq!(a[sc::AGENT_UID], "uid-42");
    assert_eq!(a[sc::GEN_AI_AGENT_ID], "uid-42");
    assert_eq!(a[sc::SERVER_ADDRESS], "api.openai.com");
    assert_eq!(a[sc::SERVER_PORT], 443);
    assert_eq!(a[sc::OPENINFERENCE_SPAN_KIND], "LLM");
    assert_eq!(a[sc::LLM_TOKEN_COUNT_TOTAL], 320);
    assert_eq!(a[sc::SESSION_ID], "inv-42");
    assert_eq!(a[sc::INPUT_MIME_TYPE], "application/json");
    assert_eq!(a[sc::MLFLOW_SPAN_TYPE], "\"LLM\"");
    let inputs: Value = serde_json::from_str(a[sc::MLFLOW_SPAN_INPUTS].as_str().unwrap()).unwrap();
    assert_eq!(inputs["model"], "gpt-4o");
    assert_eq!(s["resource"][sc::SERVICE_NAME], "egret-test");
    assert_eq!(s["resource"][sc::K8S_NODE_NAME], "node-7");
    assert_eq!(s["resource"][sc::GATEWAY_NAME], "gw");
    assert_eq!(s["resource"][sc::OPENINFERENCE_PROJECT_NAME], "gw");
    assert!(s["resource"][sc::SERVICE_VERSION].is_string());
    assert_eq!(s["scope"]["name"], "egret");
    assert_eq!(s["scope"]["schema_url"], SCHEMA_URL);

    let err_span = spans
        .iter()
        .find(|s| s["attributes"][sc::RECORD_ID] == failed.id())
        .unwrap();
    assert_eq!(err_span["status"]["code"], 2, "STATUS_CODE_ERROR");
    assert_eq!(err_span["parent_span_id"], "");
    let flow_span = spans
        .iter()
        .find(|s| s["attributes"][sc::RECORD_ID] == flow.id())
        .unwrap();
    assert_eq!(flow_span["trace_id"], err_span["trace_id"]);
    assert_eq!(flow_span["parent_span_id"], err_span["span_id"]);

    // Logs: one per transaction and per flow, joined to the spans.
    let logs = by("logs");
    assert_eq!(logs.len(), 4, "{logs:#?}");
    let ok_log = logs
        .iter()
        .find(|l| l["attributes"][sc::RECORD_ID] == ok.id())
        .unwrap();
    assert_eq!(ok_log["severity_number"], 9);
    assert_eq!(ok_log["severity_text"], "INFO");
    // The event name is the LogRecord field; the deprecated `event.name`
    // attribute is not sent.
    assert_eq!(ok_log["event_name"], "egret.transaction");
    assert!(ok_log["attributes"].get("event.name").is_none(), "{ok_log}");
    assert!(ok_log["attributes"].get(sc::GEN_AI_SYSTEM).is_none());
    assert_eq!(ok_log["attributes"][sc::GEN_AI_AGENT_NAME], "coder");
    assert_eq!(ok_log["attributes"][sc::GEN_AI_AGENT_ID], "uid-42");
    assert_eq!(ok_log["scope"]["schema_url"], SCHEMA_URL);
    assert_eq!(ok_log["trace_id"], TRACE);
    assert_eq!(ok_log["span_id"], s["span_id"]);
    assert_eq!(
        ok_log["body"]["request"],
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#
    );
    assert!(ok_log["body"]["response"]
        .as_str()
        .unwrap()
        .contains("hello"));
    let err_log = logs
        .iter()
        .find(|l| l["attributes"][sc::RECORD_ID] == failed.id())
        .unwrap();
    assert_eq!(err_log["severity_number"], 17);
    let lone = logs
        .iter()
        .find(|l| l["attributes"][sc::RECORD_ID] == lone_flow.id())
        .unwrap();
    assert_eq!(lone["event_name"], "egret.flow");
    assert!(lone["attributes"].get("event.name").is_none(), "{lone}");
    assert_eq!(lone["severity_number"], 9);
    assert_eq!(lone["trace_id"], "");

    // Metrics: cumulative histograms with the semconv buckets, counters.
    let points = by("metrics");
    let tokens: Vec<&&Value> = points
        .iter()
        .filter(|p| p["name"] == sc::METRIC_GEN_AI_TOKEN_USAGE)
        .collect();
    assert_eq!(tokens.len(), 2, "{points:#?}");
    for p in &tokens {
        assert_eq!(p["type"], "histogram");
        assert_eq!(p["unit"], "{token}");
        assert_eq!(p["temporality"], 2, "cumulative");
        assert_eq!(
            p["explicit_bounds"],
            serde_json::json!([
                1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
                4194304.0, 16777216.0, 67108864.0
            ])
        );
        assert_eq!(p["count"], 2);
        assert_eq!(p["attributes"][sc::GEN_AI_PROVIDER_NAME], "openai");
        assert_eq!(p["attributes"][sc::SERVER_ADDRESS], "api.openai.com");
        assert_eq!(p["attributes"][sc::SERVER_PORT], 443, "{p}");
    }
    let dur: Vec<&&Value> = points
        .iter()
        .filter(|p| p["name"] == sc::METRIC_GEN_AI_OPERATION_DURATION)
        .collect();
    assert_eq!(dur.len(), 2, "ok and 503 series");
    assert!(dur.iter().all(|p| p["unit"] == "s"));
    assert!(dur.iter().all(|p| p["attributes"][sc::SERVER_PORT] == 443
        && p["attributes"][sc::SERVER_ADDRESS] == "api.openai.com"));
    assert!(points
        .iter()
        .all(|p| p["scope"]["schema_url"] == SCHEMA_URL));
    let bytes: Vec<&&Value> = points
        .iter()
        .filter(|p| p["name"] == sc::METRIC_L4_BYTES)
        .collect();
    assert!(bytes
        .iter()
        .any(|p| p["attributes"][sc::NETWORK_IO_DIRECTION] == "receive" && p["value"] == 5000));
    let flows = points
        .iter()
        .find(|p| p["name"] == sc::METRIC_FLOWS)
        .unwrap();
    assert_eq!(flows["value"], 2);
    let dropped: Vec<&&Value> = points
        .iter()
        .filter(|p| p["name"] == sc::METRIC_OTLP_DROPPED)
        .collect();
    assert_eq!(dropped.len(), 3);
    assert!(dropped
        .iter()
        .all(|p| p["value"] == 0 && p["monotonic"] == true));
}

fn venv_or_skip(test: &str) -> Option<PathBuf> {
    match receiver_python() {
        Ok(py) => Some(py),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI: the OTLP receiver venv is required: {why}")
        }
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// The records every protocol run sends (the same objects: same ids).
fn protocol_records() -> Vec<Record> {
    let mut ok = txn(200);
    ok.set(sc::TRACE_ID, TRACE);
    ok.set(sc::PARENT_SPAN_ID, PARENT);
    ok.set(sc::SPAN_ID, "b7ad6b7169203331");
    let failed = txn(503);
    let mut flow = Record::new(sc::KIND_FLOW);
    flow.set(sc::INVOCATION_ID, "inv-42");
    flow.set(sc::L4_BYTES_SANDBOX_TX, 1000i64);
    flow.set(sc::L4_BYTES_SANDBOX_RX, 5000i64);
    flow.set(sc::START_TIME, 1_700_000_000_000_000_000i64);
    flow.set(sc::END_TIME, 1_700_000_001_000_000_000i64);
    vec![ok, failed, flow]
}

/// What the receiver decoded, without what differs between runs (export
/// times), sorted; plus the request lines.
fn normalized(lines: &[Value]) -> (Vec<String>, Vec<Value>) {
    let mut items = Vec::new();
    let mut reqs = Vec::new();
    for l in lines {
        let mut l = l.clone();
        match l["signal"].as_str() {
            Some("request") => reqs.push(l),
            Some("metrics") => {
                let o = l.as_object_mut().unwrap();
                o.remove("start_time_unix_nano");
                o.remove("time_unix_nano");
                items.push(l.to_string());
            }
            Some("logs") => {
                l.as_object_mut().unwrap().remove("observed_time_unix_nano");
                items.push(l.to_string());
            }
            _ => items.push(l.to_string()),
        }
    }
    items.sort();
    (items, reqs)
}

/// Runs the exporter with `protocol` against the independent receiver
/// (`--grpc` for gRPC) and returns what it decoded.
async fn through_receiver(
    py: &Path,
    records: &[Record],
    protocol: Protocol,
    compression: Compression,
) -> Vec<Value> {
    let grpc = protocol == Protocol::Grpc;
    let rx = Receiver::start_with(py, if grpc { &["--grpc"] } else { &[] });
    let cfg = OtlpConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", rx.port)),
        headers: [("x-api-key".to_owned(), "s3cret".to_owned())].into(),
        protocol: Some(protocol),
        compression: Some(compression),
        ..OtlpConfig::default()
    };
    let settings = resolve("gw", &cfg, &no_env).unwrap().unwrap();
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    for r in records {
        exp.offer(r);
    }
    exp.shutdown(Duration::from_secs(10)).await;
    let st = exp.status();
    assert!(
        st.signals
            .iter()
            .all(|s| s.state == LinkState::Connected && s.dropped == 0 && s.sent > 0),
        "{protocol:?}: {st:?}"
    );
    rx.lines()
}

/// The same spans, log records and metric points reach a receiver over
/// http/protobuf, http/json (OTLP/JSON, parsed strictly by protobuf's
/// json_format after the hex ids) and grpc (grpcio's server), compressed
/// or not.
#[tokio::test]
async fn same_records_over_every_protocol() {
    let Some(py) = venv_or_skip("same_records_over_every_protocol") else {
        return;
    };
    let records = protocol_records();
    let (base, reqs) = normalized(
        &through_receiver(&py, &records, Protocol::HttpProtobuf, Compression::Gzip).await,
    );
    assert!(reqs
        .iter()
        .all(|r| r["content_type"] == "application/x-protobuf"));
    // 2 spans, 3 logs, metric points: the baseline is not empty.
    assert_eq!(
        base.iter()
            .filter(|l| l.contains(r#""signal":"traces""#))
            .count(),
        2
    );
    assert_eq!(
        base.iter()
            .filter(|l| l.contains(r#""signal":"logs""#))
            .count(),
        3
    );
    assert!(base
        .iter()
        .any(|l| l.contains(sc::METRIC_GEN_AI_TOKEN_USAGE)));
    assert!(base
        .iter()
        .any(|l| l.contains(TRACE) && l.contains("b7ad6b7169203331")));
    for (protocol, compression, ctype, encoding) in [
        (
            Protocol::HttpJson,
            Compression::Gzip,
            "application/json",
            Some("gzip"),
        ),
        (
            Protocol::HttpJson,
            Compression::None,
            "application/json",
            None,
        ),
        (
            Protocol::HttpProtobuf,
            Compression::None,
            "application/x-protobuf",
            None,
        ),
        (Protocol::Grpc, Compression::Gzip, "application/grpc", None),
        (Protocol::Grpc, Compression::None, "application/grpc", None),
    ] {
        let (items, reqs) =
            normalized(&through_receiver(&py, &records, protocol, compression).await);
        assert!(reqs.len() >= 3, "{protocol:?}: {reqs:?}");
        for r in &reqs {
            assert_eq!(r["status"], 200, "{protocol:?}: {r}");
            assert_eq!(r["content_type"], ctype, "{protocol:?}: {r}");
            assert_eq!(
                r["content_encoding"].as_str(),
                encoding,
                "{protocol:?}: {r}"
            );
            assert_eq!(r["headers"]["x-api-key"], "s3cret", "{protocol:?}: {r}");
        }
        if protocol == Protocol::Grpc {
            let paths: Vec<&str> = reqs.iter().filter_map(|r| r["path"].as_str()).collect();
            assert!(paths.contains(&"/v1/traces") && paths.contains(&"/v1/metrics"));
        }
        let differ: Vec<_> = items.iter().filter(|i| !base.contains(i)).collect();
        assert!(
            items == base,
            "{protocol:?}/{compression:?} differs from http/protobuf: {} vs {} items; not in the baseline: {differ:?}",
            items.len(),
            base.len()
        );
    }
}

/// gRPC errors from a real gRPC server: UNAVAILABLE is retried (then
/// accepted), INVALID_ARGUMENT is not (the batch is dropped and counted).
#[tokio::test]
async fn grpc_error_statuses_from_grpcio() {
    let Some(py) = venv_or_skip("grpc_error_statuses_from_grpcio") else {
        return;
    };
    for (code, accepted) in [("UNAVAILABLE", true), ("INVALID_ARGUMENT", false)] {
        let rx = Receiver::start_with(
            &py,
            &["--grpc", "--fail-first", "1", "--fail-grpc-code", code],
        );
        let cfg = OtlpConfig {
            protocol: Some(Protocol::Grpc),
            ..traces_only(&format!("http://127.0.0.1:{}", rx.port))
        };
        let exp = OtlpExporter::start(
            resolve("gw", &cfg, &no_env).unwrap().unwrap(),
            fast_opts(),
            client(),
        )
        .unwrap();
        exp.offer(&txn(200));
        wait_for("the batch to settle", || {
            let st = exp.status();
            let t = signal(&st.signals, "traces");
            t.sent + t.dropped == 1
        })
        .await;
        let st = exp.status();
        let t = signal(&st.signals, "traces");
        let err = t.last_error.clone().unwrap_or_default();
        assert!(err.contains(code), "{code}: {t:?}");
        if accepted {
            assert_eq!((t.sent, t.dropped, t.retries), (1, 0, 1), "{t:?}");
            assert_eq!(t.state, LinkState::Connected);
        } else {
            assert_eq!((t.sent, t.dropped, t.retries), (0, 1, 0), "{t:?}");
            assert_eq!(t.state, LinkState::Error);
        }
        exp.shutdown(Duration::from_secs(2)).await;
        let statuses: Vec<Value> = rx
            .lines()
            .into_iter()
            .filter(|l| l["signal"] == "request")
            .map(|l| l["status"].clone())
            .collect();
        let want = if accepted {
            vec![Value::from(code), Value::from(200)]
        } else {
            vec![Value::from(code)]
        };
        assert_eq!(statuses, want);
    }
}

// ---- gRPC statuses and TLS against an in-process server ----------------------------

/// What the in-process server answers to call `i`: an HTTP status, and for
/// gRPC calls a `grpc-status` with optional `grpc-status-details-bin`.
#[derive(Clone)]
struct Answer {
    grpc_status: u32,
    details: Option<String>,
}

/// A loopback server speaking HTTP/1.1 and HTTP/2 (h2c, or TLS with ALPN
/// when given a config): OTLP/HTTP calls get 200, gRPC calls (by
/// `content-type`) the trailers of `reply(i)`.
struct H2Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(http::Version, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        reply: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> H2Server {
        use http_body_util::{combinators::BoxBody, StreamBody};
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let seen2 = seen.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let reply = reply.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let reply = reply.clone();
                        async move {
                            let grpc = req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                            let version = req.version();
                            let path = req.uri().path().to_owned();
                            let _ = req.into_body().collect().await;
                            let i = {
                                let mut s = seen.lock().unwrap();
                                s.push((version, path));
                                s.len() - 1
                            };
                            let body: BoxBody<Bytes, Infallible> = if grpc {
                                let a = reply(i);
                                let mut trailers = HeaderMap::new();
                                trailers.insert(
                                    "grpc-status",
                                    a.grpc_status.to_string().parse().unwrap(),
                                );
                                if let Some(d) = a.details {
                                    trailers.insert("grpc-status-details-bin", d.parse().unwrap());
                                }
                                let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![];
                                if a.grpc_status == 0 {
                                    // An empty Export*ServiceResponse.
                                    frames.push(Ok(Frame::data(Bytes::from_static(&[
                                        0, 0, 0, 0, 0,
                                    ]))));
                                }
                                frames.push(Ok(Frame::trailers(trailers)));
                                StreamBody::new(futures_util::stream::iter(frames)).boxed()
                            } else {
                                Full::new(Bytes::new()).boxed()
                            };
                            let mut resp = Response::builder().status(StatusCode::OK);
                            if grpc {
                                resp = resp.header("content-type", "application/grpc");
                            }
                            Ok::<_, Infallible>(resp.body(body).unwrap())
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match acceptor {
                        Some(acc) => {
                            if let Ok(tls) = acc.accept(sock).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(sock), svc).await;
                        }
                    }
                });
            }
        });
        H2Server { addr, seen, task }
    }

    fn seen(&self) -> Vec<(http::Version, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn grpc_traces(endpoint: String) -> OtlpConfig {
    OtlpConfig {
        protocol: Some(Protocol::Grpc),
        ..traces_only(&endpoint)
    }
}

/// `google.rpc.Status{code, details: [RetryInfo{retry_delay: secs}]}`,
/// base64 without padding, as gRPC servers send it.
fn retry_info_details(code: i32, secs: i64) -> String {
    use base64::Engine as _;
    fn field(tag: u32, wire: u8, out: &mut Vec<u8>) {
        prost::encoding::encode_key(
            tag,
            match wire {
                0 => prost::encoding::WireType::Varint,
                _ => prost::encoding::WireType::LengthDelimited,
            },
            out,
        );
    }
    let mut duration = Vec::new();
    field(1, 0, &mut duration);
    prost::encoding::encode_varint(secs as u64, &mut duration);
    let mut retry_info = Vec::new();
    field(1, 2, &mut retry_info);
    prost::encoding::encode_varint(duration.len() as u64, &mut retry_info);
    retry_info.extend(&duration);
    let type_url = b"type.googleapis.com/google.rpc.RetryInfo";
    let mut any = Vec::new();
    field(1, 2, &mut any);
    prost::encoding::encode_varint(type_url.len() as u64, &mut any);
    any.extend(type_url);
    field(2, 2, &mut any);
    prost::encoding::encode_varint(retry_info.len() as u64, &mut any);
    any.extend(&retry_info);
    let mut status = Vec::new();
    field(1, 0, &mut status);
    prost::encoding::encode_varint(code as u64, &mut status);
    field(3, 2, &mut status);
    prost::encoding::encode_varint(any.len() as u64, &mut status);
    status.extend(&any);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(status)
}

/// RESOURCE_EXHAUSTED with a RetryInfo delay is retried after that delay
/// (like Retry-After), over HTTP/2 with prior knowledge (h2c).
#[tokio::test]
async fn grpc_resource_exhausted_honours_retry_info() {
    let srv = H2Server::start(None, |i| Answer {
        grpc_status: if i == 0 { 8 } else { 0 },
        details: (i == 0).then(|| retry_info_details(8, 1)),
    })
    .await;
    let cfg = grpc_traces(format!("http://{}", srv.addr));
    let exp = OtlpExporter::start(
        resolve("gw", &cfg, &no_env).unwrap().unwrap(),
        fast_opts(),
        client(),
    )
    .unwrap();
    let t0 = Instant::now();
    exp.offer(&txn(200));
    wait_for("the span to be accepted", || {
        signal(&exp.status().signals, "traces").sent == 1
    })
    .await;
    // The 10 ms backoff would retry at once: ~1 s is the RetryInfo delay.
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    let st = exp.status();
    let t = signal(&st.signals, "traces");
    assert_eq!(
        (t.retries, t.dropped, t.state),
        (1, 0, LinkState::Connected)
    );
    assert!(
        t.last_error
            .as_deref()
            .unwrap_or("")
            .contains("RESOURCE_EXHAUSTED"),
        "{t:?}"
    );
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(v, p)| *v == http::Version::HTTP_2
        && p == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"));
    exp.shutdown(Duration::from_secs(2)).await;
}

/// RESOURCE_EXHAUSTED without RetryInfo, and UNAUTHENTICATED, are not
/// retried: the batch is dropped and counted at once.
#[tokio::test]
async fn grpc_non_retryable_statuses_drop_the_batch() {
    for code in [8u32, 16] {
        let srv = H2Server::start(None, move |_| Answer {
            grpc_status: code,
            details: None,
        })
        .await;
        let cfg = grpc_traces(format!("http://{}", srv.addr));
        let exp = OtlpExporter::start(
            resolve("gw", &cfg, &no_env).unwrap().unwrap(),
            fast_opts(),
            client(),
        )
        .unwrap();
        exp.offer(&txn(200));
        wait_for("the batch to be dropped", || {
            signal(&exp.status().signals, "traces").dropped == 1
        })
        .await;
        let st = exp.status();
        let t = signal(&st.signals, "traces");
        assert_eq!(
            (t.retries, t.sent, t.state),
            (0, 0, LinkState::Error),
            "{t:?}"
        );
        assert!(t
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains(&code.to_string()));
        assert_eq!(srv.seen().len(), 1);
        exp.shutdown(Duration::from_secs(1)).await;
    }
}

/// `OTEL_BSP_EXPORT_TIMEOUT` bounds a batch's whole export: when the
/// server asks for a 30 s wait (UNAVAILABLE with RetryInfo) and the budget
/// is 2 s, the batch is given up and counted at once instead of held.
#[tokio::test]
async fn export_timeout_bounds_retries() {
    let srv = H2Server::start(None, |_| Answer {
        grpc_status: 14,
        details: Some(retry_info_details(14, 30)),
    })
    .await;
    let env = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("http://{}", srv.addr)),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
        "OTEL_BSP_EXPORT_TIMEOUT" => Some("2000".to_owned()),
        "OTEL_LOGS_EXPORTER" | "OTEL_METRICS_EXPORTER" => Some("none".to_owned()),
        _ => None,
    };
    let settings = resolve("gw", &OtlpConfig::default(), &env)
        .unwrap()
        .unwrap();
    assert!(settings.logs.is_none() && settings.metrics.is_none());
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    let t0 = Instant::now();
    exp.offer(&txn(200));
    wait_for("the batch to be dropped", || {
        signal(&exp.status().signals, "traces").dropped == 1
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(srv.seen().len(), 1, "no retry past the budget");
    exp.shutdown(Duration::from_secs(1)).await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new(require_client_cert: bool) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "egret test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let mut srv_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        srv_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        srv_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let srv = srv_params.signed_by(&srv_key, &ca, &ca_key).unwrap();
        let cli_key = KeyPair::generate().unwrap();
        let mut cli_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        cli_params
            .distinguished_name
            .push(DnType::CommonName, "egret exporter");
        cli_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cli = cli_params.signed_by(&cli_key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), cli.pem()).unwrap();
        std::fs::write(dir.path().join("client-key.pem"), cli_key.serialize_pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut server = builder
            .with_single_cert(
                vec![CertificateDer::from(srv.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Pki {
            dir,
            server: Arc::new(server),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

async fn export_once(settings: egret::sink::otlp::ExportSettings) -> SignalStatus {
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    exp.offer(&txn(200));
    wait_for("the batch to settle", || {
        let st = exp.status();
        let t = signal(&st.signals, "traces");
        t.sent + t.dropped == 1
    })
    .await;
    let st = exp.status();
    exp.shutdown(Duration::from_secs(1)).await;
    signal(&st.signals, "traces").clone()
}

/// `OTEL_EXPORTER_OTLP_CERTIFICATE` makes egret trust a private CA, over
/// OTLP/HTTP and OTLP/gRPC (TLS with ALPN h2); without it the server is
/// not trusted (system roots) and the batch is dropped.
#[tokio::test]
async fn custom_ca_from_the_environment() {
    let pki = Pki::new(false);
    let srv = H2Server::start(Some(pki.server.clone()), |_| Answer {
        grpc_status: 0,
        details: None,
    })
    .await;
    let ca = pki.path("ca.pem");
    for protocol in ["http/protobuf", "grpc"] {
        for with_ca in [true, false] {
            let env = |k: &str| match k {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if protocol == "grpc" => {
                    Some(format!("https://{}", srv.addr))
                }
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => {
                    Some(format!("https://{}/v1/traces", srv.addr))
                }
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => Some(protocol.to_owned()),
                "OTEL_EXPORTER_OTLP_CERTIFICATE" if with_ca => Some(ca.clone()),
                _ => None,
            };
            let cfg = OtlpConfig {
                signals: SignalsConfig {
                    traces: true,
                    logs: false,
                    metrics: false,
                },
                ..OtlpConfig::default()
            };
            let t = export_once(resolve("gw", &cfg, &env).unwrap().unwrap()).await;
            if with_ca {
                assert_eq!(
                    (t.sent, t.state),
                    (1, LinkState::Connected),
                    "{protocol}: {t:?}"
                );
            } else {
                assert_eq!(
                    (t.dropped, t.state),
                    (1, LinkState::Disconnected),
                    "{protocol}: {t:?}"
                );
                let err = t.last_error.unwrap_or_default();
                assert!(
                    err.contains("certificate") || err.contains("UnknownIssuer"),
                    "{err}"
                );
            }
        }
    }
    let seen = srv.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, http::Version::HTTP_11);
    assert_eq!(seen[1].0, http::Version::HTTP_2);
}

/// mTLS: a server that requires a client certificate accepts egret's with
/// `clientCertificate`/`clientKey` (config keys, and the environment's
/// `_CLIENT_CERTIFICATE`/`_CLIENT_KEY`), and refuses it without.
#[tokio::test]
async fn mtls_with_a_client_certificate() {
    let pki = Pki::new(true);
    let srv = H2Server::start(Some(pki.server.clone()), |_| Answer {
        grpc_status: 0,
        details: None,
    })
    .await;
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        let base = OtlpConfig {
            certificate: Some(pki.path("ca.pem")),
            protocol: Some(protocol),
            ..traces_only(&format!("https://{}", srv.addr))
        };
        let with_cert = OtlpConfig {
            client_certificate: Some(pki.path("client.pem")),
            client_key: Some(pki.path("client-key.pem")),
            ..base.clone()
        };
        let t = export_once(resolve("gw", &with_cert, &no_env).unwrap().unwrap()).await;
        assert_eq!(
            (t.sent, t.state),
            (1, LinkState::Connected),
            "{protocol:?}: {t:?}"
        );
        let t = export_once(resolve("gw", &base, &no_env).unwrap().unwrap()).await;
        assert_eq!(
            t.dropped, 1,
            "{protocol:?} without a client certificate: {t:?}"
        );
    }
    // The environment's pair, with an environment endpoint.
    let env = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("https://{}", srv.addr)),
        "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some(pki.path("ca.pem")),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" => Some(pki.path("client.pem")),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY" => Some(pki.path("client-key.pem")),
        "OTEL_LOGS_EXPORTER" | "OTEL_METRICS_EXPORTER" => Some("none".to_owned()),
        _ => None,
    };
    let t = export_once(
        resolve("gw", &OtlpConfig::default(), &env)
            .unwrap()
            .unwrap(),
    )
    .await;
    assert_eq!((t.sent, t.state), (1, LinkState::Connected), "{t:?}");
    // A missing key file is a startup error naming the key and the file.
    let bad = OtlpConfig {
        certificate: Some(pki.path("ca.pem")),
        client_certificate: Some(pki.path("client.pem")),
        client_key: Some(pki.path("nope.pem")),
        ..traces_only(&format!("https://{}", srv.addr))
    };
    let err = OtlpExporter::start(
        resolve("gw", &bad, &no_env).unwrap().unwrap(),
        fast_opts(),
        client(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("otlp.clientKey") && err.contains("nope.pem"),
        "{err}"
    );
}

// ---- status --------------------------------------------------------------------------

/// `/status` lists every exporter, with signals the environment switched
/// off, an overall state, last success and last error per signal.
#[tokio::test]
async fn status_shows_every_exporter_and_switched_off_signals() {
    let ok = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let bad = TestServer::start(|_| (StatusCode::UNAUTHORIZED, vec![])).await;
    let yaml = format!(
        "gateways:\n  - name: a\n    otlp:\n      endpoint: {}\n  - name: b\n    otlp:\n      endpoint: {}\n      protocol: http/json\n  - name: c\n",
        ok.url(),
        bad.url()
    );
    let cfg = egret::config::Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let env = |k: &str| (k == "OTEL_LOGS_EXPORTER").then(|| "none".to_owned());
    let (sinks, _) = OtlpSinks::from_config(&cfg, None, &env, fast_opts()).unwrap();
    let st = sinks.status();
    assert_eq!(st.len(), 2, "gateway c exports nothing: {st:?}");
    assert!(st.iter().all(|e| e.state == LinkState::Disconnected));
    assert!(st
        .iter()
        .all(|e| e.switched_off == vec![egret::sink::otlp::Signal::Logs]));
    sinks.offer("a", &txn(200));
    sinks.offer("b", &txn(200));
    sinks.shutdown(Duration::from_secs(5)).await;
    let st = serde_json::to_value(sinks.status()).unwrap();
    let a = &st[0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["state"], "connected", "{a}");
    assert_eq!(a["switched_off"], serde_json::json!(["logs"]));
    for s in a["signals"].as_array().unwrap() {
        assert_eq!(s["protocol"], "http/protobuf");
        assert_eq!(s["queued"], 0);
        let when = s["last_success"].as_str().unwrap_or_else(|| panic!("{s}"));
        humantime::parse_rfc3339(when).unwrap();
    }
    let b = &st[1];
    assert_eq!(b["state"], "error", "{b}");
    let t = &b["signals"][0];
    assert_eq!(t["protocol"], "http/json");
    assert!(t["last_success"].is_null());
    assert!(t["last_error"].as_str().unwrap().contains("401"), "{t}");

    // Everything switched off: the exporter is still listed.
    let env = |k: &str| (k == "OTEL_SDK_DISABLED").then(|| "true".to_owned());
    let (sinks, _) = OtlpSinks::from_config(&cfg, None, &env, fast_opts()).unwrap();
    let st = serde_json::to_value(sinks.status()).unwrap();
    assert_eq!(st.as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st[0]["state"], "disconnected");
    assert_eq!(st[0]["signals"], serde_json::json!([]));
    assert_eq!(
        st[0]["switched_off"],
        serde_json::json!(["traces", "logs", "metrics"])
    );
    sinks.shutdown(Duration::from_secs(1)).await;
}

// ---- fan-out: several exporters per gateway ------------------------------------

/// Every request a receiver got, decompressed, as one text to search.
fn wire_text(seen: &[Captured]) -> String {
    seen.iter()
        .map(|c| String::from_utf8_lossy(&gunzip(&c.body)).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn resource_service_names(seen: &[Captured]) -> Vec<String> {
    let mut out = Vec::new();
    for c in seen.iter().filter(|c| c.path == "/v1/traces") {
        let r = ExportTraceServiceRequest::decode(gunzip(&c.body).as_slice()).unwrap();
        for rs in &r.resource_spans {
            if let Some(res) = &rs.resource {
                out.extend(str_attr(&res.attributes, sc::SERVICE_NAME).map(str::to_owned));
                out.extend(str_attr(&res.attributes, "team").map(|t| format!("team={t}")));
            }
        }
    }
    out
}

/// One gateway, two exporters: the operator's (primary, from the
/// environment's endpoint and headers, `content: full`) and a tenant's
/// (`exporters[]`, `content: none`, its own service name and resource). Each
/// gets every record; the tenant's receiver gets no body, no content
/// detail and none of the environment's headers (the operator's API key).
#[tokio::test]
async fn fan_out_reaches_every_exporter_with_its_own_content_mode() {
    let operator = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let tenant = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let yaml = format!(
        "gateways:
  - name: gw
    otlp: {{signals: {{metrics: false}}}}
    exporters:
      - name: tenant
        endpoint: {}
        content: none
        headers: {{x-tenant: t-1}}
        serviceName: tenant-agents
        resourceAttributes: {{team: a}}
        signals: {{metrics: false}}
",
        tenant.url()
    );
    let cfg = egret::config::Config::parse(&yaml, Path::new("t.yaml")).unwrap();
    let operator_url = operator.url();
    let env = move |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(operator_url.clone()),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-operator-key=op-secret".to_owned()),
        "OTEL_SERVICE_NAME" => Some("operator-egret".to_owned()),
        _ => None,
    };
    let (sinks, warnings) = OtlpSinks::from_config(&cfg, None, &env, fast_opts()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(sinks.gateway("gw").len(), 2);
    let mut rec = txn(200);
    rec.set(sc::GEN_AI_CONVERSATION_ID, "conv_tenant_private");
    sinks.offer("gw", &rec);
    sinks.offer("other-gateway", &txn(200));
    sinks.shutdown(Duration::from_secs(5)).await;

    let status = sinks.status();
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["gw", "gw/tenant"]);
    for s in &status {
        assert_eq!(signal(&s.signals, "traces").sent, 1, "{}", s.name);
        assert_eq!(signal(&s.signals, "logs").sent, 1, "{}", s.name);
    }

    let op_seen = operator.seen();
    let op = wire_text(&op_seen);
    assert!(
        op.contains("\"content\":\"hi\""),
        "operator gets the request body"
    );
    assert!(op.contains("conv_tenant_private") && op.contains("/v1/chat/completions"));
    assert!(op_seen.iter().all(|c| c
        .headers
        .get("x-operator-key")
        .is_some_and(|v| v == "op-secret")));
    assert_eq!(resource_service_names(&op_seen), ["operator-egret"]);

    let t_seen = tenant.seen();
    assert!(t_seen.iter().any(|c| c.path == "/v1/traces"));
    assert!(t_seen.iter().any(|c| c.path == "/v1/logs"));
    let t = wire_text(&t_seen);
    for gone in [
        "hi\"",
        "hello",
        "messages",
        "conv_tenant_private",
        "/v1/chat/completions",
    ] {
        assert!(!t.contains(gone), "tenant received {gone:?}");
    }
    for kept in [
        "inv-42",
        "gpt-4o",
        sc::GEN_AI_USAGE_OUTPUT_TOKENS,
        "api.openai.com",
    ] {
        assert!(t.contains(kept), "tenant lacks {kept:?}");
    }
    for c in &t_seen {
        assert!(
            c.headers.get("x-operator-key").is_none(),
            "operator key leaked"
        );
        assert_eq!(c.headers.get("x-tenant").unwrap(), "t-1");
    }
    assert_eq!(resource_service_names(&t_seen), ["tenant-agents", "team=a"]);
}

// ---- OTEL_BSP_* / OTEL_BLRP_* -----------------------------------------------

/// Spans / log records per request a receiver got, in arrival order.
fn items_per_request(seen: &[Captured], path: &str) -> Vec<usize> {
    seen.iter()
        .filter(|c| c.path == path)
        .map(|c| {
            let body = gunzip(&c.body);
            if path == "/v1/traces" {
                ExportTraceServiceRequest::decode(body.as_slice())
                    .unwrap()
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum()
            } else {
                ExportLogsServiceRequest::decode(body.as_slice())
                    .unwrap()
                    .resource_logs
                    .iter()
                    .flat_map(|r| &r.scope_logs)
                    .map(|s| s.log_records.len())
                    .sum()
            }
        })
        .collect()
}

/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`
/// bound the items per request, each for its own signal, and
/// `OTEL_BSP_SCHEDULE_DELAY` / `OTEL_BLRP_SCHEDULE_DELAY` set how long a
/// partial batch waits: the exporter's own flush interval here is an hour,
/// so a record that arrives at all arrived by the variable's delay.
#[tokio::test]
async fn batch_size_and_schedule_delay_per_signal() {
    let srv = TestServer::start(|_| (StatusCode::OK, vec![])).await;
    let url = srv.url();
    let env = move |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(url.clone()),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("3".to_owned()),
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE" => Some("4".to_owned()),
        "OTEL_BSP_SCHEDULE_DELAY" => Some("50".to_owned()),
        "OTEL_BLRP_SCHEDULE_DELAY" => Some("50".to_owned()),
        "OTEL_METRICS_EXPORTER" => Some("none".to_owned()),
        _ => None,
    };
    let settings = resolve("gw", &OtlpConfig::default(), &env)
        .unwrap()
        .unwrap();
    let opts = ExportOptions {
        flush_interval: Duration::from_secs(3600),
        ..fast_opts()
    };
    let exp = OtlpExporter::start(settings, opts, client()).unwrap();
    for _ in 0..10 {
        exp.offer(&txn(200));
    }
    wait_for("10 spans and 10 log records", || {
        let s = srv.seen();
        items_per_request(&s, "/v1/traces").iter().sum::<usize>() == 10
            && items_per_request(&s, "/v1/logs").iter().sum::<usize>() == 10
    })
    .await;
    let seen = srv.seen();
    let spans = items_per_request(&seen, "/v1/traces");
    let logs = items_per_request(&seen, "/v1/logs");
    assert!(spans.iter().all(|n| *n <= 3), "spans per request {spans:?}");
    assert!(logs.iter().all(|n| *n <= 4), "logs per request {logs:?}");
    assert!(spans.len() >= 4 && logs.len() >= 3, "{spans:?} {logs:?}");
    exp.shutdown(Duration::from_secs(5)).await;
}

/// `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE` bound the records
/// waiting per signal: with the receiver not answering, offers beyond the
/// queue (and the one batch in flight) are dropped and counted, per signal.
#[tokio::test]
async fn queue_size_per_signal_drops_and_counts() {
    // Accepts connections, never answers: the first batch stays in flight.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            socks.push(s);
        }
    });
    let env = move |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(format!("http://{addr}")),
        "OTEL_BSP_MAX_QUEUE_SIZE" => Some("2".to_owned()),
        "OTEL_BLRP_MAX_QUEUE_SIZE" => Some("5".to_owned()),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("1".to_owned()),
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE" => Some("1".to_owned()),
        "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("60000".to_owned()),
        "OTEL_METRICS_EXPORTER" => Some("none".to_owned()),
        _ => None,
    };
    let settings = resolve("gw", &OtlpConfig::default(), &env)
        .unwrap()
        .unwrap();
    assert_eq!(settings.traces.as_ref().unwrap().queue_capacity, 2);
    assert_eq!(settings.logs.as_ref().unwrap().queue_capacity, 5);
    let exp = OtlpExporter::start(settings, fast_opts(), client()).unwrap();
    // One record taken by each worker (in flight, unanswered), then the
    // queues fill: traces hold 2, logs 5.
    exp.offer(&txn(200));
    wait_for("the first batch in flight", || {
        let st = exp.status();
        signal(&st.signals, "traces").queued == 0 && signal(&st.signals, "logs").queued == 0
    })
    .await;
    for _ in 0..20 {
        exp.offer(&txn(200));
    }
    let st = exp.status();
    let (t, l) = (signal(&st.signals, "traces"), signal(&st.signals, "logs"));
    assert_eq!((t.queued, t.dropped), (2, 18), "traces {t:?}");
    assert_eq!((l.queued, l.dropped), (5, 15), "logs {l:?}");
    hold.abort();
    exp.shutdown(Duration::from_millis(200)).await;
}

/// The rest of the variable table through a receiver: a signal switched
/// off by `OTEL_TRACES_EXPORTER=none`, resource attributes from
/// `OTEL_RESOURCE_ATTRIBUTES`, uncompressed bodies with
/// `OTEL_EXPORTER_OTLP_COMPRESSION=none`, and the export budgets of logs
/// (`OTEL_BLRP_EXPORT_TIMEOUT`) and metrics (`OTEL_METRIC_EXPORT_TIMEOUT`):
/// the receiver asks for a 30 s wait, the budget gives the batch up at once
/// (without it, the retries alone would take over 10 s here).
#[tokio::test]
async fn remaining_variables_switch_resource_compression_and_budgets() {
    let srv =
        TestServer::start(|_| (StatusCode::SERVICE_UNAVAILABLE, vec![("retry-after", "30")])).await;
    let url = srv.url();
    let env = move |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(url.clone()),
        "OTEL_TRACES_EXPORTER" => Some("none".to_owned()),
        "OTEL_RESOURCE_ATTRIBUTES" => {
            Some("team=herons,deployment.environment.name=prod".to_owned())
        }
        "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("none".to_owned()),
        "OTEL_BLRP_EXPORT_TIMEOUT" => Some("1500".to_owned()),
        "OTEL_METRIC_EXPORT_INTERVAL" => Some("200".to_owned()),
        "OTEL_METRIC_EXPORT_TIMEOUT" => Some("1500".to_owned()),
        _ => None,
    };
    let settings = resolve("gw", &OtlpConfig::default(), &env)
        .unwrap()
        .unwrap();
    assert!(settings.traces.is_none(), "traces switched off");
    assert_eq!(settings.switched_off, [egret::sink::otlp::Signal::Traces]);
    let opts = ExportOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(30),
        },
        ..fast_opts()
    };
    let exp = OtlpExporter::start(settings, opts, client()).unwrap();
    let t0 = Instant::now();
    exp.offer(&txn(200));
    wait_for("the log batch and a metrics export given up", || {
        let st = exp.status();
        signal(&st.signals, "logs").dropped == 1 && signal(&st.signals, "metrics").dropped >= 1
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    let seen = srv.seen();
    assert!(
        seen.iter().all(|c| c.path != "/v1/traces"),
        "no traces sent"
    );
    let logs: Vec<&Captured> = seen.iter().filter(|c| c.path == "/v1/logs").collect();
    assert_eq!(logs.len(), 1, "no retry past the budget");
    for c in &seen {
        assert!(c.headers.get("content-encoding").is_none(), "uncompressed");
    }
    // Uncompressed protobuf, with the environment's resource attributes.
    let req = ExportLogsServiceRequest::decode(logs[0].body.as_ref()).unwrap();
    let res = req.resource_logs[0].resource.as_ref().unwrap();
    assert_eq!(str_attr(&res.attributes, "team"), Some("herons"));
    assert_eq!(
        str_attr(&res.attributes, "deployment.environment.name"),
        Some("prod")
    );
    exp.shutdown(Duration::from_millis(500)).await;
}
