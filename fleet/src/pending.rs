//! Pending updates, per host and fleet-wide, from each host's inventory (installed packages)
//! and its channel's current snapshot, plus the channel that one promotes from:
//!
//! - **available**: the channel has a newer version of an installed package (name,
//!   architecture) — apt would upgrade it now;
//! - **awaiting**: the channel it promotes from has a newer version than both the installed one
//!   and the channel's, and nobody declined that version for the channel — an approval away.
//!
//! Versions compare in dpkg's order (`index::compare_versions`); nothing is read from apt's
//! display text. Inventories are held as numbered package versions (`installed.rs`); what is
//! pending for each numbered version is worked out once per (channel, both snapshots,
//! declines), so the fleet queue over thousands of hosts is a pass over small integers.

use crate::assignment::pick;
use crate::error::{FleetError, Result};
use crate::installed::Installed;
use crate::selector::Selector;
use crate::store::{effective, Decline, HostRow};
use crate::Fleet;
use aptgate_agent::protocol::{InstalledPackage, InventoryUpload, Labels};
use aptgate_channels::fleet_view::NewestVersions;
use aptgate_channels::index::compare_versions;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Version maps kept (one per snapshot a channel published recently).
const VERSION_MAPS: usize = 16;
/// Per-package outcomes kept (one per channel × snapshots × declines).
const OUTCOMES: usize = 16;
/// Tries to have every inventory a computation needs numbered at once (numbers are dropped
/// when too many are held, possibly between loading and computing).
const LOAD_TRIES: usize = 3;

/// One update of one package on one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Update {
    pub name: String,
    pub architecture: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostPending {
    pub channel: Option<String>,
    pub available: Vec<Update>,
    pub awaiting: Vec<Update>,
}

/// One host's installed packages: (name, architecture) → version (profiles and impact read
/// these; the queue works on the numbered form, `installed.rs`).
pub(crate) type InstalledMap = HashMap<(String, String), String>;

#[derive(Default)]
pub struct PendingCache {
    versions: Mutex<HashMap<String, Arc<NewestVersions>>>,
    numbered: Mutex<Numbered>,
}

/// Numbered inventories, and what is pending for each number under each channel state.
#[derive(Default)]
struct Numbered {
    installed: Installed,
    /// Indexed by package number; valid for `installed.generation` = `generation`.
    outcomes: HashMap<OutcomeKey, Vec<Outcome>>,
    generation: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct OutcomeKey {
    channel: String,
    snapshot: String,
    upstream: Option<String>,
    declines: u64,
}

/// For one installed package version: the version it would go to, if any.
#[derive(Clone, Default)]
struct Outcome {
    available: Option<Arc<str>>,
    awaiting: Option<Arc<str>>,
}

/// One group of the fleet queue: a package going from one version to another on N hosts.
#[derive(Debug, Clone, Serialize)]
pub struct QueueGroup {
    pub name: String,
    pub from: String,
    pub to: String,
    pub channel: String,
    pub hosts: usize,
    /// Which hosts, when asked for (`?hosts=true`; at most [`MAX_LISTED_HOSTS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<HostRef>>,
}

/// A host named in the queue.
#[derive(Debug, Clone, Serialize)]
pub struct HostRef {
    pub id: String,
    pub hostname: String,
}

/// The most hosts listed per queue group.
pub const MAX_LISTED_HOSTS: usize = 1000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetPending {
    pub awaiting: Vec<QueueGroup>,
    pub available: Vec<QueueGroup>,
    pub hosts: usize,
    pub unassigned: usize,
    pub without_inventory: usize,
}

/// A channel's newest versions and those of the one it promotes from, with their snapshots.
struct ChannelVersions {
    snapshot: String,
    newest: Arc<NewestVersions>,
    upstream: Option<(String, Arc<NewestVersions>)>,
}

fn cap<K, V>(map: &mut HashMap<K, V>, max: usize) {
    if map.len() >= max {
        map.clear();
    }
}

/// Hosts to work out, by channel and inventory: (channel, digest) → host ids.
type Work<'a> = HashMap<(&'a str, &'a str), Vec<&'a str>>;

/// One channel's share of the work, ready to count: what is pending for each package number,
/// and each readable inventory with the hosts that have it.
struct ChannelWork<'a> {
    channel: &'a str,
    outcomes: &'a [Outcome],
    installed: &'a Installed,
    inventories: Vec<(&'a [&'a str], Arc<[u32]>)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Available,
    Awaiting,
}

impl Outcome {
    fn to(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Available => self.available.as_deref(),
            Kind::Awaiting => self.awaiting.as_deref(),
        }
    }
}

impl Numbered {
    /// What is pending for every numbered package under `key` (`cv`, `declined`).
    fn outcomes(
        &mut self,
        key: &OutcomeKey,
        cv: &ChannelVersions,
        declined: &Declined,
    ) -> &[Outcome] {
        if self.generation != self.installed.generation {
            self.outcomes.clear();
            self.generation = self.installed.generation;
        }
        let outcomes = self.outcomes.entry(key.clone()).or_default();
        for n in outcomes.len()..self.installed.len() {
            let p = self.installed.package(n as u32);
            outcomes.push(outcome(
                &p.name,
                &p.architecture,
                &p.version,
                &key.channel,
                cv,
                declined,
            ));
        }
        outcomes
    }
}

/// What is pending for `name` (`arch`) at `version` on a host assigned `channel`.
fn outcome(
    name: &str,
    arch: &str,
    version: &str,
    channel: &str,
    cv: &ChannelVersions,
    declined: &Declined,
) -> Outcome {
    let key = (name.to_owned(), arch.to_owned());
    let in_channel = cv.newest.get(&key);
    let available = in_channel
        .filter(|c| compare_versions(c, version).is_gt())
        .map(|to| Arc::from(to.as_str()));
    let awaiting = cv.upstream.as_ref().and_then(|(_, upstream)| {
        let to = upstream.get(&key)?;
        let newer_than_channel = in_channel.is_none_or(|c| compare_versions(to, c).is_gt());
        (compare_versions(to, version).is_gt()
            && newer_than_channel
            && !declined.contains(channel, name, arch, to))
        .then(|| Arc::from(to.as_str()))
    });
    Outcome {
        available,
        awaiting,
    }
}

impl Fleet {
    pub(crate) async fn newest(
        &self,
        channel: &str,
    ) -> Result<Option<(String, Arc<NewestVersions>)>> {
        let Some((snapshot, newest)) = self.channels.channel_newest_versions(channel).await? else {
            return Ok(None);
        };
        let mut cache = self.pending.versions.lock().expect("lock poisoned");
        let newest = match cache.get(&snapshot) {
            Some(n) => n.clone(),
            None => {
                cap(&mut cache, VERSION_MAPS);
                let n = Arc::new(newest);
                cache.insert(snapshot.clone(), n.clone());
                n
            }
        };
        Ok(Some((snapshot, newest)))
    }

    async fn channel_versions(&self, channel: &str) -> Result<Option<ChannelVersions>> {
        let Some((snapshot, newest)) = self.newest(channel).await? else {
            return Ok(None);
        };
        let rules = self.channels.channel_rules(channel).await?;
        let upstream = match &rules.promotes_from {
            Some(from) => self.newest(from.as_str()).await?,
            None => None,
        };
        Ok(Some(ChannelVersions {
            snapshot,
            newest,
            upstream,
        }))
    }

    /// The installed packages of a stored inventory, from its numbered form (read and numbered
    /// first if this server has not seen it yet).
    pub(crate) async fn installed(&self, digest: &str) -> Result<Option<Arc<InstalledMap>>> {
        self.load_inventories(std::iter::once(digest)).await?;
        let numbered = self.pending.numbered.lock().expect("lock poisoned");
        let Some(numbers) = numbered.installed.get(digest) else {
            return Ok(None);
        };
        let map = numbers
            .iter()
            .map(|n| {
                let p = numbered.installed.package(*n);
                (
                    (p.name.to_string(), p.architecture.to_string()),
                    p.version.to_string(),
                )
            })
            .collect();
        Ok(Some(Arc::new(map)))
    }

    /// Numbers an inventory the server just accepted, so the queue need not read it back.
    pub(crate) fn remember_inventory(&self, digest: &str, packages: &[InstalledPackage]) {
        let mut numbered = self.pending.numbered.lock().expect("lock poisoned");
        numbered.installed.insert(digest, packages);
    }

    /// Reads and numbers the stored inventories among `digests` not numbered yet.
    async fn load_inventories(&self, digests: impl Iterator<Item = &str>) -> Result<()> {
        let missing: Vec<&str> = {
            let numbered = self.pending.numbered.lock().expect("lock poisoned");
            digests
                .filter(|d| numbered.installed.get(d).is_none())
                .collect()
        };
        for digest in missing {
            let Some((gzip, _)) = self.store.inventory(digest).await? else {
                continue;
            };
            let upload = tokio::task::spawn_blocking(move || {
                let mut json = Vec::new();
                flate2::read::GzDecoder::new(gzip.as_slice())
                    .take(aptgate_agent::protocol::MAX_INVENTORY_BYTES as u64)
                    .read_to_end(&mut json)
                    .ok()?;
                serde_json::from_slice::<InventoryUpload>(&json).ok()
            })
            .await
            .expect("reading an inventory does not panic");
            match upload {
                Some(upload) => self.remember_inventory(digest, &upload.packages),
                None => tracing::warn!(digest, "stored inventory unreadable"),
            }
        }
        Ok(())
    }

    /// Works out `work`: calls `each` once per channel with a published snapshot (in
    /// `versions`), under the lock (`each` only counts and copies).
    async fn with_outcomes(
        &self,
        work: &Work<'_>,
        versions: &HashMap<&str, ChannelVersions>,
        declined: &Declined,
        mut each: impl FnMut(ChannelWork<'_>),
    ) -> Result<()> {
        let mut channels: Vec<&str> = versions.keys().copied().collect();
        channels.sort_unstable();
        for attempt in 1..=LOAD_TRIES {
            self.load_inventories(work.keys().map(|(_, d)| *d)).await?;
            let mut numbered = self.pending.numbered.lock().expect("lock poisoned");
            let complete = work
                .keys()
                .all(|(_, d)| numbered.installed.get(d).is_some());
            if !complete && attempt < LOAD_TRIES {
                continue;
            }
            if numbered.outcomes.len() + channels.len() > OUTCOMES.max(channels.len()) {
                numbered.outcomes.clear();
            }
            let keys: Vec<OutcomeKey> = channels
                .iter()
                .map(|channel| {
                    let cv = &versions[channel];
                    let key = OutcomeKey {
                        channel: (*channel).to_owned(),
                        snapshot: cv.snapshot.clone(),
                        upstream: cv.upstream.as_ref().map(|(s, _)| s.clone()),
                        declines: declined.generation,
                    };
                    numbered.outcomes(&key, cv, declined);
                    key
                })
                .collect();
            let numbered = &*numbered;
            for (channel, key) in channels.iter().zip(&keys) {
                let inventories = work
                    .iter()
                    .filter(|((c, _), _)| c == channel)
                    .filter_map(|((_, digest), hosts)| {
                        Some((hosts.as_slice(), numbered.installed.get(digest)?))
                    })
                    .collect();
                each(ChannelWork {
                    channel,
                    outcomes: &numbered.outcomes[key],
                    installed: &numbered.installed,
                    inventories,
                });
            }
            return Ok(());
        }
        Ok(())
    }

    /// The published channels' versions for the channels in `work`.
    async fn versions_for<'a>(&self, work: &Work<'a>) -> Result<HashMap<&'a str, ChannelVersions>> {
        let mut versions = HashMap::new();
        for (channel, _) in work.keys() {
            if versions.contains_key(channel) {
                continue;
            }
            if let Some(cv) = self.channel_versions(channel).await? {
                versions.insert(*channel, cv);
            }
        }
        Ok(versions)
    }

    /// What is pending on one host; `None` when it is unassigned or has no inventory yet.
    pub async fn host_pending(
        &self,
        host: &HostRow,
        labels: &Labels,
    ) -> Result<Option<Arc<HostPending>>> {
        let mut pending = self.pending_of_hosts(&[(host, labels)]).await?;
        Ok(pending.remove(&host.id).map(|(_, p)| p))
    }

    /// What is pending on each of `hosts` (those assigned a published channel and with an
    /// inventory), by host id.
    pub async fn pending_of_hosts(
        &self,
        hosts: &[(&HostRow, &Labels)],
    ) -> Result<HashMap<String, (String, Arc<HostPending>)>> {
        let rules = self.rules().await?;
        let declined = Declined::new(self.store.declines().await?);
        let mut work = Work::new();
        for (host, labels) in hosts {
            let (Some(rule), Some(digest)) = (pick(&rules, labels), &host.inventory_digest) else {
                continue;
            };
            work.entry((rule.channel.as_str(), digest.as_str()))
                .or_default()
                .push(host.id.as_str());
        }
        let versions = self.versions_for(&work).await?;
        let mut out = HashMap::new();
        self.with_outcomes(&work, &versions, &declined, |w| {
            for (hosts, numbers) in &w.inventories {
                let result = Arc::new(host_pending(&w, numbers));
                for id in hosts.iter() {
                    out.insert((*id).to_owned(), (w.channel.to_owned(), result.clone()));
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// The fleet queue: awaiting and available updates over the active hosts `selector`
    /// matches, grouped by (package, from → to, channel) with host counts, most hosts first.
    /// With `list_hosts`, each group also names its hosts.
    pub async fn fleet_pending(
        &self,
        selector: &Selector,
        list_hosts: bool,
    ) -> Result<FleetPending> {
        let hosts = self.store.hosts().await?;
        let mut labels = self.store.all_labels().await?;
        let rules = self.rules().await?;
        let declined = Declined::new(self.store.declines().await?);
        let mut out = FleetPending::default();
        let mut work = Work::new();
        for host in hosts.iter().filter(|h| h.status == "active") {
            let host_labels = effective(&labels.remove(&host.id).unwrap_or_default());
            if !selector.matches(&host_labels) {
                continue;
            }
            out.hosts += 1;
            let Some(rule) = pick(&rules, &host_labels) else {
                out.unassigned += 1;
                continue;
            };
            if let Some(digest) = &host.inventory_digest {
                work.entry((rule.channel.as_str(), digest.as_str()))
                    .or_default()
                    .push(host.id.as_str());
            }
        }
        let versions = self.versions_for(&work).await?;
        let mut counted = 0;
        self.with_outcomes(&work, &versions, &declined, |w| {
            counted += w.inventories.iter().map(|(h, _)| h.len()).sum::<usize>();
            out.awaiting
                .extend(count_groups(&w, Kind::Awaiting, list_hosts));
            out.available
                .extend(count_groups(&w, Kind::Available, list_hosts));
        })
        .await?;
        out.without_inventory = out.hosts - out.unassigned - counted;
        sort_groups(&mut out.awaiting);
        sort_groups(&mut out.available);
        if list_hosts {
            let names: HashMap<&str, String> = hosts
                .iter()
                .map(|h| {
                    let facts = serde_json::from_str::<aptgate_agent::protocol::Facts>(&h.facts);
                    (h.id.as_str(), facts.map(|f| f.hostname).unwrap_or_default())
                })
                .collect();
            for g in out.awaiting.iter_mut().chain(out.available.iter_mut()) {
                for h in g.on.iter_mut().flatten() {
                    h.hostname = names.get(h.id.as_str()).cloned().unwrap_or_default();
                }
            }
        }
        Ok(out)
    }

    /// Checks `name=version` against what `channel` promotes from (for approvals).
    pub(crate) async fn upstream_version_check(
        &self,
        channel: &str,
        name: &str,
        version: &str,
    ) -> Result<String> {
        let rules = self.channels.channel_rules(channel).await?;
        let from = rules.promotes_from.ok_or_else(|| {
            FleetError::conflict(format!(
                "channel {channel} promotes from no other channel\nhint: approvals promote \
                 into a channel that has promotes_from"
            ))
        })?;
        let (_, newest) = self
            .newest(from.as_str())
            .await?
            .ok_or_else(|| FleetError::conflict(format!("channel {from} publishes nothing yet")))?;
        let versions: BTreeMap<&str, &str> = newest
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, a), v)| (a.as_str(), v.as_str()))
            .collect();
        if versions.is_empty() {
            return Err(FleetError::not_found(
                "unknown_package",
                format!("{from} has no package {name}"),
            ));
        }
        if !versions.values().any(|v| *v == version) {
            let have: Vec<String> = versions.iter().map(|(a, v)| format!("{v} ({a})")).collect();
            return Err(FleetError::conflict(format!(
                "{from} has {name} {}, not {version}\nhint: approve the version {from} has (see \
                 `aptgate fleet pending`)",
                have.join(", ")
            )));
        }
        Ok(from.to_string())
    }
}

/// What is pending on a host with inventory `numbers`.
fn host_pending(w: &ChannelWork<'_>, numbers: &[u32]) -> HostPending {
    let mut result = HostPending {
        channel: Some(w.channel.to_owned()),
        ..HostPending::default()
    };
    for &n in numbers {
        let outcome = &w.outcomes[n as usize];
        let p = w.installed.package(n);
        let update = |to: &str| Update {
            name: p.name.to_string(),
            architecture: p.architecture.to_string(),
            from: p.version.to_string(),
            to: to.to_owned(),
        };
        if let Some(to) = outcome.to(Kind::Available) {
            result.available.push(update(to));
        }
        if let Some(to) = outcome.to(Kind::Awaiting) {
            result.awaiting.push(update(to));
        }
    }
    result.available.sort();
    result.awaiting.sort();
    result
}

/// The queue groups of one channel for one kind of update: each (package, from, to) with the
/// hosts that have it. Every package number with an update gets a group number first, so
/// counting a host is a pass over small integers; a host counts once per group, whatever its
/// architectures.
fn count_groups(w: &ChannelWork<'_>, kind: Kind, list_hosts: bool) -> Vec<QueueGroup> {
    const NONE: u32 = u32::MAX;
    let mut index: HashMap<(&str, &str, &str), u32> = HashMap::new();
    let mut keys: Vec<(&str, &str, &str)> = Vec::new();
    let group_of: Vec<u32> = w
        .outcomes
        .iter()
        .enumerate()
        .map(|(n, outcome)| {
            let Some(to) = outcome.to(kind) else {
                return NONE;
            };
            let p = w.installed.package(n as u32);
            *index
                .entry((&*p.name, &*p.version, to))
                .or_insert_with_key(|key| {
                    keys.push(*key);
                    (keys.len() - 1) as u32
                })
        })
        .collect();
    let mut hosts = vec![0usize; keys.len()];
    let mut listed: Vec<Vec<HostRef>> = vec![Vec::new(); if list_hosts { keys.len() } else { 0 }];
    let mut groups: Vec<u32> = Vec::new();
    for (ids, numbers) in &w.inventories {
        groups.clear();
        groups.extend(
            numbers
                .iter()
                .map(|&n| group_of[n as usize])
                .filter(|&g| g != NONE),
        );
        groups.sort_unstable();
        groups.dedup();
        for &g in &groups {
            hosts[g as usize] += ids.len();
            if let Some(list) = listed.get_mut(g as usize) {
                let room = MAX_LISTED_HOSTS.saturating_sub(list.len());
                list.extend(ids.iter().take(room).map(|id| HostRef {
                    id: (*id).to_owned(),
                    hostname: String::new(),
                }));
            }
        }
    }
    let mut listed = listed.into_iter();
    keys.into_iter()
        .zip(hosts)
        .map(|(key, hosts)| (key, hosts, listed.next()))
        .filter(|(_, hosts, _)| *hosts > 0)
        .map(|((name, from, to), hosts, on)| QueueGroup {
            name: name.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            channel: w.channel.to_owned(),
            hosts,
            on: on.map(|mut on| {
                on.sort_by(|a, b| a.id.cmp(&b.id));
                on
            }),
        })
        .collect()
}

/// Most hosts first, then by package and versions (dpkg order).
fn sort_groups(groups: &mut [QueueGroup]) {
    groups.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| compare_versions(&a.from, &b.from))
            .then_with(|| compare_versions(&a.to, &b.to))
            .then_with(|| a.channel.cmp(&b.channel))
    });
}

/// Declined versions, with a fingerprint of the set (part of the cache key).
struct Declined {
    set: HashSet<(String, String, String, String)>,
    generation: u64,
}

impl Declined {
    fn new(declines: Vec<Decline>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut set = HashSet::new();
        let mut sorted: Vec<_> = declines
            .into_iter()
            .map(|d| (d.channel, d.name, d.architecture, d.version))
            .collect();
        sorted.sort();
        sorted.hash(&mut hasher);
        set.extend(sorted);
        Self {
            set,
            generation: hasher.finish(),
        }
    }

    fn contains(&self, channel: &str, name: &str, arch: &str, version: &str) -> bool {
        let key = |a: &str| {
            (
                channel.to_owned(),
                name.to_owned(),
                a.to_owned(),
                version.to_owned(),
            )
        };
        !self.set.is_empty() && (self.set.contains(&key(arch)) || self.set.contains(&key("any")))
    }
}
