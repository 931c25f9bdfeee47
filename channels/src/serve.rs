//! What `/channels/<channel>/…` serves: the current publication (cached briefly), the
//! publications of past snapshots, and the pool files a manifest lists.

use crate::blobs::*;
use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request may see a channel's previous position after another server instance
/// (sharing the PostgreSQL catalog) moved it. Moves made by this process show at once.
const CHANNEL_CACHE_TTL: Duration = Duration::from_secs(2);

/// A channel as served: its publication and the manifest it publishes.
#[derive(Debug)]
pub struct Served {
    pub publication: Publication,
    pub manifest: Manifest,
    pub generation: i64,
}

/// Pool path → (sha256, size) for every package a manifest lists.
pub type PoolMap = HashMap<String, (Sha256, u64)>;

impl Channels {
    /// The channel's current publication, from a short-lived cache.
    pub async fn served(&self, channel: &str) -> Result<Arc<Served>> {
        if let Some((served, at)) = self.served.read().expect("lock poisoned").get(channel) {
            if at.elapsed() < CHANNEL_CACHE_TTL {
                return Ok(served.clone());
            }
        }
        let state = self.channel_state(channel).await?;
        let digest = state
            .publication_sha256
            .as_deref()
            .and_then(|d| Sha256::from_hex(d).ok())
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let cached = self
            .served
            .read()
            .expect("lock poisoned")
            .get(channel)
            .filter(|(s, _)| s.generation == state.generation)
            .map(|(s, _)| s.clone());
        let served = match cached {
            Some(s) => s,
            None => {
                let publication: Publication = self.get_json("publication", &digest).await?;
                let manifest: Manifest = self.get_json("manifest", &publication.manifest).await?;
                Arc::new(Served {
                    publication,
                    manifest,
                    generation: state.generation,
                })
            }
        };
        self.served
            .write()
            .expect("lock poisoned")
            .insert(channel.to_owned(), (served.clone(), Instant::now()));
        Ok(served)
    }

    /// A snapshot the channel pointed at, as it was last published there.
    pub async fn served_snapshot(&self, channel: &str, snapshot: &str) -> Result<Arc<Served>> {
        self.channel_config(channel)?;
        let history = self.catalog.channel_history(channel, 100_000).await?;
        let entry = history
            .iter()
            .find(|h| h.snapshot_id == snapshot)
            .ok_or_else(|| ChannelsError::UnknownSnapshot(snapshot.to_owned()))?;
        let digest = Sha256::from_hex(&entry.publication_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "publication",
                digest: entry.publication_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some((_, served)) = self
            .history_served
            .lock()
            .expect("lock poisoned")
            .iter()
            .find(|(d, _)| *d == digest)
        {
            return Ok(served.clone());
        }
        let publication: Publication = self.get_json("publication", &digest).await?;
        let manifest: Manifest = self.get_json("manifest", &publication.manifest).await?;
        let served = Arc::new(Served {
            publication,
            manifest,
            generation: entry.generation,
        });
        let mut cache = self.history_served.lock().expect("lock poisoned");
        if cache.len() >= 8 {
            cache.remove(0);
        }
        cache.push((digest, served.clone()));
        Ok(served)
    }

    /// The digest and size a channel's `pool/` path stands for, if it lists it.
    pub async fn pool_file(&self, served: &Served, path: &str) -> Result<Option<(Sha256, u64)>> {
        let map = self
            .pool_map(&served.publication.manifest, &served.manifest)
            .await?;
        Ok(map.get(path).copied())
    }

    /// The upstream source a package was recorded from: where it is fetched on first demand.
    pub async fn origin(&self, digest: &Sha256) -> Result<String> {
        Ok(self
            .catalog
            .package(&digest.to_hex())
            .await?
            .map(|p| p.package.origin)
            .unwrap_or_default())
    }

    pub(crate) async fn pool_map(
        &self,
        digest: &Sha256,
        manifest: &Manifest,
    ) -> Result<Arc<PoolMap>> {
        if let Some((_, map)) = self
            .pool_maps
            .lock()
            .expect("lock poisoned")
            .iter()
            .find(|(d, _)| d == digest)
        {
            return Ok(map.clone());
        }
        let mut texts = Texts::new();
        let mut map = PoolMap::new();
        for sm in manifest.suites.values() {
            for files in sm.indices.values() {
                let text = self.text(&mut texts, &files.plain).await?;
                for s in index::parse(&text).map_err(|source| ChannelsError::Index {
                    what: "published index".into(),
                    source,
                })? {
                    if let Ok(d) = Sha256::from_hex(s.sha256) {
                        map.insert(s.filename.to_owned(), (d, s.size));
                    }
                }
            }
        }
        let map = Arc::new(map);
        let mut maps = self.pool_maps.lock().expect("lock poisoned");
        // A few manifests: every channel's current one and the one before.
        if maps.len() >= 8 {
            maps.remove(0);
        }
        maps.push((*digest, map.clone()));
        Ok(map)
    }

    /// Whether `digest` was an index of this channel recently enough to serve under by-hash.
    pub async fn by_hash_allowed(&self, channel: &str, served: &Served, digest: &Sha256) -> bool {
        let current = served
            .manifest
            .suites
            .values()
            .flat_map(|s| s.indices.values())
            .flat_map(|i| i.files().map(|(_, b)| b.sha256));
        if current.into_iter().any(|d| d == *digest) {
            return true;
        }
        let Ok(history) = self.catalog.channel_history(channel, 50).await else {
            return false;
        };
        let grace = self.publish.by_hash_grace.as_secs() as i64;
        // A superseded entry stays reachable for `grace` after the move that replaced it.
        for pair in history.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            if now() - newer.at > grace {
                break;
            }
            let Ok(snapshot) = self.snapshot(&older.snapshot_id).await else {
                continue;
            };
            let Ok(manifest) = self.manifest(&snapshot).await else {
                continue;
            };
            if manifest
                .suites
                .values()
                .flat_map(|s| s.indices.values())
                .flat_map(|i| i.files().map(|(_, b)| b.sha256))
                .any(|d| d == *digest)
            {
                return true;
            }
        }
        false
    }
}
