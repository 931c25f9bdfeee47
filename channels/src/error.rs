use crate::catalog::CatalogError;
use crate::index::IndexError;
use crate::signing::SigningError;
use aptgate_mirror::{MirrorError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ChannelsError {
    #[error("unknown channel {name:?}\nhint: configured channels: {known}")]
    UnknownChannel { name: String, known: String },
    #[error("unknown snapshot {0:?}\nhint: `aptgate snapshot list` shows them")]
    UnknownSnapshot(String),
    #[error("snapshot {0} was deleted by garbage collection (past retention)\nhint: `aptgate snapshot list` shows the kept ones; [retention] in the configuration decides how long they stay")]
    SnapshotDeleted(String),
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("channel {0} has not been published yet\nhint: promote a snapshot into it first")]
    Unpublished(String),
    #[error("refused: {0}")]
    Refused(String),
    /// An upload that is not a usable `.deb` for its source.
    #[error("upload refused: {0}")]
    BadUpload(String),
    /// An upload of a version the source holds with other contents.
    #[error("upload refused: {0}")]
    UploadConflict(String),
    #[error("upload refused: larger than {0} bytes; nothing was stored")]
    UploadTooLarge(u64),
    #[error("{what}: {source}")]
    Mirror {
        what: String,
        #[source]
        source: MirrorError,
    },
    #[error(
        "could not fetch {} package(s) into the store; nothing changed:\n  {}",
        .0.len(),
        .0.join("\n  ")
    )]
    FetchFailed(Vec<String>),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("in {what}: {source}")]
    Index {
        what: String,
        #[source]
        source: IndexError,
    },
    #[error("stored {what} {digest} is unreadable: {reason}")]
    CorruptBlob {
        what: &'static str,
        digest: String,
        reason: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ChannelsError {
    /// A stable machine-readable code, for the JSON API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownChannel { .. } => "unknown_channel",
            Self::UnknownSnapshot(_) => "unknown_snapshot",
            Self::SnapshotDeleted(_) => "snapshot_deleted",
            Self::UnknownSource(_) => "unknown_source",
            Self::Unpublished(_) => "unpublished",
            Self::Refused(_) => "refused",
            Self::BadUpload(_) => "bad_upload",
            Self::UploadConflict(_) => "upload_conflict",
            Self::UploadTooLarge(_) => "upload_too_large",
            Self::Mirror {
                source: MirrorError::StorageFull { .. },
                ..
            } => "storage_full",
            Self::Mirror { .. } => "upstream",
            Self::FetchFailed(_) => "fetch_failed",
            Self::Catalog(CatalogError::ChannelMoved { .. }) => "conflict",
            Self::Catalog(CatalogError::Unavailable { .. }) => "catalog_unavailable",
            Self::Catalog(CatalogError::StorageFull { .. }) => "storage_full",
            Self::Catalog(_) => "catalog",
            Self::Store(e) if e.is_storage_full() => "storage_full",
            Self::Io { source, .. } if aptgate_mirror::store::is_storage_full(source) => {
                "storage_full"
            }
            Self::Store(_) | Self::Io { .. } | Self::CorruptBlob { .. } => "storage",
            Self::Signing(SigningError::LastKey(_)) => "refused",
            Self::Signing(SigningError::UnknownKey(_)) => "unknown_key",
            Self::Signing(SigningError::BadKeyFile { .. }) => "bad_key",
            Self::Signing(_) => "signing",
            Self::Index { .. } => "bad_index",
        }
    }
}

impl ChannelsError {
    /// The catalog database cannot be reached for now.
    pub fn is_catalog_unavailable(&self) -> bool {
        matches!(self, Self::Catalog(e) if e.is_unavailable())
    }

    /// How the apt routes (`/channels/…`) answer this error.
    pub fn into_mirror_error(self, what: &str) -> MirrorError {
        match self.code() {
            "catalog_unavailable" => {
                tracing::warn!(error = %self, "catalog unreachable");
                MirrorError::CatalogUnavailable
            }
            "storage_full" => match self {
                Self::Mirror { source, .. } => source,
                e => {
                    tracing::error!(error = %e, "the store's file system is full");
                    MirrorError::StorageFull {
                        what: what.to_owned(),
                    }
                }
            },
            _ => match self {
                Self::Mirror { source, .. } => source,
                e => MirrorError::internal(e),
            },
        }
    }
}

pub type Result<T, E = ChannelsError> = std::result::Result<T, E>;
