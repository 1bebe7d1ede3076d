//! The durable local spool — and the embedded default record store.
//!
//! Every record reaches this spool before anything else; sinks (ClickHouse)
//! read from it, and `egret records` reads it when there is no ClickHouse.
//!
//! # Guarantees
//!
//! - A record is acknowledged to the recorder only once it is on disk
//!   (`fdatasync`'d); a crash loses nothing acknowledged.
//! - A sink sees a record only once it is durable, and sees every durable
//!   record at least once, in append order, across restarts
//!   (at-least-once; ClickHouse deduplicates by record id).
//! - With a sink registered, data it has not acknowledged is never thrown
//!   away: a full spool refuses *new* records (counted as dropped) instead.
//! - An I/O error (ENOSPC, EIO) costs the batch being written, never the
//!   spool: the partial write is truncated back and the next append works.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/lock                          flock(2)-ed by the one writer
//! <dir>/00000000000000000001.seg      segments, ids increasing
//! <dir>/cursors/<name>                committed position of each sink
//! ```
//!
//! Directories are 0700 and files 0600: segments hold prompts and
//! responses. A segment starts with the 8-byte magic [`SEGMENT_MAGIC`]
//! (the format version) and holds frames
//!
//! ```text
//! [u32 payload length LE][u32 crc32 of the payload LE][payload: one record]
//! ```
//!
//! The payload is the record in a compact binary encoding (`codec`: a
//! version byte `0x01`, then length-prefixed keys and typed values, strings
//! and bodies copied unescaped). Agents before it wrote the record's JSON
//! there; readers accept both, told apart by the first byte (`{` for
//! JSON), so an upgraded agent reads and forwards an old spool. The
//! encoding is an internal detail of the spool, not part of its contract:
//! what the design fixes is the durability (append-only, `fdatasync`'d
//! before anything else sees a record), which the framing and the writer
//! give whatever the payload's encoding. JSON cost the agent's hot path a
//! full escape pass over both captured bodies on every transaction (the
//! largest single item of the per-request profile); the binary encoding is
//! a length and a copy.
//!
//! A frame never spans segments and its payload is at most
//! [`MAX_FRAME_PAYLOAD`]. A [`Position`] is (segment id, byte offset); the
//! position handed out with a record points just past its frame, so
//! committing it acknowledges that record and everything before it. A
//! cursor file is one line, `egret-cursor-v1 <segment> <offset>`.
//!
//! # Writing
//!
//! [`Spool::append`] frames a whole batch in memory, then issues one
//! `write` and one `fdatasync`. Only after the sync does it publish the new
//! segment length to the shared index (and bump a watch channel sinks wait
//! on), so readers never see bytes that could still vanish. When the active
//! segment reaches `segmentBytes` it is sealed and the next one created
//! (header written and synced, directory synced).
//!
//! # Space
//!
//! The spool stays under `maxBytes`. With at least one cursor registered, a
//! segment is deleted only when every cursor is past it, and what does not
//! fit is refused. With no cursor (the local-store mode) the oldest
//! segments are deleted to make room (retention).
//!
//! # Reading and acknowledging
//!
//! Each sink reads through its own [`Cursor`] (opened from a
//! [`SpoolHandle`]) and calls [`Cursor::commit`] only after its destination
//! acknowledged. A commit persists the position (temp file, fsync, rename,
//! directory fsync) and then deletes the sealed segments every cursor has
//! passed. Registering a cursor pins data: open the cursors of every
//! configured sink before the first append, and remove the cursor of a
//! sink that is no longer configured ([`SpoolHandle::remove_cursor`]).
//! [`read_records`] reads everything retained, without a cursor.
//!
//! # Crash recovery
//!
//! A crash mid-write can only tear the tail of the last segment.
//! [`Spool::open`] scans that segment and truncates at the first short
//! frame, impossible length or checksum mismatch (logged); frames before it
//! are untouched. A torn segment header is rewritten. A cursor saved past
//! the repaired end is clamped; one pointing at deleted data resumes at the
//! oldest retained record (logged: those records are lost to that sink).
//!
//! # Threading
//!
//! [`Spool`] is the single writer (`&mut self`, blocking I/O: call it from a
//! dedicated thread or `spawn_blocking`). [`Cursor`]s are independent
//! `Send` objects that open the segment files themselves and share only a
//! small mutex-protected index with the writer, so the writer and each
//! cursor can live in different tasks. A second process is kept out by the
//! directory lock.
//!
//! # Code
//!
//! - `segment`: the file format — framing, tail recovery, segment files;
//! - `codec`: the record encoding inside a frame (binary; JSON read too);
//! - `index`: the state writer and cursors share, and segment deletion;
//! - `writer`: [`Spool`]: open, append, rotate, the size bound;
//! - `cursor`: [`SpoolHandle`] and [`Cursor`]: reading and committing;
//! - `reader`: [`read_records`] for `egret records`.
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::statefile;

mod codec;
mod cursor;
mod index;
mod reader;
mod segment;
mod writer;

pub use codec::{decode as decode_record, encode_record, DecodeError};
pub use cursor::{Cursor, SpoolHandle};
pub use index::{CursorStats, SpoolStats};
pub use reader::{read_records, RecordsIter};
pub use segment::{MAX_FRAME_PAYLOAD, SEGMENT_MAGIC};
pub use writer::{AppendOutcome, Spool};

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
    CorruptCursor { path: PathBuf, reason: &'static str },
    #[error("invalid spool config: maxBytes {0} is too small")]
    MaxBytesTooSmall(u64),
    #[error("invalid spool config: segmentBytes must be > 0")]
    ZeroSegmentBytes,
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

#[cfg(test)]
mod tests;
