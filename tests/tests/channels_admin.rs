//! The admin side end to end, on SQLite and on PostgreSQL: the JSON API and the CLI (tokens,
//! errors, OpenAPI), signing key rotation and import, channels created through the API.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::Actor;
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use std::time::Duration;

both_backends!(
    admin_api_and_cli,
    keys_rotate_and_releases_are_resigned,
    channels_created_through_the_api_and_imported_keys,
);

async fn admin_api_and_cli(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token_file = s.app.data_dir().join("admin-token");
    let token = fs_err::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs_err::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    // Without the token: 401 with a JSON error; the OpenAPI document is public.
    let r = client()
        .get(format!("{}/api/v1/channels", s.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let openapi: serde_json::Value = client()
        .get(format!("{}/api/v1/openapi.json", s.app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/api/v1/promote"]["post"].is_object());

    // The CLI goes through the API.
    let err = cli(&s, "wrong", &["channel", "list"]).unwrap_err();
    assert!(err.contains("unauthorized"), "{err}");
    let out = cli(&s, &token, &["sync"]).unwrap();
    assert!(
        out.contains("new snapshot") && out.contains("moved testing"),
        "{out}"
    );
    let out = cli(
        &s,
        &token,
        &[
            "promote",
            "--from",
            "testing",
            "--to",
            "approved",
            "--comment",
            "CAB 7",
        ],
    )
    .unwrap();
    assert!(out.contains("approved: (unpublished) ->"), "{out}");
    let err = cli(
        &s,
        &token,
        &["promote", "--from", "testing", "--to", "nope"],
    )
    .unwrap_err();
    assert!(
        err.contains("unknown channel") && err.contains("unknown_channel"),
        "{err}"
    );
    let out = cli(
        &s,
        &token,
        &["hold", "approved", "hello", "--comment", "vendor bug"],
    )
    .unwrap();
    assert!(out.contains("now held"), "{out}");
    let out = cli(&s, &token, &["channel", "history", "approved"]).unwrap();
    assert!(out.contains("promote") && out.contains("CAB 7"), "{out}");
    let out = cli(&s, &token, &["audit", "--channel", "approved", "--json"]).unwrap();
    let actions: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].to_string())
        .collect();
    assert_eq!(actions, ["\"hold\"", "\"promote\""]);
    let key = cli(&s, &token, &["key", "show"]).unwrap();
    assert!(
        key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{key}"
    );
    let snapshots = cli(&s, &token, &["snapshot", "list", "--json"]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&snapshots).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let shown = cli(&s, &token, &["snapshot", "show", &id]).unwrap();
    assert!(shown.contains("main/binary-amd64"), "{shown}");
    let diff = cli(&s, &token, &["snapshot", "diff", &id, &id]).unwrap();
    assert!(
        diff.contains("0 added, 0 removed, 0 upgraded, 0 downgraded"),
        "{diff}"
    );
}

async fn keys_rotate_and_releases_are_resigned(backend: Backend) {
    let spec = FixtureSpec::default().large_payload(64 << 10);
    let mut p = parts(backend, Duration::ZERO, spec).await;
    p.config.publish.valid_until = Duration::from_secs(3600);
    let s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    let get = |path: &str| {
        let url = format!("{}/channels/testing/dists/stable/{path}", s.app.url);
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    let in_release = String::from_utf8(get("InRelease").await.to_vec()).unwrap();
    assert!(in_release.contains("Valid-Until: "), "{in_release}");
    let packages = get("main/binary-amd64/Packages.xz").await;

    // Not due yet: nothing is re-signed; a forced re-sign changes only the signed Release.
    assert!(channels.resign_expiring().await.unwrap().is_empty());
    // Date and Valid-Until have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    channels
        .resign("testing", &Actor::new("test"))
        .await
        .unwrap();
    let resigned = String::from_utf8(get("InRelease").await.to_vec()).unwrap();
    assert_ne!(resigned, in_release);
    assert_eq!(get("main/binary-amd64/Packages.xz").await, packages);
    let history = channels.history("testing", 10).await.unwrap();
    assert_eq!(history[0].action.as_str(), "resign");
    assert_eq!(history[0].snapshot_id, history[1].snapshot_id);

    // Rotation: a host that only trusts the old key and one that got both keys.
    let old_key_host = s.host("old-key", "testing");
    candidate(&old_key_host, "hello").await;
    let old = channels.keys()[0].fingerprint.clone();
    let added = channels.add_key(&Actor::new("test")).await.unwrap();
    let both = s.dir.path().join("both.asc");
    fetch_key(&s.app.url, &both).await;
    let new_host = host_at(s.dir.path(), "new-key", &s.app.url, "testing", &both);
    assert_eq!(candidate(&old_key_host, "hello").await, "2.10-3");
    assert_eq!(candidate(&new_host, "hello").await, "2.10-3");

    // The end of the rotation: the old key stops signing; the last key cannot be retired.
    channels
        .retire_key(&old, &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(candidate(&new_host, "hello").await, "2.10-3");
    let refused = old_key_host.update().await.unwrap();
    assert!(
        !refused.success(),
        "a host trusting only the retired key must fail"
    );
    let err = channels
        .retire_key(&added.fingerprint, &Actor::new("test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
    let audit = channels
        .catalog()
        .audit(&AuditFilter {
            action: Some(AuditAction::Key),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 3, "generated, added, retired: {audit:?}");
}

async fn channels_created_through_the_api_and_imported_keys(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    s.sync().await;
    cli(
        &s,
        &token,
        &[
            "channel",
            "create",
            "site-berlin",
            "--promotes-from",
            "testing",
            "--min-soak",
            "0s",
        ],
    )
    .unwrap();
    let err = cli(&s, &token, &["channel", "create", "site-berlin"]).unwrap_err();
    assert!(err.contains("exists"), "{err}");
    let err = cli(
        &s,
        &token,
        &["channel", "create", "site-paris", "--promotes-from", "nope"],
    )
    .unwrap_err();
    assert!(err.contains("unknown_channel"), "{err}");
    let err = cli(&s, &token, &["channel", "create", "Bad/Name"]).unwrap_err();
    assert!(err.contains("channel name"), "{err}");
    cli(
        &s,
        &token,
        &["promote", "--from", "testing", "--to", "site-berlin"],
    )
    .unwrap();
    let host = s.host("berlin", "site-berlin");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    // It survives a restart (another instance opening the same catalog sees it).
    let other = aptgate::AppState::open(&s.app.config, &s.app.config.sources)
        .await
        .unwrap();
    assert!(other
        .channels
        .channel_configs()
        .await
        .iter()
        .any(|c| c.name.as_str() == "site-berlin"));

    // Import a key made elsewhere (gpg, no passphrase): it signs from now on.
    let gnupg = s.dir.path().join("gnupg");
    fs_err::create_dir_all(&gnupg).unwrap();
    let gpg = |args: &[&str]| {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "imported <imported@example.org>",
        "rsa2048",
        "sign",
        "never",
    ]);
    let secret = s.dir.path().join("secret.asc");
    fs_err::write(&secret, gpg(&["--armor", "--export-secret-keys"])).unwrap();
    let public = s.dir.path().join("imported.asc");
    fs_err::write(&public, gpg(&["--armor", "--export"])).unwrap();
    let out = cli(&s, &token, &["key", "import", secret.to_str().unwrap()]).unwrap();
    assert!(out.contains("imported signing key"), "{out}");
    let listed = cli(&s, &token, &["key", "list"]).unwrap();
    assert_eq!(
        listed.lines().count(),
        3,
        "header, generated, imported:\n{listed}"
    );
    let trusting_imported = host_at(
        s.dir.path(),
        "imported-only",
        &s.app.url,
        "site-berlin",
        &public,
    );
    assert_eq!(candidate(&trusting_imported, "foo-utils").await, "1.4.2-1");
    let err = cli(&s, &token, &["key", "import", secret.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("already"), "{err}");
}
