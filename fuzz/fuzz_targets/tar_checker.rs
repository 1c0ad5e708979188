//! The tar extraction checker (`artifact::extract::Checker`), fed a sequence of entries
//! decoded from the input. Never a panic; every admitted path is normalised (relative,
//! no `.`, `..` or empty component), every admitted symlink target is relative and does
//! not climb out of the tree even read lexically, and a hard link names a file admitted
//! before.
//!
//! Input: entries, each a kind byte then NUL-terminated fields: path, and for links the
//! target; a file's size is the byte after its path (× 4096), its mode the next byte.
#![no_main]

use std::collections::BTreeSet;

use hedge_runtime::artifact::extract::{Admitted, Checker, Limits, RawKind};
use libfuzzer_sys::fuzz_target;

fn field<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (f, rest) = data.split_at(end);
    *data = rest.get(1..).unwrap_or_default();
    f
}

fn byte(data: &mut &[u8]) -> u8 {
    let b = data.first().copied().unwrap_or(0);
    *data = data.get(1..).unwrap_or_default();
    b
}

fn normalised(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Does `target`, read relative to the directory of `link`, climb above the root?
fn climbs(link: &str, target: &str) -> bool {
    let mut depth = link.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut checker = Checker::new(Limits {
        max_entries: 64,
        max_bytes: 1 << 20,
    });
    let mut files = BTreeSet::new();
    while !data.is_empty() {
        let kind = byte(&mut data);
        let path = field(&mut data);
        let target = match kind % 7 {
            2 | 3 => field(&mut data),
            _ => &[],
        };
        let raw = match kind % 7 {
            0 => RawKind::File {
                size: u64::from(byte(&mut data)) * 4096,
                mode: u32::from(byte(&mut data)),
            },
            1 => RawKind::Dir,
            2 => RawKind::Symlink { target },
            3 => RawKind::HardLink { target },
            4 => RawKind::Meta,
            5 => RawKind::Special("fifo"),
            _ => RawKind::Special("char device"),
        };
        let Ok(admitted) = checker.admit(path, raw) else {
            continue;
        };
        match admitted {
            Admitted::Skip => {}
            Admitted::Dir(p) => assert!(normalised(&p), "{p:?}"),
            Admitted::File { path, mode, .. } => {
                assert!(normalised(&path), "{path:?}");
                assert!(mode == 0o644 || mode == 0o755, "{mode:o}");
                files.insert(path);
            }
            Admitted::Symlink { path, target } => {
                assert!(normalised(&path), "{path:?}");
                assert!(!target.starts_with('/'), "{target:?}");
                assert!(!climbs(&path, &target), "{path:?} -> {target:?}");
            }
            Admitted::HardLink { path, target } => {
                assert!(normalised(&path), "{path:?}");
                assert!(files.contains(&target), "{path:?} => {target:?}");
                files.insert(path);
            }
        }
    }
    let _ = checker.finish();
});
