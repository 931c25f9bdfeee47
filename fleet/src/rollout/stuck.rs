//! Silent holders: a holder not heard from within its group's heartbeat deadline (plus the
//! reboot grace while `rebooting`) becomes `stuck`, audited and counted in
//! `aptgate_rollout_stuck_holders{group}`. It keeps its slot until an admin releases it (or
//! it speaks again), unless the group sets `expire_stuck`, which releases it at once. Checked
//! by a background task every `rollout.stuck_check_secs` and on every read of a group.

use super::group::Group;
use super::{audit_transition, parse_state};
use crate::error::{db, Result};
use crate::store::{LeaseRow, Store};
use crate::Fleet;
use aptgate_agent::protocol::rollout::HolderState;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// Stuck holders per group, as last counted.
#[derive(Debug, Default)]
pub(crate) struct StuckGauge(Mutex<BTreeMap<String, usize>>);

impl StuckGauge {
    fn set(&self, group: &str, n: usize) {
        self.0
            .lock()
            .expect("lock poisoned")
            .insert(group.to_owned(), n);
    }

    /// Keeps only the groups that exist.
    fn retain(&self, groups: &[Group]) {
        self.0
            .lock()
            .expect("lock poisoned")
            .retain(|g, _| groups.iter().any(|k| &k.name == g));
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "# HELP aptgate_rollout_stuck_holders Lease holders silent past their heartbeat \
             deadline, not yet released.\n# TYPE aptgate_rollout_stuck_holders gauge\n",
        );
        for (group, n) in self.0.lock().expect("lock poisoned").iter() {
            let _ = writeln!(
                out,
                "aptgate_rollout_stuck_holders{{group=\"{group}\"}} {n}"
            );
        }
        out
    }
}

impl Fleet {
    /// Marks the group's silent holders `stuck` (and releases them if the group expires stuck
    /// holders) inside the caller's transaction, which holds the group's lock. Updates the
    /// gauge with the group's stuck count.
    pub(crate) async fn sweep_stuck(
        &self,
        conn: &mut sqlx::AnyConnection,
        group: &Group,
        now: i64,
    ) -> Result<()> {
        let mut stuck = 0;
        for lease in Store::holders(conn, &group.name).await? {
            let state = parse_state(&lease.state).unwrap_or(HolderState::Failed);
            let live = matches!(
                state,
                HolderState::Acquired
                    | HolderState::Updating
                    | HolderState::Rebooting
                    | HolderState::Verifying
            );
            let deadline = group.deadline_secs(state == HolderState::Rebooting);
            if !(live && now - lease.last_seen > deadline) {
                stuck += usize::from(state == HolderState::Stuck);
                continue;
            }
            let silent = now - lease.last_seen;
            let marked = LeaseRow {
                state: HolderState::Stuck.as_str().into(),
                since: now,
                detail: Some(format!(
                    "silent for {silent} s in {} (deadline {deadline} s)",
                    state.as_str()
                )),
                ..lease
            };
            Store::update_lease(conn, &marked).await?;
            audit_transition(conn, "server", &marked, Some(state.as_str()), None, now).await?;
            tracing::warn!(group = %group.name, host = %marked.host_id, silent, "lease holder stuck");
            if group.expire_stuck {
                let released = LeaseRow {
                    state: HolderState::Released.as_str().into(),
                    released_at: Some(now),
                    released_by: Some("expired".into()),
                    ..marked
                };
                Store::update_lease(conn, &released).await?;
                audit_transition(conn, "server", &released, Some("stuck"), None, now).await?;
            } else {
                stuck += 1;
            }
        }
        self.stuck.set(&group.name, stuck);
        Ok(())
    }

    /// One pass over every group.
    pub(crate) async fn sweep_all_stuck(&self) -> Result<()> {
        let groups = self.rollout_groups().await?;
        self.stuck.retain(&groups);
        for g in &groups {
            let mut tx = self.store.begin().await.map_err(db("begin"))?;
            if let Some(row) = Store::lock_group(&mut tx, &g.name).await? {
                self.sweep_stuck(&mut tx, &Group::from_row(&row)?, aptgate_channels::now())
                    .await?;
            }
            tx.commit().await.map_err(db("commit"))?;
        }
        Ok(())
    }

    /// The background check; ends when the fleet is dropped.
    pub(crate) async fn watch_stuck(fleet: Weak<Fleet>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Some(fleet) = fleet.upgrade() else { return };
            if let Err(e) = fleet.sweep_all_stuck().await {
                tracing::warn!(error = %e, "cannot check lease holders for silence");
            }
        }
    }

    /// `aptgate_rollout_stuck_holders{group}` for `/metrics`.
    pub fn rollout_metrics(&self) -> String {
        self.stuck.render()
    }
}
