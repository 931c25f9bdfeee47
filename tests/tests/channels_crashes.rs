//! Channels under concurrency and failures, on SQLite and on PostgreSQL: promotions from two
//! server instances serialize; a server killed mid-promotion leaves the old channel or the new,
//! and apt agrees; a sync that failed after recording its snapshot has its followers moved by
//! the next one.

use aptgate_channels::{Actor, PromoteRequest};
use aptgate_config::Retain;
use aptgate_tests::app::aptgate_command;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::process::ServerProcess;
use aptgate_tests::upstream::Misbehaviour;
use std::time::Duration;

both_backends!(
    concurrent_promotions_serialize,
    a_killed_promotion_leaves_the_channel_consistent,
    followers_move_on_the_next_sync_when_one_failed_after_its_snapshot,
);

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

async fn followers_move_on_the_next_sync_when_one_failed_after_its_snapshot(backend: Backend) {
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.sources[0].policy = aptgate_config::FetchPolicy::Immediate;
    let s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    // One .deb cannot be had: the sync records its snapshot, then fails downloading.
    let hello = s.repo.package_in("stable", "hello", "amd64").clone();
    s.upstream
        .misbehave(&hello.pool_path, Misbehaviour::Status(503));
    let failed = channels
        .sync("fixture", &Actor::new("test"), &|_: &str| {})
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        channels.served("testing").await.is_err(),
        "testing did not move"
    );

    // Upstream recovers; nothing changed there, yet testing now follows.
    s.upstream.behave();
    let again = s.sync().await;
    assert_eq!(again.snapshot, None, "upstream is unchanged");
    assert_eq!(again.followed_by, ["testing"]);
    let host = s.host("host", "testing");
    assert_eq!(candidate(&host, "hello").await, hello.version);
    // A follower already there is not moved again.
    assert!(s.sync().await.followed_by.is_empty());
}
