//! Retention: which snapshots are kept, and getting the packages channels reference into the
//! store — from their upstream, or from the source's fallback origins once upstream has
//! dropped them.
//!
//! A snapshot is kept while any of these holds (the first one found is its reason):
//! a channel points at it; a channel left it less than `keep_for` ago (at least
//! `publish.by_hash_grace`, whose superseded indices stay served); it is a source's latest
//! sync snapshot; it has a name; it was created or used less than `keep_for` ago; it is
//! among the newest `keep_last` of the rest. Nothing used within `grace` is ever deleted.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::batch::Wanted;
use aptgate_mirror::origins::join_url;
use aptgate_mirror::path::PoolPath;
use aptgate_mirror::{MirrorError, Sha256};
use futures::StreamExt as _;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Package downloads a promotion, a rescue or an `immediate` sync runs at once.
pub(crate) const FETCH_CONCURRENCY: usize = 16;

/// A package to store: what it must be and where its origin keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaver {
    pub sha256: Sha256,
    pub filename: String,
    pub size: u64,
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Keep {
    /// A channel points at it.
    Current {
        channel: String,
    },
    /// A channel pointed at it until `until` (unix seconds), recently enough.
    WasCurrent {
        channel: String,
        until: i64,
    },
    /// The newest sync snapshot of a source.
    LatestSync {
        source: String,
    },
    Named,
    /// Created or used recently.
    Recent,
    /// Among the newest `keep_last` of the rest.
    Newest,
}

/// The retention decision over every snapshot not deleted yet.
#[derive(Debug, Default)]
pub struct RetentionPlan {
    pub keep: Vec<(Snapshot, Keep)>,
    pub expire: Vec<Snapshot>,
    /// Snapshots may only be deleted if unused since then (rechecked atomically).
    pub cutoff: i64,
}

impl Channels {
    /// Decides, as of `now`, which snapshots are kept and which retention lets go.
    pub async fn retention_plan(&self, now: i64) -> Result<RetentionPlan> {
        let keep_for = self.retention.keep_for.as_secs() as i64;
        let window = keep_for
            .max(self.publish.by_hash_grace.as_secs() as i64)
            .max(self.retention.grace.as_secs() as i64);
        let cutoff = now - keep_for.max(self.retention.grace.as_secs() as i64);
        let mut reasons: HashMap<String, Keep> = HashMap::new();
        for c in self.catalog.list_channels().await? {
            if let Some(id) = c.snapshot_id {
                reasons
                    .entry(id)
                    .or_insert(Keep::Current { channel: c.name });
            }
        }
        // A position was held until the next one began.
        let positions = self.catalog.all_positions().await?;
        let mut next_at: HashMap<&str, i64> = HashMap::new();
        for p in &positions {
            let until = next_at.get(p.channel.as_str()).copied();
            next_at.insert(&p.channel, p.at);
            if let Some(until) = until {
                if now - until < window {
                    reasons
                        .entry(p.snapshot_id.clone())
                        .or_insert(Keep::WasCurrent {
                            channel: p.channel.clone(),
                            until,
                        });
                }
            }
        }
        for source in &self.sources {
            if let Some(id) = self
                .catalog
                .source_sync(source.name.as_str())
                .await?
                .and_then(|s| s.snapshot_id)
            {
                reasons.entry(id).or_insert(Keep::LatestSync {
                    source: source.name.to_string(),
                });
            }
        }
        let mut plan = RetentionPlan {
            cutoff,
            ..RetentionPlan::default()
        };
        let mut rest = Vec::new();
        for s in self.catalog.list_snapshots().await? {
            let reason = reasons.remove(&s.id).or_else(|| {
                if s.name.is_some() {
                    Some(Keep::Named)
                } else if s.created_at.max(s.used_at) >= cutoff {
                    Some(Keep::Recent)
                } else {
                    None
                }
            });
            match reason {
                Some(keep) => plan.keep.push((s, keep)),
                None => rest.push(s),
            }
        }
        // Oldest first: the newest `keep_last` stay.
        let keep_last = self.retention.keep_last.min(rest.len());
        let newest = rest.split_off(rest.len() - keep_last);
        plan.keep
            .extend(newest.into_iter().map(|s| (s, Keep::Newest)));
        plan.expire = rest;
        Ok(plan)
    }

    /// Which of `digests` a kept snapshot references. Reads the tables of kept snapshots,
    /// newest first, until every digest is found (usually in the first: the sync snapshot
    /// the packages were listed in).
    pub(crate) async fn referenced(&self, digests: &HashSet<Sha256>) -> Result<HashSet<Sha256>> {
        let mut found = HashSet::new();
        if digests.is_empty() {
            return Ok(found);
        }
        let mut plan = self.retention_plan(now()).await?;
        plan.keep
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.created_at.max(s.used_at)));
        let mut read: HashSet<Sha256> = HashSet::new();
        for (snapshot, _) in &plan.keep {
            let manifest = self.manifest(snapshot).await?;
            for files in manifest.suites.values().flat_map(|s| s.indices.values()) {
                if !read.insert(files.plain.sha256) {
                    continue;
                }
                let table = self.table(files).await?;
                for row in table.rows() {
                    if let Ok(d) = Sha256::from_hex(row.sha256) {
                        if digests.contains(&d) {
                            found.insert(d);
                        }
                    }
                }
                if found.len() == digests.len() {
                    return Ok(found);
                }
            }
        }
        Ok(found)
    }

    /// Stores every package `to` lists that `from` does not and the store lacks; returns how
    /// many were fetched. All are tried; failures are reported together.
    pub(crate) async fn fetch_missing(
        &self,
        from: &Manifest,
        to: &Manifest,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<u64> {
        let known: HashSet<Sha256> = from
            .suites
            .values()
            .flat_map(|s| s.indices.values().map(|i| i.plain.sha256))
            .collect();
        let mut old: HashSet<Sha256> = HashSet::new();
        for files in from.suites.values().flat_map(|s| s.indices.values()) {
            let table = self.table(files).await?;
            old.extend(table.rows().filter_map(|r| Sha256::from_hex(r.sha256).ok()));
        }
        let mut wanted: BTreeMap<Sha256, Leaver> = BTreeMap::new();
        for files in to.suites.values().flat_map(|s| s.indices.values()) {
            if known.contains(&files.plain.sha256) {
                continue;
            }
            let table = self.table(files).await?;
            for row in table.rows() {
                let Ok(sha256) = Sha256::from_hex(row.sha256) else {
                    continue;
                };
                if !old.contains(&sha256) && !self.store().contains(&sha256) {
                    wanted.insert(
                        sha256,
                        Leaver {
                            sha256,
                            filename: row.filename.to_owned(),
                            size: row.size,
                        },
                    );
                }
            }
        }
        let (fetched, failures) = self
            .store_packages(wanted.into_values().collect(), None, progress)
            .await?;
        if failures.is_empty() {
            Ok(fetched)
        } else {
            Err(ChannelsError::FetchFailed(
                failures.into_iter().map(|(_, why)| why).collect(),
            ))
        }
    }

    /// Stores packages, `FETCH_CONCURRENCY` downloads at a time and in batches (see
    /// `aptgate_mirror::batch`), each from its origin (`origin`, or the one the catalog
    /// recorded); what upstream no longer has is tried at that source's fallback origins.
    /// Returns how many were stored and, for the others, why not.
    pub(crate) async fn store_packages(
        &self,
        wanted: Vec<Leaver>,
        origin: Option<&str>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(u64, Vec<(Leaver, String)>)> {
        let mut by_origin: BTreeMap<String, Vec<Leaver>> = BTreeMap::new();
        match origin {
            Some(origin) => {
                by_origin.insert(origin.to_owned(), wanted);
            }
            None => {
                let origins = self
                    .origins(wanted.iter().map(|w| w.sha256.to_hex()).collect())
                    .await?;
                for w in wanted {
                    let origin = origins.get(&w.sha256.to_hex()).cloned().unwrap_or_default();
                    by_origin.entry(origin).or_default().push(w);
                }
            }
        }
        let total: usize = by_origin.values().map(Vec::len).sum();
        let (mut fetched, mut failures) = (0u64, Vec::new());
        for (origin, wanted) in by_origin {
            if origin.is_empty() {
                failures.extend(wanted.into_iter().map(|w| {
                    let why = format!("{}: no upstream source recorded", w.filename);
                    (w, why)
                }));
                continue;
            }
            // Paths were checked when their index was read; rows recorded before that check
            // existed are checked again here, before any becomes a URL or a store record.
            let (wanted, unsafe_paths): (Vec<_>, Vec<_>) = wanted
                .into_iter()
                .map(|w| match PoolPath::parse(&w.filename) {
                    Ok(path) => Ok((w, path)),
                    Err(e) => Err((w, e)),
                })
                .partition(Result::is_ok);
            failures.extend(
                unsafe_paths
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|(w, e)| {
                        let why = e.to_string();
                        (w, why)
                    }),
            );
            let wanted: Vec<(Leaver, PoolPath)> =
                wanted.into_iter().filter_map(Result::ok).collect();
            let count = wanted.len() as u64;
            let leavers: HashMap<Sha256, Leaver> =
                wanted.iter().map(|(w, _)| (w.sha256, w.clone())).collect();
            let batch: Vec<Wanted> = wanted
                .into_iter()
                .map(|(w, path)| Wanted {
                    path,
                    digest: w.sha256,
                    size: w.size,
                })
                .collect();
            let report = |done: usize, _: usize| {
                if done % 1000 == 0 || done == total {
                    progress(&format!("stored {done} of {total} packages"));
                }
            };
            let upstream_failed = self
                .mirror
                .store_many(&origin, batch, FETCH_CONCURRENCY, &report)
                .await;
            fetched += count - upstream_failed.len() as u64;
            // Upstream failed these: their source's fallbacks, one by one.
            let mut retries = futures::stream::iter(upstream_failed)
                .map(|(w, upstream)| {
                    let leaver = leavers[&w.digest].clone();
                    let origin = origin.clone();
                    async move {
                        let outcome = self.store_from_fallbacks(&origin, &leaver, &upstream).await;
                        (leaver, outcome)
                    }
                })
                .buffer_unordered(FETCH_CONCURRENCY);
            while let Some((leaver, outcome)) = retries.next().await {
                match outcome {
                    Ok(()) => fetched += 1,
                    Err(why) => failures.push((leaver, why)),
                }
            }
        }
        Ok((fetched, failures))
    }

    /// The source each package was recorded from, by hex digest (unknown ones left out).
    pub(crate) async fn origins(&self, digests: Vec<String>) -> Result<HashMap<String, String>> {
        Ok(self
            .catalog
            .package_origins(&digests)
            .await?
            .into_iter()
            .map(|(sha, origin, _)| (sha, origin))
            .collect())
    }

    /// After upstream failed with `upstream`: the package from `origin`'s fallback origins.
    async fn store_from_fallbacks(
        &self,
        origin: &str,
        w: &Leaver,
        upstream: &MirrorError,
    ) -> Result<(), String> {
        let mut tried = Vec::new();
        for url in self.fallback_urls(origin, &w.sha256, &w.filename).await {
            match self.mirror.store_blob_at(&url, w.sha256, w.size).await {
                Ok(_) => return Ok(()),
                Err(e) => tried.push(format!("{url}: {}", short(&e))),
            }
        }
        let mut why = format!("{} (from {origin}): {}", w.filename, short(upstream));
        if !tried.is_empty() {
            why.push_str(&format!("; fallbacks: {}", tried.join("; ")));
        }
        Err(why)
    }

    /// Where `origin`'s fallbacks keep a package: its templates with `{last_seen}` filled in
    /// (the last sync that listed it, UTC, `%Y%m%dT%H%M%SZ`) and the pool path appended.
    pub(crate) async fn fallback_urls(
        &self,
        origin: &str,
        sha256: &Sha256,
        filename: &str,
    ) -> Vec<String> {
        let Some(source) = self.sources.iter().find(|s| s.name.as_str() == origin) else {
            return Vec::new();
        };
        if source.fallback.is_empty() {
            return Vec::new();
        }
        let gone = self
            .catalog
            .package_origins(&[sha256.to_hex()])
            .await
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|(_, _, last_seen)| last_seen);
        let last_seen = match gone {
            Some(t) => t,
            // Still listed: the last sync saw it.
            None => self
                .catalog
                .source_sync(origin)
                .await
                .ok()
                .flatten()
                .map_or_else(now, |s| s.synced_at),
        };
        let stamp = chrono::DateTime::from_timestamp(last_seen, 0)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ")
            .to_string();
        source
            .fallback
            .iter()
            .filter_map(|template| {
                join_url(&template.replace("{last_seen}", &stamp), filename).ok()
            })
            .collect()
    }
}

/// A mirror error in one line, for lists of failures.
fn short(e: &MirrorError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}
