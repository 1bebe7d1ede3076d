//! Offline reading of a spool directory (`egret records` on the local
//! store): every retained record in order, safe beside a running writer.
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::segment::SEGMENT_MAGIC;
use super::segment::{list_segments, read_frame, segment_path, Frame, HEADER_LEN, READ_BUF};
use super::StoreError;
use crate::record::Record;

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
                Ok(Frame::Ok(_)) => match super::codec::decode(&self.payload) {
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
