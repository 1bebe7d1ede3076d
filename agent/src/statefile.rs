//! Private, durable state files.
//!
//! Everything the agent keeps on disk about sandboxes (the spool with
//! prompts and responses, the attribution registry, budgets, cursors) is
//! root-only: files 0600, directories 0700. Modes are set at creation (never
//! briefly wider than that, whatever the umask) and re-set when an existing
//! file or directory is opened, so state left by older versions is
//! tightened too.
//!
//! [`write_durable`] replaces a file so that after a crash (process or
//! machine) it holds either the old or the new bytes: write a temporary
//! file, fsync it, rename it over the target, fsync the directory.
use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Mode of every state file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every private state directory.
pub const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct StateFileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StateFileError {
    fn new(op: &'static str, path: &Path, source: io::Error) -> StateFileError {
        StateFileError {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Creates `dir` (and missing parents, with the default mode) and makes
/// `dir` itself `mode`, also when it already existed with another mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), StateFileError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| StateFileError::new("create", parent, e))?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(StateFileError::new("create", dir, e)),
    }
    // The umask may have narrowed the mode at creation; an older version may
    // have left it wider.
    fs::set_permissions(dir, Permissions::from_mode(mode))
        .map_err(|e| StateFileError::new("chmod", dir, e))
}

/// [`ensure_dir`] with [`DIR_MODE`] (0700).
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateFileError> {
    ensure_dir(dir, DIR_MODE)
}

/// Sets an existing file to [`FILE_MODE`] (0600); a missing file is fine.
pub fn restrict_file(path: &Path) -> Result<(), StateFileError> {
    match fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateFileError::new("chmod", path, e)),
        _ => Ok(()),
    }
}

/// Options for opening a state file: [`FILE_MODE`] when it is created.
pub fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// fsyncs a directory (makes a rename or a new entry in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The temporary file [`write_durable`] writes before renaming it to `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

/// Atomically and durably replaces `path` with `bytes` (mode 0600): after a
/// crash at any point the file holds the old or the new contents.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let tmp = tmp_path(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let res = (|| -> Result<(), StateFileError> {
        let mut f = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StateFileError::new("create", &tmp, e))?;
        // A leftover tmp file keeps its old mode through O_TRUNC.
        f.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|e| StateFileError::new("chmod", &tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| StateFileError::new("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| StateFileError::new("rename", path, e))?;
        sync_dir(dir).map_err(|e| StateFileError::new("fsync", dir, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    pub(crate) fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn durable_write_replaces_the_file_0600_and_leaves_no_tmp() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("state.json");
        // A stale tmp left world-readable by an interrupted older writer.
        fs::write(tmp_path(&f), b"stale").unwrap();
        fs::set_permissions(tmp_path(&f), Permissions::from_mode(0o644)).unwrap();
        write_durable(&f, b"one").unwrap();
        write_durable(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(mode_of(&f), 0o600);
        assert!(!tmp_path(&f).exists());
    }

    #[test]
    fn private_dirs_are_0700_new_and_old() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode_of(&fresh), 0o700);
        let old = t.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&old).unwrap();
        assert_eq!(mode_of(&old), 0o700);
        let file = t.path().join("old/f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        restrict_file(&file).unwrap();
        assert_eq!(mode_of(&file), 0o600);
        restrict_file(&t.path().join("missing")).unwrap();
    }
}
