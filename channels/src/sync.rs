//! Sync: verify a source's releases and indices, record its packages, snapshot what changed
//! and move the channels that follow the source.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::index::{self, Stanza};
use crate::manifest::*;
use crate::service::*;
use aptgate_config::FetchPolicy;
use std::collections::{BTreeMap, HashSet};
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
}

pub(crate) fn new_package(s: &Stanza, origin: &str) -> NewPackage {
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
