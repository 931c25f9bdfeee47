//! The apt mirror list a host uses when its assignment names replicas (apt's `mirror+file:`
//! method, `apt-transport-mirror(1)`):
//!
//! ```text
//! <root>/etc/apt/aptgate-mirrors/<channel>.list
//!   # Written by aptgate-agent …
//!   http://replica-berlin.example.org:8080/channels/approved/<TAB>priority:1
//!   http://apt.example.org/channels/approved/<TAB>priority:2      ← the canonical server, last
//! ```
//!
//! and `URIs: mirror+file:<root>/etc/apt/aptgate-mirrors/<channel>.list` in `aptgate.sources`.
//! apt tries the lowest `priority:` first and moves to the next mirror when a file fails
//! (without priorities it would pick at random). Every mirror serves the canonical's signed
//! bytes unchanged, so apt may take `InRelease` from one and an index from another; the
//! `Signed-By:` of the source still decides what is trusted.
//!
//! The agent owns the directory: every `*.list` in it other than the one it just wrote is
//! removed (a channel change, or a rule that no longer names replicas).

use std::path::{Path, PathBuf};

use crate::{files, host_root::HostRoot, sources::SourcesError};

/// Under `<root>`: where the agent keeps its mirror lists (outside `sources.list.d`, which apt
/// would read as sources).
pub const MIRROR_LIST_DIR: &str = "etc/apt/aptgate-mirrors";
const LIST_SUFFIX: &str = ".list";
/// The most replicas a host is given; more is a server bug, not a site layout.
pub const MAX_MIRRORS: usize = 16;

/// A validated mirror list, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorList {
    pub path: PathBuf,
    pub text: String,
}

impl MirrorList {
    /// The URI the deb822 source names: `mirror+file:<absolute path>`.
    pub fn source_uri(&self) -> String {
        format!("mirror+file:{}", self.path.display())
    }
}

pub fn dir(root: &HostRoot) -> PathBuf {
    root.join(MIRROR_LIST_DIR)
}

/// The list for `channel`: `mirrors` first, in order, then the canonical `fallback` URIs (those
/// not already listed). The URIs must have passed the caller's URI checks.
pub fn render(
    root: &HostRoot,
    channel: Option<&str>,
    mirrors: &[String],
    fallback: &[String],
) -> Result<MirrorList, SourcesError> {
    let refuse = |what: String| Err(SourcesError::Refused(what));
    if mirrors.len() > MAX_MIRRORS {
        return refuse(format!("{} mirrors (at most {MAX_MIRRORS})", mirrors.len()));
    }
    let stem = channel.unwrap_or("aptgate");
    let bare = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.len() <= 128
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !bare {
        return refuse(format!(
            "channel {stem:?} cannot name a mirror list file (`[A-Za-z0-9._-]+`)"
        ));
    }
    let path = dir(root).join(format!("{stem}{LIST_SUFFIX}"));
    if path.display().to_string().chars().any(char::is_whitespace) {
        return refuse(format!(
            "mirror list path {:?} has white space (the --root?)",
            path.display()
        ));
    }
    let mut text = String::from(
        "# Written by aptgate-agent from the server's assignment; it rewrites this file.\n\
         # Replicas first, the canonical server last: apt tries the lowest priority first and\n\
         # falls back to the next on failure (apt-transport-mirror(1)).\n",
    );
    let mut listed: Vec<&str> = Vec::new();
    for uri in mirrors.iter().chain(fallback) {
        if listed.contains(&uri.as_str()) {
            continue;
        }
        listed.push(uri);
        text.push_str(&format!("{uri}\tpriority:{}\n", listed.len()));
    }
    Ok(MirrorList { path, text })
}

/// Writes `list` (when given) atomically, only if it changed. Returns whether it wrote.
pub fn write(list: &MirrorList, temp_suffix: &str) -> std::io::Result<bool> {
    if let Some(parent) = list.path.parent() {
        fs_err::create_dir_all(parent)?;
    }
    files::write_if_changed(&list.path, list.text.as_bytes(), 0o644, temp_suffix)
}

/// Removes every mirror list in the agent's directory except `keep`; returns their names.
pub fn remove_others(root: &HostRoot, keep: Option<&Path>) -> std::io::Result<Vec<String>> {
    let dir = dir(root);
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(LIST_SUFFIX));
        if ours && Some(path.as_path()) != keep && files::remove_durably(&path)? {
            removed.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
            );
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_come_first_in_order_and_the_canonical_last() {
        let root = HostRoot::new("/");
        let list = render(
            &root,
            Some("approved"),
            &[
                "http://berlin.example.org:8080/channels/approved/".into(),
                "http://hub.example.org/channels/approved/".into(),
            ],
            &["https://apt.example.org/channels/approved/".into()],
        )
        .unwrap();
        assert_eq!(
            list.path,
            Path::new("/etc/apt/aptgate-mirrors/approved.list")
        );
        assert_eq!(
            list.source_uri(),
            "mirror+file:/etc/apt/aptgate-mirrors/approved.list"
        );
        let entries: Vec<&str> = list.text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            entries,
            [
                "http://berlin.example.org:8080/channels/approved/\tpriority:1",
                "http://hub.example.org/channels/approved/\tpriority:2",
                "https://apt.example.org/channels/approved/\tpriority:3",
            ]
        );
    }

    #[test]
    fn a_canonical_also_named_as_a_mirror_is_listed_once() {
        let root = HostRoot::new("/");
        let canonical = "https://apt.example.org/channels/a/".to_owned();
        let list = render(
            &root,
            Some("a"),
            std::slice::from_ref(&canonical),
            std::slice::from_ref(&canonical),
        )
        .unwrap();
        assert_eq!(list.text.lines().filter(|l| !l.starts_with('#')).count(), 1);
    }

    #[test]
    fn a_channel_that_is_not_a_bare_file_name_is_refused() {
        let root = HostRoot::new("/");
        for channel in ["../x", "a/b", ".hidden", "", "a b"] {
            assert!(
                render(&root, Some(channel), &[], &[]).is_err(),
                "{channel:?} accepted"
            );
        }
        let many = vec!["http://m.example.org/".to_owned(); MAX_MIRRORS + 1];
        assert!(render(&root, Some("a"), &many, &[]).is_err());
    }

    #[test]
    fn only_lists_other_than_the_kept_one_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        let lists = super::dir(&root);
        fs_err::create_dir_all(&lists).unwrap();
        for name in ["old.list", "keep.list", "notes.txt"] {
            fs_err::write(lists.join(name), "x").unwrap();
        }
        let removed = remove_others(&root, Some(&lists.join("keep.list"))).unwrap();
        assert_eq!(removed, ["old.list"]);
        assert!(lists.join("keep.list").exists() && lists.join("notes.txt").exists());
        assert_eq!(remove_others(&root, None).unwrap(), ["keep.list"]);
    }
}
