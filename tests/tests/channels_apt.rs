//! Channels end to end with real apt, on SQLite and on PostgreSQL: sync → testing (follows
//! the source) → promote → approved, holds, selective promotion, rollback, refusals.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::{Actor, ChannelsError, PromoteRequest};
use aptgate_config::Retain;
use aptgate_tests::app::{aptgate_command, client};
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::process::ServerProcess;
use aptgate_tests::upstream::Misbehaviour;
use sha2::Digest as _;
use std::time::Duration;

both_backends!(
    promotion_story,
    refusals_are_clear,
    admin_api_and_cli,
    concurrent_promotions_serialize,
    a_killed_promotion_leaves_the_channel_consistent,
    keys_rotate_and_releases_are_resigned,
    snapshots_filter_merge_pull_and_publish,
    auto_approval_promotes_versions_first_seen_long_enough_ago,
    a_channels_past_snapshots_stay_addressable,
    indices_reuse_upstream_bytes_and_superseded_ones_stay_for_the_grace_period,
    immediate_sync_downloads_every_package_once,
    channels_created_through_the_api_and_imported_keys,
);

async fn promotion_story(backend: Backend) {
    // approved keeps everything (`retain = "all"`): stored at promotion, whatever upstream
    // does later (the default, `used`, has its own tests in retention.rs).
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    p.config.channels[1].retain = Retain::All;
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();

    // Sync: a snapshot; testing follows the source; approved is not published yet.
    let first = s.sync().await;
    let s1 = first.snapshot.clone().expect("first sync snapshots");
    assert_eq!(first.followed_by, ["testing"]);
    let again = s.sync().await;
    assert_eq!(
        again.snapshot, None,
        "an unchanged upstream creates nothing"
    );

    let testing_host = s.host("host-testing", "testing");
    let approved_host = s.host("host-approved", "approved");
    assert_eq!(candidate(&testing_host, "foo-utils").await, "1.4.2-1");
    assert!(
        !approved_host.update().await.unwrap().success(),
        "an unpublished channel has no Release"
    );

    let moved = s.promote(&[]).await.unwrap();
    assert_eq!(moved.to_snapshot, s1);
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    assert_eq!(candidate(&approved_host, "hello").await, "2.10-3");

    // Upstream publishes new versions: testing sees them after sync, approved does not.
    // foo-utils 1.4.2-2 needs the new hello-data.
    next_upstream_state(&mut s.repo);
    let second = s.sync().await;
    let s2 = second.snapshot.clone().expect("changed upstream snapshots");
    assert_eq!(candidate(&testing_host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    let diff = channels.diff(&s1, &s2).await.unwrap();
    let upgraded: Vec<_> = diff
        .upgraded
        .iter()
        .filter(|c| c.suite == "stable" && c.architecture != "arm64")
        .map(|c| (c.name.as_str(), c.to.as_deref().unwrap()))
        .collect();
    assert_eq!(
        upgraded,
        [
            ("contrib-tool", "1:1.0-1"),
            ("foo-utils", "1.4.2-2"),
            ("hello-data", "2.10-4")
        ]
    );
    assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.downgraded.is_empty());

    // --only moves foo-utils and the dependency approved lacks (hello-data >= 2.10-4);
    // contrib-tool stays.
    s.promote(&["foo-utils"]).await.unwrap();
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&approved_host, "hello-data").await, "2.10-4");
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );

    // A hold keeps contrib-tool at approved's version across a whole promotion.
    assert!(channels
        .hold("approved", "contrib-tool", &Actor::new("test"))
        .await
        .unwrap());
    s.promote(&[]).await.unwrap();
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );
    assert!(channels
        .unhold("approved", "contrib-tool", &Actor::new("test"))
        .await
        .unwrap());
    s.promote(&[]).await.unwrap();
    assert_eq!(candidate(&approved_host, "contrib-tool").await, "1:1.0-1");

    // Upstream deletes a promoted .deb: approved still serves it (stored at promotion).
    let promoted = s.repo.package_in("stable", "foo-utils", "amd64").clone();
    assert_eq!(promoted.version, "1.4.2-2");
    fs_err::remove_file(s.repo.path(&promoted.pool_path)).unwrap();
    approved_host
        .download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert!(approved_host
        .downloaded_files()
        .unwrap()
        .iter()
        .any(|f| f.ends_with("foo-utils_1.4.2-2_amd64.deb")));

    // Rollback restores the previous indices, then an explicit earlier snapshot.
    channels
        .rollback("approved", None, &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );
    let back = channels
        .rollback("approved", Some(&s1), &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(back.to_snapshot, s1);
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    assert_eq!(candidate(&approved_host, "hello-data").await, "2.10-3");

    // History and audit record every move.
    let history = channels.history("approved", 100).await.unwrap();
    let actions: Vec<_> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(
        actions,
        ["rollback", "rollback", "promote", "promote", "promote", "promote"]
    );
    let audit = channels
        .catalog()
        .audit(&AuditFilter {
            channel: Some("approved".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(audit
        .iter()
        .any(|e| e.entry.action == AuditAction::Hold && e.entry.actor == "test"));
    assert!(audit
        .iter()
        .any(|e| e.entry.comment.as_deref() == Some("ticket 42")));
    s.app.stop().await;
}

async fn refusals_are_clear(backend: Backend) {
    let s = Setup::new(backend, Duration::from_secs(72 * 3600)).await;
    s.sync().await;
    let err = s.promote(&[]).await.unwrap_err();
    assert!(
        matches!(&err, ChannelsError::Refused(m) if m.contains("requires 3d") && m.contains("min_soak")),
        "{err}"
    );
    let channels = &s.app.state.channels;
    let err = channels
        .promote(
            &PromoteRequest {
                from: "testing".into(),
                to: "nowhere".into(),
                only: vec![],
            },
            &Actor::new("test"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_channel", "{err}");
    assert!(err.to_string().contains("approved, testing"), "{err}");
    let err = channels
        .promote(
            &PromoteRequest {
                from: "approved".into(),
                to: "testing".into(),
                only: vec![],
            },
            &Actor::new("test"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unpublished", "{err}");
    let err = channels
        .hold("approved", "bad name", &Actor::new("test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
    let err = channels
        .rollback("testing", None, &Actor::new("test"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no earlier snapshot"), "{err}");
    // Nothing moved.
    assert!(channels
        .catalog()
        .channel("approved")
        .await
        .unwrap()
        .unwrap()
        .snapshot_id
        .is_none());
    // Bad channel names in URLs are a 404, not an error page.
    let r = client()
        .get(format!(
            "{}/channels/..%2f/dists/stable/InRelease",
            s.app.url
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 404 || r.status() == 400, "{}", r.status());
}

/// Runs the `aptgate` CLI against the test server; returns stdout, panics with stderr.
fn cli(s: &Setup, token: &str, args: &[&str]) -> Result<String, String> {
    cli_at(&s.app.url, token, args)
}

fn cli_at(url: &str, token: &str, args: &[&str]) -> Result<String, String> {
    let out = aptgate_command()
        .args(["--server", url, "--token", token])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn admin_api_and_cli(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token_file = s.app.data_dir().join("admin-token");
    let token = fs_err::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs_err::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    // Without the token: 401 with a JSON error; the OpenAPI document is public.
    let r = client()
        .get(format!("{}/api/v1/channels", s.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let openapi: serde_json::Value = client()
        .get(format!("{}/api/v1/openapi.json", s.app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/api/v1/promote"]["post"].is_object());

    // The CLI goes through the API.
    let err = cli(&s, "wrong", &["channel", "list"]).unwrap_err();
    assert!(err.contains("unauthorized"), "{err}");
    let out = cli(&s, &token, &["sync"]).unwrap();
    assert!(
        out.contains("new snapshot") && out.contains("moved testing"),
        "{out}"
    );
    let out = cli(
        &s,
        &token,
        &[
            "promote",
            "--from",
            "testing",
            "--to",
            "approved",
            "--comment",
            "CAB 7",
        ],
    )
    .unwrap();
    assert!(out.contains("approved: (unpublished) ->"), "{out}");
    let err = cli(
        &s,
        &token,
        &["promote", "--from", "testing", "--to", "nope"],
    )
    .unwrap_err();
    assert!(
        err.contains("unknown channel") && err.contains("unknown_channel"),
        "{err}"
    );
    let out = cli(
        &s,
        &token,
        &["hold", "approved", "hello", "--comment", "vendor bug"],
    )
    .unwrap();
    assert!(out.contains("now held"), "{out}");
    let out = cli(&s, &token, &["channel", "history", "approved"]).unwrap();
    assert!(out.contains("promote") && out.contains("CAB 7"), "{out}");
    let out = cli(&s, &token, &["audit", "--channel", "approved", "--json"]).unwrap();
    let actions: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].to_string())
        .collect();
    assert_eq!(actions, ["\"hold\"", "\"promote\""]);
    let key = cli(&s, &token, &["key", "show"]).unwrap();
    assert!(
        key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{key}"
    );
    let snapshots = cli(&s, &token, &["snapshot", "list", "--json"]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&snapshots).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let shown = cli(&s, &token, &["snapshot", "show", &id]).unwrap();
    assert!(shown.contains("main/binary-amd64"), "{shown}");
    let diff = cli(&s, &token, &["snapshot", "diff", &id, &id]).unwrap();
    assert!(
        diff.contains("0 added, 0 removed, 0 upgraded, 0 downgraded"),
        "{diff}"
    );
}

async fn concurrent_promotions_serialize(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    s.sync().await;
    // A second server instance on the same catalog and data directory (as behind a load
    // balancer): its promotions race this one's.
    let other = aptgate::AppState::open(&s.app.config, &s.app.config.sources)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let channels = if i % 2 == 0 {
            s.app.state.channels.clone()
        } else {
            other.channels.clone()
        };
        tasks.push(tokio::spawn(async move {
            channels
                .promote(
                    &PromoteRequest {
                        from: "testing".into(),
                        to: "approved".into(),
                        only: Vec::new(),
                    },
                    &Actor::new(format!("admin-{i}")),
                )
                .await
        }));
    }
    // They serialize: every one moves the channel, none is lost or fails.
    let mut moved = 0;
    for task in tasks {
        task.await.unwrap().unwrap();
        moved += 1;
    }
    let history = s.app.state.channels.history("approved", 100).await.unwrap();
    let generations: Vec<i64> = history.iter().rev().map(|h| h.generation).collect();
    assert_eq!(generations, (1..=moved).collect::<Vec<i64>>());
    let state = s
        .app
        .state
        .channels
        .catalog()
        .channel("approved")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.generation, moved);
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
}

async fn a_killed_promotion_leaves_the_channel_consistent(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(2 << 20);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    // Everything is stored before approved moves: the promotion takes a while.
    p.config.channels[1].retain = Retain::All;
    let dir = p.dir.path().to_owned();
    let config_path = dir.join("aptgate.toml");
    let mut server = ServerProcess::start(&p.config, config_path.clone());
    let token = fs_err::read_to_string(p.config.data_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let key = dir.join("aptgate.asc");
    fetch_key(&server.url, &key).await;
    cli_at(&server.url, &token, &["sync"]).unwrap();
    cli_at(
        &server.url,
        &token,
        &["promote", "--from", "testing", "--to", "approved"],
    )
    .unwrap();
    let old = cli_at(&server.url, &token, &["channel", "list"]).unwrap();

    // A new upstream state whose promotion takes a while: the new big .deb arrives slowly.
    p.repo.bump("foo-utils", "1.4.2-2").unwrap();
    let big = p.repo.bump(LARGE_PACKAGE, "1.0-2").unwrap();
    p.upstream.misbehave(
        &big.pool_path,
        Misbehaviour::Throttle {
            bytes_per_sec: 2 << 20,
        },
    );
    cli_at(&server.url, &token, &["sync"]).unwrap();
    let new_snapshot = cli_at(&server.url, &token, &["channel", "list"])
        .unwrap()
        .lines()
        .find(|l| l.starts_with("testing"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(!old.contains(&new_snapshot));

    for delay_ms in [150, 600, 1200] {
        let promote = aptgate_command()
            .args(["--server", &server.url, "--token", &token])
            .args(["promote", "--from", "testing", "--to", "approved"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill();
        let _ = tokio::task::spawn_blocking(move || {
            let mut promote = promote;
            promote.wait()
        })
        .await;
        server = ServerProcess::start(&p.config, config_path.clone());

        // The channel is at the old snapshot or the new one, and apt agrees with it.
        let list = cli_at(&server.url, &token, &["channel", "list"]).unwrap();
        let moved = list
            .lines()
            .any(|l| l.starts_with("approved") && l.contains(&new_snapshot));
        eprintln!("killed at {delay_ms} ms: channel moved = {moved}");
        let host = host_at(&dir, "host", &server.url, "approved", &key);
        let expected = if moved { "1.4.2-2" } else { "1.4.2-1" };
        assert_eq!(
            candidate(&host, "foo-utils").await,
            expected,
            "after a kill at {delay_ms} ms"
        );
        host.download(&["foo-utils", LARGE_PACKAGE])
            .await
            .unwrap()
            .assert_success();
        if moved {
            cli_at(&server.url, &token, &["rollback", "approved"]).unwrap();
        }
    }
    // Uninterrupted, the promotion completes.
    cli_at(
        &server.url,
        &token,
        &["promote", "--from", "testing", "--to", "approved"],
    )
    .unwrap();
    let host = host_at(&dir, "host", &server.url, "approved", &key);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    server.kill();
}

async fn keys_rotate_and_releases_are_resigned(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    p.config.publish.valid_until = Duration::from_secs(3600);
    let s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    let get = |path: &str| {
        let url = format!("{}/channels/testing/dists/stable/{path}", s.app.url);
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    let in_release = String::from_utf8(get("InRelease").await.to_vec()).unwrap();
    assert!(in_release.contains("Valid-Until: "), "{in_release}");
    let packages = get("main/binary-amd64/Packages.xz").await;

    // Not due yet: nothing is re-signed; a forced re-sign changes only the signed Release.
    assert!(channels.resign_expiring().await.unwrap().is_empty());
    // Date and Valid-Until have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    channels
        .resign("testing", &Actor::new("test"))
        .await
        .unwrap();
    let resigned = String::from_utf8(get("InRelease").await.to_vec()).unwrap();
    assert_ne!(resigned, in_release);
    assert_eq!(get("main/binary-amd64/Packages.xz").await, packages);
    let history = channels.history("testing", 10).await.unwrap();
    assert_eq!(history[0].action.as_str(), "resign");
    assert_eq!(history[0].snapshot_id, history[1].snapshot_id);

    // Rotation: a host that only trusts the old key and one that got both keys.
    let old_key_host = s.host("old-key", "testing");
    candidate(&old_key_host, "hello").await;
    let old = channels.keys()[0].fingerprint.clone();
    let added = channels.add_key(&Actor::new("test")).await.unwrap();
    let both = s.dir.path().join("both.asc");
    fetch_key(&s.app.url, &both).await;
    let new_host = host_at(s.dir.path(), "new-key", &s.app.url, "testing", &both);
    assert_eq!(candidate(&old_key_host, "hello").await, "2.10-3");
    assert_eq!(candidate(&new_host, "hello").await, "2.10-3");

    // The end of the rotation: the old key stops signing; the last key cannot be retired.
    channels
        .retire_key(&old, &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(candidate(&new_host, "hello").await, "2.10-3");
    let refused = old_key_host.update().await.unwrap();
    assert!(
        !refused.success(),
        "a host trusting only the retired key must fail"
    );
    let err = channels
        .retire_key(&added.fingerprint, &Actor::new("test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
    let audit = channels
        .catalog()
        .audit(&AuditFilter {
            action: Some(AuditAction::Key),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 3, "generated, added, retired: {audit:?}");
}

async fn snapshots_filter_merge_pull_and_publish(backend: Backend) {
    let mut s = Setup::new(backend, Duration::ZERO).await;
    let channels = s.app.state.channels.clone();
    let actor = Actor::new("test");
    let s1 = s.sync().await.snapshot.unwrap();
    next_upstream_state(&mut s.repo);
    let s2 = s.sync().await.snapshot.unwrap();

    // filter: only foo-* survives.
    let filter = aptgate_channels::snapshots::SnapshotFilter {
        names: vec!["foo-*".into()],
        ..Default::default()
    };
    let filtered = channels
        .filter_snapshot(&s2, &filter, None, &actor)
        .await
        .unwrap();
    let manifest = channels.manifest(&filtered).await.unwrap();
    assert_eq!(
        manifest.package_count(),
        2,
        "foo-utils in stable and testing"
    );
    let sections = aptgate_channels::snapshots::SnapshotFilter {
        excludes: vec!["*".into()],
        ..Default::default()
    };
    let empty = channels
        .filter_snapshot(&s2, &sections, None, &actor)
        .await
        .unwrap();
    assert_eq!(channels.manifest(&empty).await.unwrap().package_count(), 0);

    // merge (through the CLI and API): the highest version of each package wins.
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let out = cli(
        &s,
        &token,
        &["snapshot", "merge", &s1, &filtered.id, "--as", "merged"],
    )
    .unwrap();
    assert!(out.contains("created snapshot"), "{out}");
    let diff = channels.diff(&s1, "merged").await.unwrap();
    let upgraded: Vec<_> = diff.upgraded.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(upgraded, ["foo-utils", "foo-utils"]);
    assert!(diff.removed.is_empty() && diff.added.is_empty());

    // pull: s1 plus foo-utils from s2 and the hello-data it needs; contrib-tool stays old.
    let pulled = channels
        .pull_snapshot(
            &s1,
            &s2,
            &["foo-utils".into()],
            Some("s1-plus-foo".into()),
            &actor,
        )
        .await
        .unwrap();
    assert_eq!(
        channels.snapshot("s1-plus-foo").await.unwrap().id,
        pulled.id
    );
    let err = channels
        .pull_snapshot(
            &s1,
            &s2,
            &["foo-utils".into()],
            Some("s1-plus-foo".into()),
            &actor,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");
    let err = channels
        .pull_snapshot(&s1, &s2, &["no-such-package".into()], None, &actor)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-package"), "{err}");

    // publish into the entry channel; apt sees exactly the pulled set.
    channels
        .publish_snapshot("testing", "s1-plus-foo", &actor)
        .await
        .unwrap();
    let host = s.host("host", "testing");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&host, "hello-data").await, "2.10-4");
    assert_eq!(candidate(&host, "contrib-tool").await, "1:0.9+dfsg-2");
    let err = channels
        .publish_snapshot("approved", &s1, &actor)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only takes promotions from testing"),
        "{err}"
    );
}

async fn auto_approval_promotes_versions_first_seen_long_enough_ago(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    p.config.channels[1].auto_approve_after = Duration::from_secs(7 * 86400);
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    s.promote(&[]).await.unwrap();
    assert!(channels.auto_approve("approved").await.unwrap().is_none());

    next_upstream_state(&mut s.repo);
    s.sync().await;
    channels
        .hold("approved", "contrib-tool", &Actor::new("test"))
        .await
        .unwrap();

    // Seen just now: too new.
    assert!(channels.auto_approve("approved").await.unwrap().is_none());
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");

    // Eight days on, the new versions qualify; the held package stays.
    let week = aptgate_channels::now() + 8 * 86400;
    let moved = channels
        .auto_approve_at("approved", week)
        .await
        .unwrap()
        .expect("old enough versions are promoted");
    assert!(moved.diff.upgraded >= 2, "{:?}", moved.diff);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&host, "hello-data").await, "2.10-4");
    assert_eq!(candidate(&host, "contrib-tool").await, "1:0.9+dfsg-2");
    assert!(channels
        .auto_approve_at("approved", week)
        .await
        .unwrap()
        .is_none());
    let history = channels.history("approved", 1).await.unwrap();
    assert_eq!(history[0].actor, "auto-approve");
    assert!(history[0].comment.as_deref().unwrap().contains("7d"));
    let err = channels.auto_approve("testing").await.unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
}

async fn a_channels_past_snapshots_stay_addressable(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    p.config.publish.public_url = "http://mirror.example.org:8470/".into();
    let mut s = Setup::from_parts(p).await;
    let s1 = s.sync().await.snapshot.unwrap();
    s.promote(&[]).await.unwrap();
    s.repo.bump("foo-utils", "1.4.2-2").unwrap();
    s.sync().await;
    s.promote(&[]).await.unwrap();

    let url = format!("{}/channels/approved/dists/stable/InRelease", s.app.url);
    let in_release = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        in_release.contains(
            "Snapshots: http://mirror.example.org:8470/channels/approved/snapshots/@SNAPSHOTID@"
        ),
        "{in_release}"
    );

    // apt pointed at the snapshot path (what `apt update --snapshot ID` does) gets the
    // channel as it was, packages included.
    let current = s.host("now", "approved");
    assert_eq!(candidate(&current, "foo-utils").await, "1.4.2-2");
    let past = s.host("past", &format!("approved/snapshots/{s1}"));
    assert_eq!(candidate(&past, "foo-utils").await, "1.4.2-1");
    past.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert!(past
        .downloaded_files()
        .unwrap()
        .iter()
        .any(|f| f.ends_with("foo-utils_1.4.2-1_amd64.deb")));

    // Only the channel's own history is addressable.
    let filtered = s
        .app
        .state
        .channels
        .filter_snapshot(&s1, &Default::default(), None, &Actor::new("test"))
        .await
        .unwrap();
    for id in [filtered.id.as_str(), "no-such-snapshot"] {
        let r = client()
            .get(format!(
                "{}/channels/approved/snapshots/{id}/dists/stable/InRelease",
                s.app.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id}");
    }
}

async fn indices_reuse_upstream_bytes_and_superseded_ones_stay_for_the_grace_period(
    backend: Backend,
) {
    let s = Setup::new(backend, Duration::ZERO).await;
    s.sync().await;
    let get = |url: String| async move {
        let r = client().get(url).send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    let index = "dists/stable/main/binary-amd64/Packages.xz";
    let (status, published) = get(format!("{}/channels/testing/{index}", s.app.url)).await;
    assert_eq!(status, 200);
    let upstream = fs_err::read(s.repo.path(index)).unwrap();
    assert_eq!(
        published.as_ref(),
        upstream.as_slice(),
        "upstream's bytes, reused"
    );

    // After testing moves on, the old index stays reachable by hash (grace period 1 day).
    let mut repo = s.repo;
    repo.bump("foo-utils", "1.4.2-2").unwrap();
    let s = Setup { repo, ..s };
    s.sync().await;
    let old_hash = hex::encode(sha2::Sha256::digest(&published));
    let by_hash = format!(
        "{}/channels/testing/dists/stable/main/binary-amd64/by-hash/SHA256/{old_hash}",
        s.app.url
    );
    let (status, body) = get(by_hash.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body, published);
    let (status, _) = get(format!("{}/channels/testing/{index}", s.app.url)).await;
    assert_eq!(status, 200);
    // Not a hash the channel ever published: 404.
    let (status, _) = get(by_hash.replace(&old_hash[..8], "00000000")).await;
    assert_eq!(status, 404);
}

async fn immediate_sync_downloads_every_package_once(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    p.config.sources[0].policy = aptgate_config::FetchPolicy::Immediate;
    let s = Setup::from_parts(p).await;
    let upstream = &s.upstream;
    let outcome = s.sync().await;
    let debs: std::collections::BTreeSet<_> = s
        .repo
        .packages()
        .iter()
        .map(|p| p.pool_path.clone())
        .collect();
    assert_eq!(outcome.downloaded as usize, debs.len());
    for path in &debs {
        assert_eq!(upstream.count(path), 1, "{path}");
        let pkg = s
            .repo
            .packages()
            .iter()
            .find(|p| &p.pool_path == path)
            .unwrap();
        assert!(s.app.blob_path(&pkg.sha256).is_file(), "{path} stored");
    }
    // A second run has nothing left to download.
    let again = s.sync().await;
    assert_eq!(again.downloaded, 0);
    assert!(debs.iter().all(|p| upstream.count(p) == 1));
}

async fn channels_created_through_the_api_and_imported_keys(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    s.sync().await;
    cli(
        &s,
        &token,
        &[
            "channel",
            "create",
            "site-berlin",
            "--promotes-from",
            "testing",
            "--min-soak",
            "0s",
        ],
    )
    .unwrap();
    let err = cli(&s, &token, &["channel", "create", "site-berlin"]).unwrap_err();
    assert!(err.contains("exists"), "{err}");
    let err = cli(
        &s,
        &token,
        &["channel", "create", "site-paris", "--promotes-from", "nope"],
    )
    .unwrap_err();
    assert!(err.contains("unknown_channel"), "{err}");
    let err = cli(&s, &token, &["channel", "create", "Bad/Name"]).unwrap_err();
    assert!(err.contains("channel name"), "{err}");
    cli(
        &s,
        &token,
        &["promote", "--from", "testing", "--to", "site-berlin"],
    )
    .unwrap();
    let host = s.host("berlin", "site-berlin");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    // It survives a restart (another instance opening the same catalog sees it).
    let other = aptgate::AppState::open(&s.app.config, &s.app.config.sources)
        .await
        .unwrap();
    assert!(other
        .channels
        .channel_configs()
        .await
        .iter()
        .any(|c| c.name.as_str() == "site-berlin"));

    // Import a key made elsewhere (gpg, no passphrase): it signs from now on.
    let gnupg = s.dir.path().join("gnupg");
    fs_err::create_dir_all(&gnupg).unwrap();
    let gpg = |args: &[&str]| {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "imported <imported@example.org>",
        "rsa2048",
        "sign",
        "never",
    ]);
    let secret = s.dir.path().join("secret.asc");
    fs_err::write(&secret, gpg(&["--armor", "--export-secret-keys"])).unwrap();
    let public = s.dir.path().join("imported.asc");
    fs_err::write(&public, gpg(&["--armor", "--export"])).unwrap();
    let out = cli(&s, &token, &["key", "import", secret.to_str().unwrap()]).unwrap();
    assert!(out.contains("imported signing key"), "{out}");
    let listed = cli(&s, &token, &["key", "list"]).unwrap();
    assert_eq!(
        listed.lines().count(),
        3,
        "header, generated, imported:\n{listed}"
    );
    let trusting_imported = host_at(
        s.dir.path(),
        "imported-only",
        &s.app.url,
        "site-berlin",
        &public,
    );
    assert_eq!(candidate(&trusting_imported, "foo-utils").await, "1.4.2-1");
    let err = cli(&s, &token, &["key", "import", secret.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("already"), "{err}");
}
