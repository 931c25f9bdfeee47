//! The apt/dpkg root the agent manages: `/` on a real host, a prepared directory in tests
//! (several agents, each on its own root, on one machine).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Whether this is the machine's own root, where apt needs no redirection.
    pub fn is_system(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `<root>/<relative>`; `relative` is written without a leading slash.
    pub fn join(&self, relative: &str) -> PathBuf {
        self.0.join(relative.trim_start_matches('/'))
    }

    pub fn sources_dir(&self) -> PathBuf {
        self.join("etc/apt/sources.list.d")
    }

    pub fn keyrings_dir(&self) -> PathBuf {
        self.join("etc/apt/keyrings")
    }

    pub fn dpkg_admin_dir(&self) -> PathBuf {
        self.join("var/lib/dpkg")
    }

    /// Creates the directories apt and dpkg need that are missing (a fresh test root, or a
    /// host without `/etc/apt/keyrings`). Outside the system root an empty dpkg status is
    /// created too; on a real host a missing status is left for dpkg to complain about.
    pub fn ensure_layout(&self) -> std::io::Result<()> {
        for dir in [
            "etc/apt/sources.list.d",
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/trusted.gpg.d",
            "etc/apt/keyrings",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
            "var/log/apt",
        ] {
            fs_err::create_dir_all(self.join(dir))?;
        }
        if !self.is_system() {
            for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
                let path = self.join(file);
                if !path.exists() {
                    fs_err::write(path, "")?;
                }
            }
        }
        Ok(())
    }
}
