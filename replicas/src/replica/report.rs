//! The replica's status: kept up to date by the sync loop, served at `/status`, posted to the
//! parent after every attempt (a parent that cannot be reached misses it; the next one says
//! the same and more).

use super::Replica;
use crate::protocol::{ChannelReport, ReplicaReport, ReportedError, STATUS_PATH};

impl Replica {
    pub(crate) fn note_success(&self) {
        let mut r = self.report.lock().expect("lock poisoned");
        r.last_success_at = Some(aptgate_channels::now());
    }

    pub(crate) fn note_error(&self, e: &super::SyncError) {
        let mut r = self.report.lock().expect("lock poisoned");
        r.last_error = Some(ReportedError {
            at: aptgate_channels::now(),
            message: e.to_string(),
        });
    }

    /// The report as of now.
    pub async fn status(&self) -> ReplicaReport {
        let applied = self.applied();
        let missing = match &applied {
            Some(a) => {
                let (a, mirror) = (a.clone(), self.mirror.clone());
                tokio::task::spawn_blocking(move || a.missing(mirror.store()))
                    .await
                    .unwrap_or_default()
            }
            None => (0, 0),
        };
        let mut r = self.report.lock().expect("lock poisoned").clone();
        r.reported_at = aptgate_channels::now();
        (r.blobs_missing, r.bytes_missing) = missing;
        if let Some(a) = applied {
            r.seq_applied = Some(a.seq);
            r.path = a.path.clone();
            r.valid_until_headroom_secs = a.first_expiry().map(|v| v - r.reported_at);
            r.channels = a
                .channels
                .iter()
                .map(|(name, c)| {
                    let report = ChannelReport {
                        snapshot: c.snapshot.clone(),
                        in_release_sha256: c
                            .suites
                            .iter()
                            .map(|(s, suite)| (s.clone(), suite.signed.in_release.sha256.to_hex()))
                            .collect(),
                    };
                    (name.clone(), report)
                })
                .collect();
        }
        r
    }

    /// Posts the report to the parent; failures are only logged (the parent may be down).
    pub(crate) async fn send_report(&self) {
        let report = self.status().await;
        if let Err(e) = self.post_report(&report).await {
            tracing::debug!(error = %e, "the status report did not reach the parent");
        }
    }

    /// Posts `report` (this replica's, or a child's passed up) to the parent.
    pub(crate) async fn post_report(&self, report: &ReplicaReport) -> Result<(), NotPosted> {
        let url = format!(
            "{}{STATUS_PATH}",
            self.config.parent.as_str().trim_end_matches('/')
        );
        let answer = self
            .client
            .post(&url)
            .json(report)
            .send()
            .await
            .map_err(|e| NotPosted::Unreachable(e.to_string()))?;
        if answer.status().is_success() {
            return Ok(());
        }
        Err(NotPosted::Refused {
            status: answer.status().as_u16(),
            body: answer.text().await.unwrap_or_default(),
        })
    }
}

/// Why a report did not reach the parent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotPosted {
    #[error("the parent answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("cannot reach the parent: {0}")]
    Unreachable(String),
}
