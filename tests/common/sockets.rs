//! Socket options of another process's TCP connections, read from the sockets
//! themselves.
//!
//! [`nodelay_on_port`] duplicates each socket of a running process into this one
//! (`pidfd_getfd(2)`, Linux 5.6: the caller needs ptrace rights over the process, which
//! a parent has over the daemons it spawned) and reads `TCP_NODELAY` on every TCP
//! connection whose local or remote port is the one asked for. Listening sockets and
//! anything that is not TCP over IP are left out.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockaddrStorage};

/// `TCP_NODELAY` of each connected TCP socket of `pid` with `port` at either end.
pub fn nodelay_on_port(pid: u32, port: u16) -> Vec<bool> {
    let pidfd = pidfd_open(pid);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Some(sock) = pidfd_getfd(&pidfd, fd) else {
            continue; // closed meanwhile
        };
        let ports = |addr: nix::Result<SockaddrStorage>| {
            let a = addr.ok()?;
            a.as_sockaddr_in()
                .map(|v4| v4.port())
                .or_else(|| a.as_sockaddr_in6().map(|v6| v6.port()))
        };
        // A listening or unconnected socket has no peer.
        let (Some(local), Some(peer)) = (
            ports(getsockname(sock.as_raw_fd())),
            ports(getpeername(sock.as_raw_fd())),
        ) else {
            continue;
        };
        if local != port && peer != port {
            continue;
        }
        if let Ok(on) = getsockopt(&sock, sockopt::TcpNoDelay) {
            found.push(on);
        }
    }
    found
}

fn pidfd_open(pid: u32) -> OwnedFd {
    let pid = nix::libc::pid_t::try_from(pid).unwrap();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    #[allow(unsafe_code)]
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    #[allow(unsafe_code)]
    unsafe {
        OwnedFd::from_raw_fd(RawFd::try_from(fd).unwrap())
    }
}

/// A duplicate of `pidfd`'s process's descriptor `fd` in this process, if it is open.
fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: pidfd_getfd takes two descriptor numbers and flags and returns a new
    // descriptor or -1; it touches no memory of ours.
    #[allow(unsafe_code)]
    let got = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        let e = std::io::Error::last_os_error();
        // EBADF: closed since /proc listed it. Anything else (EPERM: no ptrace rights)
        // would make the test see nothing, so it fails here instead.
        assert_eq!(e.raw_os_error(), Some(nix::libc::EBADF), "pidfd_getfd: {e}");
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    #[allow(unsafe_code)]
    Some(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(got).unwrap()) })
}
