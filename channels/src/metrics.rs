//! The channels' counters and gauges at `/metrics` (Prometheus text format): retention
//! (rescues), garbage collection and refused upstream stanzas.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub rescued: AtomicU64,
    pub rescue_failures: AtomicU64,
    /// Rescues still to do after the last sync (a gauge).
    pub rescues_pending: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_snapshots_deleted: AtomicU64,
    pub gc_blobs_deleted: AtomicU64,
    pub gc_bytes_freed: AtomicU64,
    pub refused_stanzas: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "rescued_total",
                "counter",
                "Referenced packages stored because they left upstream's index.",
                &self.rescued,
            ),
            (
                "rescue_failures_total",
                "counter",
                "Attempts to store a package leaving upstream that failed (retried next sync).",
                &self.rescue_failures,
            ),
            (
                "rescues_pending",
                "gauge",
                "Packages that left upstream while referenced and are not stored yet.",
                &self.rescues_pending,
            ),
            (
                "gc_runs_total",
                "counter",
                "Garbage collections run.",
                &self.gc_runs,
            ),
            (
                "gc_snapshots_deleted_total",
                "counter",
                "Snapshots deleted past retention.",
                &self.gc_snapshots_deleted,
            ),
            (
                "gc_blobs_deleted_total",
                "counter",
                "Blobs garbage collection deleted.",
                &self.gc_blobs_deleted,
            ),
            (
                "gc_bytes_freed_total",
                "counter",
                "Bytes garbage collection freed.",
                &self.gc_bytes_freed,
            ),
            (
                "refused_stanzas_total",
                "counter",
                "Upstream Packages stanzas refused by a sync: an unsafe Filename, or no way to check the file.",
                &self.refused_stanzas,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP aptgate_channels_{name} {help}");
            let _ = writeln!(out, "# TYPE aptgate_channels_{name} {kind}");
            let _ = writeln!(
                out,
                "aptgate_channels_{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}
