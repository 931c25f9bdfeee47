//! Getting blobs from the parent. One blob is streamed, checked against its digest and size
//! and retried a few times (the mirror's single flight). The packages of an `immediate`
//! channel go mostly in batches ([`crate::batch`]): small ones many per request, stored with
//! one `syncfs` per batch; whatever a batch did not bring (a large file, one the parent left
//! out, a cut or corrupted answer) is then fetched one by one.

use super::sync::SyncError;
use super::Replica;
use crate::batch::FrameReader;
use crate::protocol::{blob_url, BlobBatch, BATCH_MAX_BLOBS, BATCH_MAX_BLOB_SIZE, BLOB_BATCH_PATH};
use aptgate_channels::manifest::BlobRef;
use aptgate_mirror::{Expected, Pending, Sha256};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};

/// Single-blob downloads at once.
const PARALLEL_BLOBS: usize = 8;
/// Batch requests at once: enough to keep the link busy while a batch is checked and stored.
const PARALLEL_BATCHES: usize = 4;
/// Bytes per batch (each is held in memory until it is stored).
const BATCH_BYTES: u64 = 8 << 20;
/// Attempts per blob within one sync (a corrupted or cut transfer is fetched again).
const BLOB_ATTEMPTS: usize = 3;

impl Replica {
    /// Makes sure the store holds `digest` (fetched from the parent, verified, if not).
    pub(crate) async fn fetch(
        &self,
        what: &str,
        digest: Sha256,
        size: u64,
    ) -> Result<(), SyncError> {
        let url = blob_url(self.config.parent.as_str(), &digest, size);
        let mut last = String::new();
        for _ in 0..BLOB_ATTEMPTS {
            if self.mirror.store().contains(&digest) {
                return Ok(());
            }
            match self.mirror.store_blob_at(&url, digest, size).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(SyncError::Blob {
            what: what.to_owned(),
            digest,
            reason: last,
        })
    }

    /// Every `.deb` of an `immediate` channel that the store lacks.
    pub(crate) async fn fetch_pool(
        &self,
        channel: &str,
        pool: &HashMap<String, (Sha256, u64)>,
    ) -> Result<(), SyncError> {
        let store = self.mirror.store();
        let mut seen = HashSet::new();
        let missing: Vec<(String, BlobRef)> = pool
            .iter()
            .filter(|(_, (d, _))| seen.insert(*d) && !store.contains(d))
            .map(|(path, &(sha256, size))| {
                (
                    format!("channel {channel}: {path}"),
                    BlobRef { sha256, size },
                )
            })
            .collect();
        let small: Vec<BlobRef> = missing
            .iter()
            .map(|(_, blob)| *blob)
            .filter(|blob| blob.size <= BATCH_MAX_BLOB_SIZE)
            .collect();
        let mut batches = futures::stream::iter(batches(small))
            .map(|batch| self.fetch_batch(batch))
            .buffer_unordered(PARALLEL_BATCHES);
        while batches.next().await.is_some() {}

        // Collected first: a lazy filter held across the awaits below would not be `Send`.
        let rest: Vec<(String, BlobRef)> = missing
            .into_iter()
            .filter(|(_, blob)| !store.contains(&blob.sha256))
            .collect();
        let mut downloads = futures::stream::iter(rest)
            .map(|(what, blob)| async move { self.fetch(&what, blob.sha256, blob.size).await })
            .buffer_unordered(PARALLEL_BLOBS);
        while let Some(result) = downloads.next().await {
            result?;
        }
        Ok(())
    }

    /// Asks the parent for `batch` in one request and stores what arrives intact. It never
    /// fails: what did not come is fetched one by one afterwards.
    async fn fetch_batch(&self, batch: Vec<BlobRef>) {
        let url = self.parent_url(BLOB_BATCH_PATH);
        let request = self.client.post(&url).json(&BlobBatch {
            blobs: batch.clone(),
        });
        let response = match request.send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                tracing::debug!(status = %response.status(), "a blob batch was refused");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %aptgate_mirror::upstream::describe(&e), "a blob batch failed");
                return;
            }
        };
        let mut reader = FrameReader::new(&batch);
        let mut arrived = Vec::new();
        let mut body = response.bytes_stream();
        'read: loop {
            loop {
                match reader.next_frame() {
                    Ok(Some((digest, bytes))) => arrived.push(Pending {
                        expected: Expected::exactly(digest, bytes.len() as u64),
                        bytes,
                    }),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "a blob batch from the parent is malformed");
                        break 'read;
                    }
                }
            }
            match body.next().await {
                Some(Ok(chunk)) => reader.push(&chunk),
                Some(Err(e)) => {
                    tracing::warn!(error = %aptgate_mirror::upstream::describe(&e), "a blob batch was cut off");
                    break;
                }
                None => {
                    if !reader.at_boundary() {
                        tracing::warn!("a blob batch ended in the middle of a blob");
                    }
                    break;
                }
            }
        }
        if arrived.is_empty() {
            return;
        }
        let store = self.mirror.store().clone();
        let results = tokio::task::spawn_blocking(move || store.insert_batch(arrived))
            .await
            .expect("storing a batch does not panic");
        let refused = results.iter().filter(|r| r.is_err()).count();
        if refused > 0 {
            tracing::warn!(
                refused,
                "blobs in a batch did not match their digest or could not be stored"
            );
        }
    }
}

/// `blobs` in groups of at most [`BATCH_MAX_BLOBS`] and about [`BATCH_BYTES`].
fn batches(blobs: Vec<BlobRef>) -> Vec<Vec<BlobRef>> {
    let mut out: Vec<Vec<BlobRef>> = Vec::new();
    let mut bytes = 0;
    for blob in blobs {
        match out.last_mut() {
            Some(last) if last.len() < BATCH_MAX_BLOBS && bytes + blob.size <= BATCH_BYTES => {
                bytes += blob.size;
                last.push(blob);
            }
            _ => {
                bytes = blob.size;
                out.push(vec![blob]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_their_count_and_about_their_bytes() {
        let blob = |size: u64| BlobRef {
            sha256: Sha256::of(&size.to_string().into_bytes()),
            size,
        };
        let many = batches((0..2500).map(|_| blob(10)).collect());
        assert_eq!(
            many.iter().map(Vec::len).collect::<Vec<_>>(),
            [BATCH_MAX_BLOBS, BATCH_MAX_BLOBS, 2500 - 2 * BATCH_MAX_BLOBS]
        );
        let big = batches(
            [3 << 20, 3 << 20, 3 << 20, 1]
                .into_iter()
                .map(blob)
                .collect(),
        );
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        assert!(batches(Vec::new()).is_empty());
    }
}
