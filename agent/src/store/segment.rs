//! The on-disk segment format: a header, then checksummed frames, one
//! record each; framing both ways, tail recovery after a crash, and the
//! segment files of a spool directory.
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{codec, StoreError};
use crate::config::ContentMode;
use crate::record::Record;
use crate::statefile;

/// First bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"EGRSPL01";
/// Length of the segment header (the magic).
pub(super) const HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may carry; anything larger is treated as a torn
/// or corrupt length on read and rejected (dropped) on write.
pub const MAX_FRAME_PAYLOAD: usize = 32 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
/// Buffer size of segment readers.
pub(super) const READ_BUF: usize = 64 << 10;

/// Appends `record` to `buf` as one frame (binary encoding, see `codec`),
/// with the attributes `content` keeps. False, with `buf` unchanged, when
/// its payload would exceed [`MAX_FRAME_PAYLOAD`].
pub(super) fn push_frame(buf: &mut Vec<u8>, record: &Record, content: ContentMode) -> bool {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    match content {
        ContentMode::Full => codec::encode(buf, record, |_| true),
        mode => codec::encode(buf, record, |k| mode.keeps(k)),
    }
    let len = buf.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_PAYLOAD {
        buf.truncate(start);
        return false;
    }
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER_LEN..]);
    // len <= MAX_FRAME_PAYLOAD < u32::MAX.
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    true
}

pub(super) enum Frame {
    /// A valid frame of this many bytes (header included); payload in the buffer.
    Ok(u64),
    /// Clean end of data.
    End,
    /// A partial or corrupt frame.
    Bad(&'static str),
}

pub(super) fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Frame> {
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
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
pub(super) struct FileRegion<'a> {
    pub(super) file: &'a File,
    pub(super) pos: u64,
    pub(super) end: u64,
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
pub(super) fn recover_tail(file: &File, path: &Path) -> Result<u64, StoreError> {
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

pub(super) fn create_segment(dir: &Path, id: u64) -> Result<(File, u64), StoreError> {
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

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
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
