//! Reading `Packages` indices for what they promise about pool files.

use crate::digest::Sha256;
use std::io::Read;

/// A pool file as a verified `Packages` index describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolEntry {
    pub sha256: Sha256,
    pub size: u64,
}

/// Decompresses an index named `name` (by its extension) — `Packages`, `.gz`, `.xz`.
pub fn decompress(name: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(bytes).read_to_end(&mut out)?;
    } else if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    } else {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Yields (Filename, entry) for each stanza with `Filename`, `Size` and `SHA256`.
///
/// A deliberately small scanner rather than a full deb822 parse: it runs over every index
/// apt fetches through the mirror (tens of MB for a full Debian suite).
pub fn pool_entries(text: &[u8]) -> Vec<(String, PoolEntry)> {
    let mut out = Vec::new();
    let (mut filename, mut size, mut sha256) = (None, None, None);
    for line in text.split(|b| *b == b'\n').chain(std::iter::once(&b""[..])) {
        if line.is_empty() || line == b"\r" {
            if let (Some(f), Some(size), Some(sha256)) =
                (filename.take(), size.take(), sha256.take())
            {
                out.push((f, PoolEntry { sha256, size }));
            }
            filename = None;
            size = None;
            sha256 = None;
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(v) = line.strip_prefix("Filename:") {
            filename = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("SHA256:") {
            sha256 = Sha256::from_hex(v.trim()).ok();
        }
    }
    out
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
    fn scans_stanzas() {
        let d = Sha256::of(b"x");
        let text = format!(
            "Package: a\nFilename: pool/main/a/a_1_all.deb\nSize: 10\nSHA256: {d}\n\n\
             Package: b\nFilename: pool/main/b/b_1_all.deb\nSize: 20\n\n\
             Package: c\nSHA256: {d}\nSize: 30\nFilename: pool/main/c/c_1_all.deb"
        );
        let entries = pool_entries(text.as_bytes());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "pool/main/a/a_1_all.deb");
        assert_eq!(
            entries[1],
            (
                "pool/main/c/c_1_all.deb".into(),
                PoolEntry {
                    sha256: d,
                    size: 30
                }
            )
        );
    }
}
