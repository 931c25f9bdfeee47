//! The agent routes (`aptgate_agent::protocol`): enroll, check-in, inventory, wait. Each
//! handler takes the raw body so the signature is checked over the bytes as sent.

use crate::assignment::pick;
use crate::enroll::{check_fact, status_of};
use crate::error::{FleetError, Result};
use crate::selector::check_labels;
use crate::store::{effective, HostRow, HostUpdate, Store};
use crate::Fleet;
use aptgate_agent::protocol::{
    self, rollout, CheckinRequest, CheckinResponse, Command, CommandKind, DesiredSources,
    HostStatus, WaitResponse, MAX_INVENTORY_BYTES, MAX_OUTPUT_BYTES,
};
use aptgate_channels::now;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A check-in body: facts, labels, lists and up to a few command outputs.
const MAX_CHECKIN_BYTES: usize = 4 << 20;
/// The longest apt error kept from a compliance report.
const MAX_REPORT_ERROR: usize = 8 << 10;
/// Most apt list lines and labels recorded per host.
const MAX_LISTS: usize = 512;

/// The agent routes; they authenticate by host key, not by the admin token.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Fleet>: FromRef<S>,
{
    Router::new()
        .route(protocol::ENROLL_PATH, post(enroll))
        .route(
            protocol::CHECKIN_PATH,
            post(checkin).layer(DefaultBodyLimit::max(MAX_CHECKIN_BYTES)),
        )
        .route(
            protocol::INVENTORY_PATH,
            put(inventory).layer(DefaultBodyLimit::max(MAX_INVENTORY_BYTES)),
        )
        .route(protocol::WAIT_PATH, get(wait))
        .route(rollout::RUN_PLAN_PATH, post(run_plan))
        .route(rollout::LEASE_ACQUIRE_PATH, post(lease_acquire))
        .route(
            rollout::LEASE_REPORT_PATH,
            post(lease_report).layer(DefaultBodyLimit::max(MAX_CHECKIN_BYTES)),
        )
}

/// Parses a signed JSON body.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| FleetError::bad_request("bad_request", format!("invalid {what}: {e}")))
}

async fn run_plan(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<rollout::RunPlan>> {
    let host = fleet.authenticate(&method, &uri, &headers, &body).await?;
    let req: rollout::RunPlanRequest = parse(&body, "run plan request")?;
    let host_header = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    Ok(Json(fleet.run_plan(&host, &req, host_header).await?))
}

async fn lease_acquire(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<rollout::LeaseAnswer>> {
    let host = fleet.authenticate(&method, &uri, &headers, &body).await?;
    let req: rollout::LeaseAcquire = parse(&body, "lease request")?;
    Ok(Json(fleet.acquire_lease(&host, &req).await?))
}

async fn lease_report(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<rollout::LeaseReportAnswer>> {
    let host = fleet.authenticate(&method, &uri, &headers, &body).await?;
    let req: rollout::LeaseReport = parse(&body, "lease report")?;
    Ok(Json(fleet.report_lease(&host, &req).await?))
}

async fn enroll(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<protocol::EnrollResponse>> {
    Ok(Json(fleet.enroll(&method, &uri, &headers, &body).await?))
}

async fn checkin(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CheckinResponse>> {
    let host = fleet.authenticate(&method, &uri, &headers, &body).await?;
    let req: CheckinRequest = serde_json::from_slice(&body)
        .map_err(|e| FleetError::bad_request("bad_request", format!("invalid check-in: {e}")))?;
    let host_header = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    Ok(Json(fleet.checkin(&host, req, host_header).await?))
}

async fn inventory(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<protocol::InventoryAccepted>> {
    let host = fleet.authenticate(&method, &uri, &headers, &body).await?;
    Ok(Json(fleet.upload_inventory(&host, &headers, body).await?))
}

async fn wait(
    State(fleet): State<Arc<Fleet>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<WaitResponse>> {
    // Boxed: the database futures are large, and a held wait should not carry their space.
    let host = Box::pin(fleet.authenticate(&method, &uri, &headers, b"")).await?;
    let known: i64 = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("rev="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            FleetError::bad_request("bad_request", "wait needs ?rev=N (the last rev seen)")
        })?;
    // A held wait keeps only the host id and a receiver: thousands of them stay small.
    let (id, rev) = (host.id, host.rev);
    drop((headers, uri));
    Ok(Json(WaitResponse {
        rev: fleet.wait_for_rev(&id, rev, known).await?,
    }))
}

impl Fleet {
    pub(crate) async fn checkin(
        &self,
        host: &HostRow,
        req: CheckinRequest,
        host_header: Option<&str>,
    ) -> Result<CheckinResponse> {
        check_labels(&req.labels)?;
        check_fact("hostname", &req.facts.hostname, 253)?;
        check_fact("agent_version", &req.facts.agent_version, 64)?;
        let bounded = |items: &[String]| {
            items.len() <= MAX_LISTS
                && items
                    .iter()
                    .all(|l| l.len() <= 1024 && !l.chars().any(char::is_control))
        };
        if !bounded(&req.sources.lists)
            || !bounded(&req.reboot.reasons)
            || !bounded(&req.facts.architectures)
            || req.sources.rev.as_ref().is_some_and(|r| r.len() > 128)
        {
            return Err(FleetError::bad_request(
                "bad_request",
                "check-in fields too long or with control characters",
            ));
        }
        let now = now();
        for result in &req.results {
            let output = cut(&result.output, MAX_OUTPUT_BYTES);
            let finished = result.finished_at.clamp(0, now + 86400);
            if !self
                .store
                .finish_command(
                    &host.id,
                    result.id,
                    result.exit_code.into(),
                    output,
                    finished,
                )
                .await?
            {
                tracing::warn!(host = %host.id, command = result.id, "result for a command that is not this host's open one; ignored");
            }
        }
        let facts = serde_json::to_string(&req.facts).expect("facts serialize");
        let lists = serde_json::to_string(&req.sources.lists).expect("lists serialize");
        let reboot = serde_json::to_string(&req.reboot).expect("reboot serializes");
        self.store
            .record_checkin(
                &host.id,
                &HostUpdate {
                    facts: &facts,
                    agent_version: &req.facts.agent_version,
                    last_seen: now,
                    applied_sources_rev: req.sources.rev.as_deref(),
                    lists: &lists,
                    reboot: &reboot,
                },
            )
            .await?;
        let rows = self.store.host_labels(&host.id).await?;
        let agent_labels: protocol::Labels = rows
            .iter()
            .filter(|r| r.origin == "agent")
            .map(|r| (r.key.clone(), r.value.clone()))
            .collect();
        let labels = if agent_labels != req.labels {
            let mut tx = self
                .store
                .begin()
                .await
                .map_err(crate::error::db("begin"))?;
            Store::replace_agent_labels(&mut tx, &host.id, &req.labels).await?;
            tx.commit().await.map_err(crate::error::db("commit"))?;
            effective(&self.store.host_labels(&host.id).await?)
        } else {
            effective(&rows)
        };
        let upload_inventory = match &req.inventory_digest {
            Some(d) if host.inventory_digest.as_ref() == Some(d) => false,
            Some(d) if d.len() == 64 && self.store.has_inventory(d).await? => {
                self.store.set_inventory(&host.id, d).await?;
                false
            }
            _ => true,
        };
        if host.status != "active" {
            return Ok(CheckinResponse {
                status: HostStatus::Pending,
                rev: host.rev,
                sources: self.desired_sources(None, &[], None).await?,
                commands: Vec::new(),
                upload_inventory,
                poll: self.poll(),
                profile: None,
            });
        }
        let rules = self.rules().await?;
        let sources: DesiredSources = self
            .desired_sources(pick(&rules, &labels), &req.facts.architectures, host_header)
            .await?;
        let commands = self
            .store
            .take_queued(&host.id, now)
            .await?
            .into_iter()
            .filter_map(|c| {
                Some(Command {
                    id: c.id,
                    kind: parse_kind(&c.kind)?,
                    packages: serde_json::from_str(&c.packages).unwrap_or_default(),
                })
            })
            .collect();
        let profile = self.desired_packages(&labels).await?;
        if let Some(report) = &req.compliance {
            self.record_compliance(&host.id, report, now).await?;
        }
        Ok(CheckinResponse {
            status: status_of(&host.status),
            rev: host.rev,
            sources,
            commands,
            upload_inventory,
            poll: self.poll(),
            profile,
        })
    }

    /// Keeps what the server uses of an agent's compliance report: the rev and the error.
    async fn record_compliance(
        &self,
        host: &str,
        report: &protocol::ComplianceReport,
        now: i64,
    ) -> Result<()> {
        if report.rev.len() > 128 || report.rev.chars().any(char::is_control) {
            return Err(FleetError::bad_request(
                "bad_request",
                "compliance rev too long or with control characters",
            ));
        }
        let error = report.error.as_deref().map(|e| cut(e, MAX_REPORT_ERROR));
        self.store
            .record_profile_report(host, &report.rev, error, now)
            .await
    }

    /// Returns the host's revision once it passes `known`, or after the wait time.
    pub(crate) async fn wait_for_rev(&self, host: &str, current: i64, known: i64) -> Result<i64> {
        if current > known {
            return Ok(current);
        }
        let mut rx = self.waiters.subscribe(host, current);
        // A rise between the authentication's read and the subscription: read once more.
        if let Some(rev) = Box::pin(self.store.host_rev(host)).await? {
            self.waiters.notify(host, rev);
        }
        let _ = tokio::time::timeout(self.config.wait, rx.wait_for(|rev| *rev > known)).await;
        let rev = *rx.borrow();
        self.waiters.release(host, rx);
        Ok(rev)
    }

    /// How often agents check in and how long a wait is held.
    pub fn poll(&self) -> protocol::Poll {
        protocol::Poll {
            interval_secs: self.config.checkin_interval.as_secs().max(1),
            wait_secs: self.config.wait.as_secs().max(1),
        }
    }

    /// Notices revision rises made by other server instances, and prunes expired nonces.
    pub(crate) async fn watch_revisions(fleet: std::sync::Weak<Fleet>) {
        let mut since = now() - 1;
        let mut last_prune = now();
        loop {
            tokio::time::sleep(REV_RECHECK).await;
            let Some(fleet) = fleet.upgrade() else { return };
            let checked = now();
            if !fleet.waiters.is_empty() {
                match fleet.store.revs_since(since - 1).await {
                    Ok(revs) => {
                        for (host, rev) in revs {
                            fleet.waiters.notify(&host, rev);
                        }
                        since = checked;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read host revisions"),
                }
            } else {
                since = checked;
            }
            if checked - last_prune >= 60 {
                last_prune = checked;
                if let Err(e) = fleet.store.prune_nonces(checked).await {
                    tracing::warn!(error = %e, "cannot prune agent nonces");
                }
            }
        }
    }
}

/// How often revisions raised elsewhere are looked for.
const REV_RECHECK: Duration = Duration::from_secs(2);

pub(crate) fn parse_kind(kind: &str) -> Option<CommandKind> {
    serde_json::from_value(serde_json::Value::String(kind.to_owned())).ok()
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
