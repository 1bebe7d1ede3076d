//! The single writer: opens (and repairs) a spool directory under its
//! lock, appends batches durably, rotates segments and enforces the size
//! bound (back-pressure with cursors, retention without).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::cursor::{Cursor, SpoolHandle, CURSOR_DIR};
use super::index::{Counters, Shared, SpoolStats, State};
use super::segment::{
    create_segment, list_segments, push_frame, recover_tail, segment_path, HEADER_LEN, READ_BUF,
};
use super::StoreError;
use crate::config::{ContentMode, SpoolConfig};
use crate::record::Record;
use crate::statefile;

/// The writer's lock file in the spool directory.
pub(super) const LOCK_FILE: &str = "lock";

/// What [`Spool::append`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records now durable in the spool.
    pub written: usize,
    /// Records rejected (spool full with unacknowledged data, or a record
    /// larger than [`MAX_FRAME_PAYLOAD`]). Also counted in [`SpoolStats`].
    pub dropped: usize,
}

/// The single writer of a spool directory. See the module docs.
pub struct Spool {
    shared: Arc<Shared>,
    max_bytes: u64,
    segment_bytes: u64,
    file: File,
    active_path: PathBuf,
    /// Durable length of the active segment.
    pub(super) active_len: u64,
    buf: Vec<u8>,
    frame_ends: Vec<usize>,
    /// `frame_records[i]`: index in the appended batch of frame `i`.
    frame_records: Vec<usize>,
    /// What is written of the exchanged content (`store.spool.content`).
    content: ContentMode,
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir`, taking the writer
    /// lock and repairing a torn tail left by a crash.
    pub fn open(cfg: &SpoolConfig) -> Result<Spool, StoreError> {
        if cfg.max_bytes < 2 * HEADER_LEN + 1024 {
            return Err(StoreError::MaxBytesTooSmall(cfg.max_bytes));
        }
        if cfg.segment_bytes == 0 {
            return Err(StoreError::ZeroSegmentBytes);
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
            content: cfg.content,
            _lock: lock,
        })
    }

    /// What the spool keeps of the exchanged content: records are written
    /// through [`ContentMode::keeps`], so no reader of the spool sees more.
    pub fn content(&self) -> ContentMode {
        self.content
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
            if !push_frame(&mut self.buf, r, self.content) {
                oversize += 1;
                continue;
            }
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
