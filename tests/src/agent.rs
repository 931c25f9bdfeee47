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
