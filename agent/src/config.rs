//! The agent's configuration file (`/etc/aptgate/agent.toml` by default). Every field is
//! optional; a missing file means the defaults. Command-line flags win over the file.
//!
//! ```toml
//! server = "https://aptgate.example.org"
//! disable_other_sources = false
//! apt_lock_timeout_secs = 300
//! [labels]
//! site = "berlin"
//! [upgrade]
//! reboot_cmd = ["systemctl", "reboot"]
//! hook_timeout_secs = 300
//! update_timeout_secs = 1800
//! ```

use std::path::Path;

use crate::protocol::Labels;

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The server to enroll with when `enroll` is given no `--server`.
    pub server: Option<String>,
    /// Labels declared by the host; admin-set labels on the server win over these.
    pub labels: Labels,
    /// Keep the host's other apt sources renamed out of apt's sight, even when the server does
    /// not ask for it.
    pub disable_other_sources: bool,
    /// How long apt waits for the dpkg lock (`DPkg::Lock::Timeout`) before a command fails.
    pub apt_lock_timeout_secs: u64,
    /// `aptgate-agent upgrade`: hooks, reboot, lease timing.
    pub upgrade: UpgradeConfig,
}

/// The `[upgrade]` table: how `aptgate-agent upgrade` runs its steps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    /// The command that reboots the host (argv, no shell).
    pub reboot_cmd: Vec<String>,
    /// How long to wait for the host to go down after `reboot_cmd` returned before calling
    /// the reboot failed.
    pub reboot_wait_secs: u64,
    /// Timeout of each script in `needs_update.d`, `pre_update.d`, `needs_reboot.d` and
    /// `post_update.d`.
    pub hook_timeout_secs: u64,
    /// Timeout of each script in `update.d`, and of each built-in apt-get call.
    pub update_timeout_secs: u64,
    /// How often a lease holder reports while a step runs (the server's heartbeat deadline
    /// must be longer).
    pub heartbeat_secs: u64,
    /// How long one `upgrade` waits for a slot in a full group before it exits (75) and
    /// leaves the run for the next invocation; 0 waits as long as it takes.
    pub lease_wait_secs: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            reboot_cmd: vec!["systemctl".into(), "reboot".into()],
            reboot_wait_secs: 600,
            hook_timeout_secs: 300,
            update_timeout_secs: 1800,
            heartbeat_secs: 60,
            lease_wait_secs: 0,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server: None,
            labels: Labels::new(),
            disable_other_sources: false,
            apt_lock_timeout_secs: 300,
            upgrade: UpgradeConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
}

impl AgentConfig {
    /// Reads `path`; a file that does not exist gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match fs_err::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        assert_eq!(AgentConfig::load(&path).unwrap(), AgentConfig::default());
        fs_err::write(
            &path,
            "server = \"https://aptgate.example.org\"\napt_lock_timeout_secs = 5\n[labels]\nsite = \"berlin\"\n",
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(
            config.server.as_deref(),
            Some("https://aptgate.example.org")
        );
        assert_eq!(config.labels["site"], "berlin");
        assert_eq!(config.apt_lock_timeout_secs, 5);
        fs_err::write(
            &path,
            "[upgrade]\nreboot_cmd = [\"/bin/true\"]\nheartbeat_secs = 1\n",
        )
        .unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.upgrade.reboot_cmd, ["/bin/true"]);
        assert_eq!(config.upgrade.heartbeat_secs, 1);
        assert_eq!(config.upgrade.hook_timeout_secs, 300);
        fs_err::write(&path, "sever = \"x\"\n").unwrap();
        assert!(AgentConfig::load(&path).is_err());
    }
}
