//! What to spawn, and how it is spawned into its resource.
//!
//! The child is made the way `posix_spawn` makes it: `clone` with
//! `CLONE_VM | CLONE_VFORK` on a stack of its own, so none of the monitor's
//! memory is copied (a `fork` of the monitor costs more than the whole rest
//! of a spawn), plus `CLONE_PIDFD`, so the pidfd names the child from its
//! first instant. The child is born in the resource's cgroup
//! (`clone3` with `CLONE_INTO_CGROUP`, on x86-64 Linux 5.7 and later). Where
//! that is not available it joins the cgroup itself by writing `"0"` to
//! `cgroup.procs`: the same result, but moving a process between cgroups
//! can make the kernel wait for an RCU grace period (milliseconds, more on
//! a busy machine) while the monitor's spawning thread waits too. Between
//! the clone and `exec` the child calls `setsid`, drops privileges, and only
//! then changes directory and opens its output files, so a path a resource
//! names is opened with the rights of the resource's user, never the
//! monitor's (a service cannot make root write through a symlink it planted).
//! It then closes every descriptor above 2 that the monitor may have
//! inherited without close-on-exec, restores the descriptor limit the
//! monitor started with, and execs, using only what the parent prepared and
//! system calls. From its first instruction the program, and everything it
//! ever forks, belongs to the resource.
//!
//! Nothing here waits for the child: the [`Reaper`](crate::Reaper) owns
//! every exit status.

use crate::sync::lock;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

use resmon_contract::{Scope, FENCING_TOKEN_VAR};

/// Where a child's stdout or stderr goes. Stdin is `/dev/null` unless
/// [`SpawnSpec::stdin`] gives a descriptor.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// `/dev/null`.
    #[default]
    Null,
    /// The monitor's own stream.
    Inherit,
    /// A file, created if missing and appended to. It is opened in the
    /// child after it dropped privileges: with the rights of
    /// [`SpawnSpec::user`], never the monitor's.
    File(PathBuf),
    /// A descriptor the monitor opened itself (e.g. a temporary file).
    Fd(std::sync::Arc<OwnedFd>),
}

/// A process to spawn with [`Reaper::spawn`](crate::Reaper::spawn).
#[derive(Clone, Debug, Default)]
pub struct SpawnSpec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: String,
    pub args: Vec<String>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// `(uid, gid)` to run as. Supplementary groups are cleared.
    pub user: Option<(u32, u32)>,
    /// The cgroup v2 directory the child joins before `exec`.
    pub cgroup: Option<PathBuf>,
    /// Whether the child calls `setsid()`, becoming the leader of a new
    /// session and process group.
    pub new_session: bool,
    /// A descriptor the child gets as its stdin (e.g. its end of a
    /// socketpair); `None` is `/dev/null`.
    pub stdin: Option<std::sync::Arc<OwnedFd>>,
    pub stdout: Output,
    pub stderr: Output,
}

impl SpawnSpec {
    /// A spec running `program` with `args`, everything else default.
    pub fn new<S: Into<String>>(
        program: impl Into<String>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        SpawnSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..SpawnSpec::default()
        }
    }

    /// Places the child in a resource's scope (see
    /// [`Container::scope`](crate::Container::scope)): its cgroup when there
    /// is one, and its marker variable in the environment. Without a cgroup
    /// the child also starts a new session, so that it heads a process group
    /// of its own, the unit the process-group backend kills.
    pub fn set_scope(&mut self, scope: &Scope) {
        self.cgroup.clone_from(&scope.cgroup);
        if scope.cgroup.is_none() {
            self.new_session = true;
        }
        self.env
            .retain(|(k, _)| *k != scope.marker.0 && k != FENCING_TOKEN_VAR);
        self.env.push(scope.marker.clone());
        if let Some(token) = scope.fencing.get() {
            self.env
                .push((FENCING_TOKEN_VAR.to_owned(), token.to_string()));
        }
    }
}

/// Everything the child needs, made in the parent before the clone: the
/// child only reads it and makes system calls.
pub(crate) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdin: OwnedFd,
    stdout: Stdio,
    stderr: Stdio,
    /// The cgroup to join, and its `cgroup.procs` once opened (only when
    /// the child is not born in it).
    cgroup: Option<PathBuf>,
    procs: Option<OwnedFd>,
    /// The cgroup directory itself, for `CLONE_INTO_CGROUP`.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")),
        allow(dead_code)
    )]
    cgroup_dir: Option<OwnedFd>,
    new_session: bool,
    user: Option<(u32, u32)>,
    /// The descriptor limit the monitor started with, restored in the child
    /// (the monitor raises its own: see [`raise_fd_limit`]).
    nofile: Option<libc::rlimit>,
    /// Where closing descriptors one by one stops, without `close_range`.
    max_fd: libc::c_int,
}

/// The descriptor limit `(soft, hard)` the monitor had before
/// [`raise_fd_limit`]; `None` while it was never raised.
static ORIGINAL_NOFILE: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, so that
/// a monitor of many resources (a pidfd each, sockets, pipes) does not run
/// out of descriptors at a distribution's default of 1,024. Every child
/// spawned afterwards gets the original limit back before `exec`: programs
/// that use `select` or size tables by the limit expect it. Returns the
/// limits `(before, after)`.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    {
        let mut original = lock(&ORIGINAL_NOFILE);
        original.get_or_insert((lim.rlim_cur, lim.rlim_max));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } < 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((before, lim.rlim_cur))
}

fn cstring(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {s:?} contains a NUL byte"),
        )
    })
}

/// Finds `program` as `execvp` would.
fn resolve(program: &str) -> io::Result<PathBuf> {
    let usable =
        |p: &Path| p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if usable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| usable(p))
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

/// A child's stdout or stderr as the child puts it in place.
enum Stdio {
    /// Keep the monitor's.
    Inherit,
    /// `dup2` this (close-on-exec) descriptor.
    Fd(OwnedFd),
    /// Open this path after dropping privileges.
    Path(CString),
}

fn prepare_output(output: &Output, which: &str) -> io::Result<Stdio> {
    Ok(match output {
        Output::Null => Stdio::Fd(File::options().write(true).open("/dev/null")?.into()),
        Output::Inherit => Stdio::Inherit,
        Output::Fd(fd) => Stdio::Fd(fd.try_clone()?),
        Output::File(path) => Stdio::Path(cstring(&path.to_string_lossy(), which)?),
    })
}

/// Resolves the program and opens what the child needs (files are opened
/// close-on-exec; the child puts them in place with `dup2`).
pub(crate) fn prepare(spec: &SpawnSpec) -> io::Result<Prepared> {
    let path = resolve(&spec.program)?;
    let path = cstring(&path.to_string_lossy(), "program")?;
    let mut argv = vec![cstring(&spec.program, "program")?];
    for a in &spec.args {
        argv.push(cstring(a, "argument")?);
    }
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| !spec.env.iter().any(|(s, _)| std::ffi::OsStr::new(s) == k))
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    let mut envp = Vec::with_capacity(env.len());
    for (k, v) in env {
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        envp.push(CString::new(kv).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an environment variable contains a NUL byte",
            )
        })?);
    }
    check_exec_size(&argv, &envp)?;
    let cwd = match &spec.cwd {
        Some(d) => Some(cstring(&d.to_string_lossy(), "working directory")?),
        None => None,
    };
    let cgroup_dir = match &spec.cgroup {
        Some(dir) => Some(
            rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| {
                let e = io::Error::from(e);
                io::Error::new(e.kind(), format!("opening {}: {e}", dir.display()))
            })?,
        ),
        None => None,
    };
    let ptrs = |v: &Vec<CString>| {
        let mut p: Vec<*const libc::c_char> = v.iter().map(|c| c.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    Ok(Prepared {
        path,
        argv: ptrs(&argv),
        _argv: argv,
        envp: ptrs(&envp),
        _envp: envp,
        cwd,
        stdin: match &spec.stdin {
            // A close-on-exec duplicate; `dup2` onto 0 in the child clears the flag.
            Some(fd) => fd.try_clone()?,
            None => File::open("/dev/null")?.into(),
        },
        stdout: prepare_output(&spec.stdout, "stdout")?,
        stderr: prepare_output(&spec.stderr, "stderr")?,
        cgroup: spec.cgroup.clone(),
        procs: None,
        cgroup_dir,
        new_session: spec.new_session,
        user: spec.user,
        nofile: lock(&ORIGINAL_NOFILE).map(|(soft, hard)| libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        }),
        max_fd: max_fd(),
    })
}

/// The highest descriptor number + 1 that may be open (the soft limit,
/// capped so the fallback loop of closes stays short).
fn max_fd() -> libc::c_int {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        lim.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1 << 16
    }
}

/// What the child reads, and where it reports a failure before `exec`.
struct ChildArgs<'a> {
    p: &'a Prepared,
    /// Whether the child joins its cgroup itself (it was not born in it).
    join_cgroup: bool,
    /// Set by the child's first instruction: it ran at all.
    ran: AtomicBool,
    /// The errno of the step that failed, or 0.
    error: AtomicI32,
    /// The [`Step`] the child is at, so a failure says what failed.
    step: AtomicU8,
}

/// What the child was doing, for the error of a step that failed.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Step {
    Cgroup = 1,
    Session,
    Stdin,
    User,
    Cwd,
    Stdout,
    Stderr,
    CloseFds,
    Limits,
    Exec,
}

impl Step {
    fn from_u8(v: u8) -> Option<Step> {
        [
            Step::Cgroup,
            Step::Session,
            Step::Stdin,
            Step::User,
            Step::Cwd,
            Step::Stdout,
            Step::Stderr,
            Step::CloseFds,
            Step::Limits,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }

    /// Names the step in an error: the file it opened, the user it became.
    fn describe(self, p: &Prepared) -> String {
        let path = |s: &Stdio| match s {
            Stdio::Path(c) => c.to_string_lossy().into_owned(),
            _ => String::new(),
        };
        match self {
            Step::Cgroup => "joining its cgroup".into(),
            Step::Session => "starting a new session".into(),
            Step::Stdin => "setting up stdin".into(),
            Step::User => match p.user {
                Some((uid, gid)) => format!("becoming uid {uid} gid {gid}"),
                None => "dropping privileges".into(),
            },
            Step::Cwd => match &p.cwd {
                Some(d) => format!("entering {} as the resource's user", d.to_string_lossy()),
                None => "entering its working directory".into(),
            },
            Step::Stdout => format!(
                "opening {} for stdout as the resource's user",
                path(&p.stdout)
            ),
            Step::Stderr => format!(
                "opening {} for stderr as the resource's user",
                path(&p.stderr)
            ),
            Step::CloseFds => "closing inherited descriptors".into(),
            Step::Limits => "restoring the descriptor limit".into(),
            Step::Exec => "exec".into(),
        }
    }
}

const STACK: usize = 64 * 1024;

/// Runs in the child: shares the parent's memory (`CLONE_VM`) on a stack of
/// its own while the parent is suspended (`CLONE_VFORK`), so it only reads
/// what `prepare` made and makes system calls; it allocates nothing, takes
/// no lock, and ends in `execve` or `_exit`.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed to `clone`; the
    // parent is suspended until we exec or exit, so it stays alive and
    // unchanged.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    a.ran.store(true, Ordering::SeqCst);
    let p = a.p;
    let fail = |a: &ChildArgs<'_>| -> libc::c_int {
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        a.error.store(e.max(1), Ordering::SeqCst);
        // SAFETY: `_exit` ends this child without running anything of the
        // parent's (no atexit handlers, no flushing of shared buffers).
        unsafe { libc::_exit(127) }
    };
    // SAFETY: every call below is a plain system-call wrapper on values
    // `prepare` made (open descriptors, NUL-terminated strings and arrays).
    unsafe {
        // Signals: handlers of the parent must not run here; the program
        // starts with default dispositions (ignored ones stay ignored, as
        // exec keeps them) and an empty mask.
        for sig in 1..libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_IGN
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
        a.step.store(Step::Cgroup as u8, Ordering::Relaxed);
        if let (Some(fd), true) = (&p.procs, a.join_cgroup) {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return fail(a);
            }
        }
        a.step.store(Step::Session as u8, Ordering::Relaxed);
        if p.new_session && libc::setsid() < 0 {
            return fail(a);
        }
        a.step.store(Step::Stdin as u8, Ordering::Relaxed);
        if libc::dup2(p.stdin.as_raw_fd(), 0) < 0 {
            return fail(a);
        }
        if let Some((uid, gid)) = p.user {
            a.step.store(Step::User as u8, Ordering::Relaxed);
            // Raw system calls: glibc's wrappers would try to change the
            // ids of every thread of the parent, whose memory we share.
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setgid, gid as libc::c_long) < 0
                || libc::syscall(libc::SYS_setuid, uid as libc::c_long) < 0
            {
                return fail(a);
            }
        }
        // From here on with the rights of the resource's user: the working
        // directory and the output files are reached as that user reaches
        // them, symlinks and all.
        if let Some(dir) = &p.cwd {
            a.step.store(Step::Cwd as u8, Ordering::Relaxed);
            if libc::chdir(dir.as_ptr()) < 0 {
                return fail(a);
            }
        }
        for (target, out, step) in [(1, &p.stdout, Step::Stdout), (2, &p.stderr, Step::Stderr)] {
            a.step.store(step as u8, Ordering::Relaxed);
            let fd = match out {
                Stdio::Inherit => continue,
                Stdio::Fd(fd) => fd.as_raw_fd(),
                Stdio::Path(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_APPEND
                            | libc::O_NOCTTY
                            | libc::O_CLOEXEC,
                        0o644 as libc::c_uint,
                    );
                    if fd < 0 {
                        return fail(a);
                    }
                    fd
                }
            };
            if libc::dup2(fd, target) < 0 {
                return fail(a);
            }
        }
        // Nothing of the monitor's beyond stdio: descriptors it inherited
        // without close-on-exec (from whoever started it) stay out of
        // every service.
        a.step.store(Step::CloseFds as u8, Ordering::Relaxed);
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) < 0 {
            if *libc::__errno_location() != libc::ENOSYS {
                return fail(a);
            }
            for fd in 3..p.max_fd {
                libc::close(fd);
            }
        }
        if let Some(limit) = &p.nofile {
            a.step.store(Step::Limits as u8, Ordering::Relaxed);
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE,
                limit as *const libc::rlimit,
                std::ptr::null_mut::<libc::rlimit>(),
            ) < 0
            {
                return fail(a);
            }
        }
        a.step.store(Step::Exec as u8, Ordering::Relaxed);
        let empty: libc::sigset_t = {
            let mut s = std::mem::zeroed();
            libc::sigemptyset(&mut s);
            s
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
    }
    fail(a)
}

/// How children with a cgroup get into it: 0 not known yet, 1 born in it
/// (`clone3` with `CLONE_INTO_CGROUP`), 2 joined by writing `cgroup.procs`
/// because the kernel does not know that flag (or this is not x86-64).
static CGROUP_ENTRY: AtomicU8 = AtomicU8::new(0);

/// Whether children spawned into a cgroup are born in it
/// (`clone3(CLONE_INTO_CGROUP)`: `Some(true)`) or join it by writing
/// `cgroup.procs` (`Some(false)`: older kernels, other architectures);
/// `None` before the first such spawn. (A cgroup killed behind the
/// monitor's back is joined by `cgroup.procs` once, without changing this.)
pub fn children_born_in_cgroup() -> Option<bool> {
    match CGROUP_ENTRY.load(Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// Starts the prepared program: `clone3(CLONE_VM | CLONE_VFORK |
/// CLONE_PIDFD | CLONE_INTO_CGROUP)` when it has a cgroup and the kernel
/// takes it, else `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` like
/// `posix_spawn`; either way nothing of the parent's memory is copied. It
/// returns the pid and pidfd once the child has exec'ed. A failure before
/// `exec` is returned as the error it was; the child then already exited
/// and is left for the reaper.
pub(crate) fn spawn(p: &mut Prepared) -> io::Result<(u32, OwnedFd)> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    if let Some(dir) = &p.cgroup_dir {
        if CGROUP_ENTRY.load(Ordering::Relaxed) != 2 {
            let mut first = start(p, Some(dir));
            // No cgroup namespace here (a kernel or seccomp policy that
            // refuses it): without one from now on.
            if new_cgroup_ns()
                && matches!(&first, Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)))
            {
                tracing::debug!(
                    "no cgroup namespace for resource processes: {:?}",
                    first.as_ref().err()
                );
                NEW_CGROUP_NS.store(2, Ordering::Relaxed);
                first = start(p, Some(dir));
            }
            match first {
                Ok(Some(started)) => {
                    CGROUP_ENTRY.store(1, Ordering::Relaxed);
                    return started;
                }
                // Killed before its first instruction: the kernel kills a
                // child born into a cgroup that was ever killed through
                // `cgroup.kill` (seen on 6.x kernels), as if the kill were
                // still going on. Joining by `cgroup.procs` is not hit by
                // that; containers renew their cgroup after a kill so that
                // this stays rare. The dead child is left to the reaper.
                Ok(None) => {
                    tracing::debug!(
                        "a child born into its cgroup was killed at once; joining by cgroup.procs"
                    );
                }
                // Before 5.3 there is no clone3 (or a seccomp filter hides
                // it); before 5.7 it does not know CLONE_INTO_CGROUP.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
                    ) =>
                {
                    tracing::debug!("clone3 with CLONE_INTO_CGROUP unavailable ({e}); joining cgroups by cgroup.procs");
                    CGROUP_ENTRY.store(2, Ordering::Relaxed);
                }
                // Any other refusal (the cgroup's limits, say) is reported
                // by the way that names the file: writing cgroup.procs.
                Err(_) => {}
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    if p.cgroup.is_some() {
        CGROUP_ENTRY.store(2, Ordering::Relaxed);
    }
    if let Some(dir) = &p.cgroup {
        let path = dir.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        p.procs = Some(file.into());
    }
    start(p, None)?.unwrap_or_else(|| {
        Err(io::Error::other(
            "the new process was killed before it could run",
        ))
    })
}

/// Makes the child: born in `into_cgroup` when given (clone3), else by
/// `clone`. The outer error is the clone's; `None` a child that was killed
/// before it ran; the inner error a step of the child that failed before
/// `exec`.
fn start(
    p: &Prepared,
    into_cgroup: Option<&OwnedFd>,
) -> io::Result<Option<io::Result<(u32, OwnedFd)>>> {
    let mut stack = vec![0u8; STACK];
    // The stack grows down from its end, aligned to 16 bytes.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    let args = ChildArgs {
        p,
        join_cgroup: into_cgroup.is_none(),
        ran: AtomicBool::new(false),
        error: AtomicI32::new(0),
        step: AtomicU8::new(0),
    };
    let arg = &args as *const ChildArgs<'_> as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    // Block every signal around the clone so none is handled in the child
    // on the parent's handlers before it resets them.
    // SAFETY: plain mask manipulation of this thread.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let pid = match into_cgroup {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        Some(dir) => {
            // SAFETY: all-zero is a valid clone_args (no flags, no pointers).
            let mut ca: libc::clone_args = unsafe { std::mem::zeroed() };
            ca.flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64
                | crate::clone3::CLONE_INTO_CGROUP;
            if new_cgroup_ns() {
                ca.flags |= libc::CLONE_NEWCGROUP as u64;
            }
            ca.pidfd = &mut pidfd as *mut libc::c_int as u64;
            ca.exit_signal = libc::SIGCHLD as u64;
            ca.stack = stack.as_mut_ptr() as u64;
            ca.stack_size = (top - stack.as_mut_ptr() as usize) as u64;
            ca.cgroup = dir.as_raw_fd() as u64;
            // SAFETY: as for `clone` below: `child` runs on `stack`, which
            // outlives it (CLONE_VFORK), and only reads `args`; the kernel
            // stores the pidfd at `pidfd`.
            let ret = unsafe { crate::clone3::clone3_run(&ca, child, arg) };
            if ret < 0 {
                // SAFETY: restores this thread's mask as it was.
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                return Err(io::Error::from_raw_os_error(-ret as i32));
            }
            ret as libc::pid_t
        }
        _ => {
            // SAFETY: `child` runs on `stack`, which outlives it (the parent
            // waits until it has exec'ed or exited: CLONE_VFORK), and only
            // reads `args`; `pidfd` receives the pidfd (CLONE_PIDFD stores it
            // at `parent_tid`).
            unsafe {
                libc::clone(
                    child,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    arg,
                    &mut pidfd as *mut libc::c_int,
                )
            }
        }
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores this thread's mask as it was.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: CLONE_PIDFD gave us this descriptor; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if !args.ran.load(Ordering::SeqCst) {
        return Ok(None);
    }
    Ok(Some(match args.error.load(Ordering::SeqCst) {
        0 => Ok((pid as u32, pidfd)),
        e => {
            let err = io::Error::from_raw_os_error(e);
            match Step::from_u8(args.step.load(Ordering::SeqCst)) {
                // The exec's own error reads best as it is ("No such file").
                None | Some(Step::Exec) => Err(err),
                Some(step) => Err(io::Error::new(
                    err.kind(),
                    format!("{}: {err}", step.describe(p)),
                )),
            }
        }
    }))
}

/// Whether children born into a cgroup also get a cgroup namespace of
/// their own (root only; 0 not tried yet, 1 yes, 2 refused here). Inside
/// it a resource sees its cgroup as `/`, and where the hierarchy is mounted
/// with `nsdelegate` the kernel refuses its moves out of it. Without
/// `nsdelegate` a root service can still move itself: the fork tracker is
/// what holds then.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
static NEW_CGROUP_NS: AtomicU8 = AtomicU8::new(0);

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn new_cgroup_ns() -> bool {
    NEW_CGROUP_NS.load(Ordering::Relaxed) != 2 && rustix::process::geteuid().is_root()
}

/// The longest single argument or environment string `execve` takes,
/// with its NUL (`MAX_ARG_STRLEN`, 32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Refuses, naming the culprit, what `execve` would refuse with a bare
/// "Argument list too long": one string over [`MAX_ARG_STRLEN`], or all of
/// them (with their pointers) over the system's `ARG_MAX`.
fn check_exec_size(argv: &[CString], envp: &[CString]) -> io::Result<()> {
    let too_big = |what: String, n: usize| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} is {n} bytes: the kernel takes at most {MAX_ARG_STRLEN} bytes per argument or variable"),
        )
    };
    for (i, a) in argv.iter().enumerate() {
        let n = a.as_bytes_with_nul().len();
        if n > MAX_ARG_STRLEN {
            return Err(too_big(format!("argument {i} of the command"), n));
        }
    }
    for kv in envp {
        let n = kv.as_bytes_with_nul().len();
        if n > MAX_ARG_STRLEN {
            let bytes = kv.as_bytes();
            let name = String::from_utf8_lossy(
                &bytes[..bytes.iter().position(|&b| b == b'=').unwrap_or(0)],
            );
            return Err(too_big(format!("environment variable {name}"), n));
        }
    }
    let total: usize = argv
        .iter()
        .chain(envp)
        .map(|c| c.as_bytes_with_nul().len() + std::mem::size_of::<usize>())
        .sum();
    // SAFETY: sysconf only reads a system setting.
    let arg_max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    if let Ok(max) = usize::try_from(arg_max) {
        if max > 0 && total > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the command and its environment ({} variables) take {total} bytes: more than the {max} the kernel takes (ARG_MAX)",
                    envp.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Names the program (and the cwd and cgroup, which can fail too) in a spawn error.
pub(crate) fn describe_error(spec: &SpawnSpec, err: io::Error) -> io::Error {
    let mut context = Vec::new();
    if let Some(cwd) = &spec.cwd {
        context.push(format!("in {}", cwd.display()));
    }
    if let Some(dir) = &spec.cgroup {
        context.push(format!("in cgroup {}", dir.display()));
    }
    let context = if context.is_empty() {
        String::new()
    } else {
        format!(" ({})", context.join(", "))
    };
    io::Error::new(
        err.kind(),
        format!("cannot run {:?}{context}: {err}", spec.program),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_commands_and_environments_are_refused_by_name() {
        let mut spec = SpawnSpec::new("sleep", ["1"]);
        spec.env.push(("BIG".into(), "x".repeat(200_000)));
        let e = prepare(&spec).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let text = e.to_string();
        assert!(
            text.starts_with("environment variable BIG is 200005 bytes"),
            "{text}"
        );
        let spec = SpawnSpec::new("sleep", ["y".repeat(140_000)]);
        let text = prepare(&spec).err().expect("refused").to_string();
        assert!(
            text.starts_with("argument 1 of the command is 140001 bytes"),
            "{text}"
        );
        // SAFETY: sysconf only reads a system setting.
        let max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
        if !(0..=64 << 20).contains(&max) {
            return; // no ARG_MAX worth testing here (an unlimited stack)
        }
        let mut spec = SpawnSpec::new("sleep", ["1"]);
        for i in 0..=(max / 100_000) {
            spec.env.push((format!("V{i}"), "z".repeat(100_000)));
        }
        let text = prepare(&spec).err().expect("refused").to_string();
        assert!(
            text.contains("more than the") && text.contains("ARG_MAX"),
            "{text}"
        );
    }

    #[test]
    fn set_scope_adds_the_marker_once_and_the_cgroup() {
        let mut spec = SpawnSpec::new("sleep", ["1"]);
        let scope = Scope {
            cgroup: Some(PathBuf::from("/cg/r")),
            marker: ("RESMON_RESOURCE".into(), "1/r".into()),
            ..Scope::default()
        };
        spec.set_scope(&scope);
        spec.set_scope(&scope);
        assert_eq!(spec.cgroup, Some(PathBuf::from("/cg/r")));
        assert_eq!(spec.env, vec![("RESMON_RESOURCE".into(), "1/r".into())]);
        assert!(!spec.new_session);

        let mut spec = SpawnSpec::new("sleep", ["1"]);
        spec.set_scope(&Scope {
            cgroup: None,
            marker: ("RESMON_RESOURCE".into(), "1/r".into()),
            ..Scope::default()
        });
        assert!(spec.new_session);

        // A fencing token set on the scope reaches the environment, and a
        // cleared one leaves it.
        let scope = Scope::default();
        scope.fencing.set(Some(42));
        let mut spec = SpawnSpec::new("sleep", ["1"]);
        spec.set_scope(&scope);
        assert!(spec.env.contains(&(FENCING_TOKEN_VAR.into(), "42".into())));
        scope.fencing.set(None);
        spec.set_scope(&scope);
        assert!(!spec.env.iter().any(|(k, _)| k == FENCING_TOKEN_VAR));
    }

    #[test]
    fn spawn_errors_name_the_program_and_context() {
        let mut spec = SpawnSpec::new("nope", Vec::<String>::new());
        spec.cwd = Some("/tmp".into());
        let err = describe_error(&spec, io::Error::from(io::ErrorKind::NotFound));
        let text = err.to_string();
        assert!(text.contains("\"nope\"") && text.contains("/tmp"), "{text}");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
