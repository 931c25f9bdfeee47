//! What changes between two snapshots, in dpkg's version ordering.

use crate::blobs::*;
use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use std::collections::BTreeMap;

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
    /// (suite, name, arch) → highest version, for the indices of `manifest`.
    pub(crate) async fn versions(
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
}
