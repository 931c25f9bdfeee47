//! `hosts`: one row per enrolled key pair (a clone of a machine gets its own row, flagged).
//! `rev` rises whenever there is something the host must pick up (a command, a new assignment
//! or label, a poke); `rev_at` lets every server instance notice rises made by the others.

use super::Store;
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub id: String,
    pub public_key: String,
    pub machine_id_sha256: String,
    /// `active`, `pending` or `revoked`.
    pub status: String,
    /// Why an admin should look (e.g. a cloned machine), if anything.
    pub flagged: Option<String>,
    /// The agent's [`aptgate_agent::protocol::Facts`], JSON.
    pub facts: String,
    pub agent_version: String,
    pub token_id: Option<String>,
    pub enrolled_at: i64,
    pub last_seen: i64,
    pub rev: i64,
    pub rev_at: i64,
    pub inventory_digest: Option<String>,
    pub applied_sources_rev: Option<String>,
    /// The host's apt lists (`URI SUITE COMPONENT…`), JSON array.
    pub lists: String,
    /// [`aptgate_agent::protocol::RebootState`], JSON.
    pub reboot: String,
}

pub struct NewHost<'a> {
    pub id: &'a str,
    pub public_key: &'a str,
    pub machine_id_sha256: &'a str,
    pub status: &'a str,
    pub flagged: Option<&'a str>,
    pub facts: &'a str,
    pub agent_version: &'a str,
    pub token_id: &'a str,
    pub now: i64,
}

/// What a check-in records about the host.
pub struct HostUpdate<'a> {
    pub facts: &'a str,
    pub agent_version: &'a str,
    pub last_seen: i64,
    pub applied_sources_rev: Option<&'a str>,
    pub lists: &'a str,
    pub reboot: &'a str,
}

const COLUMNS: &str = "id, public_key, machine_id_sha256, status, flagged, facts, agent_version, \
                       token_id, enrolled_at, last_seen, rev, rev_at, inventory_digest, \
                       applied_sources_rev, lists, reboot";

impl Store {
    pub async fn insert_host(conn: &mut AnyConnection, h: &NewHost<'_>) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO hosts ({COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$9,1,$9,NULL,NULL,'[]','{{\"needed\":false}}')"
        ))
        .bind(h.id)
        .bind(h.public_key)
        .bind(h.machine_id_sha256)
        .bind(h.status)
        .bind(h.flagged)
        .bind(h.facts)
        .bind(h.agent_version)
        .bind(h.token_id)
        .bind(h.now)
        .execute(conn)
        .await
        .map_err(db("insert host"))?;
        Ok(())
    }

    pub async fn host(&self, id: &str) -> Result<Option<HostRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM hosts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read host"))
    }

    pub async fn hosts_with_key(
        conn: &mut AnyConnection,
        public_key: &str,
    ) -> Result<Vec<HostRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM hosts WHERE public_key = $1 ORDER BY enrolled_at, id"
        ))
        .bind(public_key)
        .fetch_all(conn)
        .await
        .map_err(db("find hosts by key"))
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM hosts ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list hosts"))
    }

    /// Sets a host's status and raises its revision; false if there is no such host.
    pub async fn set_status(
        conn: &mut AnyConnection,
        id: &str,
        status: &str,
        now: i64,
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE hosts SET status = $2, rev = rev + 1, rev_at = $3 WHERE id = $1")
                .bind(id)
                .bind(status)
                .bind(now)
                .execute(conn)
                .await
                .map_err(db("set host status"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_flagged(conn: &mut AnyConnection, id: &str, flagged: &str) -> Result<()> {
        sqlx::query("UPDATE hosts SET flagged = $2 WHERE id = $1")
            .bind(id)
            .bind(flagged)
            .execute(conn)
            .await
            .map_err(db("flag host"))?;
        Ok(())
    }

    pub async fn record_checkin(&self, id: &str, u: &HostUpdate<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE hosts SET facts = $2, agent_version = $3, last_seen = $4, \
             applied_sources_rev = $5, lists = $6, reboot = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(u.facts)
        .bind(u.agent_version)
        .bind(u.last_seen)
        .bind(u.applied_sources_rev)
        .bind(u.lists)
        .bind(u.reboot)
        .execute(&self.pool)
        .await
        .map_err(db("record check-in"))?;
        Ok(())
    }

    pub async fn set_inventory(&self, id: &str, digest: &str) -> Result<()> {
        sqlx::query("UPDATE hosts SET inventory_digest = $2 WHERE id = $1")
            .bind(id)
            .bind(digest)
            .execute(&self.pool)
            .await
            .map_err(db("point host at inventory"))?;
        Ok(())
    }

    /// Raises a host's revision; the new one (`None`: no such host).
    pub async fn bump_rev(conn: &mut AnyConnection, id: &str, now: i64) -> Result<Option<i64>> {
        let rev: Option<(i64,)> = sqlx::query_as(
            "UPDATE hosts SET rev = rev + 1, rev_at = $2 WHERE id = $1 RETURNING rev",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(conn)
        .await
        .map_err(db("raise host revision"))?;
        Ok(rev.map(|(r,)| r))
    }

    pub async fn host_rev(&self, id: &str) -> Result<Option<i64>> {
        let rev: Option<(i64,)> = sqlx::query_as("SELECT rev FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read host revision"))?;
        Ok(rev.map(|(r,)| r))
    }

    /// Hosts whose revision rose at or after `since` (any server instance): `(id, rev)`.
    pub async fn revs_since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        sqlx::query_as("SELECT id, rev FROM hosts WHERE rev_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read raised host revisions"))
    }
}
