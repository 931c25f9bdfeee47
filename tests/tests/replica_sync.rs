//! Replicas end to end, on SQLite and on PostgreSQL (the canonical's catalog): a replica and a
//! replica of that replica (real `aptgate serve` processes) follow the canonical server; a
//! promotion there is served by both within seconds with byte-identical Release files; apt
//! through either installs packages neither had stored (fetched from the parent on demand);
//! the canonical server lists both replicas with their lag, in its API, CLI and `/metrics`.

use aptgate_mirror::Sha256;
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::replicas::*;
use std::time::Duration;

both_backends!(a_promotion_is_served_by_a_replica_and_its_child_byte_identical);

async fn a_promotion_is_served_by_a_replica_and_its_child_byte_identical(backend: Backend) {
    let mut s = Setup::new(backend, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let canonical = s.app.url.clone();

    // A replica of the canonical server, and a child replica of that replica.
    let Chain {
        replica,
        child,
        token,
        ..
    } = start_chain(&s).await;
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until_applied(&replica.url, seq).await;
    until_applied(&child.url, seq).await;
    for server in [&replica.url, &child.url] {
        for channel in ["testing", "approved"] {
            assert!(
                same_release_files(&canonical, server, channel).await,
                "{server} serves {channel}'s Release files byte for byte"
            );
        }
        assert_eq!(
            fetch(&format!("{server}/keys/aptgate.asc")).await,
            fetch(&format!("{canonical}/keys/aptgate.asc")).await,
            "the same public key"
        );
    }
    assert_eq!(
        status(&child.url).await["path"],
        serde_json::json!(["canonical", "branch-1", "branch-1a"]),
        "the child records every hop"
    );

    // apt through each: on_demand replicas hold no .deb yet; each is fetched from the parent
    // (the child's through the replica) and verified.
    let before = status(&replica.url).await;
    assert!(before["blobs_missing"].as_u64().unwrap() > 0, "{before}");
    for (name, server) in [("host-branch", &replica.url), ("host-child", &child.url)] {
        let key = s.dir.path().join(format!("{name}.asc"));
        fetch_key(server, &key).await;
        let host = host_at(s.dir.path(), name, server, "approved", &key);
        assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
        host.download(&["foo-utils"])
            .await
            .unwrap()
            .assert_success();
        assert!(
            !host.downloaded_files().unwrap().is_empty(),
            "apt downloaded through {server}"
        );
    }
    let after = status(&replica.url).await;
    assert!(
        after["blobs_missing"].as_u64() < before["blobs_missing"].as_u64(),
        "what apt fetched is stored: {before} → {after}"
    );

    // A promotion on the canonical server reaches both within seconds.
    next_upstream_state(&mut s.repo);
    s.sync().await;
    s.promote(&[]).await.unwrap();
    for server in [&replica.url, &child.url] {
        until(
            &format!("{server} serves the promotion"),
            Duration::from_secs(30),
            || async {
                same_release_files(&canonical, server, "approved").await
                    && same_release_files(&canonical, server, "testing").await
            },
        )
        .await;
    }
    let key = s.dir.path().join("host-child.asc");
    let host = host_at(s.dir.path(), "host-child", &child.url, "approved", &key);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();

    // The canonical server shows both, current, with their lag, in API, CLI and metrics.
    let admin = admin_token(s.app.data_dir());
    let seq = s.app.state.replicas.current().await.unwrap().0;
    until(
        "the canonical server sees both replicas current",
        Duration::from_secs(30),
        || async {
            let list: serde_json::Value = client()
                .get(format!("{canonical}/api/v1/replicas"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let current = |name: &str| {
                list["replicas"].as_array().unwrap().iter().any(|r| {
                    r["name"] == name
                        && r["state"] == "current"
                        && r["lag_seconds"] == 0
                        && r["report"]["seq_applied"] == seq
                })
            };
            current("branch-1") && current("branch-1/branch-1a")
        },
    )
    .await;
    let metrics = aptgate_tests::app::get_text(&format!("{canonical}/metrics")).await;
    assert!(
        metrics.contains("aptgate_replica_lag_seconds{replica=\"branch-1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aptgate_replica_blobs_missing{replica=\"branch-1/branch-1a\"}"),
        "{metrics}"
    );

    // A child's report the canonical refuses: the replica in between passes the refusal down.
    let refused = client()
        .post(format!("{}/api/v1/replica/status", replica.url))
        .bearer_auth(CHILD_TOKEN)
        .json(&aptgate_replicas::protocol::ReplicaReport {
            name: "not a name!".into(),
            parent: replica.url.clone(),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let answer = refused.text().await.unwrap();
    assert!(answer.contains("not a valid replica name"), "{answer}");
    let table = cli(&s, &admin, &["replica", "list"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("branch-1 ") && l.contains("current")),
        "{table}"
    );

    // Blobs by digest honour Range (resumed downloads).
    let (_, in_release) = fetch(&format!(
        "{canonical}/channels/approved/dists/stable/InRelease"
    ))
    .await;
    let part = client()
        .get(format!(
            "{canonical}/api/v1/replica/blobs/sha256/{}",
            Sha256::of(&in_release).to_hex()
        ))
        .bearer_auth(&token)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), in_release[10..20]);

    // Without a valid token the replica routes answer nothing.
    let refused = client()
        .get(format!("{canonical}/api/v1/replica/manifest"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
