//! The feed's tables (migrations `replicas/migrations/{sqlite,postgres}/2001_replicas.sql`).

use super::{CanonicalError, Result};
use sqlx::AnyPool;

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> CanonicalError {
    move |source| CanonicalError::Db { what, source }
}

pub(crate) struct FeedStore {
    pool: AnyPool,
}

/// How many child replicas' reports one replica may forward (its whole subtree).
pub const MAX_FORWARDED_PER_REPLICA: usize = 256;

/// A replica token and the latest report sent with it.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    pub name: String,
    pub created_at: i64,
    pub revoked: bool,
    pub report: Option<(i64, String)>,
}

impl FeedStore {
    pub(crate) fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// The feed position whose content is `content_sha256`: the last one if it matches,
    /// else a new one (the next `seq`, published now).
    pub(crate) async fn position_for(&self, content_sha256: &str, now: i64) -> Result<(i64, i64)> {
        for _ in 0..10 {
            let last: Option<(i64, i64, String)> = sqlx::query_as(
                "SELECT seq, published_at, content_sha256 FROM replica_feed ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading the feed"))?;
            let next = match last {
                Some((seq, at, content)) if content == content_sha256 => return Ok((seq, at)),
                Some((seq, _, _)) => seq + 1,
                None => 1,
            };
            // Another instance may take `next` first: then read again.
            let inserted = sqlx::query(
                "INSERT INTO replica_feed (seq, published_at, content_sha256) VALUES ($1, $2, $3) \
                 ON CONFLICT (seq) DO NOTHING",
            )
            .bind(next)
            .bind(now)
            .bind(content_sha256)
            .execute(&self.pool)
            .await
            .map_err(db("recording a feed position"))?;
            if inserted.rows_affected() == 1 {
                return Ok((next, now));
            }
        }
        Err(CanonicalError::Db {
            what: "recording a feed position",
            source: sqlx::Error::Protocol("the feed kept moving under this instance".into()),
        })
    }

    /// When the first position after `seq` was published (`None`: `seq` is the newest).
    pub(crate) async fn first_published_after(&self, seq: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT published_at FROM replica_feed WHERE seq > $1 ORDER BY seq LIMIT 1",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading the feed"))?;
        Ok(row.map(|(at,)| at))
    }

    /// Records a token; `false` if the name is taken.
    pub(crate) async fn insert_token(
        &self,
        name: &str,
        secret_sha256: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO replica_tokens (name, secret_sha256, created_by, created_at, revoked) \
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(secret_sha256)
        .bind(actor)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("creating a replica token"))?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Revokes a replica's token; `false` if there is none by that name.
    pub(crate) async fn revoke_token(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE replica_tokens SET revoked = 1 WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("revoking a replica token"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The replica a token secret (by its sha256) belongs to, unless revoked.
    pub(crate) async fn token_name(&self, secret_sha256: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM replica_tokens WHERE secret_sha256 = $1 AND revoked = 0",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("checking a replica token"))?;
        Ok(row.map(|(n,)| n))
    }

    pub(crate) async fn save_report(&self, name: &str, now: i64, report: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO replica_reports (name, received_at, report) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET received_at = excluded.received_at, report = excluded.report",
        )
        .bind(name)
        .bind(now)
        .bind(report)
        .execute(&self.pool)
        .await
        .map_err(db("saving a replica report"))?;
        Ok(())
    }

    /// Saves a report `via` forwards for a child under `key` (`via/child`), unless `via`
    /// already has [`MAX_FORWARDED_PER_REPLICA`] other forwarded rows, none silent for
    /// `stale_after` seconds: then `false`. A silent one makes room (the oldest goes), so a
    /// renamed child replaces its old row in time, and a replica's token cannot grow the
    /// table without bound.
    pub(crate) async fn save_forwarded(
        &self,
        via: &str,
        key: &str,
        now: i64,
        stale_after: i64,
        report: &str,
    ) -> Result<bool> {
        let prefix = format!("{via}/");
        // Names are compared in Rust: LIKE treats `_` (allowed in names) as a wildcard, and
        // PostgreSQL's collation may not order '/' by byte.
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, received_at FROM replica_reports")
                .fetch_all(&self.pool)
                .await
                .map_err(db("listing forwarded replica reports"))?;
        let forwarded: Vec<&(String, i64)> = rows
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .collect();
        let known = forwarded.iter().any(|(n, _)| n == key);
        if !known && forwarded.len() >= MAX_FORWARDED_PER_REPLICA {
            let oldest = forwarded
                .iter()
                .min_by_key(|(_, at)| *at)
                .expect("at the cap");
            if oldest.1 > now - stale_after {
                return Ok(false);
            }
            sqlx::query("DELETE FROM replica_reports WHERE name = $1")
                .bind(&oldest.0)
                .execute(&self.pool)
                .await
                .map_err(db("dropping a silent forwarded replica report"))?;
        }
        self.save_report(key, now, report).await?;
        Ok(true)
    }

    /// Every replica: those with a token, and those only known by a forwarded report.
    pub(crate) async fn replicas(&self) -> Result<Vec<ReplicaRow>> {
        let tokens: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT name, created_at, revoked FROM replica_tokens ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(db("listing replica tokens"))?;
        let reports: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, received_at, report FROM replica_reports ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(db("listing replica reports"))?;
        let mut rows: Vec<ReplicaRow> = tokens
            .into_iter()
            .map(|(name, created_at, revoked)| ReplicaRow {
                name,
                created_at,
                revoked: revoked != 0,
                report: None,
            })
            .collect();
        for (name, at, report) in reports {
            match rows.iter_mut().find(|r| r.name == name) {
                Some(row) => row.report = Some((at, report)),
                None => rows.push(ReplicaRow {
                    name,
                    created_at: at,
                    revoked: false,
                    report: Some((at, report)),
                }),
            }
        }
        Ok(rows)
    }
}
