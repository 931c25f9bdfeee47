//! The upgrade run's state, `<state dir>/run.json`, written atomically (temp, fsync, rename,
//! fsync dir) BEFORE each step starts, so a run interrupted anywhere — a crash, a kill, the
//! reboot it asked for — resumes at the step it was in. What "resume" means per step is in
//! [`Step`].

use std::{io, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    files,
    protocol::rollout::{HookResult, RunPlan},
    state::StateDir,
};

/// A run's steps, in order. The state names the step that was started last; resuming starts
/// it again, which is safe for each:
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Ask the server for the run's snapshot. Asking again for the same run id is harmless.
    Plan,
    /// Decide whether there is anything to do. Read-only checks: run again in full.
    NeedsUpdate,
    /// Take the group's lease. Acquire is idempotent per (host, run): the same fence again.
    Acquire,
    /// The admin's pre-update hooks. Hooks that finished are recorded and not run again; the
    /// one that was interrupted runs again.
    PreUpdate,
    /// `update.d`, or apt-get update + upgrade. An interrupted apt run is repeated (apt is
    /// idempotent: what is installed stays installed); hooks resume as in `PreUpdate`.
    Update,
    /// Decide whether to reboot. Read-only checks: run again in full.
    NeedsReboot,
    /// Reboot. The boot id recorded before `reboot_cmd` tells, on resume, whether the host
    /// rebooted since (go on to `PostUpdate`) or not (ask for the reboot again).
    Reboot,
    /// The admin's post-update checks, resumed as in `PreUpdate`.
    PostUpdate,
    /// Tell the server the host is done; the slot frees.
    Release,
    /// The run is over (done, nothing to do, or abandoned after losing its lease).
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Plan => "plan",
            Step::NeedsUpdate => "needs_update",
            Step::Acquire => "acquire",
            Step::PreUpdate => "pre_update",
            Step::Update => "update",
            Step::NeedsReboot => "needs_reboot",
            Step::Reboot => "reboot",
            Step::PostUpdate => "post_update",
            Step::Release => "release",
            Step::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub started_at: i64,
    pub step: Step,
    /// What the run upgrades to (from [`Step::Plan`] on).
    #[serde(default)]
    pub plan: Option<RunPlan>,
    /// The rollout group and fence of the lease held (from [`Step::Acquire`] on); `None` when
    /// the host needs no lease.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub fence: Option<i64>,
    /// Hooks of the current step that finished successfully (names), not run again on resume.
    #[serde(default)]
    pub hooks_done: Vec<String>,
    /// Hook results not yet delivered to the server.
    #[serde(default)]
    pub hooks_unreported: Vec<HookResult>,
    /// Why a reboot is needed (from [`Step::NeedsReboot`] on; empty: none is).
    #[serde(default)]
    pub reboot_reasons: Vec<String>,
    /// The boot id when `reboot_cmd` was started.
    #[serde(default)]
    pub reboot_boot_id: Option<String>,
    #[serde(default)]
    pub reboot_requested_at: Option<i64>,
    /// Set when a step failed: what failed. The run stops there and keeps its lease.
    #[serde(default)]
    pub failed: Option<String>,
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// How the run ended, for `status` (`upgraded`, `nothing to upgrade`, …).
    #[serde(default)]
    pub outcome: Option<String>,
}

impl RunState {
    pub fn new(run_id: String, now: i64) -> Self {
        Self {
            run_id,
            started_at: now,
            step: Step::Plan,
            plan: None,
            group: None,
            fence: None,
            hooks_done: Vec::new(),
            hooks_unreported: Vec::new(),
            reboot_reasons: Vec::new(),
            reboot_boot_id: None,
            reboot_requested_at: None,
            failed: None,
            finished_at: None,
            outcome: None,
        }
    }

    /// Whether a later `upgrade` picks this run up again.
    pub fn in_progress(&self) -> bool {
        self.step != Step::Done && self.failed.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunStateError {
    #[error("{path} is not a valid run state; move it away to start a new run")]
    Bad {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn path(state_dir: &StateDir) -> PathBuf {
    state_dir.path().join("run.json")
}

pub fn load(state_dir: &StateDir) -> Result<Option<RunState>, RunStateError> {
    let path = path(state_dir);
    match fs_err::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RunStateError::Bad { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn save(state_dir: &StateDir, run: &RunState) -> Result<(), RunStateError> {
    let mut json = serde_json::to_vec_pretty(run).expect("run state serializes");
    json.push(b'\n');
    files::write_atomic(&path(state_dir), &json, 0o600, ".tmp")?;
    Ok(())
}

/// This boot's id. Read under the managed root first, so a test root can simulate a reboot
/// by changing it; on a real host the root is `/` and this is the kernel's own.
pub fn boot_id(root: &crate::host_root::HostRoot) -> Option<String> {
    [
        root.join("proc/sys/kernel/random/boot_id"),
        PathBuf::from("/proc/sys/kernel/random/boot_id"),
    ]
    .iter()
    .find_map(|p| fs_err::read_to_string(p).ok())
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_run_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path());
        assert_eq!(load(&states).unwrap(), None);
        let mut run = RunState::new("r1".into(), 5);
        run.step = Step::Reboot;
        run.reboot_boot_id = Some("b1".into());
        save(&states, &run).unwrap();
        assert_eq!(load(&states).unwrap(), Some(run));
        fs_err::write(path(&states), "{").unwrap();
        assert!(load(&states).is_err());
    }
}
