//! The SQL of local sources: the packages uploaded to each (table `uploads`, migration 0007).

use super::queries::check_digest;
use super::{query, Catalog, CatalogTx, Result};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, FromRow};

/// A `.deb` uploaded to a local source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
pub struct Upload {
    pub source: String,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub suite: String,
    pub component: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: i64,
    pub pool_path: String,
    /// The control paragraph, as the package's `Packages` entry begins.
    pub control: String,
    pub uploaded_by: String,
    pub uploaded_at: i64,
}

/// What recording an upload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new package of the source.
    New,
    /// The same file was uploaded before, to the same place: nothing changed.
    Same(Upload),
    /// Another upload holds this version (or its pool file name): `existing`.
    Conflict(Upload),
}

const COLUMNS: &str = "source, name, version, architecture, suite, component, sha256, size, \
                       pool_path, control, uploaded_by, uploaded_at";

impl Catalog {
    /// Every package uploaded to `source`, by name, version and architecture.
    pub async fn uploads(&self, source: &str) -> Result<Vec<Upload>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        uploads(&mut conn, source).await
    }

    /// Every uploaded file's digest (garbage collection keeps them all).
    pub async fn uploaded_digests(&self) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT sha256 FROM uploads")
            .fetch_all(&mut *conn)
            .await
            .map_err(query("list uploaded files"))?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

impl CatalogTx {
    /// Records an upload unless its version (or pool file name) is taken; the primary key
    /// and the pool-path index settle two uploads racing for the same version.
    pub async fn record_upload(&mut self, upload: &Upload) -> Result<Recorded> {
        check_digest("upload sha256", &upload.sha256)?;
        let sql = format!(
            "INSERT INTO uploads ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) \
             ON CONFLICT DO NOTHING"
        );
        let inserted = sqlx::query(&sql)
            .bind(&upload.source)
            .bind(&upload.name)
            .bind(&upload.version)
            .bind(&upload.architecture)
            .bind(&upload.suite)
            .bind(&upload.component)
            .bind(&upload.sha256)
            .bind(upload.size)
            .bind(&upload.pool_path)
            .bind(&upload.control)
            .bind(&upload.uploaded_by)
            .bind(upload.uploaded_at)
            .execute(&mut *self.0)
            .await
            .map_err(query("record upload"))?
            .rows_affected();
        if inserted == 1 {
            return Ok(Recorded::New);
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM uploads WHERE source = $1 AND ((name = $2 AND version = $3 \
             AND architecture = $4) OR pool_path = $5) ORDER BY name = $2 DESC LIMIT 1"
        );
        let existing = sqlx::query_as::<_, Upload>(&sql)
            .bind(&upload.source)
            .bind(&upload.name)
            .bind(&upload.version)
            .bind(&upload.architecture)
            .bind(&upload.pool_path)
            .fetch_one(&mut *self.0)
            .await
            .map_err(query("read conflicting upload"))?;
        let same = existing.sha256 == upload.sha256
            && existing.version == upload.version
            && existing.suite == upload.suite
            && existing.component == upload.component;
        Ok(if same {
            Recorded::Same(existing)
        } else {
            Recorded::Conflict(existing)
        })
    }
}

async fn uploads(conn: &mut AnyConnection, source: &str) -> Result<Vec<Upload>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM uploads WHERE source = $1 ORDER BY name, version, architecture"
    );
    sqlx::query_as::<_, Upload>(&sql)
        .bind(source)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("list uploads"))
}
