//! Derived manifests: a base with some packages taken from another manifest (holds,
//! selective promotions, `snapshot pull`) and the dependencies those need.

use crate::blobs::read_text;
use crate::error::{ChannelsError, Result};
use crate::index::{self, Relation, Stanza};
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::Store;
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
        let mut out = base.clone();
        for ((suite, key), names) in take {
            let Some(base_files) = base.suites.get(suite).and_then(|s| s.indices.get(key)) else {
                continue;
            };
            let other_files = other.suites.get(suite).and_then(|s| s.indices.get(key));
            // Which stanzas go and which come, from the package tables: the index texts are
            // only sliced, never parsed.
            let base_table = self.table(base_files).await?;
            let mut dropped: HashSet<u64> = HashSet::new();
            for name in names {
                dropped.extend(base_table.named(name).map(|r| r.offset));
            }
            let mut taken: Vec<(u64, u64)> = Vec::new();
            if let Some(f) = other_files {
                let other_table = self.table(f).await?;
                for name in names {
                    taken.extend(other_table.named(name).map(|r| (r.offset, r.length)));
                }
            }
            if dropped.is_empty() && taken.is_empty() {
                continue;
            }
            let mut kept: Vec<(u64, u64)> = base_table
                .rows()
                .filter(|r| !dropped.contains(&r.offset))
                .map(|r| (r.offset, r.length))
                .collect();
            kept.sort_unstable();
            drop(base_table);
            taken.sort_unstable();
            let packages = (kept.len() + taken.len()) as u64;
            // Assembled on one blocking thread: a full suite's index is tens of MB.
            let store = self.store().clone();
            let (base_blob, other_blob) = (base_files.plain, other_files.map(|f| f.plain));
            let text = tokio::task::spawn_blocking(move || -> Result<String> {
                let base_text = read_text(&store, &base_blob)?;
                let mut out = String::with_capacity(base_text.len());
                let mut push = |stanza: &str| {
                    out.push_str(stanza);
                    out.push_str("\n\n");
                };
                for (offset, length) in kept {
                    push(slice(&base_text, offset, length, &base_blob)?);
                }
                if let Some(other_blob) = other_blob {
                    for stanza in read_ranges(&store, &other_blob, &taken)? {
                        push(&stanza);
                    }
                }
                Ok(out)
            })
            .await
            .expect("assembling an index does not panic")?;
            let files = self.index_files(text, packages).await?;
            out.suites
                .get_mut(suite)
                .expect("suite exists in base")
                .indices
                .insert(key.clone(), files);
        }
        Ok(out)
    }

    /// The names to take from `source` per index so that `names` and the dependencies the
    /// target lacks come along (see [`pull_names`] for how dependencies resolve), and the
    /// names found and taken, requested or not.
    pub(crate) async fn pull_set(
        &self,
        target: &Manifest,
        source: &Manifest,
        names: &[String],
    ) -> Result<(HashMap<(String, String), HashSet<String>>, BTreeSet<String>)> {
        let mut take = HashMap::new();
        let mut found = BTreeSet::new();
        for (suite, sm) in &source.suites {
            for (key, files) in &sm.indices {
                // Only indices that have a requested package can pull anything.
                let table = self.table(files).await?;
                if !names.iter().any(|n| table.has_name(n)) {
                    continue;
                }
                drop(table);
                // One index at a time, on one blocking thread: a full suite's index texts
                // are tens of MB each.
                let (store, what) = (self.store().clone(), format!("{suite} {key}"));
                let src_blob = files.plain;
                let tgt_blob = target
                    .suites
                    .get(suite)
                    .and_then(|s| s.indices.get(key))
                    .map(|f| f.plain);
                let names = names.to_vec();
                let pulled = tokio::task::spawn_blocking(move || -> Result<HashSet<String>> {
                    let src_text = read_text(&store, &src_blob)?;
                    let tgt_text = tgt_blob.map(|b| read_text(&store, &b)).transpose()?;
                    let index_error = |source| ChannelsError::Index {
                        what: what.clone(),
                        source,
                    };
                    let src = index::parse(&src_text).map_err(index_error)?;
                    let tgt = match &tgt_text {
                        Some(t) => index::parse(t).map_err(index_error)?,
                        None => Vec::new(),
                    };
                    Ok(pull_names(&tgt, &src, &names))
                })
                .await
                .expect("resolving dependencies does not panic")?;
                found.extend(pulled.iter().cloned());
                if !pulled.is_empty() {
                    take.insert((suite.clone(), key.clone()), pulled);
                }
            }
        }
        Ok((take, found))
    }
}

/// A table's slice of an index text, checked to lie inside it.
fn slice<'t>(text: &'t str, offset: u64, length: u64, blob: &BlobRef) -> Result<&'t str> {
    let (start, end) = (offset as usize, (offset + length) as usize);
    text.get(start..end)
        .ok_or_else(|| ChannelsError::CorruptBlob {
            what: "package table",
            digest: blob.sha256.to_hex(),
            reason: format!("stanza at {start}..{end} is outside its index"),
        })
}

/// Reads stanzas by (offset, length) from a stored index without reading all of it.
fn read_ranges(store: &Store, blob: &BlobRef, ranges: &[(u64, u64)]) -> Result<Vec<String>> {
    use std::os::unix::fs::FileExt as _;
    let corrupt = |reason: String| ChannelsError::CorruptBlob {
        what: "index",
        digest: blob.sha256.to_hex(),
        reason,
    };
    let file =
        fs_err::File::open(store.blob_path(&blob.sha256)).map_err(|e| corrupt(e.to_string()))?;
    ranges
        .iter()
        .map(|&(offset, length)| {
            let mut bytes = vec![0; length as usize];
            file.file()
                .read_exact_at(&mut bytes, offset)
                .map_err(|e| corrupt(e.to_string()))?;
            String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))
        })
        .collect()
}

/// Within one index: the names to take from `source` so that `names` (those it has) and the
/// dependencies the target lacks come along.
///
/// A dependency group (`a | b`) is satisfied when the target, as it will be after the pull,
/// satisfies any of its alternatives, through a package of that name with a matching
/// version or through a `Provides:` ([`Relation::satisfied_by_provide`]): then nothing is
/// pulled for it, whichever alternative that is. Otherwise the first alternative, in order,
/// that `source` can satisfy is pulled ([`Packages::resolve`]). Pulled packages' own
/// dependencies are followed the same way; unresolvable groups are left to apt to report.
fn pull_names<'a>(
    target: &[Stanza<'a>],
    source: &[Stanza<'a>],
    names: &[String],
) -> HashSet<String> {
    let available = Packages::new(source);
    let mut present = Packages::new(target);
    let mut pulled: HashSet<&'a str> = HashSet::new();
    // Names whose dependencies are still to be looked at. A pulled package is present from
    // the moment it is chosen, and every requested one before any dependency is looked at:
    // `a | b` with `b` requested too pulls no `a`.
    let mut queue: Vec<&'a str> = Vec::new();
    for name in names.iter().filter_map(|n| available.name(n)) {
        if pulled.insert(name) {
            present.replace(name, &available.real[name]);
            queue.push(name);
        }
    }
    while let Some(name) = queue.pop() {
        for stanza in &available.real[name] {
            for group in index::dependencies(stanza) {
                if group.iter().any(|r| present.satisfies(r)) {
                    continue;
                }
                let Some(dep) = group.iter().find_map(|r| available.resolve(r)) else {
                    continue;
                };
                if pulled.insert(dep) {
                    present.replace(dep, &available.real[dep]);
                    queue.push(dep);
                }
            }
        }
    }
    pulled.into_iter().map(str::to_owned).collect()
}

/// The packages of one index by name, and the virtual packages they provide.
struct Packages<'s, 'a> {
    real: HashMap<&'a str, Vec<&'s Stanza<'a>>>,
    /// Virtual name → each provider's name and `Provides:` entry.
    provided: HashMap<&'a str, Vec<(&'a str, Relation<'a>)>>,
}

impl<'s, 'a> Packages<'s, 'a> {
    fn new(stanzas: &'s [Stanza<'a>]) -> Self {
        let mut packages = Packages {
            real: HashMap::new(),
            provided: HashMap::new(),
        };
        for stanza in stanzas {
            packages.add(stanza);
        }
        packages
    }

    fn add(&mut self, stanza: &'s Stanza<'a>) {
        self.real.entry(stanza.name).or_default().push(stanza);
        for entry in index::provides(stanza) {
            self.provided
                .entry(entry.name)
                .or_default()
                .push((stanza.name, entry));
        }
    }

    /// `name` as this index spells it, if it has a package so named.
    fn name(&self, name: &str) -> Option<&'a str> {
        self.real.get_key_value(name).map(|(k, _)| *k)
    }

    /// Every version of `name`, and what those provide, replaced by `stanzas`.
    fn replace(&mut self, name: &str, stanzas: &[&'s Stanza<'a>]) {
        for old in self.real.remove(name).unwrap_or_default() {
            for entry in index::provides(old) {
                if let Some(providers) = self.provided.get_mut(entry.name) {
                    providers.retain(|(provider, _)| *provider != name);
                }
            }
        }
        for stanza in stanzas {
            self.add(stanza);
        }
    }

    /// Whether a package here satisfies `relation`, by name or by what it provides.
    fn satisfies(&self, relation: &Relation<'_>) -> bool {
        let by_name = self
            .real
            .get(relation.name)
            .is_some_and(|stanzas| stanzas.iter().any(|s| relation.satisfied_by(s.version)));
        by_name
            || self.provided.get(relation.name).is_some_and(|providers| {
                providers
                    .iter()
                    .any(|(_, entry)| relation.satisfied_by_provide(entry))
            })
    }

    /// The package to take to satisfy `relation`: the one of that name if a version matches,
    /// else a provider that satisfies it. Among several providers the rule is the highest
    /// provided version (an unversioned provide ranks below any version), ties going to the
    /// alphabetically first provider name: apt would weigh its own preferences, this only has
    /// to be deterministic, and a target that already has some provider keeps it (the
    /// dependency is then satisfied and nothing is taken).
    fn resolve(&self, relation: &Relation<'_>) -> Option<&'a str> {
        if let Some((name, stanzas)) = self.real.get_key_value(relation.name) {
            if stanzas.iter().any(|s| relation.satisfied_by(s.version)) {
                return Some(*name);
            }
        }
        self.provided
            .get(relation.name)?
            .iter()
            .filter(|(_, entry)| relation.satisfied_by_provide(entry))
            .max_by(|(a, a_entry), (b, b_entry)| {
                let versions = match (a_entry.provided_version(), b_entry.provided_version()) {
                    (Some(x), Some(y)) => index::compare_versions(x, y),
                    (x, y) => x.is_some().cmp(&y.is_some()),
                };
                versions.then_with(|| b.cmp(a))
            })
            .map(|(name, _)| *name)
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// An index of `(name, version, extra fields)`.
    fn index(packages: &[(&str, &str, &str)]) -> String {
        let stanzas: Vec<String> = packages
            .iter()
            .map(|(name, version, extra)| {
                format!(
                    "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}\
                     Filename: pool/main/{name}_{version}_amd64.deb\nSize: 10\nSHA256: {SHA}"
                )
            })
            .collect();
        index::render(stanzas.iter().map(String::as_str))
    }

    /// The names `pull_names` takes, sorted.
    fn pull(target: &str, source: &str, names: &[&str]) -> Vec<String> {
        let (target, source) = (index::parse(target).unwrap(), index::parse(source).unwrap());
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut pulled: Vec<String> = pull_names(&target, &source, &names).into_iter().collect();
        pulled.sort();
        pulled
    }

    #[test]
    fn a_virtual_dependency_pulls_a_provider() {
        let source = index(&[
            ("mail-reader", "1", "Depends: mail-transport-agent\n"),
            (
                "tiny-mta",
                "1",
                "Provides: mail-transport-agent\nDepends: libtiny\n",
            ),
            ("libtiny", "1", ""),
        ]);
        assert_eq!(
            pull("", &source, &["mail-reader"]),
            ["libtiny", "mail-reader", "tiny-mta"],
            "the provider and its own dependency"
        );
        // A target that has some provider keeps it.
        let target = index(&[("big-mta", "1", "Provides: mail-transport-agent\n")]);
        assert_eq!(pull(&target, &source, &["mail-reader"]), ["mail-reader"]);
    }

    #[test]
    fn versioned_dependencies_need_a_versioned_provide() {
        let source = index(&[
            ("app", "1", "Depends: libjson (>= 2)\n"),
            ("json-old", "1", "Provides: libjson (= 1.5)\n"),
            ("json-any", "1", "Provides: libjson\n"),
            ("json-c", "3", "Provides: libjson (= 2.1)\n"),
        ]);
        assert_eq!(pull("", &source, &["app"]), ["app", "json-c"]);
        // The target's unversioned provide does not satisfy it either.
        let target = index(&[("json-any", "1", "Provides: libjson\n")]);
        assert_eq!(pull(&target, &source, &["app"]), ["app", "json-c"]);
        let target = index(&[("json-b", "1", "Provides: libjson (= 2.0)\n")]);
        assert_eq!(pull(&target, &source, &["app"]), ["app"]);
    }

    #[test]
    fn among_providers_the_highest_provided_version_then_the_first_name() {
        let source = index(&[
            ("app", "1", "Depends: virt\n"),
            ("zz", "1", "Provides: virt (= 2)\n"),
            ("aa", "9", "Provides: virt (= 1)\n"),
            ("mm", "1", "Provides: virt (= 2)\n"),
            ("bb", "1", "Provides: virt\n"),
        ]);
        assert_eq!(pull("", &source, &["app"]), ["app", "mm"]);
        let source = index(&[
            ("app", "1", "Depends: virt\n"),
            ("zz", "1", "Provides: virt\n"),
            ("bb", "1", "Provides: virt\n"),
        ]);
        assert_eq!(pull("", &source, &["app"]), ["app", "bb"]);
        // A package of the dependency's name wins over providers.
        let source = index(&[
            ("app", "1", "Depends: virt\n"),
            ("aa", "1", "Provides: virt (= 5)\n"),
            ("virt", "1", ""),
        ]);
        assert_eq!(pull("", &source, &["app"]), ["app", "virt"]);
    }

    #[test]
    fn alternatives_keep_what_the_target_has_else_take_the_first_that_resolves() {
        let source = index(&[
            (
                "web-app",
                "1",
                "Depends: httpd-x (>= 2) | httpd-a | httpd-b\n",
            ),
            ("httpd-x", "1", ""),
            ("httpd-a", "1", ""),
            ("httpd-b", "1", ""),
        ]);
        // httpd-x is too old, so httpd-a is the first that resolves.
        assert_eq!(pull("", &source, &["web-app"]), ["httpd-a", "web-app"]);
        let target = index(&[("httpd-b", "1", "")]);
        assert_eq!(pull(&target, &source, &["web-app"]), ["web-app"]);
        // Also when the satisfying alternative is a virtual package the target provides.
        let target = index(&[("other-httpd", "1", "Provides: httpd-b\n")]);
        assert_eq!(pull(&target, &source, &["web-app"]), ["web-app"]);
        // A requested package satisfies another's alternatives.
        assert_eq!(
            pull("", &source, &["web-app", "httpd-b"]),
            ["httpd-b", "web-app"]
        );
    }

    #[test]
    fn a_pulled_version_replaces_what_the_target_provided() {
        // The target's mta 1 provides the virtual package; mta 2 no longer does.
        let target = index(&[("mta", "1", "Provides: smtp\n")]);
        let source = index(&[
            ("mta", "2", ""),
            ("mailer", "1", "Depends: smtp\n"),
            ("smtpd", "1", "Provides: smtp\n"),
        ]);
        assert_eq!(
            pull(&target, &source, &["mta", "mailer"]),
            ["mailer", "mta", "smtpd"]
        );
        assert_eq!(pull(&target, &source, &["mailer"]), ["mailer"]);
    }

    #[test]
    fn missing_names_and_unresolvable_dependencies_are_skipped() {
        let source = index(&[("app", "1", "Depends: nowhere | virt (>= 1)\n")]);
        assert_eq!(pull("", &source, &["app", "ghost"]), ["app"]);
    }
}
