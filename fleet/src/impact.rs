//! Impact: what moving a channel would do on the hosts assigned to it, from their inventories
//! (for `promote --dry-run` and `snapshot diff --impact`). Per installed (name, architecture),
//! the channel's newest version now and after the move ([`MovePlan::newest`]) are compared
//! with the installed one in dpkg's order:
//!
//! - **upgrade**: after the move apt would upgrade it to a version it would not move to now;
//! - **left newer**: the channel would only have an older version (apt does not downgrade by
//!   itself; the host stays newer than its channel), and it does not now;
//! - **leaves channel**: the channel has it now and would not after the move (installed, no
//!   longer in the channel).
//!
//! Inventories and the channel's current versions come from the pending caches.

use crate::assignment::pick;
use crate::error::Result;
use crate::selector::Selector;
use crate::Fleet;
use aptgate_agent::protocol::Facts;
use aptgate_channels::fleet_view::NewestVersions;
use aptgate_channels::index::compare_versions;
use aptgate_channels::MovePlan;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImpactKind {
    Upgrade,
    LeftNewer,
    LeavesChannel,
}

/// One change on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    pub kind: ImpactKind,
    pub name: String,
    pub architecture: String,
    /// The installed version.
    pub from: String,
    /// The channel's version after the move (`None`: no longer in the channel).
    pub to: Option<String>,
}

/// A package going `from → to` the same way on this many hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageImpact {
    pub kind: ImpactKind,
    pub name: String,
    pub from: String,
    pub to: Option<String>,
    pub hosts: usize,
}

/// How many packages change on one host, by kind (hosts without a change are not listed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostImpact {
    pub host: String,
    pub hostname: String,
    pub upgrades: usize,
    pub left_newer: usize,
    pub leaves_channel: usize,
}

/// Distinct package names of one kind and the hosts with at least one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub packages: usize,
    pub hosts: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Impact {
    pub channel: String,
    /// Active hosts assigned the channel.
    pub hosts: usize,
    /// Of those, hosts that have not reported an inventory (not counted below).
    pub without_inventory: usize,
    pub upgrades: Totals,
    pub left_newer: Totals,
    pub leaves_channel: Totals,
    /// Most hosts first, by kind.
    pub packages: Vec<PackageImpact>,
    /// Hosts with a change, by hostname.
    pub per_host: Vec<HostImpact>,
}

impl Fleet {
    /// What `plan` would do on every active host assigned its channel (by the assignment
    /// rules), from the hosts' inventories.
    pub async fn impact(&self, plan: &MovePlan) -> Result<Impact> {
        let rules = self.rules().await?;
        let before = self.newest(&plan.channel).await?.map(|(_, n)| n);
        let mut out = Impact {
            channel: plan.channel.clone(),
            ..Impact::default()
        };
        type Group = (ImpactKind, String, String, Option<String>);
        let mut groups: HashMap<Group, usize> = HashMap::new();
        let mut names: HashMap<ImpactKind, HashSet<String>> = HashMap::new();
        for (host, labels) in self.select_hosts(&Selector::parse("")?).await? {
            if pick(&rules, &labels).is_none_or(|r| r.channel != plan.channel) {
                continue;
            }
            out.hosts += 1;
            let installed = match &host.inventory_digest {
                Some(digest) => self.installed(digest).await?,
                None => None,
            };
            let Some(installed) = installed else {
                out.without_inventory += 1;
                continue;
            };
            let changes = host_changes(
                installed
                    .iter()
                    .map(|((n, a), v)| (n.as_str(), a.as_str(), v.as_str())),
                before.as_deref(),
                &plan.newest,
            );
            if changes.is_empty() {
                continue;
            }
            let facts: Facts = serde_json::from_str(&host.facts).unwrap_or_default();
            let mut counts = HostImpact {
                host: host.id.clone(),
                hostname: facts.hostname,
                ..HostImpact::default()
            };
            // A host counts once per (package, from, to), whatever its architectures.
            let mut distinct = HashSet::new();
            for c in changes {
                names.entry(c.kind).or_default().insert(c.name.clone());
                if distinct.insert((c.kind, c.name.clone(), c.from.clone(), c.to.clone())) {
                    *groups.entry((c.kind, c.name, c.from, c.to)).or_default() += 1;
                }
                *match c.kind {
                    ImpactKind::Upgrade => &mut counts.upgrades,
                    ImpactKind::LeftNewer => &mut counts.left_newer,
                    ImpactKind::LeavesChannel => &mut counts.leaves_channel,
                } += 1;
            }
            for (n, totals) in [
                (counts.upgrades, &mut out.upgrades),
                (counts.left_newer, &mut out.left_newer),
                (counts.leaves_channel, &mut out.leaves_channel),
            ] {
                totals.hosts += usize::from(n > 0);
            }
            out.per_host.push(counts);
        }
        for (kind, totals) in [
            (ImpactKind::Upgrade, &mut out.upgrades),
            (ImpactKind::LeftNewer, &mut out.left_newer),
            (ImpactKind::LeavesChannel, &mut out.leaves_channel),
        ] {
            totals.packages = names.get(&kind).map_or(0, HashSet::len);
        }
        out.packages = groups
            .into_iter()
            .map(|((kind, name, from, to), hosts)| PackageImpact {
                kind,
                name,
                from,
                to,
                hosts,
            })
            .collect();
        out.packages.sort_by(|a, b| {
            (a.kind, b.hosts, &a.name)
                .cmp(&(b.kind, a.hosts, &b.name))
                .then_with(|| compare_versions(&a.from, &b.from))
        });
        out.per_host
            .sort_by(|a, b| (&a.hostname, &a.host).cmp(&(&b.hostname, &b.host)));
        Ok(out)
    }
}

/// What changes for one host's installed packages `(name, architecture, version)` when its
/// channel's newest versions go from `before` (`None`: unpublished) to `after`.
pub fn host_changes<'a>(
    installed: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    before: Option<&NewestVersions>,
    after: &NewestVersions,
) -> Vec<HostChange> {
    let mut out = Vec::new();
    for (name, arch, version) in installed {
        let key = (name.to_owned(), arch.to_owned());
        let now = before.and_then(|b| b.get(&key));
        let then = after.get(&key);
        let newer = |c: &&String| compare_versions(c, version).is_gt();
        let older = |c: &&String| compare_versions(c, version).is_lt();
        let change = |kind, to: Option<&String>| HostChange {
            kind,
            name: name.to_owned(),
            architecture: arch.to_owned(),
            from: version.to_owned(),
            to: to.cloned(),
        };
        let (upgrade_now, upgrade_then) = (now.filter(newer), then.filter(newer));
        let same = match (upgrade_now, upgrade_then) {
            (Some(a), Some(b)) => compare_versions(a, b).is_eq(),
            _ => false,
        };
        if upgrade_then.is_some() && !same {
            out.push(change(ImpactKind::Upgrade, upgrade_then));
        } else if then.filter(older).is_some() && now.filter(older).is_none() {
            out.push(change(ImpactKind::LeftNewer, then));
        } else if then.is_none() && now.is_some() {
            out.push(change(ImpactKind::LeavesChannel, None));
        }
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[(&str, &str)]) -> NewestVersions {
        list.iter()
            .map(|(n, v)| ((n.to_string(), "amd64".to_string()), v.to_string()))
            .collect()
    }

    fn kinds(
        installed: &[(&str, &str)],
        before: &[(&str, &str)],
        after: &[(&str, &str)],
    ) -> Vec<String> {
        let before = versions(before);
        host_changes(
            installed.iter().map(|(n, v)| (*n, "amd64", *v)),
            Some(&before),
            &versions(after),
        )
        .into_iter()
        .map(|c| format!("{:?} {} {} {:?}", c.kind, c.name, c.from, c.to))
        .collect()
    }

    #[test]
    fn upgrades_count_only_what_the_move_changes() {
        // Already an upgrade now, to the same version: not the move's doing.
        assert!(kinds(
            &[("perl", "5.36.0-7")],
            &[("perl", "5.36.0-7+deb12u1")],
            &[("perl", "5.36.0-7+deb12u1")]
        )
        .is_empty());
        // Newer after the move than what apt would install now.
        assert_eq!(
            kinds(
                &[("perl", "5.36.0-7")],
                &[("perl", "5.36.0-7")],
                &[("perl", "5.36.0-7+deb12u1")]
            ),
            [r#"Upgrade perl 5.36.0-7 Some("5.36.0-7+deb12u1")"#]
        );
        // dpkg order, not text order: 1:0.9 > 2.0.
        assert!(kinds(&[("tool", "1:0.9")], &[], &[("tool", "2.0")])[0].starts_with("LeftNewer"));
        // An epoch bump upgrades.
        assert!(
            kinds(&[("tool", "2.0")], &[("tool", "2.0")], &[("tool", "1:0.9")])[0]
                .starts_with("Upgrade")
        );
    }

    #[test]
    fn older_in_the_channel_and_gone_from_it() {
        assert_eq!(
            kinds(
                &[("hello", "2.12")],
                &[("hello", "2.12")],
                &[("hello", "2.10")]
            ),
            [r#"LeftNewer hello 2.12 Some("2.10")"#]
        );
        // Already newer than the channel now: nothing new.
        assert!(kinds(
            &[("hello", "2.12")],
            &[("hello", "2.11")],
            &[("hello", "2.10")]
        )
        .is_empty());
        assert_eq!(
            kinds(&[("hello", "2.12")], &[("hello", "2.12")], &[]),
            ["LeavesChannel hello 2.12 None"]
        );
        // Never in the channel (a local package): nothing.
        assert!(kinds(&[("local-tool", "1.0")], &[], &[]).is_empty());
    }
}
