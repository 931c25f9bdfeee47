//! The catalog: metadata in SQL, on SQLite (a file in the data directory, the zero-set-up
//! default) or PostgreSQL (production, several server instances).
//!
//! Queries are written once, in the dialect both backends run (`$1` placeholders,
//! `ON CONFLICT`, integer unix timestamps, hex digests as text), over `sqlx::AnyPool`.
//! Migrations live side by side in `channels/migrations/{sqlite,postgres}/` and run at open.
//! Snapshot membership is never stored one row per package: see [`Snapshot`].

mod model;
mod queries;
mod retention;
mod uploads;

pub use model::*;
pub use uploads::{Recorded, Upload};

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};
use std::path::Path;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unsupported database URL {0:?}\nhint: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot connect to the catalog at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the catalog schema at {url} up to date")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The database cannot be reached (stopped, restarting, network cut): temporary, the
    /// pool reconnects by itself.
    #[error(
        "the catalog database cannot be reached ({what})\nhint: aptgate reconnects by itself \
         once it answers again; check that the database server is running and reachable"
    )]
    Unavailable {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The database's disk is full.
    #[error(
        "the catalog database is out of space ({what})\nhint: free space where it keeps its files"
    )]
    StorageFull {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("catalog query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("catalog holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error("invalid {what} {value:?}\nhint: digests are 64 lowercase hex characters (sha256)")]
    InvalidDigest { what: &'static str, value: String },
    #[error(
        "channel {channel} moved while this change was prepared (it was at generation \
         {expected})\nhint: look at `aptgate channel history {channel}` and try again"
    )]
    ChannelMoved { channel: String, expected: i64 },
    #[error("cannot encode the sources of snapshot {id}")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CatalogError {
    /// The database is unreachable for now; the same request may work later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Which database a catalog runs on, chosen by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the catalog; cheap to clone. Methods on `Catalog` each run on their own
/// (autocommit); [`Catalog::begin`] gives a [`CatalogTx`] with the same methods whose writes
/// land together — e.g. a snapshot and the audit entry that records it.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

impl Catalog {
    /// The default catalog: a SQLite file in the data directory.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("catalog.sqlite3").display()
        )
    }

    /// Connects to `sqlite://PATH?mode=rwc` or `postgres://…` and brings the schema up to date
    /// (migrations already applied are skipped, so opening is idempotent).
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(CatalogError::UnsupportedUrl(redact(url)));
        };
        let mut options = AnyPoolOptions::new();
        if backend == Backend::Postgres {
            options = options.acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT);
        }
        let pool = options
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed during a write; the busy timeout makes
                        // writers queue instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                             PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| CatalogError::Connect {
                url: redact(url),
                source,
            })?;
        let migrations = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let catalog = Self { pool, backend };
        catalog
            .migrate(migrations)
            .await
            .map_err(|source| CatalogError::Migrate {
                url: redact(url),
                source,
            })?;
        Ok(catalog)
    }

    /// Applies one crate's migrations. Several crates keep their tables in this database
    /// (`channels` numbers its migrations from 1, `fleet` from 1001), so each migrator ignores
    /// the versions the others applied.
    pub async fn migrate(&self, migrations: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
        let shared = Migrator {
            migrations: migrations.migrations.clone(),
            ignore_missing: true,
            locking: migrations.locking,
            no_tx: migrations.no_tx,
        };
        shared.run(&self.pool).await
    }

    /// The connection pool, for crates that keep their own tables here (`fleet`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Several writes that land together or not at all. On SQLite the write lock is taken at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes after
    /// another connection wrote fails at once ("database is locked"), whatever the busy timeout.
    pub async fn begin(&self) -> Result<CatalogTx> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(query("begin"))?;
        Ok(CatalogTx(tx))
    }

    /// Records packages (once per sha256) and when each name/version/architecture was first
    /// seen; returns how many packages were new.
    pub async fn upsert_packages(&self, packages: &[NewPackage], now: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let inserted = tx.upsert_packages(packages, now).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    pub async fn package(&self, sha256: &str) -> Result<Option<Package>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::package(&mut conn, sha256).await
    }

    pub async fn first_seen(&self, name: &str, version: &str, arch: &str) -> Result<Option<i64>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::first_seen(&mut conn, name, version, arch).await
    }

    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::snapshot(&mut conn, id).await
    }

    pub async fn snapshot_by_name(&self, name: &str) -> Result<Option<Snapshot>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::snapshot_by_name(&mut conn, name).await
    }

    /// Records a snapshot on its own; use [`begin`](Self::begin) to audit it atomically.
    pub async fn insert_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::insert_snapshot(&mut conn, snapshot).await
    }

    /// Appends an audit entry on its own; returns its id.
    pub async fn append_audit(&self, entry: &NewAuditEntry) -> Result<i64> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::append_audit(&mut conn, entry).await
    }

    /// Every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::list_snapshots(&mut conn).await
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::audit(&mut conn, filter).await
    }

    /// Up to `limit` audit entries with an id above `after_id`, oldest first.
    pub async fn audit_after(&self, after_id: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::audit_after(&mut conn, after_id, limit).await
    }

    /// Creates the channel (unpublished) unless it exists.
    pub async fn ensure_channel(&self, name: &str, now: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::ensure_channel(&mut conn, name, now).await
    }

    pub async fn channel(&self, name: &str) -> Result<Option<ChannelState>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::channel(&mut conn, name).await
    }

    pub async fn list_channels(&self) -> Result<Vec<ChannelState>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::list_channels(&mut conn).await
    }

    /// A channel's moves, newest first.
    pub async fn channel_history(&self, channel: &str, limit: i64) -> Result<Vec<HistoryEntry>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::channel_history(&mut conn, channel, limit).await
    }

    pub async fn holds(&self, channel: &str) -> Result<Vec<Hold>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        queries::holds(&mut conn, channel).await
    }

    /// Every snapshot, deleted ones included, oldest first.
    pub async fn all_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::all_snapshots(&mut conn).await
    }

    /// Every position of every channel, newest first per channel.
    pub async fn all_positions(&self) -> Result<Vec<ChannelPosition>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::all_positions(&mut conn).await
    }

    /// Marks a snapshot used now; false if garbage collection deleted it.
    pub async fn touch_snapshot(&self, id: &str, now: i64) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::touch_snapshot(&mut conn, id, now).await
    }

    /// Deletes a snapshot unused since `cutoff` that no channel points at; returns whether it
    /// was deleted.
    pub async fn expire_snapshot(&self, id: &str, cutoff: i64, now: i64) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::expire_snapshot(&mut conn, id, cutoff, now).await
    }

    pub async fn source_sync(&self, source: &str) -> Result<Option<SourceSync>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::source_sync(&mut conn, source).await
    }

    /// (sha256, origin, last_seen) of the given packages the catalog knows.
    pub async fn package_origins(
        &self,
        sha256s: &[String],
    ) -> Result<Vec<(String, String, Option<i64>)>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::package_origins(&mut conn, sha256s).await
    }

    /// Records a failed rescue (or another failure of one) for the next sync to retry.
    pub async fn rescue_failed(&self, rescue: &Rescue) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::rescue_failed(&mut conn, rescue).await
    }

    pub async fn rescue_done(&self, sha256: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::rescue_done(&mut conn, sha256).await
    }

    /// Rescues still to do, oldest failure first.
    pub async fn rescues(&self) -> Result<Vec<Rescue>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::rescues(&mut conn).await
    }

    /// Records a past snapshot's re-signed publication for a channel.
    pub async fn set_snapshot_publication(
        &self,
        channel: &str,
        snapshot_id: &str,
        publication_sha256: &str,
        signed_at: i64,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::set_snapshot_publication(
            &mut conn,
            channel,
            snapshot_id,
            publication_sha256,
            signed_at,
        )
        .await
    }

    /// The re-signed publication of a past snapshot of a channel, if any.
    pub async fn snapshot_publication(
        &self,
        channel: &str,
        snapshot_id: &str,
    ) -> Result<Option<String>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::snapshot_publication(&mut conn, channel, snapshot_id).await
    }

    /// Every re-signed past-snapshot publication: (channel, snapshot, publication digest).
    pub async fn snapshot_publications(&self) -> Result<Vec<(String, String, String)>> {
        let mut conn = self.pool.acquire().await.map_err(query("acquire"))?;
        retention::snapshot_publications(&mut conn).await
    }
}

/// Writes inside one transaction; dropped without [`commit`](Self::commit), it rolls back.
pub struct CatalogTx(Transaction<'static, Any>);

impl CatalogTx {
    pub async fn commit(self) -> Result<()> {
        self.0.commit().await.map_err(query("commit"))
    }

    pub async fn rollback(self) -> Result<()> {
        self.0.rollback().await.map_err(query("rollback"))
    }

    pub async fn upsert_packages(&mut self, packages: &[NewPackage], now: i64) -> Result<u64> {
        queries::upsert_packages(&mut self.0, packages, now).await
    }

    pub async fn insert_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        queries::insert_snapshot(&mut self.0, snapshot).await
    }

    /// Names a snapshot; the name is unique among snapshots.
    pub async fn name_snapshot(&mut self, id: &str, name: &str) -> Result<()> {
        queries::name_snapshot(&mut self.0, id, name).await
    }

    /// Appends an audit entry; returns its id.
    pub async fn append_audit(&mut self, entry: &NewAuditEntry) -> Result<i64> {
        queries::append_audit(&mut self.0, entry).await
    }

    pub async fn package(&mut self, sha256: &str) -> Result<Option<Package>> {
        queries::package(&mut self.0, sha256).await
    }

    pub async fn first_seen(
        &mut self,
        name: &str,
        version: &str,
        arch: &str,
    ) -> Result<Option<i64>> {
        queries::first_seen(&mut self.0, name, version, arch).await
    }

    pub async fn snapshot(&mut self, id: &str) -> Result<Option<Snapshot>> {
        queries::snapshot(&mut self.0, id).await
    }

    pub async fn snapshot_by_name(&mut self, name: &str) -> Result<Option<Snapshot>> {
        queries::snapshot_by_name(&mut self.0, name).await
    }

    pub async fn list_snapshots(&mut self) -> Result<Vec<Snapshot>> {
        queries::list_snapshots(&mut self.0).await
    }

    pub async fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        queries::audit(&mut self.0, filter).await
    }

    pub async fn ensure_channel(&mut self, name: &str, now: i64) -> Result<()> {
        queries::ensure_channel(&mut self.0, name, now).await
    }

    /// Creates a channel defined through the API, with its rules (JSON); returns false if
    /// the name is taken.
    pub async fn create_channel(&mut self, name: &str, rules: &str, now: i64) -> Result<bool> {
        queries::create_channel(&mut self.0, name, rules, now).await
    }

    pub async fn channel(&mut self, name: &str) -> Result<Option<ChannelState>> {
        queries::channel(&mut self.0, name).await
    }

    /// Moves the channel if nobody moved it since `expected_generation`; returns the new
    /// generation, or [`CatalogError::ChannelMoved`].
    pub async fn move_channel(&mut self, m: &ChannelMove) -> Result<i64> {
        queries::move_channel(&mut self.0, m).await
    }

    pub async fn channel_history(
        &mut self,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<HistoryEntry>> {
        queries::channel_history(&mut self.0, channel, limit).await
    }

    /// Returns false if the package was already held.
    pub async fn add_hold(&mut self, channel: &str, hold: &Hold) -> Result<bool> {
        queries::add_hold(&mut self.0, channel, hold).await
    }

    /// Returns false if the package was not held.
    pub async fn remove_hold(&mut self, channel: &str, package: &str) -> Result<bool> {
        queries::remove_hold(&mut self.0, channel, package).await
    }

    pub async fn holds(&mut self, channel: &str) -> Result<Vec<Hold>> {
        queries::holds(&mut self.0, channel).await
    }

    /// Marks a snapshot used now and locks its row until commit; false if garbage
    /// collection deleted it.
    pub async fn touch_snapshot(&mut self, id: &str, now: i64) -> Result<bool> {
        retention::touch_snapshot(&mut self.0, id, now).await
    }

    pub async fn record_source_sync(
        &mut self,
        source: &str,
        at: i64,
        snapshot_id: Option<&str>,
    ) -> Result<()> {
        retention::record_source_sync(&mut self.0, source, at, snapshot_id).await
    }

    /// Queues rescues for packages that just left their source's index.
    pub async fn queue_rescues(&mut self, rescues: &[Rescue]) -> Result<()> {
        retention::queue_rescues(&mut self.0, rescues).await
    }

    /// Records that these packages left their origin's index, last listed at `last_seen`.
    pub async fn mark_packages_gone(&mut self, sha256s: &[String], last_seen: i64) -> Result<()> {
        retention::mark_packages_gone(&mut self.0, sha256s, last_seen).await
    }
}

fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |source| match classify(&source) {
        Failure::Unavailable => CatalogError::Unavailable { what, source },
        Failure::StorageFull => CatalogError::StorageFull { what, source },
        Failure::Other => CatalogError::Query { what, source },
    }
}

enum Failure {
    Unavailable,
    StorageFull,
    Other,
}

/// Whether a database error means the database is unreachable or its pool exhausted for now
/// (worth a 503 and a retry), for crates that query the catalog's pool themselves (`fleet`).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(classify(e), Failure::Unavailable)
}

/// Tells a database that went away (worth a 503 and a retry) and a full disk from a query
/// that is wrong.
fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL: connection exceptions (08…), shutting down or starting up (57P0…).
            Some(code) if code.starts_with("08") || code.starts_with("57P0") => {
                Failure::Unavailable
            }
            // PostgreSQL disk_full; SQLite SQLITE_FULL (13).
            Some("53100" | "13") => Failure::StorageFull,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

/// How long a request waits for a PostgreSQL connection before it fails: while the database
/// is down, admin requests answer 503 after this rather than hanging (sqlx's default is 30 s).
const POSTGRES_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Drops a password from a URL before it reaches a message or a log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://app:secret@db.example.org/aptgate"),
            "postgres://app:***@db.example.org/aptgate"
        );
        assert_eq!(
            super::redact("sqlite:///x?mode=rwc"),
            "sqlite:///x?mode=rwc"
        );
    }
}
