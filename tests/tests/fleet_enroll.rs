//! The fleet end to end over the protocol, on SQLite and PostgreSQL: enrollment (tokens,
//! labels, idempotent re-enrollment, cloned machines, manual approval), assignment by labels
//! to channels and the apt sources that follow, inventories stored once and not asked again,
//! admin labels, commands and pokes that end a long-poll wait.

use aptgate_agent::protocol::{CommandKind, CommandResult, HostStatus};
use aptgate_tests::app::TestApp;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use serde_json::json;
use std::time::{Duration, Instant};

both_backends!(
    hosts_enroll_get_their_channel_by_labels_and_report_inventory,
    clones_manual_approval_and_token_limits,
    commands_and_pokes_reach_waiting_agents,
    a_poke_on_one_instance_ends_a_wait_held_by_another,
);

async fn setup(backend: Backend) -> (Setup, Admin) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    p.config.fleet.wait = Duration::from_secs(20);
    p.config.fleet.checkin_interval = Duration::from_secs(30);
    let s = Setup::from_parts(p).await;
    s.sync().await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    (s, admin)
}

async fn hosts_enroll_get_their_channel_by_labels_and_report_inventory(backend: Backend) {
    let (s, admin) = setup(backend).await;
    admin
        .ok(
            "POST",
            "/api/v1/fleet/rules",
            Some(json!({"name": "berlin", "selector": "site=berlin", "channel": "testing"})),
        )
        .await;
    admin
        .ok("POST", "/api/v1/fleet/rules", Some(json!({"name": "berlin-db", "selector": "site=berlin,role=db", "channel": "approved", "mirror": "http://cache.example.org:8470/", "disable_other_sources": true})))
        .await;
    let token = admin
        .token(json!({"labels": {"site": "berlin"}, "uses": 5, "comment": "rollout"}))
        .await;

    let mut web = TestAgent::new(&s.app.url, "web1", labels(&[("role", "web")]));
    let enrolled = web.enroll(&token).await;
    assert_eq!(enrolled.status, HostStatus::Active);
    assert!(enrolled.host_id.starts_with("h-") && enrolled.host_id.len() == 18);
    assert_eq!(enrolled.poll.wait_secs, 20);
    let answer = web.checkin(&web.checkin_request(None)).await;
    assert_eq!(answer.sources.channel.as_deref(), Some("testing"));
    let suites: Vec<&str> = answer
        .sources
        .entries
        .iter()
        .map(|e| e.suites[0].as_str())
        .collect();
    assert_eq!(suites, ["stable", "testing"]);
    let entry = &answer.sources.entries[0];
    assert_eq!(entry.uris, [format!("{}/channels/testing/", s.app.url)]);
    assert!(
        entry.components.contains(&"main".to_owned()),
        "{:?}",
        entry.components
    );
    assert_eq!(entry.architectures, ["amd64"]);
    assert!(!answer.sources.disable_other_sources);
    assert_eq!(answer.sources.keys.len(), 1);
    let key = &answer.sources.keys[0];
    assert!(key.file_name.starts_with("aptgate-") && key.file_name.ends_with(".asc"));
    assert!(key.armored.contains("BEGIN PGP PUBLIC KEY BLOCK"));
    assert!(answer.upload_inventory, "no inventory yet");
    assert_eq!(answer.sources.rev.len(), 64);

    // The admin's label wins over the agent's: web becomes a db host, on approved.
    let (status, _) = admin
        .call(
            "POST",
            &format!("/api/v1/fleet/hosts/{}/labels", web.host_id),
            Some(json!({"set": ["role=db"], "comment": "moved"})),
        )
        .await;
    assert_eq!(status, 200);
    let answer = web.checkin(&web.checkin_request(None)).await;
    assert_eq!(answer.sources.channel.as_deref(), Some("approved"));
    assert!(answer.sources.disable_other_sources);
    assert!(
        answer.sources.entries.is_empty(),
        "approved publishes nothing yet"
    );
    s.promote(&[]).await.unwrap();
    let answer = web.checkin(&web.checkin_request(None)).await;
    // The rule's mirror comes first; this server stays the fallback.
    assert_eq!(
        answer.sources.mirrors,
        ["http://cache.example.org:8470/channels/approved/"]
    );
    assert_eq!(
        answer.sources.entries[0].uris,
        [format!("{}/channels/approved/", s.app.url)]
    );
    admin
        .ok(
            "POST",
            &format!("/api/v1/fleet/hosts/{}/labels", web.host_id),
            Some(json!({"remove": ["role"]})),
        )
        .await;

    // Inventory: uploaded once; a second host with the same packages is not asked for it.
    let packages = vec![
        package("hello", "amd64", "2.10-3"),
        package("libfoo1", "amd64", "1.4.2-1"),
    ];
    let digest = web.upload(packages.clone()).await;
    let answer = web
        .checkin(&web.checkin_request(Some(digest.clone())))
        .await;
    assert!(!answer.upload_inventory);
    let mut twin = TestAgent::new(&s.app.url, "web2", labels(&[]));
    twin.enroll(&token).await;
    let answer = twin
        .checkin(&twin.checkin_request(Some(digest.clone())))
        .await;
    assert!(
        !answer.upload_inventory,
        "the server has this inventory already"
    );
    // A host nothing matches is unassigned.
    let paris_token = admin.token(json!({"labels": {"site": "paris"}})).await;
    let mut paris = TestAgent::new(&s.app.url, "paris1", labels(&[]));
    paris.enroll(&paris_token).await;
    let answer = paris.checkin(&paris.checkin_request(None)).await;
    assert_eq!(answer.sources.channel, None);
    assert!(answer.sources.entries.is_empty());

    let list = admin
        .ok("GET", "/api/v1/fleet/hosts?selector=site=berlin", None)
        .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let show = admin
        .ok("GET", &format!("/api/v1/fleet/hosts/{}", web.host_id), None)
        .await;
    assert_eq!(show["hostname"], "web1");
    assert_eq!(show["channel"], "testing");
    assert_eq!(show["inventory"]["packages"], 2);
    assert_eq!(show["os"], "Debian GNU/Linux 12 (bookworm)");
    let origins: Vec<(String, String)> = show["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_owned(),
                l["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        origins.contains(&("site".into(), "admin".into())),
        "{origins:?}"
    );
    assert!(
        origins.contains(&("role".into(), "agent".into())),
        "{origins:?}"
    );
    let rules = admin.ok("GET", "/api/v1/fleet/rules", None).await;
    assert_eq!(rules.as_array().unwrap().len(), 2);
    // Changes are audited with the actor and comment.
    let tokens = admin.audit("token").await;
    assert_eq!(tokens.last().unwrap()["entry"]["actor"], "alice");
    assert_eq!(tokens.last().unwrap()["entry"]["comment"], "rollout");
    assert!(!admin.audit("rule").await.is_empty());
    assert!(admin.audit("host").await.len() >= 3);
}

async fn clones_manual_approval_and_token_limits(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let token = admin.token(json!({"uses": 2})).await;
    let mut a = TestAgent::new(&s.app.url, "a", labels(&[]));
    let first = a.enroll(&token).await;
    // The same machine enrolling again: the same host, no use taken.
    let again = a.enroll(&token).await;
    assert_eq!(again.host_id, first.host_id);
    // Its clone (same key, another machine-id): a new host, pending, both flagged.
    let mut clone = TestAgent::new(&s.app.url, "a", labels(&[]));
    clone.key = aptgate_agent::protocol::HostKey::from_hex(&a.key.to_hex()).unwrap();
    let cloned = clone.enroll(&token).await;
    assert_ne!(cloned.host_id, first.host_id);
    assert_eq!(cloned.status, HostStatus::Pending);
    let show = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/hosts/{}", cloned.host_id),
            None,
        )
        .await;
    assert!(
        show["flagged"].as_str().unwrap().contains(&first.host_id),
        "{show}"
    );
    let show = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/hosts/{}", first.host_id),
            None,
        )
        .await;
    assert!(
        show["flagged"].as_str().unwrap().contains(&cloned.host_id),
        "{show}"
    );
    // Two uses taken: the token is exhausted.
    let mut b = TestAgent::new(&s.app.url, "b", labels(&[]));
    let refused = b.try_enroll(&token).await;
    assert_eq!((refused.status, refused.code()), (403, "token_exhausted"));

    // A manual-approval token: pending until accepted; pending hosts get no sources.
    admin
        .ok(
            "POST",
            "/api/v1/fleet/rules",
            Some(json!({"name": "all", "selector": "", "channel": "testing"})),
        )
        .await;
    let created = admin
        .ok(
            "POST",
            "/api/v1/fleet/tokens",
            Some(json!({"manual_approval": true})),
        )
        .await;
    let manual = created["token"].as_str().unwrap().to_owned();
    let mut m = TestAgent::new(&s.app.url, "m", labels(&[]));
    assert_eq!(m.enroll(&manual).await.status, HostStatus::Pending);
    let answer = m.checkin(&m.checkin_request(None)).await;
    assert_eq!(answer.status, HostStatus::Pending);
    assert!(answer.sources.entries.is_empty() && answer.commands.is_empty());
    admin
        .ok(
            "POST",
            &format!("/api/v1/fleet/hosts/{}/accept", m.host_id),
            Some(json!({"comment": "checked"})),
        )
        .await;
    let answer = m.checkin(&m.checkin_request(None)).await;
    assert_eq!(answer.status, HostStatus::Active);
    assert_eq!(answer.sources.channel.as_deref(), Some("testing"));
    // Revoked tokens refuse.
    let listed = admin.ok("GET", "/api/v1/fleet/tokens", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let id = created["id"].as_str().unwrap();
    assert!(
        listed.to_string().find(&manual).is_none(),
        "secrets are never listed"
    );
    admin
        .ok("POST", &format!("/api/v1/fleet/tokens/{id}/revoke"), None)
        .await;
    let mut n = TestAgent::new(&s.app.url, "n", labels(&[]));
    let refused = n.try_enroll(&manual).await;
    assert_eq!((refused.status, refused.code()), (403, "token_revoked"));
}

async fn commands_and_pokes_reach_waiting_agents(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let token = admin.token(json!({"labels": {"role": "pos"}})).await;
    let mut a = TestAgent::new(&s.app.url, "pos1", labels(&[]));
    a.enroll(&token).await;
    let first = a.checkin(&a.checkin_request(None)).await;
    assert!(first.commands.is_empty());

    // A wait returns once a command is queued for the host, well before wait_secs.
    let waiter = {
        let url = s.app.url.clone();
        let key = a.key.to_hex();
        let host = a.host_id.clone();
        let rev = first.rev;
        tokio::spawn(async move {
            let mut w = TestAgent::new(&url, "pos1", labels(&[]));
            w.key = aptgate_agent::protocol::HostKey::from_hex(&key).unwrap();
            w.host_id = host;
            let started = Instant::now();
            let answer = w.wait(rev).await;
            (answer.status, answer.body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = admin
        .ok("POST", "/api/v1/fleet/commands", Some(json!({"selector": "role=pos", "kind": "install", "packages": ["hello"], "comment": "ticket 7"})))
        .await;
    assert_eq!(queued["queued"].as_array().unwrap().len(), 1);
    let (status, body, took) = waiter.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["rev"].as_i64().unwrap() > first.rev);
    assert!(took < Duration::from_secs(10), "{took:?}");

    let answer = a.checkin(&a.checkin_request(None)).await;
    assert_eq!(answer.commands.len(), 1);
    let command = &answer.commands[0];
    assert_eq!(command.kind, CommandKind::Install);
    assert_eq!(command.packages, ["hello"]);
    // Sent once only.
    assert!(a
        .checkin(&a.checkin_request(None))
        .await
        .commands
        .is_empty());
    let mut report = a.checkin_request(None);
    report.results = vec![CommandResult {
        id: command.id,
        exit_code: 0,
        output: "Setting up hello (2.10-3) ...".into(),
        started_at: unix_now() - 2,
        finished_at: unix_now(),
    }];
    a.checkin(&report).await;
    let commands = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/commands?host={}", a.host_id),
            None,
        )
        .await;
    assert_eq!(commands[0]["status"], "done");
    assert_eq!(commands[0]["exit_code"], 0);
    assert!(commands[0]["output"]
        .as_str()
        .unwrap()
        .contains("Setting up hello"));

    // A poke ends a wait too; a wait with nothing new returns at wait_secs (20 s here) — only
    // the poke case is timed.
    let rev = a.checkin(&a.checkin_request(None)).await.rev;
    let poke = {
        let url = s.app.url.clone();
        let token = admin.token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Admin { url, token }
                .ok(
                    "POST",
                    "/api/v1/fleet/poke",
                    Some(json!({"selector": "role=pos"})),
                )
                .await
        })
    };
    let started = Instant::now();
    let answer = a.wait(rev).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body["rev"].as_i64().unwrap() > rev);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(poke.await.unwrap()["poked"].as_array().unwrap().len(), 1);
    assert!(!admin.audit("command").await.is_empty());
}

async fn a_poke_on_one_instance_ends_a_wait_held_by_another(backend: Backend) {
    let (s, admin) = setup(backend).await;
    // A second server instance on the same catalog and store.
    let other = TestApp::start_config(s.app.config.clone()).await;
    let token = admin.token(json!({"labels": {"site": "berlin"}})).await;
    let mut a = TestAgent::new(&other.url, "a", labels(&[]));
    a.enroll(&token).await;
    let rev = a.checkin(&a.checkin_request(None)).await.rev;
    let poke = {
        let (url, token) = (s.app.url.clone(), admin.token.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Admin { url, token }
                .ok(
                    "POST",
                    "/api/v1/fleet/poke",
                    Some(json!({"selector": "site=berlin"})),
                )
                .await
        })
    };
    // The wait is held by `other`; the poke goes to the first instance.
    let started = Instant::now();
    let answer = a.wait(rev).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body["rev"].as_i64().unwrap() > rev);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    poke.await.unwrap();
}
