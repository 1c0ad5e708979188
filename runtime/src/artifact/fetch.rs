//! Downloading an artifact from the master: `GET <base>/artifacts/<hex>` over HTTPS with
//! the node's client certificate (mutual TLS, the fleet CA as the only root), resumable.
//!
//! Contract: [`download`] appends to `<hex>.part` from its current length with
//! `Range: bytes=N-`; a `206` whose `Content-Range` starts at N is appended, a `200`
//! restarts the file from zero, a `416` for a complete file is success, any other answer
//! is a [`FetchError`] and leaves the `.part` for the next attempt. The pure pieces —
//! [`Source::parse`], [`request`], [`parse_head`] and [`plan`] — hold every decision;
//! the rest moves bytes. The response head is bounded (16 KiB), the body by `max` and by
//! `Content-Length`, and every read by an idle timeout. One request per connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hedge_wire::Sha256Hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Connect + TLS handshake + response head must take less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A body read that stalls longer fails the attempt (the `.part` keeps what came).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a download attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The configured URL is unusable.
    #[error("artifacts URL {0:?}: {1}")]
    Url(String, &'static str),
    /// Connecting, the TLS handshake, or reading/writing the socket failed.
    #[error("{0}")]
    Net(String),
    /// The master does not have the artifact.
    #[error("the master has no artifact {0} (404)")]
    NotFound(String),
    /// Any other HTTP status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer broke HTTP or the range rules.
    #[error("bad response: {0}")]
    Protocol(&'static str),
    /// The artifact is larger than the node accepts.
    #[error("artifact of {0} bytes is over the {1}-byte bound")]
    TooLarge(u64, u64),
    /// Writing the `.part` failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Where artifacts come from: the master's HTTPS endpoint and the node's TLS identity.
#[derive(Clone)]
pub struct Source {
    /// Host name or address (also the TLS server name).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix before `/artifacts/`, without a trailing `/` (usually empty).
    pub prefix: String,
    /// Client configuration: the fleet CA and the node's certificate.
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `(host, port, prefix)` of `https://HOST[:PORT][/PREFIX]` (port 443 by default; an IPv6
/// host in brackets). Nothing else (no user info, query or fragment) is accepted.
pub fn parse_url(url: &str) -> Result<(String, u16, String), FetchError> {
    let bad = |why| FetchError::Url(url.chars().take(200).collect(), why);
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') || path.contains(['?', '#']) {
        return Err(bad("no user info, query or fragment allowed"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
    {
        return Err(bad("path has characters outside A-Z a-z 0-9 / - . _ ~"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("junk after ']'")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        return Err(bad("bad host"));
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("bad port"))?,
    };
    Ok((host.to_owned(), port, path.trim_end_matches('/').to_owned()))
}

impl Source {
    /// A source for `url` (see [`parse_url`]) with the client configuration `tls`.
    pub fn parse(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Source, FetchError> {
        let (host, port, prefix) = parse_url(url)?;
        Ok(Source {
            host,
            port,
            prefix,
            tls,
        })
    }
}

/// The request head for `path`, asking for the bytes from `offset` on when it is not 0.
pub fn request(host: &str, port: u16, path: &str, offset: u64) -> String {
    let range = if offset > 0 {
        format!("Range: bytes={offset}-\r\n")
    } else {
        String::new()
    };
    request_head("GET", host, port, path, &range)
}

/// A request head: `method path`, the host, then `headers` (each line ending `\r\n`).
pub fn request_head(method: &str, host: &str, port: u16, path: &str, headers: &str) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: hedge-node\r\n{headers}Connection: close\r\n\r\n"
    )
}

/// A parsed `Content-Range`: the byte range (`None` for `*`) and the total (`None` for `*`).
pub type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// What matters of a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL` as `(Some((start, end)), Some(total))`;
    /// `bytes */TOTAL` as `(None, Some(total))`.
    pub content_range: Option<ContentRange>,
}

/// Parses a response head (without the blank line's `\r\n`, or with it).
pub fn parse_head(head: &[u8]) -> Result<Head, FetchError> {
    let text = std::str::from_utf8(head).map_err(|_| FetchError::Protocol("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(FetchError::Protocol("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(FetchError::Protocol("bad status code"))?;
    let mut out = Head {
        status,
        content_length: None,
        content_range: None,
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or(FetchError::Protocol("header line without ':'"))?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            let n = v
                .parse::<u64>()
                .map_err(|_| FetchError::Protocol("bad Content-Length"))?;
            if out.content_length.is_some_and(|m| m != n) {
                return Err(FetchError::Protocol("conflicting Content-Length"));
            }
            out.content_length = Some(n);
        } else if k.eq_ignore_ascii_case("content-range") {
            out.content_range = Some(parse_content_range(v)?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FetchError::Protocol("Transfer-Encoding is not supported"));
        }
    }
    Ok(out)
}

fn parse_content_range(v: &str) -> Result<ContentRange, FetchError> {
    let bad = FetchError::Protocol("bad Content-Range");
    let spec = v.strip_prefix("bytes ").ok_or(bad)?;
    let (range, total) = spec
        .split_once('/')
        .ok_or(FetchError::Protocol("bad Content-Range"))?;
    let total = match total {
        "*" => None,
        t => Some(
            t.parse::<u64>()
                .map_err(|_| FetchError::Protocol("bad Content-Range"))?,
        ),
    };
    let range = match range {
        "*" => None,
        r => {
            let (a, b) = r
                .split_once('-')
                .ok_or(FetchError::Protocol("bad Content-Range"))?;
            let a = a
                .parse::<u64>()
                .map_err(|_| FetchError::Protocol("bad Content-Range"))?;
            let b = b
                .parse::<u64>()
                .map_err(|_| FetchError::Protocol("bad Content-Range"))?;
            if b < a {
                return Err(FetchError::Protocol("bad Content-Range"));
            }
            Some((a, b))
        }
    };
    Ok((range, total))
}

/// What to do with the `.part` file given the answer to a request from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Truncate to 0 and write `len` bytes (a full `200`).
    Restart {
        /// Body length.
        len: u64,
    },
    /// Append `len` bytes at `offset` (a `206`).
    Append {
        /// Body length.
        len: u64,
    },
    /// The `.part` already holds all `total` bytes (a `416` for `offset == total`).
    Complete,
    /// The `.part` is longer than the artifact: truncate it to 0 and try again.
    Discard,
}

/// Decides what a response means for a download resumed at `offset`; `max` bounds the
/// artifact's size.
pub fn plan(offset: u64, head: &Head, max: u64) -> Result<Plan, FetchError> {
    match head.status {
        200 => {
            let len = head
                .content_length
                .ok_or(FetchError::Protocol("200 without Content-Length"))?;
            if len > max {
                return Err(FetchError::TooLarge(len, max));
            }
            Ok(Plan::Restart { len })
        }
        206 => {
            let Some((Some((start, end)), total)) = head.content_range else {
                return Err(FetchError::Protocol("206 without a byte range"));
            };
            if start != offset {
                return Err(FetchError::Protocol("206 for another range than asked"));
            }
            let len = end - start + 1;
            if head.content_length.is_some_and(|l| l != len) {
                return Err(FetchError::Protocol(
                    "Content-Length disagrees with Content-Range",
                ));
            }
            let total = total.unwrap_or(end + 1);
            if total != end + 1 {
                return Err(FetchError::Protocol("206 does not run to the end"));
            }
            if total > max {
                return Err(FetchError::TooLarge(total, max));
            }
            Ok(Plan::Append { len })
        }
        416 => match head.content_range {
            Some((None, Some(total))) if total == offset => Ok(Plan::Complete),
            Some((None, Some(total))) if total < offset => Ok(Plan::Discard),
            _ => Err(FetchError::Protocol("416 without a usable Content-Range")),
        },
        404 => Err(FetchError::NotFound(String::new())),
        s => Err(FetchError::Status(s)),
    }
}

fn net(what: &str) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Net(format!("{what}: {e}"))
}

/// Downloads artifact `sha256` from `source` into `part`, resuming from its length.
/// Returns once `part` holds the whole artifact (not yet checked).
pub async fn download(
    source: &Source,
    sha256: &[u8; 32],
    part: &Path,
    max: u64,
) -> Result<(), FetchError> {
    let hex = Sha256Hex(sha256).to_string();
    let part_err = |e| FetchError::Io(part.display().to_string(), e);
    let mut offset = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(part_err(e)),
    };
    if offset > max {
        tokio::fs::remove_file(part).await.map_err(part_err)?;
        offset = 0;
    }
    let path = format!("{}/artifacts/{hex}", source.prefix);
    let (mut tls, head, rest) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut tls = connect(source).await?;
        tls.write_all(request(&source.host, source.port, &path, offset).as_bytes())
            .await
            .map_err(net("send"))?;
        tls.flush().await.map_err(net("send"))?;
        let (head, rest) = response_head(&mut tls).await?;
        Ok((tls, head, rest))
    })
    .await
    .map_err(|_| FetchError::Net("timed out connecting or waiting for the answer".into()))??;
    let head = parse_head(&head)?;
    let len = match plan(offset, &head, max) {
        Err(FetchError::NotFound(_)) => return Err(FetchError::NotFound(hex)),
        Err(e) => return Err(e),
        Ok(Plan::Complete) => return Ok(()),
        Ok(Plan::Discard) => {
            tokio::fs::remove_file(part).await.map_err(part_err)?;
            return Err(FetchError::Protocol(
                "partial download longer than the artifact; restarting",
            ));
        }
        Ok(Plan::Restart { len }) => {
            offset = 0;
            len
        }
        Ok(Plan::Append { len }) => len,
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .await
        .map_err(part_err)?;
    file.set_len(offset).await.map_err(part_err)?;
    let mut file = tokio::io::BufWriter::new(file);
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(part_err)?;
    let mut left = len;
    let first = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    file.write_all(&rest[..first]).await.map_err(part_err)?;
    left -= first as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    let result = async {
        while left > 0 {
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = tokio::time::timeout(IDLE_TIMEOUT, tls.read(&mut chunk[..want]))
                .await
                .map_err(|_| FetchError::Net("download stalled".into()))?
                .map_err(net("receive"))?;
            if n == 0 {
                return Err(FetchError::Net(format!(
                    "connection closed with {left} bytes to go"
                )));
            }
            file.write_all(&chunk[..n]).await.map_err(part_err)?;
            left -= n as u64;
        }
        Ok(())
    }
    .await;
    // Keep what arrived, durably, for the next attempt to resume from.
    file.flush().await.map_err(part_err)?;
    file.get_ref().sync_all().await.map_err(part_err)?;
    result
}

/// A TLS connection to `source` with the node's client certificate (no timeout: the
/// caller bounds it).
pub async fn connect(
    source: &Source,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, FetchError> {
    let server_name = rustls::pki_types::ServerName::try_from(source.host.clone())
        .map_err(|_| FetchError::Url(source.host.clone(), "not a valid TLS server name"))?;
    let connector = tokio_rustls::TlsConnector::from(source.tls.clone());
    let tcp = tokio::net::TcpStream::connect((source.host.as_str(), source.port))
        .await
        .map_err(net("connect"))?;
    tcp.set_nodelay(true).map_err(net("connect"))?;
    connector
        .connect(server_name, tcp)
        .await
        .map_err(net("TLS handshake"))
}

/// Reads a response head (at most [`MAX_HEAD`]): the head without its blank line, and
/// what followed it (no timeout: the caller bounds it).
pub async fn response_head<S: AsyncReadExt + Unpin>(
    tls: &mut S,
) -> Result<(Vec<u8>, Vec<u8>), FetchError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(FetchError::Protocol("response head too long"));
        }
        let n = tls.read(&mut chunk).await.map_err(net("receive"))?;
        if n == 0 {
            return Err(FetchError::Net(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443, String::new())
        );
        assert_eq!(
            parse_url("https://master.example/hedge/").unwrap(),
            ("master.example".into(), 443, "/hedge".into())
        );
        assert_eq!(
            parse_url("https://[::1]:9").unwrap(),
            ("::1".into(), 9, String::new())
        );
        for bad in [
            "http://h:1",
            "https://",
            "https://h:0",
            "https://h:x",
            "https://u@h",
            "https://h/a?b",
            "https://h/a b",
            "https://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_ask_for_the_rest_only_when_resuming() {
        let r = request("h", 1, "/artifacts/ab", 0);
        assert!(r.starts_with("GET /artifacts/ab HTTP/1.1\r\n"));
        assert!(!r.contains("Range"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = request("::1", 1, "/x", 1234);
        assert!(r.contains("Range: bytes=1234-\r\n"), "{r}");
        assert!(r.contains("Host: [::1]:1\r\n"), "{r}");
    }

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes()).unwrap()
    }

    #[test]
    fn heads_parse() {
        let h = head("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\ncontent-range: bytes 5-14/15\r\n");
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(10));
        assert_eq!(h.content_range, Some((Some((5, 14)), Some(15))));
        let h = head("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */15\r\n\r\n");
        assert_eq!(h.content_range, Some((None, Some(15))));
        for bad in [
            "SPDY/3 200 OK",
            "HTTP/1.1 abc",
            "HTTP/1.1 200 OK\r\nContent-Length: x",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
            "HTTP/1.1 206 OK\r\nContent-Range: bytes 9-1/10",
            "HTTP/1.1 206 OK\r\nContent-Range: items 1-2/3",
            "HTTP/1.1 200 OK\r\nno colon",
        ] {
            assert!(parse_head(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_plans() {
        let max = 1000;
        // Fresh download, or a server that ignores Range: start over.
        assert_eq!(
            plan(0, &head("HTTP/1.1 200 OK\r\nContent-Length: 15"), max).unwrap(),
            Plan::Restart { len: 15 }
        );
        assert_eq!(
            plan(7, &head("HTTP/1.1 200 OK\r\nContent-Length: 15"), max).unwrap(),
            Plan::Restart { len: 15 }
        );
        // A resume: the rest from the asked offset.
        assert_eq!(
            plan(
                5,
                &head("HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 5-14/15"),
                max
            )
            .unwrap(),
            Plan::Append { len: 10 }
        );
        // Another offset than asked, a short range, a lying length: refused.
        for bad in [
            "HTTP/1.1 206 P\r\nContent-Range: bytes 4-14/15",
            "HTTP/1.1 206 P\r\nContent-Range: bytes 5-9/15",
            "HTTP/1.1 206 P\r\nContent-Length: 3\r\nContent-Range: bytes 5-14/15",
            "HTTP/1.1 206 P",
            "HTTP/1.1 200 OK",
        ] {
            assert!(plan(5, &head(bad), max).is_err(), "{bad}");
        }
        // The .part is already complete, or longer than the artifact.
        let full = head("HTTP/1.1 416 R\r\nContent-Range: bytes */15");
        assert_eq!(plan(15, &full, max).unwrap(), Plan::Complete);
        assert_eq!(plan(20, &full, max).unwrap(), Plan::Discard);
        assert!(plan(3, &full, max).is_err());
        // Bounds and statuses.
        assert!(matches!(
            plan(0, &head("HTTP/1.1 200 OK\r\nContent-Length: 1001"), max),
            Err(FetchError::TooLarge(1001, 1000))
        ));
        assert!(matches!(
            plan(
                5,
                &head("HTTP/1.1 206 P\r\nContent-Range: bytes 5-1004/1005"),
                max
            ),
            Err(FetchError::TooLarge(..))
        ));
        assert!(matches!(
            plan(0, &head("HTTP/1.1 404 Not Found\r\nContent-Length: 0"), max),
            Err(FetchError::NotFound(_))
        ));
        assert!(matches!(
            plan(0, &head("HTTP/1.1 500 Oops"), max),
            Err(FetchError::Status(500))
        ));
    }
}
