//! What a channel move would do on the fleet, on SQLite and PostgreSQL: `promote --dry-run`
//! (whole and `--only`) and `snapshot diff --impact` count, from real inventories, the
//! packages each host would upgrade, and nothing moves, nothing is stored, nothing is audited
//! as a move. Hosts on another channel are not counted.

use aptgate_agent::protocol::InstalledPackage;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use serde_json::{json, Value};
use std::time::Duration;

both_backends!(a_dry_run_tells_what_a_move_would_upgrade_on_which_hosts,);

/// `kind name from → to: hosts` lines of an impact, sorted.
fn lines(impact: &Value) -> Vec<String> {
    let mut out: Vec<String> = impact["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {} {} → {}: {}",
                p["kind"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap_or("-"),
                p["hosts"]
            )
        })
        .collect();
    out.sort();
    out
}

/// Upgrades per hostname.
fn per_host(impact: &Value) -> Vec<(String, u64)> {
    impact["per_host"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["hostname"].as_str().unwrap().to_owned(),
                h["upgrades"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What must not change during a dry run: approved's history, the snapshots, the promotions
/// audited.
async fn unmoved(admin: &Admin) -> (Value, usize, usize) {
    let history = admin
        .ok("GET", "/api/v1/channels/approved/history?limit=100", None)
        .await;
    let snapshots = admin.ok("GET", "/api/v1/snapshots", None).await;
    (
        history,
        snapshots.as_array().unwrap().len(),
        admin.audit("promote").await.len(),
    )
}

async fn a_dry_run_tells_what_a_move_would_upgrade_on_which_hosts(backend: Backend) {
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
    for (name, selector, channel) in [
        ("servers", "", "approved"),
        ("canary", "role=canary", "testing"),
    ] {
        admin
            .ok(
                "POST",
                "/api/v1/fleet/rules",
                Some(json!({"name": name, "selector": selector, "channel": channel})),
            )
            .await;
    }
    let token = admin.token(json!({})).await;
    let web: Vec<InstalledPackage> = vec![
        package("foo-utils", "amd64", "1.4.2-1"),
        package("hello-data", "all", "2.10-3"),
        package("contrib-tool", "amd64", "1:0.9+dfsg-2"),
        package("hello", "amd64", "2.10-3"),
    ];
    let db = vec![
        package("hello", "amd64", "2.10-3"),
        package("hello-data", "all", "2.10-3"),
    ];
    // Already at testing's new versions.
    let canary = vec![
        package("foo-utils", "amd64", "1.4.2-2"),
        package("hello-data", "all", "2.10-4"),
        package("contrib-tool", "amd64", "1:0.9+dfsg-2"),
    ];
    for (name, role, inventory) in [
        ("web1", "web", &web),
        ("web2", "web", &web),
        ("db1", "db", &db),
        ("canary1", "canary", &canary),
    ] {
        let mut agent = TestAgent::new(&s.app.url, name, labels(&[("role", role)]));
        agent.enroll(&token).await;
        agent.checkin(&agent.checkin_request(None)).await;
        agent.upload(inventory.clone()).await;
    }
    // A host without an inventory is counted as such.
    let mut quiet = TestAgent::new(&s.app.url, "quiet1", labels(&[("role", "db")]));
    quiet.enroll(&token).await;

    // approved is at testing's snapshot: a whole promotion changes nothing anywhere.
    let same = admin
        .ok(
            "POST",
            "/api/v1/fleet/impact",
            Some(json!({"promote": {"from": "testing", "to": "approved"}})),
        )
        .await;
    assert_eq!(same["plan"]["diff"]["upgraded"], json!([]), "{same}");
    assert_eq!(lines(&same["impact"]), Vec::<String>::new());
    assert_eq!(same["impact"]["hosts"], 4, "{same}");
    assert_eq!(same["impact"]["without_inventory"], 1, "{same}");

    // Upstream moves; testing follows. hello 2.12.1-1 is already available on approved: not
    // the move's doing, not counted.
    next_upstream_state(&mut s.repo);
    s.sync().await;
    let before = unmoved(&admin).await;
    let whole = admin
        .ok(
            "POST",
            "/api/v1/fleet/impact",
            Some(json!({"promote": {"from": "testing", "to": "approved"}})),
        )
        .await;
    let impact = &whole["impact"];
    assert_eq!(
        lines(impact),
        [
            "upgrade contrib-tool 1:0.9+dfsg-2 → 1:1.0-1: 2",
            "upgrade foo-utils 1.4.2-1 → 1.4.2-2: 2",
            "upgrade hello-data 2.10-3 → 2.10-4: 3",
        ]
    );
    assert_eq!(impact["upgrades"], json!({"packages": 3, "hosts": 3}));
    assert_eq!(impact["channel"], "approved");
    assert_eq!(
        per_host(impact),
        [("db1".into(), 1), ("web1".into(), 3), ("web2".into(), 3)]
    );
    let upgraded: Vec<&str> = whole["plan"]["diff"]["upgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        upgraded.contains(&"foo-utils") && upgraded.contains(&"contrib-tool"),
        "{whole}"
    );
    assert_eq!(unmoved(&admin).await, before, "a dry run moves nothing");

    // The CLI says it the fleet queue's way, and moves nothing either.
    let run =
        |args: &[&str]| cli(&s, &admin.token, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let shown = words(&run(&[
        "promote",
        "--from",
        "testing",
        "--to",
        "approved",
        "--dry-run",
    ]));
    assert!(shown.contains("dry run, nothing moves"), "{shown}");
    assert!(shown.contains("upgrades 3 packages on 3 hosts"), "{shown}");
    assert!(
        shown.contains("hello-data 3 hosts 2.10-3 → 2.10-4"),
        "{shown}"
    );
    assert!(
        shown.contains("foo-utils 2 hosts 1.4.2-1 → 1.4.2-2"),
        "{shown}"
    );
    let json_out: Value = serde_json::from_str(&run(&[
        "promote",
        "--from",
        "testing",
        "--to",
        "approved",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json_out["impact"]["upgrades"], impact["upgrades"]);
    assert_eq!(
        unmoved(&admin).await,
        before,
        "the CLI's dry run moves nothing"
    );

    // --only: the named package and the dependency approved lacks (hello-data), nothing else;
    // no derived snapshot is stored.
    let only = admin
        .ok(
            "POST",
            "/api/v1/fleet/impact",
            Some(json!({"promote": {"from": "testing", "to": "approved", "only": ["foo-utils"]}})),
        )
        .await;
    assert_eq!(
        lines(&only["impact"]),
        [
            "upgrade foo-utils 1.4.2-1 → 1.4.2-2: 2",
            "upgrade hello-data 2.10-3 → 2.10-4: 3",
        ]
    );
    assert_eq!(
        only["impact"]["upgrades"],
        json!({"packages": 2, "hosts": 3})
    );
    assert_eq!(only["plan"]["taken"], json!(["foo-utils", "hello-data"]));
    let only_cli = words(&run(&[
        "promote",
        "--from",
        "testing",
        "--to",
        "approved",
        "--only",
        "foo-utils",
        "--dry-run",
    ]));
    assert!(
        only_cli.contains("upgrades 2 packages on 3 hosts"),
        "{only_cli}"
    );
    assert!(!only_cli.contains("contrib-tool 2 hosts"), "{only_cli}");
    assert_eq!(
        unmoved(&admin).await,
        before,
        "a selective dry run stores nothing"
    );

    // snapshot diff --impact agrees: approved is the channel at its first snapshot.
    let channels = admin.ok("GET", "/api/v1/channels", None).await;
    let at = |name: &str| {
        channels
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["snapshot_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (at("approved"), at("testing"));
    let diffed: Value =
        serde_json::from_str(&run(&["snapshot", "diff", &a, &b, "--impact", "--json"])).unwrap();
    let by_channel = diffed["channels"].as_array().unwrap();
    assert_eq!(by_channel.len(), 1, "{diffed}");
    assert_eq!(by_channel[0]["impact"]["channel"], "approved");
    assert_eq!(lines(&by_channel[0]["impact"]), lines(impact));
    let diff_cli = words(&run(&["snapshot", "diff", &a, &b, "--impact"]));
    assert!(
        diff_cli.contains("upgrades 3 packages on 3 hosts"),
        "{diff_cli}"
    );

    // The way back, for the hosts of testing: the canary is left newer than its channel.
    let back: Value = serde_json::from_str(&run(&[
        "snapshot",
        "diff",
        &b,
        &a,
        "--impact",
        "--channel",
        "testing",
        "--json",
    ]))
    .unwrap();
    let back = &back["channels"][0]["impact"];
    assert_eq!(
        lines(back),
        [
            "left_newer foo-utils 1.4.2-2 → 1.4.2-1: 1",
            "left_newer hello-data 2.10-4 → 2.10-3: 1",
        ]
    );
    assert_eq!(back["hosts"], 1, "only the canary is on testing: {back}");
    assert_eq!(back["upgrades"]["hosts"], 0);

    // A held package keeps approved's version: no upgrade of it counted.
    admin
        .ok(
            "POST",
            "/api/v1/channels/approved/holds",
            Some(json!({"package": "contrib-tool"})),
        )
        .await;
    let held = admin
        .ok(
            "POST",
            "/api/v1/fleet/impact",
            Some(json!({"promote": {"from": "testing", "to": "approved"}})),
        )
        .await;
    assert_eq!(held["plan"]["held"], json!(["contrib-tool"]));
    assert_eq!(
        held["impact"]["upgrades"],
        json!({"packages": 2, "hosts": 3})
    );

    // Bad requests change nothing and say why.
    let (status, body) = admin
        .call(
            "POST",
            "/api/v1/fleet/impact",
            Some(json!({"channel": "approved"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin
        .call("POST", "/api/v1/fleet/impact", Some(json!({"promote": {"from": "testing", "to": "approved", "only": ["no-such-package"]}})))
        .await;
    assert_eq!(status, 409, "{body}");
}
