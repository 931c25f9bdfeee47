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
            let differ: Vec<&String> = ia
                .keys()
                .chain(ib.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| {
                    ia.get(*k).map(|f| f.plain.sha256) != ib.get(*k).map(|f| f.plain.sha256)
                })
                .collect();
            if differ.is_empty() {
                continue;
            }
            let (tables_a, tables_b) = (self.tables_of(ia).await?, self.tables_of(ib).await?);
            let mut changed: BTreeSet<(&str, &str)> = BTreeSet::new();
            for key in differ {
                let ta = tables_a.iter().find(|t| &t.key == key).map(|t| &*t.table);
                let tb = tables_b.iter().find(|t| &t.key == key).map(|t| &*t.table);
                PackageTable::keys_that_differ(ta, tb, |name, arch| {
                    changed.insert((name, arch));
                });
            }
            for (name, arch) in changed {
                let from = highest(&tables_a, name, arch);
                let to = highest(&tables_b, name, arch);
                if from == to {
                    continue;
                }
                let change = Change {
                    suite: suite.clone(),
                    name: name.to_owned(),
                    architecture: arch.to_owned(),
                    from: from.map(str::to_owned),
                    to: to.map(str::to_owned),
                };
                match (from, to) {
                    (None, Some(_)) => diff.added.push(change),
                    (Some(_), None) => diff.removed.push(change),
                    (Some(f), Some(t)) => match index::compare_versions(f, t) {
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

    async fn tables_of(&self, indices: &BTreeMap<String, IndexFiles>) -> Result<Vec<Indexed>> {
        let mut tables = Vec::with_capacity(indices.len());
        for (key, files) in indices {
            tables.push(Indexed {
                key: key.clone(),
                architecture: key.rsplit("binary-").next().unwrap_or_default().to_owned(),
                table: self.table(files).await?,
            });
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

/// A suite's index table, with its key and the architecture the index is for.
struct Indexed {
    key: String,
    architecture: String,
    table: Arc<PackageTable>,
}

/// The highest version of a package any of the suite's tables lists: looked for first in the
/// indices of its architecture (and `binary-all`; every index for `Architecture: all`), and
/// only if none has it in the others (a repository listing foreign packages).
fn highest<'t>(tables: &'t [Indexed], name: &str, arch: &str) -> Option<&'t str> {
    let own = |t: &&Indexed| arch == "all" || t.architecture == arch || t.architecture == "all";
    let newest = |tables: &mut dyn Iterator<Item = &'t Indexed>| {
        tables
            .flat_map(|t| t.table.find(name, arch))
            .map(|r| r.version)
            .max_by(|x, y| index::compare_versions(x, y))
    };
    newest(&mut tables.iter().filter(own))
        .or_else(|| newest(&mut tables.iter().filter(|t| !own(t))))
}
