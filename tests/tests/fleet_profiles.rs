//! Package profiles end to end, on SQLite and on PostgreSQL: real `aptgate-agent` processes,
//! each on its own apt/dpkg root, converge with the real apt-get on what the profiles matching
//! their labels want. An in-house `.deb` uploaded to a local source reaches the labelled host
//! only; an `--absent` profile removes a package; a present/absent pair is a conflict neither
//! side of which is applied; a failing install is reported with apt's error and not retried in
//! a loop; compliance is computed from the inventories; bad input is refused with a 400.

use aptgate_config::{SourceConfig, SourceKind};
use aptgate_tests::agent::{until, Machine};
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::{cli, parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{build_package, FixtureSpec, PackageSpec};
use serde_json::{json, Value};
use std::time::Duration;

both_backends!(profiles_converge_hosts_by_label_and_report_compliance);

fn json_cli(s: &Setup, token: &str, args: &[&str]) -> Value {
    let out = cli(s, token, args).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}: {out}"))
}

fn compliance(s: &Setup, token: &str) -> Value {
    json_cli(s, token, &["fleet", "compliance", "--json"])
}

/// The entry of `host` under profile `name` in a compliance answer.
fn entry(report: &Value, profile: &str, host: &str) -> Option<Value> {
    report["profiles"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == profile)?["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
}

fn add_profile(s: &Setup, token: &str, args: &[&str]) {
    let mut all = vec!["fleet", "profile", "add"];
    all.extend_from_slice(args);
    cli(s, token, &all).unwrap_or_else(|e| panic!("aptgate {all:?}: {e}"));
}

async fn profiles_converge_hosts_by_label_and_report_compliance(backend: Backend) {
    // testing follows the fixture and the local source `inhouse`; every host uses it.
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.sources.push(SourceConfig {
        name: "inhouse".parse().unwrap(),
        kind: SourceKind::Local,
        url: None,
        suites: vec!["stable".into()],
        components: vec!["main".into()],
        architectures: vec!["amd64".into(), "arm64".into()],
        keyring: Vec::new(),
        inline_keys: Vec::new(),
        policy: Default::default(),
        fallback: Vec::new(),
    });
    p.config.channels[0].follows = vec!["fixture".parse().unwrap(), "inhouse".parse().unwrap()];
    for c in &mut p.config.channels {
        c.suites = vec!["stable".into()];
    }
    // Agents hear of profile changes through their waits: the regular check-in is an hour away.
    p.config.fleet.checkin_interval = Duration::from_secs(3600);
    p.config.fleet.wait = Duration::from_secs(30);
    let s = Setup::from_parts(p).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token")).unwrap();
    let token = token.trim();
    s.sync().await;

    // The in-house package, uploaded and published.
    let debs = s.dir.path().join("debs");
    fs_err::create_dir_all(&debs).unwrap();
    let deb = debs.join("acme-agent_1.0-1_all.deb");
    build_package(
        &deb,
        &PackageSpec::new("acme-agent", "1.0-1", "all", "main", &["stable"]),
    )
    .unwrap();
    cli(
        &s,
        token,
        &["upload", deb.to_str().unwrap(), "--to", "inhouse"],
    )
    .unwrap();
    let out = cli(&s, token, &["sync", "inhouse"]).unwrap();
    assert!(out.contains("moved testing"), "{out}");
    cli(
        &s,
        token,
        &[
            "fleet",
            "rule",
            "add",
            "all",
            "--selector",
            "",
            "--channel",
            "testing",
        ],
    )
    .unwrap();

    let enroll_token = cli(&s, token, &["fleet", "token", "create", "--uses", "2"]).unwrap();
    let dir = s.dir.path().join("machines");
    let mut machines = vec![Machine::new(&dir, "pos1"), Machine::new(&dir, "office1")];
    machines[0].enroll_and_start(&s.app.url, enroll_token.trim(), "role=pos");
    machines[1].enroll_and_start(&s.app.url, enroll_token.trim(), "role=office");
    until("both agents to write their source", &machines, || {
        machines.iter().all(|m| !m.sources().is_empty())
    })
    .await;
    let (pos, office) = (&machines[0], &machines[1]);
    let (pos_id, office_id) = (pos.host_id(), office.host_id());

    // hello everywhere, by command, so an --absent profile has something to remove.
    cli(
        &s,
        token,
        &["fleet", "command", "--selector", "", "install", "hello"],
    )
    .unwrap();
    until("hello on both hosts", &machines, || {
        machines.iter().all(|m| m.installed("hello").is_some())
    })
    .await;

    // Bad input: 400 with a clear message, nothing stored, nothing audited.
    let refusals: Vec<(Value, &str, &str)> = vec![
        (
            json!({"name": "a b", "packages": [{"name": "hello", "state": "present"}]}),
            "bad_profile",
            "invalid profile name",
        ),
        (
            json!({"name": "x", "packages": [{"name": "hello;reboot", "state": "present"}]}),
            "bad_profile",
            "invalid package name",
        ),
        (
            json!({"name": "x", "packages": [{"name": "hello", "state": "present", "version": "1$(reboot)"}]}),
            "bad_profile",
            "invalid version pattern",
        ),
        (
            json!({"name": "x", "packages": [{"name": "hello", "state": "absent", "version": "1"}]}),
            "bad_profile",
            "an absent package takes no version",
        ),
        (
            json!({"name": "x", "packages": [{"name": "hello", "state": "maybe"}]}),
            "bad_profile",
            "unknown variant",
        ),
        (
            json!({"name": "x", "packages": []}),
            "bad_profile",
            "at least one package",
        ),
        (
            json!({"name": "x", "selector": "role", "packages": [{"name": "hello", "state": "present"}]}),
            "bad_selector",
            "not key=value",
        ),
    ];
    for (body, code, message) in refusals {
        let r = client()
            .post(format!("{}/api/v1/fleet/profiles", s.app.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }
    // Behind the admin token, and in the OpenAPI document.
    for (method, path) in [
        ("GET", "/api/v1/fleet/profiles"),
        ("POST", "/api/v1/fleet/profiles"),
        ("DELETE", "/api/v1/fleet/profiles/x"),
        ("GET", "/api/v1/fleet/compliance"),
    ] {
        let status = client()
            .request(method.parse().unwrap(), format!("{}{path}", s.app.url))
            .json(&json!({"name": "x", "packages": [{"name": "hello", "state": "present"}]}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{method} {path}");
    }
    let openapi: Value = client()
        .get(format!("{}/api/v1/openapi.json", s.app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/api/v1/fleet/profiles",
        "/api/v1/fleet/profiles/{name}",
        "/api/v1/fleet/compliance",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} not in the OpenAPI document"
        );
    }
    let err = cli(
        &s,
        token,
        &["fleet", "profile", "add", "x", "--install", "Hello"],
    )
    .unwrap_err();
    assert!(
        err.contains("invalid package name") && err.contains("hint:"),
        "{err}"
    );
    let listed = json_cli(&s, token, &["fleet", "profile", "list", "--json"]);
    assert_eq!(listed, json!([]));

    // The in-house package on the pos host only.
    add_profile(
        &s,
        token,
        &[
            "pos-agent",
            "--selector",
            "role=pos",
            "--install",
            "acme-agent",
            "--comment",
            "POS-12",
        ],
    );
    until("acme-agent on the pos host", &machines, || {
        pos.installed("acme-agent").as_deref() == Some("1.0-1")
    })
    .await;
    until(
        "the pos host's compliance from its inventory",
        &machines,
        || {
            entry(&compliance(&s, token), "pos-agent", &pos_id)
                .is_some_and(|h| h["compliant"] == true)
        },
    )
    .await;
    let report = compliance(&s, token);
    let not_covered: Vec<&str> = report["not_covered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(not_covered, [office_id.as_str()], "{report:#}");
    assert!(
        entry(&report, "pos-agent", &office_id).is_none(),
        "{report:#}"
    );
    assert_eq!(office.installed("acme-agent"), None, "{}", office.log());
    let text = cli(&s, token, &["fleet", "compliance"]).unwrap();
    assert!(
        text.contains("pos-agent (role=pos): 1 compliant, 0 not")
            && text.contains("not covered by any profile: 1 host(s)"),
        "{text}"
    );

    // hello must go from office hosts: removed there, kept on the pos host.
    add_profile(
        &s,
        token,
        &["no-hello", "--selector", "role=office", "--absent", "hello"],
    );
    until("hello removed from the office host", &machines, || {
        office.installed("hello").is_none()
    })
    .await;
    until("the office host compliant", &machines, || {
        entry(&compliance(&s, token), "no-hello", &office_id)
            .is_some_and(|h| h["compliant"] == true)
    })
    .await;
    assert!(pos.installed("hello").is_some());

    // Another profile wants hello on the same hosts at the same priority: a conflict, reported
    // and not guessed (hello stays absent).
    add_profile(
        &s,
        token,
        &[
            "want-hello",
            "--selector",
            "role=office",
            "--install",
            "hello",
        ],
    );
    until(
        "the office agent to receive the conflict",
        &machines,
        || {
            office.agent_state()["profile"]["conflicts"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        },
    )
    .await;
    let report = compliance(&s, token);
    for profile in ["no-hello", "want-hello"] {
        let h = entry(&report, profile, &office_id).unwrap();
        assert_eq!(h["compliant"], false, "{report:#}");
        assert_eq!(h["problems"][0]["package"], "hello", "{report:#}");
        assert_eq!(h["problems"][0]["state"], "conflict", "{report:#}");
        assert_eq!(
            h["problems"][0]["wanted"], "no-hello: absent; want-hello: present",
            "{report:#}"
        );
    }
    assert_eq!(office.installed("hello"), None, "{}", office.log());
    let text = cli(
        &s,
        token,
        &["fleet", "compliance", "--selector", "role=office"],
    )
    .unwrap();
    assert!(text.contains("hello: conflict"), "{text}");

    // A package apt cannot find: the failure is reported with apt's words, and the agent does
    // not try again while neither the profile nor the dpkg database changes.
    add_profile(
        &s,
        token,
        &[
            "broken",
            "--selector",
            "role=pos",
            "--install",
            "no-such-package=1.0-1",
        ],
    );
    until("the failure reported", &machines, || {
        entry(&compliance(&s, token), "broken", &pos_id).is_some_and(|h| {
            h["compliant"] == false
                && h["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no-such-package"))
        })
    })
    .await;
    let h = entry(&compliance(&s, token), "broken", &pos_id).unwrap();
    assert_eq!(h["problems"][0]["state"], "missing", "{h:#}");
    // Pokes make the agent check in again; apt is not run again for the same state.
    for _ in 0..3 {
        cli(&s, token, &["fleet", "poke", "role=pos"]).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let runs = pos
        .log()
        .matches("converging on the package profile")
        .count();
    assert_eq!(
        runs,
        2,
        "one run for acme-agent, one for the broken profile\n{}",
        pos.log()
    );

    // Removing a profile leaves what it installed; everything was audited.
    cli(&s, token, &["fleet", "profile", "remove", "broken"]).unwrap();
    let listed = cli(&s, token, &["fleet", "profile", "list"]).unwrap();
    assert!(
        listed.contains("pos-agent")
            && listed.contains("+acme-agent")
            && !listed.contains("broken"),
        "{listed}"
    );
    let audit = cli(&s, token, &["audit", "--action", "profile"]).unwrap();
    assert!(
        audit.contains("POS-12") && audit.contains("broken"),
        "{audit}"
    );
}
