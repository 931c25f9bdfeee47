//! Re-signing: the same indices under a new `Date`/`Valid-Until` and the active keys — for a
//! channel's current publication (recorded in its history) and for the past snapshots served
//! under `/channels/<channel>/snapshots/<id>/` (recorded in `snapshot_publications`).

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::moves::MoveOutcome;
use crate::service::*;
use tracing::warn;

impl Channels {
    /// Signs a channel's current publication again: same snapshot, byte-identical indices,
    /// new `Date`/`Valid-Until` and the currently active keys.
    pub async fn resign(&self, channel: &str, actor: &Actor) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let from = self.position(channel).await?;
        let snapshot = from
            .snapshot
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let manifest = from.manifest.clone();
        self.move_locked(
            channel,
            from,
            snapshot,
            manifest,
            ChannelAction::Resign,
            AuditAction::Key,
            actor,
        )
        .await
    }

    /// Re-signs every published channel whose `Valid-Until` is less than half the validity
    /// period away, and every past snapshot served under a channel's `snapshots/` whose
    /// publication is; returns what was re-signed (`channel` or `channel@snapshot`). `serve`
    /// runs this on a schedule.
    pub async fn resign_expiring(&self) -> Result<Vec<String>> {
        if self.publish.valid_until.is_zero() {
            return Ok(Vec::new());
        }
        let half = (self.publish.valid_until.as_secs() / 2) as i64;
        let mut resigned = Vec::new();
        for name in &self.channel_names().await {
            let Ok(served) = self.served(name).await else {
                continue;
            };
            let due = served
                .publication
                .valid_until
                .is_none_or(|until| until - now() < half);
            if due {
                self.resign(name, &Actor::new("aptgate")).await?;
                resigned.push(name.clone());
            }
            for snapshot in self.resign_past(name, Some(half)).await? {
                resigned.push(format!("{name}@{snapshot}"));
            }
        }
        Ok(resigned)
    }

    /// Signs the past snapshots of a channel's history again (those garbage collection kept),
    /// all of them or those whose publication expires within `due`: same indices, new dates
    /// and the active keys. Returns the snapshots re-signed.
    pub(crate) async fn resign_past(&self, channel: &str, due: Option<i64>) -> Result<Vec<String>> {
        let current = self.channel_state(channel).await?.snapshot_id;
        let mut past: Vec<String> = Vec::new();
        for h in self.catalog.channel_history(channel, i64::MAX).await? {
            if Some(&h.snapshot_id) != current.as_ref() && !past.contains(&h.snapshot_id) {
                past.push(h.snapshot_id);
            }
        }
        let mut resigned = Vec::new();
        for id in past {
            match self.resign_one_past(channel, &id, due).await {
                Ok(true) => resigned.push(id),
                Ok(false) => {}
                // Deleted by garbage collection meanwhile: nothing to serve, nothing to sign.
                Err(ChannelsError::UnknownSnapshot(_) | ChannelsError::SnapshotDeleted(_)) => {}
                // One past snapshot must not keep the others (or the channels after this one)
                // from being re-signed.
                Err(e) => {
                    warn!(channel, snapshot = %id, error = %e, "cannot re-sign a past snapshot")
                }
            }
        }
        Ok(resigned)
    }

    /// Re-signs one past snapshot's publication if it is due; returns whether it was.
    async fn resign_one_past(&self, channel: &str, id: &str, due: Option<i64>) -> Result<bool> {
        let served = self.served_snapshot(channel, id).await?;
        let expiring = served
            .publication
            .valid_until
            .is_some_and(|until| due.is_none_or(|half| until - now() < half));
        if !expiring && due.is_some() {
            return Ok(false);
        }
        let snapshot = self.snapshot(id).await?;
        let publication = self
            .sign_publication(channel, &snapshot, &served.manifest)
            .await?;
        let digest = self.put_json(&publication).await?;
        self.catalog
            .set_snapshot_publication(channel, id, &digest.to_hex(), publication.signed_at)
            .await?;
        Ok(true)
    }

    pub(crate) async fn resign_all(&self, actor: &Actor) -> Result<()> {
        for name in &self.channel_names().await {
            match self.resign(name, actor).await {
                Ok(_) | Err(ChannelsError::Unpublished(_)) => {}
                Err(e) => return Err(e),
            }
            // Past snapshots too: a host trusting only a new key must verify them.
            self.resign_past(name, None).await?;
        }
        Ok(())
    }
}
