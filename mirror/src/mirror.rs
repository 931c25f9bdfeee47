//! The pull-through mirror: resolves a request for `/mirror/<source>/<path>` to verified bytes.
//!
//! * `dists/<suite>/InRelease` (or `Release` + `Release.gpg`): fetched, signature checked
//!   against the source's keyring, dates checked, then kept and revalidated with conditional
//!   requests once older than `release_freshness` or past its `Valid-Until`. Served stale
//!   while upstream is unreachable or sends one we refuse (a sync fails instead) and once
//!   expired; never replaced by one with an older `Date`.
//! * other `dists/<suite>/…` files: must be listed in the suite's verified Release (or, under
//!   `by-hash/`, in one it replaced within `by_hash_grace`); stored and served by the digest it
//!   names (so `by-hash/` costs nothing extra).
//! * `pool/…` files: checked against the sha256/size of a verified `Packages` index; stored
//!   once. A path no index read so far describes is looked up in the `Packages` indices of the
//!   source's configured suites, components and architectures (fetched and verified first if
//!   need be). A file none of them lists is passed through unstored, one shared upstream
//!   download per path however many clients ask.

mod pool;
mod releases;

use crate::digest::Sha256;
use crate::error::MirrorError;
use crate::flight::{Failure, Flight, Progress};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::packages::{self, PoolEntry};
use crate::passthrough::PassFlight;
use crate::path::{encode_for_upstream, MirrorPath, PoolPath};
use crate::refs::{PathRecord, Refs};
use crate::release::SuiteRelease;
use crate::store::{Expected, Store};
use crate::upstream;
use aptgate_config::{MirrorConfig, SourceConfig, SourceName};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;
use tokio::sync::watch;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("source {source_name}: {error}")]
    Keyring {
        source_name: SourceName,
        #[source]
        error: crate::keyring::KeyringError,
    },
    #[error("source {0} has no keyring: its InRelease could never be verified")]
    NoKeyring(SourceName),
    #[error("source {0} has no url\nhint: an upstream source needs url = \"http://…\"")]
    NoUrl(SourceName),
    #[error(transparent)]
    Client(#[from] upstream::ClientError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot open {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) struct Source {
    pub(crate) config: SourceConfig,
    /// The repository's base URL (`config.url`, which every upstream source has).
    base: url::Url,
    keyring: Keyring,
    /// One round of reading the configured indices at a time (see `pool.rs`), and how many
    /// rounds have completed, so a request that waited for a round does not start another.
    index_lock: tokio::sync::Mutex<()>,
    index_rounds: AtomicU64,
}

impl Source {
    /// Where `path` (a decoded request path, or a [`PoolPath`] as an index wrote it) is
    /// upstream: percent-encoded once, as apt would ask for it.
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base.as_str().trim_end_matches('/'),
            encode_for_upstream(path)
        )
    }
}

/// When a release file's last revalidation ended, and whether upstream confirmed our copy.
type LastRevalidation = Option<(Instant, bool)>;

/// What a request resolved to.
pub enum Resolved {
    /// A verified blob in the store.
    Blob { digest: Sha256, stale: bool },
    /// A download under way; the body streams as it arrives.
    Streaming(Arc<Flight>),
    /// A file no configured index lists: streamed from upstream unstored, one download shared
    /// by every concurrent request for the path.
    PassThrough(Arc<PassFlight>),
}

/// The mirror's state, shared by all requests.
pub struct Mirror {
    sources: HashMap<SourceName, Source>,
    store: Store,
    pub(crate) refs: Refs,
    pub(crate) client: reqwest::Client,
    config: MirrorConfig,
    pub(crate) metrics: Metrics,
    flights: Mutex<HashMap<Sha256, Arc<Flight>>>,
    /// One revalidation at a time per release file; the lock holds when the last one ended
    /// and whether upstream confirmed the copy, for the requests that waited for it.
    release_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LastRevalidation>>>>,
    releases: RwLock<HashMap<(SourceName, String), Arc<SuiteRelease>>>,
    /// Releases a newer one replaced, and when: their `by-hash/` indices stay reachable for
    /// `by_hash_grace` (see `releases.rs`).
    #[expect(
        clippy::type_complexity,
        reason = "a plain map of lists, named by the field"
    )]
    superseded: Mutex<HashMap<(SourceName, String), Vec<(Instant, Arc<SuiteRelease>)>>>,
    pool: RwLock<HashMap<SourceName, HashMap<String, PoolEntry>>>,
    /// Files named by stanzas a verified index refused (path → why): never passed through.
    refused: RwLock<HashMap<SourceName, HashMap<String, String>>>,
    /// Index blobs read (or being read) into `pool`, and sources whose stored indices were
    /// loaded.
    indices_read: Mutex<HashMap<Sha256, Arc<tokio::sync::OnceCell<()>>>>,
    /// `Packages` indices stored but not read yet: read on the next pool miss, not when
    /// stored (a sync stores every index and parses it itself; reading them again at once
    /// would decompress each twice).
    unread: Mutex<Vec<(SourceName, String, Sha256)>>,
    sources_loaded: tokio::sync::Mutex<HashSet<SourceName>>,
    not_found: Mutex<HashMap<(SourceName, String), Instant>>,
    /// Pass-through downloads under way, by source and path; weak, so a flight whose clients
    /// all hung up is not joined.
    pass_flights: Mutex<HashMap<(SourceName, String), Weak<PassFlight>>>,
}

impl Mirror {
    pub fn new(
        data_dir: &Path,
        sources: &[SourceConfig],
        config: &MirrorConfig,
    ) -> Result<Arc<Self>, SetupError> {
        Self::with_client(data_dir, sources, config, upstream::client(config)?)
    }

    /// A mirror with no sources whose downloads carry `headers` (a replica's bearer token):
    /// the store, the single flight and the blob serving, for blobs fetched by digest.
    pub fn for_replica(
        data_dir: &Path,
        config: &MirrorConfig,
        headers: reqwest::header::HeaderMap,
    ) -> Result<Arc<Self>, SetupError> {
        let client = upstream::builder(config)?
            .default_headers(headers)
            .build()
            .map_err(upstream::ClientError::Build)?;
        Self::with_client(data_dir, &[], config, client)
    }

    fn with_client(
        data_dir: &Path,
        sources: &[SourceConfig],
        config: &MirrorConfig,
        client: reqwest::Client,
    ) -> Result<Arc<Self>, SetupError> {
        let mut by_name = HashMap::new();
        // Local sources (fed by uploads) have no upstream to mirror.
        for source in sources.iter().filter(|s| !s.is_local()) {
            let base = source
                .url
                .clone()
                .ok_or_else(|| SetupError::NoUrl(source.name.clone()))?;
            let keyring = Keyring::load(&source.keyring, &source.inline_keys).map_err(|error| {
                SetupError::Keyring {
                    source_name: source.name.clone(),
                    error,
                }
            })?;
            if keyring.is_empty() {
                return Err(SetupError::NoKeyring(source.name.clone()));
            }
            by_name.insert(
                source.name.clone(),
                Source {
                    config: source.clone(),
                    base,
                    keyring,
                    index_lock: tokio::sync::Mutex::default(),
                    index_rounds: AtomicU64::default(),
                },
            );
        }
        let refs_dir = data_dir.join("refs");
        Ok(Arc::new(Self {
            sources: by_name,
            store: Store::open(data_dir.join("store"))?,
            refs: Refs::open(&refs_dir).map_err(|source| SetupError::Io {
                path: refs_dir,
                source,
            })?,
            client,
            config: config.clone(),
            metrics: Metrics::default(),
            flights: Mutex::default(),
            release_locks: Mutex::default(),
            releases: RwLock::default(),
            superseded: Mutex::default(),
            pool: RwLock::default(),
            refused: RwLock::default(),
            indices_read: Mutex::default(),
            unread: Mutex::default(),
            sources_loaded: tokio::sync::Mutex::default(),
            not_found: Mutex::default(),
            pass_flights: Mutex::default(),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn source_configs(&self) -> impl Iterator<Item = &SourceConfig> {
        self.sources.values().map(|s| &s.config)
    }

    /// Resolves `path` of `source` to bytes the caller may serve.
    pub async fn resolve(
        self: &Arc<Self>,
        source_name: &str,
        path: &MirrorPath,
    ) -> Result<Resolved, MirrorError> {
        let (name, source) = self.source(source_name)?;
        Metrics::inc(&self.metrics.requests);
        let segments: Vec<&str> = path.segments().collect();
        match segments.as_slice() {
            ["dists", suite, file @ ("InRelease" | "Release" | "Release.gpg")] => {
                let (record, stale) = self.release_file(name, source, suite, file, false).await?;
                Ok(Resolved::Blob {
                    digest: record.sha256,
                    stale,
                })
            }
            ["dists", suite, rest @ ..] if !rest.is_empty() => {
                self.index_file(name, source, suite, &rest.join("/")).await
            }
            _ => self.pool_file(name, source, path.as_str()).await,
        }
    }

    /// The slowest an upstream transfer may go before it is abandoned.
    pub(crate) fn rate_floor(&self) -> Option<upstream::RateFloor> {
        upstream::RateFloor::new(&self.config)
    }

    pub fn blob_path(&self, digest: &Sha256) -> std::path::PathBuf {
        self.store.blob_path(digest)
    }

    // ---- for sync and channels ----------------------------------------------------------

    /// Asks upstream for a suite's release now, whatever its freshness, and returns the
    /// verified result and whether it is a stale copy (upstream unreachable). `InRelease`
    /// first; a suite that only has `Release` + `Release.gpg` is read from those.
    pub async fn sync_release(
        &self,
        source_name: &str,
        suite: &str,
    ) -> Result<(Arc<SuiteRelease>, bool), MirrorError> {
        let (name, source) = self.source(source_name)?;
        let stale = match self
            .release_file(name, source, suite, "InRelease", true)
            .await
        {
            Ok((_, stale)) => stale,
            Err(MirrorError::NotFound { .. }) => {
                self.release_file(name, source, suite, "Release", true)
                    .await?
                    .1
            }
            Err(e) => return Err(e),
        };
        let release = self
            .suite_release_cached(name, suite)
            .await
            .ok_or_else(|| MirrorError::NotFound {
                what: format!("dists/{suite}/InRelease"),
            })?;
        // apt refuses an expired Release; a snapshot made from one would serve nothing new
        // and hide that upstream stopped publishing.
        if let Some(valid_until) = release
            .valid_until
            .filter(|_| release.expired(chrono::Utc::now()))
        {
            return Err(MirrorError::Verification {
                url: source.url(&format!("dists/{suite}/InRelease")),
                reason: format!(
                    "the newest Release upstream signed expired at {valid_until} and upstream \
                     has published none since (frozen?); not syncing from it"
                ),
            });
        }
        Ok((release, stale))
    }

    /// Makes sure a file the suite's verified Release lists is stored; returns its digest.
    pub async fn fetch_index(
        self: &Arc<Self>,
        source_name: &str,
        suite: &str,
        rest: &str,
    ) -> Result<Sha256, MirrorError> {
        let (name, source) = self.source(source_name)?;
        let resolved = self.index_file(name, source, suite, rest).await?;
        self.landed(resolved, &format!("dists/{suite}/{rest}"))
            .await
    }

    /// Resolves a pool file by the digest a snapshot recorded for it: from the store, or
    /// fetched once from `source` (single flight, verified against `digest` and `size`).
    pub async fn fetch_blob(
        self: &Arc<Self>,
        source_name: &str,
        path: &PoolPath,
        digest: Sha256,
        size: u64,
    ) -> Result<Resolved, MirrorError> {
        let (name, source) = self.source(source_name)?;
        Metrics::inc(&self.metrics.requests);
        self.blob_or_fetch(name, source, path.as_str(), digest, size)
            .await
    }

    /// Like [`fetch_blob`](Self::fetch_blob), but waits until the blob is stored.
    pub async fn store_blob(
        self: &Arc<Self>,
        source_name: &str,
        path: &PoolPath,
        digest: Sha256,
        size: u64,
    ) -> Result<Sha256, MirrorError> {
        let resolved = self.fetch_blob(source_name, path, digest, size).await?;
        self.landed(resolved, path.as_str()).await
    }

    pub(crate) async fn landed(
        &self,
        resolved: Resolved,
        path: &str,
    ) -> Result<Sha256, MirrorError> {
        match resolved {
            Resolved::Blob { digest, .. } => Ok(digest),
            Resolved::Streaming(flight) => match flight.finished().await {
                Ok(()) => Ok(flight.digest),
                Err(failure) => Err(failure.into_error(path)),
            },
            Resolved::PassThrough(_) => Err(MirrorError::NotFound {
                what: path.to_owned(),
            }),
        }
    }

    pub(crate) fn source(&self, name: &str) -> Result<(&SourceName, &Source), MirrorError> {
        self.sources
            .get_key_value(name)
            .ok_or_else(|| MirrorError::UnknownSource {
                name: name.to_owned(),
                known: {
                    let mut known: Vec<_> = self.sources.keys().map(|k| k.to_string()).collect();
                    known.sort();
                    known
                },
            })
    }

    // ---- index files --------------------------------------------------------------------

    async fn index_file(
        self: &Arc<Self>,
        name: &SourceName,
        source: &Source,
        suite: &str,
        rest: &str,
    ) -> Result<Resolved, MirrorError> {
        let mut expected = match self.suite_release_cached(name, suite).await {
            Some(release) => release.expect(rest),
            None => None,
        };
        if expected.is_none() {
            // A client that fetched the previous Release just before upstream replaced it.
            expected = self.superseded_expect(name, suite, rest);
        }
        if expected.is_none() {
            // Unknown suite, or our copy is older than the client's: revalidate once.
            self.release_file(name, source, suite, "InRelease", false)
                .await?;
            expected = self
                .suite_release_cached(name, suite)
                .await
                .and_then(|r| r.expect(rest));
        }
        let (digest, size) = expected.ok_or_else(|| MirrorError::NotListed {
            suite: suite.into(),
            rest: rest.into(),
        })?;
        let path = format!("dists/{suite}/{rest}");
        self.blob_or_fetch(name, source, &path, digest, size).await
    }

    // ---- fetching -----------------------------------------------------------------------

    /// Serves a blob from the store, or joins or starts its download.
    async fn blob_or_fetch(
        self: &Arc<Self>,
        name: &SourceName,
        source: &Source,
        path: &str,
        digest: Sha256,
        size: u64,
    ) -> Result<Resolved, MirrorError> {
        if self.store.contains(&digest) {
            Metrics::inc(&self.metrics.cache_hits);
            return Ok(Resolved::Blob {
                digest,
                stale: false,
            });
        }
        self.check_not_found(name, path)?;
        self.flight(
            source.url(path),
            Some((name.clone(), path.to_owned())),
            digest,
            size,
        )
    }

    /// Joins the download of `digest`, or starts it from `url`: a detached task writes the
    /// store's temp file, checked against `digest` and `size`. `at` is the source and path it
    /// stands for there (recorded once stored, remembered when upstream says 404); `None`
    /// for a URL of its own (a fallback origin).
    pub(crate) fn flight(
        self: &Arc<Self>,
        url: String,
        at: Option<(SourceName, String)>,
        digest: Sha256,
        size: u64,
    ) -> Result<Resolved, MirrorError> {
        let mut flights = self.flights.lock().expect("lock poisoned");
        if let Some(flight) = flights.get(&digest) {
            Metrics::inc(&self.metrics.coalesced_waiters);
            return Ok(Resolved::Streaming(flight.clone()));
        }
        // It may have landed between the caller's check and taking the lock.
        if self.store.contains(&digest) {
            return Ok(Resolved::Blob {
                digest,
                stale: false,
            });
        }
        // Space for the whole blob is reserved here: a full disk is a 507 before any upstream
        // request, not a body that breaks off.
        let writer = self
            .store
            .writer(Expected::exactly(digest, size))
            .map_err(|e| MirrorError::from_store(&url, e))?;
        let (progress, receiver) = watch::channel(Progress::Starting);
        let flight = Arc::new(Flight {
            digest,
            size,
            tmp_path: writer.tmp_path().to_owned(),
            blob_path: self.store.blob_path(&digest),
            progress: receiver,
        });
        flights.insert(digest, flight.clone());
        drop(flights);
        Metrics::inc(&self.metrics.cache_misses);
        Metrics::inc(&self.metrics.upstream_fetches);

        let mirror = self.clone();
        tokio::spawn(async move {
            let outcome = mirror.download(&url, writer, &progress).await;
            // Leave the map before telling the waiters: a caller that retries (say, from a
            // fallback origin) as soon as this one failed must start a new flight, not join
            // this one. The entry is this flight's own: nothing replaces it while present.
            mirror
                .flights
                .lock()
                .expect("lock poisoned")
                .remove(&digest);
            match outcome {
                Ok(()) => {
                    progress.send_replace(Progress::Done);
                    if let Some((name, path)) = &at {
                        mirror.after_store(name, path, digest, size).await;
                    }
                }
                Err(failure) => {
                    Metrics::inc(&mirror.metrics.upstream_errors);
                    warn!(%url, reason = %failure.reason, "download failed; nothing stored");
                    if let (true, Some((name, path))) = (failure.not_found, &at) {
                        if remembers_not_found(path) {
                            mirror.remember_not_found(name, path);
                        }
                    }
                    progress.send_replace(Progress::Failed(Failure {
                        not_found: failure.not_found,
                        storage_full: failure.storage_full,
                        ..Failure::new(failure.reason)
                    }));
                }
            }
        });
        Ok(Resolved::Streaming(flight))
    }

    async fn download(
        &self,
        url: &str,
        mut writer: crate::store::BlobWriter,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), DownloadFailure> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| DownloadFailure::new(upstream::describe(&e)))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(DownloadFailure {
                not_found: response.status() == reqwest::StatusCode::NOT_FOUND,
                ..DownloadFailure::new(format!("upstream answered {}", response.status()))
            });
        }
        progress.send_replace(Progress::Running(0));
        let mut body = upstream::Body::new(response, self.rate_floor());
        while let Some(chunk) = body.chunk().await.map_err(DownloadFailure::new)? {
            writer.write(&chunk).await.map_err(DownloadFailure::store)?;
            progress.send_replace(Progress::Running(writer.written()));
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(DownloadFailure::store)
    }

    async fn after_store(&self, name: &SourceName, path: &str, digest: Sha256, size: u64) {
        if path.starts_with("pool/") {
            self.record_pool(name, path, digest, size).await;
        } else if packages::is_packages_index(path) {
            self.unread.lock().expect("lock poisoned").push((
                name.clone(),
                path.to_owned(),
                digest,
            ));
        }
    }

    async fn record_pool(&self, name: &SourceName, path: &str, digest: Sha256, size: u64) {
        let record = PathRecord {
            sha256: digest,
            size,
            fetched_at: now_secs(),
            etag: None,
            last_modified: None,
        };
        if let Err(e) = self.refs.put(name, path, &record).await {
            warn!(source = %name, path, error = %e, "cannot record pool file");
        }
    }

    fn check_not_found(&self, name: &SourceName, path: &str) -> Result<(), MirrorError> {
        let mut not_found = self.not_found.lock().expect("lock poisoned");
        let key = (name.clone(), path.to_owned());
        match not_found.get(&key) {
            Some(at) if at.elapsed() < self.config.negative_cache => {
                Err(MirrorError::NotFound { what: path.into() })
            }
            Some(_) => {
                not_found.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn remember_not_found(&self, name: &SourceName, path: &str) {
        let mut not_found = self.not_found.lock().expect("lock poisoned");
        // Bounded: a flood of misses must not grow memory without limit.
        if not_found.len() > 10_000 {
            let ttl = self.config.negative_cache;
            not_found.retain(|_, at| at.elapsed() < ttl);
        }
        not_found.insert((name.clone(), path.to_owned()), Instant::now());
    }
}

/// Whether an upstream 404 for `path` is remembered for `negative_cache`: for pool and
/// `by-hash/` files (a client retrying must not hammer upstream), never for an index a verified
/// Release names — that file must exist (a mirror mid-update, say), so the next request asks
/// again.
fn remembers_not_found(path: &str) -> bool {
    !path.starts_with("dists/") || path.contains("/by-hash/")
}

struct DownloadFailure {
    reason: String,
    not_found: bool,
    storage_full: bool,
}

impl DownloadFailure {
    fn new(reason: String) -> Self {
        Self {
            reason,
            not_found: false,
            storage_full: false,
        }
    }

    fn store(e: crate::store::StoreError) -> Self {
        Self {
            storage_full: e.is_storage_full(),
            ..Self::new(e.to_string())
        }
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
