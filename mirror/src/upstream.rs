//! The HTTP client that talks to upstream archives.

use aptgate_config::MirrorConfig;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::redirect::{Attempt, Policy};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA certificate {path}")]
    ReadCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA certificate {path}: {source}")]
    BadCa {
        path: std::path::PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

const MAX_REDIRECTS: usize = 5;

/// Builds the upstream client: system CAs plus configured ones, timeouts from config, and a
/// redirect policy that refuses downgrades from https to http, loops, other hosts than the
/// one asked (unless allowed by config) and paths that would not pass as a mirror path.
pub fn client(config: &MirrorConfig) -> Result<reqwest::Client, ClientError> {
    builder(config)?.build().map_err(ClientError::Build)
}

/// The builder behind [`client`], for callers that add to it (a replica's token header).
pub fn builder(config: &MirrorConfig) -> Result<reqwest::ClientBuilder, ClientError> {
    let allowed: Vec<String> = config
        .allowed_redirect_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("aptgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .redirect(Policy::custom(move |attempt| {
            redirect_policy(attempt, &allowed)
        }))
        // Debian mirrors serve `.gz`/`.xz` as-is; never let the client transcode bodies.
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate();
    for path in &config.extra_ca_certs {
        let pem = fs_err::read(path).map_err(|source| ClientError::ReadCa {
            path: path.clone(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| ClientError::BadCa {
            path: path.clone(),
            source,
        })?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

fn redirect_policy(attempt: Attempt, allowed_hosts: &[String]) -> reqwest::redirect::Action {
    let refusal = {
        let previous = attempt.previous();
        let target = attempt.url();
        if previous.len() > MAX_REDIRECTS {
            Some(format!("more than {MAX_REDIRECTS} redirects"))
        } else if previous.iter().any(|u| u == target) {
            Some(format!("redirect loop at {target}"))
        } else if previous.iter().any(|u| u.scheme() == "https") && target.scheme() != "https" {
            Some(format!(
                "redirect from https to {target} refused (downgrade)"
            ))
        } else if !previous
            .first()
            .is_some_and(|asked| same_host(asked, target) || is_allowed(target, allowed_hosts))
        {
            Some(format!(
                "redirect to another host refused: {target} (allow it with mirror.allowed_redirect_hosts)"
            ))
        } else if let Err(e) = redirect_path(target) {
            Some(format!("redirect refused: {e}"))
        } else {
            None
        }
    };
    match refusal {
        Some(why) => attempt.error(why),
        None => attempt.follow(),
    }
}

/// The same host and port, or the same host upgraded to https on its default port.
fn same_host(asked: &Url, target: &Url) -> bool {
    asked.host_str() == target.host_str()
        && (asked.port_or_known_default() == target.port_or_known_default()
            || (target.scheme() == "https" && target.port().is_none()))
}

/// `host` allows the host on its scheme's default port; `host:port` that port.
fn is_allowed(target: &Url, allowed_hosts: &[String]) -> bool {
    let Some(host) = target.host_str() else {
        return false;
    };
    let with_port = target
        .port_or_known_default()
        .map(|port| format!("{host}:{port}"));
    allowed_hosts.iter().any(|allowed| {
        Some(allowed) == with_port.as_ref() || (target.port().is_none() && allowed == host)
    })
}

/// A redirect target's path must pass the checks a request path does: no `..` (percent-encoded
/// or not), no control characters, no empty segments.
fn redirect_path(target: &Url) -> Result<(), crate::path::InvalidPath> {
    let decoded = percent_encoding::percent_decode_str(target.path()).decode_utf8_lossy();
    let path = decoded.trim_start_matches('/');
    if path.is_empty() {
        return Ok(());
    }
    crate::path::MirrorPath::try_from(path.to_owned()).map(|_| ())
}

/// The slowest an upstream transfer may go: at least `bytes_per_sec` on average over every
/// `window`. `read_timeout` catches an upstream that sends nothing; this catches one that
/// sends a byte now and then to keep the connection open (TUF's "slow retrieval").
#[derive(Debug, Clone, Copy)]
pub struct RateFloor {
    bytes_per_sec: u64,
    window: Duration,
}

impl RateFloor {
    pub fn new(config: &MirrorConfig) -> Option<Self> {
        (config.min_transfer_rate > 0 && !config.min_transfer_window.is_zero()).then_some(Self {
            bytes_per_sec: config.min_transfer_rate,
            window: config.min_transfer_window,
        })
    }

    fn minimum(&self) -> u64 {
        self.bytes_per_sec
            .saturating_mul(self.window.as_secs().max(1))
    }
}

/// An upstream response body, read chunk by chunk under a [`RateFloor`].
pub struct Body {
    stream: BoxStream<'static, reqwest::Result<Bytes>>,
    floor: Option<RateFloor>,
    window_end: Instant,
    window_bytes: u64,
}

impl Body {
    pub fn new(response: reqwest::Response, floor: Option<RateFloor>) -> Self {
        let window = floor.map_or(Duration::ZERO, |f| f.window);
        Self {
            stream: response.bytes_stream().boxed(),
            floor,
            window_end: Instant::now() + window,
            window_bytes: 0,
        }
    }

    /// The next chunk, `None` at the end; an error (described) if the transfer broke off or
    /// fell below the floor.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let Some(floor) = self.floor else {
            return self
                .stream
                .next()
                .await
                .transpose()
                .map_err(|e| describe(&e));
        };
        loop {
            if Instant::now() >= self.window_end {
                if self.window_bytes < floor.minimum() {
                    return Err(format!(
                        "too slow: {} bytes in {}s, below the minimum of {} bytes/s \
                         (mirror.min_transfer_rate)",
                        self.window_bytes,
                        floor.window.as_secs(),
                        floor.bytes_per_sec
                    ));
                }
                self.window_bytes = 0;
                self.window_end = Instant::now() + floor.window;
            }
            match tokio::time::timeout_at(self.window_end, self.stream.next()).await {
                Ok(next) => {
                    let chunk = next.transpose().map_err(|e| describe(&e))?;
                    if let Some(bytes) = &chunk {
                        self.window_bytes += bytes.len() as u64;
                    }
                    return Ok(chunk);
                }
                Err(_window_over) => continue,
            }
        }
    }
}

/// A readable reason for a failed upstream request, including the cause chain.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_redirect() {
        "redirect refused".to_owned()
    } else if error.is_body() || error.is_decode() {
        "transfer broke off".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
