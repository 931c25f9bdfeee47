//! Importing the host's own apt sources, so a fresh Debian/Ubuntu host mirrors what it uses.
//!
//! Reads `sources.list` and `sources.list.d/*.list` (one-line format) and
//! `sources.list.d/*.sources` (deb822). `Signed-By` is honoured (paths or an inline key block);
//! without it the keyring is what apt would use: `trusted.gpg.d/*` and `trusted.gpg`.
//! Entries aptgate cannot mirror are reported, not fatal.

use crate::{SourceConfig, SourceName};
use std::path::{Path, PathBuf};
use url::Url;

#[derive(Debug, Default)]
pub struct HostImport {
    pub sources: Vec<SourceConfig>,
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedEntry {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

/// One `deb` entry before merging.
#[derive(Debug)]
struct Entry {
    url: String,
    suites: Vec<String>,
    components: Vec<String>,
    architectures: Vec<String>,
    keyring: Vec<PathBuf>,
    inline_keys: Vec<String>,
}

pub fn host_sources(apt_dir: &Path) -> HostImport {
    let mut import = HostImport::default();
    let mut entries = Vec::new();
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(dir) = fs_err::read_dir(apt_dir.join("sources.list.d")) {
        let mut listed: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        listed.sort();
        files.extend(
            listed
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")),
        );
    }
    for file in files {
        let text = match fs_err::read_to_string(&file) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && file.ends_with("sources.list") =>
            {
                continue
            }
            Err(e) => {
                import.skipped.push(SkippedEntry {
                    file: file.clone(),
                    line: None,
                    reason: format!("unreadable: {e}"),
                });
                continue;
            }
        };
        if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&file, &text, &mut entries, &mut import.skipped);
        } else {
            parse_one_line(&file, &text, &mut entries, &mut import.skipped);
        }
    }
    let default_keyring = default_keyring(apt_dir);
    for mut entry in entries {
        if entry.keyring.is_empty() && entry.inline_keys.is_empty() {
            entry.keyring = default_keyring.clone();
        }
        merge_entry(&mut import.sources, entry);
    }
    import
}

/// What apt trusts without `Signed-By`.
fn default_keyring(apt_dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = fs_err::read_dir(apt_dir.join("trusted.gpg.d"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "gpg" || e == "asc"))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    let legacy = apt_dir.join("trusted.gpg");
    if legacy.is_file() {
        keys.push(legacy);
    }
    keys
}

fn parse_one_line(file: &Path, text: &str, out: &mut Vec<Entry>, skipped: &mut Vec<SkippedEntry>) {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let skip = |reason: String| SkippedEntry {
            file: file.to_owned(),
            line: Some(n + 1),
            reason,
        };
        let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match kind {
            "deb-src" => continue,
            "deb" => {}
            other => {
                skipped.push(skip(format!("unknown entry type {other:?}")));
                continue;
            }
        }
        let mut rest = rest.trim_start();
        let mut options = Vec::new();
        if let Some(after) = rest.strip_prefix('[') {
            let Some((opts, after)) = after.split_once(']') else {
                skipped.push(skip("unterminated [options]".into()));
                continue;
            };
            options = opts
                .split_whitespace()
                .filter_map(|o| o.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            rest = after.trim_start();
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [uri, suite, components @ ..] = words.as_slice() else {
            skipped.push(skip(
                "expected: deb [options] URI SUITE [COMPONENT…]".into(),
            ));
            continue;
        };
        let option = |name: &str| {
            options
                .iter()
                .filter(|(k, _)| k == name)
                .flat_map(|(_, v)| v.split(','))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let entry = Entry {
            url: (*uri).to_owned(),
            suites: vec![(*suite).to_owned()],
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            architectures: option("arch"),
            keyring: option("signed-by").into_iter().map(PathBuf::from).collect(),
            inline_keys: Vec::new(),
        };
        match check(&entry) {
            Ok(()) => out.push(entry),
            Err(reason) => skipped.push(skip(reason)),
        }
    }
}

fn parse_deb822(file: &Path, text: &str, out: &mut Vec<Entry>, skipped: &mut Vec<SkippedEntry>) {
    // Stanzas are separated by blank lines; fields may continue on indented lines.
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut start = 1;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().chain(std::iter::once(&"")).enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !stanza.is_empty() {
                stanza_entries(file, start, &stanza, out, skipped);
                stanza.clear();
            }
            start = i + 2;
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, value)) = stanza.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_lowercase(), v.trim().to_owned()));
        }
    }
}

fn stanza_entries(
    file: &Path,
    line: usize,
    fields: &[(String, String)],
    out: &mut Vec<Entry>,
    skipped: &mut Vec<SkippedEntry>,
) {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let words = |name: &str| -> Vec<String> {
        get(name)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
        return;
    }
    if !words("types").iter().any(|t| t == "deb") {
        return;
    }
    let (keyring, inline_keys) = match get("signed-by") {
        Some(v) if v.contains("BEGIN PGP PUBLIC KEY BLOCK") => {
            // Continuation lines hold the key; a lone "." stands for an empty line.
            let key: Vec<&str> = v.lines().map(|l| if l == "." { "" } else { l }).collect();
            (Vec::new(), vec![format!("{}\n", key.join("\n").trim())])
        }
        Some(v) => (
            v.split_whitespace().map(PathBuf::from).collect(),
            Vec::new(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    for uri in words("uris") {
        let entry = Entry {
            url: uri,
            suites: words("suites"),
            components: words("components"),
            architectures: words("architectures"),
            keyring: keyring.clone(),
            inline_keys: inline_keys.clone(),
        };
        match check(&entry) {
            Ok(()) => out.push(entry),
            Err(reason) => skipped.push(SkippedEntry {
                file: file.to_owned(),
                line: Some(line),
                reason,
            }),
        }
    }
}

fn check(entry: &Entry) -> Result<(), String> {
    let scheme = entry.url.split(':').next().unwrap_or("");
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "{scheme}: URIs cannot be mirrored (only http and https): {}",
            entry.url
        ));
    }
    if Url::parse(&entry.url).is_err() {
        return Err(format!("invalid URI {}", entry.url));
    }
    if entry.suites.is_empty() {
        return Err("no suite".into());
    }
    if entry.suites.iter().any(|s| s.ends_with('/')) {
        return Err(format!(
            "flat repository ({}) is not supported yet",
            entry.suites.join(" ")
        ));
    }
    Ok(())
}

/// Folds an entry into an existing source with the same URL and keys, or adds a new one.
fn merge_entry(sources: &mut Vec<SourceConfig>, entry: Entry) {
    let url_text = format!("{}/", entry.url.trim_end_matches('/'));
    let url = Url::parse(&url_text).expect("checked above");
    if let Some(existing) = sources.iter_mut().find(|s| {
        s.url.as_ref() == Some(&url)
            && s.keyring == entry.keyring
            && s.inline_keys == entry.inline_keys
    }) {
        union(&mut existing.suites, entry.suites);
        union(&mut existing.components, entry.components);
        union(&mut existing.architectures, entry.architectures);
        return;
    }
    let base = source_name(&url);
    let mut name = base.clone();
    let mut n = 2;
    while sources.iter().any(|s| s.name.as_str() == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    sources.push(SourceConfig {
        name: name.parse().expect("source_name yields valid names"),
        kind: Default::default(),
        url: Some(url),
        suites: entry.suites,
        components: entry.components,
        architectures: entry.architectures,
        keyring: entry.keyring,
        inline_keys: entry.inline_keys,
        policy: Default::default(),
        fallback: Vec::new(),
    });
}

fn union(into: &mut Vec<String>, from: Vec<String>) {
    for item in from {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// `http://deb.debian.org/debian` → `deb.debian.org-debian`.
fn source_name(url: &Url) -> String {
    let raw = format!("{}{}", url.host_str().unwrap_or("source"), url.path()).to_lowercase();
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches(|c| c == '-' || c == '.');
    let mut name: String = name.chars().take(64).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if SourceName::try_from(name.clone()).is_err() {
        return "host-source".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apt_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("sources.list.d")).unwrap();
        fs_err::create_dir_all(dir.path().join("trusted.gpg.d")).unwrap();
        dir
    }

    #[test]
    fn one_line_entries_with_options_merge_by_url_and_key() {
        let dir = apt_dir();
        fs_err::write(
            dir.path().join("sources.list"),
            "# comment\n\
             deb [arch=amd64,arm64 signed-by=/k/debian.gpg] http://deb.example.org/debian bookworm main contrib\n\
             deb [signed-by=/k/debian.gpg] http://deb.example.org/debian/ bookworm-updates main\n\
             deb-src http://deb.example.org/debian bookworm main\n\
             deb cdrom:[Debian GNU/Linux]/ bookworm main\n\
             deb http://flat.example.org/repo ./\n\
             nonsense\n",
        )
        .unwrap();
        let import = host_sources(dir.path());
        assert_eq!(import.sources.len(), 1, "{import:?}");
        let s = &import.sources[0];
        assert_eq!(s.name.as_str(), "deb.example.org-debian");
        assert_eq!(
            s.url.as_ref().unwrap().as_str(),
            "http://deb.example.org/debian/"
        );
        assert_eq!(s.suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s.components, ["main", "contrib"]);
        assert_eq!(s.architectures, ["amd64", "arm64"]);
        assert_eq!(s.keyring, [PathBuf::from("/k/debian.gpg")]);
        let reasons: Vec<_> = import
            .skipped
            .iter()
            .map(|s| (s.line, s.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].1.contains("cdrom"));
        assert!(reasons[1].1.contains("flat"));
        assert!(reasons[2].1.contains("nonsense"));
        assert_eq!(reasons[0].0, Some(5));
    }

    #[test]
    fn deb822_with_paths_inline_keys_and_disabled_stanzas() {
        let dir = apt_dir();
        fs_err::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb deb-src\nURIs: https://deb.example.org/debian\nSuites: trixie trixie-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://vendor.example.org/apt\nSuites: stable\nComponents: main\n\
             Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGXXXX\n =abcd\n -----END PGP PUBLIC KEY BLOCK-----\n\n\
             Enabled: no\nTypes: deb\nURIs: http://off.example.org/x\nSuites: s\n",
        )
        .unwrap();
        let import = host_sources(dir.path());
        assert!(import.skipped.is_empty(), "{:?}", import.skipped);
        assert_eq!(import.sources.len(), 2);
        assert_eq!(import.sources[0].suites, ["trixie", "trixie-updates"]);
        assert_eq!(
            import.sources[0].keyring,
            [PathBuf::from(
                "/usr/share/keyrings/debian-archive-keyring.gpg"
            )]
        );
        assert_eq!(import.sources[1].name.as_str(), "vendor.example.org-apt");
        let key = &import.sources[1].inline_keys[0];
        assert!(
            key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGXXXX\n"),
            "{key}"
        );
    }

    #[test]
    fn without_signed_by_the_host_keyring_is_used_and_unreadable_files_are_reported() {
        let dir = apt_dir();
        fs_err::write(dir.path().join("trusted.gpg.d/debian.gpg"), b"k").unwrap();
        fs_err::write(dir.path().join("trusted.gpg.d/vendor.asc"), b"k").unwrap();
        fs_err::write(dir.path().join("trusted.gpg.d/README"), b"k").unwrap();
        fs_err::write(
            dir.path().join("sources.list.d/a.list"),
            "deb http://deb.example.org/debian bookworm main\n",
        )
        .unwrap();
        // A directory where a file should be: unreadable, reported, not fatal.
        fs_err::create_dir_all(dir.path().join("sources.list.d/broken.list")).unwrap();
        let import = host_sources(dir.path());
        assert_eq!(import.sources.len(), 1);
        assert_eq!(
            import.sources[0].keyring,
            [
                dir.path().join("trusted.gpg.d/debian.gpg"),
                dir.path().join("trusted.gpg.d/vendor.asc")
            ]
        );
        assert_eq!(import.skipped.len(), 1);
        assert!(import.skipped[0].reason.contains("unreadable"));
    }

    #[test]
    fn same_url_with_different_keys_gets_distinct_names() {
        let dir = apt_dir();
        fs_err::write(
            dir.path().join("sources.list"),
            "deb [signed-by=/a.gpg] http://x.example.org/ s main\n\
             deb [signed-by=/b.gpg] http://x.example.org/ t main\n",
        )
        .unwrap();
        let import = host_sources(dir.path());
        let names: Vec<_> = import.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x.example.org", "x.example.org-2"]);
    }
}
