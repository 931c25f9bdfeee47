//! The rolling-upgrade part of the agent protocol: a run's plan, the group lease and the
//! holder's reports. The server (`fleet/`) owns the lease; the agent owns the run's steps.
//!
//! | call | body → answer |
//! |---|---|
//! | `POST /api/v1/agent/run/plan` | [`RunPlanRequest`] → [`RunPlan`]: the snapshot this run upgrades to |
//! | `POST /api/v1/agent/lease/acquire` | [`LeaseAcquire`] → [`LeaseAnswer`] |
//! | `POST /api/v1/agent/lease/report` | [`LeaseReport`] → [`LeaseReportAnswer`]; `409 stale_fence` when the fence is not the holder's |
//!
//! A lease is a slot in a counting semaphore per rollout group. Acquire is idempotent per
//! (host, run): asking again for the same run returns the same fence. Every later report
//! carries that fence; a report whose fence is not the current holder's (an admin released the
//! slot and the host acquired again, or another run holds it) is refused with `409
//! stale_fence`, so a host that lost its slot can never act as if it held it.
//!
//! A report with an unchanged state is the heartbeat. `released` frees the slot; `failed`
//! keeps it (fail closed) until an admin releases it.

use serde::{Deserialize, Serialize};

pub const RUN_PLAN_PATH: &str = "/api/v1/agent/run/plan";
pub const LEASE_ACQUIRE_PATH: &str = "/api/v1/agent/lease/acquire";
pub const LEASE_REPORT_PATH: &str = "/api/v1/agent/lease/report";

/// A run id: chosen by the agent (16 random bytes, hex) and written to its run state before
/// the first call, so a restarted agent resumes the same run.
pub type RunId = String;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPlanRequest {
    pub run_id: RunId,
}

/// What a run upgrades to, fixed when the run starts: the snapshot the host's channel points at
/// now. The agent upgrades to exactly this snapshot even if the channel moves during the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlan {
    pub run_id: RunId,
    /// `None`: the host is unassigned; nothing to upgrade.
    pub channel: Option<String>,
    /// The snapshot id the channel points at.
    pub snapshot: Option<String>,
    /// apt sources for exactly that snapshot (`…/channels/<c>/snapshots/<id>/`), signed by the
    /// same keys as the channel's [`super::DesiredSources`].
    #[serde(default)]
    pub entries: Vec<super::SourceEntry>,
    /// The rollout group the host is in, if any (`None`: no lease is needed).
    #[serde(default)]
    pub group: Option<String>,
    /// Updates the server computes as pending for this host against that snapshot.
    #[serde(default)]
    pub pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseAcquire {
    pub run_id: RunId,
    /// [`RunPlan::snapshot`], recorded with the lease for the rollout view.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaseAnswer {
    /// The slot is the host's. `fence` goes in every report of this run.
    Granted {
        group: String,
        fence: i64,
        state: HolderState,
    },
    /// The host is in no rollout group: it may upgrade without a lease.
    NotRequired,
    /// No slot now. Ask again after `retry_after_secs` (plus jitter).
    Wait {
        group: String,
        reason: WaitReason,
        /// Who holds the group's slots, and in which state.
        holders: Vec<LeaseHolder>,
        /// 1 = next in line (hosts are served in the order they first asked).
        position: u32,
        retry_after_secs: u64,
        /// With [`WaitReason::OutsideWindow`]: when the next window opens (unix seconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_opens_at: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Every slot is held (holders, plus failed and stuck hosts not yet released).
    Full,
    /// No new lease outside the group's maintenance windows.
    OutsideWindow,
    /// An admin paused the group.
    Paused,
    /// The wave stopped: as many hosts failed as the group's failure budget allows.
    FailureBudgetSpent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub host_id: String,
    pub hostname: String,
    pub state: HolderState,
    /// When the holder entered `state` (unix seconds).
    pub since: i64,
}

/// A lease holder's state. `acquired → updating → rebooting → verifying → released`, or
/// `failed` from any step; `stuck` is set by the server for a holder silent past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HolderState {
    Acquired,
    Updating,
    Rebooting,
    Verifying,
    Released,
    Failed,
    Stuck,
}

impl HolderState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Updating => "updating",
            Self::Rebooting => "rebooting",
            Self::Verifying => "verifying",
            Self::Released => "released",
            Self::Failed => "failed",
            Self::Stuck => "stuck",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseReport {
    pub run_id: RunId,
    pub fence: i64,
    /// The state the holder is in now (unchanged: a heartbeat). An agent never reports `stuck`.
    pub state: HolderState,
    /// The run's step, e.g. `pre_update`, for the rollout view.
    #[serde(default)]
    pub step: String,
    /// Why, for `failed`: which hook or command failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Hooks run since the last report.
    #[serde(default)]
    pub hooks: Vec<HookResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReportAnswer {
    pub state: HolderState,
}

/// One hook script's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    /// `needs_update.d`, `pre_update.d`, `update.d`, `needs_reboot.d`, `post_update.d`, or
    /// `builtin` for a built-in default.
    pub dir: String,
    pub name: String,
    /// `None` when killed at its timeout.
    pub exit_code: Option<i32>,
    /// stdout and stderr, at most [`super::MAX_OUTPUT_BYTES`] (head and tail kept).
    pub output: String,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_answer_reads_back_with_its_tag() {
        let answer = LeaseAnswer::Wait {
            group: "db".into(),
            reason: WaitReason::OutsideWindow,
            holders: vec![],
            position: 3,
            retry_after_secs: 60,
            window_opens_at: Some(1_700_000_000),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert!(json.contains(r#""outcome":"wait""#), "{json}");
        assert!(json.contains(r#""reason":"outside_window""#), "{json}");
        assert_eq!(serde_json::from_str::<LeaseAnswer>(&json).unwrap(), answer);
    }
}
