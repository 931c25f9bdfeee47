//! Package profiles as both sides read them: what a name and a version pattern may look like,
//! how a pattern matches a version, and how a host's installed packages measure up against its
//! desired packages. The agent acts on the result; the server computes it again from the
//! stored inventory (it does not take the agent's word for compliance).

use std::collections::BTreeMap;

use crate::protocol::{
    ComplianceState, DesiredPackage, DesiredPackages, InstalledPackage, PackageCompliance,
    WantedState,
};

/// A Debian package name (policy §5.6.1): lowercase letters, digits, `+ - .`, at least two
/// characters, starting with a letter or digit. Nothing a shell or apt would read otherwise.
pub fn valid_package_name(name: &str) -> bool {
    (2..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
}

/// A version pattern: an exact Debian version (`2.10-3`, `1:2.0-1`) or a glob over one, where
/// `*` stands for any run of characters and `?` for one (`2.10-*`).
pub fn valid_version_pattern(pattern: &str) -> bool {
    (1..=128).contains(&pattern.len())
        && pattern.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '?')
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-*?".contains(c))
}

/// Whether the pattern names one version (then apt is asked for exactly it).
pub fn is_exact(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

/// Whether `version` matches `pattern` (exact, or a glob with `*` and `?`).
pub fn version_matches(pattern: &str, version: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), version.chars().collect());
    // Iterative glob matching: remember the last `*` and how much of `v` it has eaten.
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, vi));
                pi += 1;
            }
            Some(&c) if c == '?' || c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    pi = sp + 1;
                    vi = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Installed packages by name: their versions (one per installed architecture). Only dpkg
/// states ending in `installed` count.
pub fn installed_versions(packages: &[InstalledPackage]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in packages
        .iter()
        .filter(|p| p.status.rsplit(' ').next() == Some("installed"))
    {
        out.entry(p.name.clone())
            .or_default()
            .push(p.version.clone());
    }
    out
}

/// What a desired package asks for, as shown to people: `present`, `present 2.10-*`, `absent`.
pub fn wanted_text(p: &DesiredPackage) -> String {
    match (p.state, &p.version) {
        (WantedState::Present, Some(v)) => format!("present {v}"),
        (WantedState::Present, None) => "present".into(),
        (WantedState::Absent, _) => "absent".into(),
    }
}

/// Measures installed packages against the desired ones: one entry per desired package and
/// per conflict, sorted by package.
pub fn evaluate(
    desired: &DesiredPackages,
    installed: &BTreeMap<String, Vec<String>>,
) -> Vec<PackageCompliance> {
    let mut out: Vec<PackageCompliance> = desired
        .packages
        .iter()
        .map(|p| {
            let have = installed.get(&p.name).filter(|v| !v.is_empty());
            let (state, detail) = match (p.state, have, &p.version) {
                (WantedState::Present, None, _) => (ComplianceState::Missing, String::new()),
                (WantedState::Present, Some(versions), Some(pattern))
                    if !versions.iter().any(|v| version_matches(pattern, v)) =>
                {
                    (
                        ComplianceState::WrongVersion,
                        format!("installed {}", versions.join(", ")),
                    )
                }
                (WantedState::Present, Some(versions), _) => (
                    ComplianceState::Ok,
                    format!("installed {}", versions.join(", ")),
                ),
                (WantedState::Absent, Some(versions), _) => (
                    ComplianceState::PresentButAbsentWanted,
                    format!("installed {}", versions.join(", ")),
                ),
                (WantedState::Absent, None, _) => (ComplianceState::Ok, String::new()),
            };
            PackageCompliance {
                package: p.name.clone(),
                wanted: wanted_text(p),
                state,
                detail,
            }
        })
        .collect();
    out.extend(desired.conflicts.iter().map(|c| PackageCompliance {
        package: c.name.clone(),
        wanted: c.wishes.join("; "),
        state: ComplianceState::Conflict,
        detail: "the profiles disagree: neither is applied".into(),
    }));
    out.sort_by(|a, b| a.package.cmp(&b.package));
    out
}

/// The apt work that would bring the host in line: packages to install (`name` or
/// `name=version` when the pattern is exact) and to remove.
pub fn plan(desired: &DesiredPackages, report: &[PackageCompliance]) -> (Vec<String>, Vec<String>) {
    let (mut install, mut remove) = (Vec::new(), Vec::new());
    for c in report {
        let Some(p) = desired.packages.iter().find(|p| p.name == c.package) else {
            continue;
        };
        match c.state {
            ComplianceState::Missing | ComplianceState::WrongVersion => {
                install.push(match &p.version {
                    Some(v) if is_exact(v) => format!("{}={v}", p.name),
                    _ => p.name.clone(),
                });
            }
            ComplianceState::PresentButAbsentWanted => remove.push(p.name.clone()),
            ComplianceState::Ok | ComplianceState::Conflict => {}
        }
    }
    (install, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PackageConflict;

    #[test]
    fn patterns_match_like_globs() {
        assert!(version_matches("2.10-3", "2.10-3"));
        assert!(!version_matches("2.10-3", "2.10-31"));
        assert!(version_matches("2.10-*", "2.10-3"));
        assert!(version_matches("2.10-*", "2.10-"));
        assert!(!version_matches("2.10-*", "2.11-1"));
        assert!(version_matches("*", "1:2.0-1"));
        assert!(version_matches("1:*-1", "1:2.0-1"));
        assert!(version_matches("2.?-1", "2.0-1"));
        assert!(!version_matches("2.?-1", "2.10-1"));
        assert!(version_matches("*+deb12u*", "2.36-9+deb12u4"));
        assert!(!version_matches("*+deb12u*", "2.36-9"));
        assert!(is_exact("2.10-3") && !is_exact("2.10-*"));
    }

    #[test]
    fn names_and_patterns_are_checked() {
        for good in ["hello", "g++-12", "libc6", "0ad", "acme-agent"] {
            assert!(valid_package_name(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "Hello",
            "-o",
            "he llo",
            "a;b",
            "a$(x)",
            "a/b",
            "hello:amd64",
        ] {
            assert!(!valid_package_name(bad), "{bad:?}");
        }
        for good in ["2.10-3", "2.10-*", "1:2.0-1", "*", "2.?-1~rc1+b2"] {
            assert!(valid_version_pattern(good), "{good}");
        }
        for bad in ["", "-1", "a1", "1;rm", "1 2", "1$(x)", "1`x`", "1|x", "1/2"] {
            assert!(!valid_version_pattern(bad), "{bad:?}");
        }
    }

    fn want(name: &str, state: WantedState, version: Option<&str>) -> DesiredPackage {
        DesiredPackage {
            name: name.into(),
            state,
            version: version.map(Into::into),
            profiles: vec!["p".into()],
        }
    }

    #[test]
    fn evaluation_and_plan() {
        let desired = DesiredPackages {
            rev: "r".into(),
            packages: vec![
                want("acme-agent", WantedState::Present, None),
                want("hello", WantedState::Absent, None),
                want("libfoo1", WantedState::Present, Some("1.4.*")),
                want("pinned", WantedState::Present, Some("2.0-1")),
                want("curl", WantedState::Present, None),
                want("telnet", WantedState::Absent, None),
            ],
            conflicts: vec![PackageConflict {
                name: "vim".into(),
                wishes: vec!["a: present".into(), "b: absent".into()],
            }],
        };
        let installed: BTreeMap<String, Vec<String>> = [
            ("hello", "2.10-3"),
            ("libfoo1", "1.3-1"),
            ("pinned", "1.0-1"),
            ("curl", "8.0-1"),
            ("vim", "9.0-1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), vec![v.to_string()]))
        .collect();
        let report = evaluate(&desired, &installed);
        let state = |n: &str| report.iter().find(|c| c.package == n).unwrap().state;
        assert_eq!(state("acme-agent"), ComplianceState::Missing);
        assert_eq!(state("hello"), ComplianceState::PresentButAbsentWanted);
        assert_eq!(state("libfoo1"), ComplianceState::WrongVersion);
        assert_eq!(state("pinned"), ComplianceState::WrongVersion);
        assert_eq!(state("curl"), ComplianceState::Ok);
        assert_eq!(state("telnet"), ComplianceState::Ok);
        assert_eq!(state("vim"), ComplianceState::Conflict);
        let (install, remove) = plan(&desired, &report);
        assert_eq!(install, ["acme-agent", "libfoo1", "pinned=2.0-1"]);
        assert_eq!(remove, ["hello"]);
    }

    #[test]
    fn only_installed_states_count() {
        let p = |name: &str, status: &str| InstalledPackage {
            name: name.into(),
            architecture: "amd64".into(),
            version: "1".into(),
            source: name.into(),
            source_version: "1".into(),
            status: status.into(),
        };
        let installed = installed_versions(&[
            p("a", "install ok installed"),
            p("b", "deinstall ok config-files"),
        ]);
        assert!(installed.contains_key("a") && !installed.contains_key("b"));
    }
}
