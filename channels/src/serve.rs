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

/// How long a request waits for the catalog to confirm a channel's position it already knows.
/// Past it (or on a catalog error) the position it knows is served: apt keeps working while
/// the database is down or slow, and each channel asks again once per [`CHANNEL_CACHE_TTL`].
const CATALOG_CHECK_WAIT: Duration = Duration::from_secs(1);

/// A channel as served: its publication and the manifest it publishes.
#[derive(Debug)]
pub struct Served {
    pub publication: Publication,
    pub manifest: Manifest,
    pub generation: i64,
}

impl Channels {
    /// The channel's current publication, from a short-lived cache. While the catalog cannot
    /// be read (database down, or slower than [`CATALOG_CHECK_WAIT`]), the publication last
    /// known is served: everything it names is in the store, addressed by digest.
    pub async fn served(&self, channel: &str) -> Result<Arc<Served>> {
        let known = self
            .served
            .read()
            .expect("lock poisoned")
            .get(channel)
            .cloned();
        let state = match known {
            Some((served, at)) if at.elapsed() < CHANNEL_CACHE_TTL => return Ok(served),
            Some((served, _)) => {
                let checked = tokio::time::timeout(CATALOG_CHECK_WAIT, self.channel_state(channel));
                match checked.await {
                    Ok(Ok(state)) => state,
                    Ok(Err(e @ ChannelsError::Catalog(_))) => {
                        tracing::warn!(channel, error = %e, "catalog unreadable; serving the channel's last known publication");
                        return Ok(self.keep_serving(channel, served));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        tracing::warn!(
                            channel,
                            "catalog slow; serving the channel's last known publication"
                        );
                        return Ok(self.keep_serving(channel, served));
                    }
                }
            }
            None => self.channel_state(channel).await?,
        };
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

    /// Reads every published channel's publication now (at start), so apt is served even if
    /// the catalog goes away before a client asks.
    pub async fn know_publications(&self) {
        for channel in self.channel_names().await {
            if let Err(e) = self.served(&channel).await {
                tracing::debug!(channel, error = %e, "channel not served yet");
            }
        }
    }

    /// Serves `served` for another [`CHANNEL_CACHE_TTL`] before the catalog is asked again.
    fn keep_serving(&self, channel: &str, served: Arc<Served>) -> Arc<Served> {
        self.served
            .write()
            .expect("lock poisoned")
            .insert(channel.to_owned(), (served.clone(), Instant::now()));
        served
    }

    /// A snapshot the channel pointed at, as it was last published (or re-signed) there.
    /// Snapshots garbage collection deleted are gone. While the catalog cannot be read, one
    /// this process served recently is served as it was.
    pub async fn served_snapshot(&self, channel: &str, snapshot: &str) -> Result<Arc<Served>> {
        self.channel_config(channel).await?;
        let (digest, generation) = match self.snapshot_publication(channel, snapshot).await {
            Ok(found) => found,
            Err(e @ ChannelsError::Catalog(_)) => {
                let known = self
                    .history_served
                    .lock()
                    .expect("lock poisoned")
                    .iter()
                    .rev()
                    .find(|(_, s)| {
                        s.publication.channel == channel && s.publication.snapshot == snapshot
                    })
                    .map(|(_, s)| s.clone());
                tracing::warn!(channel, snapshot, error = %e, "catalog unreadable; serving a past snapshot as last known");
                return known.ok_or(e);
            }
            Err(e) => return Err(e),
        };
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
            generation,
        });
        let mut cache = self.history_served.lock().expect("lock poisoned");
        if cache.len() >= 8 {
            cache.remove(0);
        }
        cache.push((digest, served.clone()));
        Ok(served)
    }

    /// The publication (and generation) a past snapshot of a channel is served from: its
    /// re-signed one, or the one recorded when the channel moved to it.
    async fn snapshot_publication(&self, channel: &str, snapshot: &str) -> Result<(Sha256, i64)> {
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
        Ok((digest, entry.generation))
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
    /// While the catalog is unreachable (or slower than [`CATALOG_CHECK_WAIT`]) the package's
    /// origin is unknown: every source is tried, the recorded sha256 deciding.
    pub async fn fetch_pool_file(&self, path: &str, digest: Sha256, size: u64) -> Result<Resolved> {
        let origins = match tokio::time::timeout(CATALOG_CHECK_WAIT, self.origin(&digest)).await {
            Ok(Ok(origin)) => vec![origin],
            Ok(Err(e)) if e.is_catalog_unavailable() => {
                tracing::warn!(path, error = %e, "catalog unreachable; trying every source for a pool file");
                self.source_names()
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::warn!(path, "catalog slow; trying every source for a pool file");
                self.source_names()
            }
        };
        let mirror_error = |source| ChannelsError::Mirror {
            what: format!("fetching {path}"),
            source,
        };
        let pool_path = PoolPath::parse(path)
            .map_err(|e| mirror_error(MirrorError::BadRequest(e.to_string())))?;
        let mut upstream = MirrorError::NotFound {
            what: path.to_owned(),
        };
        for origin in &origins {
            upstream = match self
                .mirror
                .fetch_blob(origin, &pool_path, digest, size)
                .await
            {
                Ok(Resolved::Streaming(flight)) => match flight.started().await {
                    Ok(()) => return Ok(Resolved::Streaming(flight)),
                    Err(failure) => failure.into_error(path),
                },
                Ok(resolved) => return Ok(resolved),
                Err(e) => e,
            };
            if matches!(upstream, MirrorError::StorageFull { .. }) {
                return Err(mirror_error(upstream));
            }
        }
        let [origin] = origins.as_slice() else {
            return Err(mirror_error(upstream));
        };
        for url in self.fallback_urls(origin, &digest, path).await {
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
