//! Many pool files from one source at once — an `immediate` sync, a rescue, a promotion that
//! stores everything — without a single flight, a path record and two `fsync`s per file.
//!
//! Files up to [`IN_MEMORY`] are downloaded a few at a time into memory, checked against their
//! digest and size, and stored [`BATCH`] at a time by [`Store::insert_batch`] (one `syncfs` per
//! batch) while the next downloads run. Larger files take the usual streamed, single-flight
//! path. Nothing is recorded under the source's paths: the caller knows every digest.

use crate::digest::Sha256;
use crate::error::MirrorError;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::path::PoolPath;
use crate::store::{Expected, Pending, StoreError};
use crate::upstream;
use futures::StreamExt as _;
use std::collections::VecDeque;
use std::sync::Arc;

/// Files up to this size are held in memory and stored in batches.
pub const IN_MEMORY: u64 = 8 << 20;

/// Blobs per batch: one `syncfs` for this many files…
pub const BATCH: usize = 256;

/// …or for what arrived this long after a batch's first file.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A file to store: where the source has it and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub path: PoolPath,
    pub digest: Sha256,
    pub size: u64,
}

impl Mirror {
    /// Stores every `wanted` file of `source_name` that the store lacks, `concurrency`
    /// downloads at a time; `progress(done, total)` after each. Returns what failed, and why.
    pub async fn store_many(
        self: &Arc<Self>,
        source_name: &str,
        wanted: Vec<Wanted>,
        concurrency: usize,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Vec<(Wanted, MirrorError)> {
        let (source_name, url_of) = match self.source(source_name) {
            Ok((name, source)) => (name.clone(), |path: &PoolPath| source.url(path.as_str())),
            Err(e) => {
                let reason = e.to_string();
                return wanted
                    .into_iter()
                    .map(|w| {
                        let e = MirrorError::Upstream {
                            url: w.path.to_string(),
                            reason: reason.clone(),
                        };
                        (w, e)
                    })
                    .collect();
            }
        };
        let wanted: Vec<Wanted> = wanted
            .into_iter()
            .filter(|w| !self.store().contains(&w.digest))
            .collect();
        let total = wanted.len();
        let (small, large): (Vec<Wanted>, Vec<Wanted>) =
            wanted.into_iter().partition(|w| w.size <= IN_MEMORY);
        let mut failed = Vec::new();
        let mut done = 0;

        let mut downloads = futures::stream::iter(small)
            .map(|w| {
                let url = url_of(&w.path);
                async move {
                    let body = self.download_to_memory(&url, w.size).await;
                    (w, body)
                }
            })
            .buffer_unordered(concurrency);
        // At most two batches are written while the next downloads run.
        let mut writing = VecDeque::new();
        loop {
            let chunk = next_batch(&mut downloads, BATCH, BATCH_WAIT).await;
            if chunk.is_empty() {
                break;
            }
            let mut items = Vec::with_capacity(chunk.len());
            let mut blobs = Vec::with_capacity(chunk.len());
            for (w, body) in chunk {
                match body {
                    Ok(bytes) => {
                        blobs.push(Pending {
                            bytes,
                            expected: Expected::exactly(w.digest, w.size),
                        });
                        items.push(w);
                    }
                    Err(e) => failed.push((w, e)),
                }
            }
            let store = self.store().clone();
            writing.push_back((
                items,
                tokio::task::spawn_blocking(move || store.insert_batch(blobs)),
            ));
            if writing.len() > 2 {
                let (items, handle) = writing.pop_front().expect("not empty");
                done += self.written(&source_name, items, handle, &mut failed).await;
                progress(done, total);
            }
        }
        while let Some((items, handle)) = writing.pop_front() {
            done += self.written(&source_name, items, handle, &mut failed).await;
            progress(done, total);
        }

        let name = &source_name;
        let mut streamed = futures::stream::iter(large)
            .map(|w| async move {
                let result = self
                    .store_blob(name.as_str(), &w.path, w.digest, w.size)
                    .await;
                (w, result)
            })
            .buffer_unordered(concurrency);
        while let Some((w, result)) = streamed.next().await {
            done += 1;
            if let Err(e) = result {
                failed.push((w, e));
            }
            progress(done, total);
        }
        failed
    }

    /// Waits for a batch's write; returns how many files it took, failures go to `failed`.
    async fn written(
        &self,
        source_name: &aptgate_config::SourceName,
        items: Vec<Wanted>,
        handle: tokio::task::JoinHandle<Vec<Result<Sha256, StoreError>>>,
        failed: &mut Vec<(Wanted, MirrorError)>,
    ) -> usize {
        let n = items.len();
        let results = match handle.await {
            Ok(results) => results,
            Err(e) => items
                .iter()
                .map(|_| Err(StoreError::Io(std::io::Error::other(e.to_string()))))
                .collect(),
        };
        for (w, result) in items.into_iter().zip(results) {
            match result {
                Ok(_) => {}
                Err(e @ (StoreError::WrongDigest { .. } | StoreError::WrongSize { .. })) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    let url = format!("{source_name}: {}", w.path);
                    failed.push((
                        w,
                        MirrorError::Verification {
                            url,
                            reason: e.to_string(),
                        },
                    ));
                }
                Err(e) => {
                    let error = MirrorError::from_store(w.path.as_str(), e);
                    failed.push((w, error));
                }
            }
        }
        n
    }

    /// GETs `url` into memory, refusing more than `size` bytes.
    async fn download_to_memory(&self, url: &str, size: u64) -> Result<bytes::Bytes, MirrorError> {
        Metrics::inc(&self.metrics.cache_misses);
        Metrics::inc(&self.metrics.upstream_fetches);
        let failed = |reason: String| {
            Metrics::inc(&self.metrics.upstream_errors);
            MirrorError::Upstream {
                url: url.to_owned(),
                reason,
            }
        };
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(upstream::describe(&e)))?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => {
                return Err(MirrorError::NotFound {
                    what: url.to_owned(),
                })
            }
            status => return Err(failed(format!("answered {status}"))),
        }
        let mut body = bytes::BytesMut::with_capacity(size as usize);
        let mut stream = upstream::Body::new(response, self.rate_floor());
        while let Some(chunk) = stream.chunk().await.map_err(failed)? {
            if (body.len() + chunk.len()) as u64 > size {
                return Err(failed(format!("sent more than the {size} bytes listed")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// The next items of `stream`, up to `max`, waiting at most `wait` after the first one; empty
/// when the stream has ended. (`ready_chunks` would hand out whatever is ready at each poll:
/// with 16 downloads under way, one to three files a batch.)
async fn next_batch<S>(stream: &mut S, max: usize, wait: std::time::Duration) -> Vec<S::Item>
where
    S: futures::Stream + Unpin,
{
    let mut batch = Vec::new();
    let Some(first) = stream.next().await else {
        return batch;
    };
    batch.push(first);
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}
