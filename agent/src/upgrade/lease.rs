//! The agent's side of the group lease: acquire (waiting with jitter while the group is full),
//! the holder's reports, and a heartbeat while a long step runs.

use std::{future::Future, time::Duration};

use rand::Rng as _;

use crate::{
    client::{AgentClient, ClientError},
    protocol::rollout::{
        HolderState, HookResult, LeaseAcquire, LeaseAnswer, LeaseHolder, LeaseReport, WaitReason,
    },
};

/// Hook results in one report at most (the newest kept): 32 × 64 KiB of output stays well
/// under the server's 4 MiB body limit for reports.
const MAX_HOOKS_PER_REPORT: usize = 32;

/// Transient failures of one report are retried this many times (1 s, 2 s, 4 s, …).
const REPORT_TRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// An admin released the slot (or another run holds it): this run must stop.
    #[error("this host no longer holds its lease (the server answered stale_fence): {0}")]
    Lost(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

pub enum Acquired {
    Granted {
        group: String,
        fence: i64,
    },
    NotRequired,
    /// Still waiting when `lease_wait_secs` ran out; the run stays at `acquire`.
    GaveUp(String),
}

/// Asks for the lease until it is granted, not required, or `max_wait` (if any) has passed.
pub async fn acquire(
    client: &AgentClient,
    request: &LeaseAcquire,
    max_wait: Option<Duration>,
) -> Result<Acquired, ClientError> {
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let delay = match client.acquire_lease(request).await {
            Ok(LeaseAnswer::Granted {
                group,
                fence,
                state,
            }) => {
                tracing::info!(group, fence, state = state.as_str(), "lease granted");
                return Ok(Acquired::Granted { group, fence });
            }
            Ok(LeaseAnswer::NotRequired) => {
                tracing::info!("this host is in no rollout group: no lease needed");
                return Ok(Acquired::NotRequired);
            }
            Ok(LeaseAnswer::Wait {
                group,
                reason,
                holders,
                position,
                retry_after_secs,
                window_opens_at,
            }) => {
                failures = 0;
                let why = describe_wait(&group, reason, &holders, position, window_opens_at);
                tracing::info!("waiting for a lease: {why}");
                if max_wait.is_some_and(|max| started.elapsed() >= max) {
                    return Ok(Acquired::GaveUp(why));
                }
                let base = Duration::from_secs(retry_after_secs.max(1));
                base + jitter(base / 2)
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                let base = Duration::from_secs(1 << failures.min(6));
                tracing::warn!(error = %e, retry_in_secs = base.as_secs(), "acquiring the lease failed");
                if max_wait.is_some_and(|max| started.elapsed() >= max) {
                    return Err(e);
                }
                base + jitter(base / 2)
            }
            Err(e) => return Err(e),
        };
        let delay = match max_wait {
            Some(max) => {
                delay.min(max.saturating_sub(started.elapsed()) + Duration::from_millis(1))
            }
            None => delay,
        };
        tokio::time::sleep(delay).await;
    }
}

fn describe_wait(
    group: &str,
    reason: WaitReason,
    holders: &[LeaseHolder],
    position: u32,
    window_opens_at: Option<i64>,
) -> String {
    let reason = match reason {
        WaitReason::Full => "every slot is held".to_owned(),
        WaitReason::OutsideWindow => match window_opens_at {
            Some(at) => format!("outside the maintenance window (next opens at unix {at})"),
            None => "outside the maintenance window".to_owned(),
        },
        WaitReason::Paused => "an admin paused the group".to_owned(),
        WaitReason::FailureBudgetSpent => {
            "the wave stopped: the group's failure budget is spent".to_owned()
        }
    };
    let holders: Vec<String> = holders
        .iter()
        .map(|h| format!("{} ({})", h.hostname, h.state.as_str()))
        .collect();
    let holders = if holders.is_empty() {
        "none".to_owned()
    } else {
        holders.join(", ")
    };
    format!("group {group}: {reason}; position {position} in line; holders: {holders}")
}

/// Sends one report, retrying transient failures; `409 stale_fence` is [`LeaseError::Lost`].
pub async fn report(client: &AgentClient, report: &LeaseReport) -> Result<HolderState, LeaseError> {
    let mut tries = 0;
    loop {
        match client.report_lease(report).await {
            Ok(answer) => return Ok(answer.state),
            Err(e) if e.code() == Some("stale_fence") => {
                return Err(LeaseError::Lost(e.to_string()))
            }
            Err(e) if e.is_transient() && tries + 1 < REPORT_TRIES => {
                tries += 1;
                let delay = Duration::from_secs(1 << (tries - 1));
                tracing::warn!(error = %e, retry_in_secs = delay.as_secs(), "reporting to the server failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `work`, sending `heartbeat` every `every` meanwhile (failures are logged only: the
/// state change at the end of the step is what must get through).
pub async fn with_heartbeat<T>(
    client: &AgentClient,
    heartbeat: Option<LeaseReport>,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let Some(heartbeat) = heartbeat else {
        return work.await;
    };
    tokio::pin!(work);
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(every) => {
                if let Err(e) = client.report_lease(&heartbeat).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }
    }
}

/// A report of `state` at `step` for the lease `fence` of run `run_id`.
pub fn holder_report(
    run_id: &str,
    fence: i64,
    state: HolderState,
    step: &str,
    detail: Option<String>,
    mut hooks: Vec<HookResult>,
) -> LeaseReport {
    if hooks.len() > MAX_HOOKS_PER_REPORT {
        hooks.drain(..hooks.len() - MAX_HOOKS_PER_REPORT);
    }
    LeaseReport {
        run_id: run_id.to_owned(),
        fence,
        state,
        step: step.to_owned(),
        detail,
        hooks,
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    max.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_names_its_reason_position_and_holders() {
        let holders = vec![LeaseHolder {
            host_id: "h1".into(),
            hostname: "db1".into(),
            state: HolderState::Updating,
            since: 0,
        }];
        assert_eq!(
            describe_wait("db", WaitReason::Full, &holders, 2, None),
            "group db: every slot is held; position 2 in line; holders: db1 (updating)"
        );
    }
}
