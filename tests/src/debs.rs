//! The Debian packages `scripts/build-debs` makes from this build's binaries, and a dpkg
//! database in a directory of its own to install them into: `dpkg --root DIR
//! --force-script-chrootless`, so the maintainer scripts run with the host's tools and
//! `DPKG_ROOT=DIR`, as when a system is bootstrapped. The root has no libc6, apt or passwd
//! packages, hence `--force-depends`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The two packages, built at one version.
#[derive(Debug)]
pub struct Debs {
    pub server: PathBuf,
    pub agent: PathBuf,
}

/// Builds `aptgate` and `aptgate-agent` at `version` into `out` from the binaries the tests
/// run (target/<profile>), the way a release builds them from target/release.
pub fn build(out: &Path, version: &str) -> Debs {
    let server_bin = PathBuf::from(crate::app::aptgate_command().get_program());
    // Asserts the agent binary exists too, with a hint when it does not.
    crate::agent::agent_command();
    let bin_dir = server_bin.parent().expect("target/<profile>");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-debs");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out)
        .args(["--version", version, "--fast"])
        .output()
        .expect("run scripts/build-debs");
    assert!(
        output.status.success(),
        "scripts/build-debs failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    let find = |name: &str| {
        built
            .iter()
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{name}_{version}_")))
            })
            .unwrap_or_else(|| panic!("no {name} package among {built:?}"))
            .clone()
    };
    Debs {
        server: find("aptgate"),
        agent: find("aptgate-agent"),
    }
}

/// A directory with its own dpkg database.
#[derive(Debug)]
pub struct DpkgRoot {
    root: PathBuf,
}

impl DpkgRoot {
    /// An empty dpkg database and the account files base-passwd puts on every Debian system
    /// (root only), which useradd edits.
    pub fn new(dir: &Path) -> DpkgRoot {
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
            fs_err::create_dir_all(dir.join(sub)).unwrap();
        }
        for (file, content) in [
            ("var/lib/dpkg/status", ""),
            ("var/lib/dpkg/available", ""),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
            ("etc/group", "root:x:0:\n"),
            ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
            ("etc/gshadow", "root:*::\n"),
        ] {
            fs_err::write(dir.join(file), content).unwrap();
        }
        DpkgRoot {
            root: dir.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Runs dpkg on this root with `args`.
    pub fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("dpkg")
            .arg(format!("--root={}", self.root.display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args)
            .env_remove("DPKG_ROOT")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run dpkg")
    }

    /// `dpkg -i` (which also reinstalls and upgrades); returns what dpkg printed.
    pub fn install(&self, debs: &[&Path]) -> String {
        let mut args = vec!["-i"];
        args.extend(debs.iter().map(|d| d.to_str().expect("UTF-8 path")));
        self.expect_success(&args)
    }

    pub fn remove(&self, package: &str) -> String {
        self.expect_success(&["--remove", package])
    }

    pub fn purge(&self, package: &str) -> String {
        self.expect_success(&["--purge", package])
    }

    fn expect_success(&self, args: &[&str]) -> String {
        let output = self.dpkg(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "dpkg {args:?} failed:\n{text}");
        text
    }

    /// A field of `package`'s entry in the dpkg database (`${Status}`, `${Version}`, …), or
    /// an empty string when dpkg does not know the package.
    pub fn query(&self, package: &str, field: &str) -> String {
        let output = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.root.join("var/lib/dpkg").display()
            ))
            .args(["--show", &format!("--showformat={field}"), package])
            .output()
            .expect("run dpkg-query");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every path under the root, relative to it, but dpkg's own database.
    pub fn files(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs_err::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path
                    .strip_prefix(&self.root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if relative.starts_with("var/lib/dpkg/") {
                    continue;
                }
                if path.is_dir() && !path.is_symlink() {
                    dirs.push(path);
                }
                found.insert(relative);
            }
        }
        found
    }

    /// The fields of `name`'s line in the root's `etc/<database>` (passwd, group).
    pub fn account(&self, database: &str, name: &str) -> Option<Vec<String>> {
        fs_err::read_to_string(self.root.join("etc").join(database))
            .unwrap()
            .lines()
            .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|fields| fields[0] == name)
    }
}
