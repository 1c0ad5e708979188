//! The local API: newline-delimited JSON over a unix socket (`<state_dir>/hedge.sock`).
//!
//! Contract: a client writes one [`ApiRequest`] as a JSON line and reads one JSON line
//! back: `{"ok":true, ...}` or `{"ok":false,"error":"...","refusal":{...}}` — the
//! types of [`crate::local_api`], which this module only carries. [`serve`] accepts
//! connections until shutdown and forwards each request to the daemon loop over a
//! channel; it never touches daemon state itself. A malformed line gets an error reply
//! and the connection is closed; the daemon is unaffected. Lines are bounded (1 MiB).
//!
//! Who may talk to it: [`bind`] creates the socket in a private (0700) directory, gives
//! it its final mode there — 0600, or 0660 owned by `[api] group` — and only then
//! renames it into place, so it is never reachable with a looser mode. [`serve`] then
//! checks each peer's `SO_PEERCRED` ([`Admission::admit`]): root, the daemon's own uid,
//! or a member of the API group; never a partition uid. A refused peer gets
//! `{"ok":false,"refused":...}` and is counted ([`ApiStats`]) and logged at most every
//! ten seconds. At most [`MAX_CONNECTIONS`] connections are served at once (more are
//! refused the same way) and each gets [`REQUEST_TIMEOUT`] to send its line, as long
//! again for the answer — [`LONG_REQUEST_TIMEOUT`] for a snapshot or a restore
//! ([`ApiRequest::is_long`]) — and as long again to take it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::RateLimit;
use crate::local_api::{Accepted, Answer, ApiRequest, Refusal, Refused};

/// Longest request line accepted.
pub const MAX_LINE: usize = 1 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time one connection gets to send its request and take its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the answer to a long request (a snapshot, a restore) may take.
pub const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The daemon's socket could not be reached.
    #[error("cannot reach the node daemon at {path}: {source} (is `hedge node run` running?)")]
    Connect {
        /// The socket tried (`<state_dir>/hedge.sock` of the config given).
        path: String,
        /// What `connect` said: usually not found or refused, no daemon runs.
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
    Refused(Refusal),
    /// Another daemon already answers on the socket.
    #[error("a node daemon already listens on {0}")]
    AlreadyRunning(String),
    /// The socket could not be created.
    #[error("cannot create the API socket {path}: {source}")]
    Bind {
        /// The socket to create.
        path: String,
        /// The failed step's error (bind, chown, chmod or rename).
        source: std::io::Error,
    },
}

/// A peer's credentials, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The uid the peer process runs as.
    pub uid: u32,
    /// Its primary gid (group membership beyond it is looked up when needed).
    pub gid: u32,
}

/// Who the API admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The daemon's effective uid.
    pub own_uid: u32,
    /// The `[api] group` gid.
    pub group: Option<u32>,
    /// The partition uid range (inclusive).
    pub partitions: (u32, u32),
}

impl Admission {
    /// The rules for `cfg`, with the daemon's current uid.
    pub fn from_config(cfg: &crate::config::NodeConfig) -> Self {
        Admission {
            own_uid: nix::unistd::geteuid().as_raw(),
            group: cfg.api_gid(),
            partitions: (cfg.partitions.uid_min, cfg.partitions.uid_max),
        }
    }

    /// Decides for `peer`; `in_group` says whether it is a member of the API group
    /// (asked only when needed). Pure but for what `in_group` does.
    pub fn admit(&self, peer: Peer, in_group: impl FnOnce(u32) -> bool) -> Result<(), Refusal> {
        if peer.uid != 0 && peer.uid >= self.partitions.0 && peer.uid <= self.partitions.1 {
            return Err(Refusal::Partition { uid: peer.uid });
        }
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Ok(());
        }
        match self.group {
            Some(g) if peer.gid == g || in_group(g) => Ok(()),
            _ => Err(Refusal::NotAllowed {
                uid: peer.uid,
                gid: peer.gid,
            }),
        }
    }
}

/// Whether the user `uid` is listed as a member of group `gid` (`/etc/group`).
fn member_of(uid: u32, gid: u32) -> bool {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten();
    match (user, group) {
        (Some(u), Some(g)) => u.gid.as_raw() == gid || g.mem.contains(&u.name),
        _ => false,
    }
}

/// What the API server counts; shared with the daemon loop for `status` and metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    refused: AtomicU64,
    log: Mutex<RateLimit>,
}

impl ApiStats {
    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, why: &Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let allowed = self
            .log
            .lock()
            .map(|mut l| l.allow(super::monotonic_now()))
            .unwrap_or(None);
        if let Some(suppressed) = allowed {
            tracing::warn!(reason = %why, suppressed, "local API connection refused");
        }
    }
}

/// Creates the API socket at `path` with its final mode from the start: 0660 owned by
/// group `gid` when given, else 0600. A stale socket (nobody answering) is replaced.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, ApiError> {
    let shown = || path.display().to_string();
    let err = |source| ApiError::Bind {
        path: shown(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::AlreadyRunning(shown()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_else(|| "hedge.sock".as_ref());
    let private: PathBuf = parent.join(format!(
        ".{}.{}.d",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    if std::fs::symlink_metadata(&private).is_ok() {
        std::fs::remove_dir_all(&private).map_err(err)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let result = (|| {
        let inner = private.join(file_name);
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        if let Some(g) = gid {
            std::os::unix::fs::chown(&inner, None, Some(g))?;
        }
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = result.map_err(err)?;
    UnixListener::from_std(listener).map_err(err)
}

/// A request travelling to the daemon loop, with the way back.
#[derive(Debug)]
pub struct ApiCall {
    /// What the client asked, already parsed.
    pub request: ApiRequest,
    /// Where the answer goes; dropping it answers "daemon is shutting down".
    pub reply: oneshot::Sender<Result<Answer, Refusal>>,
}

/// Accepts connections on `listener`, admits peers by `admission`, and forwards
/// requests to `calls`.
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<ApiCall>,
    admission: Admission,
    stats: Arc<ApiStats>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_log = RateLimit::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(suppressed) = accept_log.allow(super::monotonic_now()) {
                    tracing::warn!(error = %e, suppressed, "local API accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let verdict = match stream.peer_cred() {
            Ok(c) => admission.admit(
                Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                },
                |g| member_of(c.uid(), g),
            ),
            Err(_) => Err(Refusal::NoCredentials),
        };
        let permit = match verdict {
            Ok(()) => slots.clone().try_acquire_owned().map_err(|_| Refusal::Busy),
            Err(r) => Err(r),
        };
        match permit {
            Ok(permit) => {
                let calls = calls.clone();
                tokio::spawn(async move {
                    // Each step of `connection` is bounded; this bounds their sum.
                    let most = REQUEST_TIMEOUT * 2 + LONG_REQUEST_TIMEOUT;
                    let _ = tokio::time::timeout(most, connection(stream, calls)).await;
                    drop(permit);
                });
            }
            Err(why) => {
                stats.refuse(&why);
                // One short answer that fits the socket buffer; never waits on the peer.
                let mut line = refused_line(why);
                line.push('\n');
                let _ = stream.try_write(line.as_bytes());
                drop(stream);
            }
        }
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<ApiCall>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 + 1));
    let mut line = String::new();
    let Ok(read) = tokio::time::timeout(REQUEST_TIMEOUT, lines.read_line(&mut line)).await else {
        return;
    };
    let answer = match read {
        Ok(0) => return,
        Ok(n) if n > MAX_LINE => Err(Refusal::TooLong),
        Ok(_) => match serde_json::from_str::<ApiRequest>(&line) {
            Err(e) => Err(Refusal::Malformed {
                reason: e.to_string(),
            }),
            Ok(request) => {
                let limit = if request.is_long() {
                    LONG_REQUEST_TIMEOUT
                } else {
                    REQUEST_TIMEOUT
                };
                let (tx, rx) = oneshot::channel();
                let asked = async {
                    if calls.send(ApiCall { request, reply: tx }).await.is_err() {
                        Err(Refusal::ShuttingDown)
                    } else {
                        rx.await.unwrap_or(Err(Refusal::ShuttingDown))
                    }
                };
                match tokio::time::timeout(limit, asked).await {
                    Ok(answer) => answer,
                    Err(_) => return,
                }
            }
        },
        Err(e) => Err(Refusal::Unreadable {
            reason: e.to_string(),
        }),
    };
    let mut out = match answer.map(|a| Accepted::new(&a).to_value()) {
        Ok(Ok(v)) => v.to_string(),
        Ok(Err(e)) => refused_line(Refusal::Unanswerable {
            reason: e.to_string(),
        }),
        Err(why) => refused_line(why),
    };
    out.push('\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(out.as_bytes())).await;
}

/// The one-line JSON of a refusal (keys sorted, as every answer's).
fn refused_line(why: Refusal) -> String {
    serde_json::to_value(Refused::from(why))
        .map(|v| v.to_string())
        .unwrap_or_else(|_| r#"{"error":"refused","ok":false}"#.to_string())
}

/// Sends one request to the daemon at `socket` and returns its answer as `T` (the
/// answer type [`ApiRequest`] names for that request).
pub async fn call<T: DeserializeOwned>(socket: &Path, request: &ApiRequest) -> Result<T, ApiError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    // A refusing daemon answers and closes without reading: read its answer even if
    // the request could not be written.
    let sent = write.write_all(line.as_bytes()).await;
    let mut answer = String::new();
    let got = BufReader::new(read).read_line(&mut answer).await;
    if answer.is_empty() {
        sent?;
        got?;
    }
    let v: Value = serde_json::from_str(&answer)?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(serde_json::from_value(v)?)
    } else {
        let refused: Refused = serde_json::from_value(v)?;
        Err(ApiError::Refused(refused.refusal))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::MetadataExt;

    use super::*;

    const RULES: Admission = Admission {
        own_uid: 0,
        group: Some(1234),
        partitions: (20000, 20999),
    };

    #[test]
    fn admission_rules() {
        let never = |_| panic!("membership asked needlessly");
        let peer = |uid, gid| Peer { uid, gid };
        assert_eq!(RULES.admit(peer(0, 0), never), Ok(()));
        assert_eq!(RULES.admit(peer(1000, 1234), |_| false), Ok(()));
        assert_eq!(RULES.admit(peer(1000, 100), |g| g == 1234), Ok(()));
        assert_eq!(
            RULES.admit(peer(1000, 100), |_| false),
            Err(Refusal::NotAllowed {
                uid: 1000,
                gid: 100
            })
        );
        // A partition uid is refused even with the group as its gid.
        assert_eq!(
            RULES.admit(peer(20000, 1234), never),
            Err(Refusal::Partition { uid: 20000 })
        );
        assert_eq!(
            RULES.admit(peer(20999, 0), never),
            Err(Refusal::Partition { uid: 20999 })
        );
        // Without a group only root and the daemon's own user get in.
        let own = Admission {
            own_uid: 1000,
            group: None,
            partitions: (20000, 20999),
        };
        assert_eq!(own.admit(peer(1000, 1000), never), Ok(()));
        assert!(own.admit(peer(1001, 1000), |_| true).is_err());
    }

    #[tokio::test]
    async fn socket_is_born_with_its_final_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hedge.sock");
        let l = bind(&path, None).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // The private directory it was made in is gone.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("hedge.sock")]);
        // A second daemon is refused while this one listens…
        assert!(matches!(
            bind(&path, None),
            Err(ApiError::AlreadyRunning(_))
        ));
        drop(l);
        // …and a stale socket is replaced, here group-owned.
        let gid = nix::unistd::getegid().as_raw();
        let _l = bind(&path, Some(gid)).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o660, gid));
    }

    async fn answer_line(stream: UnixStream, request: Option<&str>) -> Value {
        let (read, mut write) = stream.into_split();
        if let Some(r) = request {
            write.write_all(r.as_bytes()).await.unwrap();
        }
        let mut line = String::new();
        // No answer at all (e.g. an unbounded server waiting for the line) fails here.
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(read).read_line(&mut line),
        )
        .await
        .expect("no answer")
        .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// More than MAX_CONNECTIONS at once are refused (typed, counted); an idle client
    /// loses its slot after REQUEST_TIMEOUT.
    #[tokio::test(start_paused = true)]
    async fn connections_are_bounded_in_number_and_time() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hedge.sock");
        let listener = bind(&path, None).unwrap();
        let (tx, mut rx) = mpsc::channel::<ApiCall>(4);
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let answered = crate::local_api::Requested {
                    name: "answered".into(),
                };
                let _ = call.reply.send(Ok(Answer::Requested(answered)));
            }
        });
        let stats = Arc::new(ApiStats::default());
        let admission = Admission {
            own_uid: nix::unistd::geteuid().as_raw(),
            group: None,
            partitions: (u32::MAX - 1, u32::MAX - 1),
        };
        tokio::spawn(serve(listener, tx, admission, stats.clone()));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        let extra = UnixStream::connect(&path).await.unwrap();
        let v = answer_line(extra, None).await;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["refused"], true, "{v}");
        assert_eq!(stats.refused(), 1);
        // The idle clients time out and are closed: their slots are free again.
        tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_secs(1)).await;
        for s in idle {
            let mut buf = [0u8; 1];
            let mut s = s;
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed");
        }
        let next = UnixStream::connect(&path).await.unwrap();
        let v = answer_line(next, Some("{\"op\":\"status\"}\n")).await;
        assert_eq!(v["name"], "answered", "{v}");
        assert_eq!(stats.refused(), 1);
    }
}
