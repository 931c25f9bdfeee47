//! The catalog's domain types: what callers hand in and get back (rows stay private).

use serde::{Deserialize, Serialize};
use std::fmt;

/// An enum stored and shown as a fixed lowercase word (the catalog's CHECK constraints list
/// the same words): `ALL`, `as_str`, `parse`, `Display` and serde as that word.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),*
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

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
    /// The raw control stanza, if the recorder kept it (sync does not: the stanza is in the
    /// snapshot's index blobs).
    pub control: String,
    /// The upstream source it was recorded from (where a channel fetches it on first demand).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub package: NewPackage,
    /// Unix seconds when this exact file was first recorded.
    pub first_seen: i64,
    /// When it left its origin's index: the last sync that still listed it. `None` while
    /// upstream lists it.
    pub last_seen: Option<i64>,
}

string_enum!(
    /// How a snapshot came to be.
    SnapshotKind {
        Sync => "sync",
        Filter => "filter",
        Merge => "merge",
        Pull => "pull",
    }
);

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
    /// When garbage collection deleted it (its blobs are gone; the row stays for history).
    #[serde(default)]
    pub deleted_at: Option<i64>,
    /// The last time a channel moved to it or a snapshot was derived from it.
    #[serde(default)]
    pub used_at: i64,
}

string_enum!(
    /// What an audit entry records. `Refused`: an agent request refused for who sent it
    /// (another host's data, a replay, a revoked host), so admins see attempts too.
    AuditAction {
        Sync => "sync",
        Snapshot => "snapshot",
        Promote => "promote",
        Hold => "hold",
        Release => "release",
        Rollback => "rollback",
        Key => "key",
        Channel => "channel",
        Gc => "gc",
        Host => "host",
        Token => "token",
        Rule => "rule",
        Command => "command",
        Approve => "approve",
        Decline => "decline",
        Upload => "upload",
        Profile => "profile",
        Refused => "refused",
        Lease => "lease",
        Rollout => "rollout",
    }
);

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

string_enum!(
    /// Why a channel moved (`Follow`: it follows a source; `Resign`: same snapshot, freshly
    /// signed Release for a `Valid-Until` refresh or a key change).
    ChannelAction {
        Promote => "promote",
        Rollback => "rollback",
        Follow => "follow",
        Resign => "resign",
    }
);

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

/// A source's last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSync {
    pub source: String,
    /// Unix seconds; every package the sync listed was seen then.
    pub synced_at: i64,
    pub snapshot_id: Option<String>,
}

/// A package that left upstream's index, queued by the sync that saw it leave and stored by
/// the rescue after it, or kept here (failed: `attempts` > 0) for every later sync to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rescue {
    pub sha256: String,
    pub source: String,
    pub pool_path: String,
    pub size: u64,
    pub first_failed: i64,
    pub last_failed: i64,
    pub attempts: i64,
    pub error: String,
}

/// One row of a channel's history with its channel (for whole-catalog walks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPosition {
    pub channel: String,
    pub generation: i64,
    pub snapshot_id: String,
    pub publication_sha256: String,
    pub at: i64,
}
