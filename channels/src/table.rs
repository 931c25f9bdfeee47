//! Package tables: what one `Packages` index lists, compact and sorted, stored next to the
//! index and named in the manifest.
//!
//! Diffs, retention, garbage collection and `pool/` lookups need only a few fields of each
//! stanza; reading them from a table instead of the index text makes those operations cost
//! a fraction of a parse, and two tables compare with one merge walk.
//!
//! Format 1 (UTF-8 text, one line per package, sorted by the line's bytes, so by name, then
//! architecture, then version string):
//!
//! ```text
//! aptgate-table 1
//! <name>\t<architecture>\t<version>\t<source>\t<sha256 hex>\t<size>\t<Filename>
//! ```

use crate::index::Stanza;
use aptgate_mirror::Sha256;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const HEADER: &str = "aptgate-table 1\n";

#[derive(Debug, thiserror::Error)]
#[error("malformed package table, line {line}: {why}")]
pub struct TableError {
    pub line: usize,
    pub why: &'static str,
}

/// One package as a table lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub name: &'a str,
    pub architecture: &'a str,
    pub version: &'a str,
    pub source: &'a str,
    /// Lowercase hex.
    pub sha256: &'a str,
    pub size: u64,
    pub filename: &'a str,
}

/// Where a row's fields lie in the table text.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    /// The offsets of the six tabs.
    tabs: [u32; 6],
    end: u32,
    size: u64,
}

/// A parsed table: the text and where each row is, plus a filename order built on first use.
#[derive(Debug)]
pub struct PackageTable {
    text: String,
    spans: Vec<Span>,
    by_filename: OnceLock<Vec<u32>>,
}

impl PackageTable {
    /// The table of an index's stanzas.
    pub fn from_stanzas(stanzas: &[Stanza<'_>]) -> Self {
        let mut lines: Vec<String> = stanzas
            .iter()
            .map(|s| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    s.name,
                    s.architecture,
                    s.version,
                    s.source,
                    s.sha256.to_ascii_lowercase(),
                    s.size,
                    s.filename
                )
            })
            .collect();
        lines.sort_unstable();
        lines.dedup();
        let mut text =
            String::with_capacity(HEADER.len() + lines.iter().map(String::len).sum::<usize>());
        text.push_str(HEADER);
        for line in lines {
            text.push_str(&line);
        }
        Self::parse(text).expect("a rendered table parses")
    }

    /// Reads a stored table.
    pub fn parse(text: String) -> Result<Self, TableError> {
        let body = text.strip_prefix(HEADER).ok_or(TableError {
            line: 1,
            why: "not an aptgate-table 1",
        })?;
        let mut spans = Vec::with_capacity(body.len() / 120);
        let mut offset = HEADER.len();
        for (i, line) in body.split_terminator('\n').enumerate() {
            let error = |why| TableError { line: i + 2, why };
            let mut tabs = [0u32; 6];
            let mut n = 0;
            for (at, b) in line.bytes().enumerate() {
                if b == b'\t' {
                    if n == 6 {
                        return Err(error("more than seven fields"));
                    }
                    tabs[n] = (offset + at) as u32;
                    n += 1;
                }
            }
            if n != 6 {
                return Err(error("fewer than seven fields"));
            }
            let size_field = &text[tabs[4] as usize + 1..tabs[5] as usize];
            let size = size_field
                .parse()
                .map_err(|_| error("size is not a number"))?;
            if tabs[4] - tabs[3] != 65 {
                return Err(error("sha256 is not 64 hex characters"));
            }
            spans.push(Span {
                start: offset as u32,
                tabs,
                end: (offset + line.len()) as u32,
                size,
            });
            offset += line.len() + 1;
        }
        if offset != text.len() {
            return Err(TableError {
                line: spans.len() + 1,
                why: "last line not terminated",
            });
        }
        Ok(Self {
            text,
            spans,
            by_filename: OnceLock::new(),
        })
    }

    /// The stored form.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes held in memory (for cache accounting).
    pub fn weight(&self) -> usize {
        self.text.len()
            + self.spans.len() * std::mem::size_of::<Span>()
            + self.by_filename.get().map_or(0, |v| v.len() * 4)
    }

    pub fn row(&self, i: usize) -> Row<'_> {
        let s = &self.spans[i];
        let field = |from: u32, to: u32| &self.text[from as usize..to as usize];
        Row {
            name: field(s.start, s.tabs[0]),
            architecture: field(s.tabs[0] + 1, s.tabs[1]),
            version: field(s.tabs[1] + 1, s.tabs[2]),
            source: field(s.tabs[2] + 1, s.tabs[3]),
            sha256: field(s.tabs[3] + 1, s.tabs[4]),
            size: s.size,
            filename: field(s.tabs[5] + 1, s.end),
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.spans.len()).map(|i| self.row(i))
    }

    /// The rows of one package name and architecture (usually one; an index may list
    /// several versions).
    pub fn find(&self, name: &str, architecture: &str) -> impl Iterator<Item = Row<'_>> + '_ {
        let key = |i: usize| {
            let r = self.row(i);
            (r.name, r.architecture)
        };
        let first = partition(self.spans.len(), |i| key(i) < (name, architecture));
        let last = partition(self.spans.len(), |i| key(i) <= (name, architecture));
        (first..last).map(|i| self.row(i))
    }

    /// The row whose `Filename` is `path`.
    pub fn by_filename(&self, path: &str) -> Option<Row<'_>> {
        let order = self.by_filename.get_or_init(|| {
            let mut order: Vec<u32> = (0..self.spans.len() as u32).collect();
            order.sort_unstable_by(|a, b| {
                self.row(*a as usize)
                    .filename
                    .cmp(self.row(*b as usize).filename)
            });
            order
        });
        let at = order
            .binary_search_by(|i| self.row(*i as usize).filename.cmp(path))
            .ok()?;
        Some(self.row(order[at] as usize))
    }

    /// Per (name, architecture), the highest version (dpkg ordering), in table order.
    pub fn newest(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.spans.len() {
                return None;
            }
            let mut best = self.row(i);
            i += 1;
            while i < self.spans.len() {
                let r = self.row(i);
                if (r.name, r.architecture) != (best.name, best.architecture) {
                    break;
                }
                if crate::index::compare_versions(r.version, best.version) == Ordering::Greater {
                    best = r;
                }
                i += 1;
            }
            Some(best)
        })
    }
}

/// Tables in memory, by the digest of the index they describe, least recently used dropped
/// first once they hold more than their budget (a 60k-package suite's tables take ~12 MB).
#[derive(Debug)]
pub struct TableCache {
    budget: usize,
    inner: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    tables: HashMap<Sha256, (Arc<PackageTable>, u64)>,
    weight: usize,
    clock: u64,
}

impl TableCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    pub fn get(&self, index: &Sha256) -> Option<Arc<PackageTable>> {
        let mut state = self.inner.lock().expect("lock poisoned");
        state.clock += 1;
        let now = state.clock;
        let (table, used) = state.tables.get_mut(index)?;
        *used = now;
        Some(table.clone())
    }

    pub fn insert(&self, index: Sha256, table: Arc<PackageTable>) {
        let mut state = self.inner.lock().expect("lock poisoned");
        state.clock += 1;
        let now = state.clock;
        let weight = table.weight();
        if let Some((old, _)) = state.tables.insert(index, (table, now)) {
            state.weight -= old.weight();
        }
        state.weight += weight;
        while state.weight > self.budget && state.tables.len() > 1 {
            let oldest = state
                .tables
                .iter()
                .filter(|(digest, _)| **digest != index)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(digest, _)| *digest)
                .expect("more than one table");
            let (dropped, _) = state.tables.remove(&oldest).expect("present");
            state.weight -= dropped.weight();
        }
    }
}

/// The first index in `0..len` for which `before` is false (`before` must be true, then
/// false, over the range).
fn partition(len: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn stanza(name: &str, version: &str, arch: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Filename: pool/main/{name}_{version}_{arch}.deb\nSize: 10\nSHA256: {SHA}"
        )
    }

    fn table(stanzas: &[String]) -> PackageTable {
        let text = index::render(stanzas.iter().map(String::as_str));
        PackageTable::from_stanzas(&index::parse(&text).unwrap())
    }

    #[test]
    fn sorted_round_trip_and_lookups() {
        let t = table(&[
            stanza("zlib1g", "1:1.2.13", "amd64"),
            stanza("foo", "1.0-1", "amd64"),
            stanza("foo", "1.0-10", "amd64"),
            stanza("foo", "1.0-2", "amd64"),
            stanza("foo-bar", "2", "all"),
            stanza("foo", "1.0-1", "arm64"),
        ]);
        let names: Vec<_> = t
            .rows()
            .map(|r| (r.name, r.architecture, r.version))
            .collect();
        assert_eq!(
            names,
            [
                ("foo", "amd64", "1.0-1"),
                ("foo", "amd64", "1.0-10"),
                ("foo", "amd64", "1.0-2"),
                ("foo", "arm64", "1.0-1"),
                ("foo-bar", "all", "2"),
                ("zlib1g", "amd64", "1:1.2.13"),
            ]
        );
        let again = PackageTable::parse(t.text().to_owned()).unwrap();
        assert_eq!(again.len(), 6);
        assert_eq!(again.row(5).size, 10);
        assert_eq!(again.find("foo", "amd64").count(), 3);
        assert_eq!(again.find("foo", "i386").count(), 0);
        assert_eq!(
            again.find("zlib1g", "amd64").next().unwrap().version,
            "1:1.2.13"
        );
        let newest: Vec<_> = again.newest().map(|r| r.version).collect();
        assert_eq!(newest, ["1.0-10", "1.0-1", "2", "1:1.2.13"]);
        let hit = again.by_filename("pool/main/foo-bar_2_all.deb").unwrap();
        assert_eq!(hit.name, "foo-bar");
        assert!(again.by_filename("pool/main/nothing.deb").is_none());
    }

    #[test]
    fn refuses_damaged_tables() {
        let t = table(&[stanza("a", "1", "all")]);
        assert!(PackageTable::parse("nonsense\n".into()).is_err());
        let cut = t.text().trim_end_matches('\n').to_owned();
        assert!(PackageTable::parse(cut).is_err());
        let short = t.text().replacen(SHA, "abc", 1);
        assert!(PackageTable::parse(short).is_err());
        assert!(PackageTable::parse(HEADER.to_owned()).unwrap().is_empty());
    }
}
