//! Software artifacts on the master: content-addressed storage (`hedge master supply`)
//! and the HTTPS endpoint nodes download them from (`hedge master run`).
//!
//! Contract:
//! - [`supply`] copies a file into `DIR/<sha256 hex>` (mode 0644): hashed while copied
//!   into a temporary file in `DIR`, flushed, then renamed, so a reader never sees a
//!   partial artifact and supplying the same bytes twice is harmless. The caller records
//!   (release, target, sha256, size) in the store.
//! - [`serve`] answers `GET /artifacts/<64 hex>` over TLS with client certificates
//!   required ([`server_config`]: the broker's certificate, the fleet CA as the only
//!   root, so only enrolled nodes and masters download). `Range: bytes=N-` gets a `206`
//!   with the rest of the file (resumed downloads), a start at or past the end a `416`
//!   with `Content-Range: bytes */LEN`; other range forms are ignored (a full `200`).
//!   Anything but a GET of that path shape is a `404` (`405` for other methods, `400` for
//!   a malformed head). A node (the CN of its certificate) gets only the artifacts its
//!   desired state names ([`Authorize`]); anything else is a `403`, whether it exists or
//!   not. A peer without a client certificate may only `POST /enroll` (a token and a CSR,
//!   or a renewal CSR: [`crate::enrollment`]), answered `200` with the certificate PEM,
//!   else `403`/`400`; anything else it asks is a `403`. One request per connection, the
//!   request head bounded to 8 KiB and 10 s, every write bounded by an idle timeout.
//! - Unauthenticated peers cannot starve downloads: the TLS handshake has
//!   [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] run at once and
//!   [`MAX_HANDSHAKES_PER_ADDR`] per address (more are closed at once); a download slot
//!   ([`MAX_CONNECTIONS`], [`MAX_PER_NODE`] per node) is taken only after the handshake
//!   authenticated the node (else a `503`). Refusals are counted in [`Stats`] and logged
//!   at most once per 10 s.
//!   [`parse_request`], [`plan`] and [`PerPeer`] are the pure decisions.
//! - With [`serve_with`] and a blob service, an authenticated node's `/backup/v1/...`
//!   requests go to [`crate::blobs`] (same slots, head bound and timeouts).

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hedge_uplink::tls::{parse_pems, Pems, TlsError};
use hedge_wire::Name;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Longest request head, bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most authenticated connections served at once; more get a `503`.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections of one node served at once; more get a `503`.
pub const MAX_PER_NODE: usize = 4;
/// Most TLS handshakes in progress at once; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Most TLS handshakes in progress from one address; more are closed at once.
pub const MAX_HANDSHAKES_PER_ADDR: usize = 16;
/// A handshake not done by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of [`supply`].
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading the file or writing the store directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The supplied file or the store directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// 32 bytes as 64 lowercase hex digits.
pub fn hex(sha256: &[u8; 32]) -> String {
    hedge_wire::Sha256Hex(sha256).to_string()
}

/// Copies `file` into `dir/<sha256>` (see the module doc); returns its sha256 and size.
pub fn supply(dir: &Path, file: &Path) -> Result<([u8; 32], u64), ArtifactError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut src = std::fs::File::open(file).map_err(io(file))?;
    let tmp = dir.join(format!(
        ".supply-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut h = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(io(file))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&tmp))?;
            size += n as u64;
        }
        out.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io(&tmp))?;
        out.sync_all().map_err(io(&tmp))?;
        let sha: [u8; 32] = h.finalize().into();
        let dest = dir.join(hex(&sha));
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok((sha, size))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A TLS server configuration: `cert_pem`/`key_pem` (the broker's), client certificates
/// required and checked against `ca_pem` (the fleet CA). ring provider.
pub fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let Pems { roots, certs, key } = parse_pems(ca_pem, cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are checked when presented; a connection without one may only
    // enroll (`POST /enroll`, with a token): `connection` refuses it anything else.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// A well-formed artifact request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    /// The artifact, 64 lowercase hex digits.
    pub sha256: String,
    /// `Range: bytes=N-`.
    pub from: Option<u64>,
}

/// A request head's method, target and header fields (name, value), as [`split_head`]
/// reads them.
pub(crate) type Head<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

/// A request head split into its method, target and header fields: the one parser of
/// request lines for every route of this endpoint (`/artifacts`, `/enroll`, the blob
/// service). `Err(400)` for a head that is not UTF-8, a request line that is not
/// `METHOD TARGET HTTP/1.x`, or a header line without a colon.
pub(crate) fn split_head(head: &[u8]) -> Result<Head<'_>, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(400);
    }
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(':').ok_or(400u16))
        .collect::<Result<Vec<_>, u16>>()?;
    Ok((method, target, headers))
}

/// Parses a request head (up to, without, the blank line); `Err(status)` to answer.
pub fn parse_request(head: &[u8]) -> Result<Get, u16> {
    let (method, target, headers) = split_head(head)?;
    let mut from = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("range") {
            // Only `bytes=N-` (what nodes send); other forms are ignored: a full answer.
            from = v
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    if method != "GET" {
        return Err(405);
    }
    let sha256 = target.strip_prefix("/artifacts/").ok_or(404u16)?;
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(404);
    }
    Ok(Get {
        sha256: sha256.to_owned(),
        from,
    })
}

/// How to answer a GET of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// 200, 206 or 416.
    pub status: u16,
    /// First byte sent.
    pub start: u64,
    /// Bytes sent.
    pub length: u64,
}

/// Decides the answer to a request for `from` onwards of a `len`-byte file.
pub fn plan(len: u64, from: Option<u64>) -> Answer {
    match from {
        None | Some(0) => Answer {
            status: 200,
            start: 0,
            length: len,
        },
        Some(n) if n < len => Answer {
            status: 206,
            start: n,
            length: len - n,
        },
        Some(_) => Answer {
            status: 416,
            start: 0,
            length: 0,
        },
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Internal Server Error",
    }
}

/// The response head for `answer` over a file of `len` bytes.
pub fn response_head(answer: &Answer, len: u64) -> String {
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n",
        answer.status,
        reason(answer.status),
        answer.length
    );
    match answer.status {
        206 => h.push_str(&format!(
            "Content-Range: bytes {}-{}/{len}\r\n",
            answer.start,
            answer.start + answer.length - 1
        )),
        416 => h.push_str(&format!("Content-Range: bytes */{len}\r\n")),
        _ => {}
    }
    h.push_str("\r\n");
    h
}

pub(crate) fn error_head(status: u16) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        reason(status)
    )
}

/// Decides whether `node` may download the artifact with this sha256 (the master: its
/// desired state names it). Called once per request, after the request head is read.
pub type Authorize = Arc<dyn Fn(&Name, &[u8; 32]) -> bool + Send + Sync>;

/// What the endpoint refused, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed before the handshake: too many handshakes, overall or from
    /// their address.
    pub busy_handshakes: AtomicU64,
    /// Handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
    /// Authenticated connections turned away (503): too many downloads, overall or by
    /// their node.
    pub busy: AtomicU64,
    /// Requests refused (403): the node's desired state does not name the artifact, or
    /// the certificate names no valid node.
    pub forbidden: AtomicU64,
    /// Artifacts served (200/206).
    pub served: AtomicU64,
}

/// How many connections each key (address, node) holds; a pure counter.
#[derive(Debug)]
pub struct PerPeer<K: std::hash::Hash + Eq + Clone> {
    held: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for PerPeer<K> {
    fn default() -> Self {
        PerPeer {
            held: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> PerPeer<K> {
    /// Takes one of `key`'s `max` places; false when it holds them all.
    pub fn take(&mut self, key: &K, max: usize) -> bool {
        let n = self.held.entry(key.clone()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives one place of `key` back.
    pub fn give(&mut self, key: &K) {
        if let Some(n) = self.held.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(key);
            }
        }
    }
}

/// A place in a shared [`PerPeer`], given back on drop.
struct Place<K: std::hash::Hash + Eq + Clone> {
    map: Arc<Mutex<PerPeer<K>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Place<K> {
    fn take(map: &Arc<Mutex<PerPeer<K>>>, key: K, max: usize) -> Option<Self> {
        let ok = map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&key, max);
        ok.then(|| Place {
            map: map.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give(&self.key);
    }
}

struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    dir: PathBuf,
    authorize: Authorize,
    stats: Arc<Stats>,
    enroller: Option<Arc<crate::enrollment::Enroller>>,
    slots: Arc<tokio::sync::Semaphore>,
    by_node: Arc<Mutex<PerPeer<Name>>>,
    log: crate::log_limit::LogLimit,
    blobs: Option<Arc<crate::blobs::Blobs>>,
}

/// Serves `dir` on `listener` until `shutdown` resolves. See the module doc.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<ServerConfig>,
    dir: PathBuf,
    authorize: Authorize,
    stats: Arc<Stats>,
    enroller: Option<Arc<crate::enrollment::Enroller>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener, tls, dir, authorize, stats, enroller, None, shutdown,
    )
    .await;
}

/// [`serve`], with the blob service ([`crate::blobs`]) answering `/backup/v1/...` for
/// authenticated nodes, in the same slots and limits as downloads.
// The endpoint's parts, each passed once at start; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: Arc<ServerConfig>,
    dir: PathBuf,
    authorize: Authorize,
    stats: Arc<Stats>,
    enroller: Option<Arc<crate::enrollment::Enroller>>,
    blobs: Option<Arc<crate::blobs::Blobs>>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        dir,
        authorize,
        stats,
        enroller,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        by_node: Arc::new(Mutex::new(PerPeer::default())),
        log: crate::log_limit::LogLimit::default(),
        blobs,
    });
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let by_addr: Arc<Mutex<PerPeer<IpAddr>>> = Arc::new(Mutex::new(PerPeer::default()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let pending = handshakes.clone().try_acquire_owned().ok().and_then(|p| {
                        Place::take(&by_addr, peer.ip(), MAX_HANDSHAKES_PER_ADDR).map(|a| (p, a))
                    });
                    let Some(pending) = pending else {
                        shared.stats.busy_handshakes.fetch_add(1, Ordering::Relaxed);
                        if shared.log.allow("artifacts") {
                            tracing::warn!(%peer, "artifact endpoint: too many handshakes; connection closed");
                        }
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(&shared, tcp, pending).await {
                            tracing::debug!(%peer, error = %e, "artifact connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "artifact endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The node id in the verified client certificate's CN.
fn peer_node(tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Option<Name> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Name::new(cn).ok()
}

async fn connection(
    shared: &Shared,
    tcp: tokio::net::TcpStream,
    pending: (tokio::sync::OwnedSemaphorePermit, Place<IpAddr>),
) -> std::io::Result<()> {
    let stats = &shared.stats;
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp)).await;
    drop(pending);
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Err(_) => {
            stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timeout",
            ));
        }
    };
    let node = peer_node(&tls);
    // No client certificate: only enrollment (token + CSR) or renewal (CSR), in a slot.
    if let (None, Some(e)) = (&node, shared.enroller.as_deref()) {
        let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
            stats.busy.fetch_add(1, Ordering::Relaxed);
            return finish(&mut tls, error_head(503).as_bytes()).await;
        };
        if let Some((head, rest)) = read_head(&mut tls).await? {
            if head.starts_with(b"POST /enroll ") {
                return enroll(&mut tls, &head, rest, e).await;
            }
        }
        stats.forbidden.fetch_add(1, Ordering::Relaxed);
        return finish(&mut tls, error_head(403).as_bytes()).await;
    }
    // Authenticated: now a download slot, overall and for this node.
    let slot = shared.slots.clone().try_acquire_owned().ok();
    let place = node
        .as_ref()
        .and_then(|n| Place::take(&shared.by_node, n.clone(), MAX_PER_NODE));
    let (Some(node), Some(_slot), Some(_place)) = (node.clone(), slot, place) else {
        if node.is_none() {
            stats.forbidden.fetch_add(1, Ordering::Relaxed);
            if shared.log.allow("artifacts") {
                tracing::warn!("artifact endpoint: client certificate names no node; refused");
            }
            return finish(&mut tls, error_head(403).as_bytes()).await;
        }
        stats.busy.fetch_add(1, Ordering::Relaxed);
        if shared.log.allow("artifacts") {
            tracing::warn!(node = ?node.map(|n| n.to_string()), "artifact endpoint: too many downloads; 503");
        }
        return finish(&mut tls, error_head(503).as_bytes()).await;
    };
    let head = read_head(&mut tls).await?;
    if let (Some((h, rest)), Some(blobs)) = (&head, &shared.blobs) {
        if crate::blobs::request::is_blob(h) {
            return crate::blobs::serve::answer(&mut tls, &node, h, rest.clone(), blobs).await;
        }
    }
    let head = head.map(|(h, _)| h);
    let get = match head.as_deref().map(parse_request) {
        None => Err(400),
        Some(r) => r,
    };
    let get = match get {
        Ok(g) => g,
        Err(status) => return finish(&mut tls, error_head(status).as_bytes()).await,
    };
    let allowed =
        hedge_wire::parse_sha256(&get.sha256).is_some_and(|sha| (shared.authorize)(&node, &sha));
    if !allowed {
        stats.forbidden.fetch_add(1, Ordering::Relaxed);
        if shared.log.allow("artifacts") {
            tracing::warn!(node = %node, sha256 = %get.sha256, "artifact not in the node's desired state; refused");
        }
        return finish(&mut tls, error_head(403).as_bytes()).await;
    }
    let path = shared.dir.join(&get.sha256);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let status = if e.kind() == std::io::ErrorKind::NotFound {
                404
            } else {
                500
            };
            return finish(&mut tls, error_head(status).as_bytes()).await;
        }
    };
    let len = file.metadata().await?.len();
    let answer = plan(len, get.from);
    tracing::info!(node = %node, sha256 = %get.sha256, status = answer.status, from = answer.start, bytes = answer.length, "artifact request");
    stats.served.fetch_add(1, Ordering::Relaxed);
    write(&mut tls, response_head(&answer, len).as_bytes()).await?;
    if answer.length > 0 {
        file.seek(std::io::SeekFrom::Start(answer.start)).await?;
        let mut left = answer.length;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            write(&mut tls, &buf[..n]).await?;
            left -= n as u64;
        }
    }
    finish(&mut tls, b"").await
}

/// Reads a request head (bounded by [`MAX_REQUEST_HEAD`] and [`HEAD_TIMEOUT`]): the head
/// without its blank line and what followed it, or `None` when it is too long.
async fn read_head<S: AsyncReadExt + Unpin>(
    tls: &mut S,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout");
    tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                buf.truncate(end);
                return Ok::<_, std::io::Error>(Some((buf, rest)));
            }
            if buf.len() > MAX_REQUEST_HEAD {
                return Ok(None);
            }
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| timed_out())?
}

/// `POST /enroll`: reads the body (`Content-Length`, at most
/// [`crate::enrollment::MAX_BODY`]), answers 200 with the certificate PEM or 403/400.
async fn enroll<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    tls: &mut S,
    head: &[u8],
    mut body: Vec<u8>,
    enroller: &crate::enrollment::Enroller,
) -> std::io::Result<()> {
    let len = std::str::from_utf8(head).ok().and_then(|h| {
        h.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
    });
    let Some(len) = len.filter(|l| *l <= crate::enrollment::MAX_BODY && *l >= body.len()) else {
        return finish(tls, error_head(400).as_bytes()).await;
    };
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while body.len() < len {
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) if body.len() == len => {}
        _ => return finish(tls, error_head(400).as_bytes()).await,
    }
    match enroller.answer(&body, time::OffsetDateTime::now_utc()) {
        Ok(pem) => {
            tracing::info!("node certificate issued");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\nContent-Type: application/x-pem-file\r\n\r\n",
                pem.len()
            );
            write(tls, head.as_bytes()).await?;
            finish(tls, pem.as_bytes()).await
        }
        Err(e) => {
            enroller.refused(&e);
            let status = match e {
                crate::enrollment::EnrollError::Malformed
                | crate::enrollment::EnrollError::BadCsr => 400,
                crate::enrollment::EnrollError::Internal(_) => 500,
                _ => 403,
            };
            finish(tls, error_head(status).as_bytes()).await
        }
    }
}

pub(crate) async fn write<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write stalled"))?
}

pub(crate) async fn finish<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    write(w, bytes).await?;
    tokio::time::timeout(WRITE_TIMEOUT, async {
        w.flush().await?;
        w.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "close stalled"))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hexs() -> String {
        "0a".repeat(32)
    }

    #[test]
    fn requests_parse() {
        let h = hexs();
        let ok = |s: String| parse_request(s.as_bytes());
        assert_eq!(
            ok(format!("GET /artifacts/{h} HTTP/1.1\r\nHost: x")).unwrap(),
            Get {
                sha256: h.clone(),
                from: None
            }
        );
        assert_eq!(
            ok(format!(
                "GET /artifacts/{h} HTTP/1.1\r\nrange: bytes=1234-\r\n"
            ))
            .unwrap()
            .from,
            Some(1234)
        );
        // Other range forms: a full answer.
        for r in ["bytes=1-2", "bytes=-5", "bytes=1-,3-", "items=1-"] {
            assert_eq!(
                ok(format!("GET /artifacts/{h} HTTP/1.1\r\nRange: {r}"))
                    .unwrap()
                    .from,
                None,
                "{r}"
            );
        }
        assert_eq!(ok(format!("POST /artifacts/{h} HTTP/1.1")), Err(405));
        for (req, status) in [
            ("GET /artifacts/../master.key HTTP/1.1".to_string(), 404),
            (format!("GET /artifacts/{} HTTP/1.1", h.to_uppercase()), 404),
            (format!("GET /artifacts/{h}/x HTTP/1.1"), 404),
            (format!("GET /other/{h} HTTP/1.1"), 404),
            (format!("GET /artifacts/{h} HTTP/2"), 400),
            (format!("GET  /artifacts/{h} HTTP/1.1"), 400),
            (format!("GET /artifacts/{h} HTTP/1.1\r\nbad header"), 400),
            ("\u{ff}".to_string(), 400),
        ] {
            assert_eq!(ok(req.clone()), Err(status), "{req}");
        }
        assert_eq!(parse_request(b"\xff\xfe"), Err(400));
    }

    #[test]
    fn per_peer_places_are_bounded_and_given_back() {
        let mut p = PerPeer::default();
        assert!(p.take(&"a", 2));
        assert!(p.take(&"a", 2));
        assert!(!p.take(&"a", 2));
        assert!(p.take(&"b", 2));
        p.give(&"a");
        assert!(p.take(&"a", 2));
        p.give(&"a");
        p.give(&"a");
        p.give(&"a");
        assert!(!p.held.contains_key("a"), "emptied keys are forgotten");
    }

    #[test]
    fn ranges_resume_and_past_the_end_is_416() {
        assert_eq!(
            plan(10, None),
            Answer {
                status: 200,
                start: 0,
                length: 10
            }
        );
        assert_eq!(plan(10, Some(0)).status, 200);
        let a = plan(10, Some(4));
        assert_eq!(
            a,
            Answer {
                status: 206,
                start: 4,
                length: 6
            }
        );
        assert!(response_head(&a, 10).contains("Content-Range: bytes 4-9/10\r\n"));
        let end = plan(10, Some(10));
        assert_eq!(end.status, 416);
        assert!(response_head(&end, 10).contains("Content-Range: bytes */10\r\n"));
        assert_eq!(plan(10, Some(11)).status, 416);
        assert_eq!(plan(0, None).length, 0);
    }

    #[test]
    fn supply_is_content_addressed_and_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.tar.gz");
        std::fs::write(&f, b"hello").unwrap();
        let dir = tmp.path().join("artifacts");
        let (sha, size) = supply(&dir, &f).unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            hex(&sha),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(std::fs::read(dir.join(hex(&sha))).unwrap(), b"hello");
        assert_eq!(supply(&dir, &f).unwrap(), (sha, 5));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        let mode = std::fs::metadata(dir.join(hex(&sha)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(supply(&dir, &tmp.path().join("missing")).is_err());
    }
}
