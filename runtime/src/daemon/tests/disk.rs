//! Daemon-level test of the partition disk walk: it runs off the loop (the daemon
//! answers `status` meanwhile), and its figure is the space really used.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hedge_wire::{Limits, Name, RequestedState};

use super::{daemon, sleep_request};
use crate::daemon::Event;

fn stopped(name: &str) -> hedge_wire::InstanceRequest {
    sleep_request(name, RequestedState::Stopped, Limits::default())
}

#[tokio::test]
async fn a_big_partition_is_walked_off_the_loop_and_billed_by_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    d.local_request(stopped("big")).unwrap();
    let name = Name::new("big").unwrap();
    let srv = d.instances.partitions.path(&name).join("srv");
    // A large tree: 40 000 empty files in 200 directories…
    for i in 0..200 {
        let sub = srv.join(format!("d{i}"));
        std::fs::create_dir(&sub).unwrap();
        for j in 0..200 {
            std::fs::File::create(sub.join(format!("f{j}"))).unwrap();
        }
    }
    // …1 MiB of data 40 directories down, and a sparse file of 1 GiB apparent size.
    let mut deep = srv.clone();
    for i in 0..40 {
        deep.push(format!("n{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("data"), vec![1u8; 1 << 20]).unwrap();
    let sparse = std::fs::File::create(srv.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    drop(sparse);

    d.start_disk_walk();
    assert!(d.monitoring.watched[&name].disk.walking);
    // The loop is free: status answers while the walk still runs on its own thread.
    let status = d.status();
    assert_eq!(status.instances[0].name, "big");
    assert!(
        d.events_rx.try_recv().is_err(),
        "the walk finished before status answered: it ran on the loop"
    );
    let ev = tokio::time::timeout(Duration::from_secs(60), d.events_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(&ev, Event::DiskWalked { name: n, .. } if *n == name));
    d.on_event(ev);
    let m = &d.monitoring.watched[&name].disk;
    assert!(!m.walking && m.walked_at.is_some());
    assert!(
        m.bytes >= 1 << 20,
        "the deep data was not counted: {}",
        m.bytes
    );
    assert!(
        m.bytes < 256 << 20,
        "the sparse file was billed: {}",
        m.bytes
    );
    assert_eq!(d.counters.disk_walks_incomplete, 0);
}
