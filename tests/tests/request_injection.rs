//! Hostile request paths: encoded CR/LF never becomes a response header (T10), and error
//! answers never reflect markup a browser would run (T11).

use aptgate_tests::app::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `target` as the raw request target and returns the whole response (head and body).
async fn raw_response(base: &str, target: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn head_and_body(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").unwrap_or((response, ""))
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_newlines_in_paths_never_become_response_headers() {
    let h = Harness::new().await;
    h.prime().await;
    for target in [
        "/mirror/fixture/pool/x%0d%0aSet-Cookie:%20injected=1",
        "/mirror/fixture/dists/stable/x%0aSet-Cookie:%20injected=1",
        "/mirror/fixture/pool/x%0d%0a%0d%0a<html>injected",
        "/channels/testing/dists/stable/x%0d%0aSet-Cookie:%20injected=1",
        "/mirror/fixture%0d%0aSet-Cookie:%20injected=1/dists/stable/InRelease",
    ] {
        let response = raw_response(&h.app.url, target).await;
        let (head, _) = head_and_body(&response);
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((400..500).contains(&status), "{target} → {status}");
        assert!(
            !head.to_ascii_lowercase().contains("set-cookie") && !head.contains("injected"),
            "{target} reached the response head:\n{head}"
        );
    }
    // Nothing of it was asked upstream either.
    assert!(h
        .upstream
        .requests()
        .iter()
        .all(|r| !r.path.contains("injected")));
}

#[tokio::test(flavor = "multi_thread")]
async fn error_answers_never_reflect_markup() {
    let h = Harness::new().await;
    h.prime().await;
    for target in [
        "/mirror/fixture/pool/%3Cscript%3Ealert(1)%3C/script%3E.deb",
        "/mirror/fixture/dists/stable/%3Cscript%3Ealert(1)%3C/script%3E",
        "/mirror/%3Cscript%3Ealert(1)%3C/script%3E/dists/stable/InRelease",
        "/channels/%3Cscript%3Ealert(1)%3C/script%3E/dists/stable/InRelease",
        "/api/v1/channels/%3Cscript%3Ealert(1)%3C/script%3E/history",
    ] {
        let response = raw_response(&h.app.url, target).await;
        let (head, body) = head_and_body(&response);
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((400..500).contains(&status), "{target} → {status}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{target}: an HTML error page\n{head}"
        );
        assert!(
            !body.contains("<script"),
            "{target}: markup reflected in the error answer:\n{body}"
        );
    }
}
