//! `enrollment_tokens`: only the secret's sha256 is kept; the secret is shown once.

use super::{flag, Store};
use crate::error::{db, Result};
use sqlx::{AnyConnection, FromRow};

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct TokenRow {
    pub id: String,
    #[serde(skip)]
    pub secret_sha256: String,
    /// JSON object of labels given to every host enrolled with it.
    pub labels: String,
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
    pub manual_approval: i64,
    pub comment: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub revoked: i64,
}

pub struct NewToken<'a> {
    pub id: &'a str,
    pub secret_sha256: &'a str,
    pub labels: &'a str,
    pub uses_left: Option<i64>,
    pub expires_at: Option<i64>,
    pub manual_approval: bool,
    pub comment: Option<&'a str>,
    pub created_by: &'a str,
    pub created_at: i64,
}

const COLUMNS: &str = "id, secret_sha256, labels, uses_left, expires_at, manual_approval, \
                       comment, created_by, created_at, revoked";

impl Store {
    pub async fn insert_token(conn: &mut AnyConnection, t: &NewToken<'_>) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO enrollment_tokens ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,0)"
        ))
        .bind(t.id)
        .bind(t.secret_sha256)
        .bind(t.labels)
        .bind(t.uses_left)
        .bind(t.expires_at)
        .bind(flag(t.manual_approval))
        .bind(t.comment)
        .bind(t.created_by)
        .bind(t.created_at)
        .execute(conn)
        .await
        .map_err(db("insert enrollment token"))?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list enrollment tokens"))
    }

    pub async fn token_by_secret(
        conn: &mut AnyConnection,
        secret_sha256: &str,
    ) -> Result<Option<TokenRow>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM enrollment_tokens WHERE secret_sha256 = $1"
        ))
        .bind(secret_sha256)
        .fetch_optional(conn)
        .await
        .map_err(db("find enrollment token"))
    }

    /// Takes one use of a token; false when none is left (another enrollment took the last).
    pub async fn use_token(conn: &mut AnyConnection, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE id = $1 AND uses_left IS NOT NULL AND uses_left > 0",
        )
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db("use enrollment token"))?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        let unlimited: Option<(String,)> =
            sqlx::query_as("SELECT id FROM enrollment_tokens WHERE id = $1 AND uses_left IS NULL")
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err(db("use enrollment token"))?;
        Ok(unlimited.is_some())
    }

    /// Revokes a token; false if there is none by that id.
    pub async fn revoke_token(conn: &mut AnyConnection, id: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE enrollment_tokens SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(conn)
            .await
            .map_err(db("revoke enrollment token"))?;
        Ok(done.rows_affected() == 1)
    }
}
