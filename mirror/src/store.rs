//! The content-addressed blob store.
//!
//! ```text
//! <store>/
//!   FORMAT                 "aptgate-store 1": the layout version below
//!   blobs/sha256/ab/abcdef…  one file per blob, named by its full hex digest
//!   tmp/                   blobs being written and pass-through scratch files; never served
//!                          from here by path, emptied at open
//!   quarantine/            blobs that failed `aptgate store verify`, kept for inspection
//! ```
//!
//! A blob is written to `tmp/`, hashed and counted while it streams in, checked against the size
//! and digest the signed indices promised, `fsync`ed, renamed into `blobs/` and the directory
//! `fsync`ed. A crash at any point leaves either no blob or a complete one: a half-written file
//! only ever exists in `tmp/`, which the one server using the data directory clears at start.
//!
//! A blob of known size has its space reserved (`fallocate`) before the first byte is fetched:
//! a full file system is found before a client is answered, not halfway through its body.

use crate::digest::{Sha256, Sha256Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

mod batch;

pub use batch::Pending;

const FORMAT: &str = "aptgate-store 1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} has layout {found:?}, this aptgate understands {FORMAT:?}")]
    UnknownFormat { path: PathBuf, found: String },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("expected {expected} bytes but got {got} or more")]
    TooLong { expected: u64, got: u64 },
    #[error("expected {expected} bytes but got {got}")]
    WrongSize { expected: u64, got: u64 },
    #[error("digest mismatch: expected sha256 {expected}, got {got}")]
    WrongDigest { expected: Sha256, got: Sha256 },
}

impl StoreError {
    /// The file system holding the store is full (or the user's quota is used up).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Io(e) if is_storage_full(e))
    }
}

/// Whether an IO error says there is no space left (`ENOSPC`, `EDQUOT`).
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// What a blob must turn out to be; `None` means "not known in advance".
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    pub sha256: Option<Sha256>,
    pub size: Option<u64>,
}

impl Expected {
    pub fn exactly(sha256: Sha256, size: u64) -> Self {
        Self {
            sha256: Some(sha256),
            size: Some(size),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Held while a blob is renamed into place or touched, and while garbage collection
    /// checks a blob's age and deletes it: a blob written again (same content) or touched
    /// after the collection listed it is never deleted under the writer.
    names: Arc<Mutex<()>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Directories under `tmp/` that files being written are spread over.
const TMP_DIRS: u64 = 16;

impl Store {
    /// Opens (creating if needed) the store at `root` and clears leftovers of interrupted writes.
    /// Only the one process serving the data directory may do this (it holds the data
    /// directory's lock): `tmp/` also holds the downloads under way.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self::open_shared(root)?;
        store.clear_tmp()?;
        Ok(store)
    }

    /// Opens the store without touching `tmp/`, for a command that runs beside a server
    /// using it (`store verify`).
    pub fn open_shared(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in ["blobs/sha256", "tmp", "quarantine"] {
            fs_err::create_dir_all(root.join(dir))?;
        }
        let format_file = root.join("FORMAT");
        match fs_err::read_to_string(&format_file) {
            Ok(found) if found.trim() == FORMAT => {}
            Ok(found) => {
                return Err(StoreError::UnknownFormat {
                    path: root,
                    found: found.trim().to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs_err::write(&format_file, format!("{FORMAT}\n"))?
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Self {
            root,
            names: Arc::default(),
        })
    }

    /// Removes what interrupted writes left in `tmp/`.
    fn clear_tmp(&self) -> Result<(), StoreError> {
        let root = &self.root;
        for entry in fs_err::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            let _ = if path.is_dir() {
                fs_err::remove_dir_all(&path)
            } else {
                fs_err::remove_file(&path)
            };
        }
        for spread in 0..TMP_DIRS {
            fs_err::create_dir_all(root.join(format!("tmp/{spread:02x}")))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Sha256) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, digest: &Sha256) -> bool {
        self.blob_path(digest).is_file()
    }

    pub async fn read(&self, digest: &Sha256) -> io::Result<Vec<u8>> {
        fs_err::tokio::read(self.blob_path(digest)).await
    }

    /// Files under `tmp/`: blobs being written, or left by a crash until the next open.
    pub fn tmp_files(&self) -> usize {
        fs_err::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match fs_err::read_dir(e.path()) {
                Ok(files) => files.count(),
                Err(_) => 1,
            })
            .sum()
    }

    /// A fresh name under `tmp/`, for a file being written; whatever is left there is removed
    /// when the store is next opened. Spread over a few directories: files created by many
    /// downloads at once would otherwise all wait for one directory's lock.
    pub fn new_tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!("tmp/{:02x}", n % TMP_DIRS))
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// Starts writing a blob; bytes go to a temp file until [`BlobWriter::finish`] checks them.
    /// The expected size is reserved at once, so a full file system fails here
    /// ([`StoreError::is_storage_full`]), before anything is fetched or sent.
    pub fn writer(&self, expected: Expected) -> Result<BlobWriter, StoreError> {
        let tmp_path = self.new_tmp_path();
        let guard = TempGuard(Some(tmp_path.clone()));
        let file = fs_err::File::create(&tmp_path)?;
        if let Some(size) = expected.size.filter(|&s| s > 0) {
            reserve(&file, size)?;
        }
        let file = fs_err::tokio::File::from_std(file);
        Ok(BlobWriter {
            store: self.clone(),
            file,
            guard,
            hasher: Sha256Hasher::default(),
            written: 0,
            expected,
        })
    }

    /// Stores a small blob held in memory.
    pub async fn insert(&self, bytes: &[u8], expected: Expected) -> Result<Sha256, StoreError> {
        let size = expected.size.unwrap_or(bytes.len() as u64);
        let mut w = self.writer(Expected {
            size: Some(size),
            ..expected
        })?;
        w.write(bytes).await?;
        w.finish().await
    }

    /// Every blob: its digest, size and when it was written (its file's mtime).
    pub fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let mut out = Vec::new();
        for shard in fs_err::read_dir(self.root.join("blobs/sha256"))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs_err::read_dir(shard.path())? {
                let entry = entry?;
                let Some(digest) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Sha256::from_hex(n).ok())
                else {
                    continue;
                };
                // A blob removed meanwhile (another collection) is simply not listed.
                let Ok(meta) = entry.metadata() else { continue };
                out.push(BlobInfo {
                    digest,
                    size: meta.len(),
                    written: meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    /// Marks a blob as just referenced (its mtime is now): garbage collection never takes a
    /// blob touched within its grace period.
    pub fn touch(&self, digest: &Sha256) -> io::Result<()> {
        let _names = self.names.lock().expect("lock poisoned");
        fs_err::File::options()
            .write(true)
            .open(self.blob_path(digest))?
            .file()
            .set_modified(std::time::SystemTime::now())
    }

    /// Deletes a blob (garbage collection) unless it was written or touched after
    /// `written_before`; returns whether it was deleted. A blob already gone is not an error.
    pub fn remove_if_older(
        &self,
        digest: &Sha256,
        written_before: std::time::SystemTime,
    ) -> io::Result<bool> {
        let path = self.blob_path(digest);
        let _names = self.names.lock().expect("lock poisoned");
        match fs_err::metadata(&path) {
            Ok(meta) if meta.modified()? > written_before => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        match fs_err::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Re-hashes every blob; corrupt ones are moved to `quarantine/` and reported.
    /// `progress` is called after each blob with (blobs checked, bytes checked).
    pub fn verify_all(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for shard in fs_err::read_dir(self.root.join("blobs/sha256"))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs_err::read_dir(shard.path())? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                let (actual, size) = hash_file(&path)?;
                report.blobs += 1;
                report.bytes += size;
                if Sha256::from_hex(&name).ok() != Some(actual) {
                    let dest = self.root.join("quarantine").join(&name);
                    fs_err::rename(&path, &dest)?;
                    report.corrupt.push(CorruptBlob {
                        name,
                        actual,
                        quarantined_to: dest,
                    });
                }
                progress(report.blobs, report.bytes);
            }
        }
        Ok(report)
    }
}

/// Reserves `size` bytes for `file` without changing its length: `ENOSPC` now rather than
/// halfway through. File systems that cannot reserve space are written to without it.
fn reserve(file: &fs_err::File, size: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file.file(), FallocateFlags::KEEP_SIZE, 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot reserve {size} bytes for {}: {e}",
                file.path().display()
            ),
        )),
    }
}

fn hash_file(path: &Path) -> io::Result<(Sha256, u64)> {
    let mut file = fs_err::File::open(path)?;
    let mut hasher = Sha256Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// One stored blob, as [`Store::list`] finds it.
#[derive(Debug, Clone, Copy)]
pub struct BlobInfo {
    pub digest: Sha256,
    pub size: u64,
    pub written: std::time::SystemTime,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs: u64,
    pub bytes: u64,
    pub corrupt: Vec<CorruptBlob>,
}

#[derive(Debug)]
pub struct CorruptBlob {
    /// The file name the blob had (the digest it claimed).
    pub name: String,
    pub actual: Sha256,
    pub quarantined_to: PathBuf,
}

/// Removes the temp file unless the blob made it into the store.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs_err::remove_file(path);
        }
    }
}

/// A blob being written. Dropping it without [`finish`](Self::finish) discards it.
pub struct BlobWriter {
    store: Store,
    file: fs_err::tokio::File,
    guard: TempGuard,
    hasher: Sha256Hasher,
    written: u64,
    expected: Expected,
}

impl BlobWriter {
    /// The temp file, for readers that tail a blob while it is being written.
    pub fn tmp_path(&self) -> &Path {
        self.guard
            .0
            .as_deref()
            .expect("guard holds the path until finish")
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes; refuses (before writing) anything past the expected size.
    /// The bytes are in the file, visible to other readers, when this returns.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let total = self.written + bytes.len() as u64;
        if let Some(expected) = self.expected.size {
            if total > expected {
                return Err(StoreError::TooLong {
                    expected,
                    got: total,
                });
            }
        }
        self.file.write_all(bytes).await?;
        self.file.flush().await?;
        self.hasher.update(bytes);
        self.written = total;
        Ok(())
    }

    /// Checks size and digest, then makes the blob durable and visible under its digest.
    pub async fn finish(mut self) -> Result<Sha256, StoreError> {
        let digest = std::mem::take(&mut self.hasher).finish();
        if let Some(expected) = self.expected.size {
            if self.written != expected {
                return Err(StoreError::WrongSize {
                    expected,
                    got: self.written,
                });
            }
        }
        if let Some(expected) = self.expected.sha256 {
            if digest != expected {
                return Err(StoreError::WrongDigest {
                    expected,
                    got: digest,
                });
            }
        }
        self.file.sync_all().await?;
        let final_path = self.store.blob_path(&digest);
        let dir = final_path.parent().expect("blob path has a shard dir");
        fs_err::tokio::create_dir_all(dir).await?;
        let tmp = self
            .guard
            .0
            .take()
            .expect("guard holds the path until finish");
        let renamed = {
            let _names = self.store.names.lock().expect("lock poisoned");
            fs_err::rename(&tmp, &final_path)
        };
        if let Err(e) = renamed {
            self.guard.0 = Some(tmp);
            return Err(e.into());
        }
        // The rename is durable only once the directory entry is.
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || fs_err::File::open(dir)?.sync_all())
            .await
            .map_err(io::Error::other)??;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_digest_and_checks_expectations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.insert(b"hello", Expected::default()).await.unwrap();
        assert_eq!(d, Sha256::of(b"hello"));
        assert_eq!(store.read(&d).await.unwrap(), b"hello");

        let wrong = store
            .insert(b"hellO", Expected::exactly(d, 5))
            .await
            .unwrap_err();
        assert!(matches!(wrong, StoreError::WrongDigest { .. }), "{wrong}");
        let short = store.insert(b"hell", Expected::exactly(d, 5)).await;
        assert!(matches!(short, Err(StoreError::WrongSize { .. })));
        let long = store.insert(b"hello!", Expected::exactly(d, 5)).await;
        assert!(matches!(long, Err(StoreError::TooLong { .. })));
        // Nothing of the failed writes is left behind.
        assert_eq!(store.tmp_files(), 0);
    }

    #[tokio::test]
    async fn verify_quarantines_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = store.insert(b"good", Expected::default()).await.unwrap();
        let bad = store.insert(b"bad", Expected::default()).await.unwrap();
        fs_err::write(store.blob_path(&bad), b"bit rot").unwrap();
        let report = store.verify_all(|_, _| {}).unwrap();
        assert_eq!(report.blobs, 2);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.corrupt[0].name, bad.to_hex());
        assert!(store.contains(&good));
        assert!(!store.contains(&bad));
        assert!(report.corrupt[0].quarantined_to.is_file());
    }

    #[tokio::test]
    async fn a_blob_written_again_after_listing_is_not_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.insert(b"same", Expected::default()).await.unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        fs_err::File::options()
            .write(true)
            .open(store.blob_path(&d))
            .unwrap()
            .file()
            .set_modified(hour_ago)
            .unwrap();
        let listed = store.list().unwrap();
        assert!(listed[0].written <= hour_ago);
        // A writer stores the same bytes again after the collector listed them.
        store.insert(b"same", Expected::default()).await.unwrap();
        let cutoff = hour_ago + std::time::Duration::from_secs(60);
        assert!(!store.remove_if_older(&d, cutoff).unwrap());
        assert!(store.contains(&d));
        store.touch(&d).unwrap();
        assert!(!store.remove_if_older(&d, cutoff).unwrap());
        assert!(store
            .remove_if_older(&d, std::time::SystemTime::now())
            .unwrap());
        assert!(!store.contains(&d));
    }

    #[test]
    fn refuses_an_unknown_layout_and_clears_tmp() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        fs_err::write(dir.path().join("tmp/left-over.part"), b"half").unwrap();
        fs_err::write(dir.path().join("tmp/03/left-over.part"), b"half").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tmp_files(), 0);
        fs_err::write(dir.path().join("FORMAT"), "aptgate-store 99\n").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::UnknownFormat { .. })
        ));
    }
}
