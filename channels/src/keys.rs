//! The channel signing keys: listing, adding, importing and retiring; each change re-signs
//! every channel and is audited.

use crate::catalog::*;
use crate::error::Result;
use crate::service::*;

impl Channels {
    /// The armored public keys hosts put in `Signed-By:` (every active key).
    pub fn public_keys(&self) -> Result<String> {
        Ok(self
            .keys
            .lock()
            .expect("lock poisoned")
            .public_keys_armored()?)
    }

    pub fn key_name(&self) -> &str {
        &self.publish.key_name
    }

    pub fn keys(&self) -> Vec<crate::signing::KeyInfo> {
        self.keys.lock().expect("lock poisoned").list()
    }

    /// Generates a second signing key: from now on both sign (a rotation's overlap); every
    /// channel is re-signed at once.
    pub async fn add_key(&self, actor: &Actor) -> Result<crate::signing::KeyInfo> {
        let user_id = format!("aptgate signing key ({})", self.publish.key_name);
        let key =
            tokio::task::spawn_blocking(move || crate::signing::SigningKey::generate(&user_id))
                .await
                .expect("key generation does not panic")?;
        let fingerprint = key.fingerprint();
        self.keys.lock().expect("lock poisoned").add(key)?;
        self.audit_key(actor, serde_json::json!({ "added": fingerprint }))
            .await?;
        self.resign_all(actor).await?;
        Ok(self
            .keys()
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
            .expect("just added"))
    }

    /// Adds an existing secret key (armored, without passphrase); from now on it signs too.
    pub async fn import_key(&self, armored: &str, actor: &Actor) -> Result<String> {
        let fingerprint = self.keys.lock().expect("lock poisoned").import(armored)?;
        self.audit_key(actor, serde_json::json!({ "imported": fingerprint }))
            .await?;
        self.resign_all(actor).await?;
        Ok(fingerprint)
    }

    /// Stops a key from signing (the rotation's end); every channel is re-signed at once.
    pub async fn retire_key(&self, fingerprint: &str, actor: &Actor) -> Result<()> {
        self.keys
            .lock()
            .expect("lock poisoned")
            .retire(fingerprint)?;
        self.audit_key(actor, serde_json::json!({ "retired": fingerprint }))
            .await?;
        self.resign_all(actor).await
    }

    pub(crate) async fn audit_key(&self, actor: &Actor, summary: serde_json::Value) -> Result<()> {
        self.catalog
            .append_audit(&NewAuditEntry {
                at: now(),
                actor: actor.name.clone(),
                action: AuditAction::Key,
                channel: None,
                from_snapshot: None,
                to_snapshot: None,
                comment: actor.comment.clone(),
                summary: Some(summary.to_string()),
            })
            .await?;
        Ok(())
    }
}
