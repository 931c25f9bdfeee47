//! Hostile request paths: encoded CR/LF never becomes a response header (T10), and error
//! answers never reflect markup a browser would run (T11).

use aptgate_tests::app::{raw_get, Harness};

/// The response to `target`, which must be a client error: its head and body.
async fn refused(h: &Harness, target: &str) -> (String, String) {
    let (status, response) = raw_get(&h.app.url, target).await;
    assert!((400..500).contains(&status), "{target} → {status}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.to_owned(), body.to_owned())
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
        let (head, _) = refused(&h, target).await;
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
        let (head, body) = refused(&h, target).await;
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
