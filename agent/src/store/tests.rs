//! The spool's behaviour end to end: writer, cursors, reader, recovery.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::cursor::CURSOR_DIR;
use super::segment::{list_segments, segment_path};
use super::writer::LOCK_FILE;
use super::*;
use crate::config::SpoolConfig;
use crate::record::Record;
use crate::semconv as sc;

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        segment_bytes: 64 << 20,
        ..SpoolConfig::default()
    }
}

fn rec(i: i64) -> Record {
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(sc::INVOCATION_ID, "inv-test");
    r.set(sc::START_TIME, i);
    r.set(sc::URL_PATH, format!("/v1/messages/{i}"));
    r
}

fn recs(range: std::ops::Range<i64>) -> Vec<Record> {
    range.map(rec).collect()
}

fn starts(dir: &Path) -> Vec<i64> {
    read_records(dir)
        .unwrap()
        .map(|r| r.unwrap().start_ns())
        .collect()
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_path(dir, *list_segments(dir).unwrap().last().unwrap())
}

#[test]
fn round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    let batch = recs(0..100);
    let out = spool.append(&batch).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            written: 100,
            dropped: 0
        }
    );
    let back: Vec<Record> = read_records(tmp.path())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, batch);
    let st = spool.stats();
    assert_eq!(st.records_written, 100);
    assert_eq!(st.segments, 1);
    assert_eq!(
        st.bytes_on_disk,
        fs::metadata(last_segment(tmp.path())).unwrap().len()
    );
}

#[test]
fn spool_files_are_0600_in_0700_dirs_also_when_left_wider() {
    use crate::statefile::tests::mode_of;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    {
        let mut spool = Spool::open(&cfg(&dir)).unwrap();
        spool.append(&recs(0..10)).unwrap();
        let mut cur = spool.cursor("sink").unwrap();
        let b = cur.next_batch(10).unwrap();
        cur.commit(b.last().unwrap().0).unwrap();
        let cursor_file = dir.join(CURSOR_DIR).join("sink");
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join(CURSOR_DIR)), 0o700);
        assert_eq!(mode_of(&last_segment(&dir)), 0o600);
        assert_eq!(mode_of(&dir.join(LOCK_FILE)), 0o600);
        assert_eq!(mode_of(&cursor_file), 0o600);
    }
    // As an older version left them: world-readable.
    let wide = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    wide(&dir, 0o755);
    wide(&dir.join(CURSOR_DIR), 0o755);
    wide(&last_segment(&dir), 0o644);
    wide(&dir.join(CURSOR_DIR).join("sink"), 0o644);
    let _spool = Spool::open(&cfg(&dir)).unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&dir.join(CURSOR_DIR)), 0o700);
    assert_eq!(mode_of(&last_segment(&dir)), 0o600);
    assert_eq!(mode_of(&dir.join(CURSOR_DIR).join("sink")), 0o600);
}

#[test]
fn second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _a = Spool::open(&cfg(tmp.path())).unwrap();
    assert!(matches!(
        Spool::open(&cfg(tmp.path())),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn torn_tail_partial_frame_is_truncated_and_appends_resume() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
        spool.append(&recs(0..10)).unwrap();
    }
    let seg = last_segment(tmp.path());
    let good = fs::metadata(&seg).unwrap().len();
    // Simulate kill -9 mid-write: half of a new frame hits the disk.
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    spool.append(&recs(10..11)).unwrap();
    drop(spool);
    let full = fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(good + (full - good) / 2).unwrap();
    drop(f);
    // Readers stop cleanly at the torn tail.
    assert_eq!(starts(tmp.path()), (0..10).collect::<Vec<_>>());

    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good);
    spool.append(&recs(20..25)).unwrap();
    let expect: Vec<i64> = (0..10).chain(20..25).collect();
    assert_eq!(starts(tmp.path()), expect);
}

#[test]
fn torn_tail_bad_crc_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let good;
    {
        let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
        spool.append(&recs(0..5)).unwrap();
        good = spool.active_len;
        spool.append(&recs(5..6)).unwrap();
    }
    let seg = last_segment(tmp.path());
    // Flip a crc byte of the last frame.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, good + 4).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, good + 4).unwrap();
    drop(f);
    assert_eq!(starts(tmp.path()), (0..5).collect::<Vec<_>>());
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good);
    spool.append(&recs(6..7)).unwrap();
    assert_eq!(starts(tmp.path()), vec![0, 1, 2, 3, 4, 6]);
}

#[test]
fn torn_segment_header_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
        spool.append(&recs(0..3)).unwrap();
    }
    // A crash right after creating the next segment, before its header.
    fs::write(segment_path(tmp.path(), 2), &SEGMENT_MAGIC[..3]).unwrap();
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    spool.append(&recs(3..4)).unwrap();
    assert_eq!(starts(tmp.path()), vec![0, 1, 2, 3]);
    // A foreign file is refused, not clobbered.
    drop(spool);
    fs::write(segment_path(tmp.path(), 3), b"not a spool segment").unwrap();
    assert!(matches!(
        Spool::open(&cfg(tmp.path())),
        Err(StoreError::BadSegment(_))
    ));
}

#[test]
fn rotation_spreads_over_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        segment_bytes: 4096,
        ..cfg(tmp.path())
    };
    let mut spool = Spool::open(&c).unwrap();
    for i in 0..100 {
        spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
    }
    let st = spool.stats();
    assert!(st.segments > 10, "{st:?}");
    assert_eq!(starts(tmp.path()), (0..1000).collect::<Vec<_>>());
    // Every sealed segment is about segment_bytes (one batch may overshoot).
    let ids = list_segments(tmp.path()).unwrap();
    for id in &ids[..ids.len() - 1] {
        let len = fs::metadata(segment_path(tmp.path(), *id)).unwrap().len();
        assert!((4096..4096 + 2048).contains(&len), "segment {id}: {len}");
    }
}

#[test]
fn retention_without_cursor_deletes_oldest() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        dir: tmp.path().to_owned(),
        max_bytes: 32 << 10,
        segment_bytes: 4 << 10,
        ..SpoolConfig::default()
    };
    let mut spool = Spool::open(&c).unwrap();
    for i in 0..200 {
        let out = spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
        assert_eq!(out.dropped, 0);
    }
    let st = spool.stats();
    assert!(st.bytes_on_disk <= c.max_bytes, "{st:?}");
    assert!(st.segments_deleted > 0);
    assert_eq!(st.records_dropped, 0);
    let got = starts(tmp.path());
    // The newest records are kept, contiguous up to the last one.
    assert_eq!(got.last(), Some(&1999));
    assert!(got.len() > 100 && got.len() < 2000, "{}", got.len());
    let first = got[0];
    assert_eq!(got, (first..2000).collect::<Vec<_>>());
}

#[test]
fn limit_with_cursor_drops_new_records_and_keeps_old() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        dir: tmp.path().to_owned(),
        max_bytes: 32 << 10,
        segment_bytes: 4 << 10,
        ..SpoolConfig::default()
    };
    let mut spool = Spool::open(&c).unwrap();
    let mut cursor = spool.cursor("clickhouse").unwrap();
    let (mut written, mut dropped) = (0, 0);
    for i in 0..200 {
        let out = spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
        written += out.written;
        dropped += out.dropped;
        // A partly kept batch keeps its head.
        assert_eq!(
            spool.written_indices(&out),
            (0..out.written).collect::<Vec<_>>()
        );
    }
    assert!(dropped > 0 && written > 0);
    assert_eq!(written + dropped, 2000);
    let st = spool.stats();
    assert_eq!(st.records_dropped, dropped as u64);
    assert!(st.bytes_on_disk <= c.max_bytes);
    assert_eq!(st.segments_deleted, 0);
    // The oldest (unacknowledged) data is intact, in order.
    let got = starts(tmp.path());
    assert_eq!(got, (0..written as i64).collect::<Vec<_>>());

    // Once the sink catches up, space is freed and appends succeed again.
    loop {
        let batch = cursor.next_batch(100).unwrap();
        let Some((pos, _)) = batch.last() else { break };
        cursor.commit(*pos).unwrap();
    }
    assert!(spool.stats().bytes_on_disk < 8 << 10);
    let out = spool.append(&recs(5000..5010)).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            written: 10,
            dropped: 0
        }
    );
    let batch = cursor.next_batch(100).unwrap();
    assert_eq!(
        batch.iter().map(|(_, r)| r.start_ns()).collect::<Vec<_>>(),
        (5000..5010).collect::<Vec<_>>()
    );
}

#[test]
fn oversize_record_is_dropped_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    let mut big = rec(1);
    big.set(sc::REQUEST_BODY, "x".repeat(MAX_FRAME_PAYLOAD + 1));
    let out = spool.append(&[rec(0), big, rec(2)]).unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            written: 2,
            dropped: 1
        }
    );
    assert_eq!(starts(tmp.path()), vec![0, 2]);
    // The caller learns which of its records are the durable ones.
    assert_eq!(spool.written_indices(&out), &[0, 2]);
}

#[test]
fn cursor_reads_across_segments_and_resumes_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        segment_bytes: 2048,
        ..cfg(tmp.path())
    };
    {
        let mut spool = Spool::open(&c).unwrap();
        let mut cur = spool.cursor("ch").unwrap();
        assert!(matches!(spool.cursor("ch"), Err(StoreError::CursorBusy(_))));
        for i in 0..30 {
            spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
        }
        let b = cur.next_batch(120).unwrap();
        assert_eq!(b.len(), 120);
        assert_eq!(b[119].1.start_ns(), 119);
        cur.commit(b[99].0).unwrap(); // acknowledged 0..100 only
                                      // Read-but-uncommitted records (100..120) must come back after restart.
        assert!(spool.stats().segments_deleted > 0);
    }
    let mut spool = Spool::open(&c).unwrap();
    let mut cur = spool.cursor("ch").unwrap();
    spool.append(&recs(300..310)).unwrap();
    let mut got = Vec::new();
    loop {
        let b = cur.next_batch(64).unwrap();
        let Some((pos, _)) = b.last() else { break };
        let pos = *pos;
        got.extend(b.into_iter().map(|(_, r)| r.start_ns()));
        cur.commit(pos).unwrap();
    }
    assert_eq!(got, (100..310).collect::<Vec<_>>());
    let st = spool.stats();
    assert_eq!(st.cursors.len(), 1);
    assert_eq!(st.cursors[0].lag_bytes, 0);
    assert_eq!(st.segments, 1, "{st:?}");
    // Rewind re-reads from the committed position.
    spool.append(&recs(400..402)).unwrap();
    assert_eq!(cur.next_batch(10).unwrap().len(), 2);
    cur.rewind();
    assert_eq!(cur.next_batch(10).unwrap().len(), 2);
}

#[test]
fn cursor_on_another_thread_sees_only_durable_records() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        segment_bytes: 8192,
        ..cfg(tmp.path())
    };
    let mut spool = Spool::open(&c).unwrap();
    let mut cur = spool.cursor("ch").unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while got.len() < 5000 && std::time::Instant::now() < deadline {
            let b = cur.next_batch(333).unwrap();
            if let Some((pos, _)) = b.last() {
                cur.commit(*pos).unwrap();
            }
            got.extend(b.into_iter().map(|(_, r)| r.start_ns()));
        }
        got
    });
    for i in 0..500 {
        spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
    }
    let got = reader.join().unwrap();
    assert_eq!(got, (0..5000).collect::<Vec<_>>());
}

#[test]
fn remove_cursor_unpins() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SpoolConfig {
        segment_bytes: 2048,
        ..cfg(tmp.path())
    };
    let mut spool = Spool::open(&c).unwrap();
    drop(spool.cursor("old").unwrap());
    let mut cur = spool.cursor("ch").unwrap();
    for i in 0..20 {
        spool.append(&recs(i * 10..i * 10 + 10)).unwrap();
    }
    let b = cur.next_batch(1000).unwrap();
    cur.commit(b.last().unwrap().0).unwrap();
    // "old" still pins everything.
    assert!(spool.stats().segments > 3);
    spool.handle().remove_cursor("old").unwrap();
    assert_eq!(spool.stats().segments, 1);
    assert!(!tmp.path().join(CURSOR_DIR).join("old").exists());
    assert!(matches!(
        spool.cursor("../x"),
        Err(StoreError::InvalidCursorName(_))
    ));
}

/// Why the full-disk test could not set up its file system.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
struct SetupError {
    step: &'static str,
    #[source]
    source: nix::Error,
}

/// A real full disk: a 256 KiB tmpfs mounted in a private mount namespace
/// of a helper thread (root only; skipped otherwise).
#[test]
fn full_disk_is_an_error_without_corruption_and_recovers() {
    use nix::mount::{mount, MsFlags};
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().to_owned();
    let res = std::thread::spawn(move || -> Result<(), SetupError> {
        let step = |step| move |source| SetupError { step, source };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(step("unshare(CLONE_NEWNS)"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(step("make-rprivate"))?;
        mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=256k"),
        )
        .map_err(step("mount tmpfs"))?;
        full_disk_scenario(&mnt);
        Ok(())
    })
    .join();
    match res {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            assert!(
                std::env::var_os("CI").is_none() || !nix::unistd::geteuid().is_root(),
                "full-disk test could not set up its tmpfs as root: {why}"
            );
            eprintln!("skipping full-disk test: {why}");
        }
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn full_disk_scenario(mnt: &Path) {
    let dir = mnt.join("spool");
    let c = cfg(&dir);
    let mut spool = Spool::open(&c).unwrap();
    let mut cur = spool.cursor("ch").unwrap();
    spool.append(&recs(0..20)).unwrap();
    let seg = last_segment(&dir);
    let len_before = fs::metadata(&seg).unwrap().len();

    // Fill the file system.
    let filler_path = mnt.join("filler");
    let mut filler = File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    let mut batch = recs(100..140);
    for r in &mut batch {
        r.set(sc::RESPONSE_BODY, "y".repeat(1000));
    }
    let err = spool.append(&batch).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    let st = spool.stats();
    assert_eq!(st.io_errors, 1);
    assert_eq!(st.records_dropped, 40);
    assert_eq!(st.records_written, 20);
    // The partial write was truncated back: nothing torn, nothing lost.
    assert_eq!(fs::metadata(&seg).unwrap().len(), len_before);
    assert_eq!(starts(&dir), (0..20).collect::<Vec<_>>());
    let b = cur.next_batch(100).unwrap();
    assert_eq!(b.len(), 20);

    // Space returns: appends work again, in the same spool.
    fs::remove_file(&filler_path).unwrap();
    let out = spool.append(&batch).unwrap();
    assert_eq!(out.written, 40);
    assert_eq!(starts(&dir), (0..20).chain(100..140).collect::<Vec<_>>());
    // And a restart finds a clean spool.
    drop(cur);
    drop(spool);
    let spool = Spool::open(&c).unwrap();
    assert_eq!(
        spool.stats().bytes_on_disk,
        fs::metadata(&seg).unwrap().len()
    );
    assert_eq!(starts(&dir).len(), 60);
}

/// A segment as agents before the binary encoding wrote it: the magic,
/// then frames whose payload is the record's JSON.
fn write_json_segment(dir: &Path, id: u64, records: &[Record]) {
    let mut data = SEGMENT_MAGIC.to_vec();
    for r in records {
        let payload = serde_json::to_vec(r).unwrap();
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
    }
    fs::create_dir_all(dir).unwrap();
    fs::write(segment_path(dir, id), data).unwrap();
}

#[test]
fn an_upgraded_agent_reads_the_json_frames_of_an_old_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let mut old = recs(0..5);
    // Bodies as the proxy keeps them: JSON text to escape, and base64 of
    // bytes that were not UTF-8 with its flag.
    old[1].set(sc::REQUEST_BODY, "{\"q\":\"\\\"\u{e9}\n\"}");
    old[2].set(sc::RESPONSE_BODY, "//4AgA==");
    old[2].set(sc::RESPONSE_BODY_B64, true);
    write_json_segment(tmp.path(), 1, &old);
    let mut spool = Spool::open(&cfg(tmp.path())).unwrap();
    let mut cur = spool.cursor("ch").unwrap();
    let new = recs(5..8);
    spool.append(&new).unwrap();
    let all: Vec<Record> = old.iter().chain(&new).cloned().collect();
    // The old frames survived tail recovery, and both kinds read back.
    let back: Vec<Record> = read_records(tmp.path())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, all);
    let got: Vec<Record> = cur
        .next_batch(100)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(got, all);
    assert_eq!(spool.stats().corrupt_frames, 0);
    // The first five frames are JSON, the appended ones binary.
    let seg = fs::read(last_segment(tmp.path())).unwrap();
    let mut at = SEGMENT_MAGIC.len();
    let mut first_bytes = Vec::new();
    while at < seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        first_bytes.push(seg[at + 8]);
        at += 8 + len;
    }
    assert_eq!(first_bytes, b"{{{{{\x01\x01\x01");
    assert_eq!(codec::BINARY_V1, 1);
}
