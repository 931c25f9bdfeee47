//! The `aptgate` command line.

use anyhow::Context;
use aptgate::{resolve_sources, AppState};
use aptgate_channels::catalog::{AuditAction, AuditFilter};
use aptgate_channels::{Actor, MoveOutcome, PromoteRequest};
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
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Every channel and where it points.
    List,
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
            runtime.block_on(admin(loaded.config, command))
        }
    }
}

/// Who runs an admin command, for the audit log.
fn actor(comment: Option<String>) -> Actor {
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "cli".into());
    Actor { name, comment }
}

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

async fn admin(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    let sources = resolve_sources(&config)?;
    let state = AppState::open(&config, &sources).await?;
    let channels = &state.channels;
    match command {
        Command::Sync { source } => {
            let names: Vec<String> = match source {
                Some(s) => vec![s],
                None => sources.iter().map(|s| s.name.to_string()).collect(),
            };
            let started = std::time::Instant::now();
            for name in names {
                let outcome = channels
                    .sync(&name, &actor(None), &|line: &str| eprintln!("  {line}"))
                    .await?;
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
                let list = channels.catalog().list_snapshots().await?;
                if json {
                    let rows: Vec<_> = list
                        .iter()
                        .map(|s| {
                            serde_json::json!({"id": s.id, "created_at": s.created_at,
                                "kind": s.kind.as_str(), "sources": s.sources,
                                "description": s.description})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
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
                let s = channels.snapshot(&snapshot).await?;
                let manifest = channels.manifest(&s).await?;
                println!("snapshot:  {}", s.id);
                println!("created:   {}", date(s.created_at));
                println!("kind:      {}", s.kind.as_str());
                println!("sources:   {}", s.sources.join(", "));
                println!("about:     {}", s.description);
                println!("packages:  {}", manifest.package_count());
                for (suite, sm) in &manifest.suites {
                    for (key, files) in &sm.indices {
                        println!("  {suite:<20} {key:<28} {:>8} packages", files.packages);
                    }
                }
            }
            SnapshotCommand::Diff { a, b, json } => {
                let diff = channels.diff(&a, &b).await?;
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
        },
        Command::Channel { command } => match command {
            ChannelCommand::List => {
                println!("{:<20} {:<40} {:>4} UPDATED", "CHANNEL", "SNAPSHOT", "GEN");
                for c in channels.catalog().list_channels().await? {
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
                println!(
                    "{:>4} {:<20} {:<9} {:<40} {:<12} COMMENT",
                    "GEN", "AT", "ACTION", "SNAPSHOT", "ACTOR"
                );
                for h in channels.history(&channel, limit).await? {
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
            let outcome = channels
                .promote(&PromoteRequest { from, to, only }, &actor(comment))
                .await?;
            print_move(&outcome);
        }
        Command::Hold {
            channel,
            package,
            comment,
        } => {
            if channels.hold(&channel, &package, &actor(comment)).await? {
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
            if channels.unhold(&channel, &package, &actor(comment)).await? {
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
            let outcome = channels
                .rollback(&channel, to.as_deref(), &actor(comment))
                .await?;
            print_move(&outcome);
        }
        Command::Key {
            command: KeyCommand::Show,
        } => print!("{}", channels.public_keys()?),
        Command::Audit {
            channel,
            action,
            limit,
            json,
        } => {
            let action = match action {
                Some(a) => Some(AuditAction::parse(&a).with_context(|| {
                    format!("unknown action {a:?}; one of sync, snapshot, promote, hold, release, rollback, key")
                })?),
                None => None,
            };
            let entries = channels
                .catalog()
                .audit(&AuditFilter {
                    channel,
                    action,
                    since: None,
                    limit: Some(limit),
                })
                .await?;
            for e in entries {
                let e = e.entry;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"at": e.at, "actor": e.actor, "action": e.action.as_str(),
                            "channel": e.channel, "from": e.from_snapshot, "to": e.to_snapshot,
                            "comment": e.comment, "summary": e.summary})
                    );
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
    state.channels.catalog().close().await;
    Ok(ExitCode::SUCCESS)
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
            match channels.sync(source, &actor, &|_: &str| {}).await {
                Ok(outcome) => tracing::info!(
                    source,
                    snapshot = ?outcome.snapshot,
                    packages = outcome.packages,
                    "scheduled sync done"
                ),
                Err(e) => tracing::warn!(source, error = %e, "scheduled sync failed"),
            }
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
