//! The fleet end to end: real `aptgate-agent` processes, each managing its own apt/dpkg root
//! with the real `apt-get` and `dpkg`, against a real server. Hosts enroll with labels, get
//! their channel from assignment rules, write sources apt accepts and report inventories; an
//! upstream update shows as pending; an approval for one group's channel lets only that group
//! upgrade (their dpkg databases change, the others' do not) after commands reach them through
//! their long-poll waits.

use aptgate_config::ChannelConfig;
use aptgate_tests::agent::{until, Machine};
use aptgate_tests::both_backends;
use aptgate_tests::channels::{channel, cli, parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use serde_json::Value;
use std::time::Duration;

both_backends!(agents_get_their_channel_report_and_upgrade_only_where_approved);

fn json(s: &Setup, token: &str, args: &[&str]) -> Value {
    let out = cli(s, token, args).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}: {out}"))
}

async fn agents_get_their_channel_report_and_upgrade_only_where_approved(backend: Backend) {
    // testing follows the fixture upstream; web and db are one approval step behind it.
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    for name in ["web", "db"] {
        p.config.channels.push(ChannelConfig {
            promotes_from: Some("testing".parse().unwrap()),
            ..channel(name)
        });
    }
    // One distribution per channel, as a fleet runs it (the fixture also has a `testing` suite
    // with a newer hello).
    for c in &mut p.config.channels {
        c.suites = vec!["stable".into()];
    }
    // Agents only hear news early through their waits: the regular check-in is an hour away.
    p.config.fleet.checkin_interval = Duration::from_secs(3600);
    p.config.fleet.wait = Duration::from_secs(30);
    let mut s = Setup::from_parts(p).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token")).unwrap();
    let token = token.trim().to_owned();
    let token = token.as_str();
    s.sync().await;
    for to in ["web", "db"] {
        cli(&s, token, &["promote", "--from", "testing", "--to", to]).unwrap();
    }

    cli(
        &s,
        token,
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
    cli(
        &s,
        token,
        &[
            "fleet",
            "rule",
            "add",
            "db",
            "--selector",
            "role=db",
            "--channel",
            "db",
        ],
    )
    .unwrap();
    let enroll_token = cli(&s, token, &["fleet", "token", "create", "--uses", "3"]).unwrap();
    let enroll_token = enroll_token.trim();

    let dir = s.dir.path().join("machines");
    let mut machines = vec![
        Machine::new(&dir, "web1"),
        Machine::new(&dir, "web2"),
        Machine::new(&dir, "db1"),
    ];
    for m in &mut machines {
        let role = if m.name.starts_with("web") {
            "web"
        } else {
            "db"
        };
        m.enroll(&s.app.url, enroll_token, &format!("role={role}"));
        m.start();
    }

    // Each host gets the channel its label selects, in a source apt accepts (checked by the
    // install below), and reports an inventory.
    until("every agent to write its source", &machines, || {
        machines.iter().all(|m| !m.sources().is_empty())
    })
    .await;
    for m in &machines {
        let channel = if m.name.starts_with("web") {
            "web"
        } else {
            "db"
        };
        assert!(
            m.sources().contains(&format!("/channels/{channel}/")),
            "{}: {}",
            m.name,
            m.sources()
        );
    }
    let hosts = json(&s, token, &["host", "list", "--json"]);
    assert_eq!(hosts.as_array().unwrap().len(), 3, "{hosts:#}");

    // Install hello everywhere: the command reaches the agents through their waits.
    cli(
        &s,
        token,
        &["fleet", "command", "--selector", "", "install", "hello"],
    )
    .unwrap();
    until("hello installed on every host", &machines, || {
        machines
            .iter()
            .all(|m| m.installed("hello").as_deref() == Some("2.10-3"))
    })
    .await;
    until("the inventories to reach the server", &machines, || {
        machines.iter().all(|m| {
            let host = json(&s, token, &["host", "show", &m.host_id(), "--json"]);
            host["inventory"]["packages"].as_u64() == Some(1)
        })
    })
    .await;

    // Upstream publishes a new hello; testing follows it, web and db do not (yet).
    for p in s.repo.spec.packages.iter_mut() {
        if p.name == "hello" && p.version == "2.10-3" {
            p.version = "2.10-4".into();
        }
    }
    s.repo.regenerate().unwrap();
    s.sync().await;
    let pending = cli(&s, token, &["fleet", "pending"]).unwrap();
    assert!(
        pending.contains("hello") && pending.contains("2.10-3") && pending.contains("2.10-4"),
        "{pending}"
    );
    assert!(
        pending.contains("2 hosts  2.10-3 → 2.10-4  (into web)")
            && pending.contains("1 host   2.10-3 → 2.10-4  (into db)"),
        "{pending}"
    );

    // Approve for web only, then ask every host to upgrade.
    cli(
        &s,
        token,
        &[
            "fleet",
            "approve",
            "--channel",
            "web",
            "hello=2.10-4",
            "--comment",
            "ticket 7",
        ],
    )
    .unwrap();
    cli(
        &s,
        token,
        &["fleet", "command", "--selector", "", "upgrade"],
    )
    .unwrap();
    until("web hosts to upgrade hello", &machines, || {
        machines
            .iter()
            .filter(|m| m.name.starts_with("web"))
            .all(|m| m.installed("hello").as_deref() == Some("2.10-4"))
    })
    .await;
    let db = &machines[2];
    until("db1's upgrade to finish", &machines, || {
        let commands = json(
            &s,
            token,
            &["fleet", "commands", "--host", &db.host_id(), "--json"],
        );
        commands.as_array().is_some_and(|c| {
            c.iter()
                .all(|c| c["status"] != "queued" && c["status"] != "sent")
        })
    })
    .await;
    assert_eq!(
        db.installed("hello").as_deref(),
        Some("2.10-3"),
        "{}",
        db.log()
    );

    // The queue now holds the db host only; the approval is in the audit log.
    let pending = cli(&s, token, &["fleet", "pending"]).unwrap();
    assert!(
        pending.contains("1 host   2.10-3 → 2.10-4  (into db)") && !pending.contains("(into web)"),
        "{pending}"
    );
    let audit = cli(&s, token, &["audit", "--action", "approve"]).unwrap();
    assert!(audit.contains("ticket 7"), "{audit}");
}
