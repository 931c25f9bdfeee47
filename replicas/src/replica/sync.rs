//! One sync: the parent's manifest (signature against the pinned key, `seq` never lower than
//! the one applied), then per carried channel and suite the `InRelease` by digest (verified
//! against the pinned key and its dates checked as apt would), every file its Release lists
//! and the by-hash grace files by digest, the `Packages` read for pool files, and for
//! `immediate` channels every `.deb` not stored yet. Every blob is checked against its digest
//! and size before it is stored (the mirror's single flight); what is stored is skipped by
//! digest, never by date, so an interrupted sync converges on the next run. Only then is the
//! state file replaced: all channels switch at once.

use super::state::{carried, read_suite, Applied, AppliedChannel, StateFile};
use super::Replica;
use crate::protocol::{
    verify_manifest, FeedManifest, ManifestEnvelope, ProtocolError, KEYS_PATH, MANIFEST_PATH,
};
use aptgate_config::FetchPolicy;
use aptgate_mirror::keyring::Keyring;
use aptgate_mirror::release::SuiteRelease;
use aptgate_mirror::{Expected, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot reach the parent at {url}: {reason}")]
    Parent { url: String, reason: String },
    #[error("the parent answered {status} for {url}: {body}")]
    ParentStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the parent's keys: {reason}")]
    Keys { reason: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("refusing to roll back: the parent offers seq {offered}, lower than seq {held} that this replica applied\nhint: was the canonical server restored from an old backup? This replica keeps serving seq {held}")]
    Rollback { offered: i64, held: i64 },
    #[error("{what} ({digest}): {reason}")]
    Blob {
        what: String,
        digest: Sha256,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Verify { what: String, reason: String },
    #[error("malformed replica data: {0}")]
    Malformed(String),
    #[error("store: {0}")]
    Store(String),
}

impl From<super::state::StateError> for SyncError {
    fn from(e: super::state::StateError) -> Self {
        SyncError::Verify {
            what: "reading the verified indices".into(),
            reason: e.to_string(),
        }
    }
}

impl Replica {
    pub(crate) fn parent_url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.config.parent.as_str().trim_end_matches('/')
        )
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, SyncError> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| SyncError::Parent {
                url: url.to_owned(),
                reason: aptgate_mirror::upstream::describe(&e),
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(SyncError::ParentStatus {
                url: url.to_owned(),
                status,
                body: body.chars().take(500).collect(),
            });
        }
        Ok(response)
    }

    async fn get_text(&self, url: &str) -> Result<String, SyncError> {
        self.get(url)
            .await?
            .text()
            .await
            .map_err(|e| SyncError::Parent {
                url: url.to_owned(),
                reason: aptgate_mirror::upstream::describe(&e),
            })
    }

    /// One sync. `Ok(true)` when a new `seq` was applied, `Ok(false)` when the parent has
    /// nothing newer (after waiting up to `[replica] wait` when something is applied).
    pub async fn sync_once(&self) -> Result<bool, SyncError> {
        let _one = self.sync_lock.lock().await;
        let held = self.applied().map(|a| a.seq);
        // The first sync of a process checks the held state through (blobs deleted by hand,
        // a channel newly `immediate` or carried) even if the parent has nothing newer.
        let checked = self.checked.load(std::sync::atomic::Ordering::Relaxed);
        let wait = if held.is_some() && checked {
            self.config.wait.as_secs()
        } else {
            0
        };
        let url = self.parent_url(&format!(
            "{MANIFEST_PATH}?after={}&wait={wait}",
            held.unwrap_or(0)
        ));
        let text = self.get_text(&url).await?;
        let envelope: ManifestEnvelope =
            serde_json::from_str(&text).map_err(|e| SyncError::Malformed(e.to_string()))?;
        let keys_text = self.get_text(&self.parent_url(KEYS_PATH)).await?;
        let keys = super::load_keys(&keys_text)?;
        let keyring = self.pinned_keyring(&keys)?;
        let feed = verify_manifest(&keyring, &self.trusted_text(), &envelope.signed)?;
        self.report.lock().expect("lock poisoned").seq_seen = Some(feed.seq);
        match held {
            Some(held) if feed.seq < held => {
                return Err(SyncError::Rollback {
                    offered: feed.seq,
                    held,
                })
            }
            Some(held) if feed.seq == held && checked => return Ok(false),
            _ => {}
        }
        if Sha256::of(keys_text.as_bytes()) != feed.keys.sha256 {
            return Err(SyncError::Keys {
                reason: "the keys file differs from the one the manifest names (a key change \
                         under way?); trying again"
                    .into(),
            });
        }
        // The keys file is the one a trusted key's manifest names: its keys are trusted next
        // (a rotation's new key), and only they (a retired key is dropped).
        let trusted = keys.fingerprints();
        let keys_blob = self.put(keys_text.as_bytes()).await?;
        let manifest_blob = self.put(envelope.signed.as_bytes()).await?;
        let mut path = envelope.path;
        path.push(self.config.name.clone());
        let applied = self
            .build(&feed, manifest_blob, path.clone(), &keyring, true)
            .await?;
        let state = StateFile {
            format: StateFile::FORMAT,
            seq: feed.seq,
            manifest: manifest_blob,
            keys: keys_blob,
            path,
            applied_at: aptgate_channels::now(),
            trusted: trusted.clone(),
            pinned: self.pin(),
        };
        let state_path = self.state_path.clone();
        tokio::task::spawn_blocking(move || state.write(&state_path))
            .await
            .expect("state write does not panic")
            .map_err(|e| SyncError::Store(format!("writing the replica state: {e}")))?;
        tracing::info!(
            seq = feed.seq,
            channels = applied.channels.len(),
            "replica switched to a new manifest"
        );
        let mut held_keys = self.trusted.lock().expect("lock poisoned");
        if *held_keys != trusted {
            tracing::info!(
                before = held_keys.join(", "),
                now = trusted.join(", "),
                "the canonical's signing keys changed; this replica now trusts the keys its last manifest named"
            );
            *held_keys = trusted;
        }
        drop(held_keys);
        let new = held != Some(feed.seq);
        self.install(Arc::new(applied));
        self.checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Blocking file system work (a listing of the store), off the async workers.
        match tokio::task::block_in_place(|| self.collect_garbage()) {
            Ok((0, _)) => {}
            Ok((blobs, bytes)) => {
                tracing::info!(blobs, bytes, "deleted blobs the replica no longer serves")
            }
            Err(e) => tracing::warn!(error = %e, "replica garbage collection failed"),
        }
        Ok(new)
    }

    /// Stores a small verified text (its digest is what it is named by).
    async fn put(&self, bytes: &[u8]) -> Result<Sha256, SyncError> {
        let digest = Sha256::of(bytes);
        if !self.mirror.store().contains(&digest) {
            self.mirror
                .store()
                .insert(bytes, Expected::exactly(digest, bytes.len() as u64))
                .await
                .map_err(|e| SyncError::Store(e.to_string()))?;
        }
        Ok(digest)
    }

    /// What `feed` serves, from blobs in the store; with `fetch`, what is missing is fetched
    /// first and every `InRelease` must pass apt's date checks now.
    pub(crate) async fn build(
        &self,
        feed: &FeedManifest,
        manifest_blob: Sha256,
        path: Vec<String>,
        keyring: &Keyring,
        fetch: bool,
    ) -> Result<Applied, SyncError> {
        let store = self.mirror.store();
        let mut channels = BTreeMap::new();
        for (name, channel) in carried(feed, &self.config) {
            let mut suites = BTreeMap::new();
            let mut pool = HashMap::new();
            for (suite, signed) in &channel.suites {
                let at = |file: &str| format!("channel {name}: dists/{suite}/{file}");
                if fetch {
                    for (file, blob) in [
                        ("InRelease", signed.in_release),
                        ("Release", signed.release),
                        ("Release.gpg", signed.release_gpg),
                    ] {
                        self.fetch(&at(file), blob.sha256, blob.size).await?;
                    }
                }
                let document = self.read_text(&signed.in_release.sha256).await?;
                let text = keyring
                    .verify_cleartext(&document)
                    .map_err(|e| SyncError::Verify {
                        what: at("InRelease"),
                        reason: e.to_string(),
                    })?;
                let release_bytes = store
                    .read(&signed.release.sha256)
                    .await
                    .map_err(|e| SyncError::Store(e.to_string()))?;
                let signature = store
                    .read(&signed.release_gpg.sha256)
                    .await
                    .map_err(|e| SyncError::Store(e.to_string()))?;
                keyring
                    .verify_detached(&release_bytes, &signature)
                    .map_err(|e| SyncError::Verify {
                        what: at("Release.gpg"),
                        reason: e.to_string(),
                    })?;
                if fetch {
                    let release = SuiteRelease::parse(&text).map_err(|e| SyncError::Verify {
                        what: at("InRelease"),
                        reason: e.to_string(),
                    })?;
                    release
                        .check_dates(chrono::Utc::now())
                        .map_err(|e| SyncError::Verify {
                            what: at("InRelease"),
                            reason: e.to_string(),
                        })?;
                    self.fetch_indices(&at, &release).await?;
                }
                let applied = read_suite(store, suite, signed, &text, &mut pool).await?;
                suites.insert(suite.clone(), applied);
            }
            let mut grace = HashMap::new();
            for blob in &channel.grace {
                if fetch {
                    self.fetch(
                        &format!("channel {name}: a by-hash grace file"),
                        blob.sha256,
                        blob.size,
                    )
                    .await?;
                }
                grace.insert(blob.sha256, blob.size);
            }
            if fetch && self.config.policy(name) == FetchPolicy::Immediate {
                self.fetch_pool(name, &pool).await?;
            }
            channels.insert(
                name.clone(),
                AppliedChannel {
                    snapshot: channel.snapshot.clone(),
                    suites,
                    grace,
                    pool,
                },
            );
        }
        Ok(Applied {
            seq: feed.seq,
            published_at: feed.published_at,
            manifest_blob,
            path,
            keys: feed.keys.clone(),
            channels,
        })
    }

    /// The files a verified Release lists. Of the forms of one index (`Packages`, `.gz`,
    /// `.xz`) only the smallest travels: the plain one is made from it here and checked
    /// against the digest the Release lists, and the others are fetched if a client asks
    /// (apt takes `.xz` first). Other files are fetched as they are.
    async fn fetch_indices(
        &self,
        at: &(dyn Fn(&str) -> String + Sync),
        release: &SuiteRelease,
    ) -> Result<(), SyncError> {
        let mut forms: BTreeMap<&str, Vec<(&str, Sha256, u64)>> = BTreeMap::new();
        for (name, (digest, size)) in &release.files {
            let stem = aptgate_mirror::packages::uncompressed_name(name).unwrap_or(name);
            forms.entry(stem).or_default().push((name, *digest, *size));
        }
        let store = self.mirror.store();
        for (stem, forms) in forms {
            let plain = forms.iter().find(|(name, _, _)| *name == stem).copied();
            let smallest = forms
                .iter()
                .min_by_key(|(_, _, size)| *size)
                .copied()
                .expect("a group has a form");
            if plain.is_none() || forms.len() == 1 {
                for (name, digest, size) in forms {
                    self.fetch(&at(name), digest, size).await?;
                }
                continue;
            }
            let (plain_name, plain_digest, plain_size) = plain.expect("checked");
            if store.contains(&plain_digest) {
                continue;
            }
            let (name, digest, size) = smallest;
            self.fetch(&at(name), digest, size).await?;
            if name != plain_name {
                let compressed = store
                    .read(&digest)
                    .await
                    .map_err(|e| SyncError::Store(e.to_string()))?;
                let owned = name.to_owned();
                let inflated = tokio::task::spawn_blocking(move || {
                    aptgate_mirror::packages::decompress(&owned, &compressed, plain_size)
                })
                .await
                .expect("decompression does not panic");
                // Stored only if it is exactly what the Release lists; else fetched whole.
                let made = match inflated {
                    Ok(bytes) if Sha256::of(&bytes) == plain_digest => store
                        .insert(&bytes, Expected::exactly(plain_digest, plain_size))
                        .await
                        .is_ok(),
                    _ => false,
                };
                if made {
                    continue;
                }
            }
            self.fetch(&at(plain_name), plain_digest, plain_size)
                .await?;
        }
        Ok(())
    }
}
