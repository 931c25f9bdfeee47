//! Retention end to end, on SQLite and PostgreSQL, with real apt: `retain = "used"` promotions
//! fetch nothing, packages leaving upstream's index are rescued, fallback origins serve what
//! upstream lost, `channel verify` reports what is nowhere, garbage collection deletes only
//! what nothing needs (also while syncs, promotions and downloads run), past snapshots are
//! re-signed, and channels created on one server instance are served by another at once.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::{Actor, ChannelsError};
use aptgate_config::ChannelConfig;
use aptgate_mirror::Sha256;
use aptgate_tests::app::{aptgate_command, client, get_text, TestApp};
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::FixtureSpec;
use aptgate_tests::upstream::Upstream;
use std::time::Duration;

both_backends!(
    retain_used_promotions_fetch_nothing_and_hosts_fetch_on_demand,
    referenced_packages_leaving_upstream_are_rescued,
    fallback_origins_serve_what_upstream_lost_and_verify_reports_the_rest,
    gc_deletes_expired_snapshots_and_unreferenced_blobs_only,
    gc_racing_syncs_promotions_and_downloads_deletes_nothing_needed,
    past_snapshots_are_resigned_before_valid_until,
    channels_created_on_one_instance_are_served_by_another_at_once,
);

/// Requests the upstream saw for `pool/` files.
fn pool_requests(upstream: &Upstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("pool/"))
        .count()
}

fn token(s: &Setup) -> String {
    fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs the CLI against the test server: (exit code, stdout).
fn cli(s: &Setup, args: &[&str]) -> (i32, String) {
    let out = aptgate_command()
        .args(["--server", &s.app.url, "--token", &token(s)])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn stored(s: &Setup, sha256_hex: &str) -> bool {
    s.app
        .state
        .mirror
        .store()
        .contains(&Sha256::from_hex(sha256_hex).unwrap())
}

async fn retain_used_promotions_fetch_nothing_and_hosts_fetch_on_demand(backend: Backend) {
    let spec = FixtureSpec::default().extra_packages(200);
    let s = Setup::from_parts(parts(backend, Duration::ZERO, spec).await).await;
    s.sync().await;
    s.upstream.clear_log();
    let moved = s.promote(&[]).await.unwrap();
    assert_eq!(moved.fetched, 0);
    assert_eq!(
        pool_requests(&s.upstream),
        0,
        "a promotion with retain = \"used\" downloads nothing"
    );
    let utils = s.repo.package_in("stable", "foo-utils", "amd64").clone();
    assert!(!stored(&s, &utils.sha256));

    // A host asks: the package is fetched once, verified and stored.
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, utils.version);
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert_eq!(s.upstream.count(&utils.pool_path), 1);
    assert!(stored(&s, &utils.sha256));
    let again = s.host("host-2", "approved");
    again.update().await.unwrap().assert_success();
    again
        .download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert_eq!(
        s.upstream.count(&utils.pool_path),
        1,
        "served from the store"
    );
}

async fn referenced_packages_leaving_upstream_are_rescued(backend: Backend) {
    let mut s = Setup::new(backend, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let old = s.repo.package_in("stable", "foo-utils", "amd64").clone();
    let unreferenced_before = s.repo.package_in("stable", "hello", "amd64").clone();
    assert!(!stored(&s, &old.sha256));

    // Upstream moves on: foo-utils 1.4.2-1 leaves the index (its file stays in the pool for
    // now, as archives do). approved still references it.
    next_upstream_state(&mut s.repo);
    s.upstream.clear_log();
    let outcome = s.sync().await;
    assert!(outcome.rescued >= 1, "{outcome:?}");
    assert_eq!(outcome.rescue_failures, 0);
    assert!(stored(&s, &old.sha256), "rescued at sync");
    assert_eq!(s.upstream.count(&old.pool_path), 1);
    assert!(
        !stored(&s, &unreferenced_before.sha256),
        "packages still upstream are not fetched"
    );

    // Then upstream deletes the file; a host on approved still installs it.
    fs_err::remove_file(s.repo.path(&old.pool_path)).unwrap();
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert!(host
        .downloaded_files()
        .unwrap()
        .iter()
        .any(|f| f.ends_with("foo-utils_1.4.2-1_amd64.deb")));
    let report = s
        .app
        .state
        .channels
        .verify_channel("approved")
        .await
        .unwrap();
    assert!(report.nowhere.is_empty(), "{report:?}");
}

async fn fallback_origins_serve_what_upstream_lost_and_verify_reports_the_rest(backend: Backend) {
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = Upstream::start(archive_dir.path().to_owned()).await;
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.sources[0].fallback = vec![format!("{}/archive/{{last_seen}}/", archive.url())];
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let old = s.repo.package_in("stable", "foo-utils", "amd64").clone();

    // foo-utils 1.4.2-1 leaves the index and the pool at once: the rescue finds it nowhere.
    // (A copy is kept aside: the snapshot archive will have it.)
    let aside = s.dir.path().join("foo-utils-old.deb");
    fs_err::copy(s.repo.path(&old.pool_path), &aside).unwrap();
    next_upstream_state(&mut s.repo);
    fs_err::remove_file(s.repo.path(&old.pool_path)).unwrap();
    let outcome = s.sync().await;
    assert!(outcome.rescue_failures >= 1, "{outcome:?}");
    let report = channels.verify_channel("approved").await.unwrap();
    let nowhere: Vec<_> = report.nowhere.iter().map(|p| p.filename.as_str()).collect();
    assert_eq!(nowhere, [old.pool_path.as_str()], "{report:?}");
    assert!(report.only_upstream > 0, "the rest is still upstream");
    assert!(report
        .rescues_pending
        .iter()
        .any(|r| r.pool_path == old.pool_path));
    let (code, out) = cli(&s, &["channel", "verify", "approved"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NOWHERE") && out.contains("foo-utils"),
        "{out}"
    );
    let metrics = client()
        .get(format!("{}/metrics", s.app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aptgate_channels_rescues_pending 1"),
        "{metrics}"
    );

    // The snapshot archive has it, under the time of the last sync that listed it.
    let last_seen = channels
        .catalog()
        .package(&old.sha256)
        .await
        .unwrap()
        .unwrap()
        .last_seen
        .expect("marked as gone");
    let stamp = chrono::DateTime::from_timestamp(last_seen, 0)
        .unwrap()
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let archived = archive_dir
        .path()
        .join(format!("archive/{stamp}"))
        .join(&old.pool_path);
    fs_err::create_dir_all(archived.parent().unwrap()).unwrap();
    fs_err::copy(&aside, &archived).unwrap();
    let report = channels.verify_channel("approved").await.unwrap();
    assert!(report.nowhere.is_empty(), "{report:?}");
    assert_eq!(report.only_fallback.len(), 1, "{report:?}");
    let (code, out) = cli(&s, &["channel", "verify", "approved"]);
    assert_eq!(code, 0, "{out}");

    // A host on approved installs it: served from the fallback origin, verified, stored.
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    let archived_path = format!("archive/{stamp}/{}", old.pool_path);
    let gets = archive
        .requests()
        .iter()
        .filter(|r| r.path == archived_path && r.method == http::Method::GET)
        .count();
    assert_eq!(
        gets, 2,
        "the sync's rescue (not there yet), then the host's download"
    );
    assert!(stored(&s, &old.sha256));
    // The next sync finds it stored: the rescue is done.
    s.sync().await;
    assert!(channels.catalog().rescues().await.unwrap().is_empty());
}

async fn gc_deletes_expired_snapshots_and_unreferenced_blobs_only(backend: Backend) {
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.retention.keep_for = Duration::ZERO;
    p.config.retention.keep_last = 0;
    p.config.retention.grace = Duration::ZERO;
    p.config.publish.by_hash_grace = Duration::ZERO;
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    let actor = Actor::new("test");
    let s1 = s.sync().await.snapshot.unwrap();
    s.promote(&[]).await.unwrap();
    next_upstream_state(&mut s.repo);
    let s2 = s.sync().await.snapshot.unwrap();
    s.repo.bump("contrib-tool", "1:1.1-1").unwrap();
    let s3 = s.sync().await.snapshot.unwrap();
    // approved holds s1, testing s3; s2 is nobody's any more.
    let blobs_of = |id: String| {
        let channels = channels.clone();
        async move {
            let manifest = channels
                .manifest(&channels.snapshot(&id).await.unwrap())
                .await
                .unwrap();
            manifest
                .suites
                .values()
                .flat_map(|m| m.indices.values())
                .flat_map(|f| f.files().map(|(_, b)| b.sha256).collect::<Vec<_>>())
                .collect::<std::collections::HashSet<_>>()
        }
    };
    let kept: std::collections::HashSet<_> = blobs_of(s1.clone())
        .await
        .union(&blobs_of(s3.clone()).await)
        .copied()
        .collect();
    let s2_only: Vec<_> = blobs_of(s2.clone())
        .await
        .difference(&kept)
        .copied()
        .collect();
    assert!(!s2_only.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let dry = channels.gc(true, &actor).await.unwrap();
    assert_eq!(dry.snapshots_deleted, std::slice::from_ref(&s2), "{dry:?}");
    assert!(dry.freed.blobs > 0);
    assert!(
        channels.snapshot(&s2).await.is_ok(),
        "a dry run deletes nothing"
    );
    let usage = channels.store_usage().await.unwrap();
    // The packages stored are the ones rescued when they left upstream (approved has them).
    assert!(
        usage.unreferenced.blobs > 0 && usage.packages.blobs > 0,
        "{usage:?}"
    );
    assert!(
        usage.indices.blobs > 0 && usage.metadata.blobs > 0,
        "{usage:?}"
    );

    let (code, out) = cli(&s, &["gc"]);
    assert_eq!(code, 0);
    assert!(out.contains(&s2) && out.contains("freed"), "{out}");
    assert!(matches!(
        channels.snapshot(&s2).await,
        Err(ChannelsError::SnapshotDeleted(_))
    ));
    for digest in &s2_only {
        assert!(!s.app.state.mirror.store().contains(digest), "{digest}");
    }
    for digest in &kept {
        assert!(s.app.state.mirror.store().contains(digest), "{digest}");
    }
    assert!(channels.snapshot(&s1).await.is_ok() && channels.snapshot(&s3).await.is_ok());
    let usage = channels.store_usage().await.unwrap();
    assert_eq!(usage.unreferenced.blobs, 0, "{usage:?}");
    let (code, out) = cli(&s, &["store", "usage"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("packages") && out.contains("unreferenced"),
        "{out}"
    );

    // Both channels still work end to end, and the collection is audited.
    let approved = s.host("approved", "approved");
    assert_eq!(candidate(&approved, "foo-utils").await, "1.4.2-1");
    approved
        .download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    let testing = s.host("testing", "testing");
    assert_eq!(candidate(&testing, "contrib-tool").await, "1:1.1-1");
    testing
        .download(&["contrib-tool"])
        .await
        .unwrap()
        .assert_success();
    let err = channels
        .rollback("testing", Some(&s2), &actor)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "snapshot_deleted", "{err}");
    let audit = channels
        .catalog()
        .audit(&AuditFilter {
            action: Some(AuditAction::Gc),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    // Nothing left to do.
    let again = channels.gc(false, &actor).await.unwrap();
    assert!(
        again.snapshots_deleted.is_empty() && again.freed.blobs == 0,
        "{again:?}"
    );
}

async fn gc_racing_syncs_promotions_and_downloads_deletes_nothing_needed(backend: Backend) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().extra_packages(40),
    )
    .await;
    p.config.retention.keep_for = Duration::ZERO;
    p.config.retention.keep_last = 0;
    // Longer than one sync or promotion takes in a debug build; older garbage goes while the
    // test runs.
    p.config.retention.grace = Duration::from_secs(4);
    p.config.publish.by_hash_grace = Duration::ZERO;
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    s.promote(&[]).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let channels = channels.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut runs, mut freed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                freed += channels
                    .gc(false, &Actor::new("race"))
                    .await
                    .unwrap()
                    .freed
                    .blobs;
                runs += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (runs, freed)
        })
    };
    let mirror_host = s.dir.path().join("mirror-host");
    let started = std::time::Instant::now();
    let mut round = 0;
    // At least a few grace periods, so garbage of the first rounds is collected during the
    // later ones.
    while round < 4 || started.elapsed() < Duration::from_secs(12) {
        s.repo
            .bump("extra-0000", &format!("1.0-{}", round + 2))
            .unwrap();
        s.sync().await;
        s.promote(&[]).await.unwrap();
        if round % 2 == 1 {
            channels
                .rollback("approved", None, &Actor::new("race"))
                .await
                .unwrap();
        }
        // Pull-through and on-demand downloads while the collector runs.
        let host = s.host(&format!("host-{round}"), "approved");
        host.update().await.unwrap().assert_success();
        host.download(&["foo-utils", "hello"])
            .await
            .unwrap()
            .assert_success();
        let mirror =
            aptgate_tests::apt::AptRoot::new(&mirror_host.join(round.to_string())).unwrap();
        mirror
            .add_source(
                "mirror",
                &s.app.mirror_uri(),
                "stable",
                &["main", "contrib"],
                &s.repo.key_path(),
            )
            .unwrap();
        mirror.update().await.unwrap().assert_success();
        mirror
            .download(&["extra-0000", "hello-data"])
            .await
            .unwrap()
            .assert_success();
        round += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, freed) = collector.await.unwrap();
    assert!(runs > 2, "the collector ran alongside ({runs} runs)");
    assert!(
        freed > 0,
        "the collector deleted garbage while the rest ran"
    );

    // Every kept snapshot and every publication is whole.
    let store = s.app.state.mirror.store();
    for snapshot in channels.catalog().list_snapshots().await.unwrap() {
        let manifest = channels.manifest(&snapshot).await.unwrap();
        for files in manifest.suites.values().flat_map(|m| m.indices.values()) {
            for (name, blob) in files.files() {
                assert!(store.contains(&blob.sha256), "{} {name}", snapshot.id);
            }
        }
    }
    for channel in ["testing", "approved"] {
        let served = channels.served(channel).await.unwrap();
        for signed in served.publication.suites.values() {
            assert!(store.contains(&signed.in_release.sha256));
        }
        let host = s.host(&format!("final-{channel}"), channel);
        host.update().await.unwrap().assert_success();
        host.download(&["foo-utils", "extra-0000"])
            .await
            .unwrap()
            .assert_success();
    }
}

async fn past_snapshots_are_resigned_before_valid_until(backend: Backend) {
    let mut p = parts(backend, Duration::ZERO, FixtureSpec::default()).await;
    p.config.publish.valid_until = Duration::from_secs(6);
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    let s1 = s.sync().await.snapshot.unwrap();
    s.promote(&[]).await.unwrap();
    next_upstream_state(&mut s.repo);
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let url = format!(
        "{}/channels/approved/snapshots/{s1}/dists/stable/InRelease",
        s.app.url
    );
    let valid_until = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("Valid-Until: "))
            .map(str::to_owned)
            .expect("a Valid-Until field")
    };
    let before = valid_until(&get_text(&url).await);
    // Past half the validity (3 s), whole seconds counted.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let resigned = channels.resign_expiring().await.unwrap();
    assert!(resigned.contains(&format!("approved@{s1}")), "{resigned:?}");
    let after = valid_until(&get_text(&url).await);
    assert_ne!(before, after);
    // Past the first signature's Valid-Until, apt still accepts the snapshot.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let host = aptgate_tests::apt::AptRoot::new(&s.dir.path().join("snapshot-host")).unwrap();
    host.add_source(
        "aptgate",
        &format!("{}/channels/approved/snapshots/{s1}", s.app.url),
        "stable",
        &["main", "contrib"],
        &s.key,
    )
    .unwrap();
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
}

async fn channels_created_on_one_instance_are_served_by_another_at_once(backend: Backend) {
    let s = Setup::new(backend, Duration::ZERO).await;
    s.sync().await;
    // A second server instance on the same catalog and store, started before the channel
    // exists.
    let other = TestApp::start_config(s.app.config.clone()).await;
    let actor = Actor::new("admin");
    s.app
        .state
        .channels
        .create_channel(
            ChannelConfig {
                promotes_from: Some("testing".parse().unwrap()),
                ..channel("site-berlin")
            },
            &actor,
        )
        .await
        .unwrap();
    s.app
        .state
        .channels
        .promote(
            &aptgate_channels::PromoteRequest {
                from: "testing".into(),
                to: "site-berlin".into(),
                only: Vec::new(),
            },
            &actor,
        )
        .await
        .unwrap();
    let host = host_at(s.dir.path(), "berlin", &other.url, "site-berlin", &s.key);
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    assert!(other
        .state
        .channels
        .channel_configs()
        .await
        .iter()
        .any(|c| c.name.as_str() == "site-berlin"));
    let audit = s
        .app
        .state
        .channels
        .catalog()
        .audit(&AuditFilter {
            action: Some(AuditAction::Channel),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].entry.channel.as_deref(), Some("site-berlin"));
    other.stop().await;
}
