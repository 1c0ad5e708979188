//! The blob service's answer on one authenticated connection of the artifact endpoint.
//!
//! Contract: [`answer`] reads the body a [`super::request::Route`] announces (bounded
//! by its `Content-Length`, every read by an idle timeout), runs the blocking part off
//! the event loop, and writes one answer: the status of the outcome with its body (the
//! missing ids of a `409` snapshot refusal). A snapshot's id list goes straight to a
//! temporary file; only its header is held in memory.

use std::sync::Arc;
use std::time::Duration;

use hedge_wire::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::request::{self, Route};
use super::{BlobError, Blobs, Refusal};
use crate::artifacts::{error_head, finish, reason, write};

/// A body read that stalls longer fails the request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn head(status: u16, len: usize) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n",
        reason(status)
    )
}

async fn reply<S: AsyncWriteExt + Unpin>(
    io: &mut S,
    status: u16,
    body: &[u8],
) -> std::io::Result<()> {
    write(io, head(status, body.len()).as_bytes()).await?;
    finish(io, body).await
}

async fn fail<S: AsyncWriteExt + Unpin>(io: &mut S, e: &BlobError) -> std::io::Result<()> {
    match e {
        BlobError::Refused(Refusal::Missing(ids)) => reply(io, 409, &ids.concat()).await,
        BlobError::Refused(_) => finish(io, error_head(e.status()).as_bytes()).await,
        other => {
            tracing::warn!(error = %other, "blob request failed");
            finish(io, error_head(500).as_bytes()).await
        }
    }
}

/// Reads `buf.len()` body bytes, starting with what came after the head (`rest`).
async fn fill<S: AsyncReadExt + Unpin>(
    io: &mut S,
    rest: &mut Vec<u8>,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let from_rest = rest.len().min(buf.len());
    buf[..from_rest].copy_from_slice(&rest[..from_rest]);
    rest.drain(..from_rest);
    let mut at = from_rest;
    while at < buf.len() {
        let n = tokio::time::timeout(IDLE_TIMEOUT, io.read(&mut buf[at..]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "body stalled"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        at += n;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
}

fn len_of(n: u64) -> std::io::Result<usize> {
    usize::try_from(n).map_err(|_| std::io::Error::other("body too large for this platform"))
}

/// Answers one blob request of `node` (its head read, `rest` what followed it).
pub(crate) async fn answer<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    io: &mut S,
    node: &Name,
    head: &[u8],
    mut rest: Vec<u8>,
    blobs: &Arc<Blobs>,
) -> std::io::Result<()> {
    let route = match request::parse(head) {
        Ok(r) => r,
        Err(status) => return finish(io, error_head(status).as_bytes()).await,
    };
    let revoked = {
        let (b, n) = (blobs.clone(), node.clone());
        tokio::task::spawn_blocking(move || b.is_revoked(&n))
            .await
            .unwrap_or(true)
    };
    if revoked {
        return finish(io, error_head(403).as_bytes()).await;
    }
    let (b, n) = (blobs.clone(), node.clone());
    match route {
        Route::RecoveryKey => reply(io, 200, &blobs.recovery).await,
        Route::Have { count } => {
            let mut body = vec![0u8; count * 32];
            fill(io, &mut rest, &mut body).await?;
            let bits = blocking(move || Ok(b.have(&n, &body))).await;
            match bits {
                Ok(bits) => reply(io, 200, &bits).await,
                Err(e) => fail(io, &e).await,
            }
        }
        Route::PutChunk { id, len } => {
            let mut body = vec![0u8; len_of(len)?];
            fill(io, &mut rest, &mut body).await?;
            match blocking(move || b.put_chunk(&n, &id, &body)).await {
                Ok(true) => reply(io, 201, b"").await,
                Ok(false) => reply(io, 200, b"").await,
                Err(e) => fail(io, &e).await,
            }
        }
        Route::PutSnapshot { len } => {
            let mut prefix = [0u8; 4];
            fill(io, &mut rest, &mut prefix).await?;
            let hlen = match super::decide::header_len(prefix, len) {
                Ok(h) => h,
                Err(r) => return fail(io, &r.into()).await,
            };
            let mut hbytes = vec![0u8; len_of(u64::from(hlen))?];
            fill(io, &mut rest, &mut hbytes).await?;
            let header = match super::decide::snapshot_header(node, &hbytes) {
                Ok(h) => h,
                Err(r) => {
                    let e = if r == Refusal::Forbidden {
                        let (b, n) = (blobs.clone(), node.clone());
                        blocking(move || {
                            Err::<(), _>(b.refused(&n, Refusal::Forbidden, "snapshot"))
                        })
                        .await
                        .err()
                        .unwrap_or(BlobError::Refused(r))
                    } else {
                        r.into()
                    };
                    return fail(io, &e).await;
                }
            };
            drop(hbytes);
            let ids_len = len - 4 - u64::from(hlen);
            let (b2, n2) = (blobs.clone(), node.clone());
            let (file, tmp) = match blocking(move || Ok(b2.dir.temp(&n2)?)).await {
                Ok(t) => t,
                Err(e) => return fail(io, &e).await,
            };
            let mut out = tokio::fs::File::from_std(file.try_clone()?);
            let streamed = async {
                let mut left = ids_len;
                let first = rest.len().min(len_of(left)?);
                out.write_all(&rest[..first]).await?;
                left -= first as u64;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let want = buf.len().min(len_of(left)?);
                    let n = tokio::time::timeout(IDLE_TIMEOUT, io.read(&mut buf[..want]))
                        .await
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "body stalled")
                        })??;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    out.write_all(&buf[..n]).await?;
                    left -= n as u64;
                }
                out.flush().await
            }
            .await;
            if let Err(e) = streamed {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            drop(out);
            let now = hedge_common::clock::now_ms();
            match blocking(move || b.put_snapshot(&n, &header, &file, &tmp, now)).await {
                Ok(_) => reply(io, 201, b"").await,
                Err(e) => fail(io, &e).await,
            }
        }
        Route::Grant { instance, snapshot } => {
            match blocking(move || b.grant(&n, &instance, snapshot)).await {
                Ok(body) => reply(io, 200, &body).await,
                Err(e) => fail(io, &e).await,
            }
        }
        Route::GetChunk { source, id } => {
            match blocking(move || b.get_chunk(&n, &source, &id)).await {
                Ok(body) => reply(io, 200, &body).await,
                Err(e) => fail(io, &e).await,
            }
        }
    }
}
