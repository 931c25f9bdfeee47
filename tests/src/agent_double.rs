//! A test double of the fleet server's agent API, for testing `aptgate-agent` before (and
//! apart from) the real server: it speaks `aptgate_agent::protocol` on 127.0.0.1, checks every
//! request's signature, timestamp and nonce the way the protocol says, and records what agents
//! sent. Tests set what it answers (sources, commands, status).

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aptgate_agent::protocol::{
    self, headers, CheckinRequest, CheckinResponse, Command, DesiredSources, EnrollRequest,
    EnrollResponse, HostStatus, InventoryAccepted, InventoryUpload, Poll, WaitResponse,
};
use axum::{
    body::{to_bytes, Body},
    http::{HeaderMap, Method, Request, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};

pub const TOKEN: &str = "enroll-token-1";

/// What the double knows and answers; tests read and change it through [`AgentServer::state`].
#[derive(Debug, Default)]
pub struct DoubleState {
    /// host id → public key (hex)
    pub hosts: HashMap<String, String>,
    pub status: Option<HostStatus>,
    pub rev: i64,
    pub sources: DesiredSources,
    /// Handed out once, at the next check-in.
    pub commands: Vec<Command>,
    pub upload_inventory: bool,
    pub poll: Option<Poll>,
    pub enrollments: Vec<EnrollRequest>,
    pub checkins: Vec<CheckinRequest>,
    pub inventories: Vec<InventoryUpload>,
    /// Requests whose signature, timestamp or nonce was refused: `(path, reason)`.
    pub refused: Vec<(String, String)>,
    nonces: HashSet<String>,
    /// Content-Encoding of each inventory upload.
    pub inventory_encodings: Vec<String>,
}

pub struct AgentServer {
    state: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<DoubleState>,
    changed: Notify,
}

impl AgentServer {
    pub async fn start() -> AgentServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(DoubleState::default()),
            changed: Notify::new(),
        });
        let app = Router::new().fallback({
            let shared = shared.clone();
            move |request: Request<Body>| handle(shared.clone(), request)
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serving");
        });
        AgentServer {
            state: shared,
            addr,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, DoubleState> {
        self.state.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumps the host revision and wakes every wait, as an admin's change would.
    pub fn bump(&self) {
        self.state().rev += 1;
        self.state.changed.notify_waiters();
    }
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

async fn handle(shared: Arc<Shared>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let encoding = parts
        .headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = to_bytes(body, 64 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();

    // The enrolling key signs its own enrollment: take the public key from the body.
    let enroll: Option<EnrollRequest> = if path == protocol::ENROLL_PATH {
        match serde_json::from_slice(&body) {
            Ok(e) => Some(e),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    } else {
        None
    };
    let host_id = header(&parts.headers, headers::HOST);
    let public_key = match &enroll {
        Some(e) if host_id.is_empty() => e.public_key.clone(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "bad_request", "host id at enroll"),
        None => match shared.state.lock().unwrap().hosts.get(&host_id) {
            Some(key) => key.clone(),
            None => return error(StatusCode::UNAUTHORIZED, "unknown_host", "no such host"),
        },
    };
    if let Err(reason) = check_signature(
        &shared,
        &parts.method,
        &path_and_query,
        &parts.headers,
        &body,
        &public_key,
    ) {
        shared
            .state
            .lock()
            .unwrap()
            .refused
            .push((path_and_query, reason.clone()));
        return error(StatusCode::UNAUTHORIZED, "bad_signature", &reason);
    }

    match (parts.method.clone(), path.as_str()) {
        (Method::POST, protocol::ENROLL_PATH) => {
            let enroll = enroll.expect("parsed above");
            if enroll.token != TOKEN {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "unknown enrollment token",
                );
            }
            let mut state = shared.state.lock().unwrap();
            let host_id = format!("h-{}", state.hosts.len() + 1);
            state
                .hosts
                .insert(host_id.clone(), enroll.public_key.clone());
            state.enrollments.push(enroll);
            Json(EnrollResponse {
                host_id,
                status: state.status.unwrap_or(HostStatus::Active),
                poll: poll(&state),
            })
            .into_response()
        }
        (Method::POST, protocol::CHECKIN_PATH) => {
            let checkin: CheckinRequest = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
            };
            let mut state = shared.state.lock().unwrap();
            let known = state.inventories.last().map(|i| i.digest.clone());
            let upload_inventory = state.upload_inventory
                || checkin.inventory_digest.is_none()
                || checkin.inventory_digest != known;
            state.checkins.push(checkin);
            let status = state.status.unwrap_or(HostStatus::Active);
            let commands = if status == HostStatus::Active {
                std::mem::take(&mut state.commands)
            } else {
                Vec::new()
            };
            Json(CheckinResponse {
                status,
                rev: state.rev,
                sources: state.sources.clone(),
                commands,
                upload_inventory,
                poll: poll(&state),
                profile: None,
            })
            .into_response()
        }
        (Method::PUT, protocol::INVENTORY_PATH) => {
            let json = if encoding == "gzip" {
                let mut out = Vec::new();
                if flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .is_err()
                {
                    return error(StatusCode::BAD_REQUEST, "bad_request", "not gzip");
                }
                out
            } else {
                body.to_vec()
            };
            let upload: InventoryUpload = match serde_json::from_slice(&json) {
                Ok(u) => u,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
            };
            let digest = protocol::inventory_digest(&upload.packages);
            if digest != upload.digest {
                return error(StatusCode::BAD_REQUEST, "bad_digest", "digest mismatch");
            }
            let mut state = shared.state.lock().unwrap();
            state.upload_inventory = false;
            state.inventory_encodings.push(encoding);
            let packages = upload.packages.len();
            state.inventories.push(upload);
            Json(InventoryAccepted { digest, packages }).into_response()
        }
        (Method::GET, protocol::WAIT_PATH) => {
            let since: i64 = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("rev="))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let wait = Duration::from_secs(poll(&shared.state.lock().unwrap()).wait_secs);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = shared.changed.notified();
                let rev = shared.state.lock().unwrap().rev;
                if rev > since {
                    return Json(WaitResponse { rev }).into_response();
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Json(WaitResponse { rev }).into_response();
                }
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

fn poll(state: &DoubleState) -> Poll {
    state.poll.unwrap_or(Poll {
        interval_secs: 60,
        wait_secs: 30,
    })
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn check_signature(
    shared: &Shared,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    public_key: &str,
) -> Result<(), String> {
    let timestamp: i64 = header(headers, headers::TIMESTAMP)
        .parse()
        .map_err(|_| "no timestamp".to_owned())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    if (now - timestamp).abs() > protocol::REPLAY_WINDOW_SECS {
        return Err("timestamp outside the window".into());
    }
    let nonce = header(headers, headers::NONCE);
    protocol::verify_request(
        public_key,
        method.as_str(),
        path_and_query,
        timestamp,
        &nonce,
        body,
        &header(headers, headers::SIGNATURE),
    )
    .map_err(|e| e.to_string())?;
    if !shared.state.lock().unwrap().nonces.insert(nonce) {
        return Err("nonce replayed".into());
    }
    Ok(())
}

/// `aptgate-agent` as a real process (built by `cargo build --workspace --bins`, as
/// `scripts/test` does), with no `APTGATE_*` variable or proxy from the test's environment.
pub fn agent_command() -> std::process::Command {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("aptgate-agent");
    assert!(
        bin.is_file(),
        "build the agent first (cargo build -p aptgate-agent): {} missing",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("APTGATE_") || key.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(key);
        }
    }
    cmd
}
