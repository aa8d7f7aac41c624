//! `clone3` for children born in their cgroup, in a file of its own
//! because it is the one piece of assembly in resmon.
//!
//! `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7) makes a child that starts
//! inside its resource's cgroup, so no instruction of it ever runs outside
//! (joining by writing `cgroup.procs` after the fork leaves a window, and
//! the write waits for an RCU grace period: 10 to 20 ms on an idle
//! machine). glibc wraps `clone` but not `clone3`, and a child that shares
//! the parent's memory (`CLONE_VM`, as `posix_spawn` does) must switch to
//! its own stack in the same instruction sequence as the system call, so
//! the call cannot be a plain `syscall(2)`: these few instructions do what
//! glibc's `clone` wrapper does. Only x86-64 with glibc is written; on
//! every other target this module is left out and children join their
//! cgroup by `cgroup.procs` (see `spawn`).

/// `CLONE_INTO_CGROUP` (Linux 5.7): the child starts in `clone_args.cgroup`.
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` whose child runs `f(arg)` on the stack `args` gives and exits
/// with its result, as glibc's `clone` wrapper does for `clone` (glibc
/// offers no `clone3` wrapper). Returns the child's pid, or `-errno`.
///
/// # Safety
///
/// As for `clone` with `CLONE_VM`: `args` must name a stack that stays
/// valid while the child runs on it, and `f` may only make system calls
/// and read memory that stays unchanged meanwhile (the parent is suspended
/// with `CLONE_VFORK`).
pub(crate) unsafe fn clone3_run(
    args: &libc::clone_args,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller's contract above. In the parent the syscall
    // returns the pid or -errno in rax and clobbers rcx and r11; the child
    // returns 0 on the new stack (the kernel sets rsp to its top, 16-byte
    // aligned, so the call below enters `f` aligned as the ABI wants), with
    // r12 and r13 as the parent had them, and never comes back here: it
    // ends in `exit`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const libc::clone_args,
            in("rsi") std::mem::size_of::<libc::clone_args>(),
            in("r12") arg,
            in("r13") f,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
