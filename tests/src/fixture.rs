//! A signed apt repository generated on disk, laid out like a Debian mirror:
//!
//! ```text
//! <dir>/key.asc                                  armored public key of the signer
//! <dir>/pool/<component>/<prefix>/<source>/<name>_<version without epoch>_<arch>.deb
//! <dir>/dists/<suite>/Release                    MD5Sum + SHA256 of every index file
//! <dir>/dists/<suite>/Release.gpg                detached armored signature of Release
//! <dir>/dists/<suite>/InRelease                  Release, cleartext-signed
//! <dir>/dists/<suite>/<component>/binary-<arch>/Packages{,.gz,.xz}
//! <dir>/dists/<suite>/<component>/binary-<arch>/by-hash/SHA256/<sha256 of each index file>
//! ```
//!
//! `<prefix>` is the source's first letter, or its first four for `lib*` sources, as in Debian.
//! Packages of architecture `all` appear in every architecture's `Packages`, as in Debian.
//! `.deb` files hold random (incompressible) payloads, uncompressed, so their size is about
//! the payload size: a test can ask for a file big enough to be interrupted or throttled.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, ensure, Context as _};
use chrono::{TimeDelta, Utc};
use debian_packaging::{
    control::{ControlFile, ControlParagraph},
    deb::{builder::DebBuilder, DebCompression},
    io::{MultiContentDigest, MultiDigester},
    repository::release::ChecksumType,
};
use rand::RngCore as _;

use crate::signing::TestKey;

/// Name of the package whose payload [`FixtureSpec::large_payload`] sets.
pub const LARGE_PACKAGE: &str = "big-data";

/// Payload of the default small packages: big enough to be a real file, small enough to be free.
const SMALL_PAYLOAD: u64 = 4 * 1024;

/// One binary package in a [`FixtureSpec`].
#[derive(Clone, Debug)]
pub struct PackageSpec {
    pub name: String,
    /// Source package name: decides the pool directory.
    pub source: String,
    /// Exact Debian version string, epoch included.
    pub version: String,
    /// A Debian architecture or `all`.
    pub arch: String,
    pub component: String,
    pub suites: Vec<String>,
    /// The `Depends:` field, verbatim.
    pub depends: Option<String>,
    /// The `Provides:` field, verbatim.
    pub provides: Option<String>,
    /// Bytes of random content installed by the package.
    pub payload: u64,
    /// Keep the epoch in the pool file name, percent-encoded (`foo_1%3a2.0-1_all.deb`), as
    /// some repositories do: the file on disk is named with a literal `%3a`.
    pub epoch_in_file_name: bool,
}

impl PackageSpec {
    /// A small package with no dependencies, built from a source of the same name.
    pub fn new(name: &str, version: &str, arch: &str, component: &str, suites: &[&str]) -> Self {
        Self {
            name: name.into(),
            source: name.into(),
            version: version.into(),
            arch: arch.into(),
            component: component.into(),
            suites: suites.iter().map(|s| s.to_string()).collect(),
            depends: None,
            provides: None,
            payload: SMALL_PAYLOAD,
            epoch_in_file_name: false,
        }
    }

    pub fn source(mut self, source: &str) -> Self {
        self.source = source.into();
        self
    }

    pub fn depends(mut self, depends: &str) -> Self {
        self.depends = Some(depends.into());
        self
    }

    pub fn provides(mut self, provides: &str) -> Self {
        self.provides = Some(provides.into());
        self
    }

    pub fn payload(mut self, bytes: u64) -> Self {
        self.payload = bytes;
        self
    }

    pub fn epoch_in_file_name(mut self) -> Self {
        self.epoch_in_file_name = true;
        self
    }

    /// Path of the `.deb` relative to the repository root (the `Filename:` field).
    pub fn pool_path(&self) -> String {
        let prefix = match self.source.strip_prefix("lib") {
            Some(rest) if !rest.is_empty() => &self.source[..4],
            _ => &self.source[..1],
        };
        let encoded = self.version.replace(':', "%3a");
        let version = if self.epoch_in_file_name {
            &encoded
        } else {
            self.version
                .split_once(':')
                .map_or(&*self.version, |(_, v)| v)
        };
        format!(
            "pool/{}/{prefix}/{}/{}_{version}_{}.deb",
            self.component, self.source, self.name, self.arch
        )
    }
}

/// What to generate. `Default` is the repository most tests want; adjust fields or use the
/// builder methods, then [`FixtureRepo::generate`].
#[derive(Clone, Debug)]
pub struct FixtureSpec {
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    pub packages: Vec<PackageSpec>,
    /// `Date:` is the generation time plus this (negative for an old, positive for a
    /// future-dated `Release`).
    pub date_offset: TimeDelta,
    /// `Valid-Until:` is `Date:` plus this; `None` leaves the field out (as Debian's main
    /// archive does).
    pub valid_for: Option<TimeDelta>,
    pub key: TestKey,
    /// Stanzas appended verbatim to every `Packages` index of the `main` component: hostile
    /// or malformed entries that a signed index can still carry.
    pub raw_stanzas: Vec<String>,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        let both = &["stable", "testing"];
        Self {
            suites: vec!["stable".into(), "testing".into()],
            components: vec!["main".into(), "contrib".into()],
            architectures: vec!["amd64".into(), "arm64".into()],
            packages: vec![
                PackageSpec::new("hello", "2.10-3", "amd64", "main", &["stable"]),
                PackageSpec::new("hello", "2.12.1-1", "amd64", "main", &["testing"]),
                PackageSpec::new("hello", "2.10-3", "arm64", "main", both),
                PackageSpec::new("hello-data", "2.10-3", "all", "main", both).source("hello"),
                PackageSpec::new("libfoo1", "1.4.2-1", "amd64", "main", both).source("libfoo"),
                PackageSpec::new("libfoo1", "1.4.2-1", "arm64", "main", both).source("libfoo"),
                PackageSpec::new("foo-utils", "1.4.2-1", "amd64", "main", both)
                    .source("libfoo")
                    .depends("libfoo1 (>= 1.4), hello-data"),
                PackageSpec::new("contrib-tool", "1:0.9+dfsg-2", "amd64", "contrib", both),
                PackageSpec::new(LARGE_PACKAGE, "1.0-1", "all", "main", both).payload(8 << 20),
            ],
            date_offset: TimeDelta::zero(),
            valid_for: Some(TimeDelta::days(7)),
            key: TestKey::Primary,
            raw_stanzas: Vec::new(),
        }
    }
}

impl FixtureSpec {
    /// Sets the payload of [`LARGE_PACKAGE`].
    pub fn large_payload(mut self, bytes: u64) -> Self {
        for p in self.packages.iter_mut().filter(|p| p.name == LARGE_PACKAGE) {
            p.payload = bytes;
        }
        self
    }

    /// Adds `n` small packages (`extra-0000`, …) spread over every component and architecture,
    /// in every suite: bigger indices and more files for benchmarks.
    pub fn extra_packages(mut self, n: usize) -> Self {
        let suites: Vec<&str> = self.suites.iter().map(String::as_str).collect();
        for i in 0..n {
            let component = &self.components[i % self.components.len()];
            let arch = &self.architectures[i % self.architectures.len()];
            let name = format!("extra-{i:04}");
            self.packages
                .push(PackageSpec::new(&name, "1.0-1", arch, component, &suites));
        }
        self
    }

    pub fn signed_by(mut self, key: TestKey) -> Self {
        self.key = key;
        self
    }
}

/// A package as published: what a test compares downloads against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixturePackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub component: String,
    pub suites: Vec<String>,
    /// Relative to the repository root, as in `Filename:` (and in the upstream URL path).
    pub pool_path: String,
    pub sha256: String,
    pub size: u64,
}

/// A generated repository. Change [`FixtureRepo::spec`] and call [`FixtureRepo::regenerate`]
/// to simulate an upstream publishing changes.
#[derive(Debug)]
pub struct FixtureRepo {
    root: PathBuf,
    pub spec: FixtureSpec,
    packages: Vec<FixturePackage>,
    /// `.deb` files already in the pool, by pool path: regenerating reuses them, so a published
    /// file never changes (and a test's `corrupt` is not silently re-indexed).
    built: HashMap<String, (u64, MultiContentDigest)>,
    /// Index files published in place of the generated ones, by path (see
    /// [`FixtureRepo::override_index`]).
    overrides: HashMap<String, Vec<u8>>,
}

impl FixtureRepo {
    pub fn generate(dir: &Path, spec: &FixtureSpec) -> anyhow::Result<FixtureRepo> {
        let mut repo = FixtureRepo {
            root: dir.to_owned(),
            spec: spec.clone(),
            packages: Vec::new(),
            built: HashMap::new(),
            overrides: HashMap::new(),
        };
        repo.regenerate()?;
        Ok(repo)
    }

    /// Writes missing pool files, then every index, `Release` and signature from the current
    /// spec, with a fresh `Date:`. Each file is replaced by rename, so a server never serves
    /// half of one.
    pub fn regenerate(&mut self) -> anyhow::Result<()> {
        self.check_spec()?;
        let key = self.spec.key.armored_public_key();
        write_atomic(&self.key_path(), key.as_bytes())?;
        let mut packages = Vec::new();
        for spec in &self.spec.packages {
            let pool_path = spec.pool_path();
            if !self.built.contains_key(&pool_path) {
                let built = build_deb(&self.root.join(&pool_path), spec)
                    .with_context(|| format!("building {pool_path}"))?;
                self.built.insert(pool_path.clone(), built);
            }
            let (size, digests) = &self.built[&pool_path];
            packages.push(FixturePackage {
                name: spec.name.clone(),
                version: spec.version.clone(),
                arch: spec.arch.clone(),
                component: spec.component.clone(),
                suites: spec.suites.clone(),
                sha256: digests.sha256.digest_hex(),
                size: *size,
                pool_path,
            });
        }
        self.packages = packages;
        for suite in &self.spec.suites {
            self.write_suite(suite)
                .with_context(|| format!("writing suite {suite}"))?;
        }
        Ok(())
    }

    /// Publishes `version` of `name` in place of its newest entry (in every suite that entry
    /// is in), re-signs, and returns the new package.
    pub fn bump(&mut self, name: &str, version: &str) -> anyhow::Result<FixturePackage> {
        let newest = self
            .spec
            .packages
            .iter_mut()
            .filter(|p| p.name == name)
            .max_by(|a, b| debian_version(&a.version).cmp(&debian_version(&b.version)))
            .with_context(|| format!("no package {name} in the fixture"))?;
        newest.version = version.into();
        let pool_path = newest.pool_path();
        self.regenerate()?;
        Ok(self.published(&pool_path))
    }

    /// A maintainer re-upload: the newest `name` is built again (new bytes) under the same
    /// pool path and version, the indices re-signed. Returns the new package entry.
    pub fn reupload(&mut self, name: &str) -> anyhow::Result<FixturePackage> {
        let pool_path = self.package(name).pool_path.clone();
        self.built.remove(&pool_path);
        self.regenerate()?;
        Ok(self.published(&pool_path))
    }

    /// The published entry at `pool_path` (regenerate publishes every spec entry).
    fn published(&self, pool_path: &str) -> FixturePackage {
        self.packages
            .iter()
            .find(|p| p.pool_path == pool_path)
            .expect("regenerate publishes every spec entry")
            .clone()
    }

    /// Publishes `data` as the index file at `path` (e.g.
    /// `dists/stable/main/binary-amd64/Packages.xz`) from now on, listed and signed in its
    /// Release like any other: a validly signed but hostile index.
    pub fn override_index(&mut self, path: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.overrides.insert(path.to_owned(), data);
        self.regenerate()
    }

    /// Flips 16 bytes in the middle of a file (relative to the root), keeping its size and
    /// mtime (so `ETag` and `Last-Modified` too): only a digest check can notice.
    pub fn corrupt(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = self.root.join(path);
        let mut data = fs_err::read(&path)?;
        ensure!(!data.is_empty(), "{} is empty", path.display());
        let modified = fs_err::metadata(&path)?.modified()?;
        let start = data.len() / 2;
        let end = (start + 16).min(data.len());
        for byte in &mut data[start..end] {
            *byte ^= 0xff;
        }
        let mut file = fs_err::File::options().write(true).open(&path)?;
        file.write_all(&data)?;
        file.set_modified(modified)?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the root, e.g. `dists/stable/InRelease`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The signer's armored public key, `<root>/key.asc`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("key.asc")
    }

    /// Every published package entry, in spec order.
    pub fn packages(&self) -> &[FixturePackage] {
        &self.packages
    }

    /// The newest published entry named `name`. Panics if there is none: a test bug.
    pub fn package(&self, name: &str) -> &FixturePackage {
        self.packages
            .iter()
            .filter(|p| p.name == name)
            .max_by(|a, b| debian_version(&a.version).cmp(&debian_version(&b.version)))
            .unwrap_or_else(|| panic!("no package {name} in the fixture"))
    }

    /// The entry of `name` for `arch` (or `all`) in `suite`. Panics if there is none.
    pub fn package_in(&self, suite: &str, name: &str, arch: &str) -> &FixturePackage {
        self.packages
            .iter()
            .find(|p| {
                p.name == name
                    && (p.arch == arch || p.arch == "all")
                    && p.suites.iter().any(|s| s == suite)
            })
            .unwrap_or_else(|| panic!("no package {name}/{arch} in suite {suite}"))
    }

    fn check_spec(&self) -> anyhow::Result<()> {
        let spec = &self.spec;
        for p in &spec.packages {
            let known = |list: &[String], item: &str| list.iter().any(|x| x == item);
            ensure!(
                p.arch == "all" || known(&spec.architectures, &p.arch),
                "{}: architecture {} is not in the spec",
                p.name,
                p.arch
            );
            ensure!(
                known(&spec.components, &p.component),
                "{}: unknown component",
                p.name
            );
            for suite in &p.suites {
                ensure!(
                    known(&spec.suites, suite),
                    "{}: unknown suite {suite}",
                    p.name
                );
            }
        }
        let mut seen = HashMap::new();
        for p in &spec.packages {
            if let Some(other) = seen.insert(p.pool_path(), p) {
                if other.suites.iter().any(|s| p.suites.contains(s)) {
                    bail!("{} appears twice in a suite", p.pool_path());
                }
            }
        }
        Ok(())
    }

    fn write_suite(&self, suite: &str) -> anyhow::Result<()> {
        let dist = self.root.join("dists").join(suite);
        let mut index: BTreeMap<String, (u64, MultiContentDigest)> = BTreeMap::new();
        for component in &self.spec.components {
            for arch in &self.spec.architectures {
                let dir = format!("{component}/binary-{arch}");
                let packages = self.packages_file(suite, component, arch)?;
                for (name, data) in [
                    ("Packages", packages.clone().into_bytes()),
                    ("Packages.gz", gzip(packages.as_bytes())?),
                    ("Packages.xz", xz(packages.as_bytes())?),
                ] {
                    let data = match self.overrides.get(&format!("dists/{suite}/{dir}/{name}")) {
                        Some(data) => data.clone(),
                        None => data,
                    };
                    let digests = digest(&data);
                    let by_hash = format!("{dir}/by-hash/SHA256/{}", digests.sha256.digest_hex());
                    write_atomic(&dist.join(&dir).join(name), &data)?;
                    // Named by content: an existing one is already right.
                    let by_hash = dist.join(by_hash);
                    if !by_hash.exists() {
                        write_atomic(&by_hash, &data)?;
                    }
                    index.insert(format!("{dir}/{name}"), (data.len() as u64, digests));
                }
            }
        }
        let release = self.release(suite, &index)?;
        write_atomic(&dist.join("Release"), release.as_bytes())?;
        let detached = self.spec.key.detached_sign(release.as_bytes())?;
        write_atomic(&dist.join("Release.gpg"), detached.as_bytes())?;
        let inrelease = self.spec.key.cleartext_sign(&release)?;
        write_atomic(&dist.join("InRelease"), inrelease.as_bytes())?;
        Ok(())
    }

    fn packages_file(&self, suite: &str, component: &str, arch: &str) -> anyhow::Result<String> {
        let mut entries: Vec<_> = self
            .spec
            .packages
            .iter()
            .zip(&self.packages)
            .filter(|(spec, _)| {
                spec.component == component
                    && (spec.arch == arch || spec.arch == "all")
                    && spec.suites.iter().any(|s| s == suite)
            })
            .collect();
        entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let mut out = String::new();
        for (spec, published) in entries {
            let digests = &self.built[&published.pool_path].1;
            let mut paragraph = control_paragraph(spec);
            for (field, value) in [
                ("Filename", published.pool_path.clone()),
                ("Size", published.size.to_string()),
                ("MD5sum", digests.md5.digest_hex()),
                ("SHA256", published.sha256.clone()),
            ] {
                paragraph.set_field_from_string(field.into(), value.into());
            }
            writeln!(out, "{paragraph}")?;
        }
        if component == "main" {
            for raw in &self.spec.raw_stanzas {
                writeln!(out, "{}\n", raw.trim_end_matches('\n'))?;
            }
        }
        Ok(out)
    }

    fn release(
        &self,
        suite: &str,
        index: &BTreeMap<String, (u64, MultiContentDigest)>,
    ) -> anyhow::Result<String> {
        const DATE_FORMAT: &str = "%a, %d %b %Y %H:%M:%S UTC";
        let spec = &self.spec;
        let date = Utc::now() + spec.date_offset;
        let mut out = String::new();
        writeln!(out, "Origin: aptgate-fixture\nLabel: aptgate-fixture")?;
        writeln!(out, "Suite: {suite}\nCodename: {suite}")?;
        writeln!(out, "Date: {}", date.format(DATE_FORMAT))?;
        if let Some(valid_for) = spec.valid_for {
            writeln!(
                out,
                "Valid-Until: {}",
                (date + valid_for).format(DATE_FORMAT)
            )?;
        }
        writeln!(out, "Acquire-By-Hash: yes")?;
        writeln!(out, "Architectures: {}", spec.architectures.join(" "))?;
        writeln!(out, "Components: {}", spec.components.join(" "))?;
        writeln!(out, "Description: aptgate test fixture")?;
        let width = index.values().map(|(size, _)| size.to_string().len()).max();
        let width = width.unwrap_or(0);
        for checksum in [ChecksumType::Md5, ChecksumType::Sha256] {
            writeln!(out, "{}:", checksum.field_name())?;
            for (path, (size, digests)) in index {
                let hex = digests.digest_from_checksum(checksum).digest_hex();
                writeln!(out, " {hex} {size:>width$} {path}")?;
            }
        }
        Ok(out)
    }
}

fn debian_version(version: &str) -> debversion::Version {
    version
        .parse()
        .unwrap_or_else(|e| panic!("fixture version {version:?}: {e}"))
}

/// The package's `control` file, which is also the start of its `Packages` entry.
fn control_paragraph(spec: &PackageSpec) -> ControlParagraph<'static> {
    let mut paragraph = ControlParagraph::default();
    let mut fields = vec![("Package", spec.name.clone())];
    if spec.source != spec.name {
        fields.push(("Source", spec.source.clone()));
    }
    fields.extend([
        ("Version", spec.version.clone()),
        ("Architecture", spec.arch.clone()),
        ("Maintainer", "aptgate tests <tests@aptgate.invalid>".into()),
        ("Installed-Size", spec.payload.div_ceil(1024).to_string()),
    ]);
    if let Some(depends) = &spec.depends {
        fields.push(("Depends", depends.clone()));
    }
    if let Some(provides) = &spec.provides {
        fields.push(("Provides", provides.clone()));
    }
    fields.extend([
        ("Section", "misc".into()),
        ("Priority", "optional".into()),
        (
            "Description",
            format!(
                "fixture package {}\n Random payload for aptgate's tests.",
                spec.name
            ),
        ),
    ]);
    for (name, value) in fields {
        paragraph.set_field_from_string(name.into(), value.into());
    }
    paragraph
}

/// Builds one `.deb` at `path` the way the repository's own are built (uncompressed
/// `control.tar`, random payload: two builds of one spec differ), and returns its bytes.
pub fn build_package(path: &Path, spec: &PackageSpec) -> anyhow::Result<Vec<u8>> {
    build_deb(path, spec)?;
    Ok(fs_err::read(path)?)
}

/// Builds the `.deb` at `path` and returns its size and digests.
fn build_deb(path: &Path, spec: &PackageSpec) -> anyhow::Result<(u64, MultiContentDigest)> {
    let mut payload = vec![0; usize::try_from(spec.payload)?];
    rand::thread_rng().fill_bytes(&mut payload);
    let mut control = ControlFile::default();
    control.add_paragraph(control_paragraph(spec));
    let mut deb = Vec::new();
    DebBuilder::new(control)
        .set_compression(DebCompression::Uncompressed)
        .install_file(format!("usr/share/{}/payload.bin", spec.name), payload)?
        .write(&mut deb)?;
    write_atomic(path, &deb)?;
    Ok((deb.len() as u64, digest(&deb)))
}

fn digest(data: &[u8]) -> MultiContentDigest {
    let mut digester = MultiDigester::default();
    digester.update(data);
    digester.finish()
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn xz(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 6);
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// Writes via a temporary sibling and a rename, creating parent directories.
///
/// A rewritten file's mtime moves at least a second past the old one: `Last-Modified` has
/// one-second resolution, and a client revalidating with `If-Modified-Since` must not get a
/// 304 for a file regenerated within the same second.
fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs_err::create_dir_all(dir)?;
    let previous = fs_err::metadata(path).and_then(|m| m.modified()).ok();
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // Temporary files are created private; published files are world-readable.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(data)?;
    if let Some(previous) = previous {
        let mtime = SystemTime::now().max(previous + Duration::from_secs(1));
        tmp.as_file().set_modified(mtime)?;
    }
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use sha2::{Digest as _, Sha256};

    use super::*;

    /// Runs gpgv against `key` (armored), converting it to the binary keyring gpgv reads.
    fn gpgv(home: &Path, key: &Path, files: &[PathBuf]) -> Output {
        let keyring = home.join("keyring.gpg");
        let dearmor = Command::new("gpg")
            .arg("--homedir")
            .arg(home)
            .args(["--batch", "--yes", "--dearmor", "-o"])
            .arg(&keyring)
            .arg(key)
            .output()
            .expect("running gpg");
        assert!(dearmor.status.success(), "gpg --dearmor: {dearmor:?}");
        Command::new("gpgv")
            .arg("--homedir")
            .arg(home)
            .arg("--keyring")
            .arg(&keyring)
            .args(files)
            .output()
            .expect("running gpgv")
    }

    fn small_spec() -> FixtureSpec {
        FixtureSpec::default().large_payload(64 * 1024)
    }

    #[test]
    fn gpgv_accepts_inrelease_and_release_gpg() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FixtureRepo::generate(&dir.path().join("repo"), &small_spec()).unwrap();
        let home = tempfile::tempdir().unwrap();
        for files in [
            vec![repo.path("dists/stable/InRelease")],
            vec![
                repo.path("dists/stable/Release.gpg"),
                repo.path("dists/stable/Release"),
            ],
        ] {
            let out = gpgv(home.path(), &repo.key_path(), &files);
            assert!(out.status.success(), "gpgv {files:?}: {out:?}");
        }

        let other = home.path().join("other.asc");
        TestKey::Other.write_public_key(&other).unwrap();
        let out = gpgv(home.path(), &other, &[repo.path("dists/stable/InRelease")]);
        assert!(
            !out.status.success(),
            "gpgv accepted the wrong key: {out:?}"
        );
    }

    #[test]
    fn indices_describe_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FixtureRepo::generate(dir.path(), &small_spec()).unwrap();
        for p in repo.packages() {
            let data = fs_err::read(repo.path(&p.pool_path)).unwrap();
            assert_eq!(data.len() as u64, p.size, "{}", p.pool_path);
            assert_eq!(
                hex::encode(Sha256::digest(&data)),
                p.sha256,
                "{}",
                p.pool_path
            );
        }
        assert_eq!(
            repo.package_in("stable", "libfoo1", "amd64").pool_path,
            "pool/main/libf/libfoo/libfoo1_1.4.2-1_amd64.deb"
        );
        assert_eq!(
            repo.package("contrib-tool").pool_path,
            "pool/contrib/c/contrib-tool/contrib-tool_0.9+dfsg-2_amd64.deb"
        );
        assert_eq!(
            repo.package_in("stable", "hello", "amd64").version,
            "2.10-3"
        );
        assert_eq!(repo.package("hello").version, "2.12.1-1");

        let text =
            fs_err::read_to_string(repo.path("dists/testing/main/binary-arm64/Packages")).unwrap();
        let control = ControlFile::parse_str(&text).unwrap();
        let names: Vec<_> = control
            .paragraphs()
            .map(|p| p.field_str("Package").unwrap())
            .collect();
        // `all` packages are listed for every architecture; amd64-only ones are not.
        assert_eq!(names, ["big-data", "hello", "hello-data", "libfoo1"]);

        let release = fs_err::read_to_string(repo.path("dists/testing/Release")).unwrap();
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        let entry = [&*sha, &text.len().to_string(), "main/binary-arm64/Packages"];
        let listed = release.lines().any(|l| l.split_whitespace().eq(entry));
        assert!(listed, "{entry:?} not in {release}");
        let by_hash = repo.path(&format!(
            "dists/testing/main/binary-arm64/by-hash/SHA256/{sha}"
        ));
        assert_eq!(fs_err::read_to_string(by_hash).unwrap(), text);
    }

    #[test]
    fn bump_publishes_and_corrupt_keeps_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = FixtureRepo::generate(dir.path(), &small_spec()).unwrap();
        let old = repo.package("hello").clone();
        let libfoo = repo.package("libfoo1").sha256.clone();
        let new = repo.bump("hello", "2.12.1-2").unwrap();
        assert_eq!(new.suites, ["testing"]);
        assert_ne!(new.pool_path, old.pool_path);
        let packages =
            fs_err::read_to_string(repo.path("dists/testing/main/binary-amd64/Packages")).unwrap();
        assert!(packages.contains(&format!("Filename: {}\n", new.pool_path)));
        assert!(!packages.contains(&old.pool_path));
        // Unchanged packages keep their exact bytes.
        assert_eq!(repo.package("libfoo1").sha256, libfoo);

        // Even within the same second, a rewritten index looks newer to `If-Modified-Since`.
        let inrelease = repo.path("dists/testing/InRelease");
        let before = fs_err::metadata(&inrelease).unwrap().modified().unwrap();
        repo.regenerate().unwrap();
        let after = fs_err::metadata(&inrelease).unwrap().modified().unwrap();
        assert!(after >= before + Duration::from_secs(1));

        let pool_file = repo.path(&new.pool_path);
        let modified = fs_err::metadata(&pool_file).unwrap().modified().unwrap();
        repo.corrupt(&new.pool_path).unwrap();
        assert_eq!(
            fs_err::metadata(&pool_file).unwrap().modified().unwrap(),
            modified
        );
        let data = fs_err::read(&pool_file).unwrap();
        assert_eq!(data.len() as u64, new.size);
        assert_ne!(hex::encode(Sha256::digest(&data)), new.sha256);
    }
}
