//! Slow and hostile upstreams: a trickling transfer is abandoned, oversized response heads are
//! refused, and redirects go nowhere the configuration does not allow.

use aptgate_tests::app::{client, fixture_source, test_mirror_config, Harness, TestApp};
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::upstream::{Misbehaviour, Upstream};
use std::time::{Duration, Instant};

/// True if the client could tell the fetch failed: an error status, or a body that ends with
/// an error; a clean `200` body is not.
/// Whether a download failed: an error status, a cut body, or (when the failure comes before
/// the first body byte) a connection closed before any response head.
async fn fetch_fails(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Err(_) => true,
        Ok(r) => !r.status().is_success() || r.bytes().await.is_err(),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn error_message(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    body["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_upstream_is_abandoned_and_nothing_is_stored() {
    let h = Harness::configured(FixtureSpec::default(), false, |config| {
        config.mirror.min_transfer_rate = 4096;
        config.mirror.min_transfer_window = Duration::from_secs(1);
    })
    .await;
    h.prime().await;
    let big = h.repo.package(LARGE_PACKAGE).clone();
    // A few bytes every 50 ms: never quiet for read_timeout (2 s), never getting anywhere.
    h.upstream.misbehave(
        &big.pool_path,
        Misbehaviour::Throttle { bytes_per_sec: 200 },
    );
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let url = h.app.mirror_url(&big.pool_path);
            tokio::spawn(async move { fetch_fails(client().get(url).send().await).await })
        })
        .collect();
    for c in clients {
        let failed = tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .expect("the trickling download was never abandoned")
            .unwrap();
        assert!(failed, "a client got a clean end of a trickled file");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(h.upstream.count(&big.pool_path), 1, "one shared download");
    assert!(!h.app.blob_path(&big.sha256).exists());
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
    assert!(h.app.counter("upstream_errors") >= 1);

    // Upstream at full speed again: the next request fetches and stores it.
    h.upstream.behave();
    let r = h.get(&big.pool_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len() as u64, big.size);
    assert!(h.app.blob_path(&big.sha256).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_response_with_too_many_headers_is_refused_and_nothing_is_stored() {
    let h = Harness::new().await;
    h.prime().await;
    let small = h.repo.package("hello").clone();
    h.upstream
        .misbehave(&small.pool_path, Misbehaviour::ManyHeaders(200));
    assert!(fetch_fails(h.try_get(&small.pool_path).await).await);
    assert!(!h.app.blob_path(&small.sha256).exists());
    wait_for("temp file removal", || h.app.tmp_files() == 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_is_refused_unless_allowed() {
    let h = Harness::new().await;
    let path = "dists/stable/InRelease";
    // Another server with the same files, on another port.
    let other = Upstream::start(h.repo.root().to_owned()).await;
    h.upstream
        .misbehave(path, Misbehaviour::RedirectTo(other.url_for(path)));
    let message = error_message(h.get(path).await).await;
    assert!(message.contains("another host"), "{message}");
    assert_eq!(other.total(), 0, "the other host was never contacted");

    // The same port under another host name is another host too.
    let by_name = format!("http://localhost:{}/{path}", h.upstream.addr().port());
    h.upstream
        .misbehave(path, Misbehaviour::RedirectTo(by_name));
    h.upstream.clear_log();
    let message = error_message(h.get(path).await).await;
    assert!(message.contains("another host"), "{message}");
    assert_eq!(h.upstream.total(), 1, "only the redirecting request");

    // A redirect on the same host is followed.
    h.upstream.misbehave_times(
        path,
        Misbehaviour::RedirectTo(h.upstream.url_for(&format!("{path}?moved=1"))),
        1,
    );
    assert_eq!(h.get(path).await.status(), 200);

    // Allowed by configuration: followed.
    let mut mirror = test_mirror_config(&h.upstream);
    mirror.allowed_redirect_hosts = vec![other.addr().to_string()];
    let app = TestApp::start_with(
        &h.dir.path().join("allowing"),
        vec![fixture_source(&h.upstream, &h.repo)],
        mirror,
    )
    .await;
    h.upstream
        .misbehave(path, Misbehaviour::RedirectTo(other.url_for(path)));
    let r = client().get(app.mirror_url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(other.count(path), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_whose_path_would_not_pass_as_a_mirror_path_is_refused() {
    let h = Harness::new().await;
    let path = "dists/stable/InRelease";
    for location in [
        // `%2f` survives URL normalisation and decodes to a climbing path.
        "dists/stable/x%2f..%2f..%2fInRelease",
        "dists/stable/In%00Release",
    ] {
        h.upstream
            .misbehave(path, Misbehaviour::RedirectTo(h.upstream.url_for(location)));
        h.upstream.clear_log();
        let message = error_message(h.get(path).await).await;
        assert!(
            message.contains("redirect refused"),
            "{location}: {message}"
        );
        assert_eq!(h.upstream.total(), 1, "{location} was never requested");
    }
}
