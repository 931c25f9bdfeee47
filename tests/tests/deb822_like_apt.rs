//! T05, differentially: odd but signed `Packages` stanzas read by apt itself and by aptgate's
//! two index readers (the mirror's pool scanner, the channels' stanza parser). Whatever
//! aptgate indexes, apt would fetch from the same path with the same size and digest;
//! whatever aptgate refuses, it refuses for a stated reason.
//!
//! What apt 2.6 does with the refused ones, for the record: of a field given twice it takes
//! the last (`Filename` twice: it fetches the second path) — aptgate refuses the stanza as
//! ambiguous; without `SHA256` it has nothing to check; a `Filename` with `..` it would
//! request as written.

use aptgate_tests::apt::AptRoot;
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec};
use aptgate_tests::upstream::Upstream;

const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// (package, stanza, why aptgate refuses it — `None` when both must index it alike).
fn corpus() -> Vec<(&'static str, String, Option<&'static str>)> {
    let ok = |name: &str, extra: &str| {
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n\
             Filename: pool/main/{name}_1.0_all.deb\nSize: 10\nSHA256: {SHA}\n{extra}\
             Description: {name}"
        )
    };
    vec![
        ("plain", ok("plain", ""), None),
        ("crlf", ok("crlf", "").replace('\n', "\r\n"), None),
        (
            "lower-case-fields",
            format!(
                "package: lower-case-fields\nversion: 1.0\narchitecture: all\n\
                 filename: pool/main/lower.deb\nsize: 10\nsha256: {SHA}"
            ),
            None,
        ),
        (
            "tab-after-colon",
            ok("tab-after-colon", "").replace("Filename: ", "Filename:\t"),
            None,
        ),
        (
            "long-line",
            ok("long-line", &format!("X-Long: {}\n", "x".repeat(256 << 10))),
            None,
        ),
        (
            "trailing-space",
            ok("trailing-space", "").replace("Size: 10", "Size: 10  "),
            None,
        ),
        (
            "twice-filename",
            ok("twice-filename", "Filename: pool/main/other.deb\n"),
            Some("Filename appears twice"),
        ),
        (
            "twice-sha256",
            ok("twice-sha256", &format!("SHA256: {OTHER}\n")),
            Some("SHA256 appears twice"),
        ),
        (
            "no-sha256",
            ok("no-sha256", "").replace(&format!("SHA256: {SHA}\n"), "MD5sum: 00\n"),
            Some("SHA256"),
        ),
        (
            "climbing",
            ok("climbing", "").replace("pool/main/", "pool/main/../../../"),
            Some("'..'"),
        ),
    ]
}

/// What apt would fetch for `package`: (path below the repository, size, sha256).
async fn apt_would_fetch(
    apt: &AptRoot,
    base: &str,
    package: &str,
) -> Option<(String, u64, String)> {
    let out = apt
        .apt_get(&["download", "--print-uris", package])
        .await
        .unwrap();
    let line = out.stdout.lines().find(|l| l.starts_with('\''))?;
    let mut words = line.split_whitespace();
    let uri = words.next()?.trim_matches('\'');
    let path = uri.strip_prefix(base)?.trim_start_matches('/');
    let _file = words.next()?;
    let size = words.next()?.parse().ok()?;
    let sha = words.next()?.strip_prefix("SHA256:")?;
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((path, size, sha.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_stanzas_are_indexed_as_apt_reads_them_or_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let mut spec = FixtureSpec::default().large_payload(64 << 10);
    spec.raw_stanzas = corpus.iter().map(|(_, s, _)| s.clone()).collect();
    let repo = FixtureRepo::generate(&dir.path().join("upstream"), &spec).unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    let apt = AptRoot::new(&dir.path().join("apt")).unwrap();
    let key = repo.key_path();
    apt.add_source("fixture", &upstream.url(), "stable", &["main"], &key)
        .unwrap();
    apt.update().await.unwrap().assert_success();

    let index = fs_err::read(repo.path("dists/stable/main/binary-amd64/Packages")).unwrap();
    let mirror = aptgate_mirror::packages::pool_entries(&index);
    let text = String::from_utf8(index).unwrap().replace("\r\n", "\n");
    let channels = aptgate_channels::index::parse_upstream(&text);

    for (name, _, refusal) in corpus {
        let by_apt = apt_would_fetch(&apt, &upstream.url(), name).await;
        let in_channels = channels.stanzas.iter().find(|s| s.name == name);
        let refused_by_channels = channels.refused.iter().find(|e| e.name == name);
        match refusal {
            None => {
                let (path, size, sha) = by_apt
                    .clone()
                    .unwrap_or_else(|| panic!("{name}: apt would not fetch it"));
                let (mirror_path, entry) = mirror
                    .entries
                    .iter()
                    .find(|(p, _)| p.as_str() == path)
                    .unwrap_or_else(|| panic!("{name}: the mirror did not index {path}"));
                assert_eq!((entry.size, entry.sha256.to_hex()), (size, sha.clone()));
                assert_eq!(mirror_path.as_str(), path);
                let s = in_channels.unwrap_or_else(|| panic!("{name}: channels refused it"));
                assert_eq!((s.filename, s.size, s.sha256), (&*path, size, &*sha));
            }
            Some(why) => {
                assert!(in_channels.is_none(), "{name}: channels indexed it");
                let e = refused_by_channels.unwrap_or_else(|| panic!("{name}: not refused"));
                assert!(e.to_string().contains(why), "{name}: {e}");
                assert!(
                    mirror.refused.iter().any(|r| r.why.contains(why)),
                    "{name}: the mirror did not refuse it ({:?}); apt would fetch {by_apt:?}",
                    mirror.refused
                );
            }
        }
    }
}
