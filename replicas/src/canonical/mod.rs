//! The parent side on the canonical server: the numbered, signed feed of every channel's
//! publication, the routes replicas pull from (`/api/v1/replica/…`, replica token), and what
//! they report (admin routes, `/metrics`).
//!
//! The feed's `seq` lives in the catalog (`replica_feed`): whenever the content a manifest
//! would carry (channels' Release files, by-hash grace sets, the public keys) differs from the
//! last row's, a row with the next `seq` is inserted. So it rises with every promotion,
//! rollback and re-signing, survives restarts, and is shared by every server instance on one
//! PostgreSQL catalog (the primary key settles two inserting the same `seq`).

pub mod admin;
mod routes;

pub(crate) use routes::{batch_body, bearer_sha256, unauthorized};
mod store;

pub use routes::routes;
pub use store::MAX_FORWARDED_PER_REPLICA;

use crate::protocol::{FeedChannel, FeedManifest, KeysRef, ManifestEnvelope, PROTOCOL};
use aptgate_channels::catalog::Backend;
use aptgate_channels::Channels;
use aptgate_mirror::{Mirror, Sha256};
use sqlx::migrate::Migrator;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("replica feed: {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Channels(#[from] aptgate_channels::ChannelsError),
}

pub type Result<T, E = CanonicalError> = std::result::Result<T, E>;

/// The canonical server's replica feed: what every `/api/v1/replica/…` route shares.
pub struct Canonical {
    pub(crate) channels: Arc<Channels>,
    pub(crate) mirror: Arc<Mirror>,
    pub(crate) store: store::FeedStore,
    /// The last manifest signed, by `seq` (RSA signatures cost milliseconds; replicas poll).
    signed: Mutex<Option<(i64, Arc<String>)>>,
    /// The last answer of [`Canonical::current`] and when: every replica's long poll checks
    /// the feed several times a second, and one computation serves them all.
    latest: tokio::sync::Mutex<Option<(Instant, i64, Arc<String>)>>,
}

/// How long one computation of the feed's position answers every poll.
const CURRENT_REUSE: Duration = Duration::from_millis(200);

impl Canonical {
    /// Brings the feed's tables up to date in the channels' catalog.
    pub async fn open(channels: Arc<Channels>, mirror: Arc<Mirror>) -> Result<Arc<Self>> {
        let catalog = channels.catalog();
        let migrations = match catalog.backend() {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        catalog.migrate(migrations).await?;
        Ok(Arc::new(Self {
            store: store::FeedStore::new(catalog.pool().clone()),
            channels,
            mirror,
            signed: Mutex::new(None),
            latest: tokio::sync::Mutex::new(None),
        }))
    }

    /// The current manifest as the replicas' polls see it: computed at most once per
    /// [`CURRENT_REUSE`] for all of them.
    pub(crate) async fn polled(&self) -> Result<(i64, Arc<String>)> {
        let mut latest = self.latest.lock().await;
        if let Some((at, seq, signed)) = latest.as_ref() {
            if at.elapsed() < CURRENT_REUSE {
                return Ok((*seq, signed.clone()));
            }
        }
        let (seq, signed) = self.current().await?;
        *latest = Some((Instant::now(), seq, signed.clone()));
        Ok((seq, signed))
    }

    /// The current manifest, signed: a new `seq` is recorded first if anything changed.
    pub async fn current(&self) -> Result<(i64, Arc<String>)> {
        let channels = self.channels.published_channels().await?;
        let keys_text = self.channels.public_keys()?;
        let keys = KeysRef {
            name: self.channels.key_name().to_owned(),
            sha256: Sha256::of(keys_text.as_bytes()),
            size: keys_text.len() as u64,
        };
        let channels: std::collections::BTreeMap<String, FeedChannel> = channels
            .into_iter()
            .map(|(name, c)| {
                (
                    name,
                    FeedChannel {
                        snapshot: c.snapshot,
                        suites: c.suites,
                        grace: c.grace.into_iter().collect(),
                    },
                )
            })
            .collect();
        let content = serde_json::to_vec(&(&keys, &channels)).expect("serializes");
        let content_sha256 = Sha256::of(&content).to_hex();
        let (seq, published_at) = self
            .store
            .position_for(&content_sha256, aptgate_channels::now())
            .await?;
        if let Some((cached, text)) = self.signed.lock().expect("lock poisoned").as_ref() {
            if *cached == seq {
                return Ok((seq, text.clone()));
            }
        }
        let manifest = FeedManifest {
            protocol: PROTOCOL,
            seq,
            published_at,
            keys,
            channels,
        };
        let body = serde_json::to_string(&manifest).expect("serializes");
        let signed = Arc::new(self.channels.clearsign(&body)?);
        *self.signed.lock().expect("lock poisoned") = Some((seq, signed.clone()));
        Ok((seq, signed))
    }

    /// The envelope replicas get: the signed manifest, the path starting here.
    pub async fn envelope(&self) -> Result<(i64, ManifestEnvelope)> {
        let (seq, signed) = self.polled().await?;
        Ok((
            seq,
            ManifestEnvelope {
                signed: signed.as_str().to_owned(),
                path: vec!["canonical".into()],
            },
        ))
    }
}
