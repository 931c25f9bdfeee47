//! The Debian packages (`scripts/build-debs`, `packaging/`): lintian finds nothing wrong,
//! systemd accepts the units and the server's stays sandboxed, the packages install into an
//! isolated root (user, state directory, enabled units, configuration that parses) and purge
//! from it cleanly, and a changed conffile survives reinstallation, removal and upgrade.
//! Needs lintian and systemd's systemd-analyze (`.ci/run` installs them), and root (dpkg).

use std::{
    fs::Permissions,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
};

use aptgate_tests::{
    app::aptgate_command,
    debs::{self, DpkgRoot},
    process::ServerProcess,
    signing::TestKey,
};

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

    // systemd's own review of the server's sandbox: every check it fails is one left open on
    // purpose, and its score (0 = locked down, 10 = none; 1.4 when written) stays low.
    let security = analyze(&["security", "--offline=true", "aptgate.service"]);
    let text = String::from_utf8_lossy(&security.stdout);
    let left_open = [
        // setrlimit, sched_setaffinity, mbind: harmless, and unproven without a real run.
        "SystemCallFilter=~@resources",
        // The server reads the host's apt sources, keyrings and CA certificates.
        "RootDirectory=/RootImage=",
        // A mirror talks to upstreams and clients; PostgreSQL may be a local socket.
        "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "PrivateNetwork=",
        "IPAddressDeny=",
        // The admin's to add in a drop-in once they know their network and users.
        "PrivateUsers=",
        // PrivateDevices keeps /dev/null, /dev/urandom and the clock readable.
        "DeviceAllow=",
        // 0027: group aptgate may read the data (backups), others may not.
        "UMask=",
    ];
    let failed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("✗ "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!failed.is_empty(), "no checks in:\n{text}");
    let unexpected: Vec<&&str> = failed.iter().filter(|f| !left_open.contains(f)).collect();
    assert!(
        unexpected.is_empty(),
        "aptgate.service lost hardening: {unexpected:?}\n{text}"
    );
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
        exposure <= 1.5,
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
fn the_packaged_server_runs_unprivileged_and_purge_keeps_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    // The aptgate user must reach the root's /var/lib/aptgate; tempdir makes its dir 0700.
    fs_err::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
    let debs = debs::build(&dir.path().join("debs"), "0.1.0");
    let root = DpkgRoot::new(&dir.path().join("root"));
    root.install(&[&debs.server, &debs.agent]);
    let user = root.account("passwd", "aptgate").expect("the aptgate user");
    let data = root.path().join("var/lib/aptgate");

    // The packaged binary and configuration, run as the unit runs them: the aptgate user and group, no
    // capabilities, no new privileges, UMask=0027; data_dir moved into the root, and an apt
    // directory of its own to import a source from (the fixture key signs it).
    let apt = dir.path().join("apt");
    fs_err::create_dir_all(apt.join("trusted.gpg.d")).unwrap();
    TestKey::Primary
        .write_public_key(&apt.join("trusted.gpg.d/fixture.asc"))
        .unwrap();
    fs_err::write(
        apt.join("sources.list"),
        "deb http://deb.example.org/debian bookworm main\n",
    )
    .unwrap();
    // The tests' environment for aptgate: NO_COLOR, no APTGATE_* of the caller.
    let test_env = aptgate_command();
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 0027; exec \"$@\"", "sh", "setpriv"])
        .args(["--reuid", &user[2], "--regid", &user[3], "--clear-groups"])
        .args([
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        // The packaged (stripped) binary: also one the aptgate user can reach, wherever the
        // build tree is.
        .arg(root.path().join("usr/bin/aptgate"))
        .arg("--config")
        .arg(root.path().join("etc/aptgate/aptgate.toml"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "serve"]);
    for (key, value) in test_env.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.env("APTGATE_HOST_APT__DIR", &apt);
    let server = ServerProcess::spawn(command, root.path().join("etc/aptgate/aptgate.toml"));
    let addr = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /mirror/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );

    // What it wrote belongs to aptgate and is nobody else's to read.
    let uid: u32 = user[2].parse().unwrap();
    let mut written = vec![data.clone()];
    let mut dirs = vec![data.clone()];
    while let Some(d) = dirs.pop() {
        for entry in fs_err::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            written.push(path);
        }
    }
    assert!(
        written.len() > 3,
        "the server wrote next to nothing: {written:?}"
    );
    for path in &written {
        let meta = fs_err::symlink_metadata(path).unwrap();
        assert_eq!(meta.uid(), uid, "{} not aptgate's", path.display());
        assert_eq!(meta.mode() & 0o007, 0, "{} open to others", path.display());
    }
    assert_eq!(
        fs_err::metadata(data.join("admin-token")).unwrap().mode() & 0o777,
        0o600
    );
    server.kill();

    // Purge keeps all of it (and so the user that owns it), but the configuration.
    fs_err::create_dir_all(data.join("tmp")).unwrap();
    let before: Vec<_> = written.iter().filter(|p| p.exists()).cloned().collect();
    let said = root.purge("aptgate");
    assert!(
        said.contains("kept") && said.contains("/var/lib/aptgate"),
        "{said}"
    );
    for path in &before {
        assert!(path.exists(), "purge deleted {}", path.display());
    }
    assert!(!data.join("tmp").exists());
    assert!(root.account("passwd", "aptgate").is_some());
    assert!(!root.path().join("etc/aptgate/aptgate.toml").exists());

    // The agent's identity goes with its package.
    fs_err::create_dir_all(root.path().join("var/lib/aptgate-agent")).unwrap();
    fs_err::write(root.path().join("var/lib/aptgate-agent/host.key"), "key").unwrap();
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
