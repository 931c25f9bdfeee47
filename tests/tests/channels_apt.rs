//! Channels end to end with real apt, on SQLite and on PostgreSQL: sync → testing (follows
//! the source) → promote → approved, holds, selective promotion, rollback, refusals.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::{Actor, ChannelsError, PromoteRequest};
use aptgate_config::{ChannelConfig, Config};
use aptgate_tests::app::{client, fixture_source, test_mirror_config, TestApp};
use aptgate_tests::apt::AptRoot;
use aptgate_tests::db::{Backend, TestDatabase};
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec};
use aptgate_tests::upstream::Upstream;
use std::time::Duration;

struct Setup {
    dir: tempfile::TempDir,
    repo: FixtureRepo,
    _upstream: Upstream,
    app: TestApp,
    key: std::path::PathBuf,
    _db: TestDatabase,
}

fn channel(name: &str) -> ChannelConfig {
    ChannelConfig {
        name: name.parse().unwrap(),
        suites: Vec::new(),
        follows: None,
        promotes_from: None,
        min_soak: Duration::ZERO,
        selective: true,
    }
}

impl Setup {
    async fn new(backend: Backend, approved_soak: Duration) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let spec = FixtureSpec::default().large_payload(64 << 10);
        let repo = FixtureRepo::generate(&dir.path().join("upstream"), &spec).unwrap();
        let upstream = Upstream::start(repo.root().to_owned()).await;
        let data_dir = dir.path().join("data");
        let db = TestDatabase::new(backend, &data_dir).await;
        let mut config = Config {
            data_dir,
            sources: vec![fixture_source(&upstream, &repo)],
            mirror: test_mirror_config(&upstream),
            ..Config::default()
        };
        config.database.url = db.url.clone();
        config.channels = vec![
            ChannelConfig {
                follows: Some("fixture".parse().unwrap()),
                ..channel("testing")
            },
            ChannelConfig {
                promotes_from: Some("testing".parse().unwrap()),
                min_soak: approved_soak,
                ..channel("approved")
            },
        ];
        let app = TestApp::start_config(config).await;
        // Hosts trust the key the server publishes.
        let key = dir.path().join("aptgate.asc");
        let armored = client()
            .get(format!("{}/keys/aptgate.asc", app.url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        fs_err::write(&key, armored).unwrap();
        Setup {
            dir,
            repo,
            _upstream: upstream,
            app,
            key,
            _db: db,
        }
    }

    fn host(&self, name: &str, channel: &str) -> AptRoot {
        let root = AptRoot::new(&self.dir.path().join(name)).unwrap();
        root.add_source(
            "aptgate",
            &format!("{}/channels/{channel}", self.app.url),
            "stable",
            &["main", "contrib"],
            &self.key,
        )
        .unwrap();
        root
    }

    async fn sync(&self) -> aptgate_channels::SyncOutcome {
        self.app
            .state
            .channels
            .sync("fixture", &Actor::new("test"), &|_: &str| {})
            .await
            .unwrap()
    }

    async fn promote(&self, only: &[&str]) -> Result<aptgate_channels::MoveOutcome, ChannelsError> {
        self.app
            .state
            .channels
            .promote(
                &PromoteRequest {
                    from: "testing".into(),
                    to: "approved".into(),
                    only: only.iter().map(|s| s.to_string()).collect(),
                },
                &Actor {
                    name: "test".into(),
                    comment: Some("ticket 42".into()),
                },
            )
            .await
    }
}

/// The version apt would install on `host` after an update.
async fn candidate(host: &AptRoot, package: &str) -> String {
    let update = host.update().await.unwrap();
    update.assert_success();
    let out = update.combined();
    assert!(
        !out.contains("NO_PUBKEY") && !out.contains("not signed"),
        "{out}"
    );
    let sim = host.apt_get(&["install", "-s", package]).await.unwrap();
    sim.assert_success();
    let prefix = format!("Inst {package} (");
    sim.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("apt would not install {package}:\n{}", sim.combined()))
        .to_owned()
}

macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$scenario(aptgate_tests::db::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$scenario(aptgate_tests::db::Backend::Postgres).await;
            }
        }
    )*};
}

both_backends!(promotion_story, refusals_are_clear);

async fn promotion_story(backend: Backend) {
    let mut s = Setup::new(backend, Duration::ZERO).await;
    let channels = s.app.state.channels.clone();

    // Sync: a snapshot; testing follows the source; approved is not published yet.
    let first = s.sync().await;
    let s1 = first.snapshot.clone().expect("first sync snapshots");
    assert_eq!(first.followed_by, ["testing"]);
    let again = s.sync().await;
    assert_eq!(
        again.snapshot, None,
        "an unchanged upstream creates nothing"
    );

    let testing_host = s.host("host-testing", "testing");
    let approved_host = s.host("host-approved", "approved");
    assert_eq!(candidate(&testing_host, "foo-utils").await, "1.4.2-1");
    assert!(
        !approved_host.update().await.unwrap().success(),
        "an unpublished channel has no Release"
    );

    let moved = s.promote(&[]).await.unwrap();
    assert_eq!(moved.to_snapshot, s1);
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    assert_eq!(candidate(&approved_host, "hello").await, "2.10-3");

    // Upstream publishes new versions: testing sees them after sync, approved does not.
    // foo-utils 1.4.2-2 needs the new hello-data.
    for p in s
        .repo
        .spec
        .packages
        .iter_mut()
        .filter(|p| p.name == "foo-utils")
    {
        p.depends = Some("libfoo1 (>= 1.4), hello-data (>= 2.10-4)".into());
    }
    s.repo.bump("foo-utils", "1.4.2-2").unwrap();
    s.repo.bump("hello-data", "2.10-4").unwrap();
    s.repo.bump("contrib-tool", "1:1.0-1").unwrap();
    let second = s.sync().await;
    let s2 = second.snapshot.clone().expect("changed upstream snapshots");
    assert_eq!(candidate(&testing_host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    let diff = channels.diff(&s1, &s2).await.unwrap();
    let upgraded: Vec<_> = diff
        .upgraded
        .iter()
        .filter(|c| c.suite == "stable" && c.architecture != "arm64")
        .map(|c| (c.name.as_str(), c.to.as_deref().unwrap()))
        .collect();
    assert_eq!(
        upgraded,
        [
            ("contrib-tool", "1:1.0-1"),
            ("foo-utils", "1.4.2-2"),
            ("hello-data", "2.10-4")
        ]
    );
    assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.downgraded.is_empty());

    // --only moves foo-utils and the dependency approved lacks (hello-data >= 2.10-4);
    // contrib-tool stays.
    s.promote(&["foo-utils"]).await.unwrap();
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-2");
    assert_eq!(candidate(&approved_host, "hello-data").await, "2.10-4");
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );

    // A hold keeps contrib-tool at approved's version across a whole promotion.
    assert!(channels
        .hold("approved", "contrib-tool", &Actor::new("test"))
        .await
        .unwrap());
    s.promote(&[]).await.unwrap();
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );
    assert!(channels
        .unhold("approved", "contrib-tool", &Actor::new("test"))
        .await
        .unwrap());
    s.promote(&[]).await.unwrap();
    assert_eq!(candidate(&approved_host, "contrib-tool").await, "1:1.0-1");

    // Upstream deletes a promoted .deb: approved still serves it (stored at promotion).
    let promoted = s.repo.package_in("stable", "foo-utils", "amd64").clone();
    assert_eq!(promoted.version, "1.4.2-2");
    fs_err::remove_file(s.repo.path(&promoted.pool_path)).unwrap();
    approved_host
        .download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    assert!(approved_host
        .downloaded_files()
        .unwrap()
        .iter()
        .any(|f| f.ends_with("foo-utils_1.4.2-2_amd64.deb")));

    // Rollback restores the previous indices, then an explicit earlier snapshot.
    channels
        .rollback("approved", None, &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(
        candidate(&approved_host, "contrib-tool").await,
        "1:0.9+dfsg-2"
    );
    let back = channels
        .rollback("approved", Some(&s1), &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(back.to_snapshot, s1);
    assert_eq!(candidate(&approved_host, "foo-utils").await, "1.4.2-1");
    assert_eq!(candidate(&approved_host, "hello-data").await, "2.10-3");

    // History and audit record every move.
    let history = channels.history("approved", 100).await.unwrap();
    let actions: Vec<_> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(
        actions,
        ["rollback", "rollback", "promote", "promote", "promote", "promote"]
    );
    let audit = channels
        .catalog()
        .audit(&AuditFilter {
            channel: Some("approved".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(audit
        .iter()
        .any(|e| e.entry.action == AuditAction::Hold && e.entry.actor == "test"));
    assert!(audit
        .iter()
        .any(|e| e.entry.comment.as_deref() == Some("ticket 42")));
    s.app.stop().await;
}

async fn refusals_are_clear(backend: Backend) {
    let s = Setup::new(backend, Duration::from_secs(72 * 3600)).await;
    s.sync().await;
    let err = s.promote(&[]).await.unwrap_err();
    assert!(
        matches!(&err, ChannelsError::Refused(m) if m.contains("requires 3d") && m.contains("min_soak")),
        "{err}"
    );
    let channels = &s.app.state.channels;
    let err = channels
        .promote(
            &PromoteRequest {
                from: "testing".into(),
                to: "nowhere".into(),
                only: vec![],
            },
            &Actor::new("test"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_channel", "{err}");
    assert!(err.to_string().contains("approved, testing"), "{err}");
    let err = channels
        .promote(
            &PromoteRequest {
                from: "approved".into(),
                to: "testing".into(),
                only: vec![],
            },
            &Actor::new("test"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unpublished", "{err}");
    let err = channels
        .hold("approved", "bad name", &Actor::new("test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
    let err = channels
        .rollback("testing", None, &Actor::new("test"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no earlier snapshot"), "{err}");
    // Nothing moved.
    assert!(channels
        .catalog()
        .channel("approved")
        .await
        .unwrap()
        .unwrap()
        .snapshot_id
        .is_none());
    // Bad channel names in URLs are a 404, not an error page.
    let r = client()
        .get(format!(
            "{}/channels/..%2f/dists/stable/InRelease",
            s.app.url
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 404 || r.status() == 400, "{}", r.status());
}
