//! `aptgate-agent`: see the crate documentation. This file only parses the command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use aptgate_agent::{
    config::AgentConfig,
    cycle::{self, Agent},
    host_root::HostRoot,
    protocol::Labels,
    state::{AgentState, StateDir},
    upgrade::{Finished, Upgrade},
};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    version,
    about = "The aptgate host agent: keeps this host's apt pointed at its channel"
)]
struct Cli {
    /// Where the agent keeps its key and state.
    #[arg(
        long,
        global = true,
        env = "APTGATE_AGENT_STATE_DIR",
        default_value = "/var/lib/aptgate-agent"
    )]
    state_dir: PathBuf,
    /// The apt/dpkg root the agent manages.
    #[arg(long, global = true, env = "APTGATE_AGENT_ROOT", default_value = "/")]
    root: PathBuf,
    /// The agent's configuration file (optional).
    #[arg(long, global = true, default_value = "/etc/aptgate/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a server, using a token an admin created.
    Enroll {
        /// The server's URL, e.g. https://aptgate.example.org (default: `server` in the config).
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        token: String,
        /// A label for this host, e.g. `--label site=berlin`; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Replace an existing identity with a new key.
        #[arg(long)]
        force: bool,
    },
    /// Check in once: apply the sources, upload the inventory, run queued commands.
    Checkin,
    /// Check in, then wait for news from the server, until SIGTERM or SIGINT.
    Run,
    /// Run (or resume) a rolling upgrade: plan, needs_update.d, the group's lease,
    /// pre_update.d, update.d, needs_reboot.d, reboot, post_update.d, release. Exits 0 when
    /// done or nothing is pending, 75 when the group had no slot in time (the next run asks
    /// again), 1 on failure.
    Upgrade {
        /// Resume a failed run at the step that failed (after fixing its cause) instead of
        /// reporting it.
        #[arg(long)]
        retry: bool,
    },
    /// Show this host's enrollment and what it last applied and reported.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v))
            if !k.is_empty()
                && !k.chars().any(char::is_control)
                && !v.chars().any(char::is_control) =>
        {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("{text:?} is not key=value")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APTGATE_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    let cli = Cli::parse();
    let enrolling = matches!(cli.command, Command::Enroll { .. });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(hint) = cycle::hint(&error, enrolling) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Exit code of an `upgrade` still waiting for a slot (sysexits' EX_TEMPFAIL).
const EXIT_STILL_WAITING: u8 = 75;

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = AgentConfig::load(&cli.config)?;
    if !cli.root.is_absolute() {
        bail!(
            "--root must be an absolute path, not {}",
            cli.root.display()
        );
    }
    // Hook directories sit next to the configuration file (`/etc/aptgate/pre_update.d`, …).
    let config_dir = cli
        .config
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let agent = Agent::new(
        StateDir::new(cli.state_dir),
        HostRoot::new(cli.root),
        config,
    );
    match cli.command {
        Command::Enroll {
            server,
            token,
            labels,
            force,
        } => {
            let labels: Labels = labels.into_iter().collect();
            let state = agent
                .enroll(server.as_deref(), &token, labels, force)
                .await?;
            println!("enrolled as {} ({})", state.host_id, status_word(&state));
        }
        Command::Checkin => {
            let outcome = agent.cycle().await?;
            println!(
                "checked in: {}, revision {}, {} command(s) run",
                serde_json::to_value(outcome.status)?
                    .as_str()
                    .unwrap_or("?"),
                outcome.rev,
                outcome.commands_run
            );
        }
        Command::Run => {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!("stopping (after the current check-in, if one is running)");
                let _ = stop_tx.send(true);
            });
            agent.run(stop_rx).await?;
        }
        Command::Upgrade { retry } => match Upgrade::new(&agent, &config_dir)?.run(retry).await? {
            Finished::Upgraded { snapshot } => {
                println!("upgraded to snapshot {snapshot}");
            }
            Finished::NothingToDo(why) => println!("{why}"),
            Finished::StillWaiting(why) => {
                println!(
                    "no upgrade slot yet ({why}); the next `aptgate-agent upgrade` asks again"
                );
                return Ok(ExitCode::from(EXIT_STILL_WAITING));
            }
        },
        Command::Status { json } => {
            let state = agent.status()?;
            let run = aptgate_agent::upgrade::run_state::load(&agent.state_dir)?;
            if json {
                let mut value = status_json(&state);
                value["upgrade_run"] = serde_json::to_value(&run)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_status(&state);
                if let Some(run) = run {
                    print_run(&run);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_word(state: &AgentState) -> String {
    serde_json::to_value(state.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn status_json(state: &AgentState) -> serde_json::Value {
    serde_json::json!({
        "host_id": state.host_id,
        "server": state.server,
        "status": state.status,
        "last_checkin": state.last_checkin,
        "sources_rev": state.sources_rev,
        "inventory_digest": state.inventory_digest,
        "labels": state.labels,
        "disabled_sources": state.disabled_sources,
        "pending_results": state.pending_results.len(),
    })
}

fn print_status(state: &AgentState) {
    let none = || "none".to_owned();
    println!("host:             {}", state.host_id);
    println!("server:           {}", state.server);
    println!("status:           {}", status_word(state));
    println!(
        "last check-in:    {}",
        state
            .last_checkin
            .map_or_else(|| "never".to_owned(), format_time)
    );
    println!(
        "sources applied:  {}",
        state.sources_rev.clone().unwrap_or_else(none)
    );
    println!(
        "inventory:        {}",
        state.inventory_digest.clone().unwrap_or_else(none)
    );
    if !state.disabled_sources.is_empty() {
        println!("disabled sources: {}", state.disabled_sources.join(" "));
    }
    if !state.pending_results.is_empty() {
        println!("results to send:  {}", state.pending_results.len());
    }
}

fn print_run(run: &aptgate_agent::upgrade::run_state::RunState) {
    let snapshot = run
        .plan
        .as_ref()
        .and_then(|p| p.snapshot.clone())
        .unwrap_or_else(|| "?".into());
    let how = match (&run.failed, &run.outcome) {
        (Some(failed), _) => format!("FAILED at {}: {failed}", run.step.as_str()),
        (None, Some(outcome)) => outcome.clone(),
        (None, None) => format!("in progress, at {}", run.step.as_str()),
    };
    println!(
        "upgrade run:      {} (snapshot {snapshot}, started {}): {how}",
        run.run_id,
        format_time(run.started_at)
    );
}

/// `2026-11-30 15:49:42 UTC` from a unix time (no date crate for one line of output).
fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
