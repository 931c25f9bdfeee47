//! The fleet queue on SQLite and PostgreSQL: pending updates from real inventories × the
//! channels' snapshots (available now, awaiting approval), grouped with host counts; declines
//! hide a version; an approval is a selective promotion (with the dependencies the channel
//! lacks) after which the update is available, no longer awaiting.

use aptgate_agent::protocol::InstalledPackage;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use serde_json::{json, Value};
use std::time::Duration;

both_backends!(the_fleet_queue_groups_pending_updates_and_approvals_promote_them,);

/// `name from → to: hosts` lines of one list of the queue, sorted.
fn lines(queue: &Value, list: &str) -> Vec<String> {
    let mut out: Vec<String> = queue[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{} {} → {}: {}",
                g["name"].as_str().unwrap(),
                g["from"].as_str().unwrap(),
                g["to"].as_str().unwrap(),
                g["hosts"]
            )
        })
        .collect();
    out.sort();
    out
}

async fn the_fleet_queue_groups_pending_updates_and_approvals_promote_them(backend: Backend) {
    let p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    let mut s = Setup::from_parts(p).await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    s.sync().await;
    s.promote(&[]).await.unwrap();
    admin
        .ok(
            "POST",
            "/api/v1/fleet/rules",
            Some(json!({"name": "servers", "selector": "", "channel": "approved"})),
        )
        .await;
    let token = admin.token(json!({})).await;
    let web: Vec<InstalledPackage> = vec![
        package("foo-utils", "amd64", "1.4.2-1"),
        package("hello-data", "all", "2.10-3"),
        package("contrib-tool", "amd64", "1:0.9+dfsg-2"),
        package("hello", "amd64", "2.10-3"),
        // Removed, config files left: not installed, never pending.
        InstalledPackage {
            status: "deinstall ok config-files".into(),
            ..package("libfoo1", "amd64", "1.0-1")
        },
    ];
    let db = vec![
        package("hello", "amd64", "2.10-3"),
        package("hello-data", "all", "2.10-3"),
    ];
    let mut hosts = Vec::new();
    for (name, role, inventory) in [
        ("web1", "web", &web),
        ("web2", "web", &web),
        ("db1", "db", &db),
    ] {
        let mut agent = TestAgent::new(&s.app.url, name, labels(&[("role", role)]));
        agent.enroll(&token).await;
        agent.checkin(&agent.checkin_request(None)).await;
        agent.upload(inventory.clone()).await;
        hosts.push(agent);
    }

    // approved publishes testing's snapshot: hello 2.12.1-1 (suite testing) is available now,
    // nothing awaits approval.
    let queue = admin.ok("GET", "/api/v1/fleet/pending", None).await;
    assert_eq!(lines(&queue, "awaiting"), Vec::<String>::new());
    assert_eq!(lines(&queue, "available"), ["hello 2.10-3 → 2.12.1-1: 3"]);
    assert_eq!(queue["hosts"], 3);

    // Upstream moves; testing follows: updates await approval for approved.
    next_upstream_state(&mut s.repo);
    s.sync().await;
    let queue = admin.ok("GET", "/api/v1/fleet/pending", None).await;
    assert_eq!(
        lines(&queue, "awaiting"),
        [
            "contrib-tool 1:0.9+dfsg-2 → 1:1.0-1: 2",
            "foo-utils 1.4.2-1 → 1.4.2-2: 2",
            "hello-data 2.10-3 → 2.10-4: 3",
        ]
    );
    let db_only = admin
        .ok("GET", "/api/v1/fleet/pending?selector=role=db", None)
        .await;
    assert_eq!(
        lines(&db_only, "awaiting"),
        ["hello-data 2.10-3 → 2.10-4: 1"]
    );
    let list = admin.ok("GET", "/api/v1/fleet/hosts", None).await;
    let web1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostname"] == "web1")
        .unwrap();
    assert_eq!(
        (web1["awaiting"].as_u64(), web1["available"].as_u64()),
        (Some(3), Some(1))
    );

    // A decline hides that version.
    admin
        .ok("POST", "/api/v1/fleet/decline", Some(json!({"channel": "approved", "packages": ["contrib-tool=1:1.0-1"], "comment": "breaks the till"})))
        .await;
    let queue = admin.ok("GET", "/api/v1/fleet/pending", None).await;
    assert_eq!(lines(&queue, "awaiting").len(), 2, "{queue}");

    // The CLI shows the queue Masif Upgrader's way.
    let shown = cli(&s, &admin.token, &["fleet", "pending"]).unwrap();
    let words = shown.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("foo-utils 2 hosts 1.4.2-1 → 1.4.2-2"),
        "{shown}"
    );
    assert!(
        words.contains("hello-data 3 hosts 2.10-3 → 2.10-4"),
        "{shown}"
    );
    assert!(!words.contains("contrib-tool"), "declined: {shown}");

    // An approval names the version testing has; another is refused, nothing moves.
    let (status, body) = admin
        .call(
            "POST",
            "/api/v1/fleet/approve",
            Some(json!({"channel": "approved", "packages": ["foo-utils=9.9-9"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("1.4.2-2"),
        "{body}"
    );
    let outcome = admin
        .ok("POST", "/api/v1/fleet/approve", Some(json!({"channel": "approved", "packages": ["foo-utils=1.4.2-2"], "comment": "CVE fix"})))
        .await;
    assert_eq!(outcome["channel"], "approved");
    // foo-utils came with the hello-data it needs: both available now, nothing awaits.
    let queue = admin.ok("GET", "/api/v1/fleet/pending", None).await;
    assert_eq!(lines(&queue, "awaiting"), Vec::<String>::new());
    assert_eq!(
        lines(&queue, "available"),
        [
            "foo-utils 1.4.2-1 → 1.4.2-2: 2",
            "hello 2.10-3 → 2.12.1-1: 3",
            "hello-data 2.10-3 → 2.10-4: 3",
        ]
    );
    // Where the approved updates are not installed yet: the hosts of each group.
    let shown = cli(&s, &admin.token, &["fleet", "pending", "--hosts"]).unwrap();
    let after_foo: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.contains("foo-utils"))
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .collect();
    let mut named: Vec<&str> = after_foo
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    named.sort();
    assert_eq!(named, ["web1", "web2"], "{shown}");
    let approvals = admin.audit("approve").await;
    assert_eq!(approvals[0]["entry"]["actor"], "alice");
    assert_eq!(approvals[0]["entry"]["comment"], "CVE fix");
    assert_eq!(
        admin.audit("decline").await[0]["entry"]["comment"],
        "breaks the till"
    );
    let show = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/hosts/{}", hosts[2].host_id),
            None,
        )
        .await;
    assert_eq!(
        show["pending"]["available"].as_array().unwrap().len(),
        2,
        "{show}"
    );

    // The rest of the CLI, against the same server.
    let run =
        |args: &[&str]| cli(&s, &admin.token, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let token = run(&[
        "fleet",
        "token",
        "create",
        "--label",
        "site=berlin",
        "--uses",
        "2",
        "--expires",
        "7d",
    ]);
    assert!(token.trim().starts_with("aptgate-enroll-"), "{token}");
    assert!(run(&["fleet", "token", "list"]).contains("site=berlin"));
    run(&[
        "fleet",
        "rule",
        "add",
        "web",
        "--selector",
        "role=web",
        "--channel",
        "testing",
        "--priority",
        "5",
    ]);
    assert!(run(&["fleet", "rule", "list"]).contains("role=web"));
    let listed = run(&["host", "list", "--selector", "role=web"]);
    assert!(
        listed.contains("web1") && listed.contains("testing") && !listed.contains("db1"),
        "{listed}"
    );
    run(&["host", "label", &hosts[2].host_id, "site=hamburg"]);
    let shown = run(&["host", "show", &hosts[2].host_id]);
    assert!(
        shown.contains("site=hamburg (admin)") && shown.contains("role=db (agent)"),
        "{shown}"
    );
    assert!(shown.contains("channel:       approved"), "{shown}");
    run(&[
        "fleet",
        "command",
        "--host",
        &hosts[2].host_id,
        "upgrade",
        "hello",
    ]);
    assert!(run(&["fleet", "commands"]).contains("upgrade"));
    assert!(run(&["fleet", "poke", "role=db"]).contains("poked 1 host"));
    run(&["fleet", "rule", "remove", "web"]);
    run(&[
        "host",
        "revoke",
        &hosts[2].host_id,
        "--comment",
        "decommissioned",
    ]);
    assert!(run(&["host", "list"]).contains("revoked"));
    let err = cli(
        &s,
        &admin.token,
        &["fleet", "approve", "--channel", "approved", "hello=0.1"],
    )
    .unwrap_err();
    assert!(err.contains("conflict"), "{err}");
}
