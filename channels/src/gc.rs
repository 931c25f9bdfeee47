//! Garbage collection: deletes snapshots past retention, then every blob nothing live
//! references, and reports what it freed; `store usage` is the same walk without deleting.
//!
//! Mark and sweep, safe against a sync, promotion or download running at the same time:
//! 1. snapshots past retention are marked deleted, each in one conditional statement that
//!    fails if a channel points at it or it was used within `grace` (a move or a derivation
//!    marks its snapshot used in the same transaction that relies on it, so either the
//!    collection sees the use, or the use sees the deletion and is refused);
//! 2. the store is listed;
//! 3. the live set is read: every kept snapshot's manifest, indices, tables and packages;
//!    every channel's publication, the newest publication of each kept snapshot in its
//!    history; the mirror's release files, the files they list and the pool files they name;
//! 4. listed blobs outside the live set and written more than `grace` ago are deleted — their
//!    age checked again at the moment of deletion, under the store's lock that writers take to
//!    rename a blob into place: content stored again after the listing (a move re-signing
//!    identical bytes, a manifest two snapshots share) is young again, and kept.
//!
//! A blob written during the collection is not listed in step 2 or is too young; one written
//! just before it is younger than `grace`. Every operation must finish within `grace`
//! (default 6 h) between writing a blob and recording what references it. Deleting a package blob that upstream still
//! lists costs a download later, never correctness.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::metrics::Metrics;
use crate::service::*;
use aptgate_mirror::{BlobInfo, MirrorRoots, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;
use tracing::info;

/// What a blob is kept as (or that it is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Packages,
    Indices,
    Metadata,
}

/// Blobs and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Amount {
    pub blobs: u64,
    pub bytes: u64,
}

impl Amount {
    fn add(&mut self, bytes: u64) {
        self.blobs += 1;
        self.bytes += bytes;
    }
}

/// The store's contents by what keeps them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// `.deb` files a kept snapshot or the mirror's current indices reference.
    pub packages: Amount,
    /// Index files and package tables (channels' and the mirror's).
    pub indices: Amount,
    /// Manifests, publications and release files.
    pub metadata: Amount,
    /// Nothing references them: the next collection deletes them.
    pub unreferenced: Amount,
    /// Unreferenced but written within the grace period: kept for now.
    pub unreferenced_recent: Amount,
}

/// What a collection did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub snapshots_deleted: Vec<String>,
    /// Blobs deleted (or, in a dry run, that would be).
    pub freed: Amount,
    pub records_removed: u64,
    /// Unreferenced blobs younger than the grace period, left for a later collection.
    pub kept_recent: Amount,
    pub seconds: f64,
}

/// The live blobs, by kind.
#[derive(Default)]
struct Live {
    kinds: HashMap<Sha256, Kind>,
}

impl Live {
    fn add(&mut self, digest: Sha256, kind: Kind) {
        // A blob that is two things counts as the first it was found as.
        self.kinds.entry(digest).or_insert(kind);
    }
}

impl Channels {
    /// Deletes snapshots past retention and unreferenced blobs older than the grace period.
    pub async fn gc(&self, dry_run: bool, actor: &Actor) -> Result<GcReport> {
        let started = std::time::Instant::now();
        let at = now();
        let plan = self.retention_plan(at).await?;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let expiring: HashSet<String> = plan.expire.iter().map(|s| s.id.clone()).collect();
        if dry_run {
            report.snapshots_deleted = plan.expire.iter().map(|s| s.id.clone()).collect();
        } else {
            for s in &plan.expire {
                if self.catalog.expire_snapshot(&s.id, plan.cutoff, at).await? {
                    report.snapshots_deleted.push(s.id.clone());
                }
            }
        }
        let blobs = self.list_store().await?;
        let skip = if dry_run { expiring } else { HashSet::new() };
        let (live, roots) = self.live(&skip).await?;
        let young = SystemTime::now() - self.retention.grace;
        let mut doomed = Vec::new();
        for blob in &blobs {
            if live.kinds.contains_key(&blob.digest) {
                continue;
            }
            if blob.written > young {
                report.kept_recent.add(blob.size);
            } else {
                doomed.push(*blob);
            }
        }
        // Checked again at the moment of deletion: written again or touched since the listing
        // (a move re-storing identical bytes) means it is in use. Many unlinks: off the async
        // workers.
        let store = self.store().clone();
        let sweep = tokio::task::spawn_blocking(move || -> Result<(Amount, HashSet<Sha256>)> {
            let (mut freed, mut gone) = (Amount::default(), HashSet::new());
            for blob in &doomed {
                let deleted = dry_run
                    || store
                        .remove_if_older(&blob.digest, young)
                        .map_err(|source| ChannelsError::Io {
                            what: format!("deleting blob {}", blob.digest),
                            source,
                        })?;
                if deleted {
                    freed.add(blob.size);
                    gone.insert(blob.digest);
                }
            }
            Ok((freed, gone))
        });
        let (freed, gone) = sweep.await.expect("the sweep does not panic")?;
        report.freed = freed;
        for (source, path, digest) in &roots.stale_pool_records {
            if gone.contains(digest) || !self.store().contains(digest) {
                if !dry_run {
                    self.mirror
                        .forget(source, path)
                        .map_err(|source| ChannelsError::Io {
                            what: format!("deleting the record of {path}"),
                            source,
                        })?;
                }
                report.records_removed += 1;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        if !dry_run {
            Metrics::add(&self.metrics.gc_runs, 1);
            Metrics::add(
                &self.metrics.gc_snapshots_deleted,
                report.snapshots_deleted.len() as u64,
            );
            Metrics::add(&self.metrics.gc_blobs_deleted, report.freed.blobs);
            Metrics::add(&self.metrics.gc_bytes_freed, report.freed.bytes);
            if !report.snapshots_deleted.is_empty() || report.freed.blobs > 0 {
                self.catalog
                    .append_audit(&NewAuditEntry {
                        at,
                        actor: actor.name.clone(),
                        action: AuditAction::Gc,
                        channel: None,
                        from_snapshot: None,
                        to_snapshot: None,
                        comment: actor.comment.clone(),
                        summary: Some(
                            serde_json::json!({
                                "snapshots_deleted": report.snapshots_deleted,
                                "blobs": report.freed.blobs,
                                "bytes": report.freed.bytes,
                                "records": report.records_removed,
                            })
                            .to_string(),
                        ),
                    })
                    .await?;
            }
            info!(
                snapshots = report.snapshots_deleted.len(),
                blobs = report.freed.blobs,
                bytes = report.freed.bytes,
                seconds = report.seconds,
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// The store's contents by what keeps them (nothing is deleted).
    pub async fn store_usage(&self) -> Result<StoreUsage> {
        let blobs = self.list_store().await?;
        let (live, _) = self.live(&HashSet::new()).await?;
        let young = SystemTime::now() - self.retention.grace;
        let mut usage = StoreUsage::default();
        for blob in blobs {
            let amount = match live.kinds.get(&blob.digest) {
                Some(Kind::Packages) => &mut usage.packages,
                Some(Kind::Indices) => &mut usage.indices,
                Some(Kind::Metadata) => &mut usage.metadata,
                None if blob.written > young => &mut usage.unreferenced_recent,
                None => &mut usage.unreferenced,
            };
            amount.add(blob.size);
        }
        Ok(usage)
    }

    async fn list_store(&self) -> Result<Vec<BlobInfo>> {
        let store = self.store().clone();
        Ok(tokio::task::spawn_blocking(move || store.list())
            .await
            .expect("listing the store does not panic")?)
    }

    /// Everything kept snapshots, channels and the mirror reference; `skip` are snapshots
    /// to count as deleted (a dry run's). Any unreadable manifest or publication is an
    /// error: collecting without knowing what it references could delete what it needs.
    async fn live(&self, skip: &HashSet<String>) -> Result<(Live, MirrorRoots)> {
        let mut live = Live::default();
        let mut kept: HashSet<String> = HashSet::new();
        let mut indices_read: HashSet<Sha256> = HashSet::new();
        for snapshot in self.catalog.list_snapshots().await? {
            if skip.contains(&snapshot.id) {
                continue;
            }
            kept.insert(snapshot.id.clone());
            let manifest = self.manifest(&snapshot).await?;
            if let Ok(d) = Sha256::from_hex(&snapshot.manifest_sha256) {
                live.add(d, Kind::Metadata);
            }
            for files in manifest.suites.values().flat_map(|s| s.indices.values()) {
                for (_, blob) in files.files() {
                    live.add(blob.sha256, Kind::Indices);
                }
                if let Some(table) = files.table {
                    live.add(table.sha256, Kind::Indices);
                }
                if !indices_read.insert(files.plain.sha256) {
                    continue;
                }
                let table = self.table(files).await?;
                for row in table.rows() {
                    if let Ok(d) = Sha256::from_hex(row.sha256) {
                        live.add(d, Kind::Packages);
                    }
                }
            }
        }
        // Publications: each channel's current one, and per kept snapshot in its history
        // the newest (or its re-signed one); older re-signatures are garbage.
        let mut publications: BTreeMap<(String, String), String> = BTreeMap::new();
        for p in self.catalog.all_positions().await? {
            if kept.contains(&p.snapshot_id) {
                publications
                    .entry((p.channel, p.snapshot_id))
                    .or_insert(p.publication_sha256);
            }
        }
        for (channel, snapshot, publication) in self.catalog.snapshot_publications().await? {
            if kept.contains(&snapshot) {
                publications.insert((channel, snapshot), publication);
            }
        }
        let current = self
            .catalog
            .list_channels()
            .await?
            .into_iter()
            .filter_map(|c| c.publication_sha256);
        for hex in publications.into_values().chain(current) {
            let digest = Sha256::from_hex(&hex).map_err(|e| ChannelsError::CorruptBlob {
                what: "publication",
                digest: hex.clone(),
                reason: e.to_string(),
            })?;
            let publication: Publication = self.get_json("publication", &digest).await?;
            live.add(digest, Kind::Metadata);
            live.add(publication.manifest, Kind::Metadata);
            for signed in publication.suites.values() {
                for blob in [signed.release, signed.in_release, signed.release_gpg] {
                    live.add(blob.sha256, Kind::Metadata);
                }
            }
        }
        let roots = self
            .mirror
            .roots()
            .await
            .map_err(|source| ChannelsError::Io {
                what: "reading the mirror's records".into(),
                source,
            })?;
        for d in &roots.releases {
            live.add(*d, Kind::Metadata);
        }
        for d in &roots.indices {
            live.add(*d, Kind::Indices);
        }
        for d in &roots.packages {
            live.add(*d, Kind::Packages);
        }
        // An uploaded file has no upstream to fetch it from again: kept while recorded.
        for hex in self.catalog.uploaded_digests().await? {
            if let Ok(d) = Sha256::from_hex(&hex) {
                live.add(d, Kind::Packages);
            }
        }
        Ok((live, roots))
    }
}

/// For logs and the CLI: "1.2 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
