//! The artifact endpoint over real TLS: an enrolled node's certificate downloads (whole,
//! or the rest from an offset); no client certificate, or one from another fleet's CA,
//! gets nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hedge_master::artifacts;
use hedge_master::pki::{self, Bundle, InitOptions};
use hedge_wire::Name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn master(dir: &std::path::Path) {
    pki::init(dir, &InitOptions::default()).unwrap();
}

fn bundle(dir: &std::path::Path, node: &str) -> Bundle {
    let out = dir.join(format!("{node}.bundle"));
    pki::enroll(dir, &Name::new(node).unwrap(), &out).unwrap();
    Bundle::load(&out).unwrap()
}

/// GET `path` with `range`; the whole answer (head and body), or the error.
async fn get(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    range: Option<u64>,
) -> std::io::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    let range = range.map_or(String::new(), |r| format!("Range: bytes={r}-\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// Authorizes `node` for `sha` only.
fn only(node: &'static str, sha: [u8; 32]) -> artifacts::Authorize {
    Arc::new(move |n: &Name, s: &[u8; 32]| n.as_str() == node && s == &sha)
}

fn split(answer: &[u8]) -> (String, Vec<u8>) {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8(answer[..end].to_vec()).unwrap(),
        answer[end + 4..].to_vec(),
    )
}

#[tokio::test]
async fn only_fleet_certificates_download_and_ranges_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    master(&dir);
    let file = tmp.path().join("a.tar.gz");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let (sha, _) = artifacts::supply(&dir.join("artifacts"), &file).unwrap();
    let path = format!("/artifacts/{}", artifacts::hex(&sha));

    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let server =
        artifacts::server_config(&read("ca.crt"), &read("broker.crt"), &read("broker.key"))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // node-a's desired state names the artifact.
    let task = tokio::spawn(artifacts::serve(
        listener,
        server,
        dir.join("artifacts"),
        only("node-a", sha),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let b = bundle(&dir, "node-a");
    let node =
        hedge_uplink::tls::client_config(b.ca_cert.as_bytes(), b.cert.as_bytes(), b.key.as_bytes())
            .unwrap();

    let (head, body) = split(&get(port, node.clone(), &path, None).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, data);

    let (head, body) = split(&get(port, node.clone(), &path, Some(60_000)).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 206 "), "{head}");
    assert!(
        head.contains("Content-Range: bytes 60000-99999/100000"),
        "{head}"
    );
    assert_eq!(body, &data[60_000..]);

    let (head, body) = split(&get(port, node.clone(), &path, Some(100_000)).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 416 "), "{head}");
    assert!(head.contains("Content-Range: bytes */100000"), "{head}");
    assert!(body.is_empty());

    for p in [
        "/artifacts/../ca.key".to_string(),
        "/master.toml".to_string(),
    ] {
        let (head, _) = split(&get(port, node.clone(), &p, None).await.unwrap());
        assert!(head.starts_with("HTTP/1.1 404 "), "{p}: {head}");
    }

    // No client certificate: the handshake or the first read fails, nothing comes.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(b.ca_cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    match get(port, anonymous, &path, None).await {
        Err(_) => {}
        Ok(answer) => assert!(answer.is_empty(), "served without a client certificate"),
    }

    // A certificate of another fleet (trusting this fleet's CA, to get that far).
    let other = tmp.path().join("other");
    master(&other);
    let ob = bundle(&other, "node-a");
    let stranger = hedge_uplink::tls::client_config(
        b.ca_cert.as_bytes(),
        ob.cert.as_bytes(),
        ob.key.as_bytes(),
    )
    .unwrap();
    match get(port, stranger, &path, None).await {
        Err(_) => {}
        Ok(answer) => assert!(answer.is_empty(), "served to another fleet's node"),
    }

    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A master directory, one supplied artifact, its endpoint serving it to `node-a` only,
/// and enrolled `node-a` and `node-b` client configurations.
struct Endpoint {
    _tmp: tempfile::TempDir,
    port: u16,
    path: String,
    data: Vec<u8>,
    stats: Arc<artifacts::Stats>,
    a: Arc<rustls::ClientConfig>,
    b: Arc<rustls::ClientConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        master(&dir);
        let file = tmp.path().join("a.tar.gz");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let (sha, _) = artifacts::supply(&dir.join("artifacts"), &file).unwrap();
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let server =
            artifacts::server_config(&read("ca.crt"), &read("broker.crt"), &read("broker.key"))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(artifacts::Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(artifacts::serve(
            listener,
            server,
            dir.join("artifacts"),
            only("node-a", sha),
            stats.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let client = |node: &str| {
            let b = bundle(&dir, node);
            hedge_uplink::tls::client_config(
                b.ca_cert.as_bytes(),
                b.cert.as_bytes(),
                b.key.as_bytes(),
            )
            .unwrap()
        };
        let (a, b) = (client("node-a"), client("node-b"));
        Endpoint {
            _tmp: tmp,
            port,
            path: format!("/artifacts/{}", artifacts::hex(&sha)),
            data,
            stats,
            a,
            b,
            stop: Some(stop),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// An idle TCP connection to `port` from loopback address `from` (no TLS, nothing sent).
async fn idle(from: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
    s.connect((std::net::Ipv4Addr::LOCALHOST, port).into())
        .await
        .unwrap()
}

#[tokio::test]
async fn idle_connections_do_not_starve_a_real_download() {
    let e = Endpoint::start().await;
    // 100 idle connections from 10 addresses (under the per-address cap), and 40 more
    // from one address (over it): more than MAX_CONNECTIONS in all.
    let mut held = Vec::new();
    for i in 0..100u8 {
        held.push(idle([127, 0, 0, 2 + i % 10], e.port).await);
    }
    for _ in 0..40 {
        held.push(idle([127, 0, 0, 99], e.port).await);
    }
    // Well within the handshake timeout: the download does not wait for idle ones to go.
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        artifacts::HANDSHAKE_TIMEOUT / 2,
        get(e.port, e.a.clone(), &e.path, None),
    )
    .await
    .expect("the download waited for idle connections")
    .unwrap();
    let (head, body) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, e.data);
    assert!(started.elapsed() < artifacts::HANDSHAKE_TIMEOUT);
    // The single address was capped; the idle connections are still open.
    assert!(
        e.stats
            .busy_handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 40 - artifacts::MAX_HANDSHAKES_PER_ADDR as u64
    );
    drop(held);
}

#[tokio::test]
async fn a_node_gets_only_artifacts_its_desired_state_names() {
    let e = Endpoint::start().await;
    let (head, _) = split(&get(e.port, e.b.clone(), &e.path, None).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Not named for anyone: 403 too, whether it exists or not.
    let missing = format!("/artifacts/{}", "00".repeat(32));
    let (head, _) = split(&get(e.port, e.a.clone(), &missing, None).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(
        e.stats.forbidden.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let (head, body) = split(&get(e.port, e.a.clone(), &e.path, None).await.unwrap());
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, e.data);
}
