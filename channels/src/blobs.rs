//! Manifests, publications and indices as blobs in the content-addressed store.

use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use crate::table::PackageTable;
use aptgate_mirror::{Expected, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// A stored blob that cannot be read as what it should be.
pub(crate) fn corrupt(what: &'static str, digest: &Sha256, reason: impl ToString) -> ChannelsError {
    ChannelsError::CorruptBlob {
        what,
        digest: digest.to_hex(),
        reason: reason.to_string(),
    }
}

/// An index's text, read from the store (blocking: for work off the async workers).
pub(crate) fn read_text(store: &aptgate_mirror::Store, blob: &BlobRef) -> Result<String> {
    let bytes = fs_err::read(store.blob_path(&blob.sha256))
        .map_err(|e| corrupt("index", &blob.sha256, e))?;
    String::from_utf8(bytes).map_err(|e| corrupt("index", &blob.sha256, e))
}

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
        let bytes = self
            .store()
            .read(digest)
            .await
            .map_err(|e| corrupt(what, digest, e))?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(what, digest, e))
    }

    /// A stored blob as text.
    async fn get_text(&self, what: &'static str, digest: &Sha256) -> Result<String> {
        let bytes = self
            .store()
            .read(digest)
            .await
            .map_err(|e| corrupt(what, digest, e))?;
        String::from_utf8(bytes).map_err(|e| corrupt(what, digest, e))
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
        let text = Arc::new(self.get_text("index", &blob.sha256).await?);
        texts.insert(blob.sha256, text.clone());
        Ok(text)
    }

    /// The package table of an index: from the cache, the stored table, or (for manifests
    /// older than tables) built from the index text.
    pub(crate) async fn table(&self, files: &IndexFiles) -> Result<Arc<PackageTable>> {
        if let Some(table) = self.tables.get(&files.plain.sha256) {
            return Ok(table);
        }
        // Parsing a table (or, for manifests older than tables, the index) of a large suite
        // takes milliseconds: off the async workers.
        let table = match &files.table {
            Some(blob) => {
                let (text, digest) = (
                    self.get_text("package table", &blob.sha256).await?,
                    blob.sha256,
                );
                tokio::task::spawn_blocking(move || {
                    PackageTable::parse(text).map_err(|e| corrupt("package table", &digest, e))
                })
                .await
                .expect("parsing a table does not panic")?
            }
            None => {
                let (text, digest) = (
                    self.get_text("index", &files.plain.sha256).await?,
                    files.plain.sha256,
                );
                tokio::task::spawn_blocking(move || {
                    let stanzas = index::parse(&text).map_err(|source| ChannelsError::Index {
                        what: format!("index {digest}"),
                        source,
                    })?;
                    Ok::<_, ChannelsError>(PackageTable::from_stanzas(&text, &stanzas))
                })
                .await
                .expect("parsing an index does not panic")?
            }
        };
        let table = Arc::new(table);
        self.tables.insert(files.plain.sha256, table.clone());
        Ok(table)
    }

    /// Stores the table of the index `plain` and keeps it in the cache.
    pub(crate) async fn put_table(&self, plain: &BlobRef, table: PackageTable) -> Result<BlobRef> {
        let blob = self.put_blob(table.text().as_bytes()).await?;
        self.tables.insert(plain.sha256, Arc::new(table));
        Ok(blob)
    }

    /// Stores a rendered index, its compressed forms and its package table.
    pub(crate) async fn index_files(&self, text: String, packages: u64) -> Result<IndexFiles> {
        // Compressing and parsing a full suite's index takes a while: off the async workers.
        let (text, xz, gz, table) = tokio::task::spawn_blocking(move || {
            let (xz, gz) = (index::xz(text.as_bytes()), index::gzip(text.as_bytes()));
            let table =
                index::parse(&text).map(|stanzas| PackageTable::from_stanzas(&text, &stanzas));
            (text, xz, gz, table)
        })
        .await
        .expect("compression does not panic");
        let io = |source| ChannelsError::Io {
            what: "compressing an index".into(),
            source,
        };
        let table = table.map_err(|source| ChannelsError::Index {
            what: "rendered index".into(),
            source,
        })?;
        let plain = self.put_blob(text.as_bytes()).await?;
        drop(text);
        Ok(IndexFiles {
            packages,
            table: Some(self.put_table(&plain, table).await?),
            plain,
            xz: Some(self.put_blob(&xz.map_err(io)?).await?),
            gz: Some(self.put_blob(&gz.map_err(io)?).await?),
        })
    }
}
