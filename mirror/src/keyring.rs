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

    /// Only the keys whose primary fingerprint is `fingerprint` (hex, any case, spaces
    /// ignored): a replica trusts the one key pinned at setup, whatever else it is handed.
    pub fn pinned(&self, fingerprint: &str) -> Self {
        self.pinned_to(&[fingerprint])
    }

    /// Only the keys whose primary fingerprint is one of `fingerprints` (as [`Self::pinned`]).
    pub fn pinned_to<S: AsRef<str>>(&self, fingerprints: &[S]) -> Self {
        let wanted: Vec<String> = fingerprints
            .iter()
            .map(|f| normalize_fingerprint(f.as_ref()))
            .collect();
        Self {
            keys: self
                .keys
                .iter()
                .filter(|k| wanted.contains(&hex::encode_upper(k.fingerprint().as_bytes())))
                .cloned()
                .collect(),
        }
    }

    /// The primary keys' fingerprints, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.fingerprint().as_bytes()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints of the primary keys, for messages.
    pub fn describe(&self) -> String {
        if self.keys.is_empty() {
            return "empty".into();
        }
        self.fingerprints().join(", ")
    }

    /// Verifies a cleartext-signed document (an `InRelease`) and returns the signed text,
    /// with LF line endings, exactly as it was signed. Only that text may be trusted.
    pub fn verify_cleartext(&self, document: &str) -> Result<String, SignatureError> {
        check_clearsigned_frame(document)?;
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

/// A fingerprint as written by people (any case, spaces between groups) as the keyring prints it.
pub fn normalize_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn parse_keys(bytes: &[u8]) -> Vec<SignedPublicKey> {
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return SignedPublicKey::from_bytes_many(Cursor::new(bytes.to_vec()))
            .filter_map(Result::ok)
            .collect();
    }
    // A file may hold several armored blocks one after another (aptgate's own keys file
    // during a rotation, many vendors' `.asc` keyrings): the armor reader stops after the
    // first, so each block is read on its own.
    let mut keys = Vec::new();
    for block in armored_blocks(bytes) {
        if let Ok((iter, _)) = SignedPublicKey::from_armor_many(Cursor::new(block.to_vec())) {
            keys.extend(iter.filter_map(Result::ok));
        }
    }
    keys
}

/// Each `-----BEGIN PGP PUBLIC KEY BLOCK-----` … `-----END PGP PUBLIC KEY BLOCK-----` in
/// `bytes`, end line included.
fn armored_blocks(bytes: &[u8]) -> Vec<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN PGP PUBLIC KEY BLOCK-----";
    const END: &[u8] = b"-----END PGP PUBLIC KEY BLOCK-----";
    let find = |haystack: &[u8], needle: &[u8]| {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    };
    let mut blocks = Vec::new();
    let mut rest = bytes;
    while let Some(start) = find(rest, BEGIN) {
        let Some(end) = find(&rest[start..], END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    blocks
}

const SIGNED_MESSAGE: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const SIGNATURE_BEGIN: &str = "-----BEGIN PGP SIGNATURE-----";
const SIGNATURE_END: &str = "-----END PGP SIGNATURE-----";

/// Checks the shape of a cleartext-signed document line by line, as apt does before it asks
/// gpgv (CVE-2013-1051): the document starts with the signed-message line, its `Hash:`
/// headers end at an empty line, every signed line starting with `-` is dash-escaped, and
/// after the signature blocks only empty lines follow. Unsigned text before or after the
/// signed part, or an armour line that is not exactly the expected one, is refused rather
/// than left for a parser to skip.
fn check_clearsigned_frame(document: &str) -> Result<(), SignatureError> {
    enum State {
        Start,
        Headers,
        Body,
        Signature,
        AfterSignature,
    }
    let refuse =
        |n: usize, why: &str| Err(SignatureError::NotSigned(format!("line {}: {why}", n + 1)));
    let mut state = State::Start;
    for (n, line) in document.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        state = match state {
            State::Start if line == SIGNED_MESSAGE => State::Headers,
            State::Start => return refuse(n, "text before the signed message"),
            State::Headers if line.is_empty() => State::Body,
            State::Headers if line.starts_with("Hash: ") => State::Headers,
            State::Headers => return refuse(n, "not a Hash: armour header"),
            State::Body if line == SIGNATURE_BEGIN => State::Signature,
            State::Body if line.starts_with('-') && !line.starts_with("- ") => {
                return refuse(n, "a line starting with a dash that is not dash-escaped")
            }
            State::Body => State::Body,
            State::Signature if line == SIGNATURE_END => State::AfterSignature,
            State::Signature if line.starts_with('-') => {
                return refuse(n, "a mangled armour line in the signature")
            }
            State::Signature => State::Signature,
            State::AfterSignature if line.is_empty() => State::AfterSignature,
            State::AfterSignature if line == SIGNATURE_BEGIN => State::Signature,
            State::AfterSignature => return refuse(n, "unsigned text after the signature"),
        };
    }
    match state {
        State::AfterSignature => Ok(()),
        _ => Err(SignatureError::NotSigned(
            "the signed message or its signature is not closed".into(),
        )),
    }
}

/// Parses a detached signature file (`Release.gpg`): one or more armoured signature blocks
/// with only empty lines around them, or binary signature packets. Every packet must parse
/// and be a signature: bytes before, between or after the signatures (the CVE-2019-3462
/// payload trick) are refused, never skipped.
fn parse_detached(signature: &[u8]) -> Result<Vec<StandaloneSignature>, SignatureError> {
    let bad = |why: String| SignatureError::BadDetached(why);
    let armored = signature.starts_with(SIGNATURE_BEGIN.as_bytes());
    let mut packets = Vec::new();
    if armored {
        let text = std::str::from_utf8(signature).map_err(|_| bad("not UTF-8 text".into()))?;
        let mut block: Option<String> = None;
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match &mut block {
                None if line.is_empty() => {}
                None if line == SIGNATURE_BEGIN => block = Some(format!("{line}\n")),
                None => return Err(bad(format!("line {}: not part of a signature", n + 1))),
                Some(b) if line == SIGNATURE_END => {
                    b.push_str(line);
                    b.push('\n');
                    packets.extend(dearmor(b).map_err(bad)?);
                    block = None;
                }
                Some(_) if line.starts_with('-') => {
                    return Err(bad(format!("line {}: a mangled armour line", n + 1)))
                }
                Some(b) => {
                    b.push_str(line);
                    b.push('\n');
                }
            }
        }
        if block.is_some() {
            return Err(bad("a signature block is not closed".into()));
        }
    } else {
        packets = signature_packets(signature).map_err(bad)?;
    }
    if packets.is_empty() {
        return Err(bad("no signature packet".into()));
    }
    Ok(packets)
}

/// The packets of one armoured block.
fn dearmor(block: &str) -> Result<Vec<StandaloneSignature>, String> {
    let mut dearmor = pgp::armor::Dearmor::new(block.as_bytes());
    dearmor.read_header().map_err(|e| e.to_string())?;
    if dearmor.typ != Some(pgp::armor::BlockType::Signature) {
        return Err("not a signature block".into());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut dearmor, &mut bytes).map_err(|e| e.to_string())?;
    signature_packets(&bytes)
}

/// Every packet in `bytes`, each of which must be a signature.
fn signature_packets(bytes: &[u8]) -> Result<Vec<StandaloneSignature>, String> {
    pgp::packet::PacketParser::new(bytes)
        .map(|packet| match packet {
            Ok(pgp::packet::Packet::Signature(sig)) => Ok(StandaloneSignature::new(sig)),
            Ok(other) => Err(format!("a {:?} packet among the signatures", other.tag())),
            Err(e) => Err(format!("bytes that are not a signature packet ({e})")),
        })
        .collect()
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
    fn every_armored_block_of_a_file_is_read_and_a_pin_keeps_only_its_key() {
        let (first_secret, first) = key_with_signing_subkey("one <one@aptgate.invalid>");
        let (second_secret, second) = key_with_signing_subkey("two <two@aptgate.invalid>");
        // Two blocks one after another, with text around them, as `cat a.asc b.asc` makes.
        let file = format!(
            "{}\n{}trailing comment\n",
            first.to_armored_string(Default::default()).unwrap(),
            second.to_armored_string(Default::default()).unwrap()
        );
        let keyring = Keyring::load(&[], &[file]).unwrap();
        let fingerprints = keyring.fingerprints();
        assert_eq!(fingerprints.len(), 2, "{fingerprints:?}");
        let text = "Suite: stable\n";
        for secret in [&first_secret, &second_secret] {
            assert!(keyring
                .verify_cleartext(&sign_with_subkey(secret, text))
                .is_ok());
        }
        let second_only = keyring.pinned(&fingerprints[1].to_ascii_lowercase());
        assert_eq!(second_only.fingerprints(), vec![fingerprints[1].clone()]);
        assert!(second_only
            .verify_cleartext(&sign_with_subkey(&first_secret, text))
            .is_err());
        assert_eq!(
            keyring.pinned_to(&fingerprints).fingerprints(),
            fingerprints
        );
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

    fn detached_sign(secret: &SignedSecretKey, data: &[u8]) -> String {
        use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
        let key = &secret.secret_subkeys[0];
        let mut config = SignatureConfig::v4(
            SignatureType::Binary,
            key.algorithm(),
            HashAlgorithm::SHA2_256,
        );
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())),
            Subpacket::regular(SubpacketData::SignatureCreationTime(
                chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
            )),
        ];
        let signature = config.sign(key, String::new, data).unwrap();
        StandaloneSignature::new(signature)
            .to_armored_string(Default::default())
            .unwrap()
    }

    fn keyring_for(public: &SignedPublicKey) -> Keyring {
        Keyring::load(
            &[],
            &[public.to_armored_string(Default::default()).unwrap()],
        )
        .unwrap()
    }

    #[test]
    fn inrelease_with_unsigned_text_around_the_signed_part_is_refused() {
        let (secret, public) = key_with_signing_subkey("frame <frame@aptgate.invalid>");
        let keyring = keyring_for(&public);
        let text = "Origin: Test\nSuite: stable\nSHA256:\n 00 1 main/binary-amd64/Packages\n";
        let signed = sign_with_subkey(&secret, text);
        assert_eq!(keyring.verify_cleartext(&signed).unwrap(), text);
        let evil = "Origin: Evil\nSHA256:\n ff 1 main/binary-amd64/Packages\n";
        let begin = "-----BEGIN PGP SIGNED MESSAGE-----";
        let sig = "-----BEGIN PGP SIGNATURE-----";
        for (case, document) in [
            ("appended", format!("{signed}{evil}")),
            ("appended after a blank line", format!("{signed}\n{evil}")),
            ("prepended", format!("{evil}\n{signed}")),
            ("leading blank line", format!("\n{signed}")),
            (
                "leading space on the armour line",
                signed.replacen(begin, &format!(" {begin}"), 1),
            ),
            (
                "trailing space on the armour line",
                signed.replacen(begin, &format!("{begin} "), 1),
            ),
            (
                "mangled armour line",
                signed.replacen(begin, "-----BEGIN PGP SIGNED MESSAGE----", 1),
            ),
            (
                "mangled signature line",
                signed.replacen(sig, "-----BEGIN PGP SIGNATURE----- ", 1),
            ),
            (
                "undashed line in the text",
                signed.replacen("Suite: stable", "-----Suite: stable", 1),
            ),
            (
                "an extra armour header",
                signed.replacen("Hash: SHA256", "Hash: SHA256\nComment: x", 1),
            ),
            ("two signed messages", format!("{signed}{signed}")),
        ] {
            let err = keyring.verify_cleartext(&document);
            assert!(
                matches!(err, Err(SignatureError::NotSigned(_))),
                "{case}: {err:?}"
            );
        }
    }

    #[test]
    fn release_gpg_with_bytes_around_or_between_its_signatures_is_refused() {
        let (secret, public) = key_with_signing_subkey("detached <detached@aptgate.invalid>");
        let keyring = keyring_for(&public);
        let release = b"Origin: Test\nSuite: stable\n";
        let sig = detached_sign(&secret, release);
        keyring.verify_detached(release, sig.as_bytes()).unwrap();
        let two = format!("{sig}{sig}");
        keyring.verify_detached(release, two.as_bytes()).unwrap();
        let payload = "Origin: Evil\nSuite: stable\n";
        for (case, file) in [
            ("payload after", format!("{sig}{payload}")),
            ("payload before", format!("{payload}{sig}")),
            ("payload between", format!("{sig}{payload}{sig}")),
            (
                "mangled armour",
                sig.replacen(
                    "-----END PGP SIGNATURE-----",
                    "-----END PGP SIGNATURE----",
                    1,
                ),
            ),
        ] {
            let err = keyring.verify_detached(release, file.as_bytes());
            assert!(
                matches!(err, Err(SignatureError::BadDetached(_))),
                "{case}: {err:?}"
            );
        }

        // Binary: the same packets with a literal data packet or junk after them.
        let (mut binary, _) = {
            let mut d = pgp::armor::Dearmor::new(sig.as_bytes());
            d.read_header().unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut bytes).unwrap();
            (bytes, ())
        };
        keyring.verify_detached(release, &binary).unwrap();
        let literal = pgp::packet::LiteralData::from_bytes((&b""[..]).into(), payload.as_bytes());
        let mut with_literal = binary.clone();
        pgp::ser::Serialize::to_writer(&pgp::packet::Packet::from(literal), &mut with_literal)
            .unwrap();
        assert!(keyring.verify_detached(release, &with_literal).is_err());
        binary.extend_from_slice(b"\x00\x01junk after the packets");
        assert!(keyring.verify_detached(release, &binary).is_err());
    }
}
