//! Runs the admins' commands with the real `apt-get`, the way an admin would: never through a
//! shell, non-interactively, keeping changed configuration files, waiting for the dpkg lock.
//!
//! When the managed root is not `/`, apt is confined to it by a configuration file the agent
//! writes to `<state>/apt.conf` and names in `APT_CONFIG`: `Dir` moves every apt path (sources,
//! keyrings, lists, archives, dpkg status) under the root, and `DPkg::Options::=--root=<root>`
//! makes dpkg install into it. The host's own `/etc/apt/apt.conf.d` is then not read.

use std::{
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::PathBuf,
};

use crate::{
    client::unix_now,
    files,
    host_root::HostRoot,
    protocol::{Command, CommandKind, CommandResult, MAX_OUTPUT_BYTES},
};

/// How the agent calls apt-get on its root.
#[derive(Debug, Clone)]
pub struct Apt {
    root: HostRoot,
    /// `APT_CONFIG` for a root other than `/`.
    config_file: Option<PathBuf>,
    lock_timeout_secs: u64,
}

impl Apt {
    /// Prepares apt for `root`; `state_dir` receives the confining `apt.conf` when needed.
    pub fn new(
        root: &HostRoot,
        state_dir: &std::path::Path,
        lock_timeout_secs: u64,
    ) -> std::io::Result<Self> {
        root.ensure_layout()?;
        let config_file = if root.is_system() {
            None
        } else {
            let path = state_dir.join("apt.conf");
            fs_err::create_dir_all(state_dir)?;
            files::write_if_changed(&path, confining_config(root).as_bytes(), 0o644, ".tmp")?;
            Some(path)
        };
        Ok(Self {
            root: root.clone(),
            config_file,
            lock_timeout_secs,
        })
    }

    /// Runs `apt-get ARGS` with the agent's options; returns the exit code and the transcript.
    pub async fn apt_get(&self, args: &[&str]) -> (i32, String) {
        let lock = format!("DPkg::Lock::Timeout={}", self.lock_timeout_secs);
        let mut command = tokio::process::Command::new("apt-get");
        command
            .args(["-y", "-o", "Dpkg::Options::=--force-confdef"])
            .args(["-o", "Dpkg::Options::=--force-confold", "-o", &lock])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_LISTCHANGES_FRONTEND", "none")
            .env("APT_LISTBUGS_FRONTEND", "none")
            .env("NEEDRESTART_MODE", "l")
            .env("LC_ALL", "C.UTF-8")
            .stdin(std::process::Stdio::null())
            // A Ctrl-C meant for the agent must not interrupt dpkg halfway: apt gets its own
            // process group, and the agent stops only between cycles.
            .process_group(0);
        if let Some(config) = &self.config_file {
            command.env("APT_CONFIG", config);
        }
        let shown = format!("$ apt-get {}\n", args.join(" "));
        match command.output().await {
            Ok(output) => {
                let code = output
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
                let mut text = shown;
                text.push_str(&String::from_utf8_lossy(&output.stdout));
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                (code, text)
            }
            Err(e) => (127, format!("{shown}cannot run apt-get: {e}\n")),
        }
    }

    pub fn root(&self) -> &HostRoot {
        &self.root
    }
}

/// The apt configuration that keeps apt and dpkg inside `root`.
fn confining_config(root: &HostRoot) -> String {
    let root = root.path().display().to_string();
    let root = root.trim_end_matches('/');
    let mut config = format!(
        "// Written by aptgate-agent: confines apt to the root it manages.\n\
         Dir \"{root}/\";\n\
         DPkg::Options:: \"--root={root}\";\n"
    );
    // `_apt` cannot reach into a directory only root may enter (a test's temporary root).
    if running_as_root() {
        config.push_str("APT::Sandbox::User \"root\";\n");
    }
    config
}

fn running_as_root() -> bool {
    fs_err::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `arg` is a package argument apt-get may get: `name`, `name:arch`, `name=version`,
/// `name:arch=version`. Nothing that could read as an option.
pub fn valid_package_arg(arg: &str) -> bool {
    let (spec, version) = match arg.split_once('=') {
        Some((spec, version)) => (spec, Some(version)),
        None => (arg, None),
    };
    let (name, arch) = match spec.split_once(':') {
        Some((name, arch)) => (name, Some(arch)),
        None => (spec, None),
    };
    let name_ok = name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    let arch_ok = arch.is_none_or(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.len() <= 128
            && v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
    });
    name_ok && arch_ok && version_ok
}

/// Runs one apt command (`install`, `upgrade`, `remove`, `refresh-sources`). `report` needs
/// the server connection and is the caller's; it gets a refusal here.
pub async fn run(apt: &Apt, command: &Command) -> CommandResult {
    let started_at = unix_now();
    let (exit_code, output) = run_steps(apt, command).await;
    CommandResult {
        id: command.id,
        exit_code,
        output: bound_output(&output),
        started_at,
        finished_at: unix_now(),
    }
}

async fn run_steps(apt: &Apt, command: &Command) -> (i32, String) {
    if let Some(bad) = command.packages.iter().find(|p| !valid_package_arg(p)) {
        return (
            2,
            format!("refused: {bad:?} is not a package name (name[:arch][=version])\n"),
        );
    }
    let packages: Vec<&str> = command.packages.iter().map(String::as_str).collect();
    let needs_packages = matches!(command.kind, CommandKind::Install | CommandKind::Remove);
    if needs_packages && packages.is_empty() {
        return (2, "refused: no packages given\n".into());
    }
    let main: Vec<&str> = match command.kind {
        CommandKind::Install => [&["install"][..], &packages].concat(),
        CommandKind::Upgrade if packages.is_empty() => vec!["upgrade"],
        CommandKind::Upgrade => [&["install", "--only-upgrade"][..], &packages].concat(),
        CommandKind::Remove => [&["remove"][..], &packages].concat(),
        CommandKind::RefreshSources => vec![],
        CommandKind::Report => return (2, "refused: report is not an apt command\n".into()),
    };
    let mut transcript = String::new();
    let updates = matches!(
        command.kind,
        CommandKind::Install | CommandKind::Upgrade | CommandKind::RefreshSources
    );
    if updates {
        let (code, text) = apt.apt_get(&["update"]).await;
        transcript.push_str(&text);
        if code != 0 || main.is_empty() {
            return (code, transcript);
        }
    }
    let (code, text) = apt.apt_get(&main).await;
    transcript.push_str(&text);
    (code, transcript)
}

/// Cuts `output` to [`MAX_OUTPUT_BYTES`], keeping its head and its tail (where apt's error
/// usually is), at character boundaries.
pub fn bound_output(output: &str) -> String {
    if output.len() <= MAX_OUTPUT_BYTES {
        return output.to_owned();
    }
    let marker_room = 100;
    let half = (MAX_OUTPUT_BYTES - marker_room) / 2;
    let mut head_end = half;
    while !output.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = output.len() - half;
    while !output.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[… {} bytes cut …]\n{}",
        &output[..head_end],
        tail_start - head_end,
        &output[tail_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_arguments() {
        for good in [
            "hello",
            "libc6:i386",
            "hello=2.10-3",
            "g++-12:amd64=12.2.0-14",
            "0ad",
        ] {
            assert!(valid_package_arg(good), "{good}");
        }
        for bad in [
            "",
            "-o",
            "--purge",
            "Hello",
            "hello world",
            "hello;rm",
            "hello=",
            "hello:",
            "a=-1",
            "../x",
            "hello=1\n",
            "pkg/stable",
            "hello:AMD64",
        ] {
            assert!(!valid_package_arg(bad), "{bad:?}");
        }
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let text = format!("HEAD{}TAIL", "é".repeat(MAX_OUTPUT_BYTES));
        let bounded = bound_output(&text);
        assert!(bounded.len() <= MAX_OUTPUT_BYTES);
        assert!(bounded.starts_with("HEAD") && bounded.ends_with("TAIL"));
        assert!(bounded.contains("bytes cut"));
        assert_eq!(bound_output("short"), "short");
    }

    #[tokio::test]
    async fn a_bad_package_is_refused_without_running_apt() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path().join("root"));
        let apt = Apt::new(&root, &dir.path().join("state"), 5).unwrap();
        let result = run(
            &apt,
            &Command {
                id: 7,
                kind: CommandKind::Install,
                packages: vec!["--reinstall".into()],
            },
        )
        .await;
        assert_eq!(result.id, 7);
        assert_eq!(result.exit_code, 2);
        assert!(result.output.contains("refused"), "{}", result.output);
        let config = fs_err::read_to_string(dir.path().join("state/apt.conf")).unwrap();
        assert!(config.contains("--root="), "{config}");
    }
}
