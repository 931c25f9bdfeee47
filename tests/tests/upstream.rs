//! The fake upstream behaves (and misbehaves) as the fault tests assume it does.

use std::time::{Duration, Instant};

use aptgate_tests::upstream::{Misbehaviour, Upstream};
use reqwest::{header, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FILE: &str = "pool/main/d/data/data_1.0_all.deb";
const LEN: usize = 100_000;

/// An upstream serving one file of `LEN` known bytes, and a client that follows no redirects.
async fn setup(https: bool) -> (tempfile::TempDir, Upstream, reqwest::Client, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join(FILE);
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(&path, &content).unwrap();
    let root = dir.path().to_owned();
    let upstream = if https {
        Upstream::start_https(root).await
    } else {
        Upstream::start(root).await
    };
    let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = upstream.ca_cert_path() {
        let pem = fs_err::read(ca).unwrap();
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    (dir, upstream, client.build().unwrap(), content)
}

#[tokio::test]
async fn serves_files_conditionally_and_by_range() {
    let (_dir, upstream, client, content) = setup(false).await;
    let url = upstream.url_for(FILE);

    let full = client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let etag = full.headers()[header::ETAG].clone();
    let last_modified = full.headers()[header::LAST_MODIFIED].clone();
    assert_eq!(full.bytes().await.unwrap(), content);

    let by_etag = client.get(&url).header(header::IF_NONE_MATCH, &etag);
    assert_eq!(
        by_etag.send().await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );
    let by_date = client
        .get(&url)
        .header(header::IF_MODIFIED_SINCE, &last_modified);
    assert_eq!(
        by_date.send().await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );

    let resumed = client.get(&url).header(header::RANGE, "bytes=1000-");
    let resumed = resumed
        .header(header::IF_RANGE, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resumed.headers()[header::CONTENT_RANGE],
        format!("bytes 1000-{}/{LEN}", LEN - 1)
    );
    assert_eq!(resumed.bytes().await.unwrap(), content[1000..]);

    let stale = client.get(&url).header(header::RANGE, "bytes=1000-");
    let stale = stale
        .header(header::IF_RANGE, "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale.status(),
        StatusCode::OK,
        "a changed file is sent whole"
    );

    let past_end = client
        .get(&url)
        .header(header::RANGE, format!("bytes={LEN}-"));
    let past_end = past_end.send().await.unwrap();
    assert_eq!(past_end.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        LEN.to_string().as_str()
    );

    let missing = client
        .get(upstream.url_for("pool/nope.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Clients normalise `..` away, so send it raw (and percent-encoded).
    let mut raw = tokio::net::TcpStream::connect(upstream.addr())
        .await
        .unwrap();
    let request =
        "GET /pool/%2e%2e/%2e%2e/../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    assert_eq!(upstream.count(FILE), 7);
    assert_eq!(upstream.total(), 9);
    let ranged = upstream.requests().into_iter().nth(3).unwrap();
    assert_eq!(ranged.header("range"), Some("bytes=1000-"));
}

#[tokio::test]
async fn misbehaves_on_demand() {
    let (_dir, upstream, client, content) = setup(false).await;
    let url = upstream.url_for(FILE);
    let get = || client.get(&url).send();

    upstream.misbehave_times(FILE, Misbehaviour::DieMidTransfer { after_bytes: 1000 }, 1);
    let mut cut = get().await.unwrap();
    assert_eq!(
        cut.content_length(),
        Some(LEN as u64),
        "headers promise the whole file"
    );
    let mut received = 0;
    let end = loop {
        match cut.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            end => break end,
        }
    };
    assert!(end.is_err(), "the body must end in an error, not cleanly");
    assert_eq!(received, 1000);
    assert_eq!(
        get().await.unwrap().bytes().await.unwrap(),
        content,
        "one time only"
    );

    upstream.misbehave(FILE, Misbehaviour::ExtraBytes(10));
    let long = get().await.unwrap().bytes().await.unwrap();
    assert_eq!((long.len(), &long[..LEN]), (LEN + 10, &content[..]));

    upstream.misbehave(FILE, Misbehaviour::IgnoreRange);
    let ranged = client
        .get(&url)
        .header(header::RANGE, "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::OK);

    upstream.misbehave(FILE, Misbehaviour::RedirectTo(url.clone()));
    let redirect = get().await.unwrap();
    assert_eq!(redirect.status(), StatusCode::FOUND);
    assert_eq!(redirect.headers()[header::LOCATION], url.as_str());

    upstream.misbehave(FILE, Misbehaviour::Stall { after_bytes: 10 });
    let stalled = get().await.unwrap();
    let body = tokio::time::timeout(Duration::from_millis(300), stalled.bytes()).await;
    assert!(body.is_err(), "the body must hang");

    upstream.misbehave(
        FILE,
        Misbehaviour::Throttle {
            bytes_per_sec: 400_000,
        },
    );
    let started = Instant::now();
    assert_eq!(get().await.unwrap().bytes().await.unwrap(), content);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200),
        "{LEN} bytes in {elapsed:?}"
    );

    upstream.behave();
    upstream.misbehave_all(Misbehaviour::Status(503));
    assert_eq!(
        get().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let other = client
        .get(upstream.url_for("anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::SERVICE_UNAVAILABLE);
    upstream.behave();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn stops_and_restarts_on_the_same_port() {
    let (_dir, upstream, client, _) = setup(false).await;
    let url = upstream.url_for(FILE);
    upstream.stop().await;
    let refused = client.get(&url).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    upstream.restart().await.unwrap();
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn serves_https_with_a_trusted_test_ca() {
    let (_dir, upstream, client, content) = setup(true).await;
    assert!(upstream.url().starts_with("https://127.0.0.1:"));
    let localhost = upstream.url().replace("127.0.0.1", "localhost");
    for base in [upstream.url(), localhost] {
        let body = client.get(format!("{base}/{FILE}")).send().await.unwrap();
        assert_eq!(body.bytes().await.unwrap(), content);
    }
    // Without the test CA the certificate is not trusted.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting.get(upstream.url_for(FILE)).send().await.is_err());
}
