//! Who a process is, from `/proc` (its boot, start time and uids): used to tell a
//! leftover of an earlier daemon from an unrelated process that reused its pid, and to
//! find every process of a uid. What a process tree uses (CPU, memory) is
//! `crate::monitor::process_usage`.
//!
//! A recorded process group is only ever judged a leftover within the boot it was
//! recorded in ([`boot_id`], `/proc/sys/kernel/random/boot_id`): after a reboot its pgid
//! and start time can belong to anything. A record without a boot id (written by an
//! older daemon) or a boot id that cannot be read is "unknown boot" and is never
//! killed: leftovers of the same boot are still killed through the instance's cgroup or
//! partition uid, which a reboot cannot hand to an unrelated process.
//!
//! Contract: pure parsers over the file text, plus thin readers that return `None` (or
//! skip the process) when it is gone or the file is unreadable. Zombies count as dead:
//! they run nothing and hold nothing but their pid.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

/// Parses `/proc/sys/kernel/random/boot_id`'s text: a UUID (36 characters of hex digits
/// and dashes), trimmed and lower-cased. Pure.
pub fn parse_boot_id(text: &str) -> Option<String> {
    let t = text.trim();
    let ok = t.len() == 36
        && t.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    ok.then(|| t.to_ascii_lowercase())
}

/// This boot's id, read once per process (it cannot change while we run); `None` when
/// unreadable.
pub fn boot_id() -> Option<String> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|t| parse_boot_id(&t))
    })
    .clone()
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot), parsed from the
/// file's text. The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; start time is field 22, i.e. the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Start time of `pid`, or `None` when it does not exist. Read by one `read` into a
/// stack buffer (the file is far shorter; it is read on every start).
pub fn start_ticks(pid: u32) -> Option<u64> {
    use std::io::Read;
    let path = Path::new("/proc").join(pid.to_string()).join("stat");
    let mut buf = [0u8; 2048];
    let n = std::fs::File::open(&path).ok()?.read(&mut buf).ok()?;
    if n == buf.len() {
        // Not the whole file (never seen): read it all.
        return parse_start_ticks(&String::from_utf8_lossy(&std::fs::read(&path).ok()?));
    }
    // Lossy: a command name need not be UTF-8; the fields counted come after it.
    parse_start_ticks(&String::from_utf8_lossy(&buf[..n]))
}

/// From a `/proc/PID/status` text: the process's uids (real, effective, saved,
/// filesystem) and whether it is a zombie. Pure.
pub fn parse_status(status: &str) -> Option<([u32; 4], bool)> {
    let mut uids = None;
    let mut zombie = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            let mut out = [0u32; 4];
            let mut it = v.split_whitespace();
            for slot in &mut out {
                *slot = it.next()?.parse().ok()?;
            }
            uids = Some(out);
        } else if let Some(v) = line.strip_prefix("State:") {
            zombie = Some(matches!(v.trim_start().chars().next(), Some('Z' | 'X')));
        }
        if uids.is_some() && zombie.is_some() {
            break;
        }
    }
    Some((uids?, zombie?))
}

/// Every live process: `(pid, uids)`, from one scan of `/proc`.
pub fn processes() -> Vec<(u32, [u32; 4])> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            match parse_status(&text)? {
                (_, true) => None,
                (uids, false) => Some((pid, uids)),
            }
        })
        .collect()
}

/// Live processes having `uid` as any of their uids.
pub fn pids_of_uid(uid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, u)| u.contains(&uid))
        .map(|(p, _)| p)
        .collect()
}

/// The uids (any of the four) of every live process.
pub fn live_uids() -> BTreeSet<u32> {
    processes().into_iter().flat_map(|(_, u)| u).collect()
}

/// What to do about a process group recorded by an earlier daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// The recorded leader still runs (same start time): kill the group.
    Kill,
    /// The leader is gone; members may remain, and no new process can have taken the
    /// id while they do: kill the group (harmless if empty).
    KillOrphans,
    /// The pid now belongs to an unrelated process: leave it alone.
    Unrelated,
    /// Recorded in another boot: the pgid names nothing of ours. Leave it alone.
    OtherBoot,
    /// The record has no boot id (older daemon) or this boot's id is unreadable: it
    /// cannot be told from an unrelated group after a reboot. Leave it alone.
    UnknownBoot,
}

/// Decides from the recorded and current boot ids and start times. Only a record of
/// this very boot is ever killed.
pub fn judge(
    recorded_boot: Option<&str>,
    this_boot: Option<&str>,
    recorded: Option<u64>,
    now: Option<u64>,
) -> Leftover {
    match (recorded_boot, this_boot) {
        (Some(a), Some(b)) if a == b => {}
        (Some(_), Some(_)) => return Leftover::OtherBoot,
        _ => return Leftover::UnknownBoot,
    }
    match (recorded, now) {
        (_, None) => Leftover::KillOrphans,
        (Some(a), Some(b)) if a == b => Leftover::Kill,
        _ => Leftover::Unrelated,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let stat = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn a_command_name_that_is_not_utf8_still_gives_a_start_time() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let prog = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"\xff\xfe-sleep"));
        // A symlink: the command name is the name exec was given.
        std::os::unix::fs::symlink("/bin/sleep", &prog).unwrap();
        let mut child = std::process::Command::new(&prog)
            .arg("100")
            .spawn()
            .unwrap();
        let stat = std::fs::read(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(
            std::str::from_utf8(&stat).is_err(),
            "the name reached /proc"
        );
        assert!(start_ticks(child.id()).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn own_process_has_a_start_time() {
        assert!(start_ticks(std::process::id()).is_some());
    }

    #[test]
    fn status_uids_and_zombies() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\nUid:\t20000\t20001\t20002\t20003\nGid:\t0\t0\t0\t0\n";
        assert_eq!(
            parse_status(text),
            Some(([20000, 20001, 20002, 20003], false))
        );
        let z = "State:\tZ (zombie)\nUid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status(z), Some(([5; 4], true)));
        assert_eq!(parse_status("State:\tR\nUid:\t1\t2\n"), None);
        assert_eq!(parse_status("garbage"), None);
    }

    #[test]
    fn own_uid_is_found_by_the_scan() {
        let me = nix::unistd::geteuid().as_raw();
        let pid = std::process::id();
        assert!(pids_of_uid(me).contains(&pid));
        assert!(live_uids().contains(&me));
        // A process that is gone is not listed.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!processes().iter().any(|(p, _)| *p == gone));
    }

    #[test]
    fn judging_leftovers_of_this_boot() {
        let b = Some("b");
        assert_eq!(judge(b, b, Some(5), Some(5)), Leftover::Kill);
        assert_eq!(judge(b, b, Some(5), Some(6)), Leftover::Unrelated);
        assert_eq!(judge(b, b, None, Some(6)), Leftover::Unrelated);
        assert_eq!(judge(b, b, Some(5), None), Leftover::KillOrphans);
    }

    #[test]
    fn nothing_is_killed_across_boots_or_when_the_boot_is_unknown() {
        for (ticks, now) in [
            (Some(5), Some(5)),
            (Some(5), None),
            (None, None),
            (Some(5), Some(6)),
        ] {
            assert_eq!(judge(Some("a"), Some("b"), ticks, now), Leftover::OtherBoot);
            assert_eq!(judge(None, Some("b"), ticks, now), Leftover::UnknownBoot);
            assert_eq!(judge(Some("a"), None, ticks, now), Leftover::UnknownBoot);
            assert_eq!(judge(None, None, ticks, now), Leftover::UnknownBoot);
        }
    }

    #[test]
    fn boot_ids_parse() {
        assert_eq!(
            parse_boot_id("3F0E8C1A-2B4D-4C6E-8A9B-0C1D2E3F4A5B\n").as_deref(),
            Some("3f0e8c1a-2b4d-4c6e-8a9b-0c1d2e3f4a5b")
        );
        for bad in [
            "",
            "x",
            "3f0e8c1a-2b4d-4c6e-8a9b-0c1d2e3f4a5",
            "3f0e8c1a+2b4d-4c6e-8a9b-0c1d2e3f4a5b",
            "zf0e8c1a-2b4d-4c6e-8a9b-0c1d2e3f4a5b",
        ] {
            assert_eq!(parse_boot_id(bad), None, "{bad}");
        }
        assert!(boot_id().is_some(), "this machine has a boot id");
    }
}
