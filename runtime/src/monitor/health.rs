//! Node health readings: load, memory, disk, temperature.
//!
//! Contract: pure parsers over `/proc/loadavg`, `/proc/meminfo` and a thermal zone's
//! `temp`, plus [`read`] which gathers a [`Health`] and leaves out (never invents) what
//! this machine does not expose (no thermal zone → `None`).

use std::path::Path;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// 1-minute load average × 1000.
    pub load1_milli: u32,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Available memory, bytes.
    pub mem_available: u64,
    /// Free bytes on the state directory's filesystem.
    pub disk_free: u64,
    /// Temperature, milli-°C.
    pub temp_milli_c: Option<i32>,
}

/// `/proc/loadavg` → 1-minute load × 1000.
pub fn parse_loadavg(text: &str) -> Option<u32> {
    let l: f64 = text.split_whitespace().next()?.parse().ok()?;
    // Float to integer `as` saturates (a negative load reads 0, NaN reads 0): wanted.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let milli = (l * 1000.0).round() as u32;
    Some(milli)
}

/// `/proc/meminfo` → (MemTotal, MemAvailable) in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The first thermal zone's temperature file, if any.
pub fn thermal_zone() -> Option<std::path::PathBuf> {
    let p = Path::new("/sys/class/thermal/thermal_zone0/temp");
    p.exists().then(|| p.to_path_buf())
}

/// Free bytes for unprivileged users on the filesystem holding `dir`.
// The statvfs field types are narrower on 32-bit ARM; the casts are needed there.
#[allow(clippy::unnecessary_cast)]
fn disk_free(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
        .unwrap_or_default()
}

/// Reads the node's health; `state_dir` is where disk space matters.
pub fn read(state_dir: &Path, zone: Option<&Path>) -> Health {
    let (mem_total, mem_available) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or_default();
    Health {
        load1_milli: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| parse_loadavg(&t))
            .unwrap_or_default(),
        mem_total,
        mem_available,
        disk_free: disk_free(state_dir),
        temp_milli_c: zone
            .and_then(|z| std::fs::read_to_string(z).ok())
            .and_then(|t| t.trim().parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_loadavg("1.25 0.5 0.1 1/97 10767\n"), Some(1250));
        assert_eq!(parse_loadavg(""), None);
        let mi = "MemTotal:        1000 kB\nMemFree:  5 kB\nMemAvailable:     600 kB\n";
        assert_eq!(parse_meminfo(mi), Some((1_024_000, 614_400)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn reads_this_machine() {
        let h = read(Path::new("/"), None);
        assert!(h.mem_total > 0 && h.disk_free > 0);
    }
}
