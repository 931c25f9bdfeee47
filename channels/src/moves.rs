//! Moving a channel: every promotion, rollback, follow and re-signature ends here. The target
//! manifest's blobs exist first; one catalog transaction then moves the channel (checked
//! against the generation it was read at) and appends the audit entry.

use crate::catalog::*;
use crate::diff::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::serve::*;
use crate::service::*;
use aptgate_config::Retain;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MoveOutcome {
    pub channel: String,
    pub from_snapshot: Option<String>,
    pub to_snapshot: String,
    pub generation: i64,
    pub diff: DiffSummary,
    pub fetched: u64,
}

/// Where a channel is before a move: its catalog row and, once published, the snapshot it
/// points at and that snapshot's manifest (read once per move, by whoever prepares it).
pub(crate) struct Position {
    pub state: ChannelState,
    pub snapshot: Option<Snapshot>,
    /// Empty while the channel is unpublished.
    pub manifest: Manifest,
}

impl Position {
    /// The current manifest, if the channel is published.
    pub fn published(&self) -> Option<&Manifest> {
        self.snapshot.as_ref().map(|_| &self.manifest)
    }
}

impl Channels {
    /// Where `channel` is now.
    pub(crate) async fn position(&self, channel: &str) -> Result<Position> {
        let state = self.channel_state(channel).await?;
        let snapshot = match &state.snapshot_id {
            Some(id) => Some(self.snapshot(id).await?),
            None => None,
        };
        let manifest = match &snapshot {
            Some(s) => self.manifest(s).await?,
            None => Manifest::new(),
        };
        Ok(Position {
            state,
            snapshot,
            manifest,
        })
    }

    /// Moves a channel to a snapshot (taking the channel's lock).
    pub(crate) async fn move_channel(
        &self,
        channel: &str,
        snapshot: Snapshot,
        manifest: Manifest,
        action: ChannelAction,
        audit: AuditAction,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let from = self.position(channel).await?;
        self.move_locked(channel, from, snapshot, manifest, action, audit, actor)
            .await
    }

    #[expect(clippy::too_many_arguments, reason = "one call site per kind of move")]
    pub(crate) async fn move_locked(
        &self,
        channel: &str,
        from: Position,
        snapshot: Snapshot,
        manifest: Manifest,
        action: ChannelAction,
        audit: AuditAction,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let resign = action == ChannelAction::Resign;
        let (state, current) = (from.state, from.manifest);
        // With `retain = "all"`, everything new to a promoted channel is stored before it
        // moves. With `used` (the default) nothing is fetched here: packages are stored when
        // first asked for, and a sync rescues referenced ones that leave upstream. A channel
        // that follows its source stays on demand (the source's fetch policy decides).
        let retain_all = self.channel_config(channel).await?.retain == Retain::All;
        let fetched =
            if !retain_all || matches!(action, ChannelAction::Follow | ChannelAction::Resign) {
                0
            } else {
                self.fetch_missing(&current, &manifest, &|line: &str| {
                    info!(channel, "{line}");
                })
                .await?
            };
        let diff = if resign {
            DiffSummary::default()
        } else {
            self.diff_manifests(&current, &manifest).await?.summary()
        };
        let publication = self.sign_publication(channel, &snapshot, &manifest).await?;
        let publication_sha256 = self.put_json(&publication).await?;
        let at = now();
        let mut tx = self.catalog.begin().await?;
        // Marks the snapshot used (retention) and fails if garbage collection deleted it
        // meanwhile; the row stays locked until commit.
        if !tx.touch_snapshot(&snapshot.id, at).await? {
            return Err(ChannelsError::SnapshotDeleted(snapshot.id));
        }
        let generation = tx
            .move_channel(&ChannelMove {
                channel: channel.to_owned(),
                expected_generation: state.generation,
                snapshot_id: snapshot.id.clone(),
                publication_sha256: publication_sha256.to_hex(),
                at,
                action,
                actor: actor.name.clone(),
                comment: actor.comment.clone(),
            })
            .await?;
        // A re-signature changes no content: the channel history records it, the audit log
        // records what caused it (a key change) or nothing (a Valid-Until refresh).
        if !resign {
            tx.append_audit(&NewAuditEntry {
                at,
                actor: actor.name.clone(),
                action: audit,
                channel: Some(channel.to_owned()),
                from_snapshot: state.snapshot_id.clone(),
                to_snapshot: Some(snapshot.id.clone()),
                comment: actor.comment.clone(),
                summary: Some(serde_json::to_string(&diff).expect("serializes")),
            })
            .await?;
        }
        tx.commit().await?;
        self.served.write().expect("lock poisoned").insert(
            channel.to_owned(),
            (
                Arc::new(Served {
                    publication,
                    manifest,
                    generation,
                }),
                Instant::now(),
            ),
        );
        info!(channel, snapshot = %snapshot.id, generation, %action, "channel moved");
        Ok(MoveOutcome {
            channel: channel.to_owned(),
            from_snapshot: state.snapshot_id,
            to_snapshot: snapshot.id,
            generation,
            diff,
            fetched,
        })
    }

    /// Moves a channel back to an earlier snapshot: `to`, or the one before the current.
    pub async fn rollback(
        &self,
        channel: &str,
        to: Option<&str>,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let from = self.position(channel).await?;
        let current = from
            .state
            .snapshot_id
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let history = self.catalog.channel_history(channel, 1000).await?;
        let target = match to {
            Some(t) => {
                let snapshot = self.snapshot(t).await?;
                if !history.iter().any(|h| h.snapshot_id == snapshot.id) {
                    return Err(ChannelsError::Refused(format!(
                        "{channel} never pointed at {}; rollback only goes to its own history\n\
                         hint: `aptgate channel history {channel}`",
                        snapshot.id
                    )));
                }
                snapshot
            }
            None => {
                let previous = history
                    .iter()
                    .find(|h| h.snapshot_id != current)
                    .ok_or_else(|| {
                        ChannelsError::Refused(format!("{channel} has no earlier snapshot"))
                    })?;
                self.snapshot(&previous.snapshot_id).await?
            }
        };
        let manifest = self.manifest(&target).await?;
        self.move_locked(
            channel,
            from,
            target,
            manifest,
            ChannelAction::Rollback,
            AuditAction::Rollback,
            actor,
        )
        .await
    }
}
