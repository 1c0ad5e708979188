//! The node's client of the master's blob service (`/backup/v1/...` on the artifact
//! endpoint, mutual TLS with the node's certificate): see `hedge_master::blobs` for
//! what each request does.
//!
//! Contract: one request per connection, built from the artifact client's pieces
//! ([`crate::artifact::fetch`]: [`Source`], its TLS connection and response head).
//! Connecting and the answer's head are bounded by [`TIMEOUT`], every body read or
//! write by [`IDLE`]; an answer's body is bounded by what the request can get back.
//! Every refusal is its own [`RemoteError`] variant (403, 409 with the missing ids or a
//! hash mismatch, 507, 404); transport failures are [`RemoteError::Fetch`]. A snapshot's
//! ids are streamed from the caller's iterator, never collected.

use std::time::Duration;

use hedge_wire::backup::{RestoreGrant, SnapshotHeader, SnapshotId, MAX_CHUNK};
use hedge_wire::{Name, Validate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifact::fetch::{self, parse_head, FetchError, Source};

/// Connecting, the TLS handshake and sending a request head must take less.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// A body read or write that stalls longer fails the request.
pub const IDLE: Duration = Duration::from_secs(60);
/// Most ids one `have` asks about (the master's bound).
pub const MAX_HAVE: usize = 4096;
/// Longest chunk body: the largest plaintext and its tag.
const MAX_CHUNK_BODY: u64 = MAX_CHUNK as u64 + 16;
/// Longest grant answer (a header with the largest root, and the key).
const MAX_GRANT: u64 = 512 * 1024;
/// Longest `409` answer to a snapshot (the master lists at most 65 536 ids).
const MAX_MISSING_BODY: u64 = 65_536 * 32;

/// Why a blob service request failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Connecting, TLS, the socket, or an answer that broke HTTP.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// `403`: this node may not (another node's chunks, a restore not granted, a
    /// header naming another node, a revoked node).
    #[error("the master refused (403)")]
    Forbidden,
    /// `409` to a snapshot: these chunks are not stored at the master yet.
    #[error("{} chunk(s) of the snapshot are not at the master (409)", .0.len())]
    Missing(Vec<[u8; 32]>),
    /// `409` to a chunk: its body does not hash to its name.
    #[error("the master found the chunk does not match its id (409)")]
    Mismatch,
    /// `507`: the node's quota at the master is used up.
    #[error("the node's backup quota at the master is used up (507)")]
    Quota,
    /// `404`: not stored.
    #[error("not found at the master (404)")]
    NotFound,
    /// Any other status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer's body is not what the request gets (length, encoding).
    #[error("bad answer: {0}")]
    Answer(&'static str),
    /// The ids to send failed or were not as many as announced.
    #[error("snapshot ids: {0}")]
    Ids(String),
}

/// What a chunk put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Newly stored (`201`).
    Stored,
    /// It was already stored (`200`).
    Already,
}

/// The blob service of one master.
#[derive(Debug, Clone)]
pub struct Remote {
    source: Source,
}

fn timed_out(what: &str) -> RemoteError {
    RemoteError::Fetch(FetchError::Net(format!("{what} timed out")))
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> RemoteError {
    move |e| RemoteError::Fetch(FetchError::Net(format!("{what}: {e}")))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Which refusal a status is, for a request whose `409` means `conflict`.
fn refusal(status: u16, conflict: impl FnOnce() -> RemoteError) -> RemoteError {
    match status {
        403 => RemoteError::Forbidden,
        404 => RemoteError::NotFound,
        409 => conflict(),
        507 => RemoteError::Quota,
        s => RemoteError::Status(s),
    }
}

async fn send(tls: &mut Tls, bytes: &[u8]) -> Result<(), RemoteError> {
    tokio::time::timeout(IDLE, tls.write_all(bytes))
        .await
        .map_err(|_| timed_out("sending"))?
        .map_err(io_err("send"))
}

impl Remote {
    /// The blob service at `source` (the artifact endpoint's URL and the node's TLS).
    pub fn new(source: Source) -> Remote {
        Remote { source }
    }

    /// Connects and sends a request head announcing `len` body bytes.
    async fn start(&self, method: &str, path: &str, len: Option<u64>) -> Result<Tls, RemoteError> {
        let path = format!("{}/backup/v1/{path}", self.source.prefix);
        let headers = len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
        let head =
            fetch::request_head(method, &self.source.host, self.source.port, &path, &headers);
        tokio::time::timeout(TIMEOUT, async {
            let mut tls = fetch::connect(&self.source).await?;
            tls.write_all(head.as_bytes())
                .await
                .map_err(io_err("send"))?;
            Ok(tls)
        })
        .await
        .map_err(|_| timed_out("connecting"))?
    }

    /// Reads the answer: its status and body (at most `max` bytes).
    async fn answer(tls: &mut Tls, max: u64) -> Result<(u16, Vec<u8>), RemoteError> {
        tokio::time::timeout(IDLE, tls.flush())
            .await
            .map_err(|_| timed_out("sending"))?
            .map_err(io_err("send"))?;
        let (head, mut body) = tokio::time::timeout(TIMEOUT, fetch::response_head(tls))
            .await
            .map_err(|_| timed_out("waiting for the answer"))??;
        let head = parse_head(&head)?;
        let len = head.content_length.unwrap_or(0);
        if len > max {
            return Err(RemoteError::Answer("answer longer than expected"));
        }
        let len = usize::try_from(len).map_err(|_| RemoteError::Answer("answer too long"))?;
        body.truncate(len);
        let mut buf = [0u8; 16 * 1024];
        while body.len() < len {
            let want = buf.len().min(len - body.len());
            let n = tokio::time::timeout(IDLE, tls.read(&mut buf[..want]))
                .await
                .map_err(|_| timed_out("receiving"))?
                .map_err(io_err("receive"))?;
            if n == 0 {
                return Err(RemoteError::Answer("connection closed inside the answer"));
            }
            body.extend_from_slice(&buf[..n]);
        }
        Ok((head.status, body))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        max: u64,
    ) -> Result<(u16, Vec<u8>), RemoteError> {
        let mut tls = self
            .start(method, path, body.map(|b| b.len() as u64))
            .await?;
        if let Some(b) = body {
            send(&mut tls, b).await?;
        }
        Self::answer(&mut tls, max).await
    }

    /// The fleet's recovery public key (what snapshot keys are sealed to).
    pub async fn recovery_key(&self) -> Result<[u8; 32], RemoteError> {
        match self.call("GET", "recovery-key", None, 32).await? {
            (200, b) => b
                .try_into()
                .map_err(|_| RemoteError::Answer("a recovery key is 32 bytes")),
            (s, _) => Err(refusal(s, || RemoteError::Status(409))),
        }
    }

    /// Which of `ids` the master stores under this node (in order), asked in batches
    /// of [`MAX_HAVE`].
    pub async fn have(&self, ids: &[[u8; 32]]) -> Result<Vec<bool>, RemoteError> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_HAVE) {
            let body = batch.concat();
            match self
                .call("POST", "have", Some(&body), batch.len() as u64)
                .await?
            {
                (200, b) if b.len() == batch.len() => out.extend(b.iter().map(|x| *x == 1)),
                (200, _) => return Err(RemoteError::Answer("have: not one byte per id")),
                (s, _) => return Err(refusal(s, || RemoteError::Status(409))),
            }
        }
        Ok(out)
    }

    /// Uploads one chunk (its ciphertext; `id` its SHA-256).
    pub async fn put_chunk(&self, id: &[u8; 32], ciphertext: &[u8]) -> Result<Put, RemoteError> {
        let path = format!("chunk/{}", hedge_common::hex::encode(id));
        match self.call("PUT", &path, Some(ciphertext), 0).await? {
            (201, _) => Ok(Put::Stored),
            (200, _) => Ok(Put::Already),
            (s, _) => Err(refusal(s, || RemoteError::Mismatch)),
        }
    }

    /// Uploads a snapshot: its header and its `count` chunk ids (deduped), streamed from
    /// `ids`. Refused with [`RemoteError::Missing`] while chunks are missing at the
    /// master: put them, then try again.
    pub async fn put_snapshot<I, E>(
        &self,
        header: &SnapshotHeader,
        count: u64,
        ids: I,
    ) -> Result<(), RemoteError>
    where
        I: IntoIterator<Item = Result<[u8; 32], E>>,
        E: std::fmt::Display,
    {
        header
            .validate()
            .map_err(|_| RemoteError::Ids("the header breaks a wire bound".into()))?;
        let h =
            postcard::to_allocvec(header).map_err(|e| RemoteError::Ids(format!("header: {e}")))?;
        let hlen =
            u32::try_from(h.len()).map_err(|_| RemoteError::Ids("header too long".into()))?;
        let ids_len = count
            .checked_mul(32)
            .ok_or_else(|| RemoteError::Ids("too many ids".into()))?;
        let len = 4 + u64::from(hlen) + ids_len;
        let mut tls = self.start("PUT", "snapshot", Some(len)).await?;
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&hlen.to_be_bytes());
        buf.extend_from_slice(&h);
        send(&mut tls, &buf).await?;
        buf.clear();
        let mut sent = 0u64;
        for id in ids {
            let id = id.map_err(|e| RemoteError::Ids(e.to_string()))?;
            sent += 1;
            if sent > count {
                return Err(RemoteError::Ids(format!("more than the {count} announced")));
            }
            buf.extend_from_slice(&id);
            if buf.len() >= 64 * 1024 {
                send(&mut tls, &buf).await?;
                buf.clear();
            }
        }
        if sent != count {
            return Err(RemoteError::Ids(format!("{sent} ids, {count} announced")));
        }
        send(&mut tls, &buf).await?;
        match Self::answer(&mut tls, MAX_MISSING_BODY).await? {
            (201, _) => Ok(()),
            (409, b) if b.len() % 32 == 0 => Err(RemoteError::Missing(
                b.chunks_exact(32)
                    .map(|c| {
                        let mut id = [0u8; 32];
                        id.copy_from_slice(c);
                        id
                    })
                    .collect(),
            )),
            (s, _) => Err(refusal(s, || RemoteError::Answer("409 without whole ids"))),
        }
    }

    /// The grant of a restore the master opened onto this node: the snapshot's header
    /// and its key.
    pub async fn grant(
        &self,
        instance: &Name,
        snapshot: SnapshotId,
    ) -> Result<RestoreGrant, RemoteError> {
        let path = format!("restore/{instance}/{snapshot}");
        match self.call("GET", &path, None, MAX_GRANT).await? {
            (200, b) => {
                let g: RestoreGrant = postcard::from_bytes(&b)
                    .map_err(|_| RemoteError::Answer("grant does not decode"))?;
                g.header
                    .validate()
                    .map_err(|_| RemoteError::Answer("grant breaks a wire bound"))?;
                Ok(g)
            }
            (s, _) => Err(refusal(s, || RemoteError::Status(409))),
        }
    }

    /// Chunk `id` as stored under `source` (this node's, or a restore's source); the
    /// caller checks it.
    pub async fn get_chunk(&self, source: &Name, id: &[u8; 32]) -> Result<Vec<u8>, RemoteError> {
        let path = format!("chunk/{source}/{}", hedge_common::hex::encode(id));
        match self.call("GET", &path, None, MAX_CHUNK_BODY).await? {
            (200, b) => Ok(b),
            (s, _) => Err(refusal(s, || RemoteError::Status(409))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_refusals() {
        assert!(matches!(
            refusal(403, || RemoteError::Mismatch),
            RemoteError::Forbidden
        ));
        assert!(matches!(
            refusal(404, || RemoteError::Mismatch),
            RemoteError::NotFound
        ));
        assert!(matches!(
            refusal(409, || RemoteError::Mismatch),
            RemoteError::Mismatch
        ));
        assert!(matches!(
            refusal(507, || RemoteError::Mismatch),
            RemoteError::Quota
        ));
        assert!(matches!(
            refusal(500, || RemoteError::Mismatch),
            RemoteError::Status(500)
        ));
    }
}
