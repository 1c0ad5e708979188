//! Blob service requests: the pure parse of a request head into a [`Route`].
//!
//! Contract: [`parse`] accepts exactly the six requests of the blob service (see
//! [`crate::blobs`]) and their body bounds, and answers anything else with the status
//! to send: `400` (malformed head, a body length that breaks its rule), `404` (no such
//! path), `405` (another method), `411` (a body without `Content-Length`), `413` (a
//! body over its bound). `Transfer-Encoding` is refused (`400`): bodies are sized.

use hedge_wire::backup::{SnapshotId, MAX_CHUNK};
use hedge_wire::Name;

/// Path prefix of every blob service request.
pub const PREFIX: &str = "/backup/v1/";
/// Most ids one `have` asks about.
pub const MAX_HAVE: usize = 4096;
/// Longest chunk body: the largest plaintext and its AEAD tag.
pub const MAX_CHUNK_BODY: u64 = MAX_CHUNK as u64 + 16;
/// Longest snapshot header in a snapshot body.
pub const MAX_HEADER: u32 = 300 * 1024;
/// Longest id list in a snapshot body (two million chunks).
pub const MAX_IDS: u64 = 64 * 1024 * 1024;
/// Longest snapshot body: the header's length, the header and the ids.
pub const MAX_SNAPSHOT_BODY: u64 = 4 + MAX_HEADER as u64 + MAX_IDS;

/// A well-formed blob service request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /backup/v1/recovery-key`.
    RecoveryKey,
    /// `POST /backup/v1/have`: `count` ids follow.
    Have {
        /// Ids in the body.
        count: usize,
    },
    /// `PUT /backup/v1/chunk/<id>` with `len` bytes of ciphertext.
    PutChunk {
        /// SHA-256 of the body, as named.
        id: [u8; 32],
        /// Body length.
        len: u64,
    },
    /// `PUT /backup/v1/snapshot` with a `len`-byte body.
    PutSnapshot {
        /// Body length.
        len: u64,
    },
    /// `GET /backup/v1/restore/<instance>/<snapshot>`.
    Grant {
        /// The instance restored.
        instance: Name,
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// `GET /backup/v1/chunk/<source>/<id>`.
    GetChunk {
        /// The node the chunk is stored under.
        source: Name,
        /// The chunk.
        id: [u8; 32],
    },
}

/// Whether this head asks for a blob service path (any method).
pub fn is_blob(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next();
    parts
        .next()
        .is_some_and(|target| target.starts_with(PREFIX.as_bytes()))
}

/// 64 lowercase hex digits as 32 bytes.
pub fn chunk_id(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hedge_common::hex::decode_array::<32>(hex)
}

/// Parses a request head (without its blank line); `Err(status)` to answer.
pub fn parse(head: &[u8]) -> Result<Route, u16> {
    let (method, target, headers) = crate::artifacts::split_head(head)?;
    let mut length: Option<u64> = None;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") {
            let n = v.trim().parse::<u64>().map_err(|_| 400u16)?;
            if length.is_some_and(|m| m != n) {
                return Err(400);
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(400);
        }
    }
    let path = target.strip_prefix(PREFIX).ok_or(404u16)?;
    let segs: Vec<&str> = path.split('/').collect();
    let want = |m: &str| if method == m { Ok(()) } else { Err(405u16) };
    let body = |max: u64| match length {
        None => Err(411u16),
        Some(n) if n > max => Err(413),
        Some(n) => Ok(n),
    };
    match segs.as_slice() {
        ["recovery-key"] => {
            want("GET")?;
            Ok(Route::RecoveryKey)
        }
        ["have"] => {
            want("POST")?;
            let n = body(32 * MAX_HAVE as u64)?;
            if n == 0 || n % 32 != 0 {
                return Err(400);
            }
            Ok(Route::Have {
                count: usize::try_from(n / 32).map_err(|_| 400u16)?,
            })
        }
        ["snapshot"] => {
            want("PUT")?;
            let len = body(MAX_SNAPSHOT_BODY)?;
            if len < 4 {
                return Err(400);
            }
            Ok(Route::PutSnapshot { len })
        }
        ["chunk", hex] => {
            let id = chunk_id(hex).ok_or(404u16)?;
            want("PUT")?;
            let len = body(MAX_CHUNK_BODY)?;
            Ok(Route::PutChunk { id, len })
        }
        ["chunk", source, hex] => {
            let source = Name::new(source).map_err(|_| 404u16)?;
            let id = chunk_id(hex).ok_or(404u16)?;
            want("GET")?;
            Ok(Route::GetChunk { source, id })
        }
        ["restore", instance, snapshot] => {
            let instance = Name::new(instance).map_err(|_| 404u16)?;
            let snapshot = snapshot.parse::<SnapshotId>().map_err(|_| 404u16)?;
            want("GET")?;
            Ok(Route::Grant { instance, snapshot })
        }
        _ => Err(404),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn p(s: &str) -> Result<Route, u16> {
        parse(s.as_bytes())
    }

    #[test]
    fn the_six_requests_parse_with_their_bounds() {
        let h = "ab".repeat(32);
        assert_eq!(
            p("GET /backup/v1/recovery-key HTTP/1.1"),
            Ok(Route::RecoveryKey)
        );
        assert_eq!(
            p("POST /backup/v1/have HTTP/1.1\r\nContent-Length: 64"),
            Ok(Route::Have { count: 2 })
        );
        assert_eq!(
            p(&format!(
                "PUT /backup/v1/chunk/{h} HTTP/1.1\r\ncontent-length: 5"
            )),
            Ok(Route::PutChunk {
                id: [0xab; 32],
                len: 5
            })
        );
        assert_eq!(
            p("PUT /backup/v1/snapshot HTTP/1.1\r\nContent-Length: 100"),
            Ok(Route::PutSnapshot { len: 100 })
        );
        assert_eq!(
            p("GET /backup/v1/restore/web/00000000000000ff HTTP/1.1"),
            Ok(Route::Grant {
                instance: Name::new("web").unwrap(),
                snapshot: SnapshotId(255)
            })
        );
        assert_eq!(
            p(&format!("GET /backup/v1/chunk/pi-1/{h} HTTP/1.1")),
            Ok(Route::GetChunk {
                source: Name::new("pi-1").unwrap(),
                id: [0xab; 32]
            })
        );
        for (req, status) in [
            ("POST /backup/v1/have HTTP/1.1".to_string(), 411),
            (
                "POST /backup/v1/have HTTP/1.1\r\nContent-Length: 0".into(),
                400,
            ),
            (
                "POST /backup/v1/have HTTP/1.1\r\nContent-Length: 33".into(),
                400,
            ),
            (
                format!(
                    "POST /backup/v1/have HTTP/1.1\r\nContent-Length: {}",
                    32 * 4097
                ),
                413,
            ),
            (
                format!(
                    "PUT /backup/v1/chunk/{h} HTTP/1.1\r\nContent-Length: {}",
                    MAX_CHUNK_BODY + 1
                ),
                413,
            ),
            (
                format!(
                    "PUT /backup/v1/snapshot HTTP/1.1\r\nContent-Length: {}",
                    MAX_SNAPSHOT_BODY + 1
                ),
                413,
            ),
            (
                "PUT /backup/v1/snapshot HTTP/1.1\r\nContent-Length: 3".into(),
                400,
            ),
            (
                "PUT /backup/v1/snapshot HTTP/1.1\r\nContent-Length: 9\r\nContent-Length: 8".into(),
                400,
            ),
            (
                "PUT /backup/v1/snapshot HTTP/1.1\r\nTransfer-Encoding: chunked".into(),
                400,
            ),
            (format!("GET /backup/v1/chunk/{h} HTTP/1.1"), 405),
            ("PUT /backup/v1/recovery-key HTTP/1.1".into(), 405),
            (
                format!("PUT /backup/v1/chunk/{} HTTP/1.1", h.to_uppercase()),
                404,
            ),
            (format!("GET /backup/v1/chunk/../{h} HTTP/1.1"), 404),
            ("GET /backup/v1/restore/web/ff HTTP/1.1".into(), 404),
            ("GET /backup/v1/other HTTP/1.1".into(), 404),
            ("GET /backup/v1/recovery-key HTTP/2".into(), 400),
        ] {
            assert_eq!(p(&req), Err(status), "{req}");
        }
        assert!(is_blob(b"PUT /backup/v1/x HTTP/1.1"));
        assert!(!is_blob(b"GET /artifacts/x HTTP/1.1"));
    }
}
