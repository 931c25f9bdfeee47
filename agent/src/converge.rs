//! Converging on package profiles: when the dpkg database differs from the desired packages the
//! server sent (a wanted package missing or at a version the pattern refuses, an unwanted one
//! installed), run the real apt-get — `update`, `install` the missing ones (`name=version` when
//! the pattern is exact), `remove` the unwanted ones — and report how it went.
//!
//! apt runs at most once per (profile rev, dpkg database): a run that fails, or leaves the host
//! still not compliant, is tried again only when either changes or after a backoff that
//! doubles up to [`MAX_RETRY_SECS`], so a broken package never has apt hammered in a loop.

use crate::{
    client::unix_now,
    commands::{self, Apt},
    cycle::Agent,
    inventory,
    profile::{evaluate, installed_versions, plan},
    protocol::{
        inventory_digest, Command, CommandKind, ComplianceReport, ComplianceState, DesiredPackages,
        InstalledPackage,
    },
    state::{AgentState, ConvergeAttempt},
};

/// The first retry of a failed run waits this long; each failure doubles it.
const FIRST_RETRY_SECS: i64 = 60;
const MAX_RETRY_SECS: i64 = 6 * 3600;
/// How much of a failed run's output is kept and reported.
const MAX_ERROR_BYTES: usize = 4096;

/// The compliance the check-in reports: `state.profile` measured against `packages`, with the
/// last run's error when it was about this profile.
pub fn report(state: &AgentState, packages: &[InstalledPackage]) -> Option<ComplianceReport> {
    let desired = state.profile.as_ref()?;
    let error = state
        .converge
        .as_ref()
        .filter(|a| a.profile_rev == desired.rev && a.failures > 0)
        .and_then(|a| a.error.clone());
    Some(ComplianceReport {
        rev: desired.rev.clone(),
        packages: evaluate(desired, &installed_versions(packages)),
        error,
    })
}

/// Whether a failed run for the same rev and inventory may be tried again now.
fn may_retry(attempt: &ConvergeAttempt, now: i64) -> bool {
    if attempt.failures == 0 {
        // It succeeded, yet the host is off again with the same database: a glob no
        // candidate satisfies. Running apt again would change nothing.
        return false;
    }
    let wait = (FIRST_RETRY_SECS << (attempt.failures - 1).min(16)).min(MAX_RETRY_SECS);
    now >= attempt.at + wait
}

impl Agent {
    /// Brings the host in line with `desired` if needed and allowed; true when apt ran (the
    /// dpkg database may have changed: report again).
    pub(crate) async fn converge(
        &self,
        apt: &Apt,
        state: &mut AgentState,
        desired: Option<&DesiredPackages>,
    ) -> anyhow::Result<bool> {
        state.profile = desired.cloned();
        self.state_dir.save_state(state)?;
        let Some(desired) = desired else {
            return Ok(false);
        };
        let packages = inventory::read(&self.root)?;
        let before = evaluate(desired, &installed_versions(&packages));
        let (install, remove) = plan(desired, &before);
        if install.is_empty() && remove.is_empty() {
            return Ok(false);
        }
        let digest = inventory_digest(&packages);
        let now = unix_now();
        let previous = state
            .converge
            .as_ref()
            .filter(|a| a.profile_rev == desired.rev && a.inventory_digest == digest);
        if previous.is_some_and(|a| !may_retry(a, now)) {
            return Ok(false);
        }
        tracing::info!(
            rev = desired.rev,
            ?install,
            ?remove,
            "converging on the package profile"
        );
        let mut transcript = String::new();
        let mut failed = false;
        for (kind, packages) in [
            (CommandKind::Install, install),
            (CommandKind::Remove, remove),
        ] {
            if packages.is_empty() || failed {
                continue;
            }
            let result = commands::run(
                apt,
                &Command {
                    id: 0,
                    kind,
                    packages,
                },
            )
            .await;
            transcript.push_str(&result.output);
            failed = result.exit_code != 0;
        }
        let after = evaluate(desired, &installed_versions(&inventory::read(&self.root)?));
        let off: Vec<String> = after
            .iter()
            .filter(|c| !matches!(c.state, ComplianceState::Ok | ComplianceState::Conflict))
            .map(|c| format!("{} ({:?}, wanted {})", c.package, c.state, c.wanted))
            .collect();
        let error = if failed {
            Some(tail(&transcript, MAX_ERROR_BYTES))
        } else if !off.is_empty() {
            Some(format!(
                "apt succeeded but the host is still not compliant: {}",
                off.join(", ")
            ))
        } else {
            None
        };
        let failures = match (&error, previous) {
            (None, _) => 0,
            (Some(_), Some(p)) => p.failures.saturating_add(1),
            (Some(_), None) => 1,
        };
        match &error {
            Some(e) => tracing::warn!(failures, error = e, "converging on the profile failed"),
            None => tracing::info!("the host complies with its package profile"),
        }
        state.converge = Some(ConvergeAttempt {
            profile_rev: desired.rev.clone(),
            inventory_digest: digest,
            at: now,
            failures,
            error,
        });
        self.state_dir.save_state(state)?;
        Ok(true)
    }
}

/// The last `max` bytes of `text`, from a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_runs_back_off_and_successful_ones_are_not_repeated() {
        let attempt = |failures, at| ConvergeAttempt {
            profile_rev: "r".into(),
            inventory_digest: "d".into(),
            at,
            failures,
            error: None,
        };
        assert!(!may_retry(&attempt(0, 0), 1_000_000));
        assert!(!may_retry(&attempt(1, 1000), 1059));
        assert!(may_retry(&attempt(1, 1000), 1060));
        assert!(!may_retry(&attempt(3, 1000), 1000 + 239));
        assert!(may_retry(&attempt(3, 1000), 1000 + 240));
        assert!(may_retry(&attempt(40, 0), MAX_RETRY_SECS));
        assert_eq!(tail("héllo", 4), "llo");
    }
}
