//! The `aptgate` binary: `config show`, `serve` importing the host's apt sources, `store verify`.

use aptgate_tests::app::aptgate_command as aptgate;
use aptgate_tests::fixture::{FixtureRepo, FixtureSpec};
use aptgate_tests::upstream::Upstream;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn config_show_reports_values_and_where_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aptgate.toml");
    fs_err::write(
        &file,
        "data_dir = \"/srv/aptgate\"\n[mirror]\nnegative_cache = \"1m\"\n",
    )
    .unwrap();
    let out = aptgate()
        .args([
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
            "config",
            "show",
        ])
        .env("APTGATE_MIRROR__READ_TIMEOUT", "45s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_owned()
    };
    assert!(
        line("data_dir").contains("/srv/aptgate") && line("data_dir").contains("file"),
        "{text}"
    );
    assert!(
        line("listen").contains("127.0.0.1:9999") && line("listen").contains("cli --listen"),
        "{text}"
    );
    assert!(
        line("read_timeout").contains("45s")
            && line("read_timeout").contains("APTGATE_MIRROR__READ_TIMEOUT"),
        "{text}"
    );
    assert!(line("negative_cache").contains("1m"), "{text}");
    assert!(line("connect_timeout").contains("default"), "{text}");

    let bad = aptgate()
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .env("APTGATE_NO_SUCH_THING", "1")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("APTGATE_NO_SUCH_THING"));
}

/// With no sources configured, `serve` mirrors what the host's apt uses.
#[tokio::test(flavor = "multi_thread")]
async fn serve_imports_the_host_apt_sources() {
    let dir = tempfile::tempdir().unwrap();
    let repo =
        FixtureRepo::generate(&dir.path().join("upstream"), &FixtureSpec::default()).unwrap();
    let upstream = Upstream::start(repo.root().to_owned()).await;
    let apt_dir = dir.path().join("etc-apt");
    fs_err::create_dir_all(apt_dir.join("sources.list.d")).unwrap();
    fs_err::write(
        apt_dir.join("sources.list"),
        format!(
            "# the host's sources\ndeb [signed-by={}] {} stable main contrib\ndeb cdrom:[Debian]/ stable main\n",
            repo.key_path().display(),
            upstream.url()
        ),
    )
    .unwrap();
    let mut child = aptgate()
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "serve",
        ])
        .env("APTGATE_HOST_APT__DIR", &apt_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("aptgate did not start:\n{}", log.join("\n"))
            });
        log.push(line.clone());
        if let Some(rest) = line.split("addr=").nth(1) {
            if line.contains("listening") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        }
    };
    let text = log.join("\n");
    assert!(text.contains("imported host apt source"), "{text}");
    assert!(
        text.contains("cdrom"),
        "the cdrom entry is reported as skipped:\n{text}"
    );

    let listing = reqwest::get(format!("http://{addr}/mirror/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let source = listing
        .lines()
        .find_map(|l| {
            l.split("/mirror/")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no source listed:\n{listing}"));
    assert!(
        source.starts_with("127.0.0.1"),
        "source named after the upstream host: {source}"
    );
    let r = reqwest::get(format!(
        "http://{addr}/mirror/{source}/dists/stable/InRelease"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // SIGTERM: graceful shutdown.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn store_verify_quarantines_corrupt_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = aptgate_mirror::Store::open(data.join("store")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let good = runtime
        .block_on(store.insert(b"good blob", Default::default()))
        .unwrap();
    let bad = runtime
        .block_on(store.insert(b"soon corrupt", Default::default()))
        .unwrap();
    fs_err::write(store.blob_path(&bad), b"bit rot!!!!!").unwrap();

    let out = aptgate()
        .args(["--data-dir", data.to_str().unwrap(), "store", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("corrupt: {bad}")), "{text}");
    assert!(text.contains("verified 2 blobs"), "{text}");
    assert!(store.contains(&good));
    assert!(!store.contains(&bad));
    assert!(data.join("store/quarantine").join(bad.to_hex()).is_file());

    let again = aptgate()
        .args(["--data-dir", data.to_str().unwrap(), "store", "verify"])
        .output()
        .unwrap();
    assert!(again.status.success());
}
