//! Channels end to end with real apt, on SQLite and on PostgreSQL: sync → testing (follows
//! the source) → promote → approved, holds, selective promotion, rollback, refusals, derived
//! snapshots, auto-approval, past snapshots, index reuse and by-hash, immediate sync.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::{Actor, ChannelsError, PromoteRequest};
use aptgate_config::Retain;
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use sha2::Digest as _;
use std::time::Duration;

both_backends!(
    promotion_story,
    refusals_are_clear,
    snapshots_filter_merge_pull_and_publish,
    auto_approval_promotes_versions_first_seen_long_enough_ago,
    a_channels_past_snapshots_stay_addressable,
    indices_reuse_upstream_bytes_and_superseded_ones_stay_for_the_grace_period,
    immediate_sync_downloads_every_package_once,
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
