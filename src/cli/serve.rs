//! `aptgate serve`: the server, with its schedules (sync and auto-approval, re-signing before
//! `Valid-Until`), until SIGINT/SIGTERM.

use anyhow::Context;
use aptgate::{resolve_sources, AppState};
use aptgate_channels::Actor;
use aptgate_config::Config;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything in data_dir is touched: opening the store clears its tmp/.
    let _lock = aptgate::data_dir_lock::DataDirLock::acquire(&config.data_dir)?;
    if config.replica.is_some() {
        return serve_replica(config).await;
    }
    let sources = resolve_sources(&config)?;
    let state = AppState::open(&config, &sources).await?;
    state.channels.know_publications().await;
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
    if !config.retention.gc_interval.is_zero() {
        tokio::spawn(gc_schedule(
            state.channels.clone(),
            config.retention.gc_interval,
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

/// Replica mode: serves what the last complete sync applied and follows the parent in the
/// background; no upstream sync, no catalog, no signing key.
async fn serve_replica(config: Config) -> anyhow::Result<()> {
    let replica = aptgate_replicas::Replica::open(&config)
        .await
        .context("cannot open the replica")?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let parent = replica.config().parent.to_string();
    tracing::info!(%addr, %parent, seq = ?replica.applied().map(|a| a.seq), data_dir = %config.data_dir.display(), "aptgate replica listening");
    tokio::spawn(replica.clone().run());
    aptgate::serve_replica(listener, replica, &config.server, shutdown_signal()).await?;
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

/// Collects garbage every `interval`, the first time one interval after start.
async fn gc_schedule(
    channels: std::sync::Arc<aptgate_channels::Channels>,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = channels.gc(false, &Actor::new("schedule")).await {
            tracing::warn!(error = %e, "scheduled garbage collection failed");
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
