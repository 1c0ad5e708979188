//! Resource limits of a partition: rlimits for the instance's process (memory and CPU
//! go to its cgroup, see [`super::cgroup`]).
//!
//! Contract: [`rlimits`] is pure; the supervisor applies its result in the child before
//! `exec`. [`parse_size`] reads sizes such as `64M` for the request-file parser.

use hedge_wire::types::Limits;
use nix::sys::resource::Resource;

use super::PartitionError;

/// The rlimits to set in the instance's process: `RLIMIT_NOFILE` and `RLIMIT_NPROC`
/// (soft = hard = the value) for those the request sets. Memory is not an rlimit here;
/// it goes to the cgroup. Note `RLIMIT_NPROC` counts every process of the real uid, so
/// it is per instance only when the node runs as root (one uid per partition).
pub fn rlimits(l: &Limits) -> Vec<(Resource, u64)> {
    let mut out = Vec::new();
    if let Some(n) = l.nofile {
        out.push((Resource::RLIMIT_NOFILE, n));
    }
    if let Some(n) = l.nproc {
        out.push((Resource::RLIMIT_NPROC, n));
    }
    out
}

/// Parses a size in bytes: digits with an optional binary unit `K`, `M`, `G` or `T`
/// (any case, × 1024ⁿ), optionally followed by `i`, `iB` or `B`; a bare `B` means bytes.
/// Examples: `1048576`, `512K`, `64M`, `64MiB`, `1G`. Overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, PartitionError> {
    let bad = || PartitionError::BadSize(s.chars().take(64).collect());
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start();
    let (shift, rest) = match unit.as_bytes().first().map(u8::to_ascii_uppercase) {
        None => (0, ""),
        Some(b'K') => (10, &unit[1..]),
        Some(b'M') => (20, &unit[1..]),
        Some(b'G') => (30, &unit[1..]),
        Some(b'T') => (40, &unit[1..]),
        Some(b'B') if unit.len() == 1 => (0, ""),
        Some(_) => return Err(bad()),
    };
    if !matches!(rest, "" | "i" | "iB" | "B" | "b" | "ib") {
        return Err(bad());
    }
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rlimits_from_request() {
        let l = Limits {
            memory_max: Some(1 << 20),
            cpu_max_percent: Some(50),
            nofile: Some(256),
            nproc: Some(32),
        };
        assert_eq!(
            rlimits(&l),
            vec![(Resource::RLIMIT_NOFILE, 256), (Resource::RLIMIT_NPROC, 32)]
        );
        assert!(rlimits(&Limits::default()).is_empty());
    }

    #[test]
    fn parse_size_cases() {
        for (s, n) in [
            ("1048576", 1_048_576),
            ("0", 0),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("64M", 64 << 20),
            ("64Mi", 64 << 20),
            ("64MiB", 64 << 20),
            ("64MB", 64 << 20),
            (" 1G ", 1 << 30),
            ("2 G", 2 << 30),
            ("3T", 3 << 40),
            ("100B", 100),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for s in [
            "",
            "M",
            "-1",
            "1.5G",
            "12X",
            "64MM",
            "64Mx",
            "99999999999999999999",
            "16777216T",
            "1 2",
        ] {
            assert!(
                matches!(parse_size(s), Err(PartitionError::BadSize(_))),
                "{s}"
            );
        }
    }
}
