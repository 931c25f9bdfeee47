//! Shared pass-through: one upstream download per file that nothing can verify, streamed to
//! every client that asks meanwhile, and never stored.
//!
//! A `pool/` file that no configured index lists has no digest to check it against, so it must
//! not enter the content-addressed store; fifty clients asking for it at once should still cost
//! one upstream GET. The first request registers a [`PassFlight`] and a detached task
//! ([`Download::run`]) writes upstream's body to a scratch file under the store's `tmp/` (never
//! renamed into `blobs/`), publishing the byte count on a `watch` channel. Every client tails
//! the scratch file up to that count. There is nothing to verify, so nothing is held back: each
//! byte goes out as soon as it is written, and a broken download ends every body with an error.
//!
//! The scratch file belongs to the shared `Arc<PassFlight>` and is removed when the last client
//! lets go of it. The download task holds only a weak reference: once no client is left it
//! stops, since nobody would ever see the rest of the bytes (unlike a verified download, which
//! runs to the end because the store keeps its result).

use crate::error::MirrorError;
use crate::flight::Failure;
use crate::upstream;
use bytes::Bytes;
use futures::Stream;
use http::{header, HeaderMap};
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

/// The upstream response headers a pass-through forwards to its clients.
const FORWARDED: [header::HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::LAST_MODIFIED,
];

/// How far a pass-through download got.
#[derive(Debug, Clone)]
enum Progress {
    /// Waiting for upstream's response headers.
    Starting,
    /// Upstream answered 200; bytes in the scratch file so far.
    Running(u64),
    /// Upstream's body ended cleanly after this many bytes.
    Done(u64),
    Failed(Failure),
}

/// A pass-through download shared by every request for one path of one source.
#[derive(Debug)]
pub struct PassFlight {
    /// The upstream URL, for error messages.
    url: String,
    /// The requested path below the source, for error messages.
    path: String,
    /// Upstream's forwarded headers; set before `progress` leaves `Starting`.
    head: OnceLock<HeaderMap>,
    progress: watch::Receiver<Progress>,
    scratch: Scratch,
}

/// The writing half of a [`PassFlight`], run by a detached task.
pub struct Download {
    url: String,
    flight: Weak<PassFlight>,
    file: tokio::fs::File,
    progress: watch::Sender<Progress>,
}

/// How a [`Download`] ended.
#[derive(Debug)]
pub enum Outcome {
    Done(u64),
    Failed(Failure),
    /// Every client hung up, so the download stopped.
    Abandoned,
}

/// A file under the store's `tmp/` that is never renamed into `blobs/`: removed when dropped
/// (and, should the process die first, when the store is next opened).
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.0);
    }
}

impl PassFlight {
    /// Creates the scratch file at `scratch` and a flight fetching `url` (requested as `path`).
    /// The caller registers the flight and spawns [`Download::run`].
    pub fn new(url: String, path: String, scratch: PathBuf) -> io::Result<(Arc<Self>, Download)> {
        // Created before any client can see the flight, so a tailing client always finds it.
        let file = fs_err::File::create(&scratch)?;
        let (sender, receiver) = watch::channel(Progress::Starting);
        let flight = Arc::new(Self {
            url: url.clone(),
            path,
            head: OnceLock::new(),
            progress: receiver,
            scratch: Scratch(scratch),
        });
        let download = Download {
            url,
            flight: Arc::downgrade(&flight),
            file: tokio::fs::File::from_std(file.into_file()),
            progress: sender,
        };
        Ok((flight, download))
    }

    /// Waits until upstream has answered and returns the headers to forward; a failure before
    /// the first byte is returned here, so the client gets an error status rather than a `200`
    /// that breaks off.
    pub async fn started(&self) -> Result<&HeaderMap, MirrorError> {
        let mut progress = self.progress.clone();
        let state = progress
            .wait_for(|p| !matches!(p, Progress::Starting))
            .await
            .map(|p| p.clone());
        let failure = match state {
            Ok(Progress::Failed(failure)) => failure,
            Ok(_) => return Ok(self.head.get().expect("set before the download runs")),
            Err(_) => Failure::new("download abandoned"),
        };
        Err(if failure.not_found {
            MirrorError::NotFound {
                what: self.path.clone(),
            }
        } else {
            MirrorError::Upstream {
                url: self.url.clone(),
                reason: failure.reason.to_string(),
            }
        })
    }

    /// The file's bytes as they arrive; ends with an error if the download fails.
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

impl Download {
    /// Downloads to the end (or until no client is left) and publishes how it ended.
    pub async fn run(
        mut self,
        client: &reqwest::Client,
        floor: Option<upstream::RateFloor>,
    ) -> Outcome {
        let outcome = self.transfer(client, floor).await;
        let last = match &outcome {
            Outcome::Done(written) => Progress::Done(*written),
            Outcome::Failed(failure) => Progress::Failed(failure.clone()),
            Outcome::Abandoned => Progress::Failed(Failure::new("every client hung up")),
        };
        self.progress.send_replace(last);
        outcome
    }

    async fn transfer(
        &mut self,
        client: &reqwest::Client,
        floor: Option<upstream::RateFloor>,
    ) -> Outcome {
        let failed = |reason: String, not_found: bool| {
            Outcome::Failed(Failure {
                not_found,
                ..Failure::new(reason)
            })
        };
        let response = match client.get(&self.url).send().await {
            Ok(r) => r,
            Err(e) => return failed(upstream::describe(&e), false),
        };
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return failed(
                format!("answered {status}"),
                status == reqwest::StatusCode::NOT_FOUND,
            );
        }
        let mut head = HeaderMap::new();
        for name in FORWARDED {
            if let Some(value) = response.headers().get(&name) {
                head.insert(name, value.clone());
            }
        }
        match self.flight.upgrade() {
            Some(flight) => {
                let _ = flight.head.set(head);
            }
            None => return Outcome::Abandoned,
        }
        self.progress.send_replace(Progress::Running(0));

        let mut written = 0u64;
        let mut body = upstream::Body::new(response, floor);
        loop {
            let chunk = match body.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(reason) => return failed(reason, false),
            };
            // Flushed, so the bytes are in the file for every tailing client when published.
            let wrote = async {
                self.file.write_all(&chunk).await?;
                self.file.flush().await
            };
            if let Err(e) = wrote.await {
                return failed(format!("cannot write the scratch file: {e}"), false);
            }
            written += chunk.len() as u64;
            self.progress.send_replace(Progress::Running(written));
            if self.flight.strong_count() == 0 {
                return Outcome::Abandoned;
            }
        }
        Outcome::Done(written)
    }
}

const CHUNK: u64 = 256 * 1024;

/// One client's read position in a pass-through's scratch file. Holds the flight (and so the
/// scratch file) for as long as the client reads.
struct Tail {
    flight: Arc<PassFlight>,
    progress: watch::Receiver<Progress>,
    file: Option<tokio::fs::File>,
    sent: u64,
}

impl Tail {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let (available, done) = match &*self.progress.borrow_and_update() {
                Progress::Starting => (0, false),
                Progress::Running(written) => (*written, false),
                Progress::Done(written) => (*written, true),
                Progress::Failed(failure) => {
                    return Err(io::Error::other(failure.reason.to_string()))
                }
            };
            if self.sent < available {
                let file = match &mut self.file {
                    Some(file) => file,
                    None => {
                        let mut file = tokio::fs::File::open(&self.flight.scratch.0).await?;
                        file.seek(SeekFrom::Start(self.sent)).await?;
                        self.file.insert(file)
                    }
                };
                let want = (available - self.sent).min(CHUNK) as usize;
                let mut buf = vec![0u8; want];
                file.read_exact(&mut buf).await?;
                self.sent += want as u64;
                return Ok(Some(Bytes::from(buf)));
            }
            if done {
                return Ok(None);
            }
            // The last state was seen above; an error here means the task is gone without one.
            if self.progress.changed().await.is_err() {
                return Err(io::Error::other("download abandoned"));
            }
        }
    }
}
