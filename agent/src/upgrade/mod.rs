//! `aptgate-agent upgrade`: one rolling-upgrade run, resumed where it stopped.
//!
//! ```text
//! plan → needs_update → acquire → pre_update → update → needs_reboot → [reboot] → post_update → release
//! ```
//!
//! The run state ([`run_state`]) is written before each step; a run that was interrupted (a
//! crash, a kill, its own reboot) is picked up by the next `upgrade` at that step. A hook that
//! fails in `pre_update`, `update`, `needs_reboot` or `post_update` fails the run and keeps
//! the lease (fail closed): the server shows the host `failed` until an admin releases it.

pub mod builtin;
pub mod hooks;
pub mod lease;
pub mod run_state;
mod steps;

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use rand::Rng as _;

use crate::{
    client::{unix_now, AgentClient},
    cycle::Agent,
    inventory,
    protocol::{
        inventory_digest,
        rollout::{HolderState, LeaseAcquire, RunPlanRequest},
        InventoryUpload,
    },
};
use lease::{Acquired, LeaseError};
use run_state::{RunState, Step};

/// How an `upgrade` invocation ended (errors aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The run went through and released its lease.
    Upgraded { snapshot: String },
    /// Nothing to do: no channel, or no updates pending.
    NothingToDo(String),
    /// The group had no slot within `lease_wait_secs`; the next `upgrade` asks again.
    StillWaiting(String),
}

/// A run that stopped on a failure: the run state keeps it, and the lease (if any) stays held.
#[derive(Debug, thiserror::Error)]
#[error("run {run_id} failed at step {step}: {detail}")]
pub struct RunFailed {
    pub run_id: String,
    pub step: &'static str,
    pub detail: String,
    /// The group whose slot the run keeps.
    pub group: Option<String>,
}

/// A step's hooks that did not all succeed: what failed, for the report and the run state.
struct StepFailed(String);

pub struct Upgrade<'a> {
    agent: &'a Agent,
    /// The agent's configuration directory: `<hooks_dir>/<step>.d`.
    hooks_dir: PathBuf,
    client: AgentClient,
    host_id: String,
}

impl<'a> Upgrade<'a> {
    pub fn new(agent: &'a Agent, hooks_dir: &Path) -> anyhow::Result<Self> {
        let key = agent.state_dir.load_key()?;
        let state = agent.state_dir.load_state()?;
        let client = AgentClient::new(&state.server, &state.host_id, key)?;
        Ok(Self {
            agent,
            hooks_dir: hooks_dir.to_owned(),
            client,
            host_id: state.host_id,
        })
    }

    /// Runs (or resumes) the run. `retry_failed`: resume a failed run at its failed step
    /// instead of reporting it.
    pub async fn run(&self, retry_failed: bool) -> anyhow::Result<Finished> {
        let _lock = self.lock()?;
        let mut run = self.pick_run(retry_failed).await?;
        loop {
            let step = run.step;
            let next = match self.step(&mut run).await {
                Ok(next) => next,
                Err(StepOutcome::Finished(finished)) => return Ok(finished),
                Err(StepOutcome::Failed(StepFailed(detail))) => {
                    return Err(self.fail(&mut run, step, detail).await)
                }
                Err(StepOutcome::Lost(message)) => {
                    run.failed = Some(message.clone());
                    run.outcome = Some("abandoned: lost the lease".into());
                    run.step = Step::Done;
                    run.finished_at = Some(unix_now());
                    self.save(&run)?;
                    bail!("run {} stopped: {message}", run.run_id);
                }
                Err(StepOutcome::Error(e)) => return Err(e),
            };
            run.step = next;
            run.hooks_done.clear();
            self.save(&run)?;
        }
    }

    /// One `upgrade` at a time per state directory (a timer and an admin could overlap).
    fn lock(&self) -> anyhow::Result<fs_err::File> {
        let path = self.agent.state_dir.path().join("run.lock");
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|_| {
            anyhow::anyhow!(
                "another `aptgate-agent upgrade` is running (it holds {})",
                path.display()
            )
        })?;
        Ok(file)
    }

    /// The run to go on with: the one in progress, or a new one.
    async fn pick_run(&self, retry_failed: bool) -> anyhow::Result<RunState> {
        let previous = run_state::load(&self.agent.state_dir)?;
        match previous {
            Some(run) if run.in_progress() => {
                tracing::info!(
                    run = run.run_id,
                    step = run.step.as_str(),
                    "resuming the run in progress"
                );
                return Ok(run);
            }
            Some(mut run) if run.step != Step::Done => {
                let detail = run.failed.clone().unwrap_or_default();
                if retry_failed {
                    tracing::info!(
                        run = run.run_id,
                        step = run.step.as_str(),
                        "retrying the failed run at its failed step"
                    );
                    run.failed = None;
                    self.save(&run)?;
                    return Ok(run);
                }
                if let Some(fence) = run.fence {
                    // Still failed at the server, or released by an admin (the run is over)?
                    let report = lease::holder_report(
                        &run.run_id,
                        fence,
                        HolderState::Failed,
                        run.step.as_str(),
                        Some(detail.clone()),
                        Vec::new(),
                    );
                    match lease::report(&self.client, &report).await {
                        Ok(HolderState::Released) | Err(LeaseError::Lost(_)) => {
                            tracing::info!(
                                run = run.run_id,
                                "an admin released the failed run's lease; starting a new run"
                            );
                        }
                        Ok(_) => {
                            return Err(RunFailed {
                                run_id: run.run_id,
                                step: run.step.as_str(),
                                detail,
                                group: run.group,
                            }
                            .into())
                        }
                        Err(e) => return Err(e).context("asking the server about the failed run"),
                    }
                } else {
                    tracing::info!(
                        run = run.run_id,
                        "the last run failed ({detail}); it held no lease: starting a new run"
                    );
                }
            }
            _ => {}
        }
        let run = RunState::new(new_run_id(), unix_now());
        tracing::info!(run = run.run_id, "starting a new run");
        self.save(&run)?;
        Ok(run)
    }

    fn save(&self, run: &RunState) -> anyhow::Result<()> {
        run_state::save(&self.agent.state_dir, run).context("writing the run state")
    }

    /// Runs `run.step`; returns the step to go on with.
    async fn step(&self, run: &mut RunState) -> Result<Step, StepOutcome> {
        match run.step {
            Step::Plan => {
                let plan = self
                    .client
                    .plan_run(&RunPlanRequest {
                        run_id: run.run_id.clone(),
                    })
                    .await
                    .context("asking the server for the run's plan")?;
                let snapshot = plan.snapshot.clone();
                tracing::info!(
                    channel = plan.channel.as_deref().unwrap_or("(none)"),
                    snapshot = snapshot.as_deref().unwrap_or("(none)"),
                    group = plan.group.as_deref().unwrap_or("(none)"),
                    pending = plan.pending,
                    "run planned"
                );
                run.plan = Some(plan);
                if snapshot.is_none() {
                    return self.finish(run, "nothing to upgrade: this host is in no channel");
                }
                Ok(Step::NeedsUpdate)
            }
            Step::NeedsUpdate => {
                let needed = match self.ask(run, Step::NeedsUpdate).await? {
                    Some((needed, _)) => needed,
                    None => {
                        let (needed, result) = builtin::needs_update(self.plan(run)?);
                        self.record(run, result);
                        needed
                    }
                };
                if !needed {
                    return self.finish(run, "nothing to upgrade: no updates pending");
                }
                Ok(Step::Acquire)
            }
            Step::Acquire => {
                let request = LeaseAcquire {
                    run_id: run.run_id.clone(),
                    snapshot: self.plan(run)?.snapshot.clone(),
                };
                let wait = self.agent.config.upgrade.lease_wait_secs;
                let max_wait = (wait > 0).then(|| Duration::from_secs(wait));
                match lease::acquire(&self.client, &request, max_wait)
                    .await
                    .context("acquiring the group's lease")?
                {
                    Acquired::Granted { group, fence } => {
                        run.group = Some(group);
                        run.fence = Some(fence);
                    }
                    Acquired::NotRequired => {
                        run.group = None;
                        run.fence = None;
                    }
                    Acquired::GaveUp(why) => {
                        return Err(StepOutcome::Finished(Finished::StillWaiting(why)))
                    }
                }
                Ok(Step::PreUpdate)
            }
            Step::PreUpdate => {
                self.report(run, HolderState::Updating).await?;
                self.act(run, Step::PreUpdate).await?;
                Ok(Step::Update)
            }
            Step::Update => {
                self.report(run, HolderState::Updating).await?;
                let dir = self.hook_dir(Step::Update);
                if hooks::scripts(&dir)
                    .map_err(anyhow::Error::from)?
                    .is_empty()
                {
                    self.builtin_update(run).await?;
                } else {
                    self.act(run, Step::Update).await?;
                }
                Ok(Step::NeedsReboot)
            }
            Step::NeedsReboot => {
                self.report(run, HolderState::Updating).await?;
                let reasons = match self.ask(run, Step::NeedsReboot).await? {
                    Some((_, yes)) => yes,
                    None => {
                        let (reasons, result) = builtin::needs_reboot(&self.agent.root).await;
                        self.record(run, result);
                        reasons
                    }
                };
                run.reboot_reasons = reasons;
                if run.reboot_reasons.is_empty() {
                    Ok(Step::PostUpdate)
                } else {
                    tracing::info!(reasons = ?run.reboot_reasons, "a reboot is needed");
                    Ok(Step::Reboot)
                }
            }
            Step::Reboot => self.reboot(run).await,
            Step::PostUpdate => {
                self.report(run, HolderState::Verifying).await?;
                self.act(run, Step::PostUpdate).await?;
                Ok(Step::Release)
            }
            Step::Release => {
                match self.report(run, HolderState::Released).await {
                    // Released before an interruption (or by an admin): the slot is free.
                    Err(StepOutcome::Lost(message)) => {
                        tracing::info!("the lease is released already ({message})");
                    }
                    other => other?,
                }
                self.upload_inventory().await;
                let snapshot = self.plan(run)?.snapshot.clone().unwrap_or_default();
                run.outcome = Some(format!("upgraded to snapshot {snapshot}"));
                run.finished_at = Some(unix_now());
                run.step = Step::Done;
                self.save(run)?;
                Err(StepOutcome::Finished(Finished::Upgraded { snapshot }))
            }
            Step::Done => Err(StepOutcome::Error(anyhow::anyhow!(
                "the run is over already"
            ))),
        }
    }

    fn finish(&self, run: &mut RunState, why: &str) -> Result<Step, StepOutcome> {
        tracing::info!("{why}");
        run.outcome = Some(why.to_owned());
        run.finished_at = Some(unix_now());
        run.step = Step::Done;
        self.save(run)?;
        Err(StepOutcome::Finished(Finished::NothingToDo(why.to_owned())))
    }

    fn plan<'r>(&self, run: &'r RunState) -> anyhow::Result<&'r crate::protocol::rollout::RunPlan> {
        run.plan
            .as_ref()
            .context("the run state has no plan (written by another version?)")
    }

    /// Reports `state` at the run's step (with the hooks run since the last report).
    async fn report(&self, run: &mut RunState, state: HolderState) -> Result<(), StepOutcome> {
        let Some(fence) = run.fence else {
            return Ok(());
        };
        let report = lease::holder_report(
            &run.run_id,
            fence,
            state,
            run.step.as_str(),
            None,
            run.hooks_unreported.clone(),
        );
        lease::report(&self.client, &report)
            .await
            .map_err(|e| match e {
                LeaseError::Lost(message) => StepOutcome::Lost(message),
                other => {
                    StepOutcome::Error(anyhow::Error::new(other).context("reporting to the server"))
                }
            })?;
        run.hooks_unreported.clear();
        self.save(run)?;
        Ok(())
    }

    /// The heartbeat sent while a step of `run` runs (none without a lease).
    fn heartbeat(
        &self,
        run: &RunState,
        state: HolderState,
    ) -> Option<crate::protocol::rollout::LeaseReport> {
        run.fence.map(|fence| {
            lease::holder_report(
                &run.run_id,
                fence,
                state,
                run.step.as_str(),
                None,
                Vec::new(),
            )
        })
    }

    fn holder_state(step: Step) -> HolderState {
        match step {
            Step::PostUpdate => HolderState::Verifying,
            Step::Reboot => HolderState::Rebooting,
            _ => HolderState::Updating,
        }
    }

    /// Stops the run: the state keeps the failure (and the step, for `--retry`), the server
    /// hears `failed` (the slot stays held).
    async fn fail(&self, run: &mut RunState, step: Step, detail: String) -> anyhow::Error {
        tracing::error!(step = step.as_str(), "the run failed: {detail}");
        run.failed = Some(detail.clone());
        if let Err(e) = self.save(run) {
            return e;
        }
        if let Some(fence) = run.fence {
            let report = lease::holder_report(
                &run.run_id,
                fence,
                HolderState::Failed,
                step.as_str(),
                Some(detail.clone()),
                run.hooks_unreported.clone(),
            );
            match lease::report(&self.client, &report).await {
                Ok(_) => {
                    run.hooks_unreported.clear();
                    let _ = self.save(run);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not report the failure; the next `upgrade` reports it")
                }
            }
        }
        RunFailed {
            run_id: run.run_id.clone(),
            step: step.as_str(),
            detail,
            group: run.group.clone(),
        }
        .into()
    }

    fn heartbeat_every(&self) -> Duration {
        Duration::from_secs(self.agent.config.upgrade.heartbeat_secs.max(1))
    }

    /// After the upgrade, the server's view of the host's packages (`fleet pending`) should
    /// be current; a failure here is only logged (the next check-in uploads it).
    async fn upload_inventory(&self) {
        let outcome = async {
            let packages = inventory::read(&self.agent.root)?;
            let digest = inventory_digest(&packages);
            self.client
                .upload_inventory(&InventoryUpload {
                    digest: digest.clone(),
                    packages,
                })
                .await?;
            let mut state = self.agent.state_dir.load_state()?;
            state.inventory_digest = Some(digest);
            self.agent.state_dir.save_state(&state)?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(
                error = format!("{e:#}"),
                "uploading the inventory after the upgrade failed"
            );
        }
    }
}

/// Why a step stopped going forward.
enum StepOutcome {
    Finished(Finished),
    Failed(StepFailed),
    /// The lease is gone (`stale_fence`).
    Lost(String),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for StepOutcome {
    fn from(e: anyhow::Error) -> Self {
        StepOutcome::Error(e)
    }
}

/// 16 random bytes, hex.
fn new_run_id() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}
