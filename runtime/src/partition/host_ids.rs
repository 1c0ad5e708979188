//! The ids of the host's users and groups, learnt without loading NSS into the daemon.
//!
//! Contract: the daemon never calls `getpwuid`, `getgrgid` or `getpwent`: glibc would
//! load the NSS modules `nsswitch.conf` names (`libnss_systemd` and, with it, `libcap`:
//! about 360 KiB that stay resident for the daemon's life) into its address space.
//! `getent passwd` and `getent group` (libc-bin, present wherever glibc is) ask the
//! same NSS sources in a child process instead, and their output is parsed here
//! ([`parse`], pure: the third `:`-separated field of each line, the uid or gid).
//!
//! [`Pending::lookup`] asks about given ids by key, as `getpwuid`/`getgrgid` would (an id
//! is found even in a source that does not enumerate, such as LDAP without
//! enumeration); [`Pending::enumerate`] lists every user and group. Both start their two
//! `getent` processes at once and return without waiting, so a caller overlaps them
//! with other work; [`Pending::wait`] collects the answer: the ids among the keys (or,
//! enumerating, all ids) that name a host user or group.
//!
//! Where `getent` cannot be started, or ends other than with status 0 or 2 (2: some
//! key was not found, the usual answer to a lookup), the answer for that database
//! comes from `/etc/passwd` or `/etc/group`, parsed the same way, with a warning; an
//! unreadable file adds nothing.

use std::collections::BTreeSet;
use std::io;
use std::process::{Child, Command, Stdio};

/// Why `getent` gave no answer (the files answer instead).
#[derive(Debug, thiserror::Error)]
pub enum HostIdsError {
    /// `getent` could not be started.
    #[error("cannot run getent {db}: {source}")]
    Spawn {
        /// `passwd` or `group`.
        db: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// Its output could not be read.
    #[error("cannot read the output of getent {db}: {source}")]
    Read {
        /// `passwd` or `group`.
        db: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// It ended with a status that is not an answer (1: unknown database, 3:
    /// enumeration not supported, or a signal).
    #[error("getent {db} ended with {status}")]
    Status {
        /// `passwd` or `group`.
        db: &'static str,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

/// The two databases, with the file each falls back to.
const DBS: [(&str, &str); 2] = [("passwd", "/etc/passwd"), ("group", "/etc/group")];

/// The ids named by `getent passwd` or `getent group` output (or `/etc/passwd`,
/// `/etc/group`): the third field of every line that has one and where it is a
/// decimal `u32`. Other lines (comments, blanks, damaged entries) name nothing. Pure.
pub fn parse(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|line| line.split(':').nth(2)?.parse().ok())
        .collect()
}

/// One question to NSS through `getent`, its two processes started.
#[derive(Debug)]
pub struct Pending {
    /// The ids asked about; `None` when enumerating.
    keys: Option<BTreeSet<u32>>,
    /// `getent passwd …` and `getent group …`, or why each could not start. Empty when
    /// there is nothing to ask.
    children: Vec<(&'static str, &'static str, Result<Child, HostIdsError>)>,
}

impl Pending {
    /// Starts looking `ids` up by key in both databases (nothing is started for no ids).
    pub fn lookup(ids: &BTreeSet<u32>) -> Pending {
        let args: Vec<String> = ids.iter().map(u32::to_string).collect();
        Pending {
            keys: Some(ids.clone()),
            children: if ids.is_empty() {
                Vec::new()
            } else {
                start(&args)
            },
        }
    }

    /// Starts listing every user and group.
    pub fn enumerate() -> Pending {
        Pending {
            keys: None,
            children: start(&[]),
        }
    }

    /// Waits for both answers: the ids (among the keys, when looking up) that belong to
    /// a host user or group.
    pub fn wait(self) -> BTreeSet<u32> {
        let mut found = BTreeSet::new();
        for (db, file, child) in self.children {
            let ids = match child.and_then(|c| answer(db, c)) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, file, "host ids read from the file instead (NSS sources other than files are not asked)");
                    std::fs::read_to_string(file)
                        .map(|t| parse(&t))
                        .unwrap_or_default()
                }
            };
            found.extend(ids);
        }
        match &self.keys {
            Some(keys) => found.intersection(keys).copied().collect(),
            None => found,
        }
    }
}

/// Spawns `getent DB ARGS…` for both databases, output piped.
fn start(args: &[String]) -> Vec<(&'static str, &'static str, Result<Child, HostIdsError>)> {
    DBS.iter()
        .map(|&(db, file)| {
            let child = Command::new("getent")
                .arg(db)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| HostIdsError::Spawn { db, source });
            (db, file, child)
        })
        .collect()
}

/// Reads one `getent` answer to its end: the ids it printed.
fn answer(db: &'static str, child: Child) -> Result<BTreeSet<u32>, HostIdsError> {
    let out = child
        .wait_with_output()
        .map_err(|source| HostIdsError::Read { db, source })?;
    // 0: all found (or enumerated); 2: some key was not found.
    match out.status.code() {
        Some(0 | 2) => Ok(parse(&String::from_utf8_lossy(&out.stdout))),
        _ => Err(HostIdsError::Status {
            db,
            status: out.status,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parse_takes_the_third_field_of_each_entry() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      svc:x:20030:20030::/srv:/bin/false\n";
        assert_eq!(parse(passwd), BTreeSet::from([0, 1, 20030]));
        let group = "root:x:0:\nadm:x:4:syslog,alice\nbig:*:4294967295:\n";
        assert_eq!(parse(group), BTreeSet::from([0, 4, u32::MAX]));
    }

    #[test]
    fn parse_skips_what_names_no_id() {
        let text = "# a comment\n\n+:::\nshort:x\nneg:x:-1:\nbig:x:4294967296:\n\
                    spaced:x: 7:\nhex:x:0x10:\nok:x:42:42::/:/bin/sh\r\nlast:x:43";
        // `ok` ends in CRLF: the id is still the third field.
        assert_eq!(parse(text), BTreeSet::from([42, 43]));
        assert!(parse("").is_empty());
    }

    #[test]
    fn lookups_find_host_ids_and_only_those_asked() {
        // uid 0 (root) and gid 0 exist on every Linux host; 4_000_000_000 on none here.
        let asked = BTreeSet::from([0, 4_000_000_000]);
        assert_eq!(Pending::lookup(&asked).wait(), BTreeSet::from([0]));
        assert!(Pending::lookup(&BTreeSet::new()).wait().is_empty());
        let all = Pending::enumerate().wait();
        assert!(all.contains(&0) && !all.contains(&4_000_000_000));
    }
}
