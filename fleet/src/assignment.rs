//! Assignment: which channel a host uses, from its effective labels and the rules (configured
//! in `[[fleet.rules]]` or created through the API), and the apt sources that follow.
//!
//! The matching rule with the most selector terms wins; among those, the higher `priority`;
//! still tied, the rule whose name sorts first. A configured rule wins a name clash with an
//! API one. A host no rule matches is unassigned: its sources are empty.

use crate::error::{FleetError, Result};
use crate::selector::Selector;
use crate::Fleet;
use aptgate_agent::protocol::{ChannelKey, DesiredSources, Labels, SourceEntry};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the rule list is trusted before the catalog is read again (other instances).
const RULES_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Rule {
    pub name: String,
    #[serde(serialize_with = "as_text")]
    pub selector: Selector,
    pub channel: String,
    pub mirror: Option<String>,
    pub priority: i64,
    pub disable_other_sources: bool,
    /// `config` or `api`.
    pub origin: &'static str,
    pub created_by: String,
}

fn as_text<S: serde::Serializer>(s: &Selector, out: S) -> std::result::Result<S::Ok, S::Error> {
    out.serialize_str(&s.to_string())
}

/// The rule that assigns a host with these labels, if any.
pub fn pick<'r>(rules: &'r [Rule], labels: &Labels) -> Option<&'r Rule> {
    rules
        .iter()
        .filter(|r| r.selector.matches(labels))
        .min_by(|a, b| {
            b.selector
                .terms()
                .cmp(&a.selector.terms())
                .then(b.priority.cmp(&a.priority))
                .then(a.name.cmp(&b.name))
        })
}

/// A mirror base URL hosts are given: http(s), no whitespace or control characters.
pub fn check_mirror(url: &str) -> Result<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > 8
        && url.len() <= 512
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_mirror",
            format!(
                "invalid mirror URL {url:?}\nhint: a base URL like http://mirror.example.org:8470"
            ),
        ))
    }
}

pub(crate) struct RuleCache {
    pub(crate) rules: std::sync::RwLock<(Arc<Vec<Rule>>, Option<Instant>)>,
}

impl Default for RuleCache {
    fn default() -> Self {
        Self {
            rules: std::sync::RwLock::new((Arc::new(Vec::new()), None)),
        }
    }
}

impl Fleet {
    /// Every rule: the configured ones, then those created through the API.
    pub async fn rules(&self) -> Result<Arc<Vec<Rule>>> {
        {
            let cached = self.rules.rules.read().expect("lock poisoned");
            if cached.1.is_some_and(|at| at.elapsed() < RULES_TTL) {
                return Ok(cached.0.clone());
            }
        }
        self.reload_rules().await
    }

    pub(crate) async fn reload_rules(&self) -> Result<Arc<Vec<Rule>>> {
        let mut rules = Vec::new();
        for r in &self.config.rules {
            rules.push(Rule {
                name: r.name.clone(),
                selector: Selector::parse(&r.selector)?,
                channel: r.channel.to_string(),
                mirror: r.mirror.clone(),
                priority: r.priority,
                disable_other_sources: r.disable_other_sources,
                origin: "config",
                created_by: "config".into(),
            });
        }
        for r in self.store.rules().await? {
            if rules.iter().any(|c| c.name == r.name) {
                continue;
            }
            let Ok(selector) = Selector::parse(&r.selector) else {
                tracing::warn!(rule = %r.name, "unreadable selector; rule ignored");
                continue;
            };
            rules.push(Rule {
                name: r.name,
                selector,
                channel: r.channel,
                mirror: r.mirror,
                priority: r.priority,
                disable_other_sources: r.disable_other_sources != 0,
                origin: "api",
                created_by: r.created_by,
            });
        }
        let rules = Arc::new(rules);
        *self.rules.rules.write().expect("lock poisoned") = (rules.clone(), Some(Instant::now()));
        Ok(rules)
    }

    /// Every active channel signing key as hosts place it (`aptgate-<last 16 of the
    /// fingerprint>.asc`), cached until the keys change.
    pub(crate) fn channel_keys(&self) -> Result<Arc<Vec<ChannelKey>>> {
        let fingerprints: Vec<String> = self
            .channels
            .keys()
            .into_iter()
            .filter(|k| k.retired_at.is_none())
            .map(|k| k.fingerprint)
            .collect();
        let mut cache = self.keys.lock().expect("lock poisoned");
        if let Some((known, keys)) = &*cache {
            if *known == fingerprints {
                return Ok(keys.clone());
            }
        }
        let keys: Vec<ChannelKey> = self
            .channels
            .active_public_keys()?
            .into_iter()
            .map(|k| {
                let tail = &k.fingerprint[k.fingerprint.len().saturating_sub(16)..];
                ChannelKey {
                    file_name: format!("aptgate-{}.asc", tail.to_ascii_lowercase()),
                    fingerprint: k.fingerprint,
                    armored: k.armored,
                }
            })
            .collect();
        let keys = Arc::new(keys);
        *cache = Some((fingerprints, keys.clone()));
        Ok(keys)
    }

    /// The sources a host assigned by `rule` should have. `host_header` is the `Host` of its
    /// request: the server's address when neither the rule nor `fleet.public_url` names one.
    pub async fn desired_sources(
        &self,
        rule: Option<&Rule>,
        architectures: &[String],
        host_header: Option<&str>,
    ) -> Result<DesiredSources> {
        let Some(rule) = rule else {
            return Ok(with_rev(DesiredSources::default()));
        };
        let base = self.base_url(rule, host_header)?;
        let uri = format!("{}/channels/{}/", base.trim_end_matches('/'), rule.channel);
        let entries = match self.channels.channel_view(&rule.channel).await? {
            Some(view) => view
                .suites
                .into_iter()
                .map(|(suite, components)| SourceEntry {
                    uris: vec![uri.clone()],
                    suites: vec![suite],
                    components,
                    architectures: architectures.to_vec(),
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(with_rev(DesiredSources {
            rev: String::new(),
            channel: Some(rule.channel.clone()),
            entries,
            keys: self.channel_keys()?.as_ref().clone(),
            disable_other_sources: rule.disable_other_sources,
        }))
    }
}

impl Fleet {
    /// The base URL hosts assigned by `rule` fetch from: the rule's mirror, else
    /// `fleet.public_url`, else the `Host` of the agent's request.
    pub(crate) fn base_url(&self, rule: &Rule, host_header: Option<&str>) -> Result<String> {
        Ok(
            match (&rule.mirror, self.config.public_url.as_str(), host_header) {
                (Some(m), _, _) => m.clone(),
                (None, url, _) if !url.is_empty() => url.to_owned(),
                (None, _, Some(h))
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) =>
                {
                    format!("http://{h}")
                }
                _ => return Err(FleetError::bad_request(
                    "no_server_url",
                    "cannot tell the URL hosts reach this server at\nhint: set fleet.public_url",
                )),
            },
        )
    }
}

/// Fills in `rev`: the digest of everything else.
fn with_rev(mut sources: DesiredSources) -> DesiredSources {
    sources.rev = String::new();
    let bytes = serde_json::to_vec(&sources).expect("sources serialize");
    sources.rev = hex::encode(Sha256::digest(&bytes));
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, selector: &str, priority: i64) -> Rule {
        Rule {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            channel: name.into(),
            mirror: None,
            priority,
            disable_other_sources: false,
            origin: "api",
            created_by: "t".into(),
        }
    }

    #[test]
    fn the_most_specific_rule_wins_then_priority_then_name() {
        let host: Labels = [("site", "berlin"), ("role", "web")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let rules = vec![
            rule("all", "", 100),
            rule("berlin", "site=berlin", 0),
            rule("berlin-web", "site=berlin,role=web", 0),
            rule("paris", "site=paris", 50),
        ];
        assert_eq!(pick(&rules, &host).unwrap().name, "berlin-web");
        let rules = vec![rule("b", "site=berlin", 1), rule("a", "role=web", 1)];
        assert_eq!(pick(&rules, &host).unwrap().name, "a");
        let rules = vec![rule("b", "site=berlin", 2), rule("a", "role=web", 1)];
        assert_eq!(pick(&rules, &host).unwrap().name, "b");
        assert!(pick(&[rule("p", "site=paris", 0)], &host).is_none());
    }
}
