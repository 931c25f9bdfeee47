//! Storing many small blobs at once (an `immediate` sync, a rescue, a `retain = "all"`
//! promotion) with the single write's guarantees at a fraction of its cost.
//!
//! One blob costs an `fsync` of its data (~0.35 ms here) before it may be renamed into place.
//! A batch writes every blob to its temp file, makes all of their data durable with one
//! `syncfs` of the store's file system, renames each into place, then `fsync`s each shard
//! directory it touched once. A blob visible under its name is always complete and checked;
//! a crash before the directory `fsync`s may lose some renames (those blobs are fetched
//! again), never expose a partial one.

use super::{Expected, Store, StoreError, TempGuard};
use crate::digest::Sha256;
use std::collections::BTreeSet;
use std::io::Write;

/// A blob held in memory, for [`Store::insert_batch`].
#[derive(Debug)]
pub struct Pending {
    pub bytes: bytes::Bytes,
    pub expected: Expected,
}

impl Store {
    /// Stores `blobs` together (blocking: call it off the async workers). Each result says
    /// what became of the blob at the same position: its digest, or why it was refused.
    pub fn insert_batch(&self, blobs: Vec<Pending>) -> Vec<Result<Sha256, StoreError>> {
        let mut results: Vec<Option<Result<Sha256, StoreError>>> =
            blobs.iter().map(|_| None).collect();
        let mut staged: Vec<(usize, TempGuard, Sha256)> = Vec::with_capacity(blobs.len());
        for (i, blob) in blobs.into_iter().enumerate() {
            match self.stage(&blob) {
                Ok((guard, digest)) => staged.push((i, guard, digest)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !staged.is_empty() {
            if let Err(e) = self.flush_staged(&mut staged) {
                let reason = e.to_string();
                for (i, _, _) in staged.drain(..) {
                    results[i] = Some(Err(StoreError::Io(std::io::Error::other(reason.clone()))));
                }
            }
        }
        for (i, _, digest) in staged {
            results[i] = Some(Ok(digest));
        }
        results
            .into_iter()
            .map(|r| r.expect("every blob has a result"))
            .collect()
    }

    /// Checks a blob against what it must be and writes it to a temp file (not synced).
    fn stage(&self, blob: &Pending) -> Result<(TempGuard, Sha256), StoreError> {
        let got = blob.bytes.len() as u64;
        if let Some(expected) = blob.expected.size {
            if got > expected {
                return Err(StoreError::TooLong { expected, got });
            }
            if got != expected {
                return Err(StoreError::WrongSize { expected, got });
            }
        }
        let digest = Sha256::of(&blob.bytes);
        if let Some(expected) = blob.expected.sha256 {
            if digest != expected {
                return Err(StoreError::WrongDigest {
                    expected,
                    got: digest,
                });
            }
        }
        let path = self.new_tmp_path();
        let guard = TempGuard(Some(path.clone()));
        fs_err::File::create(&path)?.write_all(&blob.bytes)?;
        Ok((guard, digest))
    }

    /// One `syncfs`, the renames, one `fsync` per shard directory.
    fn flush_staged(&self, staged: &mut [(usize, TempGuard, Sha256)]) -> std::io::Result<()> {
        let root = fs_err::File::open(self.root())?;
        rustix::fs::syncfs(root.file()).map_err(std::io::Error::from)?;
        let mut dirs = BTreeSet::new();
        {
            let _names = self.names.lock().expect("lock poisoned");
            for (_, guard, digest) in staged.iter_mut() {
                let final_path = self.blob_path(digest);
                let dir = final_path
                    .parent()
                    .expect("blob path has a shard dir")
                    .to_owned();
                if !dirs.contains(&dir) {
                    fs_err::create_dir_all(&dir)?;
                }
                let tmp = guard.0.take().expect("staged blobs keep their temp path");
                if let Err(e) = fs_err::rename(&tmp, &final_path) {
                    guard.0 = Some(tmp);
                    return Err(e);
                }
                dirs.insert(dir);
            }
        }
        for dir in dirs {
            fs_err::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stores_what_checks_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = bytes::Bytes::from_static(b"good");
        let pending = |bytes: &'static [u8], expected: Expected| Pending {
            bytes: bytes::Bytes::from_static(bytes),
            expected,
        };
        let results = store.insert_batch(vec![
            pending(b"good", Expected::exactly(Sha256::of(&good), 4)),
            pending(b"evil", Expected::exactly(Sha256::of(&good), 4)),
            pending(b"longer", Expected::exactly(Sha256::of(b"longer"), 4)),
            pending(b"any", Expected::default()),
        ]);
        assert_eq!(results[0].as_ref().unwrap(), &Sha256::of(&good));
        assert!(matches!(results[1], Err(StoreError::WrongDigest { .. })));
        assert!(matches!(results[2], Err(StoreError::TooLong { .. })));
        assert!(results[3].is_ok());
        assert!(store.contains(&Sha256::of(&good)));
        assert!(!store.contains(&Sha256::of(b"evil")));
        assert_eq!(store.tmp_files(), 0, "nothing left behind");
    }
}
