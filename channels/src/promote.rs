//! Promotion: moving a channel to the snapshot of the channel it promotes from, whole (with
//! holds kept) or only selected packages with the dependencies they need.

use crate::catalog::*;
use crate::derive::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::moves::*;
use crate::service::*;
use aptgate_config::ChannelConfig;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tracing::info;

/// How often a promotion is prepared again when another server instance moved the channel.
const MOVE_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PromoteRequest {
    pub from: String,
    pub to: String,
    /// Only these packages (and the dependencies the target lacks); empty = everything.
    #[serde(default)]
    pub only: Vec<String>,
}

/// What [`Channels::promotion_checks`] found.
pub(crate) struct Checked {
    pub config: ChannelConfig,
    pub from_snapshot_id: String,
    /// The refusal a promotion would meet now for want of soak (`min_soak`).
    pub soak_refusal: Option<String>,
}

impl Channels {
    /// Promotes `req.from`'s snapshot (or only the named packages) into `req.to`.
    ///
    /// Promotions of one channel serialize: in this process on the channel's lock; across
    /// server instances sharing the catalog, a promotion that finds the channel moved while it
    /// was prepared is prepared again from the new position (a few times, then it fails).
    pub async fn promote(&self, req: &PromoteRequest, actor: &Actor) -> Result<MoveOutcome> {
        let mut attempt = 1;
        loop {
            match self.promote_once(req, actor, false).await {
                Err(ChannelsError::Catalog(CatalogError::ChannelMoved { .. }))
                    if attempt < MOVE_ATTEMPTS =>
                {
                    info!(channel = %req.to, attempt, "channel moved meanwhile; promoting again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    pub(crate) async fn promote_once(
        &self,
        req: &PromoteRequest,
        actor: &Actor,
        auto_approved: bool,
    ) -> Result<MoveOutcome> {
        let checked = self.promotion_checks(req).await?;
        // Auto-approval has its own soak: per package version, since it was first seen.
        if let Some(refusal) = checked.soak_refusal.filter(|_| !auto_approved) {
            return Err(ChannelsError::Refused(refusal));
        }
        let from_snapshot_id = checked.from_snapshot_id;
        let lock = self.lock(&req.to);
        let _guard = lock.lock().await;
        let to = self.position(&req.to).await?;
        let source_snapshot = self.snapshot(&from_snapshot_id).await?;
        let source_manifest = self.manifest(&source_snapshot).await?;
        let holds = self.catalog.holds(&req.to).await?;

        let (snapshot, manifest) = if req.only.is_empty() {
            self.with_holds(
                &req.to,
                &holds,
                to.published(),
                source_snapshot,
                source_manifest,
            )
            .await?
        } else {
            let (Some(base), Some(cur)) = (&to.snapshot, to.published()) else {
                return Err(ChannelsError::Refused(format!(
                    "{} has nothing published yet; promote a whole snapshot first",
                    req.to
                )));
            };
            let (take, _) = self
                .selected_pull(req, &holds, cur, &source_snapshot.id, &source_manifest)
                .await?;
            let derived = self.overlay(cur, &source_manifest, &take).await?;
            self.derived_snapshot(
                base,
                derived,
                &req.to,
                format!(
                    "{} plus {} from {} ({})",
                    base.id,
                    req.only.join(", "),
                    req.from,
                    source_snapshot.id
                ),
            )
            .await?
        };
        self.move_locked(
            &req.to,
            to,
            snapshot,
            manifest,
            ChannelAction::Promote,
            AuditAction::Promote,
            actor,
        )
        .await
    }

    /// What a promotion must pass before anything is prepared. A snapshot that has not soaked
    /// long enough is reported, not refused, so a dry run can tell it.
    pub(crate) async fn promotion_checks(&self, req: &PromoteRequest) -> Result<Checked> {
        let to_config = self.channel_config(&req.to).await?;
        let from_state = self.channel_state(&req.from).await?;
        if let Some(allowed) = &to_config.promotes_from {
            if allowed.as_str() != req.from {
                return Err(ChannelsError::Refused(format!(
                    "{} promotes from {allowed}, not from {}",
                    req.to, req.from
                )));
            }
        }
        let from_snapshot_id = from_state
            .snapshot_id
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(req.from.clone()))?;
        let mut soak_refusal = None;
        if !to_config.min_soak.is_zero() {
            let history = self.catalog.channel_history(&req.from, 1000).await?;
            let since = history
                .iter()
                .take_while(|h| h.snapshot_id == from_snapshot_id)
                .last()
                .map(|h| h.at)
                .unwrap_or(from_state.updated_at);
            let soaked = Duration::from_secs((now() - since).max(0) as u64);
            if soaked < to_config.min_soak {
                soak_refusal = Some(format!(
                    "snapshot {from_snapshot_id} has been in {} for {}; {} requires {} \
                     (min_soak)\nhint: wait, or lower min_soak for {} in the configuration",
                    req.from,
                    aptgate_config::humantime_secs::format_duration(soaked),
                    req.to,
                    aptgate_config::humantime_secs::format_duration(to_config.min_soak),
                    req.to
                ));
            }
        }
        if !req.only.is_empty() && !to_config.selective {
            return Err(ChannelsError::Refused(format!(
                "{} does not allow selective promotion (selective = false)",
                req.to
            )));
        }
        Ok(Checked {
            config: to_config,
            from_snapshot_id,
            soak_refusal,
        })
    }

    /// For `--only`: what to take from the source per index (the named packages and the
    /// dependencies `current` lacks) and every name taken. Refused when a named package is
    /// held in the target or missing from the source.
    pub(crate) async fn selected_pull(
        &self,
        req: &PromoteRequest,
        holds: &[Hold],
        current: &Manifest,
        source_snapshot_id: &str,
        source: &Manifest,
    ) -> Result<(HashMap<(String, String), HashSet<String>>, BTreeSet<String>)> {
        if let Some(h) = holds.iter().find(|h| req.only.contains(&h.package)) {
            return Err(ChannelsError::Refused(format!(
                "{} is held in {}\nhint: `aptgate unhold {} {}` first",
                h.package, req.to, req.to, h.package
            )));
        }
        let (take, found) = self.pull_set(current, source, &req.only).await?;
        let missing: Vec<_> = req.only.iter().filter(|n| !found.contains(*n)).collect();
        if !missing.is_empty() {
            return Err(ChannelsError::Refused(format!(
                "not in {}'s snapshot {}: {}",
                req.from,
                source_snapshot_id,
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok((take, found))
    }

    /// A whole snapshot as `channel` will publish it: held packages keep the channel's
    /// current version (a derived snapshot), or the snapshot itself when nothing is held.
    pub(crate) async fn with_holds(
        &self,
        channel: &str,
        holds: &[Hold],
        current: Option<&Manifest>,
        snapshot: Snapshot,
        manifest: Manifest,
    ) -> Result<(Snapshot, Manifest)> {
        let held: HashSet<String> = holds.iter().map(|h| h.package.clone()).collect();
        let Some(current) = current.filter(|_| !held.is_empty()) else {
            return Ok((snapshot, manifest));
        };
        let take = every_index(&manifest, &held);
        let derived = self.overlay(&manifest, current, &take).await?;
        let names: Vec<&str> = holds.iter().map(|h| h.package.as_str()).collect();
        self.derived_snapshot(
            &snapshot,
            derived,
            channel,
            format!(
                "{} with held packages kept from {channel}: {}",
                snapshot.id,
                names.join(", ")
            ),
        )
        .await
    }

    /// Moves `channel` to a whole snapshot (holds applied) under its lock.
    pub(crate) async fn move_to_snapshot(
        &self,
        channel: &str,
        snapshot: Snapshot,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let from = self.position(channel).await?;
        let holds = self.catalog.holds(channel).await?;
        let manifest = self.manifest(&snapshot).await?;
        let (snapshot, manifest) = self
            .with_holds(channel, &holds, from.published(), snapshot, manifest)
            .await?;
        self.move_locked(
            channel,
            from,
            snapshot,
            manifest,
            ChannelAction::Promote,
            AuditAction::Promote,
            actor,
        )
        .await
    }

    /// The snapshot for a derived manifest: `base` itself when nothing changed.
    pub(crate) async fn derived_snapshot(
        &self,
        base: &Snapshot,
        manifest: Manifest,
        channel: &str,
        description: String,
    ) -> Result<(Snapshot, Manifest)> {
        let digest = self.put_json(&manifest).await?;
        if digest.to_hex() == base.manifest_sha256 {
            return Ok((base.clone(), manifest));
        }
        let mut tx = self.catalog.begin().await?;
        // The derived manifest reuses the base's unchanged blobs: the base must still be kept
        // when the new snapshot is recorded (garbage collection marks before it sweeps).
        if !tx.touch_snapshot(&base.id, now()).await? {
            return Err(ChannelsError::SnapshotDeleted(base.id.clone()));
        }
        let snapshot = self
            .record_snapshot(
                &mut tx,
                channel,
                SnapshotKind::Pull,
                description,
                digest,
                base.sources.clone(),
            )
            .await?;
        tx.commit().await?;
        Ok((snapshot, manifest))
    }
}
