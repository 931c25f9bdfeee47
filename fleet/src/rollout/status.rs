//! A group's wave as admins see it (`aptgate rollout status GROUP`): the settings, whether the
//! window is open, the hosts done in this wave, those in progress, failed, stuck, and the line
//! of waiters. The wave is every lease released or failed since the group's last resume (or
//! its creation).

use super::group::Group;
use crate::error::{db, FleetError, Result};
use crate::store::{LeaseRow, Store};
use crate::Fleet;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct HolderView {
    pub host_id: String,
    pub hostname: String,
    pub run_id: String,
    pub fence: i64,
    pub state: String,
    pub step: String,
    /// When it entered `state`.
    pub since: i64,
    pub last_seen: i64,
    pub detail: Option<String>,
    pub snapshot: Option<String>,
    /// `agent`, `expired`, `superseded` or the admin, for released leases.
    pub released_by: Option<String>,
    /// The hooks of the last report that had any.
    pub hooks: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaiterView {
    pub host_id: String,
    pub hostname: String,
    pub position: usize,
    pub first_asked_at: i64,
    pub last_asked_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: Group,
    pub window_open: bool,
    pub window_opens_at: Option<i64>,
    /// Active hosts in the group, and the slots that makes.
    pub hosts: usize,
    pub slots: u32,
    pub failures_in_wave: i64,
    pub failure_budget_spent: bool,
    /// Released by their agent in this wave, newest first.
    pub done: Vec<HolderView>,
    /// acquired, updating, rebooting or verifying.
    pub in_progress: Vec<HolderView>,
    pub failed: Vec<HolderView>,
    pub stuck: Vec<HolderView>,
    /// Released by an admin, expired or superseded in this wave.
    pub cleared: Vec<HolderView>,
    pub waiting: Vec<WaiterView>,
}

impl Fleet {
    async fn view(&self, l: LeaseRow) -> Result<HolderView> {
        Ok(HolderView {
            hostname: self.hostname_of(&l.host_id).await?,
            hooks: serde_json::from_str(&l.hooks).unwrap_or_default(),
            host_id: l.host_id,
            run_id: l.run_id,
            fence: l.fence,
            state: l.state,
            step: l.step,
            since: l.since,
            last_seen: l.last_seen,
            detail: l.detail,
            snapshot: l.snapshot,
            released_by: l.released_by,
        })
    }

    pub async fn rollout_status(&self, name: &str) -> Result<GroupStatus> {
        let now = aptgate_channels::now();
        let groups = self.rollout_groups().await?;
        let mut tx = self.store.begin().await.map_err(db("begin"))?;
        let Some(row) = Store::lock_group(&mut tx, name).await? else {
            return Err(unknown_group(name));
        };
        let group = Group::from_row(&row)?;
        self.sweep_stuck(&mut tx, &group, now).await?;
        let holders = Store::holders(&mut tx, name).await?;
        let wave = Store::wave_leases(&mut tx, name, group.wave_started_at).await?;
        let failures = Store::failures_since(&mut tx, name, group.wave_started_at).await?;
        let ttl = super::lease::waiter_ttl(self.rollout.retry_secs);
        let line = Store::waiters(&mut tx, name, now - ttl).await?;
        tx.commit().await.map_err(db("commit"))?;
        let hosts = self.group_size(&groups, name).await?;
        let (window_open, window_opens_at) = group.window(now);
        let mut status = GroupStatus {
            window_open,
            window_opens_at,
            hosts,
            slots: group.max_concurrent.slots(hosts),
            failures_in_wave: failures,
            failure_budget_spent: failures >= i64::from(group.failure_budget),
            group,
            done: Vec::new(),
            in_progress: Vec::new(),
            failed: Vec::new(),
            stuck: Vec::new(),
            cleared: Vec::new(),
            waiting: Vec::new(),
        };
        for l in holders {
            let list = match l.state.as_str() {
                "failed" => &mut status.failed,
                "stuck" => &mut status.stuck,
                _ => &mut status.in_progress,
            };
            list.push(self.view(l).await?);
        }
        for l in wave {
            let list = if l.released_by.as_deref() == Some("agent") {
                &mut status.done
            } else {
                &mut status.cleared
            };
            list.push(self.view(l).await?);
        }
        for (i, w) in line.into_iter().enumerate() {
            status.waiting.push(WaiterView {
                hostname: self.hostname_of(&w.host_id).await?,
                host_id: w.host_id,
                position: i + 1,
                first_asked_at: w.first_asked_at,
                last_asked_at: w.last_asked_at,
            });
        }
        Ok(status)
    }
}

pub(crate) fn unknown_group(name: &str) -> FleetError {
    FleetError::not_found(
        "unknown_group",
        format!("no rollout group {name:?}\nhint: `aptgate rollout group list` shows the groups"),
    )
}
