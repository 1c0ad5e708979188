//! The local API: newline-delimited JSON over a unix socket (`<state_dir>/hedge.sock`,
//! mode 0660).
//!
//! Contract: a client writes one [`ApiRequest`] as a JSON line and reads one JSON line
//! back: `{"ok":true, ...}` or `{"ok":false,"error":"..."}`. [`serve`] accepts
//! connections until shutdown and forwards each request to the daemon loop over a
//! channel; it never touches daemon state itself. A malformed line gets an error reply
//! and the connection is closed; the daemon is unaffected. Lines are bounded (1 MiB).

use std::path::Path;

use hedge_wire::InstanceRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The daemon's socket could not be reached.
    #[error("cannot reach the node daemon at {path}: {source} (is `hedge node run` running?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// I/O after connecting.
    #[error("local API: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not JSON.
    #[error("local API: bad answer: {0}")]
    Json(#[from] serde_json::Error),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApiRequest {
    /// Everything `hedge node status` shows.
    Status,
    /// The Prometheus text exposition (used by the metrics endpoint).
    Metrics,
    /// Store and apply a local request.
    Request {
        /// The request, already checked by the client (the daemon checks again).
        request: Box<InstanceRequest>,
    },
    /// Start a local instance.
    Start {
        /// Instance name.
        name: String,
    },
    /// Stop a local instance.
    Stop {
        /// Instance name.
        name: String,
    },
    /// Destroy a local instance (stop, remove its partition).
    Destroy {
        /// Instance name.
        name: String,
    },
    /// Records waiting in the outbox, oldest first.
    Outbox {
        /// First sequence number wanted.
        #[serde(default)]
        from: u64,
        /// At most this many (capped at 1000).
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Where an instance's log file is.
    LogPath {
        /// Instance name.
        name: String,
    },
}

fn default_limit() -> usize {
    100
}

/// A request travelling to the daemon loop, with the way back.
#[derive(Debug)]
pub struct ApiCall {
    /// The request.
    pub request: ApiRequest,
    /// Where the answer goes (`Ok` object fields, or an error message).
    pub reply: oneshot::Sender<Result<Value, String>>,
}

/// Accepts connections on `listener` and forwards requests to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<ApiCall>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "local API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<ApiCall>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 + 1));
    let mut line = String::new();
    let answer = match lines.read_line(&mut line).await {
        Ok(0) => return,
        Ok(n) if n > MAX_LINE => Err("request line too long".to_string()),
        Ok(_) => match serde_json::from_str::<ApiRequest>(&line) {
            Err(e) => Err(format!("malformed request: {e}")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(ApiCall { request, reply: tx }).await.is_err() {
                    Err("daemon is shutting down".to_string())
                } else {
                    rx.await
                        .unwrap_or_else(|_| Err("daemon is shutting down".into()))
                }
            }
        },
        Err(e) => Err(format!("cannot read request: {e}")),
    };
    let value = match answer {
        Ok(Value::Object(mut m)) => {
            m.insert("ok".into(), Value::Bool(true));
            Value::Object(m)
        }
        Ok(other) => serde_json::json!({"ok": true, "value": other}),
        Err(error) => serde_json::json!({"ok": false, "error": error}),
    };
    let mut out = value.to_string();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

/// Sends one request to the daemon at `socket` and returns its answer object.
pub async fn call(socket: &Path, request: &ApiRequest) -> Result<Value, ApiError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    let v: Value = serde_json::from_str(&answer)?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v)
    } else {
        Err(ApiError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request refused")
                .to_string(),
        ))
    }
}
