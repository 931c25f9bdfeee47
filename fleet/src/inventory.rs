//! Inventory uploads: gzip'd JSON, decompressed with a cap (a gzip bomb stops at
//! `MAX_INVENTORY_BYTES`), checked (UTF-8, types, bounded printable fields, the digest
//! recomputed) before anything is stored; refused uploads change nothing (400 with a code).

use crate::error::{FleetError, Result};
use crate::store::HostRow;
use crate::Fleet;
use aptgate_agent::protocol::{
    inventory_digest, InstalledPackage, InventoryAccepted, InventoryUpload, MAX_INVENTORY_BYTES,
};
use aptgate_channels::now;
use axum::http::HeaderMap;
use bytes::Bytes;
use std::io::Read;

/// Longest package field accepted (names, versions, status).
const MAX_FIELD: usize = 256;

/// Decompresses and checks an upload; the packages and their digest.
pub fn parse_upload(gzip: &[u8]) -> Result<InventoryUpload> {
    let bad = |code: &'static str, message: String| FleetError::bad_request(code, message);
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzip)
        .take(MAX_INVENTORY_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| {
            bad(
                "bad_inventory",
                format!("the inventory is not valid gzip: {e}"),
            )
        })?;
    if json.len() > MAX_INVENTORY_BYTES {
        return Err(bad(
            "inventory_too_large",
            format!("the inventory is larger than {MAX_INVENTORY_BYTES} bytes uncompressed"),
        ));
    }
    let text = std::str::from_utf8(&json)
        .map_err(|e| bad("bad_utf8", format!("the inventory is not UTF-8: {e}")))?;
    let upload: InventoryUpload = serde_json::from_str(text)
        .map_err(|e| bad("bad_inventory", format!("the inventory is malformed: {e}")))?;
    for p in &upload.packages {
        check_package(p)?;
    }
    let digest = inventory_digest(&upload.packages);
    if digest != upload.digest {
        return Err(bad(
            "digest_mismatch",
            format!(
                "the inventory's digest is {digest}, not {} as sent\nhint: the digest is \
                 protocol::inventory_digest of the packages",
                upload.digest
            ),
        ));
    }
    Ok(upload)
}

fn check_package(p: &InstalledPackage) -> Result<()> {
    let fields = [
        &p.name,
        &p.architecture,
        &p.version,
        &p.source,
        &p.source_version,
        &p.status,
    ];
    let ok = !p.name.is_empty()
        && !p.architecture.is_empty()
        && !p.version.is_empty()
        && fields
            .iter()
            .all(|f| f.len() <= MAX_FIELD && !f.chars().any(|c| c.is_control() || c == '\t'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_inventory",
            format!(
                "invalid package entry {:?}: name, architecture and version are required; \
                 fields are at most {MAX_FIELD} characters without control characters",
                p.name.chars().take(64).collect::<String>()
            ),
        ))
    }
}

impl Fleet {
    pub(crate) async fn upload_inventory(
        &self,
        host: &HostRow,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<InventoryAccepted> {
        let gzip = headers
            .get(axum::http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        if !gzip {
            return Err(FleetError::bad_request(
                "bad_inventory",
                "the inventory must be sent gzip'd (Content-Encoding: gzip)",
            ));
        }
        let parse_body = body.clone();
        let upload = tokio::task::spawn_blocking(move || parse_upload(&parse_body))
            .await
            .expect("parsing an inventory does not panic")?;
        let count = upload.packages.len();
        self.store
            .insert_inventory(&upload.digest, count as i64, &body, now())
            .await?;
        self.store.set_inventory(&host.id, &upload.digest).await?;
        self.remember_inventory(&upload.digest, &upload.packages);
        Ok(InventoryAccepted {
            digest: upload.digest,
            packages: count,
        })
    }
}
