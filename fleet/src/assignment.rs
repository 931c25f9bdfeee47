//! Assignment: which channel a host uses, from its effective labels and the rules (configured
//! in `[[fleet.rules]]` or created through the API), and the apt sources that follow.
//!
//! The matching rule with the most selector terms wins; among those, the higher `priority`;
//! still tied, the rule whose name sorts first. A configured rule wins a name clash with an
//! API one. A host no rule matches is unassigned: its sources are empty.
//!
//! A rule may name mirrors (replicas' base URLs, in order): hosts get them as
//! [`DesiredSources::mirrors`] and try them before this server, which stays the fallback.

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
    /// Replicas' base URLs, tried in this order before this server.
    pub mirrors: Vec<String>,
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

/// The most mirrors a rule names (the agent refuses more than 16).
pub const MAX_MIRRORS: usize = 8;

/// A mirror base URL hosts are given: a URI the agent accepts (its own check), at most 512
/// bytes.
pub fn check_mirror(url: &str) -> Result<()> {
    let ok = url.len() <= 512 && aptgate_agent::sources::check_uri(url).is_ok();
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

/// A rule's mirror list: each a valid URL, none twice, at most [`MAX_MIRRORS`].
pub fn check_mirrors(urls: &[String]) -> Result<()> {
    if urls.len() > MAX_MIRRORS {
        return Err(FleetError::bad_request(
            "bad_mirror",
            format!("{} mirrors; a rule names at most {MAX_MIRRORS}", urls.len()),
        ));
    }
    for (i, url) in urls.iter().enumerate() {
        check_mirror(url)?;
        if urls[..i].iter().any(|u| base(u) == base(url)) {
            return Err(FleetError::bad_request(
                "bad_mirror",
                format!("mirror {url:?} is named twice"),
            ));
        }
    }
    Ok(())
}

/// Warnings for mirrors on the same host name as this server (`server_url`): within one run
/// apt gives up on every port of a host name it once failed to connect to, so when such a
/// mirror is down the fallback to this server fails too.
pub fn shared_host_warnings(server_url: Option<&str>, mirrors: &[String]) -> Vec<String> {
    let host_name = |url: &str| url::Url::parse(url).ok()?.host_str().map(str::to_owned);
    let Some(server) = server_url.and_then(host_name) else {
        return Vec::new();
    };
    mirrors
        .iter()
        .filter(|m| host_name(m).is_some_and(|h| h.eq_ignore_ascii_case(&server)))
        .map(|m| {
            format!(
                "mirror {m} has this server's host name ({server}): if it is down, apt gives up \
                 on the fallback to this server too (apt skips every port of a host name it \
                 failed to connect to)\nhint: give the replica a host name of its own"
            )
        })
        .collect()
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
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
                mirrors: r.all_mirrors(),
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
                mirrors: r.mirror_list(),
                name: r.name,
                selector,
                channel: r.channel,
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

    /// The base URL hosts reach this server at: `fleet.public_url`, else `http://<Host>` of
    /// their request (`host_header`), if it is a plain host name or address.
    pub fn server_url(&self, host_header: Option<&str>) -> Option<String> {
        match (self.config.public_url.as_str(), host_header) {
            (url, _) if !url.is_empty() => Some(url.to_owned()),
            (_, Some(h))
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) =>
            {
                Some(format!("http://{h}"))
            }
            _ => None,
        }
    }

    /// The sources a host assigned by `rule` should have: the rule's mirrors first, then this
    /// server (`host_header` is the `Host` of the host's request, see [`Self::server_url`]).
    pub async fn desired_sources(
        &self,
        rule: Option<&Rule>,
        architectures: &[String],
        host_header: Option<&str>,
    ) -> Result<DesiredSources> {
        let Some(rule) = rule else {
            return Ok(with_rev(DesiredSources::default()));
        };
        let channel_uri =
            |base: &str| format!("{}/channels/{}/", base.trim_end_matches('/'), rule.channel);
        let mut mirrors: Vec<String> = rule.mirrors.iter().map(|m| channel_uri(m)).collect();
        let uri = match self.server_url(host_header) {
            Some(server) => channel_uri(&server),
            // No address for this server: the last mirror is the fallback.
            None => mirrors.pop().ok_or_else(|| {
                FleetError::bad_request(
                    "no_server_url",
                    "cannot tell the URL hosts reach this server at\nhint: set fleet.public_url",
                )
            })?,
        };
        mirrors.retain(|m| *m != uri);
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
            keys: self.channel_keys()?.as_ref().clone(),
            disable_other_sources: rule.disable_other_sources,
            // Nothing to fetch from them while the channel publishes nothing.
            mirrors: if entries.is_empty() {
                Vec::new()
            } else {
                mirrors
            },
            entries,
        }))
    }
}

impl Fleet {
    /// This server's URL as hosts reach it, or an error with a hint (for the run plan's
    /// snapshot sources, which only this server serves: replicas carry current channels).
    pub(crate) fn base_url(&self, host_header: Option<&str>) -> Result<String> {
        self.server_url(host_header).ok_or_else(|| {
            FleetError::bad_request(
                "no_server_url",
                "cannot tell the URL hosts reach this server at\nhint: set fleet.public_url",
            )
        })
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

    #[test]
    fn a_mirror_on_this_server_s_host_name_is_warned_about_whatever_its_port() {
        let mirrors = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let server = Some("https://aptgate.example.org:8470/");
        assert_eq!(
            shared_host_warnings(
                server,
                &mirrors(&[
                    "http://APTGATE.example.org:9000",
                    "http://berlin.example.org:8470",
                    "http://user@aptgate.example.org/x",
                ])
            )
            .len(),
            2
        );
        assert!(shared_host_warnings(None, &mirrors(&["http://aptgate.example.org"])).is_empty());
        let v6 = Some("http://[2001:db8::1]:8470");
        assert_eq!(
            shared_host_warnings(
                v6,
                &mirrors(&["http://[2001:db8::1]:9000", "http://[2001:db8::2]"])
            )
            .len(),
            1
        );
    }

    fn rule(name: &str, selector: &str, priority: i64) -> Rule {
        Rule {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            channel: name.into(),
            mirrors: vec![],
            priority,
            disable_other_sources: false,
            origin: "api",
            created_by: "t".into(),
        }
    }

    #[test]
    fn mirrors_are_urls_the_agent_accepts_each_named_once() {
        let ok = |list: &[&str]| {
            check_mirrors(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).is_ok()
        };
        assert!(ok(&[]));
        assert!(ok(&[
            "http://replica-berlin.example.org:8080",
            "https://hub.example.org/aptgate/"
        ]));
        for bad in [
            "ftp://x.example.org",
            "http://",
            "http:///etc",
            "file:///etc/apt",
            "http://a b",
            "http://a\tpriority:0",
            "http://a/\"x",
            "http://a/#x",
            "http://a/\\x",
        ] {
            assert!(!ok(&[bad]), "{bad:?} accepted");
        }
        assert!(!ok(&["http://a.example.org", "http://a.example.org/"]));
        let many: Vec<String> = (0..=MAX_MIRRORS)
            .map(|i| format!("http://m{i}.example.org"))
            .collect();
        assert!(check_mirrors(&many).is_err());
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
