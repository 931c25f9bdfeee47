//! What changes between two snapshots, in dpkg's version ordering.

use crate::error::Result;
use crate::index;
use crate::manifest::*;
use crate::service::*;
use crate::table::PackageTable;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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

impl Channels {
    /// What changes between two manifests, in dpkg's version ordering: per suite, each
    /// package name and architecture at its highest version across the suite's indices.
    /// Only indices whose digests differ are compared — a merge walk of their sorted package
    /// tables — and the suite's other indices are consulted only for the names that changed,
    /// so moving a channel costs a walk over what changed, never a parse.
    pub async fn diff_manifests(&self, a: &Manifest, b: &Manifest) -> Result<Diff> {
        let mut diff = Diff::default();
        let none = BTreeMap::new();
        let suites: BTreeSet<&String> = a.suites.keys().chain(b.suites.keys()).collect();
        for suite in suites {
            let ia = a.suites.get(suite).map_or(&none, |s| &s.indices);
            let ib = b.suites.get(suite).map_or(&none, |s| &s.indices);
            let keys: BTreeSet<&String> = ia.keys().chain(ib.keys()).collect();
            let mut changed: BTreeSet<(String, String)> = BTreeSet::new();
            for key in keys {
                let (fa, fb) = (ia.get(key), ib.get(key));
                if fa.map(|f| f.plain.sha256) == fb.map(|f| f.plain.sha256) {
                    continue;
                }
                let ta = match fa {
                    Some(f) => Some(self.table(f).await?),
                    None => None,
                };
                let tb = match fb {
                    Some(f) => Some(self.table(f).await?),
                    None => None,
                };
                PackageTable::keys_that_differ(ta.as_deref(), tb.as_deref(), |name, arch| {
                    changed.insert((name.to_owned(), arch.to_owned()));
                });
            }
            if changed.is_empty() {
                continue;
            }
            let (tables_a, tables_b) = (self.tables_of(ia).await?, self.tables_of(ib).await?);
            for (name, arch) in changed {
                let from = highest(&tables_a, &name, &arch);
                let to = highest(&tables_b, &name, &arch);
                if from == to {
                    continue;
                }
                let change = Change {
                    suite: suite.clone(),
                    name,
                    architecture: arch,
                    from: from.clone(),
                    to: to.clone(),
                };
                match (from, to) {
                    (None, Some(_)) => diff.added.push(change),
                    (Some(_), None) => diff.removed.push(change),
                    (Some(f), Some(t)) => match index::compare_versions(&f, &t) {
                        Ordering::Less => diff.upgraded.push(change),
                        Ordering::Greater => diff.downgraded.push(change),
                        Ordering::Equal => {}
                    },
                    (None, None) => {}
                }
            }
        }
        Ok(diff)
    }

    async fn tables_of(
        &self,
        indices: &BTreeMap<String, IndexFiles>,
    ) -> Result<Vec<Arc<PackageTable>>> {
        let mut tables = Vec::with_capacity(indices.len());
        for files in indices.values() {
            tables.push(self.table(files).await?);
        }
        Ok(tables)
    }

    pub async fn diff(&self, a: &str, b: &str) -> Result<Diff> {
        let a = self.snapshot(a).await?;
        let b = self.snapshot(b).await?;
        let (ma, mb) = (self.manifest(&a).await?, self.manifest(&b).await?);
        self.diff_manifests(&ma, &mb).await
    }
}

/// The highest version of a package any of the tables lists.
fn highest(tables: &[Arc<PackageTable>], name: &str, arch: &str) -> Option<String> {
    tables
        .iter()
        .flat_map(|t| t.find(name, arch))
        .map(|r| r.version)
        .max_by(|x, y| index::compare_versions(x, y))
        .map(str::to_owned)
}
