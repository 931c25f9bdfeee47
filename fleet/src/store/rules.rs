//! `assignment_rules` created through the API (configured rules live in the configuration).

use super::{flag, Store};
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct RuleRow {
    pub name: String,
    pub selector: String,
    pub channel: String,
    /// The first mirror (what instances from before `mirrors` read).
    pub mirror: Option<String>,
    /// Every mirror in order, a JSON array (NULL on rows written before migration 1004).
    pub mirrors: Option<String>,
    pub priority: i64,
    pub disable_other_sources: i64,
    pub created_by: String,
    pub created_at: i64,
}

impl Store {
    pub async fn rules(&self) -> Result<Vec<RuleRow>> {
        sqlx::query_as(
            "SELECT name, selector, channel, mirror, mirrors, priority, disable_other_sources, \
             created_by, created_at FROM assignment_rules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list assignment rules"))
    }

    /// Inserts a rule; false if one by that name exists.
    pub async fn insert_rule(conn: &mut AnyConnection, r: &RuleRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO assignment_rules (name, selector, channel, mirror, mirrors, priority, \
             disable_other_sources, created_by, created_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.name)
        .bind(&r.selector)
        .bind(&r.channel)
        .bind(r.mirror.as_deref())
        .bind(r.mirrors.as_deref())
        .bind(r.priority)
        .bind(flag(r.disable_other_sources != 0))
        .bind(&r.created_by)
        .bind(r.created_at)
        .execute(conn)
        .await
        .map_err(db("insert assignment rule"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a rule's mirrors; false if there is no such rule.
    pub async fn set_rule_mirrors(
        conn: &mut AnyConnection,
        name: &str,
        mirrors: &[String],
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE assignment_rules SET mirror = $2, mirrors = $3 WHERE name = $1")
                .bind(name)
                .bind(mirrors.first().map(String::as_str))
                .bind(mirrors_json(mirrors))
                .execute(conn)
                .await
                .map_err(db("set assignment rule mirrors"))?;
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

/// The `mirrors` column for a list.
pub fn mirrors_json(mirrors: &[String]) -> String {
    serde_json::to_string(mirrors).expect("strings serialize")
}

impl RuleRow {
    /// The rule's mirrors in order: the `mirrors` column, or the single `mirror` of a row
    /// written before it existed. An unreadable column counts as none (logged).
    pub fn mirror_list(&self) -> Vec<String> {
        match &self.mirrors {
            Some(json) => serde_json::from_str(json).unwrap_or_else(|e| {
                tracing::warn!(rule = %self.name, error = %e, "unreadable mirrors; none used");
                Vec::new()
            }),
            None => self.mirror.iter().cloned().collect(),
        }
    }
}
