//! Audit entries written in the fleet's own transactions (the `audit_log` table belongs to the
//! channels' catalog; the columns are the same).

use crate::error::{db, Result};
use aptgate_channels::catalog::NewAuditEntry;
use sqlx::AnyConnection;

pub async fn audit(conn: &mut AnyConnection, e: &NewAuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, channel, from_snapshot, to_snapshot, \
         comment, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.at)
    .bind(&e.actor)
    .bind(e.action.as_str())
    .bind(e.channel.as_deref())
    .bind(e.from_snapshot.as_deref())
    .bind(e.to_snapshot.as_deref())
    .bind(e.comment.as_deref())
    .bind(e.summary.as_deref())
    .execute(conn)
    .await
    .map_err(db("append audit entry"))?;
    Ok(())
}
