//! What a process tree uses (CPU ticks, resident memory), from `/proc`, for usage
//! accounting. Who a process is (boot, start time, uids) is
//! `crate::supervisor::process_identity`.
//!
//! Contract: [`parse_stat`] is a pure parser of one `/proc/PID/stat` line; [`scan`]
//! reads every process once and [`tree_usage`] sums, per process group, CPU ticks
//! (utime+stime of every member, plus the leader's cutime+cstime so reaped children
//! still count) and resident bytes. Processes that vanish mid-scan are skipped.

use std::collections::BTreeMap;

/// The fields of `/proc/PID/stat` accounting needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Process id.
    pub pid: u32,
    /// Process group.
    pub pgrp: u32,
    /// User + system ticks.
    pub ticks: u64,
    /// Waited-for children's user + system ticks.
    pub child_ticks: u64,
    /// Start time, ticks since boot.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

/// Parses one stat line (`None` if malformed).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is f[N - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        pgrp: u32::try_from(num(5)?).ok()?,
        ticks: num(14)? + num(15)?,
        child_ticks: num(16)? + num(17)?,
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

/// Reads every process's stat.
pub fn scan() -> Vec<Stat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut text = Vec::with_capacity(STAT_READ);
    rd.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| {
            read_small(&e.path().join("stat"), &mut text).ok()?;
            parse_stat(std::str::from_utf8(&text).ok()?)
        })
        .collect()
}

/// Bytes asked of each `read` of a stat file: a whole line at once (a stat line is
/// about 300 bytes, at most ~1 KiB).
const STAT_READ: usize = 1024;

/// Reads `path` into `buf` (cleared first) with [`STAT_READ`]-byte reads until end of
/// file: open, one read, the read that sees the end, close. `fs::read_to_string` would
/// `statx` the file, find its size 0 (as every `/proc` file says) and grow from a
/// 32-byte read, five reads per stat line: for each process, at every sample.
fn read_small(path: &std::path::Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    let mut f = std::fs::File::open(path)?;
    let mut chunk = [0u8; STAT_READ];
    loop {
        match f.read(&mut chunk)? {
            0 => return Ok(()),
            n => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// What one process group uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// CPU ticks of the group (see the module contract).
    pub ticks: u64,
    /// Resident bytes of all members.
    pub rss_bytes: u64,
    /// Start time of the leader, when it is alive.
    pub leader_start: Option<u64>,
}

/// Sums `stats` per process group.
pub fn tree_usage(stats: &[Stat], page_size: u64) -> BTreeMap<u32, TreeUsage> {
    let mut out: BTreeMap<u32, TreeUsage> = BTreeMap::new();
    for s in stats {
        let u = out.entry(s.pgrp).or_default();
        u.ticks += s.ticks;
        u.rss_bytes += s.rss_pages * page_size;
        if s.pid == s.pgrp {
            u.ticks += s.child_ticks;
            u.leader_start = Some(s.start_ticks);
        }
    }
    out
}

/// Clock ticks per second and the page size of this system.
pub fn system_units() -> (u64, u64) {
    use nix::unistd::{sysconf, SysconfVar};
    let tck = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    // Both are at least 1 here, so the conversions cannot fail.
    (
        u64::try_from(tck.max(1)).unwrap_or(100),
        u64::try_from(page.max(1)).unwrap_or(4096),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LINE: &str =
        "4242 (py thon) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 7 3 20 0 1 0 987654 1000 2560";

    #[test]
    fn parses_the_fields_it_needs() {
        let s = parse_stat(LINE).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 4242,
                pgrp: 4242,
                ticks: 200,
                child_ticks: 10,
                start_ticks: 987654,
                rss_pages: 2560
            }
        );
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn a_file_longer_than_one_read_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long");
        let long: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz"
            .iter()
            .copied()
            .cycle()
            .take(STAT_READ * 3 + 7)
            .collect();
        std::fs::write(&path, &long).unwrap();
        let mut buf = b"left over".to_vec();
        read_small(&path, &mut buf).unwrap();
        assert_eq!(buf, long);
        std::fs::write(&path, b"short").unwrap();
        read_small(&path, &mut buf).unwrap();
        assert_eq!(buf, b"short");
    }

    #[test]
    fn sums_per_group_with_the_leaders_reaped_children() {
        let leader = parse_stat(LINE).unwrap();
        let child = Stat {
            pid: 4243,
            pgrp: 4242,
            ticks: 30,
            child_ticks: 99,
            start_ticks: 1,
            rss_pages: 10,
        };
        let other = Stat {
            pid: 7,
            pgrp: 7,
            ticks: 5,
            child_ticks: 0,
            start_ticks: 2,
            rss_pages: 1,
        };
        let u = tree_usage(&[leader, child, other], 4096);
        assert_eq!(u[&4242].ticks, 200 + 10 + 30);
        assert_eq!(u[&4242].rss_bytes, (2560 + 10) * 4096);
        assert_eq!(u[&4242].leader_start, Some(987654));
        assert_eq!(u[&7].ticks, 5);
    }

    #[test]
    fn this_process_is_scanned() {
        let me = std::process::id();
        let found = scan().into_iter().find(|s| s.pid == me).unwrap();
        let own = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!((found.pgrp, found.start_ticks), (own.pgrp, own.start_ticks));
        let (tck, page) = system_units();
        assert!(tck >= 1 && page >= 1024);
    }
}
