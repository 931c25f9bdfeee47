//! Path records: which blob a source's path resolved to, and how it was fetched.
//!
//! ```text
//! <data>/refs/<source>/<path>.ref   JSON: {"sha256": …, "size": …, "fetched_at": …, …}
//! <data>/refs/.tmp/                 records being written
//! ```
//!
//! Index files need no record (the verified Release names their digest); `InRelease`,
//! `Release`, `Release.gpg` and pool files do. Records are written to `.tmp/` and renamed, so a
//! reader sees the old record or the new one, never half of one.

use crate::digest::Sha256;
use aptgate_config::SourceName;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathRecord {
    pub sha256: Sha256,
    pub size: u64,
    /// Unix seconds when upstream last confirmed this content (200 or 304).
    pub fetched_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Refs {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Refs {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs_err::create_dir_all(root.join(".tmp"))?;
        for entry in fs_err::read_dir(root.join(".tmp"))? {
            let _ = fs_err::remove_file(entry?.path());
        }
        Ok(Self { root })
    }

    /// The directory holding one source's records.
    pub fn source_dir(&self, source: &SourceName) -> PathBuf {
        self.root.join(source.as_str())
    }

    fn path(&self, source: &SourceName, path: &str) -> PathBuf {
        // Both parts are validated names/paths: no `..`, no empty segments.
        self.source_dir(source).join(format!("{path}.ref"))
    }

    pub async fn get(&self, source: &SourceName, path: &str) -> Option<PathRecord> {
        let bytes = fs_err::tokio::read(self.path(source, path)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub async fn put(
        &self,
        source: &SourceName,
        path: &str,
        record: &PathRecord,
    ) -> io::Result<()> {
        let dest = self.path(source, path);
        fs_err::tokio::create_dir_all(dest.parent().expect("ref has a parent")).await?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(".tmp")
            .join(format!("{}-{n}", std::process::id()));
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        let mut file = fs_err::tokio::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &json).await?;
        // A pool record is a hint (the verified indices say the same); losing one to a power
        // cut costs a lookup, not correctness, so only release records pay for an fsync.
        if !path.starts_with("pool/") {
            file.sync_all().await?;
        }
        fs_err::tokio::rename(&tmp, &dest).await
    }

    /// Every record of a source: (path, record). Unreadable records are skipped.
    pub fn walk(&self, source: &SourceName) -> io::Result<Vec<(String, PathRecord)>> {
        let base = self.source_dir(source);
        let mut out = Vec::new();
        let mut dirs = vec![base.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs_err::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Some(relative) = path
                    .strip_prefix(&base)
                    .ok()
                    .and_then(|p| p.to_str())
                    .and_then(|p| p.strip_suffix(".ref"))
                else {
                    continue;
                };
                let Ok(bytes) = fs_err::read(&path) else {
                    continue;
                };
                if let Ok(record) = serde_json::from_slice(&bytes) {
                    out.push((relative.to_owned(), record));
                }
            }
        }
        Ok(out)
    }

    /// Deletes a record (garbage collection of the blob it named).
    pub fn remove(&self, source: &SourceName, path: &str) -> io::Result<()> {
        match fs_err::remove_file(self.path(source, path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
