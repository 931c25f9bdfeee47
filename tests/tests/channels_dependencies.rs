//! Selective promotion and `snapshot pull` resolve dependencies as apt does, on SQLite and on
//! PostgreSQL: virtual packages (`Provides:`, versioned or not) and alternatives (`a | b`),
//! checked by real apt resolving and fetching the result.

use aptgate_channels::snapshots::SnapshotFilter;
use aptgate_channels::Actor;
use aptgate_tests::apt::AptRoot;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec, PackageSpec};
use std::time::Duration;

both_backends!(
    promote_only_resolves_provides_and_alternatives,
    snapshot_pull_takes_the_first_alternative_that_resolves,
);

fn package(name: &str) -> PackageSpec {
    PackageSpec::new(name, "1.0-1", "amd64", "main", &["stable"])
}

/// The default fixture plus what approved starts with: httpd-b, and json-lite, which
/// provides libjson without a version.
fn first_state() -> FixtureSpec {
    let mut spec = FixtureSpec::default().large_payload(64 << 10);
    spec.packages
        .extend([package("httpd-b"), package("json-lite").provides("libjson")]);
    spec
}

/// Upstream's next state adds:
/// - mail-reader, needing the virtual mail-transport-agent, which only tiny-mta provides
///   (and tiny-mta needs libtiny1);
/// - web-app, needing `httpd-a | httpd-b`, and httpd-a;
/// - web-stats, needing `httpd-gone | httpd | httpd-a`: httpd-gone exists nowhere, httpd is
///   virtual, provided by nano-httpd;
/// - report-tool, needing `libjson (>= 2)`, which only json-fast's versioned `Provides:
///   libjson (= 2.1)` satisfies (json-lite's unversioned one does not).
fn next_state(repo: &mut FixtureRepo) {
    repo.spec.packages.extend([
        package("mail-reader").depends("mail-transport-agent"),
        package("tiny-mta")
            .provides("mail-transport-agent")
            .depends("libtiny1"),
        package("libtiny1").source("libtiny"),
        package("web-app").depends("httpd-a | httpd-b"),
        package("httpd-a"),
        package("web-stats").depends("httpd-gone | httpd | httpd-a"),
        package("nano-httpd").provides("httpd"),
        package("report-tool").depends("libjson (>= 2)"),
        package("json-fast").provides("libjson (= 2.1)"),
    ]);
    repo.regenerate().unwrap();
}

/// The packages `to` adds to `from` in suite stable; nothing else may change.
async fn added(s: &Setup, from: &str, to: &str) -> Vec<String> {
    let diff = s.app.state.channels.diff(from, to).await.unwrap();
    assert!(
        diff.removed.is_empty() && diff.upgraded.is_empty() && diff.downgraded.is_empty(),
        "{diff:?}"
    );
    let mut names: Vec<String> = diff
        .added
        .iter()
        .filter(|c| c.suite == "stable")
        .map(|c| c.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Real apt resolves `package` on `host` and fetches it with its dependencies; returns the
/// names of every package fetched so far, sorted.
async fn download(host: &AptRoot, package: &str) -> Vec<String> {
    host.update().await.unwrap().assert_success();
    host.download(&[package]).await.unwrap().assert_success();
    host.downloaded_files()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f.file_name().unwrap().to_str().unwrap();
            file.split('_').next().unwrap().to_owned()
        })
        .collect()
}

async fn promote_only_resolves_provides_and_alternatives(backend: Backend) {
    let p = parts(backend, Duration::ZERO, first_state()).await;
    let mut s = Setup::from_parts(p).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    next_state(&mut s.repo);
    s.sync().await;

    // mail-reader brings the only provider of mail-transport-agent and what that needs
    // (without Provides resolution, tiny-mta and libtiny1 stayed behind); web-app brings
    // nothing more, since approved has httpd-b.
    let moved = s.promote(&["mail-reader", "web-app"]).await.unwrap();
    let before = moved.from_snapshot.clone().unwrap();
    assert_eq!(
        added(&s, &before, &moved.to_snapshot).await,
        ["libtiny1", "mail-reader", "tiny-mta", "web-app"]
    );

    // web-stats: the first alternative that resolves is the virtual httpd, so nano-httpd,
    // not httpd-a (what matching real packages alone would take). report-tool: approved's
    // json-lite provides libjson without a version, which does not satisfy `libjson (>= 2)`;
    // json-fast's `libjson (= 2.1)` does.
    let moved = s.promote(&["web-stats", "report-tool"]).await.unwrap();
    let before = moved.from_snapshot.clone().unwrap();
    assert_eq!(
        added(&s, &before, &moved.to_snapshot).await,
        ["json-fast", "nano-httpd", "report-tool", "web-stats"]
    );

    // Real apt on an approved host resolves and fetches each of them from what arrived.
    let host = s.host("host-approved", "approved");
    assert_eq!(
        download(&host, "mail-reader").await,
        ["libtiny1", "mail-reader", "tiny-mta"]
    );
    assert_eq!(
        download(&host, "web-app").await,
        ["httpd-b", "libtiny1", "mail-reader", "tiny-mta", "web-app"]
    );
    let fetched = download(&host, "web-stats").await;
    assert!(fetched.iter().any(|n| n == "nano-httpd"), "{fetched:?}");
    let fetched = download(&host, "report-tool").await;
    assert!(fetched.iter().any(|n| n == "json-fast"), "{fetched:?}");
    assert!(!fetched.iter().any(|n| n == "httpd-a" || n == "json-lite"));
    s.app.stop().await;
}

async fn snapshot_pull_takes_the_first_alternative_that_resolves(backend: Backend) {
    let p = parts(backend, Duration::ZERO, first_state()).await;
    let mut s = Setup::from_parts(p).await;
    let channels = s.app.state.channels.clone();
    let actor = Actor::new("test");
    let s1 = s.sync().await.snapshot.unwrap();
    next_state(&mut s.repo);
    let s2 = s.sync().await.snapshot.unwrap();

    // A base with neither httpd nor any libjson provider.
    let filter = SnapshotFilter {
        excludes: vec!["httpd-*".into(), "json-*".into()],
        ..SnapshotFilter::default()
    };
    let base = channels
        .filter_snapshot(&s1, &filter, None, &actor)
        .await
        .unwrap();

    // web-app: neither alternative present, so the first, httpd-a (httpd-b stays behind);
    // report-tool: the versioned provider.
    let pulled = channels
        .pull_snapshot(
            &base.id,
            &s2,
            &["web-app".into(), "report-tool".into()],
            None,
            &actor,
        )
        .await
        .unwrap();
    assert_eq!(
        added(&s, &base.id, &pulled.id).await,
        ["httpd-a", "json-fast", "report-tool", "web-app"]
    );

    // Published into testing, apt installs both from exactly that set.
    channels
        .publish_snapshot("testing", &pulled.id, &actor)
        .await
        .unwrap();
    let host = s.host("host-testing", "testing");
    assert_eq!(download(&host, "web-app").await, ["httpd-a", "web-app"]);
    assert_eq!(
        download(&host, "report-tool").await,
        ["httpd-a", "json-fast", "report-tool", "web-app"]
    );
    s.app.stop().await;
}
