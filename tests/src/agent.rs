//! The real `aptgate-agent` binary, for tests that run agents as processes.

/// `aptgate-agent` as a real process (built by `cargo build --workspace --bins`, as
/// `scripts/test` does), with no `APTGATE_*` variable or proxy from the test's environment.
pub fn agent_command() -> std::process::Command {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("aptgate-agent");
    assert!(
        bin.is_file(),
        "build the agent first (cargo build -p aptgate-agent): {} missing",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("APTGATE_") || key.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// One simulated machine for end-to-end fleet tests: an apt/dpkg root and the agent's state
/// directory, with `aptgate-agent run` as a real process once started (killed when dropped).
pub struct Machine {
    pub name: String,
    pub root: std::path::PathBuf,
    pub state: std::path::PathBuf,
    agent: Option<std::process::Child>,
}

impl Machine {
    /// A machine named `name` under `dir`, with an empty dpkg database and its own machine-id.
    pub fn new(dir: &std::path::Path, name: &str) -> Machine {
        let root = dir.join(name).join("root");
        crate::apt::AptRoot::new(&root).unwrap();
        fs_err::write(root.join("etc/machine-id"), format!("{name}-machine-id\n")).unwrap();
        Machine {
            name: name.into(),
            root,
            state: dir.join(name).join("state"),
            agent: None,
        }
    }

    /// The agent binary with this machine's state dir, root and (absent) config file.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = agent_command();
        cmd.arg("--state-dir")
            .arg(&self.state)
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(self.state.with_file_name("agent.toml"));
        cmd
    }

    pub fn enroll(&self, server: &str, token: &str, label: &str) {
        let out = self
            .command()
            .args([
                "enroll", "--server", server, "--token", token, "--label", label,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `aptgate-agent run`, logging to `agent.log` beside the state dir.
    pub fn start(&mut self) {
        let log = fs_err::File::create(self.state.with_file_name("agent.log"))
            .unwrap()
            .into_parts()
            .0;
        self.agent = Some(
            self.command()
                .arg("run")
                .env("APTGATE_AGENT_LOG", "debug,hyper_util=info,reqwest=info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn enroll_and_start(&mut self, server: &str, token: &str, label: &str) {
        self.enroll(server, token, label);
        self.start();
    }

    /// The machine's directory: the agent's config file and hook directories live here.
    pub fn dir(&self) -> std::path::PathBuf {
        self.state.parent().unwrap().to_owned()
    }

    /// Writes the agent's `agent.toml`.
    pub fn write_config(&self, toml: &str) {
        fs_err::write(self.state.with_file_name("agent.toml"), toml).unwrap();
    }

    /// Adds an executable hook script `name` (a `/bin/sh` body) to `<dir>.d`, e.g.
    /// `hook("pre_update", "10-drain", "exit 0")`.
    pub fn hook(&self, step: &str, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.dir().join(format!("{step}.d"));
        fs_err::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Sets the boot id the agent reads under its root (a simulated reboot changes it).
    pub fn set_boot_id(&self, id: &str) {
        let path = self.root.join("proc/sys/kernel/random/boot_id");
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, format!("{id}\n")).unwrap();
    }

    /// `aptgate-agent upgrade ARGS` as a process, its stderr appended to `upgrade.log`.
    pub fn spawn_upgrade(&self, args: &[&str]) -> std::process::Child {
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.with_file_name("upgrade.log"))
            .unwrap()
            .into_parts()
            .0;
        self.command()
            .arg("upgrade")
            .args(args)
            .env("APTGATE_AGENT_LOG", "info,hyper_util=info,reqwest=info")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Runs `aptgate-agent upgrade ARGS` to its end: its exit status and stdout.
    pub fn upgrade(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let out = self.spawn_upgrade(args).wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// What `upgrade` logged so far.
    pub fn upgrade_log(&self) -> String {
        fs_err::read_to_string(self.state.with_file_name("upgrade.log")).unwrap_or_default()
    }

    /// The agent's `run.json` (the upgrade run), or `Null`.
    pub fn run_state(&self) -> serde_json::Value {
        fs_err::read_to_string(self.state.join("run.json"))
            .map(|text| serde_json::from_str(&text).unwrap())
            .unwrap_or_default()
    }

    /// Runs `aptgate-agent checkin` once and asserts it succeeded.
    pub fn checkin(&self) {
        let out = self.command().arg("checkin").output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        fs_err::read_to_string(self.state.with_file_name("agent.log")).unwrap_or_default()
    }

    /// The agent's `state.json`.
    pub fn agent_state(&self) -> serde_json::Value {
        serde_json::from_str(&fs_err::read_to_string(self.state.join("state.json")).unwrap())
            .unwrap()
    }

    pub fn host_id(&self) -> String {
        self.agent_state()["host_id"].as_str().unwrap().to_owned()
    }

    /// The version of `package` in this root's dpkg database, if installed.
    pub fn installed(&self, package: &str) -> Option<String> {
        let out = std::process::Command::new("dpkg-query")
            .arg(format!("--admindir={}", self.admindir().display()))
            .args(["-W", "-f", "${Status}\t${Version}", package])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, version) = text.split_once('\t')?;
        (status == "install ok installed").then(|| version.to_owned())
    }

    /// `apt-get ARGS` on this machine's root, with the configuration the agent wrote for it
    /// (`<state>/apt.conf`), as an admin on the host would run it.
    pub fn apt_get(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("apt-get")
            .args(args)
            .env("APT_CONFIG", self.state.join("apt.conf"))
            .env("LC_ALL", "C.UTF-8")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .unwrap()
    }

    /// The aptgate source the agent wrote ("" if none).
    pub fn sources(&self) -> String {
        fs_err::read_to_string(self.root.join("etc/apt/sources.list.d/aptgate.sources"))
            .unwrap_or_default()
    }

    fn admindir(&self) -> std::path::PathBuf {
        self.root.join("var/lib/dpkg")
    }

    /// The end of the agent's log and `dpkg -l` of its root: what a failing test shows.
    pub fn report(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let dpkg = std::process::Command::new("dpkg-query")
            .arg(format!("--admindir={}", self.admindir().display()))
            .arg("-l")
            .output()
            .unwrap();
        let upgrade = self.upgrade_log();
        let upgrade: Vec<&str> = upgrade.lines().collect();
        format!(
            "--- {}\n{}\n{}\n{}{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n"),
            upgrade[upgrade.len().saturating_sub(30)..].join("\n"),
            String::from_utf8_lossy(&dpkg.stdout),
            String::from_utf8_lossy(&dpkg.stderr)
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (up to a minute) until `check` holds; on timeout, fails with every machine's report.
pub async fn until(what: &str, machines: &[Machine], mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check() {
        if std::time::Instant::now() > deadline {
            let reports: Vec<String> = machines.iter().map(Machine::report).collect();
            panic!("timed out waiting for {what}\n{}", reports.join("\n"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
