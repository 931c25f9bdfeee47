//! Throwaway OpenPGP keys for signing fixture repositories.
//!
//! RSA key generation is the slowest step of making a fixture, so each key is generated once
//! per test process and shared. There are two keys so a test can sign with one and trust the other.

use std::{io::Cursor, path::Path, sync::OnceLock};

use anyhow::Context as _;
use chrono::SubsecRound as _;
use debian_packaging::signing_key::{create_self_signed_key, signing_secret_key_params_builder};
use pgp::{
    crypto::hash::HashAlgorithm,
    packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData},
    types::PublicKeyTrait as _,
    ArmorOptions, SignedPublicKey, SignedSecretKey, StandaloneSignature,
};

/// Which of the two per-process test keys to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestKey {
    /// The key fixtures are signed with unless a test asks otherwise.
    #[default]
    Primary,
    /// A different key, for "signed by the wrong key" tests.
    Other,
}

struct KeyPair {
    secret: SignedSecretKey,
    public: SignedPublicKey,
    armored_public: String,
}

static KEYS: [OnceLock<KeyPair>; 2] = [OnceLock::new(), OnceLock::new()];

impl TestKey {
    fn pair(self) -> &'static KeyPair {
        let (slot, user_id) = match self {
            TestKey::Primary => (&KEYS[0], "aptgate fixture <fixture@aptgate.invalid>"),
            TestKey::Other => (&KEYS[1], "aptgate other <other@aptgate.invalid>"),
        };
        slot.get_or_init(|| {
            let params = signing_secret_key_params_builder(user_id)
                .build()
                .expect("static key parameters are valid");
            let (secret, public) =
                create_self_signed_key(params, String::new).expect("RSA key generation");
            let armored_public = public
                .to_armored_string(ArmorOptions::default())
                .expect("armoring a public key");
            KeyPair {
                secret,
                public,
                armored_public,
            }
        })
    }

    /// The public key, ASCII-armored (what apt's `Signed-By:` takes from a `.asc` file).
    pub fn armored_public_key(self) -> &'static str {
        &self.pair().armored_public
    }

    /// The parsed public key, for verifying with the `pgp` crate.
    pub fn public_key(self) -> &'static SignedPublicKey {
        &self.pair().public
    }

    /// Upper-case hex fingerprint, as gpg and apt print it.
    pub fn fingerprint(self) -> String {
        hex::encode_upper(self.pair().public.fingerprint().as_bytes())
    }

    /// Writes the armored public key to `path` (name it `*.asc` for apt).
    pub fn write_public_key(self, path: &Path) -> anyhow::Result<()> {
        fs_err::write(path, self.armored_public_key())?;
        Ok(())
    }

    /// An `InRelease`: `text` cleartext-signed with SHA-256.
    pub fn cleartext_sign(self, text: &str) -> anyhow::Result<String> {
        pgp_cleartext::cleartext_sign(
            &self.pair().secret,
            String::new,
            HashAlgorithm::SHA2_256,
            Cursor::new(text.as_bytes()),
        )
        .context("cleartext-signing Release")
    }

    /// A `Release.gpg`: an armored detached binary signature over `data`.
    pub fn detached_sign(self, data: &[u8]) -> anyhow::Result<String> {
        let key = &self.pair().secret;
        let mut config = SignatureConfig::v4(
            SignatureType::Binary,
            key.algorithm(),
            HashAlgorithm::SHA2_256,
        );
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())),
            Subpacket::regular(SubpacketData::SignatureCreationTime(
                chrono::Utc::now().trunc_subsecs(0),
            )),
        ];
        config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::Issuer(key.key_id()))];
        let signature = config
            .sign(key, String::new, data)
            .context("signing Release")?;
        StandaloneSignature::new(signature)
            .to_armored_string(ArmorOptions::default())
            .context("armoring the Release signature")
    }
}
