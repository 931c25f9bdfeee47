//! Request paths inside a source, validated so that nothing can leave the tree.

use serde::Deserialize;
use std::fmt;

/// A relative path inside an upstream repository, e.g. `dists/stable/InRelease` or
/// `pool/main/h/hello/hello_1.0_amd64.deb`.
///
/// Parsed from the (already percent-decoded) URL path: `%2e%2e` arrives here as `..` and is
/// refused like any other `.`/`..` segment, as are empty segments (`//`), backslashes, NUL and
/// other control characters, and paths over 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct MirrorPath(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid path {path:?}: {why}{}", if *.decoded { " (once percent-decoded)" } else { "" })]
pub struct InvalidPath {
    pub path: String,
    pub why: &'static str,
    /// Whether the path became invalid only once percent-decoded.
    pub decoded: bool,
}

const MAX_LEN: usize = 1024;

impl MirrorPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl TryFrom<String> for MirrorPath {
    type Error = InvalidPath;
    fn try_from(path: String) -> Result<Self, Self::Error> {
        match problem(&path) {
            Some(why) => Err(InvalidPath {
                path,
                why,
                decoded: false,
            }),
            None => Ok(Self(path)),
        }
    }
}

/// Why `path` is not a clean relative path inside a repository, if it is not.
fn problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("empty path")
    } else if path.len() > MAX_LEN {
        Some("longer than 1024 bytes")
    } else if path.contains('\\') {
        Some("backslashes are not allowed")
    } else if path.chars().any(|c| c.is_control()) {
        Some("control characters are not allowed")
    } else if path.split('/').any(|s| s.is_empty()) {
        Some("empty segment (leading, trailing or double '/')")
    } else if path.split('/').any(|s| s == "." || s == "..") {
        Some("'.' and '..' segments are not allowed")
    } else {
        None
    }
}

/// A file path an upstream index names — the `Filename:` of a `Packages` stanza — exactly as
/// the signed index wrote it: the identity of a pool file, and (percent-encoded once more, as
/// apt does) the path asked of upstream.
///
/// A signature only proves who wrote a path, not that it is safe: it is checked like a
/// [`MirrorPath`] both as written and after percent-decoding (`pool/..%2f..%2fx`), and must
/// decode to UTF-8. The only way to make one is [`PoolPath::parse`], so every use of an
/// index's path — a store record, an upstream URL, a snapshot row — went through the check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolPath(String);

/// Characters percent-encoded in a path asked of upstream: what cannot stand in a URL path,
/// `%` itself (a `Filename:` may hold `%3a`, and upstream's file is named so), and `+`, `~`
/// and space, which apt encodes too (S3-style servers read `+` as a space).
const UPSTREAM_ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'~');

impl PoolPath {
    pub fn parse(raw: &str) -> Result<Self, InvalidPath> {
        let invalid = |why, decoded| InvalidPath {
            path: raw.to_owned(),
            why,
            decoded,
        };
        if let Some(why) = problem(raw) {
            return Err(invalid(why, false));
        }
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| invalid("not UTF-8", true))?;
        match problem(&decoded) {
            Some(why) => Err(invalid(why, true)),
            None => Ok(Self(raw.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as a URL path (no leading `/`), percent-encoded the way apt asks for it.
    pub fn url_path(&self) -> String {
        encode_for_upstream(&self.0)
    }
}

/// `path` percent-encoded for a request to upstream (see [`PoolPath::url_path`]).
pub fn encode_for_upstream(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, UPSTREAM_ENCODED).to_string()
}

impl fmt::Display for PoolPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<PoolPath> for MirrorPath {
    fn from(path: PoolPath) -> Self {
        Self(path.0)
    }
}

impl fmt::Display for MirrorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MirrorPath, InvalidPath> {
        MirrorPath::try_from(s.to_owned())
    }

    #[test]
    fn accepts_ordinary_repository_paths() {
        for ok in [
            "dists/stable/InRelease",
            "dists/stable/main/binary-amd64/by-hash/SHA256/abc",
            "pool/main/h/hello/hello_1.0+deb12u1_amd64.deb",
            "pool/main/g/g++-12/g++-12_12.2.0-14_amd64.deb",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_anything_that_could_escape() {
        for bad in [
            "",
            "../etc/passwd",
            "pool/../../x",
            "pool/./x",
            "/pool/x",
            "pool//x",
            "pool/x/",
            "pool\\x",
            "pool/x\0y",
            "pool/x\ny",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"a/".repeat(600)).is_err());
    }

    #[test]
    fn pool_paths_are_checked_as_written_and_decoded() {
        for ok in [
            "pool/main/h/hello/hello_2.10-3_amd64.deb",
            "pool/main/f/foo/foo_1%3a2.0-1~bpo12+1_all.deb",
            "pool/main/f/foo/foo_1:2.0-1_all.deb",
            "pool/main/%zz/odd_1_all.deb",
        ] {
            assert_eq!(PoolPath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "pool/main/../../../../etc/passwd",
            "../x.deb",
            "/etc/passwd",
            "pool/./x.deb",
            "pool//x.deb",
            "pool\\x.deb",
            "pool/x\0.deb",
            "pool/%2e%2e/%2e%2e/x.deb",
            "pool/main/..%2f..%2fx.deb",
            "pool/%2E%2E/x.deb",
            "pool/x%00.deb",
            "pool/x%5cy.deb",
            "pool/x%0ay.deb",
            "%2fetc/passwd",
            "pool/%ff.deb",
            "",
        ] {
            assert!(PoolPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_urls_encode_like_apt() {
        let p = PoolPath::parse("pool/main/f/foo/foo_1%3a2.0-1~bpo12+1_all.deb").unwrap();
        assert_eq!(
            p.url_path(),
            "pool/main/f/foo/foo_1%253a2.0-1%7Ebpo12%2B1_all.deb"
        );
        assert_eq!(
            encode_for_upstream("dists/stable/InRelease"),
            "dists/stable/InRelease"
        );
    }
}
