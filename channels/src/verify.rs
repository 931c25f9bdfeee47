//! `channel verify`: where every package a channel publishes is — in the store, only upstream,
//! only at a fallback origin, or nowhere — checked with `HEAD` requests, a few at a time.
//! A channel with packages nowhere has rotted: a host asking for them gets an error.

use crate::catalog::Rescue;
use crate::error::Result;
use crate::retention::FETCH_CONCURRENCY;
use crate::service::*;
use aptgate_mirror::{Probe, Sha256};
use futures::StreamExt as _;
use std::collections::BTreeMap;
use tracing::info;

/// A package that is not in the store, and what was found of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unstored {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    /// Where it was found, or why not.
    pub detail: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub channel: String,
    pub snapshot: String,
    /// Distinct packages the channel publishes.
    pub packages: u64,
    pub stored: u64,
    /// Not stored; upstream has them (fetched when first asked for).
    pub only_upstream: u64,
    /// Not stored, gone upstream, present at a fallback origin.
    pub only_fallback: Vec<Unstored>,
    /// Not stored and found nowhere (or nowhere reachable).
    pub nowhere: Vec<Unstored>,
    /// Rescues of the channel's sources still to do.
    pub rescues_pending: Vec<Rescue>,
}

/// Where one unstored package was found.
enum Found {
    Upstream,
    Fallback(String),
    Nowhere(String),
}

impl Channels {
    /// Checks where every package of `channel`'s current snapshot is.
    pub async fn verify_channel(&self, channel: &str) -> Result<VerifyReport> {
        let served = self.served(channel).await?;
        let mut rows: BTreeMap<Sha256, Unstored> = BTreeMap::new();
        let mut report = VerifyReport {
            channel: channel.to_owned(),
            snapshot: served.publication.snapshot.clone(),
            ..VerifyReport::default()
        };
        for files in served
            .manifest
            .suites
            .values()
            .flat_map(|s| s.indices.values())
        {
            let table = self.table(files).await?;
            for row in table.rows() {
                let Ok(digest) = Sha256::from_hex(row.sha256) else {
                    continue;
                };
                rows.entry(digest).or_insert_with(|| Unstored {
                    name: row.name.to_owned(),
                    version: row.version.to_owned(),
                    architecture: row.architecture.to_owned(),
                    filename: row.filename.to_owned(),
                    sha256: row.sha256.to_owned(),
                    size: row.size,
                    detail: String::new(),
                });
            }
        }
        report.packages = rows.len() as u64;
        let unstored: Vec<(Sha256, Unstored)> = rows
            .into_iter()
            .filter(|(d, _)| !self.store().contains(d))
            .collect();
        report.stored = report.packages - unstored.len() as u64;
        let origins = self
            .origins(unstored.iter().map(|(d, _)| d.to_hex()).collect())
            .await?;
        let total = unstored.len();
        let mut probes = futures::stream::iter(unstored)
            .map(|(digest, package)| {
                let origin = origins.get(&package.sha256).cloned().unwrap_or_default();
                async move {
                    let found = self.locate(&origin, &digest, &package).await;
                    (package, found)
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY);
        let mut done = 0;
        while let Some((mut package, found)) = probes.next().await {
            done += 1;
            if done % 1000 == 0 {
                info!(
                    channel,
                    "verify: checked {done} of {total} packages not in the store"
                );
            }
            match found {
                Found::Upstream => report.only_upstream += 1,
                Found::Fallback(url) => {
                    package.detail = url;
                    report.only_fallback.push(package);
                }
                Found::Nowhere(why) => {
                    package.detail = why;
                    report.nowhere.push(package);
                }
            }
        }
        report
            .only_fallback
            .sort_by(|a, b| a.filename.cmp(&b.filename));
        report.nowhere.sort_by(|a, b| a.filename.cmp(&b.filename));
        let snapshot = self.snapshot(&report.snapshot).await?;
        report.rescues_pending = self
            .catalog
            .rescues()
            .await?
            .into_iter()
            .filter(|r| snapshot.sources.contains(&r.source))
            .collect();
        Ok(report)
    }

    async fn locate(&self, origin: &str, digest: &Sha256, package: &Unstored) -> Found {
        if origin.is_empty() {
            return Found::Nowhere("no upstream source recorded".into());
        }
        let upstream = match self.mirror.upstream_url(origin, &package.filename) {
            Ok(url) => self.mirror.probe(&url, package.size).await,
            Err(e) => Probe::Failed(e.to_string()),
        };
        if upstream == Probe::Present {
            return Found::Upstream;
        }
        for url in self.fallback_urls(origin, digest, &package.filename).await {
            if self.mirror.probe(&url, package.size).await == Probe::Present {
                return Found::Fallback(url);
            }
        }
        Found::Nowhere(match upstream {
            Probe::Missing => format!("gone from {origin} and from every fallback origin"),
            Probe::Failed(why) => format!("{origin}: {why}"),
            Probe::Present => unreachable!("handled above"),
        })
    }
}
