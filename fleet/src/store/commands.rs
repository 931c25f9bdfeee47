//! `commands`: queued for one host, sent on its next check-in, finished with the result it
//! reports. A host only ever reads and finishes its own.

use super::Store;
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    Queued,
    Sent,
    Done,
    Failed,
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct CommandRow {
    pub id: i64,
    pub host_id: String,
    pub kind: String,
    /// JSON array of package names.
    pub packages: String,
    pub status: String,
    pub created_by: String,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub output: Option<String>,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str = "id, host_id, kind, packages, status, created_by, created_at, sent_at, \
                       exit_code, output, finished_at";

impl Store {
    pub async fn queue_command(
        conn: &mut AnyConnection,
        host: &str,
        kind: &str,
        packages: &str,
        actor: &str,
        now: i64,
    ) -> Result<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO commands (host_id, kind, packages, status, created_by, created_at) \
             VALUES ($1, $2, $3, 'queued', $4, $5) RETURNING id",
        )
        .bind(host)
        .bind(kind)
        .bind(packages)
        .bind(actor)
        .bind(now)
        .fetch_one(conn)
        .await
        .map_err(db("queue command"))?;
        Ok(id)
    }

    /// The host's queued commands, oldest first, marked sent (one statement: two server
    /// instances never both send a command).
    pub async fn take_queued(&self, host: &str, now: i64) -> Result<Vec<CommandRow>> {
        let mut rows: Vec<CommandRow> = sqlx::query_as(&format!(
            "UPDATE commands SET status = 'sent', sent_at = $2 \
             WHERE host_id = $1 AND status = 'queued' RETURNING {COLUMNS}"
        ))
        .bind(host)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db("take queued commands"))?;
        rows.sort_by_key(|c| c.id);
        Ok(rows)
    }

    /// Records a result for one of `host`'s commands; false when it is not that host's (or
    /// already finished).
    pub async fn finish_command(
        &self,
        host: &str,
        id: i64,
        exit_code: i64,
        output: &str,
        finished_at: i64,
    ) -> Result<bool> {
        let status = if exit_code == 0 { "done" } else { "failed" };
        let done = sqlx::query(
            "UPDATE commands SET status = $3, exit_code = $4, output = $5, finished_at = $6 \
             WHERE id = $1 AND host_id = $2 AND status IN ('queued', 'sent')",
        )
        .bind(id)
        .bind(host)
        .bind(status)
        .bind(exit_code)
        .bind(output)
        .bind(finished_at)
        .execute(&self.pool)
        .await
        .map_err(db("record command result"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Commands, newest first; of one host if given.
    pub async fn commands(&self, host: Option<&str>, limit: i64) -> Result<Vec<CommandRow>> {
        let by_host =
            format!("SELECT {COLUMNS} FROM commands WHERE host_id = $1 ORDER BY id DESC LIMIT $2");
        let all = format!("SELECT {COLUMNS} FROM commands ORDER BY id DESC LIMIT $1");
        let rows = match host {
            Some(h) => sqlx::query_as(&by_host).bind(h).bind(limit),
            None => sqlx::query_as(&all).bind(limit),
        };
        rows.fetch_all(&self.pool)
            .await
            .map_err(db("list commands"))
    }

    /// How many commands each host has waiting (queued or sent, not finished).
    pub async fn open_command_counts(&self) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT host_id, COUNT(*) FROM commands WHERE status IN ('queued', 'sent') \
             GROUP BY host_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("count open commands"))
    }
}
