//! Sync: verify a source's releases and indices, record its packages, snapshot what changed,
//! rescue referenced packages that left upstream, and move the channels that follow the source.
//!
//! An index whose upstream file is byte-identical to the one the source's last sync read is
//! reused as it was (its blobs, its table, its packages already recorded): an incremental
//! sync parses only what changed.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::metrics::Metrics;
use crate::retention::Leaver;
use crate::service::*;
use crate::table::PackageTable;
use aptgate_config::{FetchPolicy, SourceConfig};
use aptgate_mirror::release::SuiteRelease;
use aptgate_mirror::Sha256;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tracing::{info, warn};

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
    /// Referenced packages that left upstream's index, stored by this sync.
    #[serde(default)]
    pub rescued: u64,
    /// Rescues that failed (retried by the next sync; `aptgate channel verify` lists them).
    #[serde(default)]
    pub rescue_failures: u64,
}

/// One index read from upstream: reused from the last sync, or new (with its packages).
struct ReadIndex {
    files: IndexFiles,
    new: Option<Vec<NewPackage>>,
}

impl Channels {
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
        if source.is_local() {
            return self.sync_local(&source, actor).await;
        }
        let started = now();
        let last_sync = self.catalog.source_sync(source_name).await?;
        let previous = self.previous_sync(source_name, last_sync.as_ref()).await?;
        let previous_manifest = match &previous {
            Some(s) => Some(self.manifest(s).await?),
            None => None,
        };

        let mut manifest = Manifest::new();
        let mut packages = Vec::new();
        for suite in &source.suites {
            let suite_manifest = self
                .sync_suite(
                    &source,
                    suite,
                    previous_manifest.as_ref().and_then(|m| m.suites.get(suite)),
                    &mut packages,
                    progress,
                )
                .await?;
            manifest.suites.insert(suite.clone(), suite_manifest);
        }
        let package_count = manifest.package_count();
        let digest = self.put_json(&manifest).await?;

        let leavers = match &previous_manifest {
            Some(old) => self.leavers(old, &manifest).await?,
            None => Vec::new(),
        };
        // `Architecture: all` packages appear in every architecture's index.
        let mut seen = HashSet::new();
        packages.retain(|p: &NewPackage| seen.insert(p.sha256.clone()));
        let mut outcome = SyncOutcome {
            source: source_name.to_owned(),
            snapshot: None,
            packages: package_count,
            new_packages: 0,
            followed_by: Vec::new(),
            downloaded: 0,
            rescued: 0,
            rescue_failures: 0,
        };
        let mut tx = self.catalog.begin().await?;
        outcome.new_packages = tx.upsert_packages(&packages, started).await?;
        drop(packages);
        if !leavers.is_empty() {
            // They were listed by the last sync (or, before syncs were recorded, by the
            // snapshot it made); anything earlier would be a guess.
            let last_seen = last_sync
                .as_ref()
                .map(|s| s.synced_at)
                .or(previous.as_ref().map(|s| s.created_at))
                .unwrap_or(started);
            let digests: Vec<String> = leavers.iter().map(|l| l.sha256.to_hex()).collect();
            tx.mark_packages_gone(&digests, last_seen).await?;
            // Queued in the same transaction as the snapshot that no longer lists them: a
            // crash or an error before the rescue below ran loses none of them.
            let queued: Vec<Rescue> = leavers
                .iter()
                .map(|l| Rescue {
                    sha256: l.sha256.to_hex(),
                    source: source_name.to_owned(),
                    pool_path: l.filename.clone(),
                    size: l.size,
                    first_failed: started,
                    last_failed: started,
                    attempts: 0,
                    error: String::new(),
                })
                .collect();
            tx.queue_rescues(&queued).await?;
        }
        let unchanged = previous
            .as_ref()
            .is_some_and(|s| s.manifest_sha256 == digest.to_hex());
        let summary = if unchanged {
            info!(source = source_name, "upstream unchanged; no new snapshot");
            None
        } else {
            Some(format!(
                "{{\"packages\":{package_count},\"new_packages\":{},\"left_upstream\":{}}}",
                outcome.new_packages,
                leavers.len()
            ))
        };
        let (snapshot, current) = self
            .finish_sync(tx, source_name, started, previous, digest, summary, actor)
            .await?;
        outcome.snapshot = snapshot.map(|s| s.id);

        // Packages leaving upstream while referenced are stored now, while upstream's pool
        // still has them; earlier failures are tried again. A failure here is reported and
        // retried by the next sync, never a reason to stop.
        match self.rescue(source_name, progress).await {
            Ok(rescue) => {
                outcome.rescued = rescue.rescued;
                outcome.rescue_failures = rescue.failed;
            }
            Err(e) => {
                warn!(source = source_name, error = %e, "rescue did not run; the next sync tries again")
            }
        }
        if source.policy == FetchPolicy::Immediate {
            // Resumable: what an interrupted sync stored is skipped.
            outcome.downloaded = self
                .fetch_missing(&Manifest::new(), &manifest, progress)
                .await?;
        }
        if let Some(current) = current {
            outcome.followed_by = self
                .move_followers(source_name, current, manifest, actor)
                .await?;
        }
        Ok(outcome)
    }

    /// Records a sync's new snapshot and its audit entry in `tx`.
    /// Records the sync — and a new snapshot when `summary` is given (the manifest changed) —
    /// and commits. Returns the new snapshot, if any, and the source's current one.
    #[allow(clippy::too_many_arguments)]
    async fn finish_sync(
        &self,
        mut tx: CatalogTx,
        source_name: &str,
        started: i64,
        previous: Option<Snapshot>,
        digest: Sha256,
        summary: Option<String>,
        actor: &Actor,
    ) -> Result<(Option<Snapshot>, Option<Snapshot>)> {
        let snapshot = match summary {
            Some(summary) => Some(
                self.record_sync_snapshot(
                    &mut tx,
                    source_name,
                    previous.as_ref(),
                    digest,
                    summary,
                    actor,
                )
                .await?,
            ),
            None => None,
        };
        let current = snapshot.clone().or(previous);
        tx.record_source_sync(
            source_name,
            started,
            current.as_ref().map(|s| s.id.as_str()),
        )
        .await?;
        tx.commit().await?;
        Ok((snapshot, current))
    }

    async fn record_sync_snapshot(
        &self,
        tx: &mut CatalogTx,
        source_name: &str,
        previous: Option<&Snapshot>,
        digest: Sha256,
        summary: String,
        actor: &Actor,
    ) -> Result<Snapshot> {
        let snapshot = self
            .record_snapshot(
                tx,
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
            from_snapshot: previous.map(|s| s.id.clone()),
            to_snapshot: Some(snapshot.id.clone()),
            comment: actor.comment.clone(),
            summary: Some(summary),
        })
        .await?;
        info!(source = source_name, snapshot = %snapshot.id, "new snapshot");
        Ok(snapshot)
    }

    /// A local source's sync: its uploads become indices (see `uploads.rs`), snapshotted and
    /// followed exactly as an upstream sync's. Its files are in the store since their upload.
    async fn sync_local(&self, source: &SourceConfig, actor: &Actor) -> Result<SyncOutcome> {
        let source_name = source.name.as_str();
        let started = now();
        let last_sync = self.catalog.source_sync(source_name).await?;
        let previous = self.previous_sync(source_name, last_sync.as_ref()).await?;
        let manifest = self.local_manifest(source).await?;
        let digest = self.put_json(&manifest).await?;
        let package_count = manifest.package_count();
        let before: HashSet<String> = match &previous {
            Some(s) => self.manifest_digests(&self.manifest(s).await?).await?,
            None => HashSet::new(),
        };
        let now_listed = self.manifest_digests(&manifest).await?;
        let new_packages = now_listed.difference(&before).count() as u64;
        let unchanged = previous
            .as_ref()
            .is_some_and(|s| s.manifest_sha256 == digest.to_hex());
        let tx = self.catalog.begin().await?;
        let summary = if unchanged {
            info!(
                source = source_name,
                "no uploads since the last sync; no new snapshot"
            );
            None
        } else {
            let summary = serde_json::json!({
                "packages": package_count,
                "new_packages": new_packages,
                "local": true,
            })
            .to_string();
            Some(summary)
        };
        let (snapshot, current) = self
            .finish_sync(tx, source_name, started, previous, digest, summary, actor)
            .await?;
        let mut outcome = SyncOutcome {
            source: source_name.to_owned(),
            snapshot: snapshot.map(|s| s.id),
            packages: package_count,
            new_packages: if unchanged { 0 } else { new_packages },
            followed_by: Vec::new(),
            downloaded: 0,
            rescued: 0,
            rescue_failures: 0,
        };
        if let Some(current) = current {
            outcome.followed_by = self
                .move_followers(source_name, current, manifest, actor)
                .await?;
        }
        Ok(outcome)
    }

    /// The package digests a manifest lists.
    async fn manifest_digests(&self, manifest: &Manifest) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for files in manifest.suites.values().flat_map(|s| s.indices.values()) {
            let table = self.table(files).await?;
            out.extend(table.rows().map(|r| r.sha256.to_owned()));
        }
        Ok(out)
    }

    /// Moves the channels that follow the source: one that follows only it, to its current
    /// sync snapshot; one that follows several, to the merge of their current snapshots —
    /// unless the channel has been there already (an admin may have rolled it back on
    /// purpose). A sync that failed after recording its snapshot thus has its followers moved
    /// by the next one.
    async fn move_followers(
        &self,
        source_name: &str,
        current: Snapshot,
        manifest: Manifest,
        actor: &Actor,
    ) -> Result<Vec<String>> {
        let mut moved = Vec::new();
        let followers = self
            .channel_configs()
            .await
            .into_iter()
            .filter(|c| c.follows.iter().any(|f| f.as_str() == source_name));
        for config in followers {
            let channel = config.name.to_string();
            let sources: Vec<&str> = config.follows.iter().map(|f| f.as_str()).collect();
            let follow = Actor {
                name: actor.name.clone(),
                comment: Some(format!("follows {}", sources.join(" + "))),
            };
            let (target, target_manifest) = if sources.len() == 1 {
                if self.visited(&channel, &current).await? {
                    continue;
                }
                (current.clone(), manifest.clone())
            } else {
                match self.merged_follow(&channel, &sources, &follow).await? {
                    Some(found) => found,
                    None => continue,
                }
            };
            self.move_channel(
                &channel,
                target,
                target_manifest,
                ChannelAction::Follow,
                AuditAction::Promote,
                &follow,
            )
            .await?;
            moved.push(channel);
        }
        Ok(moved)
    }

    /// Whether the channel moved to `snapshot` since it was made.
    async fn visited(&self, channel: &str, snapshot: &Snapshot) -> Result<bool> {
        // Newest first: a visit to `snapshot` is among the moves since it was made.
        let history = self.catalog.channel_history(channel, 1000).await?;
        Ok(history
            .iter()
            .take_while(|h| h.at >= snapshot.created_at)
            .any(|h| h.snapshot_id == snapshot.id))
    }

    /// The snapshot a channel following several sources moves to: their current sync
    /// snapshots merged per suite (highest version wins), or the one snapshot when only one
    /// of them has synced yet; `None` if none has, or the channel has been at that merge.
    async fn merged_follow(
        &self,
        channel: &str,
        sources: &[&str],
        actor: &Actor,
    ) -> Result<Option<(Snapshot, Manifest)>> {
        let mut inputs = Vec::new();
        for source in sources {
            let last_sync = self.catalog.source_sync(source).await?;
            if let Some(s) = self.previous_sync(source, last_sync.as_ref()).await? {
                inputs.push(s);
            }
        }
        let [first, ..] = inputs.as_slice() else {
            return Ok(None);
        };
        if inputs.len() == 1 {
            if self.visited(channel, first).await? {
                return Ok(None);
            }
            let manifest = self.manifest(first).await?;
            return Ok(Some((first.clone(), manifest)));
        }
        let ids: Vec<String> = inputs.iter().map(|s| s.id.clone()).collect();
        // The description merge_snapshots gives the merge of exactly these inputs.
        let description = format!("merge of {}", ids.join(" + "));
        let newest = inputs
            .iter()
            .map(|s| s.created_at)
            .max()
            .unwrap_or_default();
        let history = self.catalog.channel_history(channel, 1000).await?;
        for h in history.iter().take_while(|h| h.at >= newest) {
            if let Some(s) = self.catalog.snapshot(&h.snapshot_id).await? {
                if s.kind == SnapshotKind::Merge && s.description == description {
                    return Ok(None);
                }
            }
        }
        let merged = self.merge_snapshots(&ids, None, None, actor).await?;
        let manifest = self.manifest(&merged).await?;
        Ok(Some((merged, manifest)))
    }

    /// The snapshot the source's last sync created or found unchanged.
    async fn previous_sync(
        &self,
        source_name: &str,
        last_sync: Option<&SourceSync>,
    ) -> Result<Option<Snapshot>> {
        if let Some(id) = last_sync.and_then(|s| s.snapshot_id.as_deref()) {
            if let Some(s) = self.catalog.snapshot(id).await? {
                if s.deleted_at.is_none() {
                    return Ok(Some(s));
                }
            }
        }
        Ok(self
            .catalog
            .list_snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.kind == SnapshotKind::Sync && s.sources == [source_name]))
    }

    /// One suite of a source: its verified release and every configured index.
    async fn sync_suite(
        &self,
        source: &SourceConfig,
        suite: &str,
        previous: Option<&SuiteManifest>,
        packages: &mut Vec<NewPackage>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<SuiteManifest> {
        let source_name = source.name.as_str();
        let mirror_err = |what: String| move |source| ChannelsError::Mirror { what, source };
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
                let before = previous.and_then(|p| p.indices.get(&key));
                let read = self
                    .read_index(source_name, suite, &rest, digest, before, &release)
                    .await?;
                if let Some(new) = read.new {
                    packages.extend(new);
                }
                suite_manifest.indices.insert(key, read.files);
            }
        }
        Ok(suite_manifest)
    }

    /// Reads an upstream index (stored as `digest`): the last sync's files if it read the
    /// same bytes, else decompressed (no further than `release` allows), parsed, its packages
    /// and table made. Stanzas that cannot be used are refused, counted and left out of the
    /// snapshot's index; upstream's compressed forms, which still hold them, are not served.
    async fn read_index(
        &self,
        source_name: &str,
        suite: &str,
        rest: &str,
        digest: Sha256,
        before: Option<&IndexFiles>,
        release: &SuiteRelease,
    ) -> Result<ReadIndex> {
        let upstream_file = if rest.ends_with(".xz") {
            before.and_then(|f| f.xz)
        } else if rest.ends_with(".gz") {
            before.and_then(|f| f.gz)
        } else {
            before.map(|f| f.plain)
        };
        // Garbage collection spares blobs referenced within its grace period: upstream's file
        // may be an old blob come back.
        let _ = self.store().touch(&digest);
        if let (Some(files), Some(file)) = (before, upstream_file) {
            if file.sha256 == digest {
                return Ok(ReadIndex {
                    files: files.clone(),
                    new: None,
                });
            }
        }
        let stored = self
            .store()
            .read(&digest)
            .await
            .map_err(|source| ChannelsError::Io {
                what: format!("reading {rest}"),
                source,
            })?;
        let upstream = BlobRef {
            sha256: digest,
            size: stored.len() as u64,
        };
        let what = format!("{source_name} {suite} {rest}");
        let origin = source_name.to_owned();
        let name = rest.to_owned();
        let cap = release.inflate_cap(rest, upstream.size);
        // Decompressing and parsing a large suite takes a while: off the async workers.
        let parsed = tokio::task::spawn_blocking(move || -> Result<_> {
            let plain =
                aptgate_mirror::packages::decompress(&name, &stored, cap).map_err(|source| {
                    ChannelsError::Io {
                        what: format!("decompressing {what}"),
                        source,
                    }
                })?;
            let text = String::from_utf8(plain).map_err(|e| ChannelsError::CorruptBlob {
                what: "index",
                digest: digest.to_hex(),
                reason: e.to_string(),
            })?;
            let (text, refused, upstream_text) = checked_index(text);
            let stanzas =
                index::parse(&text).map_err(|source| ChannelsError::Index { what, source })?;
            let packages: Vec<NewPackage> =
                stanzas.iter().map(|s| new_package(s, &origin)).collect();
            let table = PackageTable::from_stanzas(&text, &stanzas);
            drop(stanzas);
            Ok((text, packages, table, refused, upstream_text))
        })
        .await
        .expect("index parsing does not panic")?;
        let (text, packages, table, refused, upstream_text) = parsed;
        self.count_refused(source_name, suite, rest, &refused);
        let plain = self.put_blob(text.as_bytes()).await?;
        let files = IndexFiles {
            packages: packages.len() as u64,
            plain,
            xz: (upstream_text && rest.ends_with(".xz")).then_some(upstream),
            gz: (upstream_text && rest.ends_with(".gz")).then_some(upstream),
            table: Some(self.put_table(&plain, table).await?),
        };
        Ok(ReadIndex {
            files,
            new: Some(packages),
        })
    }

    /// Counts and logs the stanzas of an upstream index that were refused.
    fn count_refused(&self, source: &str, suite: &str, index: &str, refused: &[index::IndexError]) {
        if refused.is_empty() {
            return;
        }
        Metrics::add(&self.metrics.refused_stanzas, refused.len() as u64);
        // A hostile index may hold millions: the first few name the problem.
        for e in refused.iter().take(10) {
            warn!(source, suite, index, reason = %e, "refused an upstream Packages stanza: it is not recorded, fetched or served");
        }
        if refused.len() > 10 {
            warn!(
                source,
                suite,
                index,
                refused = refused.len(),
                "refused more upstream Packages stanzas"
            );
        }
    }

    /// Packages the last sync's manifest listed and `new` does not: they left upstream's
    /// index (upstream's pool keeps them a while).
    async fn leavers(&self, old: &Manifest, new: &Manifest) -> Result<Vec<Leaver>> {
        let same = |suite: &str, key: &str, files: &IndexFiles| {
            new.suites
                .get(suite)
                .and_then(|s| s.indices.get(key))
                .is_some_and(|f| f.plain.sha256 == files.plain.sha256)
        };
        let mut gone: BTreeMap<Sha256, Leaver> = BTreeMap::new();
        for (suite, sm) in &old.suites {
            for (key, files) in &sm.indices {
                if same(suite, key, files) {
                    continue;
                }
                let table = self.table(files).await?;
                for row in table.rows() {
                    if let Ok(sha256) = Sha256::from_hex(row.sha256) {
                        gone.entry(sha256).or_insert_with(|| Leaver {
                            sha256,
                            filename: row.filename.to_owned(),
                            size: row.size,
                        });
                    }
                }
            }
        }
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let tables: Vec<Arc<PackageTable>> = {
            let mut tables = Vec::new();
            for sm in new.suites.values() {
                for files in sm.indices.values() {
                    tables.push(self.table(files).await?);
                }
            }
            tables
        };
        for table in &tables {
            for row in table.rows() {
                if let Ok(sha256) = Sha256::from_hex(row.sha256) {
                    gone.remove(&sha256);
                }
            }
        }
        Ok(gone.into_values().collect())
    }
}

/// An upstream index as a snapshot keeps it: upstream's text when every stanza is usable and
/// its lines end in LF, else the usable stanzas rendered again (LF, each byte for byte). Also
/// returns the refused stanzas and whether the text is upstream's own (so upstream's
/// compressed forms may be served with it).
fn checked_index(text: String) -> (String, Vec<index::IndexError>, bool) {
    let crlf = text.contains('\r');
    let lf_text = if crlf {
        text.replace("\r\n", "\n")
    } else {
        text
    };
    let parsed = index::parse_upstream(&lf_text);
    if parsed.refused.is_empty() && !crlf {
        drop(parsed);
        return (lf_text, Vec::new(), true);
    }
    let rendered = index::render(parsed.stanzas.iter().map(|s| s.text));
    (rendered, parsed.refused, false)
}

pub(crate) fn new_package(s: &index::Stanza, origin: &str) -> NewPackage {
    NewPackage {
        sha256: s.sha256.to_ascii_lowercase(),
        name: s.name.to_owned(),
        version: s.version.to_owned(),
        architecture: s.architecture.to_owned(),
        source: s.source.to_owned(),
        size: s.size,
        pool_path: s.filename.to_owned(),
        // The stanza is in the snapshot's index blobs; a copy per row would make recording a
        // suite write its whole text to the catalog again.
        control: String::new(),
        origin: origin.to_owned(),
    }
}
