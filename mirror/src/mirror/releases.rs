//! Release files: fetched, signature-checked, date-checked, stored and revalidated.

use super::{now_secs, Mirror, Source};
use crate::error::MirrorError;
use crate::metrics::Metrics;
use crate::refs::PathRecord;
use crate::release::SuiteRelease;
use crate::store::Expected;
use crate::upstream;
use aptgate_config::SourceName;
use futures::StreamExt;
use std::sync::Arc;
use tracing::{info, warn};

/// The largest `InRelease`/`Release`/`Release.gpg` we accept (Debian's are ~150 KB).
const MAX_RELEASE_BYTES: usize = 32 << 20;

impl Mirror {
    /// Returns the record of a verified release file and whether it is served stale.
    pub(super) async fn release_file(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
        file: &str,
        force: bool,
    ) -> Result<(PathRecord, bool), MirrorError> {
        let path = format!("dists/{suite}/{file}");
        // `Release` and `Release.gpg` are fetched, verified and stored as a pair.
        let lead = if file == "InRelease" {
            path.clone()
        } else {
            format!("dists/{suite}/Release")
        };
        let lock = {
            let mut locks = self.release_locks.lock().expect("lock poisoned");
            locks.entry(format!("{name}/{lead}")).or_default().clone()
        };
        let _guard = lock.lock().await;

        let cached = self
            .refs
            .get(name, &lead)
            .await
            .filter(|r| self.store.contains(&r.sha256));
        let fresh = cached.as_ref().is_some_and(|r| {
            now_secs() - r.fetched_at < self.config.release_freshness.as_secs() as i64
        });
        if force || !fresh {
            self.revalidate_release(name, source, suite, &lead, cached.as_ref())
                .await?;
        }
        let record = self
            .refs
            .get(name, &path)
            .await
            .ok_or_else(|| MirrorError::NotFound { what: path.clone() })?;
        let stale =
            now_secs() - record.fetched_at >= self.config.release_freshness.as_secs() as i64;
        Ok((record, stale))
    }

    /// Asks upstream whether `lead` (InRelease or Release) changed and stores a verified new
    /// version. When upstream cannot be reached but a verified copy exists, keeps that copy.
    pub(super) async fn revalidate_release(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
        lead: &str,
        cached: Option<&PathRecord>,
    ) -> Result<(), MirrorError> {
        let url = source.url(lead);
        let mut request = self.client.get(&url);
        if let Some(cached) = cached {
            if let Some(etag) = &cached.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &cached.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        Metrics::inc(&self.metrics.upstream_fetches);
        let unreachable = |reason: String| {
            Metrics::inc(&self.metrics.upstream_errors);
            match cached {
                Some(_) => {
                    Metrics::inc(&self.metrics.stale_served);
                    warn!(source = %name, %url, %reason, "upstream unreachable; serving the cached copy stale");
                    Ok(())
                }
                None => Err(MirrorError::Upstream {
                    url: url.clone(),
                    reason,
                }),
            }
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return unreachable(upstream::describe(&e)),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            if let Some(cached) = cached {
                return self.touch(name, lead, cached).await;
            }
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return match cached {
                Some(_) => unreachable("answered 404 for a file it served before".into()),
                None => Err(MirrorError::NotFound { what: lead.into() }),
            };
        }
        if status != reqwest::StatusCode::OK {
            return unreachable(format!("answered {status}"));
        }
        let etag = header(&response, reqwest::header::ETAG);
        let last_modified = header(&response, reqwest::header::LAST_MODIFIED);
        let body = match read_limited(response, MAX_RELEASE_BYTES).await {
            Ok(b) => b,
            Err(reason) => return unreachable(reason),
        };

        let verify_error = |reason: String| {
            Metrics::inc(&self.metrics.upstream_errors);
            warn!(source = %name, %url, %reason, "refusing upstream release file");
            MirrorError::Verification {
                url: url.clone(),
                reason,
            }
        };
        let text = String::from_utf8(body.clone())
            .map_err(|_| verify_error("not valid UTF-8 text".into()))?;
        // For a Release, also fetch its detached signature; both are stored or neither.
        let (signed_text, signature) = if lead.ends_with("/InRelease") {
            let signed = source
                .keyring
                .verify_cleartext(&text)
                .map_err(|e| verify_error(e.to_string()))?;
            (signed, None)
        } else {
            let sig_url = format!("{url}.gpg");
            Metrics::inc(&self.metrics.upstream_fetches);
            let sig = match self.client.get(&sig_url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    read_limited(r, MAX_RELEASE_BYTES).await
                }
                Ok(r) => Err(format!("{sig_url} answered {}", r.status())),
                Err(e) => Err(upstream::describe(&e)),
            };
            let sig = match sig {
                Ok(sig) => sig,
                Err(reason) => return unreachable(reason),
            };
            source
                .keyring
                .verify_detached(&body, &sig)
                .map_err(|e| verify_error(e.to_string()))?;
            (text, Some(sig))
        };
        let release = SuiteRelease::parse(&signed_text).map_err(|e| verify_error(e.to_string()))?;
        release
            .check_dates(chrono::Utc::now())
            .map_err(|e| verify_error(e.to_string()))?;

        if let Some(cached) = cached {
            if let Some(old) = self.suite_release_cached(name, suite).await {
                if release.date < old.date {
                    warn!(source = %name, %url, new = %release.date, cached = %old.date,
                        "upstream release is older than the cached one; keeping the cached one");
                    return self.touch(name, lead, cached).await;
                }
            }
        }

        let now = now_secs();
        let digest = self
            .store
            .insert(&body, Expected::default())
            .await
            .map_err(MirrorError::internal)?;
        let record = PathRecord {
            sha256: digest,
            size: body.len() as u64,
            fetched_at: now,
            etag,
            last_modified,
        };
        if let Some(sig) = signature {
            let sig_digest = self
                .store
                .insert(&sig, Expected::default())
                .await
                .map_err(MirrorError::internal)?;
            let sig_record = PathRecord {
                sha256: sig_digest,
                size: sig.len() as u64,
                fetched_at: now,
                etag: None,
                last_modified: None,
            };
            self.refs
                .put(name, &format!("{lead}.gpg"), &sig_record)
                .await
                .map_err(MirrorError::internal)?;
        }
        self.refs
            .put(name, lead, &record)
            .await
            .map_err(MirrorError::internal)?;
        if cached.map(|c| c.sha256) != Some(digest) {
            info!(source = %name, suite, date = %release.date, "new verified release");
        }
        self.releases
            .write()
            .expect("lock poisoned")
            .insert((name.clone(), suite.to_owned()), Arc::new(release));
        Ok(())
    }

    /// Records that upstream confirmed a cached release file (and its signature) just now.
    pub(super) async fn touch(
        &self,
        name: &SourceName,
        lead: &str,
        cached: &PathRecord,
    ) -> Result<(), MirrorError> {
        let now = now_secs();
        let mut paths = vec![lead.to_owned()];
        if lead.ends_with("/Release") {
            paths.push(format!("{lead}.gpg"));
        }
        for path in paths {
            let record = if path == lead {
                Some(cached.clone())
            } else {
                self.refs.get(name, &path).await
            };
            if let Some(mut record) = record {
                record.fetched_at = now;
                self.refs
                    .put(name, &path, &record)
                    .await
                    .map_err(MirrorError::internal)?;
            }
        }
        Ok(())
    }

    /// The suite's verified Release as last stored, without asking upstream.
    pub(super) async fn suite_release_cached(
        &self,
        name: &SourceName,
        suite: &str,
    ) -> Option<Arc<SuiteRelease>> {
        let key = (name.clone(), suite.to_owned());
        if let Some(r) = self.releases.read().expect("lock poisoned").get(&key) {
            return Some(r.clone());
        }
        let source = self.sources.get(name)?;
        let release = self.load_stored_release(name, source, suite).await?;
        let release = Arc::new(release);
        self.releases
            .write()
            .expect("lock poisoned")
            .insert(key, release.clone());
        Some(release)
    }

    /// Re-reads a stored release file; its signature is checked again, since the store on
    /// disk is only as trustworthy as its last `store verify`.
    pub(crate) async fn load_stored_release(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
    ) -> Option<SuiteRelease> {
        if let Some(record) = self
            .refs
            .get(name, &format!("dists/{suite}/InRelease"))
            .await
        {
            let bytes = self.store.read(&record.sha256).await.ok()?;
            let text = String::from_utf8(bytes).ok()?;
            let signed = source.keyring.verify_cleartext(&text).ok()?;
            return SuiteRelease::parse(&signed).ok();
        }
        let record = self
            .refs
            .get(name, &format!("dists/{suite}/Release"))
            .await?;
        let sig = self
            .refs
            .get(name, &format!("dists/{suite}/Release.gpg"))
            .await?;
        let bytes = self.store.read(&record.sha256).await.ok()?;
        let sig = self.store.read(&sig.sha256).await.ok()?;
        source.keyring.verify_detached(&bytes, &sig).ok()?;
        SuiteRelease::parse(&String::from_utf8(bytes).ok()?).ok()
    }
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| upstream::describe(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
