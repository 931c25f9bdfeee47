//! Garbage collection on a replica, after each switch: blobs the applied state no longer names
//! (its Release files, indices, by-hash grace files, `.deb`s, the signed manifest and the keys
//! file) and written longer ago than `retention.grace` are deleted. A blob fetched or stored
//! since (an on-demand download, a sync under way) is newer than that and stays; the store's
//! own age check under its `names` lock settles a blob stored again meanwhile.

use super::state::Applied;
use super::Replica;
use aptgate_mirror::Sha256;
use std::collections::HashSet;
use std::time::SystemTime;

impl Applied {
    /// Every blob this state serves or needs to serve.
    pub fn live(&self) -> HashSet<Sha256> {
        let mut live = HashSet::from([self.manifest_blob, self.keys.sha256]);
        for channel in self.channels.values() {
            live.extend(channel.grace.keys());
            live.extend(channel.pool.values().map(|(d, _)| *d));
            for suite in channel.suites.values() {
                live.extend([
                    suite.signed.in_release.sha256,
                    suite.signed.release.sha256,
                    suite.signed.release_gpg.sha256,
                ]);
                live.extend(suite.files.values().map(|(d, _)| *d));
            }
        }
        live
    }
}

impl Replica {
    /// Deletes what the applied state no longer needs; returns (blobs, bytes) freed.
    pub(crate) fn collect_garbage(&self) -> std::io::Result<(u64, u64)> {
        let Some(applied) = self.applied() else {
            return Ok((0, 0));
        };
        let live = applied.live();
        let cutoff = SystemTime::now() - self.gc_grace;
        let store = self.mirror.store();
        let (mut blobs, mut bytes) = (0, 0);
        let listed = store
            .list()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for blob in listed {
            if live.contains(&blob.digest) || blob.written > cutoff {
                continue;
            }
            if store.remove_if_older(&blob.digest, cutoff)? {
                blobs += 1;
                bytes += blob.size;
            }
        }
        Ok((blobs, bytes))
    }
}
