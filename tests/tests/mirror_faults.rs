//! How the mirror copes with misbehaving upstreams and hostile requests.

use aptgate_tests::app::{client, fixture_source, raw_get, test_mirror_config, Harness, TestApp};
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::upstream::Misbehaviour;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Fetches the indices for stable/amd64 so pool files have verified expectations.
async fn prime(h: &Harness) {
    h.prime().await;
}

/// Reads a body to the end; `Err` if the transfer broke off.
async fn read_body(r: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    Ok(r.bytes().await?.to_vec())
}

/// True if the client could tell the fetch failed: an error status, or (once streaming began)
/// a body that ends with an error. A failure can land before the client's request looks at
/// the download, so either form is a correct answer; a clean `200` body is not.
/// Whether a download failed: an error status, a cut body, or (when the failure comes before
/// the first body byte) a connection closed before any response head.
async fn fetch_fails(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Err(_) => true,
        Ok(r) => !r.status().is_success() || read_body(r).await.is_err(),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_share_one_streamed_download() {
    let h = Harness::with_spec(FixtureSpec::default().large_payload(24 << 20), false).await;
    prime(&h).await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    h.upstream.misbehave(
        &big.pool_path,
        Misbehaviour::Throttle {
            bytes_per_sec: 12 << 20,
        },
    );

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..50 {
        let url = h.app.mirror_url(&big.pool_path);
        clients.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream();
            let mut hasher = Sha256::new();
            let mut first_byte = None;
            let mut len = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                first_byte.get_or_insert_with(|| started.elapsed());
                hasher.update(&chunk);
                len += chunk.len() as u64;
                // Client 0 hangs up early: that must not cancel anyone else's download.
                if i == 0 && len > 1 << 20 {
                    return None;
                }
            }
            Some((
                first_byte.unwrap(),
                started.elapsed(),
                hex::encode(hasher.finalize()),
            ))
        }));
    }
    let mut results = Vec::new();
    for c in clients {
        if let Some(r) = c.await.unwrap() {
            results.push(r);
        }
    }
    assert_eq!(results.len(), 49);
    let first_done = results.iter().map(|r| r.1).min().unwrap();
    for (first_byte, _, sha) in &results {
        assert_eq!(sha, &big.sha256);
        assert!(
            *first_byte < first_done,
            "a client got its first byte only after the download ended"
        );
    }
    assert_eq!(
        h.upstream.count(&big.pool_path),
        1,
        "exactly one upstream request"
    );
    assert!(h.app.counter("coalesced_waiters") >= 49);
    // Later requests come from the store.
    let r = h.get(&big.pool_path).await;
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    assert_eq!(h.upstream.count(&big.pool_path), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_fails_every_client_and_stores_nothing() {
    let h = Harness::new().await;
    prime(&h).await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    h.repo.corrupt(&big.pool_path).unwrap();
    h.upstream.misbehave(
        &big.pool_path,
        Misbehaviour::Throttle {
            bytes_per_sec: 16 << 20,
        },
    );
    let mut clients = Vec::new();
    for _ in 0..5 {
        let url = h.app.mirror_url(&big.pool_path);
        clients.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            read_body(r).await
        }));
    }
    for c in clients {
        match c.await.unwrap() {
            Ok(body) => panic!(
                "a client got a clean end of a bad file ({} bytes)",
                body.len()
            ),
            Err(e) => assert!(e.is_body() || e.is_decode(), "{e}"),
        }
    }
    assert!(!h.app.blob_path(&big.sha256).exists());
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
    assert!(h.app.counter("upstream_errors") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_transfer_fails_the_client_and_the_next_request_retries() {
    let h = Harness::new().await;
    prime(&h).await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    h.upstream.misbehave_times(
        &big.pool_path,
        Misbehaviour::DieMidTransfer {
            after_bytes: 1 << 20,
        },
        1,
    );
    let r = h.get(&big.pool_path).await;
    assert!(
        read_body(r).await.is_err(),
        "the broken transfer must surface as an error"
    );
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
    assert!(!h.app.blob_path(&big.sha256).exists());

    let r = h.get(&big.pool_path).await;
    let body = read_body(r).await.expect("the retry succeeds");
    assert_eq!(hex::encode(Sha256::digest(&body)), big.sha256);
    assert_eq!(h.upstream.count(&big.pool_path), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_bytes_from_upstream_are_cut_off_and_nothing_is_stored() {
    let h = Harness::new().await;
    prime(&h).await;
    let pkg = h.repo.package_in("stable", "hello", "amd64").clone();
    h.upstream
        .misbehave(&pkg.pool_path, Misbehaviour::ExtraBytes(100));
    let r = h.try_get(&pkg.pool_path).await;
    assert!(
        fetch_fails(r).await,
        "a body longer than promised must not pass"
    );
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
    assert!(!h.app.blob_path(&pkg.sha256).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upstream_times_out() {
    let h = Harness::new().await;
    prime(&h).await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    h.upstream
        .misbehave(&big.pool_path, Misbehaviour::Stall { after_bytes: 4096 });
    let started = Instant::now();
    let r = h.get(&big.pool_path).await;
    assert!(read_body(r).await.is_err());
    // read_timeout is 2 s in tests.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn range_and_conditional_requests_work_even_when_upstream_ignores_range() {
    let h = Harness::new().await;
    prime(&h).await;
    h.upstream.misbehave_all(Misbehaviour::IgnoreRange);
    let big = h.repo.package(LARGE_PACKAGE).clone();
    let full = read_body(h.get(&big.pool_path).await).await.unwrap();

    let r = client()
        .get(h.app.mirror_url(&big.pool_path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &full[1000..2000]);

    let head = client()
        .head(h.app.mirror_url(&big.pool_path))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        big.size.to_string().as_str()
    );
    let last_modified = head.headers()["last-modified"].clone();
    assert!(head.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));

    let r = client()
        .get(h.app.mirror_url(&big.pool_path))
        .header("if-modified-since", last_modified.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // If-Range with the current validator resumes; apt relies on this.
    let r = client()
        .get(h.app.mirror_url(&big.pool_path))
        .header("range", format!("bytes={}-", big.size - 10))
        .header("if-range", last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &full[full.len() - 10..]);
    assert_eq!(h.upstream.count(&big.pool_path), 1);

    // Small blobs take a different serving path: the same semantics, plus a strong ETag.
    let small = h.repo.package_in("stable", "hello", "amd64").clone();
    let full = read_body(h.get(&small.pool_path).await).await.unwrap();
    let head = client()
        .head(h.app.mirror_url(&small.pool_path))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-length"],
        small.size.to_string().as_str()
    );
    let etag = head.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", small.sha256));
    let with = |name: &'static str, value: String| {
        client()
            .get(h.app.mirror_url(&small.pool_path))
            .header(name, value)
    };
    let r = with("if-none-match", etag.clone()).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let lm = head.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(
        with("if-modified-since", lm).send().await.unwrap().status(),
        304
    );
    let r = with("range", "bytes=10-19".into())
        .header("if-range", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{}", small.size).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), &full[10..20]);
    let r = with("range", "bytes=0-9".into())
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a stale If-Range gets the whole file");
    let r = with("range", format!("bytes={}-", small.size))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_work_and_a_downgrade_to_http_is_refused() {
    let h = Harness::with_spec(FixtureSpec::default(), true).await;
    assert!(h.upstream.url().starts_with("https://"));
    let apt = h.apt_root("host", "stable");
    apt.update().await.unwrap().assert_success();
    apt.download(&["hello"]).await.unwrap().assert_success();

    // An http server with the same files, for the downgrade target.
    let plain = aptgate_tests::upstream::Upstream::start(h.repo.root().to_owned()).await;
    h.upstream.misbehave(
        "dists/testing/InRelease",
        Misbehaviour::RedirectTo(plain.url_for("dists/testing/InRelease")),
    );
    let r = h.get("dists/testing/InRelease").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("downgrade"),
        "{body}"
    );
    assert_eq!(plain.total(), 0, "the http server was never contacted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_loop_is_refused() {
    let h = Harness::new().await;
    let url = h.upstream.url_for("dists/stable/InRelease");
    h.upstream
        .misbehave("dists/stable/InRelease", Misbehaviour::RedirectTo(url));
    let r = h.get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("redirect"), "{message}");
    assert!(h.upstream.count("dists/stable/InRelease") <= 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_expired_and_future_releases_are_refused() {
    // Tampered: one byte of the signed text changed.
    let h = Harness::new().await;
    let inrelease = h.repo.path("dists/stable/InRelease");
    let text = fs_err::read_to_string(&inrelease).unwrap();
    fs_err::write(
        &inrelease,
        text.replacen("Suite: stable", "Suite: stablf", 1),
    )
    .unwrap();
    let r = h.get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unverified", "{body}");

    for (spec, needle) in [
        (
            FixtureSpec {
                date_offset: chrono::TimeDelta::days(-10),
                valid_for: Some(chrono::TimeDelta::days(3)),
                ..FixtureSpec::default()
            },
            "expired",
        ),
        (
            FixtureSpec {
                date_offset: chrono::TimeDelta::days(2),
                ..FixtureSpec::default()
            },
            "future",
        ),
    ] {
        let h = Harness::with_spec(spec, false).await;
        let r = h.get("dists/stable/InRelease").await;
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
        assert!(!h
            .app
            .data_dir()
            .join("refs/fixture/dists/stable/InRelease.ref")
            .exists());
    }
}

/// With freshness 0 every request revalidates: the cached copy is served stale while upstream
/// is down, and an older upstream InRelease never replaces a newer cached one.
#[tokio::test(flavor = "multi_thread")]
async fn cached_release_is_served_stale_and_never_replaced_by_an_older_one() {
    let mut h = Harness::new().await;
    let mut config = test_mirror_config(&h.upstream);
    config.release_freshness = Duration::from_secs(0);
    let source = fixture_source(&h.upstream, &h.repo);
    let app = TestApp::start_with(&h.dir.path().join("data0"), vec![source], config).await;
    let get = |path: &'static str| {
        let url = app.mirror_url(path);
        async move { client().get(url).send().await.unwrap() }
    };
    let first = get("dists/stable/InRelease").await;
    assert_eq!(first.status(), 200);
    let first = first.bytes().await.unwrap();

    // Revalidation uses a conditional request.
    let again = get("dists/stable/InRelease").await;
    assert_eq!(again.status(), 200);
    let log = h.upstream.requests();
    assert!(
        log.iter()
            .rev()
            .find(|r| r.path == "dists/stable/InRelease")
            .unwrap()
            .header("if-modified-since")
            .is_some()
            || log
                .iter()
                .rev()
                .find(|r| r.path == "dists/stable/InRelease")
                .unwrap()
                .header("if-none-match")
                .is_some(),
        "revalidation was not conditional"
    );

    for trouble in [Misbehaviour::Status(503)] {
        h.upstream.misbehave("dists/stable/InRelease", trouble);
        let r = get("dists/stable/InRelease").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-aptgate-cache"], "stale");
        assert!(r.headers().contains_key("warning"));
        assert_eq!(r.bytes().await.unwrap(), first);
        h.upstream.behave();
    }
    h.upstream.stop().await;
    let r = get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aptgate-cache"], "stale");
    h.upstream.restart().await.unwrap();

    // Upstream goes back in time: the cached (newer) InRelease stays.
    h.repo.spec.date_offset = chrono::TimeDelta::hours(-1);
    h.repo.regenerate().unwrap();
    let r = get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_files_are_404_and_remembered_briefly() {
    let h = Harness::new().await;
    prime(&h).await;
    let path = "pool/main/n/nope/nope_1.0_all.deb";
    assert_eq!(h.get(path).await.status(), 404);
    assert_eq!(h.get(path).await.status(), 404);
    assert_eq!(
        h.upstream.count(path),
        1,
        "the second 404 came from the negative cache"
    );
    let r = h.get("dists/stable/main/binary-amd64/Packages.bz2").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_listed");
    let r = client()
        .get(format!("{}/mirror/nosuch/dists/x/InRelease", h.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_source");
    assert!(body["hint"].as_str().unwrap().contains("fixture"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_path_escapes_the_store() {
    let h = Harness::new().await;
    prime(&h).await;
    let long = format!("/mirror/fixture/pool/{}", "a/".repeat(600));
    for target in [
        "/mirror/fixture/../../etc/passwd",
        "/mirror/fixture/pool/../../../etc/passwd",
        "/mirror/fixture/%2e%2e/%2e%2e/etc/passwd",
        "/mirror/fixture/pool/%2E%2E/x",
        "/mirror/fixture//etc/passwd",
        "/mirror/fixture/pool//main",
        "/mirror/fixture/pool\\..\\x",
        "/mirror/fixture/pool/%5c..%5cx",
        "/mirror/fixture/pool/x%00y",
        "/mirror/%2e%2e/dists/stable/InRelease",
        long.as_str(),
    ] {
        let (status, _) = raw_get(&h.app.url, target).await;
        assert!(status == 400 || status == 404, "{target} → {status}");
    }
    let escaped = h
        .upstream
        .requests()
        .iter()
        .filter(|r| r.path.contains("passwd"))
        .count();
    assert_eq!(escaped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_endpoints() {
    let h = Harness::new().await;
    prime(&h).await;
    let health = client()
        .get(format!("{}/healthz", h.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = client()
        .get(format!("{}/metrics", h.app.url))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    for name in [
        "requests",
        "bytes_served",
        "cache_hits",
        "cache_misses",
        "upstream_fetches",
        "coalesced_waiters",
    ] {
        assert!(
            text.contains(&format!("# TYPE aptgate_mirror_{name}_total counter")),
            "{name}"
        );
    }
    assert!(h.app.counter("requests") >= 2);
    assert!(h.app.counter("bytes_served") > 0);
    assert!(h.app.counter("cache_misses") >= 1);
}

/// A failure before the first byte is an error status, not a 200 that breaks off.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_before_the_first_byte_are_error_statuses() {
    let h = Harness::new().await;
    prime(&h).await;
    let hello = h.repo.package_in("stable", "hello", "amd64").clone();
    h.upstream
        .misbehave_times(&hello.pool_path, Misbehaviour::Status(500), 1);
    let r = h.get(&hello.pool_path).await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("500"), "{body}");

    let libfoo = h.repo.package_in("stable", "libfoo1", "amd64").clone();
    fs_err::remove_file(h.repo.path(&libfoo.pool_path)).unwrap();
    assert_eq!(h.get(&libfoo.pool_path).await.status(), 404);

    // The 500 was not remembered: the next request fetches and serves the file.
    let r = h.get(&hello.pool_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        hex::encode(Sha256::digest(r.bytes().await.unwrap())),
        hello.sha256
    );
}
