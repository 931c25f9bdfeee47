//! What `/channels/<channel>/…` serves: the current publication (cached briefly), the
//! publications of past snapshots, and the pool files a manifest lists.

use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::path::PoolPath;
use aptgate_mirror::{MirrorError, Resolved, Sha256};
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

    /// A snapshot the channel pointed at, as it was last published (or re-signed) there.
    /// Snapshots garbage collection deleted are gone.
    pub async fn served_snapshot(&self, channel: &str, snapshot: &str) -> Result<Arc<Served>> {
        self.channel_config(channel).await?;
        let kept = self
            .catalog
            .snapshot(snapshot)
            .await?
            .is_some_and(|s| s.deleted_at.is_none());
        if !kept {
            return Err(ChannelsError::UnknownSnapshot(snapshot.to_owned()));
        }
        let history = self.catalog.channel_history(channel, 100_000).await?;
        let entry = history
            .iter()
            .find(|h| h.snapshot_id == snapshot)
            .ok_or_else(|| ChannelsError::UnknownSnapshot(snapshot.to_owned()))?;
        let resigned = self.catalog.snapshot_publication(channel, snapshot).await?;
        let hex = resigned.unwrap_or_else(|| entry.publication_sha256.clone());
        let digest = Sha256::from_hex(&hex).map_err(|e| ChannelsError::CorruptBlob {
            what: "publication",
            digest: hex.clone(),
            reason: e.to_string(),
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

    /// The digest and size a channel's `pool/` path stands for, if it lists it: looked up in
    /// the package tables of the manifest's indices (those of the path's component first).
    pub async fn pool_file(&self, served: &Served, path: &str) -> Result<Option<(Sha256, u64)>> {
        // `pool/<component>/…`: that component's indices are the likely ones, tried first.
        let component = path.split('/').nth(1).unwrap_or_default();
        let mut indices: Vec<(&String, &IndexFiles)> = served
            .manifest
            .suites
            .values()
            .flat_map(|s| s.indices.iter())
            .collect();
        indices.sort_by_key(|(key, _)| {
            key.split_once('/')
                .is_none_or(|(key_component, _)| key_component != component)
        });
        let mut seen = std::collections::HashSet::new();
        for (_, files) in indices {
            if !seen.insert(files.plain.sha256) {
                continue;
            }
            let table = self.table(files).await?;
            if let Some(row) = table.by_filename(path) {
                if let Ok(digest) = Sha256::from_hex(row.sha256) {
                    return Ok(Some((digest, row.size)));
                }
            }
        }
        Ok(None)
    }

    /// A pool file the store lacks (on demand): fetched once from the package's origin, or
    /// from that source's fallback origins when upstream no longer has it, and checked
    /// against the recorded sha256. The body streams as it arrives.
    pub async fn fetch_pool_file(&self, path: &str, digest: Sha256, size: u64) -> Result<Resolved> {
        let origin = self.origin(&digest).await?;
        let mirror_error = |source| ChannelsError::Mirror {
            what: format!("fetching {path}"),
            source,
        };
        let pool_path = PoolPath::parse(path)
            .map_err(|e| mirror_error(MirrorError::BadRequest(e.to_string())))?;
        let upstream = match self
            .mirror
            .fetch_blob(&origin, &pool_path, digest, size)
            .await
        {
            Ok(Resolved::Streaming(flight)) => match flight.started().await {
                Ok(()) => return Ok(Resolved::Streaming(flight)),
                Err(failure) if failure.not_found => MirrorError::NotFound {
                    what: path.to_owned(),
                },
                Err(failure) => MirrorError::Upstream {
                    url: path.to_owned(),
                    reason: failure.reason.to_string(),
                },
            },
            Ok(resolved) => return Ok(resolved),
            Err(e) => e,
        };
        for url in self.fallback_urls(&origin, &digest, path).await {
            if let Ok(resolved) = self.mirror.fetch_blob_at(&url, digest, size).await {
                match resolved {
                    Resolved::Streaming(flight) if flight.started().await.is_err() => continue,
                    resolved => return Ok(resolved),
                }
            }
        }
        Err(mirror_error(upstream))
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
