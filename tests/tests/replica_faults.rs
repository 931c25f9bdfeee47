//! Replicas under faults (the canonical server on SQLite; its catalog's backends are covered
//! by `replica_sync.rs`): corrupted and truncated blobs are fetched again and never stored; a
//! tampered manifest or a lower sequence number is refused and the applied state kept; with
//! the parent down the replica keeps serving and says so; an `immediate` replica never serves
//! a channel before every package is here, and one killed mid-sync serves its previous state
//! and completes the sync on the next run.

use aptgate_config::FetchPolicy;
use aptgate_tests::app::client;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::proxy::CuttableProxy;
use aptgate_tests::replicas::*;
use std::collections::HashSet;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

async fn in_release(server: &str, channel: &str) -> (u16, Vec<u8>) {
    fetch(&format!(
        "{server}/channels/{channel}/dists/stable/InRelease"
    ))
    .await
}

async fn error_mentions(url: &str, needle: &str) -> bool {
    status(url).await["last_error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(needle))
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_and_truncated_blobs_are_fetched_again_and_never_stored() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let proxy = FaultProxy::start(&s.app.url).await;
    proxy.set(Fault::CorruptBlobs(3));
    let token = create_token(&s, "branch-1").await;
    let mut config = with_policy(
        replica_config(
            &s.dir.path().join("r"),
            &proxy.url,
            &fingerprint(&s),
            &token,
            "branch-1",
        ),
        &["testing", "approved"],
        FetchPolicy::Immediate,
    );
    config.retention.grace = Duration::ZERO;
    let replica = start_replica(&config);
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    assert!(
        matches!(proxy.fault(), Fault::CorruptBlobs(0)),
        "every corruption was served"
    );
    assert_eq!(
        status(&replica.url).await["blobs_missing"],
        0,
        "immediate: every package stored"
    );
    assert!(assert_store_intact(&config.data_dir) > 10);

    let before: HashSet<String> = package_digests(&s.app.url, "approved").await;
    proxy.set(Fault::TruncateBlobs(3));
    next_upstream_state(&mut s.repo);
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    // What neither channel lists any more is deleted after the switch (grace 0 here).
    let gone: Vec<String> = before
        .difference(&package_digests(&s.app.url, "approved").await)
        .cloned()
        .collect();
    assert!(!gone.is_empty());
    let stored = |hex: &String| {
        config
            .data_dir
            .join(format!("store/blobs/sha256/{}/{hex}", &hex[..2]))
            .exists()
    };
    until("superseded packages are collected", MINUTE, || async {
        !gone.iter().any(stored)
    })
    .await;
    assert!(
        matches!(proxy.fault(), Fault::TruncateBlobs(0)),
        "every cut was served"
    );
    assert_store_intact(&config.data_dir);
    assert_eq!(
        in_release(&replica.url, "approved").await,
        in_release(&s.app.url, "approved").await
    );
    let key = s.dir.path().join("k.asc");
    fetch_key(&replica.url, &key).await;
    let host = host_at(s.dir.path(), "host", &replica.url, "approved", &key);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();

    // A package deleted from its store by hand: the next start checks the state through and
    // fetches it again (skipping by digest what is there).
    replica.kill();
    let deb = package_digests(&s.app.url, "approved")
        .await
        .into_iter()
        .next()
        .unwrap();
    let blob = config
        .data_dir
        .join(format!("store/blobs/sha256/{}/{deb}", &deb[..2]));
    fs_err::remove_file(blob).unwrap();
    let replica = start_replica(&config);
    until("the deleted package is fetched again", MINUTE, || async {
        status(&replica.url).await["blobs_missing"] == 0
    })
    .await;
    assert_store_intact(&config.data_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_manifest_or_a_lower_sequence_is_refused_and_the_applied_state_kept() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let proxy = FaultProxy::start(&s.app.url).await;
    let token = create_token(&s, "branch-1").await;
    let fpr = fingerprint(&s);
    let dir = s.dir.path().join("r");
    let replica = start_replica(&replica_config(&dir, &proxy.url, &fpr, &token, "branch-1"));
    let first = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, first).await;
    let served = in_release(&replica.url, "testing").await;
    // Once its state is checked, the replica waits at the parent (a long poll), not in a loop.
    until("the replica long-polls", MINUTE, || async {
        proxy.manifest_query() == format!("after={first}&wait=3")
    })
    .await;

    // A manifest whose signed text was changed: refused, the applied state served.
    proxy.set(Fault::TamperManifest);
    next_upstream_state(&mut s.repo);
    s.sync().await;
    until("the tampered manifest is refused", MINUTE, || {
        error_mentions(&replica.url, "signature")
    })
    .await;
    assert_eq!(status(&replica.url).await["seq_applied"], first);
    assert_eq!(in_release(&replica.url, "testing").await, served);
    proxy.set(Fault::None);
    let second = s.app.state.replicas.current().await.unwrap().0;
    assert!(second > first);
    until_applied(&replica.url, second).await;
    let served = in_release(&replica.url, "testing").await;
    assert_eq!(served, in_release(&s.app.url, "testing").await);
    drop(replica);

    // A canonical server restored from an old backup (same key, a fresh catalog): its seq
    // is lower than the one applied. Refused; the replica keeps serving what it applied.
    let mut p = parts(Backend::Sqlite, Duration::ZERO, FixtureSpec::default()).await;
    let keys = p.config.data_dir.join("keys");
    fs_err::create_dir_all(&keys).unwrap();
    for entry in fs_err::read_dir(s.app.data_dir().join("keys")).unwrap() {
        let path = entry.unwrap().path();
        fs_err::copy(&path, keys.join(path.file_name().unwrap())).unwrap();
    }
    p.config.channels.truncate(1);
    let restored = Setup::from_parts(p).await;
    restored.sync().await;
    assert_eq!(fingerprint(&restored), fpr, "the same signing key");
    let restored_token = create_token(&restored, "branch-1").await;
    let restored_seq = restored.app.state.replicas.current().await.unwrap().0;
    assert!(restored_seq < second, "{restored_seq} < {second}");
    let replica = start_replica(&replica_config(
        &dir,
        &restored.app.url,
        &fpr,
        &restored_token,
        "branch-1",
    ));
    until("the lower seq is refused", MINUTE, || {
        error_mentions(&replica.url, "refusing to roll back")
    })
    .await;
    assert_eq!(status(&replica.url).await["seq_applied"], second);
    assert_eq!(in_release(&replica.url, "testing").await, served);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_its_parent_down_a_replica_keeps_serving_reports_it_and_catches_up() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let target = s.app.url.trim_start_matches("http://").parse().unwrap();
    let link = CuttableProxy::start(target).await;
    let token = create_token(&s, "branch-1").await;
    let replica = start_replica(&replica_config(
        &s.dir.path().join("r"),
        &format!("http://{}", link.addr()),
        &fingerprint(&s),
        &token,
        "branch-1",
    ));
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    let key = s.dir.path().join("k.asc");
    fetch_key(&replica.url, &key).await;
    let host = host_at(s.dir.path(), "host", &replica.url, "testing", &key);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");

    link.cut();
    until("the replica reports its parent unreachable", MINUTE, || {
        error_mentions(&replica.url, "cannot reach the parent")
    })
    .await;
    assert_eq!(
        candidate(&host, "foo-utils").await,
        "1.4.2-1",
        "still served"
    );
    let down = status(&replica.url).await;
    assert_eq!(down["seq_applied"], seq);
    // A package it has not stored yet cannot be fetched now: 503 with Retry-After (apt, or a
    // `mirror+file:` list, moves on), never a 404 or a short body.
    let (_, packages) = fetch(&format!(
        "{}/channels/testing/dists/stable/main/binary-amd64/Packages",
        replica.url
    ))
    .await;
    let packages = String::from_utf8(packages).unwrap();
    let pool = packages
        .lines()
        .find_map(|l| l.strip_prefix("Filename: "))
        .unwrap();
    let miss = client()
        .get(format!("{}/channels/testing/{pool}", replica.url))
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 503, "{pool} while the parent is down");
    assert!(miss.headers().contains_key("retry-after"));

    // A change while it is cut off: the canonical flags it behind (nobody fetched the change).
    next_upstream_state(&mut s.repo);
    s.sync().await;
    let admin = admin_token(s.app.data_dir());
    let replicas = || async {
        client()
            .get(format!("{}/api/v1/replicas", s.app.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(replicas().await["replicas"][0]["state"], "behind");

    // Back: the replica catches up and the canonical sees what happened.
    link.restore();
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    until("the canonical has the replica's report", MINUTE, || async {
        let list = replicas().await;
        list["replicas"][0]["state"] == "current"
            && list["replicas"][0]["report"]["seq_applied"] == seq
            && list["replicas"][0]["report"]["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot reach the parent"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_replica_switches_only_when_complete_and_a_killed_sync_resumes() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let proxy = FaultProxy::start(&s.app.url).await;
    let mut debs = package_digests(&s.app.url, "testing").await;
    debs.extend(package_digests(&s.app.url, "approved").await);
    assert!(!debs.is_empty());
    proxy.set(Fault::RefuseBlobs(debs.clone()));
    let token = create_token(&s, "branch-1").await;
    let config = with_policy(
        replica_config(
            &s.dir.path().join("r"),
            &proxy.url,
            &fingerprint(&s),
            &token,
            "branch-1",
        ),
        &["testing", "approved"],
        FetchPolicy::Immediate,
    );
    let replica = start_replica(&config);
    until("the sync fails on a refused package", MINUTE, || {
        error_mentions(&replica.url, "503")
    })
    .await;
    let partial = status(&replica.url).await;
    assert!(partial["seq_applied"].is_null(), "{partial}");
    assert_eq!(
        in_release(&replica.url, "testing").await.0,
        404,
        "nothing served before it is complete"
    );

    proxy.set(Fault::None);
    let first = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, first).await;
    assert_eq!(status(&replica.url).await["blobs_missing"], 0);
    let old = in_release(&replica.url, "testing").await;
    assert_eq!(old, in_release(&s.app.url, "testing").await);

    // A new state whose new packages cannot be fetched yet: the sync stops part-way.
    next_upstream_state(&mut s.repo);
    s.sync().await;
    let new: HashSet<String> = package_digests(&s.app.url, "testing")
        .await
        .difference(&debs)
        .cloned()
        .collect();
    assert!(!new.is_empty());
    proxy.set(Fault::RefuseBlobs(new));
    let second = s.app.state.replicas.current().await.unwrap().0;
    until("the replica is mid-sync", MINUTE, || async {
        let st = status(&replica.url).await;
        st["seq_seen"] == second && error_mentions(&replica.url, "503").await
    })
    .await;
    assert_eq!(
        in_release(&replica.url, "testing").await,
        old,
        "the old state until complete"
    );

    // Killed mid-sync (SIGKILL): the restart serves the previous state…
    replica.kill();
    let replica = start_replica(&config);
    assert_eq!(status(&replica.url).await["seq_applied"], first);
    assert_eq!(in_release(&replica.url, "testing").await, old);
    // …and completes the sync once the packages can be fetched.
    proxy.set(Fault::None);
    until_applied(&replica.url, second).await;
    assert_eq!(
        in_release(&replica.url, "testing").await,
        in_release(&s.app.url, "testing").await
    );
    assert_eq!(status(&replica.url).await["blobs_missing"], 0);
    assert_store_intact(&config.data_dir);
}
