//! `assignment_rules` created through the API (configured rules live in the configuration).

use super::{flag, Store};
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct RuleRow {
    pub name: String,
    pub selector: String,
    pub channel: String,
    pub mirror: Option<String>,
    pub priority: i64,
    pub disable_other_sources: i64,
    pub created_by: String,
    pub created_at: i64,
}

impl Store {
    pub async fn rules(&self) -> Result<Vec<RuleRow>> {
        sqlx::query_as(
            "SELECT name, selector, channel, mirror, priority, disable_other_sources, \
             created_by, created_at FROM assignment_rules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list assignment rules"))
    }

    /// Inserts a rule; false if one by that name exists.
    pub async fn insert_rule(conn: &mut AnyConnection, r: &RuleRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO assignment_rules (name, selector, channel, mirror, priority, \
             disable_other_sources, created_by, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.name)
        .bind(&r.selector)
        .bind(&r.channel)
        .bind(r.mirror.as_deref())
        .bind(r.priority)
        .bind(flag(r.disable_other_sources != 0))
        .bind(&r.created_by)
        .bind(r.created_at)
        .execute(conn)
        .await
        .map_err(db("insert assignment rule"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_rule(conn: &mut AnyConnection, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM assignment_rules WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await
            .map_err(db("delete assignment rule"))?;
        Ok(done.rows_affected() == 1)
    }
}
