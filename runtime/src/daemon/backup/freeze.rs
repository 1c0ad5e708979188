//! Freezing an instance's cgroup for the time its paths are read.
//!
//! Contract: [`freeze`] writes `1` to the group's `cgroup.freeze` and waits (polling
//! `cgroup.events`) until the kernel reports it frozen, at most `max`; past that it
//! thaws the group and fails, and the caller snapshots live instead. The [`Frozen`]
//! guard it returns thaws the group when dropped — after the snapshot, on an error, or
//! while a panic unwinds — and a watchdog thread thaws it `max` after the freeze began
//! even if the snapshot still runs: an instance is never frozen much longer than `max`.
//! [`Frozen::held`] then says the freeze did not cover the whole snapshot. Blocking:
//! called on the backup thread, never on the loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::partition::cgroup::Cgroup;

/// How often `cgroup.events` is read while waiting for the freeze.
const POLL: Duration = Duration::from_millis(2);

/// A frozen group; thawed when dropped (see the module doc).
pub(crate) struct Frozen {
    group: Cgroup,
    /// Dropped to tell the watchdog the snapshot is over.
    done: Option<mpsc::Sender<()>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    /// Set by the watchdog when it had to thaw the group.
    thawed_early: Arc<AtomicBool>,
}

impl Frozen {
    /// Whether the group stayed frozen until now (the watchdog did not thaw it).
    pub(crate) fn held(&self) -> bool {
        !self.thawed_early.load(Ordering::SeqCst)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        thaw(&self.group);
    }
}

/// Thaws `group`, retrying a few times: a group left frozen is an instance that hangs.
fn thaw(group: &Cgroup) {
    for _ in 0..3 {
        match group.thaw() {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(group = %group.path().display(), error = %e, "cannot thaw an instance's cgroup; retrying")
            }
        }
    }
}

/// Freezes `group`, waiting at most `max` (counted from `started`) for the kernel to
/// report it frozen.
pub(crate) fn freeze(group: &Cgroup, max: Duration, started: Instant) -> Result<Frozen, String> {
    let deadline = started + max;
    group.freeze().map_err(|e| e.to_string())?;
    loop {
        match group.is_frozen() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                thaw(group);
                return Err(e.to_string());
            }
        }
        if super::super::monotonic_now() >= deadline {
            thaw(group);
            return Err(format!("not frozen within {} ms", max.as_millis()));
        }
        std::thread::sleep(POLL);
    }
    let (tx, rx) = mpsc::channel::<()>();
    let thawed_early = Arc::new(AtomicBool::new(false));
    let flag = thawed_early.clone();
    let g = group.clone();
    let left = deadline.saturating_duration_since(super::super::monotonic_now());
    let watchdog = std::thread::Builder::new()
        .name("hedge-thaw".into())
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                flag.store(true, Ordering::SeqCst);
                thaw(&g);
            }
        })
        .map_err(|e| {
            thaw(group);
            format!("cannot start the thaw watchdog: {e}")
        })?;
    Ok(Frozen {
        group: group.clone(),
        done: Some(tx),
        watchdog: Some(watchdog),
        thawed_early,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::partition::cgroup::Cgroups;
    use hedge_wire::{Limits, Name};

    fn group(events: &str) -> (tempfile::TempDir, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "").unwrap();
        let cg = Cgroups::at(tmp.path(), "n").unwrap();
        let g = cg
            .setup(&Name::new("db").unwrap(), &Limits::default())
            .unwrap();
        std::fs::write(g.path().join("cgroup.events"), events).unwrap();
        (tmp, g)
    }

    fn freeze_file(g: &Cgroup) -> String {
        std::fs::read_to_string(g.path().join("cgroup.freeze")).unwrap()
    }

    #[test]
    fn a_frozen_group_is_thawed_when_the_guard_goes() {
        let (_t, g) = group("populated 1\nfrozen 1\n");
        let f = freeze(
            &g,
            Duration::from_secs(3600),
            super::super::super::monotonic_now(),
        )
        .unwrap();
        assert_eq!(freeze_file(&g), "1\n");
        assert!(f.held());
        drop(f);
        assert_eq!(freeze_file(&g), "0\n");
    }

    #[test]
    fn a_panic_while_frozen_still_thaws() {
        let (_t, g) = group("populated 1\nfrozen 1\n");
        let g2 = g.clone();
        let r = std::panic::catch_unwind(move || {
            let _f = freeze(
                &g2,
                Duration::from_secs(3600),
                super::super::super::monotonic_now(),
            )
            .unwrap();
            panic!("the snapshot panicked");
        });
        assert!(r.is_err());
        assert_eq!(freeze_file(&g), "0\n");
    }

    #[test]
    fn a_group_that_never_freezes_is_thawed_and_refused() {
        let (_t, g) = group("populated 1\nfrozen 0\n");
        let e = freeze(&g, Duration::ZERO, super::super::super::monotonic_now())
            .err()
            .unwrap();
        assert!(e.contains("not frozen"), "{e}");
        assert_eq!(freeze_file(&g), "0\n");
    }

    #[test]
    fn the_watchdog_thaws_past_the_bound() {
        let (_t, g) = group("populated 1\nfrozen 1\n");
        let f = freeze(&g, Duration::ZERO, super::super::super::monotonic_now()).unwrap();
        // The watchdog's deadline is already past: wait for it to act (bounded).
        let w = f.watchdog.as_ref().unwrap();
        while !w.is_finished() {
            std::thread::yield_now();
        }
        assert!(!f.held());
        assert_eq!(freeze_file(&g), "0\n");
    }
}
