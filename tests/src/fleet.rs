//! The fleet from the agent's side, speaking the protocol directly (`aptgate_agent::protocol`
//! with reqwest): signed requests, enrollment, check-ins, inventory uploads; plus the admin
//! API calls the fleet tests make.

use aptgate_agent::protocol::{
    self, CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, Facts, HostKey,
    InstalledPackage, InventoryUpload, Labels, OsRelease,
};
use serde_json::Value;
use std::io::Write;

/// One simulated host: its key, machine id and (once enrolled) host id.
pub struct TestAgent {
    pub url: String,
    pub key: HostKey,
    pub machine_id: String,
    pub host_id: String,
    pub hostname: String,
    pub labels: Labels,
}

/// A signed request's answer: status and body (JSON, or `Null`).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn package(name: &str, arch: &str, version: &str) -> InstalledPackage {
    InstalledPackage {
        name: name.into(),
        architecture: arch.into(),
        version: version.into(),
        source: name.into(),
        source_version: version.into(),
        status: "install ok installed".into(),
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One client for every simulated agent (building one loads the system's CA roots). It keeps
/// no idle connections, so tests on different runtimes in one process can share it.
fn shared_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_gzip()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    })
}

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TestAgent {
    pub fn new(url: &str, hostname: &str, labels: Labels) -> Self {
        Self {
            url: url.to_owned(),
            key: HostKey::generate(),
            machine_id: hex::encode(rand::random::<[u8; 32]>()),
            host_id: String::new(),
            hostname: hostname.to_owned(),
            labels,
        }
    }

    pub fn facts(&self) -> Facts {
        Facts {
            hostname: self.hostname.clone(),
            machine_id_sha256: self.machine_id.clone(),
            os_release: OsRelease {
                id: "debian".into(),
                version_id: "12".into(),
                version_codename: "bookworm".into(),
                pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
            },
            architectures: vec!["amd64".into()],
            kernel: "6.1.0-9-amd64".into(),
            agent_version: "0.1.0-test".into(),
        }
    }

    /// Sends a request signed with `key` as host `host_id`, with extra headers.
    pub async fn send_as(
        &self,
        key: &HostKey,
        host_id: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let headers = key.sign_request(host_id, method, path, unix_now(), &body);
        self.send_headers(method, path, body, &headers, extra).await
    }

    /// Sends a request with exactly these authentication headers.
    pub async fn send_headers(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut request =
            shared_client().request(method.parse().unwrap(), format!("{}{path}", self.url));
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = request.body(body).send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Answer {
        self.send_as(&self.key, &self.host_id, method, path, body, &[])
            .await
    }

    pub async fn try_enroll(&mut self, token: &str) -> Answer {
        let body = serde_json::to_vec(&EnrollRequest {
            token: token.to_owned(),
            public_key: self.key.public_hex(),
            facts: self.facts(),
            labels: self.labels.clone(),
        })
        .unwrap();
        let answer = self
            .send_as(&self.key, "", "POST", protocol::ENROLL_PATH, body, &[])
            .await;
        if answer.status == 200 {
            let r: EnrollResponse = serde_json::from_value(answer.body.clone()).unwrap();
            self.host_id = r.host_id;
        }
        answer
    }

    pub async fn enroll(&mut self, token: &str) -> EnrollResponse {
        let answer = self.try_enroll(token).await;
        assert_eq!(answer.status, 200, "enroll: {}", answer.body);
        serde_json::from_value(answer.body).unwrap()
    }

    pub fn checkin_request(&self, inventory_digest: Option<String>) -> CheckinRequest {
        CheckinRequest {
            protocol: protocol::PROTOCOL_VERSION,
            facts: self.facts(),
            labels: self.labels.clone(),
            inventory_digest,
            ..CheckinRequest::default()
        }
    }

    pub async fn try_checkin(&self, req: &CheckinRequest) -> Answer {
        self.send(
            "POST",
            protocol::CHECKIN_PATH,
            serde_json::to_vec(req).unwrap(),
        )
        .await
    }

    pub async fn checkin(&self, req: &CheckinRequest) -> CheckinResponse {
        let answer = self.try_checkin(req).await;
        assert_eq!(answer.status, 200, "check-in: {}", answer.body);
        serde_json::from_value(answer.body).unwrap()
    }

    /// Uploads gzip'd bytes as the inventory.
    pub async fn put_inventory_bytes(&self, gzip_bytes: Vec<u8>) -> Answer {
        let headers = self.key.sign_request(
            &self.host_id,
            "PUT",
            protocol::INVENTORY_PATH,
            unix_now(),
            &gzip_bytes,
        );
        self.send_headers(
            "PUT",
            protocol::INVENTORY_PATH,
            gzip_bytes,
            &headers,
            &[("content-encoding", "gzip")],
        )
        .await
    }

    /// Uploads an inventory of `packages`; returns its digest.
    pub async fn upload(&self, packages: Vec<InstalledPackage>) -> String {
        let digest = protocol::inventory_digest(&packages);
        let body = serde_json::to_vec(&InventoryUpload {
            digest: digest.clone(),
            packages,
        })
        .unwrap();
        let answer = self.put_inventory_bytes(gzip(&body)).await;
        assert_eq!(answer.status, 200, "inventory: {}", answer.body);
        digest
    }

    pub async fn wait(&self, rev: i64) -> Answer {
        self.send(
            "GET",
            &format!("{}?rev={rev}", protocol::WAIT_PATH),
            Vec::new(),
        )
        .await
    }
}

/// The admin API, as the fleet tests call it.
pub struct Admin {
    pub url: String,
    pub token: String,
}

impl Admin {
    pub fn new(url: &str, data_dir: &std::path::Path) -> Self {
        let token = fs_err::read_to_string(data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            url: url.to_owned(),
            token,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = shared_client()
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("x-aptgate-actor", "alice");
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    /// A new enrollment token's secret.
    pub async fn token(&self, body: Value) -> String {
        self.ok("POST", "/api/v1/fleet/tokens", Some(body)).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Audit entries of one action, newest first.
    pub async fn audit(&self, action: &str) -> Vec<Value> {
        self.ok(
            "GET",
            &format!("/api/v1/audit?action={action}&limit=1000"),
            None,
        )
        .await
        .as_array()
        .unwrap()
        .clone()
    }
}
