//! Auto-approval: package versions first seen long enough ago are promoted on their own.

use crate::error::{ChannelsError, Result};
use crate::moves::*;
use crate::promote::*;
use crate::service::*;
use std::collections::{BTreeSet, HashSet};

impl Channels {
    /// Applies the channel's auto-approval rule: every update its source channel has over it
    /// whose new version was first seen at least `auto_approve_after` ago is promoted (with
    /// the dependencies the channel lacks). Returns `None` when nothing qualifies.
    pub async fn auto_approve(&self, channel: &str) -> Result<Option<MoveOutcome>> {
        self.auto_approve_at(channel, now()).await
    }

    /// [`auto_approve`](Self::auto_approve) as if the time were `at` (unix seconds).
    pub async fn auto_approve_at(&self, channel: &str, at: i64) -> Result<Option<MoveOutcome>> {
        let config = self.channel_config(channel).await?;
        let (Some(from), false) = (&config.promotes_from, config.auto_approve_after.is_zero())
        else {
            return Err(ChannelsError::Refused(format!(
                "{channel} has no auto-approval rule (promotes_from and auto_approve_after)"
            )));
        };
        let from = from.to_string();
        let state = self.channel_state(channel).await?;
        let from_state = self.channel_state(&from).await?;
        let (Some(current), Some(source)) = (&state.snapshot_id, &from_state.snapshot_id) else {
            return Ok(None);
        };
        let current = self.manifest(&self.snapshot(current).await?).await?;
        let source = self.manifest(&self.snapshot(source).await?).await?;
        let diff = self.diff_manifests(&current, &source).await?;
        let cutoff = at - config.auto_approve_after.as_secs() as i64;
        let held: HashSet<String> = self
            .catalog
            .holds(channel)
            .await?
            .into_iter()
            .map(|h| h.package)
            .collect();
        let mut eligible = BTreeSet::new();
        for change in diff.upgraded.iter().chain(&diff.added) {
            let Some(version) = &change.to else { continue };
            if held.contains(&change.name) {
                continue;
            }
            let seen = self
                .catalog
                .first_seen(&change.name, version, &change.architecture)
                .await?;
            if seen.is_some_and(|t| t <= cutoff) {
                eligible.insert(change.name.clone());
            }
        }
        if eligible.is_empty() {
            return Ok(None);
        }
        let actor = Actor {
            name: "auto-approve".into(),
            comment: Some(format!(
                "first seen at least {} ago",
                aptgate_config::humantime_secs::format_duration(config.auto_approve_after)
            )),
        };
        let req = PromoteRequest {
            from,
            to: channel.to_owned(),
            only: eligible.into_iter().collect(),
        };
        self.promote_once(&req, &actor, true).await.map(Some)
    }

    /// Runs every channel's auto-approval rule (what `serve` does after each scheduled sync).
    pub async fn auto_approve_all(&self) -> Vec<(String, Result<Option<MoveOutcome>>)> {
        let mut out = Vec::new();
        for c in self.channel_configs().await {
            if c.promotes_from.is_some() && !c.auto_approve_after.is_zero() {
                let name = c.name.to_string();
                let result = self.auto_approve(&name).await;
                out.push((name, result));
            }
        }
        out
    }
}
