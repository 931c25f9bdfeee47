//! `profiles` (package profiles created through the API) and `profile_reports` (each host's
//! last compliance report: the profile rev it measured and the error of its last apt run).

use super::Store;
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};
use std::collections::HashMap;

#[derive(Debug, Clone, FromRow)]
pub struct ProfileRow {
    pub name: String,
    pub selector: String,
    /// JSON: `[{"name", "state": "present"|"absent", "version"?}]`.
    pub packages: String,
    pub priority: i64,
    pub created_by: String,
    pub created_at: i64,
}

impl Store {
    pub async fn profiles(&self) -> Result<Vec<ProfileRow>> {
        sqlx::query_as(
            "SELECT name, selector, packages, priority, created_by, created_at FROM profiles \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list profiles"))
    }

    /// Inserts a profile; false if one by that name exists.
    pub async fn insert_profile(conn: &mut AnyConnection, p: &ProfileRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO profiles (name, selector, packages, priority, created_by, created_at) \
             VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&p.name)
        .bind(&p.selector)
        .bind(&p.packages)
        .bind(p.priority)
        .bind(&p.created_by)
        .bind(p.created_at)
        .execute(conn)
        .await
        .map_err(db("insert profile"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_profile(conn: &mut AnyConnection, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM profiles WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await
            .map_err(db("delete profile"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a host's compliance report: the rev it measured and its last apt error.
    pub async fn record_profile_report(
        &self,
        host: &str,
        rev: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO profile_reports (host_id, rev, error, reported_at) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (host_id) DO UPDATE SET rev = excluded.rev, error = excluded.error, \
             reported_at = excluded.reported_at",
        )
        .bind(host)
        .bind(rev)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("record profile report"))?;
        Ok(())
    }

    /// Every host's last report: host id → (rev, error).
    pub async fn profile_reports(&self) -> Result<HashMap<String, (String, Option<String>)>> {
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT host_id, rev, error FROM profile_reports")
                .fetch_all(&self.pool)
                .await
                .map_err(db("read profile reports"))?;
        Ok(rows.into_iter().map(|(h, r, e)| (h, (r, e))).collect())
    }
}
