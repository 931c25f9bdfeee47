//! Local sources (`kind = "local"`): `.deb` files uploaded to aptgate instead of fetched from
//! an upstream, and the indices a sync of such a source builds from them.
//!
//! An upload streams into the store's temp space while it is hashed; only a well-formed
//! `.deb` (see `deb.rs`) whose version is new to the source — or the very same file again —
//! is kept: stored under its sha256 (where `pool/` requests find it, as it has no upstream),
//! recorded in the catalog's `packages` (origin: the local source) and `uploads` tables, and
//! audited. The source's next sync lists it.

use crate::catalog::*;
use crate::deb::{self, DebControl, DebError};
use crate::error::{ChannelsError, Result};
use crate::index;
use crate::manifest::*;
use crate::service::*;
use aptgate_config::SourceConfig;
use aptgate_mirror::digest::Sha256Hasher;
use aptgate_mirror::path::PoolPath;
use aptgate_mirror::{Expected, Sha256};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::BTreeMap;
use tracing::info;

/// The largest `.deb` an upload may bring.
pub const MAX_UPLOAD_BYTES: u64 = 2 << 30;

/// Where an upload goes inside its source; `None` takes the source's first suite/component.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct UploadTarget {
    pub suite: Option<String>,
    pub component: Option<String>,
}

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UploadOutcome {
    pub source: String,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub suite: String,
    pub component: String,
    pub sha256: String,
    pub size: u64,
    /// The `Filename:` its index entry will carry.
    pub pool_path: String,
    /// False when the same file was uploaded before (nothing changed).
    pub created: bool,
}

impl Channels {
    /// A local source by name; an upstream one (or an unknown name) is refused.
    fn local_source(&self, name: &str) -> Result<&SourceConfig> {
        let source = self
            .sources
            .iter()
            .find(|s| s.name.as_str() == name)
            .ok_or_else(|| ChannelsError::UnknownSource(name.to_owned()))?;
        if !source.is_local() {
            return Err(ChannelsError::BadUpload(format!(
                "source {name} is an upstream mirror; packages are uploaded to a local source\n\
                 hint: add [[sources]] name = \"inhouse\" kind = \"local\" (with suites, \
                 components, architectures) and upload with --to inhouse"
            )));
        }
        Ok(source)
    }

    /// Takes a `.deb` upload for a local source: checked, stored and recorded, or refused
    /// with nothing stored or recorded.
    pub async fn upload<E: std::fmt::Display>(
        &self,
        source_name: &str,
        target: &UploadTarget,
        body: impl Stream<Item = std::result::Result<Bytes, E>>,
        actor: &Actor,
    ) -> Result<UploadOutcome> {
        let source = self.local_source(source_name)?;
        let pick = |what: &str, given: &Option<String>, list: &[String]| match given {
            None => Ok(list[0].clone()),
            Some(v) if list.contains(v) => Ok(v.clone()),
            Some(v) => Err(ChannelsError::BadUpload(format!(
                "source {source_name} has no {what} {v:?}\nhint: its {what}s: {}",
                list.join(", ")
            ))),
        };
        // Validated configuration: a local source lists at least one of each.
        let suite = pick("suite", &target.suite, &source.suites)?;
        let component = pick("component", &target.component, &source.components)?;

        let mut writer = self.store().writer(Expected::default())?;
        let mut hasher = Sha256Hasher::default();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ChannelsError::BadUpload(format!("the upload broke off: {e}; nothing was stored"))
            })?;
            if writer.written() + chunk.len() as u64 > MAX_UPLOAD_BYTES {
                return Err(ChannelsError::UploadTooLarge(MAX_UPLOAD_BYTES));
            }
            hasher.update(&chunk);
            writer.write(&chunk).await?;
        }
        let size = writer.written();
        if size == 0 {
            return Err(ChannelsError::BadUpload(
                "the upload is empty\nhint: send the .deb as the request body".into(),
            ));
        }
        let sha256 = hasher.finish();
        let tmp = writer.tmp_path().to_owned();
        let control = tokio::task::spawn_blocking(move || -> std::result::Result<_, DebError> {
            let file = fs_err::File::open(tmp)
                .map_err(|e| DebError::NotADeb(format!("cannot read the upload back: {e}")))?;
            deb::read_control(std::io::BufReader::new(file))
        })
        .await
        .expect("reading a .deb does not panic")
        .map_err(|e| {
            ChannelsError::BadUpload(format!(
                "{e}; nothing was stored\nhint: build packages with `dpkg-deb --build` and \
                 upload the .deb file itself"
            ))
        })?;
        if control.architecture != "all" && !source.architectures.contains(&control.architecture) {
            return Err(ChannelsError::BadUpload(format!(
                "{} {} is for architecture {}, which source {source_name} does not carry\n\
                 hint: its architectures: {} (and all); add it to the source's architectures",
                control.name,
                control.version,
                control.architecture,
                source.architectures.join(", ")
            )));
        }
        let pool_path = deb::pool_path(&component, &control);
        let stanza = index_stanza(&control, &pool_path, size, &sha256)?;
        let upload = Upload {
            source: source_name.to_owned(),
            name: control.name.clone(),
            version: control.version.clone(),
            architecture: control.architecture.clone(),
            suite,
            component,
            sha256: sha256.to_hex(),
            size: size as i64,
            pool_path,
            control: control.stanza.clone(),
            uploaded_by: actor.name.clone(),
            uploaded_at: now(),
        };
        // Refused before the file is kept; the insert below settles a race.
        if let Some(existing) = self
            .catalog
            .uploads(source_name)
            .await?
            .into_iter()
            .find(|u| {
                (u.name == upload.name
                    && u.version == upload.version
                    && u.architecture == upload.architecture)
                    || u.pool_path == upload.pool_path
            })
        {
            if !same_file(&existing, &upload) {
                return Err(conflict(&existing, &upload));
            }
        }
        writer.finish().await?;

        let mut tx = self.catalog.begin().await?;
        let created = match tx.record_upload(&upload).await? {
            Recorded::New => true,
            Recorded::Same(_) => false,
            Recorded::Conflict(existing) => return Err(conflict(&existing, &upload)),
        };
        if created {
            let package = NewPackage {
                sha256: upload.sha256.clone(),
                name: upload.name.clone(),
                version: upload.version.clone(),
                architecture: upload.architecture.clone(),
                source: control.source.clone(),
                size,
                pool_path: upload.pool_path.clone(),
                control: stanza,
                origin: source_name.to_owned(),
            };
            tx.upsert_packages(&[package], upload.uploaded_at).await?;
            tx.append_audit(&NewAuditEntry {
                at: upload.uploaded_at,
                actor: actor.name.clone(),
                action: AuditAction::Upload,
                channel: None,
                from_snapshot: None,
                to_snapshot: None,
                comment: actor.comment.clone(),
                summary: Some(
                    serde_json::json!({
                        "source": source_name,
                        "suite": upload.suite,
                        "component": upload.component,
                        "package": upload.name,
                        "version": upload.version,
                        "architecture": upload.architecture,
                        "sha256": upload.sha256,
                        "size": size,
                    })
                    .to_string(),
                ),
            })
            .await?;
        }
        tx.commit().await?;
        if created {
            info!(source = source_name, package = %upload.name, version = %upload.version, architecture = %upload.architecture, actor = %actor.name, "package uploaded");
        }
        Ok(UploadOutcome {
            source: upload.source,
            name: upload.name,
            version: upload.version,
            architecture: upload.architecture,
            suite: upload.suite,
            component: upload.component,
            sha256: upload.sha256,
            size,
            pool_path: upload.pool_path,
            created,
        })
    }

    /// A local source's manifest: per configured suite, one index per component and
    /// architecture listing its uploads (`Architecture: all` ones in every architecture's
    /// index, as Debian does), built like any index aptgate renders.
    pub(crate) async fn local_manifest(&self, source: &SourceConfig) -> Result<Manifest> {
        let mut uploads = self.catalog.uploads(source.name.as_str()).await?;
        uploads.sort_by(|a, b| {
            (&a.name, &a.architecture)
                .cmp(&(&b.name, &b.architecture))
                .then_with(|| index::compare_versions(&a.version, &b.version))
        });
        let mut manifest = Manifest::new();
        for suite in &source.suites {
            let mut indices = BTreeMap::new();
            for component in &source.components {
                for arch in &source.architectures {
                    let mut stanzas = Vec::new();
                    for u in uploads.iter().filter(|u| {
                        &u.suite == suite
                            && &u.component == component
                            && (&u.architecture == arch || u.architecture == "all")
                    }) {
                        let sha256 = Sha256::from_hex(&u.sha256).map_err(|e| {
                            ChannelsError::CorruptBlob {
                                what: "upload",
                                digest: u.sha256.clone(),
                                reason: e.to_string(),
                            }
                        })?;
                        stanzas.push(stanza_text(
                            &u.control,
                            &u.pool_path,
                            u.size as u64,
                            &sha256,
                        ));
                    }
                    let count = stanzas.len() as u64;
                    let text = index::render(stanzas.iter().map(String::as_str));
                    let files = self.index_files(text, count).await?;
                    indices.insert(format!("{component}/binary-{arch}"), files);
                }
            }
            manifest.suites.insert(
                suite.clone(),
                SuiteManifest {
                    codename: Some(suite.clone()),
                    components: source.components.clone(),
                    architectures: source.architectures.clone(),
                    indices,
                },
            );
        }
        Ok(manifest)
    }
}

fn same_file(existing: &Upload, upload: &Upload) -> bool {
    existing.sha256 == upload.sha256
        && existing.version == upload.version
        && existing.suite == upload.suite
        && existing.component == upload.component
}

fn conflict(existing: &Upload, upload: &Upload) -> ChannelsError {
    let what = format!(
        "{} {} ({})",
        existing.name, existing.version, existing.architecture
    );
    ChannelsError::UploadConflict(if existing.sha256 != upload.sha256 {
        if existing.version == upload.version {
            format!(
                "{what} was already uploaded to {} with different contents (sha256 {}); a \
                 version is never replaced, nothing was stored\nhint: give the rebuilt package \
                 a new version (e.g. a higher revision) and upload that",
                existing.source, existing.sha256
            )
        } else {
            format!(
                "{what} already lies at {} in {}; {} {} would share its file name (versions \
                 differing only in their epoch)\nhint: choose a version that differs in more \
                 than its epoch",
                existing.pool_path, existing.source, upload.name, upload.version
            )
        }
    } else {
        format!(
            "{what} was already uploaded to {} suite {} component {}; one file has one place\n\
             hint: upload it with --suite {} --component {}, or promote it to other channels",
            existing.source, existing.suite, existing.component, existing.suite, existing.component
        )
    })
}

/// The package's `Packages` entry: its control paragraph, where the file is, and its size
/// and digest. Checked as a sync will read it.
fn index_stanza(
    control: &DebControl,
    pool_path: &str,
    size: u64,
    sha256: &Sha256,
) -> Result<String> {
    PoolPath::parse(pool_path).map_err(|e| {
        ChannelsError::BadUpload(format!(
            "the package's pool path {pool_path:?} is unusable: {e}"
        ))
    })?;
    let text = stanza_text(&control.stanza, pool_path, size, sha256);
    index::parse(&text).map_err(|e| ChannelsError::BadUpload(format!("{e}")))?;
    Ok(text)
}

fn stanza_text(control: &str, pool_path: &str, size: u64, sha256: &Sha256) -> String {
    format!("{control}\nFilename: {pool_path}\nSize: {size}\nSHA256: {sha256}")
}
