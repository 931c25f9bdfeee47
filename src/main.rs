//! The `aptgate` command line.

use anyhow::Context;
use aptgate::{resolve_sources, AppState};
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
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let sources = resolve_sources(&config)?;
    let state = AppState::open(&config, &sources)?;
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
    aptgate::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("aptgate stopped");
    Ok(())
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
