//! What the mirror's own records keep alive, for garbage collection: the release files they
//! name, every file those verified Releases list, and the pool files the current `Packages`
//! indices list. A pool record naming anything else is stale (upstream dropped the file).

use crate::digest::Sha256;
use crate::mirror::Mirror;
use crate::packages;
use aptgate_config::SourceName;
use std::collections::HashSet;
use std::io;
use tracing::warn;

/// The mirror's share of the live blobs, by kind.
#[derive(Debug, Default)]
pub struct MirrorRoots {
    /// InRelease, Release, Release.gpg.
    pub releases: HashSet<Sha256>,
    /// Every other file a current verified Release lists (indices, translations, …).
    pub indices: HashSet<Sha256>,
    /// Pool files the current `Packages` indices list and the mirror has a record of.
    pub packages: HashSet<Sha256>,
    /// Pool records whose file no current index lists: (source, path, blob).
    pub stale_pool_records: Vec<(SourceName, String, Sha256)>,
}

impl Mirror {
    /// Reads every source's records and current verified indices.
    pub async fn roots(&self) -> io::Result<MirrorRoots> {
        let mut roots = MirrorRoots::default();
        for config in self.source_configs() {
            let name = &config.name;
            let records = {
                let refs = self.refs.clone();
                let name = name.clone();
                tokio::task::spawn_blocking(move || refs.walk(&name))
                    .await
                    .map_err(io::Error::other)??
            };
            let mut listed: HashSet<Sha256> = HashSet::new();
            let mut suites: HashSet<String> = HashSet::new();
            let mut pool = Vec::new();
            for (path, record) in records {
                // The suite is everything between `dists/` and the file name (`bookworm`,
                // `buster/updates`).
                match path.strip_prefix("dists/").and_then(|p| p.rsplit_once('/')) {
                    Some((suite, "InRelease" | "Release" | "Release.gpg")) => {
                        roots.releases.insert(record.sha256);
                        suites.insert(suite.to_owned());
                    }
                    _ if path.starts_with("pool/") => pool.push((path, record.sha256)),
                    _ => {}
                }
            }
            for suite in suites {
                let (_, source) = self
                    .source(name.as_str())
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let Some(release) = self.load_stored_release(name, source, &suite).await else {
                    continue;
                };
                for (path, (digest, size)) in &release.files {
                    if !self.store().contains(digest) {
                        continue;
                    }
                    roots.indices.insert(*digest);
                    if packages::is_packages_index(path) {
                        let blob = self.store().blob_path(digest);
                        let file_name = path.clone();
                        let cap = release.inflate_cap(path, *size);
                        let scan = tokio::task::spawn_blocking(move || {
                            let bytes = fs_err::read(blob)?;
                            Ok::<_, io::Error>(packages::pool_entries(&packages::decompress(
                                &file_name, &bytes, cap,
                            )?))
                        })
                        .await
                        .map_err(io::Error::other)?;
                        match scan {
                            Ok(scan) => listed.extend(scan.entries.iter().map(|(_, e)| e.sha256)),
                            // Its pool files were never indexed either.
                            Err(e) => warn!(source = %name, index = %path, error = %e,
                                "cannot read a stored index"),
                        }
                    }
                }
            }
            for (path, digest) in pool {
                if listed.contains(&digest) {
                    roots.packages.insert(digest);
                } else {
                    roots.stale_pool_records.push((name.clone(), path, digest));
                }
            }
        }
        Ok(roots)
    }

    /// Deletes a path record (its blob is being collected).
    pub fn forget(&self, source: &SourceName, path: &str) -> io::Result<()> {
        self.refs.remove(source, path)
    }
}
