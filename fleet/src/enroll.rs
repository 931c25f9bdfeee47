//! Enrollment: a token an admin created, a new host key (the request is signed with it: proof
//! of possession) and the host's facts give a host id.
//!
//! The same key and machine-id again: the same host (idempotent, no token use). The same key
//! with another machine-id: a cloned machine — a new host in `pending`, and both flagged; never
//! merged. A `--manual-approval` token enrolls hosts as `pending`.

use crate::auth::signed_headers;
use crate::error::{db, FleetError, Result};
use crate::selector::check_labels;
use crate::store::{audit, LabelOrigin, NewHost, Store};
use crate::Fleet;
use aptgate_agent::protocol::{EnrollRequest, EnrollResponse, HostStatus, Labels};
use aptgate_channels::catalog::{AuditAction, NewAuditEntry};
use aptgate_channels::now;
use axum::http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

impl Fleet {
    pub(crate) async fn enroll(
        &self,
        method: &Method,
        uri: &Uri,
        map: &HeaderMap,
        body: &[u8],
    ) -> Result<EnrollResponse> {
        let signed = signed_headers(map)?;
        let req: EnrollRequest = serde_json::from_slice(body).map_err(|e| {
            FleetError::bad_request("bad_request", format!("invalid enrollment request: {e}"))
        })?;
        let key_ok = req.public_key.len() == 64
            && req
                .public_key
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !key_ok {
            return Err(FleetError::bad_request(
                "bad_key",
                "public_key must be 64 lowercase hex characters (Ed25519)",
            ));
        }
        check_labels(&req.labels)?;
        check_fact("machine_id_sha256", &req.facts.machine_id_sha256, 64)?;
        check_fact("hostname", &req.facts.hostname, 253)?;
        check_fact("agent_version", &req.facts.agent_version, 64)?;
        let claimed = format!("key:{}", &req.public_key[..16]);
        self.verify_signature(&req.public_key, &claimed, method, uri, &signed, body)
            .await?;

        let now = now();
        let secret_sha256 = hex::encode(Sha256::digest(req.token.trim().as_bytes()));
        let mut tx = self.store.begin().await.map_err(db("begin"))?;
        let token = Store::token_by_secret(&mut tx, &secret_sha256)
            .await?
            .ok_or_else(|| {
                FleetError::unauthorized(
                    "bad_token",
                    "unknown enrollment token\nhint: create one with `aptgate fleet token create`",
                )
            })?;
        if token.revoked != 0 {
            return Err(FleetError::forbidden(
                "token_revoked",
                format!("enrollment token {} was revoked", token.id),
            ));
        }
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(FleetError::forbidden(
                "token_expired",
                format!(
                    "enrollment token {} has expired\nhint: create a new one",
                    token.id
                ),
            ));
        }

        let same_key = Store::hosts_with_key(&mut tx, &req.public_key).await?;
        if let Some(existing) = same_key
            .iter()
            .find(|h| h.machine_id_sha256 == req.facts.machine_id_sha256)
        {
            // A re-enrollment of the same machine: same host, nothing consumed.
            tx.rollback().await.map_err(db("rollback"))?;
            if existing.status == "revoked" {
                return Err(FleetError::forbidden(
                    "revoked",
                    format!("host {} was revoked", existing.id),
                ));
            }
            return Ok(EnrollResponse {
                host_id: existing.id.clone(),
                status: status_of(&existing.status),
                poll: self.poll(),
            });
        }
        if token.uses_left == Some(0) || !Store::use_token(&mut tx, &token.id).await? {
            return Err(FleetError::forbidden(
                "token_exhausted",
                format!(
                    "enrollment token {} has no uses left\nhint: create a new one",
                    token.id
                ),
            ));
        }

        let host_id = format!("h-{}", hex::encode(rand::random::<[u8; 8]>()));
        let clone_of: Vec<&str> = same_key.iter().map(|h| h.id.as_str()).collect();
        let flagged = (!clone_of.is_empty()).then(|| {
            format!(
                "clone of {}: same key, different machine-id",
                clone_of.join(", ")
            )
        });
        let status = if token.manual_approval != 0 || flagged.is_some() {
            "pending"
        } else {
            "active"
        };
        let facts = serde_json::to_string(&req.facts).expect("facts serialize");
        Store::insert_host(
            &mut tx,
            &NewHost {
                id: &host_id,
                public_key: &req.public_key,
                machine_id_sha256: &req.facts.machine_id_sha256,
                status,
                flagged: flagged.as_deref(),
                facts: &facts,
                agent_version: &req.facts.agent_version,
                token_id: &token.id,
                now,
            },
        )
        .await?;
        for original in &clone_of {
            let note = format!("clone: {host_id} has the same key, different machine-id");
            Store::set_flagged(&mut tx, original, &note).await?;
        }
        let token_labels: Labels = serde_json::from_str(&token.labels).unwrap_or_default();
        for (k, v) in &token_labels {
            Store::set_label(&mut tx, &host_id, LabelOrigin::Admin, k, v).await?;
        }
        Store::replace_agent_labels(&mut tx, &host_id, &req.labels).await?;
        audit(
            &mut tx,
            &NewAuditEntry {
                at: now,
                actor: format!("host:{host_id}"),
                action: AuditAction::Host,
                channel: None,
                from_snapshot: None,
                to_snapshot: None,
                comment: flagged.clone(),
                summary: Some(
                    serde_json::json!({
                        "enrolled": host_id, "token": token.id, "status": status,
                        "hostname": req.facts.hostname,
                    })
                    .to_string(),
                ),
            },
        )
        .await?;
        tx.commit().await.map_err(db("commit"))?;
        tracing::info!(host = %host_id, token = %token.id, status, "host enrolled");
        Ok(EnrollResponse {
            host_id,
            status: status_of(status),
            poll: self.poll(),
        })
    }
}

pub(crate) fn status_of(status: &str) -> HostStatus {
    if status == "active" {
        HostStatus::Active
    } else {
        HostStatus::Pending
    }
}

/// A fact shown to admins and kept: bounded, printable.
pub(crate) fn check_fact(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() <= max && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_facts",
            format!("invalid {what}: at most {max} characters, no control characters"),
        ))
    }
}
