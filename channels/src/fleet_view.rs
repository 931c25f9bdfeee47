//! What the fleet (`fleet/`) reads of channels: where a channel points (its snapshot, suites
//! and components, for the apt sources hosts are given), the newest version of every package
//! it publishes (for pending updates), its rules, and the active signing keys one by one.

use crate::error::{ChannelsError, Result};
use crate::index::compare_versions;
use crate::service::*;
use aptgate_config::ChannelConfig;
use std::collections::HashMap;

/// A channel as hosts are pointed at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelView {
    /// The snapshot it publishes.
    pub snapshot: String,
    /// Each published suite with its components, in name order.
    pub suites: Vec<(String, Vec<String>)>,
}

/// The newest version of each `(name, architecture)` a snapshot lists, over all its suites.
pub type NewestVersions = HashMap<(String, String), String>;

/// One active signing key, armored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub fingerprint: String,
    pub armored: String,
}

impl Channels {
    /// The channel's rules (configured or created through the API).
    pub async fn channel_rules(&self, channel: &str) -> Result<ChannelConfig> {
        self.channel_config(channel).await
    }

    /// Where the channel points now; `None` while it publishes nothing.
    pub async fn channel_view(&self, channel: &str) -> Result<Option<ChannelView>> {
        let served = match self.served(channel).await {
            Ok(s) => s,
            Err(ChannelsError::Unpublished(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let suites = served
            .publication
            .suites
            .keys()
            .map(|suite| {
                let components = served
                    .manifest
                    .suites
                    .get(suite)
                    .map(|s| s.components.clone())
                    .unwrap_or_default();
                (suite.clone(), components)
            })
            .collect();
        Ok(Some(ChannelView {
            snapshot: served.publication.snapshot.clone(),
            suites,
        }))
    }

    /// The newest version of every package the channel publishes now, with the snapshot it
    /// was read from (callers cache by it); `None` while it publishes nothing.
    pub async fn channel_newest_versions(
        &self,
        channel: &str,
    ) -> Result<Option<(String, NewestVersions)>> {
        let served = match self.served(channel).await {
            Ok(s) => s,
            Err(ChannelsError::Unpublished(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut newest = NewestVersions::new();
        for (suite, manifest) in &served.manifest.suites {
            if !served.publication.suites.contains_key(suite) {
                continue;
            }
            for files in manifest.indices.values() {
                let table = self.table(files).await?;
                for row in table.rows() {
                    let key = (row.name.to_owned(), row.architecture.to_owned());
                    match newest.get_mut(&key) {
                        Some(v) if compare_versions(row.version, v).is_gt() => {
                            *v = row.version.to_owned()
                        }
                        Some(_) => {}
                        None => {
                            newest.insert(key, row.version.to_owned());
                        }
                    }
                }
            }
        }
        Ok(Some((served.publication.snapshot.clone(), newest)))
    }

    /// Every active signing key, armored, oldest first (several during a rotation).
    pub fn active_public_keys(&self) -> Result<Vec<PublicKey>> {
        let keys = self.keys.lock().expect("lock poisoned");
        keys.active()
            .map(|k| {
                Ok(PublicKey {
                    fingerprint: k.fingerprint(),
                    armored: k.armored_public_key()?,
                })
            })
            .collect()
    }
}
