//! The host's other apt sources: what apt sees ([`apt_lines`], reported at every check-in) and,
//! when the assignment asks for it, keeping them out of apt's sight.
//!
//! Disabling renames `<name>` to `<name>.aptgate.disabled` — apt skips names ending in
//! `.disabled` silently (`Dir::Ignore-Files-Silently`) — and records the original path in the
//! state, so turning the option off renames exactly those files back.

use std::path::{Path, PathBuf};

use crate::{files, host_root::HostRoot, sources::SOURCE_FILE};

pub const DISABLED_SUFFIX: &str = ".aptgate.disabled";

/// Every source file apt reads in the root, except the agent's own: `etc/apt/sources.list` and
/// the `*.list` / `*.sources` files of `sources.list.d` with names apt accepts.
pub fn other_source_files(root: &HostRoot) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let main = root.join("etc/apt/sources.list");
    if main.is_file() {
        found.push(main);
    }
    found.extend(
        source_parts(root)?
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != SOURCE_FILE)),
    );
    Ok(found)
}

/// The files of `sources.list.d` apt reads, sorted as apt does.
fn source_parts(root: &HostRoot) -> std::io::Result<Vec<PathBuf>> {
    let dir = root.sources_dir();
    let mut parts = Vec::new();
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid_name && (name.ends_with(".list") || name.ends_with(".sources")) && path.is_file() {
            parts.push(path);
        }
    }
    parts.sort();
    Ok(parts)
}

/// Renames every other source out of apt's sight. `disabled` holds what was renamed before
/// (root-relative paths) and gains what is renamed now.
pub fn disable_others(root: &HostRoot, disabled: &mut Vec<String>) -> std::io::Result<Vec<String>> {
    let mut renamed = Vec::new();
    for path in other_source_files(root)? {
        let relative = relative(root, &path);
        files::rename_durably(&path, &with_suffix(&path))?;
        if !disabled.contains(&relative) {
            disabled.push(relative.clone());
        }
        renamed.push(relative);
    }
    Ok(renamed)
}

/// Renames back what [`disable_others`] renamed. A file that reappeared under its original name
/// meanwhile (a package reinstalled it) wins: the disabled copy stays, with a warning.
pub fn restore_others(root: &HostRoot, disabled: &mut Vec<String>) -> std::io::Result<Vec<String>> {
    let mut restored = Vec::new();
    for relative in std::mem::take(disabled) {
        let original = root.join(&relative);
        let renamed = with_suffix(&original);
        if !renamed.exists() {
            tracing::warn!(path = %renamed.display(), "a disabled source is gone; nothing to restore");
        } else if original.exists() {
            tracing::warn!(
                path = %original.display(),
                "a source reappeared while disabled; leaving {} as it is",
                renamed.display()
            );
        } else {
            files::rename_durably(&renamed, &original)?;
            restored.push(relative);
        }
    }
    Ok(restored)
}

fn with_suffix(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(DISABLED_SUFFIX);
    path.with_file_name(name)
}

fn relative(root: &HostRoot, path: &Path) -> String {
    path.strip_prefix(root.path())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `deb` line apt sees, ours included, as `URI SUITE COMPONENT…`.
pub fn apt_lines(root: &HostRoot) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let main = root.join("etc/apt/sources.list");
    if main.is_file() {
        lines.extend(one_line_style(&fs_err::read_to_string(&main)?));
    }
    for path in source_parts(root)? {
        let text = fs_err::read_to_string(&path)?;
        if path.extension().is_some_and(|e| e == "sources") {
            lines.extend(deb822_style(&text));
        } else {
            lines.extend(one_line_style(&text));
        }
    }
    Ok(lines)
}

/// `deb [options] URI SUITE [COMPONENT…]` lines of a `.list` file.
pub fn one_line_style(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line
            .strip_prefix("deb")
            .filter(|r| r.starts_with([' ', '\t']))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if let Some(options) = rest.strip_prefix('[') {
            rest = options.split_once(']').map_or("", |(_, r)| r.trim_start());
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() >= 2 {
            lines.push(words.join(" "));
        }
    }
    lines
}

/// The `deb` entries of a deb822 `.sources` file: one line per URI and suite.
pub fn deb822_style(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for stanza in deb822_stanzas(text) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let enabled = field("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        let debs = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if !enabled || !debs {
            continue;
        }
        let components: Vec<&str> = field("Components")
            .unwrap_or("")
            .split_whitespace()
            .collect();
        for uri in field("URIs").unwrap_or("").split_whitespace() {
            for suite in field("Suites").unwrap_or("").split_whitespace() {
                let mut words = vec![uri, suite];
                words.extend(&components);
                lines.push(words.join(" "));
            }
        }
    }
    lines
}

/// Stanzas as (field, value) lists; comment lines dropped, continuation lines joined.
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_styles() {
        assert_eq!(
            one_line_style(
                "# comment\ndeb http://deb.example.org/debian bookworm main contrib # tail\n\
                 deb-src http://deb.example.org/debian bookworm main\n\
                 deb [arch=amd64 signed-by=/k.asc] https://x.example.org/ flat/\n"
            ),
            [
                "http://deb.example.org/debian bookworm main contrib",
                "https://x.example.org/ flat/"
            ]
        );
        assert_eq!(
            deb822_style(
                "# c\nTypes: deb deb-src\nURIs: http://a.example.org/ http://b.example.org/\n\
                 Suites: bookworm bookworm-updates\nComponents: main\nSigned-By:\n -----BEGIN\n .\n\n\
                 Types: deb\nURIs: http://c.example.org/\nSuites: x\nComponents: main\nEnabled: no\n\n\
                 Types: deb-src\nURIs: http://d.example.org/\nSuites: x\nComponents: main\n"
            ),
            [
                "http://a.example.org/ bookworm main",
                "http://a.example.org/ bookworm-updates main",
                "http://b.example.org/ bookworm main",
                "http://b.example.org/ bookworm-updates main"
            ]
        );
    }
}
