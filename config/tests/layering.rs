//! Loading: the shipped example parses; layers override in order and report their origin.

use aptgate_config::{load, LoadOptions, Origin, Override};
use std::path::PathBuf;
use std::time::Duration;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aptgate.example.toml")
}

#[test]
fn the_shipped_example_parses() {
    let loaded = load(&LoadOptions {
        file: Some(example()),
        ..Default::default()
    })
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.sources.len(), 3);
    assert!(c.sources[2].is_local() && c.sources[2].url.is_none());
    assert_eq!(c.channels[0].follows.len(), 2);
    assert_eq!(c.sources[0].name.as_str(), "debian");
    assert_eq!(c.sources[1].url.as_ref().unwrap().scheme(), "https");
    assert_eq!(c.mirror.release_freshness, Duration::from_secs(300));
    assert_eq!(loaded.origins["sources"], Origin::File(example()));
}

#[test]
fn layers_override_in_order_and_remember_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    fs_err::write(
        &file,
        "data_dir = \"/from/file\"\n[server]\nlisten = \"127.0.0.1:1\"\n[mirror]\nread_timeout = \"1m\"\n",
    )
    .unwrap();
    let loaded = load(&LoadOptions {
        file: Some(file.clone()),
        env: vec![
            ("APTGATE_SERVER__LISTEN".into(), "127.0.0.1:2".into()),
            ("APTGATE_MIRROR__NEGATIVE_CACHE".into(), "2m".into()),
            ("APTGATE_LOG".into(), "debug".into()),
            ("PATH".into(), "/bin".into()),
        ],
        overrides: vec![Override {
            key: "server.listen".into(),
            value: "127.0.0.1:3".into(),
            flag: "--listen".into(),
        }],
    })
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    assert_eq!(c.server.listen.port(), 3);
    assert_eq!(c.mirror.read_timeout, Duration::from_secs(60));
    assert_eq!(c.mirror.negative_cache, Duration::from_secs(120));
    assert_eq!(loaded.origins["data_dir"], Origin::File(file.clone()));
    assert_eq!(
        loaded.origins["server.listen"],
        Origin::Cli("--listen".into())
    );
    assert_eq!(
        loaded.origins["mirror.negative_cache"],
        Origin::Env("APTGATE_MIRROR__NEGATIVE_CACHE".into())
    );
    assert_eq!(loaded.origins["mirror.connect_timeout"], Origin::Default);

    // What `config show` prints parses back to the same configuration.
    let shown = loaded.render();
    let stripped: String = shown
        .lines()
        .map(|l| l.split("  # from").next().unwrap())
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let back = dir.path().join("back.toml");
    fs_err::write(&back, stripped).unwrap();
    let reloaded = load(&LoadOptions {
        file: Some(back),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(reloaded.config, loaded.config);
}

#[test]
fn unknown_keys_and_bad_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    fs_err::write(&file, "[mirror]\nread_timout = \"1m\"\n").unwrap();
    let err = load(&LoadOptions {
        file: Some(file.clone()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("read_timout") && err.contains("bad.toml"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");

    let err = load(&LoadOptions {
        env: vec![("APTGATE_MIRROR__READTIMEOUT".into(), "1".into())],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("APTGATE_MIRROR__READTIMEOUT"), "{err}");

    let err = load(&LoadOptions {
        env: vec![("APTGATE_MIRROR__READ_TIMEOUT".into(), "soon".into())],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("soon"), "{err}");

    fs_err::write(
        &file,
        "[[sources]]\nname = \"a\"\nurl = \"ftp://x.example.org/\"\nsuites = [\"s\"]\nkeyring = [\"/k\"]\n",
    )
    .unwrap();
    let err = load(&LoadOptions {
        file: Some(file),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("http:// or https://"), "{err}");
}

#[test]
fn local_sources_and_channels_following_several() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let load_text = |text: &str| {
        fs_err::write(&file, text).unwrap();
        load(&LoadOptions {
            file: Some(file.clone()),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    };
    let local = "[[sources]]\nname = \"inhouse\"\nkind = \"local\"\nsuites = [\"stable\"]\n\
                 components = [\"main\"]\narchitectures = [\"amd64\"]\n";
    let loaded = load_text(&format!(
        "{local}[[channels]]\nname = \"one\"\nfollows = \"inhouse\"\n\
         [[channels]]\nname = \"list\"\nfollows = [\"inhouse\"]\n"
    ))
    .unwrap();
    let c = &loaded.config;
    assert!(c.sources[0].is_local());
    assert_eq!(c.channels[0].follows, c.channels[1].follows);

    let err = load_text(&local.replace("kind = \"local\"\n", "")).unwrap_err();
    assert!(
        err.contains("no url") && err.contains("kind = \"local\""),
        "{err}"
    );
    let err = load_text(&format!("{local}url = \"http://x.example.org/\"\n")).unwrap_err();
    assert!(err.contains("a local source has no url"), "{err}");
    let err = load_text(&local.replace("[\"amd64\"]", "[]")).unwrap_err();
    assert!(err.contains("at least one architecture"), "{err}");
    let err = load_text(&local.replace("[\"main\"]", "[\"../x\"]")).unwrap_err();
    assert!(err.contains("component \"../x\""), "{err}");
    let err = load_text(&format!(
        "{local}[[channels]]\nname = \"c\"\nfollows = [\"inhouse\", \"nope\"]\n"
    ))
    .unwrap_err();
    assert!(err.contains("names no configured source"), "{err}");
}

#[test]
fn a_replica_section_takes_defaults_and_its_token_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replica.toml");
    fs_err::write(
        &file,
        "[replica]\nparent = \"https://aptgate.example.org\"\n\
         fingerprint = \"0123456789ABCDEF0123456789ABCDEF01234567\"\n\
         token = \"aptgate-replica-secret\"\npolicy = { approved = \"immediate\" }\n",
    )
    .unwrap();
    let loaded = load(&LoadOptions {
        file: Some(file),
        ..Default::default()
    })
    .unwrap();
    let replica = loaded.config.replica.as_ref().unwrap();
    assert_eq!(replica.name, "replica");
    assert_eq!(replica.wait, Duration::from_secs(30));
    assert!(replica.carries("anything"), "every channel by default");
    assert_eq!(
        replica.policy("approved"),
        aptgate_config::FetchPolicy::Immediate
    );
    assert_eq!(
        replica.policy("testing"),
        aptgate_config::FetchPolicy::OnDemand
    );
    assert!(!loaded.render().contains("aptgate-replica-secret"));
    assert!(!format!("{replica:?}").contains("aptgate-replica-secret"));
}
