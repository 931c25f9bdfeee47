//! Verified `Release` data: what a suite's signed index promises about every file it names.

use crate::digest::Sha256;
use crate::path::PoolPath;
use chrono::{DateTime, Utc};
use debian_packaging::repository::release::{ChecksumType, ReleaseFile};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot parse Release: {0}")]
    Parse(String),
    #[error("Release has no SHA256 file list")]
    NoSha256,
    #[error("Release has no valid Date field")]
    NoDate,
    #[error("Release expired: Valid-Until {valid_until} is in the past")]
    Expired { valid_until: DateTime<Utc> },
    #[error("Release is not valid yet: Date {date} is in the future")]
    FromTheFuture { date: DateTime<Utc> },
}

/// A clock skew we tolerate before calling a Release "from the future".
const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// The parts of a verified Release the mirror relies on.
#[derive(Debug)]
pub struct SuiteRelease {
    pub origin: Option<String>,
    pub label: Option<String>,
    pub codename: Option<String>,
    pub date: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    /// Path below `dists/<suite>/` → (sha256, size).
    pub files: HashMap<String, (Sha256, u64)>,
    /// Every listed digest → size, for `by-hash/SHA256/<digest>` requests.
    pub by_hash: HashMap<Sha256, u64>,
}

impl SuiteRelease {
    /// Parses signed (already verified) Release text.
    pub fn parse(text: &str) -> Result<Self, ReleaseError> {
        let release = ReleaseFile::from_reader(std::io::Cursor::new(text.as_bytes()))
            .map_err(|e| ReleaseError::Parse(e.to_string()))?;
        let date = match release.date() {
            Some(Ok(date)) => date,
            _ => return Err(ReleaseError::NoDate),
        };
        let valid_until = match release.valid_until() {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return Err(ReleaseError::Parse(format!("Valid-Until: {e}"))),
            None => None,
        };
        let mut files = HashMap::new();
        let mut by_hash = HashMap::new();
        for entry in release
            .iter_index_files(ChecksumType::Sha256)
            .ok_or(ReleaseError::NoSha256)?
        {
            let entry = entry.map_err(|e| ReleaseError::Parse(e.to_string()))?;
            let digest = Sha256::from_hex(&entry.digest.digest_hex())
                .map_err(|e| ReleaseError::Parse(e.to_string()))?;
            // A listed path becomes part of a URL and a store record: one that climbs out of
            // `dists/<suite>/` names nothing we would fetch.
            if PoolPath::parse(entry.path).is_err() {
                continue;
            }
            files.insert(entry.path.to_owned(), (digest, entry.size));
            by_hash.insert(digest, entry.size);
        }
        Ok(Self {
            origin: release.origin().map(str::to_owned),
            label: release.label().map(str::to_owned),
            codename: release.codename().map(str::to_owned),
            date,
            valid_until,
            files,
            by_hash,
        })
    }

    /// Refuses a Release that apt itself would refuse as expired or not yet valid.
    pub fn check_dates(&self, now: DateTime<Utc>) -> Result<(), ReleaseError> {
        if let Some(valid_until) = self.valid_until {
            if valid_until < now {
                return Err(ReleaseError::Expired { valid_until });
            }
        }
        if self.date > now + MAX_FUTURE_SKEW {
            return Err(ReleaseError::FromTheFuture { date: self.date });
        }
        Ok(())
    }

    /// Past its `Valid-Until`: apt refuses it, so the mirror never calls it fresh.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.valid_until.is_some_and(|until| until < now)
    }

    /// Less than a quarter of its validity (`Date` to `Valid-Until`) left, or expired. An
    /// upstream that re-signs on time (we re-sign our own at half) never gets here; one that
    /// keeps confirming such a Release is frozen, or about to be.
    pub fn validity_running_out(&self, now: DateTime<Utc>) -> bool {
        self.valid_until
            .is_some_and(|until| (until - now) * 4 < until - self.date)
    }

    /// What a request for `dists/<suite>/<rest>` must turn out to be, if the Release names it.
    pub fn expect(&self, rest: &str) -> Option<(Sha256, u64)> {
        if let Some((_, hex)) = rest.rsplit_once("/by-hash/SHA256/") {
            let digest = Sha256::from_hex(hex).ok()?;
            return self.by_hash.get(&digest).map(|size| (digest, *size));
        }
        self.files.get(rest).copied()
    }

    /// How far the compressed index `rest` (of `compressed` bytes) may inflate: to the size
    /// listed for its uncompressed form, if listed (see [`crate::packages::inflate_cap`]).
    pub fn inflate_cap(&self, rest: &str, compressed: u64) -> u64 {
        let listed = crate::packages::uncompressed_name(rest)
            .and_then(|plain| self.files.get(plain))
            .map(|(_, size)| *size);
        crate::packages::inflate_cap(listed, compressed)
    }

    /// The `Packages` index of `<component>/binary-<arch>` this Release lists, below
    /// `dists/<suite>/`: `.xz` if listed, else `.gz`, else plain (the smallest first).
    pub fn packages_index(&self, component: &str, arch: &str) -> Option<String> {
        ["Packages.xz", "Packages.gz", "Packages"]
            .iter()
            .map(|f| format!("{component}/binary-{arch}/{f}"))
            .find(|p| self.files.contains_key(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Test\nSuite: stable\nDate: Sat, 21 Nov 2026 10:00:00 UTC\n\
Valid-Until: Sat, 28 Nov 2026 10:00:00 UTC\nSHA256:\n \
ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3 main/binary-amd64/Packages\n";

    #[test]
    fn parses_files_and_by_hash() {
        let r = SuiteRelease::parse(RELEASE).unwrap();
        let (d, size) = r.expect("main/binary-amd64/Packages").unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            r.expect(&format!("main/binary-amd64/by-hash/SHA256/{d}")),
            Some((d, 3))
        );
        assert_eq!(r.expect("main/binary-amd64/Packages.xz"), None);
        assert_eq!(r.expect("main/binary-amd64/by-hash/SHA256/00"), None);
        assert_eq!(
            r.packages_index("main", "amd64").as_deref(),
            Some("main/binary-amd64/Packages")
        );
        assert_eq!(r.packages_index("main", "arm64"), None);
        assert_eq!(r.inflate_cap("main/binary-amd64/Packages.xz", 1), 3);
    }

    #[test]
    fn paths_climbing_out_of_the_suite_are_not_listed() {
        let text = RELEASE.replace("main/binary-amd64/Packages", "../../../etc/Packages");
        let r = SuiteRelease::parse(&text).unwrap();
        assert!(r.files.is_empty());
    }

    #[test]
    fn checks_dates() {
        let r = SuiteRelease::parse(RELEASE).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(r.check_dates(at("2026-11-22T00:00:00Z")).is_ok());
        assert!(matches!(
            r.check_dates(at("2026-11-29T00:00:00Z")),
            Err(ReleaseError::Expired { .. })
        ));
        assert!(matches!(
            r.check_dates(at("2026-11-20T00:00:00Z")),
            Err(ReleaseError::FromTheFuture { .. })
        ));
    }

    #[test]
    fn tells_expired_and_running_out() {
        // Valid for 7 days from 21 Nov 10:00: a quarter left from 26 Nov 16:00.
        let r = SuiteRelease::parse(RELEASE).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!r.validity_running_out(at("2026-11-26T15:00:00Z")));
        assert!(r.validity_running_out(at("2026-11-26T17:00:00Z")));
        assert!(!r.expired(at("2026-11-28T09:59:59Z")));
        assert!(r.expired(at("2026-11-28T10:00:01Z")));
        assert!(r.validity_running_out(at("2026-11-29T00:00:00Z")));
        let forever = SuiteRelease::parse(&RELEASE.replace("Valid-Until", "X-Not")).unwrap();
        assert!(!forever.expired(at("2099-01-01T00:00:00Z")));
        assert!(!forever.validity_running_out(at("2099-01-01T00:00:00Z")));
    }
}
