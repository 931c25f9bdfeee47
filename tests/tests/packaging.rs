//! The Debian packages (`scripts/build-debs`, `packaging/`): lintian finds nothing wrong,
//! systemd accepts the units and the server's stays sandboxed, the packages install into an
//! isolated root (user, state directory, enabled units, configuration that parses) and purge
//! from it cleanly, and a changed conffile survives reinstallation, removal and upgrade.
//! Needs lintian and systemd's systemd-analyze (`.ci/run` installs them), and root (dpkg).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
};

use aptgate_tests::debs::{self, DpkgRoot};

const UNITS: [&str; 4] = [
    "aptgate.service",
    "aptgate-agent.service",
    "aptgate-agent-upgrade.service",
    "aptgate-agent-upgrade.timer",
];

/// Where dpkg put the units (the build asks pkg-config, as debhelper does).
fn unit_dir(root: &Path) -> std::path::PathBuf {
    ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .map(|dir| root.join(dir))
        .find(|dir| dir.join("aptgate.service").is_file())
        .expect("aptgate.service installed")
}

#[test]
fn lintian_finds_no_errors_or_warnings_in_either_package() {
    let dir = tempfile::tempdir().unwrap();
    let debs = debs::build(dir.path(), "0.1.0");
    let output = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .arg(&debs.server)
        .arg(&debs.agent)
        .output()
        .expect("lintian is installed (.ci/run installs it: apt-get install lintian)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "lintian:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{report}"
    );
}

#[test]
fn systemd_accepts_the_units_and_the_server_unit_stays_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let debs = debs::build(&dir.path().join("debs"), "0.1.0");
    let root = DpkgRoot::new(&dir.path().join("root"));
    root.install(&[&debs.server, &debs.agent]);
    // The units name targets (multi-user, timers, network-online, …) that systemd's own
    // packages provide: the host's, copied beside ours.
    let units = unit_dir(root.path());
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.join("sysinit.target").is_file())
        .expect("systemd's units on this host (apt-get install systemd)");
    for entry in fs_err::read_dir(host_units).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if (name.ends_with(".target") || name.ends_with(".slice")) && !units.join(&name).exists() {
            fs_err::copy(&path, units.join(&name)).unwrap();
        }
    }

    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(format!("--root={}", root.path().display()))
            // verify runs man(1) for each `Documentation=man:` page: the packaged ones.
            .env("MANPATH", root.path().join("usr/share/man"))
            .output()
            .expect("systemd-analyze (package systemd) is installed")
    };
    let verify = analyze(&[&["verify"][..], &UNITS].concat());
    let complaints = String::from_utf8_lossy(&verify.stderr);
    // verify exits 0 on unknown keys and bad values: it only prints them.
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );

    // The check is not vacuous: a misspelt hardening option is reported.
    let server_unit = units.join("aptgate.service");
    let good = fs_err::read_to_string(&server_unit).unwrap();
    fs_err::write(
        &server_unit,
        good.replace("ProtectSystem=strict", "ProtectSytem=strict"),
    )
    .unwrap();
    let broken = analyze(&["verify", "aptgate.service"]);
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("ProtectSytem"),
        "a misspelt key went unreported: {broken:?}"
    );
    fs_err::write(&server_unit, good).unwrap();

    // systemd's own score of the server's sandbox (0 = locked down, 10 = none): 1.5 when
    // written; an option dropped by mistake raises it.
    let security = analyze(&["security", "--offline=true", "aptgate.service"]);
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for aptgate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        exposure <= 2.0,
        "aptgate.service exposure {exposure}:\n{text}"
    );
}

#[test]
fn the_packages_install_into_an_isolated_root_and_purge_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let debs = debs::build(&dir.path().join("debs"), "0.1.0");
    let root = DpkgRoot::new(&dir.path().join("root"));
    let before = root.files();
    let accounts_before = fs_err::read_to_string(root.path().join("etc/passwd")).unwrap();
    root.install(&[&debs.server, &debs.agent]);

    // The server's user: a system account that cannot log in, at home in its state directory.
    let user = root.account("passwd", "aptgate").expect("the aptgate user");
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid < 1000, "not a system uid: {user:?}");
    assert_eq!(user[5], "/var/lib/aptgate");
    assert_eq!(user[6], "/usr/sbin/nologin");
    let group = root.account("group", "aptgate").expect("the aptgate group");
    assert_eq!(group[2], user[3], "the user's primary group is aptgate");
    let data = fs_err::metadata(root.path().join("var/lib/aptgate")).unwrap();
    assert_eq!(data.uid(), uid);
    assert_eq!(data.permissions().mode() & 0o7777, 0o750);

    // Conffiles, so dpkg never overwrites an admin's change.
    let conffiles = root.query("aptgate", "${Conffiles}");
    assert!(
        conffiles.contains("/etc/aptgate/aptgate.toml"),
        "{conffiles}"
    );
    assert!(root
        .query("aptgate-agent", "${Conffiles}")
        .contains("/etc/aptgate/agent.toml"));

    // Enabled as deb-systemd-helper does it (no systemd runs here): the server and the agent
    // at boot, the rolling-upgrade timer with the timers.
    for link in [
        "etc/systemd/system/multi-user.target.wants/aptgate.service",
        "etc/systemd/system/multi-user.target.wants/aptgate-agent.service",
        "etc/systemd/system/timers.target.wants/aptgate-agent-upgrade.timer",
    ] {
        assert!(root.path().join(link).is_symlink(), "{link} missing");
    }

    // The shipped configurations parse, and the server's keeps its data where the unit
    // lets it write.
    let loaded = aptgate_config::load(&aptgate_config::LoadOptions {
        file: Some(root.path().join("etc/aptgate/aptgate.toml")),
        env: Vec::new(),
        overrides: Vec::new(),
    })
    .expect("the packaged aptgate.toml parses");
    assert_eq!(loaded.config.data_dir, Path::new("/var/lib/aptgate"));
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:8470");
    let unit = fs_err::read_to_string(unit_dir(root.path()).join("aptgate.service")).unwrap();
    assert!(unit.contains("StateDirectory=aptgate\n"));
    assert!(unit.contains("--config /etc/aptgate/aptgate.toml serve"));
    let agent =
        aptgate_agent::config::AgentConfig::load(&root.path().join("etc/aptgate/agent.toml"))
            .expect("the packaged agent.toml parses");
    assert_eq!(agent, aptgate_agent::config::AgentConfig::default());

    // The server never ran here, so its state directory is empty: purge takes it and the
    // user. What may remain: the account files' backups (passwd- and friends, written by
    // useradd) and, empty, the directories deb-systemd-helper made because this root has no
    // systemd package (on a Debian system they are systemd's).
    root.purge("aptgate");
    root.purge("aptgate-agent");
    assert_eq!(root.query("aptgate", "${Status}"), "");
    let allowed = [
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/systemd",
        "etc/systemd/system",
        "var/lib/systemd",
    ];
    let left: Vec<String> = root
        .files()
        .difference(&before)
        .filter(|f| !allowed.contains(&f.as_str()))
        .cloned()
        .collect();
    for dir in ["etc/systemd/system", "var/lib/systemd"] {
        let path = root.path().join(dir);
        if path.exists() {
            let entries: Vec<_> = fs_err::read_dir(&path).unwrap().collect();
            assert!(entries.is_empty(), "{dir} not empty: {entries:?}");
        }
    }
    assert!(left.is_empty(), "left behind after purge: {left:#?}");
    assert_eq!(
        fs_err::read_to_string(root.path().join("etc/passwd")).unwrap(),
        accounts_before
    );
    assert_eq!(root.account("group", "aptgate"), None);
}

#[test]
fn purge_keeps_the_servers_data_and_its_user_but_drops_the_agents_identity() {
    let dir = tempfile::tempdir().unwrap();
    let debs = debs::build(&dir.path().join("debs"), "0.1.0");
    let root = DpkgRoot::new(&dir.path().join("root"));
    root.install(&[&debs.server, &debs.agent]);
    // What a server that ran leaves: its catalog (and signing key, audit log, …); what an
    // enrolled agent leaves: its key.
    fs_err::write(
        root.path().join("var/lib/aptgate/catalog.sqlite3"),
        "catalog",
    )
    .unwrap();
    fs_err::create_dir_all(root.path().join("var/lib/aptgate/tmp")).unwrap();
    fs_err::create_dir_all(root.path().join("var/lib/aptgate-agent")).unwrap();
    fs_err::write(root.path().join("var/lib/aptgate-agent/host.key"), "key").unwrap();

    let said = root.purge("aptgate");
    assert!(
        said.contains("kept") && said.contains("/var/lib/aptgate"),
        "{said}"
    );
    assert_eq!(
        fs_err::read_to_string(root.path().join("var/lib/aptgate/catalog.sqlite3")).unwrap(),
        "catalog"
    );
    assert!(!root.path().join("var/lib/aptgate/tmp").exists());
    // The files keep an owner: no later system user can be given their uid.
    assert!(root.account("passwd", "aptgate").is_some());
    assert!(!root.path().join("etc/aptgate/aptgate.toml").exists());

    root.purge("aptgate-agent");
    assert!(!root.path().join("var/lib/aptgate-agent").exists());
}

#[test]
fn a_changed_conffile_survives_reinstall_removal_and_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let old = debs::build(&dir.path().join("old"), "0.1.0");
    let new = debs::build(&dir.path().join("new"), "0.1.1");
    let root = DpkgRoot::new(&dir.path().join("root"));
    root.install(&[&old.server, &old.agent]);

    let server_conf = root.path().join("etc/aptgate/aptgate.toml");
    let agent_conf = root.path().join("etc/aptgate/agent.toml");
    let server_edit = "data_dir = \"/var/lib/aptgate\"\n[server]\nlisten = \"0.0.0.0:8470\"\n";
    let agent_edit = "server = \"https://apt.example.org\"\n";
    fs_err::write(&server_conf, server_edit).unwrap();
    fs_err::write(&agent_conf, agent_edit).unwrap();
    let kept = || {
        assert_eq!(fs_err::read_to_string(&server_conf).unwrap(), server_edit);
        assert_eq!(fs_err::read_to_string(&agent_conf).unwrap(), agent_edit);
    };

    // dpkg's stdin is /dev/null: a conffile question would fail the install.
    root.install(&[&old.server, &old.agent]);
    kept();
    root.remove("aptgate");
    root.remove("aptgate-agent");
    kept();
    root.install(&[&old.server, &old.agent]);
    kept();
    root.install(&[&new.server, &new.agent]);
    kept();
    assert_eq!(root.query("aptgate", "${Version}"), "0.1.1");
    assert_eq!(root.query("aptgate-agent", "${Version}"), "0.1.1");
    // An upgrade keeps the user it made on the first installation.
    assert_eq!(
        fs_err::read_to_string(root.path().join("etc/passwd"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("aptgate:"))
            .count(),
        1
    );
}
