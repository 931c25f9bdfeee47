//! Package tables: what one `Packages` index lists, compact and sorted, stored next to the
//! index and named in the manifest.
//!
//! Diffs, retention, garbage collection and `pool/` lookups need only a few fields of each
//! stanza; reading them from a table instead of the index text makes those operations cost
//! a fraction of a parse, and two tables compare with one merge walk.
//!
//! Format 1 (UTF-8 text, one line per package, sorted by the line's bytes, so by name, then
//! architecture, then version string). `offset` and `length` say where the package's stanza
//! is in the index (bytes, without the blank line after it), so a derived index is assembled
//! from slices instead of a parse:
//!
//! ```text
//! aptgate-table 1
//! <name>\t<architecture>\t<version>\t<source>\t<sha256 hex>\t<size>\t<offset>\t<length>\t<Filename>
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
    /// Where the stanza is in the index text (bytes).
    pub offset: u64,
    pub length: u64,
    pub filename: &'a str,
}

/// Tabs per line: nine fields.
const TABS: usize = 8;

/// Where a row's fields lie in the table text.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    tabs: [u32; TABS],
    end: u32,
    size: u64,
    offset: u64,
    length: u64,
}

/// A parsed table: the text and where each row is, plus a filename order built on first use.
#[derive(Debug)]
pub struct PackageTable {
    text: String,
    spans: Vec<Span>,
    by_filename: OnceLock<Vec<u32>>,
}

impl PackageTable {
    /// The table of an index: `stanzas` as `index::parse` found them in `text`.
    pub fn from_stanzas(text: &str, stanzas: &[Stanza<'_>]) -> Self {
        let base = text.as_ptr() as usize;
        let line = |s: &Stanza<'_>| {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                s.name,
                s.architecture,
                s.version,
                s.source,
                s.sha256.to_ascii_lowercase(),
                s.size,
                s.text.as_ptr() as usize - base,
                s.text.len(),
                s.filename
            )
        };
        // Sorted as the lines will be (the tab sorts below every character a field holds),
        // without making every line first.
        let mut order: Vec<&Stanza<'_>> = stanzas.iter().collect();
        order.sort_unstable_by(|a, b| {
            (a.name, a.architecture, a.version, a.source)
                .cmp(&(b.name, b.architecture, b.version, b.source))
                .then_with(|| line(a).cmp(&line(b)))
        });
        let mut text = String::with_capacity(HEADER.len() + stanzas.len() * 160);
        text.push_str(HEADER);
        let mut last = String::new();
        for s in order {
            let l = line(s);
            if l != last {
                text.push_str(&l);
                last = l;
            }
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
            let mut tabs = [0u32; TABS];
            let mut n = 0;
            for (at, b) in line.bytes().enumerate() {
                if b == b'\t' {
                    if n == TABS {
                        return Err(error("more than nine fields"));
                    }
                    tabs[n] = (offset + at) as u32;
                    n += 1;
                }
            }
            if n != TABS {
                return Err(error("fewer than nine fields"));
            }
            let number = |field: usize, what| {
                text[tabs[field - 1] as usize + 1..tabs[field] as usize]
                    .parse::<u64>()
                    .map_err(|_| error(what))
            };
            let size = number(5, "size is not a number")?;
            let stanza_offset = number(6, "offset is not a number")?;
            let length = number(7, "length is not a number")?;
            if tabs[4] - tabs[3] != 65 {
                return Err(error("sha256 is not 64 hex characters"));
            }
            spans.push(Span {
                start: offset as u32,
                tabs,
                end: (offset + line.len()) as u32,
                size,
                offset: stanza_offset,
                length,
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
            offset: s.offset,
            length: s.length,
            filename: field(s.tabs[TABS - 1] + 1, s.end),
        }
    }

    /// A row's name and architecture only (what lookups compare).
    fn key(&self, i: usize) -> (&str, &str) {
        let s = &self.spans[i];
        (
            &self.text[s.start as usize..s.tabs[0] as usize],
            &self.text[s.tabs[0] as usize + 1..s.tabs[1] as usize],
        )
    }

    /// A row's name, architecture, version, source and sha256 as one slice: equal slices are
    /// the same package file, wherever its stanza sits in the index.
    fn identity(&self, i: usize) -> &str {
        let s = &self.spans[i];
        &self.text[s.start as usize..s.tabs[4] as usize]
    }

    /// Calls `changed(name, architecture)` for every package name and architecture whose rows
    /// differ between two tables of the same index (a version added, removed or replaced),
    /// in order, possibly more than once. One walk over both; rows that are the same file on
    /// both sides cost one comparison.
    pub fn keys_that_differ<'t>(
        a: Option<&'t PackageTable>,
        b: Option<&'t PackageTable>,
        mut changed: impl FnMut(&'t str, &'t str),
    ) {
        let (la, lb) = (a.map_or(0, |t| t.len()), b.map_or(0, |t| t.len()));
        let (mut i, mut j) = (0, 0);
        while i < la || j < lb {
            if i < la && j < lb {
                let (ta, tb) = (a.expect("rows"), b.expect("rows"));
                if ta.identity(i) == tb.identity(j) {
                    i += 1;
                    j += 1;
                    continue;
                }
                let (ka, kb) = (ta.key(i), tb.key(j));
                match ka.cmp(&kb) {
                    Ordering::Less => {
                        changed(ka.0, ka.1);
                        i += 1;
                    }
                    Ordering::Greater => {
                        changed(kb.0, kb.1);
                        j += 1;
                    }
                    Ordering::Equal => {
                        changed(ka.0, ka.1);
                        i += 1;
                        j += 1;
                    }
                }
            } else if i < la {
                let k = a.expect("rows").key(i);
                changed(k.0, k.1);
                i += 1;
            } else {
                let k = b.expect("rows").key(j);
                changed(k.0, k.1);
                j += 1;
            }
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.spans.len()).map(|i| self.row(i))
    }

    /// The rows of one package name and architecture (usually one; an index may list
    /// several versions).
    pub fn find(&self, name: &str, architecture: &str) -> impl Iterator<Item = Row<'_>> + '_ {
        let first = partition(self.spans.len(), |i| self.key(i) < (name, architecture));
        let last = partition(self.spans.len(), |i| self.key(i) <= (name, architecture));
        (first..last).map(|i| self.row(i))
    }

    /// Whether any row is a package of this name.
    pub fn has_name(&self, name: &str) -> bool {
        self.named(name).next().is_some()
    }

    /// The rows of packages of this name, every architecture and version.
    pub fn named(&self, name: &str) -> impl Iterator<Item = Row<'_>> + '_ {
        let first = partition(self.spans.len(), |i| self.key(i).0 < name);
        let last = partition(self.spans.len(), |i| self.key(i).0 <= name);
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
    /// Each table with when it was last used and the weight it was charged (a table grows
    /// when its filename order is built, so the charge is remembered, not recomputed).
    tables: HashMap<Sha256, (Arc<PackageTable>, u64, usize)>,
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
        let (table, used, _) = state.tables.get_mut(index)?;
        *used = now;
        Some(table.clone())
    }

    pub fn insert(&self, index: Sha256, table: Arc<PackageTable>) {
        let mut state = self.inner.lock().expect("lock poisoned");
        state.clock += 1;
        let now = state.clock;
        let weight = table.weight();
        if let Some((_, _, charged)) = state.tables.insert(index, (table, now, weight)) {
            state.weight -= charged;
        }
        state.weight += weight;
        while state.weight > self.budget && state.tables.len() > 1 {
            let oldest = state
                .tables
                .iter()
                .filter(|(digest, _)| **digest != index)
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(digest, _)| *digest)
                .expect("more than one table");
            let (_, _, charged) = state.tables.remove(&oldest).expect("present");
            state.weight -= charged;
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
        PackageTable::from_stanzas(&text, &index::parse(&text).unwrap())
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
        assert!(again.has_name("foo") && again.has_name("zlib1g") && again.has_name("foo-bar"));
        assert!(!again.has_name("fo") && !again.has_name("foo-") && !again.has_name("zz"));
        assert_eq!(
            again.find("zlib1g", "amd64").next().unwrap().version,
            "1:1.2.13"
        );
        let hit = again.by_filename("pool/main/foo-bar_2_all.deb").unwrap();
        assert_eq!(hit.name, "foo-bar");
        assert!(again.by_filename("pool/main/nothing.deb").is_none());
    }

    #[test]
    fn keys_that_differ_walks_both_tables_once() {
        let a = table(&[
            stanza("a", "1", "amd64"),
            stanza("b", "1", "amd64"),
            stanza("c", "1", "amd64"),
        ]);
        let b = table(&[
            stanza("a", "1", "amd64"),
            stanza("b", "2", "amd64"),
            stanza("d", "1", "amd64"),
        ]);
        let mut keys = Vec::new();
        PackageTable::keys_that_differ(Some(&a), Some(&b), |n, _| keys.push(n.to_owned()));
        assert_eq!(keys, ["b", "c", "d"]);
        keys.clear();
        PackageTable::keys_that_differ(None, Some(&b), |n, _| keys.push(n.to_owned()));
        assert_eq!(keys, ["a", "b", "d"]);
    }

    #[test]
    fn rows_say_where_their_stanzas_are() {
        let stanzas = [stanza("zlib1g", "1", "amd64"), stanza("foo", "2", "all")];
        let text = index::render(stanzas.iter().map(String::as_str));
        let table = PackageTable::from_stanzas(&text, &index::parse(&text).unwrap());
        for row in table.rows() {
            let at = &text[row.offset as usize..(row.offset + row.length) as usize];
            assert!(
                at.starts_with(&format!("Package: {}\nVersion: {}", row.name, row.version)),
                "{at}"
            );
            assert!(at.ends_with(row.sha256));
        }
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
