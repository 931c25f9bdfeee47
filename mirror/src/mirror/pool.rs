//! `pool/…` files: what a verified `Packages` index promises about them, and the shared
//! pass-through for files no configured index lists.

use super::{Mirror, Resolved, Source};
use crate::digest::Sha256;
use crate::error::MirrorError;
use crate::metrics::Metrics;
use crate::packages::{self, PoolEntry, RefusedStanza};
use crate::passthrough::{Outcome, PassFlight};
use crate::release::SuiteRelease;
use aptgate_config::SourceName;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tracing::warn;

/// Refused stanzas logged one by one per index; the rest are counted.
const MAX_REFUSALS_LOGGED: usize = 10;

impl Mirror {
    /// Resolves a pool file to a verified blob or download: by what the indices read so far
    /// promise (the source's stored indices are read once per process), else by the record of
    /// an earlier verified download, else through the source's configured indices, fetched
    /// and verified if need be. A file none of them lists is passed through, unstored.
    ///
    /// Indices stored since the last lookup are read first, even when the path is known: an
    /// upstream that re-uploads a file under the same name lists new bytes in its new index,
    /// and a client on that index must get them, not the bytes the old index promised.
    pub(super) async fn pool_file(
        self: &Arc<Self>,
        name: &SourceName,
        source: &Source,
        path: &str,
    ) -> Result<Resolved, MirrorError> {
        self.read_unread(name).await;
        let mut expected = self.pool_entry(name, path);
        if expected.is_none() && self.load_stored_indices(name).await {
            expected = self.pool_entry(name, path);
        }
        if expected.is_none() {
            expected = self.refs.get(name, path).await.map(|r| PoolEntry {
                sha256: r.sha256,
                size: r.size,
            });
        }
        if expected.is_none() {
            // Upstream just answered 404 for it: no index round can change that answer.
            self.check_not_found(name, path)?;
            expected = self
                .expect_from_configured_indices(name, source, path)
                .await;
        }
        match expected {
            Some(e) => {
                self.blob_or_fetch(name, source, path, e.sha256, e.size)
                    .await
            }
            None => match self.refusal(name, path) {
                Some(why) => Err(MirrorError::RefusedStanza {
                    path: path.to_owned(),
                    why,
                }),
                None => self.pass_through(name, source, path).await,
            },
        }
    }

    fn pool_entry(&self, name: &SourceName, path: &str) -> Option<PoolEntry> {
        self.pool
            .read()
            .expect("lock poisoned")
            .get(name)
            .and_then(|m| m.get(path).copied())
    }

    /// Reads the source's indices stored since the last lookup into the expectations.
    async fn read_unread(&self, name: &SourceName) {
        let pending: Vec<(String, Sha256)> = {
            let mut unread = self.unread.lock().expect("lock poisoned");
            if unread.is_empty() {
                return;
            }
            let (mine, others) = unread.drain(..).partition(|(n, _, _)| n == name);
            *unread = others;
            mine.into_iter()
                .map(|(_, path, digest)| (path, digest))
                .collect()
        };
        for (path, digest) in &pending {
            self.read_index(name, path, *digest).await;
        }
    }

    /// Reads the `Packages` indices this source has in the store (once per process), so pool
    /// files can be checked after a restart. Returns whether this call loaded them.
    async fn load_stored_indices(&self, name: &SourceName) -> bool {
        let mut loaded = self.sources_loaded.lock().await;
        if !loaded.insert(name.clone()) {
            return false;
        }
        let Some(source) = self.sources.get(name) else {
            return false;
        };
        let dists = self.refs.source_dir(name).join("dists");
        let Ok(suites) = fs_err::read_dir(&dists) else {
            return true;
        };
        for suite in suites.flatten() {
            let Some(suite) = suite.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(release) = self.load_stored_release(name, source, &suite).await else {
                continue;
            };
            for (path, (digest, _)) in &release.files {
                if packages::is_packages_index(path) && self.store.contains(digest) {
                    self.read_index(name, path, *digest).await;
                }
            }
        }
        true
    }

    /// Reads the source's configured indices and looks `path` up in them.
    ///
    /// One round of reading at a time per source, and a request that waited while another
    /// request's round ran only looks again: fifty concurrent misses (a client that never
    /// fetched its indices through aptgate) cost one round of index fetches, then share the
    /// pool file's single flight.
    async fn expect_from_configured_indices(
        self: &Arc<Self>,
        name: &SourceName,
        source: &Source,
        path: &str,
    ) -> Option<PoolEntry> {
        let rounds_before = source.index_rounds.load(Ordering::Acquire);
        let _turn = source.index_lock.lock().await;
        if source.index_rounds.load(Ordering::Acquire) == rounds_before {
            self.read_configured_indices(name, source).await;
            source.index_rounds.fetch_add(1, Ordering::Release);
        }
        self.pool_entry(name, path)
    }

    /// Makes sure the `Packages` index of every configured suite × component × architecture
    /// is stored, verified and read into the expectations. Whatever is stored and read already
    /// costs a lookup, and a release is only revalidated once older than `release_freshness`,
    /// so a round for a path no index lists stays cheap. A suite or index that cannot be had
    /// is logged and skipped: the request then falls back to a pass-through.
    async fn read_configured_indices(self: &Arc<Self>, name: &SourceName, source: &Source) {
        let config = &source.config;
        let mut wanted = Vec::new();
        for suite in &config.suites {
            let release = match self.current_release(name, source, suite).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(source = %name, suite, error = %e,
                        "cannot read the suite's release to look up a pool file");
                    continue;
                }
            };
            for component in &config.components {
                for arch in &config.architectures {
                    if let Some(rest) = release.packages_index(component, arch) {
                        wanted.push((suite.as_str(), rest));
                    }
                }
            }
        }
        let reads = wanted.iter().map(|(suite, rest)| async move {
            let path = format!("dists/{suite}/{rest}");
            let stored = match self.index_file(name, source, suite, rest).await {
                Ok(resolved) => self.landed(resolved, &path).await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(digest) => self.read_index(name, &path, digest).await,
                Err(e) => warn!(source = %name, index = %path, error = %e,
                    "cannot fetch an index to look up a pool file"),
            }
        });
        futures::future::join_all(reads).await;
    }

    /// The suite's verified release, revalidated if older than `release_freshness` (kept
    /// stale while upstream is unreachable). `InRelease` first; a suite known to publish only
    /// `Release` + `Release.gpg` is asked for by those, so it costs no 404 every time.
    async fn current_release(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
    ) -> Result<Arc<SuiteRelease>, MirrorError> {
        let only_release = self
            .refs
            .get(name, &format!("dists/{suite}/InRelease"))
            .await
            .is_none()
            && self
                .refs
                .get(name, &format!("dists/{suite}/Release"))
                .await
                .is_some();
        let first = if only_release { "Release" } else { "InRelease" };
        match self.release_file(name, source, suite, first, false).await {
            Err(MirrorError::NotFound { .. }) if first == "InRelease" => {
                self.release_file(name, source, suite, "Release", false)
                    .await?;
            }
            result => {
                result?;
            }
        }
        self.suite_release_cached(name, suite)
            .await
            .ok_or_else(|| MirrorError::NotFound {
                what: format!("dists/{suite}/InRelease"),
            })
    }

    /// Adds the pool files a stored `Packages` index describes to the expectations, and the
    /// stanzas it refuses to the refusals. Each index is read once; a caller arriving while
    /// another reads it waits for the entries.
    pub(super) async fn read_index(&self, name: &SourceName, path: &str, digest: Sha256) {
        let once = self
            .indices_read
            .lock()
            .expect("lock poisoned")
            .entry(digest)
            .or_default()
            .clone();
        once.get_or_init(|| async {
            let blob = self.store.blob_path(&digest);
            let file_name = path.to_owned();
            let listed = self.listed_uncompressed_size(name, path);
            let scan = tokio::task::spawn_blocking(move || {
                let bytes = fs_err::read(blob)?;
                let cap = packages::inflate_cap(listed, bytes.len() as u64);
                Ok::<_, std::io::Error>(packages::pool_entries(&packages::decompress(
                    &file_name, &bytes, cap,
                )?))
            })
            .await;
            match scan {
                Ok(Ok(scan)) => {
                    self.refuse_stanzas(name, path, &scan.refused);
                    let mut pool = self.pool.write().expect("lock poisoned");
                    let map = pool.entry(name.clone()).or_default();
                    map.extend(
                        scan.entries
                            .into_iter()
                            .map(|(path, entry)| (path.as_str().to_owned(), entry)),
                    );
                }
                Ok(Err(e)) => warn!(source = %name, path, error = %e, "cannot read stored index"),
                Err(e) => warn!(source = %name, path, error = %e, "index reader panicked"),
            }
        })
        .await;
    }

    /// The size a verified Release lists for the uncompressed form of the index at `path`
    /// (`dists/<suite>/…`), among the releases read so far.
    fn listed_uncompressed_size(&self, name: &SourceName, path: &str) -> Option<u64> {
        let plain = packages::uncompressed_name(path)?;
        let releases = self.releases.read().expect("lock poisoned");
        releases
            .iter()
            .filter(|((source, _), _)| source == name)
            .find_map(|((_, suite), release)| {
                let rest = plain
                    .strip_prefix("dists/")?
                    .strip_prefix(suite.as_str())?
                    .strip_prefix('/')?;
                release.files.get(rest).map(|(_, size)| *size)
            })
    }

    /// Counts and logs the stanzas an index refused, and remembers their files so a request
    /// for one is refused too rather than passed through unverified.
    fn refuse_stanzas(&self, name: &SourceName, index: &str, refused: &[RefusedStanza]) {
        if refused.is_empty() {
            return;
        }
        self.metrics
            .refused_stanzas
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        // A hostile index may hold millions: the first few name the problem.
        for r in refused.iter().take(MAX_REFUSALS_LOGGED) {
            warn!(source = %name, index, filename = %r.filename, reason = %r.why,
                "refused a Packages stanza: its file is never fetched, recorded or served");
        }
        if refused.len() > MAX_REFUSALS_LOGGED {
            warn!(source = %name, index, refused = refused.len(), "refused more Packages stanzas");
        }
        let mut map = self.refused.write().expect("lock poisoned");
        let paths = map.entry(name.clone()).or_default();
        for r in refused {
            paths.insert(r.filename.clone(), r.why.clone());
        }
    }

    /// Why a verified index refused the stanza naming `path`, if one did.
    fn refusal(&self, name: &SourceName, path: &str) -> Option<String> {
        self.refused
            .read()
            .expect("lock poisoned")
            .get(name)
            .and_then(|m| m.get(path).cloned())
    }

    /// Streams a file that no configured index lists from upstream, unstored. Concurrent
    /// requests for the same path share one upstream GET (see [`crate::passthrough`]).
    async fn pass_through(
        self: &Arc<Self>,
        name: &SourceName,
        source: &Source,
        path: &str,
    ) -> Result<Resolved, MirrorError> {
        self.check_not_found(name, path)?;
        let key = (name.clone(), path.to_owned());
        let mut flights = self.pass_flights.lock().expect("lock poisoned");
        if let Some(flight) = flights.get(&key).and_then(Weak::upgrade) {
            Metrics::inc(&self.metrics.coalesced_waiters);
            return Ok(Resolved::PassThrough(flight));
        }
        let url = source.url(path);
        let (flight, download) =
            PassFlight::new(url.clone(), path.to_owned(), self.store.new_tmp_path())
                .map_err(MirrorError::internal)?;
        let registered = Arc::downgrade(&flight);
        flights.insert(key.clone(), registered.clone());
        drop(flights);
        Metrics::inc(&self.metrics.upstream_fetches);

        let mirror = self.clone();
        tokio::spawn(async move {
            let (name, path) = &key;
            match download.run(&mirror.client, mirror.rate_floor()).await {
                Outcome::Done(_) | Outcome::Abandoned => {}
                Outcome::Failed(failure) if failure.not_found => {
                    mirror.remember_not_found(name, path)
                }
                Outcome::Failed(failure) => {
                    Metrics::inc(&mirror.metrics.upstream_errors);
                    warn!(source = %name, %url, reason = %failure.reason, "pass-through download failed");
                }
            }
            // A later request may have replaced this flight once every client of it was gone.
            let mut flights = mirror.pass_flights.lock().expect("lock poisoned");
            if flights.get(&key).is_some_and(|w| w.ptr_eq(&registered)) {
                flights.remove(&key);
            }
        });
        Ok(Resolved::PassThrough(flight))
    }
}
