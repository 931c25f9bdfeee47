//! Replicas under faults (the canonical server on SQLite; its catalog's backends are covered
//! by `replica_sync.rs`): corrupted and truncated blobs are fetched again and never stored; a
//! tampered manifest or a lower sequence number is refused and the applied state kept; with
//! the parent down the replica keeps serving and says so; an `immediate` replica never serves
//! a channel before every package is here, and one killed mid-sync serves its previous state
//! and completes the sync on the next run; its packages travel in batches, never one by one.

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

/// A replica `branch-1` of `s` through `parent`, carrying both channels `immediate`.
fn immediate_replica(s: &Setup, parent: &str, token: &str) -> aptgate_config::Config {
    with_policy(
        replica_config(
            &s.dir.path().join("r"),
            parent,
            &fingerprint(s),
            token,
            "branch-1",
        ),
        &["testing", "approved"],
        FetchPolicy::Immediate,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_and_truncated_blobs_are_fetched_again_and_never_stored() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let proxy = FaultProxy::start(&s.app.url).await;
    proxy.set(Fault::CorruptBlobs(3));
    let token = create_token(&s, "branch-1").await;
    let mut config = immediate_replica(&s, &proxy.url, &token);
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
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(Backend::Sqlite, Duration::ZERO, spec).await;
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
    let config = immediate_replica(&s, &proxy.url, &token);
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

#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_replica_fetches_its_packages_in_batches_and_a_batch_needs_a_token() {
    // A canonical that stores every package (an `immediate` source): a parent frames only
    // what it holds, and one that fetches lazily leaves its packages to the single route.
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(Backend::Sqlite, Duration::ZERO, spec).await;
    p.config.sources[0].policy = FetchPolicy::Immediate;
    let s = Setup::from_parts(p).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let proxy = FaultProxy::start(&s.app.url).await;
    let token = create_token(&s, "branch-1").await;
    let config = immediate_replica(&s, &proxy.url, &token);
    let replica = start_replica(&config);
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    assert_eq!(status(&replica.url).await["blobs_missing"], 0);
    let mut debs = all_package_digests(&s.app.url, "testing").await;
    debs.extend(all_package_digests(&s.app.url, "approved").await);
    assert!(proxy.batch_requests() >= 1);
    let alone: HashSet<String> = proxy.single_blobs().into_iter().collect();
    assert!(
        debs.is_disjoint(&alone),
        "no package travelled alone: {:?}",
        debs.intersection(&alone).collect::<Vec<_>>()
    );
    assert_store_intact(&config.data_dir);

    // A batch answer corrupted or cut on the way: nothing bad is stored, and what the batch
    // did not bring intact is fetched alone.
    for (n, fault) in [Fault::CorruptBatches(1), Fault::TruncateBatches(1)]
        .into_iter()
        .enumerate()
    {
        let before = proxy.single_blobs().len();
        proxy.set(fault.clone());
        let mut fresh = config.clone();
        fresh.data_dir = s.dir.path().join(format!("r-{n}"));
        let again = start_replica(&fresh);
        until_applied(&again.url, seq).await;
        assert!(
            matches!(
                proxy.fault(),
                Fault::CorruptBatches(0) | Fault::TruncateBatches(0)
            ),
            "{fault:?} was served"
        );
        assert_eq!(status(&again.url).await["blobs_missing"], 0);
        assert_store_intact(&fresh.data_dir);
        let alone: HashSet<String> = proxy.single_blobs()[before..].iter().cloned().collect();
        assert!(
            !debs.is_disjoint(&alone),
            "after {fault:?} some packages were fetched alone: {alone:?}, {} batches, {}",
            proxy.batch_requests(),
            status(&again.url).await
        );
        again.kill();
    }

    // The canonical's batch route: the token is checked before the body is read, and only
    // what is held is framed.
    let url = format!("{}/api/v1/replica/blobs", s.app.url);
    let post = |token: Option<&str>, body: String| {
        let mut request = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post(None, "{".into()).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong"), "{".into()).await.unwrap().status(), 401);
    assert_eq!(post(Some(&token), "{".into()).await.unwrap().status(), 400);
    let deb = debs.iter().next().unwrap();
    let stored = fs_err::read(
        config
            .data_dir
            .join(format!("store/blobs/sha256/{}/{deb}", &deb[..2])),
    )
    .unwrap();
    let absent = "ab".repeat(32);
    let body = serde_json::json!({"blobs": [
        {"sha256": absent, "size": 3},
        {"sha256": deb, "size": stored.len()},
    ]});
    let answer = post(Some(&token), body.to_string()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut expected = format!("{deb} {}\n", stored.len()).into_bytes();
    expected.extend_from_slice(&stored);
    assert_eq!(answer.bytes().await.unwrap().as_ref(), expected.as_slice());
}
