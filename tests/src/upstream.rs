//! A request-counting HTTP(S) server over a directory, standing in for an upstream mirror.
//!
//! It serves files like a well-behaved static server (`Last-Modified`, `ETag`, conditional
//! requests answered with 304, single `Range`s with 206) and logs every request, so tests can
//! assert how often the mirror went upstream. Each [`Misbehaviour`] can be switched on per path
//! or for every path at runtime, to test how the mirror copes with a broken upstream.
//!
//! Paths are given relative to the served root, without a leading `/`, exactly like
//! [`crate::fixture::FixturePackage::pool_path`]; request paths are percent-decoded first.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::SeekFrom,
    net::{Ipv4Addr, SocketAddr},
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{stream, StreamExt as _, TryStreamExt as _};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _, AsyncWrite},
    net::TcpListener,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::io::ReaderStream;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A way for the upstream to misbehave on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Send headers with the full `Content-Length`, then `after_bytes` of the body, then close
    /// the connection.
    DieMidTransfer { after_bytes: u64 },
    /// Answer `Range` requests with the whole file and a 200.
    IgnoreRange,
    /// 302 to this URL (e.g. an `http://` one for a downgrade test, or the same URL for a loop).
    RedirectTo(String),
    /// Send the file plus this many extra bytes, with a `Content-Length` that matches.
    ExtraBytes(u64),
    /// Send `after_bytes` of the body, then hang without closing.
    Stall { after_bytes: u64 },
    /// Stream the body at about this rate.
    Throttle { bytes_per_sec: u64 },
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this many extra response headers (`x-filler-N`) before the file.
    ManyHeaders(usize),
}

/// A request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: Method,
    /// Percent-decoded, without the leading `/`.
    pub path: String,
    pub headers: HeaderMap,
}

impl LoggedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Rule {
    misbehaviour: Misbehaviour,
    /// Requests left before the rule expires; `None` for ever.
    remaining: Option<usize>,
}

struct State {
    root: PathBuf,
    log: Mutex<Vec<LoggedRequest>>,
    /// Keyed by path; `None` is the rule for every path without its own.
    rules: Mutex<HashMap<Option<String>, Rule>>,
}

struct Tls {
    acceptor: TlsAcceptor,
    ca_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The running server. Dropping it stops it.
pub struct Upstream {
    state: Arc<State>,
    addr: SocketAddr,
    tls: Option<Tls>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Upstream {
    /// Serves `root` over HTTP on a free port of 127.0.0.1.
    pub async fn start(root: PathBuf) -> Upstream {
        Self::bind(root, 0, false)
            .await
            .expect("starting the fixture upstream")
    }

    /// Serves `root` over HTTPS with a certificate for `localhost` and `127.0.0.1`, issued by a
    /// throwaway CA whose certificate is at [`Upstream::ca_cert_path`].
    pub async fn start_https(root: PathBuf) -> Upstream {
        Self::bind(root, 0, true)
            .await
            .expect("starting the fixture upstream")
    }

    /// Serves `root` on 127.0.0.1:`port` (0 for any free port).
    pub async fn bind(root: PathBuf, port: u16, https: bool) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let upstream = Upstream {
            state: Arc::new(State {
                root,
                log: Mutex::default(),
                rules: Mutex::default(),
            }),
            addr: listener.local_addr()?,
            tls: if https { Some(tls()?) } else { None },
            server: Mutex::default(),
        };
        upstream.spawn(listener);
        Ok(upstream)
    }

    fn spawn(&self, listener: TcpListener) {
        let state = self.state.clone();
        let acceptor = self.tls.as_ref().map(|tls| tls.acceptor.clone());
        let task = tokio::spawn(serve(listener, state, acceptor));
        if let Some(old) = lock(&self.server).replace(task) {
            old.abort();
        }
    }

    /// Closes the listener and every connection: the upstream becomes unreachable.
    pub async fn stop(&self) {
        let task = lock(&self.server).take();
        if let Some(task) = task {
            task.abort();
            // Once the task is gone, so is its listener: connecting is refused, not queued.
            let _ = task.await;
        }
    }

    /// Listens again on the same port after [`Upstream::stop`].
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("re-binding {}", self.addr))?;
        self.spawn(listener);
        Ok(())
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The URL of a path relative to the root.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}/{}", self.url(), path.trim_start_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that issued the HTTPS certificate, for the client's extra trusted CAs.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_path.as_path())
    }

    /// Requests (any method) for `path`.
    pub fn count(&self, path: &str) -> usize {
        let path = path.trim_start_matches('/');
        lock(&self.state.log)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn total(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state.log).clone()
    }

    pub fn clear_log(&self) {
        lock(&self.state.log).clear();
    }

    /// Misbehave on every request for `path` until told otherwise.
    pub fn misbehave(&self, path: &str, misbehaviour: Misbehaviour) {
        self.set_rule(Some(path), misbehaviour, None);
    }

    /// Misbehave on the next `times` requests for `path` only (e.g. die once, then let the
    /// client's retry succeed).
    pub fn misbehave_times(&self, path: &str, misbehaviour: Misbehaviour, times: usize) {
        self.set_rule(Some(path), misbehaviour, Some(times));
    }

    /// Misbehave on every request for a path that has no rule of its own.
    pub fn misbehave_all(&self, misbehaviour: Misbehaviour) {
        self.set_rule(None, misbehaviour, None);
    }

    /// Drops every rule.
    pub fn behave(&self) {
        lock(&self.state.rules).clear();
    }

    fn set_rule(&self, path: Option<&str>, misbehaviour: Misbehaviour, remaining: Option<usize>) {
        let key = path.map(|p| p.trim_start_matches('/').to_owned());
        let rule = Rule {
            misbehaviour,
            remaining,
        };
        lock(&self.state.rules).insert(key, rule);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.server).take() {
            task.abort();
        }
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A CA and a leaf certificate for `localhost` and `127.0.0.1`, written to a temporary
/// directory so clients can be pointed at the CA.
fn tls() -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "aptgate test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut leaf_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let dir = tempfile::tempdir()?;
    let ca_path = dir.path().join("ca.pem");
    fs_err::write(&ca_path, ca.pem())?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_path,
        _dir: dir,
    })
}

/// Accepts connections until aborted; aborting drops the `JoinSet`, which aborts every
/// connection task with it.
async fn serve(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Without it, each response on a kept-alive connection waits ~40 ms for the client's
        // delayed ACK of the headers.
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, state).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    // Errors here are the client hanging up or a misbehaviour cutting the body: both expected.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn respond(state: &State, request: Request<Incoming>) -> Response<Body> {
    let path = percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8_lossy()
        .trim_start_matches('/')
        .to_owned();
    lock(&state.log).push(LoggedRequest {
        method: request.method().clone(),
        path: path.clone(),
        headers: request.headers().clone(),
    });
    let misbehaviour = take_rule(state, &path);
    match &misbehaviour {
        Some(Misbehaviour::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return empty(status);
        }
        Some(Misbehaviour::RedirectTo(url)) => {
            let mut response = empty(StatusCode::FOUND);
            if let Ok(location) = HeaderValue::from_str(url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return response;
        }
        _ => {}
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    }
    let filler = match &misbehaviour {
        Some(Misbehaviour::ManyHeaders(n)) => *n,
        _ => 0,
    };
    match serve_file(state, &path, &request, misbehaviour).await {
        Ok(Some(mut response)) => {
            for i in 0..filler {
                let name = http::HeaderName::try_from(format!("x-filler-{i}"))
                    .expect("a valid header name");
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static("x"));
            }
            response
        }
        Ok(None) => empty(StatusCode::NOT_FOUND),
        Err(_) => empty(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The rule for `path` (or the global one), counting this request against its budget.
fn take_rule(state: &State, path: &str) -> Option<Misbehaviour> {
    let mut rules = lock(&state.rules);
    let key = Some(path.to_owned());
    let key = if rules.contains_key(&key) { key } else { None };
    let rule = rules.get_mut(&key)?;
    let misbehaviour = rule.misbehaviour.clone();
    if let Some(remaining) = &mut rule.remaining {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            rules.remove(&key);
        }
    }
    Some(misbehaviour)
}

/// `Ok(None)` when there is no such file.
async fn serve_file(
    state: &State,
    path: &str,
    request: &Request<Incoming>,
    misbehaviour: Option<Misbehaviour>,
) -> std::io::Result<Option<Response<Body>>> {
    let relative = Path::new(path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(None);
    }
    let Ok(mut file) = tokio::fs::File::open(state.root.join(relative)).await else {
        return Ok(None);
    };
    let metadata = file.metadata().await?;
    if !metadata.is_file() {
        return Ok(None);
    }
    let len = metadata.len();
    let modified = metadata.modified()?;
    let since_epoch = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let etag = format!("\"{len:x}-{:x}\"", since_epoch.as_nanos());
    let last_modified = DateTime::<Utc>::from(modified)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let headers = request.headers();
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let not_modified = match (
        header(header::IF_NONE_MATCH),
        header(header::IF_MODIFIED_SINCE),
    ) {
        (Some(tags), _) => tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        (None, Some(since)) => DateTime::parse_from_rfc2822(since)
            .is_ok_and(|since| since.timestamp() >= since_epoch.as_secs() as i64),
        (None, None) => false,
    };
    if not_modified {
        return Ok(Some(with_body(response.status(304), empty_body())));
    }

    let honour_range = misbehaviour != Some(Misbehaviour::IgnoreRange)
        && header(header::IF_RANGE).is_none_or(|v| v == etag || v == last_modified);
    if honour_range {
        response = response.header(header::ACCEPT_RANGES, "bytes");
    }
    let range = header(header::RANGE).filter(|_| honour_range);
    let (start, end) = match range.and_then(|r| parse_range(r, len)) {
        None => (0, len),
        Some(Some((start, end))) => {
            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", end - 1),
            );
            (start, end)
        }
        Some(None) => {
            let response = response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"));
            return Ok(Some(with_body(response, empty_body())));
        }
    };

    let extra = match misbehaviour {
        Some(Misbehaviour::ExtraBytes(n)) => n,
        _ => 0,
    };
    response = response.header(header::CONTENT_LENGTH, end - start + extra);
    if request.method() == Method::HEAD {
        return Ok(Some(with_body(response, empty_body())));
    }
    file.seek(SeekFrom::Start(start)).await?;
    Ok(Some(with_body(
        response,
        body(file, end - start, misbehaviour),
    )))
}

/// `None` to ignore the header (malformed or several ranges: a 200 is a valid answer),
/// `Some(None)` if unsatisfiable, else the half-open byte range.
fn parse_range(value: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        (suffix > 0).then(|| (len.saturating_sub(suffix), len))
    } else {
        let first: u64 = first.parse().ok()?;
        let end = match last {
            "" => len,
            last => last.parse::<u64>().ok()?.saturating_add(1).min(len),
        };
        (first < len && first < end).then_some((first, end))
    };
    Some(range)
}

/// The body: `len` bytes of `file` from its position, shaped by the misbehaviour.
fn body(file: tokio::fs::File, len: u64, misbehaviour: Option<Misbehaviour>) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunks = |reader, capacity| ReaderStream::with_capacity(reader, capacity);
    let stream = match misbehaviour {
        Some(Misbehaviour::DieMidTransfer { after_bytes }) => {
            let cut = async {
                // hyper drops unflushed output with the connection: let it flush first.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other(
                    "upstream misbehaviour: connection cut",
                ))
            };
            chunks(file.take(after_bytes.min(len)), CHUNK)
                .chain(stream::once(cut))
                .boxed()
        }
        Some(Misbehaviour::Stall { after_bytes }) => chunks(file.take(after_bytes.min(len)), CHUNK)
            .chain(stream::pending())
            .boxed(),
        Some(Misbehaviour::ExtraBytes(n)) => {
            let extra = Bytes::from(vec![b'X'; usize::try_from(n).unwrap_or(usize::MAX)]);
            chunks(file.take(len), CHUNK)
                .chain(stream::once(async { Ok(extra) }))
                .boxed()
        }
        Some(Misbehaviour::Throttle { bytes_per_sec }) => {
            // Small chunks, each held back until the rate allows it.
            let rate = bytes_per_sec.max(1);
            let capacity = usize::try_from(rate / 20).unwrap_or(CHUNK).clamp(1, CHUNK);
            let started = Instant::now();
            let mut sent = 0u64;
            chunks(file.take(len), capacity)
                .then(move |chunk| {
                    sent += chunk.as_ref().map_or(0, |c| c.len() as u64);
                    let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                    async move {
                        tokio::time::sleep_until(due).await;
                        chunk
                    }
                })
                .boxed()
        }
        _ => chunks(file.take(len), CHUNK).boxed(),
    };
    StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
}

fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = status;
    response
}

fn with_body(builder: http::response::Builder, body: Body) -> Response<Body> {
    builder
        .body(body)
        .expect("response headers are built from valid values")
}
