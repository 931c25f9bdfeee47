//! Counters exported at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub bytes_served: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub upstream_fetches: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub coalesced_waiters: AtomicU64,
    pub stale_served: AtomicU64,
    pub refused_stanzas: AtomicU64,
    /// Per-suite refusals, expiry and freezes of upstream release files.
    pub releases: crate::release_health::ReleaseHealth,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 9] = [
            ("requests", "Requests to /mirror/.", &self.requests),
            (
                "bytes_served",
                "Body bytes sent for /mirror/ responses (by Content-Length).",
                &self.bytes_served,
            ),
            (
                "cache_hits",
                "Requests answered from the store.",
                &self.cache_hits,
            ),
            (
                "cache_misses",
                "Requests that started an upstream download.",
                &self.cache_misses,
            ),
            (
                "upstream_fetches",
                "Requests sent to upstreams.",
                &self.upstream_fetches,
            ),
            (
                "upstream_errors",
                "Upstream requests that failed or were refused.",
                &self.upstream_errors,
            ),
            (
                "coalesced_waiters",
                "Requests that joined a download already under way.",
                &self.coalesced_waiters,
            ),
            (
                "stale_served",
                "Release files served stale: upstream unreachable, refused or expired.",
                &self.stale_served,
            ),
            (
                "refused_stanzas",
                "Stanzas of verified Packages indices refused: an unsafe Filename, or no way to check the file.",
                &self.refused_stanzas,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            let _ = writeln!(out, "# HELP aptgate_mirror_{name}_total {help}");
            let _ = writeln!(out, "# TYPE aptgate_mirror_{name}_total counter");
            let _ = writeln!(
                out,
                "aptgate_mirror_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        out.push_str(&self.releases.render(chrono::Utc::now().timestamp()));
        out
    }
}
