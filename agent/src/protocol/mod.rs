//! The agent protocol: what an agent and the server (`fleet/`) say to each other, and how an
//! agent proves who it is. Both sides use these types, so they cannot drift apart.
//!
//! Every call is agent-initiated over HTTP(S); hosts open no ports.
//!
//! | call | body → answer |
//! |---|---|
//! | `POST /api/v1/agent/enroll` | [`EnrollRequest`] → [`EnrollResponse`] (signed with the new key: proof of possession) |
//! | `POST /api/v1/agent/checkin` | [`CheckinRequest`] → [`CheckinResponse`] |
//! | `PUT /api/v1/agent/inventory` | [`InventoryUpload`], JSON, `Content-Encoding: gzip` → [`InventoryAccepted`] |
//! | `GET /api/v1/agent/wait?rev=N` | → [`WaitResponse`] when the host's revision passes `N`, or after `wait_secs` |
//! | `POST /api/v1/agent/run/plan`, `…/lease/acquire`, `…/lease/report` | rolling upgrades: see [`rollout`] |
//!
//! Every request carries the four [`headers`]: the host id (empty at enrollment), a unix
//! timestamp, a random nonce and an Ed25519 signature over [`signing_string`]. The server
//! refuses a timestamp more than [`REPLAY_WINDOW_SECS`] away from its clock and a nonce it has
//! seen within the window. Errors are `{"code": "...", "message": "..."}` like the admin API.
//!
//! Unknown fields are ignored on both sides (serde's default), so later issues can add runs
//! and leases (`run` in the check-in) without breaking older agents.

pub mod rollout;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Bumped when a change would break older agents; sent in every check-in.
pub const PROTOCOL_VERSION: u32 = 1;

/// How far a request's timestamp may be from the server's clock, either way.
pub const REPLAY_WINDOW_SECS: i64 = 60;

/// The request headers that authenticate an agent.
pub mod headers {
    pub const HOST: &str = "x-aptgate-host";
    pub const TIMESTAMP: &str = "x-aptgate-timestamp";
    pub const NONCE: &str = "x-aptgate-nonce";
    pub const SIGNATURE: &str = "x-aptgate-signature";
}

pub const ENROLL_PATH: &str = "/api/v1/agent/enroll";
pub const CHECKIN_PATH: &str = "/api/v1/agent/checkin";
pub const INVENTORY_PATH: &str = "/api/v1/agent/inventory";
pub const WAIT_PATH: &str = "/api/v1/agent/wait";

/// The bytes an agent signs: the method, the path with its query, the timestamp, the nonce and
/// the body's sha256, one per line under a version tag. The body is hashed as sent (for the
/// inventory: the gzip bytes).
pub fn signing_string(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    format!(
        "aptgate-agent-v1\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query,
        timestamp,
        nonce,
        hex::encode(Sha256::digest(body))
    )
    .into_bytes()
}

/// A host's Ed25519 key pair. The secret is 32 random bytes, kept hex-encoded in the agent's
/// state directory (mode 0600); the public half (hex) is the host's identity at the server.
pub struct HostKey(SigningKey);

impl HostKey {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads a key written by [`HostKey::to_hex`].
    pub fn from_hex(text: &str) -> Result<Self, SignatureError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SignatureError::BadKey)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| SignatureError::BadKey)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    /// The four authentication headers for one request, with a fresh nonce.
    pub fn sign_request(
        &self,
        host_id: &str,
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        let mut nonce = [0u8; 16];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut nonce);
        let nonce = hex::encode(nonce);
        let signature = self.0.sign(&signing_string(
            method,
            path_and_query,
            timestamp,
            &nonce,
            body,
        ));
        vec![
            (headers::HOST, host_id.to_owned()),
            (headers::TIMESTAMP, timestamp.to_string()),
            (headers::NONCE, nonce),
            (headers::SIGNATURE, hex::encode(signature.to_bytes())),
        ]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("not an Ed25519 key (64 hex characters)")]
    BadKey,
    #[error("malformed signature (128 hex characters)")]
    Malformed,
    #[error("the signature does not match the request")]
    Mismatch,
}

/// Checks a request's signature against a host's public key (hex). The caller checks the
/// timestamp window and the nonce.
pub fn verify_request(
    public_hex: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
    signature_hex: &str,
) -> Result<(), SignatureError> {
    let key: [u8; 32] = hex::decode(public_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::BadKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::BadKey)?;
    let signature: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Malformed)?;
    key.verify(
        &signing_string(method, path_and_query, timestamp, nonce, body),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| SignatureError::Mismatch)
}

/// What a host says about itself. Facts are never identity: the key is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    /// sha256 (hex) of `/etc/machine-id`: tells a cloned machine from a re-enrolled one
    /// without sending the id itself.
    pub machine_id_sha256: String,
    #[serde(default)]
    pub os_release: OsRelease,
    /// `dpkg --print-architecture` first, then `--print-foreign-architectures`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// The running kernel (`uname -r`).
    #[serde(default)]
    pub kernel: String,
    pub agent_version: String,
}

/// The fields of `/etc/os-release` the server shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub version_codename: String,
    #[serde(default)]
    pub pretty_name: String,
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token an admin created (`aptgate fleet token create`).
    pub token: String,
    /// The host's Ed25519 public key, hex; the request is signed with its secret half.
    pub public_key: String,
    pub facts: Facts,
    /// Labels the agent's configuration declares; admin-set labels win over these.
    #[serde(default)]
    pub labels: Labels,
}

/// Whether a host may fetch its sources and commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Active,
    /// Enrolled with a `--manual-approval` token (or flagged as a clone): waits for an admin.
    Pending,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub host_id: String,
    pub status: HostStatus,
    pub poll: Poll,
}

/// How often to check in, and how long a wait may be held open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub interval_secs: u64,
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckinRequest {
    pub protocol: u32,
    pub facts: Facts,
    #[serde(default)]
    pub labels: Labels,
    /// What the host's apt is pointed at now.
    #[serde(default)]
    pub sources: AppliedSources,
    /// Digest ([`inventory_digest`]) of the inventory the agent last uploaded successfully.
    #[serde(default)]
    pub inventory_digest: Option<String>,
    #[serde(default)]
    pub reboot: RebootState,
    /// Results of commands run since the last check-in.
    #[serde(default)]
    pub results: Vec<CommandResult>,
    /// Reserved for rolling upgrades; the run's progress goes to the lease calls
    /// ([`rollout`]), not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<serde_json::Value>,
    /// How the host stands against the package profiles it was last given (added after
    /// protocol 1 shipped: older agents send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSources {
    /// The [`DesiredSources::rev`] the agent last wrote, if any.
    #[serde(default)]
    pub rev: Option<String>,
    /// Every `deb` line apt sees on the host, as `URI SUITE COMPONENT…` (ours and others).
    #[serde(default)]
    pub lists: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootState {
    pub needed: bool,
    /// e.g. `/var/run/reboot-required`, `kernel 6.1.0-9 installed, 6.1.0-7 running`.
    #[serde(default)]
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckinResponse {
    pub status: HostStatus,
    /// The host's revision: a wait with this `rev` returns when something for it changes.
    pub rev: i64,
    /// What the host's aptgate source should say; the agent rewrites it when `rev` differs from
    /// what it applied.
    pub sources: DesiredSources,
    /// Commands to run now, oldest first.
    #[serde(default)]
    pub commands: Vec<Command>,
    /// The server has no inventory with the digest the agent sent: upload it.
    pub upload_inventory: bool,
    pub poll: Poll,
    /// The packages the profiles matching the host want (added after protocol 1 shipped:
    /// `None` from an older server, and for a pending host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<DesiredPackages>,
}

/// The merged desired packages of every profile whose selector matches the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPackages {
    /// Digest of everything below: the agent converges at most once per rev and inventory.
    pub rev: String,
    /// Sorted by name; packages in conflict are not here.
    #[serde(default)]
    pub packages: Vec<DesiredPackage>,
    /// Packages the matching profiles disagree on: neither wish is applied.
    #[serde(default)]
    pub conflicts: Vec<PackageConflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPackage {
    pub name: String,
    pub state: WantedState,
    /// For `present`: an exact version or a glob (`*`, `?`) the installed version must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The profiles that want it.
    #[serde(default)]
    pub profiles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WantedState {
    Present,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageConflict {
    pub name: String,
    /// What each profile wants, e.g. `office-tools: present`, `lockdown: absent`.
    pub wishes: Vec<String>,
}

/// The agent's view of its compliance, sent with each check-in. The server computes
/// compliance itself from the inventory; it takes only `error` from here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceReport {
    /// The [`DesiredPackages::rev`] this is measured against.
    pub rev: String,
    #[serde(default)]
    pub packages: Vec<PackageCompliance>,
    /// The end of the output of the last convergence's apt run, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageCompliance {
    pub package: String,
    /// `present`, `present 2.10-*`, `absent`, or the conflict's wishes.
    pub wanted: String,
    pub state: ComplianceState,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComplianceState {
    Ok,
    Missing,
    WrongVersion,
    PresentButAbsentWanted,
    Conflict,
}

/// The host's assignment, as apt sources. No entries: the host is unassigned and the agent
/// removes its aptgate source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSources {
    /// Digest of everything below; what the agent reports back as applied.
    pub rev: String,
    pub channel: Option<String>,
    pub entries: Vec<SourceEntry>,
    /// Every active signing key of the channel (several during a rotation), each written to
    /// `/etc/apt/keyrings/<file_name>` and named in `Signed-By`.
    pub keys: Vec<ChannelKey>,
    /// Rename the host's other sources out of apt's sight (reversibly) while this is active.
    #[serde(default)]
    pub disable_other_sources: bool,
    /// Replicas of the channel (full URIs like the entries', e.g.
    /// `http://replica-berlin.example.org:8080/channels/approved/`), tried in this order before
    /// the entries' own URIs, which stay the fallback: the agent writes them to an apt mirror
    /// list (`mirror+file:`). They serve the canonical's signed bytes unchanged, so a fallback
    /// is invisible to apt. Added after protocol 1 shipped: omitted when empty (the `rev` of a
    /// source without replicas is unchanged), and an older agent ignores it and fetches from
    /// the canonical server only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelKey {
    /// A bare file name ending in `.asc` (apt reads armored keys only under that suffix).
    pub file_name: String,
    pub fingerprint: String,
    pub armored: String,
}

/// One queued admin command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: i64,
    pub kind: CommandKind,
    /// Package names (`install`, `remove`, `upgrade`), optionally `name=version`.
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    Install,
    /// All upgradable packages, or only `packages`.
    Upgrade,
    Remove,
    /// `apt-get update` after rewriting the sources from the server's latest answer.
    RefreshSources,
    /// Upload the inventory now, even if unchanged.
    Report,
}

/// Output longer than this is cut (head and tail kept) before it is sent.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: i64,
    pub exit_code: i32,
    /// stdout and stderr, at most [`MAX_OUTPUT_BYTES`].
    pub output: String,
    pub started_at: i64,
    pub finished_at: i64,
}

/// One package from the dpkg database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub architecture: String,
    pub version: String,
    /// The source package (the binary's name when dpkg records none).
    pub source: String,
    /// The source version (the binary's version when dpkg records none).
    pub source_version: String,
    /// dpkg's `Status:` field, e.g. `install ok installed`.
    pub status: String,
}

/// The largest inventory the server accepts, uncompressed.
pub const MAX_INVENTORY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventoryUpload {
    /// [`inventory_digest`] of `packages`; the server recomputes it.
    pub digest: String,
    pub packages: Vec<InstalledPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventoryAccepted {
    pub digest: String,
    pub packages: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    pub rev: i64,
}

/// The digest of an inventory: sha256 of its packages sorted, one per line as
/// `name arch version source source_version status`. Order-independent, so an unchanged
/// dpkg database always gives the same digest.
pub fn inventory_digest(packages: &[InstalledPackage]) -> String {
    let mut sorted: Vec<&InstalledPackage> = packages.iter().collect();
    sorted.sort();
    let mut hash = Sha256::new();
    for p in sorted {
        for field in [
            &p.name,
            &p.architecture,
            &p.version,
            &p.source,
            &p.source_version,
            &p.status,
        ] {
            hash.update(field.as_bytes());
            hash.update(b"\t");
        }
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let key = HostKey::generate();
        let body = br#"{"a":1}"#;
        let headers = key.sign_request("h-1", "POST", CHECKIN_PATH, 1_700_000_000, body);
        let get = |name: &str| headers.iter().find(|(h, _)| *h == name).unwrap().1.clone();
        let (nonce, sig) = (get(headers::NONCE), get(headers::SIGNATURE));
        let check = |method: &str, path: &str, ts: i64, body: &[u8]| {
            verify_request(&key.public_hex(), method, path, ts, &nonce, body, &sig)
        };
        assert_eq!(check("POST", CHECKIN_PATH, 1_700_000_000, body), Ok(()));
        let mismatch = Err(SignatureError::Mismatch);
        assert_eq!(check("PUT", CHECKIN_PATH, 1_700_000_000, body), mismatch);
        assert_eq!(check("POST", WAIT_PATH, 1_700_000_000, body), mismatch);
        assert_eq!(check("POST", CHECKIN_PATH, 1_700_000_001, body), mismatch);
        assert_eq!(check("POST", CHECKIN_PATH, 1_700_000_000, b"{}"), mismatch);
        let other = HostKey::generate();
        assert_eq!(
            verify_request(
                &other.public_hex(),
                "POST",
                CHECKIN_PATH,
                1_700_000_000,
                &nonce,
                body,
                &sig
            ),
            mismatch
        );
    }

    #[test]
    fn a_key_survives_its_hex_form() {
        let key = HostKey::generate();
        let again = HostKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(key.public_hex(), again.public_hex());
        assert!(HostKey::from_hex("zz").is_err());
    }

    #[test]
    fn the_inventory_digest_ignores_order() {
        let p = |n: &str| InstalledPackage {
            name: n.into(),
            architecture: "amd64".into(),
            version: "1.0".into(),
            source: n.into(),
            source_version: "1.0".into(),
            status: "install ok installed".into(),
        };
        let a = inventory_digest(&[p("a"), p("b")]);
        assert_eq!(a, inventory_digest(&[p("b"), p("a")]));
        assert_ne!(a, inventory_digest(&[p("a")]));
    }
}
