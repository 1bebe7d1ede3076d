//! The attribution registry across hard crashes: sockets opened before a
//! crash keep their attribution, and a registry that lost its last writes
//! never hands a (slot, generation) the kernel still holds to a new sandbox.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use bpf_tests::*;
use egret::{
    attribution::{Attribution, SandboxSpec},
    record::Record,
    semconv as sc,
};

fn py_client(cg: &SandboxCgroup, port: u16, req: usize, resp: usize, hold: bool) -> Command {
    let mut c = sandboxed(cg, None, "python3");
    c.arg(clients_dir().join("tcp_client.py"))
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(format!("--request-bytes={req}"))
        .arg(format!("--response-bytes={resp}"));
    if hold {
        c.arg("--hold");
    }
    c
}

/// The flow records whose sandbox-side payload was exactly (tx, rx).
fn flows_with_bytes(recs: &[Record], tx: i64, rx: i64) -> Vec<&Record> {
    recs.iter()
        .filter(|r| {
            r.kind() == "flow"
                && r.get_i64(sc::L4_BYTES_SANDBOX_TX) == Some(tx)
                && r.get_i64(sc::L4_BYTES_SANDBOX_RX) == Some(rx)
        })
        .collect()
}

fn spec(id: &str, inv: &str) -> SandboxSpec {
    SandboxSpec {
        cgroup: id.to_owned(),
        netns: None,
        attribution: Attribution {
            invocation_id: inv.to_owned(),
            ..Default::default()
        },
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn kill_during_registration_churn_keeps_old_sockets_on_their_invocation() {
    if !require_privileges("registry churn") {
        return;
    }
    let mut agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let old_id = unique("sb");
    let old_cg = agent.cgroup(&old_id);
    agent.register(&old_id, None, "inv-before-crash");
    let mut old = HeldClient::spawn(py_client(&old_cg, server.port(), 100, 1000, true));
    old.next_report();

    // Registrations (new sandboxes and re-registrations) keep coming while
    // the agent is killed.
    let churn_ids: Vec<String> = (0..4).map(|_| unique("churn")).collect();
    let _churn_cgs: Vec<SandboxCgroup> = churn_ids.iter().map(|id| agent.cgroup(id)).collect();
    let api: PathBuf = agent.api.clone();
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let client = egret::api::Client::new(api.clone());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = &churn_ids[(n % churn_ids.len() as u64) as usize];
                let sp = spec(id, &format!("inv-churn-{n}"));
                if block_on(client.register(id, &sp)).is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::Relaxed) < 50 {
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                panic!("registrations do not go through");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        agent.stop(true);
        stop.store(true, Ordering::Relaxed);
    });

    agent.spawn();
    // State files are private (the state dir keeps the search bit for the
    // world-readable trust bundle).
    assert_eq!(mode(&agent.state_dir), 0o711);
    assert_eq!(mode(&agent.state_dir.join("registry.json")), 0o600);
    assert_eq!(mode(&agent.state_dir.join("spool")), 0o700);

    // New registrations after the restart do not take the old socket's pair.
    for (k, id) in churn_ids.iter().enumerate() {
        agent.register(id, None, &format!("inv-after-{k}"));
    }
    let fresh = unique("sb");
    let fresh_cg = agent.cgroup(&fresh);
    agent.register(&fresh, None, "inv-after-new");
    let out = py_client(&fresh_cg, server.port(), 66, 666, false)
        .output()
        .unwrap();
    assert!(out.status.success());

    old.say("more 50 500");
    old.next_report();
    old.finish();
    let recs = agent.wait_records("the old socket's flow", |r| {
        !flows_with_bytes(r, 150, 1500).is_empty() && !flows_with_bytes(r, 66, 666).is_empty()
    });
    let old_flow = flows_with_bytes(&recs, 150, 1500);
    assert_eq!(old_flow.len(), 1, "{old_flow:?}");
    assert_eq!(old_flow[0].invocation_id(), Some("inv-before-crash"));
    let fresh_flow = flows_with_bytes(&recs, 66, 666);
    assert_eq!(fresh_flow[0].invocation_id(), Some("inv-after-new"));
}

#[test]
fn a_registry_that_lost_writes_never_gives_a_held_pair_to_a_new_sandbox() {
    if !require_privileges("registry lost writes") {
        return;
    }
    let mut agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let file = agent.state_dir.join("registry.json");
    let a = unique("sb");
    let _a_cg = agent.cgroup(&a);
    agent.register(&a, None, "inv-a");
    // The disk after a power loss that ate the writes from here on.
    let snapshot = std::fs::read(&file).unwrap();
    let b = unique("sb");
    let b_cg = agent.cgroup(&b);
    agent.register(&b, None, "inv-b");
    let mut held = HeldClient::spawn(py_client(&b_cg, server.port(), 123, 4567, true));
    held.next_report();
    agent.stop(true);
    std::fs::write(&file, &snapshot).unwrap();

    agent.spawn();
    let c = unique("sb");
    let c_cg = agent.cgroup(&c);
    agent.register(&c, None, "inv-c");
    let out = py_client(&c_cg, server.port(), 77, 777, false)
        .output()
        .unwrap();
    assert!(out.status.success());
    held.finish();
    let recs = agent.wait_records("both flows", |r| {
        !flows_with_bytes(r, 123, 4567).is_empty() && !flows_with_bytes(r, 77, 777).is_empty()
    });
    assert_eq!(
        flows_with_bytes(&recs, 77, 777)[0].invocation_id(),
        Some("inv-c")
    );
    // inv-b is lost with the registry's writes: the old socket is recorded
    // unattributed, never as the new sandbox's.
    let old = flows_with_bytes(&recs, 123, 4567);
    assert_eq!(old.len(), 1);
    assert_ne!(
        old[0].invocation_id(),
        Some("inv-c"),
        "{}",
        old[0].to_json_line()
    );
}
