//! The signed HTTP client: every request carries the host id, a timestamp, a nonce and an
//! Ed25519 signature over the method, the exact path and query sent, and the body as sent
//! ([`protocol::signing_string`]). The inventory goes gzip-compressed and is signed as such.

use std::{io::Write as _, time::Duration};

use flate2::{write::GzEncoder, Compression};
use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::protocol::{
    self,
    rollout::{LeaseAcquire, LeaseAnswer, LeaseReport, LeaseReportAnswer, RunPlan, RunPlanRequest},
    CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, HostKey, InventoryAccepted,
    InventoryUpload, WaitResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http(s) URL")]
    BadServer(String),
    #[error("cannot reach {url}")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// 401/403: the server does not know this host, revoked it, or refused the token.
    #[error("the server refused this host ({status}, {code}): {message}")]
    Unauthorized {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the server answered {status} ({code}): {message}")]
    Server {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the server's answer to {path} is not what the protocol says")]
    BadAnswer {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The server's machine code for a refused request (`stale_fence`, …), if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Unauthorized { code, .. } | ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth retrying later: the network, or the server having a bad moment.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network { .. } => true,
            ClientError::Server { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A client for one server, signing as one host.
pub struct AgentClient {
    http: reqwest::Client,
    base: Url,
    host_id: String,
    key: HostKey,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base.as_str())
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// `server` is the server's base URL (`https://aptgate.example.org`, possibly with a path
    /// prefix). `host_id` is empty before enrollment.
    pub fn new(server: &str, host_id: &str, key: HostKey) -> Result<Self, ClientError> {
        let mut base = Url::parse(server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ClientError::BadServer(server.to_owned()))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("aptgate-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .build()
            .expect("the TLS backend initialises");
        Ok(Self {
            http,
            base,
            host_id: host_id.to_owned(),
            key,
        })
    }

    pub fn key(&self) -> &HostKey {
        &self.key
    }

    pub fn set_host_id(&mut self, host_id: &str) {
        self.host_id = host_id.to_owned();
    }

    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        let body = serde_json::to_vec(request).expect("serializes");
        self.send(
            Method::POST,
            protocol::ENROLL_PATH,
            body,
            None,
            DEFAULT_TIMEOUT,
        )
        .await
    }

    pub async fn checkin(&self, request: &CheckinRequest) -> Result<CheckinResponse, ClientError> {
        let body = serde_json::to_vec(request).expect("serializes");
        self.send(
            Method::POST,
            protocol::CHECKIN_PATH,
            body,
            None,
            DEFAULT_TIMEOUT,
        )
        .await
    }

    pub async fn upload_inventory(
        &self,
        upload: &InventoryUpload,
    ) -> Result<InventoryAccepted, ClientError> {
        let json = serde_json::to_vec(upload).expect("serializes");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&json).expect("writing to memory");
        let body = gz.finish().expect("writing to memory");
        self.send(
            Method::PUT,
            protocol::INVENTORY_PATH,
            body,
            Some("gzip"),
            Duration::from_secs(300),
        )
        .await
    }

    /// Fixes what run `run_id` upgrades to ([`protocol::rollout`]).
    pub async fn plan_run(&self, request: &RunPlanRequest) -> Result<RunPlan, ClientError> {
        self.post(protocol::rollout::RUN_PLAN_PATH, request).await
    }

    pub async fn acquire_lease(&self, request: &LeaseAcquire) -> Result<LeaseAnswer, ClientError> {
        self.post(protocol::rollout::LEASE_ACQUIRE_PATH, request)
            .await
    }

    /// A holder's state change or heartbeat; `409 stale_fence` when the slot is no longer ours.
    pub async fn report_lease(
        &self,
        report: &LeaseReport,
    ) -> Result<LeaseReportAnswer, ClientError> {
        self.post(protocol::rollout::LEASE_REPORT_PATH, report)
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        request: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(request).expect("serializes");
        self.send(Method::POST, path, body, None, DEFAULT_TIMEOUT)
            .await
    }

    /// Holds `GET /wait?rev=N` open up to `hold`; the server answers when the host's revision
    /// passes `rev` or its own wait ends.
    pub async fn wait(&self, rev: i64, hold: Duration) -> Result<WaitResponse, ClientError> {
        let path = format!("{}?rev={rev}", protocol::WAIT_PATH);
        self.send(Method::GET, &path, Vec::new(), None, hold).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        content_encoding: Option<&str>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = self
            .base
            .join(path_and_query.trim_start_matches('/'))
            .map_err(|_| ClientError::BadServer(self.base.to_string()))?;
        // Sign exactly what goes on the wire: the URL's path and query after joining.
        let mut signed_path = url.path().to_owned();
        if let Some(query) = url.query() {
            signed_path.push('?');
            signed_path.push_str(query);
        }
        let timestamp = unix_now();
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .timeout(timeout)
            .header(header::ACCEPT, "application/json");
        for (name, value) in self.key.sign_request(
            &self.host_id,
            method.as_str(),
            &signed_path,
            timestamp,
            &body,
        ) {
            request = request.header(name, value);
        }
        if !body.is_empty() || method != Method::GET {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(encoding) = content_encoding {
            request = request.header(header::CONTENT_ENCODING, encoding);
        }
        let network = |source| ClientError::Network {
            url: url.to_string(),
            source,
        };
        let response = request.body(body).send().await.map_err(network)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(network)?;
        if !status.is_success() {
            let (code, message) = error_body(&bytes);
            return Err(
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    ClientError::Unauthorized {
                        status,
                        code,
                        message,
                    }
                } else {
                    ClientError::Server {
                        status,
                        code,
                        message,
                    }
                },
            );
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::BadAnswer {
            path: url.path().to_owned(),
            source,
        })
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `{"code","message"}`, or whatever the body says, cut short and stripped of control
/// characters so a proxy's HTML page cannot garble the terminal.
fn error_body(bytes: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        code: String,
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(bytes) {
        return (clean(&e.code, 100), clean(&e.message, 500));
    }
    (
        "unknown".into(),
        clean(&String::from_utf8_lossy(bytes), 300),
    )
}

fn clean(text: &str, max: usize) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    text.trim().to_owned()
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
