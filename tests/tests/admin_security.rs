//! The admin control plane's guards, on SQLite and on PostgreSQL: every admin route refuses a
//! caller without the token (T45, walked from the OpenAPI table the router is built from), and
//! the audit log cannot be changed through the database the application uses, yet can be
//! exported whole (T48).

use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use std::time::Duration;

both_backends!(
    every_admin_route_answers_401_without_a_valid_token,
    audit_log_is_append_only_and_exports_whole,
);

fn admin_token(s: &Setup) -> String {
    fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A concrete URL for a route template: every `{param}` becomes `x`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

async fn every_admin_route_answers_401_without_a_valid_token(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token = admin_token(&s);
    let document: serde_json::Value = client()
        .get(format!("{}/api/v1/openapi.json", s.app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            if path == "/api/v1/openapi.json" {
                continue; // the one public route
            }
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    // The table really is walked (not an empty or truncated document).
    assert!(operations.len() >= 44, "{operations:?}");
    // The fleet's admin routes are in the same table, under the same guard.
    assert!(operations
        .iter()
        .any(|(_, p)| p == "/api/v1/fleet/hosts/{host}/revoke"));

    let wrong_credentials: [Option<String>; 5] = [
        None,
        Some("Bearer wrong".into()),
        Some(format!("Bearer {}x", token)),
        Some(format!("Basic {token}")),
        Some("Bearer ".into()),
    ];
    for (method, template) in &operations {
        let url = format!("{}{}", s.app.url, concrete(template));
        let method: reqwest::Method = method.parse().unwrap();
        for credential in &wrong_credentials {
            // A body the handler would accept: the guard must answer before it is read.
            let mut request = client()
                .request(method.clone(), &url)
                .json(&serde_json::json!({"source": "fixture", "snapshot": "x"}));
            if let Some(c) = credential {
                request = request.header("authorization", c);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_eq!(
                status, 401,
                "{method} {template} with {credential:?} answered {status}"
            );
            assert_eq!(body["code"], "unauthorized", "{method} {template}");
        }
        // With the token the route exists (the document matches the router): whatever the
        // answer, it is not the router's bare 404 or 405.
        let response = client()
            .request(method.clone(), &url)
            .bearer_auth(&token)
            .query(&[("dry_run", "true")])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            status != 405 && !(status == 404 && body.is_empty()),
            "{method} {template} is in the OpenAPI document but not routed ({status})"
        );
    }

    // A path under the API that no route matches is not an open door either.
    let r = client()
        .get(format!(
            "{}/api/v1/channels/testing/history/extra",
            s.app.url
        ))
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 401 || r.status() == 404,
        "unrouted path: {}",
        r.status()
    );
}

async fn audit_log_is_append_only_and_exports_whole(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token = admin_token(&s);
    // Audited changes: a sync, a promotion, a hold.
    cli(&s, &token, &["sync"]).unwrap();
    cli(
        &s,
        &token,
        &[
            "promote",
            "--from",
            "testing",
            "--to",
            "approved",
            "--comment",
            "CAB 9",
        ],
    )
    .unwrap();
    cli(
        &s,
        &token,
        &["hold", "approved", "hello", "--comment", "pinned"],
    )
    .unwrap();

    // The export: every entry, oldest first, one JSON object per line; the CLI writes the
    // same lines the API streams.
    let response = client()
        .get(format!("{}/api/v1/audit/export", s.app.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let exported = response.text().await.unwrap();
    let entries: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["entry"]["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"sync") && actions.contains(&"promote"),
        "{actions:?}"
    );
    assert!(actions.contains(&"hold"), "{actions:?}");
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let via_cli = cli(&s, &token, &["audit", "--export"]).unwrap();
    assert_eq!(via_cli, exported);
    // Resuming after the first entry gives the rest.
    let rest = cli(
        &s,
        &token,
        &["audit", "--export", "--after-id", &ids[0].to_string()],
    )
    .unwrap();
    assert_eq!(rest.lines().count(), entries.len() - 1);

    // The database the application writes refuses to change or delete an entry.
    let url = if s._db.url.is_empty() {
        format!(
            "sqlite://{}",
            s.app.data_dir().join("catalog.sqlite3").display()
        )
    } else {
        s._db.url.clone()
    };
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    for statement in [
        "UPDATE audit_log SET comment = 'nothing happened'",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::Executor::execute(&mut conn, statement)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    if backend == Backend::Postgres {
        let err = sqlx::Executor::execute(&mut conn, "TRUNCATE audit_log")
            .await
            .expect_err("truncate");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    let after = cli(&s, &token, &["audit", "--export"]).unwrap();
    assert_eq!(after, exported, "nothing changed");
}
