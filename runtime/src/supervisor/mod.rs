//! The supervisor: runs each instance's process and keeps it running.
//!
//! [`lifecycle`] is the pure per-instance state machine; [`spawn`] starts a process in
//! its partition (own process group and cgroup, dropped privileges, rlimits,
//! parent-death signal, output into a rotating log), created inside its cgroup by
//! [`clone_into`] where the kernel can; [`process_identity`] tells who a
//! process is (boot, start time, uids), to clean up leftovers of an earlier daemon and
//! to find a uid's processes; [`reap`] kills every process of a uid where there is no
//! cgroup to kill.

pub mod clone_into;
#[cfg(target_arch = "x86_64")]
mod clone_shared;
pub mod lifecycle;
pub mod process_identity;
pub mod reap;
pub mod spawn;
