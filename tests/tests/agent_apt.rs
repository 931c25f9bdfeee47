//! The agent's work on a host, with real apt and dpkg in isolated roots: the sources it writes
//! are accepted by `apt-get update` against a signed fixture repository, hostile values from a
//! server change nothing, files are rewritten only on change, other sources are disabled and
//! restored, and an `install` command really installs into the root's dpkg database.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _, path::Path};

use aptgate_agent::{
    commands::{self, Apt},
    host_root::HostRoot,
    other_sources,
    protocol::{ChannelKey, Command, CommandKind, DesiredSources, SourceEntry},
    sources::{self, SourcesError},
};
use aptgate_tests::{
    apt::AptRoot,
    fixture::{FixtureRepo, FixtureSpec},
    signing::TestKey,
    upstream::Upstream,
};

struct Setup {
    dir: tempfile::TempDir,
    repo: FixtureRepo,
    upstream: Upstream,
    root: HostRoot,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::generate(
        &dir.path().join("repo"),
        &FixtureSpec::default().large_payload(64 * 1024),
    )
    .unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    AptRoot::new(&dir.path().join("root")).unwrap();
    let root = HostRoot::new(dir.path().join("root"));
    Setup {
        dir,
        repo,
        upstream,
        root,
    }
}

fn desired(setup: &Setup, rev: &str) -> DesiredSources {
    DesiredSources {
        rev: rev.into(),
        channel: Some("stable".into()),
        entries: vec![SourceEntry {
            uris: vec![setup.upstream.url()],
            suites: vec!["stable".into()],
            components: vec!["main".into(), "contrib".into()],
            architectures: vec!["amd64".into()],
        }],
        keys: vec![ChannelKey {
            file_name: "fixture.asc".into(),
            fingerprint: TestKey::Primary.fingerprint(),
            armored: fs_err::read_to_string(setup.repo.key_path()).unwrap(),
        }],
        disable_other_sources: false,
        mirrors: vec![],
    }
}

/// Every file under `dir` with its content, inode and mtime: what "nothing changed" means.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u64, i64)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs_err::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let meta = fs_err::metadata(&path).unwrap();
                files.insert(
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    (fs_err::read(&path).unwrap(), meta.ino(), meta.mtime_nsec()),
                );
            }
        }
    }
    files
}

fn apt(setup: &Setup) -> Apt {
    Apt::new(&setup.root, &setup.dir.path().join("state"), 30).unwrap()
}

#[tokio::test]
async fn written_sources_are_accepted_by_apt_update() {
    let setup = setup().await;
    let applied = sources::apply(&setup.root, &desired(&setup, "r1"), &[]).unwrap();
    assert!(applied.source_file_changed);
    assert_eq!(applied.keys_written, ["aptgate-fixture.asc"]);
    let key = setup.root.join("etc/apt/keyrings/aptgate-fixture.asc");
    let mode = fs_err::metadata(&key).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // The agent's own way of calling apt, confined to the root.
    let (code, output) = apt(&setup).apt_get(&["update", "--error-on=any"]).await;
    assert_eq!(code, 0, "{output}");
    for warning in ["NO_PUBKEY", "not signed", "GPG error", "W:", "E:", "N:"] {
        assert!(!output.contains(warning), "{warning:?} in:\n{output}");
    }
    let lists = fs_err::read_dir(setup.root.join("var/lib/apt/lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        lists.iter().any(|n| n.ends_with("_dists_stable_InRelease")),
        "{lists:?}"
    );
    // What the agent reports apt sees.
    assert_eq!(
        other_sources::apt_lines(&setup.root).unwrap(),
        [format!("{} stable main contrib", setup.upstream.url())]
    );
}

#[tokio::test]
async fn rewrites_only_on_change_and_removes_its_old_keys() {
    let setup = setup().await;
    let first = desired(&setup, "r1");
    let applied = sources::apply(&setup.root, &first, &[]).unwrap();
    let before = snapshot(&setup.root.join("etc/apt"));

    let again = sources::apply(&setup.root, &first, &applied.keys_written).unwrap();
    assert!(!again.source_file_changed && again.keys_changed.is_empty());
    assert_eq!(snapshot(&setup.root.join("etc/apt")), before);

    // Key rotation: a second key, then the first one goes.
    let mut rotated = first.clone();
    rotated.keys.push(ChannelKey {
        file_name: "aptgate-next.asc".into(),
        fingerprint: TestKey::Other.fingerprint(),
        armored: TestKey::Other.armored_public_key().into(),
    });
    let applied = sources::apply(&setup.root, &rotated, &again.keys_written).unwrap();
    assert!(applied.source_file_changed);
    assert_eq!(applied.keys_changed, ["aptgate-next.asc"]);
    let text = fs_err::read_to_string(sources::source_path(&setup.root)).unwrap();
    assert!(
        text.contains("aptgate-fixture.asc") && text.contains("aptgate-next.asc"),
        "{text}"
    );

    rotated.keys.remove(0);
    let applied = sources::apply(&setup.root, &rotated, &applied.keys_written).unwrap();
    assert_eq!(applied.keys_removed, ["aptgate-fixture.asc"]);
    assert!(!setup
        .root
        .join("etc/apt/keyrings/aptgate-fixture.asc")
        .exists());

    // An administrator's keyring is never ours to remove, whatever the state says.
    let admin_key = setup.root.join("etc/apt/keyrings/vendor.asc");
    fs_err::write(&admin_key, TestKey::Other.armored_public_key()).unwrap();
    sources::apply(&setup.root, &rotated, &["vendor.asc".into()]).unwrap();
    assert!(admin_key.exists());

    // Unassigned: no entries, no source file.
    let unassigned = DesiredSources {
        rev: "r3".into(),
        ..DesiredSources::default()
    };
    let applied = sources::apply(&setup.root, &unassigned, &applied.keys_written).unwrap();
    assert!(applied.source_file_changed);
    assert!(!sources::source_path(&setup.root).exists());
    assert_eq!(applied.keys_removed, ["aptgate-next.asc"]);
    // No temporary file left behind for apt to stumble on.
    let leftovers: Vec<_> = fs_err::read_dir(setup.root.sources_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn hostile_server_values_change_nothing() {
    let setup = setup().await;
    let good = desired(&setup, "r1");
    let applied = sources::apply(&setup.root, &good, &[]).unwrap();
    let before = snapshot(setup.root.path());
    let hostile: Vec<(&str, DesiredSources)> = vec![
        ("stanza injection", {
            let mut d = good.clone();
            d.entries[0].suites[0] = "stable\nTrusted: yes".into();
            d
        }),
        ("key path traversal", {
            let mut d = good.clone();
            d.keys[0].file_name = "../../../../etc/shadow.asc".into();
            d
        }),
        ("local file URI", {
            let mut d = good.clone();
            d.entries[0].uris[0] = "file:/".into();
            d
        }),
        ("option injection in URI", {
            let mut d = good.clone();
            d.entries[0].uris[0] = format!("[trusted=yes] {}", setup.upstream.url());
            d
        }),
        ("binary key", {
            let mut d = good.clone();
            d.keys[0].armored = "\u{99}\u{1}binary".into();
            d
        }),
        ("second key bad", {
            let mut d = good.clone();
            d.keys.push(ChannelKey {
                file_name: "ok.asc".into(),
                fingerprint: "00".into(),
                armored: "not a key".into(),
            });
            d
        }),
    ];
    for (what, d) in hostile {
        let result = sources::apply(&setup.root, &d, &applied.keys_written);
        assert!(
            matches!(result, Err(SourcesError::Refused(_))),
            "{what}: {result:?}"
        );
        assert_eq!(snapshot(setup.root.path()), before, "{what} changed files");
    }
}

#[tokio::test]
async fn other_sources_are_disabled_then_restored() {
    let setup = setup().await;
    let etc = setup.root.join("etc/apt");
    let other_list = format!("deb {} testing main\n", setup.upstream.url());
    fs_err::write(etc.join("sources.list"), &other_list).unwrap();
    fs_err::write(etc.join("sources.list.d/vendor.list"), &other_list).unwrap();
    fs_err::write(
        etc.join("sources.list.d/debian.sources"),
        format!(
            "Types: deb\nURIs: {}\nSuites: testing\nComponents: contrib\n",
            setup.upstream.url()
        ),
    )
    .unwrap();
    sources::apply(&setup.root, &desired(&setup, "r1"), &[]).unwrap();
    assert_eq!(other_sources::apt_lines(&setup.root).unwrap().len(), 4);

    let mut disabled = Vec::new();
    let renamed = other_sources::disable_others(&setup.root, &mut disabled).unwrap();
    assert_eq!(
        renamed,
        [
            "etc/apt/sources.list",
            "etc/apt/sources.list.d/debian.sources",
            "etc/apt/sources.list.d/vendor.list"
        ]
    );
    assert_eq!(
        other_sources::apt_lines(&setup.root).unwrap(),
        [format!("{} stable main contrib", setup.upstream.url())]
    );
    // apt ignores the renamed files silently (no "N: Ignoring file" notice) and uses only ours.
    let (code, output) = apt(&setup).apt_get(&["update", "--error-on=any"]).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        !output.contains("N:") && !output.contains("testing"),
        "{output}"
    );
    // Disabling again is a no-op.
    assert!(other_sources::disable_others(&setup.root, &mut disabled)
        .unwrap()
        .is_empty());

    let restored = other_sources::restore_others(&setup.root, &mut disabled).unwrap();
    assert_eq!(restored.len(), 3);
    assert!(disabled.is_empty());
    assert_eq!(
        fs_err::read_to_string(etc.join("sources.list")).unwrap(),
        other_list
    );
    assert_eq!(other_sources::apt_lines(&setup.root).unwrap().len(), 4);
}

#[tokio::test]
async fn install_upgrade_and_remove_in_the_root() {
    let setup = setup().await;
    sources::apply(&setup.root, &desired(&setup, "r1"), &[]).unwrap();
    let apt = apt(&setup);
    let run = |id, kind, packages: &[&str]| {
        let command = Command {
            id,
            kind,
            packages: packages.iter().map(|p| p.to_string()).collect(),
        };
        let apt = apt.clone();
        async move { commands::run(&apt, &command).await }
    };
    let result = run(1, CommandKind::Install, &["hello"]).await;
    assert_eq!(result.exit_code, 0, "{}", result.output);
    assert!(
        result.output.contains("$ apt-get update"),
        "{}",
        result.output
    );
    assert!(result.started_at <= result.finished_at);
    assert_eq!(dpkg_query(&setup.root), "hello\t2.10-3\n");
    // dpkg installed into the root, not into this machine.
    assert!(setup.root.join("usr/share/hello").is_dir());

    // Nothing newer in stable: upgrade succeeds and changes nothing.
    let result = run(2, CommandKind::Upgrade, &["hello"]).await;
    assert_eq!(result.exit_code, 0, "{}", result.output);
    let result = run(3, CommandKind::Upgrade, &[]).await;
    assert_eq!(result.exit_code, 0, "{}", result.output);

    let result = run(4, CommandKind::Remove, &["hello"]).await;
    assert_eq!(result.exit_code, 0, "{}", result.output);
    assert_eq!(dpkg_query(&setup.root), "");

    let result = run(5, CommandKind::Install, &["no-such-package"]).await;
    assert_ne!(result.exit_code, 0);
    assert!(
        result.output.contains("Unable to locate package"),
        "{}",
        result.output
    );

    let inventory = aptgate_agent::inventory::read(&setup.root).unwrap();
    assert!(inventory.iter().all(|p| p.name == "hello"), "{inventory:?}");
}

/// Installed packages, `name\tversion`, as dpkg of the root lists them.
fn dpkg_query(root: &HostRoot) -> String {
    let output = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.dpkg_admin_dir().display()))
        .args(["-W", "-f", "${db:Status-Abbrev}${Package}\t${Version}\n"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("ii "))
        .map(|l| format!("{l}\n"))
        .collect()
}
