//! The fleet's tables, beside the channels' in the catalog database (migrations in
//! `fleet/migrations/{sqlite,postgres}/`, numbered from 1001). Queries are written once in the
//! dialect both backends run; one file per table.

mod audit;
mod commands;
mod declines;
mod hosts;
mod inventories;
mod labels;
mod nonces;
mod profiles;
mod rollouts;
mod rules;
mod tokens;

pub use audit::audit;
pub use commands::{CommandRow, CommandStatus};
pub use declines::Decline;
pub use hosts::{HostRow, HostUpdate, NewHost};
pub use labels::{effective, LabelOrigin, LabelRow};
pub use profiles::ProfileRow;
pub use rollouts::{GroupRow, LeaseRow, WaiterRow};
pub use rules::RuleRow;
pub use tokens::{NewToken, TokenRow};

use sqlx::migrate::Migrator;
use sqlx::AnyPool;

pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The fleet's tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
}

impl Store {
    pub fn new(pool: AnyPool, backend: aptgate_channels::catalog::Backend) -> Self {
        Self {
            pool,
            sqlite: backend == aptgate_channels::catalog::Backend::Sqlite,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will write. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads, then writes after another connection
    /// wrote, fails at once with "database is locked" whatever the busy timeout — concurrent
    /// enrollments got a 500 that way.
    pub async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
    }
}

/// A flag column (BIGINT 0/1: one type both backends decode alike).
pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}
