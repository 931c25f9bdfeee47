//! Package profiles: desired state by label. A profile is a selector and packages the hosts it
//! matches must have installed (optionally at a version pattern) or absent. A host gets the
//! merge of every profile whose selector matches its effective labels; for one package the
//! wishes of the highest priority count, and when those disagree (present and absent, or two
//! different version patterns) the package is a conflict: neither wish is applied, and
//! compliance shows it.
//!
//! Compliance is computed here from the stored inventories with the same evaluation the agent
//! uses (`aptgate_agent::profile`); of the agent's own report only the error of its last apt
//! run is taken.

use crate::error::{FleetError, Result};
use crate::selector::Selector;
use crate::store::{effective, HostRow};
use crate::Fleet;
use aptgate_agent::profile::{evaluate, valid_package_name, valid_version_pattern};
use aptgate_agent::protocol::{
    ComplianceState, DesiredPackage, DesiredPackages, Facts, Labels, PackageCompliance,
    PackageConflict, WantedState,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the profile list is trusted before the catalog is read again (other instances).
const PROFILES_TTL: Duration = Duration::from_secs(2);
/// Most packages one profile names.
pub const MAX_PACKAGES: usize = 256;

/// One package of a profile, as stored and as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePackage {
    pub name: String,
    pub state: WantedState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    #[serde(serialize_with = "as_text")]
    pub selector: Selector,
    pub packages: Vec<ProfilePackage>,
    pub priority: i64,
    pub created_by: String,
    pub created_at: i64,
}

fn as_text<S: serde::Serializer>(s: &Selector, out: S) -> std::result::Result<S::Ok, S::Error> {
    out.serialize_str(&s.to_string())
}

fn bad(message: String) -> FleetError {
    FleetError::bad_request("bad_profile", message)
}

pub fn check_profile_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid profile name {name:?}\nhint: 1–64 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Checks a profile's packages: valid names and patterns, each package once, none absent with
/// a version, at least one and at most [`MAX_PACKAGES`].
pub fn check_packages(packages: &[ProfilePackage]) -> Result<()> {
    if packages.is_empty() {
        return Err(bad(
            "a profile needs at least one package\nhint: --install NAME[=VERSION] or --absent NAME"
                .into(),
        ));
    }
    if packages.len() > MAX_PACKAGES {
        return Err(bad(format!(
            "a profile names at most {MAX_PACKAGES} packages"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for p in packages {
        if !valid_package_name(&p.name) {
            return Err(bad(format!(
                "invalid package name {:?}\nhint: Debian package names are 2–128 characters \
                 of a-z 0-9 + - ., starting with a letter or digit",
                p.name
            )));
        }
        if let Some(v) = &p.version {
            if p.state == WantedState::Absent {
                return Err(bad(format!(
                    "{}: an absent package takes no version\nhint: --absent NAME",
                    p.name
                )));
            }
            if !valid_version_pattern(v) {
                return Err(bad(format!(
                    "invalid version pattern {v:?} for {}\nhint: an exact version (2.10-3, \
                     1:2.0-1) or a glob with * and ? (2.10-*); characters A-Z a-z 0-9 . + ~ : - \
                     * ?",
                    p.name
                )));
            }
        }
        if !seen.insert(p.name.as_str()) {
            return Err(bad(format!("{} is named twice in the profile", p.name)));
        }
    }
    Ok(())
}

/// The merged desired packages of `profiles` (those matching one host), with its rev.
pub fn merge(profiles: &[&Profile]) -> DesiredPackages {
    // name → [(priority, profile, state, version)]
    type Wish<'a> = (i64, &'a str, WantedState, Option<&'a str>);
    let mut wishes: BTreeMap<&str, Vec<Wish>> = BTreeMap::new();
    for profile in profiles {
        for p in &profile.packages {
            wishes.entry(&p.name).or_default().push((
                profile.priority,
                &profile.name,
                p.state,
                p.version.as_deref(),
            ));
        }
    }
    let mut out = DesiredPackages::default();
    for (name, all) in wishes {
        let top = all.iter().map(|w| w.0).max().unwrap_or_default();
        let mut counted: Vec<&Wish> = all.iter().filter(|w| w.0 == top).collect();
        counted.sort_by_key(|w| w.1);
        let states: Vec<WantedState> = counted.iter().map(|w| w.2).collect();
        let mut versions: Vec<&str> = counted.iter().filter_map(|w| w.3).collect();
        versions.sort_unstable();
        versions.dedup();
        let agree = states.iter().all(|s| *s == states[0]) && versions.len() <= 1;
        if agree {
            out.packages.push(DesiredPackage {
                name: name.to_owned(),
                state: states[0],
                version: versions.first().map(|v| (*v).to_owned()),
                profiles: counted.iter().map(|w| w.1.to_owned()).collect(),
            });
        } else {
            out.conflicts.push(PackageConflict {
                name: name.to_owned(),
                wishes: counted
                    .iter()
                    .map(|w| match (w.2, w.3) {
                        (WantedState::Present, Some(v)) => format!("{}: present {v}", w.1),
                        (WantedState::Present, None) => format!("{}: present", w.1),
                        (WantedState::Absent, _) => format!("{}: absent", w.1),
                    })
                    .collect(),
            });
        }
    }
    let bytes = serde_json::to_vec(&out).expect("desired packages serialize");
    out.rev = hex::encode(Sha256::digest(&bytes));
    out
}

pub(crate) struct ProfileCache(std::sync::RwLock<(Arc<Vec<Profile>>, Option<Instant>)>);

impl Default for ProfileCache {
    fn default() -> Self {
        Self(std::sync::RwLock::new((Arc::new(Vec::new()), None)))
    }
}

/// One host under one profile, for `fleet compliance`.
#[derive(Debug, Clone, Serialize)]
pub struct HostCompliance {
    pub host: String,
    pub hostname: String,
    /// `None`: no inventory yet.
    pub compliant: Option<bool>,
    /// The profile's packages that are not as wanted (conflicts included).
    pub problems: Vec<PackageCompliance>,
    /// The agent's last apt error for this rev, when it reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileCompliance {
    #[serde(flatten)]
    pub profile: Profile,
    pub compliant: usize,
    pub not_compliant: usize,
    pub without_inventory: usize,
    pub hosts: Vec<HostCompliance>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetCompliance {
    pub profiles: Vec<ProfileCompliance>,
    /// Active hosts (of those the selector matches) no profile covers.
    pub not_covered: Vec<HostRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostRef {
    pub host: String,
    pub hostname: String,
}

impl Fleet {
    /// Every profile, cached for a couple of seconds.
    pub async fn profiles(&self) -> Result<Arc<Vec<Profile>>> {
        {
            let cached = self.profiles.0.read().expect("lock poisoned");
            if cached.1.is_some_and(|at| at.elapsed() < PROFILES_TTL) {
                return Ok(cached.0.clone());
            }
        }
        self.reload_profiles().await
    }

    pub(crate) async fn reload_profiles(&self) -> Result<Arc<Vec<Profile>>> {
        let mut profiles = Vec::new();
        for row in self.store.profiles().await? {
            let parsed = Selector::parse(&row.selector)
                .ok()
                .zip(serde_json::from_str::<Vec<ProfilePackage>>(&row.packages).ok());
            let Some((selector, packages)) = parsed else {
                tracing::warn!(profile = %row.name, "unreadable profile; ignored");
                continue;
            };
            profiles.push(Profile {
                name: row.name,
                selector,
                packages,
                priority: row.priority,
                created_by: row.created_by,
                created_at: row.created_at,
            });
        }
        let profiles = Arc::new(profiles);
        *self.profiles.0.write().expect("lock poisoned") = (profiles.clone(), Some(Instant::now()));
        Ok(profiles)
    }

    /// What the profiles matching `labels` want; `None` when no profile matches.
    pub async fn desired_packages(&self, labels: &Labels) -> Result<Option<DesiredPackages>> {
        let profiles = self.profiles().await?;
        let matching: Vec<&Profile> = profiles
            .iter()
            .filter(|p| p.selector.matches(labels))
            .collect();
        Ok((!matching.is_empty()).then(|| merge(&matching)))
    }

    /// Compliance per profile over the active hosts `selector` matches, computed from their
    /// stored inventories.
    pub async fn compliance(&self, selector: &Selector) -> Result<FleetCompliance> {
        let profiles = self.reload_profiles().await?;
        let reports = self.store.profile_reports().await?;
        let mut labels = self.store.all_labels().await?;
        let mut by_profile: Vec<Vec<HostCompliance>> = vec![Vec::new(); profiles.len()];
        let mut not_covered = Vec::new();
        let hosts: Vec<(HostRow, Labels)> = self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|h| h.status == "active")
            .map(|h| {
                let l = effective(&labels.remove(&h.id).unwrap_or_default());
                (h, l)
            })
            .filter(|(_, l)| selector.matches(l))
            .collect();
        for (host, host_labels) in &hosts {
            let hostname = serde_json::from_str::<Facts>(&host.facts)
                .unwrap_or_default()
                .hostname;
            let matching: Vec<usize> = (0..profiles.len())
                .filter(|&i| profiles[i].selector.matches(host_labels))
                .collect();
            if matching.is_empty() {
                not_covered.push(HostRef {
                    host: host.id.clone(),
                    hostname,
                });
                continue;
            }
            let refs: Vec<&Profile> = matching.iter().map(|&i| &profiles[i]).collect();
            let desired = merge(&refs);
            let evaluated = match &host.inventory_digest {
                Some(d) => self.installed(d).await?.map(|installed| {
                    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for ((name, _), version) in installed.iter() {
                        versions
                            .entry(name.clone())
                            .or_default()
                            .push(version.clone());
                    }
                    evaluate(&desired, &versions)
                }),
                None => None,
            };
            let error = reports
                .get(&host.id)
                .filter(|(rev, _)| *rev == desired.rev)
                .and_then(|(_, e)| e.clone());
            for &i in &matching {
                let names: Vec<&str> = profiles[i]
                    .packages
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                let problems: Option<Vec<PackageCompliance>> = evaluated.as_ref().map(|all| {
                    all.iter()
                        .filter(|c| names.contains(&c.package.as_str()))
                        .filter(|c| c.state != ComplianceState::Ok)
                        .cloned()
                        .collect()
                });
                let compliant = problems.as_ref().map(Vec::is_empty);
                by_profile[i].push(HostCompliance {
                    host: host.id.clone(),
                    hostname: hostname.clone(),
                    compliant,
                    problems: problems.unwrap_or_default(),
                    error: error.clone().filter(|_| compliant == Some(false)),
                });
            }
        }
        let profiles = profiles
            .iter()
            .zip(by_profile)
            .map(|(p, hosts)| ProfileCompliance {
                profile: p.clone(),
                compliant: hosts.iter().filter(|h| h.compliant == Some(true)).count(),
                not_compliant: hosts.iter().filter(|h| h.compliant == Some(false)).count(),
                without_inventory: hosts.iter().filter(|h| h.compliant.is_none()).count(),
                hosts,
            })
            .collect();
        Ok(FleetCompliance {
            profiles,
            not_covered,
        })
    }
}

/// Parses the CLI's `NAME[=PATTERN]` (install) form.
pub fn parse_install(text: &str) -> ProfilePackage {
    let (name, version) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (text, None),
    };
    ProfilePackage {
        name: name.to_owned(),
        state: WantedState::Present,
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(
        name: &str,
        priority: i64,
        packages: &[(&str, WantedState, Option<&str>)],
    ) -> Profile {
        Profile {
            name: name.into(),
            selector: Selector::default(),
            packages: packages
                .iter()
                .map(|(n, s, v)| ProfilePackage {
                    name: (*n).into(),
                    state: *s,
                    version: v.map(Into::into),
                })
                .collect(),
            priority,
            created_by: "t".into(),
            created_at: 0,
        }
    }

    use WantedState::{Absent, Present};

    #[test]
    fn merge_agrees_conflicts_and_honours_priority() {
        let pos = profile(
            "pos",
            0,
            &[
                ("acme-agent", Present, None),
                ("hello", Present, Some("2.10-*")),
            ],
        );
        let base = profile(
            "base",
            0,
            &[("acme-agent", Present, None), ("telnet", Absent, None)],
        );
        let lockdown = profile("lockdown", 0, &[("hello", Absent, None)]);
        let pinned = profile("pinned", 0, &[("acme-agent", Present, Some("1.0-1"))]);
        let other_pin = profile("other-pin", 0, &[("acme-agent", Present, Some("2.0-1"))]);
        let boss = profile("boss", 10, &[("hello", Absent, None)]);

        let m = merge(&[&pos, &base]);
        assert!(m.conflicts.is_empty());
        assert_eq!(m.packages.len(), 3);
        assert_eq!(m.packages[0].name, "acme-agent");
        assert_eq!(m.packages[0].profiles, ["base", "pos"]);

        // present vs absent at one priority: a conflict, neither applied.
        let m = merge(&[&pos, &lockdown]);
        assert!(m.packages.iter().all(|p| p.name != "hello"));
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(
            m.conflicts[0].wishes,
            ["lockdown: absent", "pos: present 2.10-*"]
        );

        // A pattern and no pattern agree (the pattern counts); two patterns conflict.
        let m = merge(&[&base, &pinned]);
        assert_eq!(m.packages[0].version.as_deref(), Some("1.0-1"));
        assert_eq!(merge(&[&pinned, &other_pin]).conflicts.len(), 1);

        // A higher priority wins outright.
        let m = merge(&[&pos, &lockdown, &boss]);
        assert!(m.conflicts.is_empty());
        let hello = m.packages.iter().find(|p| p.name == "hello").unwrap();
        assert_eq!(
            (hello.state, hello.profiles.clone()),
            (Absent, vec!["boss".to_owned()])
        );

        // The rev follows the content, not the order.
        assert_eq!(merge(&[&pos, &base]).rev, merge(&[&base, &pos]).rev);
        assert_ne!(merge(&[&pos]).rev, merge(&[&pos, &base]).rev);
    }

    #[test]
    fn bad_packages_are_refused() {
        let ok = |p: Vec<ProfilePackage>| check_packages(&p).is_ok();
        assert!(ok(vec![
            parse_install("acme-agent"),
            parse_install("hello=2.10-*")
        ]));
        assert!(!ok(vec![]));
        assert!(!ok(vec![parse_install("Acme")]));
        assert!(!ok(vec![parse_install("hello=$(reboot)")]));
        assert!(!ok(vec![parse_install("hello;rm")]));
        assert!(!ok(vec![parse_install("hello"), parse_install("hello=1")]));
        assert!(!ok(vec![ProfilePackage {
            name: "hello".into(),
            state: Absent,
            version: Some("1".into()),
        }]));
        assert!(check_profile_name("pos-agent_1.0").is_ok());
        assert!(check_profile_name("a b").is_err());
    }
}
