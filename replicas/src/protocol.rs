//! The replica protocol, version 1: what a replica and its parent (the canonical server or
//! another replica) exchange. Every route is under `/api/v1/replica/` and takes the replica
//! token as `Authorization: Bearer …`.
//!
//! | route | what it answers |
//! |---|---|
//! | `GET manifest?after=SEQ&wait=SECS` | a [`ManifestEnvelope`]; waits (long poll, ≤ 60 s) while the feed's `seq` ≤ `after` |
//! | `GET keys` | the armored public keys (`/keys/<name>.asc` on the canonical server) |
//! | `GET blobs/sha256/<hex>?size=N` | a blob by digest (InRelease, indices, `.deb`s; `Range` honoured) |
//! | `POST blobs` | many small blobs in one answer (a [`BlobBatch`] in, [`crate::batch`] frames out) |
//! | `POST status` | a [`ReplicaReport`] (the replica's own, or a child's forwarded) |
//!
//! The envelope's `signed` text is an OpenPGP cleartext signature (as `InRelease` is), made
//! with the canonical server's channel signing keys, over the JSON of a [`FeedManifest`]: a
//! replica verifies it against the fingerprint pinned at setup and refuses a `seq` lower than
//! the one it applied. The `path` of hops is outside the signature: each replica in a chain
//! passes `signed` through unchanged and appends itself.
//!
//! Trust chain: pinned key → manifest → (digest) InRelease → (signature, again) Release's
//! SHA256 list → indices → `Packages` SHA256 → `.deb`. The keys file is checked against
//! the digest the manifest names. A parent can withhold (seen as lag), never forge.

use aptgate_channels::manifest::{BlobRef, SignedRelease};
use aptgate_mirror::keyring::Keyring;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version in every [`FeedManifest`].
pub const PROTOCOL: u32 = 1;

pub const MANIFEST_PATH: &str = "/api/v1/replica/manifest";
pub const KEYS_PATH: &str = "/api/v1/replica/keys";
pub const BLOBS_PATH: &str = "/api/v1/replica/blobs/sha256";
pub const BLOB_BATCH_PATH: &str = "/api/v1/replica/blobs";
pub const STATUS_PATH: &str = "/api/v1/replica/status";

/// The longest a manifest long poll is held open.
pub const MAX_WAIT_SECS: u64 = 60;

/// What `GET manifest` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEnvelope {
    /// The cleartext-signed JSON of a [`FeedManifest`], exactly as the canonical signed it.
    pub signed: String,
    /// The servers the manifest passed through, canonical first (not signed: informative).
    #[serde(default)]
    pub path: Vec<String>,
}

/// The signed part: one numbered, atomic cut across every published channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedManifest {
    pub protocol: u32,
    /// Rises whenever anything below changes; never lowered.
    pub seq: i64,
    /// When the canonical first published this `seq` (unix seconds).
    pub published_at: i64,
    /// The armored public keys file, `/keys/<name>.asc`.
    pub keys: KeysRef,
    /// Every published channel, by name.
    pub channels: BTreeMap<String, FeedChannel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRef {
    /// The file name's stem (`aptgate` → `/keys/aptgate.asc`).
    pub name: String,
    pub sha256: aptgate_mirror::Sha256,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedChannel {
    /// The snapshot the channel publishes (for reports).
    pub snapshot: String,
    /// Suite → its `Release`, `InRelease` and `Release.gpg` blobs.
    pub suites: BTreeMap<String, SignedRelease>,
    /// Index files of publications the channel left within the by-hash grace period: still
    /// served under `by-hash/` for apt clients holding an older `InRelease`.
    #[serde(default)]
    pub grace: Vec<BlobRef>,
}

/// What `POST blobs` asks for: blobs by digest and size, at most [`BATCH_MAX_BLOBS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobBatch {
    pub blobs: Vec<BlobRef>,
}

/// The most blobs one `POST blobs` may ask for.
pub const BATCH_MAX_BLOBS: usize = 1024;

/// Blobs larger than this are never sent in a batch (a parent reads each batched blob into
/// memory): they travel alone, streamed, with `Range` for resumes.
pub const BATCH_MAX_BLOB_SIZE: u64 = 4 << 20;

/// What a replica reports to its parent after every attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica's configured name (the canonical keys reports by the token's name).
    pub name: String,
    /// The aptgate version the replica runs.
    #[serde(default)]
    pub version: String,
    /// The parent URL it follows.
    pub parent: String,
    /// The hops from the canonical server to this replica, itself last.
    #[serde(default)]
    pub path: Vec<String>,
    /// The `seq` it serves; `None` before its first complete sync.
    pub seq_applied: Option<i64>,
    /// The newest `seq` it has seen (verified).
    pub seq_seen: Option<i64>,
    /// Per carried channel: the snapshot served and the InRelease digest per suite.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelReport>,
    /// `.deb`s the served `Packages` list that are not stored yet (`on_demand`), and their bytes.
    pub blobs_missing: u64,
    pub bytes_missing: u64,
    pub last_success_at: Option<i64>,
    pub last_error: Option<ReportedError>,
    /// Seconds until the first served `InRelease` expires (`Valid-Until`); `None` if none does.
    pub valid_until_headroom_secs: Option<i64>,
    /// When the replica wrote this report (its clock).
    pub reported_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelReport {
    pub snapshot: String,
    pub in_release_sha256: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedError {
    pub at: i64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the replica manifest's signature does not verify against the key(s) this replica trusts ({fingerprint}): {reason}\nhint: check [replica] fingerprint against `aptgate key list` on the canonical server; after a key rotation this replica missed, run `aptgate replica init` again")]
    BadSignature { fingerprint: String, reason: String },
    #[error("the replica manifest is not valid JSON: {0}")]
    Malformed(String),
    #[error("the replica manifest speaks protocol {0}; this aptgate speaks {PROTOCOL}\nhint: upgrade this replica")]
    Protocol(u32),
}

/// Checks `signed` against `keyring` (the pinned key only) and parses what it signs.
pub fn verify_manifest(
    keyring: &Keyring,
    fingerprint: &str,
    signed: &str,
) -> Result<FeedManifest, ProtocolError> {
    let text = keyring
        .verify_cleartext(signed)
        .map_err(|e| ProtocolError::BadSignature {
            fingerprint: fingerprint.to_owned(),
            reason: e.to_string(),
        })?;
    let manifest: FeedManifest =
        serde_json::from_str(&text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if manifest.protocol != PROTOCOL {
        return Err(ProtocolError::Protocol(manifest.protocol));
    }
    Ok(manifest)
}

/// The URL of a blob at `parent`.
pub fn blob_url(parent: &str, digest: &aptgate_mirror::Sha256, size: u64) -> String {
    format!(
        "{}{BLOBS_PATH}/{}?size={size}",
        parent.trim_end_matches('/'),
        digest.to_hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_parent_s_unknown_fields_are_ignored_and_a_missing_one_is_an_error() {
        let body = r#"{"protocol":1,"seq":7,"published_at":1,"future":true,
            "keys":{"name":"aptgate","sha256":"0000000000000000000000000000000000000000000000000000000000000000","size":3},
            "channels":{"approved":{"snapshot":"s1","suites":{},"grace":[],"weight":2}}}"#;
        let manifest: FeedManifest = serde_json::from_str(body).unwrap();
        assert_eq!(manifest.seq, 7);
        assert!(manifest.channels["approved"].grace.is_empty());
        let without_seq = body.replace(r#""seq":7,"#, "");
        assert!(serde_json::from_str::<FeedManifest>(&without_seq).is_err());
        let envelope: ManifestEnvelope = serde_json::from_str(r#"{"signed":"x"}"#).unwrap();
        assert!(envelope.path.is_empty(), "a path is optional");
    }

    #[test]
    fn blob_urls_name_the_digest_and_size_below_the_parent() {
        let digest = aptgate_mirror::Sha256::of(b"x");
        assert_eq!(
            blob_url("https://aptgate.example.org/", &digest, 1),
            format!(
                "https://aptgate.example.org/api/v1/replica/blobs/sha256/{}?size=1",
                digest.to_hex()
            )
        );
    }
}
