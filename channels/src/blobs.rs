//! Manifests, publications and indices as blobs in the content-addressed store.

use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::{Expected, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Index texts of a manifest, read once per call.
pub(crate) type Texts = HashMap<Sha256, Arc<String>>;

impl Channels {
    /// Stores a value (a manifest, a publication) as a JSON blob; returns its digest.
    pub(crate) async fn put_json<T: serde::Serialize>(&self, value: &T) -> Result<Sha256> {
        let bytes = serde_json::to_vec(value).expect("manifests serialize");
        Ok(self.store().insert(&bytes, Expected::default()).await?)
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Sha256,
    ) -> Result<T> {
        let corrupt = |reason: String| ChannelsError::CorruptBlob {
            what,
            digest: digest.to_hex(),
            reason,
        };
        let bytes = self
            .store()
            .read(digest)
            .await
            .map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))
    }

    pub(crate) async fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        let sha256 = self.store().insert(bytes, Expected::default()).await?;
        Ok(BlobRef {
            sha256,
            size: bytes.len() as u64,
        })
    }

    /// An index's text, read from the store once per `texts` cache.
    pub(crate) async fn text(&self, texts: &mut Texts, blob: &BlobRef) -> Result<Arc<String>> {
        if let Some(t) = texts.get(&blob.sha256) {
            return Ok(t.clone());
        }
        let corrupt = |reason: String| ChannelsError::CorruptBlob {
            what: "index",
            digest: blob.sha256.to_hex(),
            reason,
        };
        let bytes = self
            .store()
            .read(&blob.sha256)
            .await
            .map_err(|e| corrupt(e.to_string()))?;
        let text = Arc::new(String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?);
        texts.insert(blob.sha256, text.clone());
        Ok(text)
    }

    /// Stores a rendered index and its compressed forms.
    pub(crate) async fn index_files(&self, text: String, packages: u64) -> Result<IndexFiles> {
        let (xz, gz) = tokio::task::spawn_blocking({
            let text = text.clone();
            move || (index::xz(text.as_bytes()), index::gzip(text.as_bytes()))
        })
        .await
        .expect("compression does not panic");
        let io = |source| ChannelsError::Io {
            what: "compressing an index".into(),
            source,
        };
        Ok(IndexFiles {
            packages,
            plain: self.put_blob(text.as_bytes()).await?,
            xz: Some(self.put_blob(&xz.map_err(io)?).await?),
            gz: Some(self.put_blob(&gz.map_err(io)?).await?),
        })
    }
}
