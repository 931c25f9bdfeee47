//! Crash-safe file writes: every file the agent owns is written to a temporary name in the same
//! directory, fsynced, renamed over the old one, and the directory fsynced. A crash leaves the
//! old file or the new one, never half of either.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use fs_err::os::unix::fs::OpenOptionsExt as _;

/// Writes `contents` to `path` atomically with permission bits `mode`. The temporary file is
/// `<name><temp_suffix>` next to it, created with `mode` (so a secret is never readable by
/// others, not even briefly). Under `sources.list.d` the suffix must be one apt ignores
/// silently (`.dpkg-tmp`).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, temp_suffix: &str) -> io::Result<()> {
    let temp = temp_path(path, temp_suffix);
    // A temp file left by a crash would make `create_new` fail: it is ours, remove it.
    match fs_err::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        // The umask may have narrowed `mode`; a key file must still be readable by `_apt`.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs_err::rename(&temp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&temp);
    }
    result
}

/// Like [`write_atomic`], but leaves the file alone when it already holds `contents` with
/// `mode`. Returns whether it wrote.
pub fn write_if_changed(
    path: &Path,
    contents: &[u8],
    mode: u32,
    temp_suffix: &str,
) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    match fs_err::read(path) {
        Ok(old)
            if old == contents && fs_err::metadata(path)?.permissions().mode() & 0o7777 == mode =>
        {
            Ok(false)
        }
        Ok(_) => write_atomic(path, contents, mode, temp_suffix).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomic(path, contents, mode, temp_suffix).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// Removes `path` if it exists and makes the removal durable. Returns whether it existed.
pub fn remove_durably(path: &Path) -> io::Result<bool> {
    match fs_err::remove_file(path) {
        Ok(()) => sync_dir(path).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` (same directory) and makes the rename durable.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs_err::rename(from, to)?;
    sync_dir(to)
}

/// fsyncs the directory holding `path`, so a rename or removal in it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs_err::File::open(dir)?.sync_all()
}

fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_with_the_mode_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(write_if_changed(&path, b"one", 0o600, ".tmp").unwrap());
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!write_if_changed(&path, b"one", 0o600, ".tmp").unwrap());
        assert!(write_if_changed(&path, b"two", 0o600, ".tmp").unwrap());
        assert_eq!(fs_err::read(&path).unwrap(), b"two");
        // A stale temp file from a crash does not block the next write.
        fs_err::write(dir.path().join("secret.tmp"), "junk").unwrap();
        assert!(write_if_changed(&path, b"three", 0o600, ".tmp").unwrap());
        assert!(!dir.path().join("secret.tmp").exists());
        assert!(remove_durably(&path).unwrap());
        assert!(!remove_durably(&path).unwrap());
    }
}
