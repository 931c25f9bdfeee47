//! Snapshot manifests and channel publications: small JSON blobs in the content-addressed
//! store, named by their sha256 in the catalog.
//!
//! A **manifest** (format 1) lists, per suite and per `<component>/binary-<arch>`, the index
//! blobs of a snapshot:
//!
//! ```json
//! {"format":1,"suites":{"stable":{"codename":"stable","components":["main"],
//!   "architectures":["amd64"],"indices":{"main/binary-amd64":{"packages":12,
//!   "plain":{"sha256":"…","size":4711},"xz":{"sha256":"…","size":1200},"gz":null}}}}}
//! ```
//!
//! `plain` is always present (the uncompressed `Packages`); `xz`/`gz` are upstream's own
//! files when the index equals upstream's, or rendered once when a snapshot derives a new
//! index; `table` is the index's package table (name, architecture, version, source, sha256,
//! size, filename; `table.rs`), which diffs, retention and `pool/` lookups read instead of the
//! index. Two snapshots with the same membership have the same manifest digest.
//!
//! A **publication** (format 1) is what a channel serves: the snapshot, and per suite the
//! signed `Release`, `InRelease` and `Release.gpg` blobs.

use aptgate_mirror::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub sha256: Sha256,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFiles {
    /// How many packages the index lists.
    pub packages: u64,
    pub plain: BlobRef,
    pub xz: Option<BlobRef>,
    pub gz: Option<BlobRef>,
    /// The package table of `plain` (see `table.rs`); manifests written before tables
    /// existed have none, and theirs are built from the index when needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<BlobRef>,
}

impl IndexFiles {
    /// The files a Release lists for this index: `(file name, blob)`.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, BlobRef)> {
        [
            ("Packages", Some(self.plain)),
            ("Packages.gz", self.gz),
            ("Packages.xz", self.xz),
        ]
        .into_iter()
        .filter_map(|(name, blob)| blob.map(|b| (name, b)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteManifest {
    pub codename: Option<String>,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    /// `<component>/binary-<arch>` → its index files.
    pub indices: BTreeMap<String, IndexFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub suites: BTreeMap<String, SuiteManifest>,
}

impl Manifest {
    pub const FORMAT: u32 = 1;

    pub fn new() -> Self {
        Self {
            format: Self::FORMAT,
            suites: BTreeMap::new(),
        }
    }

    pub fn package_count(&self) -> u64 {
        self.suites
            .values()
            .flat_map(|s| s.indices.values())
            .map(|i| i.packages)
            .sum()
    }
}

impl Default for Manifest {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRelease {
    pub release: BlobRef,
    pub in_release: BlobRef,
    pub release_gpg: BlobRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub format: u32,
    pub channel: String,
    pub snapshot: String,
    pub manifest: Sha256,
    /// Unix seconds of signing.
    pub signed_at: i64,
    pub valid_until: Option<i64>,
    pub suites: BTreeMap<String, SignedRelease>,
}
