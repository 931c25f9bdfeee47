//! The server's admin JSON API as the CLI talks to it: the server URL, the bearer token and the
//! acting user's name (recorded in the audit log).

use anyhow::Context;
use aptgate_config::Config;

/// The server's admin API, as the CLI talks to it.
pub struct AdminClient {
    base: String,
    token: String,
    actor: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(
        config: &Config,
        server: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let base = server.unwrap_or_else(|| {
            // A server listening on every address is reached on loopback.
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        let token = match token {
            Some(t) => t,
            None => {
                let path = aptgate_channels::api::token_path(&config.data_dir);
                fs_err::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "cannot read the admin token\nhint: run as the user that runs \
                             `aptgate serve` (the token is in {}), or pass --token / APTGATE_TOKEN",
                            path.display()
                        )
                    })?
            }
        };
        let actor = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "cli".into());
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            actor,
            http: reqwest::Client::new(),
        })
    }

    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("x-aptgate-actor", &self.actor);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the aptgate server at {}\nhint: start it with `aptgate serve`, \
                 or point --server at it",
                self.base
            )
        })?;
        let text = successful(response)
            .await?
            .text()
            .await
            .context("reading the server's answer")?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    /// GETs `path` and copies the body to `out` as it arrives (exports too long to hold).
    pub async fn download(&self, path: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("x-aptgate-actor", &self.actor)
            .send()
            .await
            .with_context(|| format!("cannot reach the aptgate server at {}", self.base))?;
        let mut response = successful(response).await?;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("the answer from {url} broke off"))?
        {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(())
    }

    /// POSTs a file as the raw request body, streamed from disk.
    pub async fn post_file<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        file: &std::path::Path,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1/{path}", self.base);
        let opened = fs_err::tokio::File::open(file).await?;
        let length = opened.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(opened));
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("x-aptgate-actor", &self.actor)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/vnd.debian.binary-package",
            )
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the aptgate server at {}", self.base))?;
        let text = successful(response)
            .await?
            .text()
            .await
            .context("reading the server's answer")?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// The response if its status is a success; else the API's error as a message with its code.
async fn successful(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response
        .text()
        .await
        .context("reading the server's answer")?;
    let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    anyhow::bail!(
        "{} ({})",
        error["message"].as_str().unwrap_or(&text),
        error["code"].as_str().unwrap_or(status.as_str())
    )
}

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A unix time as `YYYY-MM-DD HH:MM:SSZ`.
pub fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}
