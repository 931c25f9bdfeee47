//! The server's OpenPGP keys for signing published channels.
//!
//! On disk, in `<data_dir>/keys/` (mode 0700):
//!
//! ```text
//! keys/<FINGERPRINT>.secret.asc   armored secret key, mode 0600
//! keys/<FINGERPRINT>.public.asc   armored public key
//! keys/<FINGERPRINT>.json         {"user_id": "...", "created_at": 1700000000, "retired_at": null}
//! ```
//!
//! Every active (not retired) key signs — `InRelease` carries one signature per key, and so
//! does `Release.gpg` — so during a rotation hosts trusting either key keep verifying.

use chrono::SubsecRound as _;
use debian_packaging::signing_key::{create_self_signed_key, signing_secret_key_params_builder};
use pgp::cleartext::CleartextSignedMessage;
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::types::{PublicKeyTrait as _, SecretKeyTrait as _};
use pgp::{ArmorOptions, Deserializable, SignedPublicKey, SignedSecretKey, StandaloneSignature};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot generate a signing key: {0}")]
    Generate(String),
    #[error("cannot sign with key {fingerprint}: {reason}")]
    Sign { fingerprint: String, reason: String },
    #[error("key file {path} is unreadable: {reason}\nhint: restore it from a backup or move it away to generate a new key")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("no active signing key\nhint: `aptgate key add` creates one")]
    NoActiveKey,
    #[error("refusing to retire {0}: it is the last active signing key\nhint: `aptgate key add` first, then retire the old one")]
    LastKey(String),
    #[error("no signing key {0}\nhint: `aptgate key list` shows the fingerprints")]
    UnknownKey(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = SigningError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyMeta {
    user_id: String,
    created_at: i64,
    retired_at: Option<i64>,
}

/// What `aptgate key list` shows of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub fingerprint: String,
    pub user_id: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// One signing key pair.
pub struct SigningKey {
    secret: SignedSecretKey,
    public: SignedPublicKey,
    meta: KeyMeta,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .field("user_id", &self.meta.user_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new RSA key (what every apt verifier accepts).
    pub fn generate(user_id: &str) -> Result<Self> {
        let params = signing_secret_key_params_builder(user_id)
            .build()
            .map_err(|e| SigningError::Generate(e.to_string()))?;
        let (secret, public) = create_self_signed_key(params, String::new)
            .map_err(|e| SigningError::Generate(e.to_string()))?;
        Ok(Self {
            secret,
            public,
            meta: KeyMeta {
                user_id: user_id.to_owned(),
                created_at: chrono::Utc::now().timestamp(),
                retired_at: None,
            },
        })
    }

    /// Upper-case hex, as gpg and apt print it.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(self.public.fingerprint().as_bytes())
    }

    pub fn user_id(&self) -> &str {
        &self.meta.user_id
    }

    pub fn armored_public_key(&self) -> Result<String> {
        self.public
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| SigningError::Generate(e.to_string()))
    }

    fn sign_error(&self, e: impl std::fmt::Display) -> SigningError {
        SigningError::Sign {
            fingerprint: self.fingerprint(),
            reason: e.to_string(),
        }
    }

    /// A detached binary signature over `data` (one packet of a `Release.gpg`).
    fn detached_signature(&self, data: &[u8]) -> Result<StandaloneSignature> {
        Ok(StandaloneSignature::new(
            self.signature(SignatureType::Binary, data)
                .map_err(|e| self.sign_error(e))?,
        ))
    }

    /// A SHA-256 signature of `kind` over `data`, naming this key as issuer.
    fn signature(&self, kind: SignatureType, data: &[u8]) -> pgp::errors::Result<Signature> {
        let key = &self.secret;
        let mut config = SignatureConfig::v4(kind, key.algorithm(), HashAlgorithm::SHA2_256);
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())),
            Subpacket::regular(SubpacketData::SignatureCreationTime(
                chrono::Utc::now().trunc_subsecs(0),
            )),
        ];
        config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::Issuer(key.key_id()))];
        config.sign(key, String::new, data)
    }
}

/// The keys in `<data_dir>/keys/`.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    keys: Vec<SigningKey>,
}

impl KeyStore {
    /// Loads every key in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        fs_err::create_dir_all(dir)?;
        set_mode(dir, 0o700)?;
        let mut keys = Vec::new();
        for entry in fs_err::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(fingerprint) = name.strip_suffix(".secret.asc") else {
                continue;
            };
            let bad = |reason: String| SigningError::BadKeyFile {
                path: path.clone(),
                reason,
            };
            let armored = fs_err::read_to_string(&path)?;
            let (secret, _) =
                SignedSecretKey::from_string(&armored).map_err(|e| bad(e.to_string()))?;
            let public_path = dir.join(format!("{fingerprint}.public.asc"));
            let public_armored = fs_err::read_to_string(&public_path)?;
            let (public, _) =
                SignedPublicKey::from_string(&public_armored).map_err(|e| bad(e.to_string()))?;
            let meta_path = dir.join(format!("{fingerprint}.json"));
            let meta: KeyMeta = match fs_err::read(&meta_path) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|e| SigningError::BadKeyFile {
                        path: meta_path.clone(),
                        reason: e.to_string(),
                    })?
                }
                Err(_) => KeyMeta {
                    user_id: String::new(),
                    created_at: 0,
                    retired_at: None,
                },
            };
            keys.push(SigningKey {
                secret,
                public,
                meta,
            });
        }
        keys.sort_by_key(|k| k.meta.created_at);
        Ok(Self {
            dir: dir.to_owned(),
            keys,
        })
    }

    /// Opens the store; on first start (no active key) generates one and returns its
    /// fingerprint too.
    pub fn load_or_generate(dir: &Path, user_id: &str) -> Result<(Self, Option<String>)> {
        let mut store = Self::open(dir)?;
        if store.active().next().is_some() {
            return Ok((store, None));
        }
        let key = SigningKey::generate(user_id)?;
        let fingerprint = key.fingerprint();
        store.add(key)?;
        Ok((store, Some(fingerprint)))
    }

    /// Keys that sign, oldest first.
    pub fn active(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().filter(|k| k.meta.retired_at.is_none())
    }

    /// Adds an existing (armored, unprotected) secret key; returns its fingerprint.
    pub fn import(&mut self, armored_secret: &str) -> Result<String> {
        let bad = |reason: String| SigningError::BadKeyFile {
            path: "(imported key)".into(),
            reason,
        };
        let (secret, _) =
            SignedSecretKey::from_string(armored_secret).map_err(|e| bad(e.to_string()))?;
        secret
            .verify()
            .map_err(|e| bad(format!("self-signatures do not verify: {e}")))?;
        let public = secret
            .public_key()
            .sign(rand::thread_rng(), &secret, String::new)
            .map_err(|e| bad(e.to_string()))?;
        let user_id = public
            .details
            .users
            .first()
            .map(|u| u.id.id().to_owned())
            .unwrap_or_default();
        let key = SigningKey {
            secret,
            public,
            meta: KeyMeta {
                user_id: user_id.to_string(),
                created_at: chrono::Utc::now().timestamp(),
                retired_at: None,
            },
        };
        let fingerprint = key.fingerprint();
        if self.keys.iter().any(|k| k.fingerprint() == fingerprint) {
            return Err(bad(format!("key {fingerprint} is already in the store")));
        }
        // A key that cannot sign is refused before anything is written.
        key.signature(SignatureType::Binary, b"test")
            .map_err(|e| bad(format!("cannot sign with it: {e}")))?;
        self.add(key)?;
        Ok(fingerprint)
    }

    /// Saves a key (secret file 0600, written whole before it is renamed into place).
    pub fn add(&mut self, key: SigningKey) -> Result<()> {
        let fingerprint = key.fingerprint();
        let armored = key
            .secret
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| SigningError::Generate(e.to_string()))?;
        write_private(
            &self.dir.join(format!("{fingerprint}.public.asc")),
            key.armored_public_key()?.as_bytes(),
        )?;
        // The secret file last: its presence is what makes the key load.
        write_private(
            &self.dir.join(format!("{fingerprint}.secret.asc")),
            armored.as_bytes(),
        )?;
        self.save_meta(&key)?;
        self.keys.push(key);
        Ok(())
    }

    fn save_meta(&self, key: &SigningKey) -> Result<()> {
        let meta = serde_json::to_vec_pretty(&key.meta).expect("metadata serializes");
        write_private(&self.dir.join(format!("{}.json", key.fingerprint())), &meta)
    }

    /// Stops a key from signing; refuses to retire the last active one.
    pub fn retire(&mut self, fingerprint: &str) -> Result<()> {
        let now = chrono::Utc::now().timestamp();
        let Some(i) = self.keys.iter().position(|k| {
            k.meta.retired_at.is_none() && k.fingerprint().eq_ignore_ascii_case(fingerprint)
        }) else {
            return Err(SigningError::UnknownKey(fingerprint.to_owned()));
        };
        if self.active().count() <= 1 {
            return Err(SigningError::LastKey(fingerprint.to_owned()));
        }
        self.keys[i].meta.retired_at = Some(now);
        self.save_meta(&self.keys[i])
    }

    /// The public keys of every active key, one armored block each (apt reads several
    /// blocks from one `.asc` file).
    pub fn public_keys_armored(&self) -> Result<String> {
        let mut out = String::new();
        for key in self.active() {
            out.push_str(&key.armored_public_key()?);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        if out.is_empty() {
            return Err(SigningError::NoActiveKey);
        }
        Ok(out)
    }

    /// An `InRelease` carrying one signature per active key, so during a rotation hosts that
    /// trust either the old or the new key verify it.
    pub fn cleartext_sign(&self, text: &str) -> Result<String> {
        let keys: Vec<&SigningKey> = self.active().collect();
        if keys.is_empty() {
            return Err(SigningError::NoActiveKey);
        }
        let message = CleartextSignedMessage::new_many(text, |normalized| {
            keys.iter()
                .map(|key| key.signature(SignatureType::Text, normalized))
                .collect()
        })
        .map_err(|e| keys[0].sign_error(e))?;
        message
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| keys[0].sign_error(e))
    }

    /// The signing keys, oldest first, retired ones included.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|k| KeyInfo {
                fingerprint: k.fingerprint(),
                user_id: k.meta.user_id.clone(),
                created_at: k.meta.created_at,
                retired_at: k.meta.retired_at,
            })
            .collect()
    }

    /// A `Release.gpg` with one signature per active key.
    pub fn detached_sign(&self, data: &[u8]) -> Result<String> {
        let mut out = String::new();
        for key in self.active() {
            let signature = key.detached_signature(data)?;
            out.push_str(
                &signature
                    .to_armored_string(ArmorOptions::default())
                    .map_err(|e| key.sign_error(e))?,
            );
        }
        if out.is_empty() {
            return Err(SigningError::NoActiveKey);
        }
        Ok(out)
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs_err::File::create(&tmp)?;
        set_mode(&tmp, 0o600)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs_err::rename(&tmp, path)?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
