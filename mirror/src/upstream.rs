//! The HTTP client that talks to upstream archives.

use aptgate_config::MirrorConfig;
use reqwest::redirect::{Attempt, Policy};

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
/// redirect policy that refuses downgrades from https to http and loops.
pub fn client(config: &MirrorConfig) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("aptgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .redirect(Policy::custom(redirect_policy))
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
    builder.build().map_err(ClientError::Build)
}

fn redirect_policy(attempt: Attempt) -> reqwest::redirect::Action {
    let refusal = {
        let previous = attempt.previous();
        if previous.len() > MAX_REDIRECTS {
            Some(format!("more than {MAX_REDIRECTS} redirects"))
        } else if previous.iter().any(|u| u == attempt.url()) {
            Some(format!("redirect loop at {}", attempt.url()))
        } else if previous.iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https"
        {
            Some(format!(
                "redirect from https to {} refused (downgrade)",
                attempt.url()
            ))
        } else {
            None
        }
    };
    match refusal {
        Some(why) => attempt.error(why),
        None => attempt.follow(),
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
