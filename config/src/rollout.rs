//! Rolling upgrades: rollout groups kept in the configuration (`[[rollout.groups]]`). Groups
//! can also be created through the admin API; the fleet (`fleet/src/rollout/`) checks the
//! selector and the windows when the server starts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `[rollout]`: the groups, and how long a waiting agent is told to wait before asking again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// How long an agent told to wait (group full, paused, outside its window) waits before it
    /// asks again; agents add jitter.
    pub retry_secs: u64,
    /// How often the server looks for silent lease holders (they are also checked on every
    /// read of a group).
    pub stuck_check_secs: u64,
    pub groups: Vec<RolloutGroupConfig>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            retry_secs: 30,
            stuck_check_secs: 30,
            groups: Vec::new(),
        }
    }
}

/// A rollout group: the hosts `selector` matches (a host belongs to the first group, by name,
/// whose selector matches it) upgrade at most `max_concurrent` at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutGroupConfig {
    pub name: String,
    /// `k=v,k2=v2` (every term must match); empty matches every host.
    #[serde(default)]
    pub selector: String,
    /// How many hosts may hold a slot at once: `2`, or `"25%"` of the group's hosts (rounded
    /// down, at least 1).
    #[serde(default)]
    pub max_concurrent: MaxConcurrent,
    /// The wave stops once this many hosts failed since it began.
    #[serde(default = "one")]
    pub failure_budget: u32,
    /// When new leases are granted; none: always.
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    /// How long a rebooting holder may stay silent beyond the heartbeat deadline.
    #[serde(default = "reboot_grace")]
    pub reboot_grace_secs: u64,
    /// A holder silent this long becomes `stuck`.
    #[serde(default = "heartbeat_deadline")]
    pub heartbeat_deadline_secs: u64,
    /// Release a stuck holder's slot on its own (off: an admin must release it).
    #[serde(default)]
    pub expire_stuck: bool,
    /// Start paused (the pause itself is kept in the catalog: `aptgate rollout pause|resume`).
    #[serde(default)]
    pub paused: bool,
}

fn one() -> u32 {
    1
}

fn reboot_grace() -> u64 {
    900
}

fn heartbeat_deadline() -> u64 {
    300
}

/// A maintenance window: `days` (`mon-fri`, `sat,sun`, `*`), from `start` to `end` (`HH:MM`,
/// 24 h; an `end` before `start` runs past midnight) in `time_zone` (IANA, default UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(default = "every_day")]
    pub days: String,
    pub start: String,
    pub end: String,
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn every_day() -> String {
    "*".into()
}

fn utc() -> String {
    "UTC".into()
}

/// A number of hosts, or a percentage of the group's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConcurrent {
    Hosts(u32),
    Percent(u32),
}

impl Default for MaxConcurrent {
    fn default() -> Self {
        Self::Hosts(1)
    }
}

impl MaxConcurrent {
    /// The number of slots for a group of `hosts` hosts: at least 1.
    pub fn slots(self, hosts: usize) -> u32 {
        let n = match self {
            Self::Hosts(n) => n,
            Self::Percent(p) => {
                u32::try_from(hosts.saturating_mul(p as usize) / 100).unwrap_or(u32::MAX)
            }
        };
        n.max(1)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid max_concurrent {text:?}\nhint: a number of hosts (2) or a percentage \
                 of the group (\"25%\")"
            )
        };
        let text = text.trim();
        if let Some(p) = text.strip_suffix('%') {
            match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(bad()),
            }
        } else {
            match text.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Self::Hosts(n)),
                _ => Err(bad()),
            }
        }
    }
}

impl fmt::Display for MaxConcurrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hosts(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for MaxConcurrent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Hosts(n) => s.serialize_u32(*n),
            Self::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MaxConcurrent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_concurrent_is_a_number_or_a_percentage_rounded_down_at_least_one() {
        assert_eq!(MaxConcurrent::parse("2"), Ok(MaxConcurrent::Hosts(2)));
        assert_eq!(MaxConcurrent::parse("25%"), Ok(MaxConcurrent::Percent(25)));
        assert_eq!(MaxConcurrent::Percent(25).slots(10), 2);
        assert_eq!(MaxConcurrent::Percent(10).slots(5), 1);
        assert_eq!(MaxConcurrent::Percent(100).slots(7), 7);
        assert_eq!(MaxConcurrent::Hosts(3).slots(1), 3);
        for bad in ["0", "0%", "101%", "-1", "x", "2.5"] {
            assert!(MaxConcurrent::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_group_reads_from_toml_with_its_defaults() {
        let text = r#"
            retry_secs = 10
            [[groups]]
            name = "db"
            selector = "role=db"
            max_concurrent = "25%"
            windows = [{ days = "mon-fri", start = "01:00", end = "05:00", time_zone = "Europe/Berlin" }]
            [[groups]]
            name = "web"
            max_concurrent = 2
        "#;
        let c: RolloutConfig = toml::from_str(text).unwrap();
        assert_eq!(c.retry_secs, 10);
        assert_eq!(c.groups[0].max_concurrent, MaxConcurrent::Percent(25));
        assert_eq!(c.groups[0].windows[0].time_zone, "Europe/Berlin");
        assert_eq!(c.groups[1].max_concurrent, MaxConcurrent::Hosts(2));
        assert_eq!(c.groups[1].failure_budget, 1);
        assert_eq!(c.groups[1].heartbeat_deadline_secs, 300);
        assert!(!c.groups[1].expire_stuck);
        let back = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<RolloutConfig>(&back).unwrap(), c);
    }
}
