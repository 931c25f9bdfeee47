//! Release files: fetched, signature-checked, date-checked, stored and revalidated; the
//! Releases they replaced (for `by-hash/` grace), and the alarms of `release_health`.

use super::{now_secs, Mirror, Source};
use crate::digest::Sha256;
use crate::error::MirrorError;
use crate::metrics::Metrics;
use crate::refs::PathRecord;
use crate::release::SuiteRelease;
use crate::store::Expected;
use crate::upstream;
use aptgate_config::SourceName;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// The largest `InRelease`/`Release`/`Release.gpg` we accept (Debian's are ~150 KB).
const MAX_RELEASE_BYTES: usize = 32 << 20;

/// Superseded Releases kept per suite (within `mirror.by_hash_grace`): a Release's file list
/// is small, and apt only ever holds the one it fetched last.
const MAX_SUPERSEDED: usize = 16;

impl Mirror {
    /// Returns the record of a verified release file and whether it is served stale: upstream
    /// did not confirm it just now (unreachable, or it sent one we refused), or it is past its
    /// `Valid-Until` (apt refuses it; we must not call it fresh, and keep asking upstream).
    /// `for_sync` asks upstream whatever the freshness, and makes a refused upstream file an
    /// error even when a verified copy exists: a sync must not carry on as if nothing happened.
    pub(super) async fn release_file(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
        file: &str,
        for_sync: bool,
    ) -> Result<(PathRecord, bool), MirrorError> {
        let path = format!("dists/{suite}/{file}");
        // `Release` and `Release.gpg` are fetched, verified and stored as a pair.
        let lead = if file == "InRelease" {
            path.clone()
        } else {
            format!("dists/{suite}/Release")
        };
        let waiting_since = Instant::now();
        let lock = {
            let mut locks = self.release_locks.lock().expect("lock poisoned");
            locks.entry(format!("{name}/{lead}")).or_default().clone()
        };
        let mut last = lock.lock().await;

        let cached = self
            .refs
            .get(name, &lead)
            .await
            .filter(|r| self.store.contains(&r.sha256));
        let fresh = match &cached {
            Some(r) => {
                now_secs() - r.fetched_at < self.config.release_freshness.as_secs() as i64
                    && !self.release_expired(name, suite).await
            }
            None => false,
        };
        let confirmed = match *last {
            _ if fresh && !for_sync => true,
            // Another request asked upstream while this one waited: its answer stands, so a
            // crowd of clients of an expired or refused Release costs one request, not one each.
            Some((ended, confirmed)) if ended >= waiting_since && !for_sync => confirmed,
            _ => {
                let confirmed = self
                    .revalidate_release(name, source, suite, &lead, cached.as_ref(), for_sync)
                    .await?;
                *last = Some((Instant::now(), confirmed));
                confirmed
            }
        };
        let record = self
            .refs
            .get(name, &path)
            .await
            .ok_or_else(|| MirrorError::NotFound { what: path.clone() })?;
        let stale = !confirmed || self.release_expired(name, suite).await;
        if stale && !for_sync {
            Metrics::inc(&self.metrics.stale_served);
        }
        Ok((record, stale))
    }

    /// Whether the suite's verified Release is past its `Valid-Until`.
    pub(super) async fn release_expired(&self, name: &SourceName, suite: &str) -> bool {
        self.suite_release_cached(name, suite)
            .await
            .is_some_and(|r| r.expired(chrono::Utc::now()))
    }

    /// Asks upstream whether `lead` (InRelease or Release) changed and stores a verified new
    /// version. Returns whether upstream confirmed the cached copy or replaced it; `false`
    /// when the verified cached copy is kept because upstream could not be reached, or (not
    /// `for_sync`) sent a release file we refuse — a bad or foreign signature, bad dates.
    pub(super) async fn revalidate_release(
        &self,
        name: &SourceName,
        source: &Source,
        suite: &str,
        lead: &str,
        cached: Option<&PathRecord>,
        for_sync: bool,
    ) -> Result<bool, MirrorError> {
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
                    warn!(source = %name, %url, %reason, "upstream unreachable; serving the cached copy stale");
                    Ok(false)
                }
                None => Err(MirrorError::Upstream {
                    url: url.clone(),
                    reason,
                }),
            }
        };
        // Never stored, never served; with a verified copy, clients keep getting that (marked
        // stale) instead of an error, but a sync fails: nothing moves on a refused Release.
        let refused = |reason: String| {
            Metrics::inc(&self.metrics.upstream_errors);
            self.metrics.releases.refused(name.as_str(), suite);
            match cached {
                Some(_) if !for_sync => {
                    warn!(source = %name, %url, %reason,
                        "refusing upstream release file; serving the verified cached copy stale");
                    Ok(false)
                }
                _ => {
                    warn!(source = %name, %url, %reason, "refusing upstream release file");
                    Err(MirrorError::Verification {
                        url: url.clone(),
                        reason,
                    })
                }
            }
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return unreachable(upstream::describe(&e)),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            if let Some(cached) = cached {
                return self.confirmed(name, suite, lead, cached).await;
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

        let Ok(text) = String::from_utf8(body.clone()) else {
            return refused("not valid UTF-8 text".into());
        };
        // For a Release, also fetch its detached signature; both are stored or neither.
        let (signed_text, signature) = if lead.ends_with("/InRelease") {
            match source.keyring.verify_cleartext(&text) {
                Ok(signed) => (signed, None),
                Err(e) => return refused(e.to_string()),
            }
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
            if let Err(e) = source.keyring.verify_detached(&body, &sig) {
                return refused(e.to_string());
            }
            (text, Some(sig))
        };
        let release = match SuiteRelease::parse(&signed_text) {
            Ok(release) => release,
            Err(e) => return refused(e.to_string()),
        };
        let digest = Sha256::of(&body);
        if let Some(cached) = cached.filter(|c| c.sha256 == digest) {
            // The same verified bytes (a server that ignores conditional requests): upstream
            // confirms our copy, whatever its dates say by now.
            return self.confirmed(name, suite, lead, cached).await;
        }
        if let Err(e) = release.check_dates(chrono::Utc::now()) {
            return refused(e.to_string());
        }

        let old = match cached {
            Some(_) => self.suite_release_cached(name, suite).await,
            None => None,
        };
        if let (Some(cached), Some(old)) = (cached, &old) {
            if release.date < old.date {
                self.metrics.releases.refused(name.as_str(), suite);
                warn!(source = %name, %url, new = %release.date, cached = %old.date,
                    "upstream release is older than the cached one; keeping the cached one");
                return self.confirmed(name, suite, lead, cached).await;
            }
        }

        let now = now_secs();
        self.store
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
        info!(source = %name, suite, date = %release.date, "new verified release");
        self.metrics.releases.verified(
            name.as_str(),
            suite,
            release.valid_until.map(|t| t.timestamp()),
            true,
        );
        self.releases
            .write()
            .expect("lock poisoned")
            .insert((name.clone(), suite.to_owned()), Arc::new(release));
        if let Some(old) = old {
            self.supersede(name, suite, old);
        }
        Ok(true)
    }

    /// Upstream confirmed the cached copy (304, the same bytes, or only an older one): records
    /// it, and raises the freeze alarm if that copy has under a quarter of its validity left —
    /// an upstream that stopped publishing, or someone replaying an old Release to us.
    async fn confirmed(
        &self,
        name: &SourceName,
        suite: &str,
        lead: &str,
        cached: &PathRecord,
    ) -> Result<bool, MirrorError> {
        self.touch(name, lead, cached).await?;
        if let Some(release) = self.suite_release_cached(name, suite).await {
            if release.validity_running_out(chrono::Utc::now()) {
                self.metrics.releases.frozen(name.as_str(), suite);
                let valid_until = release.valid_until.map(|t| t.to_rfc2822());
                warn!(source = %name, suite, date = %release.date, valid_until = valid_until.as_deref().unwrap_or("-"),
                    "upstream keeps confirming a Release near or past its Valid-Until: frozen upstream? \
                     apt refuses it once expired, and syncs of the suite stop");
            }
        }
        Ok(true)
    }

    /// Records that upstream confirmed a cached release file (and its signature) just now.
    async fn touch(
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
        self.metrics.releases.verified(
            name.as_str(),
            suite,
            release.valid_until.map(|t| t.timestamp()),
            false,
        );
        let release = Arc::new(release);
        self.releases
            .write()
            .expect("lock poisoned")
            .insert(key, release.clone());
        Some(release)
    }

    /// Keeps a Release that a newer one replaced, so clients that fetched it before the change
    /// still get its indices under `by-hash/` (they ask for them right after the Release:
    /// LP #972077's problem C).
    fn supersede(&self, name: &SourceName, suite: &str, old: Arc<SuiteRelease>) {
        let mut superseded = self.superseded.lock().expect("lock poisoned");
        let list = superseded
            .entry((name.clone(), suite.to_owned()))
            .or_default();
        list.retain(|(at, _)| at.elapsed() < self.config.by_hash_grace);
        list.push((Instant::now(), old));
        if list.len() > MAX_SUPERSEDED {
            list.remove(0);
        }
    }

    /// What `dists/<suite>/<rest>`, a `by-hash/` path, must be if a Release that the suite's
    /// current one replaced within `by_hash_grace` lists its digest.
    pub(super) fn superseded_expect(
        &self,
        name: &SourceName,
        suite: &str,
        rest: &str,
    ) -> Option<(Sha256, u64)> {
        if !rest.contains("/by-hash/") {
            return None;
        }
        let superseded = self.superseded.lock().expect("lock poisoned");
        superseded
            .get(&(name.clone(), suite.to_owned()))?
            .iter()
            .rev()
            .filter(|(at, _)| at.elapsed() < self.config.by_hash_grace)
            .find_map(|(_, release)| release.expect(rest))
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
