//! The agent against the real server: first the signed client alone (enroll, check-in, gzip'd
//! inventory, waits, impostors), then the real `aptgate-agent` binary enrolling, installing a
//! package into its own root, moving the host's other sources aside and back, being revoked,
//! waking from a wait and stopping on SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use aptgate_agent::{
    client::{AgentClient, ClientError},
    protocol::{
        CheckinRequest, EnrollRequest, Facts, HostKey, HostStatus, InstalledPackage,
        InventoryUpload, PROTOCOL_VERSION,
    },
};
use aptgate_tests::{
    agent::agent_command,
    apt::AptRoot,
    channels::{cli, parts, Setup},
    db::Backend,
    fixture::FixtureSpec,
};
use serde_json::Value;

fn package(name: &str) -> InstalledPackage {
    InstalledPackage {
        name: name.into(),
        architecture: "amd64".into(),
        version: "1.0-1".into(),
        source: name.into(),
        source_version: "1.0-1".into(),
        status: "install ok installed".into(),
    }
}

/// A server whose `testing` channel publishes the fixture's `stable` suite, with its waits
/// held `wait` long, its admin token, and an enrollment token.
async fn server(wait: Duration) -> (Setup, String, String) {
    let mut p = parts(
        Backend::Sqlite,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    for c in &mut p.config.channels {
        c.suites = vec!["stable".into()];
    }
    p.config.fleet.wait = wait;
    p.config.fleet.checkin_interval = Duration::from_secs(300);
    let s = Setup::from_parts(p).await;
    s.sync().await;
    let admin = fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let token = cli(&s, &admin, &["fleet", "token", "create"])
        .unwrap()
        .trim()
        .to_owned();
    (s, admin, token)
}

fn json(s: &Setup, admin: &str, args: &[&str]) -> Value {
    let out = cli(s, admin, args).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("aptgate {args:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signed_client_speaks_the_protocol() {
    let (s, admin, token) = server(Duration::from_secs(5)).await;
    let key = HostKey::generate();
    let public_key = key.public_hex();
    let mut client = AgentClient::new(&s.app.url, "", key).unwrap();
    let enrolled = client
        .enroll(&EnrollRequest {
            token,
            public_key,
            facts: Facts {
                hostname: "pos-1.example.org".into(),
                machine_id_sha256: "a".repeat(64),
                agent_version: "test".into(),
                ..Facts::default()
            },
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
        })
        .await
        .unwrap();
    assert_eq!(enrolled.status, HostStatus::Active);
    client.set_host_id(&enrolled.host_id);

    let answer = client
        .checkin(&CheckinRequest {
            protocol: PROTOCOL_VERSION,
            // Every check-in declares the agent's labels again (an empty set clears them).
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
            ..CheckinRequest::default()
        })
        .await
        .unwrap();
    assert!(answer.upload_inventory);

    let packages = vec![package("hello"), package("libfoo1")];
    let digest = aptgate_agent::protocol::inventory_digest(&packages);
    let accepted = client
        .upload_inventory(&InventoryUpload {
            digest: digest.clone(),
            packages,
        })
        .await
        .unwrap();
    assert_eq!(
        (accepted.digest.as_str(), accepted.packages),
        (digest.as_str(), 2)
    );
    let host = json(&s, &admin, &["host", "show", &enrolled.host_id, "--json"]);
    assert_eq!(host["inventory"]["packages"], 2, "{host:#}");

    // A wait with nothing new ends after the server's wait; a poke ends it at once.
    let started = Instant::now();
    let waited = client
        .wait(answer.rev, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(waited.rev, answer.rev);
    assert!(started.elapsed() >= Duration::from_millis(4900));
    let started = Instant::now();
    let poke = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let poked = aptgate_tests::app::client()
            .post(format!("{}/api/v1/fleet/poke", s.app.url))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"selector": "site=berlin"}))
            .send()
            .await
            .unwrap();
        assert!(poked.status().is_success(), "{poked:?}");
    };
    let (waited, ()) = tokio::join!(client.wait(answer.rev, Duration::from_secs(20)), poke);
    assert!(waited.unwrap().rev > answer.rev);
    assert!(started.elapsed() < Duration::from_millis(4900));

    // Another key claiming this host id is refused; so is an unknown host.
    let impostor = AgentClient::new(&s.app.url, &enrolled.host_id, HostKey::generate()).unwrap();
    let refused = impostor
        .checkin(&CheckinRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Unauthorized { code, .. } if code == "bad_signature"),
        "{refused}"
    );
    let unknown = AgentClient::new(&s.app.url, "h-0000000000000404", HostKey::generate()).unwrap();
    let refused = unknown
        .checkin(&CheckinRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Unauthorized { code, .. } if code == "unknown_host"),
        "{refused}"
    );
    assert!(!refused.is_transient());

    // An unreachable server is a transient error.
    s.app.stop().await;
    let err = client
        .checkin(&CheckinRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// A machine for the agent binary: an apt/dpkg root and a state directory.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        AptRoot::new(&dir.path().join("root")).unwrap();
        fs_err::write(dir.path().join("root/etc/machine-id"), "0123456789abcdef\n").unwrap();
        Machine { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn agent(&self) -> std::process::Command {
        let mut cmd = agent_command();
        cmd.arg("--state-dir")
            .arg(self.path("state"))
            .arg("--root")
            .arg(self.path("root"))
            .arg("--config")
            .arg(self.path("agent.toml"))
            .env("APTGATE_AGENT_LOG", "info");
        cmd
    }

    /// Runs the agent to completion off the async runtime (the server lives on it).
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.agent();
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    fn host_id(&self) -> String {
        let state: Value =
            serde_json::from_str(&fs_err::read_to_string(self.path("state/state.json")).unwrap())
                .unwrap();
        state["host_id"].as_str().unwrap().to_owned()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn dpkg_version(root: &Path, package: &str) -> String {
    let out = std::process::Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Version}", package])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_enrolls_installs_into_its_root_and_reports() {
    let (s, admin, token) = server(Duration::from_secs(2)).await;
    cli(
        &s,
        &admin,
        &[
            "fleet",
            "rule",
            "add",
            "berlin",
            "--selector",
            "site=berlin",
            "--channel",
            "testing",
            "--disable-other-sources",
        ],
    )
    .unwrap();
    let m = Machine::new();
    let url = s.app.url.clone();

    let not_enrolled = m.run(&["checkin"]).await;
    assert!(!not_enrolled.status.success());
    assert!(
        text(&not_enrolled).contains("hint: this host has no identity yet"),
        "{}",
        text(&not_enrolled)
    );
    let bad_token = m
        .run(&["enroll", "--server", &url, "--token", "wrong"])
        .await;
    assert!(
        text(&bad_token).contains("hint: the token is unknown"),
        "{}",
        text(&bad_token)
    );

    let enroll = m
        .run(&[
            "enroll",
            "--server",
            &url,
            "--token",
            &token,
            "--label",
            "site=berlin",
        ])
        .await;
    assert!(enroll.status.success(), "{}", text(&enroll));
    let key_mode = fs_err::metadata(m.path("state/host.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    let again = m
        .run(&["enroll", "--server", &url, "--token", &token])
        .await;
    assert!(
        text(&again).contains("hint: pass --force"),
        "{}",
        text(&again)
    );
    let host_id = m.host_id();

    // A vendor source the rule moves aside while the host is assigned.
    let vendor = m.path("root/etc/apt/sources.list.d/vendor.list");
    fs_err::write(&vendor, format!("deb {} testing main\n", s.upstream.url())).unwrap();
    cli(
        &s,
        &admin,
        &["fleet", "command", "--host", &host_id, "install", "hello"],
    )
    .unwrap();
    let checkin = m.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert!(
        String::from_utf8_lossy(&checkin.stdout).contains("1 command(s) run"),
        "{}",
        text(&checkin)
    );
    assert!(!vendor.exists());
    assert_eq!(dpkg_version(&m.path("root"), "hello"), "2.10-3");

    // The server has the command's result, the host's labels, lists and inventory.
    let commands = json(
        &s,
        &admin,
        &["fleet", "commands", "--host", &host_id, "--json"],
    );
    assert_eq!(commands[0]["status"], "done", "{commands:#}");
    assert_eq!(commands[0]["exit_code"], 0, "{commands:#}");
    let host = json(&s, &admin, &["host", "show", &host_id, "--json"]);
    assert_eq!(host["inventory"]["packages"], 1, "{host:#}");
    assert_eq!(host["channel"], "testing", "{host:#}");
    let lists = host["lists"].to_string();
    assert!(
        lists.contains(&format!("{url}/channels/testing/ stable main")),
        "{host:#}"
    );
    assert!(!lists.contains(&s.upstream.url()), "{host:#}");

    // Nothing changed: no upload.
    let checkin = m.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert!(
        !String::from_utf8_lossy(&checkin.stderr).contains("inventory uploaded"),
        "{}",
        text(&checkin)
    );

    let status = m.run(&["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["host_id"], host_id.as_str());
    assert_eq!(status["status"], "active");
    assert_eq!(
        status["disabled_sources"][0],
        "etc/apt/sources.list.d/vendor.list"
    );

    // Unassigned: our source goes, the vendor source comes back.
    cli(&s, &admin, &["fleet", "rule", "remove", "berlin"]).unwrap();
    let checkin = m.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert!(vendor.exists());
    assert!(!m
        .path("root/etc/apt/sources.list.d/aptgate.sources")
        .exists());

    // Revoked at the server: refused on its next request.
    cli(&s, &admin, &["host", "revoke", &host_id]).unwrap();
    let revoked = m.run(&["checkin"]).await;
    assert!(!revoked.status.success());
    assert!(text(&revoked).contains("revoked"), "{}", text(&revoked));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_agent_wakes_on_news_and_stops_on_sigterm() {
    let (s, admin, token) = server(Duration::from_secs(120)).await;
    let m = Machine::new();
    let enroll = m
        .run(&["enroll", "--server", &s.app.url, "--token", &token])
        .await;
    assert!(enroll.status.success(), "{}", text(&enroll));
    let host_id = m.host_id();

    let mut child = m
        .agent()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until("the first check-in", || {
        // The agent records the sources of its first check-in's answer.
        fs_err::read_to_string(m.path("state/state.json"))
            .is_ok_and(|t| serde_json::from_str::<Value>(&t).unwrap()["sources_rev"].is_string())
    })
    .await;
    // The agent now holds a two-minute wait open; a command ends it and runs at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cli(
        &s,
        &admin,
        &["fleet", "command", "--host", &host_id, "report"],
    )
    .unwrap();
    until("the report's result", || {
        let commands = json(
            &s,
            &admin,
            &["fleet", "commands", "--host", &host_id, "--json"],
        );
        commands[0]["status"] == "done" && commands[0]["exit_code"] == 0
    })
    .await;

    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
