//! The agent against a test double of the server's agent API (`agent_double`), which checks
//! every signature the way `protocol::verify_request` says: first the signed client alone, then
//! the real `aptgate-agent` binary enrolling, installing a fixture package into its own root,
//! reporting, waking from a wait and stopping on SIGTERM.

use std::{
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use aptgate_agent::{
    client::{AgentClient, ClientError},
    protocol::{
        ChannelKey, CheckinRequest, Command, CommandKind, DesiredSources, EnrollRequest, Facts,
        HostKey, HostStatus, InstalledPackage, InventoryUpload, Poll, SourceEntry,
        PROTOCOL_VERSION,
    },
};
use aptgate_tests::{
    agent_double::{agent_command, AgentServer, TOKEN},
    apt::AptRoot,
    fixture::{FixtureRepo, FixtureSpec},
    signing::TestKey,
    upstream::Upstream,
};

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

#[tokio::test]
async fn the_signed_client_speaks_the_protocol() {
    let server = AgentServer::start().await;
    server.state().poll = Some(Poll {
        interval_secs: 60,
        wait_secs: 1,
    });
    let key = HostKey::generate();
    let public_key = key.public_hex();
    let mut client = AgentClient::new(&server.url(), "", key).unwrap();
    let enrolled = client
        .enroll(&EnrollRequest {
            token: TOKEN.into(),
            public_key: public_key.clone(),
            facts: Facts::default(),
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
        })
        .await
        .unwrap();
    assert_eq!(enrolled.status, HostStatus::Active);
    client.set_host_id(&enrolled.host_id);

    let answer = client
        .checkin(&CheckinRequest {
            protocol: PROTOCOL_VERSION,
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
    assert_eq!(server.state().inventory_encodings, ["gzip"]);

    // A wait with nothing new ends after the server's wait; a change ends it at once.
    let started = Instant::now();
    let waited = client.wait(0, Duration::from_secs(10)).await.unwrap();
    assert_eq!(waited.rev, 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.state().poll = Some(Poll {
        interval_secs: 60,
        wait_secs: 30,
    });
    let started = Instant::now();
    let (waited, ()) = tokio::join!(client.wait(0, Duration::from_secs(40)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.bump();
    });
    assert_eq!(waited.unwrap().rev, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        server.state().refused.is_empty(),
        "{:?}",
        server.state().refused
    );

    // Another key claiming this host id is refused; so is an unknown host.
    let impostor = AgentClient::new(&server.url(), &enrolled.host_id, HostKey::generate()).unwrap();
    let refused = impostor
        .checkin(&CheckinRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Unauthorized { code, .. } if code == "bad_signature"),
        "{refused}"
    );
    let unknown = AgentClient::new(&server.url(), "h-404", HostKey::generate()).unwrap();
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
    drop(server);
    let err = client
        .checkin(&CheckinRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

struct Host {
    dir: tempfile::TempDir,
    _repo: FixtureRepo,
    upstream: Upstream,
    server: AgentServer,
}

impl Host {
    async fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let repo = FixtureRepo::generate(
            &dir.path().join("repo"),
            &FixtureSpec::default().large_payload(64 * 1024),
        )
        .unwrap();
        let upstream = Upstream::start(repo.root().to_owned()).await;
        AptRoot::new(&dir.path().join("root")).unwrap();
        let server = AgentServer::start().await;
        server.state().sources = DesiredSources {
            rev: "r1".into(),
            channel: Some("stable".into()),
            entries: vec![SourceEntry {
                uris: vec![upstream.url()],
                suites: vec!["stable".into()],
                components: vec!["main".into()],
                architectures: vec![],
            }],
            keys: vec![ChannelKey {
                file_name: "stable.asc".into(),
                fingerprint: TestKey::Primary.fingerprint(),
                armored: fs_err::read_to_string(repo.key_path()).unwrap(),
            }],
            disable_other_sources: true,
        };
        Host {
            dir,
            _repo: repo,
            upstream,
            server,
        }
    }

    fn agent(&self) -> std::process::Command {
        let mut cmd = agent_command();
        cmd.arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"));
        cmd
    }

    /// Runs the agent to completion off the async runtime (the double lives on it).
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.agent();
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
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

#[tokio::test]
async fn the_agent_enrolls_installs_into_its_root_and_reports() {
    let host = Host::new().await;
    let not_enrolled = host.run(&["checkin"]).await;
    assert!(!not_enrolled.status.success());
    assert!(
        text(&not_enrolled).contains("hint: this host has no identity yet"),
        "{}",
        text(&not_enrolled)
    );

    let bad_token = host
        .run(&["enroll", "--server", &host.server.url(), "--token", "wrong"])
        .await;
    assert!(
        text(&bad_token).contains("hint: the token is unknown"),
        "{}",
        text(&bad_token)
    );

    let enroll = host
        .run(&[
            "enroll",
            "--server",
            &host.server.url(),
            "--token",
            TOKEN,
            "--label",
            "site=berlin",
        ])
        .await;
    assert!(enroll.status.success(), "{}", text(&enroll));
    let key_mode = fs_err::metadata(host.dir.path().join("state/host.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    let again = host
        .run(&["enroll", "--server", &host.server.url(), "--token", TOKEN])
        .await;
    assert!(
        text(&again).contains("hint: pass --force"),
        "{}",
        text(&again)
    );

    // A vendor source the assignment turns off.
    let vendor = host
        .dir
        .path()
        .join("root/etc/apt/sources.list.d/vendor.list");
    fs_err::write(
        &vendor,
        format!("deb {} testing main\n", host.upstream.url()),
    )
    .unwrap();
    host.server.state().commands = vec![Command {
        id: 1,
        kind: CommandKind::Install,
        packages: vec!["hello".into()],
    }];
    let checkin = host.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert!(
        String::from_utf8_lossy(&checkin.stdout).contains("1 command(s) run"),
        "{}",
        text(&checkin)
    );
    assert!(!vendor.exists());

    let installed = std::process::Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            host.dir.path().join("root/var/lib/dpkg").display()
        ))
        .args(["-W", "hello"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        "hello\t2.10-3\n"
    );

    {
        let state = host.server.state();
        assert!(state.refused.is_empty(), "{:?}", state.refused);
        assert_eq!(state.enrollments[0].labels["site"], "berlin");
        // First check-in, then the one carrying the result.
        assert_eq!(state.checkins.len(), 2);
        let results = &state.checkins[1].results;
        assert_eq!(results.len(), 1);
        assert_eq!(
            (results[0].id, results[0].exit_code),
            (1, 0),
            "{}",
            results[0].output
        );
        // Uploaded at the first check-in (empty), then after the install.
        assert_eq!(state.inventories.len(), 2);
        assert!(state.inventories[1]
            .packages
            .iter()
            .any(|p| p.name == "hello"));
        assert_eq!(state.checkins[1].sources.rev.as_deref(), Some("r1"));
        assert_eq!(
            state.checkins[1].sources.lists,
            [format!("{} stable main", host.upstream.url())]
        );
        assert_eq!(state.checkins[1].labels["site"], "berlin");
        assert!(!state.checkins[1].facts.architectures.is_empty());
    }

    // Nothing changed: no upload.
    let checkin = host.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert_eq!(host.server.state().inventories.len(), 2);

    let status = host.run(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["host_id"], "h-1");
    assert_eq!(status["status"], "active");
    assert_eq!(status["sources_rev"], "r1");
    assert_eq!(
        status["disabled_sources"][0],
        "etc/apt/sources.list.d/vendor.list"
    );

    // Unassigned: the source goes, the vendor source comes back.
    host.server.state().sources = DesiredSources {
        rev: "r2".into(),
        ..DesiredSources::default()
    };
    let checkin = host.run(&["checkin"]).await;
    assert!(checkin.status.success(), "{}", text(&checkin));
    assert!(vendor.exists());
    assert!(!host
        .dir
        .path()
        .join("root/etc/apt/sources.list.d/aptgate.sources")
        .exists());

    // Revoked at the server.
    host.server.state().hosts.clear();
    let revoked = host.run(&["checkin"]).await;
    assert!(!revoked.status.success());
    assert!(text(&revoked).contains("revoked"), "{}", text(&revoked));
}

#[tokio::test]
async fn the_running_agent_wakes_on_news_and_stops_on_sigterm() {
    let host = Host::new().await;
    host.server.state().poll = Some(Poll {
        interval_secs: 300,
        wait_secs: 120,
    });
    let enroll = host
        .run(&["enroll", "--server", &host.server.url(), "--token", TOKEN])
        .await;
    assert!(enroll.status.success(), "{}", text(&enroll));

    let mut child = host
        .agent()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until(&host.server, "the first check-in", |s| {
        s.state().checkins.len() == 1
    })
    .await;
    // The agent now holds a wait open; news ends it, and the report runs at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.server.state().commands = vec![Command {
        id: 9,
        kind: CommandKind::Report,
        packages: vec![],
    }];
    host.server.bump();
    until(&host.server, "the report's result", |s| {
        s.state()
            .checkins
            .iter()
            .any(|c| c.results.iter().any(|r| r.id == 9 && r.exit_code == 0))
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
    assert!(host.server.state().refused.is_empty());
}

async fn until(server: &AgentServer, what: &str, check: impl Fn(&AgentServer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check(server) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
