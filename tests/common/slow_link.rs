//! A slow link for end-to-end tests: a TCP proxy on loopback that holds every chunk
//! for a fixed delay in each direction (`tc netem` is not available here), so a TLS
//! handshake takes several delays.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The proxy; it stops accepting when dropped (open connections end with their peers).
pub struct SlowLink {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SlowLink {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:to`, each way `delay` late.
    pub fn start(to: u16, delay: Duration) -> SlowLink {
        // A pool port: tests cut this one with nftables (see `ports`).
        let listener = TcpListener::bind(("127.0.0.1", super::ports::free_port())).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                            continue;
                        };
                        pipe(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            delay,
                        );
                        pipe(server, client, delay);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SlowLink { port, stop }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
#[allow(clippy::disallowed_methods)] // a test proxy: delays bytes by real time
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
