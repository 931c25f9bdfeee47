//! What the host says about itself ([`Facts`]): read from the managed root where the fact
//! belongs to the installation (machine id, os-release, dpkg architectures), from the running
//! system where it belongs to the machine (hostname, kernel).

use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::{
    host_root::HostRoot,
    protocol::{Facts, OsRelease},
};

pub fn gather(root: &HostRoot) -> Facts {
    Facts {
        hostname: hostname(),
        machine_id_sha256: machine_id_sha256(root),
        os_release: os_release(root),
        architectures: architectures(root),
        kernel: kernel(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| command_line("hostname", &[]))
        .unwrap_or_default()
}

/// sha256 (hex) of the machine id as written (trimmed); empty when the file is absent.
fn machine_id_sha256(root: &HostRoot) -> String {
    match fs_err::read_to_string(root.join("etc/machine-id")) {
        Ok(id) if !id.trim().is_empty() => hex::encode(Sha256::digest(id.trim().as_bytes())),
        _ => String::new(),
    }
}

fn os_release(root: &HostRoot) -> OsRelease {
    let text = fs_err::read_to_string(root.join("etc/os-release"))
        .or_else(|_| fs_err::read_to_string(root.join("usr/lib/os-release")))
        .unwrap_or_default();
    parse_os_release(&text)
}

/// Parses the `KEY=value` lines of os-release(5), unquoting single or double quotes.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut release = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value)
            .replace("\\\"", "\"");
        match key {
            "ID" => release.id = value,
            "VERSION_ID" => release.version_id = value,
            "VERSION_CODENAME" => release.version_codename = value,
            "PRETTY_NAME" => release.pretty_name = value,
            _ => {}
        }
    }
    release
}

/// The native architecture first, then the foreign ones, as dpkg of the root knows them.
fn architectures(root: &HostRoot) -> Vec<String> {
    let admin = format!("--admindir={}", root.dpkg_admin_dir().display());
    let dpkg = |option: &str| {
        let mut args = vec![option];
        if !root.is_system() {
            args.insert(0, &admin);
        }
        command_line("dpkg", &args).unwrap_or_default()
    };
    let mut architectures: Vec<String> = dpkg("--print-architecture")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for foreign in dpkg("--print-foreign-architectures").split_whitespace() {
        if !architectures.iter().any(|a| a == foreign) {
            architectures.push(foreign.to_owned());
        }
    }
    architectures
}

/// The running kernel's release (`6.1.0-9-amd64`).
pub fn kernel() -> String {
    fs_err::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| command_line("uname", &["-r"]))
        .unwrap_or_default()
}

/// Runs a program (no shell) and returns its trimmed stdout when it succeeded.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields_are_unquoted() {
        let release = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID='12'\nVERSION_CODENAME=bookworm\nID=debian\n# comment\n",
        );
        assert_eq!(release.id, "debian");
        assert_eq!(release.version_id, "12");
        assert_eq!(release.version_codename, "bookworm");
        assert_eq!(release.pretty_name, "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn facts_of_a_test_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        root.ensure_layout().unwrap();
        let facts = gather(&root);
        assert_eq!(facts.machine_id_sha256, "");
        assert!(!facts.architectures.is_empty(), "{facts:?}");
        assert!(!facts.kernel.is_empty());
        fs_err::write(dir.path().join("etc/machine-id"), "abc\n").unwrap();
        assert_eq!(
            gather(&root).machine_id_sha256,
            hex::encode(Sha256::digest(b"abc"))
        );
    }
}
