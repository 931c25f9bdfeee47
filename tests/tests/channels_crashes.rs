//! Channels under concurrency and crashes, on SQLite and on PostgreSQL: promotions from two
//! server instances serialize; a server killed mid-promotion leaves the old channel or the new,
//! and apt agrees.

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
