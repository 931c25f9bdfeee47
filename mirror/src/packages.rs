//! Reading `Packages` indices for what they promise about pool files.

use crate::digest::Sha256;
use crate::path::PoolPath;
use std::io::Read;

/// A pool file as a verified `Packages` index describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolEntry {
    pub sha256: Sha256,
    pub size: u64,
}

/// The most an index without a listed uncompressed size may inflate to, per compressed byte…
const INFLATE_RATIO: u64 = 64;
/// …but never less than this (small indices compress better than large ones)…
const INFLATE_FLOOR: u64 = 64 << 20;
/// …nor more than this, whatever the Release says: 1 GiB, over 20 times Debian's largest
/// `Packages` today.
pub const INFLATE_CEILING: u64 = 1 << 30;

/// How far a compressed index of `compressed` bytes may inflate: the size the signed Release
/// lists for its uncompressed form when it lists one, else a generous multiple of its own
/// size; never past [`INFLATE_CEILING`].
pub fn inflate_cap(listed_uncompressed: Option<u64>, compressed: u64) -> u64 {
    listed_uncompressed
        .unwrap_or_else(|| compressed.saturating_mul(INFLATE_RATIO).max(INFLATE_FLOOR))
        .min(INFLATE_CEILING)
}

/// Decompresses an index named `name` (by its extension) — `Packages`, `.gz`, `.xz` — and
/// refuses to produce more than `cap` bytes (a decompression bomb is a few KB that inflates
/// to gigabytes; a signature over it proves nothing about its owner's intent).
pub fn decompress(name: &str, bytes: &[u8], cap: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(cap as usize));
    let reader: Box<dyn Read + '_> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(bytes))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    reader.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{name} inflates past {cap} bytes, more than its Release allows"),
        ));
    }
    Ok(out)
}

/// The name of the uncompressed form of a compressed index (`…/Packages.xz` → `…/Packages`).
pub fn uncompressed_name(name: &str) -> Option<&str> {
    name.strip_suffix(".xz")
        .or_else(|| name.strip_suffix(".gz"))
}

/// What a `Packages` index promises: the pool files it lists, and the stanzas refused.
#[derive(Debug, Default)]
pub struct PoolEntries {
    pub entries: Vec<(PoolPath, PoolEntry)>,
    pub refused: Vec<RefusedStanza>,
}

/// A stanza naming a file that cannot be checked or cannot be fetched safely: never indexed,
/// so its file is never fetched, recorded or served as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedStanza {
    /// The `Filename:` as written (lossily decoded), or empty.
    pub filename: String,
    pub why: String,
}

/// The fields the scanner reads, matched case-insensitively as apt matches field names.
const FIELDS: [&str; 3] = ["Filename", "Size", "SHA256"];

/// Scans every stanza naming a `Filename`: indexed when it also has a `Size` and a `SHA256`,
/// each once, well formed, and a path inside the repository (see [`PoolPath`]); refused
/// otherwise. Stanzas without `Filename` name no pool file and are skipped.
///
/// A deliberately small scanner rather than a full deb822 parse: it runs over every index
/// apt fetches through the mirror (tens of MB for a full Debian suite). Lines end at LF, a
/// trailing CR is dropped, and a line of only whitespace ends a stanza, as in apt.
pub fn pool_entries(text: &[u8]) -> PoolEntries {
    let mut out = PoolEntries::default();
    let mut stanza: [Option<&[u8]>; 3] = [None; 3];
    let mut problem: Option<String> = None;
    for line in text.split(|b| *b == b'\n').chain(std::iter::once(&b""[..])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            if stanza.iter().any(Option::is_some) || problem.is_some() {
                finish_stanza(std::mem::take(&mut stanza), problem.take(), &mut out);
            }
            continue;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        let Some(field) = FIELDS
            .iter()
            .position(|f| f.as_bytes().eq_ignore_ascii_case(key))
        else {
            continue;
        };
        if stanza[field].is_some() {
            problem.get_or_insert_with(|| format!("{} appears twice", FIELDS[field]));
        }
        stanza[field] = Some(value.trim_ascii());
    }
    out
}

fn finish_stanza(fields: [Option<&[u8]>; 3], problem: Option<String>, out: &mut PoolEntries) {
    let [filename, size, sha256] = fields;
    let Some(filename) = filename else {
        // Not a pool file (or a stanza whose other fields repeat): nothing to fetch.
        return;
    };
    let lossy = String::from_utf8_lossy(filename).into_owned();
    let refuse = |why: String| RefusedStanza {
        filename: lossy.clone(),
        why,
    };
    let entry = || -> Result<(PoolPath, PoolEntry), String> {
        if let Some(problem) = problem {
            return Err(problem);
        }
        let filename = std::str::from_utf8(filename).map_err(|_| "Filename is not UTF-8")?;
        let path = PoolPath::parse(filename).map_err(|e| e.to_string())?;
        let size = size.ok_or("no Size")?;
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("Size is not a number")?;
        let sha256 = sha256.ok_or("no SHA256")?;
        let sha256 = std::str::from_utf8(sha256)
            .ok()
            .and_then(|s| Sha256::from_hex(s).ok())
            .ok_or("SHA256 is not 64 hexadecimal digits")?;
        Ok((path, PoolEntry { sha256, size }))
    };
    match entry() {
        Ok(entry) => out.entries.push(entry),
        Err(why) => out.refused.push(refuse(why)),
    }
}

/// Whether a path below `dists/<suite>/` is a binary `Packages` index.
pub fn is_packages_index(rest: &str) -> bool {
    let name = rest.rsplit('/').next().unwrap_or(rest);
    matches!(name, "Packages" | "Packages.gz" | "Packages.xz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_stops_at_the_cap() {
        use std::io::Write as _;
        let zeros = vec![0u8; 10 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let gz = gz.finish().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&zeros).unwrap();
        let xz = xz.finish().unwrap();
        for (name, bytes) in [("Packages.gz", &gz), ("Packages.xz", &xz)] {
            assert!(bytes.len() < 64 << 10, "{name}: a bomb is small");
            let err = decompress(name, bytes, 1 << 20).unwrap_err();
            assert!(err.to_string().contains("inflates past"), "{err}");
            assert_eq!(decompress(name, bytes, 10 << 20).unwrap().len(), 10 << 20);
        }
        assert!(decompress("Packages", &zeros, 100).is_err());
        assert_eq!(inflate_cap(Some(1234), 10), 1234);
        assert_eq!(inflate_cap(None, 10), INFLATE_FLOOR);
        assert_eq!(inflate_cap(None, 2 << 20), 128 << 20);
        assert_eq!(inflate_cap(None, 100 << 20), INFLATE_CEILING);
        assert_eq!(inflate_cap(Some(u64::MAX), 10), INFLATE_CEILING);
    }

    #[test]
    fn scans_stanzas() {
        let d = Sha256::of(b"x");
        let text = format!(
            "Package: a\nFilename: pool/main/a/a_1_all.deb\nSize: 10\nSHA256: {d}\n\n\
             Package: b\nFilename: pool/main/b/b_1_all.deb\nSize: 20\n\n\
             Package: c\nSHA256: {d}\nSize: 30\nFilename: pool/main/c/c_1_all.deb"
        );
        let scan = pool_entries(text.as_bytes());
        assert_eq!(scan.entries.len(), 2);
        assert_eq!(scan.entries[0].0.as_str(), "pool/main/a/a_1_all.deb");
        assert_eq!(scan.entries[1].0.as_str(), "pool/main/c/c_1_all.deb");
        assert_eq!(
            scan.entries[1].1,
            PoolEntry {
                sha256: d,
                size: 30
            }
        );
        assert_eq!(
            scan.refused,
            [RefusedStanza {
                filename: "pool/main/b/b_1_all.deb".into(),
                why: "no SHA256".into()
            }]
        );
    }

    #[test]
    fn refuses_stanzas_that_cannot_be_checked_or_fetched_safely() {
        let d = Sha256::of(b"x");
        let stanza = |filename: &str, extra: &str| {
            format!("Package: p\nFilename: {filename}\nSize: 1\nSHA256: {d}\n{extra}")
        };
        for (text, why) in [
            (stanza("pool/main/../../../etc/x", ""), "'..'"),
            (stanza("/etc/passwd", ""), "empty segment"),
            (stanza("pool/%2e%2e/%2e%2e/x", ""), "percent-decoded"),
            (stanza("pool/a\\b", ""), "backslash"),
            (stanza("pool/a\0b", ""), "control"),
            (stanza("pool/a.deb", "Size: 2\n"), "Size appears twice"),
            (
                stanza("pool/a.deb", "filename: pool/b.deb\n"),
                "Filename appears twice",
            ),
            (
                stanza("pool/a.deb", "").replace("Size: 1", "Size: x"),
                "not a number",
            ),
            (
                stanza("pool/a.deb", "").replace(&d.to_hex(), "zz"),
                "hexadecimal",
            ),
        ] {
            let scan = pool_entries(text.as_bytes());
            assert!(scan.entries.is_empty(), "{text:?}");
            assert_eq!(scan.refused.len(), 1, "{text:?}");
            assert!(
                scan.refused[0].why.contains(why),
                "{text:?}: {:?}",
                scan.refused
            );
        }
        let text = stanza("pool/a", "");
        let at = text.find("pool/a").unwrap() + 5;
        let mut latin1 = text.into_bytes();
        latin1.splice(at..at, [0xe9]);
        assert_eq!(pool_entries(&latin1).refused.len(), 1);
    }

    #[test]
    fn reads_crlf_and_field_names_in_any_case() {
        let d = Sha256::of(b"x");
        let text = format!(
            "Package: a\r\nFILENAME: pool/a.deb\r\nsize: 3\r\nSha256: {d}\r\n \t\r\n\
             Package: b\r\nFilename: pool/b.deb\r\nSize: 4\r\nSHA256: {d}\r\n"
        );
        let scan = pool_entries(text.as_bytes());
        assert!(scan.refused.is_empty(), "{:?}", scan.refused);
        let paths: Vec<&str> = scan.entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["pool/a.deb", "pool/b.deb"]);
    }
}
