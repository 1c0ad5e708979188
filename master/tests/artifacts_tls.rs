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
    let task = tokio::spawn(artifacts::serve(
        listener,
        server,
        dir.join("artifacts"),
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
        format!("/artifacts/{}", "00".repeat(32)),
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
