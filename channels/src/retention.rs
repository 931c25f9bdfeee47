//! Keeping the packages channels reference: fetching them into the store.

use crate::blobs::*;
use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::Sha256;
use futures::StreamExt as _;
use std::collections::{BTreeMap, HashSet};

/// Package downloads a promotion or an `immediate` sync runs at once.
pub(crate) const FETCH_CONCURRENCY: usize = 16;

impl Channels {
    /// Stores every package `to` lists that `from` does not and the store lacks; returns how
    /// many were fetched. All are tried; failures are reported together.
    pub(crate) async fn fetch_missing(
        &self,
        from: &Manifest,
        to: &Manifest,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<u64> {
        let mut texts = Texts::new();
        let known: HashSet<Sha256> = from
            .suites
            .values()
            .flat_map(|s| s.indices.values().map(|i| i.plain.sha256))
            .collect();
        let mut wanted: BTreeMap<Sha256, (String, u64)> = BTreeMap::new();
        let mut old_digests: HashSet<String> = HashSet::new();
        for sm in from.suites.values() {
            for files in sm.indices.values() {
                let text = self.text(&mut texts, &files.plain).await?;
                if let Ok(stanzas) = index::parse(&text) {
                    old_digests.extend(stanzas.iter().map(|s| s.sha256.to_owned()));
                }
            }
        }
        for sm in to.suites.values() {
            for files in sm.indices.values() {
                if known.contains(&files.plain.sha256) {
                    continue;
                }
                let text = self.text(&mut texts, &files.plain).await?;
                let stanzas = index::parse(&text).map_err(|source| ChannelsError::Index {
                    what: "snapshot index".into(),
                    source,
                })?;
                for s in stanzas {
                    if old_digests.contains(s.sha256) {
                        continue;
                    }
                    let Ok(digest) = Sha256::from_hex(s.sha256) else {
                        continue;
                    };
                    if !self.store().contains(&digest) {
                        wanted.insert(digest, (s.filename.to_owned(), s.size));
                    }
                }
            }
        }
        let total = wanted.len();
        let mut failures = Vec::new();
        let mut fetched = 0u64;
        // Several downloads at once: one at a time leaves a fast upstream idle between files.
        let mut results = futures::stream::iter(wanted)
            .map(|(digest, (path, size))| async move {
                let origin = match self.catalog.package(&digest.to_hex()).await {
                    Ok(Some(p)) if !p.package.origin.is_empty() => p.package.origin,
                    Ok(_) => return Err(format!("{path}: no upstream source recorded")),
                    Err(e) => return Err(format!("{path}: {e}")),
                };
                self.mirror
                    .store_blob(&origin, &path, digest, size)
                    .await
                    .map_err(|e| format!("{path} (from {origin}): {e}"))
            })
            .buffer_unordered(FETCH_CONCURRENCY);
        let mut done = 0;
        while let Some(result) = results.next().await {
            done += 1;
            match result {
                Ok(_) => fetched += 1,
                Err(failure) => failures.push(failure),
            }
            if done % 100 == 0 || done == total {
                progress(&format!("fetched {done} of {total} packages"));
            }
        }
        if failures.is_empty() {
            Ok(fetched)
        } else {
            Err(ChannelsError::FetchFailed(failures))
        }
    }
}
