//! What the replica feed (`replicas/`) reads of channels: every published channel's signed
//! Release files, the index digests of publications it left within `publish.by_hash_grace`
//! (replicas keep serving them under `by-hash/`), a way to sign the feed with the channels'
//! keys, and a pool file by digest for replicas that lack it.

use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::{Resolved, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// One published channel as replicas copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedChannel {
    pub snapshot: String,
    /// Suite → its signed Release files, byte for byte what `/channels/<c>/dists/<suite>/`
    /// serves.
    pub suites: BTreeMap<String, SignedRelease>,
    /// Index files of publications the channel left within the by-hash grace period and that
    /// the current one no longer lists.
    pub grace: BTreeSet<BlobRef>,
}

impl Channels {
    /// Every published channel (unpublished ones are left out), by name.
    pub async fn published_channels(&self) -> Result<BTreeMap<String, PublishedChannel>> {
        let mut out = BTreeMap::new();
        for channel in self.channel_names().await {
            let served = match self.served(&channel).await {
                Ok(s) => s,
                Err(ChannelsError::Unpublished(_) | ChannelsError::UnknownChannel { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            let current: BTreeSet<BlobRef> = index_blobs(&served.manifest).collect();
            let mut grace = BTreeSet::new();
            let history = self.catalog.channel_history(&channel, 50).await?;
            let window = self.publish.by_hash_grace.as_secs() as i64;
            for pair in history.windows(2) {
                let (newer, older) = (&pair[0], &pair[1]);
                if now() - newer.at > window {
                    break;
                }
                let Ok(snapshot) = self.snapshot(&older.snapshot_id).await else {
                    continue;
                };
                let Ok(manifest) = self.manifest(&snapshot).await else {
                    continue;
                };
                grace.extend(index_blobs(&manifest).filter(|b| !current.contains(b)));
            }
            out.insert(
                channel,
                PublishedChannel {
                    snapshot: served.publication.snapshot.clone(),
                    suites: served.publication.suites.clone(),
                    grace,
                },
            );
        }
        Ok(out)
    }

    /// `text` cleartext-signed by every active channel key (what `InRelease` carries).
    pub fn clearsign(&self, text: &str) -> Result<String> {
        Ok(self
            .keys
            .lock()
            .expect("lock poisoned")
            .cleartext_sign(text)?)
    }

    /// A `.deb` the catalog knows by digest, for a replica that asks for it: from the store,
    /// or fetched from its origin as a channel's `pool/` request would be. `None` when the
    /// catalog knows no such package.
    pub async fn package_blob(&self, digest: &Sha256) -> Result<Option<Resolved>> {
        let Some(package) = self.catalog.package(&digest.to_hex()).await? else {
            return Ok(None);
        };
        let p = package.package;
        self.fetch_pool_file(&p.pool_path, *digest, p.size)
            .await
            .map(Some)
    }
}

fn index_blobs(manifest: &Manifest) -> impl Iterator<Item = BlobRef> + '_ {
    manifest
        .suites
        .values()
        .flat_map(|s| s.indices.values())
        .flat_map(|i| i.files().map(|(_, b)| b))
}
