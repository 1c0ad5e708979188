//! Process facts from `/proc`, used to tell a leftover of an earlier daemon from an
//! unrelated process that reused its pid.
//!
//! Contract: pure parsers over the file text, plus thin readers that return `None` when
//! the process is gone or the file is unreadable.

use std::path::Path;

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot), parsed from the
/// file's text. The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; start time is field 22, i.e. the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Start time of `pid`, or `None` when it does not exist.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_start_ticks(&text)
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
}

/// Decides from the recorded and current start times.
pub fn judge(recorded: Option<u64>, now: Option<u64>) -> Leftover {
    match (recorded, now) {
        (_, None) => Leftover::KillOrphans,
        (Some(a), Some(b)) if a == b => Leftover::Kill,
        _ => Leftover::Unrelated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let stat = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn own_process_has_a_start_time() {
        assert!(start_ticks(std::process::id()).is_some());
    }

    #[test]
    fn judging_leftovers() {
        assert_eq!(judge(Some(5), Some(5)), Leftover::Kill);
        assert_eq!(judge(Some(5), Some(6)), Leftover::Unrelated);
        assert_eq!(judge(None, Some(6)), Leftover::Unrelated);
        assert_eq!(judge(Some(5), None), Leftover::KillOrphans);
    }
}
