//! The channel service, [`Channels`]: the state every operation shares, and how it is opened.
//! The operations live in one file per concept: `sync`, `promote`, `moves`, `holds`,
//! `auto_approve`, `retention`, `publish`, `keys`, `serve`, `registry`, `diff`, `derive`.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::metrics::Metrics;
use crate::serve::Served;
use crate::signing::KeyStore;
use crate::table::TableCache;
use aptgate_config::{ChannelConfig, Config, PublishConfig, RetentionConfig, SourceConfig};
use aptgate_mirror::{Mirror, Sha256, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tracing::info;

/// Who asked for a change, and why: recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub comment: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            comment: None,
        }
    }
}

/// Memory for package tables: about five snapshots of a 60k-package suite.
const TABLE_CACHE_BYTES: usize = 64 << 20;

pub struct Channels {
    pub(crate) catalog: Catalog,
    pub(crate) mirror: Arc<Mirror>,
    pub(crate) keys: Mutex<KeyStore>,
    /// Configured channels, and those created through the API (kept in the catalog).
    pub(crate) channels: RwLock<BTreeMap<String, ChannelConfig>>,
    /// The channels of the configuration (they win a name clash with the catalog's).
    pub(crate) configured: BTreeMap<String, ChannelConfig>,
    /// When `channels` was last read from the catalog.
    pub(crate) channels_read_at: Mutex<Option<Instant>>,
    pub(crate) sources: Vec<SourceConfig>,
    pub(crate) admin_token: String,
    pub(crate) publish: PublishConfig,
    pub(crate) retention: RetentionConfig,
    /// One move at a time per channel in this process; the catalog's generation check
    /// catches moves by other processes.
    pub(crate) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) served: RwLock<HashMap<String, (Arc<Served>, Instant)>>,
    /// Publications of snapshots from channel histories, by publication digest.
    pub(crate) history_served: Mutex<Vec<(Sha256, Arc<Served>)>>,
    /// Package tables of recently used indices.
    pub(crate) tables: TableCache,
    pub(crate) metrics: Metrics,
}

impl Channels {
    /// Opens the catalog (applying migrations), loads or generates the signing key and makes
    /// sure every configured channel exists.
    pub async fn open(
        config: &Config,
        sources: &[SourceConfig],
        mirror: Arc<Mirror>,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        fs_err::create_dir_all(&config.data_dir)?;
        let url = if config.database.url.is_empty() {
            Catalog::sqlite_url(&config.data_dir)
        } else {
            config.database.url.clone()
        };
        let catalog = Catalog::open(&url).await?;
        let (keys, generated) = KeyStore::load_or_generate(
            &config.data_dir.join("keys"),
            &format!("aptgate signing key ({})", config.publish.key_name),
        )
        .context("loading the signing keys")?;
        if let Some(fingerprint) = generated {
            info!(%fingerprint, "generated a new channel signing key");
            catalog
                .append_audit(&NewAuditEntry {
                    at: now(),
                    actor: "aptgate".into(),
                    action: AuditAction::Key,
                    channel: None,
                    from_snapshot: None,
                    to_snapshot: None,
                    comment: Some("signing key generated on first start".into()),
                    summary: Some(serde_json::json!({ "added": fingerprint }).to_string()),
                })
                .await?;
        }
        for c in &config.channels {
            catalog.ensure_channel(c.name.as_str(), now()).await?;
        }
        let (admin_token, created) = crate::admin_token::load_or_create_token(&config.data_dir)
            .context("creating the admin token")?;
        if created {
            // Printed once; afterwards it is only in the root-only file.
            eprintln!(
                "created the admin API token (also in {}, mode 0600):
  {admin_token}",
                crate::admin_token::token_path(&config.data_dir).display()
            );
        }
        let configured: BTreeMap<String, ChannelConfig> = config
            .channels
            .iter()
            .map(|c| (c.name.to_string(), c.clone()))
            .collect();
        let channels = Arc::new(Self {
            catalog,
            mirror,
            keys: Mutex::new(keys),
            channels: RwLock::new(configured.clone()),
            configured,
            channels_read_at: Mutex::new(None),
            sources: sources.to_vec(),
            admin_token,
            publish: config.publish.clone(),
            retention: config.retention.clone(),
            locks: Mutex::default(),
            served: RwLock::default(),
            history_served: Mutex::default(),
            tables: TableCache::new(TABLE_CACHE_BYTES),
            metrics: Metrics::default(),
        });
        channels.reload_channels(true).await?;
        Ok(channels)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The catalog, shared with the crates that keep their tables beside it (`fleet`).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub(crate) fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The sources a sync without a name covers.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.to_string()).collect()
    }

    pub(crate) fn store(&self) -> &Store {
        self.mirror.store()
    }

    /// A snapshot by id or name.
    /// A snapshot by id or name; one garbage collection deleted is an error.
    pub async fn snapshot(&self, id_or_name: &str) -> Result<Snapshot> {
        let found = match self.catalog.snapshot(id_or_name).await? {
            Some(s) => s,
            None => self
                .catalog
                .snapshot_by_name(id_or_name)
                .await?
                .ok_or_else(|| ChannelsError::UnknownSnapshot(id_or_name.to_owned()))?,
        };
        match found.deleted_at {
            Some(_) => Err(ChannelsError::SnapshotDeleted(found.id)),
            None => Ok(found),
        }
    }

    /// A snapshot about to be derived from: marked used now, so retention keeps it (and its
    /// blobs) while the new snapshot is made; refused if garbage collection deleted it.
    pub(crate) async fn use_snapshot(&self, id_or_name: &str) -> Result<Snapshot> {
        let snapshot = self.snapshot(id_or_name).await?;
        if !self.catalog.touch_snapshot(&snapshot.id, now()).await? {
            return Err(ChannelsError::SnapshotDeleted(snapshot.id));
        }
        Ok(snapshot)
    }

    pub async fn manifest(&self, snapshot: &Snapshot) -> Result<Manifest> {
        let digest = Sha256::from_hex(&snapshot.manifest_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "manifest",
                digest: snapshot.manifest_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        self.get_json("manifest", &digest).await
    }

    /// Records a snapshot of `manifest` unless one with the same manifest and kind exists.
    pub(crate) async fn record_snapshot(
        &self,
        tx: &mut CatalogTx,
        prefix: &str,
        kind: SnapshotKind,
        description: String,
        manifest_sha256: Sha256,
        sources: Vec<String>,
    ) -> Result<Snapshot> {
        let at = now();
        let stamp = chrono::DateTime::from_timestamp(at, 0)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ");
        let mut id = format!("{prefix}-{stamp}");
        let mut n = 2;
        while tx.snapshot(&id).await?.is_some() {
            id = format!("{prefix}-{stamp}-{n}");
            n += 1;
        }
        let snapshot = Snapshot {
            id,
            name: None,
            created_at: at,
            kind,
            description,
            manifest_sha256: manifest_sha256.to_hex(),
            sources,
            deleted_at: None,
            used_at: at,
        };
        tx.insert_snapshot(&snapshot).await?;
        Ok(snapshot)
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
