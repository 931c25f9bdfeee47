//! Pending updates, per host and fleet-wide, from each host's inventory (installed packages)
//! and its channel's current snapshot, plus the channel that one promotes from:
//!
//! - **available**: the channel has a newer version of an installed package (name,
//!   architecture) — apt would upgrade it now;
//! - **awaiting**: the channel it promotes from has a newer version than both the installed one
//!   and the channel's, and nobody declined that version for the channel — an approval away.
//!
//! Versions compare in dpkg's order (`index::compare_versions`); nothing is read from apt's
//! display text. Per-host results are cached by (inventory, both snapshots, declines), the
//! version maps by snapshot, so the fleet queue over thousands of hosts is mostly lookups.

use crate::assignment::pick;
use crate::error::{FleetError, Result};
use crate::selector::Selector;
use crate::store::{effective, Decline, HostRow};
use crate::Fleet;
use aptgate_agent::protocol::{InventoryUpload, Labels};
use aptgate_channels::fleet_view::NewestVersions;
use aptgate_channels::index::compare_versions;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Version maps kept (one per snapshot a channel published recently).
const VERSION_MAPS: usize = 16;
/// Parsed inventories kept.
const INVENTORIES: usize = 512;
/// Per-host results kept.
const RESULTS: usize = 200_000;

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

/// Installed packages: (name, architecture) → version.
pub(crate) type Installed = HashMap<(String, String), String>;

#[derive(Default)]
pub struct PendingCache {
    versions: Mutex<HashMap<String, Arc<NewestVersions>>>,
    inventories: Mutex<HashMap<String, Arc<Installed>>>,
    results: Mutex<HashMap<ResultKey, Arc<HostPending>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ResultKey {
    digest: String,
    channel: String,
    snapshot: String,
    upstream: Option<String>,
    declines: u64,
}

/// One group of the fleet queue: a package going from one version to another on N hosts.
#[derive(Debug, Clone, Serialize)]
pub struct QueueGroup {
    pub name: String,
    pub from: String,
    pub to: String,
    pub channel: String,
    pub hosts: usize,
}

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

    /// The installed packages of a stored inventory (cached by digest).
    pub(crate) async fn installed(&self, digest: &str) -> Result<Option<Arc<Installed>>> {
        if let Some(i) = self
            .pending
            .inventories
            .lock()
            .expect("lock poisoned")
            .get(digest)
        {
            return Ok(Some(i.clone()));
        }
        let Some((gzip, _)) = self.store.inventory(digest).await? else {
            return Ok(None);
        };
        let installed = tokio::task::spawn_blocking(move || {
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(gzip.as_slice())
                .take(aptgate_agent::protocol::MAX_INVENTORY_BYTES as u64)
                .read_to_end(&mut json)
                .ok()?;
            let upload: InventoryUpload = serde_json::from_slice(&json).ok()?;
            Some(
                upload
                    .packages
                    .into_iter()
                    .filter(|p| p.status.rsplit(' ').next() == Some("installed"))
                    .map(|p| ((p.name, p.architecture), p.version))
                    .collect::<Installed>(),
            )
        })
        .await
        .expect("reading an inventory does not panic");
        let Some(installed) = installed else {
            tracing::warn!(digest, "stored inventory unreadable");
            return Ok(None);
        };
        let installed = Arc::new(installed);
        let mut cache = self.pending.inventories.lock().expect("lock poisoned");
        cap(&mut cache, INVENTORIES);
        cache.insert(digest.to_owned(), installed.clone());
        Ok(Some(installed))
    }

    /// What is pending on one host assigned `channel` (versions `cv`), given its inventory.
    async fn pending_for(
        &self,
        digest: &str,
        channel: &str,
        cv: &ChannelVersions,
        declined: &Declined,
    ) -> Result<Option<Arc<HostPending>>> {
        let key = ResultKey {
            digest: digest.to_owned(),
            channel: channel.to_owned(),
            snapshot: cv.snapshot.clone(),
            upstream: cv.upstream.as_ref().map(|(s, _)| s.clone()),
            declines: declined.generation,
        };
        if let Some(r) = self
            .pending
            .results
            .lock()
            .expect("lock poisoned")
            .get(&key)
        {
            return Ok(Some(r.clone()));
        }
        let Some(installed) = self.installed(digest).await? else {
            return Ok(None);
        };
        let mut result = HostPending {
            channel: Some(channel.to_owned()),
            ..HostPending::default()
        };
        for ((name, arch), version) in installed.iter() {
            let key = (name.clone(), arch.clone());
            let in_channel = cv.newest.get(&key);
            if let Some(to) = in_channel.filter(|c| compare_versions(c, version).is_gt()) {
                result.available.push(Update {
                    name: name.clone(),
                    architecture: arch.clone(),
                    from: version.clone(),
                    to: to.clone(),
                });
            }
            let Some((_, upstream)) = &cv.upstream else {
                continue;
            };
            let Some(to) = upstream.get(&key) else {
                continue;
            };
            let newer_than_channel = in_channel.is_none_or(|c| compare_versions(to, c).is_gt());
            if compare_versions(to, version).is_gt()
                && newer_than_channel
                && !declined.contains(channel, name, arch, to)
            {
                result.awaiting.push(Update {
                    name: name.clone(),
                    architecture: arch.clone(),
                    from: version.clone(),
                    to: to.clone(),
                });
            }
        }
        result.available.sort();
        result.awaiting.sort();
        let result = Arc::new(result);
        let mut cache = self.pending.results.lock().expect("lock poisoned");
        cap(&mut cache, RESULTS);
        cache.insert(key, result.clone());
        Ok(Some(result))
    }

    /// What is pending on one host; `None` when it is unassigned or has no inventory yet.
    pub async fn host_pending(
        &self,
        host: &HostRow,
        labels: &Labels,
    ) -> Result<Option<Arc<HostPending>>> {
        let Some(digest) = &host.inventory_digest else {
            return Ok(None);
        };
        let rules = self.rules().await?;
        let Some(rule) = pick(&rules, labels) else {
            return Ok(None);
        };
        let Some(cv) = self.channel_versions(&rule.channel).await? else {
            return Ok(None);
        };
        let declined = Declined::new(self.store.declines().await?);
        self.pending_for(digest, &rule.channel, &cv, &declined)
            .await
    }

    /// What is pending on each of `hosts` (those assigned a published channel and with an
    /// inventory), by host id.
    pub async fn pending_of_hosts(
        &self,
        hosts: &[(&HostRow, &Labels)],
    ) -> Result<HashMap<String, (String, Arc<HostPending>)>> {
        let rules = self.rules().await?;
        let declined = Declined::new(self.store.declines().await?);
        let mut by_channel: HashMap<String, Option<ChannelVersions>> = HashMap::new();
        let mut out = HashMap::new();
        for (host, labels) in hosts {
            let Some(rule) = pick(&rules, labels) else {
                continue;
            };
            let Some(digest) = &host.inventory_digest else {
                continue;
            };
            if !by_channel.contains_key(&rule.channel) {
                let cv = self.channel_versions(&rule.channel).await?;
                by_channel.insert(rule.channel.clone(), cv);
            }
            let Some(cv) = &by_channel[&rule.channel] else {
                continue;
            };
            if let Some(p) = self
                .pending_for(digest, &rule.channel, cv, &declined)
                .await?
            {
                out.insert(host.id.clone(), (rule.channel.clone(), p));
            }
        }
        Ok(out)
    }

    /// The fleet queue: awaiting and available updates over the active hosts `selector`
    /// matches, grouped by (package, from → to, channel) with host counts, most hosts first.
    pub async fn fleet_pending(&self, selector: &Selector) -> Result<FleetPending> {
        let hosts = self.store.hosts().await?;
        let mut labels = self.store.all_labels().await?;
        let rules = self.rules().await?;
        let mut out = FleetPending::default();
        let mut selected = Vec::new();
        for host in hosts.iter().filter(|h| h.status == "active") {
            let host_labels = effective(&labels.remove(&host.id).unwrap_or_default());
            if !selector.matches(&host_labels) {
                continue;
            }
            out.hosts += 1;
            if pick(&rules, &host_labels).is_none() {
                out.unassigned += 1;
            }
            selected.push((host, host_labels));
        }
        let refs: Vec<(&HostRow, &Labels)> = selected.iter().map(|(h, l)| (*h, l)).collect();
        let pending = self.pending_of_hosts(&refs).await?;
        out.without_inventory = out.hosts - out.unassigned - pending.len();
        type Groups = HashMap<(String, String, String, String), usize>;
        let (mut awaiting, mut available) = (Groups::new(), Groups::new());
        for (channel, p) in pending.values() {
            for (updates, groups) in [(&p.awaiting, &mut awaiting), (&p.available, &mut available)]
            {
                // A host counts once per (package, from, to), whatever its architectures.
                let distinct: HashSet<(&str, &str, &str)> = updates
                    .iter()
                    .map(|u| (u.name.as_str(), u.from.as_str(), u.to.as_str()))
                    .collect();
                for (name, from, to) in distinct {
                    *groups
                        .entry((
                            name.to_owned(),
                            from.to_owned(),
                            to.to_owned(),
                            channel.clone(),
                        ))
                        .or_default() += 1;
                }
            }
        }
        out.awaiting = groups(awaiting);
        out.available = groups(available);
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

fn groups(map: HashMap<(String, String, String, String), usize>) -> Vec<QueueGroup> {
    let mut out: Vec<QueueGroup> = map
        .into_iter()
        .map(|((name, from, to, channel), hosts)| QueueGroup {
            name,
            from,
            to,
            channel,
            hosts,
        })
        .collect();
    out.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| compare_versions(&a.from, &b.from))
            .then_with(|| compare_versions(&a.to, &b.to))
    });
    out
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
