//! Freed partition uids wait here before another partition may get them.
//!
//! Contract: [`Quarantine`] is the pure core: it holds `uid -> freed at` in seconds of
//! the host's boot clock (`/proc/uptime`, which keeps counting through a suspend and
//! needs no real-time clock) together with the boot id the times belong to. A uid is
//! held for the configured duration after it was freed (default [`DEFAULT_HOLD`]);
//! entries of another boot are dropped on load, since no process survives a reboot.
//! The file (`<state-dir>/uid-quarantine`, mode 0600, replaced atomically) keeps the
//! quarantine across daemon restarts; [`load`] and [`save`] are its thin I/O, and
//! [`now`] reads the boot id and clock. A damaged file loses only its bad lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// How long a freed uid waits by default: ten minutes. Processes of a destroyed
/// instance are killed (and checked gone) before its uid is freed, so this is a second
/// line: it outlasts any straggler caught mid-fork, and a uid is not handed to a new
/// tenant seconds after the last one left.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);
/// Most entries kept (one per uid of the range at most; bounds a damaged file).
const MAX_ENTRIES: usize = 65_536;
/// Longest file read.
const MAX_FILE: u64 = 2 << 20;

/// The boot clock: which boot, and seconds since it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Whole seconds since boot.
    pub secs: u64,
}

/// The quarantined uids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    boot_id: String,
    hold_secs: u64,
    freed: BTreeMap<u32, u64>,
}

impl Quarantine {
    /// An empty quarantine for this boot.
    pub fn new(clock: &Clock, hold: Duration) -> Self {
        Quarantine {
            boot_id: clock.boot_id.clone(),
            hold_secs: hold.as_secs(),
            freed: BTreeMap::new(),
        }
    }

    /// Reads the file's text: `boot <id>` then `<uid> <freed-at-secs>` lines. Entries of
    /// another boot, bad lines and expired entries are dropped.
    pub fn parse(text: &str, clock: &Clock, hold: Duration) -> Self {
        let mut q = Quarantine::new(clock, hold);
        let mut lines = text.lines();
        let same_boot = lines
            .next()
            .and_then(|l| l.strip_prefix("boot "))
            .is_some_and(|id| id.trim() == clock.boot_id);
        if !same_boot {
            return q;
        }
        for line in lines.take(MAX_ENTRIES) {
            let mut w = line.split_whitespace();
            let (Some(uid), Some(at), None) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            if let (Ok(uid), Ok(at)) = (uid.parse::<u32>(), at.parse::<u64>()) {
                // A time after now cannot be of this boot: hold it from now.
                q.freed.insert(uid, at.min(clock.secs));
            }
        }
        q.expire(clock.secs);
        q
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = format!("boot {}\n", self.boot_id);
        for (uid, at) in &self.freed {
            out.push_str(&format!("{uid} {at}\n"));
        }
        out
    }

    /// Holds `uid`, freed at `now`.
    pub fn hold(&mut self, uid: u32, now: u64) {
        self.freed.insert(uid, now);
    }

    /// Whether `uid` is still held at `now`.
    pub fn holds(&self, uid: u32, now: u64) -> bool {
        self.freed
            .get(&uid)
            .is_some_and(|at| now.saturating_sub(*at) < self.hold_secs)
    }

    /// Drops the entries whose time is up; whether any was dropped.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.freed.len();
        let hold = self.hold_secs;
        self.freed.retain(|_, at| now.saturating_sub(*at) < hold);
        self.freed.len() != before
    }

    /// The held uids.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.freed.keys().copied()
    }
}

/// The boot clock now; `None` without `/proc`.
pub fn now() -> Option<Clock> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs = uptime
        .split_whitespace()
        .next()?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    Some(Clock {
        boot_id: boot_id.trim().to_string(),
        secs,
    })
}

/// Reads the quarantine at `path` (empty when missing or unreadable).
pub fn load(path: &Path, clock: &Clock, hold: Duration) -> Quarantine {
    use std::io::Read;
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = f.take(MAX_FILE).read_to_string(&mut text) {
                tracing::warn!(file = %path.display(), error = %e, "uid quarantine unreadable; starting empty");
                text.clear();
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "uid quarantine unreadable; starting empty")
        }
    }
    Quarantine::parse(&text, clock, hold)
}

/// Writes `q` to `path` atomically (temporary file, fsync, rename), mode 0600.
pub fn save(path: &Path, q: &Quarantine) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(q.render().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn clock(id: &str, secs: u64) -> Clock {
        Clock {
            boot_id: id.into(),
            secs,
        }
    }

    #[test]
    fn holds_for_the_duration_then_releases() {
        let mut q = Quarantine::new(&clock("b1", 100), Duration::from_secs(600));
        q.hold(20000, 100);
        assert!(q.holds(20000, 100));
        assert!(q.holds(20000, 699));
        assert!(!q.holds(20000, 700));
        assert!(!q.holds(20001, 100));
        assert!(!q.expire(699));
        assert!(q.expire(700));
        assert_eq!(q.uids().count(), 0);
    }

    #[test]
    fn survives_a_restart_but_not_a_reboot() {
        let mut q = Quarantine::new(&clock("b1", 100), Duration::from_secs(600));
        q.hold(20000, 100);
        q.hold(20005, 50);
        let text = q.render();
        assert_eq!(text, "boot b1\n20000 100\n20005 50\n");
        let again = Quarantine::parse(&text, &clock("b1", 200), Duration::from_secs(600));
        assert!(again.holds(20000, 200) && again.holds(20005, 200));
        // Another boot: every process of the old one is gone.
        let rebooted = Quarantine::parse(&text, &clock("b2", 5), Duration::from_secs(600));
        assert_eq!(rebooted.uids().count(), 0);
        // Expired entries are dropped on load.
        let later = Quarantine::parse(&text, &clock("b1", 660), Duration::from_secs(600));
        assert_eq!(later.uids().collect::<Vec<_>>(), vec![20000]);
    }

    #[test]
    fn damaged_text_loses_only_bad_lines() {
        let text = "boot b1\n20000 100\nnonsense\n1 2 3\n-5 1\n20001 999999\n";
        let q = Quarantine::parse(text, &clock("b1", 200), Duration::from_secs(600));
        assert_eq!(q.uids().collect::<Vec<_>>(), vec![20000, 20001]);
        // A future time is held from now.
        assert!(q.holds(20001, 799) && !q.holds(20001, 800));
        assert_eq!(
            Quarantine::parse("", &clock("b1", 1), DEFAULT_HOLD)
                .uids()
                .count(),
            0
        );
    }

    #[test]
    fn file_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("uid-quarantine");
        let c = clock("b1", 10);
        assert_eq!(load(&path, &c, DEFAULT_HOLD).uids().count(), 0);
        let mut q = Quarantine::new(&c, DEFAULT_HOLD);
        q.hold(7, 10);
        save(&path, &q).unwrap();
        save(&path, &q).unwrap();
        assert_eq!(load(&path, &c, DEFAULT_HOLD), q);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(now().is_some());
    }
}
