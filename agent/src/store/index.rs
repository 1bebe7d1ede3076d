//! The in-memory index one spool's writer and cursors share: segment
//! lengths, the active segment, committed cursor positions, counters; and
//! the deletion of segments every cursor has acknowledged.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use super::segment::{segment_path, HEADER_LEN};
use super::Position;

/// Lag of one registered cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CursorStats {
    pub name: String,
    pub position: Position,
    /// Committed bytes in the spool the cursor has not acknowledged yet.
    pub lag_bytes: u64,
}

/// Spool counters for the status endpoint and metrics. Counters are since
/// this process opened the spool; sizes are current.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    pub bytes_on_disk: u64,
    pub segments: u64,
    pub records_written: u64,
    pub records_dropped: u64,
    pub io_errors: u64,
    /// Frames skipped on read because their crc or record encoding was bad.
    pub corrupt_frames: u64,
    pub segments_deleted: u64,
    pub cursors: Vec<CursorStats>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) records_written: AtomicU64,
    pub(super) records_dropped: AtomicU64,
    pub(super) io_errors: AtomicU64,
    pub(super) corrupt_frames: AtomicU64,
    pub(super) segments_deleted: AtomicU64,
}

/// The index shared by the writer and the cursors.
pub(super) struct State {
    /// Segment id → committed length in bytes (final once sealed).
    pub(super) segments: BTreeMap<u64, u64>,
    /// Id of the segment being appended to (always the last key).
    pub(super) active: u64,
    /// Committed positions of the cursors registered in this process.
    pub(super) cursors: HashMap<String, Position>,
    /// Cursors that currently have a live [`Cursor`] object.
    pub(super) open: HashSet<String>,
}

impl State {
    pub(super) fn bytes(&self) -> u64 {
        self.segments.values().sum()
    }
    pub(super) fn oldest(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(self.active)
    }
}

/// What the writer and every cursor of one spool share.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) state: Mutex<State>,
    pub(super) counters: Counters,
    /// Bumped after every durable append; sinks wait on it.
    pub(super) appended: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated
        // in a way that matters more than losing the process; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes sealed segments every registered cursor has fully committed.
    pub(super) fn collect_acknowledged(&self, st: &mut State) {
        let Some(min) = st.cursors.values().min().copied() else {
            return;
        };
        let done: Vec<u64> = st
            .segments
            .iter()
            .filter(|(&id, &len)| {
                id != st.active && (id < min.segment || (id == min.segment && min.offset >= len))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.delete_segment(st, id);
        }
    }

    pub(super) fn delete_segment(&self, st: &mut State, id: u64) {
        let path = segment_path(&self.dir, id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %e, "cannot delete spool segment");
                return;
            }
        }
        st.segments.remove(&id);
        self.counters
            .segments_deleted
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> SpoolStats {
        let st = self.lock();
        let c = &self.counters;
        let mut cursors: Vec<CursorStats> = st
            .cursors
            .iter()
            .map(|(name, &position)| CursorStats {
                name: name.clone(),
                position,
                lag_bytes: lag_bytes(&st, position),
            })
            .collect();
        cursors.sort_by(|a, b| a.name.cmp(&b.name));
        SpoolStats {
            bytes_on_disk: st.bytes(),
            segments: st.segments.len() as u64,
            records_written: c.records_written.load(Ordering::Relaxed),
            records_dropped: c.records_dropped.load(Ordering::Relaxed),
            io_errors: c.io_errors.load(Ordering::Relaxed),
            corrupt_frames: c.corrupt_frames.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            cursors,
        }
    }
}

fn lag_bytes(st: &State, pos: Position) -> u64 {
    st.segments
        .range(pos.segment..)
        .map(|(&id, &len)| {
            if id == pos.segment {
                len.saturating_sub(pos.offset)
            } else {
                len.saturating_sub(HEADER_LEN)
            }
        })
        .sum()
}
