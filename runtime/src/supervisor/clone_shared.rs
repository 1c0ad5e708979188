//! `clone3` with `CLONE_VM | CLONE_VFORK`: the child borrows the daemon's memory until
//! its `exec`, as `posix_spawn` does, instead of getting a copy of it.
//!
//! Contract: [`clone3`] starts `entry(arg)` in a new process that runs on `stack` inside
//! the caller's address space, and returns (the child's pid, or `-errno`) only once the
//! child has called `execve` or exited: until then the calling thread is suspended by
//! the kernel, so nothing the child reads changes under it. `entry` must never return
//! and may only make raw system calls: it shares every page of the daemon. Compared
//! with a fork-like clone, nothing is copied (no page tables to duplicate, no
//! copy-on-write faults in the daemon afterwards, no copied address space for the
//! child's `exec` to tear down): on a 50-instance boot that was about a third of the
//! daemon's CPU, on the crash → restart path the largest cost after the exec itself.
//!
//! A child that shares the memory cannot return from the system call through the
//! caller's frames (they are on the caller's stack); the few instructions around the
//! `syscall` that switch to `entry` are written per architecture, and only where the
//! tests run them natively: this module is built for x86_64 alone. Elsewhere (the ARM
//! builds are tested under qemu-user, which has no `clone3`) the caller clones
//! fork-like.

use nix::libc;

/// The child's stack: anonymous memory of its own, unmapped on drop (once
/// [`clone3`] has returned, the child no longer runs on it).
pub struct Stack {
    base: *mut libc::c_void,
}

impl Stack {
    /// Enough for [`super::clone_into`]'s child, which makes system calls on data
    /// prepared before the clone and holds no buffers.
    const SIZE: usize = 64 * 1024;

    /// Maps a fresh stack.
    pub fn new() -> std::io::Result<Stack> {
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        #[allow(unsafe_code)]
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Stack { base })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which nothing runs on any more.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.base, Self::SIZE);
        }
    }
}

/// `struct clone_args` fields this module sets (the caller fills in the rest).
pub const FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;

/// Runs `clone3(args)` with [`FLAGS`] and `stack` added; the child calls `entry(arg)`.
/// Returns the child's pid or `-errno`, once the child has exec'd or exited.
///
/// # Safety
/// `entry` never returns and touches only what `arg` points to, with raw system calls;
/// `arg` stays valid until this returns. All signals should be blocked by the caller
/// (the child starts with the daemon's handlers).
#[allow(unsafe_code)]
pub unsafe fn clone3(
    args: &mut super::clone_into::CloneArgs,
    stack: &Stack,
    entry: unsafe extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> libc::c_long {
    args.flags |= FLAGS;
    args.stack = stack.base as u64;
    args.stack_size = Stack::SIZE as u64;
    let size = std::mem::size_of::<super::clone_into::CloneArgs>();
    let ret: libc::c_long;
    // The kernel starts the child with rsp at the top of `stack` (16-byte aligned, the
    // mapping is page aligned); `call` then leaves it as the ABI wants at a function's
    // entry. rbp is cleared so no unwinder walks into the daemon's frames. `syscall`
    // clobbers rcx and r11; r12 and r13 survive it.
    core::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") super::clone_into::SYS_CLONE3 => ret,
        in("rdi") std::ptr::from_mut(args),
        in("rsi") size,
        in("r12") arg,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}
