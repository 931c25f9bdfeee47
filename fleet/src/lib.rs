//! The fleet, server side: hosts and their enrollment, labels and assignment rules, inventories
//! and pending updates, approvals, commands. The agent protocol's types are in
//! `aptgate_agent::protocol`.
//!
//! | file | what it does |
//! |---|---|
//! | `store/` | the fleet's tables, one file each |
//! | `auth.rs` | who sent an agent request (signed headers, replay window, nonces) |
//! | `enroll.rs` | enrollment: tokens, host ids, cloned machines |
//! | `agent_api.rs` | the agent routes: check-in, wait (long poll) |
//! | `inventory.rs` | inventory uploads, bounded and checked |
//! | `waiters.rs` | agents' long-poll waits and what wakes them |
//! | `selector.rs` | labels and label selectors |
//! | `assignment.rs` | rules → a host's channel → its apt sources |
//! | `installed.rs` | installed packages fleet-wide, numbered (the pending queue's input) |
//! | `pending.rs` | updates available and awaiting approval, per host and fleet-wide |
//! | `impact.rs` | what moving a channel would upgrade or leave behind on its hosts |
//! | `profiles.rs` | package profiles: desired packages by label, merged per host; compliance |
//! | `rollout/` | rolling upgrades: rollout groups, the group lease, stuck holders, run plans |
//! | `admin/` | the admin routes under `/api/v1/fleet/` (behind the admin token) |

pub mod admin;
pub mod agent_api;
pub mod assignment;
mod auth;
mod enroll;
pub mod error;
pub mod impact;
mod installed;
pub mod inventory;
pub mod pending;
pub mod profiles;
pub mod rollout;
pub mod selector;
pub mod store;
mod waiters;

pub use error::{FleetError, Result};

use aptgate_channels::catalog::Backend;
use aptgate_channels::Channels;
use aptgate_config::{FleetConfig, RolloutConfig};
use std::sync::{Arc, Mutex};

/// The fleet service: what every fleet route shares.
pub struct Fleet {
    pub(crate) channels: Arc<Channels>,
    pub(crate) store: store::Store,
    pub(crate) config: FleetConfig,
    pub(crate) waiters: waiters::Waiters,
    pub(crate) rules: assignment::RuleCache,
    /// The active keys' fingerprints and the keys as hosts get them.
    #[expect(clippy::type_complexity, reason = "a cache pair, read in one place")]
    pub(crate) keys: Mutex<Option<(Vec<String>, Arc<Vec<aptgate_agent::protocol::ChannelKey>>)>>,
    pub(crate) pending: pending::PendingCache,
    pub(crate) profiles: profiles::ProfileCache,
    pub(crate) rollout: RolloutConfig,
    pub(crate) stuck: rollout::StuckGauge,
}

impl Fleet {
    /// Brings the fleet's tables up to date in the channels' catalog, checks the configured
    /// rules and starts watching for revisions raised by other server instances.
    pub async fn open(
        channels: Arc<Channels>,
        config: &FleetConfig,
        rollout: &RolloutConfig,
    ) -> Result<Arc<Self>> {
        let catalog = channels.catalog();
        let migrations = match catalog.backend() {
            Backend::Sqlite => &store::SQLITE_MIGRATIONS,
            Backend::Postgres => &store::POSTGRES_MIGRATIONS,
        };
        catalog
            .migrate(migrations)
            .await
            .map_err(FleetError::Migrate)?;
        let public_url = Some(config.public_url.as_str()).filter(|u| !u.is_empty());
        for r in &config.rules {
            selector::Selector::parse(&r.selector)
                .and_then(|_| assignment::check_mirrors(&r.all_mirrors()))
                .map_err(|e| FleetError::Config(format!("[[fleet.rules]] {}: {e}", r.name)))?;
            for warning in assignment::shared_host_warnings(public_url, &r.all_mirrors()) {
                tracing::warn!(rule = %r.name, "{warning}");
            }
            channels
                .channel_rules(r.channel.as_str())
                .await
                .map_err(|e| FleetError::Config(format!("[[fleet.rules]] {}: {e}", r.name)))?;
        }
        let fleet = Arc::new(Self {
            store: store::Store::new(catalog.pool().clone(), catalog.backend()),
            channels,
            config: config.clone(),
            waiters: waiters::Waiters::default(),
            rules: assignment::RuleCache::default(),
            keys: Mutex::new(None),
            pending: pending::PendingCache::default(),
            profiles: profiles::ProfileCache::default(),
            rollout: rollout.clone(),
            stuck: rollout::StuckGauge::default(),
        });
        fleet.sync_configured_groups().await?;
        tokio::spawn(Fleet::watch_revisions(Arc::downgrade(&fleet)));
        tokio::spawn(Fleet::watch_stuck(
            Arc::downgrade(&fleet),
            std::time::Duration::from_secs(rollout.stuck_check_secs.max(1)),
        ));
        Ok(fleet)
    }

    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// How many hosts have a wait open on this instance.
    pub fn waiting_hosts(&self) -> usize {
        self.waiters.len()
    }
}

impl Fleet {
    /// Raises the revision of each host in `ids` (inside the caller's transaction); the new
    /// revisions, for [`Fleet::notify_waits`] once committed.
    pub(crate) async fn raise_revs(
        conn: &mut sqlx::AnyConnection,
        ids: &[String],
    ) -> Result<Vec<(String, i64)>> {
        let now = aptgate_channels::now();
        let mut revs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rev) = store::Store::bump_rev(conn, id, now).await? {
                revs.push((id.clone(), rev));
            }
        }
        Ok(revs)
    }

    /// Wakes the waits held here for these hosts (other instances notice within seconds).
    pub(crate) fn notify_waits(&self, revs: &[(String, i64)]) {
        for (id, rev) in revs {
            self.waiters.notify(id, *rev);
        }
    }

    /// The active hosts `selector` matches, with their effective labels.
    pub(crate) async fn select_hosts(
        &self,
        selector: &selector::Selector,
    ) -> Result<Vec<(store::HostRow, aptgate_agent::protocol::Labels)>> {
        let mut labels = self.store.all_labels().await?;
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|h| h.status == "active")
            .filter_map(|h| {
                let l = store::effective(&labels.remove(&h.id).unwrap_or_default());
                selector.matches(&l).then_some((h, l))
            })
            .collect())
    }
}
