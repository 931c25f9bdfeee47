//! The fixture repository is a real apt repository: apt itself verifies its signature and
//! downloads from it, with no aptgate in between. If this fails, every end-to-end test built on
//! the fixture would be testing a broken upstream.

use std::{collections::BTreeMap, path::Path};

use chrono::TimeDelta;

use aptgate_tests::{
    apt::AptRoot,
    fixture::{FixtureRepo, FixtureSpec},
    signing::TestKey,
    upstream::Upstream,
};
use http::Method;
use sha2::{Digest as _, Sha256};

fn spec() -> FixtureSpec {
    // The large package plays no part here; keep it small.
    FixtureSpec::default().large_payload(64 * 1024)
}

#[tokio::test]
async fn apt_verifies_and_downloads_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::generate(&dir.path().join("repo"), &spec()).unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    let apt = AptRoot::new(&dir.path().join("apt")).unwrap();
    apt.add_source(
        "fixture",
        &upstream.url(),
        "stable",
        &["main", "contrib"],
        &repo.key_path(),
    )
    .unwrap();

    let update = apt.update().await.unwrap();
    update.assert_success();
    for warning in ["NO_PUBKEY", "not signed", "GPG error", "W:", "E:"] {
        assert!(
            !update.combined().contains(warning),
            "{warning:?} in:\n{update}"
        );
    }
    // apt keeps an InRelease only after gpgv accepted it.
    let lists = apt.lists_dir();
    let inrelease = fs_err::read_dir(&lists)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|name| name.ends_with("_dists_stable_InRelease"));
    assert!(
        inrelease.is_some(),
        "no InRelease in {}:\n{update}",
        lists.display()
    );

    // Acquire-By-Hash works: apt fetched the indices by their digest.
    let by_hash = upstream
        .requests()
        .iter()
        .filter(|r| r.path.contains("/by-hash/SHA256/"))
        .count();
    assert!(by_hash >= 2, "{:?}", upstream.requests());

    upstream.clear_log();
    apt.download(&["hello", "foo-utils"])
        .await
        .unwrap()
        .assert_success();
    // foo-utils pulls libfoo1 and hello-data; stable has the older hello.
    let expected: BTreeMap<_, _> = [
        ("hello", "amd64"),
        ("hello-data", "all"),
        ("foo-utils", "amd64"),
        ("libfoo1", "amd64"),
    ]
    .into_iter()
    .map(|(name, arch)| {
        let package = repo.package_in("stable", name, arch);
        let file_name = Path::new(&package.pool_path)
            .file_name()
            .unwrap()
            .to_owned();
        (file_name, package)
    })
    .collect();
    let downloaded = apt.downloaded_files().unwrap();
    let names: Vec<_> = downloaded.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(names, expected.keys().collect::<Vec<_>>());
    for path in &downloaded {
        let package = expected[path.file_name().unwrap()];
        let data = fs_err::read(path).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            package.sha256,
            "{}",
            path.display()
        );
    }

    // Exactly one GET per pool file, and nothing else went upstream.
    for package in expected.values() {
        let requests: Vec<_> = upstream
            .requests()
            .into_iter()
            .filter(|r| r.path == package.pool_path)
            .collect();
        assert_eq!(requests.len(), 1, "{}: {requests:?}", package.pool_path);
        assert_eq!(requests[0].method, Method::GET);
    }
    assert_eq!(
        upstream.total(),
        expected.len(),
        "{:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn apt_rejects_a_repository_signed_by_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo =
        FixtureRepo::generate(&dir.path().join("repo"), &spec().signed_by(TestKey::Other)).unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    let trusted = dir.path().join("trusted.asc");
    TestKey::Primary.write_public_key(&trusted).unwrap();
    let apt = AptRoot::new(&dir.path().join("apt")).unwrap();
    apt.add_source("fixture", &upstream.url(), "stable", &["main"], &trusted)
        .unwrap();

    let update = apt.update().await.unwrap();
    let other_key_id = &TestKey::Other.fingerprint()[24..];
    update
        .assert_failure_mentioning(&format!("NO_PUBKEY {other_key_id}"))
        .assert_failure_mentioning("is not signed");
    // Nothing unverified was kept.
    let kept = fs_err::read_dir(apt.lists_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("_dists_stable_"))
        .collect::<Vec<_>>();
    assert!(kept.is_empty(), "kept {kept:?}");
}

#[tokio::test]
async fn apt_rejects_expired_and_future_dated_releases() {
    for (date_offset, complaint) in [
        (TimeDelta::days(-10), "is expired"),
        (TimeDelta::days(2), "is not valid yet"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec();
        // Valid for 7 days from `Date:`.
        spec.date_offset = date_offset;
        let repo = FixtureRepo::generate(&dir.path().join("repo"), &spec).unwrap();
        let upstream = Upstream::start(repo.root().to_owned()).await;
        let apt = AptRoot::new(&dir.path().join("apt")).unwrap();
        apt.add_source(
            "fixture",
            &upstream.url(),
            "stable",
            &["main"],
            &repo.key_path(),
        )
        .unwrap();
        apt.update()
            .await
            .unwrap()
            .assert_failure_mentioning(complaint);
    }
}

#[tokio::test]
async fn apt_fetches_over_https_trusting_the_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FixtureRepo::generate(&dir.path().join("repo"), &spec()).unwrap();
    let upstream = Upstream::start_https(repo.root().to_owned()).await;
    let mut apt = AptRoot::new(&dir.path().join("apt")).unwrap();
    apt.add_source(
        "fixture",
        &upstream.url(),
        "stable",
        &["main"],
        &repo.key_path(),
    )
    .unwrap();
    apt.update()
        .await
        .unwrap()
        .assert_failure_mentioning("certificate");

    let ca = upstream.ca_cert_path().unwrap().to_str().unwrap();
    apt.set_option("Acquire::https::CaInfo", ca);
    apt.update().await.unwrap().assert_success();
    apt.download(&["hello"]).await.unwrap().assert_success();
    assert_eq!(apt.downloaded_files().unwrap().len(), 1);
}
