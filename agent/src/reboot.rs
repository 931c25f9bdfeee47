//! Whether the host needs a reboot. Debian writes `/var/run/reboot-required` for kernels only
//! through unattended-upgrades' hook, so the agent also compares the running kernel with the
//! newest installed `linux-image-*` itself.

use std::{cmp::Ordering, process::Command};

use crate::{
    host_root::HostRoot,
    protocol::{InstalledPackage, RebootState},
};

pub fn reboot_state(
    root: &HostRoot,
    running_kernel: &str,
    packages: &[InstalledPackage],
) -> RebootState {
    let mut reasons = Vec::new();
    if root.join("var/run/reboot-required").exists() {
        let pkgs =
            fs_err::read_to_string(root.join("var/run/reboot-required.pkgs")).unwrap_or_default();
        let pkgs: Vec<&str> = pkgs.split_whitespace().collect();
        if pkgs.is_empty() {
            reasons.push("/var/run/reboot-required".to_owned());
        } else {
            reasons.push(format!("/var/run/reboot-required: {}", pkgs.join(" ")));
        }
    }
    if let Some(newest) = newest_kernel(packages) {
        if !running_kernel.is_empty() && newest != running_kernel {
            reasons.push(format!(
                "kernel {newest} installed, {running_kernel} running"
            ));
        }
    }
    RebootState {
        needed: !reasons.is_empty(),
        reasons,
    }
}

/// The kernel release (`6.1.0-9-amd64`) of the installed `linux-image-<release>` package with
/// the highest version, in dpkg's ordering.
fn newest_kernel(packages: &[InstalledPackage]) -> Option<String> {
    packages
        .iter()
        .filter(|p| p.status == "install ok installed")
        .filter_map(|p| {
            let release = p.name.strip_prefix("linux-image-")?;
            // Meta packages (`linux-image-amd64`) name no release.
            release
                .starts_with(|c: char| c.is_ascii_digit())
                .then_some((release, p.version.as_str()))
        })
        .max_by(|a, b| compare_versions(a.1, b.1).then_with(|| a.0.cmp(b.0)))
        .map(|(release, _)| release.to_owned())
}

/// Debian version ordering, asked of dpkg itself (a handful of kernels at most).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let is = |op: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", a, op, b])
            .status()
            .is_ok_and(|s| s.success())
    };
    if a == b {
        Ordering::Equal
    } else if is("gt") {
        Ordering::Greater
    } else {
        Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(release: &str, version: &str) -> InstalledPackage {
        InstalledPackage {
            name: format!("linux-image-{release}"),
            architecture: "amd64".into(),
            version: version.into(),
            source: "linux-signed-amd64".into(),
            source_version: version.into(),
            status: "install ok installed".into(),
        }
    }

    #[test]
    fn a_newer_installed_kernel_or_the_sentinel_needs_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        let packages = vec![
            kernel("6.1.0-9-amd64", "6.1.27-1"),
            kernel("6.1.0-10-amd64", "6.1.38-1"),
            kernel("amd64", "6.1.38-1"),
        ];
        assert_eq!(
            reboot_state(&root, "6.1.0-10-amd64", &packages),
            RebootState::default()
        );
        let state = reboot_state(&root, "6.1.0-9-amd64", &packages);
        assert!(state.needed);
        assert_eq!(
            state.reasons,
            ["kernel 6.1.0-10-amd64 installed, 6.1.0-9-amd64 running"]
        );

        fs_err::create_dir_all(dir.path().join("var/run")).unwrap();
        fs_err::write(dir.path().join("var/run/reboot-required"), "").unwrap();
        fs_err::write(dir.path().join("var/run/reboot-required.pkgs"), "libc6\n").unwrap();
        let state = reboot_state(&root, "6.1.0-10-amd64", &packages);
        assert_eq!(state.reasons, ["/var/run/reboot-required: libc6"]);
    }
}
