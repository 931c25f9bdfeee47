//! Serving a stored blob: what apt relies on (`HEAD`, `ETag` = the sha256, `Last-Modified`,
//! `If-None-Match`, `If-Modified-Since`, single `Range` with `If-Range`) with as little copying
//! and as few thread hand-offs as possible.
//!
//! `ServeFile` goes through tokio's blocking pool several times per request and copies every
//! byte twice in user space (measured: 11 KiB files at 16k req/s through it, 38k here; a
//! 50 MiB file at 0.69–1.17× nginx, three copies per byte and ~25 % of the time in hand-offs).
//! Blobs live in the page cache when they are hot, so here they are read synchronously on the
//! worker, straight into the `Bytes` hyper writes:
//!
//! * blobs up to [`HOT_MAX`] (`InRelease`, most indices) are kept in memory by digest, with
//!   their validators (content-addressed: a digest's bytes never change; checked against the
//!   digest when first read), up to [`HOT_BUDGET`] in all;
//! * up to [`WHOLE_MAX`], the requested range is read in one go, while [`MEMORY_BUDGET`]
//!   allows;
//! * anything else streams in [`STREAM_CHUNK`] reads, the kernel told to read ahead.
//!
//! `None` (the file cannot be opened) leaves the answer to the caller's `ServeFile`.

use crate::digest::Sha256;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Blobs up to this size are kept in memory once read.
pub const HOT_MAX: u64 = 64 << 10;

/// The most the in-memory blobs hold; when full, they are dropped and the cache refills.
pub const HOT_BUDGET: u64 = 16 << 20;

/// Ranges up to this size are read whole.
pub const WHOLE_MAX: u64 = 2 << 20;

/// The most memory bodies read whole may hold at once; it bounds RSS under many clients.
pub const MEMORY_BUDGET: u64 = 32 << 20;

/// Reads for streamed blobs: large enough that per-chunk work is small, small enough that
/// each connection holds little (hyper asks for the next chunk once it has written this one).
pub const STREAM_CHUNK: u64 = 256 << 10;

static IN_MEMORY: AtomicU64 = AtomicU64::new(0);

/// A body read whole, charged to [`MEMORY_BUDGET`] until hyper has sent and dropped it.
struct Charged {
    bytes: Vec<u8>,
    charge: u64,
}

impl Charged {
    /// An empty buffer of `len` bytes if the budget allows.
    fn reserve(len: u64) -> Option<Self> {
        let before = IN_MEMORY.fetch_add(len, Ordering::Relaxed);
        if before + len > MEMORY_BUDGET {
            IN_MEMORY.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        Some(Self {
            bytes: Vec::with_capacity(len as usize),
            charge: len,
        })
    }
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        IN_MEMORY.fetch_sub(self.charge, Ordering::Relaxed);
    }
}

/// What a response needs to know about a blob besides its bytes.
struct Validators {
    len: u64,
    modified: SystemTime,
    etag: HeaderValue,
    last_modified: HeaderValue,
}

impl Validators {
    fn new(digest: &Sha256, len: u64, modified: SystemTime) -> Self {
        let modified = whole_seconds(modified);
        Self {
            len,
            modified,
            etag: HeaderValue::try_from(format!("\"{digest}\"")).expect("hex digest"),
            last_modified: HeaderValue::try_from(httpdate::fmt_http_date(modified))
                .expect("http date"),
        }
    }
}

/// A small blob kept in memory.
struct Hot {
    validators: Validators,
    bytes: Bytes,
}

#[derive(Default)]
struct HotBlobs {
    by_digest: HashMap<Sha256, Arc<Hot>>,
    bytes: u64,
}

static HOT: LazyLock<RwLock<HotBlobs>> = LazyLock::new(RwLock::default);

fn hot(digest: &Sha256) -> Option<Arc<Hot>> {
    HOT.read()
        .unwrap_or_else(|e| e.into_inner())
        .by_digest
        .get(digest)
        .cloned()
}

fn keep_hot(digest: Sha256, hot: Arc<Hot>) {
    let mut blobs = HOT.write().unwrap_or_else(|e| e.into_inner());
    let len = hot.validators.len;
    if blobs.bytes + len > HOT_BUDGET {
        // Crude but bounded: the hot set refills within a few requests.
        blobs.by_digest.clear();
        blobs.bytes = 0;
    }
    if blobs.by_digest.insert(digest, hot).is_none() {
        blobs.bytes += len;
    }
}

/// Where the bytes come from.
enum Content {
    Memory(Bytes),
    File(fs_err::File),
}

/// Answers a request for the blob `digest` stored at `path`, or `None` if the file cannot be
/// opened (the caller's general path then reports it).
///
/// `immutable`: the URL always names these bytes (`pool/`, `by-hash/`). Otherwise (`InRelease`,
/// an index by its stable name) the URL names different blobs over time, two of which can be
/// stored within one second — the resolution of `Last-Modified` — so a date is no validator
/// there: `If-Modified-Since` and a dated `If-Range` are ignored (the `ETag` still is one).
/// Without this, apt holding the previous `InRelease` got `304` for the new one and then a
/// Hash Sum mismatch on the pool file the new index named.
pub fn serve(
    path: &Path,
    digest: &Sha256,
    immutable: bool,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response> {
    let hot = match hot(digest) {
        Some(hot) => hot,
        None => {
            let mut file = fs_err::File::open(path).ok()?;
            let meta = file.metadata().ok()?;
            let validators = Validators::new(digest, meta.len(), meta.modified().ok()?);
            if validators.len > HOT_MAX {
                return respond(&validators, Content::File(file), immutable, method, headers);
            }
            load_hot(&mut file, digest, validators)?
        }
    };
    respond(
        &hot.validators,
        Content::Memory(hot.bytes.clone()),
        immutable,
        method,
        headers,
    )
}

/// Reads a small blob whole and keeps it in memory, or `None` if it is not what its digest
/// says — checked once on the way in, so a copy kept in memory is never a corrupt one that
/// would outlive `store verify` quarantining the file.
fn load_hot(file: &mut fs_err::File, digest: &Sha256, validators: Validators) -> Option<Arc<Hot>> {
    let mut bytes = Vec::with_capacity(validators.len as usize);
    file.read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 != validators.len {
        return None;
    }
    let mut hasher = crate::digest::Sha256Hasher::default();
    hasher.update(&bytes);
    if hasher.finish() != *digest {
        return None;
    }
    let hot = Arc::new(Hot {
        validators,
        bytes: Bytes::from(bytes),
    });
    keep_hot(*digest, hot.clone());
    Some(hot)
}

fn respond(
    v: &Validators,
    content: Content,
    immutable: bool,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response> {
    let len = v.len;
    // A date validates only the bytes of an immutable URL (see `serve`).
    let modified = immutable.then_some(v.modified);
    if not_modified(headers, &v.etag, modified) {
        let mut r = response(StatusCode::NOT_MODIFIED, Body::empty());
        set_validators(&mut r, v);
        return Some(r);
    }
    let range = headers
        .get(header::RANGE)
        .filter(|_| if_range_holds(headers, &v.etag, modified))
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            let mut r = response(StatusCode::RANGE_NOT_SATISFIABLE, Body::empty());
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{len}")).expect("ascii"),
            );
            return Some(r);
        }
        None => (StatusCode::OK, 0, len),
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        match content {
            Content::Memory(bytes) => Body::from(bytes.slice(start as usize..end as usize)),
            Content::File(file) => file_body(file, start, end)?,
        }
    };
    let mut r = response(status, body);
    set_validators(&mut r, v);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::try_from(format!("bytes {start}-{}/{len}", end - 1)).expect("ascii"),
        );
    }
    Some(r)
}

/// `start..end` of `file`: read whole if small enough and the memory budget allows, else
/// streamed.
fn file_body(mut file: fs_err::File, start: u64, end: u64) -> Option<Body> {
    if start > 0 {
        file.seek(SeekFrom::Start(start)).ok()?;
    }
    let want = end - start;
    if want <= WHOLE_MAX {
        if let Some(mut bytes) = Charged::reserve(want) {
            let read = (&mut file).take(want).read_to_end(&mut bytes.bytes).ok()?;
            return (read as u64 == want).then(|| Body::from(Bytes::from_owner(bytes)));
        }
    }
    // Hint only: without it the kernel still reads ahead, just less eagerly.
    let _ = rustix::fs::fadvise(
        &file,
        start,
        std::num::NonZeroU64::new(want),
        rustix::fs::Advice::Sequential,
    );
    Some(Body::from_stream(futures::stream::unfold(
        (file, want),
        |(mut file, left)| async move {
            if left == 0 {
                return None;
            }
            let chunk = read_chunk(&mut file, left.min(STREAM_CHUNK));
            let left = match &chunk {
                Ok(bytes) => left - bytes.len() as u64,
                Err(_) => 0,
            };
            Some((chunk, (file, left)))
        },
    )))
}

/// Up to `want` bytes, read straight into the buffer hyper sends: a page-cache copy and no
/// thread hand-off (a blob that is not cached costs this worker the disk read).
fn read_chunk(file: &mut fs_err::File, want: u64) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob shorter than its size",
        ));
    }
    Ok(Bytes::from(buf))
}

fn response(status: StatusCode, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    r
}

fn set_validators(r: &mut Response, v: &Validators) {
    let h = r.headers_mut();
    h.insert(header::ETAG, v.etag.clone());
    h.insert(header::LAST_MODIFIED, v.last_modified.clone());
}

/// HTTP dates have whole seconds; compare at that precision.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn not_modified(headers: &HeaderMap, etag: &HeaderValue, modified: Option<SystemTime>) -> bool {
    let etag = etag.as_bytes();
    if let Some(tags) = header_str(headers, header::IF_NONE_MATCH) {
        return tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t.as_bytes() == etag);
    }
    let Some(modified) = modified else {
        return false;
    };
    header_str(headers, header::IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| modified <= since)
}

/// `If-Range` holds when it names the current ETag or the exact Last-Modified (of an
/// immutable URL: `modified` is `None` otherwise).
fn if_range_holds(headers: &HeaderMap, etag: &HeaderValue, modified: Option<SystemTime>) -> bool {
    match header_str(headers, header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => v.as_bytes() == etag.as_bytes(),
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|d| Some(d) == modified),
    }
}

/// One `bytes=` range as a half-open interval; `None` if unsatisfiable. Several ranges are
/// treated as unsatisfiable too: apt never asks for them.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len
        } else {
            last.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
