//! Installed packages fleet-wide, in a compact form: each distinct (name, architecture,
//! version) any host reported gets a number, and an inventory is the sorted list of its
//! numbers. Hosts share most of their packages, so versions are compared against a channel
//! once per distinct package version (not once per host), and the fleet queue over thousands
//! of hosts is a pass over small integers. Filled at upload (the server parses each upload
//! anyway) and, after a restart, from the stored inventories when first needed.

use aptgate_agent::protocol::InstalledPackage;
use std::collections::HashMap;
use std::sync::Arc;

/// Numbers held before everything is dropped and rebuilt as needed (4 bytes each: 64 MiB,
/// some 20,000 distinct inventories of 750 packages).
const MAX_HELD: usize = 16 << 20;

/// One installed package version, as hosts report it.
pub(crate) struct Package {
    pub name: Box<str>,
    pub architecture: Box<str>,
    pub version: Box<str>,
}

#[derive(Default)]
pub(crate) struct Installed {
    packages: Vec<Package>,
    /// `name\tarchitecture\tversion` (no field holds a tab) → number.
    numbers: HashMap<Box<str>, u32>,
    by_digest: HashMap<String, Arc<[u32]>>,
    held: usize,
    /// Rises whenever the numbers are dropped: anything computed per number is then void.
    pub generation: u64,
}

/// The packages dpkg has installed (status ending in `installed`), one version per (name,
/// architecture): the last listed, as a map collected from the list keeps it.
pub(crate) fn installed_only(
    packages: &[InstalledPackage],
) -> impl Iterator<Item = (&str, &str, &str)> {
    let mut newest: HashMap<(&str, &str), &str> = HashMap::new();
    for p in packages
        .iter()
        .filter(|p| p.status.rsplit(' ').next() == Some("installed"))
    {
        newest.insert((&p.name, &p.architecture), &p.version);
    }
    newest.into_iter().map(|((n, a), v)| (n, a, v))
}

impl Installed {
    /// The numbers of inventory `digest`'s installed packages, if known here.
    pub fn get(&self, digest: &str) -> Option<Arc<[u32]>> {
        self.by_digest.get(digest).cloned()
    }

    /// Records inventory `digest`.
    pub fn insert(&mut self, digest: &str, packages: &[InstalledPackage]) {
        if self.by_digest.contains_key(digest) {
            return;
        }
        if self.held + packages.len() > MAX_HELD {
            *self = Self {
                generation: self.generation + 1,
                ..Self::default()
            };
        }
        let mut numbers: Vec<u32> = installed_only(packages)
            .map(|(n, a, v)| self.number(n, a, v))
            .collect();
        numbers.sort_unstable();
        self.held += numbers.len();
        self.by_digest.insert(digest.to_owned(), numbers.into());
    }

    fn number(&mut self, name: &str, architecture: &str, version: &str) -> u32 {
        let key = format!("{name}\t{architecture}\t{version}");
        if let Some(n) = self.numbers.get(key.as_str()) {
            return *n;
        }
        let n = u32::try_from(self.packages.len()).expect("fewer than 2^32 package versions");
        self.packages.push(Package {
            name: name.into(),
            architecture: architecture.into(),
            version: version.into(),
        });
        self.numbers.insert(key.into(), n);
        n
    }

    /// The package numbered `n`.
    pub fn package(&self, n: u32) -> &Package {
        &self.packages[n as usize]
    }

    /// How many distinct package versions are numbered.
    pub fn len(&self) -> usize {
        self.packages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, arch: &str, version: &str, status: &str) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            architecture: arch.into(),
            version: version.into(),
            source: name.into(),
            source_version: version.into(),
            status: status.into(),
        }
    }

    #[test]
    fn hosts_share_numbers_and_only_installed_packages_count() {
        let mut i = Installed::default();
        let ok = "install ok installed";
        i.insert(
            "a",
            &[
                p("bash", "amd64", "5.2-1", ok),
                p("gone", "amd64", "1.0", "deinstall ok config-files"),
            ],
        );
        i.insert(
            "b",
            &[
                p("bash", "amd64", "5.2-1", ok),
                p("zsh", "amd64", "5.9", ok),
            ],
        );
        assert_eq!(i.len(), 2);
        assert_eq!(i.get("a").unwrap().len(), 1);
        let b = i.get("b").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(i.get("a").unwrap()[0], b[0]);
        assert_eq!(&*i.package(b[1]).name, "zsh");
        assert!(i.get("c").is_none());
    }
}
