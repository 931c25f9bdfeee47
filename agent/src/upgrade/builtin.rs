//! What a step does when its hook directory has no scripts:
//!
//! - `needs_update`: the server counts updates pending for this host against the run's
//!   snapshot ([`RunPlan::pending`]); more than zero means "upgrade".
//! - `update`: `apt-get update` and `apt-get upgrade --with-new-pkgs` against exactly the
//!   planned snapshot: a sources list of the plan's entries only (signed by the channel keys
//!   the agent keeps under `etc/apt/keyrings`), named by `Dir::Etc::SourceList` with an empty
//!   `Dir::Etc::SourceParts`, and package lists of its own (`Dir::State::Lists`), so neither
//!   the host's other sources nor whatever the channel published since take part, and the
//!   host's regular lists are left alone. `upgrade --with-new-pkgs` installs new dependencies
//!   (a kernel's new ABI package) but never removes a package; what would need a removal is
//!   kept back and shows in the output.
//! - `needs_reboot`: [`crate::reboot`] (the sentinel file, a newer installed kernel), plus
//!   `needrestart -b` on the real root when it is installed (a kernel it expects to change).

use std::path::PathBuf;

use crate::{
    commands::{bound_output, Apt},
    facts,
    host_root::HostRoot,
    inventory,
    protocol::rollout::{HookResult, RunPlan},
    reboot, sources,
    state::StateDir,
};

const BUILTIN: &str = "builtin";

pub fn needs_update(plan: &RunPlan) -> (bool, HookResult) {
    let needed = plan.pending > 0;
    let result = HookResult {
        dir: BUILTIN.into(),
        name: "pending updates".into(),
        exit_code: Some(if needed { 0 } else { 1 }),
        output: format!(
            "{} update(s) pending against snapshot {}\n",
            plan.pending,
            plan.snapshot.as_deref().unwrap_or("(none)")
        ),
        duration_ms: 0,
    };
    (needed, result)
}

/// Where the run's own apt sources and lists live.
struct RunApt {
    source_list: PathBuf,
    source_parts: PathBuf,
    lists: PathBuf,
}

impl RunApt {
    fn new(state_dir: &StateDir) -> Self {
        let dir = state_dir.path().join("run-apt");
        Self {
            source_list: dir.join("snapshot.sources"),
            source_parts: dir.join("sources.list.d"),
            lists: dir.join("lists"),
        }
    }

    fn options(&self) -> Vec<String> {
        vec![
            "-o".into(),
            format!("Dir::Etc::SourceList={}", self.source_list.display()),
            "-o".into(),
            format!("Dir::Etc::SourceParts={}", self.source_parts.display()),
            "-o".into(),
            format!("Dir::State::Lists={}", self.lists.display()),
        ]
    }
}

/// apt-get update + upgrade against the planned snapshot; stops at the first failure. Returns
/// the results (one per apt-get call) and whether every call succeeded.
pub async fn update(
    apt: &Apt,
    state_dir: &StateDir,
    plan: &RunPlan,
    channel_keys: &[String],
) -> (bool, Vec<HookResult>) {
    let run_apt = RunApt::new(state_dir);
    if let Err(message) = write_sources(apt.root(), &run_apt, plan, channel_keys) {
        return (
            false,
            vec![HookResult {
                dir: BUILTIN.into(),
                name: "snapshot sources".into(),
                exit_code: Some(2),
                output: format!("{message}\n"),
                duration_ms: 0,
            }],
        );
    }
    let options = run_apt.options();
    let mut results = Vec::new();
    for action in [&["update"][..], &["upgrade", "--with-new-pkgs"][..]] {
        let started = std::time::Instant::now();
        let args: Vec<&str> = options
            .iter()
            .map(String::as_str)
            .chain(action.iter().copied())
            .collect();
        let (code, output) = apt.apt_get(&args).await;
        results.push(HookResult {
            dir: BUILTIN.into(),
            name: format!("apt-get {}", action.join(" ")),
            exit_code: Some(code),
            output: bound_output(&output),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        if code != 0 {
            return (false, results);
        }
    }
    (true, results)
}

fn write_sources(
    root: &HostRoot,
    run_apt: &RunApt,
    plan: &RunPlan,
    channel_keys: &[String],
) -> Result<(), String> {
    if plan.entries.is_empty() {
        return Err("the run's plan has no apt sources for its snapshot".into());
    }
    if channel_keys.is_empty() {
        return Err(
            "no channel keys under etc/apt/keyrings yet: run `aptgate-agent checkin` first".into(),
        );
    }
    let text = sources::render(
        root,
        plan.channel.as_deref(),
        &plan.entries,
        channel_keys,
        None,
    )
    .map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("writing the snapshot's sources: {e}");
    fs_err::create_dir_all(&run_apt.source_parts).map_err(io)?;
    fs_err::create_dir_all(run_apt.lists.join("partial")).map_err(io)?;
    crate::files::write_if_changed(&run_apt.source_list, text.as_bytes(), 0o644, ".tmp")
        .map_err(io)?;
    Ok(())
}

/// Whether the host needs a reboot, and why.
pub async fn needs_reboot(root: &HostRoot) -> (Vec<String>, HookResult) {
    let started = std::time::Instant::now();
    let packages = inventory::read(root).unwrap_or_default();
    let mut reasons = reboot::reboot_state(root, &facts::kernel(), &packages).reasons;
    if root.is_system() {
        if let Some(reason) = needrestart_kernel().await {
            reasons.push(reason);
        }
    }
    let output = if reasons.is_empty() {
        "no reboot needed\n".to_owned()
    } else {
        format!("reboot needed: {}\n", reasons.join("; "))
    };
    let result = HookResult {
        dir: BUILTIN.into(),
        name: "reboot check".into(),
        exit_code: Some(if reasons.is_empty() { 1 } else { 0 }),
        output,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    (reasons, result)
}

/// `needrestart -b` (batch mode, never interactive): `NEEDRESTART-KSTA: 2|3` means the
/// running kernel is not the one expected after a reboot. `None` when it is not installed.
async fn needrestart_kernel() -> Option<String> {
    let output = tokio::process::Command::new("needrestart")
        .arg("-b")
        .env("NEEDRESTART_MODE", "l")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    parse_needrestart(&String::from_utf8_lossy(&output.stdout))
}

fn parse_needrestart(text: &str) -> Option<String> {
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("NEEDRESTART-KSTA:"))?
        .trim();
    matches!(status, "2" | "3").then(|| {
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("NEEDRESTART-KEXP:"))
            .map_or("", str::trim);
        format!("needrestart: kernel {expected} expected (status {status})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needrestart_asks_for_a_reboot_only_for_a_kernel_change() {
        let current = "NEEDRESTART-VER: 3.6\nNEEDRESTART-KCUR: 6.1.0-9-amd64\nNEEDRESTART-KEXP: 6.1.0-9-amd64\nNEEDRESTART-KSTA: 1\nNEEDRESTART-SVC: ssh.service\n";
        assert_eq!(parse_needrestart(current), None);
        let newer = current
            .replace("KEXP: 6.1.0-9-amd64", "KEXP: 6.1.0-10-amd64")
            .replace("KSTA: 1", "KSTA: 3");
        assert_eq!(
            parse_needrestart(&newer).as_deref(),
            Some("needrestart: kernel 6.1.0-10-amd64 expected (status 3)")
        );
        assert_eq!(parse_needrestart(""), None);
    }

    #[test]
    fn nothing_pending_means_nothing_to_do() {
        let plan = RunPlan {
            run_id: "r".into(),
            channel: Some("web".into()),
            snapshot: Some("s1".into()),
            entries: vec![],
            group: None,
            pending: 0,
        };
        assert!(!needs_update(&plan).0);
        assert!(needs_update(&RunPlan { pending: 2, ..plan }).0);
    }
}
