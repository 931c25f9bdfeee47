//! `host_labels`: labels as the agent declares them and as admins set them, kept apart
//! (`origin`); the effective set is the agent's overlaid by the admin's.

use super::Store;
use crate::error::{db, Result};
use aptgate_agent::protocol::Labels;
use sqlx::{AnyConnection, FromRow};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOrigin {
    Agent,
    Admin,
}

impl LabelOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct LabelRow {
    pub host_id: String,
    pub key: String,
    pub origin: String,
    pub value: String,
}

impl Store {
    pub async fn set_label(
        conn: &mut AnyConnection,
        host: &str,
        origin: LabelOrigin,
        key: &str,
        value: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO host_labels (host_id, key, origin, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (host_id, key, origin) DO UPDATE SET value = excluded.value",
        )
        .bind(host)
        .bind(key)
        .bind(origin.as_str())
        .bind(value)
        .execute(conn)
        .await
        .map_err(db("set host label"))?;
        Ok(())
    }

    pub async fn remove_label(
        conn: &mut AnyConnection,
        host: &str,
        origin: LabelOrigin,
        key: &str,
    ) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM host_labels WHERE host_id = $1 AND origin = $2 AND key = $3")
                .bind(host)
                .bind(origin.as_str())
                .bind(key)
                .execute(conn)
                .await
                .map_err(db("remove host label"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Replaces the agent-declared labels of a host with `labels`.
    pub async fn replace_agent_labels(
        conn: &mut AnyConnection,
        host: &str,
        labels: &Labels,
    ) -> Result<()> {
        sqlx::query("DELETE FROM host_labels WHERE host_id = $1 AND origin = 'agent'")
            .bind(host)
            .execute(&mut *conn)
            .await
            .map_err(db("replace agent labels"))?;
        for (k, v) in labels {
            Self::set_label(conn, host, LabelOrigin::Agent, k, v).await?;
        }
        Ok(())
    }

    pub async fn host_labels(&self, host: &str) -> Result<Vec<LabelRow>> {
        sqlx::query_as(
            "SELECT host_id, key, origin, value FROM host_labels WHERE host_id = $1 \
             ORDER BY key, origin",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read host labels"))
    }

    /// Every host's labels, by host id.
    pub async fn all_labels(&self) -> Result<HashMap<String, Vec<LabelRow>>> {
        let rows: Vec<LabelRow> =
            sqlx::query_as("SELECT host_id, key, origin, value FROM host_labels")
                .fetch_all(&self.pool)
                .await
                .map_err(db("read labels"))?;
        let mut by_host: HashMap<String, Vec<LabelRow>> = HashMap::new();
        for r in rows {
            by_host.entry(r.host_id.clone()).or_default().push(r);
        }
        Ok(by_host)
    }
}

/// Effective labels: the agent's, overlaid by the admin's (admin wins).
pub fn effective(rows: &[LabelRow]) -> Labels {
    let mut labels = Labels::new();
    for r in rows.iter().filter(|r| r.origin == "agent") {
        labels.insert(r.key.clone(), r.value.clone());
    }
    for r in rows.iter().filter(|r| r.origin == "admin") {
        labels.insert(r.key.clone(), r.value.clone());
    }
    labels
}
