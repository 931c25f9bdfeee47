//! A run's plan: the snapshot the host's channel points at when the run starts, as apt
//! sources for exactly that snapshot (`…/channels/<c>/snapshots/<id>/`), so the run upgrades
//! to it even if the channel moves on meanwhile.

use super::group::group_of;
use crate::assignment::pick;
use crate::error::Result;
use crate::store::HostRow;
use crate::Fleet;
use aptgate_agent::protocol::rollout::{RunPlan, RunPlanRequest};
use aptgate_agent::protocol::{Facts, SourceEntry};

impl Fleet {
    pub(crate) async fn run_plan(
        &self,
        host: &HostRow,
        req: &RunPlanRequest,
        host_header: Option<&str>,
    ) -> Result<RunPlan> {
        Self::check_active_host(host)?;
        let labels = self.labels_of(&host.id).await?;
        let groups = self.rollout_groups().await?;
        let group = group_of(&groups, &labels).map(|g| g.name.clone());
        let rules = self.rules().await?;
        let mut plan = RunPlan {
            run_id: req.run_id.clone(),
            channel: None,
            snapshot: None,
            entries: Vec::new(),
            group,
            pending: 0,
        };
        let Some(rule) = pick(&rules, &labels) else {
            return Ok(plan);
        };
        plan.channel = Some(rule.channel.clone());
        let Some(view) = self.channels.channel_view(&rule.channel).await? else {
            return Ok(plan);
        };
        let architectures = serde_json::from_str::<Facts>(&host.facts)
            .map(|f| f.architectures)
            .unwrap_or_default();
        let uri = format!(
            "{}/channels/{}/snapshots/{}/",
            self.base_url(rule, host_header)?.trim_end_matches('/'),
            rule.channel,
            view.snapshot
        );
        plan.entries = view
            .suites
            .into_iter()
            .map(|(suite, components)| SourceEntry {
                uris: vec![uri.clone()],
                suites: vec![suite],
                components,
                architectures: architectures.clone(),
            })
            .collect();
        plan.snapshot = Some(view.snapshot);
        plan.pending = match self.host_pending(host, &labels).await? {
            Some(p) => p.available.len() as u64,
            None => 0,
        };
        Ok(plan)
    }
}
