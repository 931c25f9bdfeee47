//! Slow and abusive clients: a client that never finishes its request head, or sends an
//! oversized one, is cut off without slowing anyone else down.

use aptgate_tests::app::{client, Harness};
use aptgate_tests::fixture::FixtureSpec;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

async fn harness() -> Harness {
    Harness::configured(FixtureSpec::default(), false, |config| {
        config.server.header_read_timeout = HEADER_TIMEOUT;
    })
    .await
}

fn addr(h: &Harness) -> String {
    h.app.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; what it sent before that.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_are_closed_while_healthy_clients_are_served() {
    let h = harness().await;
    let url = h.app.mirror_url("dists/stable/InRelease");
    assert_eq!(h.get("dists/stable/InRelease").await.status(), 200);

    // 500 slowloris connections: a request line and one header, never the blank line.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(addr(&h)).await.unwrap();
        stream
            .write_all(b"GET /mirror/fixture/dists/stable/InRelease HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // And one that keeps trickling header bytes: the deadline is for the whole head.
    let mut trickler = TcpStream::connect(addr(&h)).await.unwrap();
    trickler.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let trickling = tokio::spawn(async move {
        for _ in 0..100 {
            if trickler.write_all(b"X-A: b\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_to_close(&mut trickler).await;
    });

    // Healthy clients, each on a new connection, are answered meanwhile, and promptly.
    let healthy = Instant::now();
    for _ in 0..20 {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert!(
        healthy.elapsed() < HEADER_TIMEOUT / 2,
        "healthy clients took {:?}",
        healthy.elapsed()
    );

    // Every half-sent request is closed once the head's deadline passes.
    let closing = slow.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(15), read_to_close(&mut stream)).await
        })
    });
    for closed in futures::future::join_all(closing).await {
        assert!(closed.unwrap().is_ok(), "a half-sent request was kept open");
    }
    tokio::time::timeout(Duration::from_secs(15), trickling)
        .await
        .expect("a trickled request head was kept open")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= HEADER_TIMEOUT, "closed too early: {elapsed:?}");

    // And the server still serves.
    assert_eq!(h.get("dists/stable/InRelease").await.status(), 200);
}

async fn raw_status(h: &Harness, parts: &[Vec<u8>]) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr(h)).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The server may close as soon as it has seen too much.
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut stream))
        .await
        .expect("the connection is closed");
    let text = String::from_utf8_lossy(&seen);
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_get_431_and_the_connection_is_closed() {
    let h = harness().await;
    let head = b"GET /mirror/fixture/dists/stable/InRelease HTTP/1.1\r\nHost: x\r\n".to_vec();

    // 12 KiB in one header, split across two writes 100 ms apart (hyper #4081's bypass).
    let mut first = head.clone();
    first.extend_from_slice(b"X-Big: ");
    first.extend(std::iter::repeat_n(b'a', 6 * 1024));
    let mut second = vec![b'a'; 6 * 1024];
    second.extend_from_slice(b"\r\n\r\n");
    let (status, _) = raw_status(&h, &[first, second]).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");

    // 101 small headers.
    let mut many = head.clone();
    for i in 0..101 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (status, _) = raw_status(&h, &[many]).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");

    // A normal head still works.
    let mut fine = head;
    fine.extend_from_slice(b"Connection: close\r\n\r\n");
    let (status, _) = raw_status(&h, &[fine]).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
}
