//! The `aptgate` command line.

use anyhow::Context;
use aptgate::{resolve_sources, AppState};
use aptgate_channels::catalog::{AuditEntry, ChannelState, HistoryEntry, Snapshot};
use aptgate_channels::signing::KeyInfo;
use aptgate_channels::{Actor, Diff, MoveOutcome, SyncOutcome};
use aptgate_config::{load, Config, LoadOptions, Override};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A caching apt mirror with staged approval channels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Default: /etc/aptgate/aptgate.toml if it exists.
    #[arg(long, global = true, env = "APTGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Where the store and metadata live (config: data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (config: server.listen).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// The server admin commands talk to (default: http://<server.listen>).
    #[arg(long, global = true, env = "APTGATE_SERVER")]
    server: Option<String>,
    /// Admin API token (default: read from <data_dir>/admin-token).
    #[arg(long, global = true, env = "APTGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the pull-through mirror at /mirror/<source>/.
    Serve,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Maintain the content-addressed store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Fetch and verify sources, record their packages, snapshot what changed.
    Sync {
        /// One source (default: every source).
        source: Option<String>,
    },
    /// Inspect snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Inspect channels.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Move a channel to the snapshot of the channel it promotes from.
    Promote {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Only these packages (comma-separated), with the dependencies the target lacks.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Why: recorded in the audit log.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Point an entry channel (one without promotes_from) at a snapshot.
    Publish {
        snapshot: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Apply a channel's auto-approval rule now (serve does after each scheduled sync).
    AutoApprove { channel: String },
    /// Keep a channel's current version of a package across promotions.
    Hold {
        channel: String,
        package: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Release a hold.
    Unhold {
        channel: String,
        package: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Move a channel back to an earlier snapshot of its history.
    Rollback {
        channel: String,
        /// The snapshot (default: the one before the current).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// The channel signing keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Query the audit log (newest first).
    Audit {
        #[arg(long)]
        channel: Option<String>,
        /// sync, snapshot, promote, hold, release, rollback or key.
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Every snapshot, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One snapshot: counts per suite/component/architecture, sources, time.
    Show { snapshot: String },
    /// What changes from snapshot A to snapshot B.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// A new snapshot with only the packages of SNAPSHOT that match.
    Filter {
        snapshot: String,
        /// Package name glob to keep (repeatable; `lib*`).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Section to keep (repeatable).
        #[arg(long = "section")]
        sections: Vec<String>,
        /// Priority to keep (repeatable).
        #[arg(long = "priority")]
        priorities: Vec<String>,
        /// Package name glob to drop (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// A name for the new snapshot.
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// A new snapshot merging several (e.g. main + updates + security); highest version wins.
    Merge {
        #[arg(required = true, num_args = 2..)]
        snapshots: Vec<String>,
        /// Merge every suite into this one (default: suite by suite).
        #[arg(long)]
        into_suite: Option<String>,
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// A new snapshot: BASE plus PACKAGES from FROM, with the dependencies BASE lacks.
    Pull {
        base: String,
        from: String,
        #[arg(required = true)]
        packages: Vec<String>,
        #[arg(long = "as")]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Every channel and where it points.
    List,
    /// Create a channel (the same rules as a [[channels]] entry in the configuration).
    Create {
        name: String,
        /// Follow a source: every sync that snapshots it moves this channel.
        #[arg(long)]
        follows: Option<String>,
        /// The channel promotions come from.
        #[arg(long)]
        promotes_from: Option<String>,
        /// How long a snapshot must have been in promotes_from (`72h`).
        #[arg(long)]
        min_soak: Option<String>,
        /// Promote versions first seen at least this long ago on their own (`7d`).
        #[arg(long)]
        auto_approve_after: Option<String>,
        /// Refuse `promote --only`.
        #[arg(long)]
        no_selective: bool,
        /// Suites to publish (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        suites: Vec<String>,
    },
    /// A channel's moves, newest first.
    History {
        channel: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the armored public key(s) hosts put in Signed-By.
    Show,
    /// List the signing keys (fingerprint, created, retired).
    List,
    /// Start a rotation: add a key; old and new both sign until the old one is retired.
    Add {
        #[arg(long)]
        comment: Option<String>,
    },
    /// Import an armored secret key (no passphrase) from FILE; it signs from now on.
    Import { file: std::path::PathBuf },
    /// End a rotation: stop a key from signing (never the last one).
    Retire {
        fingerprint: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration and where each value came from.
    Show,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every blob; move corrupt ones to quarantine/ and list them.
    Verify,
}

const DEFAULT_CONFIG: &str = "/etc/aptgate/aptgate.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers; readable text otherwise.
    if std::env::var("APTGATE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        let color = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
        builder.with_ansi(color).init();
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<aptgate_config::Loaded> {
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.is_file().then_some(default)
    });
    let mut overrides = Vec::new();
    let mut flag = |key: &str, value: String, flag: &str| {
        overrides.push(Override {
            key: key.to_owned(),
            value,
            flag: flag.to_owned(),
        })
    };
    if let Some(dir) = &cli.data_dir {
        flag("data_dir", dir.display().to_string(), "--data-dir");
    }
    if let Some(listen) = &cli.listen {
        flag("server.listen", listen.to_string(), "--listen");
    }
    Ok(load(&LoadOptions {
        file,
        env: std::env::vars().collect(),
        overrides,
    })?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&cli)?;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            print!("{}", loaded.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Store {
            command: StoreCommand::Verify,
        } => store_verify(&loaded.config),
        Command::Serve => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(serve(loaded.config))?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(admin(loaded.config, cli.server, cli.token, command))
        }
    }
}

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The server's admin API, as the CLI talks to it.
struct AdminClient {
    base: String,
    token: String,
    actor: String,
    http: reqwest::Client,
}

impl AdminClient {
    fn new(config: &Config, server: Option<String>, token: Option<String>) -> anyhow::Result<Self> {
        let base = server.unwrap_or_else(|| {
            // A server listening on every address is reached on loopback.
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        let token = match token {
            Some(t) => t,
            None => {
                let path = aptgate_channels::api::token_path(&config.data_dir);
                fs_err::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "cannot read the admin token\nhint: run as the user that runs \
                             `aptgate serve` (the token is in {}), or pass --token / APTGATE_TOKEN",
                            path.display()
                        )
                    })?
            }
        };
        let actor = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "cli".into());
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            actor,
            http: reqwest::Client::new(),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("x-aptgate-actor", &self.actor);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the aptgate server at {}\nhint: start it with `aptgate serve`, \
                 or point --server at it",
                self.base
            )
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("reading the server's answer")?;
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            anyhow::bail!(
                "{} ({})",
                error["message"].as_str().unwrap_or(&text),
                error["code"].as_str().unwrap_or(status.as_str())
            );
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from {url}"))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn admin(
    config: Config,
    server: Option<String>,
    token: Option<String>,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let api = AdminClient::new(&config, server, token)?;
    match command {
        Command::Sync { source } => {
            let started = std::time::Instant::now();
            let outcomes: Vec<SyncOutcome> = api
                .post("sync", serde_json::json!({ "source": source }))
                .await?;
            for outcome in outcomes {
                let name = &outcome.source;
                match &outcome.snapshot {
                    Some(id) => println!(
                        "{name}: new snapshot {id}: {} packages ({} new){}{}",
                        outcome.packages,
                        outcome.new_packages,
                        if outcome.downloaded > 0 {
                            format!(", {} downloaded", outcome.downloaded)
                        } else {
                            String::new()
                        },
                        if outcome.followed_by.is_empty() {
                            String::new()
                        } else {
                            format!("; moved {}", outcome.followed_by.join(", "))
                        }
                    ),
                    None => println!("{name}: unchanged ({} packages)", outcome.packages),
                }
            }
            eprintln!("synced in {:.2}s", started.elapsed().as_secs_f64());
        }
        Command::Snapshot { command } => match command {
            SnapshotCommand::List { json } => {
                let list: Vec<Snapshot> = api.get("snapshots").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!("{:<40} {:<20} {:<6} DESCRIPTION", "ID", "CREATED", "KIND");
                    for s in list {
                        println!(
                            "{:<40} {:<20} {:<6} {}",
                            s.id,
                            date(s.created_at),
                            s.kind.as_str(),
                            s.description
                        );
                    }
                }
            }
            SnapshotCommand::Show { snapshot } => {
                let shown: serde_json::Value =
                    api.get(&format!("snapshots/{}", encode(&snapshot))).await?;
                let s: Snapshot = serde_json::from_value(shown["snapshot"].clone())?;
                println!("snapshot:  {}", s.id);
                println!("created:   {}", date(s.created_at));
                println!("kind:      {}", s.kind.as_str());
                println!("sources:   {}", s.sources.join(", "));
                println!("about:     {}", s.description);
                println!("packages:  {}", shown["packages"]);
                for index in shown["indices"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<20} {:<28} {:>8} packages",
                        index["suite"].as_str().unwrap_or(""),
                        index["index"].as_str().unwrap_or(""),
                        index["packages"]
                    );
                }
            }
            SnapshotCommand::Diff { a, b, json } => {
                let diff: Diff = api
                    .get(&format!("snapshots/{}/diff/{}", encode(&a), encode(&b)))
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&diff)?);
                } else {
                    for (label, changes) in [
                        ("added", &diff.added),
                        ("removed", &diff.removed),
                        ("upgraded", &diff.upgraded),
                        ("downgraded", &diff.downgraded),
                    ] {
                        for c in changes {
                            println!(
                                "{label:<10} {:<16} {:<32} {:<8} {} -> {}",
                                c.suite,
                                c.name,
                                c.architecture,
                                c.from.as_deref().unwrap_or("-"),
                                c.to.as_deref().unwrap_or("-")
                            );
                        }
                    }
                    let s = diff.summary();
                    println!(
                        "{} added, {} removed, {} upgraded, {} downgraded",
                        s.added, s.removed, s.upgraded, s.downgraded
                    );
                }
            }
            SnapshotCommand::Filter {
                snapshot,
                names,
                sections,
                priorities,
                excludes,
                name,
            } => {
                let created: Snapshot = api
                    .post(
                        &format!("snapshots/{}/filter", encode(&snapshot)),
                        serde_json::json!({"names": names, "sections": sections,
                            "priorities": priorities, "excludes": excludes, "name": name}),
                    )
                    .await?;
                print_created(&created);
            }
            SnapshotCommand::Merge {
                snapshots,
                into_suite,
                name,
            } => {
                let created: Snapshot = api
                    .post(
                        "snapshots/merge",
                        serde_json::json!({"snapshots": snapshots, "into_suite": into_suite,
                            "name": name}),
                    )
                    .await?;
                print_created(&created);
            }
            SnapshotCommand::Pull {
                base,
                from,
                packages,
                name,
            } => {
                let created: Snapshot = api
                    .post(
                        &format!("snapshots/{}/pull", encode(&base)),
                        serde_json::json!({"from": from, "packages": packages, "name": name}),
                    )
                    .await?;
                print_created(&created);
            }
        },
        Command::Publish {
            snapshot,
            to,
            comment,
        } => {
            let outcome: MoveOutcome = api
                .post(
                    &format!("channels/{}/publish", encode(&to)),
                    serde_json::json!({"snapshot": snapshot, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
        Command::AutoApprove { channel } => {
            let outcome: Option<MoveOutcome> = api
                .post(
                    &format!("channels/{}/auto-approve", encode(&channel)),
                    serde_json::json!({}),
                )
                .await?;
            match outcome {
                Some(m) => print_move(&m),
                None => println!("{channel}: nothing old enough to auto-approve"),
            }
        }
        Command::Channel { command } => match command {
            ChannelCommand::Create {
                name,
                follows,
                promotes_from,
                min_soak,
                auto_approve_after,
                no_selective,
                suites,
            } => {
                let mut body = serde_json::json!({
                    "name": name, "suites": suites, "selective": !no_selective,
                });
                for (key, value) in [
                    ("follows", follows),
                    ("promotes_from", promotes_from),
                    ("min_soak", min_soak),
                    ("auto_approve_after", auto_approve_after),
                ] {
                    if let Some(v) = value {
                        body[key] = v.into();
                    }
                }
                let _: serde_json::Value = api.post("channels", body).await?;
                println!("created channel {name}");
            }
            ChannelCommand::List => {
                let list: Vec<ChannelState> = api.get("channels").await?;
                println!("{:<20} {:<40} {:>4} UPDATED", "CHANNEL", "SNAPSHOT", "GEN");
                for c in list {
                    println!(
                        "{:<20} {:<40} {:>4} {}",
                        c.name,
                        c.snapshot_id.as_deref().unwrap_or("(unpublished)"),
                        c.generation,
                        date(c.updated_at)
                    );
                }
            }
            ChannelCommand::History { channel, limit } => {
                let history: Vec<HistoryEntry> = api
                    .get(&format!(
                        "channels/{}/history?limit={limit}",
                        encode(&channel)
                    ))
                    .await?;
                println!(
                    "{:>4} {:<20} {:<9} {:<40} {:<12} COMMENT",
                    "GEN", "AT", "ACTION", "SNAPSHOT", "ACTOR"
                );
                for h in history {
                    println!(
                        "{:>4} {:<20} {:<9} {:<40} {:<12} {}",
                        h.generation,
                        date(h.at),
                        h.action.as_str(),
                        h.snapshot_id,
                        h.actor,
                        h.comment.unwrap_or_default()
                    );
                }
            }
        },
        Command::Promote {
            from,
            to,
            only,
            comment,
        } => {
            let outcome: MoveOutcome = api
                .post(
                    "promote",
                    serde_json::json!({"from": from, "to": to, "only": only, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
        Command::Hold {
            channel,
            package,
            comment,
        } => {
            let changed: serde_json::Value = api
                .post(
                    &format!("channels/{}/holds", encode(&channel)),
                    serde_json::json!({"package": package, "comment": comment}),
                )
                .await?;
            if changed["changed"] == true {
                println!("{package} is now held in {channel}");
            } else {
                println!("{package} was already held in {channel}");
            }
        }
        Command::Unhold {
            channel,
            package,
            comment,
        } => {
            let mut path = format!("channels/{}/holds/{}", encode(&channel), encode(&package));
            if let Some(c) = comment {
                path.push_str(&format!("?comment={}", encode(&c)));
            }
            let changed: serde_json::Value = api.call(reqwest::Method::DELETE, &path, None).await?;
            if changed["changed"] == true {
                println!("{package} is no longer held in {channel}");
            } else {
                println!("{package} was not held in {channel}");
            }
        }
        Command::Rollback {
            channel,
            to,
            comment,
        } => {
            let outcome: MoveOutcome = api
                .post(
                    &format!("channels/{}/rollback", encode(&channel)),
                    serde_json::json!({"to": to, "comment": comment}),
                )
                .await?;
            print_move(&outcome);
        }
        Command::Key { command } => match command {
            KeyCommand::Show => {
                let keys: serde_json::Value = api.get("keys").await?;
                print!("{}", keys["armored"].as_str().unwrap_or_default());
            }
            KeyCommand::List => {
                let keys: serde_json::Value = api.get("keys").await?;
                let list: Vec<KeyInfo> = serde_json::from_value(keys["keys"].clone())?;
                println!("{:<40} {:<20} RETIRED", "FINGERPRINT", "CREATED");
                for k in list {
                    println!(
                        "{:<40} {:<20} {}",
                        k.fingerprint,
                        date(k.created_at),
                        k.retired_at.map(date).unwrap_or_else(|| "-".into())
                    );
                }
            }
            KeyCommand::Add { comment } => {
                let key: KeyInfo = api
                    .post("keys", serde_json::json!({ "comment": comment }))
                    .await?;
                println!(
                    "added signing key {}; channels are now signed by every active key.\n\
                     Next: give hosts the new public key (`aptgate key show`), then \
                     `aptgate key retire OLD_FINGERPRINT`.",
                    key.fingerprint
                );
            }
            KeyCommand::Import { file } => {
                let armored = fs_err::read_to_string(&file)?;
                let imported: serde_json::Value = api
                    .post("keys/import", serde_json::json!({ "armored": armored }))
                    .await?;
                println!(
                    "imported signing key {}; channels re-signed",
                    imported["imported"].as_str().unwrap_or("?")
                );
            }
            KeyCommand::Retire {
                fingerprint,
                comment,
            } => {
                let _: serde_json::Value = api
                    .post(
                        &format!("keys/{}/retire", encode(&fingerprint)),
                        serde_json::json!({ "comment": comment }),
                    )
                    .await?;
                println!("retired {fingerprint}; channels re-signed without it");
            }
        },
        Command::Audit {
            channel,
            action,
            limit,
            json,
        } => {
            let mut query = format!("audit?limit={limit}");
            if let Some(c) = channel {
                query.push_str(&format!("&channel={}", encode(&c)));
            }
            if let Some(a) = action {
                query.push_str(&format!("&action={}", encode(&a)));
            }
            let entries: Vec<AuditEntry> = api.get(&query).await?;
            for e in entries {
                let e = e.entry;
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!(
                        "{} {:<10} {:<9} {:<12} {} -> {} {} {}",
                        date(e.at),
                        e.actor,
                        e.action.as_str(),
                        e.channel.as_deref().unwrap_or("-"),
                        e.from_snapshot.as_deref().unwrap_or("-"),
                        e.to_snapshot.as_deref().unwrap_or("-"),
                        e.summary.as_deref().unwrap_or(""),
                        e.comment.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Command::Serve | Command::Config { .. } | Command::Store { .. } => {
            unreachable!("handled in run")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_created(s: &Snapshot) {
    println!("created snapshot {}: {}", s.id, s.description);
}

fn print_move(m: &MoveOutcome) {
    println!(
        "{}: {} -> {} (generation {}): {} added, {} removed, {} upgraded, {} downgraded; {} packages fetched",
        m.channel,
        m.from_snapshot.as_deref().unwrap_or("(unpublished)"),
        m.to_snapshot,
        m.generation,
        m.diff.added,
        m.diff.removed,
        m.diff.upgraded,
        m.diff.downgraded,
        m.fetched
    );
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let sources = resolve_sources(&config)?;
    let state = AppState::open(&config, &sources).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "aptgate listening");
    for s in &sources {
        eprintln!(
            "  apt line for {}: deb [signed-by=KEYRING] http://{addr}/mirror/{} {} {}",
            s.name,
            s.name,
            s.suites.first().map(String::as_str).unwrap_or("SUITE"),
            s.components.join(" ")
        );
    }
    if !config.sync.interval.is_zero() {
        tokio::spawn(sync_schedule(
            state.channels.clone(),
            sources.iter().map(|s| s.name.to_string()).collect(),
            config.sync.interval,
        ));
    }
    if !config.publish.valid_until.is_zero() {
        tokio::spawn(resign_schedule(
            state.channels.clone(),
            config.publish.valid_until,
        ));
    }
    aptgate::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("aptgate stopped");
    Ok(())
}

/// Syncs every source every `interval`, the first time one interval after start.
async fn sync_schedule(
    channels: std::sync::Arc<aptgate_channels::Channels>,
    sources: Vec<String>,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for source in &sources {
            let actor = Actor {
                name: "schedule".into(),
                comment: None,
            };
            let progress = |line: &str| tracing::info!(source, "sync: {line}");
            match channels.sync(source, &actor, &progress).await {
                Ok(outcome) => tracing::info!(
                    source,
                    snapshot = ?outcome.snapshot,
                    packages = outcome.packages,
                    "scheduled sync done"
                ),
                Err(e) => tracing::warn!(source, error = %e, "scheduled sync failed"),
            }
        }
        for (channel, result) in channels.auto_approve_all().await {
            match result {
                Ok(Some(m)) => tracing::info!(
                    channel,
                    snapshot = %m.to_snapshot,
                    upgraded = m.diff.upgraded,
                    added = m.diff.added,
                    "auto-approved"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(channel, error = %e, "auto-approval failed"),
            }
        }
    }
}

/// Keeps every channel's `Valid-Until` in the future: checks every tenth of the validity
/// period (at most hourly) and re-signs what is past half its validity.
async fn resign_schedule(
    channels: std::sync::Arc<aptgate_channels::Channels>,
    valid: std::time::Duration,
) {
    let every = (valid / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match channels.resign_expiring().await {
            Ok(resigned) if !resigned.is_empty() => {
                tracing::info!(channels = %resigned.join(","), "re-signed before Valid-Until")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "re-signing failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn store_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = aptgate_mirror::Store::open(config.data_dir.join("store"))
        .context("cannot open the store")?;
    let started = std::time::Instant::now();
    let mut last = started;
    let report = store.verify_all(|blobs, bytes| {
        if last.elapsed().as_secs() >= 2 {
            last = std::time::Instant::now();
            eprintln!("verified {blobs} blobs, {} MiB ...", bytes >> 20);
        }
    })?;
    for bad in &report.corrupt {
        println!(
            "corrupt: {} (content hashes to {}), moved to {}",
            bad.name,
            bad.actual,
            bad.quarantined_to.display()
        );
    }
    println!(
        "verified {} blobs ({} MiB) in {:.1}s: {} corrupt",
        report.blobs,
        report.bytes >> 20,
        started.elapsed().as_secs_f64(),
        report.corrupt.len()
    );
    Ok(if report.corrupt.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
