//! A signing key rotation on the canonical server (`key add`, later `key retire OLD`) is
//! followed by its replicas and their children without a new `replica init`: a manifest
//! signed by a key they trust names the new key, which they trust from then on, and the
//! retired key is trusted no more — across a restart too. A replica that missed the whole
//! rotation refuses the new manifests and says what to do. (The canonical on SQLite; its
//! catalog's backends are covered by `replica_sync.rs`.)

use aptgate_channels::Actor;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::replicas::*;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Whether `server` serves `channel`'s Release files and the public keys as `canonical` does.
async fn serves_as(canonical: &str, server: &str, channel: &str) -> bool {
    same_release_files(canonical, server, channel).await
        && fetch(&format!("{canonical}/keys/aptgate.asc")).await
            == fetch(&format!("{server}/keys/aptgate.asc")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_follow_a_key_rotation_and_stop_trusting_the_retired_key() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let canonical = s.app.url.clone();
    let channels = s.app.state.channels.clone();
    let old = fingerprint(&s);
    let seq = || async { s.app.state.replicas.current().await.unwrap().0 };

    let Chain {
        replica,
        child,
        child_config,
        ..
    } = start_chain(&s).await;
    let first = seq().await;
    until_applied(&replica.url, first).await;
    until_applied(&child.url, first).await;

    // The rotation's overlap: both keys sign; the replicas learn the new one.
    let new = channels
        .add_key(&Actor::new("test"))
        .await
        .unwrap()
        .fingerprint;
    assert_ne!(new, old);
    let overlap = seq().await;
    assert!(overlap > first, "a key change moves the feed");
    for server in [&replica.url, &child.url] {
        until_applied(server, overlap).await;
        assert!(serves_as(&canonical, server, "approved").await, "{server}");
    }

    // The old key retired: only the new one signs, and the replicas follow.
    channels
        .retire_key(&old, &Actor::new("test"))
        .await
        .unwrap();
    let retired = seq().await;
    assert!(retired > overlap);
    for server in [&replica.url, &child.url] {
        until_applied(server, retired).await;
        assert!(serves_as(&canonical, server, "approved").await, "{server}");
    }

    // A restart loads the state with the learned key (config still pins the old one) and
    // serves at once; the next promotion is applied too.
    drop(child);
    let child = start_replica(&child_config);
    assert_eq!(status(&child.url).await["seq_applied"], retired);
    next_upstream_state(&mut s.repo);
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let promoted = seq().await;
    for server in [&replica.url, &child.url] {
        until_applied(server, promoted).await;
        assert!(serves_as(&canonical, server, "approved").await, "{server}");
    }

    // A replica set up with the old key that never saw the overlap: it cannot tell the new
    // key from a stranger's, so it refuses, serves nothing, and says what to do.
    let token = create_token(&s, "branch-2").await;
    let late = start_replica(&replica_config(
        &s.dir.path().join("branch-2"),
        &canonical,
        &old,
        &token,
        "branch-2",
    ));
    until("the late replica explains", MINUTE, || async {
        status(&late.url).await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replica init"))
    })
    .await;
    assert!(status(&late.url).await["seq_applied"].is_null());
    let (code, _) = fetch(&format!(
        "{}/channels/approved/dists/stable/InRelease",
        late.url
    ))
    .await;
    assert_ne!(code, 200, "nothing is served unverified");
}
