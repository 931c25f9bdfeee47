//! Writes the host's aptgate apt source from the server's [`DesiredSources`]:
//!
//! ```text
//! <root>/etc/apt/sources.list.d/aptgate.sources   deb822, one stanza per entry, Signed-By
//! <root>/etc/apt/keyrings/aptgate-<name>.asc      the channel's armored keys, mode 0644
//! <root>/etc/apt/aptgate-mirrors/<channel>.list   replicas, then the canonical (see
//!                                                 [`mirror_list`]); only when the server
//!                                                 names replicas
//! ```
//!
//! Everything the server sends is validated before anything is written: a value apt would
//! read differently than we do (a newline, a path, a `file:` URI) refuses the whole change.
//! Files are replaced atomically and only when their content changes; the temporary name
//! (`*.dpkg-tmp`) is one apt ignores silently. Key files are always named `aptgate-…`, so a
//! server can never overwrite an administrator's keyring.

use std::{collections::BTreeSet, fmt::Write as _, path::PathBuf};

use crate::{
    files,
    host_root::HostRoot,
    mirror_list::{self, MirrorList},
    protocol::{DesiredSources, SourceEntry},
};

/// The file the agent owns in `sources.list.d`.
pub const SOURCE_FILE: &str = "aptgate.sources";
/// A temporary suffix matched by apt's `Dir::Ignore-Files-Silently` (`\.dpkg-[a-z]+$`).
const TEMP_SUFFIX: &str = ".dpkg-tmp";
/// Prefix of every key file the agent writes.
const KEY_PREFIX: &str = "aptgate-";
const MAX_KEY_BYTES: usize = 1 << 20;
const BEGIN_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_KEY: &str = "-----END PGP PUBLIC KEY BLOCK-----";

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("refused the server's sources: {0}")]
    Refused(String),
    #[error("cannot write the apt sources")]
    Io(#[from] std::io::Error),
}

/// Desired sources that passed validation, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSources {
    /// The content of `aptgate.sources`; `None` when the host is unassigned.
    pub source_file: Option<String>,
    /// (local file name, armored key)
    pub keys: Vec<(String, String)>,
    /// The mirror list the source file names, when the server sent replicas.
    pub mirror_list: Option<MirrorList>,
}

/// What [`apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub source_file_changed: bool,
    pub mirror_list_changed: bool,
    /// Mirror lists removed (a rule that no longer names replicas, another channel).
    pub mirror_lists_removed: Vec<String>,
    pub keys_changed: Vec<String>,
    pub keys_removed: Vec<String>,
    /// The key files now written (to remember in the state).
    pub keys_written: Vec<String>,
}

/// The local name of a server key file: always under our prefix.
pub fn local_key_name(file_name: &str) -> String {
    if file_name.starts_with(KEY_PREFIX) {
        file_name.to_owned()
    } else {
        format!("{KEY_PREFIX}{file_name}")
    }
}

/// Checks every field and renders the files, writing nothing.
pub fn validate(root: &HostRoot, desired: &DesiredSources) -> Result<ValidSources, SourcesError> {
    let refuse = |what: String| Err(SourcesError::Refused(what));
    no_control("rev", &desired.rev)?;
    if let Some(channel) = &desired.channel {
        no_control("channel", channel)?;
    }
    let mut keys = Vec::new();
    let mut names = BTreeSet::new();
    for key in &desired.keys {
        let name = &key.file_name;
        let bare = name
            .strip_suffix(".asc")
            .filter(|stem| {
                !stem.is_empty()
                    && !stem.starts_with('.')
                    && stem
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            })
            .is_some();
        if !bare {
            return refuse(format!(
                "key file name {name:?} is not a bare name `[A-Za-z0-9._-]+.asc`"
            ));
        }
        if !key.fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return refuse(format!("key fingerprint {:?} is not hex", key.fingerprint));
        }
        let armored = key.armored.trim();
        if armored.len() > MAX_KEY_BYTES
            || !armored.starts_with(BEGIN_KEY)
            || !armored.ends_with(END_KEY)
            || armored
                .chars()
                .any(|c| !(c == '\n' || c == '\r' || (' '..='~').contains(&c)))
        {
            return refuse(format!(
                "key {name:?} is not an ASCII-armored public key block"
            ));
        }
        let local = local_key_name(name);
        if !names.insert(local.clone()) {
            return refuse(format!("key file name {name:?} appears twice"));
        }
        keys.push((local, format!("{armored}\n")));
    }
    if desired.entries.is_empty() {
        return Ok(ValidSources {
            source_file: None,
            keys,
            mirror_list: None,
        });
    }
    if keys.is_empty() {
        return refuse("sources without a signing key (apt would trust any key)".into());
    }
    let names: Vec<String> = keys.iter().map(|(name, _)| name.clone()).collect();
    let mirror_list = validate_mirrors(root, desired)?;
    let text = render(
        root,
        desired.channel.as_deref(),
        &desired.entries,
        &names,
        mirror_list.as_ref().map(MirrorList::source_uri).as_deref(),
    )?;
    Ok(ValidSources {
        source_file: Some(text),
        keys,
        mirror_list,
    })
}

/// The deb822 text of `entries`, each signed by the key files `key_names` under the root's
/// keyrings directory. Every entry is validated first. `mirror_uri` (a `mirror+file:` URI)
/// replaces every entry's URIs when the server names replicas.
pub fn render(
    root: &HostRoot,
    channel: Option<&str>,
    entries: &[SourceEntry],
    key_names: &[String],
    mirror_uri: Option<&str>,
) -> Result<String, SourcesError> {
    let refuse = |what: String| Err(SourcesError::Refused(what));
    let signed_by: Vec<String> = key_names
        .iter()
        .map(|name| root.keyrings_dir().join(name).display().to_string())
        .collect();
    for path in &signed_by {
        if path.chars().any(char::is_whitespace) {
            return refuse(format!("key path {path:?} has white space (the --root?)"));
        }
    }
    let mut text = String::from(
        "# Written by aptgate-agent from the server's assignment; it rewrites this file.\n",
    );
    if let Some(channel) = channel {
        no_control("channel", channel)?;
        writeln!(text, "# Channel: {channel}").unwrap();
    }
    for entry in entries {
        validate_entry(entry)?;
    }
    for entry in entries {
        let uris = match mirror_uri {
            Some(uri) => uri.to_owned(),
            None => entry.uris.join(" "),
        };
        text.push('\n');
        writeln!(text, "Types: deb").unwrap();
        writeln!(text, "URIs: {uris}").unwrap();
        writeln!(text, "Suites: {}", entry.suites.join(" ")).unwrap();
        writeln!(text, "Components: {}", entry.components.join(" ")).unwrap();
        if !entry.architectures.is_empty() {
            writeln!(text, "Architectures: {}", entry.architectures.join(" ")).unwrap();
        }
        writeln!(text, "Signed-By: {}", signed_by.join(" ")).unwrap();
    }
    Ok(text)
}

/// The mirror list for the entries, when the server names replicas: every entry must have the
/// same URIs (the canonical fallback), as the server sends them.
fn validate_mirrors(
    root: &HostRoot,
    desired: &DesiredSources,
) -> Result<Option<MirrorList>, SourcesError> {
    if desired.mirrors.is_empty() {
        return Ok(None);
    }
    for uri in &desired.mirrors {
        check_uri(uri)?;
    }
    let fallback = &desired.entries[0].uris;
    if desired.entries.iter().any(|e| &e.uris != fallback) {
        return Err(SourcesError::Refused(
            "mirrors for entries with different URIs (one mirror list per channel)".into(),
        ));
    }
    mirror_list::render(root, desired.channel.as_deref(), &desired.mirrors, fallback).map(Some)
}

/// A plain `http(s)://host…` URL apt reads as one URI: nothing that could end the field or
/// the line, or turn into a local path. The server checks rule mirrors with this too.
pub fn check_uri(uri: &str) -> Result<(), SourcesError> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let ok = rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && rest
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '#' | '"' | '\'' | '\\'))
    });
    if ok {
        Ok(())
    } else {
        Err(SourcesError::Refused(format!(
            "URI {uri:?} is not a plain http(s) URL"
        )))
    }
}

fn validate_entry(entry: &SourceEntry) -> Result<(), SourcesError> {
    let refuse = |what: String| Err(SourcesError::Refused(what));
    if entry.uris.is_empty() || entry.suites.is_empty() || entry.components.is_empty() {
        return refuse("a source entry needs URIs, suites and components".into());
    }
    for uri in &entry.uris {
        check_uri(uri)?;
    }
    let token = |what: &str, value: &str, extra: &str| {
        let ok = !value.is_empty()
            && !value.starts_with(['/', '.', '-'])
            && !value.contains("..")
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c) || extra.contains(c));
        if ok {
            Ok(())
        } else {
            Err(SourcesError::Refused(format!(
                "{what} {value:?} is not a safe name"
            )))
        }
    };
    for suite in &entry.suites {
        token("suite", suite, "/")?;
    }
    for component in &entry.components {
        token("component", component, "/")?;
    }
    for arch in &entry.architectures {
        token("architecture", arch, "")?;
    }
    Ok(())
}

fn no_control(field: &str, value: &str) -> Result<(), SourcesError> {
    if value.chars().any(char::is_control) {
        return Err(SourcesError::Refused(format!(
            "{field} {value:?} holds control characters"
        )));
    }
    Ok(())
}

/// Validates `desired`, then writes the keys, the source file (or removes it when there are no
/// entries), and removes the keys the agent wrote earlier that are no longer listed.
/// `previous_keys` are the key files the agent wrote before (from its state).
pub fn apply(
    root: &HostRoot,
    desired: &DesiredSources,
    previous_keys: &[String],
) -> Result<Applied, SourcesError> {
    let valid = validate(root, desired)?;
    let mut applied = Applied::default();
    fs_err::create_dir_all(root.keyrings_dir())?;
    fs_err::create_dir_all(root.sources_dir())?;
    // Keys first: the source file must never name a key that is not there yet.
    for (name, armored) in &valid.keys {
        let path = root.keyrings_dir().join(name);
        if files::write_if_changed(&path, armored.as_bytes(), 0o644, TEMP_SUFFIX)? {
            applied.keys_changed.push(name.clone());
        }
        applied.keys_written.push(name.clone());
    }
    // The mirror list too: the source file must never name a list that is not there.
    if let Some(list) = &valid.mirror_list {
        applied.mirror_list_changed = mirror_list::write(list, TEMP_SUFFIX)?;
    }
    let source_path = source_path(root);
    applied.source_file_changed = match &valid.source_file {
        Some(text) => files::write_if_changed(&source_path, text.as_bytes(), 0o644, TEMP_SUFFIX)?,
        None => files::remove_durably(&source_path)?,
    };
    // Only once no source names them any more.
    applied.mirror_lists_removed =
        mirror_list::remove_others(root, valid.mirror_list.as_ref().map(|l| l.path.as_path()))?;
    for old in previous_keys {
        // Only names the agent itself wrote; the prefix check guards a tampered state file.
        if old.starts_with(KEY_PREFIX)
            && !old.contains('/')
            && !applied.keys_written.contains(old)
            && files::remove_durably(&root.keyrings_dir().join(old))?
        {
            applied.keys_removed.push(old.clone());
        }
    }
    Ok(applied)
}

pub fn source_path(root: &HostRoot) -> PathBuf {
    root.sources_dir().join(SOURCE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChannelKey;

    pub(crate) fn armored() -> String {
        format!("{BEGIN_KEY}\n\nmQINBGR0ZXN0\n=abcd\n{END_KEY}\n")
    }

    pub(crate) fn desired() -> DesiredSources {
        DesiredSources {
            rev: "r1".into(),
            channel: Some("approved".into()),
            entries: vec![SourceEntry {
                uris: vec!["https://aptgate.example.org/channels/approved".into()],
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                components: vec!["main".into(), "non-free-firmware".into()],
                architectures: vec!["amd64".into()],
            }],
            keys: vec![ChannelKey {
                file_name: "approved.asc".into(),
                fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
                armored: armored(),
            }],
            disable_other_sources: false,
            mirrors: vec![],
        }
    }

    #[test]
    fn renders_deb822_with_signed_by() {
        let root = HostRoot::new("/");
        let valid = validate(&root, &desired()).unwrap();
        assert_eq!(
            valid.source_file.unwrap(),
            "# Written by aptgate-agent from the server's assignment; it rewrites this file.\n\
             # Channel: approved\n\n\
             Types: deb\n\
             URIs: https://aptgate.example.org/channels/approved\n\
             Suites: bookworm bookworm-updates\n\
             Components: main non-free-firmware\n\
             Architectures: amd64\n\
             Signed-By: /etc/apt/keyrings/aptgate-approved.asc\n"
        );
        assert_eq!(valid.keys[0].0, "aptgate-approved.asc");
    }

    #[test]
    fn replicas_turn_the_uris_into_a_mirror_list_with_the_same_signed_by() {
        let root = HostRoot::new("/");
        let mut d = desired();
        d.mirrors = vec!["http://replica.example.org:8080/channels/approved/".into()];
        let valid = validate(&root, &d).unwrap();
        let source = valid.source_file.unwrap();
        assert!(
            source.contains("URIs: mirror+file:/etc/apt/aptgate-mirrors/approved.list\n"),
            "{source}"
        );
        assert!(source.contains("Signed-By: /etc/apt/keyrings/aptgate-approved.asc\n"));
        let list = valid.mirror_list.unwrap();
        assert!(list.text.ends_with(
            "http://replica.example.org:8080/channels/approved/\tpriority:1\n\
             https://aptgate.example.org/channels/approved\tpriority:2\n"
        ));
        assert_eq!(validate(&root, &desired()).unwrap().mirror_list, None);
    }

    #[test]
    fn hostile_values_are_refused() {
        let root = HostRoot::new("/");
        type Change = Box<dyn Fn(&mut DesiredSources)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "newline in suite",
                Box::new(|d| d.entries[0].suites[0] = "x\nSigned-By: /tmp/k".into()),
            ),
            (
                "file uri",
                Box::new(|d| d.entries[0].uris[0] = "file:///etc".into()),
            ),
            (
                "space in uri",
                Box::new(|d| d.entries[0].uris[0] = "http://a b".into()),
            ),
            (
                "newline in uri",
                Box::new(|d| d.entries[0].uris[0] = "http://a\nTypes: deb".into()),
            ),
            (
                "path component",
                Box::new(|d| d.entries[0].components[0] = "../../x".into()),
            ),
            (
                "bad arch",
                Box::new(|d| d.entries[0].architectures[0] = "amd64 i386".into()),
            ),
            (
                "key path",
                Box::new(|d| d.keys[0].file_name = "../../../etc/passwd.asc".into()),
            ),
            (
                "key slash",
                Box::new(|d| d.keys[0].file_name = "sub/k.asc".into()),
            ),
            (
                "key suffix",
                Box::new(|d| d.keys[0].file_name = "k.gpg".into()),
            ),
            (
                "hidden key",
                Box::new(|d| d.keys[0].file_name = ".asc".into()),
            ),
            (
                "not armored",
                Box::new(|d| d.keys[0].armored = "hello".into()),
            ),
            (
                "private key",
                Box::new(|d| {
                    d.keys[0].armored =
                        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n-----END PGP PUBLIC KEY BLOCK-----"
                            .into()
                }),
            ),
            (
                "escape in key",
                Box::new(|d| d.keys[0].armored = armored().replace("=abcd", "\x1b[2J")),
            ),
            ("no keys", Box::new(|d| d.keys.clear())),
            ("no suites", Box::new(|d| d.entries[0].suites.clear())),
            (
                "file mirror",
                Box::new(|d| d.mirrors = vec!["file:///etc/x/".into()]),
            ),
            (
                "newline in mirror",
                Box::new(|d| d.mirrors = vec!["http://a/\nhttp://evil/".into()]),
            ),
            (
                "tab in mirror",
                Box::new(|d| d.mirrors = vec!["http://a/\tpriority:0".into()]),
            ),
            (
                "mirror list of a path channel",
                Box::new(|d| {
                    d.mirrors = vec!["http://a/".into()];
                    d.channel = Some("../../sources.list.d/x".into());
                }),
            ),
            (
                "mirrors for entries with different uris",
                Box::new(|d| {
                    d.mirrors = vec!["http://a/".into()];
                    let mut other = d.entries[0].clone();
                    other.uris = vec!["http://b/".into()];
                    d.entries.push(other);
                }),
            ),
            (
                "control in channel",
                Box::new(|d| d.channel = Some("a\nb".into())),
            ),
            (
                "fingerprint",
                Box::new(|d| d.keys[0].fingerprint = "zz".into()),
            ),
            (
                "duplicate key",
                Box::new(|d| {
                    let k = d.keys[0].clone();
                    d.keys.push(k)
                }),
            ),
        ];
        for (what, change) in cases {
            let mut d = desired();
            change(&mut d);
            assert!(
                matches!(validate(&root, &d), Err(SourcesError::Refused(_))),
                "{what} was accepted"
            );
        }
    }
}
