//! The fleet's control plane under attack, on SQLite and PostgreSQL: one host's key cannot act
//! as another host (403, audited); replayed and stale requests are refused; revoked hosts,
//! exhausted and expired tokens are refused; unauthenticated calls get 401; malformed
//! inventories (bad UTF-8, a gzip bomb, wrong types, a wrong digest) get 400 and change nothing.

use aptgate_agent::protocol::{self, CommandResult, HostKey, InventoryUpload};
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::fleet::*;
use serde_json::json;
use std::time::Duration;

both_backends!(
    a_host_key_cannot_act_as_another_host,
    replayed_stale_and_revoked_requests_are_refused,
    exhausted_expired_and_forged_enrollments_are_refused,
    unauthenticated_agent_and_admin_calls_get_401,
    malformed_inventories_get_400_and_change_nothing,
);

async fn setup(backend: Backend) -> (Setup, Admin) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(1024),
    )
    .await;
    p.config.fleet.wait = Duration::from_secs(2);
    let s = Setup::from_parts(p).await;
    let admin = Admin::new(&s.app.url, s.app.data_dir());
    (s, admin)
}

async fn enrolled(s: &Setup, admin: &Admin, name: &str) -> TestAgent {
    let token = admin.token(json!({})).await;
    let mut agent = TestAgent::new(&s.app.url, name, labels(&[("name", name)]));
    agent.enroll(&token).await;
    agent
}

async fn a_host_key_cannot_act_as_another_host(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let a = enrolled(&s, &admin, "a").await;
    let b = enrolled(&s, &admin, "b").await;
    admin
        .ok(
            "POST",
            "/api/v1/fleet/commands",
            Some(json!({"host": b.host_id, "kind": "upgrade"})),
        )
        .await;

    // A signs with its own key but names B: refused, audited.
    let checkin = serde_json::to_vec(&a.checkin_request(None)).unwrap();
    let forged = a
        .send_as(
            &a.key,
            &b.host_id,
            "POST",
            protocol::CHECKIN_PATH,
            checkin,
            &[],
        )
        .await;
    assert_eq!(
        (forged.status, forged.code()),
        (403, "bad_signature"),
        "{}",
        forged.body
    );
    let packages = vec![package("evil", "amd64", "1")];
    let upload = serde_json::to_vec(&InventoryUpload {
        digest: protocol::inventory_digest(&packages),
        packages,
    })
    .unwrap();
    let forged = a
        .send_as(
            &a.key,
            &b.host_id,
            "PUT",
            protocol::INVENTORY_PATH,
            gzip(&upload),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let forged = a
        .send_as(
            &a.key,
            &b.host_id,
            "GET",
            &format!("{}?rev=0", protocol::WAIT_PATH),
            Vec::new(),
            &[],
        )
        .await;
    assert_eq!(forged.status, 403);
    let refused = admin.audit("refused").await;
    assert!(refused.len() >= 3, "{refused:?}");
    assert_eq!(refused[0]["entry"]["actor"], format!("host:{}", b.host_id));

    // B's inventory is untouched; A's own check-in never carries B's command, and A cannot
    // finish it.
    let show = admin
        .ok("GET", &format!("/api/v1/fleet/hosts/{}", b.host_id), None)
        .await;
    assert!(show["inventory"].is_null(), "{show}");
    let answer = a.checkin(&a.checkin_request(None)).await;
    assert!(answer.commands.is_empty());
    let b_command = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/commands?host={}", b.host_id),
            None,
        )
        .await[0]["id"]
        .as_i64()
        .unwrap();
    let mut report = a.checkin_request(None);
    report.results = vec![CommandResult {
        id: b_command,
        exit_code: 0,
        output: "forged".into(),
        started_at: 0,
        finished_at: 0,
    }];
    a.checkin(&report).await;
    let commands = admin
        .ok(
            "GET",
            &format!("/api/v1/fleet/commands?host={}", b.host_id),
            None,
        )
        .await;
    assert_eq!(commands[0]["status"], "queued");
    // B gets its own command.
    assert_eq!(b.checkin(&b.checkin_request(None)).await.commands.len(), 1);
}

async fn replayed_stale_and_revoked_requests_are_refused(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let a = enrolled(&s, &admin, "a").await;
    let body = serde_json::to_vec(&a.checkin_request(None)).unwrap();
    let headers = a.key.sign_request(
        &a.host_id,
        "POST",
        protocol::CHECKIN_PATH,
        unix_now(),
        &body,
    );
    let first = a
        .send_headers("POST", protocol::CHECKIN_PATH, body.clone(), &headers, &[])
        .await;
    assert_eq!(first.status, 200);
    let replay = a
        .send_headers("POST", protocol::CHECKIN_PATH, body.clone(), &headers, &[])
        .await;
    assert_eq!((replay.status, replay.code()), (401, "replayed"));
    assert!(admin
        .audit("refused")
        .await
        .iter()
        .any(|e| e["entry"]["comment"] == "replayed nonce"));
    // A timestamp outside the window.
    let stale = a.key.sign_request(
        &a.host_id,
        "POST",
        protocol::CHECKIN_PATH,
        unix_now() - 3600,
        &body,
    );
    let answer = a
        .send_headers("POST", protocol::CHECKIN_PATH, body.clone(), &stale, &[])
        .await;
    assert_eq!((answer.status, answer.code()), (401, "stale_request"));
    // The path and query are signed: a request moved elsewhere fails.
    let moved = a.key.sign_request(
        &a.host_id,
        "GET",
        &format!("{}?rev=1", protocol::WAIT_PATH),
        unix_now(),
        b"",
    );
    let answer = a
        .send_headers(
            "GET",
            &format!("{}?rev=0", protocol::WAIT_PATH),
            Vec::new(),
            &moved,
            &[],
        )
        .await;
    assert_eq!(answer.status, 403);

    // Revoked: its next request is refused.
    admin
        .ok(
            "POST",
            &format!("/api/v1/fleet/hosts/{}/revoke", a.host_id),
            Some(json!({"comment": "stolen"})),
        )
        .await;
    let answer = a.try_checkin(&a.checkin_request(None)).await;
    assert_eq!((answer.status, answer.code()), (403, "revoked"));
    assert_eq!(a.wait(0).await.status, 403);
    assert!(admin
        .audit("host")
        .await
        .iter()
        .any(|e| e["entry"]["comment"] == "stolen"));
}

async fn exhausted_expired_and_forged_enrollments_are_refused(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let once = admin.token(json!({"uses": 1})).await;
    TestAgent::new(&s.app.url, "a", labels(&[]))
        .enroll(&once)
        .await;
    let answer = TestAgent::new(&s.app.url, "b", labels(&[]))
        .try_enroll(&once)
        .await;
    assert_eq!((answer.status, answer.code()), (403, "token_exhausted"));

    let brief = admin.token(json!({"expires": "1s"})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = TestAgent::new(&s.app.url, "c", labels(&[]))
        .try_enroll(&brief)
        .await;
    assert_eq!((answer.status, answer.code()), (403, "token_expired"));

    let answer = TestAgent::new(&s.app.url, "d", labels(&[]))
        .try_enroll("aptgate-enroll-nope")
        .await;
    assert_eq!((answer.status, answer.code()), (401, "bad_token"));

    // Proof of possession: a request signed by another key than the one it enrolls.
    let good = admin.token(json!({})).await;
    let agent = TestAgent::new(&s.app.url, "e", labels(&[]));
    let body = serde_json::to_vec(&protocol::EnrollRequest {
        token: good.clone(),
        public_key: agent.key.public_hex(),
        facts: agent.facts(),
        labels: Default::default(),
    })
    .unwrap();
    let answer = agent
        .send_as(
            &HostKey::generate(),
            "",
            "POST",
            protocol::ENROLL_PATH,
            body,
            &[],
        )
        .await;
    assert_eq!((answer.status, answer.code()), (403, "bad_signature"));
    // Bad labels are refused with a clear code.
    let mut bad = TestAgent::new(&s.app.url, "f", labels(&[("bad key", "x")]));
    let answer = bad.try_enroll(&good).await;
    assert_eq!((answer.status, answer.code()), (400, "bad_label"));
    let hosts = admin.ok("GET", "/api/v1/fleet/hosts", None).await;
    assert_eq!(
        hosts.as_array().unwrap().len(),
        1,
        "only a was enrolled: {hosts}"
    );
}

async fn unauthenticated_agent_and_admin_calls_get_401(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let a = enrolled(&s, &admin, "a").await;
    for (method, path) in [
        ("POST", protocol::ENROLL_PATH),
        ("POST", protocol::CHECKIN_PATH),
        ("PUT", protocol::INVENTORY_PATH),
        ("GET", "/api/v1/agent/wait?rev=0"),
    ] {
        let answer = a.send_headers(method, path, b"{}".to_vec(), &[], &[]).await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthenticated"),
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("GET", "/api/v1/fleet/hosts"),
        ("POST", "/api/v1/fleet/tokens"),
        ("GET", "/api/v1/fleet/pending"),
        ("POST", "/api/v1/fleet/poke"),
    ] {
        let status = client()
            .request(method.parse().unwrap(), format!("{}{path}", s.app.url))
            .json(&json!({"selector": ""}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{method} {path}");
    }
    assert!(
        admin.audit("token").await.len() == 1,
        "nothing created without the token"
    );
}

async fn malformed_inventories_get_400_and_change_nothing(backend: Backend) {
    let (s, admin) = setup(backend).await;
    let a = enrolled(&s, &admin, "a").await;
    let good = a.upload(vec![package("hello", "amd64", "2.10-3")]).await;

    let packages = vec![package("hello", "amd64", "2.12.1-1")];
    let digest = protocol::inventory_digest(&packages);
    let valid = serde_json::to_string(&InventoryUpload {
        digest: digest.clone(),
        packages,
    })
    .unwrap();
    let mut bad_utf8 = valid.clone().into_bytes();
    let at = bad_utf8.iter().position(|b| *b == b'h').unwrap();
    bad_utf8[at] = 0xff;
    let wrong_types = json!({"digest": digest, "packages": [{"name": 1, "architecture": "amd64"}]});
    let mismatch = valid.replace(&digest, &"0".repeat(64));
    // 64 MiB of zeros: a few dozen KiB gzip'd, twice the limit unpacked.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let control = serde_json::to_string(&InventoryUpload {
        digest: protocol::inventory_digest(&[package("a\nb", "amd64", "1")]),
        packages: vec![package("a\nb", "amd64", "1")],
    })
    .unwrap();
    for (what, body, code) in [
        ("bad UTF-8", gzip(&bad_utf8), "bad_utf8"),
        (
            "wrong types",
            gzip(wrong_types.to_string().as_bytes()),
            "bad_inventory",
        ),
        (
            "digest mismatch",
            gzip(mismatch.as_bytes()),
            "digest_mismatch",
        ),
        ("gzip bomb", bomb, "inventory_too_large"),
        ("not gzip", valid.clone().into_bytes(), "bad_inventory"),
        (
            "control characters",
            gzip(control.as_bytes()),
            "bad_inventory",
        ),
    ] {
        let answer = a.put_inventory_bytes(body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, code),
            "{what}: {}",
            answer.body
        );
    }
    let show = admin
        .ok("GET", &format!("/api/v1/fleet/hosts/{}", a.host_id), None)
        .await;
    assert_eq!(show["inventory"]["digest"], good.as_str());
    assert_eq!(show["inventory"]["packages"], 1);
    // And the server still asks for nothing new.
    let answer = a.checkin(&a.checkin_request(Some(good))).await;
    assert!(!answer.upload_inventory);
}
