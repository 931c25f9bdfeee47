//! A validly signed upstream with hostile content: index paths that climb out of the
//! repository, stanzas that cannot be checked, signature files carrying unsigned payloads,
//! decompression bombs — and the odd-but-legal pool names (epochs as `%3a`, `~`, `+`) that
//! must keep working through the mirror and the channels.

use aptgate_channels::Actor;
use aptgate_tests::app::{client, Harness};
use aptgate_tests::channels::{parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec, PackageSpec};
use sha2::Digest as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a `Filename:` of `pool/main/../../../../../escaped.deb` lands if it is ever used as a
/// path below `<dir>/data/refs/fixture/`: `<dir>/escaped.deb.ref`, outside the data directory.
const CLIMBING: &str = "pool/main/../../../../../escaped.deb";

/// What upstream serves at the normalised URL of [`CLIMBING`] (`/escaped.deb`): a file
/// large enough (over `batch::IN_MEMORY`) to take the streamed, recorded download path.
fn escaped_payload() -> Vec<u8> {
    (0..9u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A signed index's stanza whose `Filename:` climbs out of `pool/`, naming a file upstream
/// really serves at the normalised URL, with its true digest: a sync that used the path would
/// fetch it, verify it and record it outside `data_dir`.
fn climbing_stanza() -> String {
    let payload = escaped_payload();
    format!(
        "Package: evil\nVersion: 1.0\nArchitecture: all\nFilename: {CLIMBING}\nSize: {}\n\
         SHA256: {}\nDescription: climbs out of pool/",
        payload.len(),
        hex::encode(sha2::Sha256::digest(&payload))
    )
}

/// Puts the payload the climbing stanza names where upstream serves it.
fn plant_escaped_payload(repo: &FixtureRepo) {
    fs_err::write(repo.root().join("escaped.deb"), escaped_payload()).unwrap();
}

/// A stanza without `SHA256`: its file cannot be verified.
const UNCHECKABLE: &str = "Package: nosum\nVersion: 1.0\nArchitecture: all\n\
    Filename: pool/main/n/nosum/nosum_1.0_all.deb\nSize: 1000\nDescription: no digest";

/// A fixture whose every `main` index carries the two hostile stanzas next to the good ones.
fn hostile_spec() -> FixtureSpec {
    let mut spec = FixtureSpec::default().large_payload(64 << 10);
    spec.raw_stanzas = vec![climbing_stanza(), UNCHECKABLE.into()];
    spec
}

/// Every file under `dir` outside `except`, whose name contains `needle`.
fn files_named(dir: &Path, needle: &str, except: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in fs_err::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.starts_with(except) {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().contains(needle) {
                found.push(path);
            }
        }
    }
    found
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{metrics}"))
}

/// T06: an `immediate` sync of a signed index whose `Filename:` climbs out of `pool/` (the
/// confirmed defect: it wrote a file outside `data_dir`). The stanza is refused and counted,
/// never fetched or recorded, absent from the snapshot; the good packages install.
#[tokio::test(flavor = "multi_thread")]
async fn filename_climbing_out_of_pool_is_refused_and_never_written() {
    let mut p = parts(Backend::Sqlite, Duration::ZERO, hostile_spec()).await;
    plant_escaped_payload(&p.repo);
    p.config.sources[0].policy = aptgate_config::FetchPolicy::Immediate;
    let s = Setup::from_parts(p).await;
    let outcome = s.sync().await;
    assert!(outcome.snapshot.is_some());

    let outside = files_named(s.dir.path(), "escaped", s.repo.root());
    assert!(outside.is_empty(), "written outside data_dir: {outside:?}");
    assert_eq!(s.upstream.count("escaped.deb"), 0, "fetched");
    assert_eq!(s.upstream.count("pool/main/n/nosum/nosum_1.0_all.deb"), 0);
    let metrics = s.app.state.channels.metrics().render();
    // Two stanzas in each of the two `main` indices of each of the two suites.
    assert_eq!(
        counter(&metrics, "aptgate_channels_refused_stanzas_total"),
        8
    );

    for index in ["Packages", "Packages.gz", "Packages.xz"] {
        let url = format!(
            "{}/channels/testing/dists/stable/main/binary-amd64/{index}",
            s.app.url
        );
        let r = client().get(&url).send().await.unwrap();
        if index == "Packages" {
            let text = r.text().await.unwrap();
            assert!(text.contains("Package: hello\n"), "{text}");
            assert!(!text.contains("evil") && !text.contains("nosum"), "{text}");
        } else {
            // Upstream's compressed forms hold the refused stanzas: not served.
            assert_eq!(r.status(), 404, "{index}");
        }
    }
    let host = s.host("host", "testing");
    host.update().await.unwrap().assert_success();
    host.download(&["hello", "foo-utils"])
        .await
        .unwrap()
        .assert_success();
    host.download(&["evil"])
        .await
        .unwrap()
        .assert_failure_mentioning("evil");
}

/// T06/T05 through the pull-through mirror: the refused stanzas are counted when apt's
/// index is read, their files are refused (403), never passed through unverified, and the
/// good packages install.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_refuses_files_of_stanzas_it_cannot_check() {
    let h = Harness::with_spec(hostile_spec(), false).await;
    plant_escaped_payload(&h.repo);
    let apt = h.apt_root("host", "stable");
    apt.update().await.unwrap().assert_success();
    apt.download(&["hello", "foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert_eq!(h.app.counter("refused_stanzas"), 2);

    let r = h.get("pool/main/n/nosum/nosum_1.0_all.deb").await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "refused_stanza", "{body}");
    assert_eq!(h.upstream.count("pool/main/n/nosum/nosum_1.0_all.deb"), 0);
    // Encoded, so the client does not normalise it away before sending.
    let r = h
        .get("pool/main/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/escaped.deb")
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(h.upstream.count("escaped.deb"), 0);
    let outside = files_named(h.dir.path(), "escaped", h.repo.root());
    assert!(outside.is_empty(), "written outside data_dir: {outside:?}");
}

/// T04 and T03 through the mirror: a `Release.gpg` with a payload after its signature, and
/// an `InRelease` with unsigned text after its signed part, are refused (502), neither stored
/// nor passed through.
#[tokio::test(flavor = "multi_thread")]
async fn signature_files_carrying_unsigned_payloads_are_refused_and_not_cached() {
    let h = Harness::with_spec(FixtureSpec::default().large_payload(64 << 10), false).await;
    let evil = "Origin: Evil\nSuite: stable\nSHA256:\n 00 1 main/binary-amd64/Packages\n";

    let inrelease = h.repo.path("dists/stable/InRelease");
    let mut file = fs_err::OpenOptions::new()
        .append(true)
        .open(&inrelease)
        .unwrap();
    file.write_all(evil.as_bytes()).unwrap();
    let tampered = fs_err::read(&inrelease).unwrap();
    let r = h.get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unverified", "{body}");
    assert!(
        !h.app
            .blob_path(&hex::encode(sha2::Sha256::digest(&tampered)))
            .exists(),
        "tampered InRelease stored"
    );

    // Without an InRelease, the mirror reads Release + Release.gpg: a binary one, its
    // signature packet followed by a literal-data packet carrying a payload (the parser used
    // to skip what was not a signature), then an armoured one with text after it.
    fs_err::remove_file(&inrelease).unwrap();
    let gpg = h.repo.path("dists/stable/Release.gpg");
    let armoured = fs_err::read_to_string(&gpg).unwrap();
    let mut binary = {
        let mut dearmor = pgp::armor::Dearmor::new(armoured.as_bytes());
        dearmor.read_header().unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut dearmor, &mut bytes).unwrap();
        bytes
    };
    let literal = pgp::packet::LiteralData::from_bytes((&b""[..]).into(), evil.as_bytes());
    pgp::ser::Serialize::to_writer(&pgp::packet::Packet::from(literal), &mut binary).unwrap();
    for tampered in [binary, format!("{armoured}{evil}").into_bytes()] {
        fs_err::write(&gpg, &tampered).unwrap();
        for path in ["dists/stable/Release", "dists/stable/Release.gpg"] {
            let r = h.get(path).await;
            assert_eq!(r.status(), 502, "{path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "upstream_unverified", "{body}");
            assert!(
                body["message"].as_str().unwrap().contains("signature"),
                "{body}"
            );
        }
        assert!(!h
            .app
            .blob_path(&hex::encode(sha2::Sha256::digest(&tampered)))
            .exists());
    }
    let apt = h.apt_root("host", "stable");
    assert!(!apt.update().await.unwrap().success());
}

/// T08: a signed `Packages.xz` that inflates far past the size its Release lists for
/// `Packages`. The sync fails with a clear error, stores nothing it inflated, and the
/// channel stays where it was.
#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_index_is_refused_before_it_fills_memory() {
    let p = parts(
        Backend::Sqlite,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    let mut s = Setup::from_parts(p).await;
    let first = s.sync().await;
    assert!(first.snapshot.is_some());

    let index = "dists/stable/main/binary-amd64/Packages";
    let mut text = fs_err::read(s.repo.path(index)).unwrap();
    // 256 MiB of blank lines after the real stanzas: a few KB compressed.
    text.resize(text.len() + (256 << 20), b'\n');
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&text).unwrap();
    let bomb = xz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    s.repo.override_index(&format!("{index}.xz"), bomb).unwrap();

    let err = s
        .app
        .state
        .channels
        .sync("fixture", &Actor::new("test"), &|_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("inflates past"), "{err}");
    // The channel still serves the first sync's snapshot.
    let host = s.host("host", "testing");
    host.update().await.unwrap().assert_success();
    host.download(&["hello"]).await.unwrap().assert_success();
}

/// T07: pool files named with an epoch as `%3a`, `~` and `+` install with real apt straight
/// from upstream, through the mirror and through a channel. apt asks for the `Filename:`
/// percent-encoded once (`%253a`, `%7e`, `%2b`); aptgate must ask upstream the same way.
#[tokio::test(flavor = "multi_thread")]
async fn epochs_tildes_and_pluses_in_pool_names_install_through_mirror_and_channels() {
    let mut spec = FixtureSpec::default().large_payload(64 << 10);
    let odd = PackageSpec::new("odd-name", "1:2.0-1~bpo12+1", "all", "main", &["stable"])
        .epoch_in_file_name();
    let pool_path = odd.pool_path();
    assert!(pool_path.ends_with("odd-name_1%3a2.0-1~bpo12+1_all.deb"));
    spec.packages.push(odd);

    let h = Harness::with_spec(spec.clone(), false).await;
    // Straight from upstream first: the fixture's layout is what apt expects.
    let direct = aptgate_tests::apt::AptRoot::new(&h.dir.path().join("direct")).unwrap();
    let key = h.repo.key_path();
    direct
        .add_source("fixture", &h.upstream.url(), "stable", &["main"], &key)
        .unwrap();
    for (apt, fetched) in [(direct, 1), (h.apt_root("host", "stable"), 2)] {
        apt.update().await.unwrap().assert_success();
        apt.download(&["odd-name"]).await.unwrap().assert_success();
        let asked = h.upstream.requests();
        assert_eq!(h.upstream.count(&pool_path), fetched, "{asked:?}");
    }
    let sha = &h.repo.package("odd-name").sha256;
    assert!(h.app.blob_path(sha).is_file(), "verified and stored");

    let s = Setup::from_parts(parts(Backend::Sqlite, Duration::ZERO, spec).await).await;
    s.sync().await;
    let host = s.host("host", "testing");
    host.update().await.unwrap().assert_success();
    host.download(&["odd-name"]).await.unwrap().assert_success();
    assert_eq!(
        s.upstream.count(&pool_path),
        1,
        "{:?}",
        s.upstream.requests()
    );
}
