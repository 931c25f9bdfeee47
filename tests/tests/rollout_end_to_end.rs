//! Rolling upgrades end to end: real `aptgate-agent upgrade` processes, each on its own apt/dpkg
//! root with the real `apt-get` and `dpkg`, against a real server holding a rollout group.
//!
//! - five hosts in a group of `max_concurrent = 2` all upgrade, never more than two holding a
//!   slot at once (read from the server's audit timeline);
//! - a failing `pre_update.d` hook keeps its slot, the wave stops at the failure budget, and an
//!   admin release (and resume) lets it go on;
//! - an agent killed in every step, and by its own reboot, finishes its run exactly once and
//!   releases after `post_update.d`.

use aptgate_config::{ChannelConfig, MaxConcurrent, RolloutGroupConfig};
use aptgate_tests::agent::Machine;
use aptgate_tests::both_backends;
use aptgate_tests::channels::{channel, cli, parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::Admin;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

both_backends!(
    five_hosts_upgrade_two_at_a_time_and_a_failed_host_stops_the_wave_until_released,
    a_run_killed_in_every_step_and_by_its_reboot_finishes_exactly_once,
);

/// A server with channel `web` (one step behind `testing`), the rule role=web → web and the
/// rollout group `web` (role=web, at most two at once, failure budget one), and `hosts`
/// enrolled with role=web and checked in once.
async fn fleet(backend: Backend, hosts: &[&str]) -> (Setup, String, Vec<Machine>) {
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.channels.push(ChannelConfig {
        promotes_from: Some("testing".parse().unwrap()),
        ..channel("web")
    });
    for c in &mut p.config.channels {
        c.suites = vec!["stable".into()];
    }
    p.config.fleet.checkin_interval = Duration::from_secs(3600);
    p.config.rollout.retry_secs = 1;
    p.config.rollout.groups.push(RolloutGroupConfig {
        name: "web".into(),
        selector: "role=web".into(),
        max_concurrent: MaxConcurrent::Hosts(2),
        failure_budget: 1,
        windows: vec![],
        reboot_grace_secs: 900,
        heartbeat_deadline_secs: 300,
        expire_stuck: false,
        paused: false,
    });
    let s = Setup::from_parts(p).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token")).unwrap();
    let token = token.trim().to_owned();
    s.sync().await;
    cli(&s, &token, &["promote", "--from", "testing", "--to", "web"]).unwrap();
    cli(
        &s,
        &token,
        &[
            "fleet",
            "rule",
            "add",
            "web",
            "--selector",
            "role=web",
            "--channel",
            "web",
        ],
    )
    .unwrap();
    let uses = hosts.len().to_string();
    let enroll = cli(&s, &token, &["fleet", "token", "create", "--uses", &uses]).unwrap();
    let dir = s.dir.path().join("machines");
    let machines: Vec<Machine> = hosts
        .iter()
        .map(|name| {
            let m = Machine::new(&dir, name);
            m.enroll(&s.app.url, enroll.trim(), "role=web");
            m.set_boot_id("boot-1");
            m.write_config("[upgrade]\nheartbeat_secs = 1\n");
            m.checkin();
            m
        })
        .collect();
    (s, token, machines)
}

/// The lease transitions in the audit log, oldest first: (host, from, to).
async fn lease_timeline(s: &Setup) -> Vec<(String, Option<String>, String)> {
    let mut entries = Admin::new(&s.app.url, s.app.data_dir())
        .audit("lease")
        .await;
    entries.sort_by_key(|e| e["id"].as_i64().unwrap());
    entries
        .into_iter()
        .map(|e| {
            let summary: Value =
                serde_json::from_str(e["entry"]["summary"].as_str().unwrap()).unwrap();
            (
                summary["host"].as_str().unwrap().to_owned(),
                summary["from"].as_str().map(str::to_owned),
                summary["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The most hosts at once in any of `states`, replaying the timeline.
fn most_at_once(timeline: &[(String, Option<String>, String)], states: &[&str]) -> usize {
    let mut now: BTreeMap<&str, &str> = BTreeMap::new();
    let mut most = 0;
    for (host, _, to) in timeline {
        now.insert(host, to);
        most = most.max(now.values().filter(|s| states.contains(s)).count());
    }
    most
}

/// Runs `upgrade` on every machine at once; their exit statuses and stdouts.
async fn upgrade_all(machines: &[&Machine]) -> Vec<(std::process::ExitStatus, String)> {
    let children: Vec<_> = machines.iter().map(|m| m.spawn_upgrade(&[])).collect();
    let mut out = Vec::new();
    for child in children {
        let done = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        out.push((
            done.status,
            String::from_utf8_lossy(&done.stdout).into_owned(),
        ));
    }
    out
}

fn reports(machines: &[&Machine]) -> String {
    machines
        .iter()
        .map(|m| m.report())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn five_hosts_upgrade_two_at_a_time_and_a_failed_host_stops_the_wave_until_released(
    backend: Backend,
) {
    let names = ["web1", "web2", "web3", "web4", "web5"];
    let (mut s, token, machines) = fleet(backend, &names).await;
    let all: Vec<&Machine> = machines.iter().collect();

    // hello 2.10-3 everywhere, then 2.10-4 promoted into web: one update pending per host.
    cli(
        &s,
        &token,
        &["fleet", "command", "--selector", "", "install", "hello"],
    )
    .unwrap();
    for m in &machines {
        m.checkin();
        assert_eq!(
            m.installed("hello").as_deref(),
            Some("2.10-3"),
            "{}",
            m.report()
        );
    }
    for p in s.repo.spec.packages.iter_mut() {
        if p.name == "hello" && p.version == "2.10-3" {
            p.version = "2.10-4".into();
        }
    }
    s.repo.regenerate().unwrap();
    s.sync().await;
    cli(&s, &token, &["promote", "--from", "testing", "--to", "web"]).unwrap();

    // Every host takes a while in pre_update, so the group is full while others ask.
    for m in &machines {
        m.hook("pre_update", "10-drain", "sleep 1");
    }
    let results = upgrade_all(&all).await;
    for ((status, stdout), m) in results.iter().zip(&machines) {
        assert!(status.success(), "{}: {stdout}\n{}", m.name, reports(&all));
        assert!(stdout.contains("upgraded to snapshot"), "{stdout}");
        // The built-in update ran apt against the planned snapshot.
        assert_eq!(
            m.installed("hello").as_deref(),
            Some("2.10-4"),
            "{}",
            m.report()
        );
    }
    let timeline = lease_timeline(&s).await;
    let holding = ["acquired", "updating", "rebooting", "verifying", "failed"];
    assert_eq!(
        most_at_once(&timeline, &holding),
        2,
        "at most two (and at some point two) hosts hold a slot: {timeline:#?}"
    );
    assert_eq!(most_at_once(&timeline, &["updating", "rebooting"]), 2);
    let released: BTreeSet<&str> = timeline
        .iter()
        .filter(|(_, _, to)| to == "released")
        .map(|(host, _, _)| host.as_str())
        .collect();
    assert_eq!(released.len(), 5, "{timeline:#?}");
    // Nothing pending any more: another run has nothing to do and exits 0.
    let (status, stdout) = machines[0].upgrade(&[]);
    assert!(
        status.success() && stdout.contains("nothing to upgrade"),
        "{stdout}"
    );

    // The next wave is decided by hooks: every host needs an update; web1's pre_update fails.
    for m in &machines {
        m.hook("needs_update", "10-always", "exit 0");
        m.hook("update", "10-fake-update", "echo updated");
        m.write_config("[upgrade]\nheartbeat_secs = 1\nlease_wait_secs = 3\n");
    }
    let web1 = &machines[0];
    web1.hook(
        "pre_update",
        "20-check",
        "echo 'replication lag too high' >&2; exit 3",
    );
    let (status, _) = web1.upgrade(&[]);
    assert_eq!(status.code(), Some(1), "{}", web1.report());
    let log = web1.upgrade_log();
    assert!(
        log.contains("pre_update.d/20-check exited with 3")
            && log.contains("replication lag too high")
            && log.contains("rollout release"),
        "{log}"
    );
    assert!(
        web1.run_state()["failed"].is_string(),
        "{}",
        web1.run_state()
    );
    // The failed host keeps its slot; asking again does not start a new run.
    let run_id = web1.run_state()["run_id"].clone();
    let (status, _) = web1.upgrade(&[]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(web1.run_state()["run_id"], run_id);

    // The wave stops: with the failure budget spent, nobody gets a slot.
    let (status, stdout) = machines[1].upgrade(&[]);
    assert_eq!(
        status.code(),
        Some(75),
        "{stdout}\n{}",
        machines[1].report()
    );
    assert!(stdout.contains("failure budget"), "{stdout}");
    let timeline = lease_timeline(&s).await;
    let web1_id = web1.host_id();
    assert_eq!(
        timeline
            .iter()
            .rfind(|(host, _, _)| *host == web1_id)
            .map(|(_, _, to)| to.as_str()),
        Some("failed"),
        "{timeline:#?}"
    );

    // An admin releases web1's slot and resumes the group (the server counts a released
    // failure against the wave until a resume starts a new one): the others go on.
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    let comment = Some(serde_json::json!({"comment": "replication fixed"}));
    admin
        .ok(
            "POST",
            &format!("/api/v1/rollout/hosts/{web1_id}/release"),
            comment.clone(),
        )
        .await;
    admin
        .ok("POST", "/api/v1/rollout/groups/web/resume", comment)
        .await;
    let timeline = lease_timeline(&s).await;
    assert_eq!(
        timeline.iter().rfind(|(host, _, _)| *host == web1_id),
        Some(&(web1_id.clone(), Some("failed".into()), "released".into())),
        "{timeline:#?}"
    );
    let rest: Vec<&Machine> = machines[1..].iter().collect();
    let results = upgrade_all(&rest).await;
    for ((status, stdout), m) in results.iter().zip(&rest) {
        assert!(status.success(), "{}: {stdout}\n{}", m.name, reports(&rest));
    }
    let timeline = lease_timeline(&s).await;
    assert!(most_at_once(&timeline, &holding) <= 2, "{timeline:#?}");
    // web1's failed run is over (released by the admin): with its hook fixed, a new run.
    fs_err::remove_file(web1.dir().join("pre_update.d/20-check")).unwrap();
    let (status, stdout) = web1.upgrade(&[]);
    assert!(status.success(), "{stdout}\n{}", web1.report());
    assert_ne!(web1.run_state()["run_id"], run_id);
}

async fn a_run_killed_in_every_step_and_by_its_reboot_finishes_exactly_once(backend: Backend) {
    let (s, _token, machines) = fleet(backend, &["web1"]).await;
    let m = &machines[0];
    let count = m.dir().join("count");
    let count = count.display();
    let markers = m.dir().join("markers");
    fs_err::create_dir_all(&markers).unwrap();
    let markers = markers.display();
    // Every step's hook kills the agent the first time it runs (it is the hook's parent).
    let die_once = |answer: u8| {
        format!(
            "if [ ! -e {markers}/$APTGATE_STEP ]; then touch {markers}/$APTGATE_STEP; kill -9 $PPID; fi; exit {answer}"
        )
    };
    m.hook("needs_update", "20-die-once", &die_once(0));
    m.hook("needs_reboot", "20-die-once", &die_once(0));
    for step in ["pre_update", "update", "post_update"] {
        m.hook(
            step,
            "10-count",
            &format!("echo $APTGATE_STEP $APTGATE_RUN_ID >> {count}"),
        );
        m.hook(step, "20-die-once", &die_once(0));
    }
    // The "reboot": a new boot id, and the agent stops (the test starts it again).
    let boot_id = m.root.join("proc/sys/kernel/random/boot_id");
    m.write_config(&format!(
        "[upgrade]\nheartbeat_secs = 1\nreboot_cmd = [\"/bin/sh\", \"-c\", \"echo reboot $APTGATE_RUN_ID >> {count}; echo boot-2 > {}; kill -9 $PPID\"]\n",
        boot_id.display()
    ));

    let mut killed = 0;
    let mut run_ids = BTreeSet::new();
    for _ in 0..12 {
        let (status, stdout) = m.upgrade(&[]);
        run_ids.insert(m.run_state()["run_id"].as_str().unwrap().to_owned());
        if status.success() {
            assert!(stdout.contains("upgraded to snapshot"), "{stdout}");
            break;
        }
        assert_eq!(status.signal(), Some(9), "{stdout}\n{}", m.report());
        killed += 1;
    }
    // needs_update, pre_update, update, needs_reboot, reboot, post_update.
    assert_eq!(killed, 6, "{}", m.report());
    assert_eq!(run_ids.len(), 1, "one run throughout: {run_ids:?}");
    let run_id = run_ids.into_iter().next().unwrap();
    let lines = fs_err::read_to_string(m.dir().join("count")).unwrap();
    let expected: Vec<String> = ["pre_update", "update", "reboot", "post_update"]
        .iter()
        .map(|step| format!("{step} {run_id}"))
        .collect();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        expected,
        "each exactly once, in order"
    );
    let run = m.run_state();
    assert_eq!(run["step"], "done", "{run}");
    assert!(run["failed"].is_null(), "{run}");

    // The server saw the holder go through each state once, ending released.
    let host = m.host_id();
    let states: Vec<String> = lease_timeline(&s)
        .await
        .into_iter()
        .filter(|(h, _, _)| *h == host)
        .map(|(_, _, to)| to)
        .collect();
    assert_eq!(
        states,
        ["acquired", "updating", "rebooting", "verifying", "released"],
        "{}",
        m.report()
    );
}
