//! Rescue: a package that leaves upstream's index while a channel or a kept snapshot still
//! references it is stored at once, while upstream's pool still has it (archives keep removed
//! files for a while; the sync interval must stay well inside that window). What fails is
//! recorded, retried by every later sync of the source, logged and counted.

use crate::catalog::Rescue;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::retention::Leaver;
use crate::service::*;
use aptgate_mirror::Sha256;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use tracing::{info, warn};

/// What one sync's rescue did.
#[derive(Debug, Default)]
pub(crate) struct RescueReport {
    pub rescued: u64,
    pub failed: u64,
}

impl Channels {
    /// Works through the source's queued rescues (the sync queued its leavers in the
    /// transaction that recorded them; earlier failures are still there): stores the
    /// referenced ones, drops the rest.
    pub(crate) async fn rescue(
        &self,
        source: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<RescueReport> {
        let pending: Vec<Rescue> = self
            .catalog
            .rescues()
            .await?
            .into_iter()
            .filter(|r| r.source == source)
            .collect();
        let mut candidates: BTreeMap<Sha256, Leaver> = BTreeMap::new();
        for r in &pending {
            if let Ok(sha256) = Sha256::from_hex(&r.sha256) {
                candidates.insert(
                    sha256,
                    Leaver {
                        sha256,
                        filename: r.pool_path.clone(),
                        size: r.size,
                    },
                );
            }
        }
        let mut report = RescueReport::default();
        if candidates.is_empty() {
            self.update_pending_gauge().await;
            return Ok(report);
        }
        let digests: HashSet<Sha256> = candidates.keys().copied().collect();
        let referenced = self.referenced(&digests).await?;
        let was_pending: HashSet<String> = pending.iter().map(|r| r.sha256.clone()).collect();
        let mut wanted = Vec::new();
        for (sha256, leaver) in candidates {
            let stored = self.store().contains(&sha256);
            if (stored || !referenced.contains(&sha256)) && was_pending.contains(&sha256.to_hex()) {
                // Stored meanwhile (a host asked for it), or nothing references it any more.
                self.catalog.rescue_done(&sha256.to_hex()).await?;
            }
            if !stored && referenced.contains(&sha256) {
                wanted.push(leaver);
            }
        }
        if wanted.is_empty() {
            self.update_pending_gauge().await;
            return Ok(report);
        }
        progress(&format!(
            "rescuing {} referenced package(s) that left {source}'s index",
            wanted.len()
        ));
        let attempted: Vec<Sha256> = wanted.iter().map(|l| l.sha256).collect();
        let (rescued, failures) = self.store_packages(wanted, Some(source), progress).await?;
        report.rescued = rescued;
        report.failed = failures.len() as u64;
        let failed: HashSet<Sha256> = failures.iter().map(|(l, _)| l.sha256).collect();
        for digest in attempted.iter().filter(|d| !failed.contains(d)) {
            if was_pending.contains(&digest.to_hex()) {
                self.catalog.rescue_done(&digest.to_hex()).await?;
            }
        }
        let at = now();
        for (l, why) in &failures {
            warn!(source, package = %l.filename, reason = %why, "could not rescue a package that left upstream's index; the next sync tries again");
            self.catalog
                .rescue_failed(&Rescue {
                    sha256: l.sha256.to_hex(),
                    source: source.to_owned(),
                    pool_path: l.filename.clone(),
                    size: l.size,
                    first_failed: at,
                    last_failed: at,
                    attempts: 1,
                    error: why.clone(),
                })
                .await?;
        }
        if rescued > 0 {
            info!(
                source,
                rescued, "stored referenced packages that left upstream's index"
            );
        }
        Metrics::add(&self.metrics.rescued, rescued);
        Metrics::add(&self.metrics.rescue_failures, report.failed);
        self.update_pending_gauge().await;
        Ok(report)
    }

    async fn update_pending_gauge(&self) {
        if let Ok(pending) = self.catalog.rescues().await {
            self.metrics
                .rescues_pending
                .store(pending.len() as u64, Ordering::Relaxed);
        }
    }
}
