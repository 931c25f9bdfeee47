//! Channel definitions — configured, or created through the API and kept in the catalog — and
//! where each channel points.
//!
//! Every server instance sharing a catalog sees a channel another instance created: a name
//! this process does not know is looked up in the catalog, and the whole list is re-read when
//! it is older than a few seconds.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::service::*;
use aptgate_config::ChannelConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long the channel list is trusted before the catalog is read again.
const REGISTRY_TTL: Duration = Duration::from_secs(2);

impl Channels {
    /// Every channel: the configured ones and those created through the API.
    pub async fn channel_configs(&self) -> Vec<ChannelConfig> {
        let stale = self
            .channels_read_at
            .lock()
            .expect("lock poisoned")
            .is_none_or(|at| at.elapsed() >= REGISTRY_TTL);
        if stale {
            if let Err(e) = self.reload_channels(false).await {
                warn!(error = %e, "cannot read the channels from the catalog; using the last list");
            }
        }
        self.channels
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub(crate) async fn channel_names(&self) -> Vec<String> {
        self.channel_configs()
            .await
            .into_iter()
            .map(|c| c.name.to_string())
            .collect()
    }

    /// Reads the channels created through the API from the catalog, next to the configured
    /// ones (the configuration wins a name clash; `warn` says so in the log).
    pub(crate) async fn reload_channels(&self, warn_conflicts: bool) -> Result<()> {
        let mut channels: BTreeMap<String, ChannelConfig> = self.configured.clone();
        for state in self.catalog.list_channels().await? {
            let Some(rules) = &state.rules else { continue };
            match serde_json::from_str::<ChannelConfig>(rules) {
                Ok(c) if !channels.contains_key(c.name.as_str()) => {
                    channels.insert(c.name.to_string(), c);
                }
                Ok(c) if warn_conflicts => {
                    warn!(channel = %c.name, "channel created through the API is also configured; the configuration wins")
                }
                Ok(_) => {}
                Err(e) if warn_conflicts => {
                    warn!(channel = %state.name, error = %e, "unreadable channel rules; channel ignored")
                }
                Err(_) => {}
            }
        }
        *self.channels.write().expect("lock poisoned") = channels;
        *self.channels_read_at.lock().expect("lock poisoned") = Some(Instant::now());
        Ok(())
    }

    /// Creates a channel through the API: the same rules as a `[[channels]]` entry, kept in
    /// the catalog and audited. A configured channel's name cannot be taken.
    pub async fn create_channel(&self, config: ChannelConfig, actor: &Actor) -> Result<()> {
        let name = config.name.to_string();
        if self.channel_config(&name).await.is_ok() {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        if let Some(from) = &config.promotes_from {
            self.channel_config(from.as_str()).await?;
            if from.as_str() == name {
                return Err(ChannelsError::Refused(format!(
                    "{name} cannot promote from itself"
                )));
            }
        }
        for (i, source) in config.follows.iter().enumerate() {
            if !self.sources.iter().any(|s| &s.name == source) {
                return Err(ChannelsError::UnknownSource(source.to_string()));
            }
            if config.follows[..i].contains(source) {
                return Err(ChannelsError::Refused(format!(
                    "{name} follows {source} twice"
                )));
            }
        }
        let rules = serde_json::to_string(&config).expect("channel rules serialize");
        let at = now();
        let mut tx = self.catalog.begin().await?;
        if !tx.create_channel(&name, &rules, at).await? {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        tx.append_audit(&NewAuditEntry {
            at,
            actor: actor.name.clone(),
            action: AuditAction::Channel,
            channel: Some(name.clone()),
            from_snapshot: None,
            to_snapshot: None,
            comment: actor.comment.clone(),
            summary: Some(rules),
        })
        .await?;
        tx.commit().await?;
        info!(channel = %name, actor = %actor.name, "channel created");
        self.channels
            .write()
            .expect("lock poisoned")
            .insert(name, config);
        Ok(())
    }

    /// A channel's rules; a name this process does not know yet is looked up in the catalog
    /// (another server instance may have created it).
    pub(crate) async fn channel_config(&self, name: &str) -> Result<ChannelConfig> {
        if let Some(c) = self.channels.read().expect("lock poisoned").get(name) {
            return Ok(c.clone());
        }
        // One row, not the whole list: requests for made-up names cost an indexed lookup.
        if let Some(rules) = self.catalog.channel(name).await?.and_then(|c| c.rules) {
            match serde_json::from_str::<ChannelConfig>(&rules) {
                Ok(c) if c.name.as_str() == name => {
                    self.channels
                        .write()
                        .expect("lock poisoned")
                        .entry(name.to_owned())
                        .or_insert(c);
                }
                _ => warn!(channel = name, "unreadable channel rules; channel ignored"),
            }
        }
        let channels = self.channels.read().expect("lock poisoned");
        channels
            .get(name)
            .cloned()
            .ok_or_else(|| ChannelsError::UnknownChannel {
                name: name.to_owned(),
                known: channels.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    pub(crate) async fn channel_state(&self, name: &str) -> Result<ChannelState> {
        self.channel_config(name).await?;
        self.catalog
            .channel(name)
            .await?
            .ok_or_else(|| ChannelsError::UnknownChannel {
                name: name.to_owned(),
                known: String::new(),
            })
    }

    pub(crate) fn lock(&self, channel: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock poisoned")
            .entry(channel.to_owned())
            .or_default()
            .clone()
    }

    pub async fn history(&self, channel: &str, limit: i64) -> Result<Vec<HistoryEntry>> {
        self.channel_config(channel).await?;
        Ok(self.catalog.channel_history(channel, limit).await?)
    }
}
