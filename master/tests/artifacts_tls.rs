//! The artifact endpoint over real TLS: an enrolled node's certificate downloads (whole,
//! or the rest from an offset); no client certificate, or one from another fleet's CA,
//! gets nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use hedge_master::artifacts;
use hedge_master::pki::{self, InitOptions};
use hedge_wire::Name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn master(dir: &std::path::Path) {
    pki::init(dir, &InitOptions::default()).unwrap();
}

fn bundle(dir: &std::path::Path, node: &str) -> common::Creds {
    common::enroll(dir, node)
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
        None,
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
        Ok(answer) => {
            let (head, body) = split(&answer);
            assert!(
                head.starts_with("HTTP/1.1 403 "),
                "served without a client certificate: {head}"
            );
            assert!(body.is_empty());
        }
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
            None,
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
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
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

async fn post(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    body: &str,
) -> std::io::Result<(String, Vec<u8>)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    s.write_all(
        format!(
            "POST /enroll HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(split(&out))
}

#[tokio::test]
async fn enrollment_by_csr_is_single_use_and_renewal_needs_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    master(&dir);
    common::enable_endpoint(&dir);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let server =
        artifacts::server_config(&read("ca.crt"), &read("broker.crt"), &read("broker.key"))
            .unwrap();
    let revoked = Arc::new(hedge_master::revocation::Revoked::new(&dir));
    let enroller = Arc::new(
        hedge_master::enrollment::Enroller::load(&dir, 3600, 60, revoked.clone()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(artifacts::serve(
        listener,
        server,
        dir.join("artifacts"),
        hedge_master::revocation::guard(revoked, Arc::new(|_: &_, _: &_| true)),
        Default::default(),
        Some(enroller.clone()),
        async {
            let _ = stopped.await;
        },
    ));

    // The bundle holds a token and no key.
    let out = dir.join("n.bundle");
    pki::enroll(&dir, &hedge_wire::Name::new("n-1").unwrap(), &out).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let b = hedge_master::pki::Bundle::load(&out).unwrap();
    assert_eq!(b.url, "https://127.0.0.1:8443");
    let tokens = std::fs::read_dir(dir.join("tokens")).unwrap().count();
    assert_eq!(tokens, 1);
    assert!(
        !std::fs::read_to_string(
            std::fs::read_dir(dir.join("tokens"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
        )
        .unwrap()
        .contains(&b.token),
        "the master keeps only the token's hash"
    );

    // No client certificate yet: server-authenticated TLS only.
    let anonymous = hedge_uplink::tls::server_only_config(b.ca_cert.as_bytes()).unwrap();
    let (csr, key) = common::csr("n-1");
    let body = format!("token {}\n{csr}", b.token);
    let (head, cert) = post(port, anonymous.clone(), &body).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let cert = String::from_utf8(cert).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    // It is a fleet certificate for the node's own key: it downloads.
    let node =
        hedge_uplink::tls::client_config(b.ca_cert.as_bytes(), cert.as_bytes(), key.as_bytes())
            .unwrap();
    let (head, _) = split(
        &get(port, node, &format!("/artifacts/{}", "00".repeat(32)), None)
            .await
            .unwrap(),
    );
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");

    // The token is spent: a second enrollment (even with another key) is refused.
    let (csr2, _) = common::csr("n-1");
    let (head, _) = post(
        port,
        anonymous.clone(),
        &format!("token {}\n{csr2}", b.token),
    )
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // A token for n-1 cannot enroll another node.
    let out2 = dir.join("m.bundle");
    pki::enroll(&dir, &hedge_wire::Name::new("n-1").unwrap(), &out2).unwrap();
    let b2 = hedge_master::pki::Bundle::load(&out2).unwrap();
    let (other, _) = common::csr("n-2");
    let (head, _) = post(
        port,
        anonymous.clone(),
        &format!("token {}\n{other}", b2.token),
    )
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");

    // Renewal: the same key renews without a token; another key does not.
    let (head, renewed) = post(port, anonymous.clone(), &csr).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_ne!(String::from_utf8(renewed).unwrap(), cert);
    let (head, _) = post(port, anonymous.clone(), &csr2).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Garbage is a 400.
    let (head, _) = post(port, anonymous.clone(), "token zz\nnot a csr")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(enroller.refused_total(), 4);

    // A revoked node renews no more.
    hedge_master::revocation::revoke(&dir, &hedge_wire::Name::new("n-1").unwrap()).unwrap();
    let (head, _) = post(port, anonymous, &csr).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");

    stop.send(()).unwrap();
    task.await.unwrap();
}
