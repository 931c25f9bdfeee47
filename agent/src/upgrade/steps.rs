//! The work inside the steps: running a hook directory (question or action), the built-in
//! update, and the reboot with its boot id.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::{builtin, hooks, lease, run_state, RunState, Step, StepFailed, StepOutcome, Upgrade};
use crate::{
    client::unix_now,
    commands::Apt,
    protocol::rollout::{HolderState, HookResult},
};

impl Upgrade<'_> {
    pub(super) fn hook_dir(&self, step: Step) -> PathBuf {
        self.hooks_dir.join(format!("{}.d", step.as_str()))
    }

    pub(super) fn env(&self, run: &RunState) -> Vec<(String, String)> {
        let plan = run.plan.as_ref();
        let text = |v: Option<&String>| v.cloned().unwrap_or_default();
        vec![
            ("APTGATE_HOST_ID".into(), self.host_id.clone()),
            ("APTGATE_RUN_ID".into(), run.run_id.clone()),
            (
                "APTGATE_SNAPSHOT".into(),
                text(plan.and_then(|p| p.snapshot.as_ref())),
            ),
            (
                "APTGATE_CHANNEL".into(),
                text(plan.and_then(|p| p.channel.as_ref())),
            ),
            ("APTGATE_GROUP".into(), text(run.group.as_ref())),
            ("APTGATE_STEP".into(), run.step.as_str().into()),
            (
                "APTGATE_ROOT".into(),
                self.agent.root.path().display().to_string(),
            ),
        ]
    }

    pub(super) fn timeout(&self, step: Step) -> Duration {
        let upgrade = &self.agent.config.upgrade;
        Duration::from_secs(if step == Step::Update {
            upgrade.update_timeout_secs
        } else {
            upgrade.hook_timeout_secs
        })
    }

    pub(super) fn record(&self, run: &mut RunState, result: HookResult) {
        match result.exit_code {
            Some(code) => tracing::info!(
                hook = format!("{}/{}", result.dir, result.name),
                exit_code = code,
                duration_ms = result.duration_ms,
                "hook finished"
            ),
            None => tracing::warn!(
                hook = format!("{}/{}", result.dir, result.name),
                "hook killed at its timeout"
            ),
        }
        run.hooks_unreported.push(result);
    }

    /// Runs one hook script of `step`'s directory, reporting a heartbeat while it runs.
    async fn run_hook(
        &self,
        run: &RunState,
        step: Step,
        script: &Path,
        name: &str,
        env: &[(String, String)],
    ) -> HookResult {
        lease::with_heartbeat(
            &self.client,
            self.heartbeat(run, Self::holder_state(step)),
            self.heartbeat_every(),
            hooks::run(&dir_label(step), name, script, &[], env, self.timeout(step)),
        )
        .await
    }

    /// A question directory (`needs_update.d`, `needs_reboot.d`): every script runs; exit 0
    /// means yes, 1 means no, anything else fails the step. `None` when it has no scripts.
    /// Returns whether any said yes, and which.
    pub(super) async fn ask(
        &self,
        run: &mut RunState,
        step: Step,
    ) -> Result<Option<(bool, Vec<String>)>, StepOutcome> {
        let dir = self.hook_dir(step);
        let scripts =
            hooks::scripts(&dir).map_err(|e| StepOutcome::Failed(StepFailed(e.to_string())))?;
        if scripts.is_empty() {
            return Ok(None);
        }
        let env = self.env(run);
        let mut yes = Vec::new();
        for script in scripts {
            let name = file_name(&script);
            let result = self.run_hook(run, step, &script, &name, &env).await;
            let code = result.exit_code;
            self.record(run, result);
            match code {
                Some(0) => yes.push(format!("{}/{name}", dir_label(step))),
                Some(1) => {}
                other => {
                    self.save(run)?;
                    return Err(StepOutcome::Failed(StepFailed(format!(
                        "{}/{name} {} (0 means yes, 1 no)",
                        dir_label(step),
                        describe_exit(other, self.timeout(step))
                    ))));
                }
            }
        }
        self.save(run)?;
        Ok(Some((!yes.is_empty(), yes)))
    }

    /// An action directory (`pre_update.d`, `update.d`, `post_update.d`): scripts run in order;
    /// each that succeeds is recorded (a resumed step skips it); the first failure fails the step.
    pub(super) async fn act(&self, run: &mut RunState, step: Step) -> Result<(), StepOutcome> {
        let dir = self.hook_dir(step);
        let scripts =
            hooks::scripts(&dir).map_err(|e| StepOutcome::Failed(StepFailed(e.to_string())))?;
        let env = self.env(run);
        for script in scripts {
            let name = file_name(&script);
            if run.hooks_done.contains(&name) {
                tracing::info!(
                    hook = name,
                    "already ran in this step before the interruption"
                );
                continue;
            }
            let result = self.run_hook(run, step, &script, &name, &env).await;
            let code = result.exit_code;
            let output = result.output.clone();
            self.record(run, result);
            if code != Some(0) {
                self.save(run)?;
                tracing::error!(
                    "{}/{name} failed; its output:\n{}",
                    dir_label(step),
                    tail(&output)
                );
                return Err(StepOutcome::Failed(StepFailed(format!(
                    "{}/{name} {}",
                    dir_label(step),
                    describe_exit(code, self.timeout(step))
                ))));
            }
            run.hooks_done.push(name);
            self.save(run)?;
        }
        Ok(())
    }

    pub(super) async fn builtin_update(&self, run: &mut RunState) -> Result<(), StepOutcome> {
        let apt = Apt::new(
            &self.agent.root,
            self.agent.state_dir.path(),
            self.agent.config.apt_lock_timeout_secs,
        )
        .with_context(|| format!("preparing apt in {}", self.agent.root.path().display()))?;
        let keys = self
            .agent
            .state_dir
            .load_state()
            .map_err(anyhow::Error::from)?
            .keys_written;
        let plan = self.plan(run)?.clone();
        let (ok, results) = lease::with_heartbeat(
            &self.client,
            self.heartbeat(run, HolderState::Updating),
            self.heartbeat_every(),
            builtin::update(&apt, &self.agent.state_dir, &plan, &keys),
        )
        .await;
        let failed = results
            .iter()
            .find(|r| r.exit_code != Some(0))
            .map(|r| (r.name.clone(), r.exit_code, r.output.clone()));
        for result in results {
            self.record(run, result);
        }
        self.save(run)?;
        if let (false, Some((name, code, output))) = (ok, failed) {
            tracing::error!("{name} failed; its output:\n{}", tail(&output));
            return Err(StepOutcome::Failed(StepFailed(format!(
                "{name} exited with {}",
                code.map_or("no code".into(), |c| c.to_string())
            ))));
        }
        Ok(())
    }

    /// Asks for the reboot, or notices it happened. The boot id is recorded before
    /// `reboot_cmd` runs, so a resumed run knows whether the host went down since.
    pub(super) async fn reboot(&self, run: &mut RunState) -> Result<Step, StepOutcome> {
        let now = run_state::boot_id(&self.agent.root)
            .context("cannot read the boot id (/proc/sys/kernel/random/boot_id)")?;
        if let Some(before) = &run.reboot_boot_id {
            if *before != now {
                tracing::info!("the host rebooted; going on with post_update");
                return Ok(Step::PostUpdate);
            }
            tracing::warn!(
                "the reboot asked for earlier did not happen (same boot id); asking again"
            );
        }
        run.reboot_boot_id = Some(now);
        run.reboot_requested_at = Some(unix_now());
        self.save(run)?;
        self.report(run, HolderState::Rebooting).await?;
        let config = &self.agent.config.upgrade;
        let Some((program, args)) = config.reboot_cmd.split_first() else {
            return Err(StepOutcome::Failed(StepFailed(
                "reboot_cmd is empty".into(),
            )));
        };
        tracing::info!(command = ?config.reboot_cmd, "rebooting");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = hooks::run(
            "builtin",
            "reboot_cmd",
            Path::new(program),
            &args,
            &self.env(run),
            Duration::from_secs(config.hook_timeout_secs),
        )
        .await;
        let code = result.exit_code;
        self.record(run, result);
        self.save(run)?;
        if code != Some(0) {
            return Err(StepOutcome::Failed(StepFailed(format!(
                "reboot_cmd {}",
                describe_exit(code, Duration::from_secs(config.hook_timeout_secs))
            ))));
        }
        // The shutdown stops this process; still being here afterwards means it did not happen.
        tokio::time::sleep(Duration::from_secs(config.reboot_wait_secs)).await;
        Err(StepOutcome::Failed(StepFailed(format!(
            "reboot_cmd succeeded but the host was still up {} s later",
            config.reboot_wait_secs
        ))))
    }
}

pub(super) fn dir_label(step: Step) -> String {
    format!("{}.d", step.as_str())
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn describe_exit(code: Option<i32>, timeout: Duration) -> String {
    match code {
        Some(code) => format!("exited with {code}"),
        None => format!("was killed at its timeout ({} s)", timeout.as_secs()),
    }
}

/// The last lines of a hook's output, for the terminal.
pub(super) fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
