//! Plans: what a move would make of a channel — what changes in it and the newest version of
//! every package it would publish — computed without moving it and without storing anything
//! (no snapshot recorded, no blob written), for `promote --dry-run` and the fleet's impact.

use crate::catalog::*;
use crate::derive::every_index;
use crate::diff::*;
use crate::error::{ChannelsError, Result};
use crate::fleet_view::NewestVersions;
use crate::index::compare_versions;
use crate::manifest::*;
use crate::promote::PromoteRequest;
use crate::service::*;
use aptgate_config::ChannelConfig;
use std::collections::{HashMap, HashSet};

/// Per index (suite, `component/binary-arch`), the package names taken from the other manifest.
type Take = HashMap<(String, String), HashSet<String>>;

/// What a move would do to a channel.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MovePlan {
    pub channel: String,
    /// Where the channel points now (`None` while unpublished).
    pub current: Option<String>,
    /// The snapshot the move starts from: the source channel's for a promotion (before holds
    /// or the `--only` overlay are applied), the one named otherwise.
    pub snapshot: String,
    /// Held packages, kept at the channel's version.
    pub held: Vec<String>,
    /// For `--only`: every package taken, the named ones and the dependencies they pull.
    pub taken: Vec<String>,
    /// What changes in the channel.
    pub diff: Diff,
    /// The refusal the move would meet now and may not later (a soak not yet served).
    pub refused: Option<String>,
    /// The newest version of every (name, architecture) the channel would publish.
    #[serde(skip)]
    pub newest: NewestVersions,
}

impl Channels {
    /// What promoting `req` would do to `req.to`, with the same checks as the promotion
    /// (refused the same way), leaving everything as it is.
    pub async fn plan_promotion(&self, req: &PromoteRequest) -> Result<MovePlan> {
        let checked = self.promotion_checks(req).await?;
        let to = self.position(&req.to).await?;
        let source = self.snapshot(&checked.from_snapshot_id).await?;
        let source_manifest = self.manifest(&source).await?;
        let holds = self.catalog.holds(&req.to).await?;
        let mut plan = if req.only.is_empty() {
            self.plan_whole(
                &req.to,
                &checked.config,
                &holds,
                to.published(),
                &source_manifest,
            )
            .await?
        } else {
            let Some(current) = to.published() else {
                return Err(ChannelsError::Refused(format!(
                    "{} has nothing published yet; promote a whole snapshot first",
                    req.to
                )));
            };
            let (take, taken) = self
                .selected_pull(req, &holds, current, &source.id, &source_manifest)
                .await?;
            let mut diff = self.diff_manifests(current, &source_manifest).await?;
            keep_changes(&mut diff, |c| taken_in(&take, c));
            MovePlan {
                taken: taken.into_iter().collect(),
                diff,
                newest: self
                    .newest_of(&checked.config, current, &source_manifest, &take)
                    .await?,
                ..MovePlan::default()
            }
        };
        plan.channel = req.to.clone();
        plan.current = to.snapshot.map(|s| s.id);
        plan.snapshot = source.id;
        plan.refused = checked.soak_refusal;
        Ok(plan)
    }

    /// What moving `channel` to `snapshot` (a whole snapshot, holds applied, as a publish or
    /// rollback would) would do, leaving everything as it is.
    pub async fn plan_move(&self, channel: &str, snapshot: &str) -> Result<MovePlan> {
        let config = self.channel_config(channel).await?;
        let to = self.position(channel).await?;
        let target = self.snapshot(snapshot).await?;
        let manifest = self.manifest(&target).await?;
        let holds = self.catalog.holds(channel).await?;
        let mut plan = self
            .plan_whole(channel, &config, &holds, to.published(), &manifest)
            .await?;
        plan.channel = channel.to_owned();
        plan.current = to.snapshot.map(|s| s.id);
        plan.snapshot = target.id;
        Ok(plan)
    }

    /// A whole manifest as the channel would publish it: held packages keep the current
    /// version (as `with_holds` derives it).
    async fn plan_whole(
        &self,
        channel: &str,
        config: &ChannelConfig,
        holds: &[Hold],
        current: Option<&Manifest>,
        target: &Manifest,
    ) -> Result<MovePlan> {
        let empty = Manifest::new();
        let mut diff = self
            .diff_manifests(current.unwrap_or(&empty), target)
            .await?;
        let held: HashSet<String> = holds.iter().map(|h| h.package.clone()).collect();
        let (take, other) = match current.filter(|_| !held.is_empty()) {
            Some(current) => {
                keep_changes(&mut diff, |c| !held.contains(&c.name));
                (every_index(target, &held), current)
            }
            None => (Take::new(), &empty),
        };
        let mut held: Vec<String> = held.into_iter().collect();
        held.sort();
        tracing::debug!(channel, held = held.len(), "planning a move");
        Ok(MovePlan {
            held,
            diff,
            newest: self.newest_of(config, target, other, &take).await?,
            ..MovePlan::default()
        })
    }

    /// The newest version of every (name, architecture) in the suites `config` publishes of
    /// `base` with, per index, the packages `take` names replaced by `other`'s (what
    /// `overlay` would render), read from the package tables alone.
    async fn newest_of(
        &self,
        config: &ChannelConfig,
        base: &Manifest,
        other: &Manifest,
        take: &Take,
    ) -> Result<NewestVersions> {
        let mut newest = NewestVersions::new();
        let none = HashSet::new();
        for (suite, manifest) in &base.suites {
            if !config.suites.is_empty() && !config.suites.contains(suite) {
                continue;
            }
            for (key, files) in &manifest.indices {
                let names = take.get(&(suite.clone(), key.clone())).unwrap_or(&none);
                let table = self.table(files).await?;
                for row in table.rows().filter(|r| !names.contains(r.name)) {
                    keep_newest(&mut newest, row.name, row.architecture, row.version);
                }
                let other_files = other.suites.get(suite).and_then(|s| s.indices.get(key));
                if let (Some(files), false) = (other_files, names.is_empty()) {
                    let table = self.table(files).await?;
                    for row in names.iter().flat_map(|n| table.named(n)) {
                        keep_newest(&mut newest, row.name, row.architecture, row.version);
                    }
                }
            }
        }
        Ok(newest)
    }
}

fn keep_newest(newest: &mut NewestVersions, name: &str, arch: &str, version: &str) {
    match newest.get_mut(&(name.to_owned(), arch.to_owned())) {
        Some(v) if compare_versions(version, v).is_gt() => *v = version.to_owned(),
        Some(_) => {}
        None => {
            newest.insert((name.to_owned(), arch.to_owned()), version.to_owned());
        }
    }
}

fn keep_changes(diff: &mut Diff, keep: impl Fn(&Change) -> bool) {
    for list in [
        &mut diff.added,
        &mut diff.removed,
        &mut diff.upgraded,
        &mut diff.downgraded,
    ] {
        list.retain(&keep);
    }
}

/// Whether a change of the source is taken by a selective promotion: its name is taken in an
/// index of its suite for its architecture (`all` packages are in every one).
fn taken_in(take: &Take, change: &Change) -> bool {
    take.iter().any(|((suite, key), names)| {
        suite == &change.suite
            && names.contains(&change.name)
            && (change.architecture == "all"
                || key.rsplit("binary-").next() == Some(change.architecture.as_str()))
    })
}
