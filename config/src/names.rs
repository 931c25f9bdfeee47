//! Validated names, parsed at the edge so that nothing downstream can be handed `..`.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// A validated name: `[a-z0-9][a-z0-9._-]{0,63}`, safe as a URL path segment and a directory.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                check_name($kind, &value)?;
                Ok(Self(value))
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Lets maps keyed by the name be searched with a plain `&str` from a request path.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn check_name(kind: &'static str, value: &str) -> Result<(), InvalidName> {
    let err = |why| InvalidName {
        kind,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() || value.len() > 64 {
        return Err(err("must be 1 to 64 characters"));
    }
    let first = value.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(err("must start with a lowercase letter or digit"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err(
            "may only hold lowercase letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

name_type!(
    /// The name of a source; served at `/mirror/<name>/`.
    SourceName,
    "source name"
);

name_type!(
    /// The name of a channel (`testing`, `approved`, `site-berlin`); served at
    /// `/channels/<name>/`.
    ChannelName,
    "channel name"
);

/// Whether `value` is a name word (`[a-z0-9][a-z0-9._-]{0,63}`): how a local source's suites,
/// components and architectures must look, as they become paths.
pub(crate) fn is_path_word(value: &str) -> bool {
    check_name("word", value).is_ok()
}
