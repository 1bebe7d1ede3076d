//! The durable local spool — and the embedded default record store.
//!
//! Every record reaches this spool before anything else. It is an
//! append-only sequence of segment files in one directory:
//!
//! ```text
//! <dir>/lock                          flock(2)-ed by the one writer
//! <dir>/00000000000000000001.seg      segments, ids increasing
//! <dir>/cursors/<name>                committed position of each sink
//! ```
//!
//! A segment starts with the 8-byte magic [`SEGMENT_MAGIC`] and holds frames
//! `[u32 len LE][u32 crc32 LE][payload]`, the payload being a record's JSON.
//! [`Spool::append`] writes a batch with one `write` and one `fdatasync`; the
//! batch becomes visible to cursors only after the sync, so a reader never
//! sees a frame that could still vanish. A crash mid-write can only tear the
//! tail of the last segment: [`Spool::open`] detects that (short frame, bad
//! length, bad crc), logs it and truncates the tail; frames before it are
//! untouched.
//!
//! Sinks read through a [`Cursor`], whose committed [`Position`] is persisted
//! in `cursors/<name>` (temp file + fsync + rename + directory fsync). A sink
//! commits only after its destination acknowledged, so a crash re-delivers
//! the uncommitted tail (at-least-once; ClickHouse deduplicates by record id).
//!
//! Space: with at least one cursor registered, a segment is deleted only when
//! every cursor is past it, and when the spool would exceed `max_bytes` new
//! records are rejected and counted as dropped — unacknowledged data is never
//! thrown away. With no cursor (local-store mode) the oldest segments are
//! deleted to stay under `max_bytes` (retention). I/O errors (ENOSPC, EIO)
//! drop the batch being written, truncate any partial frame back, count an
//! error and leave the spool usable.
//!
//! Threading: [`Spool`] is the single writer (`&mut self`, blocking I/O: call
//! it from a dedicated thread or `spawn_blocking`). [`Cursor`]s are
//! independent `Send` objects that open the segment files themselves and
//! share only a small mutex-protected index with the writer, so the writer and
//! each cursor can live in different tasks.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::Record;
use crate::statefile;

/// First bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"EGRSPL01";
const HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may carry; anything larger is treated as a torn
/// or corrupt length on read and rejected (dropped) on write.
pub const MAX_FRAME_PAYLOAD: usize = 32 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
const CURSOR_DIR: &str = "cursors";
const LOCK_FILE: &str = "lock";
const CURSOR_FORMAT: &str = "egret-cursor-v1";
const READ_BUF: usize = 64 << 10;

/// Spool configuration (embedded in the agent config as `spool`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SpoolConfig {
    /// Directory holding the segment files and cursor positions.
    pub dir: PathBuf,
    /// Upper bound of the spool's size on disk, in bytes (default 1 GiB).
    pub max_bytes: u64,
    /// Size at which the active segment is closed and a new one started
    /// (default 64 MiB; capped at `maxBytes`).
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/egret/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool directory {} is in use by another egret process", .0.display())]
    Locked(PathBuf),
    #[error("{} is not an egret spool segment (bad header)", .0.display())]
    BadSegment(PathBuf),
    #[error("invalid cursor name {0:?}: use 1-64 letters, digits, '-' or '_'")]
    InvalidCursorName(String),
    #[error("cursor {0:?} is already open")]
    CursorBusy(String),
    #[error("corrupt cursor file {}: {reason}", path.display())]
    CorruptCursor { path: PathBuf, reason: String },
    #[error("invalid spool config: {0}")]
    Config(String),
}

impl StoreError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn from_state(e: statefile::StateFileError) -> Self {
        StoreError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }

    /// True when the error is the file system being full (ENOSPC/EDQUOT/EFBIG).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)))
    }
}

/// A place in the spool: the byte `offset` in segment `segment`. Positions
/// handed out with records point just past that record's frame, so
/// committing one acknowledges the record and everything before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// What [`Spool::append`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records now durable in the spool.
    pub written: usize,
    /// Records rejected (spool full with unacknowledged data, or a record
    /// larger than [`MAX_FRAME_PAYLOAD`]). Also counted in [`SpoolStats`].
    pub dropped: usize,
}

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
    /// Frames skipped on read because their crc or JSON was bad.
    pub corrupt_frames: u64,
    pub segments_deleted: u64,
    pub cursors: Vec<CursorStats>,
}

#[derive(Default)]
struct Counters {
    records_written: AtomicU64,
    records_dropped: AtomicU64,
    io_errors: AtomicU64,
    corrupt_frames: AtomicU64,
    segments_deleted: AtomicU64,
}

/// The index shared by the writer and the cursors.
struct State {
    /// Segment id → committed length in bytes (final once sealed).
    segments: BTreeMap<u64, u64>,
    /// Id of the segment being appended to (always the last key).
    active: u64,
    /// Committed positions of the cursors registered in this process.
    cursors: HashMap<String, Position>,
    /// Cursors that currently have a live [`Cursor`] object.
    open: HashSet<String>,
}

impl State {
    fn bytes(&self) -> u64 {
        self.segments.values().sum()
    }
    fn oldest(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(self.active)
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    counters: Counters,
    /// Bumped after every durable append; sinks wait on it.
    appended: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated
        // in a way that matters more than losing the process; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes sealed segments every registered cursor has fully committed.
    fn collect_acknowledged(&self, st: &mut State) {
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

    fn delete_segment(&self, st: &mut State, id: u64) {
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

    fn stats(&self) -> SpoolStats {
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

/// The single writer of a spool directory. See the module docs.
pub struct Spool {
    shared: Arc<Shared>,
    max_bytes: u64,
    segment_bytes: u64,
    file: File,
    active_path: PathBuf,
    active_len: u64,
    buf: Vec<u8>,
    frame_ends: Vec<usize>,
    /// `frame_records[i]`: index in the appended batch of frame `i`.
    frame_records: Vec<usize>,
    _lock: File,
}

/// A cheap, cloneable handle for opening cursors, waiting for appends and
/// reading stats from other tasks while the [`Spool`] itself is owned by the
/// writer.
#[derive(Clone)]
pub struct SpoolHandle {
    shared: Arc<Shared>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir`, taking the writer
    /// lock and repairing a torn tail left by a crash.
    pub fn open(cfg: &SpoolConfig) -> Result<Spool, StoreError> {
        if cfg.max_bytes < 2 * HEADER_LEN + 1024 {
            return Err(StoreError::Config(format!(
                "maxBytes {} is too small",
                cfg.max_bytes
            )));
        }
        if cfg.segment_bytes == 0 {
            return Err(StoreError::Config("segmentBytes must be > 0".into()));
        }
        let dir = cfg.dir.clone();
        // Segments hold prompts and responses: root only (0700 dirs, 0600
        // files), also for a spool left wider by an older version.
        statefile::ensure_private_dir(&dir).map_err(StoreError::from_state)?;
        let cursor_dir = dir.join(CURSOR_DIR);
        statefile::ensure_private_dir(&cursor_dir).map_err(StoreError::from_state)?;
        let lock = lock_dir(&dir)?;
        restrict_files(&dir)?;
        restrict_files(&cursor_dir)?;

        let ids = list_segments(&dir)?;
        let mut segments = BTreeMap::new();
        for &id in &ids {
            let path = segment_path(&dir, id);
            let len = fs::metadata(&path)
                .map_err(|e| StoreError::io("stat", &path, e))?
                .len();
            segments.insert(id, len);
        }

        let (active, file, active_len) = match ids.last() {
            Some(&last) => {
                let path = segment_path(&dir, last);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("open", &path, e))?;
                let len = recover_tail(&file, &path)?;
                (last, file, len)
            }
            None => {
                let (file, len) = create_segment(&dir, 1)?;
                (1, file, len)
            }
        };
        segments.insert(active, active_len);

        let (appended, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                segments,
                active,
                cursors: HashMap::new(),
                open: HashSet::new(),
            }),
            counters: Counters::default(),
            appended,
        });
        Ok(Spool {
            shared,
            max_bytes: cfg.max_bytes,
            segment_bytes: cfg.segment_bytes.min(cfg.max_bytes / 2).max(HEADER_LEN + 1),
            file,
            active_path: segment_path(&dir, active),
            active_len,
            buf: Vec::with_capacity(READ_BUF),
            frame_ends: Vec::new(),
            frame_records: Vec::new(),
            _lock: lock,
        })
    }

    /// A handle usable from other tasks (cursors, stats, append notifications).
    pub fn handle(&self) -> SpoolHandle {
        SpoolHandle {
            shared: self.shared.clone(),
        }
    }

    /// Opens (registering it if new) the cursor `name`. See [`SpoolHandle::cursor`].
    pub fn cursor(&self, name: &str) -> Result<Cursor, StoreError> {
        self.handle().cursor(name)
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// Appends `records` durably: one write and one `fdatasync` for the
    /// batch. Records that do not fit (see module docs) are dropped and
    /// counted. On `Err` (disk full, I/O error) nothing of the batch was kept,
    /// it is counted as dropped, any partial write was truncated back and the
    /// spool stays usable: log and keep going.
    pub fn append(&mut self, records: &[Record]) -> Result<AppendOutcome, StoreError> {
        if records.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let oversize = self.encode(records);
        let shared = self.shared.clone();
        let counters = &shared.counters;

        if self.active_len >= self.segment_bytes && self.active_len > HEADER_LEN {
            if let Err(e) = self.rotate() {
                self.fail(records.len());
                return Err(e);
            }
        }

        // How much of the batch fits under max_bytes?
        let need = self.buf.len() as u64;
        let fit_frames = {
            let mut st = shared.lock();
            if st.bytes() + need > self.max_bytes {
                if st.cursors.is_empty() {
                    self.make_room(&mut st, need);
                } else {
                    shared.collect_acknowledged(&mut st);
                }
            }
            let room = self.max_bytes.saturating_sub(st.bytes());
            self.frame_ends
                .iter()
                .take_while(|&&end| end as u64 <= room)
                .count()
        };
        let fit_bytes = match fit_frames {
            0 => 0,
            n => self.frame_ends[n - 1],
        };
        let dropped = oversize + (self.frame_ends.len() - fit_frames);
        if dropped > 0 {
            counters
                .records_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        if fit_bytes == 0 {
            return Ok(AppendOutcome {
                written: 0,
                dropped,
            });
        }

        let write = self
            .file
            .write_all_at(&self.buf[..fit_bytes], self.active_len)
            .map_err(|e| StoreError::io("write", &self.active_path, e))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| StoreError::io("fsync", &self.active_path, e))
            });
        if let Err(e) = write {
            // Put the file back to its last durable length so no partial
            // frame stays behind; the next append overwrites from there.
            if let Err(te) = self
                .file
                .set_len(self.active_len)
                .and_then(|()| self.file.sync_data())
            {
                tracing::warn!(path = %self.active_path.display(), error = %te,
                    "cannot truncate a failed spool write back; recovery on next open will");
            }
            self.fail(fit_frames);
            return Err(e);
        }
        self.active_len += fit_bytes as u64;
        {
            let mut st = self.shared.lock();
            let active = st.active;
            st.segments.insert(active, self.active_len);
        }
        let total = counters
            .records_written
            .fetch_add(fit_frames as u64, Ordering::Relaxed)
            + fit_frames as u64;
        self.shared.appended.send_replace(total);
        Ok(AppendOutcome {
            written: fit_frames,
            dropped,
        })
    }

    /// Which records of the batch last given to [`append`](Self::append)
    /// are durable, as indices into that batch, in order: the first
    /// `outcome.written` framed records. `outcome` must be what that append
    /// returned (on `Err` nothing was kept: pass nothing).
    pub fn written_indices(&self, outcome: &AppendOutcome) -> &[usize] {
        &self.frame_records[..outcome.written.min(self.frame_records.len())]
    }

    fn fail(&self, dropped: usize) {
        let c = &self.shared.counters;
        c.io_errors.fetch_add(1, Ordering::Relaxed);
        c.records_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Encodes the batch into `self.buf` as frames; `frame_ends[i]` is the
    /// end of frame `i`. Returns how many records were too large to frame.
    fn encode(&mut self, records: &[Record]) -> usize {
        self.buf.clear();
        self.frame_ends.clear();
        self.frame_records.clear();
        let mut oversize = 0;
        for (i, r) in records.iter().enumerate() {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
            let ok = serde_json::to_writer(&mut self.buf, r).is_ok();
            let len = self.buf.len() - start - FRAME_HEADER_LEN;
            if !ok || len > MAX_FRAME_PAYLOAD {
                self.buf.truncate(start);
                oversize += 1;
                continue;
            }
            let crc = crc32fast::hash(&self.buf[start + FRAME_HEADER_LEN..]);
            // len <= MAX_FRAME_PAYLOAD < u32::MAX.
            self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            self.frame_ends.push(self.buf.len());
            self.frame_records.push(i);
        }
        if oversize > 0 {
            tracing::warn!(
                count = oversize,
                "dropping records larger than the spool frame limit"
            );
        }
        oversize
    }

    /// Local-store retention: delete the oldest segments until `need` more
    /// bytes fit (sealing the active segment too if that is what it takes).
    fn make_room(&mut self, st: &mut State, need: u64) {
        let shared = self.shared.clone();
        while st.bytes() + need > self.max_bytes {
            let oldest = st.oldest();
            if oldest != st.active {
                shared.delete_segment(st, oldest);
                if st.segments.contains_key(&oldest) {
                    return; // could not delete; give up (counted)
                }
                continue;
            }
            if self.active_len <= HEADER_LEN {
                return; // nothing left to delete: the batch itself is too big
            }
            // Only the active segment is left: seal it so it can go too.
            if let Err(e) = self.rotate_locked(st) {
                shared.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot start a new spool segment");
                return;
            }
        }
    }

    /// Seals the active segment and starts the next one.
    fn rotate(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        self.rotate_locked(&mut st)
    }

    fn rotate_locked(&mut self, st: &mut State) -> Result<(), StoreError> {
        let next = st.active + 1;
        let (file, len) = create_segment(&self.shared.dir, next)?;
        st.segments.insert(next, len);
        st.active = next;
        self.file = file;
        self.active_len = len;
        self.active_path = segment_path(&self.shared.dir, next);
        Ok(())
    }
}

impl SpoolHandle {
    /// Opens the cursor `name`, registering it if it is new (a new cursor
    /// starts at the oldest retained record). Registration pins data: from
    /// now on, segments this cursor has not committed are never deleted.
    /// Open the cursors of every configured sink *before* the first append.
    pub fn cursor(&self, name: &str) -> Result<Cursor, StoreError> {
        validate_cursor_name(name)?;
        let path = self.shared.dir.join(CURSOR_DIR).join(name);
        let mut st = self.shared.lock();
        if st.open.contains(name) {
            return Err(StoreError::CursorBusy(name.to_owned()));
        }
        let saved = match st.cursors.get(name) {
            Some(&p) => Some(p),
            None => read_cursor_file(&path)?,
        };
        let oldest = Position {
            segment: st.oldest(),
            offset: HEADER_LEN,
        };
        let pos = match saved {
            None => oldest,
            Some(p) if p < oldest => {
                tracing::warn!(cursor = name, saved = ?p, resumed = ?oldest,
                    "cursor points at deleted spool data; records in between are lost to this sink");
                oldest
            }
            Some(p) => match st.segments.get(&p.segment) {
                Some(&len) if p.offset > len => {
                    tracing::warn!(cursor = name, saved = ?p, len,
                        "cursor is past the end of its segment (torn tail repaired?); clamping");
                    Position {
                        segment: p.segment,
                        offset: len,
                    }
                }
                Some(_) => p,
                None => {
                    // Points into a segment that does not exist (past the
                    // end or a gap): resume at the next existing one.
                    let next = st
                        .segments
                        .range(p.segment..)
                        .next()
                        .map(|(&id, _)| id)
                        .unwrap_or(st.active);
                    tracing::warn!(cursor = name, saved = ?p, resumed_segment = next,
                        "cursor points at a missing spool segment");
                    Position {
                        segment: next,
                        offset: HEADER_LEN,
                    }
                }
            },
        };
        if saved != Some(pos) {
            write_cursor_file(&path, pos)?;
        }
        st.cursors.insert(name.to_owned(), pos);
        st.open.insert(name.to_owned());
        Ok(Cursor {
            shared: self.shared.clone(),
            name: name.to_owned(),
            path,
            committed: pos,
            read: pos,
            file: None,
            payload: Vec::new(),
        })
    }

    /// Unregisters cursor `name` (e.g. its sink was removed from the config)
    /// and deletes its file, so it no longer pins data.
    pub fn remove_cursor(&self, name: &str) -> Result<(), StoreError> {
        validate_cursor_name(name)?;
        let mut st = self.shared.lock();
        if st.open.contains(name) {
            return Err(StoreError::CursorBusy(name.to_owned()));
        }
        st.cursors.remove(name);
        let path = self.shared.dir.join(CURSOR_DIR).join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &path, e)),
        }
        self.shared.collect_acknowledged(&mut st);
        Ok(())
    }

    /// A receiver that changes after every durable append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }
}

/// A sink's reading position. Reads see only durable (fsync'd) records.
pub struct Cursor {
    shared: Arc<Shared>,
    name: String,
    path: PathBuf,
    committed: Position,
    read: Position,
    file: Option<(u64, File)>,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("name", &self.name)
            .field("committed", &self.committed)
            .field("read", &self.read)
            .finish()
    }
}

impl Cursor {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The last committed (acknowledged) position.
    pub fn committed(&self) -> Position {
        self.committed
    }
    /// A receiver that changes after every durable append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// Forgets what was read but not committed: the next
    /// [`next_batch`](Self::next_batch) starts again at the committed position.
    pub fn rewind(&mut self) {
        self.read = self.committed;
        self.file = None;
    }

    /// Reads up to `max_records` records after the last one read (across
    /// segments). Each comes with the position to [`commit`](Self::commit)
    /// once it has been delivered. An empty result means caught up.
    pub fn next_batch(
        &mut self,
        max_records: usize,
    ) -> Result<Vec<(Position, Record)>, StoreError> {
        let mut out = Vec::with_capacity(max_records.min(1024));
        while out.len() < max_records {
            // Only the index lookup happens under the lock.
            let (limit, next_segment) = {
                let st = self.shared.lock();
                let next = st
                    .segments
                    .range(self.read.segment + 1..)
                    .next()
                    .map(|(&id, _)| id);
                (st.segments.get(&self.read.segment).copied(), next)
            };
            let Some(limit) = limit else {
                // Our segment is gone (only possible for unregistered data
                // or an external deletion): move on to the next one.
                match next_segment {
                    Some(next) => {
                        self.advance_to(next);
                        continue;
                    }
                    None => break,
                }
            };
            if self.read.offset < limit {
                self.read_segment(limit, max_records, &mut out)?;
                if self.read.offset < limit {
                    break; // batch full
                }
            }
            match next_segment {
                // A later segment exists, so ours is sealed and fully read.
                Some(next) => self.advance_to(next),
                None => break,
            }
        }
        Ok(out)
    }

    fn advance_to(&mut self, segment: u64) {
        self.read = Position {
            segment,
            offset: HEADER_LEN,
        };
        self.file = None;
    }

    fn read_segment(
        &mut self,
        limit: u64,
        max_records: usize,
        out: &mut Vec<(Position, Record)>,
    ) -> Result<(), StoreError> {
        let seg = self.read.segment;
        let path = segment_path(&self.shared.dir, seg);
        if self.file.as_ref().map(|(id, _)| *id) != Some(seg) {
            let f = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
            self.file = Some((seg, f));
        }
        let Some((_, file)) = self.file.as_ref() else {
            return Ok(());
        };
        // A fresh bounded reader each call: never read past the committed
        // length, so no stale bytes of an in-flight write are ever buffered.
        let region = FileRegion {
            file,
            pos: self.read.offset,
            end: limit,
        };
        let mut reader = BufReader::with_capacity(READ_BUF, region);
        let mut offset = self.read.offset;
        while offset < limit && out.len() < max_records {
            match read_frame(&mut reader, &mut self.payload) {
                Ok(Frame::Ok(n)) => {
                    offset += n;
                    match serde_json::from_slice::<Record>(&self.payload) {
                        Ok(r) => out.push((
                            Position {
                                segment: seg,
                                offset,
                            },
                            r,
                        )),
                        Err(e) => {
                            self.shared
                                .counters
                                .corrupt_frames
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(path = %path.display(), offset, error = %e,
                                "skipping undecodable spool record");
                        }
                    }
                }
                Ok(Frame::End) => break,
                Ok(Frame::Bad(reason)) => {
                    // Durable data should never be bad; skip the rest of the
                    // segment rather than stall the sink forever.
                    self.shared
                        .counters
                        .corrupt_frames
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), offset, reason,
                        "corrupt spool frame; skipping the rest of the segment");
                    offset = limit;
                }
                Err(e) => return Err(StoreError::io("read", &path, e)),
            }
        }
        self.read.offset = offset;
        Ok(())
    }

    /// Acknowledges everything up to and including the record at `pos`:
    /// persists the position (atomically) and deletes segments every cursor
    /// is past. Positions at or before the committed one are ignored.
    pub fn commit(&mut self, pos: Position) -> Result<(), StoreError> {
        if pos <= self.committed {
            return Ok(());
        }
        write_cursor_file(&self.path, pos)?;
        self.committed = pos;
        if self.read < pos {
            self.read = pos;
            self.file = None;
        }
        let mut st = self.shared.lock();
        st.cursors.insert(self.name.clone(), pos);
        self.shared.collect_acknowledged(&mut st);
        Ok(())
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // Stays registered (its data stays pinned); it may be opened again.
        self.shared.lock().open.remove(&self.name);
    }
}

/// Reads every retained record in order, for `egret records`. Works while an
/// agent is appending (a frame being written ends the iteration cleanly) and
/// while retention deletes segments (missing ones are skipped). A spool
/// directory that does not exist yields nothing.
pub fn read_records(dir: &Path) -> Result<RecordsIter, StoreError> {
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(RecordsIter {
        dir: dir.to_owned(),
        segments: segments.into_iter(),
        current: None,
        payload: Vec::new(),
    })
}

/// Iterator returned by [`read_records`].
pub struct RecordsIter {
    dir: PathBuf,
    segments: std::vec::IntoIter<u64>,
    current: Option<(PathBuf, BufReader<File>)>,
    payload: Vec<u8>,
}

impl Iterator for RecordsIter {
    type Item = Result<Record, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let id = self.segments.next()?;
                let path = segment_path(&self.dir, id);
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Some(Err(StoreError::io("open", &path, e))),
                };
                let mut reader = BufReader::with_capacity(READ_BUF, file);
                let mut magic = [0u8; HEADER_LEN as usize];
                match reader.read_exact(&mut magic) {
                    Ok(()) if &magic == SEGMENT_MAGIC => {}
                    Ok(()) => return Some(Err(StoreError::BadSegment(path))),
                    // Just created, header not written yet.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
                    Err(e) => return Some(Err(StoreError::io("read", &path, e))),
                }
                self.current = Some((path, reader));
            }
            let Some((path, reader)) = self.current.as_mut() else {
                continue;
            };
            match read_frame(reader, &mut self.payload) {
                Ok(Frame::Ok(_)) => match serde_json::from_slice::<Record>(&self.payload) {
                    Ok(r) => return Some(Ok(r)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e,
                            "skipping undecodable spool record");
                    }
                },
                // End of segment, or a torn tail / frame still being written.
                Ok(Frame::End) | Ok(Frame::Bad(_)) => self.current = None,
                Err(e) => {
                    let err = StoreError::io("read", path, e);
                    self.current = None;
                    return Some(Err(err));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Framing and files.

enum Frame {
    /// A valid frame of this many bytes (header included); payload in the buffer.
    Ok(u64),
    /// Clean end of data.
    End,
    /// A partial or corrupt frame.
    Bad(&'static str),
}

fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    match read_full(r, &mut hdr)? {
        0 => return Ok(Frame::End),
        n if n < FRAME_HEADER_LEN => return Ok(Frame::Bad("partial frame header")),
        _ => {}
    }
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len == 0 || len > MAX_FRAME_PAYLOAD {
        return Ok(Frame::Bad("bad frame length"));
    }
    payload.clear();
    payload.resize(len, 0);
    if read_full(r, payload)? < len {
        return Ok(Frame::Bad("partial frame payload"));
    }
    if crc32fast::hash(payload) != crc {
        return Ok(Frame::Bad("frame crc mismatch"));
    }
    Ok(Frame::Ok((FRAME_HEADER_LEN + len) as u64))
}

/// Like `read_exact` but reports how much was read before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `pread`s a byte range of a file without touching its offset.
struct FileRegion<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRegion<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Scans the last segment and truncates a torn tail. Returns the good length.
fn recover_tail(file: &File, path: &Path) -> Result<u64, StoreError> {
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    let mut magic = [0u8; HEADER_LEN as usize];
    let have = read_full(
        &mut FileRegion {
            file,
            pos: 0,
            end: len,
        },
        &mut magic,
    )
    .map_err(|e| StoreError::io("read", path, e))?;
    if have < magic.len() {
        // Crashed while creating the segment: rewrite its header.
        if !SEGMENT_MAGIC.starts_with(&magic[..have]) {
            return Err(StoreError::BadSegment(path.to_owned()));
        }
        tracing::warn!(path = %path.display(), "spool segment header was torn; rewriting it");
        file.set_len(0)
            .and_then(|()| file.write_all_at(SEGMENT_MAGIC, 0))
            .and_then(|()| file.sync_data())
            .map_err(|e| StoreError::io("repair", path, e))?;
        return Ok(HEADER_LEN);
    }
    if &magic != SEGMENT_MAGIC {
        return Err(StoreError::BadSegment(path.to_owned()));
    }
    let mut reader = BufReader::with_capacity(
        READ_BUF,
        FileRegion {
            file,
            pos: HEADER_LEN,
            end: len,
        },
    );
    let mut good = HEADER_LEN;
    let mut payload = Vec::new();
    let reason = loop {
        match read_frame(&mut reader, &mut payload).map_err(|e| StoreError::io("read", path, e))? {
            Frame::Ok(n) => good += n,
            Frame::End => break None,
            Frame::Bad(reason) => break Some(reason),
        }
    };
    if let Some(reason) = reason {
        tracing::warn!(path = %path.display(), reason, good_len = good, file_len = len,
            dropped_bytes = len - good, "truncating torn spool tail");
        file.set_len(good)
            .and_then(|()| file.sync_data())
            .map_err(|e| StoreError::io("truncate", path, e))?;
    }
    Ok(good)
}

/// Sets every regular file directly in `dir` to 0600.
fn restrict_files(dir: &Path) -> Result<(), StoreError> {
    let rd = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            statefile::restrict_file(&entry.path()).map_err(StoreError::from_state)?;
        }
    }
    Ok(())
}

fn create_segment(dir: &Path, id: u64) -> Result<(File, u64), StoreError> {
    let path = segment_path(dir, id);
    let file = statefile::private_options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io("create", &path, e))?;
    let init = file
        .write_all_at(SEGMENT_MAGIC, 0)
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = init {
        // Leave no half-made segment behind (it would read as torn).
        let _ = fs::remove_file(&path);
        return Err(StoreError::io("create", &path, e));
    }
    Ok((file, HEADER_LEN))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let rd = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut ids = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = statefile::private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is touched.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        return Err(StoreError::io("lock", &path, e));
    }
    Ok(file)
}

fn validate_cursor_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidCursorName(name.to_owned()))
    }
}

fn read_cursor_file(path: &Path) -> Result<Option<Position>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path, e)),
    };
    let corrupt = |reason: &str| StoreError::CorruptCursor {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut parts = text.split_whitespace();
    if parts.next() != Some(CURSOR_FORMAT) {
        return Err(corrupt("unknown format"));
    }
    let mut num = || -> Result<u64, StoreError> {
        parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("bad position"))
    };
    let segment = num()?;
    let offset = num()?;
    Ok(Some(Position { segment, offset }))
}

fn write_cursor_file(path: &Path, pos: Position) -> Result<(), StoreError> {
    let text = format!("{CURSOR_FORMAT} {} {}\n", pos.segment, pos.offset);
    statefile::write_durable(path, text.as_bytes()).map_err(|e| StoreError::Io {
        op: "write cursor",
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semconv as sc;
    use std::io::Write;

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
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
        let wide =
            |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
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

    #[test]
    fn config_from_json_with_defaults() {
        let c: SpoolConfig =
            serde_json::from_str(r#"{"dir": "/tmp/s", "maxBytes": 1000000}"#).unwrap();
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.max_bytes, 1_000_000);
        assert!(serde_json::from_str::<SpoolConfig>(r#"{"bogus": 1}"#).is_err());
        let schema = schemars::schema_for!(SpoolConfig);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.contains("segmentBytes"), "{text}");
    }

    /// A real full disk: a 256 KiB tmpfs mounted in a private mount namespace
    /// of a helper thread (root only; skipped otherwise).
    #[test]
    fn full_disk_is_an_error_without_corruption_and_recovers() {
        use nix::mount::{mount, MsFlags};
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().to_owned();
        let res = std::thread::spawn(move || -> Result<(), String> {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
                return Err(format!("unshare(CLONE_NEWNS): {e}"));
            }
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| format!("make-rprivate: {e}"))?;
            mount(
                Some("tmpfs"),
                &mnt,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=256k"),
            )
            .map_err(|e| format!("mount tmpfs: {e}"))?;
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
}
