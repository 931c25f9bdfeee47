//! The test app: a real aptgate server on `127.0.0.1:0` in front of a fixture upstream.

use crate::fixture::FixtureRepo;
use crate::upstream::Upstream;
use aptgate::AppState;
use aptgate_config::{Config, MirrorConfig, SourceConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The source name tests use for the fixture upstream.
pub const SOURCE: &str = "fixture";

/// A running aptgate. Dropping it stops the server; the data directory stays with the
/// `TempDir` the caller passed (so a test can restart on the same data).
pub struct TestApp {
    pub url: String,
    pub state: AppState,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A source entry pointing at `upstream`, trusting the fixture's key.
pub fn fixture_source(upstream: &Upstream, repo: &FixtureRepo) -> SourceConfig {
    SourceConfig {
        name: SOURCE.parse().expect("valid source name"),
        kind: Default::default(),
        url: Some(upstream.url().parse().expect("valid upstream URL")),
        suites: repo.spec.suites.clone(),
        components: repo.spec.components.clone(),
        architectures: repo.spec.architectures.clone(),
        keyring: vec![repo.key_path()],
        inline_keys: Vec::new(),
        policy: Default::default(),
        fallback: Vec::new(),
    }
}

/// Mirror settings for tests: short timeouts so failure tests finish quickly.
pub fn test_mirror_config(upstream: &Upstream) -> MirrorConfig {
    MirrorConfig {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        extra_ca_certs: upstream
            .ca_cert_path()
            .map(Path::to_owned)
            .into_iter()
            .collect(),
        ..MirrorConfig::default()
    }
}

impl TestApp {
    /// Starts aptgate with one source (`fixture`) in front of `upstream`.
    pub async fn start(data_dir: &Path, upstream: &Upstream, repo: &FixtureRepo) -> TestApp {
        Self::start_with(
            data_dir,
            vec![fixture_source(upstream, repo)],
            test_mirror_config(upstream),
        )
        .await
    }

    pub async fn start_with(
        data_dir: &Path,
        sources: Vec<SourceConfig>,
        mirror: MirrorConfig,
    ) -> TestApp {
        Self::start_config(Config {
            data_dir: data_dir.to_owned(),
            sources,
            mirror,
            ..Config::default()
        })
        .await
    }

    /// Starts aptgate with a whole configuration (channels, database, …).
    pub async fn start_config(config: Config) -> TestApp {
        let state = AppState::open(&config, &config.sources)
            .await
            .expect("aptgate starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(aptgate::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        TestApp {
            url,
            state,
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT/mirror/fixture`, the URI apt is pointed at.
    pub fn mirror_uri(&self) -> String {
        format!("{}/mirror/{SOURCE}", self.url)
    }

    pub fn mirror_url(&self, path: &str) -> String {
        format!("{}/{path}", self.mirror_uri())
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Where the store keeps the blob with this hex digest.
    pub fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        self.state
            .mirror
            .store()
            .blob_path(&aptgate_mirror::Sha256::from_hex(sha256_hex).expect("hex digest"))
    }

    /// Files left in the store's temp directory (should be none once downloads end).
    pub fn tmp_files(&self) -> usize {
        self.state.mirror.store().tmp_files()
    }

    pub fn metrics(&self) -> String {
        self.state.mirror.metrics().render()
    }

    /// The value of one `aptgate_mirror_<name>_total` counter.
    pub fn counter(&self, name: &str) -> u64 {
        let prefix = format!("aptgate_mirror_{name}_total ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A plain HTTP client for tests (no compression, no redirects).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Sends `GET <target>` as written (no client library normalises the path first) on a
/// connection of its own; the whole response, head and body, and its status (0 if none).
pub async fn raw_get(base: &str, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The body of a `GET` that must succeed.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("a success status")
        .text()
        .await
        .expect("a text body")
}

/// Everything an end-to-end test needs: a fixture repository, its upstream server and
/// aptgate in front of it, all under one temp directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub repo: FixtureRepo,
    pub upstream: Upstream,
    pub app: TestApp,
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with_spec(crate::fixture::FixtureSpec::default(), false).await
    }

    pub async fn with_spec(spec: crate::fixture::FixtureSpec, https: bool) -> Harness {
        Self::configured(spec, https, |_| {}).await
    }

    /// Like [`Harness::with_spec`], with the test configuration changed by `tweak` first
    /// (server limits, mirror timeouts, …).
    pub async fn configured(
        spec: crate::fixture::FixtureSpec,
        https: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = FixtureRepo::generate(&dir.path().join("upstream"), &spec).expect("fixture");
        let upstream = if https {
            Upstream::start_https(repo.root().to_owned()).await
        } else {
            Upstream::start(repo.root().to_owned()).await
        };
        let mut config = Config {
            data_dir: dir.path().join("data"),
            sources: vec![fixture_source(&upstream, &repo)],
            mirror: test_mirror_config(&upstream),
            ..Config::default()
        };
        tweak(&mut config);
        let app = TestApp::start_config(config).await;
        Harness {
            dir,
            repo,
            upstream,
            app,
        }
    }

    /// An isolated apt root whose only source is the mirror's `suite` (main and contrib).
    pub fn apt_root(&self, name: &str, suite: &str) -> crate::apt::AptRoot {
        let root = crate::apt::AptRoot::new(&self.dir.path().join(name)).expect("apt root");
        root.add_source(
            "aptgate",
            &self.app.mirror_uri(),
            suite,
            &["main", "contrib"],
            &self.repo.key_path(),
        )
        .expect("apt source");
        root
    }

    /// Fetches stable's `InRelease` and amd64 `Packages.xz`, so pool files have verified
    /// expectations.
    pub async fn prime(&self) {
        for path in [
            "dists/stable/InRelease",
            "dists/stable/main/binary-amd64/Packages.xz",
        ] {
            let r = self.get(path).await;
            assert_eq!(r.status(), 200, "{path}");
            r.bytes().await.expect("a body");
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.try_get(path).await.expect("request to aptgate")
    }

    /// A GET that may fail before any response head: a server whose first body chunk fails
    /// drops the connection without one.
    pub async fn try_get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        client().get(self.app.mirror_url(path)).send().await
    }
}

/// The workspace's `aptgate` binary (built by `scripts/test` before the tests), with no
/// `APTGATE_*` variables inherited from the caller.
pub fn aptgate_command() -> std::process::Command {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("aptgate");
    assert!(
        bin.is_file(),
        "build the workspace first: {} missing",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("APTGATE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}
