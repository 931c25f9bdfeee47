//! `agent_nonces`: every nonce an agent used within the replay window, so a replayed request
//! is refused; expired ones are pruned now and then.

use super::Store;
use crate::error::{db, Result};

impl Store {
    /// Records a nonce for a key; false if it was seen already (a replay).
    pub async fn use_nonce(&self, key_id: &str, nonce: &str, expires_at: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO agent_nonces (key_id, nonce, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id, nonce) DO NOTHING",
        )
        .bind(key_id)
        .bind(nonce)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db("record nonce"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn prune_nonces(&self, now: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM agent_nonces WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db("prune nonces"))?;
        Ok(done.rows_affected())
    }
}
