//! Channels end to end: a fixture upstream, an aptgate with a `testing` channel following it
//! and an `approved` channel promoted from `testing`, hosts running real apt, on either catalog
//! backend. Shared by the channel test files.

use crate::app::{aptgate_command, fixture_source, get_text, test_mirror_config, TestApp};
use crate::apt::AptRoot;
use crate::db::{Backend, TestDatabase};
use crate::fixture::{FixtureRepo, FixtureSpec};
use crate::upstream::Upstream;
use aptgate_channels::{Actor, ChannelsError, PromoteRequest};
use aptgate_config::{ChannelConfig, Config};
use std::time::Duration;

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub repo: FixtureRepo,
    pub upstream: Upstream,
    pub app: TestApp,
    pub key: std::path::PathBuf,
    pub _db: TestDatabase,
}

pub fn channel(name: &str) -> ChannelConfig {
    ChannelConfig {
        name: name.parse().unwrap(),
        suites: Vec::new(),
        follows: Vec::new(),
        promotes_from: None,
        min_soak: Duration::ZERO,
        selective: true,
        auto_approve_after: Duration::ZERO,
        retain: Default::default(),
    }
}

/// A fixture upstream and the configuration of an aptgate in front of it, with a testing
/// channel following the source and an approved channel promoted from testing.
pub struct Parts {
    pub dir: tempfile::TempDir,
    pub repo: FixtureRepo,
    pub upstream: Upstream,
    pub config: Config,
    pub db: TestDatabase,
}

pub async fn parts(backend: Backend, approved_soak: Duration, spec: FixtureSpec) -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::generate(&dir.path().join("upstream"), &spec).unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    let data_dir = dir.path().join("data");
    let db = TestDatabase::new(backend, &data_dir).await;
    let mut config = Config {
        data_dir,
        sources: vec![fixture_source(&upstream, &repo)],
        mirror: test_mirror_config(&upstream),
        ..Config::default()
    };
    config.database.url = db.url.clone();
    config.sync.interval = Duration::ZERO;
    config.channels = vec![
        ChannelConfig {
            follows: vec!["fixture".parse().unwrap()],
            ..channel("testing")
        },
        ChannelConfig {
            promotes_from: Some("testing".parse().unwrap()),
            min_soak: approved_soak,
            ..channel("approved")
        },
    ];
    Parts {
        dir,
        repo,
        upstream,
        config,
        db,
    }
}

/// Saves the server's public key where hosts read it.
pub async fn fetch_key(url: &str, path: &std::path::Path) {
    let armored = get_text(&format!("{url}/keys/aptgate.asc")).await;
    fs_err::write(path, armored).unwrap();
}

/// An apt root on `channel` of the server at `url` (re-pointed if it exists).
pub fn host_at(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    channel: &str,
    key: &std::path::Path,
) -> AptRoot {
    let root = AptRoot::new(&dir.join(name)).unwrap();
    root.add_source(
        "aptgate",
        &format!("{url}/channels/{channel}"),
        "stable",
        &["main", "contrib"],
        key,
    )
    .unwrap();
    root
}

impl Setup {
    pub async fn new(backend: Backend, approved_soak: Duration) -> Setup {
        let spec = FixtureSpec::default().large_payload(64 << 10);
        Self::from_parts(parts(backend, approved_soak, spec).await).await
    }

    pub async fn from_parts(p: Parts) -> Setup {
        let app = TestApp::start_config(p.config).await;
        // Hosts trust the key the server publishes.
        let key = p.dir.path().join("aptgate.asc");
        fetch_key(&app.url, &key).await;
        Setup {
            dir: p.dir,
            repo: p.repo,
            upstream: p.upstream,
            app,
            key,
            _db: p.db,
        }
    }

    pub fn host(&self, name: &str, channel: &str) -> AptRoot {
        host_at(self.dir.path(), name, &self.app.url, channel, &self.key)
    }

    pub async fn sync(&self) -> aptgate_channels::SyncOutcome {
        self.app
            .state
            .channels
            .sync("fixture", &Actor::new("test"), &|_: &str| {})
            .await
            .unwrap()
    }

    pub async fn promote(
        &self,
        only: &[&str],
    ) -> Result<aptgate_channels::MoveOutcome, ChannelsError> {
        self.app
            .state
            .channels
            .promote(
                &PromoteRequest {
                    from: "testing".into(),
                    to: "approved".into(),
                    only: only.iter().map(|s| s.to_string()).collect(),
                },
                &Actor {
                    name: "test".into(),
                    comment: Some("ticket 42".into()),
                },
            )
            .await
    }
}

/// Upstream's next state: foo-utils 1.4.2-2 (which needs the new hello-data 2.10-4),
/// hello-data 2.10-4 and contrib-tool 1:1.0-1.
pub fn next_upstream_state(repo: &mut FixtureRepo) {
    for p in repo
        .spec
        .packages
        .iter_mut()
        .filter(|p| p.name == "foo-utils")
    {
        p.depends = Some("libfoo1 (>= 1.4), hello-data (>= 2.10-4)".into());
    }
    repo.bump("foo-utils", "1.4.2-2").unwrap();
    repo.bump("hello-data", "2.10-4").unwrap();
    repo.bump("contrib-tool", "1:1.0-1").unwrap();
}

/// The version apt would install on `host` after an update.
pub async fn candidate(host: &AptRoot, package: &str) -> String {
    let update = host.update().await.unwrap();
    update.assert_success();
    let out = update.combined();
    assert!(
        !out.contains("NO_PUBKEY") && !out.contains("not signed"),
        "{out}"
    );
    let sim = host.apt_get(&["install", "-s", package]).await.unwrap();
    sim.assert_success();
    let prefix = format!("Inst {package} (");
    sim.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("apt would not install {package}:\n{}", sim.combined()))
        .to_owned()
}

/// Turns each scenario `async fn(Backend)` into a module with a SQLite and a PostgreSQL test.
#[macro_export]
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$scenario(aptgate_tests::db::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$scenario(aptgate_tests::db::Backend::Postgres).await;
            }
        }
    )*};
}

/// Runs the `aptgate` CLI against the test server; stdout, or stderr as the error.
pub fn cli(s: &Setup, token: &str, args: &[&str]) -> Result<String, String> {
    cli_at(&s.app.url, token, args)
}

/// Runs the `aptgate` CLI against the server at `url`; stdout, or stderr as the error.
pub fn cli_at(url: &str, token: &str, args: &[&str]) -> Result<String, String> {
    let out = aptgate_command()
        .args(["--server", url, "--token", token])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
