//! Loopback TCP ports for test brokers, masters and proxies, exclusive across every test
//! process on the host.
//!
//! Tests run in parallel, one process each (nextest), and some cut a port with nftables
//! in the host's network namespace. A port taken with `bind(0)` comes from the kernel's
//! ephemeral range, the same range every `connect` picks its source port from, so a cut
//! on such a port could also swallow another test's unrelated connection that happened
//! to get it as its source port (its SYN dropped: a 127 s hang). The ports here come from
//! below the ephemeral range instead, in blocks held by an advisory lock on a file named
//! for the block: no two live test processes get the same port, and no cut can match a
//! source port the kernel hands out. The kernel drops the locks when the process ends.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

/// The first port of the pool (well below Linux's default ephemeral range, 32768..).
const FIRST: u16 = 20_000;
/// Ports per block; a process takes another block when it has used one.
const SIZE: u16 = 32;
/// Blocks in the pool: 20000..31999.
const COUNT: u16 = 375;

struct Pool {
    /// The next port to hand out and the end of the current block.
    next: u16,
    end: u16,
    held: Vec<Flock<std::fs::File>>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    next: 0,
    end: 0,
    held: Vec::new(),
});

/// A loopback TCP port no other test process holds, free to bind now.
pub fn free_port() -> u16 {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        while pool.next < pool.end {
            let port = pool.next;
            pool.next += 1;
            // Something outside the tests (or a process a killed run left) may hold it.
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        let (lo, lock) = take_block(u32::try_from(pool.held.len()).unwrap());
        pool.held.push(lock);
        pool.next = lo;
        pool.end = lo + SIZE;
    }
}

/// The first free block, starting from a point that differs between processes.
fn take_block(taken: u32) -> (u16, Flock<std::fs::File>) {
    let count = u32::from(COUNT);
    let (n, lock) = lock_first_free("hedge-test-ports", count, std::process::id() + taken);
    (FIRST + u16::try_from(n).unwrap() * SIZE, lock)
}

/// The first of `count` numbered slots (files in the temp dir's `dir`) that no process
/// holds, from `start` on (modulo `count`), and the lock that holds it for this
/// process: an advisory lock the kernel drops when the process ends, however it ends.
/// Also holds the partition uid ranges of test nodes (`super::Node`).
pub fn lock_first_free(dir: &str, count: u32, start: u32) -> (u32, Flock<std::fs::File>) {
    let dir = std::env::temp_dir().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..count {
        let n = (start + k) % count;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(n.to_string()))
            .unwrap();
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return (n, lock);
        }
    }
    panic!("all {count} slots of {} are held", dir.display());
}
