//! Spool → ClickHouse sink against a real `clickhouse-server` (Debian's
//! 18.16 here). Each test starts its own server through the rig; without the
//! binary they print a skip reason, or fail when `CI` is set.
use std::path::Path;
use std::time::{Duration, Instant};

use bpf_tests::clickhouse_rig::ClickHouseRig;
use egret::config::{ClickHouseConfig, SpoolConfig};
use egret::record::{AttrValue, Filter, Record};
use egret::semconv as sc;
use egret::sink::clickhouse::{
    query_records, ClickHouseSink, ColKind, DeadLetter, FlowRow, InvocationRow, SinkState,
    StatusHandle, TransactionRow, CURSOR_NAME,
};
use egret::store::{Spool, SpoolHandle};
use tokio_util::sync::CancellationToken;

const BASE_NS: i64 = 1_763_000_000_000_000_000; // Nov 2025

fn cfg(rig: &ClickHouseRig, db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: rig.url(),
        database: db.to_owned(),
        batch_rows: 500,
        flush_interval: Duration::from_millis(50),
        insert_timeout: Duration::from_secs(10),
        ..ClickHouseConfig::default()
    }
}

fn spool_cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 256 << 20,
        segment_bytes: 1 << 20,
        ..SpoolConfig::default()
    }
}

fn tx(inv: &str, i: i64) -> Record {
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(sc::INVOCATION_ID, inv);
    r.set(sc::AGENT_NAME, "coder");
    r.set(sc::START_TIME, BASE_NS + i * 1_000_000);
    r.set(sc::END_TIME, BASE_NS + i * 1_000_000 + 500_000);
    r.set(sc::GEN_AI_PROVIDER_NAME, "anthropic");
    r.set(sc::GEN_AI_REQUEST_MODEL, "claude-sonnet-4-5");
    r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 100 + i);
    r.set(sc::HTTP_RESPONSE_STATUS_CODE, 200i64);
    r.set(sc::REQUEST_BODY, format!("{{\"n\":{i}}}"));
    r
}

fn flow(inv: &str, i: i64) -> Record {
    let mut r = Record::new(sc::KIND_FLOW);
    r.set(sc::INVOCATION_ID, inv);
    r.set(sc::START_TIME, BASE_NS + i * 1_000_000 + 1);
    r.set(sc::END_TIME, BASE_NS + i * 1_000_000 + 2);
    r.set(sc::L4_BYTES_SANDBOX_TX, 1000 + i);
    r.set(sc::SOCKET_COOKIE, 9_000 + i);
    r
}

/// A record with every typed column of its table populated, plus extras.
fn full(kind: &'static str, inv: &str, i: i64) -> Record {
    let cols = match kind {
        sc::KIND_FLOW => FlowRow::COLUMNS,
        sc::KIND_INVOCATION => InvocationRow::COLUMNS,
        _ => TransactionRow::COLUMNS,
    };
    let mut r = Record::new(kind);
    for c in cols {
        let v: AttrValue = match c.kind {
            ColKind::Text | ColKind::Str => format!("{}-{i}-é\t'\"\\", c.name).into(),
            ColKind::Int0 | ColKind::Int => AttrValue::Int(i * 1000 + c.name.len() as i64),
            ColKind::Float => AttrValue::Float(0.1 + c.name.len() as f64),
            ColKind::Bool => AttrValue::Bool(c.name.len() % 2 == 1),
            ColKind::StrArr => vec!["stop".to_owned(), "tool_use".to_owned()].into(),
        };
        r.set(c.attr, v);
    }
    r.set(sc::RECORD_ID, uuid_like(kind, i));
    r.set(sc::INVOCATION_ID, inv);
    r.set(sc::START_TIME, BASE_NS + i);
    r.set(sc::PROCESS_PID, 4242i64);
    r.set(sc::L4_REDIRECTED, true);
    r.set(sc::NETWORK_TRANSPORT, "tcp");
    r.set("egret.test.float", -2.5e-7);
    r.set(
        "egret.test.array",
        vec!["a".to_owned(), "b,\"c\"".to_owned()],
    );
    r
}

fn uuid_like(kind: &str, i: i64) -> String {
    format!("{kind}-{i:08}")
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_sink(
    sink: ClickHouseSink,
    spool: &SpoolHandle,
) -> (
    StatusHandle,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), egret::sink::SinkError>>,
) {
    let cursor = spool.cursor(CURSOR_NAME).expect("open cursor");
    let status = sink.status_handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink.run(cursor, stop.clone()));
    (status, stop, task)
}

fn lag(spool: &SpoolHandle) -> u64 {
    spool.stats().cursors.iter().map(|c| c.lag_bytes).sum()
}

fn count(rig: &ClickHouseRig, db: &str, what: &str, final_: bool) -> u64 {
    let f = if final_ { " FINAL" } else { "" };
    let t = rig
        .query_u64(&format!("SELECT {what} FROM {db}.transactions{f}"))
        .unwrap();
    let fl = rig
        .query_u64(&format!("SELECT {what} FROM {db}.flows{f}"))
        .unwrap();
    t + fl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_create_and_migrate_is_idempotent() {
    let Some(rig) = ClickHouseRig::start_or_skip("schema_create_and_migrate_is_idempotent") else {
        return;
    };
    let cfg = cfg(&rig, "egret_schema");
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.healthcheck().await.expect("healthcheck");
    let t0 = Instant::now();
    sink.migrate().await.expect("first migrate");
    let first = t0.elapsed();
    let t1 = Instant::now();
    sink.migrate().await.expect("second migrate");
    eprintln!("TIMING migrate: create {first:?}, no-op {:?}", t1.elapsed());

    let cols = |t: &str| {
        rig.query_u64(&format!(
            "SELECT count() FROM system.columns WHERE database = 'egret_schema' AND table = '{t}'"
        ))
        .unwrap()
    };
    // typed columns + 3 arrays + 2 materialized
    assert_eq!(
        cols("transactions"),
        TransactionRow::COLUMNS.len() as u64 + 5
    );
    assert_eq!(cols("flows"), FlowRow::COLUMNS.len() as u64 + 5);
    let engine = rig
        .query("SELECT engine FROM system.tables WHERE database = 'egret_schema' AND name = 'transactions'")
        .unwrap();
    assert_eq!(engine.trim(), "ReplacingMergeTree");

    // An older layout: a column missing, with data in the table.
    rig.query("ALTER TABLE egret_schema.transactions DROP COLUMN egret_api_key_id")
        .unwrap();
    rig.query("ALTER TABLE egret_schema.flows DROP COLUMN egret_l4_bytes_downstream")
        .unwrap();
    // A layout from before the per-direction body flags.
    for c in [
        "egret_request_body_b64",
        "egret_response_body_b64",
        "egret_request_content_encoding",
        "egret_response_content_encoding",
        "egret_request_body_decode_error",
        "egret_response_body_decode_error",
    ] {
        rig.query(&format!(
            "ALTER TABLE egret_schema.transactions DROP COLUMN {c}"
        ))
        .unwrap();
    }
    rig.query(
        "INSERT INTO egret_schema.transactions (egret_record_id, invocation_id, egret_start_time_unix_nano) \
         VALUES ('old-1', 'inv-old', 1763000000000000000)",
    )
    .unwrap();
    sink.migrate().await.expect("migrate adds the columns back");
    sink.migrate().await.expect("and is idempotent");
    assert_eq!(
        cols("transactions"),
        TransactionRow::COLUMNS.len() as u64 + 5
    );
    assert_eq!(cols("flows"), FlowRow::COLUMNS.len() as u64 + 5);
    let old = rig
        .query(
            "SELECT egret_record_id, egret_api_key_id, event_date FROM egret_schema.transactions",
        )
        .unwrap();
    assert_eq!(old.trim(), "old-1\t\\N\t2025-11-13");
    // The old row reads back through the typed path too.
    let recs = query_records(&cfg, &inv_filter("inv-old")).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id(), "old-1");
    assert_eq!(recs[0].kind(), sc::KIND_TRANSACTION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_every_table_every_column() {
    let Some(rig) = ClickHouseRig::start_or_skip("round_trip_every_table_every_column") else {
        return;
    };
    let cfg = cfg(&rig, "egret_rt");
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();

    let mut t = full(sc::KIND_TRANSACTION, "inv-rt", 1);
    let f = full(sc::KIND_FLOW, "inv-rt", 2);
    // A value whose type is not its column's: must come back exactly.
    let mut t2 = full(sc::KIND_TRANSACTION, "inv-rt", 3);
    t2.set(sc::DURATION_MS, 12i64);
    t2.set(sc::JSONRPC_REQUEST_ID, 7i64);
    t2.set(sc::REQUEST_BODY_B64, false);
    t2.set(sc::RESPONSE_BODY_B64, true);
    t2.set(sc::REQUEST_CONTENT_ENCODING, "gzip");
    t2.set(sc::RESPONSE_CONTENT_ENCODING, "br");
    t2.remove(sc::REQUEST_BODY_DECODE_ERROR);
    t2.set(sc::RESPONSE_BODY_DECODE_ERROR, "decode_failed");
    t.set(
        sc::RESPONSE_BODY,
        "data: {\"type\":\"message_stop\"}\n\n".repeat(100),
    );
    let inv = full(sc::KIND_INVOCATION, "inv-rt", 4);
    let counts = sink.insert([&t, &f, &t2, &inv]).await.unwrap();
    assert_eq!(
        (counts.transactions, counts.flows, counts.invocations),
        (2, 1, 1)
    );

    let back = query_records(&cfg, &inv_filter("inv-rt")).await.unwrap();
    assert_eq!(back.len(), 4);
    assert_eq!(back[0], t);
    assert_eq!(back[1], f);
    assert_eq!(back[2], t2);
    assert_eq!(back[3], inv);
    let inv_row = rig
        .query("SELECT egret_span_id, egret_duration_ms FROM egret_rt.invocations")
        .unwrap();
    assert!(inv_row.starts_with("egret_span_id-4-"), "{inv_row}");

    // The typed columns really hold the values (not just the arrays).
    let row = rig
        .query(
            "SELECT gen_ai_usage_input_tokens, gen_ai_request_stream, gen_ai_response_finish_reasons, \
             egret_duration_ms, length(egret_response_body), event_date, attr_keys \
             FROM egret_rt.transactions WHERE egret_record_id = 'transaction-00000001'",
        )
        .unwrap();
    assert_eq!(
        row.trim(),
        format!(
            "1025\t1\t['stop','tool_use']\t17.1\t{}\t2025-11-13\t['egret.l4.redirected','egret.test.array','egret.test.float','network.transport','process.pid']",
            t.get_str(sc::RESPONSE_BODY).unwrap().len()
        )
    );
    let flow_row = rig
        .query("SELECT egret_l4_bytes_sandbox_tx, server_port, attr_types FROM egret_rt.flows")
        .unwrap();
    assert_eq!(
        flow_row.trim(),
        "2025\t2011\t['bool','string_array','float','string','int']"
    );
    // The per-direction body flags have typed columns of their own.
    let flags = rig
        .query(
            "SELECT egret_request_body_b64, egret_response_body_b64, egret_request_content_encoding, \
             egret_response_content_encoding, egret_request_body_decode_error, egret_response_body_decode_error \
             FROM egret_rt.transactions WHERE egret_record_id = 'transaction-00000003'",
        )
        .unwrap();
    assert_eq!(flags.trim(), "0\t1\tgzip\tbr\t\\N\tdecode_failed");
    let mistyped = rig
        .query("SELECT egret_duration_ms, jsonrpc_request_id FROM egret_rt.transactions WHERE egret_record_id = 'transaction-00000003'")
        .unwrap();
    assert_eq!(mistyped.trim(), "\\N\t\\N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_to_clickhouse_is_exactly_once_after_duplicate_delivery_and_restart() {
    let Some(rig) = ClickHouseRig::start_or_skip("spool_to_clickhouse_exactly_once") else {
        return;
    };
    let db = "egret_once";
    let cfg = cfg(&rig, db);
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    // Register the cursor before the first append (as the agent does).
    drop(handle.cursor(CURSOR_NAME).unwrap());

    let mut all = Vec::new();
    for i in 0..1000 {
        let inv = if i % 2 == 0 { "inv-a" } else { "inv-b" };
        all.push(if i % 5 == 0 { flow(inv, i) } else { tx(inv, i) });
    }
    for chunk in all.chunks(100) {
        assert_eq!(spool.append(chunk).unwrap().written, 100);
    }

    // A previous agent delivered everything but died before committing the
    // cursor: the spool will deliver it all again.
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();
    sink.insert(all.iter()).await.unwrap();
    assert_eq!(count(&rig, db, "count()", false), 1000);

    let (status, stop, task) = spawn_sink(sink, &handle);
    wait_for("re-delivery", Duration::from_secs(30), || {
        status.get().rows_inserted == 1000 && lag(&handle) == 0
    })
    .await;
    // Both copies are stored (until a background merge collapses them).
    eprintln!(
        "physical rows after re-delivery: {}",
        count(&rig, db, "count()", false)
    );
    assert_eq!(count(&rig, db, "count()", true), 1000, "FINAL sees one");
    assert_eq!(count(&rig, db, "uniqExact(egret_record_id)", false), 1000);
    let recs = query_records(&cfg, &Filter::default()).await.unwrap();
    assert_eq!(recs.len(), 1000);
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| (a.start_ns(), a.id()).cmp(&(b.start_ns(), b.id())));
    assert_eq!(recs, sorted);

    // Agent restart: the cursor resumes after what was committed.
    stop.cancel();
    task.await.unwrap().unwrap();
    drop(spool);
    let mut spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    let (status, stop, task) = spawn_sink(ClickHouseSink::new(&cfg).unwrap(), &handle);
    let more: Vec<Record> = (1000..1200).map(|i| tx("inv-c", i)).collect();
    spool.append(&more).unwrap();
    wait_for("delivery after restart", Duration::from_secs(30), || {
        status.get().rows_inserted == 200 && lag(&handle) == 0
    })
    .await;
    // Nothing before the restart was sent again (rows_inserted == 200 above).
    assert_eq!(count(&rig, db, "count()", true), 1200);
    stop.cancel();
    task.await.unwrap().unwrap();

    // Background merges keep one copy: force them and look without FINAL.
    rig.query(&format!("OPTIMIZE TABLE {db}.transactions FINAL"))
        .unwrap();
    rig.query(&format!("OPTIMIZE TABLE {db}.flows FINAL"))
        .unwrap();
    assert_eq!(count(&rig, db, "count()", false), 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_loses_and_duplicates_nothing() {
    let Some(mut rig) = ClickHouseRig::start_or_skip("clickhouse_outage") else {
        return;
    };
    let db = "egret_outage";
    let cfg = ClickHouseConfig {
        batch_rows: 200,
        insert_timeout: Duration::from_secs(3),
        ..cfg(&rig, db)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    let (status, stop, task) = spawn_sink(ClickHouseSink::new(&cfg).unwrap(), &handle);

    let mut n = 0i64;
    let mut append = |spool: &mut Spool, count: i64| {
        let batch: Vec<Record> = (n..n + count)
            .map(|i| {
                if i % 4 == 0 {
                    flow("inv-o", i)
                } else {
                    tx("inv-o", i)
                }
            })
            .collect();
        n += count;
        assert_eq!(spool.append(&batch).unwrap().written, count as usize);
    };
    for _ in 0..10 {
        append(&mut spool, 100);
    }
    wait_for("phase 1 delivery", Duration::from_secs(30), || {
        status.get().rows_inserted == 1000
    })
    .await;
    assert_eq!(status.get().state, SinkState::Connected);

    // Outage (the server crashes): appends continue, the spool holds them.
    rig.kill();
    for _ in 0..20 {
        append(&mut spool, 100);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("sink to notice the outage", Duration::from_secs(20), || {
        let s = status.get();
        s.state == SinkState::Disconnected && s.retries > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = status.get();
    assert_eq!(during.rows_inserted, 1000, "{during:?}");
    assert!(lag(&handle) > 0);
    assert!(during.last_error.is_some());

    let t_start = Instant::now();
    rig.start_again().unwrap();
    let started = t_start.elapsed();
    wait_for("catch-up after the outage", Duration::from_secs(60), || {
        status.get().rows_inserted == 3000 && lag(&handle) == 0
    })
    .await;
    eprintln!(
        "TIMING outage: server restart {started:?}, caught up {:?} after restart, {} retries",
        t_start.elapsed(),
        status.get().retries
    );
    assert_eq!(status.get().state, SinkState::Connected);
    assert_eq!(count(&rig, db, "count()", true), 3000, "zero lost");
    assert_eq!(count(&rig, db, "uniqExact(egret_record_id)", false), 3000);
    let raw = count(&rig, db, "count()", false);
    eprintln!("outage: {raw} physical rows for 3000 records (duplicates collapse under FINAL)");
    let recs = query_records(&cfg, &filt(Some("inv-o"), None))
        .await
        .unwrap();
    assert_eq!(recs.len(), 3000, "zero duplicated through query_records");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A record the server rejects on its own (here: an operator's guard
/// column, `throwIf` — 18.16 has no CHECK constraints, and nothing egret
/// itself writes fails there) must not stall the sink: the batch is split,
/// the good records land, the poison one goes to the dead-letter file and
/// the cursor moves past it. A poison record alone is not set aside (a
/// server refusing everything looks the same) until good ones join it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_is_set_aside_and_the_rest_delivered() {
    let Some(rig) = ClickHouseRig::start_or_skip("clickhouse_poison") else {
        return;
    };
    let db = "egret_poison";
    let cfg = ClickHouseConfig {
        batch_rows: 100,
        ..cfg(&rig, db)
    };
    let dir = tempfile::tempdir().unwrap();
    let dl_path = dir.path().join("dead-letter.jsonl");
    let mut spool = Spool::open(&spool_cfg(&dir.path().join("spool"))).unwrap();
    let handle = spool.handle();
    let sink = ClickHouseSink::new(&cfg)
        .unwrap()
        .with_dead_letter(DeadLetter {
            path: dl_path.clone(),
            max_bytes: 1 << 20,
        });
    let (status, stop, task) = spawn_sink(sink, &handle);
    wait_for("schema migration", Duration::from_secs(30), || {
        status.get().state == SinkState::Connected
    })
    .await;
    rig.query(&format!(
        "ALTER TABLE {db}.transactions ADD COLUMN guard UInt8 \
         MATERIALIZED throwIf(ifNull(agent_name, '') = 'poison')"
    ))
    .unwrap();
    let poison = |i: i64| {
        let mut r = tx("inv-p", i);
        r.set(sc::AGENT_NAME, "poison");
        r
    };

    // One batch: good transactions and flows around one poison record.
    let mut batch: Vec<Record> = (0..40)
        .map(|i| {
            if i % 4 == 0 {
                flow("inv-p", i)
            } else {
                tx("inv-p", i)
            }
        })
        .collect();
    batch.insert(23, poison(1000));
    let poison_id = batch[23].id().to_owned();
    assert_eq!(spool.append(&batch).unwrap().written, 41);
    wait_for("the good records", Duration::from_secs(30), || {
        status.get().rows_inserted == 40 && lag(&handle) == 0
    })
    .await;
    let st = status.get();
    assert_eq!(
        (st.dead_lettered, st.dead_letter_overflow),
        (1, 0),
        "{st:?}"
    );
    assert_eq!(st.state, SinkState::Connected);
    assert_eq!(count(&rig, db, "count()", true), 40);
    let in_ch = rig
        .query_u64(&format!(
            "SELECT count() FROM {db}.transactions WHERE egret_record_id = '{poison_id}'"
        ))
        .unwrap();
    assert_eq!(in_ch, 0);
    let text = std::fs::read_to_string(&dl_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["record"][sc::RECORD_ID], poison_id.as_str());
    assert!(
        lines[0]["error"].as_str().unwrap().contains("throwIf"),
        "{}",
        lines[0]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dl_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Not stalled: later records flow.
    let later: Vec<Record> = (100..110).map(|i| tx("inv-p", i)).collect();
    spool.append(&later).unwrap();
    wait_for("later records", Duration::from_secs(30), || {
        status.get().rows_inserted == 50 && lag(&handle) == 0
    })
    .await;

    // A poison record alone: the server refuses the whole batch, which is
    // kept and retried, not set aside ...
    spool.append(&[poison(2000)]).unwrap();
    let retries = status.get().retries;
    wait_for(
        "the lone record to be retried",
        Duration::from_secs(30),
        || status.get().retries >= retries + 2,
    )
    .await;
    let st = status.get();
    assert_eq!((st.dead_lettered, st.rows_inserted), (1, 50), "{st:?}");
    assert_eq!(st.state, SinkState::Error);
    assert!(lag(&handle) > 0);
    // ... until good records join it in the retried batch.
    spool.append(&[tx("inv-p", 3000)]).unwrap();
    wait_for("the retried batch", Duration::from_secs(60), || {
        status.get().rows_inserted == 51 && lag(&handle) == 0
    })
    .await;
    let st = status.get();
    assert_eq!(
        (st.dead_lettered, st.dead_letter_overflow),
        (2, 0),
        "{st:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&dl_path).unwrap().lines().count(),
        2
    );
    assert_eq!(count(&rig, db, "count()", true), 51);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_records_filters_by_invocation_and_time() {
    let Some(rig) = ClickHouseRig::start_or_skip("query_records_filters") else {
        return;
    };
    let cfg = cfg(&rig, "egret_query");
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();
    let mut recs = Vec::new();
    for (k, inv) in ["inv-a", "inv-b", "inv-c"].iter().enumerate() {
        for i in 0..5 {
            recs.push(tx(inv, k as i64 * 100 + i));
        }
        for i in 0..2 {
            recs.push(flow(inv, k as i64 * 100 + 50 + i));
        }
    }
    sink.insert(recs.iter()).await.unwrap();
    // Deliver one invocation twice: still listed once.
    sink.insert(recs.iter().filter(|r| r.invocation_id() == Some("inv-b")))
        .await
        .unwrap();

    let b = query_records(&cfg, &filt(Some("inv-b"), None))
        .await
        .unwrap();
    assert_eq!(b.len(), 7);
    assert!(b.iter().all(|r| r.invocation_id() == Some("inv-b")));
    assert!(b.windows(2).all(|w| w[0].start_ns() <= w[1].start_ns()));
    assert_eq!(b.iter().filter(|r| r.kind() == sc::KIND_FLOW).count(), 2);
    let expect: Vec<&Record> = recs
        .iter()
        .filter(|r| r.invocation_id() == Some("inv-b"))
        .collect();
    for r in &expect {
        assert!(b.contains(r), "missing {r:?}");
    }

    assert_eq!(
        query_records(&cfg, &Filter::default()).await.unwrap().len(),
        21
    );
    let since = BASE_NS + 150 * 1_000_000; // inv-b's flows and all of inv-c
    let late = query_records(&cfg, &filt(None, Some(since))).await.unwrap();
    assert_eq!(late.len(), 2 + 7, "{late:?}");
    assert!(late.iter().all(|r| r.end_ns() >= since));
    assert_eq!(
        query_records(&cfg, &filt(Some("inv-a"), Some(since)))
            .await
            .unwrap()
            .len(),
        0
    );
    assert!(query_records(&cfg, &filt(Some("nope"), None))
        .await
        .unwrap()
        .is_empty());
    // Kind and time bounds, in SQL; the other fields on the rows read back.
    let flows = query_records(
        &cfg,
        &Filter {
            kind: Some(sc::KIND_FLOW.into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(flows.len(), 6);
    assert!(flows.iter().all(|r| r.kind() == sc::KIND_FLOW));
    let early = query_records(
        &cfg,
        &Filter {
            until_ns: Some(since),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    let want = recs.iter().filter(|r| r.start_ns() < since).count();
    assert!(want > 0 && want < 21);
    assert_eq!(early.len(), want, "{early:?}");
    assert!(early.iter().all(|r| r.start_ns() < since));
    // Values with quotes and '?' are bound safely.
    assert!(query_records(&cfg, &filt(Some("x' OR 1 = 1 --?"), None))
        .await
        .unwrap()
        .is_empty());
}

/// `retention` on one server: a pass drops the days entirely older than
/// it from both tables (partitions gone from `system.parts`), keeps the
/// rest, and the sink's own loop runs one right after its migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_old_days_and_keeps_the_rest() {
    let Some(rig) = ClickHouseRig::start_or_skip("clickhouse_retention") else {
        return;
    };
    let db = "egret_retention";
    let cfg = ClickHouseConfig {
        retention: Some(Duration::from_secs(7 * 86_400)),
        ..cfg(&rig, db)
    };
    const DAY: i64 = 86_400 * 1_000_000_000;
    let now = egret::record::now_unix_nanos();
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();
    let at = |age_days: i64, i: i64| now - age_days * DAY - i * 1_000_000;
    let mut recs = Vec::new();
    for (a, age) in [30, 8, 6, 0].iter().enumerate() {
        for i in 0..10 {
            let k = a as i64 * 100 + i;
            let mut r = if i % 2 == 0 {
                tx("inv-r", k)
            } else {
                flow("inv-r", k)
            };
            r.set(sc::START_TIME, at(*age, i));
            r.set(sc::END_TIME, at(*age, i) + 1);
            recs.push(r);
        }
    }
    sink.insert(recs.iter()).await.unwrap();
    let parts = || {
        rig.query(&format!(
            "SELECT table, toString(partition) FROM system.parts \
             WHERE database = '{db}' AND active GROUP BY table, partition ORDER BY table, partition"
        ))
        .unwrap()
    };
    let day = |age: i64| {
        rig.query(&format!(
            "SELECT toString(toDate(toDateTime(intDiv({}, 1000000000), 'UTC')))",
            now - age * DAY
        ))
        .unwrap()
        .trim()
        .to_owned()
    };
    let expect = |ages: &[i64]| {
        let mut out = String::new();
        for t in ["flows", "transactions"] {
            for a in ages {
                out.push_str(&format!("{t}\t{}\n", day(*a)));
            }
        }
        out
    };
    assert_eq!(parts(), expect(&[30, 8, 6, 0]));

    // A pass as of now: the days of 30 and 8 days ago go, in both tables.
    let dropped = sink.enforce_retention_at(now).await.unwrap();
    let mut got: Vec<(String, String)> = dropped.into_iter().map(|d| (d.table, d.day)).collect();
    got.sort();
    let mut want = Vec::new();
    for t in ["flows", "transactions"] {
        for a in [30, 8] {
            want.push((t.to_owned(), day(a)));
        }
    }
    assert_eq!(got, want);
    assert_eq!(parts(), expect(&[6, 0]));
    assert_eq!(count(&rig, db, "count()", true), 20);
    let left = query_records(&cfg, &Filter::default()).await.unwrap();
    assert_eq!(left.len(), 20);
    assert!(left.iter().all(|r| r.start_ns() > now - 7 * DAY));
    assert_eq!(sink.status().retention_partitions_dropped, 4);

    // The sink's loop: a late record for an expired day is dropped by the
    // pass that follows its migration.
    sink.insert([&recs[0]]).await.unwrap();
    assert!(parts().contains(&format!("transactions\t{}\n", day(30))));
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    let (status, stop, task) = spawn_sink(ClickHouseSink::new(&cfg).unwrap(), &handle);
    wait_for("a retention pass", Duration::from_secs(30), || {
        let s = status.get();
        s.retention_last_run_unix_nano.is_some() || s.retention_failures > 0
    })
    .await;
    let st = status.get();
    assert_eq!(
        (
            st.retention_partitions_dropped,
            st.retention_failures,
            st.retention_last_error
        ),
        (1, 0, None)
    );
    assert_eq!(parts(), expect(&[6, 0]));
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Throughput figures for the report (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timings_100k_records() {
    let Some(rig) = ClickHouseRig::start_or_skip("timings_100k_records") else {
        return;
    };
    let db = "egret_perf";
    let cfg = ClickHouseConfig {
        batch_rows: 10_000,
        flush_interval: Duration::from_millis(200),
        ..cfg(&rig, db)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut scfg = spool_cfg(dir.path());
    scfg.segment_bytes = 64 << 20;
    let mut spool = Spool::open(&scfg).unwrap();
    let handle = spool.handle();
    drop(handle.cursor(CURSOR_NAME).unwrap());
    let recs: Vec<Record> = (0..100_000)
        .map(|i| {
            if i % 3 == 0 {
                flow("inv-p", i)
            } else {
                tx("inv-p", i)
            }
        })
        .collect();

    let t = Instant::now();
    for chunk in recs.chunks(1000) {
        spool.append(chunk).unwrap();
    }
    let append = t.elapsed();
    let bytes = spool.stats().bytes_on_disk;

    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();
    // The pieces on their own: reading the spool, and INSERT alone.
    let mut cur = handle.cursor("probe").unwrap();
    let t = Instant::now();
    let mut read = 0;
    loop {
        let b = cur.next_batch(10_000).unwrap();
        if b.is_empty() {
            break;
        }
        read += b.len();
    }
    let cursor_read = t.elapsed();
    assert_eq!(read, 100_000);
    drop(cur);
    handle.remove_cursor("probe").unwrap();
    let probe = ClickHouseConfig {
        database: "egret_perf_probe".into(),
        ..cfg.clone()
    };
    let probe_sink = ClickHouseSink::new(&probe).unwrap();
    probe_sink.migrate().await.unwrap();
    let t = Instant::now();
    for chunk in recs.chunks(10_000) {
        probe_sink.insert(chunk).await.unwrap();
    }
    let insert_only = t.elapsed();
    eprintln!("TIMING 100k: cursor read {cursor_read:?}; INSERT only (10k/INSERT) {insert_only:?}");

    let t = Instant::now();
    let (status, stop, task) = spawn_sink(sink, &handle);
    wait_for("100k delivery", Duration::from_secs(120), || {
        status.get().rows_inserted == 100_000 && lag(&handle) == 0
    })
    .await;
    let deliver = t.elapsed();
    stop.cancel();
    task.await.unwrap().unwrap();

    let t = Instant::now();
    let n = egret::store::read_records(dir.path()).unwrap().count();
    let read_local = t.elapsed();
    let t = Instant::now();
    let back = query_records(&cfg, &filt(Some("inv-p"), None))
        .await
        .unwrap();
    let query = t.elapsed();
    assert_eq!((n, back.len()), (100_000, 100_000));
    assert_eq!(count(&rig, db, "count()", true), 100_000);
    eprintln!(
        "TIMING 100k records ({:.1} MB spooled): spool append (1k/batch, fsync each) {append:?}; \
         spool→ClickHouse (10k rows/INSERT) {deliver:?}; read_records {read_local:?}; \
         query_records FINAL {query:?}",
        bytes as f64 / 1e6
    );
}

/// The records of one invocation.
fn inv_filter(id: &str) -> Filter {
    Filter {
        invocation_id: Some(id.to_owned()),
        ..Filter::default()
    }
}

/// An invocation and a `since` bound.
fn filt(invocation: Option<&str>, since_ns: Option<i64>) -> Filter {
    Filter {
        invocation_id: invocation.map(str::to_owned),
        since_ns,
        ..Filter::default()
    }
}
