//! The SQL of retention: which snapshots are in use and which were deleted, each source's
//! last sync, packages that left upstream, rescues still to do, and re-signed publications
//! of past snapshots. Written once for both backends.

use super::model::*;
use super::queries::{
    check_digest, in_list, is_sqlite, placeholders, SnapshotRow, SNAPSHOT_COLUMNS,
};
use super::{query, Result};
use sqlx::{AnyConnection, FromRow};

/// Marks a snapshot used now (a channel moves to it, a snapshot is derived from it). Returns
/// false if garbage collection deleted it: the caller must not use it. In a transaction this
/// also locks the row, so a concurrent [`expire_snapshot`] either sees the new `used_at` or
/// wins first, never both.
pub async fn touch_snapshot(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE snapshots SET used_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(query("mark snapshot used"))?
            .rows_affected()
            == 1,
    )
}

/// Deletes a snapshot (marks it; the row stays) if it is still unused since `cutoff` and no
/// channel points at it. Returns whether it was deleted.
pub async fn expire_snapshot(
    conn: &mut AnyConnection,
    id: &str,
    cutoff: i64,
    now: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE snapshots SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL \
         AND used_at < $3 AND created_at < $3 \
         AND NOT EXISTS (SELECT 1 FROM channels WHERE channels.snapshot_id = snapshots.id)",
    )
    .bind(now)
    .bind(id)
    .bind(cutoff)
    .execute(&mut *conn)
    .await
    .map_err(query("delete snapshot"))?
    .rows_affected()
        == 1)
}

/// Every snapshot, deleted ones included, oldest first.
pub async fn all_snapshots(conn: &mut AnyConnection) -> Result<Vec<Snapshot>> {
    let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at, id");
    sqlx::query_as::<_, SnapshotRow>(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list snapshots"))?
        .into_iter()
        .map(Snapshot::try_from)
        .collect()
}

/// Every position of every channel, newest first per channel.
pub async fn all_positions(conn: &mut AnyConnection) -> Result<Vec<ChannelPosition>> {
    Ok(sqlx::query_as::<_, (String, i64, String, String, i64)>(
        "SELECT channel, generation, snapshot_id, publication_sha256, at FROM channel_history \
         ORDER BY channel, generation DESC",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read channel histories"))?
    .into_iter()
    .map(
        |(channel, generation, snapshot_id, publication_sha256, at)| ChannelPosition {
            channel,
            generation,
            snapshot_id,
            publication_sha256,
            at,
        },
    )
    .collect())
}

pub async fn record_source_sync(
    conn: &mut AnyConnection,
    source: &str,
    at: i64,
    snapshot_id: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_syncs (source, synced_at, snapshot_id) VALUES ($1, $2, $3) \
         ON CONFLICT (source) DO UPDATE SET synced_at = $2, snapshot_id = $3",
    )
    .bind(source)
    .bind(at)
    .bind(snapshot_id)
    .execute(&mut *conn)
    .await
    .map_err(query("record source sync"))?;
    Ok(())
}

pub async fn source_sync(conn: &mut AnyConnection, source: &str) -> Result<Option<SourceSync>> {
    Ok(sqlx::query_as::<_, (String, i64, Option<String>)>(
        "SELECT source, synced_at, snapshot_id FROM source_syncs WHERE source = $1",
    )
    .bind(source)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query("read source sync"))?
    .map(|(source, synced_at, snapshot_id)| SourceSync {
        source,
        synced_at,
        snapshot_id,
    }))
}

/// Records that these packages left their origin's index; `last_seen` is the last sync that
/// still listed them.
pub async fn mark_packages_gone(
    conn: &mut AnyConnection,
    sha256s: &[String],
    last_seen: i64,
) -> Result<()> {
    for chunk in sha256s.chunks(500) {
        // last_seen first, the digests after it (in this order: SQLite binds by position).
        let sql = format!(
            "UPDATE packages SET last_seen = {} WHERE sha256 IN ({})",
            if is_sqlite(conn) { "?" } else { "$1" },
            in_list(conn, 2, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(last_seen);
        for sha in chunk {
            q = q.bind(sha);
        }
        q.execute(&mut *conn)
            .await
            .map_err(query("mark packages gone"))?;
    }
    Ok(())
}

/// Where packages were recorded from and when they left it: (sha256, origin, last_seen) for
/// the digests the catalog knows.
pub async fn package_origins(
    conn: &mut AnyConnection,
    sha256s: &[String],
) -> Result<Vec<(String, String, Option<i64>)>> {
    let mut out = Vec::with_capacity(sha256s.len());
    for chunk in sha256s.chunks(500) {
        let sql = format!(
            "SELECT sha256, origin, last_seen FROM packages WHERE sha256 IN ({})",
            in_list(conn, 1, chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, String, Option<i64>)>(&sql);
        for sha in chunk {
            q = q.bind(sha);
        }
        out.extend(
            q.fetch_all(&mut *conn)
                .await
                .map_err(query("read package origins"))?,
        );
    }
    Ok(out)
}

/// Queues rescues (attempts 0) for packages that just left their source's index; those
/// already queued keep their record.
pub async fn queue_rescues(conn: &mut AnyConnection, rescues: &[Rescue]) -> Result<()> {
    for chunk in rescues.chunks(500) {
        let sql = format!(
            "INSERT INTO rescues (sha256, source, pool_path, size, first_failed, last_failed, \
             attempts, error) VALUES {} ON CONFLICT (sha256) DO NOTHING",
            placeholders(conn, chunk.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            check_digest("rescue sha256", &r.sha256)?;
            q = q
                .bind(&r.sha256)
                .bind(&r.source)
                .bind(&r.pool_path)
                .bind(r.size as i64)
                .bind(r.first_failed)
                .bind(r.last_failed)
                .bind(r.attempts)
                .bind(&r.error);
        }
        q.execute(&mut *conn)
            .await
            .map_err(query("queue rescues"))?;
    }
    Ok(())
}

/// A rescue failed (again): recorded for the next sync to retry.
pub async fn rescue_failed(conn: &mut AnyConnection, r: &Rescue) -> Result<()> {
    sqlx::query(
        "INSERT INTO rescues (sha256, source, pool_path, size, first_failed, last_failed, \
         attempts, error) VALUES ($1, $2, $3, $4, $5, $5, 1, $6) \
         ON CONFLICT (sha256) DO UPDATE SET last_failed = $5, \
         attempts = rescues.attempts + 1, error = $6",
    )
    .bind(&r.sha256)
    .bind(&r.source)
    .bind(&r.pool_path)
    .bind(r.size as i64)
    .bind(r.last_failed)
    .bind(&r.error)
    .execute(&mut *conn)
    .await
    .map_err(query("record failed rescue"))?;
    Ok(())
}

pub async fn rescue_done(conn: &mut AnyConnection, sha256: &str) -> Result<()> {
    sqlx::query("DELETE FROM rescues WHERE sha256 = $1")
        .bind(sha256)
        .execute(&mut *conn)
        .await
        .map_err(query("clear rescue"))?;
    Ok(())
}

#[derive(FromRow)]
struct RescueRow {
    sha256: String,
    source: String,
    pool_path: String,
    size: i64,
    first_failed: i64,
    last_failed: i64,
    attempts: i64,
    error: String,
}

/// Rescues still to do, oldest failure first.
pub async fn rescues(conn: &mut AnyConnection) -> Result<Vec<Rescue>> {
    Ok(sqlx::query_as::<_, RescueRow>(
        "SELECT sha256, source, pool_path, size, first_failed, last_failed, attempts, error \
         FROM rescues ORDER BY first_failed, sha256",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read rescues"))?
    .into_iter()
    .map(|r| Rescue {
        sha256: r.sha256,
        source: r.source,
        pool_path: r.pool_path,
        size: r.size as u64,
        first_failed: r.first_failed,
        last_failed: r.last_failed,
        attempts: r.attempts,
        error: r.error,
    })
    .collect())
}

/// Records a past snapshot's re-signed publication.
pub async fn set_snapshot_publication(
    conn: &mut AnyConnection,
    channel: &str,
    snapshot_id: &str,
    publication_sha256: &str,
    signed_at: i64,
) -> Result<()> {
    check_digest("publication sha256", publication_sha256)?;
    sqlx::query(
        "INSERT INTO snapshot_publications (channel, snapshot_id, publication_sha256, signed_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (channel, snapshot_id) \
         DO UPDATE SET publication_sha256 = $3, signed_at = $4",
    )
    .bind(channel)
    .bind(snapshot_id)
    .bind(publication_sha256)
    .bind(signed_at)
    .execute(&mut *conn)
    .await
    .map_err(query("record snapshot publication"))?;
    Ok(())
}

/// The re-signed publication of a past snapshot of a channel, if there is one.
pub async fn snapshot_publication(
    conn: &mut AnyConnection,
    channel: &str,
    snapshot_id: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_as::<_, (String,)>(
        "SELECT publication_sha256 FROM snapshot_publications \
         WHERE channel = $1 AND snapshot_id = $2",
    )
    .bind(channel)
    .bind(snapshot_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query("read snapshot publication"))?
    .map(|r| r.0))
}

/// Every re-signed past-snapshot publication: (channel, snapshot, publication digest).
pub async fn snapshot_publications(
    conn: &mut AnyConnection,
) -> Result<Vec<(String, String, String)>> {
    sqlx::query_as::<_, (String, String, String)>(
        "SELECT channel, snapshot_id, publication_sha256 FROM snapshot_publications",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read snapshot publications"))
}
