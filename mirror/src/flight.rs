//! Single flight: one upstream download per missing blob, streamed to every client that asks.
//!
//! The first miss registers a [`Flight`] and spawns a detached task (not owned by any client's
//! request, so a client hanging up cancels nothing) that writes the blob's temp file and
//! publishes progress on a `watch` channel. Every client tails the temp file up to the published
//! length, always holding back the last byte until the digest has been checked: a digest
//! failure ends every body with an error, so no client ever receives a complete bad file.

use bytes::Bytes;
use futures::Stream;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for upstream's response headers.
    Starting,
    /// Upstream answered 200; bytes written to the temp file so far.
    Running(u64),
    /// Verified and in the store.
    Done,
    Failed(Failure),
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Arc<str>,
    /// Upstream answered 404 (before sending anything).
    pub not_found: bool,
    /// The store's file system is full.
    pub storage_full: bool,
}

impl Failure {
    pub fn new(reason: impl Into<Arc<str>>) -> Self {
        Self {
            reason: reason.into(),
            not_found: false,
            storage_full: false,
        }
    }

    /// The error a request for `path` gets when its download failed.
    pub fn into_error(self, path: &str) -> crate::MirrorError {
        use crate::MirrorError;
        if self.not_found {
            MirrorError::NotFound {
                what: path.to_owned(),
            }
        } else if self.storage_full {
            MirrorError::StorageFull {
                what: path.to_owned(),
            }
        } else {
            MirrorError::Upstream {
                url: path.to_owned(),
                reason: self.reason.to_string(),
            }
        }
    }
}

/// A download in progress.
#[derive(Debug)]
pub struct Flight {
    pub digest: crate::digest::Sha256,
    pub size: u64,
    pub tmp_path: PathBuf,
    pub blob_path: PathBuf,
    pub progress: watch::Receiver<Progress>,
}

const CHUNK: u64 = 256 * 1024;

struct Tail {
    flight: Arc<Flight>,
    progress: watch::Receiver<Progress>,
    file: Option<tokio::fs::File>,
    sent: u64,
}

impl Flight {
    /// Waits until upstream has answered; a failure before the first byte is returned here, so
    /// the client gets an error status instead of a `200` that breaks off.
    pub async fn started(&self) -> Result<(), Failure> {
        self.wait_until(|p| !matches!(p, Progress::Starting)).await
    }

    /// Waits until the blob is verified and stored (or the download failed).
    pub async fn finished(&self) -> Result<(), Failure> {
        self.wait_until(|p| matches!(p, Progress::Done | Progress::Failed(_)))
            .await
    }

    async fn wait_until(&self, reached: impl Fn(&Progress) -> bool) -> Result<(), Failure> {
        let mut progress = self.progress.clone();
        let state = progress.wait_for(reached).await.map(|p| p.clone());
        match state {
            Ok(Progress::Failed(failure)) => Err(failure),
            Ok(_) => Ok(()),
            Err(_) => Err(Failure::new("download abandoned")),
        }
    }

    /// The blob's bytes as they arrive; ends with an error if the download fails.
    pub fn body(self: Arc<Self>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let tail = Tail {
            progress: self.progress.clone(),
            flight: self,
            file: None,
            sent: 0,
        };
        futures::stream::try_unfold(tail, |mut tail| async move {
            match tail.next_chunk().await? {
                Some(bytes) => Ok(Some((bytes, tail))),
                None => Ok(None),
            }
        })
    }
}

impl Tail {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let size = self.flight.size;
        loop {
            if self.sent == size {
                return Ok(None);
            }
            let available = match &*self.progress.borrow_and_update() {
                Progress::Starting => 0,
                Progress::Running(written) => (*written).min(size.saturating_sub(1)),
                Progress::Done => size,
                Progress::Failed(failure) => {
                    return Err(io::Error::other(failure.reason.to_string()))
                }
            };
            if self.sent < available && self.open().await? {
                let want = (available - self.sent).min(CHUNK) as usize;
                let mut buf = vec![0u8; want];
                let file = self.file.as_mut().expect("opened above");
                file.read_exact(&mut buf).await?;
                self.sent += want as u64;
                return Ok(Some(Bytes::from(buf)));
            }
            if self.progress.changed().await.is_err()
                && !matches!(*self.progress.borrow(), Progress::Done)
            {
                return Err(io::Error::other("download abandoned"));
            }
        }
    }

    /// Opens the temp file, or the finished blob if it was already renamed into place.
    /// Returns false if neither exists yet (a failing download removed it: wait for its end).
    async fn open(&mut self) -> io::Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        for path in [&self.flight.tmp_path, &self.flight.blob_path] {
            if let Ok(mut file) = tokio::fs::File::open(path).await {
                file.seek(SeekFrom::Start(self.sent)).await?;
                self.file = Some(file);
                return Ok(true);
            }
        }
        Ok(false)
    }
}
