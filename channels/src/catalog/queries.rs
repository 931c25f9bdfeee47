//! The SQL, written once for both backends. Functions take a connection so the same query
//! serves a plain call and a transaction.

use super::model::*;
use super::{query, CatalogError, Result};
use sqlx::{AnyConnection, FromRow};
use std::fmt::Write;

pub(super) fn is_sqlite(conn: &AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

/// Rows per multi-row INSERT: few round trips, under PostgreSQL's 65535 parameters and
/// SQLite's 32766.
fn rows_per_insert(conn: &AnyConnection) -> usize {
    if is_sqlite(conn) {
        200
    } else {
        500
    }
}

/// `($1,$2,…),($n,…)` for `rows` rows of `columns` parameters — for SQLite `(?,?,…),…`, the
/// same parameters in the same order: SQLite looks a `$N` parameter up by name, walking every
/// name before it, so a statement with thousands of `$N` costs time quadratic in their number
/// (measured: 14 % of a 60k-package sync), while anonymous `?` are bound by position.
pub(super) fn placeholders(conn: &AnyConnection, rows: usize, columns: usize) -> String {
    let anonymous = is_sqlite(conn);
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ",(" });
        for col in 0..columns {
            if col > 0 {
                sql.push(',');
            }
            if anonymous {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", row * columns + col + 1);
            }
        }
        sql.push(')');
    }
    sql
}

/// `$first,$first+1,…` for `count` parameters of an `IN (…)` list — for SQLite `?,?,…` (see
/// [`placeholders`]); `first` is where the list starts among the statement's parameters.
pub(super) fn in_list(conn: &AnyConnection, first: usize, count: usize) -> String {
    let anonymous = is_sqlite(conn);
    (first..first + count)
        .map(|i| {
            if anonymous {
                "?".to_owned()
            } else {
                format!("${i}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Digests are stored as lowercase hex; anything else would silently miss on lookup.
pub(super) fn check_digest(what: &'static str, value: &str) -> Result<()> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(CatalogError::InvalidDigest {
            what,
            value: value.to_owned(),
        })
    }
}

pub async fn upsert_packages(
    conn: &mut AnyConnection,
    packages: &[NewPackage],
    now: i64,
) -> Result<u64> {
    for p in packages {
        check_digest("package sha256", &p.sha256)?;
    }
    let mut inserted = 0;
    for chunk in packages.chunks(rows_per_insert(conn)) {
        let sql = format!(
            "INSERT INTO packages (sha256, name, version, architecture, source, size, pool_path, \
             control, origin, first_seen) VALUES {} ON CONFLICT (sha256) DO UPDATE \
             SET last_seen = NULL WHERE packages.last_seen IS NOT NULL",
            placeholders(conn, chunk.len(), 10)
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(&p.sha256)
                .bind(&p.name)
                .bind(&p.version)
                .bind(&p.architecture)
                .bind(&p.source)
                .bind(p.size as i64)
                .bind(&p.pool_path)
                .bind(&p.control)
                .bind(&p.origin)
                .bind(now);
        }
        inserted += q
            .execute(&mut *conn)
            .await
            .map_err(query("insert packages"))?
            .rows_affected();

        let sql = format!(
            "INSERT INTO package_versions_seen (name, version, architecture, first_seen) \
             VALUES {} ON CONFLICT (name, version, architecture) DO NOTHING",
            placeholders(conn, chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(&p.name)
                .bind(&p.version)
                .bind(&p.architecture)
                .bind(now);
        }
        q.execute(&mut *conn)
            .await
            .map_err(query("record versions seen"))?;
    }
    Ok(inserted)
}

#[derive(FromRow)]
struct PackageRow {
    sha256: String,
    name: String,
    version: String,
    architecture: String,
    source: String,
    size: i64,
    pool_path: String,
    control: String,
    origin: String,
    first_seen: i64,
    last_seen: Option<i64>,
}

pub async fn package(conn: &mut AnyConnection, sha256: &str) -> Result<Option<Package>> {
    let row = sqlx::query_as::<_, PackageRow>(
        "SELECT sha256, name, version, architecture, source, size, pool_path, control, \
         origin, first_seen, last_seen FROM packages WHERE sha256 = $1",
    )
    .bind(sha256)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query("read package"))?;
    Ok(row.map(|r| Package {
        package: NewPackage {
            sha256: r.sha256,
            name: r.name,
            version: r.version,
            architecture: r.architecture,
            source: r.source,
            size: r.size as u64,
            pool_path: r.pool_path,
            control: r.control,
            origin: r.origin,
        },
        first_seen: r.first_seen,
        last_seen: r.last_seen,
    }))
}

pub async fn first_seen(
    conn: &mut AnyConnection,
    name: &str,
    version: &str,
    arch: &str,
) -> Result<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT first_seen FROM package_versions_seen \
         WHERE name = $1 AND version = $2 AND architecture = $3",
    )
    .bind(name)
    .bind(version)
    .bind(arch)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query("read first seen"))?;
    Ok(row.map(|r| r.0))
}

#[derive(FromRow)]
pub(super) struct SnapshotRow {
    id: String,
    name: Option<String>,
    created_at: i64,
    kind: String,
    description: String,
    manifest_sha256: String,
    sources: String,
    deleted_at: Option<i64>,
    used_at: i64,
}

impl TryFrom<SnapshotRow> for Snapshot {
    type Error = CatalogError;
    fn try_from(r: SnapshotRow) -> Result<Self> {
        Ok(Snapshot {
            kind: SnapshotKind::parse(&r.kind).ok_or(CatalogError::Corrupt {
                what: "snapshot kind",
                value: r.kind.clone(),
            })?,
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            description: r.description,
            manifest_sha256: r.manifest_sha256,
            sources: serde_json::from_str(&r.sources).map_err(|_| CatalogError::Corrupt {
                what: "snapshot sources",
                value: r.sources.clone(),
            })?,
            deleted_at: r.deleted_at,
            used_at: r.used_at,
        })
    }
}

pub(super) const SNAPSHOT_COLUMNS: &str =
    "id, name, created_at, kind, description, manifest_sha256, sources, deleted_at, used_at";

pub async fn insert_snapshot(conn: &mut AnyConnection, s: &Snapshot) -> Result<()> {
    check_digest("snapshot manifest sha256", &s.manifest_sha256)?;
    let sources = serde_json::to_string(&s.sources).map_err(|source| CatalogError::Encode {
        id: s.id.clone(),
        source,
    })?;
    sqlx::query(
        "INSERT INTO snapshots (id, name, created_at, kind, description, manifest_sha256, \
         sources, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $3)",
    )
    .bind(&s.id)
    .bind(s.name.as_deref())
    .bind(s.created_at)
    .bind(s.kind.as_str())
    .bind(&s.description)
    .bind(&s.manifest_sha256)
    .bind(sources)
    .execute(&mut *conn)
    .await
    .map_err(query("insert snapshot"))?;
    Ok(())
}

pub async fn snapshot(conn: &mut AnyConnection, id: &str) -> Result<Option<Snapshot>> {
    snapshot_where(conn, "id", id).await
}

pub async fn snapshot_by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<Snapshot>> {
    snapshot_where(conn, "name", name).await
}

async fn snapshot_where(
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
) -> Result<Option<Snapshot>> {
    let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {column} = $1");
    sqlx::query_as::<_, SnapshotRow>(&sql)
        .bind(value)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query("read snapshot"))?
        .map(Snapshot::try_from)
        .transpose()
}

/// Every snapshot garbage collection has not deleted, oldest first.
pub async fn list_snapshots(conn: &mut AnyConnection) -> Result<Vec<Snapshot>> {
    let sql = format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE deleted_at IS NULL ORDER BY created_at, id"
    );
    sqlx::query_as::<_, SnapshotRow>(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list snapshots"))?
        .into_iter()
        .map(Snapshot::try_from)
        .collect()
}

pub async fn append_audit(conn: &mut AnyConnection, e: &NewAuditEntry) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO audit_log (at, actor, action, channel, from_snapshot, to_snapshot, \
         comment, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(e.at)
    .bind(&e.actor)
    .bind(e.action.as_str())
    .bind(e.channel.as_deref())
    .bind(e.from_snapshot.as_deref())
    .bind(e.to_snapshot.as_deref())
    .bind(e.comment.as_deref())
    .bind(e.summary.as_deref())
    .fetch_one(&mut *conn)
    .await
    .map_err(query("append audit entry"))?;
    Ok(id)
}

#[derive(FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    channel: Option<String>,
    from_snapshot: Option<String>,
    to_snapshot: Option<String>,
    comment: Option<String>,
    summary: Option<String>,
}

pub async fn audit(conn: &mut AnyConnection, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
    let mut sql = String::from(
        "SELECT id, at, actor, action, channel, from_snapshot, to_snapshot, comment, summary \
         FROM audit_log WHERE 1 = 1",
    );
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if filter.channel.is_some() {
        let _ = write!(sql, " AND channel = ${}", next());
    }
    if filter.action.is_some() {
        let _ = write!(sql, " AND action = ${}", next());
    }
    if filter.since.is_some() {
        let _ = write!(sql, " AND at >= ${}", next());
    }
    let _ = write!(sql, " ORDER BY at DESC, id DESC LIMIT ${}", next());
    let mut q = sqlx::query_as::<_, AuditRow>(&sql);
    if let Some(channel) = &filter.channel {
        q = q.bind(channel);
    }
    if let Some(action) = filter.action {
        q = q.bind(action.as_str());
    }
    if let Some(since) = filter.since {
        q = q.bind(since);
    }
    q = q.bind(filter.limit.unwrap_or(100));
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .map_err(query("read audit log"))?;
    audit_entries(rows)
}

/// Up to `limit` audit entries with an id above `after_id`, oldest first: the export's pages.
pub async fn audit_after(
    conn: &mut AnyConnection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query_as::<_, AuditRow>(
        "SELECT id, at, actor, action, channel, from_snapshot, to_snapshot, comment, summary \
         FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read audit log"))?;
    audit_entries(rows)
}

fn audit_entries(rows: Vec<AuditRow>) -> Result<Vec<AuditEntry>> {
    rows.into_iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.id,
                entry: NewAuditEntry {
                    at: r.at,
                    actor: r.actor,
                    action: AuditAction::parse(&r.action).ok_or(CatalogError::Corrupt {
                        what: "audit action",
                        value: r.action.clone(),
                    })?,
                    channel: r.channel,
                    from_snapshot: r.from_snapshot,
                    to_snapshot: r.to_snapshot,
                    comment: r.comment,
                    summary: r.summary,
                },
            })
        })
        .collect()
}

// ---- channels --------------------------------------------------------------------------

/// Creates the channel row if it does not exist yet; a no-op otherwise.
pub async fn ensure_channel(conn: &mut AnyConnection, name: &str, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO channels (name, generation, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(query("create channel"))?;
    Ok(())
}

#[derive(FromRow)]
struct ChannelRow {
    name: String,
    snapshot_id: Option<String>,
    publication_sha256: Option<String>,
    generation: i64,
    updated_at: i64,
    rules: Option<String>,
}

impl From<ChannelRow> for ChannelState {
    fn from(r: ChannelRow) -> Self {
        ChannelState {
            name: r.name,
            snapshot_id: r.snapshot_id,
            publication_sha256: r.publication_sha256,
            generation: r.generation,
            updated_at: r.updated_at,
            rules: r.rules,
        }
    }
}

const CHANNEL_COLUMNS: &str =
    "name, snapshot_id, publication_sha256, generation, updated_at, rules";

/// Creates a channel with its rules; returns false if the name is taken.
pub async fn create_channel(
    conn: &mut AnyConnection,
    name: &str,
    rules: &str,
    now: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO channels (name, generation, updated_at, rules) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(now)
    .bind(rules)
    .execute(&mut *conn)
    .await
    .map_err(query("create channel"))?
    .rows_affected()
        == 1)
}

pub async fn channel(conn: &mut AnyConnection, name: &str) -> Result<Option<ChannelState>> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE name = $1");
    Ok(sqlx::query_as::<_, ChannelRow>(&sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query("read channel"))?
        .map(ChannelState::from))
}

pub async fn list_channels(conn: &mut AnyConnection) -> Result<Vec<ChannelState>> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY name");
    Ok(sqlx::query_as::<_, ChannelRow>(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list channels"))?
        .into_iter()
        .map(ChannelState::from)
        .collect())
}

/// Moves a channel if it is still at `expected_generation`, and records the move in its
/// history; returns the new generation.
pub async fn move_channel(conn: &mut AnyConnection, m: &ChannelMove) -> Result<i64> {
    check_digest("publication sha256", &m.publication_sha256)?;
    let updated = sqlx::query(
        "UPDATE channels SET snapshot_id = $1, publication_sha256 = $2, \
         generation = generation + 1, updated_at = $3 WHERE name = $4 AND generation = $5",
    )
    .bind(&m.snapshot_id)
    .bind(&m.publication_sha256)
    .bind(m.at)
    .bind(&m.channel)
    .bind(m.expected_generation)
    .execute(&mut *conn)
    .await
    .map_err(query("move channel"))?
    .rows_affected();
    if updated == 0 {
        return Err(CatalogError::ChannelMoved {
            channel: m.channel.clone(),
            expected: m.expected_generation,
        });
    }
    let generation = m.expected_generation + 1;
    sqlx::query(
        "INSERT INTO channel_history (channel, generation, snapshot_id, publication_sha256, at, \
         action, actor, comment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&m.channel)
    .bind(generation)
    .bind(&m.snapshot_id)
    .bind(&m.publication_sha256)
    .bind(m.at)
    .bind(m.action.as_str())
    .bind(&m.actor)
    .bind(m.comment.as_deref())
    .execute(&mut *conn)
    .await
    .map_err(query("record channel history"))?;
    Ok(generation)
}

#[derive(FromRow)]
struct HistoryRow {
    generation: i64,
    snapshot_id: String,
    publication_sha256: String,
    at: i64,
    action: String,
    actor: String,
    comment: Option<String>,
}

/// A channel's moves, newest first.
pub async fn channel_history(
    conn: &mut AnyConnection,
    channel: &str,
    limit: i64,
) -> Result<Vec<HistoryEntry>> {
    sqlx::query_as::<_, HistoryRow>(
        "SELECT generation, snapshot_id, publication_sha256, at, action, actor, comment \
         FROM channel_history WHERE channel = $1 ORDER BY generation DESC LIMIT $2",
    )
    .bind(channel)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read channel history"))?
    .into_iter()
    .map(|r| {
        Ok(HistoryEntry {
            action: ChannelAction::parse(&r.action).ok_or(CatalogError::Corrupt {
                what: "channel action",
                value: r.action.clone(),
            })?,
            generation: r.generation,
            snapshot_id: r.snapshot_id,
            publication_sha256: r.publication_sha256,
            at: r.at,
            actor: r.actor,
            comment: r.comment,
        })
    })
    .collect()
}

/// Holds a package; returns false if it was already held.
pub async fn add_hold(conn: &mut AnyConnection, channel: &str, hold: &Hold) -> Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO holds (channel, package, at, actor, comment) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (channel, package) DO NOTHING",
    )
    .bind(channel)
    .bind(&hold.package)
    .bind(hold.at)
    .bind(&hold.actor)
    .bind(hold.comment.as_deref())
    .execute(&mut *conn)
    .await
    .map_err(query("add hold"))?
    .rows_affected()
        == 1)
}

/// Releases a hold; returns false if the package was not held.
pub async fn remove_hold(conn: &mut AnyConnection, channel: &str, package: &str) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM holds WHERE channel = $1 AND package = $2")
            .bind(channel)
            .bind(package)
            .execute(&mut *conn)
            .await
            .map_err(query("remove hold"))?
            .rows_affected()
            == 1,
    )
}

#[derive(FromRow)]
struct HoldRow {
    package: String,
    at: i64,
    actor: String,
    comment: Option<String>,
}

pub async fn holds(conn: &mut AnyConnection, channel: &str) -> Result<Vec<Hold>> {
    Ok(sqlx::query_as::<_, HoldRow>(
        "SELECT package, at, actor, comment FROM holds WHERE channel = $1 ORDER BY package",
    )
    .bind(channel)
    .fetch_all(&mut *conn)
    .await
    .map_err(query("read holds"))?
    .into_iter()
    .map(|r| Hold {
        package: r.package,
        at: r.at,
        actor: r.actor,
        comment: r.comment,
    })
    .collect())
}

/// Gives a snapshot its (unique) name.
pub async fn name_snapshot(conn: &mut AnyConnection, id: &str, name: &str) -> Result<()> {
    sqlx::query("UPDATE snapshots SET name = $1 WHERE id = $2")
        .bind(name)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(query("name snapshot"))?;
    Ok(())
}
