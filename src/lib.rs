//! The aptgate server: composes the domain crates' state and routers. Domain logic lives in
//! the crates (`mirror/`, `channels/`, …); this crate only wires them together.

mod server;

use anyhow::Context;
use aptgate_channels::Channels;
use aptgate_config::{Config, ServerConfig, SourceConfig};
use aptgate_fleet::Fleet;
use aptgate_mirror::Mirror;
use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub mod data_dir_lock;

/// Everything the routes share.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub channels: Arc<Channels>,
    pub fleet: Arc<Fleet>,
    /// The connection limits [`serve`] applies.
    pub server: ServerConfig,
}

impl FromRef<AppState> for Arc<Channels> {
    fn from_ref(state: &AppState) -> Self {
        state.channels.clone()
    }
}

impl FromRef<AppState> for Arc<Fleet> {
    fn from_ref(state: &AppState) -> Self {
        state.fleet.clone()
    }
}

impl FromRef<AppState> for Arc<Mirror> {
    fn from_ref(state: &AppState) -> Self {
        state.mirror.clone()
    }
}

impl AppState {
    /// Opens the store, loads every source's keyring, opens the catalog and the signing
    /// keys; `sources` is the resolved list (see [`resolve_sources`]).
    pub async fn open(config: &Config, sources: &[SourceConfig]) -> anyhow::Result<Self> {
        let mirror = Mirror::new(&config.data_dir, sources, &config.mirror)
            .with_context(|| format!("cannot open the mirror in {}", config.data_dir.display()))?;
        let channels = Channels::open(config, sources, mirror.clone())
            .await
            .context("cannot open the channels")?;
        let fleet = Fleet::open(channels.clone(), &config.fleet, &config.rollout)
            .await
            .context("cannot open the fleet")?;
        Ok(Self {
            mirror,
            channels,
            fleet,
            server: config.server.clone(),
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(aptgate_mirror::routes())
        .merge(aptgate_channels::routes::routes())
        .merge(aptgate_channels::api::routes(
            state.channels.clone(),
            aptgate_fleet::admin::endpoints(),
        ))
        .merge(aptgate_fleet::agent_api::routes())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> String {
    let mut out = state.mirror.metrics().render();
    out.push_str(&state.channels.metrics().render());
    out.push_str(&state.fleet.rollout_metrics());
    out
}

/// The configured sources, or — when none are configured — the host's own apt sources.
pub fn resolve_sources(config: &Config) -> anyhow::Result<Vec<SourceConfig>> {
    if !config.sources.is_empty() {
        return Ok(config.sources.clone());
    }
    let dir = &config.host_apt.dir;
    let import = aptgate_config::host_sources(dir);
    for skipped in &import.skipped {
        let at = match skipped.line {
            Some(line) => format!("{}:{line}", skipped.file.display()),
            None => skipped.file.display().to_string(),
        };
        tracing::warn!(entry = %at, reason = %skipped.reason, "skipped a host apt source");
    }
    if import.sources.is_empty() {
        anyhow::bail!(
            "no sources configured and none could be imported from {}\n\
             hint: add [[sources]] to the configuration file (see config/aptgate.example.toml)",
            dir.display()
        );
    }
    for s in &import.sources {
        tracing::info!(
            source = %s.name, url = %s.url.as_ref().map(|u| u.as_str()).unwrap_or_default(), suites = %s.suites.join(","),
            components = %s.components.join(","),
            "imported host apt source"
        );
    }
    Ok(import.sources)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight; clients that are
/// slow to send a request head, or send an oversized one, are cut off (see `server.rs`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.server.clone();
    server::run(listener, router(state), &limits, shutdown).await
}
