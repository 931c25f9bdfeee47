//! Real apt-get through aptgate's pull-through mirror.

use aptgate_tests::app::Harness;
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use sha2::{Digest, Sha256};

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(fs_err::read(path).unwrap()))
}

/// apt on two separate roots installs through the mirror; upstream sees each pool file once.
#[tokio::test(flavor = "multi_thread")]
async fn two_apt_roots_download_through_the_mirror_and_upstream_sees_each_file_once() {
    let h = Harness::new().await;
    let wanted = ["hello", "foo-utils", LARGE_PACKAGE];
    for name in ["host-a", "host-b"] {
        let apt = h.apt_root(name, "stable");
        let update = apt.update().await.unwrap();
        update.assert_success();
        let out = update.combined();
        for warning in ["NO_PUBKEY", "not signed", "is not signed", "W: GPG"] {
            assert!(!out.contains(warning), "apt warned {warning:?}:\n{out}");
        }
        apt.download(&wanted).await.unwrap().assert_success();
        let files = apt.downloaded_files().unwrap();
        // foo-utils pulls libfoo1 and hello-data.
        for expect in ["hello", "foo-utils", "libfoo1", "hello-data", LARGE_PACKAGE] {
            let pkg = h.repo.package_in("stable", expect, "amd64");
            let file = files
                .iter()
                .find(|f| {
                    f.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with(&format!("{expect}_"))
                })
                .unwrap_or_else(|| panic!("{expect} not downloaded: {files:?}"));
            assert_eq!(sha256_file(file), pkg.sha256, "{expect}");
        }
    }
    for expect in ["hello", "foo-utils", "libfoo1", "hello-data", LARGE_PACKAGE] {
        let pkg = h.repo.package_in("stable", expect, "amd64");
        assert_eq!(h.upstream.count(&pkg.pool_path), 1, "{}", pkg.pool_path);
    }
    assert_eq!(h.upstream.count("dists/stable/InRelease"), 1);
    assert!(h.app.counter("cache_hits") >= 5);
    assert_eq!(h.app.tmp_files(), 0);
}

/// A new upstream version shows up after the cached InRelease is revalidated, and the old
/// cached files keep working across a restart of aptgate.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_changes_arrive_after_revalidation_and_the_cache_survives_restart() {
    let mut h = Harness::new().await;
    let apt = h.apt_root("host", "stable");
    apt.update().await.unwrap().assert_success();
    apt.download(&["foo-utils"]).await.unwrap().assert_success();
    let old = h.repo.package_in("stable", "foo-utils", "amd64").clone();

    // Upstream publishes a new foo-utils; aptgate restarts with a zero freshness window.
    let new = h.repo.bump("foo-utils", "1.4.2-2").unwrap();
    let mut config = h.app.config.clone();
    config.mirror.release_freshness = std::time::Duration::from_secs(0);
    let stopped = std::mem::replace(
        &mut h.app,
        aptgate_tests::app::TestApp::start_with(
            &config.data_dir,
            config.sources.clone(),
            config.mirror.clone(),
        )
        .await,
    );
    stopped.stop().await;
    // The new server listens on a new port.
    apt.add_source(
        "aptgate",
        &h.app.mirror_uri(),
        "stable",
        &["main", "contrib"],
        &h.repo.key_path(),
    )
    .unwrap();

    apt.update().await.unwrap().assert_success();
    let out = apt.download(&["foo-utils"]).await.unwrap();
    out.assert_success();
    let names: Vec<String> = apt
        .downloaded_files()
        .unwrap()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("1.4.2-2")), "{names:?}");
    assert_eq!(h.upstream.count(&new.pool_path), 1);
    // The old file is still served from the store, without asking upstream again.
    let r = h.get(&old.pool_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    assert_eq!(h.upstream.count(&old.pool_path), 1);
}

/// A mirror whose upstream is signed by a key not in the source's keyring refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn wrongly_signed_upstream_is_refused_and_nothing_is_cached() {
    let spec = FixtureSpec::default().signed_by(aptgate_tests::signing::TestKey::Other);
    let h = Harness::with_spec(spec, false).await;
    // The harness trusts the fixture's own key; point the source at the primary key instead.
    let key = h.dir.path().join("primary.asc");
    aptgate_tests::signing::TestKey::Primary
        .write_public_key(&key)
        .unwrap();
    let mut source = aptgate_tests::app::fixture_source(&h.upstream, &h.repo);
    source.keyring = vec![key.clone()];
    let app = aptgate_tests::app::TestApp::start_with(
        &h.dir.path().join("data2"),
        vec![source],
        aptgate_tests::app::test_mirror_config(&h.upstream),
    )
    .await;

    let r = aptgate_tests::app::client()
        .get(app.mirror_url("dists/stable/InRelease"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unverified");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("no key in the keyring"), "{message}");
    assert!(!app
        .data_dir()
        .join("refs/fixture/dists/stable/InRelease.ref")
        .exists());
    assert_eq!(
        fs_err::read_dir(app.data_dir().join("store/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "nothing stored"
    );

    // apt, trusting the primary key, fails too, naming the repository.
    let apt = aptgate_tests::apt::AptRoot::new(&h.dir.path().join("host")).unwrap();
    apt.add_source("aptgate", &app.mirror_uri(), "stable", &["main"], &key)
        .unwrap();
    let out = apt.update().await.unwrap();
    assert!(
        !out.success() || out.combined().contains("502"),
        "apt update must not succeed silently:\n{}",
        out.combined()
    );
}
