//! `declines`: versions an admin declined for a channel; the fleet queue hides them until a
//! newer version appears. `architecture` is `any` unless one was named.

use super::Store;
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct Decline {
    pub channel: String,
    pub name: String,
    pub architecture: String,
    pub version: String,
    pub actor: String,
    pub comment: Option<String>,
    pub at: i64,
}

impl Store {
    pub async fn insert_decline(conn: &mut AnyConnection, d: &Decline) -> Result<()> {
        sqlx::query(
            "INSERT INTO declines (channel, name, architecture, version, actor, comment, at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (channel, name, architecture, version) \
             DO UPDATE SET actor = excluded.actor, comment = excluded.comment, at = excluded.at",
        )
        .bind(&d.channel)
        .bind(&d.name)
        .bind(&d.architecture)
        .bind(&d.version)
        .bind(&d.actor)
        .bind(d.comment.as_deref())
        .bind(d.at)
        .execute(conn)
        .await
        .map_err(db("record decline"))?;
        Ok(())
    }

    pub async fn declines(&self) -> Result<Vec<Decline>> {
        sqlx::query_as(
            "SELECT channel, name, architecture, version, actor, comment, at FROM declines",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list declines"))
    }
}
