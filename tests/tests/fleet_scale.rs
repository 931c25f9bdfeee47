//! A quick look at the fleet at scale (ignored by default; `bench/` holds the real benchmark):
//! N simulated hosts with 750-package inventories enroll, upload and check in; the fleet
//! queue over all of them is timed cold and warm. Run with
//! `FLEET_HOSTS=2000 cargo nextest run -p aptgate-tests --test fleet_scale --run-ignored all
//! --no-capture`. `many_waiting_agents` runs the server as a process of its own and reports its
//! RSS per held wait (measured in a debug build: ~30 KiB, of which ~17 KiB is what an idle HTTP
//! connection costs; `FLEET_IDLE_PROBE=1` measures that first).

use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use aptgate_tests::process::ServerProcess;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn fleet_at_scale() {
    let hosts: usize = std::env::var("FLEET_HOSTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let p = parts(
        Backend::Sqlite,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    let mut s = Setup::from_parts(p).await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    s.sync().await;
    s.promote(&[]).await.unwrap();
    next_upstream_state(&mut s.repo);
    s.sync().await;
    admin
        .ok(
            "POST",
            "/api/v1/fleet/rules",
            Some(json!({"name": "all", "selector": "", "channel": "approved"})),
        )
        .await;
    let token = admin.token(json!({})).await;
    let started = Instant::now();
    let mut agents = Vec::new();
    for i in 0..hosts {
        let mut a = TestAgent::new(
            &s.app.url,
            &format!("h{i}"),
            labels(&[("n", &(i % 10).to_string())]),
        );
        a.enroll(&token).await;
        agents.push(a);
    }
    eprintln!(
        "enrolled {hosts} hosts: {:.0}/s",
        hosts as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut bytes = 0;
    for (i, a) in agents.iter().enumerate() {
        let mut packages: Vec<_> = (0..747)
            .map(|p| {
                package(
                    &format!("pkg{p}"),
                    "amd64",
                    &format!("1.{}-1", (p + i) % 37),
                )
            })
            .collect();
        packages.push(package("foo-utils", "amd64", "1.4.2-1"));
        packages.push(package("hello-data", "all", "2.10-3"));
        packages.push(package("hello", "amd64", "2.10-3"));
        bytes += gzip(&serde_json::to_vec(&packages).unwrap()).len();
        a.upload(packages).await;
    }
    eprintln!(
        "uploaded {hosts} inventories: {:.0}/s, {} bytes each",
        hosts as f64 / started.elapsed().as_secs_f64(),
        bytes / hosts
    );
    let mut latencies = Vec::new();
    for a in &agents {
        let req = a.checkin_request(None);
        let t = Instant::now();
        a.checkin(&req).await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    eprintln!(
        "check-in (sequential): p50 {:?}, p99 {:?}",
        latencies[hosts / 2],
        latencies[hosts * 99 / 100]
    );
    for run in ["cold", "warm"] {
        let t = Instant::now();
        let queue = admin.ok("GET", "/api/v1/fleet/pending", None).await;
        eprintln!(
            "fleet queue ({run}) over {} hosts: {:?}",
            queue["hosts"],
            t.elapsed()
        );
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs_err::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn many_waiting_agents() {
    let hosts: usize = std::env::var("FLEET_HOSTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let mut p = parts(
        Backend::Sqlite,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    p.config.fleet.wait = Duration::from_secs(120);
    // The server in a process of its own, so its memory is measured alone.
    let server = ServerProcess::start(&p.config, p.dir.path().join("aptgate.toml"));
    let admin = Admin::new(&server.url, &p.config.data_dir);
    let token = admin.token(json!({})).await;
    let mut agents = Vec::new();
    for i in 0..hosts {
        let mut a = TestAgent::new(&server.url, &format!("h{i}"), labels(&[("group", "all")]));
        a.enroll(&token).await;
        agents.push(a);
    }
    let before = rss_kib(server.pid());
    if std::env::var("FLEET_IDLE_PROBE").is_ok() {
        let addr = server.url.trim_start_matches("http://").to_owned();
        let mut idle = Vec::new();
        for _ in 0..hosts {
            idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with_idle = rss_kib(server.pid());
        eprintln!(
            "{hosts} idle connections: {} KiB each",
            with_idle.saturating_sub(before) / hosts as u64
        );
        drop(idle);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before = rss_kib(server.pid());
    let mut waits = Vec::new();
    for a in agents {
        // Enrolled hosts are at rev 1: a wait with rev=1 is held.
        waits.push(tokio::spawn(async move { a.wait(1).await.status }));
    }
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(hosts as u64)).await;
    let during = rss_kib(server.pid());
    eprintln!(
        "{hosts} waits held: server RSS {} → {} MiB ({} KiB per wait)",
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / hosts as u64
    );
    let started = Instant::now();
    admin
        .ok(
            "POST",
            "/api/v1/fleet/poke",
            Some(json!({"selector": "group=all"})),
        )
        .await;
    for w in waits {
        assert_eq!(w.await.unwrap(), 200);
    }
    eprintln!(
        "all {hosts} waits answered {:?} after the poke",
        started.elapsed()
    );
}
