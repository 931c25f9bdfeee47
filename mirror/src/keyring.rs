//! Upstream keyrings and signature checks.
//!
//! Verifying an upstream `InRelease` is our job (debian-packaging only parses it): every
//! signature is tried against the primary key and each subkey of every configured key. An
//! unsigned or wrongly signed file is refused; there is no fallback to trusting it.

use pgp::cleartext::CleartextSignedMessage;
use pgp::composed::{Deserializable, SignedPublicKey, StandaloneSignature};
use pgp::packet::{PublicKey, PublicSubkey};
use pgp::types::PublicKeyTrait;
use std::io::Cursor;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read keyring {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {what} holds no usable OpenPGP public key")]
    NoKeys { what: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a PGP cleartext-signed document: {0}")]
    NotSigned(String),
    #[error("signed by {signers}, but no key in the keyring ({keyring}) verifies it")]
    UnknownSigner { signers: String, keyring: String },
    #[error("invalid detached signature: {0}")]
    BadDetached(String),
}

/// The public keys allowed to sign one source.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Loads armored or binary key files (each may hold several keys) and inline armored keys.
    pub fn load(files: &[PathBuf], inline: &[String]) -> Result<Self, KeyringError> {
        let mut keys = Vec::new();
        for path in files {
            let bytes = fs_err::read(path).map_err(|source| KeyringError::Read {
                path: path.clone(),
                source,
            })?;
            let found = parse_keys(&bytes);
            if found.is_empty() {
                return Err(KeyringError::NoKeys {
                    what: path.display().to_string(),
                });
            }
            keys.extend(found);
        }
        for (i, text) in inline.iter().enumerate() {
            let found = parse_keys(text.as_bytes());
            if found.is_empty() {
                return Err(KeyringError::NoKeys {
                    what: format!("inline key #{}", i + 1),
                });
            }
            keys.extend(found);
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints of the primary keys, for messages.
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "empty".into();
        }
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.fingerprint().as_bytes()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Verifies a cleartext-signed document (an `InRelease`) and returns the signed text,
    /// with LF line endings, exactly as it was signed. Only that text may be trusted.
    pub fn verify_cleartext(&self, document: &str) -> Result<String, SignatureError> {
        let (message, _) = CleartextSignedMessage::from_string(document)
            .map_err(|e| SignatureError::NotSigned(e.to_string()))?;
        if message.signatures().is_empty() {
            return Err(SignatureError::NotSigned("no signature block".into()));
        }
        let signed = message.signed_text();
        let verified = self.signing_keys().any(|key| {
            message
                .signatures()
                .iter()
                .any(|sig| key.verifies(sig, signed.as_bytes()))
        });
        if !verified {
            return Err(self.unknown_signer(message.signatures()));
        }
        Ok(signed.replace("\r\n", "\n"))
    }

    /// Verifies an armored detached signature (`Release.gpg`) over `data` (`Release`).
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signatures = parse_detached(signature)?;
        let verified = self
            .signing_keys()
            .any(|key| signatures.iter().any(|sig| key.verifies(sig, data)));
        if verified {
            Ok(())
        } else {
            Err(self.unknown_signer(&signatures))
        }
    }

    /// Every primary key and subkey: Debian signs with subkeys, smaller vendors with primaries.
    fn signing_keys(&self) -> impl Iterator<Item = KeyRef<'_>> {
        self.keys.iter().flat_map(|k| {
            std::iter::once(KeyRef::Primary(&k.primary_key))
                .chain(k.public_subkeys.iter().map(|s| KeyRef::Sub(&s.key)))
        })
    }

    fn unknown_signer(&self, signatures: &[StandaloneSignature]) -> SignatureError {
        let signers: Vec<String> = signatures
            .iter()
            .flat_map(|s| s.signature.issuer())
            .map(|id| hex::encode_upper(id.as_ref()))
            .collect();
        SignatureError::UnknownSigner {
            signers: if signers.is_empty() {
                "an unnamed key".into()
            } else {
                format!("key {}", signers.join(", "))
            },
            keyring: self.describe(),
        }
    }
}

/// A primary key or subkey (the pgp crate's key trait is not object safe).
enum KeyRef<'a> {
    Primary(&'a PublicKey),
    Sub(&'a PublicSubkey),
}

impl KeyRef<'_> {
    fn verifies(&self, signature: &StandaloneSignature, data: &[u8]) -> bool {
        match self {
            Self::Primary(k) => signature.verify(*k, data).is_ok(),
            Self::Sub(k) => signature.verify(*k, data).is_ok(),
        }
    }
}

fn parse_keys(bytes: &[u8]) -> Vec<SignedPublicKey> {
    let armored = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
    let iter: Box<dyn Iterator<Item = pgp::errors::Result<SignedPublicKey>>> = if armored {
        match SignedPublicKey::from_armor_many(Cursor::new(bytes.to_vec())) {
            Ok((iter, _)) => iter,
            Err(_) => return Vec::new(),
        }
    } else {
        SignedPublicKey::from_bytes_many(Cursor::new(bytes.to_vec()))
    };
    iter.filter_map(Result::ok).collect()
}

fn parse_detached(signature: &[u8]) -> Result<Vec<StandaloneSignature>, SignatureError> {
    let armored = signature.trim_ascii_start().starts_with(b"-----BEGIN");
    let iter: Box<dyn Iterator<Item = pgp::errors::Result<StandaloneSignature>>> = if armored {
        StandaloneSignature::from_armor_many(Cursor::new(signature.to_vec()))
            .map_err(|e| SignatureError::BadDetached(e.to_string()))?
            .0
    } else {
        StandaloneSignature::from_bytes_many(Cursor::new(signature.to_vec()))
    };
    let sigs: Vec<_> = iter.filter_map(Result::ok).collect();
    if sigs.is_empty() {
        return Err(SignatureError::BadDetached("no signature packet".into()));
    }
    Ok(sigs)
}
