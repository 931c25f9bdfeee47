//! Publications: the signed `Release`, `InRelease` and `Release.gpg` of every suite a channel
//! publishes, rendered over index blobs that already exist.

use crate::catalog::*;
use crate::error::{ChannelsError, Result};
use crate::manifest::*;
use crate::service::*;
use aptgate_mirror::Sha256;
use std::collections::BTreeMap;

/// How far in the past a Release's `Date` is set, in seconds. apt refuses a Release dated
/// more than `Acquire::Max-FutureTime` (10 s) ahead of its own clock ("not valid yet"), so
/// a Release dated the second it was signed fails on every host whose clock runs a little
/// behind ours; a minute covers ordinary drift. `Valid-Until` still counts from signing.
pub const RELEASE_DATE_MARGIN: i64 = 60;

impl Channels {
    /// Renders and signs the Release files of every suite the channel publishes.
    pub(crate) async fn sign_publication(
        &self,
        channel: &str,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<Publication> {
        let config = self.channel_config(channel).await?;
        let signed_at = now();
        let valid_until = (!self.publish.valid_until.is_zero())
            .then(|| signed_at + self.publish.valid_until.as_secs() as i64);
        // The snapshot names its manifest blob: nothing to store again.
        let manifest_digest = Sha256::from_hex(&snapshot.manifest_sha256).map_err(|e| {
            ChannelsError::CorruptBlob {
                what: "manifest",
                digest: snapshot.manifest_sha256.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut suites = BTreeMap::new();
        for (suite, sm) in &manifest.suites {
            if !config.suites.is_empty() && !config.suites.contains(suite) {
                continue;
            }
            let text = self.render_release(channel, suite, sm, signed_at, valid_until);
            let (in_release, release_gpg) = {
                let keys = self.keys.lock().expect("lock poisoned");
                (
                    keys.cleartext_sign(&text)?,
                    keys.detached_sign(text.as_bytes())?,
                )
            };
            suites.insert(
                suite.clone(),
                SignedRelease {
                    release: self.put_blob(text.as_bytes()).await?,
                    in_release: self.put_blob(in_release.as_bytes()).await?,
                    release_gpg: self.put_blob(release_gpg.as_bytes()).await?,
                },
            );
        }
        Ok(Publication {
            format: 1,
            channel: channel.to_owned(),
            snapshot: snapshot.id.clone(),
            manifest: manifest_digest,
            signed_at,
            valid_until,
            suites,
        })
    }

    pub(crate) fn render_release(
        &self,
        channel: &str,
        suite: &str,
        sm: &SuiteManifest,
        signed_at: i64,
        valid_until: Option<i64>,
    ) -> String {
        use std::fmt::Write;
        let date = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .unwrap_or_default()
                .format("%a, %d %b %Y %H:%M:%S UTC")
                .to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "Origin: aptgate");
        let _ = writeln!(out, "Label: {channel}");
        let _ = writeln!(out, "Suite: {suite}");
        let _ = writeln!(out, "Codename: {}", sm.codename.as_deref().unwrap_or(suite));
        let _ = writeln!(out, "Date: {}", date(signed_at - RELEASE_DATE_MARGIN));
        if let Some(v) = valid_until {
            let _ = writeln!(out, "Valid-Until: {}", date(v));
        }
        let _ = writeln!(out, "Architectures: {}", sm.architectures.join(" "));
        let _ = writeln!(out, "Components: {}", sm.components.join(" "));
        let _ = writeln!(out, "Description: aptgate channel {channel}");
        let _ = writeln!(out, "Acquire-By-Hash: yes");
        if !self.publish.public_url.is_empty() {
            // apt >= 2.7 (`apt update --snapshot ID`) replaces @SNAPSHOTID@.
            let _ = writeln!(
                out,
                "Snapshots: {}/channels/{channel}/snapshots/@SNAPSHOTID@",
                self.publish.public_url.trim_end_matches('/')
            );
        }
        let _ = writeln!(out, "SHA256:");
        for (key, files) in &sm.indices {
            for (name, blob) in files.files() {
                let _ = writeln!(out, " {} {:>16} {key}/{name}", blob.sha256, blob.size);
            }
        }
        out
    }
}
