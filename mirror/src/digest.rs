//! SHA-256 digests: the identity of every blob in the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256 as Hasher};
use std::fmt;

/// A SHA-256 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("invalid sha256 digest {0:?}: expected 64 hex characters")]
pub struct InvalidDigest(pub String);

impl Sha256 {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Hasher::digest(bytes).into())
    }

    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        let mut out = [0u8; 32];
        if hex.len() != 64 || hex::decode_to_slice(hex, &mut out).is_err() {
            return Err(InvalidDigest(hex.to_owned()));
        }
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Incremental hashing, for bytes that stream past.
#[derive(Default)]
pub struct Sha256Hasher(Hasher);

impl Sha256Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

impl TryFrom<String> for Sha256 {
    type Error = InvalidDigest;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_hex(&s)
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.to_hex()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::from_hex(&d.to_hex()).unwrap(), d);
        assert!(Sha256::from_hex("ba78").is_err());
        assert!(Sha256::from_hex(&"zz".repeat(32)).is_err());
    }
}
