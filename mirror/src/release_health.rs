//! Per-suite alarms about upstream release files, exported at `/metrics`: refusals (a bad or
//! foreign signature, bad dates, an older `Date`), how long the verified copy stays valid, and
//! freezes (upstream keeps confirming a Release that is about to expire or has).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct ReleaseHealth {
    suites: Mutex<BTreeMap<(String, String), SuiteHealth>>,
}

#[derive(Debug, Default, Clone)]
struct SuiteHealth {
    /// Upstream release files refused while a verified copy existed.
    refused: u64,
    /// `Valid-Until` of the verified copy (unix seconds), if it has one.
    valid_until: Option<i64>,
    /// Upstream confirmed, unchanged, a Release with under a quarter of its validity left.
    frozen: bool,
}

impl ReleaseHealth {
    fn with(&self, source: &str, suite: &str, f: impl FnOnce(&mut SuiteHealth)) {
        let mut suites = self.suites.lock().expect("lock poisoned");
        f(suites
            .entry((source.to_owned(), suite.to_owned()))
            .or_default());
    }

    /// The suite's verified copy is now one valid until `valid_until`. A new Release (not the
    /// one upstream kept confirming) ends a freeze.
    pub fn verified(&self, source: &str, suite: &str, valid_until: Option<i64>, new: bool) {
        self.with(source, suite, |h| {
            h.valid_until = valid_until;
            if new {
                h.frozen = false;
            }
        });
    }

    pub fn refused(&self, source: &str, suite: &str) {
        self.with(source, suite, |h| h.refused += 1);
    }

    pub fn frozen(&self, source: &str, suite: &str) {
        self.with(source, suite, |h| h.frozen = true);
    }

    /// The Prometheus text of every suite seen, as of `now` (unix seconds).
    pub fn render(&self, now: i64) -> String {
        let suites = self.suites.lock().expect("lock poisoned").clone();
        let mut out = String::new();
        let labels = |(source, suite): &(String, String)| {
            format!(
                "{{source=\"{}\",suite=\"{}\"}}",
                escape(source),
                escape(suite)
            )
        };
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&SuiteHealth) -> Option<i64>| {
                let _ = writeln!(out, "# HELP aptgate_mirror_{name} {help}");
                let _ = writeln!(out, "# TYPE aptgate_mirror_{name} {kind}");
                for (key, health) in &suites {
                    if let Some(v) = value(health) {
                        let _ = writeln!(out, "aptgate_mirror_{name}{} {v}", labels(key));
                    }
                }
            };
        family(
            "release_refused_total",
            "counter",
            "Upstream release files refused (signature, key, dates, older Date) while a verified copy was kept and served stale.",
            &|h| Some(h.refused as i64),
        );
        family(
            "release_valid_until_headroom_seconds",
            "gauge",
            "Seconds until the verified Release's Valid-Until (negative once expired); absent without Valid-Until.",
            &|h| h.valid_until.map(|until| until - now),
        );
        family(
            "release_expired",
            "gauge",
            "1 while the newest verified Release is past its Valid-Until: served stale, never synced.",
            &|h| Some(i64::from(h.valid_until.is_some_and(|until| until < now))),
        );
        family(
            "release_frozen",
            "gauge",
            "1 while upstream keeps confirming a Release with under a quarter of its validity left (a freeze).",
            &|h| Some(i64::from(h.frozen)),
        );
        out
    }
}

/// Prometheus label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_suite() {
        let health = ReleaseHealth::default();
        health.verified("debian", "bookworm", Some(1_000), true);
        health.refused("debian", "bookworm");
        health.frozen("debian", "bookworm");
        let text = health.render(1_100);
        for line in [
            "aptgate_mirror_release_refused_total{source=\"debian\",suite=\"bookworm\"} 1",
            "aptgate_mirror_release_valid_until_headroom_seconds{source=\"debian\",suite=\"bookworm\"} -100",
            "aptgate_mirror_release_expired{source=\"debian\",suite=\"bookworm\"} 1",
            "aptgate_mirror_release_frozen{source=\"debian\",suite=\"bookworm\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // Only a new Release ends a freeze.
        health.verified("debian", "bookworm", Some(2_000), false);
        assert!(health
            .render(1_100)
            .contains("release_frozen{source=\"debian\",suite=\"bookworm\"} 1"));
        health.verified("debian", "bookworm", Some(2_000), true);
        assert!(health
            .render(1_100)
            .contains("release_frozen{source=\"debian\",suite=\"bookworm\"} 0"));
    }
}
