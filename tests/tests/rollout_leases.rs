//! The group lease against a real server, on SQLite and PostgreSQL, with signed agent
//! requests: a group of five hosts with two slots serves the third in line only when a slot
//! frees; acquire is idempotent per (host, run); stale fences and backward transitions are
//! refused; a failed host keeps its slot and the failure budget stops the wave until an admin
//! releases it and resumes; a silent holder becomes stuck (audit, metric) and keeps its slot
//! until it speaks again or an admin releases it; no lease outside the window; pause; a
//! percentage `max_concurrent`; hosts asking at once never get more than the slots.

use aptgate_agent::protocol::rollout::{
    HolderState, HookResult, LeaseAnswer, LeaseReport, RunPlan, WaitReason, LEASE_ACQUIRE_PATH,
    LEASE_REPORT_PATH, RUN_PLAN_PATH,
};
use aptgate_config::{MaxConcurrent, RolloutGroupConfig, WindowConfig};
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

both_backends!(
    two_slots_serve_five_hosts_in_line_with_fences,
    a_failed_host_keeps_its_slot_and_the_budget_stops_the_wave,
    stuck_holders_windows_and_percentages,
    hosts_asking_at_once_never_exceed_the_slots,
);

async fn setup(backend: Backend, groups: Vec<RolloutGroupConfig>) -> (Setup, Admin, String) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    p.config.rollout.retry_secs = 5;
    p.config.rollout.stuck_check_secs = 1;
    p.config.rollout.groups = groups;
    let s = Setup::from_parts(p).await;
    s.sync().await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    let token = admin.token(json!({})).await;
    (s, admin, token)
}

async fn hosts(s: &Setup, token: &str, role: &str, n: usize) -> Vec<TestAgent> {
    let mut out = Vec::new();
    for i in 1..=n {
        let mut a = TestAgent::new(
            &s.app.url,
            &format!("{role}{i}.example.org"),
            labels(&[("role", role)]),
        );
        a.enroll(token).await;
        out.push(a);
    }
    out
}

fn run(agent: &TestAgent) -> String {
    format!("run-{}", &agent.host_id[2..])
}

async fn acquire_run(agent: &TestAgent, run: &str) -> LeaseAnswer {
    let body = serde_json::to_vec(&json!({"run_id": run, "snapshot": "s1"})).unwrap();
    let answer = agent.send("POST", LEASE_ACQUIRE_PATH, body).await;
    assert_eq!(answer.status, 200, "acquire: {}", answer.body);
    serde_json::from_value(answer.body).unwrap()
}

async fn acquire(agent: &TestAgent) -> LeaseAnswer {
    acquire_run(agent, &run(agent)).await
}

fn fence(answer: &LeaseAnswer) -> i64 {
    match answer {
        LeaseAnswer::Granted { fence, .. } => *fence,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// (reason, position) of a wait.
fn waits(answer: &LeaseAnswer) -> (WaitReason, u32) {
    match answer {
        LeaseAnswer::Wait {
            reason, position, ..
        } => (*reason, *position),
        other => panic!("expected a wait, got {other:?}"),
    }
}

async fn report(agent: &TestAgent, fence: i64, state: HolderState) -> Answer {
    let body = serde_json::to_vec(&LeaseReport {
        run_id: run(agent),
        fence,
        state,
        step: format!("{state:?}").to_lowercase(),
        detail: None,
        hooks: Vec::new(),
    })
    .unwrap();
    agent.send("POST", LEASE_REPORT_PATH, body).await
}

async fn report_ok(agent: &TestAgent, fence: i64, state: HolderState) {
    let answer = report(agent, fence, state).await;
    assert_eq!(answer.status, 200, "report {state:?}: {}", answer.body);
}

fn group(name: &str, selector: &str, max: MaxConcurrent) -> RolloutGroupConfig {
    serde_json::from_value(json!({"name": name, "selector": selector})).map_or_else(
        |e: serde_json::Error| panic!("{e}"),
        |g: RolloutGroupConfig| RolloutGroupConfig {
            max_concurrent: max,
            ..g
        },
    )
}

/// Host ids of one list of a group's status.
fn ids(status: &Value, list: &str) -> Vec<String> {
    status[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list}: {status:#}"))
        .iter()
        .map(|h| h["host_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn two_slots_serve_five_hosts_in_line_with_fences(backend: Backend) {
    let (s, admin, token) = setup(backend, Vec::new()).await;
    admin
        .ok(
            "POST",
            "/api/v1/fleet/rules",
            Some(json!({"name": "all", "selector": "", "channel": "testing"})),
        )
        .await;
    admin
        .ok(
            "POST",
            "/api/v1/rollout/groups",
            Some(json!({"name": "db", "selector": "role=db", "max_concurrent": 2, "comment": "five databases"})),
        )
        .await;
    let db = hosts(&s, &token, "db", 5).await;
    let web = hosts(&s, &token, "web", 1).await;

    // The plan: the snapshot the channel points at, as apt sources for exactly it.
    let body = serde_json::to_vec(&json!({"run_id": run(&db[0])})).unwrap();
    let plan = db[0].send("POST", RUN_PLAN_PATH, body).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    let plan: RunPlan = serde_json::from_value(plan.body).unwrap();
    assert_eq!(plan.group.as_deref(), Some("db"));
    assert_eq!(plan.channel.as_deref(), Some("testing"));
    let snapshot = plan.snapshot.clone().expect("a published snapshot");
    let uri = &plan.entries[0].uris[0];
    assert!(
        uri.ends_with(&format!("/channels/testing/snapshots/{snapshot}/")),
        "{uri}"
    );
    let release = reqwest::get(format!(
        "{uri}dists/{}/InRelease",
        plan.entries[0].suites[0]
    ))
    .await
    .unwrap();
    assert_eq!(release.status(), 200, "the planned sources serve");

    assert_eq!(acquire(&web[0]).await, LeaseAnswer::NotRequired);
    let f1 = fence(&acquire(&db[0]).await);
    let f2 = fence(&acquire(&db[1]).await);
    assert!(f2 > f1, "fences grow: {f1} {f2}");
    assert_eq!((waits(&acquire(&db[2]).await)), (WaitReason::Full, 1));
    assert_eq!((waits(&acquire(&db[3]).await)), (WaitReason::Full, 2));
    // Asking again keeps the place in line, and the same run gets the same fence back.
    assert_eq!((waits(&acquire(&db[2]).await)), (WaitReason::Full, 1));
    assert_eq!(fence(&acquire(&db[0]).await), f1);
    match acquire(&db[4]).await {
        LeaseAnswer::Wait {
            holders, position, ..
        } => {
            assert_eq!(position, 3);
            let mut held: Vec<&str> = holders.iter().map(|h| h.hostname.as_str()).collect();
            held.sort();
            assert_eq!(held, ["db1.example.org", "db2.example.org"]);
        }
        other => panic!("{other:?}"),
    }

    let stale = report(&db[0], f1 + 1000, HolderState::Updating).await;
    assert_eq!((stale.status, stale.code()), (409, "stale_fence"));
    report_ok(&db[0], f1, HolderState::Updating).await;
    report_ok(&db[0], f1, HolderState::Updating).await; // a heartbeat
    let back = report(&db[0], f1, HolderState::Acquired).await;
    assert_eq!((back.status, back.code()), (409, "bad_transition"));
    let stuck = report(&db[0], f1, HolderState::Stuck).await;
    assert_eq!((stuck.status, stuck.code()), (409, "bad_transition"));
    // Nobody but the holder reports for the lease: another host's report names no lease.
    let other = report(&db[1], f1, HolderState::Updating).await;
    assert_eq!((other.status, other.code()), (409, "stale_fence"));

    let status = admin.ok("GET", "/api/v1/rollout/groups/db", None).await;
    assert_eq!(status["slots"], 2, "{status:#}");
    assert_eq!(status["window_open"], true);
    assert_eq!(ids(&status, "in_progress").len(), 2);
    assert_eq!(ids(&status, "waiting")[0], db[2].host_id);

    for state in [
        HolderState::Rebooting,
        HolderState::Verifying,
        HolderState::Released,
    ] {
        report_ok(&db[0], f1, state).await;
    }
    // A slot freed: the first in line gets it, the others keep waiting in order.
    assert_eq!((waits(&acquire(&db[3]).await)), (WaitReason::Full, 2));
    let f3 = fence(&acquire(&db[2]).await);
    assert!(f3 > f2);
    assert_eq!((waits(&acquire(&db[3]).await)), (WaitReason::Full, 1));
    let after = report(&db[0], f1, HolderState::Updating).await;
    assert_eq!((after.status, after.code()), (409, "bad_transition"));

    let status = admin.ok("GET", "/api/v1/rollout/groups/db", None).await;
    assert_eq!(ids(&status, "done"), [db[0].host_id.clone()]);
    let trail: Vec<String> = admin
        .audit("lease")
        .await
        .iter()
        .rev()
        .filter_map(|e| {
            let s: Value = serde_json::from_str(e["entry"]["summary"].as_str()?).ok()?;
            (s["host"] == db[0].host_id.as_str()).then(|| s["to"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        trail,
        ["acquired", "updating", "rebooting", "verifying", "released"]
    );
}

async fn a_failed_host_keeps_its_slot_and_the_budget_stops_the_wave(backend: Backend) {
    let (s, admin, token) = setup(backend, Vec::new()).await;
    let aptgate = |args: &[&str]| aptgate_cli(&s, &admin, args);
    aptgate(&[
        "rollout",
        "group",
        "create",
        "web",
        "--selector",
        "role=web",
        "--max-concurrent",
        "2",
        "--window",
        "* 00:00-00:00 Europe/Berlin",
    ]);
    let listed = aptgate(&["rollout", "group", "list"]);
    assert!(
        listed.contains("web (api): selector role=web, max_concurrent 2"),
        "{listed}"
    );
    let web = hosts(&s, &token, "web", 3).await;
    let f1 = fence(&acquire(&web[0]).await);
    report_ok(&web[0], f1, HolderState::Updating).await;
    let failed = serde_json::to_vec(&LeaseReport {
        run_id: run(&web[0]),
        fence: f1,
        state: HolderState::Failed,
        step: "pre_update".into(),
        detail: Some("pre_update.d/10-drain exited 1 \u{1b}[2J".into()),
        hooks: vec![HookResult {
            dir: "pre_update.d".into(),
            name: "10-drain".into(),
            exit_code: Some(1),
            output: "x".repeat(10_000) + "load balancer refused",
            duration_ms: 12,
        }],
    })
    .unwrap();
    let answer = web[0].send("POST", LEASE_REPORT_PATH, failed).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let again = report(&web[0], f1, HolderState::Released).await;
    assert_eq!((again.status, again.code()), (409, "bad_transition"));
    // The wave stopped: one failure spends a budget of one.
    assert_eq!(
        waits(&acquire(&web[1]).await).0,
        WaitReason::FailureBudgetSpent
    );
    // A new run of the failed host cannot take the slot over.
    let body = serde_json::to_vec(&json!({"run_id": "another-run"})).unwrap();
    let other = web[0].send("POST", LEASE_ACQUIRE_PATH, body).await;
    assert_eq!((other.status, other.code()), (409, "lease_failed"));
    let status = admin.ok("GET", "/api/v1/rollout/groups/web", None).await;
    assert_eq!(ids(&status, "failed"), [web[0].host_id.clone()]);
    assert_eq!(status["failure_budget_spent"], true);
    let failed = &status["failed"][0];
    assert_eq!(failed["step"], "pre_update");
    assert_eq!(
        failed["detail"], "pre_update.d/10-drain exited 1 ?[2J",
        "no escapes"
    );
    let hook_output = failed["hooks"][0]["output"].as_str().unwrap();
    assert!(hook_output.ends_with("load balancer refused") && hook_output.len() <= 4096);
    let text = aptgate(&["rollout", "status", "web"]);
    assert!(text.contains("failed (holding their slot): 1"), "{text}");
    assert!(text.contains("web1.example.org"), "{text}");
    assert!(text.contains("STOPPED"), "{text}");
    assert!(text.contains("waiting: 1"), "{text}");

    // The admin releases the failed host: still stopped (the failure counts in this wave)
    // until a resume starts a new one.
    let released = aptgate(&[
        "rollout",
        "release",
        &web[0].host_id,
        "--comment",
        "disk replaced",
    ]);
    assert!(released.contains("(was failed"), "{released}");
    let again = cli(&s, &admin.token, &["rollout", "release", &web[0].host_id]);
    assert!(again.unwrap_err().contains("holds no slot"));
    let stale = report(&web[0], f1, HolderState::Failed).await;
    assert_eq!((stale.status, stale.code()), (409, "stale_fence"));
    assert_eq!(
        waits(&acquire(&web[1]).await).0,
        WaitReason::FailureBudgetSpent
    );
    aptgate(&["rollout", "pause", "web"]);
    assert_eq!(waits(&acquire(&web[1]).await).0, WaitReason::Paused);
    aptgate(&["rollout", "resume", "web", "--comment", "go on"]);
    fence(&acquire(&web[1]).await);
    fence(&acquire(&web[2]).await);
    let audit = admin.audit("lease").await;
    let by_admin = audit
        .iter()
        .find(|e| e["entry"]["comment"] == "disk replaced")
        .expect("the release is audited with its comment");
    let actor = by_admin["entry"]["actor"].as_str().unwrap();
    assert!(actor != "server" && !actor.starts_with("host:"), "{actor}");
    let rollout = admin.audit("rollout").await;
    assert!(rollout.len() >= 3, "create, pause, resume: {rollout:?}");

    // A group with a slot held cannot be deleted.
    let refused = cli(&s, &admin.token, &["rollout", "group", "delete", "web"]);
    assert!(refused.unwrap_err().contains("slot(s) held"));
}

/// The group's status once `host` is stuck.
async fn until_stuck(admin: &Admin, host: &TestAgent) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = admin.ok("GET", "/api/v1/rollout/groups/db", None).await;
        if ids(&status, "stuck").contains(&host.host_id) {
            return status;
        }
        assert!(Instant::now() < deadline, "never stuck: {status:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn aptgate_cli(s: &Setup, admin: &Admin, args: &[&str]) -> String {
    cli(s, &admin.token, args).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}"))
}

async fn stuck_holders_windows_and_percentages(backend: Backend) {
    // A window that opens two hours from now: closed now, whatever the time.
    let now = chrono::Utc::now();
    let hm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let night = RolloutGroupConfig {
        windows: vec![WindowConfig {
            days: "*".into(),
            start: hm(now + chrono::Duration::hours(2)),
            end: hm(now + chrono::Duration::hours(3)),
            time_zone: "UTC".into(),
        }],
        ..group("night", "role=night", MaxConcurrent::Hosts(5))
    };
    let db = RolloutGroupConfig {
        heartbeat_deadline_secs: 1,
        reboot_grace_secs: 0,
        ..group("db", "role=db", MaxConcurrent::Hosts(1))
    };
    let pct = group("pct", "role=pct", MaxConcurrent::Percent(50));
    let (s, admin, token) = setup(backend, vec![db, night, pct]).await;

    let listed = admin.ok("GET", "/api/v1/rollout/groups", None).await;
    assert_eq!(listed[0]["name"], "db");
    assert_eq!(listed[0]["origin"], "config");
    assert_eq!(listed[2]["max_concurrent"], "50%");

    let dbs = hosts(&s, &token, "db", 3).await;
    let f = fence(&acquire(&dbs[0]).await);
    report_ok(&dbs[0], f, HolderState::Updating).await;
    let status = until_stuck(&admin, &dbs[0]).await;
    assert_eq!(ids(&status, "stuck"), [dbs[0].host_id.clone()]);
    // Stuck keeps its slot.
    assert_eq!(waits(&acquire(&dbs[1]).await).0, WaitReason::Full);
    let metrics = reqwest::get(format!("{}/metrics", s.app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aptgate_rollout_stuck_holders{group=\"db\"} 1"),
        "{metrics}"
    );
    let audit = admin.audit("lease").await;
    assert!(
        audit.iter().any(|e| e["entry"]["actor"] == "server"
            && e["entry"]["summary"]
                .as_str()
                .unwrap()
                .contains("\"to\":\"stuck\"")),
        "{audit:#?}"
    );
    // The holder speaks again: no longer stuck, and it goes on.
    report_ok(&dbs[0], f, HolderState::Verifying).await;
    report_ok(&dbs[0], f, HolderState::Released).await;
    let f1 = fence(&acquire(&dbs[1]).await);
    // This one stays silent: an admin releases its slot and the next host gets it.
    until_stuck(&admin, &dbs[1]).await;
    assert_eq!(waits(&acquire(&dbs[2]).await), (WaitReason::Full, 1));
    aptgate_cli(&s, &admin, &["rollout", "release", &dbs[1].host_id]);
    fence(&acquire(&dbs[2]).await);
    let late = report(&dbs[1], f1, HolderState::Updating).await;
    assert_eq!((late.status, late.code()), (409, "stale_fence"));

    let nights = hosts(&s, &token, "night", 1).await;
    match acquire(&nights[0]).await {
        LeaseAnswer::Wait {
            reason: WaitReason::OutsideWindow,
            window_opens_at: Some(at),
            ..
        } => {
            let in_two_hours = now.timestamp() + 7200;
            assert!((at - in_two_hours).abs() <= 60, "{at} vs {in_two_hours}");
        }
        other => panic!("{other:?}"),
    }

    // 50% of four hosts: two slots.
    let pcts = hosts(&s, &token, "pct", 4).await;
    fence(&acquire(&pcts[0]).await);
    fence(&acquire(&pcts[1]).await);
    assert_eq!(waits(&acquire(&pcts[2]).await), (WaitReason::Full, 1));
    let status = admin.ok("GET", "/api/v1/rollout/groups/pct", None).await;
    assert_eq!(
        (status["hosts"].as_u64(), status["slots"].as_u64()),
        (Some(4), Some(2))
    );
}

async fn hosts_asking_at_once_never_exceed_the_slots(backend: Backend) {
    let (s, _admin, token) = setup(
        backend,
        vec![group("db", "role=db", MaxConcurrent::Hosts(3))],
    )
    .await;
    let db = hosts(&s, &token, "db", 8).await;
    for round in 0..2 {
        let answers = futures::future::join_all(db.iter().map(acquire)).await;
        let mut fences: Vec<i64> = answers
            .iter()
            .filter_map(|a| match a {
                LeaseAnswer::Granted { fence, .. } => Some(*fence),
                _ => None,
            })
            .collect();
        fences.sort();
        fences.dedup();
        assert_eq!(fences.len(), 3, "round {round}: {answers:?}");
        let mut positions: Vec<u32> = answers
            .iter()
            .filter_map(|a| match a {
                LeaseAnswer::Wait { position, .. } => Some(*position),
                _ => None,
            })
            .collect();
        positions.sort();
        assert_eq!(positions, [1, 2, 3, 4, 5], "round {round}: {answers:?}");
    }
}
