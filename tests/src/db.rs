//! Catalog databases for tests: a fresh SQLite file or a fresh PostgreSQL database per test,
//! the PostgreSQL one dropped however the test ends.

use std::path::Path;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A catalog URL that exists only for one test.
pub struct TestDatabase {
    pub url: String,
    _drop: Option<DropDatabase>,
}

impl TestDatabase {
    /// SQLite: an empty URL, i.e. the default file in `data_dir`. PostgreSQL: a new database
    /// on 127.0.0.1:5432 (or `APTGATE_TEST_POSTGRES_URL`).
    pub async fn new(backend: Backend, data_dir: &Path) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let _ = data_dir;
                TestDatabase {
                    url: String::new(),
                    _drop: None,
                }
            }
            Backend::Postgres => {
                let admin =
                    std::env::var("APTGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| ADMIN_URL.into());
                let name = format!("aptgate_test_{:016x}", rand::random::<u64>());
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is not reachable at {admin}: {e}\nhint: start it \
                             (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) \
                             main start`) or set APTGATE_TEST_POSTGRES_URL"
                        )
                    });
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let (base, _) = admin.rsplit_once('/').expect("URL with a database");
                TestDatabase {
                    url: format!("{base}/{name}"),
                    _drop: Some(DropDatabase { admin, name }),
                }
            }
        }
    }
}

struct DropDatabase {
    admin: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await and may run on the test's runtime: a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    let mut conn =
                        <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await?;
                    sqlx::Executor::execute(&mut conn, sql.as_str()).await?;
                    Ok::<_, sqlx::Error>(())
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
