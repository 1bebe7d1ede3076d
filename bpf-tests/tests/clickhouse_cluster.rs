//! Spool → ClickHouse *cluster* against real servers: ZooKeeper (Debian's
//! `zookeeper`) and `clickhouse-server`s (Debian's 18.16) on loopback,
//! started by [`ClickHouseCluster`]. egret migrates the cluster
//! (`ReplicatedReplacingMergeTree` + `Distributed`), writes through it while
//! a replica is SIGKILLed and a whole shard restarts, and every record is
//! there exactly once; `egret records` reads it back; retention drops old
//! days on every replica.
//!
//! Shape: `EGRET_CH_CLUSTER=SHARDSxREPLICAS` (default `2x2`; `cargo xtask
//! test` runs the default). Without the packages the tests print a skip
//! reason, or fail when `CI` is set.
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpf_tests::clickhouse_cluster::ClickHouseCluster;
use bpf_tests::{egret_bin, patience};
use egret::config::{ClickHouseConfig, SpoolConfig};
use egret::record::{now_unix_nanos, Filter, Record};
use egret::semconv as sc;
use egret::sink::clickhouse::{ClickHouseSink, SinkState, StatusHandle, CURSOR_NAME};
use egret::store::{Spool, SpoolHandle};
use tokio_util::sync::CancellationToken;

const BASE_NS: i64 = 1_763_000_000_000_000_000; // Nov 2025
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// One cluster at a time: each is five JVM/server processes. (A tokio
/// mutex: the guard is held across awaits; a test that panics releases it.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn shape() -> (usize, usize) {
    let s = std::env::var("EGRET_CH_CLUSTER").unwrap_or_else(|_| "2x2".into());
    let (a, b) = s
        .split_once('x')
        .unwrap_or_else(|| panic!("EGRET_CH_CLUSTER={s:?}: want SHARDSxREPLICAS"));
    let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(
        a >= 1 && b >= 2,
        "EGRET_CH_CLUSTER={s:?}: at least 2 replicas"
    );
    (a, b)
}

fn cfg(c: &ClickHouseCluster, db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        // Every statement goes to the first replica of the first shard;
        // the Distributed table reaches the others.
        url: c.node(0, 0).url(),
        database: db.to_owned(),
        cluster: Some(c.name().to_owned()),
        batch_rows: 300,
        flush_interval: Duration::from_millis(50),
        insert_timeout: Duration::from_secs(20),
        ..ClickHouseConfig::default()
    }
}

fn spool_cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 512 << 20,
        segment_bytes: 4 << 20,
        ..SpoolConfig::default()
    }
}

/// Record `i`: a transaction (or every fourth a flow) of one of 64
/// invocations, so every shard gets records.
fn record(i: i64, start_ns: i64) -> Record {
    let inv = format!("inv-{}", i % 64);
    let mut r = if i % 4 == 0 {
        let mut r = Record::new(sc::KIND_FLOW);
        r.set(sc::L4_BYTES_SANDBOX_TX, 1000 + i);
        r.set(sc::SOCKET_COOKIE, 9_000 + i);
        r
    } else {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::AGENT_NAME, "coder");
        r.set(sc::GEN_AI_PROVIDER_NAME, "anthropic");
        r.set(sc::GEN_AI_REQUEST_MODEL, "claude-sonnet-4-5");
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 100 + i);
        r.set(sc::HTTP_RESPONSE_STATUS_CODE, 200i64);
        r.set(sc::REQUEST_BODY, format!("{{\"n\":{i}}}"));
        r
    };
    r.set(sc::INVOCATION_ID, inv);
    r.set(sc::START_TIME, start_ns);
    r.set(sc::END_TIME, start_ns + 500_000);
    r
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience(timeout);
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

/// `what` over both tables of `db` through `node`, optionally `FINAL`.
fn count(node: &bpf_tests::clickhouse_rig::ClickHouseRig, tables: [&str; 2], what: &str) -> u64 {
    tables
        .iter()
        .map(|t| {
            node.query_u64(&format!("SELECT {what} FROM {t}"))
                .unwrap_or_else(|e| panic!("{what} FROM {t}: {e}"))
        })
        .sum()
}

/// Appends records in batches of 100 from a thread of its own until told
/// to stop (at most `max` records): the load the cluster faults happen
/// under. Returns the spool with how many records were appended.
struct Producer {
    appended: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Spool, Vec<String>)>,
}

impl Producer {
    fn start(mut spool: Spool, first: i64, max: i64) -> Producer {
        let appended = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (appended.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut i = first;
            while !s.load(Ordering::Relaxed) && i < first + max {
                let batch: Vec<Record> = (i..i + 100)
                    .map(|k| record(k, BASE_NS + k * 1_000_000))
                    .collect();
                let out = spool.append(&batch).expect("spool append");
                assert_eq!(out.written, 100);
                ids.extend(batch.iter().map(|r| r.id().to_owned()));
                i += 100;
                a.store((i - first) as u64, Ordering::Relaxed);
                // Pacing of the load (about 1,000 records/s), not a wait
                // for anything.
                std::thread::sleep(Duration::from_millis(100));
            }
            (spool, ids)
        });
        Producer {
            appended,
            stop,
            thread,
        }
    }

    fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    fn finish(self) -> (Spool, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("producer thread")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_a_replica_crash_and_a_shard_restart_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (shards, replicas) = shape();
    let t_start = Instant::now();
    let Some(mut c) = ClickHouseCluster::start_or_skip("clickhouse_cluster", shards, replicas)
    else {
        return;
    };
    let started = t_start.elapsed();
    let db = "egret_cluster";
    let cfg = cfg(&c, db);
    let dist = [
        "egret_cluster.transactions FINAL",
        "egret_cluster.flows FINAL",
    ];
    let local = ["transactions_local", "flows_local"];

    // Migration: ON CLUSTER, idempotent, the right engines on every node.
    let sink = ClickHouseSink::new(&cfg).unwrap();
    let t = Instant::now();
    sink.migrate().await.expect("migrate the cluster");
    let migrate = t.elapsed();
    sink.migrate().await.expect("migrate again (no-op)");
    // An older layout: a column missing everywhere, and a Distributed table
    // as egret made it before (`AS` the local one: computed columns
    // MATERIALIZED, which 18.16's synchronous inserts cannot forward).
    let on = format!("ON CLUSTER {}", c.name());
    c.node(0, 0)
        .query(&format!(
            "ALTER TABLE {db}.flows_local {on} DROP COLUMN egret_l4_bytes_downstream"
        ))
        .unwrap();
    c.node(0, 0)
        .query(&format!("DROP TABLE {db}.flows {on}"))
        .unwrap();
    c.node(0, 0)
        .query(&format!(
            "CREATE TABLE {db}.flows {on} AS {db}.flows_local \
             ENGINE = Distributed({}, {db}, flows_local, cityHash64(invocation_id))",
            c.name()
        ))
        .unwrap();
    sink.migrate().await.expect("migrate the older layout");
    for node in c.nodes() {
        let cols = node
            .query(&format!(
                "SELECT table, name, default_kind FROM system.columns WHERE database = '{db}' \
                 AND (name = 'egret_l4_bytes_downstream' OR name = 'event_date') \
                 AND table LIKE 'flows%' ORDER BY table, name"
            ))
            .unwrap();
        assert_eq!(
            cols.trim(),
            "flows\tegret_l4_bytes_downstream\t\nflows\tevent_date\tALIAS\n\
             flows_local\tegret_l4_bytes_downstream\t\nflows_local\tevent_date\tMATERIALIZED",
            "on {}",
            node.url()
        );
    }
    for node in c.nodes() {
        let engines = node
            .query(&format!(
                "SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name"
            ))
            .unwrap();
        assert_eq!(
            engines.trim(),
            "flows\tDistributed\nflows_local\tReplicatedReplacingMergeTree\n\
             invocations\tDistributed\ninvocations_local\tReplicatedReplacingMergeTree\n\
             transactions\tDistributed\ntransactions_local\tReplicatedReplacingMergeTree",
            "on {}",
            node.url()
        );
        let path = node
            .query(&format!(
                "SELECT zookeeper_path, replica_name FROM system.replicas \
                 WHERE database = '{db}' AND table = 'flows_local'"
            ))
            .unwrap();
        let (shard, replica) = (
            node.query("SELECT substitution FROM system.macros WHERE macro = 'shard'")
                .unwrap(),
            node.query("SELECT substitution FROM system.macros WHERE macro = 'replica'")
                .unwrap(),
        );
        assert_eq!(
            path.trim(),
            format!(
                "/clickhouse/tables/{}/{db}/flows_local\t{}",
                shard.trim(),
                replica.trim()
            )
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    let (status, stop, task) = spawn_sink(sink, &handle);

    // Phase 1: a healthy cluster.
    let first: Vec<Record> = (0..1000)
        .map(|k| record(k, BASE_NS + k * 1_000_000))
        .collect();
    spool.append(&first).unwrap();
    let mut ids: Vec<String> = first.iter().map(|r| r.id().to_owned()).collect();
    wait_for("phase 1 delivery", Duration::from_secs(60), || {
        status.get().rows_inserted == 1000 && lag(&handle) == 0
    })
    .await;
    for s in 0..shards {
        let n = count(
            c.node(s, 0),
            [
                "egret_cluster.transactions_local",
                "egret_cluster.flows_local",
            ],
            "count()",
        );
        assert!(n > 0, "shard {s} got no records: sharding by invocation");
    }

    // Phase 2: under load, SIGKILL a replica the inserts use (the last
    // shard's first replica: not the node the agent talks to).
    let producer = Producer::start(spool, 1000, 60_000);
    let victim = (shards - 1, if shards == 1 { 1 } else { 0 });
    wait_for("load", Duration::from_secs(30), || {
        producer.appended() >= 500
    })
    .await;
    c.kill(victim.0, victim.1);
    let rows_at_kill = status.get().rows_inserted;
    eprintln!("killed shard {} replica {} (SIGKILL)", victim.0, victim.1);
    wait_for(
        "writes to go on with the replica down",
        Duration::from_secs(60),
        || status.get().rows_inserted >= rows_at_kill + 2000,
    )
    .await;
    // An agent (re)starting now migrates without waiting for the dead
    // node (an ON CLUSTER statement would, past insertTimeout): a current
    // schema needs none.
    ClickHouseSink::new(&cfg)
        .unwrap()
        .migrate()
        .await
        .expect("migrate with a replica down");
    c.node_mut(victim.0, victim.1)
        .start_again()
        .expect("the killed replica restarts");

    // Phase 3: restart a whole shard (both replicas) under load.
    let shard = shards - 1;
    let retries = status.get().retries;
    c.stop_shard(shard);
    let down_at = Instant::now();
    wait_for(
        "inserts to fail while the shard is down",
        Duration::from_secs(60),
        || status.get().retries > retries,
    )
    .await;
    let appended_down = producer.appended();
    wait_for("more records while down", Duration::from_secs(30), || {
        producer.appended() >= appended_down + 1000
    })
    .await;
    assert!(lag(&handle) > 0, "records wait in the spool");
    c.start_shard(shard).expect("the shard restarts");
    eprintln!("shard {shard} was down for {:?}", down_at.elapsed());
    c.wait_healthy().expect("cluster healthy again");
    let (spool, more) = producer.finish();
    ids.extend(more);
    let n = ids.len() as u64;
    wait_for(
        "catch-up after the restart",
        Duration::from_secs(120),
        || {
            let s = status.get();
            s.rows_inserted == n && lag(&handle) == 0
        },
    )
    .await;
    let st = status.get();
    assert_eq!(st.state, SinkState::Connected, "{st:?}");
    assert_eq!((st.dead_lettered, st.dead_letter_overflow), (0, 0));
    eprintln!(
        "MEASURED cluster {shards}x{replicas}: {n} records, {} retries, last error {:?}",
        st.retries, st.last_error
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    drop(spool);

    // Zero loss, zero duplicates: on every replica (each shard's replicas
    // agree, no record is on two shards, the shards add up) ...
    let mut total = 0;
    for s in 0..shards {
        // A replica back from SIGKILL may answer SYSTEM SYNC REPLICA
        // before it has loaded its queue: sync both again until they agree
        // (bounded), rather than comparing one moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let per_replica = loop {
            let mut per_replica = BTreeSet::new();
            for r in 0..replicas {
                let node = c.node(s, r);
                for t in local {
                    node.query(&format!("SYSTEM SYNC REPLICA {db}.{t}"))
                        .unwrap_or_else(|e| panic!("sync shard {s} replica {r}: {e}"));
                }
                let finals = count(
                    node,
                    [
                        "egret_cluster.transactions_local FINAL",
                        "egret_cluster.flows_local FINAL",
                    ],
                    "count()",
                );
                per_replica.insert(finals);
            }
            if per_replica.len() == 1 || std::time::Instant::now() > deadline {
                break per_replica;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert_eq!(
            per_replica.len(),
            1,
            "shard {s}'s replicas differ: {per_replica:?}"
        );
        total += per_replica.first().unwrap();
    }
    assert_eq!(total, n, "the shards hold every record exactly once");

    // ... and through the Distributed table, read once every replica has
    // caught up (a Distributed read may pick the replica back from SIGKILL
    // while it still fetches parts: a stale read, not a lost record).
    let entry = c.node(0, 0);
    assert_eq!(count(entry, dist, "count()"), n, "FINAL: every record once");
    assert_eq!(
        count(
            entry,
            ["egret_cluster.transactions", "egret_cluster.flows"],
            "uniqExact(egret_record_id)"
        ),
        n,
        "distinct record ids"
    );
    let raw = count(
        entry,
        ["egret_cluster.transactions", "egret_cluster.flows"],
        "count()",
    );
    eprintln!("MEASURED cluster: {raw} physical rows for {n} records (re-sent copies collapse under FINAL)");

    // `egret records` reads the cluster (what an operator runs).
    let conf = dir.path().join("egret.yaml");
    std::fs::write(
        &conf,
        format!(
            "store:\n  clickhouse:\n    url: {}\n    database: {db}\n    cluster: {}\n",
            cfg.url,
            c.name()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = std::process::Command::new(egret_bin())
        .arg("--config")
        .arg(&conf)
        .args(["records", "--json"])
        .output()
        .expect("run egret records");
    let records_took = t.elapsed();
    assert!(
        out.status.success(),
        "egret records: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert_eq!(
        lines.len() as u64,
        n,
        "egret records lists each record once"
    );
    let listed: BTreeSet<&str> = lines
        .iter()
        .map(|v| v[sc::RECORD_ID].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(listed, want);
    // One invocation, with the record's attributes as written.
    let out = std::process::Command::new(egret_bin())
        .arg("--config")
        .arg(&conf)
        .args([
            "records",
            "--json",
            "--invocation-id",
            "inv-7",
            "--kind",
            "transaction",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let one: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want_inv7 = (0..ids.len() as i64)
        .filter(|k| k % 64 == 7 && k % 4 != 0)
        .count();
    assert_eq!(one.len(), want_inv7);
    let k: i64 = 7;
    let first = &one[0];
    assert_eq!(first[sc::INVOCATION_ID], "inv-7");
    assert_eq!(first[sc::GEN_AI_USAGE_INPUT_TOKENS], 100 + k);
    assert_eq!(first[sc::START_TIME], BASE_NS + k * 1_000_000);

    eprintln!(
        "TIMING cluster {shards}x{replicas}: start {started:?}, migrate {migrate:?}, \
         egret records ({n} records) {records_took:?}, whole test {:?}",
        t_start.elapsed()
    );
}

/// Retention on the cluster: days older than `retention` are dropped on
/// every replica of every shard by the sink's own pass; the days inside it
/// are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_retention_drops_old_days_everywhere_and_keeps_the_rest() {
    let _serial = SERIAL.lock().await;
    let (shards, replicas) = shape();
    let Some(c) =
        ClickHouseCluster::start_or_skip("clickhouse_cluster_retention", shards, replicas)
    else {
        return;
    };
    let db = "egret_retention";
    let cfg = ClickHouseConfig {
        retention: Some(Duration::from_secs(30 * 86_400)),
        ..cfg(&c, db)
    };
    let now = now_unix_nanos();
    // Days: 45 and 31 days ago (dropped), 29 days ago and today (kept).
    let ages = [45, 31, 29, 0];
    let mut recs = Vec::new();
    for (a, age) in ages.iter().enumerate() {
        for i in 0..200 {
            let k = a as i64 * 1000 + i;
            recs.push(record(k, now - age * DAY_NS - i * 1_000_000));
        }
    }
    let sink = ClickHouseSink::new(&cfg).unwrap();
    sink.migrate().await.unwrap();
    sink.insert(recs.iter()).await.unwrap();

    let days = |node: &bpf_tests::clickhouse_rig::ClickHouseRig| -> Vec<String> {
        for t in ["transactions_local", "flows_local"] {
            node.query(&format!("SYSTEM SYNC REPLICA {db}.{t}"))
                .unwrap();
        }
        node.query(&format!(
            "SELECT DISTINCT toString(partition) FROM system.parts \
             WHERE database = '{db}' AND active ORDER BY 1"
        ))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let day_of = |age: i64| {
        c.node(0, 0)
            .query(&format!(
                "SELECT toString(toDate(toDateTime(intDiv({}, 1000000000), 'UTC')))",
                now - age * DAY_NS
            ))
            .unwrap()
            .trim()
            .to_owned()
    };
    let all_days: Vec<String> = ages.iter().map(|a| day_of(*a)).collect();
    for s in 0..shards {
        for r in 0..replicas {
            assert_eq!(days(c.node(s, r)), all_days, "shard {s} replica {r} before");
        }
    }

    // The sink's loop runs a pass right after its migration.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&spool_cfg(dir.path())).unwrap();
    let handle = spool.handle();
    let (status, stop, task) = spawn_sink(ClickHouseSink::new(&cfg).unwrap(), &handle);
    wait_for("a retention pass", Duration::from_secs(60), || {
        let s = status.get();
        s.retention_last_run_unix_nano.is_some() || s.retention_failures > 0
    })
    .await;
    let st = status.get();
    assert_eq!(
        (st.retention_partitions_dropped, st.retention_failures),
        (4, 0),
        "two old days × two tables: {st:?}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();

    let kept = &all_days[2..];
    for s in 0..shards {
        for r in 0..replicas {
            assert_eq!(days(c.node(s, r)), kept, "shard {s} replica {r} after");
        }
    }
    let entry = c.node(0, 0);
    let left = count(
        entry,
        [
            "egret_retention.transactions FINAL",
            "egret_retention.flows FINAL",
        ],
        "count()",
    );
    assert_eq!(left, 400, "the 29-day-old and today's records are kept");
    let recs = egret::sink::clickhouse::query_records(&cfg, &Filter::default())
        .await
        .unwrap();
    assert_eq!(recs.len(), 400);
    assert!(recs.iter().all(|r| r.start_ns() >= now - 30 * DAY_NS));

    // A pass with nothing to drop drops nothing.
    let sink = ClickHouseSink::new(&cfg).unwrap();
    assert!(sink.enforce_retention_at(now).await.unwrap().is_empty());
}

/// Text that compresses about like prose: words drawn from a few hundred
/// made-up ones (a fixed LCG, so every run writes the same bytes).
fn prose(seed: u64, bytes: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::with_capacity(bytes + 16);
    while out.len() < bytes {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = (x >> 33) % 400;
        let len = 2 + (w % 9) as usize;
        for k in 0..len {
            out.push((b'a' + ((w as usize * 7 + k * 13) % 26) as u8) as char);
        }
        out.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
    }
    out
}

/// A transaction as the proxy writes one for a chat completion: the
/// attribution and GenAI columns plus `body` bytes of captured request and
/// response (a quarter request, the rest response); or a flow.
fn sized_record(i: i64, body: usize) -> Record {
    let inv = format!("inv-{:04}", i % 1000);
    let start = BASE_NS + i * 1_000_000;
    let mut r = if i % 2 == 1 {
        let mut r = Record::new(sc::KIND_FLOW);
        r.set(sc::L4_BYTES_SANDBOX_TX, 1000 + i % 5000);
        r.set(sc::SOCKET_COOKIE, 1_000_000 + i);
        r.set(sc::SERVER_ADDRESS, "api.anthropic.com");
        r.set(sc::PROCESS_PID, 4000 + i % 300);
        r
    } else {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::AGENT_NAME, format!("agent-{}", i % 20));
        r.set(sc::AGENT_NAMESPACE, "team-a");
        r.set(sc::GEN_AI_PROVIDER_NAME, "anthropic");
        r.set(sc::GEN_AI_REQUEST_MODEL, "claude-sonnet-4-5");
        r.set(sc::GEN_AI_RESPONSE_MODEL, "claude-sonnet-4-5-20250929");
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 500 + i % 3000);
        r.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, 50 + i % 700);
        r.set(sc::HTTP_RESPONSE_STATUS_CODE, 200i64);
        r.set(sc::SERVER_ADDRESS, "api.anthropic.com");
        r.set(sc::PROCESS_PID, 4000 + i % 300);
        if body > 0 {
            r.set(sc::REQUEST_BODY, prose(i as u64, body / 4));
            r.set(sc::RESPONSE_BODY, prose(!(i as u64), body - body / 4));
        }
        r
    };
    r.set(sc::INVOCATION_ID, inv);
    r.set(sc::START_TIME, start);
    r.set(sc::END_TIME, start + 800_000_000);
    r
}

/// Sizing figures for docs/operations.md (`--ignored --nocapture`): for one
/// server and for the 2×2 cluster, per record shape (transactions with 0
/// and 4 KiB of captured body, flows; half each), the rate egret's sink
/// sustains spool → ClickHouse (10,000 rows per INSERT), the rate the
/// servers alone sustain for the same rows (`INSERT ... SELECT` through
/// the same table), and the bytes per record on disk after merges
/// (`system.parts`, one replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/operations.md; minutes"]
async fn cluster_sizing() {
    let _serial = SERIAL.lock().await;
    let n: i64 = std::env::var("EGRET_CH_SIZING_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let single = bpf_tests::clickhouse_rig::ClickHouseRig::start().expect("clickhouse-server");
    let cluster = ClickHouseCluster::start(2, 2).expect("cluster");
    for body in [0usize, 4096] {
        for (what, url, name) in [
            ("1 server", single.url(), None),
            (
                "2x2 cluster",
                cluster.node(0, 0).url(),
                Some(cluster.name()),
            ),
        ] {
            let db = format!("sizing_{body}_{}", if name.is_some() { "c" } else { "s" });
            let cfg = ClickHouseConfig {
                url: url.clone(),
                database: db.clone(),
                cluster: name.map(str::to_owned),
                batch_rows: 10_000,
                flush_interval: Duration::from_millis(200),
                insert_timeout: Duration::from_secs(60),
                ..ClickHouseConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(&SpoolConfig {
                segment_bytes: 64 << 20,
                max_bytes: 8 << 30,
                ..spool_cfg(dir.path())
            })
            .unwrap();
            let handle = spool.handle();
            drop(handle.cursor(CURSOR_NAME).unwrap());
            for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
                let recs: Vec<Record> = chunk.iter().map(|i| sized_record(*i, body)).collect();
                spool.append(&recs).unwrap();
            }
            let spool_bytes = spool.stats().bytes_on_disk;
            let sink = ClickHouseSink::new(&cfg).unwrap();
            sink.migrate().await.unwrap();
            let t = Instant::now();
            let (status, stop, task) = spawn_sink(sink, &handle);
            wait_for("delivery", Duration::from_secs(1200), || {
                status.get().rows_inserted == n as u64 && lag(&handle) == 0
            })
            .await;
            let egret_secs = t.elapsed().as_secs_f64();
            stop.cancel();
            task.await.unwrap().unwrap();

            // The servers alone: the same rows again through the same
            // table (synchronous, as egret inserts), into a second database.
            let node = if name.is_some() {
                cluster.node(0, 0)
            } else {
                &single
            };
            let copy = ClickHouseConfig {
                database: format!("{db}_copy"),
                ..cfg.clone()
            };
            ClickHouseSink::new(&copy).unwrap().migrate().await.unwrap();
            let mut server_secs = 0.0;
            for t in ["transactions", "flows"] {
                let cols = node
                    .query(&format!(
                        "SELECT arrayStringConcat(groupArray(name), ', ') FROM system.columns \
                         WHERE database = '{db}' AND table = '{t}' AND default_kind = ''"
                    ))
                    .unwrap();
                let cols = cols.trim();
                let start = Instant::now();
                node.query(&format!(
                    "INSERT INTO {db}_copy.{t} ({cols}) SELECT {cols} FROM {db}.{t} \
                     SETTINGS insert_distributed_sync = 1"
                ))
                .unwrap();
                server_secs += start.elapsed().as_secs_f64();
            }

            // Bytes per record on disk after merges, on one replica of
            // each shard (the other replicas hold the same again).
            let data_nodes: Vec<&bpf_tests::clickhouse_rig::ClickHouseRig> = if name.is_some() {
                (0..cluster.shards()).map(|s| cluster.node(s, 0)).collect()
            } else {
                vec![&single]
            };
            let suffix = if name.is_some() { "_local" } else { "" };
            let (mut rows, mut disk, mut raw) = (0u64, 0u64, 0u64);
            for dn in &data_nodes {
                for t in ["transactions", "flows"] {
                    dn.query(&format!("OPTIMIZE TABLE {db}.{t}{suffix} FINAL"))
                        .unwrap();
                }
                let line = dn
                    .query(&format!(
                        "SELECT sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) \
                         FROM system.parts WHERE database = '{db}' AND active"
                    ))
                    .unwrap();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
                rows += v[0];
                disk += v[1];
                raw += v[2];
            }
            assert_eq!(rows, n as u64, "{what}: rows after merges");
            eprintln!(
                "MEASURED sizing {what}, {n} records (half transactions with {body} B of body, half flows): \
                 egret spool→ClickHouse {:.0} records/s ({egret_secs:.1} s); servers alone (INSERT SELECT) \
                 {:.0} records/s; on disk {:.0} B/record per replica (uncompressed {:.0} B, spool {:.0} B)",
                n as f64 / egret_secs,
                n as f64 / server_secs,
                disk as f64 / n as f64,
                raw as f64 / n as f64,
                spool_bytes as f64 / n as f64,
            );
        }
    }
}
