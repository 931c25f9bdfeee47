//! The catalog's domain types: what callers hand in and get back (rows stay private).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A `.deb` as a verified `Packages` index describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPackage {
    /// Lowercase hex.
    pub sha256: String,
    pub name: String,
    /// The exact version string: it is identity, never normalised.
    pub version: String,
    pub architecture: String,
    /// The source package (`Source:`, or the package's own name).
    pub source: String,
    pub size: u64,
    /// Upstream `Filename:`.
    pub pool_path: String,
    /// The raw control stanza.
    pub control: String,
    /// The upstream source it was recorded from (where a channel fetches it on first demand).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub package: NewPackage,
    /// Unix seconds when this exact file was first recorded.
    pub first_seen: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    Sync,
    Filter,
    Merge,
    Pull,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Filter => "filter",
            Self::Merge => "merge",
            Self::Pull => "pull",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Sync, Self::Filter, Self::Merge, Self::Pull]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An immutable view of sources at one moment. Its membership is the manifest blob (a
/// content-addressed file listing the index files per suite/component/architecture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub kind: SnapshotKind,
    pub description: String,
    pub manifest_sha256: String,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Sync,
    Snapshot,
    Promote,
    Hold,
    Release,
    Rollback,
    Key,
}

impl AuditAction {
    pub const ALL: [Self; 7] = [
        Self::Sync,
        Self::Snapshot,
        Self::Promote,
        Self::Hold,
        Self::Release,
        Self::Rollback,
        Self::Key,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Snapshot => "snapshot",
            Self::Promote => "promote",
            Self::Hold => "hold",
            Self::Release => "release",
            Self::Rollback => "rollback",
            Self::Key => "key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded change: who did what, when, to which channel, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: AuditAction,
    pub channel: Option<String>,
    pub from_snapshot: Option<String>,
    pub to_snapshot: Option<String>,
    pub comment: Option<String>,
    /// A short machine-readable summary (JSON), e.g. a diff's counts.
    pub summary: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub entry: NewAuditEntry,
}

/// Which audit entries to return, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    pub channel: Option<String>,
    pub action: Option<AuditAction>,
    /// Only entries at or after this time (unix seconds).
    pub since: Option<i64>,
    /// At most this many; `None` means 100.
    pub limit: Option<i64>,
}

/// Why a channel moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelAction {
    Promote,
    Rollback,
    /// An automatic move: the channel follows a source or another channel.
    Follow,
    /// Same snapshot, freshly signed Release (a `Valid-Until` refresh or a key change).
    Resign,
}

impl ChannelAction {
    pub const ALL: [Self; 4] = [Self::Promote, Self::Rollback, Self::Follow, Self::Resign];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Follow => "follow",
            Self::Resign => "resign",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for ChannelAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a channel points now. A channel that was never published has no snapshot yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub name: String,
    pub snapshot_id: Option<String>,
    /// The publication blob (signed Release files per suite) apt is served.
    pub publication_sha256: Option<String>,
    /// Rises by one with every move; a move names the generation it was computed from.
    pub generation: i64,
    pub updated_at: i64,
    /// For channels created through the API: their rules (JSON); `None` for configured ones.
    pub rules: Option<String>,
}

/// One move of a channel, as recorded in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMove {
    pub channel: String,
    /// The generation the mover saw; the move fails if the channel moved since.
    pub expected_generation: i64,
    pub snapshot_id: String,
    pub publication_sha256: String,
    pub at: i64,
    pub action: ChannelAction,
    pub actor: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub generation: i64,
    pub snapshot_id: String,
    pub publication_sha256: String,
    pub at: i64,
    pub action: ChannelAction,
    pub actor: String,
    pub comment: Option<String>,
}

/// A package a channel keeps at its current version across promotions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub package: String,
    pub at: i64,
    pub actor: String,
    pub comment: Option<String>,
}
