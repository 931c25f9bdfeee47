//! The agent's state directory (`/var/lib/aptgate-agent` by default):
//!
//! ```text
//! <state>/host.key     the host's Ed25519 secret, hex, mode 0600: its identity at the server
//! <state>/state.json   AgentState: server, host id, status, what was applied and reported
//! <state>/apt.conf     apt configuration that confines apt to `--root` (only when root ≠ /)
//! ```
//!
//! Both files are written temp → fsync → rename → fsync dir ([`crate::files`]).

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    files,
    protocol::{CommandResult, DesiredPackages, HostKey, HostStatus, Labels, Poll},
};

/// What the agent remembers between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub server: String,
    pub host_id: String,
    pub status: HostStatus,
    pub poll: Poll,
    /// Labels given at enrollment (`--label`); the configuration file's labels win over them.
    #[serde(default)]
    pub labels: Labels,
    /// The host's revision from the last check-in (what `wait?rev=` waits past).
    #[serde(default)]
    pub rev: i64,
    /// The [`crate::protocol::DesiredSources::rev`] last written.
    #[serde(default)]
    pub sources_rev: Option<String>,
    /// Digest of the inventory last uploaded successfully.
    #[serde(default)]
    pub inventory_digest: Option<String>,
    /// Unix time of the last successful check-in.
    #[serde(default)]
    pub last_checkin: Option<i64>,
    /// Key files the agent wrote under `etc/apt/keyrings` (bare names), so it removes only its own.
    #[serde(default)]
    pub keys_written: Vec<String>,
    /// Other sources renamed to `<path>.aptgate-disabled`, relative to the root.
    #[serde(default)]
    pub disabled_sources: Vec<String>,
    /// Results not yet delivered: kept across restarts, sent with the next check-in.
    #[serde(default)]
    pub pending_results: Vec<CommandResult>,
    /// The desired packages of the last check-in (what the next one reports compliance to).
    #[serde(default)]
    pub profile: Option<DesiredPackages>,
    /// The last time the agent ran apt to converge on a profile.
    #[serde(default)]
    pub converge: Option<ConvergeAttempt>,
}

/// One convergence run: what it was measured against and how it ended. The agent does not
/// run apt again for the same profile rev and dpkg database until the backoff has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergeAttempt {
    pub profile_rev: String,
    /// The inventory digest before the run.
    pub inventory_digest: String,
    pub at: i64,
    /// Failed runs in a row for this rev and inventory (0: the last one left the host compliant).
    pub failures: u32,
    /// Why the last run failed: the end of apt's output, or what is still not compliant.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("this host is not enrolled (no {0})")]
    NotEnrolled(PathBuf),
    #[error("this host is already enrolled ({0} exists)")]
    AlreadyEnrolled(PathBuf),
    #[error("{path} holds no valid host key")]
    BadKey { path: PathBuf },
    #[error("{path} is not valid agent state")]
    BadState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn key_path(&self) -> PathBuf {
        self.0.join("host.key")
    }

    pub fn state_path(&self) -> PathBuf {
        self.0.join("state.json")
    }

    pub fn is_enrolled(&self) -> bool {
        self.key_path().exists() || self.state_path().exists()
    }

    /// Refuses when the directory already holds an identity, unless `force`.
    pub fn check_can_enroll(&self, force: bool) -> Result<(), StateError> {
        if !force && self.is_enrolled() {
            let existing = if self.key_path().exists() {
                self.key_path()
            } else {
                self.state_path()
            };
            return Err(StateError::AlreadyEnrolled(existing));
        }
        Ok(())
    }

    /// Writes the key (hex, mode 0600 from creation on). The directory is created mode 0700.
    pub fn save_key(&self, key: &HostKey) -> Result<(), StateError> {
        self.create_dir()?;
        files::write_atomic(&self.key_path(), key.to_hex().as_bytes(), 0o600, ".tmp")?;
        Ok(())
    }

    pub fn load_key(&self) -> Result<HostKey, StateError> {
        let path = self.key_path();
        let text = match fs_err::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled(path))
            }
            Err(e) => return Err(e.into()),
        };
        HostKey::from_hex(&text).map_err(|_| StateError::BadKey { path })
    }

    pub fn save_state(&self, state: &AgentState) -> Result<(), StateError> {
        self.create_dir()?;
        let mut json = serde_json::to_vec_pretty(state).expect("state serializes");
        json.push(b'\n');
        files::write_atomic(&self.state_path(), &json, 0o600, ".tmp")?;
        Ok(())
    }

    pub fn load_state(&self) -> Result<AgentState, StateError> {
        let path = self.state_path();
        let text = match fs_err::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotEnrolled(path))
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::BadState { path, source })
    }

    fn create_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        if !self.0.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.0)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.0.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn state() -> AgentState {
        AgentState {
            server: "https://aptgate.example.org".into(),
            host_id: "h-1".into(),
            status: HostStatus::Active,
            poll: Poll {
                interval_secs: 60,
                wait_secs: 300,
            },
            labels: Labels::new(),
            rev: 0,
            sources_rev: None,
            inventory_digest: None,
            last_checkin: None,
            keys_written: vec![],
            disabled_sources: vec![],
            pending_results: vec![],
            profile: None,
            converge: None,
        }
    }

    #[test]
    fn key_is_private_and_enrollment_refuses_twice() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::new(dir.path().join("agent"));
        assert!(matches!(states.load_key(), Err(StateError::NotEnrolled(_))));
        states.check_can_enroll(false).unwrap();
        let key = HostKey::generate();
        states.save_key(&key).unwrap();
        let mode = fs_err::metadata(states.key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs_err::metadata(states.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(states.load_key().unwrap().public_hex(), key.public_hex());
        assert!(matches!(
            states.check_can_enroll(false),
            Err(StateError::AlreadyEnrolled(_))
        ));
        states.check_can_enroll(true).unwrap();

        states.save_state(&state()).unwrap();
        assert_eq!(states.load_state().unwrap(), state());
    }
}
