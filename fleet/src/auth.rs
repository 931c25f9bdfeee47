//! Who sent an agent request: the four signed headers of `aptgate_agent::protocol`, checked in
//! this order — present (else 401), timestamp within the replay window (401 `stale_request`),
//! the host known (403 `unknown_host`), signature by that host's key over the request exactly
//! as received (403 `bad_signature`, audited), nonce not seen before (401 `replayed`,
//! audited), host not revoked (403 `revoked`). A host id is only ever taken from the signed
//! headers, never from a body, so a host can only reach its own rows.

use crate::error::{FleetError, Result};
use crate::store::HostRow;
use crate::Fleet;
use aptgate_agent::protocol::{headers, verify_request, REPLAY_WINDOW_SECS};
use aptgate_channels::catalog::{AuditAction, NewAuditEntry};
use aptgate_channels::now;
use axum::http::{HeaderMap, Method, Uri};

/// The authentication headers of one request.
pub struct Signed<'a> {
    pub host: &'a str,
    pub timestamp: i64,
    pub nonce: &'a str,
    pub signature: &'a str,
}

/// Reads the four headers; 401 when any is missing or malformed, or the timestamp is stale.
pub fn signed_headers(map: &HeaderMap) -> Result<Signed<'_>> {
    let get = |name: &str| map.get(name).and_then(|v| v.to_str().ok());
    let missing = || {
        FleetError::unauthorized(
            "unauthenticated",
            "missing or malformed agent authentication headers (x-aptgate-host, \
             x-aptgate-timestamp, x-aptgate-nonce, x-aptgate-signature)\nhint: agent requests \
             are signed with the host key from `aptgate-agent enroll`",
        )
    };
    let (Some(host), Some(timestamp), Some(nonce), Some(signature)) = (
        get(headers::HOST),
        get(headers::TIMESTAMP),
        get(headers::NONCE),
        get(headers::SIGNATURE),
    ) else {
        return Err(missing());
    };
    let timestamp: i64 = timestamp.parse().map_err(|_| missing())?;
    let nonce_ok =
        (16..=128).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_alphanumeric());
    if !nonce_ok || host.len() > 64 {
        return Err(missing());
    }
    let skew = (now() - timestamp).abs();
    if skew > REPLAY_WINDOW_SECS {
        return Err(FleetError::unauthorized(
            "stale_request",
            format!(
                "the request's timestamp is {skew} s away from the server's clock (at most \
                 {REPLAY_WINDOW_SECS} s)\nhint: synchronise the host's clock (NTP)"
            ),
        ));
    }
    Ok(Signed {
        host,
        timestamp,
        nonce,
        signature,
    })
}

impl Fleet {
    /// Authenticates a request from an enrolled host; returns its row.
    pub(crate) async fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        map: &HeaderMap,
        body: &[u8],
    ) -> Result<HostRow> {
        let signed = signed_headers(map)?;
        let host = match self.store.host(signed.host).await? {
            Some(h) if !signed.host.is_empty() => h,
            _ => return Err(FleetError::forbidden(
                "unknown_host",
                "no host enrolled under this id\nhint: enroll again with `aptgate-agent enroll`",
            )),
        };
        self.verify_signature(&host.public_key, signed.host, method, uri, &signed, body)
            .await?;
        if host.status == "revoked" {
            return Err(FleetError::forbidden(
                "revoked",
                format!("host {} was revoked", host.id),
            ));
        }
        Ok(host)
    }

    /// Checks the signature (by `public_key`) and the nonce; refusals are audited as coming
    /// from `claimed` (the host id the request named, or the key at enrollment).
    pub(crate) async fn verify_signature(
        &self,
        public_key: &str,
        claimed: &str,
        method: &Method,
        uri: &Uri,
        signed: &Signed<'_>,
        body: &[u8],
    ) -> Result<()> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Err(e) = verify_request(
            public_key,
            method.as_str(),
            path,
            signed.timestamp,
            signed.nonce,
            body,
            signed.signature,
        ) {
            self.audit_refused(claimed, path, &format!("bad signature: {e}"))
                .await;
            return Err(FleetError::forbidden(
                "bad_signature",
                "the request is not signed by this host's key",
            ));
        }
        let expires = signed.timestamp + REPLAY_WINDOW_SECS + 1;
        if !self
            .store
            .use_nonce(public_key, signed.nonce, expires)
            .await?
        {
            self.audit_refused(claimed, path, "replayed nonce").await;
            return Err(FleetError::unauthorized(
                "replayed",
                "this request (its nonce) was seen before",
            ));
        }
        Ok(())
    }

    /// Records a refused agent request (best effort: a refusal is answered regardless).
    pub(crate) async fn audit_refused(&self, claimed: &str, path: &str, reason: &str) {
        let entry = NewAuditEntry {
            at: now(),
            actor: format!("host:{}", truncate(claimed, 64)),
            action: AuditAction::Refused,
            channel: None,
            from_snapshot: None,
            to_snapshot: None,
            comment: Some(reason.to_owned()),
            summary: Some(serde_json::json!({ "path": truncate(path, 256) }).to_string()),
        };
        if let Err(e) = self.channels.catalog().append_audit(&entry).await {
            tracing::warn!(error = %e, "cannot audit a refused agent request");
        }
        tracing::warn!(host = claimed, path, reason, "refused agent request");
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
