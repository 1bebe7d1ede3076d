//! L4 flows: the kernel's close events become flow records.
//!
//! The ring buffer is polled through tokio's `AsyncFd`. For each event the
//! socket's per-CPU payload counters are summed and removed, the socket's
//! (slot, generation) is resolved to the attribution it was opened under, and
//! one flow record is sent on to the recorder.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use egret_common::{CloseEvent, SkbCounters, SockTag, AF_INET, TAG_ATTRIBUTED, TAG_REDIRECTED};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc::{self, error::SendTimeoutError},
};

use crate::{
    attribution::Registry,
    bpf::Kernel,
    record::RecordStats,
    record::{now_unix_nanos, Record},
    semconv as sc,
};

/// Original destination of a tagged socket.
pub fn orig_dst(tag: &SockTag) -> std::net::SocketAddr {
    let ip = if tag.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(tag.orig_addr[0])))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in tag.orig_addr.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(b);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    };
    std::net::SocketAddr::new(ip, tag.orig_port)
}

/// Converts between `bpf_ktime_get_ns` (monotonic) and wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    offset_ns: i64,
}

impl Clock {
    pub fn new() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        Clock {
            offset_ns: now_unix_nanos() - mono,
        }
    }
    pub fn to_unix(self, ktime_ns: u64) -> i64 {
        i64::try_from(ktime_ns).unwrap_or(i64::MAX) + self.offset_ns
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Builds the flow record for one close event.
/// Flow records written without the kernel's wire counters
/// (`egret.l4.counters_missing`), for `/metrics`.
pub static COUNTERS_MISSING: AtomicU64 = AtomicU64::new(0);

/// The flow record of a closed socket; `counters`: its packet counters,
/// handed over by the kernel maps (None when the kernel had none).
pub fn flow_record(
    ev: &CloseEvent,
    counters: Option<SkbCounters>,
    registry: &Registry,
    clock: Clock,
) -> Record {
    let tag = &ev.tag;
    let mut rec = Record::new(sc::KIND_FLOW);
    rec.set(sc::COMPONENT, sc::COMPONENT_FLOW);
    rec.set(sc::START_TIME, clock.to_unix(tag.start_ns));
    rec.set(sc::END_TIME, clock.to_unix(ev.end_ns));
    rec.set(
        sc::DURATION_MS,
        ev.end_ns.saturating_sub(tag.start_ns) as f64 / 1e6,
    );
    if tag.flags & TAG_ATTRIBUTED != 0 {
        match registry.resolve(tag.attr) {
            Some(a) => a.apply(&mut rec),
            None => crate::limited!(
                UnknownAttribution,
                warn,
                slot = tag.attr.slot,
                generation = tag.attr.generation,
                "flow from an attribution the registry no longer knows"
            ),
        }
        if let Some(sb) = registry.sandbox_by_slot(tag.attr.slot) {
            rec.set(sc::SANDBOX_ID, sb.id);
        }
        rec.set(sc::ATTRIBUTION_SOURCE, "kernel");
    }
    let dst = orig_dst(tag);
    rec.set(sc::SERVER_ADDRESS, dst.ip().to_string());
    rec.set(sc::SERVER_PORT, dst.port());
    rec.set(sc::NETWORK_TRANSPORT, "tcp");
    rec.set(
        sc::NETWORK_TYPE,
        if dst.is_ipv4() { "ipv4" } else { "ipv6" },
    );
    rec.set(sc::PROCESS_PID, tag.pid_tgid >> 32);
    rec.set(sc::SOCKET_COOKIE, ev.cookie.to_string());
    rec.set(sc::NETNS_COOKIE, tag.netns_cookie.to_string());
    rec.set(sc::CGROUP_ID, tag.cgroup_id.to_string());
    rec.set(sc::L4_REDIRECTED, tag.flags & TAG_REDIRECTED != 0);
    // Delivered payload, from the kernel's TCP accounting at close: what the
    // peer acknowledged and what the socket received in order (retransmitted
    // or duplicate segments are not counted twice). Wire payload and
    // segments come from cgroup_skb (retransmissions included).
    let fin_end_seq = counters
        .filter(|c| c.rx_fin > 0)
        .map(|c| c.rx_fin_end_seq as u32);
    rec.set(sc::L4_BYTES_SANDBOX_TX, ev.payload_acked());
    rec.set(sc::L4_BYTES_SANDBOX_RX, ev.payload_received(fin_end_seq));
    rec.set(sc::L4_TCP_BYTES_ACKED, ev.bytes_acked);
    rec.set(sc::L4_TCP_BYTES_RECEIVED, ev.bytes_received);
    match counters {
        Some(c) => {
            rec.set(sc::L4_WIRE_BYTES_SANDBOX_TX, c.tx_bytes);
            rec.set(sc::L4_WIRE_BYTES_SANDBOX_RX, c.rx_bytes);
            rec.set(sc::L4_SEGS_SANDBOX_TX, c.tx_segs);
            rec.set(sc::L4_SEGS_SANDBOX_RX, c.rx_segs);
        }
        None => {
            // No counters (opened before the programs were attached, or
            // evicted): unknown is not 0 — the wire counters are left out,
            // and said so.
            rec.set(sc::L4_COUNTERS_MISSING, true);
            COUNTERS_MISSING.fetch_add(1, Ordering::Relaxed);
        }
    }
    rec
}

/// Longest a flow record waits for room in the records channel (the
/// recorder is behind) before it is dropped and counted. Meanwhile the
/// kernel's ring buffer keeps what it can (its overflow is counted there).
pub const CLOSE_SEND_WAIT: Duration = Duration::from_secs(1);

/// Hands flow records to the recorder, waiting up to `wait` for room for
/// each. A record that finds no room in time is dropped and counted in
/// `dropped`; once the channel is closed the record and every one still
/// in `records` are counted and false is returned. Close events are gone
/// from the ring buffer once read: none may be lost without a count.
pub async fn deliver(
    mut records: impl ExactSizeIterator<Item = Record>,
    out: &mpsc::Sender<Record>,
    wait: Duration,
    dropped: &AtomicU64,
    shares: &crate::record::QueueShares,
) -> bool {
    while let Some(rec) = records.next() {
        // The sandbox's share of the queue (counted there when refused).
        if !shares.admit(&rec) {
            continue;
        }
        match out.send_timeout(rec, wait).await {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(rec)) => {
                shares.release(&rec);
                let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    dropped = n,
                    "records queue full for {wait:?}: flow record dropped (counted in \
                     egret_records_dropped_total{{stage=\"flow\"}})"
                );
            }
            Err(SendTimeoutError::Closed(rec)) => {
                shares.release(&rec);
                let lost = 1 + records.len() as u64;
                dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    dropped = lost,
                    "records queue closed: flow records dropped (counted in \
                     egret_records_dropped_total{{stage=\"flow\"}})"
                );
                return false;
            }
        }
    }
    true
}

/// Polls the close ring buffer until the channel closes, or until `stop`
/// fires: then what the ring holds is read one last time and sent on.
/// Flow records that cannot be handed on are counted in
/// `stats.flow_dropped` ([`deliver`]).
pub async fn run_close_loop(
    kernel: Arc<Kernel>,
    registry: Arc<Registry>,
    out: mpsc::Sender<Record>,
    stats: Arc<RecordStats>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let clock = Clock::new();
    let ring = kernel
        .closes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| std::io::Error::other("close ring buffer already taken"))?;
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as
    // long as it is registered.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut batch = Vec::new();
    // Close events read per sandbox (wrapping), continued across restarts.
    let mut read = kernel.maps.closes_read();
    loop {
        let last = tokio::select! {
            guard = afd.readable_mut() => {
                let mut guard = guard?;
                read_events(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                false
            }
            _ = stop.cancelled() => {
                read_events(afd.get_mut(), &mut batch);
                true
            }
        };
        account_read(&batch, &mut read, &kernel.maps);
        let records = batch
            .drain(..)
            .map(|ev| flow_record(&ev, kernel.maps.take_counters(ev.cookie), &registry, clock));
        if !deliver(
            records,
            &out,
            CLOSE_SEND_WAIT,
            &stats.flow_dropped,
            &stats.queue,
        )
        .await
        {
            return Ok(());
        }
        if last {
            return Ok(());
        }
    }
}

/// Tells the kernel the sandboxes' events in `batch` were read (one map
/// update per sandbox in the batch), freeing their ring-buffer shares.
fn account_read(
    batch: &[CloseEvent],
    read: &mut std::collections::HashMap<u64, u32>,
    maps: &crate::bpf::KernelMaps,
) {
    if batch.is_empty() {
        return;
    }
    let touched = count_read(batch, read);
    maps.set_closes_read(&touched);
}

/// Adds `batch`'s events to the per-sandbox read counts; returns the new
/// counts of the sandboxes it touched.
fn count_read(
    batch: &[CloseEvent],
    read: &mut std::collections::HashMap<u64, u32>,
) -> Vec<(u64, u32)> {
    let mut touched: Vec<u64> = Vec::new();
    for ev in batch {
        let n = read.entry(ev.tag.cgroup_id).or_default();
        *n = n.wrapping_add(1);
        if !touched.contains(&ev.tag.cgroup_id) {
            touched.push(ev.tag.cgroup_id);
        }
    }
    touched.into_iter().map(|cg| (cg, read[&cg])).collect()
}

fn read_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, batch: &mut Vec<CloseEvent>) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<CloseEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a CloseEvent; read it unaligned.
        batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CloseEvent>()) });
    }
}

/// The flow stage's admin report ([`COUNTERS_MISSING`]).
#[derive(Debug, Default)]
pub struct FlowReport;

impl crate::admin::Report for FlowReport {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        m.counter(
            "egret_flow_counters_missing",
            "Flow records written without the kernel's wire counters (egret.l4.counters_missing)",
            &[(vec![], COUNTERS_MISSING.load(Ordering::Relaxed))],
        )
    }

    fn status(&self, _: &mut crate::admin::Status) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_event() -> CloseEvent {
        CloseEvent {
            cookie: 42,
            end_ns: 2_000,
            bytes_acked: 1 + 150,
            bytes_received: 1500,
            old_state: 1,
            tag: SockTag {
                start_ns: 1_000,
                family: AF_INET,
                orig_port: 443,
                ..SockTag::default()
            },
            ..CloseEvent::default()
        }
    }

    #[test]
    fn the_peers_fin_is_taken_off_received_bytes_only_when_tcp_accepted_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().to_owned(), dir.path().join("registry.json")).unwrap();
        let counters = |fin_end: Option<u32>| SkbCounters {
            rx_bytes: 1500,
            rx_segs: 2,
            rx_fin: u64::from(fin_end.is_some()),
            rx_fin_end_seq: fin_end.map_or(0, u64::from),
            ..SkbCounters::default()
        };
        let rx = |bytes_received, rcv_nxt, fin_end| {
            let ev = CloseEvent {
                bytes_received,
                rcv_nxt,
                ..close_event()
            };
            flow_record(&ev, Some(counters(fin_end)), &reg, Clock::new())
                .get_i64(sc::L4_BYTES_SANDBOX_RX)
        };
        // FIN accepted: bytes_received counted it in sequence space.
        assert_eq!(rx(1501, 9001, Some(9001)), Some(1500));
        // The hook saw the FIN, the socket closed before TCP processed it
        // (rcv_nxt stopped one short): every received byte is payload.
        assert_eq!(rx(1500, 9000, Some(9001)), Some(1500));
        // No FIN from the peer at all.
        assert_eq!(rx(1500, 9000, None), Some(1500));
        // Sequence numbers wrap.
        assert_eq!(rx(1501, 4, Some(4)), Some(1500));
    }

    #[test]
    fn read_counts_per_sandbox_wrap_and_report_each_sandbox_once() {
        let ev = |cg| CloseEvent {
            tag: SockTag {
                cgroup_id: cg,
                ..SockTag::default()
            },
            ..CloseEvent::default()
        };
        let mut read = std::collections::HashMap::from([(7u64, u32::MAX)]);
        let mut t = count_read(&[ev(7), ev(9), ev(7)], &mut read);
        t.sort();
        assert_eq!(t, [(7, 1), (9, 1)], "wrapping, one entry per sandbox");
        // The kernel's check with those counts.
        let share = egret_common::SandboxShare {
            closes_out: 1,
            ..Default::default()
        };
        assert!(share.may_queue_close(1, 5));
        let full = egret_common::SandboxShare {
            closes_out: 6,
            ..Default::default()
        };
        assert!(!full.may_queue_close(1, 5));
        assert!(full.may_queue_close(1, 0), "no quota");
        // Out behind read (an evicted, remade entry): never refuses.
        let behind = egret_common::SandboxShare::default();
        assert!(behind.may_queue_close(100, 5));
    }

    #[test]
    fn missing_counters_are_left_out_and_flagged_never_zero() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().to_owned(), dir.path().join("registry.json")).unwrap();
        let before = COUNTERS_MISSING.load(Ordering::Relaxed);
        let r = flow_record(&close_event(), None, &reg, Clock::new());
        assert_eq!(r.get_bool(sc::L4_COUNTERS_MISSING), Some(true));
        for k in [
            sc::L4_WIRE_BYTES_SANDBOX_TX,
            sc::L4_WIRE_BYTES_SANDBOX_RX,
            sc::L4_SEGS_SANDBOX_TX,
            sc::L4_SEGS_SANDBOX_RX,
        ] {
            assert_eq!(r.get_i64(k), None, "{k} written without a counter");
        }
        // The kernel's TCP counters are still there (they come with the
        // close event, not from the counters map).
        assert_eq!(r.get_i64(sc::L4_BYTES_SANDBOX_TX), Some(150));
        assert_eq!(r.get_i64(sc::L4_BYTES_SANDBOX_RX), Some(1500));
        assert!(COUNTERS_MISSING.load(Ordering::Relaxed) > before);
        let c = SkbCounters {
            tx_bytes: 150,
            rx_bytes: 1500,
            tx_segs: 1,
            rx_segs: 2,
            rx_fin: 0,
            rx_fin_end_seq: 0,
        };
        let r = flow_record(&close_event(), Some(c), &reg, Clock::new());
        assert_eq!(r.get_bool(sc::L4_COUNTERS_MISSING), None);
        assert_eq!(r.get_i64(sc::L4_WIRE_BYTES_SANDBOX_RX), Some(1500));
    }

    fn shares() -> crate::record::QueueShares {
        crate::record::QueueShares::new(usize::MAX)
    }

    fn recs(n: usize) -> Vec<Record> {
        (0..n).map(|_| Record::new(sc::KIND_FLOW)).collect()
    }

    #[tokio::test]
    async fn flow_records_that_find_no_room_are_counted() {
        let (tx, mut rx) = mpsc::channel(2);
        let dropped = AtomicU64::new(0);
        let wait = Duration::from_millis(20);
        // Room for two: the other three wait, then are dropped and counted.
        assert!(deliver(recs(5).into_iter(), &tx, wait, &dropped, &shares()).await);
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
        // A recorder that catches up within the wait loses nothing.
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        assert!(
            deliver(
                recs(50).into_iter(),
                &tx,
                Duration::from_secs(10),
                &dropped,
                &shares()
            )
            .await
        );
        drop(tx);
        assert_eq!(reader.await.unwrap(), 50);
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn flow_records_for_a_closed_channel_are_counted() {
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        let dropped = AtomicU64::new(0);
        assert!(
            !deliver(
                recs(7).into_iter(),
                &tx,
                CLOSE_SEND_WAIT,
                &dropped,
                &shares()
            )
            .await
        );
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            7,
            "every record read is counted"
        );
    }
}
