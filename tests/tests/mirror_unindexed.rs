//! Pool requests from clients that never fetched their indices through aptgate: the mirror
//! looks the path up in the source's configured indices (fetching and verifying them first),
//! and what no configured index lists is passed through, one upstream GET per path however
//! many clients ask at once, and never stored.

use aptgate_tests::app::{client, Harness};
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::upstream::Misbehaviour;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one client got: status, `x-aptgate-cache`, `Content-Length`, body sha256 (hex).
#[derive(Debug)]
struct Got {
    status: u16,
    cache: String,
    content_length: Option<u64>,
    sha256: String,
}

/// `n` clients asking aptgate for `path` at the same moment; every body read to its end.
async fn many_at_once(h: &Harness, path: &str, n: usize) -> Vec<Got> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let url = h.app.mirror_url(path);
        clients.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let cache = header("x-aptgate-cache").unwrap_or_default();
            let content_length = header("content-length").map(|v| v.parse().unwrap());
            let mut hasher = Sha256::new();
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                hasher.update(chunk.expect("the body arrives whole"));
            }
            Got {
                status,
                cache,
                content_length,
                sha256: hex::encode(hasher.finalize()),
            }
        }));
    }
    let mut got = Vec::new();
    for c in clients {
        got.push(c.await.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_without_indices_share_one_verified_download_that_is_stored() {
    let h = Harness::with_spec(FixtureSpec::default().large_payload(24 << 20), false).await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    // About 2 s upstream, so every client asks while the download is under way.
    h.upstream.misbehave(
        &big.pool_path,
        Misbehaviour::Throttle {
            bytes_per_sec: 12 << 20,
        },
    );

    let got = many_at_once(&h, &big.pool_path, 50).await;
    for g in &got {
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(g.sha256, big.sha256, "{g:?}");
        assert!(g.cache == "miss" || g.cache == "hit", "{g:?}");
    }
    assert_eq!(
        h.upstream.count(&big.pool_path),
        1,
        "exactly one upstream request for the pool file"
    );
    // The indices were fetched by one request, not once per client (at most once each: two
    // with the same content are one blob, fetched once).
    for suite in ["stable", "testing"] {
        assert_eq!(h.upstream.count(&format!("dists/{suite}/InRelease")), 1);
        for component in ["main", "contrib"] {
            for arch in ["amd64", "arm64"] {
                let index = format!("dists/{suite}/{component}/binary-{arch}/Packages.xz");
                assert!(h.upstream.count(&index) <= 1, "{index}");
            }
        }
    }
    assert_eq!(
        h.upstream
            .count("dists/stable/main/binary-amd64/Packages.xz"),
        1
    );

    // Verified and stored: later requests come from the store.
    assert!(h.app.blob_path(&big.sha256).is_file());
    let r = h.get(&big.pool_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    assert_eq!(
        hex::encode(Sha256::digest(r.bytes().await.unwrap())),
        big.sha256
    );
    assert_eq!(h.upstream.count(&big.pool_path), 1);
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlisted_pool_file_is_one_shared_upstream_get_and_never_stored() {
    let h = Harness::new().await;
    let path = "pool/main/u/unlisted/unlisted_1.0_all.deb";
    let bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let sha256 = hex::encode(Sha256::digest(&bytes));
    fs_err::create_dir_all(h.repo.path("pool/main/u/unlisted")).unwrap();
    fs_err::write(h.repo.path(path), &bytes).unwrap();
    // About 1.5 s upstream, so every client asks while the download is under way.
    h.upstream.misbehave(
        path,
        Misbehaviour::Throttle {
            bytes_per_sec: 4 << 20,
        },
    );

    let got = many_at_once(&h, path, 30).await;
    for g in &got {
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(g.cache, "bypass", "{g:?}");
        assert_eq!(g.content_length, Some(bytes.len() as u64), "{g:?}");
        assert_eq!(g.sha256, sha256, "{g:?}");
    }
    assert_eq!(
        h.upstream.count(path),
        1,
        "concurrent clients share one upstream request"
    );
    assert!(h.app.counter("coalesced_waiters") >= 29);

    // Nothing stored: no blob, no record, no scratch file left.
    wait_for("scratch file removal", || h.app.tmp_files() == 0).await;
    assert!(!h.app.blob_path(&sha256).exists());
    assert!(!h
        .app
        .data_dir()
        .join(format!("refs/fixture/{path}.ref"))
        .exists());

    // A later request goes upstream again, and the indices read above cost nothing more.
    h.upstream.behave();
    let upstream_before = h.upstream.total();
    let r = h.get(path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aptgate-cache"], "bypass");
    assert_eq!(
        hex::encode(Sha256::digest(r.bytes().await.unwrap())),
        sha256
    );
    assert_eq!(h.upstream.count(path), 2);
    assert_eq!(
        h.upstream.total(),
        upstream_before + 1,
        "only the pool file was asked for"
    );

    // HEAD answers with upstream's length and leaves nothing behind.
    let head = client().head(h.app.mirror_url(path)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-aptgate-cache"], "bypass");
    assert_eq!(
        head.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    wait_for("scratch file removal", || h.app.tmp_files() == 0).await;
    assert!(!h.app.blob_path(&sha256).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_a_file_upstream_lacks_share_one_404() {
    let h = Harness::new().await;
    let path = "pool/main/n/nope/nope_1.0_all.deb";
    let got = many_at_once(&h, path, 20).await;
    for g in &got {
        assert_eq!(g.status, 404, "{g:?}");
    }
    assert_eq!(h.upstream.count(path), 1);
    assert_eq!(h.get(path).await.status(), 404);
    assert_eq!(h.upstream.count(path), 1, "the negative cache answered");
    wait_for("scratch file removal", || h.app.tmp_files() == 0).await;
}

/// A suite published as `Release` + `Release.gpg` only: the lookup reads it from those, and
/// does not ask for the missing `InRelease` on every unknown path.
#[tokio::test(flavor = "multi_thread")]
async fn a_suite_without_inrelease_is_resolved_through_release_and_release_gpg() {
    let h = Harness::new().await;
    for suite in ["stable", "testing"] {
        fs_err::remove_file(h.repo.path(&format!("dists/{suite}/InRelease"))).unwrap();
    }
    let hello = h.repo.package_in("stable", "hello", "amd64").clone();
    let r = h.get(&hello.pool_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aptgate-cache"], "miss");
    assert_eq!(
        hex::encode(Sha256::digest(r.bytes().await.unwrap())),
        hello.sha256
    );
    assert_eq!(
        h.get(&hello.pool_path).await.headers()["x-aptgate-cache"],
        "hit"
    );
    assert_eq!(h.upstream.count(&hello.pool_path), 1);

    let unlisted = "pool/main/u/unlisted/unlisted_1.0_all.deb";
    assert_eq!(h.get(unlisted).await.status(), 404);
    assert_eq!(h.upstream.count("dists/stable/InRelease"), 1);
    assert_eq!(h.upstream.count("dists/stable/Release"), 1);
}
