//! Every transaction's L4 bytes are true: its window on the sandbox
//! connection holds its whole request and whole response, nothing is a
//! silent 0, and on HTTP/1.1 the handshake, the windows and the TLS close
//! add up to the kernel's own count for the socket, byte for byte.
use std::collections::HashMap;

use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

/// TLS 1.3 record overhead (header 5 + content type 1 + AEAD tag 16).
const RECORD: i64 = 22;
/// A TLS 1.3 close_notify alert on the wire.
const CLOSE_NOTIFY: i64 = 24;

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

const SANDBOXES: usize = 6;
const FRESH: usize = 60;
const KEEPALIVE: usize = 2;
const EXCHANGES: usize = 5;

#[test]
fn transaction_windows_are_exact_and_add_up_to_the_flow() {
    if !require_privileges("l4_windows") {
        return;
    }
    let w = World::start("");
    let script = clients_dir().join("window_client.py");
    let invs: Vec<String> = (0..SANDBOXES).map(|_| unique("inv-win-")).collect();
    // All sandboxes at once, in the agent's netns: the connection-end and
    // close paths race each other as they do on a busy node.
    let reports: Vec<Vec<Value>> = std::thread::scope(|s| {
        let handles: Vec<_> = invs
            .iter()
            .map(|inv| {
                let cg = w.sandbox(inv, None);
                let w = &w;
                let script = &script;
                s.spawn(move || {
                    let out = w.run(
                        &cg,
                        std::path::Path::new("/usr/bin/python3"),
                        &[
                            script.to_str().unwrap(),
                            "api.openai.com",
                            &FRESH.to_string(),
                            &KEEPALIVE.to_string(),
                            &EXCHANGES.to_string(),
                        ],
                    );
                    out.lines()
                        .map(|l| serde_json::from_str::<Value>(l).expect("client line"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_inv_txns = FRESH + KEEPALIVE * EXCHANGES;
    let per_inv_flows = FRESH + KEEPALIVE;
    let recs = w.agent.wait_records("every transaction and flow", |r| {
        invs.iter().all(|inv| {
            txns(r, inv).len() >= per_inv_txns
                && flows_of(r, inv)
                    .iter()
                    .filter(|f| f.get_i64(sc::SERVER_PORT) == Some(443))
                    .count()
                    >= per_inv_flows
        })
    });

    let mut checked = 0;
    for (inv, reports) in invs.iter().zip(&reports) {
        assert_eq!(reports.len(), per_inv_txns, "{inv}: client reports");
        let ts = txns(&recs, inv);
        assert_eq!(ts.len(), per_inv_txns, "{inv}: one record per call");
        let by_body: HashMap<i64, &Value> = reports
            .iter()
            .map(|r| (r["body"].as_i64().unwrap(), r))
            .collect();
        let mut by_cookie: HashMap<String, Vec<&Record>> = HashMap::new();
        for t in &ts {
            let line = t.to_json_line();
            assert_eq!(i(t, sc::HTTP_RESPONSE_STATUS_CODE), 200, "{line}");
            let rep = by_body
                .get(&i(t, sc::REQ_BYTES))
                .unwrap_or_else(|| panic!("no client call for {line}"));
            let (req, resp) = (rep["req"].as_i64().unwrap(), rep["resp"].as_i64().unwrap());
            // Never a silent 0: both present, and exactly the request (one
            // TLS record) and the whole response (a few records).
            let tx = i(t, sc::L4_BYTES_SANDBOX_TX);
            let rx = i(t, sc::L4_BYTES_SANDBOX_RX);
            assert_eq!(tx, req + RECORD, "request window: {rep} {line}");
            assert!(
                rx >= resp + RECORD && rx <= resp + 4 * RECORD,
                "response window: {rep} {line}"
            );
            assert!(t.get_bool(sc::L4_COUNTERS_MISSING).is_none(), "{line}");
            by_cookie
                .entry(t.get_str(sc::SOCKET_COOKIE).expect("cookie").to_owned())
                .or_default()
                .push(t);
        }
        assert_eq!(by_cookie.len(), per_inv_flows, "{inv}: connections");
        for f in flows_of(&recs, inv)
            .into_iter()
            .filter(|f| f.get_i64(sc::SERVER_PORT) == Some(443))
        {
            let cookie = f.get_str(sc::SOCKET_COOKIE).unwrap();
            let ts = by_cookie
                .get(cookie)
                .unwrap_or_else(|| panic!("flow without transactions: {}", f.to_json_line()));
            let hs: Vec<&&Record> = ts
                .iter()
                .filter(|t| t.get_i64(sc::L4_HANDSHAKE_BYTES_SANDBOX_TX).is_some())
                .collect();
            assert_eq!(hs.len(), 1, "one transaction carries the handshake");
            let sum = |k: &str| ts.iter().map(|t| i(t, k)).sum::<i64>();
            let tail_tx = i(f, sc::L4_BYTES_SANDBOX_TX)
                - i(hs[0], sc::L4_HANDSHAKE_BYTES_SANDBOX_TX)
                - sum(sc::L4_BYTES_SANDBOX_TX);
            let tail_rx = i(f, sc::L4_BYTES_SANDBOX_RX)
                - i(hs[0], sc::L4_HANDSHAKE_BYTES_SANDBOX_RX)
                - sum(sc::L4_BYTES_SANDBOX_RX);
            assert!(
                [0, CLOSE_NOTIFY].contains(&tail_tx) && [0, CLOSE_NOTIFY].contains(&tail_rx),
                "handshake + windows + close != flow (tail tx {tail_tx}, rx {tail_rx}):\nflow {}\n{}",
                f.to_json_line(),
                ts.iter().map(|t| t.to_json_line()).collect::<Vec<_>>().join("\n")
            );
            checked += 1;
        }
    }
    assert_eq!(checked, SANDBOXES * per_inv_flows);
}

/// HTTP/2 multiplexes streams on one connection: each transaction's window
/// is what the connection carried since the previous cut, and the parts
/// still add up to the kernel's count for the socket. After the last cut
/// only the connection's close remains (GOAWAY frames, close_notify).
#[test]
fn http2_windows_add_up_to_the_flow() {
    if !require_privileges("l4_windows_h2") {
        return;
    }
    let w = World::start("");
    let inv = unique("inv-win-h2-");
    let cg = w.sandbox(&inv, None);
    // One connection: four sequential streams, then three in parallel.
    let urls: Vec<String> = [100, 2000, 30000, 7, 5000, 60000, 1]
        .iter()
        .map(|n| format!("https://api.openai.com/json/{n}"))
        .collect();
    let mut args = vec![
        "--http2",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
    ];
    args.extend(urls[..4].iter().map(String::as_str));
    w.curl(&cg, &args);
    let mut args = vec![
        "--http2",
        "--parallel",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
    ];
    args.extend(urls[4..].iter().map(String::as_str));
    w.curl(&cg, &args);
    let recs = w.agent.wait_records("h2 transactions and flows", |r| {
        txns(r, &inv).len() >= 7
            && flows_of(r, &inv)
                .iter()
                .filter(|f| f.get_i64(sc::SERVER_PORT) == Some(443))
                .count()
                >= 2
    });
    let ts = txns(&recs, &inv);
    assert!(ts
        .iter()
        .all(|t| t.get_str(sc::NETWORK_PROTOCOL_VERSION) == Some("2")));
    let mut flows = 0;
    for f in flows_of(&recs, &inv)
        .into_iter()
        .filter(|f| f.get_i64(sc::SERVER_PORT) == Some(443))
    {
        let cookie = f.get_str(sc::SOCKET_COOKIE).unwrap();
        let mine: Vec<&&Record> = ts
            .iter()
            .filter(|t| t.get_str(sc::SOCKET_COOKIE) == Some(cookie))
            .collect();
        assert!(!mine.is_empty());
        let hs = mine
            .iter()
            .find(|t| t.get_i64(sc::L4_HANDSHAKE_BYTES_SANDBOX_TX).is_some())
            .expect("the handshake on one transaction");
        let sum = |k: &str| mine.iter().map(|t| i(t, k)).sum::<i64>();
        for (flow_key, hs_key, win_key) in [
            (
                sc::L4_BYTES_SANDBOX_TX,
                sc::L4_HANDSHAKE_BYTES_SANDBOX_TX,
                sc::L4_BYTES_SANDBOX_TX,
            ),
            (
                sc::L4_BYTES_SANDBOX_RX,
                sc::L4_HANDSHAKE_BYTES_SANDBOX_RX,
                sc::L4_BYTES_SANDBOX_RX,
            ),
        ] {
            let tail = i(f, flow_key) - i(hs, hs_key) - sum(win_key);
            // The close: GOAWAY (17 bytes) and close_notify (24), each a
            // TLS record, in either order or not at all.
            assert!(
                (0..=2 * (17 + RECORD) + CLOSE_NOTIFY).contains(&tail),
                "{flow_key}: handshake + windows + close != flow (close {tail})\nflow {}\n{}",
                f.to_json_line(),
                mine.iter()
                    .map(|t| t.to_json_line())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Sequential streams: every window holds at least its own response.
        if mine.len() == 4 {
            for t in &mine {
                assert!(
                    i(t, sc::L4_BYTES_SANDBOX_RX) >= i(t, sc::RESP_BYTES),
                    "{}",
                    t.to_json_line()
                );
            }
        }
        flows += 1;
    }
    assert_eq!(flows, 2);
}
