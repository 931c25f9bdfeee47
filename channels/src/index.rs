//! `Packages` indices: reading stanzas, rendering derived indices and their compressed forms.
//!
//! A small line scanner rather than a full deb822 parse: sync and promotion run it over whole
//! suites (tens of MB). Each stanza keeps its raw text, so a rendered index repeats upstream's
//! stanzas byte for byte.

use aptgate_mirror::path::PoolPath;
use std::io::Write;

/// One package as a `Packages` index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza<'a> {
    /// The raw stanza, without its trailing blank line.
    pub text: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub architecture: &'a str,
    /// The source package (`Source:` without a version, or the package's own name).
    pub source: &'a str,
    pub filename: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed Packages stanza {index} ({name}): {why}")]
pub struct IndexError {
    pub index: usize,
    pub name: String,
    pub why: String,
}

/// Splits an index into stanzas; every stanza must be well formed (see [`parse_upstream`]).
/// For indices aptgate rendered itself, whose stanzas were all checked on the way in.
pub fn parse(text: &str) -> Result<Vec<Stanza<'_>>, IndexError> {
    stanzas(text).collect()
}

/// An upstream index: the stanzas that can be recorded, and why the others cannot.
#[derive(Debug, Default)]
pub struct Upstream<'a> {
    pub stanzas: Vec<Stanza<'a>>,
    pub refused: Vec<IndexError>,
}

/// Splits an upstream index into stanzas, refusing each one that cannot be verified or used
/// safely — no `Filename`, `Size` or `SHA256`, a field it relies on twice, a `Filename` that
/// is not a clean path inside the repository ([`PoolPath`]) — without refusing the others.
pub fn parse_upstream(text: &str) -> Upstream<'_> {
    let mut out = Upstream::default();
    for stanza in stanzas(text) {
        match stanza {
            Ok(s) => out.stanzas.push(s),
            Err(e) => out.refused.push(e),
        }
    }
    out
}

/// The fields a stanza is read for, matched case-insensitively (as apt matches names).
const FIELDS: [&str; 7] = [
    "Package",
    "Version",
    "Architecture",
    "Source",
    "Filename",
    "Size",
    "SHA256",
];

fn stanzas(text: &str) -> impl Iterator<Item = Result<Stanza<'_>, IndexError>> {
    text.split("\n\n")
        .map(|raw| raw.trim_matches('\n'))
        .filter(|raw| !raw.is_empty())
        .enumerate()
        .map(|(index, raw)| parse_stanza(index, raw))
}

fn parse_stanza(index: usize, raw: &str) -> Result<Stanza<'_>, IndexError> {
    let mut values: [Option<&str>; FIELDS.len()] = [None; FIELDS.len()];
    let mut twice = None;
    for line in raw.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Some(field) = FIELDS.iter().position(|f| f.eq_ignore_ascii_case(key)) else {
            continue;
        };
        if values[field].replace(value.trim()).is_some() {
            twice.get_or_insert(FIELDS[field]);
        }
    }
    let [name, version, architecture, source, filename, size, sha256] =
        values.map(Option::unwrap_or_default);
    let err = |why: String| IndexError {
        index,
        name: name.to_owned(),
        why,
    };
    if let Some(field) = twice {
        return Err(err(format!("{field} appears twice")));
    }
    if name.is_empty() || version.is_empty() || architecture.is_empty() {
        return Err(err("no Package, Version or Architecture".into()));
    }
    if filename.is_empty() || sha256.len() != 64 {
        return Err(err("no Filename or SHA256".into()));
    }
    if !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err("SHA256 is not hexadecimal".into()));
    }
    let source = source.split(' ').next().unwrap_or(source);
    // Package tables keep these fields tab-separated, one package a line.
    let fields = [name, version, architecture, source, filename];
    if fields.iter().any(|f| f.contains(|c: char| c.is_control())) {
        return Err(err(
            "a control character in Package, Version, Architecture, Source or Filename".into(),
        ));
    }
    // The path becomes an upstream URL, a store record and a served path.
    PoolPath::parse(filename).map_err(|e| err(e.to_string()))?;
    let size = size.parse().map_err(|_| err("no Size".into()))?;
    Ok(Stanza {
        text: raw,
        name,
        version,
        architecture,
        source: if source.is_empty() { name } else { source },
        filename,
        size,
        sha256,
    })
}

/// Renders stanzas as an index: each stanza's raw text, separated by blank lines.
pub fn render<'a>(stanzas: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for text in stanzas {
        out.push_str(text);
        out.push_str("\n\n");
    }
    out
}

pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(bytes)?;
    encoder.finish()
}

pub fn xz(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    // Level 1: a rendered index is compressed on every selective promotion; level 6 would
    // take seconds for a full suite and saves little on text this repetitive.
    let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 1);
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// dpkg's ordering of two version strings: `[epoch:]upstream[-revision]`, epochs as numbers,
/// the rest by dpkg's `verrevcmp` (`~` before everything, even the end; letters before other
/// characters; digit runs as numbers). Written out here, not parsed by a crate, because it
/// runs for every changed package of every diff (a regex-based parse cost more than the
/// rest of a promotion) and must be exactly dpkg's (`tests/tests/version_order.rs` checks it
/// against `dpkg --compare-versions`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

/// (epoch, upstream, revision) as dpkg splits them: the epoch before the first `:`, the
/// revision after the last `-` (missing: empty, which compares equal to `0`).
fn split_version(v: &str) -> (u64, &[u8], &[u8]) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream.as_bytes(), revision.as_bytes()),
        None => (epoch, rest.as_bytes(), b""),
    }
}

/// dpkg's `order()`: digits and the end sort as 0, `~` before them, letters by code, other
/// characters after letters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied();
    let digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(at(a, i))) || (j < b.len() && !digit(at(b, j))) {
            let (ac, bc) = (order(at(a, i)), order(at(b, j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == Some(b'0') {
            i += 1;
        }
        while at(b, j) == Some(b'0') {
            j += 1;
        }
        let mut first_diff = std::cmp::Ordering::Equal;
        while digit(at(a, i)) && digit(at(b, j)) {
            if first_diff.is_eq() {
                first_diff = at(a, i).cmp(&at(b, j));
            }
            i += 1;
            j += 1;
        }
        if digit(at(a, i)) {
            return std::cmp::Ordering::Greater;
        }
        if digit(at(b, j)) {
            return std::cmp::Ordering::Less;
        }
        if !first_diff.is_eq() {
            return first_diff;
        }
    }
    std::cmp::Ordering::Equal
}

/// One alternative of a dependency: `name (op version)`, `:arch` qualifiers dropped. Also one
/// entry of `Provides:`, where the only constraint is `(= version)`, the provided version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    pub name: &'a str,
    pub constraint: Option<(&'a str, &'a str)>,
}

impl<'a> Relation<'a> {
    pub fn satisfied_by(&self, version: &str) -> bool {
        let Some((op, wanted)) = self.constraint else {
            return true;
        };
        let ord = compare_versions(version, wanted);
        use std::cmp::Ordering::*;
        match op {
            ">=" => ord != Less,
            "<=" => ord != Greater,
            ">>" | ">" => ord == Greater,
            "<<" | "<" => ord == Less,
            "=" => ord == Equal,
            _ => true,
        }
    }

    /// Whether a package providing `provided` (an entry of its `Provides:`) satisfies this
    /// dependency, as dpkg and apt decide: an unversioned dependency is satisfied by any
    /// provide of its name; a versioned one only by a versioned provide (`name (= V)`) whose
    /// V matches, never by an unversioned provide.
    pub fn satisfied_by_provide(&self, provided: &Relation<'_>) -> bool {
        if self.name != provided.name {
            return false;
        }
        if self.constraint.is_none() {
            return true;
        }
        provided
            .provided_version()
            .is_some_and(|v| self.satisfied_by(v))
    }

    /// The version a `Provides:` entry provides: `V` of `name (= V)`, none when unversioned.
    pub fn provided_version(&self) -> Option<&'a str> {
        match self.constraint {
            Some(("=", version)) if !version.is_empty() => Some(version),
            _ => None,
        }
    }
}

/// The `Depends` and `Pre-Depends` of a stanza: groups of alternatives.
pub fn dependencies<'a>(stanza: &Stanza<'a>) -> Vec<Vec<Relation<'a>>> {
    let mut groups = Vec::new();
    for value in field_values(stanza.text, &["Depends", "Pre-Depends"]) {
        for group in value.split(',') {
            let alternatives: Vec<_> = group
                .split('|')
                .filter_map(|alt| parse_relation(alt.trim()))
                .collect();
            if !alternatives.is_empty() {
                groups.push(alternatives);
            }
        }
    }
    groups
}

/// The `Provides` of a stanza: the virtual packages it provides, each unversioned or with
/// the provided version as an `=` constraint (see [`Relation::provided_version`]).
pub fn provides<'a>(stanza: &Stanza<'a>) -> Vec<Relation<'a>> {
    field_values(stanza.text, &["Provides"])
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|entry| parse_relation(entry.trim()))
        .collect()
}

/// The values of the fields named `names` in a stanza's raw text, in order: everything after
/// the colon, continuation lines included (a relation may be wrapped anywhere, even inside
/// a group of alternatives, so a field is split only once it is whole).
fn field_values<'a>(text: &'a str, names: &[&str]) -> Vec<&'a str> {
    let mut values = Vec::new();
    // Byte range of the value being read.
    let mut current: Option<(usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let line = line.trim_end_matches(['\n', '\r']);
        if line.starts_with([' ', '\t']) {
            if let Some((_, end)) = &mut current {
                *end = start + line.len();
            }
            continue;
        }
        if let Some((from, to)) = current.take() {
            values.push(&text[from..to]);
        }
        if let Some((key, _)) = line.split_once(':') {
            if names.contains(&key) {
                current = Some((start + key.len() + 1, start + line.len()));
            }
        }
    }
    if let Some((from, to)) = current {
        values.push(&text[from..to]);
    }
    values
}

fn parse_relation(text: &str) -> Option<Relation<'_>> {
    let text = text.split('[').next()?.trim();
    let (name, constraint) = match text.split_once('(') {
        Some((name, rest)) => {
            let inner = rest.trim_end_matches(')').trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .unwrap_or(inner.len());
            let (op, version) = inner.split_at(split);
            (name.trim(), Some((op.trim(), version.trim())))
        }
        None => (text, None),
    };
    let name = name.split(':').next()?.trim();
    (!name.is_empty()).then_some(Relation { name, constraint })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn stanza(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}\
             Filename: pool/main/{name}_{version}_amd64.deb\nSize: 10\nSHA256: {SHA}"
        )
    }

    #[test]
    fn parses_and_renders_byte_for_byte() {
        let text = render([
            stanza("a", "1.0", "Source: src-a (1.0-1)\n").as_str(),
            stanza("b", "2.0", "").as_str(),
        ]);
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].source, "src-a");
        assert_eq!(parsed[1].source, "b");
        assert_eq!(parsed[1].size, 10);
        assert_eq!(render(parsed.iter().map(|s| s.text)), text);
    }

    #[test]
    fn versions_order_like_dpkg() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0-0", Equal),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("1.0-1+deb12u1", "1.0-1~bpo12+1", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0+dfsg", "1.0a", Greater),
            ("1.00", "1.0", Equal),
            ("1.10", "1.9", Greater),
            ("2.10-3", "2.12.1-1", Less),
            ("0:1.0", "1.0", Equal),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn refuses_stanzas_without_a_digest() {
        let text = "Package: a\nVersion: 1\nArchitecture: all\nFilename: x\nSize: 1\n";
        assert!(parse(text).is_err());
        let tab = stanza("a", "1\tx", "");
        assert!(parse(&tab).is_err(), "a tab would break the package table");
        let not_hex = stanza("a", "1", "").replace(SHA, &"z".repeat(64));
        assert!(parse(&not_hex).is_err());
    }

    #[test]
    fn upstream_stanzas_are_refused_one_by_one() {
        let climbing = stanza("evil", "1", "").replace(
            "Filename: pool/main/",
            "Filename: pool/main/../../../../tmp/",
        );
        let twice = stanza("twice", "1", "size: 11\n");
        let encoded = stanza("enc", "1", "").replace("pool/main/", "pool/%2e%2e/");
        let text = render([
            stanza("good", "1", "").as_str(),
            &climbing,
            &twice,
            &encoded,
            "Package: nosum\nVersion: 1\nArchitecture: all\nFilename: pool/x.deb\nSize: 1",
            stanza("also-good", "1", "").as_str(),
        ]);
        let parsed = parse_upstream(&text);
        let names: Vec<&str> = parsed.stanzas.iter().map(|s| s.name).collect();
        assert_eq!(names, ["good", "also-good"]);
        let why: Vec<String> = parsed.refused.iter().map(|e| e.to_string()).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why[0].contains("evil") && why[0].contains("'..'"),
            "{why:?}"
        );
        assert!(why[1].contains("Size appears twice"), "{why:?}");
        assert!(why[2].contains("percent-decoded"), "{why:?}");
        assert!(why[3].contains("no Filename or SHA256"), "{why:?}");
        assert!(parse(&text).is_err(), "rendered indices are all or nothing");
    }

    #[test]
    fn reads_dependencies_with_constraints_and_alternatives() {
        let text = stanza(
            "a",
            "1.0",
            "Depends: libc6 (>= 2.36), foo | bar:any,\n baz [amd64]\nPre-Depends: dpkg (>> 1.0)\n",
        );
        let parsed = parse(&text).unwrap();
        let deps = dependencies(&parsed[0]);
        let names: Vec<Vec<&str>> = deps
            .iter()
            .map(|g| g.iter().map(|r| r.name).collect())
            .collect();
        assert_eq!(
            names,
            [vec!["libc6"], vec!["foo", "bar"], vec!["baz"], vec!["dpkg"]]
        );
        assert!(deps[0][0].satisfied_by("2.36-9"));
        assert!(!deps[0][0].satisfied_by("2.35"));
        assert!(!deps[3][0].satisfied_by("1.0"));
        assert!(deps[3][0].satisfied_by("1.0-1"));
    }

    #[test]
    fn a_group_of_alternatives_may_be_wrapped() {
        let text = stanza(
            "a",
            "1.0",
            "Depends: foo (>= 1) |\n bar, baz\nDescription: x\n Depends: not-a-field\n",
        );
        let parsed = parse(&text).unwrap();
        let names: Vec<Vec<&str>> = dependencies(&parsed[0])
            .iter()
            .map(|g| g.iter().map(|r| r.name).collect())
            .collect();
        assert_eq!(names, [vec!["foo", "bar"], vec!["baz"]]);
    }

    #[test]
    fn reads_provides_with_and_without_versions() {
        let text = stanza(
            "tiny-mta",
            "1.0",
            "Provides: mail-transport-agent, libmail (= 2.1-1),\n smtp-server:any\n",
        );
        let parsed = parse(&text).unwrap();
        let read: Vec<(&str, Option<&str>)> = provides(&parsed[0])
            .iter()
            .map(|p| (p.name, p.provided_version()))
            .collect();
        assert_eq!(
            read,
            [
                ("mail-transport-agent", None),
                ("libmail", Some("2.1-1")),
                ("smtp-server", None)
            ]
        );
        let without = stanza("b", "1", "");
        assert!(provides(&parse(&without).unwrap()[0]).is_empty());
    }

    #[test]
    fn versioned_dependencies_need_versioned_provides() {
        let dep = |text| parse_relation(text).unwrap();
        let unversioned = dep("mta");
        let at_least = dep("mta (>= 2)");
        let provides_any = dep("mta");
        let provides_2 = dep("mta (= 2.0-1)");
        let provides_1 = dep("mta (= 1.9)");
        assert!(unversioned.satisfied_by_provide(&provides_any));
        assert!(unversioned.satisfied_by_provide(&provides_2));
        assert!(!at_least.satisfied_by_provide(&provides_any));
        assert!(at_least.satisfied_by_provide(&provides_2));
        assert!(!at_least.satisfied_by_provide(&provides_1));
        assert!(!unversioned.satisfied_by_provide(&dep("other")));
    }
}
