//! Where the reconnect probe connects: the broker's addresses, looked up at most once
//! at a time.
//!
//! Contract: [`Resolver::addrs`] returns the addresses to probe now, and never has more
//! than one name lookup in flight. A broker given as an IP address is never looked up.
//! A name is looked up when there is no answer yet, [`REFRESH`] after a successful
//! lookup, or [`RETRY`] after a failed one; until an answer comes, the last good one is
//! used (empty before the first). A lookup that hangs (the DNS server is behind the same
//! cut link) therefore costs one blocked thread for the whole outage, not one per probe.
//!
//! Driven by the MQTT driver (`super::run`), which passes its clock in.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How long a successful lookup's answer is used before it is looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// How long after a failed lookup the next one starts.
pub const RETRY: Duration = Duration::from_secs(1);

/// One name lookup.
type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Starts a lookup of `(host, port)`.
type StartLookup = Box<dyn Fn(String, u16) -> Lookup + Send>;

/// The broker's addresses for the probe.
pub struct Resolver {
    host: String,
    port: u16,
    /// The addresses last looked up (or the literal one).
    cached: Vec<SocketAddr>,
    /// When the last lookup ended, and whether it succeeded.
    last: Option<(Instant, bool)>,
    in_flight: Option<JoinHandle<io::Result<Vec<SocketAddr>>>>,
    start: StartLookup,
}

impl Resolver {
    /// A resolver for `host:port` with the system's resolver.
    pub fn new(host: &str, port: u16) -> Self {
        Self::with_lookup(
            host,
            port,
            Box::new(|host: String, port: u16| -> Lookup {
                Box::pin(async move {
                    tokio::net::lookup_host((host.as_str(), port))
                        .await
                        .map(Iterator::collect)
                })
            }),
        )
    }

    fn with_lookup(host: &str, port: u16, start: StartLookup) -> Self {
        let cached = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => Vec::new(),
        };
        Resolver {
            host: host.to_owned(),
            port,
            cached,
            last: None,
            in_flight: None,
            start,
        }
    }

    fn literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The addresses to probe at `now`; collects a finished lookup and starts the next
    /// one when it is due (see the module's contract).
    pub async fn addrs(&mut self, now: Instant) -> Vec<SocketAddr> {
        if self.literal() {
            return self.cached.clone();
        }
        if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(done) = self.in_flight.take() {
                // Finished: the await returns at once.
                match done.await {
                    Ok(Ok(addrs)) if !addrs.is_empty() => {
                        self.cached = addrs;
                        self.last = Some((now, true));
                    }
                    Ok(Ok(_)) | Ok(Err(_)) | Err(_) => self.last = Some((now, false)),
                }
            }
        }
        let due = match self.last {
            None => true,
            Some((at, ok)) => now.saturating_duration_since(at) >= if ok { REFRESH } else { RETRY },
        };
        if due && self.in_flight.is_none() {
            self.in_flight = Some(tokio::spawn((self.start)(self.host.clone(), self.port)));
        }
        self.cached.clone()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // Any instant serves as the origin of the times fed in.
    #![allow(clippy::disallowed_methods)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A resolver whose lookups hang forever (`hang`) or answer 10.0.0.1 at once, and
    /// the count of lookups started.
    fn counting(host: &str, hang: bool) -> (Resolver, Arc<AtomicUsize>) {
        let started = Arc::new(AtomicUsize::new(0));
        let n = started.clone();
        let r = Resolver::with_lookup(
            host,
            8883,
            Box::new(move |_, port| -> Lookup {
                n.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))])
                })
            }),
        );
        (r, started)
    }

    #[tokio::test]
    async fn a_hanging_lookup_is_never_started_twice() {
        let (mut r, started) = counting("broker.example", true);
        let t0 = Instant::now();
        // An hour of probes every 200 ms.
        for i in 0..18_000u64 {
            let addrs = r.addrs(t0 + Duration::from_millis(200 * i)).await;
            assert!(addrs.is_empty());
            tokio::task::yield_now().await;
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_is_used_until_it_is_refreshed() {
        let (mut r, started) = counting("broker.example", false);
        let t0 = Instant::now();
        assert!(r.addrs(t0).await.is_empty());
        // Let the lookup task finish.
        while !r.in_flight.as_ref().unwrap().is_finished() {
            tokio::task::yield_now().await;
        }
        let want = vec![SocketAddr::from(([10, 0, 0, 1], 8883))];
        assert_eq!(r.addrs(t0 + Duration::from_millis(200)).await, want);
        assert_eq!(r.addrs(t0 + REFRESH - Duration::from_secs(1)).await, want);
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // Past the refresh: a second lookup, the old answer still served meanwhile.
        assert_eq!(r.addrs(t0 + REFRESH + Duration::from_secs(1)).await, want);
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_address_is_never_looked_up() {
        let (mut r, started) = counting("127.0.0.1", true);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(
                r.addrs(t0 + REFRESH * i).await,
                vec![SocketAddr::from(([127, 0, 0, 1], 8883))]
            );
        }
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }
}
