//! What the agent does: enroll, one check-in cycle (report, apply the sources, upload the
//! inventory, run commands, report their results), and the long-running loop around it.

use std::time::Duration;

use anyhow::{bail, Context as _};
use rand::Rng as _;
use tokio::sync::watch;

use crate::{
    client::{unix_now, AgentClient, ClientError},
    commands::{self, Apt},
    config::{AgentConfig, ConfigError},
    converge, facts,
    host_root::HostRoot,
    inventory, other_sources,
    protocol::{
        inventory_digest, AppliedSources, CheckinRequest, CommandKind, CommandResult,
        DesiredSources, EnrollRequest, HostKey, HostStatus, InventoryUpload, Labels, Poll,
        PROTOCOL_VERSION,
    },
    reboot, sources,
    state::{AgentState, StateDir, StateError},
};

/// Check-ins in one cycle: the first, then one after each batch of commands to report their
/// results (and pick up commands queued meanwhile).
const MAX_ROUNDS: usize = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Agent {
    pub state_dir: StateDir,
    pub root: HostRoot,
    pub config: AgentConfig,
}

/// What one cycle ended with.
#[derive(Debug, Clone)]
pub struct CycleOutcome {
    pub status: HostStatus,
    pub rev: i64,
    pub poll: Poll,
    pub commands_run: usize,
}

impl Agent {
    pub fn new(state_dir: StateDir, root: HostRoot, config: AgentConfig) -> Self {
        Self {
            state_dir,
            root,
            config,
        }
    }

    /// Generates the host key, enrolls with the token and writes the state. Refuses an
    /// enrolled state directory unless `force`.
    pub async fn enroll(
        &self,
        server: Option<&str>,
        token: &str,
        labels: Labels,
        force: bool,
    ) -> anyhow::Result<AgentState> {
        self.state_dir.check_can_enroll(force)?;
        let Some(server) = server.or(self.config.server.as_deref()) else {
            bail!(
                "no server to enroll with: pass --server URL or set `server` in the configuration"
            );
        };
        let mut all_labels = self.config.labels.clone();
        all_labels.extend(labels.clone());
        let key = HostKey::generate();
        let public_key = key.public_hex();
        let client = AgentClient::new(server, "", key)?;
        let request = EnrollRequest {
            token: token.to_owned(),
            public_key,
            facts: facts::gather(&self.root),
            labels: all_labels,
        };
        let response = client
            .enroll(&request)
            .await
            .with_context(|| format!("enrolling with {server}"))?;
        // A forced re-enrollment keeps track of what the old identity changed on the host.
        let previous = self.state_dir.load_state().ok();
        let state = AgentState {
            server: server.to_owned(),
            host_id: response.host_id,
            status: response.status,
            poll: response.poll,
            labels,
            rev: 0,
            sources_rev: None,
            inventory_digest: None,
            last_checkin: None,
            keys_written: previous
                .as_ref()
                .map(|p| p.keys_written.clone())
                .unwrap_or_default(),
            disabled_sources: previous.map(|p| p.disabled_sources).unwrap_or_default(),
            pending_results: Vec::new(),
            profile: None,
            converge: None,
        };
        self.state_dir.save_key(client.key())?;
        self.state_dir.save_state(&state)?;
        Ok(state)
    }

    pub fn status(&self) -> anyhow::Result<AgentState> {
        self.state_dir.load_key()?;
        Ok(self.state_dir.load_state()?)
    }

    /// One cycle: check in, apply, upload, run commands, check in again with their results.
    pub async fn cycle(&self) -> anyhow::Result<CycleOutcome> {
        let key = self.state_dir.load_key()?;
        let mut state = self.state_dir.load_state()?;
        let client = AgentClient::new(&state.server, &state.host_id, key)?;
        let apt = Apt::new(
            &self.root,
            self.state_dir.path(),
            self.config.apt_lock_timeout_secs,
        )
        .with_context(|| format!("preparing apt in {}", self.root.path().display()))?;
        let mut commands_run = 0;
        for _ in 0..MAX_ROUNDS {
            let packages = inventory::read(&self.root)?;
            let facts = facts::gather(&self.root);
            let request = CheckinRequest {
                protocol: PROTOCOL_VERSION,
                reboot: reboot::reboot_state(&self.root, &facts.kernel, &packages),
                facts,
                labels: self.labels(&state),
                sources: AppliedSources {
                    rev: state.sources_rev.clone(),
                    lists: other_sources::apt_lines(&self.root)?,
                },
                inventory_digest: state.inventory_digest.clone(),
                results: state.pending_results.clone(),
                run: None,
                compliance: converge::report(&state, &packages),
            };
            let response = client.checkin(&request).await.context("checking in")?;
            state.pending_results.clear();
            state.status = response.status;
            state.rev = response.rev;
            state.poll = response.poll;
            state.last_checkin = Some(unix_now());
            self.state_dir.save_state(&state)?;
            if response.status == HostStatus::Pending {
                tracing::info!("this host waits for an admin's approval at the server");
                break;
            }

            self.apply_sources(&mut state, &response.sources)?;
            let digest = inventory_digest(&packages);
            if response.upload_inventory || state.inventory_digest.as_ref() != Some(&digest) {
                self.upload(&client, &mut state, packages).await?;
            }
            // Profiles first: a command queued in the same answer sees the converged host.
            let converged = self
                .converge(&apt, &mut state, response.profile.as_ref())
                .await?;
            if response.commands.is_empty() && !converged {
                break;
            }
            for command in &response.commands {
                tracing::info!(id = command.id, kind = ?command.kind, packages = ?command.packages, "running a command");
                let result = match command.kind {
                    CommandKind::Report => self.report(&client, &mut state, command.id).await,
                    CommandKind::RefreshSources => {
                        // The sources were just applied from this very answer.
                        commands::run(&apt, command).await
                    }
                    _ => commands::run(&apt, command).await,
                };
                tracing::info!(
                    id = command.id,
                    exit_code = result.exit_code,
                    "command finished"
                );
                state.pending_results.push(result);
                self.state_dir.save_state(&state)?;
                commands_run += 1;
            }
            // apt may have changed the packages: tell the server before the results.
            let packages = inventory::read(&self.root)?;
            if state.inventory_digest.as_ref() != Some(&inventory_digest(&packages)) {
                self.upload(&client, &mut state, packages).await?;
            }
        }
        Ok(CycleOutcome {
            status: state.status,
            rev: state.rev,
            poll: state.poll,
            commands_run,
        })
    }

    /// Labels sent at check-in: those given at enrollment, then the configuration file's.
    fn labels(&self, state: &AgentState) -> Labels {
        let mut labels = state.labels.clone();
        labels.extend(self.config.labels.clone());
        labels
    }

    fn apply_sources(
        &self,
        state: &mut AgentState,
        desired: &DesiredSources,
    ) -> anyhow::Result<()> {
        let applied = sources::apply(&self.root, desired, &state.keys_written)?;
        state.keys_written = applied.keys_written.clone();
        // With nothing of ours to use, turning the host's own sources off would leave it none.
        let disable = !desired.entries.is_empty()
            && (desired.disable_other_sources || self.config.disable_other_sources);
        let moved = if disable {
            other_sources::disable_others(&self.root, &mut state.disabled_sources)?
        } else {
            other_sources::restore_others(&self.root, &mut state.disabled_sources)?
        };
        if applied.source_file_changed
            || applied.mirror_list_changed
            || !applied.mirror_lists_removed.is_empty()
            || !applied.keys_changed.is_empty()
            || !moved.is_empty()
        {
            tracing::info!(
                rev = desired.rev,
                channel = desired.channel.as_deref().unwrap_or("(none)"),
                mirrors = ?desired.mirrors,
                mirror_lists_removed = ?applied.mirror_lists_removed,
                keys_changed = ?applied.keys_changed,
                keys_removed = ?applied.keys_removed,
                other_sources = ?moved,
                disabled = disable,
                "apt sources updated"
            );
        }
        state.sources_rev = Some(desired.rev.clone());
        self.state_dir.save_state(state)?;
        Ok(())
    }

    async fn upload(
        &self,
        client: &AgentClient,
        state: &mut AgentState,
        packages: Vec<crate::protocol::InstalledPackage>,
    ) -> anyhow::Result<usize> {
        let digest = inventory_digest(&packages);
        let count = packages.len();
        let accepted = client
            .upload_inventory(&InventoryUpload {
                digest: digest.clone(),
                packages,
            })
            .await
            .context("uploading the inventory")?;
        if accepted.digest != digest {
            bail!(
                "the server computed inventory digest {} for the upload, the agent {digest}",
                accepted.digest
            );
        }
        tracing::info!(packages = count, digest, "inventory uploaded");
        state.inventory_digest = Some(digest);
        self.state_dir.save_state(state)?;
        Ok(count)
    }

    /// The `report` command: upload the inventory now, even if unchanged.
    async fn report(&self, client: &AgentClient, state: &mut AgentState, id: i64) -> CommandResult {
        let started_at = unix_now();
        let outcome = match inventory::read(&self.root) {
            Ok(packages) => self.upload(client, state, packages).await,
            Err(e) => Err(anyhow::Error::new(e).context("reading the dpkg status")),
        };
        let (exit_code, output) = match outcome {
            Ok(count) => (0, format!("uploaded the inventory: {count} packages\n")),
            Err(e) => (1, format!("{e:#}\n")),
        };
        CommandResult {
            id,
            exit_code,
            output,
            started_at,
            finished_at: unix_now(),
        }
    }

    /// Checks in, then holds a wait open until the server has news or the wait ends, and again,
    /// until `stop` turns true. A failed cycle is retried with exponential backoff and jitter;
    /// only a missing or broken state ends the loop with an error.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            let outcome = match self.cycle().await {
                Ok(outcome) => {
                    failures = 0;
                    outcome
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_secs = delay.as_secs(),
                        "check-in failed"
                    );
                    if sleep_or_stop(delay, &mut stop).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let interval = Duration::from_secs(outcome.poll.interval_secs.max(1));
            if outcome.poll.wait_secs > 0 {
                let wait = Duration::from_secs(outcome.poll.wait_secs);
                // The server ends the wait after `wait_secs`; the client gives up a little later
                // (jittered, so hosts drift apart), or at the poll interval if that is shorter.
                let hold = (wait + Duration::from_secs(5) + jitter(wait / 10))
                    .min(interval + jitter(interval / 10));
                let state = self.state_dir.load_state()?;
                let client =
                    AgentClient::new(&state.server, &state.host_id, self.state_dir.load_key()?)?;
                tokio::select! {
                    answer = client.wait(outcome.rev, hold) => match answer {
                        Ok(answer) => tracing::debug!(rev = answer.rev, "wait returned"),
                        Err(e) if matches!(&e, ClientError::Network { source, .. } if source.is_timeout()) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "wait failed; checking in at the poll interval");
                            let rest = interval.saturating_sub(started.elapsed());
                            if sleep_or_stop(rest + jitter(interval / 10), &mut stop).await {
                                return Ok(());
                            }
                        }
                    },
                    _ = stop.changed() => return Ok(()),
                }
            } else if sleep_or_stop(interval + jitter(interval / 10), &mut stop).await {
                return Ok(());
            }
            // Never spin, whatever the server answers.
            let gap = Duration::from_secs(1).saturating_sub(started.elapsed());
            if sleep_or_stop(gap, &mut stop).await {
                return Ok(());
            }
        }
    }
}

/// Errors no retry can fix: the state directory or configuration is missing or broken.
fn is_fatal(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        matches!(
            e.downcast_ref::<StateError>(),
            Some(
                StateError::NotEnrolled(_)
                    | StateError::BadKey { .. }
                    | StateError::BadState { .. }
            )
        ) || e.downcast_ref::<ConfigError>().is_some()
    })
}

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1)).min(MAX_BACKOFF);
    base + jitter(base / 5)
}

/// A random duration in `[0, max]`, to spread thousands of hosts apart.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    max.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// Sleeps, or returns `true` early when asked to stop.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.changed() => true,
    }
}

/// The `hint:` line for an error, if there is a useful one. `enrolling` tells a refused token
/// from a refused host.
pub fn hint(error: &anyhow::Error, enrolling: bool) -> Option<String> {
    for cause in error.chain() {
        if let Some(failed) = cause.downcast_ref::<crate::upgrade::RunFailed>() {
            let retry =
                "fix the cause, then `aptgate-agent upgrade --retry` resumes the run at that step";
            return Some(match &failed.group {
                Some(group) => format!(
                    "the host keeps its slot in rollout group {group} (fail closed): {retry}, or an admin releases it (`aptgate rollout release HOST`) and the next `upgrade` starts a new run"
                ),
                None => format!("{retry}; without --retry the next `upgrade` starts a new run"),
            });
        }
        if let Some(state) = cause.downcast_ref::<StateError>() {
            return match state {
                StateError::NotEnrolled(_) => Some(
                    "this host has no identity yet: run `aptgate-agent enroll --server URL --token TOKEN`".into(),
                ),
                StateError::AlreadyEnrolled(_) => Some(
                    "pass --force to enroll again with a new key (the server then sees a new host)".into(),
                ),
                StateError::BadKey { .. } | StateError::BadState { .. } => Some(
                    "the state directory is damaged: enroll again with `aptgate-agent enroll --force`".into(),
                ),
                StateError::Io(_) => Some("check --state-dir and that the agent runs as root".into()),
            };
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return match client {
                ClientError::Unauthorized { .. } if enrolling => Some(
                    "the token is unknown, expired or used up: ask an admin for a new one (`aptgate fleet token create`)".into(),
                ),
                ClientError::Unauthorized { .. } => Some(
                    "the server does not know this host or revoked it: enroll again with `aptgate-agent enroll --force --token TOKEN`".into(),
                ),
                ClientError::Network { .. } => {
                    Some("check the server URL and that this host can reach it (proxy, firewall, TLS)".into())
                }
                ClientError::BadServer(_) => Some("give the server as https://host[:port]".into()),
                _ => None,
            };
        }
        if cause.downcast_ref::<sources::SourcesError>().is_some() {
            return Some("nothing was written; the server's assignment needs fixing".into());
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return Some("fix the file or point --config at another one".into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) <= Duration::from_millis(1200));
        assert!(backoff(4) >= Duration::from_secs(8));
        assert!(backoff(60) <= MAX_BACKOFF + MAX_BACKOFF / 5);
    }
}
