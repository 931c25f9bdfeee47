//! Snapshot operations that derive new snapshots: `filter`, `merge` and `pull`, and publishing
//! a snapshot into an entry channel. Each writes its indices once (reusing an input's index
//! blobs when the result is byte-identical to it) and records the snapshot with its audit
//! entry in one transaction.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::index::{self, Stanza};
use crate::manifest::*;
use crate::moves::MoveOutcome;
use crate::service::{now, Actor, Channels};
use aptgate_mirror::Sha256;
use std::collections::{BTreeMap, HashMap};

/// Which packages `snapshot filter` keeps. Empty lists do not restrict.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFilter {
    /// Package name globs (`lib*`, `python3-?`); a package must match one.
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub sections: Vec<String>,
    #[serde(default)]
    pub priorities: Vec<String>,
    /// Package name globs to drop.
    #[serde(default)]
    pub excludes: Vec<String>,
}

impl SnapshotFilter {
    fn keeps(&self, s: &Stanza) -> bool {
        let any = |globs: &[String]| globs.iter().any(|g| glob_match(g, s.name));
        (self.names.is_empty() || any(&self.names))
            && (self.sections.is_empty()
                || field(s.text, "Section").is_some_and(|v| {
                    // `contrib/net` is in section `net` too.
                    self.sections
                        .iter()
                        .any(|want| v == want || v.rsplit('/').next() == Some(want.as_str()))
                }))
            && (self.priorities.is_empty()
                || field(s.text, "Priority")
                    .is_some_and(|v| self.priorities.iter().any(|p| p == v)))
            && !any(&self.excludes)
    }
}

/// `*` any run of characters, `?` one character; everything else literal.
pub fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim())
    })
}

/// A suite's index texts being assembled, with the metadata of the suite they came from.
struct Draft {
    meta: SuiteManifest,
    indices: BTreeMap<String, Vec<String>>,
}

impl Channels {
    /// Reuses an input index when the rendered text is identical (keeping upstream's bytes).
    async fn build_manifest(
        &self,
        drafts: BTreeMap<String, Draft>,
        inputs: &[&Manifest],
    ) -> Result<Manifest> {
        let mut known: HashMap<Sha256, IndexFiles> = HashMap::new();
        for m in inputs {
            for sm in m.suites.values() {
                for files in sm.indices.values() {
                    known.insert(files.plain.sha256, files.clone());
                }
            }
        }
        let mut manifest = Manifest::new();
        for (suite, draft) in drafts {
            let mut sm = SuiteManifest {
                indices: BTreeMap::new(),
                ..draft.meta
            };
            for (key, stanzas) in draft.indices {
                let text = index::render(stanzas.iter().map(String::as_str));
                let files = match known.get(&Sha256::of(text.as_bytes())) {
                    Some(files) => files.clone(),
                    None => self.index_files(text, stanzas.len() as u64).await?,
                };
                sm.indices.insert(key, files);
            }
            manifest.suites.insert(suite, sm);
        }
        Ok(manifest)
    }

    async fn stanzas_of(
        &self,
        manifest: &Manifest,
        texts: &mut HashMap<Sha256, std::sync::Arc<String>>,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>> {
        let mut out = BTreeMap::new();
        for (suite, sm) in &manifest.suites {
            let mut indices = BTreeMap::new();
            for (key, files) in &sm.indices {
                let text = self.text(texts, &files.plain).await?;
                let stanzas = index::parse(&text).map_err(|source| ChannelsError::Index {
                    what: format!("{suite} {key}"),
                    source,
                })?;
                indices.insert(
                    key.clone(),
                    stanzas.iter().map(|s| s.text.to_owned()).collect(),
                );
            }
            out.insert(suite.clone(), indices);
        }
        Ok(out)
    }

    /// A new snapshot holding the packages of `base` the filter keeps.
    pub async fn filter_snapshot(
        &self,
        base: &str,
        filter: &SnapshotFilter,
        name: Option<String>,
        actor: &Actor,
    ) -> Result<Snapshot> {
        let base = self.use_snapshot(base).await?;
        let manifest = self.manifest(&base).await?;
        let mut texts = HashMap::new();
        let mut drafts = BTreeMap::new();
        for (suite, indices) in self.stanzas_of(&manifest, &mut texts).await? {
            let kept = indices
                .into_iter()
                .map(|(key, stanzas)| {
                    let kept: Vec<String> = stanzas
                        .into_iter()
                        .filter(|t| {
                            index::parse(t)
                                .is_ok_and(|s| s.first().is_some_and(|s| filter.keeps(s)))
                        })
                        .collect();
                    (key, kept)
                })
                .collect();
            drafts.insert(
                suite.clone(),
                Draft {
                    meta: manifest.suites[&suite].clone(),
                    indices: kept,
                },
            );
        }
        let derived = self.build_manifest(drafts, &[&manifest]).await?;
        let description = format!(
            "{} filtered: names {:?}, sections {:?}, priorities {:?}, excludes {:?}",
            base.id, filter.names, filter.sections, filter.priorities, filter.excludes
        );
        self.save_derived(
            &base.id,
            SnapshotKind::Filter,
            description,
            derived,
            base.sources.clone(),
            name,
            actor,
        )
        .await
    }

    /// One snapshot of several (e.g. main + updates + security): per suite (or all into
    /// `into_suite`) and index, the union; where several hold a package for one architecture,
    /// the highest version wins.
    pub async fn merge_snapshots(
        &self,
        inputs: &[String],
        into_suite: Option<String>,
        name: Option<String>,
        actor: &Actor,
    ) -> Result<Snapshot> {
        if inputs.len() < 2 {
            return Err(ChannelsError::Refused(
                "merge needs at least two snapshots".into(),
            ));
        }
        let mut snapshots = Vec::new();
        let mut manifests = Vec::new();
        for id in inputs {
            let s = self.use_snapshot(id).await?;
            manifests.push(self.manifest(&s).await?);
            snapshots.push(s);
        }
        let mut texts = HashMap::new();
        // suite → key → (name, arch) → (version, stanza)
        type Best = BTreeMap<(String, String), (String, String)>;
        let mut merged: BTreeMap<String, (SuiteManifest, BTreeMap<String, Best>)> = BTreeMap::new();
        for manifest in &manifests {
            for (suite, indices) in self.stanzas_of(manifest, &mut texts).await? {
                let target = into_suite.clone().unwrap_or_else(|| suite.clone());
                let meta = &manifest.suites[&suite];
                let entry = merged.entry(target).or_insert_with(|| {
                    (
                        SuiteManifest {
                            indices: BTreeMap::new(),
                            ..meta.clone()
                        },
                        BTreeMap::new(),
                    )
                });
                union(&mut entry.0.components, &meta.components);
                union(&mut entry.0.architectures, &meta.architectures);
                for (key, stanzas) in indices {
                    let best = entry.1.entry(key).or_default();
                    for text in stanzas {
                        let Some(s) = index::parse(&text).ok().and_then(|v| v.into_iter().next())
                        else {
                            continue;
                        };
                        let k = (s.name.to_owned(), s.architecture.to_owned());
                        let newer = best
                            .get(&k)
                            .is_none_or(|(v, _)| index::compare_versions(s.version, v).is_gt());
                        if newer {
                            let version = s.version.to_owned();
                            best.insert(k, (version, text.clone()));
                        }
                    }
                }
            }
        }
        let drafts = merged
            .into_iter()
            .map(|(suite, (meta, indices))| {
                let indices = indices
                    .into_iter()
                    .map(|(key, best)| (key, best.into_values().map(|(_, t)| t).collect()))
                    .collect();
                (suite, Draft { meta, indices })
            })
            .collect();
        let refs: Vec<&Manifest> = manifests.iter().collect();
        let derived = self.build_manifest(drafts, &refs).await?;
        let mut sources: Vec<String> = snapshots.iter().flat_map(|s| s.sources.clone()).collect();
        sources.sort();
        sources.dedup();
        let ids: Vec<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        self.save_derived(
            "merge",
            SnapshotKind::Merge,
            format!("merge of {}", ids.join(" + ")),
            derived,
            sources,
            name,
            actor,
        )
        .await
    }

    /// `base` plus the named packages from `from` and the dependencies base lacks (like
    /// aptly's `snapshot pull`).
    pub async fn pull_snapshot(
        &self,
        base: &str,
        from: &str,
        packages: &[String],
        name: Option<String>,
        actor: &Actor,
    ) -> Result<Snapshot> {
        let base = self.use_snapshot(base).await?;
        let source = self.use_snapshot(from).await?;
        let (bm, sm) = (self.manifest(&base).await?, self.manifest(&source).await?);
        let (take, found) = self.pull_set(&bm, &sm, packages).await?;
        let missing: Vec<&str> = packages
            .iter()
            .filter(|p| !found.contains(*p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(ChannelsError::Refused(format!(
                "not in snapshot {}: {}",
                source.id,
                missing.join(", ")
            )));
        }
        let derived = self.overlay(&bm, &sm, &take).await?;
        let mut sources = base.sources.clone();
        sources.extend(source.sources.clone());
        sources.sort();
        sources.dedup();
        self.save_derived(
            &base.id,
            SnapshotKind::Pull,
            format!(
                "{} plus {} from {}",
                base.id,
                packages.join(", "),
                source.id
            ),
            derived,
            sources,
            name,
            actor,
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "every derived snapshot records all of these"
    )]
    async fn save_derived(
        &self,
        prefix: &str,
        kind: SnapshotKind,
        description: String,
        manifest: Manifest,
        sources: Vec<String>,
        name: Option<String>,
        actor: &Actor,
    ) -> Result<Snapshot> {
        if let Some(n) = &name {
            check_snapshot_name(n)?;
            if self.catalog().snapshot_by_name(n).await?.is_some() {
                return Err(ChannelsError::Refused(format!(
                    "snapshot name {n:?} is taken"
                )));
            }
        }
        let digest = self.put_json(&manifest).await?;
        // Ids keep the source-derived prefix short and path-safe.
        let prefix: String = prefix
            .split('-')
            .next()
            .unwrap_or("snapshot")
            .chars()
            .take(32)
            .collect();
        let mut tx = self.catalog().begin().await?;
        let mut snapshot = self
            .record_snapshot(&mut tx, &prefix, kind, description, digest, sources)
            .await?;
        if let Some(n) = name {
            tx.name_snapshot(&snapshot.id, &n).await?;
            snapshot.name = Some(n);
        }
        tx.append_audit(&NewAuditEntry {
            at: now(),
            actor: actor.name.clone(),
            action: AuditAction::Snapshot,
            channel: None,
            from_snapshot: None,
            to_snapshot: Some(snapshot.id.clone()),
            comment: actor.comment.clone(),
            summary: Some(
                serde_json::json!({ "kind": kind.as_str(), "packages": manifest.package_count() })
                    .to_string(),
            ),
        })
        .await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    /// Points an entry channel (one without `promotes_from`) at a snapshot — e.g. a merged or
    /// filtered one. Channels that promote from another channel only take promotions.
    pub async fn publish_snapshot(
        &self,
        channel: &str,
        snapshot: &str,
        actor: &Actor,
    ) -> Result<MoveOutcome> {
        let config = self.channel_config(channel).await?;
        if let Some(from) = &config.promotes_from {
            return Err(ChannelsError::Refused(format!(
                "{channel} only takes promotions from {from}\nhint: publish the snapshot to \
                 {from} (or another entry channel) and promote from there"
            )));
        }
        let snapshot = self.use_snapshot(snapshot).await?;
        self.move_to_snapshot(channel, snapshot, actor).await
    }
}

fn union(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

/// Snapshot names: like channel names, `[a-z0-9][a-z0-9._-]{0,63}`.
fn check_snapshot_name(name: &str) -> Result<()> {
    name.parse::<aptgate_config::ChannelName>()
        .map(|_| ())
        .map_err(|e| ChannelsError::Refused(e.to_string().replace("channel name", "snapshot name")))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("lib*", "libfoo1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("python3-?", "python3-a"));
        assert!(!glob_match("python3-?", "python3-ab"));
        assert!(glob_match("*-dev", "libc6-dev"));
        assert!(!glob_match("lib*", "glibc"));
        assert!(glob_match("a*b*c", "aXXbYc"));
    }
}
