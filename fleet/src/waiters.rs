//! Agents' long-poll waits: one `watch` channel per host someone waits for, told when the
//! host's revision rises. Rises made by this process notify at once; a background task reads
//! the revisions that rose in the catalog every few seconds, so rises made by another server
//! instance (PostgreSQL) reach waits held here too. A wait costs a map entry and a receiver.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Default)]
pub struct Waiters {
    hosts: Mutex<HashMap<String, watch::Sender<i64>>>,
}

impl Waiters {
    /// A receiver told of `host`'s revision rises, starting at `rev`.
    pub fn subscribe(&self, host: &str, rev: i64) -> watch::Receiver<i64> {
        let mut hosts = self.hosts.lock().expect("lock poisoned");
        match hosts.get(host) {
            Some(tx) => {
                tx.send_if_modified(|known| {
                    let newer = rev > *known;
                    if newer {
                        *known = rev;
                    }
                    newer
                });
                tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(rev);
                hosts.insert(host.to_owned(), tx);
                rx
            }
        }
    }

    /// Drops `host`'s channel once nobody waits on it.
    pub fn release(&self, host: &str, rx: watch::Receiver<i64>) {
        drop(rx);
        let mut hosts = self.hosts.lock().expect("lock poisoned");
        if hosts.get(host).is_some_and(|tx| tx.receiver_count() == 0) {
            hosts.remove(host);
        }
    }

    /// Tells the waits on `host` that its revision is now `rev`.
    pub fn notify(&self, host: &str, rev: i64) {
        if let Some(tx) = self.hosts.lock().expect("lock poisoned").get(host) {
            tx.send_if_modified(|known| {
                let newer = rev > *known;
                if newer {
                    *known = rev;
                }
                newer
            });
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.lock().expect("lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
