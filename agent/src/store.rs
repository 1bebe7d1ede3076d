//! Placeholder until the spool lands from the `store` branch: same API, append-only JSON lines.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::record::Record;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool io: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool decode: {0}")]
    Decode(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
}

pub struct AppendOutcome {
    pub written: usize,
    pub dropped: usize,
}

pub struct Spool {
    file: std::fs::File,
}

impl Spool {
    pub fn open(cfg: &SpoolConfig) -> Result<Spool, StoreError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join("records.jsonl"))?;
        Ok(Spool { file })
    }
    pub fn append(&mut self, recs: &[Record]) -> Result<AppendOutcome, StoreError> {
        let mut buf = String::new();
        for r in recs {
            buf.push_str(&r.to_json_line());
            buf.push('\n');
        }
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()?;
        Ok(AppendOutcome {
            written: recs.len(),
            dropped: 0,
        })
    }
}

pub fn read_records(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<Record, StoreError>>, StoreError> {
    let text = std::fs::read_to_string(dir.join("records.jsonl"))?;
    let v: Vec<Result<Record, StoreError>> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(StoreError::from))
        .collect();
    Ok(v.into_iter())
}
