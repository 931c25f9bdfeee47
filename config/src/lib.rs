//! Typed aptgate configuration.
//!
//! Values are layered: built-in defaults < the TOML file < `APTGATE_…` environment variables <
//! command-line flags. [`load`] merges the layers and remembers where every value came from, so
//! `aptgate config show` can explain the effective configuration. When no source is configured,
//! [`host_sources`] imports the host's own apt sources so a fresh Debian/Ubuntu host mirrors what
//! it already uses.

mod host_apt;
mod layering;
mod names;
mod rollout;

pub use host_apt::{host_sources, HostImport, SkippedEntry};
pub use layering::{load, ConfigError, LoadOptions, Loaded, Origin, Override};
pub use names::{ChannelName, InvalidName, SourceName};
pub use rollout::{MaxConcurrent, RolloutConfig, RolloutGroupConfig, WindowConfig};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// The whole configuration, as the server sees it after layering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where metadata, the store and logs live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub mirror: MirrorConfig,
    /// Where `aptgate serve` looks for the host's apt sources when `sources` is empty.
    pub host_apt: HostAptConfig,
    pub database: DatabaseConfig,
    pub publish: PublishConfig,
    pub sync: SyncConfig,
    pub retention: RetentionConfig,
    /// Named upstream sources. Empty means "import the host's apt sources".
    pub sources: Vec<SourceConfig>,
    /// Channels published at `/channels/<name>/`.
    pub channels: Vec<ChannelConfig>,
    /// Hosts running `aptgate-agent`: check-in timing, where they fetch from, assignment rules.
    pub fleet: FleetConfig,
    /// Rolling upgrades: rollout groups (`[[rollout.groups]]`) and how waiting agents retry.
    pub rollout: RolloutConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./aptgate-data"),
            server: ServerConfig::default(),
            mirror: MirrorConfig::default(),
            host_apt: HostAptConfig::default(),
            database: DatabaseConfig::default(),
            publish: PublishConfig::default(),
            sync: SyncConfig::default(),
            retention: RetentionConfig::default(),
            sources: Vec::new(),
            channels: Vec::new(),
            fleet: FleetConfig::default(),
            rollout: RolloutConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Loopback by default: exposing a mirror is a deliberate choice.
    pub listen: SocketAddr,
    /// A client must send a whole request head within this long, and an idle kept-alive
    /// connection is closed after it (slowloris); `0` turns the limit off.
    #[serde(with = "humantime_secs")]
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers) accepted; bigger ones get a 431
    /// and the connection is closed. apt's requests are a few hundred bytes.
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 8 * 1024,
        }
    }
}

/// How the pull-through mirror talks to upstreams and caches their answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// How long a fetched `InRelease` is served before it is revalidated upstream.
    #[serde(with = "humantime_secs")]
    pub release_freshness: Duration,
    /// How long an upstream 404 is remembered (pool and by-hash files; never for an index a
    /// verified Release lists by name).
    #[serde(with = "humantime_secs")]
    pub negative_cache: Duration,
    /// How long, after upstream publishes a new Release, the indices of the previous one stay
    /// reachable under `by-hash/` for clients that still hold it.
    #[serde(with = "humantime_secs")]
    pub by_hash_grace: Duration,
    /// Give up connecting to an upstream after this long.
    #[serde(with = "humantime_secs")]
    pub connect_timeout: Duration,
    /// Give up on an upstream that sends nothing for this long (a stalled transfer).
    #[serde(with = "humantime_secs")]
    pub read_timeout: Duration,
    /// An upstream transfer slower than this many bytes a second over a whole
    /// `min_transfer_window` is abandoned (a trickling upstream); `0` turns the rule off.
    pub min_transfer_rate: u64,
    /// The window `min_transfer_rate` is measured over.
    #[serde(with = "humantime_secs")]
    pub min_transfer_window: Duration,
    /// Hosts (`host` for its scheme's default port, or `host:port`) upstreams may redirect
    /// to besides their own host and port. Any other redirect target is refused.
    pub allowed_redirect_hosts: Vec<String>,
    /// Extra PEM CA certificates to trust for `https://` upstreams (besides the system's).
    pub extra_ca_certs: Vec<PathBuf>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            release_freshness: Duration::from_secs(300),
            negative_cache: Duration::from_secs(30),
            by_hash_grace: Duration::from_secs(6 * 3600),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_transfer_rate: 1024,
            min_transfer_window: Duration::from_secs(60),
            allowed_redirect_hosts: Vec::new(),
            extra_ca_certs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostAptConfig {
    /// The apt configuration directory whose `sources.list` and `sources.list.d/` are imported.
    pub dir: PathBuf,
}

impl Default for HostAptConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/etc/apt"),
        }
    }
}

/// Where the catalog (packages, snapshots, channels, audit log) lives.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://USER@HOST/DB` or `sqlite://PATH`; empty means `catalog.sqlite3` in the data
    /// directory.
    pub url: String,
}

/// A database URL can hold a password: never print it.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match (self.url.find("://"), self.url.find('@')) {
            (Some(_), Some(at)) => format!("***{}", &self.url[at..]),
            _ => self.url.clone(),
        };
        f.debug_struct("DatabaseConfig")
            .field("url", &shown)
            .finish()
    }
}

/// How channels are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// The signing key's name: its public key is served at `/keys/<key_name>.asc`.
    pub key_name: String,
    /// `Valid-Until` = signing time + this; `0` publishes without `Valid-Until`. With it set,
    /// the server re-signs each channel's Release before it expires.
    #[serde(with = "humantime_secs")]
    pub valid_until: Duration,
    /// How long a superseded index stays reachable under `by-hash/`.
    #[serde(with = "humantime_secs")]
    pub by_hash_grace: Duration,
    /// The URL hosts reach this server at (`http://mirror.example.org:8470`); when set, each
    /// channel's Release carries apt's `Snapshots:` field pointing at the snapshots of its
    /// history, served under `/channels/<channel>/snapshots/<id>/`.
    pub public_url: String,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            key_name: "aptgate".into(),
            valid_until: Duration::ZERO,
            by_hash_grace: Duration::from_secs(24 * 3600),
            public_url: String::new(),
        }
    }
}

/// Syncs `aptgate serve` runs on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Sync every source this often (`6h`); `0` syncs only on `aptgate sync`.
    #[serde(with = "humantime_secs")]
    pub interval: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(6 * 3600),
        }
    }
}

/// How long snapshots and blobs nobody uses are kept, and when garbage collection runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// A snapshot no channel points at is kept this long after it was created, last used (a
    /// channel moved to it, a snapshot was derived from it) or left by a channel.
    #[serde(with = "humantime_secs")]
    pub keep_for: Duration,
    /// However old, the newest this many such snapshots are kept too.
    pub keep_last: usize,
    /// A blob written, or a snapshot used, within this long is never collected: a collection
    /// racing a sync, promotion or download deletes nothing they need.
    #[serde(with = "humantime_secs")]
    pub grace: Duration,
    /// `aptgate serve` collects garbage this often; `0` only on `aptgate gc`.
    #[serde(with = "humantime_secs")]
    pub gc_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep_for: Duration::from_secs(30 * 86400),
            keep_last: 10,
            grace: Duration::from_secs(6 * 3600),
            gc_interval: Duration::from_secs(86400),
        }
    }
}

/// The fleet: how often agents check in, how long their long-poll wait is held, the base URL
/// hosts fetch channels from, and assignment rules kept in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Agents check in this often (plus jitter) when nothing wakes them earlier.
    #[serde(with = "humantime_secs")]
    pub checkin_interval: Duration,
    /// How long the server holds an agent's wait (`GET /api/v1/agent/wait`) open.
    #[serde(with = "humantime_secs")]
    pub wait: Duration,
    /// The base URL hosts reach this server at (`https://apt.example.org`), used in the apt
    /// sources agents write unless a rule names a mirror; empty: the `Host` of the check-in.
    pub public_url: String,
    /// Assignment rules: the most specific matching selector wins, then the higher priority.
    pub rules: Vec<FleetRuleConfig>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            checkin_interval: Duration::from_secs(15 * 60),
            wait: Duration::from_secs(5 * 60),
            public_url: String::new(),
            rules: Vec::new(),
        }
    }
}

/// An assignment rule: hosts whose labels match `selector` (`k=v,k2=v2`, all must match; empty
/// matches every host) use `channel`, fetched from `mirror` (a base URL) if set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRuleConfig {
    pub name: String,
    #[serde(default)]
    pub selector: String,
    pub channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(default)]
    pub priority: i64,
    /// Have agents rename the host's other apt sources out of the way (reversibly).
    #[serde(default)]
    pub disable_other_sources: bool,
}

/// Which packages a channel keeps in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retain {
    /// Stored when first asked for; a sync stores at once each referenced package that
    /// leaves upstream's index. A promotion fetches nothing.
    #[default]
    Used,
    /// Everything new to the channel is stored before it moves (small curated channels).
    All,
}

/// When a sync downloads the `.deb` files its snapshot references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchPolicy {
    /// When a host first asks for one (or a promotion needs it).
    #[default]
    OnDemand,
    /// All of them during the sync, resumable.
    Immediate,
}

/// A channel: a named, published pointer to a snapshot, with the rules that move it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: ChannelName,
    /// Suites to publish; empty publishes every suite of the snapshot.
    #[serde(default)]
    pub suites: Vec<String>,
    /// Follow sources automatically (the usual `testing`): `follows = "debian"` moves the
    /// channel to every new snapshot a sync of `debian` creates; several sources
    /// (`follows = ["debian", "inhouse"]`) move it to their latest snapshots merged per suite
    /// (the highest version of each package and architecture wins) whenever any of them syncs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub follows: Vec<SourceName>,
    /// The channel promotions into this one come from (`approved` promotes from `testing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotes_from: Option<ChannelName>,
    /// The snapshot must have been in `promotes_from` at least this long (`72h`).
    #[serde(default, with = "humantime_secs")]
    pub min_soak: Duration,
    /// Whether `promote --only` (selected updates) is allowed.
    #[serde(default = "yes")]
    pub selective: bool,
    /// Auto-approval: package versions in `promotes_from` first seen at least this long ago
    /// are promoted on their own (after each scheduled sync, or `aptgate auto-approve`);
    /// `0` turns it off.
    #[serde(default, with = "humantime_secs")]
    pub auto_approve_after: Duration,
    /// `used` (default): packages are stored when first asked for and rescued when they
    /// leave upstream; `all`: every package new to the channel is stored before it moves.
    #[serde(default)]
    pub retain: Retain,
}

fn yes() -> bool {
    true
}

/// `"debian"` or `["debian", "inhouse"]`: the single-string form stays valid.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SourceName>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(SourceName),
        Many(Vec<SourceName>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => Vec::new(),
        Some(Raw::One(name)) => vec![name],
        Some(Raw::Many(names)) => names,
    })
}

/// Where a source's packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// An upstream apt repository: fetched over HTTP, its `InRelease` verified.
    #[default]
    Upstream,
    /// An in-house repository: `.deb` files uploaded to aptgate (`aptgate upload`); no URL
    /// and no keyring.
    Local,
}

/// One source of packages: an upstream apt repository, or a local one fed by uploads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// An upstream source is served at `/mirror/<name>/`.
    pub name: SourceName,
    /// `upstream` (default) or `local`.
    #[serde(default, skip_serializing_if = "is_upstream")]
    pub kind: SourceKind,
    /// The repository's base URL (the directory holding `dists/` and `pool/`); required for
    /// an upstream source, absent for a local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
    #[serde(default)]
    pub suites: Vec<String>,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    /// OpenPGP public key files (armored or binary, one or many keys each) that may sign this
    /// source's `InRelease`.
    #[serde(default)]
    pub keyring: Vec<PathBuf>,
    /// Armored public keys given inline (deb822 `Signed-By:` blocks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_keys: Vec<String>,
    /// When `aptgate sync` downloads the `.deb` files: `on_demand` or `immediate`.
    #[serde(default)]
    pub policy: FetchPolicy,
    /// Where a package upstream no longer has is looked for, in order: URL templates of
    /// repository roots (the pool path is appended), verified against the recorded sha256.
    /// `{last_seen}` is the last sync that saw the package (UTC, `%Y%m%dT%H%M%SZ`), e.g.
    /// `https://snapshot.example.org/archive/debian/{last_seen}/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
}

fn is_upstream(kind: &SourceKind) -> bool {
    *kind == SourceKind::Upstream
}

impl SourceConfig {
    pub fn is_local(&self) -> bool {
        self.kind == SourceKind::Local
    }
}

/// Durations are written as whole seconds or with a unit: `300`, `"300s"`, `"5m"`, `"2h"`, `"1d"`.
pub mod humantime_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }

    pub fn format_duration(d: Duration) -> String {
        let s = d.as_secs();
        match s {
            0 => "0s".into(),
            s if s % 86400 == 0 => format!("{}d", s / 86400),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }

    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 5m, 2h, 1d"))?;
        let mult = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {text:?}: use s, m, h or d"
                ))
            }
        };
        Ok(Duration::from_secs(n * mult))
    }
}
