//! Hosts find their replica: an assignment rule names a replica as the host's mirror, and the
//! real agent writes an apt mirror list (the replica first, this server last) with a
//! `mirror+file:` source. The real apt installs through the replica; with the replica down it
//! falls back to the server unseen, with the same bytes; a rule without mirrors gives the plain
//! source back. The "replica" is a loopback proxy in front of the server: byte for byte what a
//! replica serves (`/channels/<c>/…` unchanged), which is all apt can see of one. Over the
//! API: mirrors are checked as the agent would, stored, audited, and change the host's rev.

use aptgate_tests::agent::{until, Machine};
use aptgate_tests::both_backends;
use aptgate_tests::channels::{cli, parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::{labels, Admin, TestAgent};
use aptgate_tests::proxy::CuttableProxy;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

both_backends!(
    a_host_installs_through_its_replica_and_falls_back_to_the_server_when_it_is_down,
    rule_mirrors_are_checked_stored_audited_and_change_the_hosts_sources,
);

/// The `hello_*.deb` apt left in the machine's archive cache, if any.
fn cached_hello(m: &Machine) -> Option<PathBuf> {
    fs_err::read_dir(m.root.join("var/cache/apt/archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hello_") && n.ends_with(".deb"))
        })
}

#[track_caller]
fn assert_apt_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn a_host_installs_through_its_replica_and_falls_back_to_the_server_when_it_is_down(
    backend: Backend,
) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    for c in &mut p.config.channels {
        c.suites = vec!["stable".into()];
    }
    // Agents hear of changes through their waits only.
    p.config.fleet.checkin_interval = Duration::from_secs(3600);
    p.config.fleet.wait = Duration::from_secs(30);
    let s = Setup::from_parts(p).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token")).unwrap();
    let token = token.trim();
    s.sync().await;

    // Another host name than the server's: apt's http method remembers a host it could not
    // connect to for the rest of the run, whatever the port, so a replica on the server's own
    // host name would take the fallback down with it (as two hosts, they never share one).
    let server: SocketAddr = s.app.url.trim_start_matches("http://").parse().unwrap();
    let replica = CuttableProxy::start_on([127, 0, 0, 2].into(), server).await;
    let replica_addr = replica.addr();
    let replica_url = format!("http://{replica_addr}");
    let rule = [
        "fleet",
        "rule",
        "add",
        "berlin",
        "--selector",
        "site=berlin",
        "--channel",
        "testing",
        "--mirror",
        &replica_url,
    ];
    cli(&s, token, &rule).unwrap();
    let rules = cli(&s, token, &["fleet", "rule", "list"]).unwrap();
    assert!(rules.contains(&replica_url), "{rules}");
    let enroll = cli(&s, token, &["fleet", "token", "create", "--uses", "1"]).unwrap();

    let mut machines = vec![Machine::new(&s.dir.path().join("machines"), "berlin1")];
    machines[0].enroll_and_start(&s.app.url, enroll.trim(), "site=berlin");
    let m = &machines[0];

    // The source names the mirror list; the list names the replica first, the server last.
    until(
        "the agent to write a mirror+file: source",
        &machines,
        || m.sources().contains("mirror+file:"),
    )
    .await;
    let list_path = m.root.join("etc/apt/aptgate-mirrors/testing.list");
    let sources = m.sources();
    assert!(
        sources.contains(&format!("URIs: mirror+file:{}\n", list_path.display()))
            && sources.contains("Signed-By: "),
        "{sources}"
    );
    let list = fs_err::read_to_string(&list_path).unwrap();
    let entries: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        [
            format!("{replica_url}/channels/testing/\tpriority:1"),
            format!("{}/channels/testing/\tpriority:2", s.app.url),
        ],
        "{list}"
    );
    let host = cli(&s, token, &["host", "show", &m.host_id()]).unwrap();
    assert!(host.contains(&replica_url), "{host}");

    // Queues an apt command for `hello` on the Berlin hosts.
    let berlin_hello = |verb: &str| {
        cli(
            &s,
            token,
            &[
                "fleet",
                "command",
                "--selector",
                "site=berlin",
                verb,
                "hello",
            ],
        )
        .unwrap()
    };
    // apt installs through the replica: the proxy passes its requests on.
    berlin_hello("install");
    until("hello installed through the replica", &machines, || {
        m.installed("hello").as_deref() == Some("2.10-3")
    })
    .await;
    assert!(replica.forwarded() > 0, "apt never reached the replica");
    let deb = cached_hello(m).expect("apt keeps the .deb it fetched");
    let via_replica = fs_err::read(&deb).unwrap();

    // The replica goes down: apt moves on to the server without an error, and gets the same
    // bytes.
    drop(replica);
    until("the replica to refuse connections", &machines, || {
        std::net::TcpStream::connect(replica_addr).is_err()
    })
    .await;
    assert_apt_ok(
        "apt-get update with the replica down",
        &m.apt_get(&["update", "--error-on=any"]),
    );
    fs_err::remove_file(&deb).unwrap();
    berlin_hello("remove");
    until("hello removed", &machines, || {
        m.installed("hello").is_none()
    })
    .await;
    berlin_hello("install");
    until("hello installed again from the server", &machines, || {
        m.installed("hello").as_deref() == Some("2.10-3")
    })
    .await;
    let deb = cached_hello(m).expect("apt fetched the .deb again");
    assert!(
        fs_err::read(&deb).unwrap() == via_replica,
        "the server's {} differs from the replica's",
        deb.display()
    );

    // The rule names no mirror any more: the plain source comes back, the list goes.
    cli(&s, token, &["fleet", "rule", "mirrors", "berlin"]).unwrap();
    until("the agent to write the plain source", &machines, || {
        !m.sources().contains("mirror+file:")
    })
    .await;
    let sources = m.sources();
    assert!(
        sources.contains(&format!("URIs: {}/channels/testing/\n", s.app.url)),
        "{sources}"
    );
    assert!(!list_path.exists(), "the mirror list stayed");
    assert_apt_ok(
        "apt-get update on the plain source",
        &m.apt_get(&["update", "--error-on=any"]),
    );
    let audit = cli(&s, token, &["audit", "--action", "rule"]).unwrap();
    assert!(audit.contains("previous_mirrors"), "{audit}");
}

async fn rule_mirrors_are_checked_stored_audited_and_change_the_hosts_sources(backend: Backend) {
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.fleet.rules.push(aptgate_config::FleetRuleConfig {
        name: "configured".into(),
        selector: "site=paris".into(),
        channel: "testing".parse().unwrap(),
        mirror: None,
        mirrors: vec!["http://replica-paris.example.org:8080".into()],
        priority: 0,
        disable_other_sources: false,
    });
    let s = Setup::from_parts(p).await;
    s.sync().await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    let rules = "/api/v1/fleet/rules";

    // What the agent would refuse is refused here, before anything is stored.
    for bad in [
        json!(["file:///etc/apt/"]),
        json!(["http://a.example.org/\"x"]),
        json!(["http://a.example.org", "http://a.example.org/"]),
    ] {
        let body = json!({"name": "bad", "selector": "site=berlin", "channel": "testing",
                          "mirrors": bad});
        let (status, answer) = admin.call("POST", rules, Some(body)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_mirror")),
            "{answer}"
        );
    }
    // `mirror` (the single field from before `mirrors`) comes first.
    admin
        .ok(
            "POST",
            rules,
            Some(json!({"name": "berlin", "selector": "site=berlin",
            "channel": "testing", "mirror": "http://replica-berlin.example.org:8080",
            "mirrors": ["http://hub.example.org"]})),
        )
        .await;
    let listed = admin.ok("GET", rules, None).await;
    let mirrors_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["mirrors"]
            .clone()
    };
    assert_eq!(
        mirrors_of("berlin"),
        json!([
            "http://replica-berlin.example.org:8080",
            "http://hub.example.org"
        ])
    );
    assert_eq!(
        mirrors_of("configured"),
        json!(["http://replica-paris.example.org:8080"])
    );

    // The host gets them as channel URIs, in order; this server stays the entries' URI.
    let token = admin.token(json!({"labels": {"site": "berlin"}})).await;
    let mut host = TestAgent::new(&s.app.url, "b1", labels(&[]));
    host.enroll(&token).await;
    let before = host.checkin(&host.checkin_request(None)).await.sources;
    assert_eq!(
        before.mirrors,
        [
            "http://replica-berlin.example.org:8080/channels/testing/",
            "http://hub.example.org/channels/testing/"
        ]
    );
    assert_eq!(
        before.entries[0].uris,
        [format!("{}/channels/testing/", s.app.url)]
    );

    // Changing them: checked, audited, and a new rev for the host (the agent rewrites).
    let set = |name: &str| format!("{rules}/{name}/mirrors");
    let (status, answer) = admin
        .call(
            "PUT",
            &set("berlin"),
            Some(json!({"mirrors": ["ftp://x.example.org"]})),
        )
        .await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("bad_mirror")));
    let (status, _) = admin
        .call("PUT", &set("nobody"), Some(json!({"mirrors": []})))
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .call("PUT", &set("configured"), Some(json!({"mirrors": []})))
        .await;
    assert_eq!(status, 409);
    let answer = admin
        .ok(
            "PUT",
            &set("berlin"),
            Some(json!({"mirrors": ["http://hub.example.org"],
            "comment": "berlin replica retired"})),
        )
        .await;
    assert_eq!(answer["warnings"], json!([]), "{answer}");
    let after = host.checkin(&host.checkin_request(None)).await.sources;
    assert_eq!(after.mirrors, ["http://hub.example.org/channels/testing/"]);
    assert_ne!(after.rev, before.rev);
    // A mirror on this server's host name (another port) defeats apt's fallback: stored, with
    // a warning that says why.
    let server_host = s
        .app
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    let same_host = format!("http://{server_host}:9");
    let answer = admin
        .ok("PUT", &set("berlin"), Some(json!({"mirrors": [same_host]})))
        .await;
    let warning = answer["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("host name of its own"), "{answer}");
    admin
        .ok("PUT", &set("berlin"), Some(json!({"mirrors": []})))
        .await;
    let plain = host.checkin(&host.checkin_request(None)).await.sources;
    assert!(plain.mirrors.is_empty());
    assert!(!plain.rev.is_empty() && plain.rev != after.rev);
    let audit = admin.audit("rule").await;
    let change = audit
        .iter()
        .map(|e| &e["entry"])
        .find(|e| e["comment"] == "berlin replica retired")
        .unwrap_or_else(|| panic!("{audit:#?}"));
    assert_eq!(change["actor"], "alice", "{change}");
    let summary: serde_json::Value =
        serde_json::from_str(change["summary"].as_str().unwrap()).unwrap();
    assert_eq!(
        summary["previous_mirrors"],
        json!([
            "http://replica-berlin.example.org:8080",
            "http://hub.example.org"
        ]),
        "{change}"
    );
}
