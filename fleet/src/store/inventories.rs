//! `inventories`: each distinct inventory once, by digest, as gzip'd JSON (hosts with the same
//! packages share a row).

use super::Store;
use crate::error::{db, Result};

impl Store {
    pub async fn has_inventory(&self, digest: &str) -> Result<bool> {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT digest FROM inventories WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("look up inventory"))?;
        Ok(found.is_some())
    }

    pub async fn insert_inventory(
        &self,
        digest: &str,
        packages: i64,
        gzip_json: &[u8],
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO inventories (digest, packages, gzip_json, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(packages)
        .bind(gzip_json)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("store inventory"))?;
        Ok(())
    }

    /// The gzip'd JSON of an inventory and its package count.
    pub async fn inventory(&self, digest: &str) -> Result<Option<(Vec<u8>, i64)>> {
        sqlx::query_as("SELECT gzip_json, packages FROM inventories WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read inventory"))
    }

    pub async fn inventory_size(&self, digest: &str) -> Result<Option<i64>> {
        let found: Option<(i64,)> =
            sqlx::query_as("SELECT packages FROM inventories WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read inventory size"))?;
        Ok(found.map(|(n,)| n))
    }
}
