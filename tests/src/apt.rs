//! Runs the real `apt-get` against an isolated root directory.
//!
//! Everything apt reads or writes lives under the root. `APT_CONFIG` points at the root's
//! `etc/apt/apt.conf`, which apt reads before anything else and which moves `Dir` into the root,
//! so the host's sources, configuration snippets, trusted keys and dpkg status are never used.
//! To reproduce a run by hand: `APT_CONFIG=<root>/etc/apt/apt.conf apt-get update`.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// An apt installation in a directory of its own.
#[derive(Debug)]
pub struct AptRoot {
    root: PathBuf,
    arch: String,
    options: Vec<(String, String)>,
    timeout: Duration,
}

/// What an apt command did.
#[derive(Debug)]
pub struct AptOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl AptRoot {
    /// Creates the layout apt needs under `dir`, for architecture amd64.
    pub fn new(dir: &Path) -> anyhow::Result<AptRoot> {
        for sub in [
            "etc/apt/sources.list.d",
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/trusted.gpg.d",
            "etc/apt/keyrings",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            fs_err::create_dir_all(dir.join(sub))?;
        }
        fs_err::write(dir.join("var/lib/dpkg/status"), "")?;
        Ok(AptRoot {
            root: dir.to_owned(),
            arch: "amd64".into(),
            // One attempt per file, so tests can count requests and failures come fast.
            options: vec![("Acquire::Retries".into(), "0".into())],
            timeout: Duration::from_secs(60),
        })
    }

    /// The (only) architecture apt installs for.
    pub fn set_arch(&mut self, arch: &str) {
        self.arch = arch.into();
    }

    /// An extra apt option, e.g. `Acquire::https::CaInfo`; a later value for a key wins.
    pub fn set_option(&mut self, key: &str, value: &str) {
        self.options.retain(|(k, _)| k != key);
        self.options.push((key.into(), value.into()));
    }

    /// How long one apt command may take before it is killed and reported as an error.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `apt-get update` leaves the fetched (and verified) indices.
    pub fn lists_dir(&self) -> PathBuf {
        self.root.join("var/lib/apt/lists")
    }

    /// Adds a deb822 source trusting only `key` (armored); the key is copied into the root as
    /// `etc/apt/keyrings/<name>.asc`, since apt reads an armored key only from a `.asc` file.
    pub fn add_source(
        &self,
        name: &str,
        uri: &str,
        suite: &str,
        components: &[&str],
        key: &Path,
    ) -> anyhow::Result<()> {
        let keyring = self.root.join(format!("etc/apt/keyrings/{name}.asc"));
        fs_err::copy(key, &keyring)?;
        let sources = format!(
            "Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: {}\nSigned-By: {}\n",
            components.join(" "),
            keyring.display()
        );
        fs_err::write(
            self.root
                .join(format!("etc/apt/sources.list.d/{name}.sources")),
            sources,
        )?;
        Ok(())
    }

    /// `apt-get update --error-on=any`: by default apt only warns, and exits 0, when an index
    /// fails to download; tests want that to be a failure.
    pub async fn update(&self) -> anyhow::Result<AptOutput> {
        self.apt_get(&["update", "--error-on=any"]).await
    }

    /// `apt-get install --download-only -y PACKAGES`: resolves dependencies and fetches the
    /// `.deb` files into `var/cache/apt/archives`, installing nothing.
    pub async fn download(&self, packages: &[&str]) -> anyhow::Result<AptOutput> {
        let mut args = vec!["install", "--download-only", "-y"];
        args.extend(packages);
        self.apt_get(&args).await
    }

    /// The `.deb` files apt downloaded, sorted.
    pub fn downloaded_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs_err::read_dir(self.root.join("var/cache/apt/archives"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Runs `apt-get ARGS` with this root's configuration, killing it after the timeout.
    pub async fn apt_get(&self, args: &[&str]) -> anyhow::Result<AptOutput> {
        let config = self.root.join("etc/apt/apt.conf");
        fs_err::write(&config, self.config())?;
        let command = format!("APT_CONFIG={} apt-get {}", config.display(), args.join(" "));
        let child = Command::new("apt-get")
            .args(args)
            .env("APT_CONFIG", &config)
            .env("LC_ALL", "C.UTF-8")
            // Only 127.0.0.1 is reachable here; a proxy from the environment would get in the way.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .kill_on_drop(true)
            .output();
        let Ok(output) = tokio::time::timeout(self.timeout, child).await else {
            bail!("`{command}` did not finish within {:?}", self.timeout);
        };
        let output = output.with_context(|| format!("running `{command}`"))?;
        Ok(AptOutput {
            command,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn config(&self) -> String {
        let root = self.root.display();
        let mut options = vec![
            ("Dir".to_owned(), format!("{root}/")),
            (
                "Dir::State::status".into(),
                format!("{root}/var/lib/dpkg/status"),
            ),
            // No trusted keys but the source's own `Signed-By:`.
            (
                "Dir::Etc::trusted".into(),
                format!("{root}/etc/apt/trusted.gpg"),
            ),
            (
                "Dir::Etc::trustedparts".into(),
                format!("{root}/etc/apt/trusted.gpg.d/"),
            ),
            ("APT::Architecture".into(), self.arch.clone()),
            ("APT::Architectures".into(), self.arch.clone()),
            ("Debug::NoLocking".into(), "1".into()),
            ("Acquire::Languages".into(), "none".into()),
            // The unprivileged `_apt` user could not write into the test's directories.
            ("APT::Sandbox::User".into(), "root".into()),
        ];
        options.extend(self.options.iter().cloned());
        options
            .iter()
            .map(|(key, value)| format!("{key} \"{value}\";\n"))
            .collect()
    }
}

impl AptOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Stdout then stderr: apt splits one story over both.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics, showing everything apt said, unless the command succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success:\n{self}");
        self
    }

    /// Panics unless the command failed and said `needle` somewhere.
    #[track_caller]
    pub fn assert_failure_mentioning(&self, needle: &str) -> &Self {
        assert!(!self.success(), "expected failure:\n{self}");
        assert!(
            self.combined().contains(needle),
            "expected {needle:?} in the output:\n{self}"
        );
        self
    }
}

impl fmt::Display for AptOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n{}\n--- stdout\n{}--- stderr\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}
