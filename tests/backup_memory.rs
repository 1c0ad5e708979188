//! Memory bound (issue #14): backing up a 1 GiB partition raises the node daemon's RSS by
//! at most 16 MiB.
//!
//! A real node daemon; an instance whose `srv/` holds 1 GiB (8 files of 128 MiB) made of
//! one 4 MiB seeded pseudo-random block repeated: every byte is read, chunked, keyed,
//! encrypted and hashed and the manifest lists every chunk (~16k references), but only
//! ~4 MiB of distinct chunks reach the disk, which keeps this test to seconds instead of
//! minutes of fsyncs (writing 1 GiB of distinct chunks is what `scripts/bench --only
//! backup` measures); the daemon's VmRSS read from /proc/PID/status just before
//! `hedge node backup NAME`, then sampled every 10 ms until the snapshot is listed. The
//! rise (peak - before) must be at most 16 MiB; the snapshot must count the whole GiB.
//! Figures printed (`--nocapture`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::backup as bk;
use common::{wait_for, Node};

const GIB: u64 = 1 << 30;
const BOUND_KIB: u64 = 16 * 1024;

#[test]
fn backing_up_a_gib_raises_rss_by_at_most_16_mib() {
    let mut node = Node::init();
    node.start();
    node.request_sleep("big", "100000", &[]);
    node.running_pid("big", None);
    let total = bk::fill_periodic(&node.partition("big").join("srv"), 8, GIB / 8, 4 << 20, 3);
    let pid = node.daemon.as_ref().unwrap().id();
    // The daemon settled: its RSS once the instance runs and a status call was answered.
    node.status();
    let before = bk::rss_kib(pid).unwrap();
    let sampler = bk::RssSampler::start(pid, Duration::from_millis(10));
    let id = bk::take_backup(&node, "big");
    let snap = wait_for("the snapshot listed", Duration::from_secs(1800), || {
        let list = bk::local_snapshots(&node, "big");
        list.iter()
            .find(|s| s["id"].as_str() == Some(id.as_str()))
            .cloned()
    });
    let (peak, samples) = sampler.finish();
    let after = bk::rss_kib(pid).unwrap();
    let rise = peak.saturating_sub(before);
    println!(
        "memory: 1 GiB backup ({} B, {} chunks): daemon VmRSS before {before} KiB, peak \
         {peak} KiB over {samples} samples (rise {rise} KiB, bound {BOUND_KIB} KiB), after \
         {after} KiB",
        bk::field(&snap, "bytes"),
        snap["chunks"]
    );
    assert!(
        bk::field(&snap, "bytes") >= total,
        "the whole GiB read: {snap}"
    );
    assert!(samples > 0, "RSS was sampled");
    assert!(
        rise <= BOUND_KIB,
        "backing up 1 GiB raised the daemon's RSS by {rise} KiB (> {BOUND_KIB} KiB)"
    );
}
