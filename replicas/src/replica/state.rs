//! What a replica serves, and the one file that says so.
//!
//! `<data_dir>/replica/state.json` (written temp → fsync → rename → fsync of the directory):
//!
//! ```json
//! {"format": 1, "seq": 42, "manifest": "<sha256 of the signed manifest blob>",
//!  "keys": "<sha256 of the keys file blob>", "path": ["canonical", "hub"],
//!  "applied_at": 1700000000, "trusted": ["<fingerprint>", …], "pinned": "<fingerprint>"}
//! ```
//!
//! It is written only once everything the manifest's channels need (per policy) is in the
//! store, so replacing it is the atomic switch of every channel at once. Everything else is
//! blobs in the store, by digest: the signed manifest, the keys file, each `InRelease`,
//! `Release`, `Release.gpg`, index and `.deb`. A sync killed before the rename leaves the
//! previous file, so the previous state is served; blobs already fetched are skipped next time.

use crate::protocol::{FeedManifest, KeysRef};
use aptgate_channels::manifest::SignedRelease;
use aptgate_mirror::packages::{decompress, inflate_cap, pool_entries};
use aptgate_mirror::release::SuiteRelease;
use aptgate_mirror::{Sha256, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    pub seq: i64,
    /// The blob holding the signed manifest text, passed to children unchanged.
    pub manifest: Sha256,
    /// The blob holding the armored public keys the manifest names (the pinned key in it
    /// verifies the manifest again at start).
    pub keys: Sha256,
    /// The hops the manifest came through, canonical first.
    pub path: Vec<String>,
    pub applied_at: i64,
    /// The canonical's keys this replica trusts (fingerprints): every key in the last keys
    /// file that a manifest signed by a trusted key named. So a rotation's new key is learned
    /// while the old one still signs, and a retired key is no longer trusted. Empty in state
    /// files written before rotations were followed: then `[replica] fingerprint` alone.
    #[serde(default)]
    pub trusted: Vec<String>,
    /// The `[replica] fingerprint` `trusted` was learned from: another pin starts over from it.
    #[serde(default)]
    pub pinned: String,
}

impl StateFile {
    pub const FORMAT: u32 = 1;

    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        match fs_err::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The switch: temp file, fsync, rename, fsync of the directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("serializes");
        aptgate_agent::files::write_atomic(path, &bytes, 0o644, ".tmp")
    }
}

/// One suite as served: its signed files and what its verified Release lists.
#[derive(Debug)]
pub struct AppliedSuite {
    pub signed: SignedRelease,
    /// Path below `dists/<suite>/` → (sha256, size).
    pub files: HashMap<String, (Sha256, u64)>,
    pub by_hash: HashMap<Sha256, u64>,
    pub valid_until: Option<i64>,
}

#[derive(Debug)]
pub struct AppliedChannel {
    pub snapshot: String,
    pub suites: BTreeMap<String, AppliedSuite>,
    /// by-hash files of superseded publications still in their grace period → size.
    pub grace: HashMap<Sha256, u64>,
    /// `pool/…` path → (sha256, size), from the verified `Packages` indices.
    pub pool: HashMap<String, (Sha256, u64)>,
}

/// Everything a replica serves, built from blobs that were verified before they were stored.
#[derive(Debug)]
pub struct Applied {
    pub seq: i64,
    pub published_at: i64,
    pub manifest_blob: Sha256,
    pub path: Vec<String>,
    pub keys: KeysRef,
    pub channels: BTreeMap<String, AppliedChannel>,
}

impl Applied {
    /// The earliest `Valid-Until` of any served suite.
    pub fn first_expiry(&self) -> Option<i64> {
        self.channels
            .values()
            .flat_map(|c| c.suites.values())
            .filter_map(|s| s.valid_until)
            .min()
    }

    /// Pool files the served indices list that the store lacks: (count, bytes).
    pub fn missing(&self, store: &Store) -> (u64, u64) {
        let mut seen = HashSet::new();
        let (mut count, mut bytes) = (0, 0);
        for (digest, size) in self.channels.values().flat_map(|c| c.pool.values()) {
            if seen.insert(*digest) && !store.contains(digest) {
                count += 1;
                bytes += size;
            }
        }
        (count, bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read blob {digest} from the store: {source}")]
    Read {
        digest: Sha256,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// Reads what a verified suite's blobs say: its Release (already verified) and the pool files
/// its `Packages` indices list.
pub async fn read_suite(
    store: &Store,
    suite: &str,
    signed: &SignedRelease,
    release_text: &str,
    pool: &mut HashMap<String, (Sha256, u64)>,
) -> Result<AppliedSuite, StateError> {
    let release = SuiteRelease::parse(release_text).map_err(|e| StateError::Invalid {
        what: format!("dists/{suite}/InRelease"),
        reason: e.to_string(),
    })?;
    // One `Packages` form per index: the plain one if listed, else a compressed one.
    let mut by_index: BTreeMap<&str, (&str, Sha256, u64)> = BTreeMap::new();
    for (name, (digest, size)) in &release.files {
        let Some(stem) = packages_stem(name) else {
            continue;
        };
        let better = match by_index.get(stem) {
            None => true,
            Some((have, _, _)) => rank(name) < rank(have),
        };
        if better {
            by_index.insert(stem, (name.as_str(), *digest, *size));
        }
    }
    for (stem, (name, digest, size)) in by_index {
        let bytes = store
            .read(&digest)
            .await
            .map_err(|source| StateError::Read { digest, source })?;
        let plain = if name == stem {
            bytes
        } else {
            let listed = release.files.get(stem).map(|(_, s)| *s);
            decompress(name, &bytes, inflate_cap(listed, size)).map_err(|e| {
                StateError::Invalid {
                    what: format!("dists/{suite}/{name}"),
                    reason: e.to_string(),
                }
            })?
        };
        let entries = tokio::task::spawn_blocking(move || pool_entries(&plain))
            .await
            .expect("index parse does not panic");
        for (path, entry) in entries.entries {
            pool.insert(path.as_str().to_owned(), (entry.sha256, entry.size));
        }
    }
    Ok(AppliedSuite {
        signed: signed.clone(),
        valid_until: release.valid_until.map(|v| v.timestamp()),
        files: release.files,
        by_hash: release.by_hash,
    })
}

/// `main/binary-amd64/Packages.xz` → `main/binary-amd64/Packages`.
fn packages_stem(name: &str) -> Option<&str> {
    let stem = aptgate_mirror::packages::uncompressed_name(name).unwrap_or(name);
    stem.ends_with("/Packages").then_some(stem)
}

/// Which form of an index to read: the plain one costs no decompression.
fn rank(name: &str) -> u8 {
    if name.ends_with(".xz") {
        2
    } else if name.ends_with(".gz") {
        1
    } else {
        0
    }
}

/// The channels of `manifest` this replica carries.
pub fn carried<'a>(
    manifest: &'a FeedManifest,
    config: &'a aptgate_config::ReplicaConfig,
) -> impl Iterator<Item = (&'a String, &'a crate::protocol::FeedChannel)> {
    manifest
        .channels
        .iter()
        .filter(|(name, _)| config.carries(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(StateFile::read(&path).unwrap(), None, "nothing applied yet");
        let mut state = StateFile {
            format: StateFile::FORMAT,
            seq: 3,
            manifest: Sha256::of(b"signed"),
            keys: Sha256::of(b"keys"),
            path: vec!["canonical".into(), "berlin".into()],
            applied_at: 1,
            trusted: vec!["AB12".into(), "CD34".into()],
            pinned: "AB12".into(),
        };
        state.write(&path).unwrap();
        state.seq = 4;
        state.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap(), Some(state));
        let left: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left");
    }

    #[test]
    fn a_state_file_from_before_key_rotations_were_followed_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let digest = Sha256::of(b"x").to_hex();
        let old = format!(
            r#"{{"format": 1, "seq": 2, "manifest": "{digest}", "keys": "{digest}",
                "path": ["canonical"], "applied_at": 1}}"#
        );
        fs_err::write(&path, old).unwrap();
        let state = StateFile::read(&path).unwrap().unwrap();
        assert!(state.trusted.is_empty() && state.pinned.is_empty());
    }

    #[test]
    fn the_plain_index_is_read_first_and_only_packages_indices_count() {
        assert_eq!(
            packages_stem("main/binary-amd64/Packages.xz"),
            Some("main/binary-amd64/Packages")
        );
        assert_eq!(packages_stem("main/i18n/Translation-en.xz"), None);
        assert!(rank("a/Packages") < rank("a/Packages.gz"));
        assert!(rank("a/Packages.gz") < rank("a/Packages.xz"));
    }
}
