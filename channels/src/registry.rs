//! Channel definitions (configured, or created through the API and kept in the catalog) and
//! where each channel points.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::service::*;
use aptgate_config::ChannelConfig;
use std::sync::Arc;
use tracing::info;

impl Channels {
    pub fn channel_configs(&self) -> Vec<ChannelConfig> {
        self.channels
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn channel_names(&self) -> Vec<String> {
        self.channels
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Creates a channel through the API: the same rules as a `[[channels]]` entry, kept in
    /// the catalog. A configured channel's name cannot be taken.
    pub async fn create_channel(&self, config: ChannelConfig, actor: &Actor) -> Result<()> {
        let name = config.name.to_string();
        if self
            .channels
            .read()
            .expect("lock poisoned")
            .contains_key(&name)
        {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        if let Some(from) = &config.promotes_from {
            self.channel_config(from.as_str())?;
            if from.as_str() == name {
                return Err(ChannelsError::Refused(format!(
                    "{name} cannot promote from itself"
                )));
            }
        }
        if let Some(source) = &config.follows {
            if !self.sources.iter().any(|s| &s.name == source) {
                return Err(ChannelsError::UnknownSource(source.to_string()));
            }
        }
        let rules = serde_json::to_string(&config).expect("channel rules serialize");
        let mut tx = self.catalog.begin().await?;
        if !tx.create_channel(&name, &rules, now()).await? {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        tx.commit().await?;
        info!(channel = %name, actor = %actor.name, "channel created");
        self.channels
            .write()
            .expect("lock poisoned")
            .insert(name, config);
        Ok(())
    }

    pub(crate) fn channel_config(&self, name: &str) -> Result<ChannelConfig> {
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
        self.channel_config(name)?;
        self.catalog
            .channel(name)
            .await?
            .ok_or_else(|| ChannelsError::UnknownChannel {
                name: name.to_owned(),
                known: self.channel_names().join(", "),
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
        self.channel_config(channel)?;
        Ok(self.catalog.channel_history(channel, limit).await?)
    }
}
