//! `rollout_groups`, `rollout_leases`, `rollout_waiters`: the rolling-upgrade tables. Every
//! change to a group's leases runs in a transaction that first locks the group's row
//! ([`Store::lock_group`]), so the semaphore's count and the fence never race.

use super::Store;
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct GroupRow {
    pub name: String,
    pub selector: String,
    pub max_concurrent: String,
    pub failure_budget: i64,
    pub windows: String,
    pub reboot_grace_secs: i64,
    pub heartbeat_deadline_secs: i64,
    pub expire_stuck: i64,
    pub paused: i64,
    pub origin: String,
    pub created_by: String,
    pub created_at: i64,
    pub last_fence: i64,
    pub wave_started_at: i64,
}

const GROUP_COLUMNS: &str = "name, selector, max_concurrent, failure_budget, windows, \
     reboot_grace_secs, heartbeat_deadline_secs, expire_stuck, paused, origin, created_by, \
     created_at, last_fence, wave_started_at";

#[derive(Debug, Clone, FromRow)]
pub struct LeaseRow {
    pub host_id: String,
    pub run_id: String,
    pub group_name: String,
    pub fence: i64,
    pub state: String,
    pub step: String,
    pub detail: Option<String>,
    pub snapshot: Option<String>,
    pub hooks: String,
    pub acquired_at: i64,
    pub since: i64,
    pub last_seen: i64,
    pub failed_at: Option<i64>,
    pub released_at: Option<i64>,
    pub released_by: Option<String>,
}

const LEASE_COLUMNS: &str = "host_id, run_id, group_name, fence, state, step, detail, snapshot, \
     hooks, acquired_at, since, last_seen, failed_at, released_at, released_by";

/// The states that hold a slot.
pub const HOLDING: &str = "('acquired', 'updating', 'rebooting', 'verifying', 'failed', 'stuck')";

#[derive(Debug, Clone, FromRow)]
pub struct WaiterRow {
    pub group_name: String,
    pub host_id: String,
    pub run_id: String,
    pub first_asked_at: i64,
    pub last_asked_at: i64,
}

impl Store {
    pub async fn rollout_groups(&self) -> Result<Vec<GroupRow>> {
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM rollout_groups ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list rollout groups"))
    }

    pub async fn rollout_groups_in(conn: &mut AnyConnection) -> Result<Vec<GroupRow>> {
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM rollout_groups ORDER BY name"
        ))
        .fetch_all(conn)
        .await
        .map_err(db("list rollout groups"))
    }

    /// Locks a group's row for the rest of the transaction and reads it; `None` if there is
    /// no such group. An `UPDATE` that changes nothing takes the row lock on PostgreSQL (as
    /// `SELECT … FOR UPDATE` would) in the dialect both backends run; on SQLite the
    /// transaction holds the write lock already (`BEGIN IMMEDIATE`).
    pub async fn lock_group(conn: &mut AnyConnection, name: &str) -> Result<Option<GroupRow>> {
        let locked =
            sqlx::query("UPDATE rollout_groups SET last_fence = last_fence WHERE name = $1")
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(db("lock rollout group"))?;
        if locked.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query_as(&format!(
            "SELECT {GROUP_COLUMNS} FROM rollout_groups WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(db("read rollout group"))
    }

    /// Inserts a group; false if one by that name exists.
    pub async fn insert_group(conn: &mut AnyConnection, g: &GroupRow) -> Result<bool> {
        let done = sqlx::query(&format!(
            "INSERT INTO rollout_groups ({GROUP_COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) ON CONFLICT (name) DO NOTHING"
        ))
        .bind(&g.name)
        .bind(&g.selector)
        .bind(&g.max_concurrent)
        .bind(g.failure_budget)
        .bind(&g.windows)
        .bind(g.reboot_grace_secs)
        .bind(g.heartbeat_deadline_secs)
        .bind(g.expire_stuck)
        .bind(g.paused)
        .bind(&g.origin)
        .bind(&g.created_by)
        .bind(g.created_at)
        .bind(g.last_fence)
        .bind(g.wave_started_at)
        .execute(conn)
        .await
        .map_err(db("insert rollout group"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Brings a configured group's settings up to date (its pause, fence and wave stay).
    pub async fn update_group_settings(conn: &mut AnyConnection, g: &GroupRow) -> Result<()> {
        sqlx::query(
            "UPDATE rollout_groups SET selector = $2, max_concurrent = $3, failure_budget = $4, \
             windows = $5, reboot_grace_secs = $6, heartbeat_deadline_secs = $7, \
             expire_stuck = $8, origin = $9 WHERE name = $1",
        )
        .bind(&g.name)
        .bind(&g.selector)
        .bind(&g.max_concurrent)
        .bind(g.failure_budget)
        .bind(&g.windows)
        .bind(g.reboot_grace_secs)
        .bind(g.heartbeat_deadline_secs)
        .bind(g.expire_stuck)
        .bind(&g.origin)
        .execute(conn)
        .await
        .map_err(db("update rollout group"))?;
        Ok(())
    }

    /// Deletes a group with its history and waiters.
    pub async fn delete_group(conn: &mut AnyConnection, name: &str) -> Result<bool> {
        for table in ["rollout_leases", "rollout_waiters"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE group_name = $1"))
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(db("delete rollout group"))?;
        }
        let done = sqlx::query("DELETE FROM rollout_groups WHERE name = $1")
            .bind(name)
            .execute(conn)
            .await
            .map_err(db("delete rollout group"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_group_paused(
        conn: &mut AnyConnection,
        name: &str,
        paused: bool,
    ) -> Result<()> {
        sqlx::query("UPDATE rollout_groups SET paused = $2 WHERE name = $1")
            .bind(name)
            .bind(super::flag(paused))
            .execute(conn)
            .await
            .map_err(db("pause rollout group"))?;
        Ok(())
    }

    /// Starts a new wave: failures and releases before `now` no longer count.
    pub async fn start_wave(conn: &mut AnyConnection, name: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE rollout_groups SET wave_started_at = $2 WHERE name = $1")
            .bind(name)
            .bind(now)
            .execute(conn)
            .await
            .map_err(db("start rollout wave"))?;
        Ok(())
    }

    /// The next fence of a locked group.
    pub async fn next_fence(conn: &mut AnyConnection, name: &str) -> Result<i64> {
        let (fence,): (i64,) = sqlx::query_as(
            "UPDATE rollout_groups SET last_fence = last_fence + 1 WHERE name = $1 \
             RETURNING last_fence",
        )
        .bind(name)
        .fetch_one(conn)
        .await
        .map_err(db("next fence"))?;
        Ok(fence)
    }

    pub async fn lease(
        conn: &mut AnyConnection,
        host: &str,
        run: &str,
    ) -> Result<Option<LeaseRow>> {
        sqlx::query_as(&format!(
            "SELECT {LEASE_COLUMNS} FROM rollout_leases WHERE host_id = $1 AND run_id = $2"
        ))
        .bind(host)
        .bind(run)
        .fetch_optional(conn)
        .await
        .map_err(db("read lease"))
    }

    /// The slots held in a group (every state but `released`), oldest first.
    pub async fn holders(conn: &mut AnyConnection, group: &str) -> Result<Vec<LeaseRow>> {
        sqlx::query_as(&format!(
            "SELECT {LEASE_COLUMNS} FROM rollout_leases WHERE group_name = $1 AND state IN \
             {HOLDING} ORDER BY fence"
        ))
        .bind(group)
        .fetch_all(conn)
        .await
        .map_err(db("list lease holders"))
    }

    /// The slots a host holds, in any group.
    pub async fn host_holdings(conn: &mut AnyConnection, host: &str) -> Result<Vec<LeaseRow>> {
        sqlx::query_as(&format!(
            "SELECT {LEASE_COLUMNS} FROM rollout_leases WHERE host_id = $1 AND state IN \
             {HOLDING} ORDER BY fence"
        ))
        .bind(host)
        .fetch_all(conn)
        .await
        .map_err(db("list host leases"))
    }

    /// Leases of a group released or failed since `since` (the wave), newest first.
    pub async fn wave_leases(
        conn: &mut AnyConnection,
        group: &str,
        since: i64,
    ) -> Result<Vec<LeaseRow>> {
        sqlx::query_as(&format!(
            "SELECT {LEASE_COLUMNS} FROM rollout_leases WHERE group_name = $1 AND \
             state = 'released' AND (released_at >= $2 OR failed_at >= $2) ORDER BY fence DESC"
        ))
        .bind(group)
        .bind(since)
        .fetch_all(conn)
        .await
        .map_err(db("list wave leases"))
    }

    /// How many hosts of a group failed since `since`.
    pub async fn failures_since(conn: &mut AnyConnection, group: &str, since: i64) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM rollout_leases WHERE group_name = $1 AND failed_at >= $2",
        )
        .bind(group)
        .bind(since)
        .fetch_one(conn)
        .await
        .map_err(db("count failures"))?;
        Ok(n)
    }

    /// Inserts a granted lease, or renews the row of a run whose earlier lease was released.
    pub async fn put_lease(conn: &mut AnyConnection, l: &LeaseRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO rollout_leases ({LEASE_COLUMNS}) VALUES \
             ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15) ON CONFLICT (host_id, run_id) \
             DO UPDATE SET group_name = $3, fence = $4, state = $5, step = $6, detail = $7, \
             snapshot = $8, hooks = $9, acquired_at = $10, since = $11, last_seen = $12, \
             failed_at = $13, released_at = $14, released_by = $15"
        ))
        .bind(&l.host_id)
        .bind(&l.run_id)
        .bind(&l.group_name)
        .bind(l.fence)
        .bind(&l.state)
        .bind(&l.step)
        .bind(l.detail.as_deref())
        .bind(l.snapshot.as_deref())
        .bind(&l.hooks)
        .bind(l.acquired_at)
        .bind(l.since)
        .bind(l.last_seen)
        .bind(l.failed_at)
        .bind(l.released_at)
        .bind(l.released_by.as_deref())
        .execute(conn)
        .await
        .map_err(db("write lease"))?;
        Ok(())
    }

    /// Refreshes a lease after a report or a state change the server made.
    pub async fn update_lease(conn: &mut AnyConnection, l: &LeaseRow) -> Result<()> {
        sqlx::query(
            "UPDATE rollout_leases SET state = $3, step = $4, detail = $5, hooks = $6, \
             since = $7, last_seen = $8, failed_at = $9, released_at = $10, released_by = $11 \
             WHERE host_id = $1 AND run_id = $2",
        )
        .bind(&l.host_id)
        .bind(&l.run_id)
        .bind(&l.state)
        .bind(&l.step)
        .bind(l.detail.as_deref())
        .bind(&l.hooks)
        .bind(l.since)
        .bind(l.last_seen)
        .bind(l.failed_at)
        .bind(l.released_at)
        .bind(l.released_by.as_deref())
        .execute(conn)
        .await
        .map_err(db("update lease"))?;
        Ok(())
    }

    /// Records that a host asks for a slot; its place in line is from its first ask.
    pub async fn touch_waiter(
        conn: &mut AnyConnection,
        group: &str,
        host: &str,
        run: &str,
        now: i64,
    ) -> Result<WaiterRow> {
        sqlx::query(
            "INSERT INTO rollout_waiters (group_name, host_id, run_id, first_asked_at, \
             last_asked_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (group_name, host_id) \
             DO UPDATE SET run_id = $3, last_asked_at = $4",
        )
        .bind(group)
        .bind(host)
        .bind(run)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("record waiter"))?;
        sqlx::query_as(
            "SELECT group_name, host_id, run_id, first_asked_at, last_asked_at FROM \
             rollout_waiters WHERE group_name = $1 AND host_id = $2",
        )
        .bind(group)
        .bind(host)
        .fetch_one(conn)
        .await
        .map_err(db("read waiter"))
    }

    /// The hosts waiting in a group that asked since `alive_since`, in line order.
    pub async fn waiters(
        conn: &mut AnyConnection,
        group: &str,
        alive_since: i64,
    ) -> Result<Vec<WaiterRow>> {
        sqlx::query_as(
            "SELECT group_name, host_id, run_id, first_asked_at, last_asked_at FROM \
             rollout_waiters WHERE group_name = $1 AND last_asked_at >= $2 \
             ORDER BY first_asked_at, host_id",
        )
        .bind(group)
        .bind(alive_since)
        .fetch_all(conn)
        .await
        .map_err(db("list waiters"))
    }

    /// Drops a host from every line (it got a slot, or needs none).
    pub async fn drop_waiter(conn: &mut AnyConnection, host: &str) -> Result<()> {
        sqlx::query("DELETE FROM rollout_waiters WHERE host_id = $1")
            .bind(host)
            .execute(conn)
            .await
            .map_err(db("drop waiter"))?;
        Ok(())
    }

    /// Waiters that stopped asking long ago.
    pub async fn prune_waiters(conn: &mut AnyConnection, before: i64) -> Result<()> {
        sqlx::query("DELETE FROM rollout_waiters WHERE last_asked_at < $1")
            .bind(before)
            .execute(conn)
            .await
            .map_err(db("prune waiters"))?;
        Ok(())
    }
}
