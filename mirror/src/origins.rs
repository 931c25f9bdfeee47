//! Files by digest from anywhere that may hold them: a source's upstream, or a fallback origin
//! (a URL of its own, e.g. a snapshot archive). Every download is the same verified single
//! flight; probes (`HEAD`) tell where a file still is without fetching it.

use crate::digest::Sha256;
use crate::error::MirrorError;
use crate::metrics::Metrics;
use crate::mirror::{Mirror, Resolved};
use crate::path::{encode_for_upstream, PoolPath};
use crate::upstream;
use std::sync::Arc;

/// What a `HEAD` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Answered 200 (with the expected length, when it gave one).
    Present,
    /// Answered 404 or 410.
    Missing,
    /// Unreachable, another status, or a different length.
    Failed(String),
}

impl Mirror {
    /// A blob by digest from `url`: from the store, or one verified download (single flight)
    /// streamed to every caller.
    pub async fn fetch_blob_at(
        self: &Arc<Self>,
        url: &str,
        digest: Sha256,
        size: u64,
    ) -> Result<Resolved, MirrorError> {
        Metrics::inc(&self.metrics.requests);
        if self.store().contains(&digest) {
            Metrics::inc(&self.metrics.cache_hits);
            return Ok(Resolved::Blob {
                digest,
                stale: false,
            });
        }
        self.flight(url.to_owned(), None, digest, size)
    }

    /// Like [`fetch_blob_at`](Self::fetch_blob_at), but waits until the blob is stored.
    pub async fn store_blob_at(
        self: &Arc<Self>,
        url: &str,
        digest: Sha256,
        size: u64,
    ) -> Result<Sha256, MirrorError> {
        let resolved = self.fetch_blob_at(url, digest, size).await?;
        self.landed(resolved, url).await
    }

    /// Where a source's `path` is upstream. The path must be a clean relative path.
    pub fn upstream_url(&self, source_name: &str, path: &str) -> Result<String, MirrorError> {
        let (_, source) = self.source(source_name)?;
        let path = checked(path)?;
        Ok(source.url(&path))
    }

    /// `HEAD url`: whether it is there, expecting `size` bytes.
    pub async fn probe(&self, url: &str, size: u64) -> Probe {
        Metrics::inc(&self.metrics.upstream_fetches);
        let response = match self.client.head(url).send().await {
            Ok(r) => r,
            Err(e) => return Probe::Failed(upstream::describe(&e)),
        };
        match response.status() {
            // The header, not `content_length()`: a HEAD response has no body to measure.
            reqwest::StatusCode::OK => match response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            {
                Some(len) if len != size => {
                    Probe::Failed(format!("{len} bytes where {size} were expected"))
                }
                _ => Probe::Present,
            },
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => Probe::Missing,
            status => Probe::Failed(format!("answered {status}")),
        }
    }
}

/// A fallback URL for `path` below `root` (a repository root, with or without a trailing
/// slash). Refuses paths that would climb out of it.
pub fn join_url(root: &str, path: &str) -> Result<String, MirrorError> {
    let path = checked(path)?;
    Ok(format!(
        "{}/{}",
        root.trim_end_matches('/'),
        encode_for_upstream(&path)
    ))
}

/// A path from an index or a snapshot row, checked as a [`PoolPath`] (also after
/// percent-decoding).
fn checked(path: &str) -> Result<String, MirrorError> {
    PoolPath::parse(path)
        .map(|p| p.as_str().to_owned())
        .map_err(|e| MirrorError::BadRequest(e.to_string()))
}
