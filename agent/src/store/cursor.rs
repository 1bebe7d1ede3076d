//! Readers: the [`SpoolHandle`] that opens cursors, and [`Cursor`], one
//! sink's durable reading position — batches read, positions committed
//! (persisted atomically) after the destination acknowledged.
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::index::{Shared, SpoolStats};
use super::segment::{read_frame, segment_path, FileRegion, Frame, HEADER_LEN, READ_BUF};
use super::{Position, StoreError};
use crate::record::Record;
use crate::statefile;

/// Subdirectory holding one file per cursor.
pub(super) const CURSOR_DIR: &str = "cursors";
const CURSOR_FORMAT: &str = "egret-cursor-v1";

/// A cheap, cloneable handle for opening cursors, waiting for appends and
/// reading stats from other tasks while the [`Spool`] itself is owned by the
/// writer.
#[derive(Clone)]
pub struct SpoolHandle {
    pub(super) shared: Arc<Shared>,
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
                    match super::codec::decode(&self.payload) {
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
    let corrupt = |reason: &'static str| StoreError::CorruptCursor {
        path: path.to_owned(),
        reason,
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

pub(super) fn write_cursor_file(path: &Path, pos: Position) -> Result<(), StoreError> {
    let text = format!("{CURSOR_FORMAT} {} {}\n", pos.segment, pos.offset);
    statefile::write_durable(path, text.as_bytes()).map_err(|e| StoreError::Io {
        op: "write cursor",
        path: e.path,
        source: e.source,
    })
}

impl crate::admin::Report for SpoolHandle {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let sp = self.stats();
        m.gauge(
            "egret_spool_bytes",
            "Bytes on disk in the spool",
            &[(vec![], crate::admin::gauge_value(sp.bytes_on_disk))],
        )?;
        m.counter(
            "egret_spool_io_errors",
            "Spool write errors (e.g. disk full)",
            &[(vec![], sp.io_errors)],
        )?;
        let lags: Vec<_> = sp
            .cursors
            .iter()
            .map(|c| {
                (
                    vec![("cursor", c.name.clone())],
                    crate::admin::gauge_value(c.lag_bytes),
                )
            })
            .collect();
        m.gauge(
            "egret_spool_cursor_lag_bytes",
            "Bytes a sink still has to deliver",
            &lags,
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert("spool".into(), serde_json::json!(self.stats()));
    }
}
