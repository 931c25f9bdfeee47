//! Local sources end to end, on SQLite and on PostgreSQL: `.deb` files uploaded through the CLI
//! and the API, refused when malformed or when a version would change its bytes, listed by
//! the local source's next sync, merged with an upstream source into a channel that follows
//! both (highest version wins), and fetched by real apt with signature verification.

use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::Actor;
use aptgate_config::{SourceConfig, SourceKind};
use aptgate_tests::app::client;
use aptgate_tests::both_backends;
use aptgate_tests::channels::*;
use aptgate_tests::db::Backend;
use aptgate_tests::fixture::{build_package, FixtureSpec, PackageSpec};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_backends!(
    uploads_feed_a_channel_that_follows_two_sources,
    bad_uploads_change_nothing
);

const LOCAL: &str = "inhouse";

/// An upload that must be refused: source, query, body, status, code, message excerpt.
type Refusal = (
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
    &'static str,
);

fn local_source() -> SourceConfig {
    SourceConfig {
        name: LOCAL.parse().unwrap(),
        kind: SourceKind::Local,
        url: None,
        suites: vec!["stable".into()],
        components: vec!["main".into()],
        architectures: vec!["amd64".into(), "arm64".into()],
        keyring: Vec::new(),
        inline_keys: Vec::new(),
        policy: Default::default(),
        fallback: Vec::new(),
    }
}

/// The channels' setup plus a local source; `testing` follows the fixture and it.
async fn setup(backend: Backend) -> (Setup, String) {
    let mut p = parts(
        backend,
        Duration::ZERO,
        FixtureSpec::default().large_payload(64 << 10),
    )
    .await;
    p.config.sources.push(local_source());
    p.config.channels[0].follows = vec!["fixture".parse().unwrap(), LOCAL.parse().unwrap()];
    let s = Setup::from_parts(p).await;
    let token = fs_err::read_to_string(s.app.data_dir().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    (s, token)
}

/// A `.deb` built like the fixture's (uncompressed control.tar).
fn deb(dir: &Path, name: &str, version: &str, arch: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.join(format!("{name}_{}_{arch}.deb", version.replace(':', "%3a")));
    let spec = PackageSpec::new(name, version, arch, "main", &["stable"]);
    let bytes = build_package(&path, &spec).unwrap();
    (path, bytes)
}

/// A `.deb` built by `dpkg-deb --build` (compressed control and data members).
fn dpkg_deb(dir: &Path, name: &str, version: &str, arch: &str) -> (PathBuf, Vec<u8>) {
    let tree = dir.join(format!("{name}-tree"));
    fs_err::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs_err::create_dir_all(tree.join(format!("usr/share/{name}"))).unwrap();
    fs_err::write(tree.join(format!("usr/share/{name}/README")), "in-house\n").unwrap();
    fs_err::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: Ops <ops@example.org>\nSection: admin\nPriority: optional\n\
             Description: in-house tool\n Built by dpkg-deb for aptgate's tests.\n"
        ),
    )
    .unwrap();
    let path = dir.join(format!("{name}_{version}_{arch}.deb"));
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = fs_err::read(&path).unwrap();
    (path, bytes)
}

/// `POST /api/v1/sources/{source}/uploads?{query}` with `body`: status and JSON answer.
async fn upload_api(
    s: &Setup,
    token: &str,
    source: &str,
    query: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = client()
        .post(format!(
            "{}/api/v1/sources/{source}/uploads?{query}",
            s.app.url
        ))
        .bearer_auth(token)
        .header("x-aptgate-actor", "alice")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn sync(s: &Setup, source: &str) -> aptgate_channels::SyncOutcome {
    s.app
        .state
        .channels
        .sync(source, &Actor::new("test"), &|_: &str| {})
        .await
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn upload_audits(s: &Setup) -> usize {
    s.app
        .state
        .channels
        .catalog()
        .audit(&AuditFilter {
            action: Some(AuditAction::Upload),
            limit: Some(1000),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .len()
}

async fn uploads_feed_a_channel_that_follows_two_sources(backend: Backend) {
    let (s, token) = setup(backend).await;
    let work = s.dir.path().join("debs");
    fs_err::create_dir_all(&work).unwrap();

    // Before the local source ever synced, testing follows the fixture alone.
    let first = sync(&s, "fixture").await;
    assert_eq!(first.followed_by, ["testing"]);
    let host = s.host("host-testing", "testing");
    assert_eq!(candidate(&host, "hello").await, "2.10-3");

    // Uploads: through the CLI (two files at once) and through the API.
    let (tool, tool_bytes) = deb(&work, "inhouse-tool", "1.0-1", "amd64");
    let (agent, agent_bytes) = dpkg_deb(&work, "inhouse-agent", "2.0-1", "all");
    let out = cli(
        &s,
        &token,
        &[
            "upload",
            tool.to_str().unwrap(),
            agent.to_str().unwrap(),
            "--to",
            LOCAL,
        ],
    )
    .unwrap();
    assert!(
        out.contains("inhouse-tool 1.0-1 amd64 → inhouse stable/main")
            && out.contains("inhouse-agent 2.0-1 all"),
        "{out}"
    );
    // hello 1:2.0-1 (an epoch) beats the fixture's 2.10-3; libfoo1 0.1-1 loses to 1.4.2-1.
    let (_, hello_bytes) = deb(&work, "hello", "1:2.0-1", "amd64");
    let (status, body) = upload_api(&s, &token, LOCAL, "suite=stable", hello_bytes.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(
        body["pool_path"], "pool/main/h/hello/hello_2.0-1_amd64.deb",
        "the epoch is not in the file name, as in Debian"
    );
    assert_eq!(body["sha256"], hex(&hello_bytes));
    let (_, old_libfoo) = deb(&work, "libfoo1", "0.1-1", "amd64");
    let (status, body) = upload_api(&s, &token, LOCAL, "", old_libfoo).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upload_audits(&s).await, 4, "every upload is audited");

    // The same bytes again: accepted, nothing changes.
    let (status, body) = upload_api(&s, &token, LOCAL, "", hello_bytes.clone()).await;
    assert_eq!((status, &body["created"]), (200, &serde_json::json!(false)));
    let out = cli(
        &s,
        &token,
        &["upload", tool.to_str().unwrap(), "--to", LOCAL],
    )
    .unwrap();
    assert!(out.contains("already uploaded"), "{out}");
    assert_eq!(upload_audits(&s).await, 4);

    // Uploads show only from the local source's next sync (here through the CLI): it
    // snapshots them and moves testing to the merge of both sources' snapshots.
    assert_eq!(candidate(&host, "hello").await, "2.10-3");
    let out = cli(&s, &token, &["sync", LOCAL]).unwrap();
    assert!(
        out.contains("inhouse: new snapshot") && out.contains("5 packages (4 new)"),
        "{out}"
    );
    assert!(out.contains("moved testing"), "{out}");
    let again = sync(&s, LOCAL).await;
    assert_eq!(again.snapshot, None);
    assert!(again.followed_by.is_empty(), "testing is at that merge");

    assert_eq!(candidate(&host, "hello").await, "1:2.0-1");
    assert_eq!(candidate(&host, "libfoo1").await, "1.4.2-1");
    assert_eq!(candidate(&host, "foo-utils").await, "1.4.2-1");
    assert_eq!(candidate(&host, "inhouse-tool").await, "1.0-1");
    host.download(&["inhouse-tool", "inhouse-agent", "hello"])
        .await
        .unwrap()
        .assert_success();
    let files = host.downloaded_files().unwrap();
    for (file, bytes) in [
        ("inhouse-tool_1.0-1_amd64.deb", &tool_bytes),
        ("inhouse-agent_2.0-1_all.deb", &agent_bytes),
        ("hello_1%3a2.0-1_amd64.deb", &hello_bytes),
    ] {
        let got = files
            .iter()
            .find(|f| f.file_name().unwrap().to_str().unwrap() == file)
            .unwrap_or_else(|| panic!("{file} not downloaded: {files:?}"));
        assert_eq!(&fs_err::read(got).unwrap(), bytes, "{file}");
    }
    // An arm64 host sees the `all` package but not the amd64 one.
    let mut arm = s.host("host-arm64", "testing");
    arm.set_arch("arm64");
    assert_eq!(candidate(&arm, "inhouse-agent").await, "2.0-1");
    assert!(!arm
        .apt_get(&["install", "-s", "inhouse-tool"])
        .await
        .unwrap()
        .success());

    // A new in-house version: listed after the next sync; the fixture syncing again (nothing
    // new upstream) does not move testing off the merge.
    let (_, tool2) = deb(&work, "inhouse-tool", "1.1-1", "amd64");
    let (status, body) = upload_api(&s, &token, LOCAL, "", tool2).await;
    assert_eq!(status, 200, "{body}");
    assert!(sync(&s, "fixture").await.followed_by.is_empty());
    assert_eq!(sync(&s, LOCAL).await.followed_by, ["testing"]);
    assert_eq!(candidate(&host, "inhouse-tool").await, "1.1-1");

    // Promotion, diff and publishing work on the merged snapshot as on any other.
    s.promote(&[]).await.unwrap();
    let approved = s.host("host-approved", "approved");
    assert_eq!(candidate(&approved, "inhouse-tool").await, "1.1-1");
    approved
        .download(&["inhouse-tool"])
        .await
        .unwrap()
        .assert_success();

    // Garbage collection keeps uploaded files (they have no upstream to come back from).
    let gc = s
        .app
        .state
        .channels
        .gc(false, &Actor::new("test"))
        .await
        .unwrap();
    assert_eq!(gc.freed.blobs, 0, "{gc:?}");
    assert!(s.app.blob_path(&hex(&tool_bytes)).is_file());
}

async fn bad_uploads_change_nothing(backend: Backend) {
    let (s, token) = setup(backend).await;
    let work = s.dir.path().join("debs");
    fs_err::create_dir_all(&work).unwrap();
    let (good, good_bytes) = deb(&work, "inhouse-tool", "1.0-1", "amd64");
    let (status, _) = upload_api(&s, &token, LOCAL, "", good_bytes.clone()).await;
    assert_eq!(status, 200);
    let uploads_before = s.app.state.channels.catalog().uploads(LOCAL).await.unwrap();

    let mut random = vec![0u8; 4096];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
    let (_, bad_version) = deb(&work, "bad-version", "one", "amd64");
    let truncated = good_bytes[..good_bytes.len() / 2].to_vec();
    let (_, foreign_arch) = deb(&work, "foreign", "1.0-1", "i386");
    let (_, rebuilt) = deb(&work, "inhouse-tool", "1.0-1", "amd64");
    assert_ne!(rebuilt, good_bytes, "a rebuild has other bytes");
    let cases: Vec<Refusal> = vec![
        (LOCAL, "", random, 400, "bad_upload", "not a .deb"),
        (LOCAL, "", Vec::new(), 400, "bad_upload", "empty"),
        (
            LOCAL,
            "",
            bad_version,
            400,
            "bad_upload",
            "invalid version \"one\"",
        ),
        (LOCAL, "", truncated, 400, "bad_upload", "truncated"),
        (
            LOCAL,
            "",
            foreign_arch,
            400,
            "bad_upload",
            "architecture i386",
        ),
        (
            LOCAL,
            "",
            rebuilt.clone(),
            409,
            "upload_conflict",
            "different contents",
        ),
        (
            LOCAL,
            "suite=unstable",
            good_bytes.clone(),
            400,
            "bad_upload",
            "no suite \"unstable\"",
        ),
        (
            "fixture",
            "",
            good_bytes.clone(),
            400,
            "bad_upload",
            "upstream mirror",
        ),
        (
            "nope",
            "",
            good_bytes.clone(),
            404,
            "unknown_source",
            "nope",
        ),
    ];
    for (source, query, body, want_status, want_code, want_text) in cases {
        let digest = hex(&body);
        let (status, answer) = upload_api(&s, &token, source, query, body).await;
        assert_eq!(status, want_status, "{want_text}: {answer}");
        assert_eq!(answer["code"], want_code, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(want_text), "{message}");
        if want_code != "unknown_source" && digest != hex(&good_bytes) {
            assert!(
                !s.app.blob_path(&digest).exists(),
                "{want_text}: nothing is stored"
            );
        }
    }
    assert_eq!(s.app.tmp_files(), 0, "no temp files are left");
    assert_eq!(
        s.app.state.channels.catalog().uploads(LOCAL).await.unwrap(),
        uploads_before,
        "nothing is recorded"
    );
    assert_eq!(upload_audits(&s).await, 1);

    // The CLI says why, with a hint, and fails.
    let rebuilt_path = work.join("rebuilt.deb");
    fs_err::write(&rebuilt_path, &rebuilt).unwrap();
    let err = cli(
        &s,
        &token,
        &["upload", rebuilt_path.to_str().unwrap(), "--to", LOCAL],
    )
    .unwrap_err();
    assert!(
        err.contains("different contents")
            && err.contains("hint:")
            && err.contains("upload_conflict"),
        "{err}"
    );
    let err = cli(
        &s,
        &token,
        &["upload", good.to_str().unwrap(), "--to", "fixture"],
    )
    .unwrap_err();
    assert!(err.contains("kind = \"local\""), "{err}");

    // A channel created at run time may follow several sources too; the local source's
    // sync lists the one good upload and moves it (and testing).
    let out = cli(
        &s,
        &token,
        &["channel", "create", "mixed", "--follows", "fixture,inhouse"],
    )
    .unwrap();
    assert!(out.contains("created channel mixed"), "{out}");
    let err = cli(
        &s,
        &token,
        &["channel", "create", "x", "--follows", "inhouse,nope"],
    )
    .unwrap_err();
    assert!(
        err.contains("unknown source") || err.contains("unknown_source"),
        "{err}"
    );
    let outcome = sync(&s, LOCAL).await;
    assert_eq!(outcome.packages, 1);
    assert_eq!(outcome.followed_by, ["mixed", "testing"]);
    let host = s.host("host-mixed", "mixed");
    assert_eq!(candidate(&host, "inhouse-tool").await, "1.0-1");
}
