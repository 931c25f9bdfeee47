//! Holds: packages a channel keeps at its current version across promotions.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::service::*;

impl Channels {
    /// Keeps `package` at the channel's current version across promotions.
    pub async fn hold(&self, channel: &str, package: &str, actor: &Actor) -> Result<bool> {
        self.hold_change(channel, package, actor, true).await
    }

    pub async fn unhold(&self, channel: &str, package: &str, actor: &Actor) -> Result<bool> {
        self.hold_change(channel, package, actor, false).await
    }

    pub(crate) async fn hold_change(
        &self,
        channel: &str,
        package: &str,
        actor: &Actor,
        hold: bool,
    ) -> Result<bool> {
        let state = self.channel_state(channel).await?;
        if package.is_empty() || package.contains(char::is_whitespace) {
            return Err(ChannelsError::Refused(format!(
                "invalid package name {package:?}"
            )));
        }
        let at = now();
        let mut tx = self.catalog.begin().await?;
        let changed = if hold {
            tx.add_hold(
                channel,
                &Hold {
                    package: package.to_owned(),
                    at,
                    actor: actor.name.clone(),
                    comment: actor.comment.clone(),
                },
            )
            .await?
        } else {
            tx.remove_hold(channel, package).await?
        };
        if changed {
            tx.append_audit(&NewAuditEntry {
                at,
                actor: actor.name.clone(),
                action: if hold {
                    AuditAction::Hold
                } else {
                    AuditAction::Release
                },
                channel: Some(channel.to_owned()),
                from_snapshot: state.snapshot_id.clone(),
                to_snapshot: state.snapshot_id,
                comment: actor.comment.clone(),
                summary: Some(serde_json::json!({ "package": package }).to_string()),
            })
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn holds(&self, channel: &str) -> Result<Vec<Hold>> {
        self.channel_config(channel).await?;
        Ok(self.catalog.holds(channel).await?)
    }
}
