//! Derived manifests: a base with some packages taken from another manifest (holds,
//! selective promotions, `snapshot pull`) and the dependencies those need.

use crate::blobs::*;
use crate::error::{ChannelsError, Result};
use crate::index::{self, Stanza};
use crate::manifest::*;
use crate::service::*;
use std::collections::{BTreeSet, HashMap, HashSet};

impl Channels {
    /// `base` with, per index, the packages named in `take[suite/key]` replaced by their
    /// stanzas in `other` (absent there: removed). Indices that do not change keep their
    /// blobs; changed ones are rendered and compressed once.
    pub(crate) async fn overlay(
        &self,
        base: &Manifest,
        other: &Manifest,
        take: &HashMap<(String, String), HashSet<String>>,
    ) -> Result<Manifest> {
        let mut texts = Texts::new();
        let mut out = base.clone();
        for ((suite, key), names) in take {
            if names.is_empty() {
                continue;
            }
            let Some(base_files) = base.suites.get(suite).and_then(|s| s.indices.get(key)) else {
                continue;
            };
            let base_text = self.text(&mut texts, &base_files.plain).await?;
            let other_text = match other.suites.get(suite).and_then(|s| s.indices.get(key)) {
                Some(f) => Some(self.text(&mut texts, &f.plain).await?),
                None => None,
            };
            let index_error = |source| ChannelsError::Index {
                what: format!("{suite} {key}"),
                source,
            };
            let base_stanzas = index::parse(&base_text).map_err(index_error)?;
            let other_stanzas = match &other_text {
                Some(t) => index::parse(t).map_err(index_error)?,
                None => Vec::new(),
            };
            let kept = base_stanzas.iter().filter(|s| !names.contains(s.name));
            let taken = other_stanzas.iter().filter(|s| names.contains(s.name));
            let stanzas: Vec<&Stanza> = kept.chain(taken).collect();
            let rendered = index::render(stanzas.iter().map(|s| s.text));
            if rendered.as_bytes() == base_text.as_bytes() {
                continue;
            }
            let files = self.index_files(rendered, stanzas.len() as u64).await?;
            out.suites
                .get_mut(suite)
                .expect("suite exists in base")
                .indices
                .insert(key.clone(), files);
        }
        Ok(out)
    }

    /// The names to take from `source` per index so that `names` and the dependencies the
    /// target lacks come along: within each index, a dependency is satisfied when the
    /// target (after the pull) has a package of that name with a matching version.
    pub(crate) async fn pull_set(
        &self,
        target: &Manifest,
        source: &Manifest,
        names: &[String],
    ) -> Result<(HashMap<(String, String), HashSet<String>>, BTreeSet<String>)> {
        let mut texts = Texts::new();
        let mut take = HashMap::new();
        let mut found = BTreeSet::new();
        for (suite, sm) in &source.suites {
            for (key, files) in &sm.indices {
                let src_text = self.text(&mut texts, &files.plain).await?;
                let src = index::parse(&src_text).map_err(|source| ChannelsError::Index {
                    what: format!("{suite} {key}"),
                    source,
                })?;
                let tgt_text = match target.suites.get(suite).and_then(|s| s.indices.get(key)) {
                    Some(f) => Some(self.text(&mut texts, &f.plain).await?),
                    None => None,
                };
                let tgt = match &tgt_text {
                    Some(t) => index::parse(t).map_err(|source| ChannelsError::Index {
                        what: format!("{suite} {key}"),
                        source,
                    })?,
                    None => Vec::new(),
                };
                let mut by_name: HashMap<&str, Vec<&Stanza>> = HashMap::new();
                for s in &src {
                    by_name.entry(s.name).or_default().push(s);
                }
                // Versions present once the pull is done: target's, replaced by pulled ones.
                let mut present: HashMap<&str, Vec<&str>> = HashMap::new();
                for s in &tgt {
                    present.entry(s.name).or_default().push(s.version);
                }
                let mut pulled: HashSet<String> = HashSet::new();
                let mut queue: Vec<&str> = names
                    .iter()
                    .filter(|n| by_name.contains_key(n.as_str()))
                    .map(String::as_str)
                    .collect();
                while let Some(name) = queue.pop() {
                    if !pulled.insert(name.to_owned()) {
                        continue;
                    }
                    found.insert(name.to_owned());
                    let stanzas = &by_name[name];
                    present.insert(name, stanzas.iter().map(|s| s.version).collect());
                    for s in stanzas {
                        for group in index::dependencies(s) {
                            let satisfied = group.iter().any(|r| {
                                present
                                    .get(r.name)
                                    .is_some_and(|vs| vs.iter().any(|v| r.satisfied_by(v)))
                            });
                            if satisfied {
                                continue;
                            }
                            let candidate = group.iter().find(|r| {
                                by_name
                                    .get(r.name)
                                    .is_some_and(|ss| ss.iter().any(|s| r.satisfied_by(s.version)))
                            });
                            if let Some(r) = candidate {
                                queue.push(r.name);
                            }
                        }
                    }
                }
                if !pulled.is_empty() {
                    take.insert((suite.clone(), key.clone()), pulled);
                }
            }
        }
        Ok((take, found))
    }
}

pub(crate) fn every_index(
    manifest: &Manifest,
    names: &HashSet<String>,
) -> HashMap<(String, String), HashSet<String>> {
    manifest
        .suites
        .iter()
        .flat_map(|(suite, sm)| {
            sm.indices
                .keys()
                .map(move |key| ((suite.clone(), key.clone()), names.clone()))
        })
        .collect()
}
