//! The channel service: sync creates snapshots, promotions move channels, and every move
//! publishes a freshly signed Release over index blobs that already exist.
//!
//! A move is: compute the target manifest (holds and selected updates may derive new index
//! files, rendered once and stored), fetch every package new to the channel into the store,
//! sign the Release files, then, in one catalog transaction, move the channel (checked
//! against the generation it was read at) and append the audit entry. Blobs are written
//! before the transaction, so a crash at any point leaves the previous publication served.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::index::{self, Stanza};
use crate::manifest::*;
use crate::signing::KeyStore;
use aptgate_config::{ChannelConfig, Config, FetchPolicy, PublishConfig, SourceConfig};
use aptgate_mirror::{Expected, Mirror, Sha256, Store};
use futures::StreamExt as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a request may see a channel's previous position after another server instance
/// (sharing the PostgreSQL catalog) moved it. Moves made by this process show at once.
const CHANNEL_CACHE_TTL: Duration = Duration::from_secs(2);

/// How often a promotion is prepared again when another server instance moved the channel.
const MOVE_ATTEMPTS: u32 = 5;

/// Package downloads a promotion or an `immediate` sync runs at once.
const FETCH_CONCURRENCY: usize = 16;

/// A channel as served: its publication and the manifest it publishes.
#[derive(Debug)]
pub struct Served {
    pub publication: Publication,
    pub manifest: Manifest,
    pub generation: i64,
}

/// Who asked for a change, and why: recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub comment: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            comment: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SyncOutcome {
    pub source: String,
    /// The new snapshot, or `None` when upstream is unchanged since the last sync.
    pub snapshot: Option<String>,
    pub packages: u64,
    pub new_packages: u64,
    /// Channels that follow the source and moved to the new snapshot.
    pub followed_by: Vec<String>,
    pub downloaded: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PromoteRequest {
    pub from: String,
    pub to: String,
    /// Only these packages (and the dependencies the target lacks); empty = everything.
    #[serde(default)]
    pub only: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MoveOutcome {
    pub channel: String,
    pub from_snapshot: Option<String>,
    pub to_snapshot: String,
    pub generation: i64,
    pub diff: DiffSummary,
    pub fetched: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiffSummary {
    pub added: usize,
    pub removed: usize,
    pub upgraded: usize,
    pub downgraded: usize,
}

/// One package's change between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub suite: String,
    pub name: String,
    pub architecture: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Diff {
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub upgraded: Vec<Change>,
    pub downgraded: Vec<Change>,
}

impl Diff {
    pub fn summary(&self) -> DiffSummary {
        DiffSummary {
            added: self.added.len(),
            removed: self.removed.len(),
            upgraded: self.upgraded.len(),
            downgraded: self.downgraded.len(),
        }
    }
}

/// Index texts of a manifest, read once per call.
pub(crate) type Texts = HashMap<Sha256, Arc<String>>;

pub struct Channels {
    catalog: Catalog,
    mirror: Arc<Mirror>,
    keys: Mutex<KeyStore>,
    /// Configured channels, and those created through the API (kept in the catalog).
    channels: RwLock<BTreeMap<String, ChannelConfig>>,
    sources: Vec<SourceConfig>,
    admin_token: String,
    publish: PublishConfig,
    /// One move at a time per channel in this process; the catalog's generation check
    /// catches moves by other processes.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    served: RwLock<HashMap<String, (Arc<Served>, Instant)>>,
    pool_maps: Mutex<Vec<(Sha256, Arc<PoolMap>)>>,
    /// Publications of snapshots from channel histories, by publication digest.
    history_served: Mutex<Vec<(Sha256, Arc<Served>)>>,
}

/// Pool path → (sha256, size) for every package a manifest lists.
pub type PoolMap = HashMap<String, (Sha256, u64)>;

impl Channels {
    /// Opens the catalog (applying migrations), loads or generates the signing key and makes
    /// sure every configured channel exists.
    pub async fn open(
        config: &Config,
        sources: &[SourceConfig],
        mirror: Arc<Mirror>,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        fs_err::create_dir_all(&config.data_dir)?;
        let url = if config.database.url.is_empty() {
            Catalog::sqlite_url(&config.data_dir)
        } else {
            config.database.url.clone()
        };
        let catalog = Catalog::open(&url).await?;
        let (keys, generated) = KeyStore::load_or_generate(
            &config.data_dir.join("keys"),
            &format!("aptgate signing key ({})", config.publish.key_name),
        )
        .context("loading the signing keys")?;
        if let Some(fingerprint) = generated {
            info!(%fingerprint, "generated a new channel signing key");
            catalog
                .append_audit(&NewAuditEntry {
                    at: now(),
                    actor: "aptgate".into(),
                    action: AuditAction::Key,
                    channel: None,
                    from_snapshot: None,
                    to_snapshot: None,
                    comment: Some("signing key generated on first start".into()),
                    summary: Some(serde_json::json!({ "added": fingerprint }).to_string()),
                })
                .await?;
        }
        for c in &config.channels {
            catalog.ensure_channel(c.name.as_str(), now()).await?;
        }
        let (admin_token, created) = crate::api::load_or_create_token(&config.data_dir)
            .context("creating the admin token")?;
        if created {
            // Printed once; afterwards it is only in the root-only file.
            eprintln!(
                "created the admin API token (also in {}, mode 0600):
  {admin_token}",
                crate::api::token_path(&config.data_dir).display()
            );
        }
        let mut channels: BTreeMap<String, ChannelConfig> = config
            .channels
            .iter()
            .map(|c| (c.name.to_string(), c.clone()))
            .collect();
        for state in catalog.list_channels().await? {
            let Some(rules) = &state.rules else { continue };
            match serde_json::from_str::<ChannelConfig>(rules) {
                Ok(c) if !channels.contains_key(c.name.as_str()) => {
                    channels.insert(c.name.to_string(), c);
                }
                Ok(c) => {
                    warn!(channel = %c.name, "channel created through the API is also configured; the configuration wins")
                }
                Err(e) => {
                    warn!(channel = %state.name, error = %e, "unreadable channel rules; channel ignored")
                }
            }
        }
        Ok(Arc::new(Self {
            catalog,
            mirror,
            keys: Mutex::new(keys),
            channels: RwLock::new(channels),
            sources: sources.to_vec(),
            admin_token,
            publish: config.publish.clone(),
            locks: Mutex::default(),
            served: RwLock::default(),
            pool_maps: Mutex::default(),
            history_served: Mutex::default(),
        }))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub(crate) fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The sources a sync without a name covers.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.to_string()).collect()
    }

    fn store(&self) -> &Store {
        self.mirror.store()
    }

    pub fn channel_configs(&self) -> Vec<ChannelConfig> {
        self.channels
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn channel_names(&self) -> Vec<String> {
        self.channels
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Creates a channel through the API: the same rules as a `[[channels]]` entry, kept in
    /// the catalog. A configured channel's name cannot be taken.
    pub async fn create_channel(&self, config: ChannelConfig, actor: &Actor) -> Result<()> {
        let name = config.name.to_string();
        if self
            .channels
            .read()
            .expect("lock poisoned")
            .contains_key(&name)
        {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        if let Some(from) = &config.promotes_from {
            self.channel_config(from.as_str())?;
            if from.as_str() == name {
                return Err(ChannelsError::Refused(format!(
                    "{name} cannot promote from itself"
                )));
            }
        }
        if let Some(source) = &config.follows {
            if !self.sources.iter().any(|s| &s.name == source) {
                return Err(ChannelsError::UnknownSource(source.to_string()));
            }
        }
        let rules = serde_json::to_string(&config).expect("channel rules serialize");
        let mut tx = self.catalog.begin().await?;
        if !tx.create_channel(&name, &rules, now()).await? {
            return Err(ChannelsError::Refused(format!("channel {name} exists")));
        }
        tx.commit().await?;
        info!(channel = %name, actor = %actor.name, "channel created");
        self.channels
            .write()
            .expect("lock poisoned")
            .insert(name, config);
        Ok(())
    }

    /// The armored public keys hosts put in `Signed-By:` (every active key).
    pub fn public_keys(&self) -> Result<String> {
        Ok(self
            .keys
            .lock()
            .expect("lock poisoned")
            .public_keys_armored()?)
    }

    pub fn key_name(&self) -> &str {
        &self.publish.key_name
    }

    // ---- blobs --------------------------------------------------------------------------

    /// Stores a value (a manifest, a publication) as a JSON blob; returns its digest.
    pub(crate) async fn put_json<T: serde::Serialize>(&self, value: &T) -> Result<Sha256> {
        let bytes = serde_json::to_vec(value).expect("manifests serialize");
        Ok(self.store().insert(&bytes, Expected::default()).await?)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Sha256,
    ) -> Result<T> {
        let corrupt = |reason: String| ChannelsError::CorruptBlob {
            what,
            digest: digest.to_hex(),
            reason,
        };
        let bytes = self
            .store()
            .read(digest)
            .await
            .map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        let sha256 = self.store().insert(bytes, Expected::default()).await?;
        Ok(BlobRef {
            sha256,
            size: bytes.len() as u64,
        })
    }

    /// An index's text, read from the store once per `texts` cache.
    pub(crate) async fn text(&self, texts: &mut Texts, blob: &BlobRef) -> Result<Arc<String>> {
        if let Some(t) = texts.get(&blob.sha256) {
            return Ok(t.clone());
        }
        let corrupt = |reason: String| ChannelsError::CorruptBlob {
            what: "index",
            digest: blob.sha256.to_hex(),
            reason,
        };
        let bytes = self
            .store()
            .read(&blob.sha256)
            .await
            .map_err(|e| corrupt(e.to_string()))?;
        let text = Arc::new(String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?);
        texts.insert(blob.sha256, text.clone());
        Ok(text)
    }

    // ---- snapshots ------------------------------------------------------------------------

    /// A snapshot by id or name.
    pub async fn snapshot(&self, id_or_name: &str) -> Result<Snapshot> {
        if let Some(s) = self.catalog.snapshot(id_or_name).await? {
            return Ok(s);
        }
        self.catalog
            .snapshot_by_name(id_or_name)
            .await?
            .ok_or_else(|| ChannelsError::UnknownSnapshot(id_or_name.to_owned()))
    }

    pub async fn manifest(&self, snapshot: &Snapshot) -> Result<Manifest> {
        let digest = Sha256::from_hex(&snapshot.manifest_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "manifest",
                digest: snapshot.manifest_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        self.get_json("manifest", &digest).await
    }

    /// Records a snapshot of `manifest` unless one with the same manifest and kind exists.
    pub(crate) async fn record_snapshot(
        &self,
        tx: &mut CatalogTx,
        prefix: &str,
        kind: SnapshotKind,
        description: String,
        manifest_sha256: Sha256,
        sources: Vec<String>,
    ) -> Result<Snapshot> {
        let at = now();
        let stamp = chrono::DateTime::from_timestamp(at, 0)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ");
        let mut id = format!("{prefix}-{stamp}");
        let mut n = 2;
        while tx.snapshot(&id).await?.is_some() {
            id = format!("{prefix}-{stamp}-{n}");
            n += 1;
        }
        let snapshot = Snapshot {
            id,
            name: None,
            created_at: at,
            kind,
            description,
            manifest_sha256: manifest_sha256.to_hex(),
            sources,
        };
        tx.insert_snapshot(&snapshot).await?;
        Ok(snapshot)
    }

    // ---- sync -----------------------------------------------------------------------------

    /// Fetches and verifies a source's releases and indices, records its packages and, if
    /// anything changed since its last snapshot, creates a snapshot and moves the channels
    /// that follow the source.
    pub async fn sync(
        &self,
        source_name: &str,
        actor: &Actor,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<SyncOutcome> {
        let source = self
            .sources
            .iter()
            .find(|s| s.name.as_str() == source_name)
            .ok_or_else(|| ChannelsError::UnknownSource(source_name.to_owned()))?
            .clone();
        let mirror_err = |what: String| move |source| ChannelsError::Mirror { what, source };
        let mut manifest = Manifest::new();
        let mut packages = Vec::new();
        for suite in &source.suites {
            let (release, stale) = self
                .mirror
                .sync_release(source_name, suite)
                .await
                .map_err(mirror_err(format!("{source_name} {suite}: release")))?;
            if stale {
                warn!(
                    source = source_name,
                    suite, "upstream unreachable; syncing the cached release"
                );
            }
            let mut suite_manifest = SuiteManifest {
                codename: release.codename.clone(),
                components: source.components.clone(),
                architectures: source.architectures.clone(),
                indices: BTreeMap::new(),
            };
            for component in &source.components {
                for arch in &source.architectures {
                    let key = format!("{component}/binary-{arch}");
                    let Some(rest) = ["Packages.xz", "Packages.gz", "Packages"]
                        .iter()
                        .map(|f| format!("{key}/{f}"))
                        .find(|p| release.files.contains_key(p))
                    else {
                        warn!(source = source_name, suite, index = %key, "Release lists no Packages index; skipped");
                        continue;
                    };
                    progress(&format!("{source_name} {suite} {rest}"));
                    let digest = self
                        .mirror
                        .fetch_index(source_name, suite, &rest)
                        .await
                        .map_err(mirror_err(format!("{source_name} {suite} {rest}")))?;
                    let stored =
                        self.store()
                            .read(&digest)
                            .await
                            .map_err(|source| ChannelsError::Io {
                                what: format!("reading {rest}"),
                                source,
                            })?;
                    let plain =
                        aptgate_mirror::packages::decompress(&rest, &stored).map_err(|source| {
                            ChannelsError::Io {
                                what: format!("decompressing {source_name} {suite} {rest}"),
                                source,
                            }
                        })?;
                    let text =
                        String::from_utf8(plain).map_err(|e| ChannelsError::CorruptBlob {
                            what: "index",
                            digest: digest.to_hex(),
                            reason: e.to_string(),
                        })?;
                    let stanzas = index::parse(&text).map_err(|source| ChannelsError::Index {
                        what: format!("{source_name} {suite} {rest}"),
                        source,
                    })?;
                    for s in &stanzas {
                        packages.push(new_package(s, source_name));
                    }
                    let upstream = BlobRef {
                        sha256: digest,
                        size: stored.len() as u64,
                    };
                    let plain = self.put_blob(text.as_bytes()).await?;
                    suite_manifest.indices.insert(
                        key,
                        IndexFiles {
                            packages: stanzas.len() as u64,
                            plain,
                            xz: rest.ends_with(".xz").then_some(upstream),
                            gz: rest.ends_with(".gz").then_some(upstream),
                        },
                    );
                }
            }
            manifest.suites.insert(suite.clone(), suite_manifest);
        }
        let package_count = manifest.package_count();
        let digest = self.put_json(&manifest).await?;

        let mut outcome = SyncOutcome {
            source: source_name.to_owned(),
            snapshot: None,
            packages: package_count,
            new_packages: 0,
            followed_by: Vec::new(),
            downloaded: 0,
        };
        let latest = self
            .catalog
            .list_snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.kind == SnapshotKind::Sync && s.sources == [source_name]);
        // `Architecture: all` packages appear in every architecture's index.
        let mut seen = HashSet::new();
        packages.retain(|p| seen.insert(p.sha256.clone()));
        let mut tx = self.catalog.begin().await?;
        outcome.new_packages = tx.upsert_packages(&packages, now()).await?;
        let snapshot = if latest
            .as_ref()
            .is_some_and(|s| s.manifest_sha256 == digest.to_hex())
        {
            tx.commit().await?;
            info!(source = source_name, "upstream unchanged; no new snapshot");
            None
        } else {
            let snapshot = self
                .record_snapshot(
                    &mut tx,
                    source_name,
                    SnapshotKind::Sync,
                    format!("sync of {source_name}"),
                    digest,
                    vec![source_name.to_owned()],
                )
                .await?;
            tx.append_audit(&NewAuditEntry {
                at: now(),
                actor: actor.name.clone(),
                action: AuditAction::Sync,
                channel: None,
                from_snapshot: latest.as_ref().map(|s| s.id.clone()),
                to_snapshot: Some(snapshot.id.clone()),
                comment: actor.comment.clone(),
                summary: Some(format!(
                    "{{\"packages\":{package_count},\"new_packages\":{}}}",
                    outcome.new_packages
                )),
            })
            .await?;
            tx.commit().await?;
            info!(source = source_name, snapshot = %snapshot.id, packages = package_count, "new snapshot");
            Some(snapshot)
        };
        if source.policy == FetchPolicy::Immediate {
            // Resumable: what an interrupted sync stored is skipped.
            outcome.downloaded = self
                .fetch_missing(&Manifest::new(), &manifest, progress)
                .await?;
        }
        if let Some(snapshot) = snapshot {
            outcome.snapshot = Some(snapshot.id.clone());
            let followers: Vec<String> = self
                .channel_configs()
                .into_iter()
                .filter(|c| {
                    c.follows
                        .as_ref()
                        .is_some_and(|f| f.as_str() == source_name)
                })
                .map(|c| c.name.to_string())
                .collect();
            for channel in followers {
                let follow = Actor {
                    name: actor.name.clone(),
                    comment: Some(format!("follows {source_name}")),
                };
                self.move_channel(
                    &channel,
                    snapshot.clone(),
                    manifest.clone(),
                    ChannelAction::Follow,
                    AuditAction::Promote,
                    &follow,
                )
                .await?;
                outcome.followed_by.push(channel);
            }
        }
        Ok(outcome)
    }

    // ---- diffs ----------------------------------------------------------------------------

    /// (suite, name, arch) → highest version, for the indices of `manifest`.
    async fn versions(
        &self,
        manifest: &Manifest,
        texts: &mut Texts,
    ) -> Result<BTreeMap<(String, String, String), String>> {
        let mut out: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for (suite, sm) in &manifest.suites {
            for (key, files) in &sm.indices {
                let text = self.text(texts, &files.plain).await?;
                let stanzas = index::parse(&text).map_err(|source| ChannelsError::Index {
                    what: format!("{suite} {key}"),
                    source,
                })?;
                for s in stanzas {
                    let k = (suite.clone(), s.name.to_owned(), s.architecture.to_owned());
                    match out.get(&k) {
                        Some(v) if index::compare_versions(v, s.version).is_ge() => {}
                        _ => {
                            out.insert(k, s.version.to_owned());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// What changes between two manifests, with dpkg's version ordering.
    pub async fn diff_manifests(&self, a: &Manifest, b: &Manifest) -> Result<Diff> {
        let mut texts = Texts::new();
        let before = self.versions(a, &mut texts).await?;
        let after = self.versions(b, &mut texts).await?;
        let mut diff = Diff::default();
        let change = |(suite, name, arch): &(String, String, String),
                      from: Option<&String>,
                      to: Option<&String>| Change {
            suite: suite.clone(),
            name: name.clone(),
            architecture: arch.clone(),
            from: from.cloned(),
            to: to.cloned(),
        };
        for (k, v) in &after {
            match before.get(k) {
                None => diff.added.push(change(k, None, Some(v))),
                Some(old) => match index::compare_versions(old, v) {
                    std::cmp::Ordering::Less => diff.upgraded.push(change(k, Some(old), Some(v))),
                    std::cmp::Ordering::Greater => {
                        diff.downgraded.push(change(k, Some(old), Some(v)))
                    }
                    std::cmp::Ordering::Equal => {}
                },
            }
        }
        for (k, v) in &before {
            if !after.contains_key(k) {
                diff.removed.push(change(k, Some(v), None));
            }
        }
        Ok(diff)
    }

    pub async fn diff(&self, a: &str, b: &str) -> Result<Diff> {
        let a = self.snapshot(a).await?;
        let b = self.snapshot(b).await?;
        let (ma, mb) = (self.manifest(&a).await?, self.manifest(&b).await?);
        self.diff_manifests(&ma, &mb).await
    }

    // ---- fetching -------------------------------------------------------------------------

    /// Stores every package `to` lists that `from` does not and the store lacks; returns how
    /// many were fetched. All are tried; failures are reported together.
    async fn fetch_missing(
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

    // ---- deriving manifests ---------------------------------------------------------------

    /// `base` with, per index, the packages named in `take[suite/key]` replaced by their
    /// stanzas in `other` (absent there: removed). Indices that do not change keep their
    /// blobs; changed ones are rendered and compressed once.
    pub(crate) async fn overlay(
        &self,
        base: &Manifest,
        other: &Manifest,
        take: &HashMap<(String, String), HashSet<String>>,
    ) -> Result<Manifest> {
        let mut texts = Texts::new();
        let mut out = base.clone();
        for ((suite, key), names) in take {
            if names.is_empty() {
                continue;
            }
            let Some(base_files) = base.suites.get(suite).and_then(|s| s.indices.get(key)) else {
                continue;
            };
            let base_text = self.text(&mut texts, &base_files.plain).await?;
            let other_text = match other.suites.get(suite).and_then(|s| s.indices.get(key)) {
                Some(f) => Some(self.text(&mut texts, &f.plain).await?),
                None => None,
            };
            let index_error = |source| ChannelsError::Index {
                what: format!("{suite} {key}"),
                source,
            };
            let base_stanzas = index::parse(&base_text).map_err(index_error)?;
            let other_stanzas = match &other_text {
                Some(t) => index::parse(t).map_err(index_error)?,
                None => Vec::new(),
            };
            let kept = base_stanzas.iter().filter(|s| !names.contains(s.name));
            let taken = other_stanzas.iter().filter(|s| names.contains(s.name));
            let stanzas: Vec<&Stanza> = kept.chain(taken).collect();
            let rendered = index::render(stanzas.iter().map(|s| s.text));
            if rendered.as_bytes() == base_text.as_bytes() {
                continue;
            }
            let files = self.index_files(rendered, stanzas.len() as u64).await?;
            out.suites
                .get_mut(suite)
                .expect("suite exists in base")
                .indices
                .insert(key.clone(), files);
        }
        Ok(out)
    }

    /// Stores a rendered index and its compressed forms.
    pub(crate) async fn index_files(&self, text: String, packages: u64) -> Result<IndexFiles> {
        let (xz, gz) = tokio::task::spawn_blocking({
            let text = text.clone();
            move || (index::xz(text.as_bytes()), index::gzip(text.as_bytes()))
        })
        .await
        .expect("compression does not panic");
        let io = |source| ChannelsError::Io {
            what: "compressing an index".into(),
            source,
        };
        Ok(IndexFiles {
            packages,
            plain: self.put_blob(text.as_bytes()).await?,
            xz: Some(self.put_blob(&xz.map_err(io)?).await?),
            gz: Some(self.put_blob(&gz.map_err(io)?).await?),
        })
    }

    /// The names to take from `source` per index so that `names` and the dependencies the
    /// target lacks come along: within each index, a dependency is satisfied when the
    /// target (after the pull) has a package of that name with a matching version.
    pub(crate) async fn pull_set(
        &self,
        target: &Manifest,
        source: &Manifest,
        names: &[String],
    ) -> Result<(HashMap<(String, String), HashSet<String>>, BTreeSet<String>)> {
        let mut texts = Texts::new();
        let mut take = HashMap::new();
        let mut found = BTreeSet::new();
        for (suite, sm) in &source.suites {
            for (key, files) in &sm.indices {
                let src_text = self.text(&mut texts, &files.plain).await?;
                let src = index::parse(&src_text).map_err(|source| ChannelsError::Index {
                    what: format!("{suite} {key}"),
                    source,
                })?;
                let tgt_text = match target.suites.get(suite).and_then(|s| s.indices.get(key)) {
                    Some(f) => Some(self.text(&mut texts, &f.plain).await?),
                    None => None,
                };
                let tgt = match &tgt_text {
                    Some(t) => index::parse(t).map_err(|source| ChannelsError::Index {
                        what: format!("{suite} {key}"),
                        source,
                    })?,
                    None => Vec::new(),
                };
                let mut by_name: HashMap<&str, Vec<&Stanza>> = HashMap::new();
                for s in &src {
                    by_name.entry(s.name).or_default().push(s);
                }
                // Versions present once the pull is done: target's, replaced by pulled ones.
                let mut present: HashMap<&str, Vec<&str>> = HashMap::new();
                for s in &tgt {
                    present.entry(s.name).or_default().push(s.version);
                }
                let mut pulled: HashSet<String> = HashSet::new();
                let mut queue: Vec<&str> = names
                    .iter()
                    .filter(|n| by_name.contains_key(n.as_str()))
                    .map(String::as_str)
                    .collect();
                while let Some(name) = queue.pop() {
                    if !pulled.insert(name.to_owned()) {
                        continue;
                    }
                    found.insert(name.to_owned());
                    let stanzas = &by_name[name];
                    present.insert(name, stanzas.iter().map(|s| s.version).collect());
                    for s in stanzas {
                        for group in index::dependencies(s) {
                            let satisfied = group.iter().any(|r| {
                                present
                                    .get(r.name)
                                    .is_some_and(|vs| vs.iter().any(|v| r.satisfied_by(v)))
                            });
                            if satisfied {
                                continue;
                            }
                            let candidate = group.iter().find(|r| {
                                by_name
                                    .get(r.name)
                                    .is_some_and(|ss| ss.iter().any(|s| r.satisfied_by(s.version)))
                            });
                            if let Some(r) = candidate {
                                queue.push(r.name);
                            }
                        }
                    }
                }
                if !pulled.is_empty() {
                    take.insert((suite.clone(), key.clone()), pulled);
                }
            }
        }
        Ok((take, found))
    }

    // ---- channels -------------------------------------------------------------------------

    pub(crate) fn channel_config(&self, name: &str) -> Result<ChannelConfig> {
        let channels = self.channels.read().expect("lock poisoned");
        channels
            .get(name)
            .cloned()
            .ok_or_else(|| ChannelsError::UnknownChannel {
                name: name.to_owned(),
                known: channels.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    async fn channel_state(&self, name: &str) -> Result<ChannelState> {
        self.channel_config(name)?;
        self.catalog
            .channel(name)
            .await?
            .ok_or_else(|| ChannelsError::UnknownChannel {
                name: name.to_owned(),
                known: self.channel_names().join(", "),
            })
    }

    fn lock(&self, channel: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock poisoned")
            .entry(channel.to_owned())
            .or_default()
            .clone()
    }

    /// Promotes `req.from`'s snapshot (or only the named packages) into `req.to`.
    ///
    /// Promotions of one channel serialize: in this process on the channel's lock; across
    /// server instances sharing the catalog, a promotion that finds the channel moved while it
    /// was prepared is prepared again from the new position (a few times, then it fails).
    pub async fn promote(&self, req: &PromoteRequest, actor: &Actor) -> Result<MoveOutcome> {
        let mut attempt = 1;
        loop {
            match self.promote_once(req, actor, false).await {
                Err(ChannelsError::Catalog(CatalogError::ChannelMoved { .. }))
                    if attempt < MOVE_ATTEMPTS =>
                {
                    info!(channel = %req.to, attempt, "channel moved meanwhile; promoting again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn promote_once(
        &self,
        req: &PromoteRequest,
        actor: &Actor,
        auto_approved: bool,
    ) -> Result<MoveOutcome> {
        let to_config = self.channel_config(&req.to)?;
        let from_state = self.channel_state(&req.from).await?;
        if let Some(allowed) = &to_config.promotes_from {
            if allowed.as_str() != req.from {
                return Err(ChannelsError::Refused(format!(
                    "{} promotes from {allowed}, not from {}",
                    req.to, req.from
                )));
            }
        }
        let from_snapshot_id = from_state
            .snapshot_id
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(req.from.clone()))?;
        // Auto-approval has its own soak: per package version, since it was first seen.
        if !to_config.min_soak.is_zero() && !auto_approved {
            let history = self.catalog.channel_history(&req.from, 1000).await?;
            let since = history
                .iter()
                .take_while(|h| h.snapshot_id == from_snapshot_id)
                .last()
                .map(|h| h.at)
                .unwrap_or(from_state.updated_at);
            let soaked = Duration::from_secs((now() - since).max(0) as u64);
            if soaked < to_config.min_soak {
                return Err(ChannelsError::Refused(format!(
                    "snapshot {from_snapshot_id} has been in {} for {}; {} requires {} \
                     (min_soak)\nhint: wait, or lower min_soak for {} in the configuration",
                    req.from,
                    aptgate_config::humantime_secs::format_duration(soaked),
                    req.to,
                    aptgate_config::humantime_secs::format_duration(to_config.min_soak),
                    req.to
                )));
            }
        }
        if !req.only.is_empty() && !to_config.selective {
            return Err(ChannelsError::Refused(format!(
                "{} does not allow selective promotion (selective = false)",
                req.to
            )));
        }
        let lock = self.lock(&req.to);
        let _guard = lock.lock().await;
        let to_state = self.channel_state(&req.to).await?;
        let source_snapshot = self.snapshot(&from_snapshot_id).await?;
        let source_manifest = self.manifest(&source_snapshot).await?;
        let holds = self.catalog.holds(&req.to).await?;
        let current = match &to_state.snapshot_id {
            Some(id) => Some(self.snapshot(id).await?),
            None => None,
        };
        let current_manifest = match &current {
            Some(s) => Some(self.manifest(s).await?),
            None => None,
        };

        let (snapshot, manifest) = if req.only.is_empty() {
            self.with_holds(
                &req.to,
                &holds,
                current_manifest.as_ref(),
                source_snapshot,
                source_manifest,
            )
            .await?
        } else {
            let Some(cur) = &current_manifest else {
                return Err(ChannelsError::Refused(format!(
                    "{} has nothing published yet; promote a whole snapshot first",
                    req.to
                )));
            };
            if let Some(h) = holds.iter().find(|h| req.only.contains(&h.package)) {
                return Err(ChannelsError::Refused(format!(
                    "{} is held in {}\nhint: `aptgate unhold {} {}` first",
                    h.package, req.to, req.to, h.package
                )));
            }
            let (take, found) = self.pull_set(cur, &source_manifest, &req.only).await?;
            let missing: Vec<_> = req.only.iter().filter(|n| !found.contains(*n)).collect();
            if !missing.is_empty() {
                return Err(ChannelsError::Refused(format!(
                    "not in {}'s snapshot {}: {}",
                    req.from,
                    source_snapshot.id,
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let base = current.clone().expect("published, checked above");
            let derived = self.overlay(cur, &source_manifest, &take).await?;
            self.derived_snapshot(
                &base,
                derived,
                &req.to,
                format!(
                    "{} plus {} from {} ({})",
                    base.id,
                    req.only.join(", "),
                    req.from,
                    source_snapshot.id
                ),
            )
            .await?
        };
        self.move_locked(
            &req.to,
            to_state,
            snapshot,
            manifest,
            ChannelAction::Promote,
            AuditAction::Promote,
            actor,
        )
        .await
    }

    /// A whole snapshot as `channel` will publish it: held packages keep the channel's
    /// current version (a derived snapshot), or the snapshot itself when nothing is held.
    async fn with_holds(
        &self,
        channel: &str,
        holds: &[Hold],
        current: Option<&Manifest>,
        snapshot: Snapshot,
        manifest: Manifest,
    ) -> Result<(Snapshot, Manifest)> {
        let held: HashSet<String> = holds.iter().map(|h| h.package.clone()).collect();
        let Some(current) = current.filter(|_| !held.is_empty()) else {
            return Ok((snapshot, manifest));
        };
        let take = every_index(&manifest, &held);
        let derived = self.overlay(&manifest, current, &take).await?;
        let names: Vec<&str> = holds.iter().map(|h| h.package.as_str()).collect();
        self.derived_snapshot(
            &snapshot,
            derived,
            channel,
            format!(
                "{} with held packages kept from {channel}: {}",
                snapshot.id,
                names.join(", ")
            ),
        )
        .await
    }

    /// Moves `channel` to a whole snapshot (holds applied) under its lock.
    pub(crate) async fn move_to_snapshot(
        &self,
        channel: &str,
        snapshot: Snapshot,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let state = self.channel_state(channel).await?;
        let current = match &state.snapshot_id {
            Some(id) => Some(self.manifest(&self.snapshot(id).await?).await?),
            None => None,
        };
        let holds = self.catalog.holds(channel).await?;
        let manifest = self.manifest(&snapshot).await?;
        let (snapshot, manifest) = self
            .with_holds(channel, &holds, current.as_ref(), snapshot, manifest)
            .await?;
        self.move_locked(
            channel,
            state,
            snapshot,
            manifest,
            ChannelAction::Promote,
            AuditAction::Promote,
            actor,
        )
        .await
    }

    /// Applies the channel's auto-approval rule: every update its source channel has over it
    /// whose new version was first seen at least `auto_approve_after` ago is promoted (with
    /// the dependencies the channel lacks). Returns `None` when nothing qualifies.
    pub async fn auto_approve(&self, channel: &str) -> Result<Option<MoveOutcome>> {
        self.auto_approve_at(channel, now()).await
    }

    /// [`auto_approve`](Self::auto_approve) as if the time were `at` (unix seconds).
    pub async fn auto_approve_at(&self, channel: &str, at: i64) -> Result<Option<MoveOutcome>> {
        let config = self.channel_config(channel)?;
        let (Some(from), false) = (&config.promotes_from, config.auto_approve_after.is_zero())
        else {
            return Err(ChannelsError::Refused(format!(
                "{channel} has no auto-approval rule (promotes_from and auto_approve_after)"
            )));
        };
        let from = from.to_string();
        let state = self.channel_state(channel).await?;
        let from_state = self.channel_state(&from).await?;
        let (Some(current), Some(source)) = (&state.snapshot_id, &from_state.snapshot_id) else {
            return Ok(None);
        };
        let current = self.manifest(&self.snapshot(current).await?).await?;
        let source = self.manifest(&self.snapshot(source).await?).await?;
        let diff = self.diff_manifests(&current, &source).await?;
        let cutoff = at - config.auto_approve_after.as_secs() as i64;
        let held: HashSet<String> = self
            .catalog
            .holds(channel)
            .await?
            .into_iter()
            .map(|h| h.package)
            .collect();
        let mut eligible = BTreeSet::new();
        for change in diff.upgraded.iter().chain(&diff.added) {
            let Some(version) = &change.to else { continue };
            if held.contains(&change.name) {
                continue;
            }
            let seen = self
                .catalog
                .first_seen(&change.name, version, &change.architecture)
                .await?;
            if seen.is_some_and(|t| t <= cutoff) {
                eligible.insert(change.name.clone());
            }
        }
        if eligible.is_empty() {
            return Ok(None);
        }
        let actor = Actor {
            name: "auto-approve".into(),
            comment: Some(format!(
                "first seen at least {} ago",
                aptgate_config::humantime_secs::format_duration(config.auto_approve_after)
            )),
        };
        let req = PromoteRequest {
            from,
            to: channel.to_owned(),
            only: eligible.into_iter().collect(),
        };
        self.promote_once(&req, &actor, true).await.map(Some)
    }

    /// Runs every channel's auto-approval rule (what `serve` does after each scheduled sync).
    pub async fn auto_approve_all(&self) -> Vec<(String, Result<Option<MoveOutcome>>)> {
        let mut out = Vec::new();
        for c in self.channel_configs() {
            if c.promotes_from.is_some() && !c.auto_approve_after.is_zero() {
                let name = c.name.to_string();
                let result = self.auto_approve(&name).await;
                out.push((name, result));
            }
        }
        out
    }

    /// The snapshot for a derived manifest: `base` itself when nothing changed.
    async fn derived_snapshot(
        &self,
        base: &Snapshot,
        manifest: Manifest,
        channel: &str,
        description: String,
    ) -> Result<(Snapshot, Manifest)> {
        let digest = self.put_json(&manifest).await?;
        if digest.to_hex() == base.manifest_sha256 {
            return Ok((base.clone(), manifest));
        }
        let mut tx = self.catalog.begin().await?;
        let snapshot = self
            .record_snapshot(
                &mut tx,
                channel,
                SnapshotKind::Pull,
                description,
                digest,
                base.sources.clone(),
            )
            .await?;
        tx.commit().await?;
        Ok((snapshot, manifest))
    }

    /// Moves a channel to a snapshot (taking the channel's lock).
    async fn move_channel(
        &self,
        channel: &str,
        snapshot: Snapshot,
        manifest: Manifest,
        action: ChannelAction,
        audit: AuditAction,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let state = self.channel_state(channel).await?;
        self.move_locked(channel, state, snapshot, manifest, action, audit, actor)
            .await
    }

    #[expect(clippy::too_many_arguments, reason = "one call site per kind of move")]
    async fn move_locked(
        &self,
        channel: &str,
        state: ChannelState,
        snapshot: Snapshot,
        manifest: Manifest,
        action: ChannelAction,
        audit: AuditAction,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let resign = action == ChannelAction::Resign;
        let current = match &state.snapshot_id {
            Some(_) if resign => manifest.clone(),
            Some(id) => self.manifest(&self.snapshot(id).await?).await?,
            None => Manifest::new(),
        };
        // Everything new to a promoted channel is stored before it moves: it keeps working
        // when upstream deletes a version. A channel that follows its source stays on demand
        // (the source's fetch policy decides).
        let fetched = if matches!(action, ChannelAction::Follow | ChannelAction::Resign) {
            0
        } else {
            self.fetch_missing(&current, &manifest, &|line: &str| {
                info!(channel, "{line}");
            })
            .await?
        };
        let diff = if resign {
            DiffSummary::default()
        } else {
            self.diff_manifests(&current, &manifest).await?.summary()
        };
        let publication = self.sign_publication(channel, &snapshot, &manifest).await?;
        let publication_sha256 = self.put_json(&publication).await?;
        let at = now();
        let mut tx = self.catalog.begin().await?;
        let generation = tx
            .move_channel(&ChannelMove {
                channel: channel.to_owned(),
                expected_generation: state.generation,
                snapshot_id: snapshot.id.clone(),
                publication_sha256: publication_sha256.to_hex(),
                at,
                action,
                actor: actor.name.clone(),
                comment: actor.comment.clone(),
            })
            .await?;
        // A re-signature changes no content: the channel history records it, the audit log
        // records what caused it (a key change) or nothing (a Valid-Until refresh).
        if !resign {
            tx.append_audit(&NewAuditEntry {
                at,
                actor: actor.name.clone(),
                action: audit,
                channel: Some(channel.to_owned()),
                from_snapshot: state.snapshot_id.clone(),
                to_snapshot: Some(snapshot.id.clone()),
                comment: actor.comment.clone(),
                summary: Some(serde_json::to_string(&diff).expect("serializes")),
            })
            .await?;
        }
        tx.commit().await?;
        self.served.write().expect("lock poisoned").insert(
            channel.to_owned(),
            (
                Arc::new(Served {
                    publication,
                    manifest,
                    generation,
                }),
                Instant::now(),
            ),
        );
        info!(channel, snapshot = %snapshot.id, generation, %action, "channel moved");
        Ok(MoveOutcome {
            channel: channel.to_owned(),
            from_snapshot: state.snapshot_id,
            to_snapshot: snapshot.id,
            generation,
            diff,
            fetched,
        })
    }

    /// Renders and signs the Release files of every suite the channel publishes.
    async fn sign_publication(
        &self,
        channel: &str,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<Publication> {
        let config = self.channel_config(channel)?;
        let signed_at = now();
        let valid_until = (!self.publish.valid_until.is_zero())
            .then(|| signed_at + self.publish.valid_until.as_secs() as i64);
        // The snapshot names its manifest blob: nothing to store again.
        let manifest_digest = Sha256::from_hex(&snapshot.manifest_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "manifest",
                digest: snapshot.manifest_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut suites = BTreeMap::new();
        for (suite, sm) in &manifest.suites {
            if !config.suites.is_empty() && !config.suites.contains(suite) {
                continue;
            }
            let text = self.render_release(channel, suite, sm, signed_at, valid_until);
            let (in_release, release_gpg) = {
                let keys = self.keys.lock().expect("lock poisoned");
                (
                    keys.cleartext_sign(&text)?,
                    keys.detached_sign(text.as_bytes())?,
                )
            };
            suites.insert(
                suite.clone(),
                SignedRelease {
                    release: self.put_blob(text.as_bytes()).await?,
                    in_release: self.put_blob(in_release.as_bytes()).await?,
                    release_gpg: self.put_blob(release_gpg.as_bytes()).await?,
                },
            );
        }
        Ok(Publication {
            format: 1,
            channel: channel.to_owned(),
            snapshot: snapshot.id.clone(),
            manifest: manifest_digest,
            signed_at,
            valid_until,
            suites,
        })
    }

    fn render_release(
        &self,
        channel: &str,
        suite: &str,
        sm: &SuiteManifest,
        signed_at: i64,
        valid_until: Option<i64>,
    ) -> String {
        use std::fmt::Write;
        let date = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .unwrap_or_default()
                .format("%a, %d %b %Y %H:%M:%S UTC")
                .to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "Origin: aptgate");
        let _ = writeln!(out, "Label: {channel}");
        let _ = writeln!(out, "Suite: {suite}");
        let _ = writeln!(out, "Codename: {}", sm.codename.as_deref().unwrap_or(suite));
        let _ = writeln!(out, "Date: {}", date(signed_at));
        if let Some(v) = valid_until {
            let _ = writeln!(out, "Valid-Until: {}", date(v));
        }
        let _ = writeln!(out, "Architectures: {}", sm.architectures.join(" "));
        let _ = writeln!(out, "Components: {}", sm.components.join(" "));
        let _ = writeln!(out, "Description: aptgate channel {channel}");
        let _ = writeln!(out, "Acquire-By-Hash: yes");
        if !self.publish.public_url.is_empty() {
            // apt >= 2.7 (`apt update --snapshot ID`) replaces @SNAPSHOTID@.
            let _ = writeln!(
                out,
                "Snapshots: {}/channels/{channel}/snapshots/@SNAPSHOTID@",
                self.publish.public_url.trim_end_matches('/')
            );
        }
        let _ = writeln!(out, "SHA256:");
        for (key, files) in &sm.indices {
            for (name, blob) in files.files() {
                let _ = writeln!(out, " {} {:>16} {key}/{name}", blob.sha256, blob.size);
            }
        }
        out
    }

    /// Keeps `package` at the channel's current version across promotions.
    pub async fn hold(&self, channel: &str, package: &str, actor: &Actor) -> Result<bool> {
        self.hold_change(channel, package, actor, true).await
    }

    pub async fn unhold(&self, channel: &str, package: &str, actor: &Actor) -> Result<bool> {
        self.hold_change(channel, package, actor, false).await
    }

    async fn hold_change(
        &self,
        channel: &str,
        package: &str,
        actor: &Actor,
        hold: bool,
    ) -> Result<bool> {
        let state = self.channel_state(channel).await?;
        if package.is_empty() || package.contains(char::is_whitespace) {
            return Err(ChannelsError::Refused(format!(
                "invalid package name {package:?}"
            )));
        }
        let at = now();
        let mut tx = self.catalog.begin().await?;
        let changed = if hold {
            tx.add_hold(
                channel,
                &Hold {
                    package: package.to_owned(),
                    at,
                    actor: actor.name.clone(),
                    comment: actor.comment.clone(),
                },
            )
            .await?
        } else {
            tx.remove_hold(channel, package).await?
        };
        if changed {
            tx.append_audit(&NewAuditEntry {
                at,
                actor: actor.name.clone(),
                action: if hold {
                    AuditAction::Hold
                } else {
                    AuditAction::Release
                },
                channel: Some(channel.to_owned()),
                from_snapshot: state.snapshot_id.clone(),
                to_snapshot: state.snapshot_id,
                comment: actor.comment.clone(),
                summary: Some(serde_json::json!({ "package": package }).to_string()),
            })
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn holds(&self, channel: &str) -> Result<Vec<Hold>> {
        self.channel_config(channel)?;
        Ok(self.catalog.holds(channel).await?)
    }

    /// Moves a channel back to an earlier snapshot: `to`, or the one before the current.
    pub async fn rollback(
        &self,
        channel: &str,
        to: Option<&str>,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let state = self.channel_state(channel).await?;
        let current = state
            .snapshot_id
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let history = self.catalog.channel_history(channel, 1000).await?;
        let target = match to {
            Some(t) => {
                let snapshot = self.snapshot(t).await?;
                if !history.iter().any(|h| h.snapshot_id == snapshot.id) {
                    return Err(ChannelsError::Refused(format!(
                        "{channel} never pointed at {}; rollback only goes to its own history\n\
                         hint: `aptgate channel history {channel}`",
                        snapshot.id
                    )));
                }
                snapshot
            }
            None => {
                let previous = history
                    .iter()
                    .find(|h| h.snapshot_id != current)
                    .ok_or_else(|| {
                        ChannelsError::Refused(format!("{channel} has no earlier snapshot"))
                    })?;
                self.snapshot(&previous.snapshot_id).await?
            }
        };
        let manifest = self.manifest(&target).await?;
        self.move_locked(
            channel,
            state,
            target,
            manifest,
            ChannelAction::Rollback,
            AuditAction::Rollback,
            actor,
        )
        .await
    }

    /// Signs a channel's current publication again: same snapshot, byte-identical indices,
    /// new `Date`/`Valid-Until` and the currently active keys.
    pub async fn resign(&self, channel: &str, actor: &Actor) -> Result<MoveOutcome> {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let state = self.channel_state(channel).await?;
        let id = state
            .snapshot_id
            .clone()
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let snapshot = self.snapshot(&id).await?;
        let manifest = self.manifest(&snapshot).await?;
        self.move_locked(
            channel,
            state,
            snapshot,
            manifest,
            ChannelAction::Resign,
            AuditAction::Key,
            actor,
        )
        .await
    }

    /// Re-signs every published channel whose `Valid-Until` is less than half the validity
    /// period away; returns the channels re-signed. `serve` runs this on a schedule.
    pub async fn resign_expiring(&self) -> Result<Vec<String>> {
        if self.publish.valid_until.is_zero() {
            return Ok(Vec::new());
        }
        let half = (self.publish.valid_until.as_secs() / 2) as i64;
        let mut resigned = Vec::new();
        for name in &self.channel_names() {
            let Ok(served) = self.served(name).await else {
                continue;
            };
            let due = served
                .publication
                .valid_until
                .is_none_or(|until| until - now() < half);
            if due {
                self.resign(name, &Actor::new("aptgate")).await?;
                resigned.push(name.clone());
            }
        }
        Ok(resigned)
    }

    async fn resign_all(&self, actor: &Actor) -> Result<()> {
        for name in &self.channel_names() {
            match self.resign(name, actor).await {
                Ok(_) | Err(ChannelsError::Unpublished(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn keys(&self) -> Vec<crate::signing::KeyInfo> {
        self.keys.lock().expect("lock poisoned").list()
    }

    /// Generates a second signing key: from now on both sign (a rotation's overlap); every
    /// channel is re-signed at once.
    pub async fn add_key(&self, actor: &Actor) -> Result<crate::signing::KeyInfo> {
        let user_id = format!("aptgate signing key ({})", self.publish.key_name);
        let key =
            tokio::task::spawn_blocking(move || crate::signing::SigningKey::generate(&user_id))
                .await
                .expect("key generation does not panic")?;
        let fingerprint = key.fingerprint();
        self.keys.lock().expect("lock poisoned").add(key)?;
        self.audit_key(actor, serde_json::json!({ "added": fingerprint }))
            .await?;
        self.resign_all(actor).await?;
        Ok(self
            .keys()
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
            .expect("just added"))
    }

    /// Adds an existing secret key (armored, without passphrase); from now on it signs too.
    pub async fn import_key(&self, armored: &str, actor: &Actor) -> Result<String> {
        let fingerprint = self.keys.lock().expect("lock poisoned").import(armored)?;
        self.audit_key(actor, serde_json::json!({ "imported": fingerprint }))
            .await?;
        self.resign_all(actor).await?;
        Ok(fingerprint)
    }

    /// Stops a key from signing (the rotation's end); every channel is re-signed at once.
    pub async fn retire_key(&self, fingerprint: &str, actor: &Actor) -> Result<()> {
        self.keys
            .lock()
            .expect("lock poisoned")
            .retire(fingerprint)?;
        self.audit_key(actor, serde_json::json!({ "retired": fingerprint }))
            .await?;
        self.resign_all(actor).await
    }

    async fn audit_key(&self, actor: &Actor, summary: serde_json::Value) -> Result<()> {
        self.catalog
            .append_audit(&NewAuditEntry {
                at: now(),
                actor: actor.name.clone(),
                action: AuditAction::Key,
                channel: None,
                from_snapshot: None,
                to_snapshot: None,
                comment: actor.comment.clone(),
                summary: Some(summary.to_string()),
            })
            .await?;
        Ok(())
    }

    pub async fn history(&self, channel: &str, limit: i64) -> Result<Vec<HistoryEntry>> {
        self.channel_config(channel)?;
        Ok(self.catalog.channel_history(channel, limit).await?)
    }

    // ---- serving --------------------------------------------------------------------------

    /// The channel's current publication, from a short-lived cache.
    pub async fn served(&self, channel: &str) -> Result<Arc<Served>> {
        if let Some((served, at)) = self.served.read().expect("lock poisoned").get(channel) {
            if at.elapsed() < CHANNEL_CACHE_TTL {
                return Ok(served.clone());
            }
        }
        let state = self.channel_state(channel).await?;
        let digest = state
            .publication_sha256
            .as_deref()
            .and_then(|d| Sha256::from_hex(d).ok())
            .ok_or_else(|| ChannelsError::Unpublished(channel.to_owned()))?;
        let cached = self
            .served
            .read()
            .expect("lock poisoned")
            .get(channel)
            .filter(|(s, _)| s.generation == state.generation)
            .map(|(s, _)| s.clone());
        let served = match cached {
            Some(s) => s,
            None => {
                let publication: Publication = self.get_json("publication", &digest).await?;
                let manifest: Manifest = self.get_json("manifest", &publication.manifest).await?;
                Arc::new(Served {
                    publication,
                    manifest,
                    generation: state.generation,
                })
            }
        };
        self.served
            .write()
            .expect("lock poisoned")
            .insert(channel.to_owned(), (served.clone(), Instant::now()));
        Ok(served)
    }

    /// A snapshot the channel pointed at, as it was last published there.
    pub async fn served_snapshot(&self, channel: &str, snapshot: &str) -> Result<Arc<Served>> {
        self.channel_config(channel)?;
        let history = self.catalog.channel_history(channel, 100_000).await?;
        let entry = history
            .iter()
            .find(|h| h.snapshot_id == snapshot)
            .ok_or_else(|| ChannelsError::UnknownSnapshot(snapshot.to_owned()))?;
        let digest = Sha256::from_hex(&entry.publication_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "publication",
                digest: entry.publication_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some((_, served)) = self
            .history_served
            .lock()
            .expect("lock poisoned")
            .iter()
            .find(|(d, _)| *d == digest)
        {
            return Ok(served.clone());
        }
        let publication: Publication = self.get_json("publication", &digest).await?;
        let manifest: Manifest = self.get_json("manifest", &publication.manifest).await?;
        let served = Arc::new(Served {
            publication,
            manifest,
            generation: entry.generation,
        });
        let mut cache = self.history_served.lock().expect("lock poisoned");
        if cache.len() >= 8 {
            cache.remove(0);
        }
        cache.push((digest, served.clone()));
        Ok(served)
    }

    /// The digest and size a channel's `pool/` path stands for, if it lists it.
    pub async fn pool_file(&self, served: &Served, path: &str) -> Result<Option<(Sha256, u64)>> {
        let map = self
            .pool_map(&served.publication.manifest, &served.manifest)
            .await?;
        Ok(map.get(path).copied())
    }

    /// The upstream source a package was recorded from: where it is fetched on first demand.
    pub async fn origin(&self, digest: &Sha256) -> Result<String> {
        Ok(self
            .catalog
            .package(&digest.to_hex())
            .await?
            .map(|p| p.package.origin)
            .unwrap_or_default())
    }

    async fn pool_map(&self, digest: &Sha256, manifest: &Manifest) -> Result<Arc<PoolMap>> {
        if let Some((_, map)) = self
            .pool_maps
            .lock()
            .expect("lock poisoned")
            .iter()
            .find(|(d, _)| d == digest)
        {
            return Ok(map.clone());
        }
        let mut texts = Texts::new();
        let mut map = PoolMap::new();
        for sm in manifest.suites.values() {
            for files in sm.indices.values() {
                let text = self.text(&mut texts, &files.plain).await?;
                for s in index::parse(&text).map_err(|source| ChannelsError::Index {
                    what: "published index".into(),
                    source,
                })? {
                    if let Ok(d) = Sha256::from_hex(s.sha256) {
                        map.insert(s.filename.to_owned(), (d, s.size));
                    }
                }
            }
        }
        let map = Arc::new(map);
        let mut maps = self.pool_maps.lock().expect("lock poisoned");
        // A few manifests: every channel's current one and the one before.
        if maps.len() >= 8 {
            maps.remove(0);
        }
        maps.push((*digest, map.clone()));
        Ok(map)
    }

    /// Whether `digest` was an index of this channel recently enough to serve under by-hash.
    pub async fn by_hash_allowed(&self, channel: &str, served: &Served, digest: &Sha256) -> bool {
        let current = served
            .manifest
            .suites
            .values()
            .flat_map(|s| s.indices.values())
            .flat_map(|i| i.files().map(|(_, b)| b.sha256));
        if current.into_iter().any(|d| d == *digest) {
            return true;
        }
        let Ok(history) = self.catalog.channel_history(channel, 50).await else {
            return false;
        };
        let grace = self.publish.by_hash_grace.as_secs() as i64;
        // A superseded entry stays reachable for `grace` after the move that replaced it.
        for pair in history.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            if now() - newer.at > grace {
                break;
            }
            let Ok(snapshot) = self.snapshot(&older.snapshot_id).await else {
                continue;
            };
            let Ok(manifest) = self.manifest(&snapshot).await else {
                continue;
            };
            if manifest
                .suites
                .values()
                .flat_map(|s| s.indices.values())
                .flat_map(|i| i.files().map(|(_, b)| b.sha256))
                .any(|d| d == *digest)
            {
                return true;
            }
        }
        false
    }
}

fn every_index(
    manifest: &Manifest,
    names: &HashSet<String>,
) -> HashMap<(String, String), HashSet<String>> {
    manifest
        .suites
        .iter()
        .flat_map(|(suite, sm)| {
            sm.indices
                .keys()
                .map(move |key| ((suite.clone(), key.clone()), names.clone()))
        })
        .collect()
}

fn new_package(s: &Stanza, origin: &str) -> NewPackage {
    NewPackage {
        sha256: s.sha256.to_ascii_lowercase(),
        name: s.name.to_owned(),
        version: s.version.to_owned(),
        architecture: s.architecture.to_owned(),
        source: s.source.to_owned(),
        size: s.size,
        pool_path: s.filename.to_owned(),
        control: s.text.to_owned(),
        origin: origin.to_owned(),
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
