//! Replicas end to end: a canonical server (the channels `Setup`), replica tokens, replicas
//! as real `aptgate serve` processes with `[replica]`, and an HTTP proxy between a replica and
//! its parent that corrupts, truncates or refuses blob downloads or tampers with manifests.

use crate::app::client;
use crate::channels::Setup;
use crate::process::ServerProcess;
use aptgate_config::{Config, FetchPolicy, MirrorConfig, ReplicaConfig};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The canonical server's signing key fingerprint.
pub fn fingerprint(s: &Setup) -> String {
    s.app.state.channels.keys()[0].fingerprint.clone()
}

/// The admin token of the server whose data directory is `data_dir`.
pub fn admin_token(data_dir: &Path) -> String {
    fs_err::read_to_string(aptgate_channels::api::token_path(data_dir))
        .unwrap()
        .trim()
        .to_owned()
}

/// `POST /api/v1/replicas/tokens`: a new replica token's secret.
pub async fn create_token(s: &Setup, name: &str) -> String {
    let answer: serde_json::Value = client()
        .post(format!("{}/api/v1/replicas/tokens", s.app.url))
        .bearer_auth(admin_token(s.app.data_dir()))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["token"].as_str().unwrap().to_owned()
}

/// A replica's configuration: `parent`, pinned `fingerprint`, quick long polls and retries.
pub fn replica_config(
    data_dir: &Path,
    parent: &str,
    fingerprint: &str,
    token: &str,
    name: &str,
) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        mirror: MirrorConfig {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            ..MirrorConfig::default()
        },
        replica: Some(ReplicaConfig {
            parent: parent.parse().unwrap(),
            fingerprint: fingerprint.to_owned(),
            token: token.to_owned(),
            name: name.to_owned(),
            channels: Vec::new(),
            policy: Default::default(),
            wait: Duration::from_secs(3),
            retry_max: Duration::from_secs(1),
            expiry_warning: Duration::from_secs(3600),
            child_token_sha256: Vec::new(),
        }),
        ..Config::default()
    }
}

/// The token a [`Chain`]'s child replica holds at its parent.
pub const CHILD_TOKEN: &str = "aptgate-replica-child-of-branch-1";

/// A replica `branch-1` of the canonical server and a child replica `branch-1a` of it.
pub struct Chain {
    pub replica: ServerProcess,
    pub child: ServerProcess,
    /// The child's configuration, to start it again.
    pub child_config: Config,
    /// `branch-1`'s replica token at the canonical server.
    pub token: String,
}

/// Starts a [`Chain`] under `s` (a new token; both pin `s`'s key).
pub async fn start_chain(s: &Setup) -> Chain {
    let fpr = fingerprint(s);
    let token = create_token(s, "branch-1").await;
    let child_token = CHILD_TOKEN;
    let dir = s.dir.path();
    let mut config = replica_config(&dir.join("branch-1"), &s.app.url, &fpr, &token, "branch-1");
    config.replica.as_mut().unwrap().child_token_sha256 =
        vec![aptgate_mirror::Sha256::of(child_token.as_bytes()).to_hex()];
    let replica = start_replica(&config);
    let child_config = replica_config(
        &dir.join("branch-1a"),
        &replica.url,
        &fpr,
        child_token,
        "branch-1a",
    );
    let child = start_replica(&child_config);
    Chain {
        replica,
        child,
        child_config,
        token,
    }
}

/// Sets every channel of `config` to `policy`.
pub fn with_policy(mut config: Config, channels: &[&str], policy: FetchPolicy) -> Config {
    let replica = config.replica.as_mut().unwrap();
    for c in channels {
        replica.policy.insert((*c).to_owned(), policy);
    }
    config
}

/// Starts a replica process on `config` (its file next to its data directory).
pub fn start_replica(config: &Config) -> ServerProcess {
    let path = config.data_dir.with_extension("toml");
    fs_err::create_dir_all(&config.data_dir).unwrap();
    ServerProcess::start(config, path)
}

/// The replica's `/status`.
pub async fn status(url: &str) -> serde_json::Value {
    client()
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`. A
/// readiness check, never a fixed sleep.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the replica at `url` serves `seq` or a later one; panics with its last
/// status after a minute.
pub async fn until_applied(url: &str, seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = status(url).await;
        if now["seq_applied"].as_i64().unwrap_or(0) >= seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {url} applies seq {seq}; its status: {now:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const RELEASE_FILES: [&str; 3] = ["InRelease", "Release", "Release.gpg"];

/// Whether `server` serves `channel`'s Release files byte for byte as `canonical` does.
pub async fn same_release_files(canonical: &str, server: &str, channel: &str) -> bool {
    for file in RELEASE_FILES {
        let path = format!("channels/{channel}/dists/stable/{file}");
        let (want_status, want) = fetch(&format!("{canonical}/{path}")).await;
        let (got_status, got) = fetch(&format!("{server}/{path}")).await;
        if want_status != 200 || got_status != 200 || want != got {
            return false;
        }
    }
    true
}

/// GET `url` → (status, body bytes).
pub async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// The `SHA256:` of every package a channel's `stable` suite lists for amd64.
pub async fn package_digests(server: &str, channel: &str) -> HashSet<String> {
    listed_digests(server, channel, &["stable"], &["amd64"]).await
}

/// The `.deb` digests `channel` lists in every suite and architecture of the fixture.
pub async fn all_package_digests(server: &str, channel: &str) -> HashSet<String> {
    listed_digests(server, channel, &["stable", "testing"], &["amd64", "arm64"]).await
}

async fn listed_digests(
    server: &str,
    channel: &str,
    suites: &[&str],
    architectures: &[&str],
) -> HashSet<String> {
    let mut out = HashSet::new();
    for suite in suites {
        for (component, arch) in ["main", "contrib"]
            .into_iter()
            .flat_map(|c| architectures.iter().map(move |a| (c, a)))
        {
            let index = format!("{suite}/{component}/binary-{arch}/Packages");
            let (code, body) = fetch(&format!("{server}/channels/{channel}/dists/{index}")).await;
            if code != 200 {
                continue;
            }
            for line in String::from_utf8_lossy(&body).lines() {
                if let Some(hex) = line.strip_prefix("SHA256: ") {
                    out.insert(hex.trim().to_owned());
                }
            }
        }
    }
    out
}

/// What the proxy does to the traffic it forwards.
#[derive(Debug, Clone, Default)]
pub enum Fault {
    #[default]
    None,
    /// Flips a byte in the next N blob bodies (a batch answer is one body).
    CorruptBlobs(usize),
    /// Sends only half of the next N blob bodies, then cuts the connection.
    TruncateBlobs(usize),
    /// Flips a byte in the middle of the next N batch answers (`POST blobs`).
    CorruptBatches(usize),
    /// Sends only half of the next N batch answers, then cuts the connection.
    TruncateBatches(usize),
    /// Answers 503 for these blobs (by hex digest), and takes them out of batch requests.
    RefuseBlobs(HashSet<String>),
    /// Changes the signed manifest text (its `seq`), leaving the signature as it was.
    TamperManifest,
}

/// An HTTP proxy between a replica and its parent.
pub struct FaultProxy {
    pub url: String,
    state: Arc<ProxyState>,
}

struct ProxyState {
    target: String,
    fault: Mutex<Fault>,
    /// The digests asked for one at a time, in order.
    single_blobs: Mutex<Vec<String>>,
    batch_requests: Mutex<usize>,
    /// The query of the last manifest request (`after=…&wait=…`).
    manifest_query: Mutex<String>,
    http: reqwest::Client,
}

impl FaultProxy {
    pub async fn start(target: &str) -> FaultProxy {
        let state = Arc::new(ProxyState {
            target: target.trim_end_matches('/').to_owned(),
            fault: Mutex::default(),
            single_blobs: Mutex::default(),
            batch_requests: Mutex::default(),
            manifest_query: Mutex::default(),
            http: reqwest::Client::builder().no_gzip().build().unwrap(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FaultProxy { url, state }
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// The query of the last manifest request the replica sent.
    pub fn manifest_query(&self) -> String {
        self.state.manifest_query.lock().unwrap().clone()
    }

    /// The blobs the replica asked for one at a time (hex digests, in order).
    pub fn single_blobs(&self) -> Vec<String> {
        self.state.single_blobs.lock().unwrap().clone()
    }

    /// How many `POST blobs` (batches) the replica sent.
    pub fn batch_requests(&self) -> usize {
        *self.state.batch_requests.lock().unwrap()
    }
}

async fn forward(State(p): State<Arc<ProxyState>>, request: Request) -> Response {
    let target = format!(
        "{}{}",
        p.target,
        request
            .uri()
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/")
    );
    let blob = request
        .uri()
        .path()
        .strip_prefix("/api/v1/replica/blobs/sha256/")
        .map(str::to_owned);
    let manifest = request.uri().path() == "/api/v1/replica/manifest";
    let batch = request.uri().path() == "/api/v1/replica/blobs";
    if let Some(hex) = &blob {
        p.single_blobs.lock().unwrap().push(hex.clone());
    }
    if batch {
        *p.batch_requests.lock().unwrap() += 1;
    }
    if manifest {
        *p.manifest_query.lock().unwrap() = request.uri().query().unwrap_or_default().to_owned();
    }
    if let (Some(hex), Fault::RefuseBlobs(refused)) = (&blob, &*p.fault.lock().unwrap()) {
        if refused.contains(hex) {
            return (StatusCode::SERVICE_UNAVAILABLE, "refused by the test proxy").into_response();
        }
    }
    let (parts, body) = request.into_parts();
    let mut body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    if let (true, Fault::RefuseBlobs(refused)) = (batch, &*p.fault.lock().unwrap()) {
        let mut asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
        asked["blobs"]
            .as_array_mut()
            .unwrap()
            .retain(|b| !refused.contains(b["sha256"].as_str().unwrap()));
        body = serde_json::to_vec(&asked).unwrap().into();
    }
    let mut upstream = p.http.request(parts.method.clone(), &target).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.unwrap_or_default().to_vec();
    let mut fault = p.fault.lock().unwrap();
    let mut truncate = false;
    if (blob.is_some() || batch) && status.is_success() && !bytes.is_empty() {
        match &mut *fault {
            Fault::CorruptBlobs(n) if *n > 0 => {
                *n -= 1;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x55;
            }
            Fault::CorruptBatches(n) if *n > 0 && batch => {
                *n -= 1;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x55;
            }
            Fault::TruncateBlobs(n) if *n > 0 => {
                *n -= 1;
                truncate = true;
            }
            Fault::TruncateBatches(n) if *n > 0 && batch => {
                *n -= 1;
                truncate = true;
            }
            _ => {}
        }
    }
    if manifest && matches!(*fault, Fault::TamperManifest) {
        let text = String::from_utf8_lossy(&bytes).replace("\\\"seq\\\":", "\\\"seq\\\":9");
        bytes = text.into_bytes();
    }
    drop(fault);
    let full = bytes.len();
    let body = if truncate {
        // Half the promised bytes, then an error: the connection breaks off mid-body.
        let half = bytes::Bytes::from(bytes[..full / 2].to_vec());
        Body::from_stream(futures::stream::iter(vec![
            Ok(half),
            Err(std::io::Error::other("cut by the test proxy")),
        ]))
    } else {
        Body::from(bytes)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "transfer-encoding" && name != "content-length" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
        .headers_mut()
        .insert("content-length", HeaderValue::from(full));
    response
}

impl FaultProxy {
    /// The fault now (a counted fault counts down as it is applied).
    pub fn fault(&self) -> Fault {
        self.state.fault.lock().unwrap().clone()
    }
}

/// Every blob in the store under `data_dir` hashes to its name: no bad byte was stored.
/// Returns how many there are.
pub fn assert_store_intact(data_dir: &Path) -> usize {
    use sha2::Digest as _;
    let mut count = 0;
    for shard in fs_err::read_dir(data_dir.join("store/blobs/sha256")).unwrap() {
        for blob in fs_err::read_dir(shard.unwrap().path()).unwrap() {
            let path = blob.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let actual = hex::encode(sha2::Sha256::digest(fs_err::read(&path).unwrap()));
            assert_eq!(
                actual,
                name,
                "{} holds other bytes than its name says",
                path.display()
            );
            count += 1;
        }
    }
    count
}
