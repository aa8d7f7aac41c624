//! `resmon upgrade`: the monitor runs its binary again from disk in place,
//! with the same pid. Nothing of any resource is stopped: the state is
//! saved as it runs, the event journal is flushed, the API answers, and
//! the new code starts as after a monitor that was killed, adopting every
//! resource from the saved state (same pids, checked against the kernel).
//! The new binary is tried first (`--version`): one that does not run is
//! refused and the monitor goes on as it was.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The binary and arguments this process was started with, and systemd's
/// notify variables (taken out of the environment at the start), for the
/// re-exec.
struct Start {
    exe: PathBuf,
    args: Vec<OsString>,
    /// Set when this process is an upgrade's: the version before it.
    upgraded_from: Option<String>,
}

static START: OnceLock<Start> = OnceLock::new();

/// Remembers the binary's path and the arguments; call it first in `main`,
/// while the process has one thread (it takes `RESMON_UPGRADED_FROM` out of
/// the environment, so no resource inherits it). The path is what
/// `/proc/self/exe` names now: an upgrade installs a new file there, and
/// that is what runs next.
pub fn remember_start() {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let upgraded_from = std::env::var("RESMON_UPGRADED_FROM").ok();
    std::env::remove_var("RESMON_UPGRADED_FROM");
    let _ = START.set(Start {
        exe,
        args: std::env::args_os().skip(1).collect(),
        upgraded_from,
    });
}

/// The binary an upgrade runs.
pub fn exe() -> Option<PathBuf> {
    START.get().map(|s| s.exe.clone())
}

/// Runs the binary on disk with `--version`: what it says, or why it cannot
/// be run.
pub async fn try_new_binary() -> Result<String, String> {
    let exe = exe().ok_or("the monitor does not know its binary")?;
    let cannot = |e: &dyn std::fmt::Display| format!("{} cannot be run: {e}", exe.display());
    // Through the monitor's reaper, which reaps every child of this process.
    let reaper = resmon_task::Reaper::get().map_err(|e| cannot(&e))?;
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| cannot(&e))?;
    let spec = resmon_task::SpawnSpec {
        program: exe.display().to_string(),
        args: vec!["--version".into()],
        stdout: resmon_task::Output::Fd(std::sync::Arc::new(write)),
        ..Default::default()
    };
    let task = reaper.spawn(&spec).map_err(|e| cannot(&e))?;
    drop(spec);
    let code = match tokio::time::timeout(Duration::from_secs(10), task.wait()).await {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => return Err(cannot(&e)),
        Err(_) => {
            let _ = task.terminate(1);
            return Err(format!(
                "{} --version did not answer within 10 s",
                exe.display()
            ));
        }
    };
    let mut out = String::new();
    let mut file = std::fs::File::from(read);
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, 4096), &mut out);
    if code != 0 {
        return Err(format!(
            "{} --version exited with code {code}",
            exe.display()
        ));
    }
    Ok(out.trim().to_string())
}

/// Replaces this process with the binary on disk, same arguments, same
/// pid. `notify`: systemd's variables to give back to it. Returns only on
/// failure.
pub fn exec(notify: &[(String, String)]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let Some(start) = START.get() else {
        return std::io::Error::other("the monitor does not know its binary");
    };
    let mut cmd = std::process::Command::new(&start.exe);
    cmd.args(&start.args)
        .env("RESMON_UPGRADED_FROM", env!("CARGO_PKG_VERSION"));
    for (k, v) in notify {
        cmd.env(k, v);
    }
    cmd.exec()
}

/// Set in the new process by [`exec`]: the version it was upgraded from.
pub fn upgraded_from() -> Option<String> {
    START.get().and_then(|s| s.upgraded_from.clone())
}
