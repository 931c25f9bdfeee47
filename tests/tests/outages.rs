//! Outages and faults: the catalog database goes away and comes back, the disk fills up and
//! is freed, a second server starts on the same data directory, upstream replaces a pool file
//! under the same name. Real apt throughout where apt is what must keep working.

use aptgate_tests::app::{aptgate_command, client};
use aptgate_tests::apt::AptRoot;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{FixtureSpec, LARGE_PACKAGE};
use aptgate_tests::process::ServerProcess;
use aptgate_tests::proxy::CuttableProxy;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

fn admin_token(data_dir: &Path) -> String {
    fs_err::read_to_string(data_dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// An admin API `GET`: (status, JSON body, how long it took).
async fn admin_get(url: &str, token: &str, path: &str) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let r = client()
        .get(format!("{url}/api/v1/{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, started.elapsed())
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(fs_err::read(path).unwrap()))
}

/// The one `.deb` of `package` apt downloaded into `host`'s cache.
fn downloaded(host: &AptRoot, package: &str) -> std::path::PathBuf {
    host.downloaded_files()
        .unwrap()
        .into_iter()
        .find(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
        })
        .unwrap_or_else(|| panic!("apt downloaded no {package}"))
}

/// Updates `host` and downloads `package` afresh; the sha256 of the bytes apt accepted.
async fn fetch_afresh(host: &AptRoot, package: &str) -> String {
    if let Some(old) = host.downloaded_files().unwrap().into_iter().find(|f| {
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{package}_")))
    }) {
        fs_err::remove_file(old).unwrap();
    }
    host.update().await.unwrap().assert_success();
    host.download(&[package]).await.unwrap().assert_success();
    sha256_hex(&downloaded(host, package))
}

// ---- T19: the catalog database goes away ---------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn channels_keep_serving_apt_while_the_catalog_is_down_and_recover_without_restart() {
    let mut p = parts(Backend::Postgres, Duration::ZERO, FixtureSpec::default()).await;
    // PostgreSQL reached through a proxy the test cuts: the shared server stays up for the
    // other tests, this server sees its database go away.
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    p.config.database.url = through(&p.db.url, proxy.addr());
    let s = Setup::from_parts(p).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let token = admin_token(s.app.data_dir());
    let (status, _, _) = admin_get(&s.app.url, &token, "channels/approved/history").await;
    assert_eq!(status, 200);
    // A past snapshot's URL (apt's `--snapshot`), served once before the outage.
    let snapshot = &s.app.state.channels.history("approved", 1).await.unwrap()[0].snapshot_id;
    let snapshot_url = format!(
        "{}/channels/approved/snapshots/{snapshot}/dists/stable/InRelease",
        s.app.url
    );
    let before = client().get(&snapshot_url).send().await.unwrap();
    let before = before.error_for_status().unwrap().bytes().await.unwrap();
    // A host enrolled before the outage.
    let fleet_admin = aptgate_tests::fleet::Admin::new(&s.app.url, s.app.data_dir());
    let enroll_token = fleet_admin.token(serde_json::json!({})).await;
    let mut agent =
        aptgate_tests::fleet::TestAgent::new(&s.app.url, "pos-1.example.org", Default::default());
    agent.enroll(&enroll_token).await;

    proxy.cut();
    // Past the channel cache's lifetime: serving has to do without the catalog.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A host that never saw the channel updates and downloads a package no one fetched yet
    // (its origin is in the catalog; the store does not have it).
    let host = s.host("during-outage", "approved");
    let started = Instant::now();
    host.update().await.unwrap().assert_success();
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
    let foo = s.repo.package("foo-utils");
    assert_eq!(sha256_hex(&downloaded(&host, "foo-utils")), foo.sha256);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "apt waited on the catalog: {:?}",
        started.elapsed()
    );

    let during = client().get(&snapshot_url).send().await.unwrap();
    assert_eq!(
        during.error_for_status().unwrap().bytes().await.unwrap(),
        before
    );

    // The admin API says what is wrong, quickly, with a stable code.
    let (status, body, took) = admin_get(&s.app.url, &token, "channels/approved/history").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "catalog_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("hint:"),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let promoted = s.promote(&[]).await.unwrap_err();
    assert_eq!(promoted.code(), "catalog_unavailable", "{promoted}");
    // So do the fleet's routes: agents get a 503 they retry after, not a 500.
    let (status, body, _) = admin_get(&s.app.url, &token, "fleet/hosts").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("catalog_unavailable")),
        "{body}"
    );
    let checkin = agent.try_checkin(&agent.checkin_request(None)).await;
    assert_eq!(
        (checkin.status, checkin.code()),
        (503, "catalog_unavailable"),
        "{}",
        checkin.body
    );

    // The database comes back: everything works again, no restart.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body, _) = admin_get(&s.app.url, &token, "channels/approved/history").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.promote(&[]).await.unwrap();
    host.update().await.unwrap().assert_success();

    // A database that hangs rather than refuses: apt is served what the server knows without
    // waiting on it (a package no one fetched yet too), the admin API answers 503 within the
    // acquire timeout.
    proxy.stall();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let hung = s.host("during-hang", "approved");
    let started = Instant::now();
    assert_eq!(
        fetch_afresh(&hung, "hello").await,
        s.repo.package_in("stable", "hello", "amd64").sha256
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "apt waited on the catalog: {:?}",
        started.elapsed()
    );
    let (status, body, took) = admin_get(&s.app.url, &token, "channels/approved/history").await;
    assert_eq!(
        (status, &body["code"]),
        (503, &"catalog_unavailable".into()),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin_get(&s.app.url, &token, "channels/approved/history")
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "no recovery after the hang");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- T14: the disk fills up ---------------------------------------------------------------

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (with the reason printed) where this sandbox cannot mount.
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); the disk-full test needs one",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = fs_err::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            if let Err(e) = file.write_all(&chunk) {
                assert!(aptgate_mirror::store::is_storage_full(&e), "{e}");
                break;
            }
        }
        // Whatever single bytes are left.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_clearly_keeps_the_old_publication_and_recovers_when_freed() {
    let Some(fs) = SmallFs::mount("64m") else {
        return;
    };
    let spec = FixtureSpec::default().large_payload(4 << 20);
    let mut p = parts(Backend::Sqlite, Duration::ZERO, spec).await;
    p.config.data_dir = fs.path().join("data");
    let mut s = Setup::from_parts(p).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let host = s.host("host", "approved");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    let in_release_url = format!("{}/channels/approved/dists/stable/InRelease", s.app.url);
    let old_in_release = client()
        .get(&in_release_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let old_in_release = old_in_release.unwrap();
    // Upstream moves on; testing follows it, approved is still at the old snapshot.
    next_upstream_state(&mut s.repo);
    s.sync().await;

    let filler = fs.fill();
    let token = admin_token(s.app.data_dir());

    // (a) Pull-through of a file the store lacks: a clear 507 before any byte, nothing left.
    let big = s.repo.package(LARGE_PACKAGE).clone();
    let upstream_before = s.upstream.count(&big.pool_path);
    let r = client()
        .get(s.app.mirror_url(&big.pool_path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "storage_full", "{body}");
    assert!(body["hint"].as_str().is_some(), "{body}");
    assert_eq!(s.app.tmp_files(), 0, "temp file removed");
    assert!(!s.app.blob_path(&big.sha256).exists());
    assert_eq!(
        s.upstream.count(&big.pool_path),
        upstream_before,
        "nothing fetched"
    );
    // What is stored is still served.
    let r = client().get(&in_release_url).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // (b) A promotion cannot write its Release files: 507, the old publication unchanged.
    let r = client()
        .post(format!("{}/api/v1/promote", s.app.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"from": "testing", "to": "approved"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (status, &body["code"]),
        (507, &"storage_full".into()),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("hint:"), "{body}");
    assert!(
        !message.contains(".part"),
        "temp paths stay in the log: {body}"
    );
    assert_eq!(s.app.tmp_files(), 0, "temp files removed");
    let now = client().get(&in_release_url).send().await.unwrap();
    assert_eq!(
        now.bytes().await.unwrap(),
        old_in_release,
        "old InRelease served"
    );
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");

    // (c) Space comes back: the same operations work, no restart, no repair.
    fs_err::remove_file(filler).unwrap();
    let r = client()
        .get(s.app.mirror_url(&big.pool_path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), big.sha256);
    s.promote(&[]).await.unwrap();
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-2");
    host.download(&["foo-utils"])
        .await
        .unwrap()
        .assert_success();
}

// ---- T25: a second server on the same data directory ---------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_data_dir_refuses_and_leaves_the_first_ones_downloads() {
    let p = parts(Backend::Sqlite, Duration::ZERO, FixtureSpec::default()).await;
    let dir = p.dir.path().to_owned();
    let first = ServerProcess::start(&p.config, dir.join("first.toml"));
    // A download under way in the first server's store.
    let in_flight = p
        .config
        .data_dir
        .join("store/tmp/03/download-under-way.part");
    fs_err::write(&in_flight, b"half a package").unwrap();

    let mut second_config = p.config.clone();
    second_config.server.listen = "127.0.0.1:0".parse().unwrap();
    let second_path = dir.join("second.toml");
    fs_err::write(&second_path, toml::to_string(&second_config).unwrap()).unwrap();
    let mut second = aptgate_command()
        .args(["--config", second_path.to_str().unwrap(), "serve"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server started on the same data_dir");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("another aptgate (pid "), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is serving data_dir {}",
            p.config.data_dir.display()
        )),
        "{stderr}"
    );
    assert!(
        in_flight.is_file(),
        "the first server's download was removed"
    );

    // `store verify` beside the server reads the store and leaves tmp/ alone.
    let verify = aptgate_command()
        .args(["--config", second_path.to_str().unwrap(), "store", "verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    assert!(
        in_flight.is_file(),
        "store verify removed a download under way"
    );

    // The first server still serves; once it is gone, a new one starts.
    let r = client()
        .get(format!("{}/healthz", first.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    first.kill();
    let again = ServerProcess::start(&p.config, dir.join("again.toml"));
    assert!(
        !in_flight.exists(),
        "a start clears what a dead server left"
    );
    drop(again);
}

// ---- T02: a pool file replaced upstream under the same name --------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_file_replaced_upstream_never_replaces_what_a_snapshot_serves() {
    let mut s = Setup::new(Backend::Sqlite, Duration::ZERO).await;
    s.sync().await;
    s.promote(&[]).await.unwrap();
    let old = s.repo.package("hello-data").clone();

    // A host on the approved channel and one on the mirror both fetch the original bytes.
    let approved = s.host("approved", "approved");
    assert_eq!(fetch_afresh(&approved, "hello-data").await, old.sha256);
    let mirror_host = AptRoot::new(&s.dir.path().join("mirror-host")).unwrap();
    mirror_host
        .add_source(
            "aptgate",
            &s.app.mirror_uri(),
            "stable",
            &["main", "contrib"],
            &s.repo.key_path(),
        )
        .unwrap();
    assert_eq!(fetch_afresh(&mirror_host, "hello-data").await, old.sha256);

    // The maintainer re-uploads hello-data: same name and version, new bytes, new index.
    let new = s.repo.reupload("hello-data").unwrap();
    assert_eq!(new.pool_path, old.pool_path);
    assert_ne!(new.sha256, old.sha256);
    s.sync().await;

    // Clients on the new index (the mirror, the testing channel that follows upstream) get
    // the new bytes.
    assert_eq!(fetch_afresh(&mirror_host, "hello-data").await, new.sha256);
    let testing = s.host("testing", "testing");
    assert_eq!(fetch_afresh(&testing, "hello-data").await, new.sha256);

    // The approved channel's snapshot pins the old sha256 and keeps serving the old bytes.
    assert_eq!(fetch_afresh(&approved, "hello-data").await, old.sha256);
}
