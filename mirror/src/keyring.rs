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
        // The cleartext framework drops the final line break; deb822 text ends with one.
        let mut text = signed.replace("\r\n", "\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
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

#[cfg(test)]
mod tests {
    use super::*;
    use debian_packaging::signing_key::{
        create_self_signed_key, signing_secret_key_params_builder,
    };
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::{KeyType, SignedSecretKey, SubkeyParamsBuilder};

    /// A key shaped like Debian's archive keys: the primary only certifies, a subkey signs.
    fn key_with_signing_subkey(user: &str) -> (SignedSecretKey, SignedPublicKey) {
        let mut params = signing_secret_key_params_builder(user);
        params.can_sign(false).can_certify(true).subkey(
            SubkeyParamsBuilder::default()
                .key_type(KeyType::Rsa(2048))
                .can_sign(true)
                .build()
                .unwrap(),
        );
        create_self_signed_key(params.build().unwrap(), String::new).unwrap()
    }

    fn sign_with_subkey(secret: &SignedSecretKey, text: &str) -> String {
        pgp_cleartext::cleartext_sign(
            &secret.secret_subkeys[0],
            String::new,
            HashAlgorithm::SHA2_256,
            Cursor::new(text.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verifies_subkey_signatures_from_binary_and_armored_keyrings() {
        let (secret, public) = key_with_signing_subkey("sub <sub@aptgate.invalid>");
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("archive.gpg");
        fs_err::write(&binary, pgp::ser::Serialize::to_bytes(&public).unwrap()).unwrap();
        let armored = dir.path().join("archive.asc");
        fs_err::write(
            &armored,
            public.to_armored_string(Default::default()).unwrap(),
        )
        .unwrap();

        let text = "Origin: Test\nSuite: stable\nDate: Sat, 21 Nov 2026 10:00:00 UTC\n";
        let document = sign_with_subkey(&secret, text);
        for keyring in [&binary, &armored] {
            let keyring = Keyring::load(std::slice::from_ref(keyring), &[]).unwrap();
            assert_eq!(keyring.verify_cleartext(&document).unwrap(), text);
        }
        let inline = Keyring::load(
            &[],
            &[public.to_armored_string(Default::default()).unwrap()],
        )
        .unwrap();
        assert!(inline.verify_cleartext(&document).is_ok());

        // Tampered text, another key, and no signature at all are refused.
        let keyring = Keyring::load(&[binary], &[]).unwrap();
        let tampered = document.replace("Suite: stable", "Suite: stablE");
        assert!(matches!(
            keyring.verify_cleartext(&tampered),
            Err(SignatureError::UnknownSigner { .. })
        ));
        let (other, _) = key_with_signing_subkey("other <other@aptgate.invalid>");
        let foreign = sign_with_subkey(&other, text);
        let err = keyring.verify_cleartext(&foreign).unwrap_err().to_string();
        assert!(err.contains("no key in the keyring"), "{err}");
        assert!(matches!(
            keyring.verify_cleartext(text),
            Err(SignatureError::NotSigned(_))
        ));
    }

    #[test]
    fn a_file_without_keys_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.gpg");
        fs_err::write(&empty, b"not a key").unwrap();
        let err = Keyring::load(std::slice::from_ref(&empty), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty.gpg"), "{err}");
        let missing = Keyring::load(&[dir.path().join("missing.asc")], &[]).unwrap_err();
        assert!(matches!(missing, KeyringError::Read { .. }));
    }
}
