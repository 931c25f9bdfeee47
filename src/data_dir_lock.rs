//! One server per data directory.
//!
//! `aptgate serve` holds an advisory lock (`flock`) on `<data_dir>/aptgate.lock` for as long
//! as it runs; the file holds its pid. A second `serve` on the same directory refuses to start
//! instead of clearing the first one's `store/tmp/` (its downloads under way) and writing the
//! same SQLite catalog. The kernel drops the lock when the process exits, however it exits, so
//! a crash leaves nothing to clean up.
//!
//! Admin commands (`sync`, `gc`, `promote`, …) are requests to the running server and never
//! open the data directory themselves. `store verify` runs locally: with no server it takes
//! the lock for its run; beside a server it leaves `store/tmp/` alone.

use anyhow::Context;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file, in the data directory.
pub const LOCK_FILE: &str = "aptgate.lock";

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs_err::File,
}

/// Who holds a data directory's lock.
#[derive(Debug)]
pub struct Holder {
    pub data_dir: PathBuf,
    /// The pid the holder wrote, if it is readable yet.
    pub pid: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = self
            .pid
            .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
        write!(
            f,
            "another aptgate ({pid}) is serving data_dir {}\nhint: stop it first, or give \
             this server its own --data-dir; several servers share state through a PostgreSQL \
             catalog, each with its own data_dir",
            self.data_dir.display()
        )
    }
}

impl DataDirLock {
    /// Takes the lock for this process, or says who holds it.
    pub fn try_acquire(data_dir: &Path) -> anyhow::Result<Result<DataDirLock, Holder>> {
        fs_err::create_dir_all(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = fs_err::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        use rustix::fs::{flock, FlockOperation};
        match flock(file.file(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Ok(Err(Holder {
                    data_dir: data_dir.to_owned(),
                    pid: text.trim().parse().ok(),
                }));
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Ok(DataDirLock { _file: file }))
    }

    /// Takes the lock, or fails with a message naming the holder.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        Self::try_acquire(data_dir)?.map_err(|holder| anyhow::anyhow!("{holder}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let refused = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("another aptgate (pid {})", std::process::id())),
            "{refused}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
