//! The canonical server's replica feed in the catalog, on SQLite and on PostgreSQL: its `seq`
//! rises with every change replicas must see (sync-followed moves, promotion, re-signing,
//! rollback), stays put while nothing changes, is shared by a second server instance on the
//! same catalog, and the signed manifest verifies against the channel key and nothing else.
//! A replica token posts reports for itself and, capped, for its children.

use aptgate_channels::Actor;
use aptgate_mirror::keyring::Keyring;
use aptgate_replicas::canonical::MAX_FORWARDED_PER_REPLICA;
use aptgate_replicas::protocol::{verify_manifest, ReplicaReport};
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::replicas::fingerprint;
use std::time::Duration;

both_backends!(the_feed_seq_rises_with_every_change_and_is_shared_and_signed);

async fn the_feed_seq_rises_with_every_change_and_is_shared_and_signed(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    let feed = s.app.state.replicas.clone();
    let channels = s.app.state.channels.clone();
    let seq = || async { feed.current().await.unwrap().0 };
    let nothing = seq().await;
    assert_eq!(seq().await, nothing, "nothing changed, same seq");

    s.sync().await;
    let synced = seq().await;
    assert!(synced > nothing, "testing followed the sync");
    s.promote(&[]).await.unwrap();
    let promoted = seq().await;
    assert!(promoted > synced, "promotion");
    // Signatures made within one second are byte-identical (the date has seconds): re-sign
    // in the next second, or nothing would change for replicas to see.
    let signed_at = aptgate_channels::now();
    while aptgate_channels::now() == signed_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    channels
        .resign("approved", &Actor::new("test"))
        .await
        .unwrap();
    let resigned = seq().await;
    assert!(resigned > promoted, "re-signing (a new InRelease)");
    channels
        .rollback("testing", None, &Actor::new("test"))
        .await
        .ok();
    let after = seq().await;
    assert!(after >= resigned);
    assert_eq!(seq().await, after);

    // A second server instance on the same catalog sees the same position.
    let other = aptgate::AppState::open(&s.app.config, &s.app.config.sources)
        .await
        .unwrap();
    let (other_seq, signed) = other.replicas.current().await.unwrap();
    assert_eq!(other_seq, after);

    // Signed with the channel key: verifies against it, and against no other key.
    let fpr = fingerprint(&s);
    let keyring = Keyring::load(&[], &[channels.public_keys().unwrap()])
        .unwrap()
        .pinned(&fpr);
    let manifest = verify_manifest(&keyring, &fpr, &signed).unwrap();
    assert_eq!(manifest.seq, after);
    assert!(manifest.channels.contains_key("approved"));
    let foreign = aptgate_tests::signing::TestKey::Other.armored_public_key();
    let stranger = Keyring::load(&[], &[foreign.to_owned()]).unwrap();
    assert!(verify_manifest(&stranger, "other", &signed).is_err());
    assert!(
        keyring
            .pinned("0000000000000000000000000000000000000000")
            .is_empty(),
        "only the pinned fingerprint is trusted"
    );

    // A replica token works until it is revoked (audited).
    let token = aptgate_tests::replicas::create_token(&s, "branch-9").await;
    let manifest = |token: String| {
        let url = format!("{}/api/v1/replica/manifest", s.app.url);
        async move {
            aptgate_tests::app::client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(manifest(token.clone()).await, 200);
    let admin = aptgate_tests::replicas::admin_token(s.app.data_dir());
    cli(&s, &admin, &["replica", "token", "revoke", "branch-9"]).unwrap();
    assert_eq!(manifest(token).await, 401);
    let audit = cli(&s, &admin, &["audit", "--json"]).unwrap();
    assert!(audit.contains("replica_token_revoked"), "{audit}");

    // Reports a replica forwards for its children are capped: a token cannot grow the table
    // without bound; a silent child's row makes room for a new one.
    let token = aptgate_tests::replicas::create_token(&s, "hub").await;
    let post = |name: String| {
        let url = format!("{}/api/v1/replica/status", s.app.url);
        let token = token.clone();
        async move {
            let report = ReplicaReport {
                name,
                parent: "http://example.org".into(),
                ..Default::default()
            };
            let r = aptgate_tests::app::client()
                .post(url)
                .bearer_auth(token)
                .json(&report)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(post("hub".into()).await.0, 204, "its own report");
    for i in 0..MAX_FORWARDED_PER_REPLICA {
        assert_eq!(post(format!("child-{i}")).await.0, 204);
    }
    let (status, body) = post("one-too-many".into()).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("child replicas"), "{body}");
    assert_eq!(
        post("child-7".into()).await.0,
        204,
        "a known child still reports"
    );
    assert_eq!(
        post("hub".into()).await.0,
        204,
        "and so does the replica itself"
    );
    sqlx::query("UPDATE replica_reports SET received_at = 0 WHERE name = 'hub/child-3'")
        .execute(channels.catalog().pool())
        .await
        .unwrap();
    assert_eq!(
        post("one-too-many".into()).await.0,
        204,
        "a silent child made room"
    );
    let list = cli(&s, &admin, &["replica", "list", "--json"]).unwrap();
    assert!(list.contains("hub/one-too-many"), "{list}");
    assert!(!list.contains("hub/child-3\""), "the silent one went");
}

#[test]
fn replica_init_writes_a_replica_section_that_loads_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aptgate.toml");
    fs_err::write(&file, "data_dir = \"/srv/aptgate\"\n").unwrap();
    let out = aptgate_tests::app::aptgate_command()
        .args(["--config", file.to_str().unwrap(), "replica", "init"])
        .args(["--parent", "https://aptgate.example.org"])
        .args([
            "--fingerprint",
            "0123 4567 89ab cdef 0123 4567 89ab cdef 0123 4567",
        ])
        .args(["--token", "aptgate-replica-secret", "--name", "berlin"])
        .args(["--immediate", "approved"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = aptgate_config::load(&aptgate_config::LoadOptions {
        file: Some(file.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        loaded.config.data_dir,
        std::path::PathBuf::from("/srv/aptgate")
    );
    let replica = loaded.config.replica.unwrap();
    assert_eq!(
        replica.fingerprint,
        "0123456789ABCDEF0123456789ABCDEF01234567"
    );
    assert_eq!(replica.name, "berlin");
    assert_eq!(
        replica.policy("approved"),
        aptgate_config::FetchPolicy::Immediate
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs_err::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token is a secret");

    let bad = aptgate_tests::app::aptgate_command()
        .args(["--config", file.to_str().unwrap(), "replica", "init"])
        .args([
            "--parent",
            "https://aptgate.example.org",
            "--fingerprint",
            "ABCD",
        ])
        .args(["--token", "t"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("40 hex digits"));
}
