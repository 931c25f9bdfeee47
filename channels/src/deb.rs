//! Reading an uploaded `.deb`: checks that it is a binary package dpkg would accept and
//! returns its control paragraph, without reading its data member into memory.
//!
//! A `.deb` (format 2.0) is an `ar` archive whose members are, in order: `debian-binary`
//! (`2.0\n`), `control.tar[.gz|.xz|.zst]` (holding `./control`), `data.tar[.gz|.xz|.zst|.bz2]`;
//! members whose names start with `_` may follow and are ignored, as dpkg does.

use std::io::Read;

/// Bounds on what an upload may make us read: a control member is a few KiB.
const MAX_CONTROL_MEMBER: u64 = 16 << 20;
const MAX_CONTROL_TAR: u64 = 64 << 20;
const MAX_CONTROL_FILE: u64 = 1 << 20;

/// Why an upload is not a usable `.deb`; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a .deb: {0}")]
    NotADeb(String),
    #[error("the package's control file is unusable: {0}")]
    BadControl(String),
}

/// The control data of a `.deb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebControl {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// `Source:` without a version, or the package's own name.
    pub source: String,
    /// The control paragraph as its `Packages` entry begins: LF line ends, no trailing
    /// newline, without the fields only an index carries (`Filename`, `Size`, digests).
    pub stanza: String,
}

/// Fields an index adds for a file; a control file carrying them would have them twice.
const INDEX_FIELDS: [&str; 6] = ["Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512"];

/// Reads the `.deb` in `reader` and returns its control data.
pub fn read_control(reader: impl Read) -> Result<DebControl, DebError> {
    let not_deb = |why: &str| DebError::NotADeb(why.to_owned());
    let mut archive = ar::Archive::new(reader);
    let mut members = Vec::new();
    let mut control = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry =
            entry.map_err(|e| DebError::NotADeb(format!("unreadable ar archive ({e})")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches(['/', ' '])
            .to_owned();
        match (members.len(), name.as_str()) {
            (0, "debian-binary") => {
                let mut text = String::new();
                (&mut entry)
                    .take(64)
                    .read_to_string(&mut text)
                    .map_err(|_| not_deb("debian-binary is not text"))?;
                if !text.starts_with("2.") || !text.ends_with('\n') {
                    return Err(DebError::NotADeb(format!(
                        "debian-binary says {:?}; only format 2.x is supported",
                        text.trim()
                    )));
                }
            }
            (0, other) => {
                return Err(DebError::NotADeb(format!(
                    "the first ar member is {other:?}, not debian-binary"
                )))
            }
            (1, member) if member.starts_with("control.tar") => {
                if entry.header().size() > MAX_CONTROL_MEMBER {
                    return Err(not_deb("control.tar is implausibly large"));
                }
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_CONTROL_MEMBER)
                    .read_to_end(&mut bytes)
                    .map_err(|e| DebError::NotADeb(format!("truncated control.tar ({e})")))?;
                control = Some(control_file(member, bytes)?);
            }
            (1, other) => {
                return Err(DebError::NotADeb(format!(
                    "the second ar member is {other:?}, not control.tar"
                )))
            }
            (2, member) if member.starts_with("data.tar") => {
                if !matches!(
                    member,
                    "data.tar" | "data.tar.gz" | "data.tar.xz" | "data.tar.zst" | "data.tar.bz2"
                ) {
                    return Err(DebError::NotADeb(format!("unknown data member {member:?}")));
                }
                // Skipped, not read: the file's bytes are kept as uploaded. Its full length
                // must be there (a truncated upload ends inside it).
                let expected = entry.header().size();
                let got = std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(|e| DebError::NotADeb(format!("truncated data.tar ({e})")))?;
                if got != expected {
                    return Err(not_deb("truncated data.tar"));
                }
            }
            (2, other) => {
                return Err(DebError::NotADeb(format!(
                    "the third ar member is {other:?}, not data.tar"
                )))
            }
            (_, member) if member.starts_with('_') => {}
            (_, other) => {
                return Err(DebError::NotADeb(format!(
                    "unexpected ar member {other:?} after data.tar"
                )))
            }
        }
        members.push(name);
    }
    if members.len() < 3 {
        return Err(not_deb(
            "it needs debian-binary, control.tar and data.tar members (truncated?)",
        ));
    }
    parse_control(&control.expect("the second member was control.tar"))
}

/// The `control` file inside a `control.tar[.ext]` member.
fn control_file(member: &str, bytes: Vec<u8>) -> Result<String, DebError> {
    let cursor = std::io::Cursor::new(bytes);
    let decoded: Box<dyn Read> = match member {
        "control.tar" => Box::new(cursor),
        "control.tar.gz" => Box::new(flate2::read::GzDecoder::new(cursor)),
        "control.tar.xz" => Box::new(xz2::read::XzDecoder::new(cursor)),
        "control.tar.zst" => Box::new(
            zstd::Decoder::new(cursor)
                .map_err(|e| DebError::NotADeb(format!("control.tar.zst: {e}")))?,
        ),
        other => {
            return Err(DebError::NotADeb(format!(
                "unknown control member {other:?}"
            )))
        }
    };
    let bad = |e: std::io::Error| DebError::NotADeb(format!("unreadable {member} ({e})"));
    let mut tar = tar::Archive::new(decoded.take(MAX_CONTROL_TAR));
    for entry in tar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") != "control" {
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(DebError::BadControl("control is not a regular file".into()));
        }
        let mut text = Vec::new();
        entry
            .take(MAX_CONTROL_FILE + 1)
            .read_to_end(&mut text)
            .map_err(bad)?;
        if text.len() as u64 > MAX_CONTROL_FILE {
            return Err(DebError::BadControl("larger than 1 MiB".into()));
        }
        return String::from_utf8(text).map_err(|_| DebError::BadControl("not UTF-8".into()));
    }
    Err(DebError::NotADeb(format!("{member} holds no control file")))
}

/// Checks a control file's one paragraph and its identity fields.
pub fn parse_control(text: &str) -> Result<DebControl, DebError> {
    let bad = |why: String| Err(DebError::BadControl(why));
    if text.contains('\r') {
        return bad("it has CR line ends".into());
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return bad(format!("it holds the control character {c:?}"));
    }
    let paragraph = text.trim_matches('\n');
    if paragraph.contains("\n\n") {
        return bad("it holds more than one paragraph".into());
    }
    let mut lines = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut skipping = false;
    for line in paragraph.lines() {
        if line.starts_with([' ', '\t']) {
            if fields.is_empty() {
                return bad("it starts with a continuation line".into());
            }
            if !skipping {
                lines.push(line);
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return bad(format!("line {line:?} is not `Field: value`"));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(format!("invalid field name {key:?}"));
        }
        if fields.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return bad(format!("field {key} appears twice"));
        }
        fields.push((key.to_owned(), value.trim().to_owned()));
        skipping = INDEX_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(key));
        if !skipping {
            lines.push(line);
        }
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let (Some(name), Some(version), Some(architecture)) =
        (field("Package"), field("Version"), field("Architecture"))
    else {
        return bad("it lacks Package, Version or Architecture".into());
    };
    if !valid_package_name(name) {
        return bad(format!(
            "invalid package name {name:?} (lowercase letters, digits, '+', '-', '.'; at least \
             two characters, starting with a letter or digit)"
        ));
    }
    if let Err(why) = check_version(version) {
        return bad(format!("invalid version {version:?}: {why}"));
    }
    if !(architecture
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && architecture.len() <= 64)
    {
        return bad(format!("invalid architecture {architecture:?}"));
    }
    let source = match field("Source") {
        Some(s) => {
            let source = s.split(' ').next().unwrap_or(s);
            if !valid_package_name(source) {
                return bad(format!("invalid Source {s:?}"));
            }
            source
        }
        None => name,
    };
    Ok(DebControl {
        name: name.to_owned(),
        version: version.to_owned(),
        architecture: architecture.to_owned(),
        source: source.to_owned(),
        stanza: lines.join("\n"),
    })
}

/// Debian policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`.
fn valid_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        })
}

/// dpkg's version syntax: `[epoch:]upstream[-revision]`, the epoch a number, the upstream
/// starting with a digit.
pub fn check_version(version: &str) -> Result<(), &'static str> {
    if version.len() > 256 {
        return Err("longer than 256 characters");
    }
    let rest = match version.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the epoch is not a number");
            }
            if epoch.len() > 9 {
                return Err("the epoch is too large");
            }
            rest
        }
        None => version,
    };
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("the upstream version must start with a digit");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~');
    if !upstream.chars().all(|c| allowed(c) || c == '-') {
        return Err("only letters, digits and . + ~ - are allowed");
    }
    if let Some(r) = revision {
        if r.is_empty() || !r.chars().all(allowed) {
            return Err("the revision (after the last '-') is empty or has other characters");
        }
    }
    Ok(())
}

/// Where the `.deb` lies under the repository root, as Debian lays it out:
/// `pool/<component>/<prefix>/<source>/<name>_<version without epoch>_<arch>.deb`, `<prefix>`
/// the source's first letter (its first four for `lib*`).
pub fn pool_path(component: &str, control: &DebControl) -> String {
    let source = &control.source;
    let prefix = match source.strip_prefix("lib") {
        Some(rest) if !rest.is_empty() => &source[..4],
        _ => &source[..1],
    };
    let version = control
        .version
        .split_once(':')
        .map_or(control.version.as_str(), |(_, v)| v);
    format!(
        "pool/{component}/{prefix}/{source}/{}_{version}_{}.deb",
        control.name, control.architecture
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in [
            "1.0",
            "1:2.0-1",
            "2.10-3+deb12u1",
            "1.0~rc1-1~bpo12+1",
            "0-1",
            "1.2-3-4",
        ] {
            assert_eq!(check_version(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "a1.0", "1.0-", "x:1.0", "1.0 1", "1.0_1", ":1.0", "1:", "1.0-1:2",
        ] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_paragraphs() {
        let c = parse_control(
            "Package: hello\nSource: hello-src (1.0)\nVersion: 1:1.0-1\nArchitecture: amd64\n\
             Size: 3\nDescription: hi\n there\n",
        )
        .unwrap();
        assert_eq!(c.source, "hello-src");
        assert_eq!(
            c.stanza,
            "Package: hello\nSource: hello-src (1.0)\nVersion: 1:1.0-1\nArchitecture: amd64\n\
             Description: hi\n there"
        );
        assert_eq!(
            pool_path("main", &c),
            "pool/main/h/hello-src/hello_1.0-1_amd64.deb"
        );
        for bad in [
            "Package: hello\nVersion: 1.0\n",
            "Package: Hello\nVersion: 1.0\nArchitecture: all\n",
            "Package: hello\nVersion: one\nArchitecture: all\n",
            "Package: hello\nVersion: 1.0\nArchitecture: all\n\nPackage: b\n",
            "Package: hello\nVersion: 1.0\nVersion: 1.1\nArchitecture: all\n",
            "Package: hello\r\nVersion: 1.0\r\nArchitecture: all\r\n",
        ] {
            assert!(parse_control(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_deb() {
        assert!(matches!(
            read_control(&b"hello world, not an archive"[..]),
            Err(DebError::NotADeb(_))
        ));
        assert!(read_control(&b"!<arch>\n"[..]).is_err());
    }
}
