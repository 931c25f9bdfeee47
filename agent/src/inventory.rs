//! The host's installed packages, read from dpkg's database (`<root>/var/lib/dpkg/status`).
//! Every stanza with a `Status:` is reported, whatever its state (`config-files`,
//! `half-installed`…): the server decides what counts as installed.

use std::io;

use crate::{host_root::HostRoot, protocol::InstalledPackage};

/// Reads and parses the root's dpkg status file.
pub fn read(root: &HostRoot) -> io::Result<Vec<InstalledPackage>> {
    let text = fs_err::read_to_string(root.dpkg_admin_dir().join("status"))?;
    Ok(parse_status(&text))
}

/// Parses a dpkg status file: deb822 stanzas separated by blank lines; continuation lines
/// (starting with a space or tab) belong to the previous field and are skipped.
pub fn parse_status(text: &str) -> Vec<InstalledPackage> {
    let mut packages = Vec::new();
    let mut stanza = Stanza::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            stanza.finish(&mut packages);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match field.to_ascii_lowercase().as_str() {
            "package" => stanza.package = Some(value),
            "architecture" => stanza.architecture = Some(value),
            "version" => stanza.version = Some(value),
            "source" => stanza.source = Some(value),
            "status" => stanza.status = Some(value),
            _ => {}
        }
    }
    stanza.finish(&mut packages);
    packages
}

#[derive(Default)]
struct Stanza {
    package: Option<String>,
    architecture: Option<String>,
    version: Option<String>,
    source: Option<String>,
    status: Option<String>,
}

impl Stanza {
    fn finish(&mut self, packages: &mut Vec<InstalledPackage>) {
        let stanza = std::mem::take(self);
        let (Some(name), Some(status)) = (stanza.package, stanza.status) else {
            return;
        };
        let version = stanza.version.unwrap_or_default();
        // `Source: name (version)` when the source version differs from the binary's.
        let (source, source_version) = match stanza.source.as_deref() {
            Some(source) => match source.split_once('(') {
                Some((name, rest)) => (
                    name.trim().to_owned(),
                    rest.trim_end().trim_end_matches(')').trim().to_owned(),
                ),
                None => (source.trim().to_owned(), version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        packages.push(InstalledPackage {
            name,
            architecture: stanza.architecture.unwrap_or_default(),
            version,
            source,
            source_version,
            status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library
 Contains the standard libraries.
 .
 More.

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: libpython3.11
Status: install ok installed
Architecture: amd64
Source: python3.11 (3.11.2-6+deb12u1)
Version: 3.11.2-6+deb12u1+b1

Package: hello
Status: deinstall ok config-files
Architecture: amd64
Version: 2.10-3
Conffiles:
 /etc/hello.conf 0123456789abcdef

Package: no-status
Architecture: all
Version: 1
";

    #[test]
    fn parses_sources_with_versions_and_multi_arch() {
        let packages = parse_status(STATUS);
        assert_eq!(packages.len(), 4, "{packages:#?}");
        let libc: Vec<_> = packages.iter().filter(|p| p.name == "libc6").collect();
        assert_eq!(libc.len(), 2);
        assert_eq!(libc[0].architecture, "amd64");
        assert_eq!(libc[1].architecture, "i386");
        assert_eq!(libc[1].source, "glibc");
        assert_eq!(libc[1].source_version, "2.36-9+deb12u4");
        let python = packages.iter().find(|p| p.name == "libpython3.11").unwrap();
        assert_eq!(python.source, "python3.11");
        assert_eq!(python.source_version, "3.11.2-6+deb12u1");
        assert_eq!(python.version, "3.11.2-6+deb12u1+b1");
        let hello = packages.iter().find(|p| p.name == "hello").unwrap();
        assert_eq!(hello.source, "hello");
        assert_eq!(hello.source_version, "2.10-3");
        assert_eq!(hello.status, "deinstall ok config-files");
    }

    #[test]
    fn the_hosts_own_status_file_parses() {
        let Ok(text) = fs_err::read_to_string("/var/lib/dpkg/status") else {
            return;
        };
        let packages = parse_status(&text);
        assert!(packages.iter().any(|p| p.name == "dpkg"));
        assert!(packages
            .iter()
            .all(|p| !p.version.is_empty() || !p.status.contains("installed")));
    }
}
