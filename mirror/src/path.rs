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
#[error("invalid path {path:?}: {why}")]
pub struct InvalidPath {
    pub path: String,
    pub why: &'static str,
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
        let why = if path.is_empty() {
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
        };
        match why {
            Some(why) => Err(InvalidPath { path, why }),
            None => Ok(Self(path)),
        }
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
}
