//! Replica mode (`[replica]`): follows a parent, serves the channels it carries byte for
//! byte, never syncs an upstream archive and holds no signing key.
//!
//! | file | what it does |
//! |---|---|
//! | `state.rs` | what is served, and the state file whose rename switches every channel at once |
//! | `sync.rs` | one sync: manifest → InRelease → indices → (`immediate`) `.deb`s → switch |
//! | `serve.rs` | `/channels/…`, `/keys/…`, `/status`, `/metrics`, and the parent routes for child replicas |
//! | `gc.rs` | deleting blobs the applied state no longer needs, after each switch |
//! | `report.rs` | the status report, sent to the parent after every attempt |

mod fetch;
mod gc;
mod report;
pub mod serve;
pub mod state;
mod sync;

use crate::protocol::ReplicaReport;
use aptgate_config::{Config, ReplicaConfig};
use aptgate_mirror::keyring::{normalize_fingerprint, Keyring};
use aptgate_mirror::{Mirror, Sha256};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use state::{Applied, StateFile};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

pub use sync::SyncError;

/// The replica's state: what every route and the sync loop share.
pub struct Replica {
    pub(crate) config: ReplicaConfig,
    pub(crate) mirror: Arc<Mirror>,
    /// Control-plane requests (manifest, keys, status), with the token.
    pub(crate) client: reqwest::Client,
    state_path: PathBuf,
    pub(crate) applied: RwLock<Option<Arc<Applied>>>,
    /// The applied `seq`, for children's long polls.
    pub(crate) applied_seq: watch::Sender<i64>,
    pub(crate) report: Mutex<ReplicaReport>,
    /// One sync at a time (the loop, or a test's explicit run).
    sync_lock: tokio::sync::Mutex<()>,
    /// Whether a sync of this process went through the whole held state once.
    checked: std::sync::atomic::AtomicBool,
    /// Fingerprints of the canonical keys a manifest may be signed by ([`StateFile::trusted`]).
    pub(crate) trusted: Mutex<Vec<String>>,
    /// Blobs the applied state does not name go once they are older than this
    /// (`retention.grace`).
    pub(crate) gc_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("[replica] token is not a valid header value")]
    BadToken,
    #[error(transparent)]
    Mirror(#[from] aptgate_mirror::SetupError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot read the replica state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Replica {
    /// Opens the store and the last applied state (served at once, before any sync).
    pub async fn open(config: &Config) -> Result<Arc<Self>, OpenError> {
        let replica = config
            .replica
            .clone()
            .expect("replica mode needs [replica]");
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", replica.token))
            .map_err(|_| OpenError::BadToken)?;
        bearer.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        let mirror = Mirror::for_replica(&config.data_dir, &config.mirror, headers.clone())?;
        let client = aptgate_mirror::upstream::builder(&config.mirror)
            .map_err(aptgate_mirror::SetupError::Client)?
            .default_headers(headers)
            // A long poll holds the request open for `wait`.
            .read_timeout(replica.wait + config.mirror.read_timeout)
            .build()
            .map_err(OpenError::Client)?;
        let dir = config.data_dir.join("replica");
        fs_err::create_dir_all(&dir).map_err(|source| OpenError::State {
            path: dir.clone(),
            source,
        })?;
        let state_path = dir.join("state.json");
        let pin = normalize_fingerprint(&replica.fingerprint);
        let this = Arc::new(Self {
            report: Mutex::new(ReplicaReport {
                name: replica.name.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                parent: replica.parent.to_string(),
                ..ReplicaReport::default()
            }),
            config: replica,
            mirror,
            client,
            state_path,
            trusted: Mutex::new(vec![pin]),
            applied: RwLock::new(None),
            applied_seq: watch::channel(0).0,
            sync_lock: tokio::sync::Mutex::new(()),
            checked: std::sync::atomic::AtomicBool::new(false),
            gc_grace: config.retention.grace,
        });
        let held = StateFile::read(&this.state_path).map_err(|source| OpenError::State {
            path: this.state_path.clone(),
            source,
        })?;
        if let Some(held) = held {
            if held.pinned == this.pin() && !held.trusted.is_empty() {
                *this.trusted.lock().expect("lock poisoned") = held.trusted.clone();
            }
            match this.load(&held).await {
                Ok(applied) => this.install(Arc::new(applied)),
                // The state names blobs that were verified when stored; if they are gone
                // (deleted by hand), the next sync fetches them again.
                Err(e) => {
                    tracing::warn!(error = %e, seq = held.seq, "cannot load the applied replica state; serving nothing until the next sync")
                }
            }
        }
        Ok(this)
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// What is served now.
    pub fn applied(&self) -> Option<Arc<Applied>> {
        self.applied.read().expect("lock poisoned").clone()
    }

    fn install(&self, applied: Arc<Applied>) {
        let seq = applied.seq;
        *self.applied.write().expect("lock poisoned") = Some(applied);
        self.applied_seq.send_replace(seq);
    }

    /// `[replica] fingerprint`, as the keyring prints fingerprints.
    pub(crate) fn pin(&self) -> String {
        normalize_fingerprint(&self.config.fingerprint)
    }

    /// The trusted fingerprints, for messages.
    pub(crate) fn trusted_text(&self) -> String {
        self.trusted.lock().expect("lock poisoned").join(", ")
    }

    /// The keyring a manifest and its InRelease files are checked with: the keys of `all`
    /// (a keys file, [`load_keys`]) whose fingerprints this replica trusts, whatever else
    /// the file holds.
    pub(crate) fn pinned_keyring(&self, all: &Keyring) -> Result<Keyring, SyncError> {
        let pinned = all.pinned_to(&self.trusted.lock().expect("lock poisoned"));
        if pinned.is_empty() {
            return Err(SyncError::Keys {
                reason: format!(
                    "the parent's keys ({}) include no key this replica trusts ({}); after a key \
                     rotation it missed, run `aptgate replica init` again with the new fingerprint",
                    all.describe(),
                    self.trusted_text()
                ),
            });
        }
        Ok(pinned)
    }

    /// Rebuilds what a state file names from the store.
    async fn load(&self, held: &StateFile) -> Result<Applied, SyncError> {
        let signed = self.read_text(&held.manifest).await?;
        let keys_text = self.read_text(&held.keys).await?;
        let keyring = self.pinned_keyring(&load_keys(&keys_text)?)?;
        let feed = crate::protocol::verify_manifest(&keyring, &self.trusted_text(), &signed)?;
        self.build(&feed, held.manifest, held.path.clone(), &keyring, false)
            .await
    }

    pub(crate) async fn read_text(&self, digest: &Sha256) -> Result<String, SyncError> {
        let bytes = self
            .mirror
            .store()
            .read(digest)
            .await
            .map_err(|e| SyncError::Store(format!("reading blob {digest}: {e}")))?;
        String::from_utf8(bytes)
            .map_err(|_| SyncError::Malformed(format!("blob {digest} is not UTF-8")))
    }

    /// Follows the parent until the process ends: sync (long poll), report, back off on
    /// failure (doubling from 1 s to `retry_max`), warn before the served InRelease expires.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let ok = match self.sync_once().await {
                Ok(_) => {
                    self.note_success();
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "replica sync failed; serving the last complete state");
                    self.note_error(&e);
                    false
                }
            };
            self.warn_expiry();
            self.send_report().await;
            if ok {
                backoff = Duration::from_secs(1);
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.config.retry_max.max(Duration::from_secs(1)));
            }
        }
    }

    fn warn_expiry(&self) {
        let Some(expiry) = self.applied().and_then(|a| a.first_expiry()) else {
            return;
        };
        let headroom = expiry - aptgate_channels::now();
        if headroom < self.config.expiry_warning.as_secs() as i64 {
            tracing::warn!(
                headroom_secs = headroom,
                "an InRelease this replica serves expires soon; apt refuses it after Valid-Until \
                 (hint: check that the parent is reachable and re-signs its channels)"
            );
        }
    }
}

/// Every key of a keys file (armored).
pub(crate) fn load_keys(armored: &str) -> Result<Keyring, SyncError> {
    Keyring::load(&[], &[armored.to_owned()]).map_err(|e| SyncError::Keys {
        reason: e.to_string(),
    })
}
