//! Rollout groups: the settings as the catalog keeps them, parsed; configured groups copied
//! into the catalog at start-up (their pause, fence and wave survive a restart); which group
//! a host is in.

use super::window::Window;
use crate::error::{FleetError, Result};
use crate::selector::Selector;
use crate::store::{GroupRow, Store};
use crate::Fleet;
use aptgate_agent::protocol::Labels;
use aptgate_config::{MaxConcurrent, RolloutGroupConfig, WindowConfig};
use serde::Serialize;

/// A group with its settings checked.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    #[serde(serialize_with = "as_text")]
    pub selector: Selector,
    pub max_concurrent: MaxConcurrent,
    pub failure_budget: u32,
    pub windows: Vec<WindowConfig>,
    #[serde(skip)]
    pub parsed_windows: Vec<Window>,
    pub reboot_grace_secs: u64,
    pub heartbeat_deadline_secs: u64,
    pub expire_stuck: bool,
    pub paused: bool,
    /// `config` or `api`.
    pub origin: String,
    pub created_by: String,
    pub created_at: i64,
    #[serde(skip)]
    pub last_fence: i64,
    /// When the current wave began (unix seconds).
    pub wave_started_at: i64,
}

fn as_text<S: serde::Serializer>(s: &Selector, out: S) -> std::result::Result<S::Ok, S::Error> {
    out.serialize_str(&s.to_string())
}

/// Group names: 1–64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_group_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::bad_request(
            "bad_request",
            format!("invalid group name {name:?}\nhint: 1–64 characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

impl Group {
    /// Checks a group's settings as configured or sent to the API.
    pub fn from_config(c: &RolloutGroupConfig, origin: &str, by: &str, now: i64) -> Result<Self> {
        check_group_name(&c.name)?;
        let positive = |what: &str, v: u64| {
            if v == 0 || v > 7 * 86400 {
                Err(FleetError::bad_request(
                    "bad_request",
                    format!("group {}: {what} must be 1 s to 7 days", c.name),
                ))
            } else {
                Ok(v)
            }
        };
        if c.failure_budget == 0 {
            return Err(FleetError::bad_request(
                "bad_request",
                format!(
                    "group {}: failure_budget must be at least 1\nhint: 1 stops the wave at the \
                     first failed host",
                    c.name
                ),
            ));
        }
        Ok(Self {
            name: c.name.clone(),
            selector: Selector::parse(&c.selector)?,
            max_concurrent: c.max_concurrent,
            failure_budget: c.failure_budget,
            parsed_windows: c.windows.iter().map(Window::parse).collect::<Result<_>>()?,
            windows: c.windows.clone(),
            reboot_grace_secs: c.reboot_grace_secs.min(7 * 86400),
            heartbeat_deadline_secs: positive(
                "heartbeat_deadline_secs",
                c.heartbeat_deadline_secs,
            )?,
            expire_stuck: c.expire_stuck,
            paused: c.paused,
            origin: origin.to_owned(),
            created_by: by.to_owned(),
            created_at: now,
            last_fence: 0,
            wave_started_at: now,
        })
    }

    pub fn from_row(r: &GroupRow) -> Result<Self> {
        let windows: Vec<WindowConfig> = serde_json::from_str(&r.windows).map_err(|e| {
            FleetError::Config(format!("rollout group {}: unreadable windows: {e}", r.name))
        })?;
        let max_concurrent = MaxConcurrent::parse(&r.max_concurrent)
            .map_err(|e| FleetError::Config(format!("rollout group {}: {e}", r.name)))?;
        Ok(Self {
            name: r.name.clone(),
            selector: Selector::parse(&r.selector)?,
            max_concurrent,
            failure_budget: u32::try_from(r.failure_budget).unwrap_or(1).max(1),
            parsed_windows: windows.iter().map(Window::parse).collect::<Result<_>>()?,
            windows,
            reboot_grace_secs: u64::try_from(r.reboot_grace_secs).unwrap_or(0),
            heartbeat_deadline_secs: u64::try_from(r.heartbeat_deadline_secs).unwrap_or(1),
            expire_stuck: r.expire_stuck != 0,
            paused: r.paused != 0,
            origin: r.origin.clone(),
            created_by: r.created_by.clone(),
            created_at: r.created_at,
            last_fence: r.last_fence,
            wave_started_at: r.wave_started_at,
        })
    }

    pub fn to_row(&self) -> GroupRow {
        GroupRow {
            name: self.name.clone(),
            selector: self.selector.to_string(),
            max_concurrent: self.max_concurrent.to_string(),
            failure_budget: i64::from(self.failure_budget),
            windows: serde_json::to_string(&self.windows).expect("windows serialize"),
            reboot_grace_secs: i64::try_from(self.reboot_grace_secs).unwrap_or(i64::MAX),
            heartbeat_deadline_secs: i64::try_from(self.heartbeat_deadline_secs)
                .unwrap_or(i64::MAX),
            expire_stuck: i64::from(self.expire_stuck),
            paused: i64::from(self.paused),
            origin: self.origin.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            last_fence: self.last_fence,
            wave_started_at: self.wave_started_at,
        }
    }

    /// How long a holder in `state` may stay silent before it is stuck.
    pub fn deadline_secs(&self, rebooting: bool) -> i64 {
        let grace = if rebooting { self.reboot_grace_secs } else { 0 };
        i64::try_from(self.heartbeat_deadline_secs + grace).unwrap_or(i64::MAX)
    }

    /// Whether a window is open at `now`, and if not, when the next opens.
    pub fn window(&self, now: i64) -> (bool, Option<i64>) {
        super::window::open_at(&self.parsed_windows, now)
    }
}

/// The group a host with these labels is in: the first, by name, whose selector matches.
pub fn group_of<'g>(groups: &'g [Group], labels: &Labels) -> Option<&'g Group> {
    groups.iter().find(|g| g.selector.matches(labels))
}

impl Fleet {
    /// Copies the configured groups into the catalog: new ones are inserted, known ones get
    /// the configured settings (keeping their pause, fence and wave); groups once configured
    /// and no longer are removed.
    pub(crate) async fn sync_configured_groups(&self) -> Result<()> {
        let now = aptgate_channels::now();
        let mut configured = Vec::new();
        for c in &self.rollout.groups {
            let g = Group::from_config(c, "config", "config", now)
                .map_err(|e| FleetError::Config(format!("[[rollout.groups]] {}: {e}", c.name)))?;
            if configured.iter().any(|o: &Group| o.name == g.name) {
                return Err(FleetError::Config(format!(
                    "[[rollout.groups]]: the name {} is used twice",
                    g.name
                )));
            }
            configured.push(g);
        }
        let mut tx = self
            .store
            .begin()
            .await
            .map_err(crate::error::db("begin"))?;
        let known = Store::rollout_groups_in(&mut tx).await?;
        for g in &configured {
            if known.iter().any(|k| k.name == g.name) {
                Store::update_group_settings(&mut tx, &g.to_row()).await?;
            } else {
                Store::insert_group(&mut tx, &g.to_row()).await?;
            }
        }
        for k in known.iter().filter(|k| k.origin == "config") {
            if !configured.iter().any(|g| g.name == k.name) {
                tracing::info!(group = %k.name, "rollout group no longer configured; removed");
                Store::delete_group(&mut tx, &k.name).await?;
            }
        }
        tx.commit().await.map_err(crate::error::db("commit"))?;
        Ok(())
    }

    /// Every rollout group, by name (one unreadable row is skipped with a warning).
    pub async fn rollout_groups(&self) -> Result<Vec<Group>> {
        Ok(self
            .store
            .rollout_groups()
            .await?
            .iter()
            .filter_map(|r| match Group::from_row(r) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(group = %r.name, error = %e, "unreadable rollout group; skipped");
                    None
                }
            })
            .collect())
    }

    /// The effective labels of a host.
    pub(crate) async fn labels_of(&self, host: &str) -> Result<Labels> {
        Ok(crate::store::effective(
            &self.store.host_labels(host).await?,
        ))
    }

    /// How many active hosts are in `group` (for a percentage `max_concurrent`).
    pub(crate) async fn group_size(&self, groups: &[Group], group: &str) -> Result<usize> {
        let mut labels = self.store.all_labels().await?;
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|h| h.status == "active")
            .filter(|h| {
                let l = crate::store::effective(&labels.remove(&h.id).unwrap_or_default());
                group_of(groups, &l).is_some_and(|g| g.name == group)
            })
            .count())
    }
}
