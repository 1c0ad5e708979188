#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn file(size: u64, mode: u32) -> RawKind<'static> {
    RawKind::File { size, mode }
}

fn link(target: &str) -> RawKind<'_> {
    RawKind::Symlink {
        target: target.as_bytes(),
    }
}

/// Feeds `entries` to a fresh checker; the first refusal, or the `finish` verdict.
fn judge(entries: &[(&str, RawKind<'_>)]) -> Result<Vec<Admitted>, Refusal> {
    judge_with(Limits::default(), entries)
}

fn judge_with(limits: Limits, entries: &[(&str, RawKind<'_>)]) -> Result<Vec<Admitted>, Refusal> {
    let mut c = Checker::new(limits);
    let mut out = Vec::new();
    for (p, k) in entries {
        out.push(c.admit(p.as_bytes(), k.clone())?);
    }
    c.finish()?;
    Ok(out)
}

#[test]
fn paths_normalise_or_are_refused() {
    assert_eq!(normalize(b"./bin//app").unwrap(), "bin/app");
    assert_eq!(normalize(b"bin/").unwrap(), "bin");
    assert_eq!(normalize(b"./").unwrap(), "");
    assert!(matches!(
        normalize(b"/etc/passwd"),
        Err(Refusal::Absolute(_))
    ));
    assert!(matches!(normalize(b"../evil"), Err(Refusal::DotDot(_))));
    assert!(matches!(
        normalize(b"a/../../evil"),
        Err(Refusal::DotDot(_))
    ));
    assert!(matches!(normalize(b"a/.."), Err(Refusal::DotDot(_))));
    assert!(matches!(normalize(b"a\xff"), Err(Refusal::BadPath(..))));
    assert!(matches!(
        normalize("x".repeat(256).as_bytes()),
        Err(Refusal::BadPath(..))
    ));
}

#[test]
fn a_plain_tree_is_admitted_with_safe_modes() {
    let got = judge(&[
        ("./", RawKind::Dir),
        ("bin/", RawKind::Dir),
        ("bin/app", file(10, 0o4755)),
        ("etc/app.conf", file(3, 0o666)),
        ("lib/libx.so.1", file(3, 0o644)),
        ("lib/libx.so", link("libx.so.1")),
        ("bin/lib", link("../lib")),
        ("bin/app2", RawKind::HardLink { target: b"bin/app" }),
        ("bin/", RawKind::Dir),
        ("pax", RawKind::Meta),
    ])
    .unwrap();
    assert_eq!(got[0], Admitted::Skip);
    assert_eq!(
        got[2],
        Admitted::File {
            path: "bin/app".into(),
            size: 10,
            mode: 0o755
        }
    );
    assert!(matches!(&got[3], Admitted::File { mode: 0o644, .. }));
    assert!(matches!(&got[7], Admitted::HardLink { target, .. } if target == "bin/app"));
}

#[test]
fn unsafe_entries_are_refused() {
    let cases: Vec<(Vec<(&str, RawKind<'_>)>, &str)> = vec![
        (vec![("../evil", file(1, 0o644))], "dotdot"),
        (vec![("/tmp/evil", file(1, 0o644))], "absolute"),
        (vec![("etc", link("/etc"))], "link absolute"),
        (vec![("up", link(".."))], "link up"),
        (vec![("a/b", link("../../x"))], "link up two"),
        (
            vec![("dev/null", RawKind::Special("character device"))],
            "device",
        ),
        (vec![("fifo", RawKind::Special("FIFO"))], "fifo"),
        // Writing through a symlink of the archive, even one that stays inside.
        (
            vec![("l", link("sub")), ("l/x", file(1, 0o644))],
            "through link",
        ),
        (
            vec![("f", file(1, 0o644)), ("f/x", file(1, 0o644))],
            "below a file",
        ),
        (
            vec![("f", file(1, 0o644)), ("f", file(1, 0o644))],
            "duplicate",
        ),
        (
            vec![("d/x", file(1, 0o644)), ("d", link("."))],
            "dir then link",
        ),
        (
            vec![(
                "h",
                RawKind::HardLink {
                    target: b"/etc/shadow",
                },
            )],
            "hard link absolute",
        ),
        (
            vec![("h", RawKind::HardLink { target: b"missing" })],
            "hard link to nothing",
        ),
        (
            vec![("l", link("x")), ("h", RawKind::HardLink { target: b"l" })],
            "hard link to a link",
        ),
        (vec![("", file(1, 0o644))], "root as a file"),
        // Each link stays inside lexically, but `a` makes `c` climb out.
        (
            vec![("c", link("a/..")), ("a", link("."))],
            "escape via link",
        ),
        (vec![("a", link("b")), ("b", link("a"))], "loop"),
    ];
    for (entries, what) in cases {
        assert!(judge(&entries).is_err(), "{what}: admitted");
    }
}

#[test]
fn bounds_are_enforced() {
    let small = Limits {
        max_entries: 3,
        max_bytes: 100,
    };
    assert!(judge_with(small, &[("a", file(60, 0)), ("b", file(40, 0))]).is_ok());
    assert!(matches!(
        judge_with(small, &[("a", file(60, 0)), ("b", file(41, 0))]),
        Err(Refusal::TooLarge(100))
    ));
    assert!(matches!(
        judge_with(
            small,
            &[
                ("a", RawKind::Dir),
                ("b", RawKind::Dir),
                ("c", RawKind::Dir),
                ("d", RawKind::Dir)
            ]
        ),
        Err(Refusal::TooManyEntries(3))
    ));
    assert!(matches!(
        judge(&[("a", file(u64::MAX, 0)), ("b", file(u64::MAX, 0))]),
        Err(Refusal::TooLarge(_))
    ));
}

// ---- extraction of real archives -------------------------------------------------------

/// A raw archive entry: path bytes written into the header as is, type, mode, data,
/// link name.
type Raw<'a> = (&'a [u8], tar::EntryType, u32, &'a [u8], &'a [u8]);

/// A gzip-compressed tar from raw entries.
fn archive(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, et, mode, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*et);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        if !link.is_empty() {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

use tar::EntryType as T;

#[test]
fn extracts_a_good_archive_with_safe_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x");
    let a = archive(&[
        (b"./bin/", T::Directory, 0o777, b"", b""),
        (b"bin/app", T::Regular, 0o6755, b"#!/bin/sh\n", b""),
        (b"share/doc/readme", T::Regular, 0o666, b"hello", b""),
        (b"bin/run", T::Symlink, 0o777, b"", b"app"),
        (b"bin/app2", T::Link, 0o644, b"", b"bin/app"),
    ]);
    let s = extract(&a[..], &dest, Limits::default()).unwrap();
    assert_eq!(s.entries, 5);
    let mode = |p: &str| {
        std::fs::symlink_metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("bin/app"), 0o755, "setuid/setgid dropped, exec kept");
    assert_eq!(mode("share"), 0o755);
    assert_eq!(mode("share/doc/readme"), 0o644);
    assert_eq!(
        std::fs::read_link(dest.join("bin/run")).unwrap(),
        Path::new("app")
    );
    assert_eq!(
        std::fs::metadata(dest.join("bin/app2")).unwrap().ino(),
        std::fs::metadata(dest.join("bin/app")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read(dest.join("share/doc/readme")).unwrap(),
        b"hello"
    );
}

#[test]
fn refused_archives_leave_nothing_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let abs = format!("{}/abs", outside.display());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            archive(&[
                (b"ok", T::Regular, 0o644, b"1", b""),
                (b"../outside/dotdot", T::Regular, 0o644, b"x", b""),
            ]),
        ),
        (
            "absolute",
            archive(&[(abs.as_bytes(), T::Regular, 0o644, b"x", b"")]),
        ),
        (
            "link out then write through it",
            archive(&[
                (
                    b"l",
                    T::Symlink,
                    0o777,
                    b"",
                    outside.to_str().unwrap().as_bytes(),
                ),
                (b"l/through", T::Regular, 0o644, b"x", b""),
            ]),
        ),
        (
            "link to /etc",
            archive(&[(b"etc", T::Symlink, 0o777, b"", b"/etc")]),
        ),
        ("device", archive(&[(b"dev", T::Char, 0o644, b"", b"")])),
        ("fifo", archive(&[(b"fifo", T::Fifo, 0o644, b"", b"")])),
        ("not gzip", b"plain text, not an archive".to_vec()),
    ];
    std::fs::create_dir(&outside).unwrap();
    for (what, a) in cases {
        let dest = tmp.path().join("cache").join(what.replace(' ', "-"));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let e = extract(&a[..], &dest, Limits::default()).unwrap_err();
        assert!(matches!(e, ExtractError::Refused(_)), "{what}: {e}");
        assert!(!dest.exists(), "{what}: left {}", dest.display());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{what}: wrote outside"
        );
    }
}

#[test]
fn a_gzip_bomb_stops_at_the_bound() {
    let big = vec![0u8; 4 << 20];
    let a = archive(&[(b"big", T::Regular, 0o644, &big, b"")]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x");
    let small = Limits {
        max_entries: 10,
        max_bytes: 1 << 20,
    };
    assert!(matches!(
        extract(&a[..], &dest, small),
        Err(ExtractError::Refused(Refusal::TooLarge(_)))
    ));
    assert!(!dest.exists());
}
