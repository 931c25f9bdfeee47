//! Label selectors, `k=v,k2=v2`: every term must match; the empty selector matches every host.
//! Label keys and values are `[A-Za-z0-9._/-]+` (at most 63 characters), so a selector reads
//! the same everywhere and nothing in it can smuggle another field.

use crate::error::{FleetError, Result};
use aptgate_agent::protocol::Labels;
use std::fmt;

const MAX_LABEL_LEN: usize = 63;

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

/// Checks one label; the error names it.
pub fn check_label(key: &str, value: &str) -> Result<()> {
    if valid_part(key) && valid_part(value) {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_label",
            format!(
                "invalid label {key:?}={value:?}\nhint: keys and values are 1–63 characters of \
                 A-Z a-z 0-9 . _ / -"
            ),
        ))
    }
}

pub fn check_labels(labels: &Labels) -> Result<()> {
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// Parses `k=v` (as the CLI and API take labels).
pub fn parse_label(text: &str) -> Result<(String, String)> {
    let (k, v) = text.split_once('=').ok_or_else(|| {
        FleetError::bad_request(
            "bad_label",
            format!("invalid label {text:?}\nhint: write labels as key=value"),
        )
    })?;
    check_label(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// A parsed selector: its terms, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<(String, String)>);

impl Selector {
    pub fn parse(text: &str) -> Result<Self> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = term.split_once('=').ok_or_else(|| {
                FleetError::bad_request(
                    "bad_selector",
                    format!(
                        "invalid selector {text:?}: {term:?} is not key=value\nhint: write \
                         selectors as site=berlin,role=web (every term must match)"
                    ),
                )
            })?;
            check_label(k, v).map_err(|_| {
                FleetError::bad_request(
                    "bad_selector",
                    format!(
                        "invalid selector {text:?}: {term:?}\nhint: keys and values are 1–63 \
                         characters of A-Z a-z 0-9 . _ / -"
                    ),
                )
            })?;
            terms.push((k.to_owned(), v.to_owned()));
        }
        terms.sort();
        terms.dedup();
        Ok(Self(terms))
    }

    /// How specific it is: its number of terms.
    pub fn terms(&self) -> usize {
        self.0.len()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_term_must_match_and_empty_matches_all() {
        let host = labels(&[("site", "berlin"), ("role", "web")]);
        assert!(Selector::parse("").unwrap().matches(&host));
        assert!(Selector::parse("site=berlin").unwrap().matches(&host));
        assert!(Selector::parse("role=web, site=berlin")
            .unwrap()
            .matches(&host));
        assert!(!Selector::parse("site=berlin,role=db")
            .unwrap()
            .matches(&host));
        assert!(!Selector::parse("dc=1").unwrap().matches(&host));
        assert_eq!(
            Selector::parse("site=berlin,role=web").unwrap().to_string(),
            "role=web,site=berlin"
        );
    }

    #[test]
    fn bad_selectors_and_labels_are_refused() {
        for bad in ["site", "site=", "=x", "a=b c", "a=b\nc", "a=ü"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_label("k=v").is_ok());
        assert!(parse_label("k").is_err());
        assert!(check_label("k", &"x".repeat(64)).is_err());
    }
}
