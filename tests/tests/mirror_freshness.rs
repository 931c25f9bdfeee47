//! Freshness and time: what the mirror does when upstream's Release goes bad, expires, freezes
//! or moves on under a client, and what our own channels' dates promise apt (issue 8 §2).

use aptgate_channels::{Actor, RELEASE_DATE_MARGIN};
use aptgate_config::MirrorConfig;
use aptgate_tests::app::{client, fixture_source, get_text, test_mirror_config, TestApp};
use aptgate_tests::channels::{candidate, next_upstream_state, parts, Setup};
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec};
use aptgate_tests::signing::TestKey;
use aptgate_tests::upstream::{Misbehaviour, Upstream};
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A fixture upstream and an aptgate mirror in front of it with a chosen mirror configuration.
struct Mirror {
    _dir: tempfile::TempDir,
    repo: FixtureRepo,
    upstream: Upstream,
    app: TestApp,
}

impl Mirror {
    async fn start(configure: impl FnOnce(&mut MirrorConfig)) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let repo = FixtureRepo::generate(
            &dir.path().join("upstream"),
            &FixtureSpec::default().large_payload(64 << 10),
        )
        .unwrap();
        let upstream = Upstream::start(repo.root().to_owned()).await;
        let mut config = test_mirror_config(&upstream);
        configure(&mut config);
        let source = fixture_source(&upstream, &repo);
        let app = TestApp::start_with(&dir.path().join("data"), vec![source], config).await;
        Mirror {
            _dir: dir,
            repo,
            upstream,
            app,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        get(&self.app.mirror_url(path)).await
    }
}

/// A field of a Release (or the signed text of an InRelease).
fn field<'a>(release: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    release
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in\n{release}"))
}

fn release_time(release: &str, name: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc2822(&field(release, name).replace("UTC", "+0000"))
        .unwrap()
        .with_timezone(&Utc)
}

/// The sha256 a Release lists for `path`.
fn listed_sha256(release: &str, path: &str) -> String {
    let sha256 = release.split("SHA256:").nth(1).expect("a SHA256 list");
    sha256
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[2] == path)
        .unwrap_or_else(|| panic!("{path} not listed"))[0]
        .to_owned()
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The value of a labelled metric for the fixture's `stable` suite.
fn suite_metric(app: &TestApp, name: &str) -> i64 {
    let prefix = format!("aptgate_mirror_{name}{{source=\"fixture\",suite=\"stable\"}} ");
    app.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} for fixture/stable in\n{}", app.metrics()))
}

/// The channels end-to-end setup on SQLite with every client request revalidating upstream.
async fn channels_setup(spec: FixtureSpec, valid_until: Duration) -> Setup {
    let mut p = parts(Backend::Sqlite, Duration::ZERO, spec).await;
    p.config.mirror.release_freshness = Duration::ZERO;
    p.config.publish.valid_until = valid_until;
    Setup::from_parts(p).await
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// The error of a sync of the fixture source that must fail.
async fn failed_sync(s: &Setup, why: &str) -> String {
    s.app
        .state
        .channels
        .sync("fixture", &Actor::new("test"), &|_: &str| {})
        .await
        .expect_err(why)
        .to_string()
}

fn mirror_url(s: &Setup, path: &str) -> String {
    format!("{}/mirror/fixture/{path}", s.app.url)
}

/// T33: with a verified InRelease cached, an upstream that starts serving one signed by a
/// foreign key, or one whose signature does not match its text, costs clients nothing (they
/// keep the verified copy, marked stale), and the sync of that suite fails without moving a
/// channel.
#[tokio::test(flavor = "multi_thread")]
async fn a_badly_signed_upstream_release_keeps_the_verified_copy_and_never_moves_a_channel() {
    let mut s = channels_setup(FixtureSpec::default(), Duration::ZERO).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    let verified = get_text(&mirror_url(&s, "dists/stable/InRelease")).await;
    let channel_url = format!("{}/channels/testing/dists/stable/InRelease", s.app.url);
    let published = get_text(&channel_url).await;
    let history = channels.history("testing", 100).await.unwrap().len();

    // Foreign key: upstream publishes new content signed by a key the source does not trust.
    s.repo.spec.key = TestKey::Other;
    next_upstream_state(&mut s.repo);
    let foreign = fs_err::read_to_string(s.repo.path("dists/stable/InRelease")).unwrap();
    // Bad signature: the trusted key's signature over text someone changed afterwards.
    s.repo.spec.key = TestKey::Primary;
    s.repo.regenerate().unwrap();
    let genuine = fs_err::read_to_string(s.repo.path("dists/stable/InRelease")).unwrap();
    let tampered = genuine.replacen("Suite: stable", "Suite: stablf", 1);

    for (what, bad) in [("foreign key", foreign), ("bad signature", tampered)] {
        fs_err::write(s.repo.path("dists/stable/InRelease"), &bad).unwrap();
        let r = get(&mirror_url(&s, "dists/stable/InRelease")).await;
        assert_eq!(r.status(), 200, "{what}: clients keep the verified copy");
        assert_eq!(r.headers()["x-aptgate-cache"], "stale", "{what}");
        assert!(r.headers().contains_key("warning"), "{what}");
        assert_eq!(r.text().await.unwrap(), verified, "{what}");

        let error = failed_sync(&s, what).await;
        assert!(error.contains("verification"), "{what}: {error}");
        assert_eq!(get_text(&channel_url).await, published, "{what}");
        assert_eq!(
            channels.history("testing", 100).await.unwrap().len(),
            history,
            "{what}: the channel did not move"
        );
    }
    assert!(suite_metric(&s.app, "release_refused_total") >= 4);

    // Upstream fixed: the next request gets the new Release, fresh, and the sync moves on.
    fs_err::write(s.repo.path("dists/stable/InRelease"), &genuine).unwrap();
    let r = get(&mirror_url(&s, "dists/stable/InRelease")).await;
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    assert_eq!(r.text().await.unwrap(), genuine);
    assert!(s.sync().await.snapshot.is_some());
}

/// T35: a cached upstream Release past its Valid-Until is served only as stale (apt refuses
/// it itself), makes the mirror keep asking upstream, is never synced into a snapshot, and
/// upstream confirming it unchanged raises the freeze alarm.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_upstream_release_is_never_fresh_never_synced_and_raises_the_freeze_alarm() {
    let mut s = channels_setup(FixtureSpec::default(), Duration::ZERO).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    // A second mirror with normal freshness: only expiry can make it ask upstream again.
    let mut config = test_mirror_config(&s.upstream);
    config.release_freshness = Duration::from_secs(3600);
    let source = fixture_source(&s.upstream, &s.repo);
    let mirror = TestApp::start_with(&s.dir.path().join("mirror-only"), vec![source], config).await;

    // Upstream publishes a Release valid for a few seconds; both pick it up in time.
    s.repo.spec.valid_for = Some(TimeDelta::seconds(6));
    next_upstream_state(&mut s.repo);
    let r = get(&mirror.mirror_url("dists/stable/InRelease")).await;
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    let short_lived = r.text().await.unwrap();
    let valid_until = release_time(&short_lived, "Valid-Until");
    s.sync().await;
    let history = channels.history("testing", 100).await.unwrap().len();
    let wait = (valid_until - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;

    let asked = s.upstream.count("dists/stable/InRelease");
    let r = get(&mirror.mirror_url("dists/stable/InRelease")).await;
    assert_eq!(r.status(), 200, "clients get it and judge it themselves");
    assert_eq!(r.headers()["x-aptgate-cache"], "stale", "never fresh");
    assert!(r.headers().contains_key("warning"));
    assert_eq!(r.text().await.unwrap(), short_lived);
    assert_eq!(
        s.upstream.count("dists/stable/InRelease"),
        asked + 1,
        "an expired Release is revalidated however fresh its record"
    );
    // A crowd of clients meanwhile: each waiting request takes the answer of the revalidation
    // it waited for, instead of asking upstream once each.
    let asked = s.upstream.count("dists/stable/InRelease");
    let url = mirror.mirror_url("dists/stable/InRelease");
    let crowd = futures::future::join_all((0..20).map(|_| get(&url))).await;
    for r in crowd {
        assert_eq!(r.headers()["x-aptgate-cache"], "stale");
    }
    let crowd_asked = s.upstream.count("dists/stable/InRelease") - asked;
    assert!(
        (1..20).contains(&crowd_asked),
        "{crowd_asked} upstream requests"
    );
    assert_eq!(suite_metric(&mirror, "release_expired"), 1);
    assert_eq!(
        suite_metric(&mirror, "release_frozen"),
        1,
        "upstream answered 304"
    );
    assert!(suite_metric(&mirror, "release_valid_until_headroom_seconds") < 0);

    let error = failed_sync(&s, "no snapshot from an expired Release").await;
    assert!(error.contains("expired"), "{error}");
    assert_eq!(
        channels.history("testing", 100).await.unwrap().len(),
        history
    );

    // Upstream publishes again: fresh, alarms off, syncs resume.
    s.repo.spec.valid_for = Some(TimeDelta::days(7));
    s.repo.regenerate().unwrap();
    let r = get(&mirror.mirror_url("dists/stable/InRelease")).await;
    assert_eq!(r.headers()["x-aptgate-cache"], "hit");
    assert_eq!(suite_metric(&mirror, "release_expired"), 0);
    assert_eq!(suite_metric(&mirror, "release_frozen"), 0);
    s.sync().await;
}

/// T37: channel Releases are dated RELEASE_DATE_MARGIN back, so a host whose clock runs
/// behind ours (here: apt told to allow no future time at all, 30 s behind) accepts them.
#[tokio::test(flavor = "multi_thread")]
async fn channel_releases_are_dated_back_so_hosts_with_a_slow_clock_accept_them() {
    let s = channels_setup(FixtureSpec::default(), Duration::ZERO).await;
    s.sync().await;
    let signed_before = Utc::now();
    let in_release = get_text(&format!(
        "{}/channels/testing/dists/stable/InRelease",
        s.app.url
    ))
    .await;
    let date = release_time(&in_release, "Date");
    assert!(
        date <= signed_before - TimeDelta::seconds(RELEASE_DATE_MARGIN - 10),
        "Date {date} is not a margin before {signed_before}"
    );

    let mut host = s.host("slow-clock", "testing");
    host.set_option("Acquire::Max-FutureTime", "-30");
    let update = host.update().await.unwrap();
    update.assert_success();
    assert!(!update.combined().contains("not valid yet"), "{update}");
}

/// T37: a channel whose publication is past its re-sign point (half its validity) is re-signed
/// by the schedule's `resign_expiring`, and apt keeps accepting it after the first signature's
/// Valid-Until has passed.
#[tokio::test(flavor = "multi_thread")]
async fn a_channel_past_its_resign_point_is_resigned_and_apt_keeps_accepting_it() {
    let s = channels_setup(FixtureSpec::default(), Duration::from_secs(6)).await;
    let channels = s.app.state.channels.clone();
    s.sync().await;
    let url = format!("{}/channels/testing/dists/stable/InRelease", s.app.url);
    let first = get_text(&url).await;
    let first_valid_until = release_time(&first, "Valid-Until");
    let host = s.host("host", "testing");
    assert_eq!(candidate(&host, "hello").await, "2.10-3");

    // Past half the validity: due.
    let due = first_valid_until - TimeDelta::seconds(2);
    tokio::time::sleep((due - Utc::now()).to_std().unwrap_or_default()).await;
    let resigned = channels.resign_expiring().await.unwrap();
    assert!(resigned.contains(&"testing".to_owned()), "{resigned:?}");
    let second = get_text(&url).await;
    assert!(release_time(&second, "Valid-Until") > first_valid_until);

    // Past the first Valid-Until: apt accepts the re-signed Release.
    let past = first_valid_until + TimeDelta::seconds(1);
    tokio::time::sleep((past - Utc::now()).to_std().unwrap_or_default()).await;
    assert_eq!(candidate(&host, "hello").await, "2.10-3");
}

/// T17/T18 (LP #972077, problem C): a client that fetched InRelease just before the mirror
/// picked up upstream's next one still gets the indices it names under `by-hash/`, for
/// `mirror.by_hash_grace`, then no longer.
#[tokio::test(flavor = "multi_thread")]
async fn clients_holding_the_previous_release_still_get_its_by_hash_indices() {
    let mut m = Mirror::start(|c| {
        c.release_freshness = Duration::ZERO;
        c.by_hash_grace = Duration::from_secs(5);
    })
    .await;
    let old = m.get("dists/stable/InRelease").await.text().await.unwrap();
    let packages = "main/binary-amd64/Packages.xz";
    let old_digest = listed_sha256(&old, packages);
    let by_hash = format!("dists/stable/main/binary-amd64/by-hash/SHA256/{old_digest}");

    next_upstream_state(&mut m.repo);
    let new = m.get("dists/stable/InRelease").await.text().await.unwrap();
    assert_ne!(new, old, "the mirror picked up the new Release");
    assert_ne!(listed_sha256(&new, packages), old_digest);

    // Twice: fetched from upstream's by-hash (as verified), then from the store.
    for _ in 0..2 {
        let r = m.get(&by_hash).await;
        assert_eq!(r.status(), 200);
        assert_eq!(hex_sha256(&r.bytes().await.unwrap()), old_digest);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(m.get(&by_hash).await.status(), 404, "past the grace");
}

/// T29: an upstream 404 for an index the verified Release lists by name is not remembered:
/// the next request asks upstream again (a mirror mid-update serves it a moment later).
#[tokio::test(flavor = "multi_thread")]
async fn a_404_for_an_index_the_release_lists_is_fetched_again_next_time() {
    let m = Mirror::start(|c| c.negative_cache = Duration::from_secs(3600)).await;
    assert_eq!(m.get("dists/stable/InRelease").await.status(), 200);
    let index = "dists/stable/main/binary-amd64/Packages.xz";
    m.upstream
        .misbehave_times(index, Misbehaviour::Status(404), 1);
    assert_eq!(m.get(index).await.status(), 404);
    let r = m.get(index).await;
    assert_eq!(r.status(), 200, "not negative-cached");
    r.bytes().await.unwrap();
    assert_eq!(m.upstream.count(index), 2);
}

/// T29: an upstream 404 for a pool file or a by-hash index is remembered for
/// `mirror.negative_cache` (one upstream request however many clients retry), and once that
/// has passed a file upstream published meanwhile is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_for_a_pool_or_by_hash_file_is_remembered_for_the_negative_cache_ttl() {
    let m = Mirror::start(|c| c.negative_cache = Duration::from_secs(2)).await;
    let release = m.get("dists/stable/InRelease").await.text().await.unwrap();
    let index = m.get("dists/stable/main/binary-amd64/Packages").await;
    assert_eq!(index.status(), 200);
    index.bytes().await.unwrap();
    let pool = m
        .repo
        .package_in("stable", "hello", "amd64")
        .pool_path
        .clone();
    let by_hash = format!(
        "dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        listed_sha256(&release, "main/binary-amd64/Packages.gz")
    );
    for path in [&pool, &by_hash] {
        m.upstream.misbehave(path, Misbehaviour::Status(404));
        for _ in 0..3 {
            assert_eq!(m.get(path).await.status(), 404, "{path}");
        }
        assert_eq!(m.upstream.count(path), 1, "{path}: remembered");
    }
    m.upstream.behave();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for path in [&pool, &by_hash] {
        let r = m.get(path).await;
        assert_eq!(r.status(), 200, "{path}: asked again after the TTL");
        r.bytes().await.unwrap();
    }
}

/// T36: once the mirror holds a Release dated D2, an upstream (or a man in the middle) serving
/// an older, validly signed one is ignored and counted — also after a restart, since the
/// newest verified Release is what the mirror keeps on disk.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_upstream_release_never_replaces_a_newer_one_even_after_a_restart() {
    let mut m = Mirror::start(|c| c.release_freshness = Duration::ZERO).await;
    let older = fs_err::read(m.repo.path("dists/stable/InRelease")).unwrap();
    // Date has one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    next_upstream_state(&mut m.repo);
    let newer = m.get("dists/stable/InRelease").await.bytes().await.unwrap();
    assert_ne!(newer, older);

    let config = m.app.config.clone();
    m.app.stop().await;
    m.app = TestApp::start_config(config).await;
    fs_err::write(m.repo.path("dists/stable/InRelease"), &older).unwrap();
    let r = m.get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), newer);
    assert_eq!(suite_metric(&m.app, "release_refused_total"), 1);
}

/// T40 (a): a release file upstream sent and we refused is never stored, not even its ETag, so
/// a later 304 can only ever confirm the verified copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_304_after_a_refused_release_confirms_only_the_verified_copy() {
    let m = Mirror::start(|c| c.release_freshness = Duration::ZERO).await;
    let verified = m.get("dists/stable/InRelease").await.text().await.unwrap();
    let inrelease = m.repo.path("dists/stable/InRelease");
    fs_err::write(
        &inrelease,
        verified.replacen("Suite: stable", "Suite: stablf", 1),
    )
    .unwrap();
    let r = m.get("dists/stable/InRelease").await;
    assert_eq!(r.headers()["x-aptgate-cache"], "stale");
    assert_eq!(r.text().await.unwrap(), verified);

    m.upstream
        .misbehave("dists/stable/InRelease", Misbehaviour::Status(304));
    let r = m.get("dists/stable/InRelease").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), verified);
}

/// A URL whose content changes (`InRelease`, an index by name) is never answered `304` by date:
/// two of its versions can be stored within the second `Last-Modified` resolves, and apt kept
/// the old InRelease, then failed the new pool file with a Hash Sum mismatch. Only the `ETag`
/// validates there; `pool/` keeps answering `If-Modified-Since`.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_release_file_is_never_answered_304_by_date() {
    let mut m = Mirror::start(|c| c.release_freshness = Duration::ZERO).await;
    let first = m.get("dists/stable/InRelease").await;
    let etag = first.headers()["etag"].clone();
    let held = first.bytes().await.unwrap();
    next_upstream_state(&mut m.repo);
    // A client whose copy is dated after anything stored here (same second, or a clock ahead).
    let since = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let r = aptgate_tests::app::client()
        .get(m.app.mirror_url("dists/stable/InRelease"))
        .header("if-modified-since", &since)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a date must not validate a changed InRelease"
    );
    assert_ne!(r.bytes().await.unwrap(), held);
    // The exact validator still saves the transfer when nothing changed.
    let current = m.get("dists/stable/InRelease").await;
    let current_etag = current.headers()["etag"].clone();
    assert_ne!(current_etag, etag);
    let r = aptgate_tests::app::client()
        .get(m.app.mirror_url("dists/stable/InRelease"))
        .header("if-none-match", current_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Immutable URLs keep their date validator.
    let hello = m.repo.package("hello").clone();
    assert_eq!(m.get(&hello.pool_path).await.status(), 200);
    // Stored (the client may have its bytes a moment before the store has them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !m.app.blob_path(&hello.sha256).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool file was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = hello.pool_path;
    let r = aptgate_tests::app::client()
        .get(m.app.mirror_url(&pool))
        .header("if-modified-since", &since)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}
