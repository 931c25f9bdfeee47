//! Catalog storage tests. Every scenario runs on both backends, always: a fresh SQLite file
//! and a fresh PostgreSQL database (on 127.0.0.1:5432, or `APTGATE_TEST_POSTGRES_URL`).

use aptgate_channels::catalog::*;
use aptgate_tests::db::{Backend, TestDatabase};
use std::time::Instant;

/// A catalog on a database that exists only for one test.
struct TestDb {
    catalog: Catalog,
    url: String,
    _dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl TestDb {
    async fn sqlite() -> TestDb {
        Self::open(Backend::Sqlite).await
    }

    async fn postgres() -> TestDb {
        Self::open(Backend::Postgres).await
    }

    async fn open(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(backend, dir.path()).await;
        // An empty URL means the default: SQLite in the data directory.
        let url = if db.url.is_empty() {
            Catalog::sqlite_url(dir.path())
        } else {
            db.url.clone()
        };
        let catalog = Catalog::open(&url).await.unwrap();
        TestDb {
            catalog,
            url,
            _dir: dir,
            _db: db,
        }
    }

    async fn finish(self) {
        self.catalog.close().await;
    }
}

/// Turns `async fn scenario(Catalog)` into a SQLite and a PostgreSQL test, each on a fresh
/// database. After `with_url:`, scenarios take `(Catalog, String)`: the URL, to reopen it.
macro_rules! both_backends {
    (@tests $scenario:ident, |$db:ident| $call:expr) => {
        mod $scenario {
            #[tokio::test]
            async fn sqlite() {
                let $db = super::TestDb::sqlite().await;
                $call.await;
                $db.finish().await;
            }
            #[tokio::test]
            async fn postgres() {
                let $db = super::TestDb::postgres().await;
                $call.await;
                $db.finish().await;
            }
        }
    };
    (with_url: $($scenario:ident),* $(,)?) => {$(
        both_backends!(@tests $scenario, |db| super::$scenario(db.catalog.clone(), db.url.clone()));
    )*};
    ($($scenario:ident),* $(,)?) => {$(
        both_backends!(@tests $scenario, |db| super::$scenario(db.catalog.clone()));
    )*};
}

both_backends!(with_url: migrations_apply_once_and_reopen_cleanly);

both_backends!(
    packages_are_recorded_once_and_keep_their_first_sighting,
    sixty_thousand_packages_upsert_in_one_call,
    snapshots_round_trip,
    audit_entries_commit_and_roll_back_with_their_change,
    audit_filters,
    channels_move_only_from_the_generation_they_were_read_at,
    holds_are_added_once_and_released,
    story,
);

fn pkg(i: usize, version: &str) -> NewPackage {
    let name = format!("pkg-{i:05}");
    NewPackage {
        // A stand-in digest, distinct per (package, version).
        sha256: format!(
            "{:032x}{:032x}",
            i,
            version
                .bytes()
                .fold(0u128, |h, b| h.wrapping_mul(131).wrapping_add(b.into()))
        ),
        source: name.clone(),
        pool_path: format!("pool/main/p/{name}/{name}_{version}_amd64.deb"),
        control: format!("Package: {name}\nVersion: {version}\nArchitecture: amd64\n"),
        origin: "debian".into(),
        name,
        version: version.into(),
        architecture: "amd64".into(),
        size: 1000 + i as u64,
    }
}

fn snapshot(id: &str, at: i64) -> Snapshot {
    Snapshot {
        id: id.into(),
        name: None,
        created_at: at,
        kind: SnapshotKind::Sync,
        description: format!("sync at {at}"),
        manifest_sha256: format!("{:064x}", at),
        sources: vec!["debian".into(), "debian-security".into()],
        deleted_at: None,
        used_at: at,
    }
}

fn audit(at: i64, action: AuditAction, channel: Option<&str>) -> NewAuditEntry {
    NewAuditEntry {
        at,
        actor: "admin".into(),
        action,
        channel: channel.map(Into::into),
        from_snapshot: None,
        to_snapshot: Some("s1".into()),
        comment: Some("because".into()),
        summary: Some(r#"{"added":1}"#.into()),
    }
}

async fn migrations_apply_once_and_reopen_cleanly(c: Catalog, url: String) {
    let a = pkg(1, "1.0-1");
    c.upsert_packages(std::slice::from_ref(&a), 5)
        .await
        .unwrap();
    c.close().await;
    // Opening runs the migrations again: already applied, they change nothing.
    let first = Catalog::open(&url).await.unwrap();
    let second = Catalog::open(&url).await.unwrap();
    assert_eq!(
        first.package(&a.sha256).await.unwrap().unwrap().first_seen,
        5
    );
    assert_eq!(
        second
            .first_seen(&a.name, &a.version, "amd64")
            .await
            .unwrap(),
        Some(5)
    );
    first.close().await;
    second.close().await;
}

async fn packages_are_recorded_once_and_keep_their_first_sighting(c: Catalog) {
    let a = pkg(1, "1.0-1");
    assert_eq!(
        c.upsert_packages(&[a.clone(), pkg(2, "2.0-1")], 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        c.upsert_packages(std::slice::from_ref(&a), 200)
            .await
            .unwrap(),
        0
    );
    let stored = c.package(&a.sha256).await.unwrap().unwrap();
    assert_eq!(stored.package, a);
    assert_eq!(stored.first_seen, 100);
    // The same version rebuilt (other bytes) is a new package but not a new sighting.
    let rebuilt = NewPackage {
        sha256: format!("{:064x}", 99u128 << 100),
        ..a.clone()
    };
    assert_eq!(c.upsert_packages(&[rebuilt], 300).await.unwrap(), 1);
    assert_eq!(
        c.first_seen(&a.name, "1.0-1", "amd64").await.unwrap(),
        Some(100)
    );
    assert_eq!(c.first_seen(&a.name, "9", "amd64").await.unwrap(), None);
    assert!(c.package(&format!("{:064x}", 7)).await.unwrap().is_none());
    // Digests are lowercase hex, or lookups would silently miss.
    let shouting = NewPackage {
        sha256: a.sha256.to_uppercase().replace('0', "A"),
        ..a.clone()
    };
    assert!(matches!(
        c.upsert_packages(&[shouting], 400).await,
        Err(CatalogError::InvalidDigest { .. })
    ));
}

async fn sixty_thousand_packages_upsert_in_one_call(c: Catalog) {
    let packages: Vec<_> = (0..60_000).map(|i| pkg(i, "1.0-1")).collect();
    let started = Instant::now();
    assert_eq!(c.upsert_packages(&packages, 1).await.unwrap(), 60_000);
    eprintln!(
        "{:?}: 60k new packages in {:?}",
        c.backend(),
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(c.upsert_packages(&packages, 2).await.unwrap(), 0);
    eprintln!(
        "{:?}: 60k known packages in {:?}",
        c.backend(),
        started.elapsed()
    );
    assert_eq!(
        c.package(&packages[59_999].sha256)
            .await
            .unwrap()
            .unwrap()
            .first_seen,
        1
    );
}

async fn snapshots_round_trip(c: Catalog) {
    let mut tx = c.begin().await.unwrap();
    let mut named = snapshot("s2", 20);
    named.name = Some("before-upgrade".into());
    named.kind = SnapshotKind::Pull;
    tx.insert_snapshot(&snapshot("s1", 10)).await.unwrap();
    tx.insert_snapshot(&named).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(c.snapshot("s2").await.unwrap().unwrap(), named);
    assert_eq!(
        c.snapshot_by_name("before-upgrade").await.unwrap().unwrap(),
        named
    );
    assert!(c.snapshot("before-upgrade").await.unwrap().is_none());
    assert!(c.snapshot("nope").await.unwrap().is_none());
    let ids: Vec<_> = c
        .list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    // Ids and names are unique.
    let mut tx = c.begin().await.unwrap();
    assert!(tx.insert_snapshot(&snapshot("s1", 30)).await.is_err());
}

async fn audit_entries_commit_and_roll_back_with_their_change(c: Catalog) {
    let mut tx = c.begin().await.unwrap();
    tx.insert_snapshot(&snapshot("kept", 1)).await.unwrap();
    tx.append_audit(&audit(1, AuditAction::Snapshot, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = c.begin().await.unwrap();
    tx.insert_snapshot(&snapshot("dropped", 2)).await.unwrap();
    tx.append_audit(&audit(2, AuditAction::Snapshot, None))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // Dropping a transaction without commit also rolls back.
    {
        let mut tx = c.begin().await.unwrap();
        tx.append_audit(&audit(3, AuditAction::Promote, Some("approved")))
            .await
            .unwrap();
    }

    assert!(c.snapshot("kept").await.unwrap().is_some());
    assert!(c.snapshot("dropped").await.unwrap().is_none());
    let entries = c.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry, audit(1, AuditAction::Snapshot, None));
}

async fn audit_filters(c: Catalog) {
    let mut tx = c.begin().await.unwrap();
    for (at, action, channel) in [
        (10, AuditAction::Sync, None),
        (20, AuditAction::Promote, Some("approved")),
        (30, AuditAction::Hold, Some("approved")),
        (40, AuditAction::Promote, Some("testing")),
    ] {
        tx.append_audit(&audit(at, action, channel)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let at = |f: AuditFilter| {
        let c = c.clone();
        async move {
            c.audit(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.entry.at)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(at(AuditFilter::default()).await, [40, 30, 20, 10]);
    let approved = AuditFilter {
        channel: Some("approved".into()),
        ..Default::default()
    };
    assert_eq!(at(approved).await, [30, 20]);
    let promotions = AuditFilter {
        action: Some(AuditAction::Promote),
        since: Some(25),
        ..Default::default()
    };
    assert_eq!(at(promotions).await, [40]);
    let latest = AuditFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(at(latest).await, [40]);
}

/// A week in the life: a sync, a later sync with an upgrade, a promotion, the history.
async fn story(c: Catalog) {
    let day = 86_400;
    let monday: Vec<_> = (0..50).map(|i| pkg(i, "1.0-1")).collect();
    let mut tx = c.begin().await.unwrap();
    assert_eq!(tx.upsert_packages(&monday, day).await.unwrap(), 50);
    tx.insert_snapshot(&snapshot("mon", day)).await.unwrap();
    tx.append_audit(&audit(day, AuditAction::Sync, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut thursday = monday.clone();
    thursday[7] = pkg(7, "1.0-2");
    let mut tx = c.begin().await.unwrap();
    assert_eq!(tx.upsert_packages(&thursday, 4 * day).await.unwrap(), 1);
    tx.insert_snapshot(&snapshot("thu", 4 * day)).await.unwrap();
    tx.append_audit(&audit(4 * day, AuditAction::Sync, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = c.begin().await.unwrap();
    let mut promotion = audit(5 * day, AuditAction::Promote, Some("approved"));
    promotion.from_snapshot = Some("mon".into());
    promotion.to_snapshot = Some("thu".into());
    tx.append_audit(&promotion).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        c.first_seen("pkg-00007", "1.0-2", "amd64").await.unwrap(),
        Some(4 * day)
    );
    assert_eq!(
        c.first_seen("pkg-00007", "1.0-1", "amd64").await.unwrap(),
        Some(day)
    );
    assert_eq!(c.list_snapshots().await.unwrap().len(), 2);
    let history = c
        .audit(&AuditFilter {
            channel: Some("approved".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(history[0].entry, promotion);
}

fn test_snapshot(id: &str) -> Snapshot {
    Snapshot {
        id: id.into(),
        name: None,
        created_at: 1_700_000_000,
        kind: SnapshotKind::Sync,
        description: String::new(),
        manifest_sha256: format!("{:0>64}", id.len()),
        sources: vec!["debian".into()],
        deleted_at: None,
        used_at: 1_700_000_000,
    }
}

fn a_move(channel: &str, generation: i64, snapshot: &str, action: ChannelAction) -> ChannelMove {
    ChannelMove {
        channel: channel.into(),
        expected_generation: generation,
        snapshot_id: snapshot.into(),
        publication_sha256: format!("{:0>64x}", generation + 1),
        at: 1_700_000_100 + generation,
        action,
        actor: "admin".into(),
        comment: Some(format!("move {generation}")),
    }
}

async fn channels_move_only_from_the_generation_they_were_read_at(catalog: Catalog) {
    for id in ["s1", "s2"] {
        catalog.insert_snapshot(&test_snapshot(id)).await.unwrap();
    }
    catalog.ensure_channel("approved", 10).await.unwrap();
    catalog.ensure_channel("approved", 20).await.unwrap();
    let fresh = catalog.channel("approved").await.unwrap().unwrap();
    assert_eq!((fresh.generation, fresh.snapshot_id.as_deref()), (0, None));
    assert_eq!(
        fresh.updated_at, 10,
        "ensure_channel must not touch an existing channel"
    );

    let mut tx = catalog.begin().await.unwrap();
    let g = tx
        .move_channel(&a_move("approved", 0, "s1", ChannelAction::Promote))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(g, 1);

    // A second mover that read generation 0 loses, and changes nothing.
    let mut tx = catalog.begin().await.unwrap();
    let stale = tx
        .move_channel(&a_move("approved", 0, "s2", ChannelAction::Promote))
        .await;
    assert!(
        matches!(stale, Err(CatalogError::ChannelMoved { expected: 0, .. })),
        "{stale:?}"
    );
    drop(tx);
    let now = catalog.channel("approved").await.unwrap().unwrap();
    assert_eq!(
        (now.generation, now.snapshot_id.as_deref()),
        (1, Some("s1"))
    );

    let mut tx = catalog.begin().await.unwrap();
    tx.move_channel(&a_move("approved", 1, "s2", ChannelAction::Promote))
        .await
        .unwrap();
    tx.move_channel(&a_move("approved", 2, "s1", ChannelAction::Rollback))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let history = catalog.channel_history("approved", 10).await.unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|h| (h.generation, h.snapshot_id.as_str(), h.action))
        .collect();
    assert_eq!(
        seen,
        [
            (3, "s1", ChannelAction::Rollback),
            (2, "s2", ChannelAction::Promote),
            (1, "s1", ChannelAction::Promote)
        ]
    );
    assert_eq!(history[0].comment.as_deref(), Some("move 2"));
    assert_eq!(
        catalog.channel_history("approved", 1).await.unwrap().len(),
        1
    );

    // A move to a snapshot that does not exist is refused by the schema.
    let mut tx = catalog.begin().await.unwrap();
    assert!(tx
        .move_channel(&a_move("approved", 3, "nope", ChannelAction::Promote))
        .await
        .is_err());
    drop(tx);
    assert!(catalog.channel("missing").await.unwrap().is_none());
    let names: Vec<_> = catalog
        .list_channels()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["approved"]);
}

async fn holds_are_added_once_and_released(catalog: Catalog) {
    catalog.ensure_channel("approved", 1).await.unwrap();
    let hold = |package: &str| Hold {
        package: package.into(),
        at: 5,
        actor: "admin".into(),
        comment: Some("waiting for the vendor fix".into()),
    };
    let mut tx = catalog.begin().await.unwrap();
    assert!(tx.add_hold("approved", &hold("openssl")).await.unwrap());
    assert!(!tx.add_hold("approved", &hold("openssl")).await.unwrap());
    assert!(tx.add_hold("approved", &hold("curl")).await.unwrap());
    tx.commit().await.unwrap();
    let held: Vec<_> = catalog
        .holds("approved")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.package)
        .collect();
    assert_eq!(held, ["curl", "openssl"]);

    let mut tx = catalog.begin().await.unwrap();
    assert!(tx.remove_hold("approved", "openssl").await.unwrap());
    assert!(!tx.remove_hold("approved", "openssl").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(catalog.holds("approved").await.unwrap().len(), 1);
    // Holds belong to a channel that exists.
    let mut tx = catalog.begin().await.unwrap();
    assert!(tx.add_hold("nowhere", &hold("x")).await.is_err());
}
