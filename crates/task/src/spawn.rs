//! What to spawn, and the `Command` that spawns it into its resource.
//!
//! Joining the resource's cgroup happens in the child between `fork` and
//! `exec` (`pre_exec`): the parent opens `<cgroup>/cgroup.procs` beforehand
//! and the child writes `"0"` (itself) to it. From its first instruction the
//! program, and everything it ever forks, belongs to the resource. Code in
//! `pre_exec` runs in a copy of a multi-threaded process, so it only makes
//! async-signal-safe system calls and allocates nothing.
//!
//! The child is spawned with `std::process::Command` and its `Child` dropped
//! unwaited: the [`Reaper`](crate::Reaper) owns every exit status.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use resmon_contract::Scope;

/// Where a child's stdout or stderr goes. Stdin is always `/dev/null`.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// `/dev/null`.
    #[default]
    Null,
    /// The monitor's own stream.
    Inherit,
    /// A file, created if missing and appended to.
    File(PathBuf),
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
        self.env.retain(|(k, _)| *k != scope.marker.0);
        self.env.push(scope.marker.clone());
    }
}

fn open_output(output: &Output, which: &str) -> io::Result<Stdio> {
    Ok(match output {
        Output::Null => Stdio::null(),
        Output::Inherit => Stdio::inherit(),
        Output::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("opening {} for {which}: {e}", path.display()),
                    )
                })?;
            Stdio::from(file)
        }
    })
}

/// Builds the command for `spec`, opening its output files and its cgroup's
/// `cgroup.procs` in the parent.
pub(crate) fn command(spec: &SpawnSpec) -> io::Result<Command> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(open_output(&spec.stdout, "stdout")?)
        .stderr(open_output(&spec.stderr, "stderr")?);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if let Some((uid, gid)) = spec.user {
        cmd.uid(uid).gid(gid);
    }
    let procs: Option<OwnedFd> = match &spec.cgroup {
        Some(dir) => {
            let path = dir.join("cgroup.procs");
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
            })?;
            Some(File::into(file))
        }
        None => None,
    };
    let new_session = spec.new_session;
    if procs.is_some() || new_session {
        let hook = move || -> io::Result<()> {
            if let Some(fd) = &procs {
                rustix::io::write(fd, b"0")?;
            }
            if new_session {
                rustix::process::setsid()?;
            }
            Ok(())
        };
        // SAFETY: the hook runs in the forked child before exec. It only makes
        // the async-signal-safe system calls write(2), on a descriptor opened
        // before the fork, and setsid(2); it allocates nothing and takes no
        // lock (an errno converts to io::Error without allocating).
        unsafe {
            cmd.pre_exec(hook);
        }
    }
    Ok(cmd)
}

/// Names the program (and the cwd and cgroup, which can fail too) in a spawn error.
pub(crate) fn describe_error(spec: &SpawnSpec, err: io::Error) -> io::Error {
    let mut context = Vec::new();
    if let Some(cwd) = &spec.cwd {
        context.push(format!("in {}", cwd.display()));
    }
    if let Some(dir) = &spec.cgroup {
        context.push(format!("joining {}", dir.join("cgroup.procs").display()));
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
    fn set_scope_adds_the_marker_once_and_the_cgroup() {
        let mut spec = SpawnSpec::new("sleep", ["1"]);
        let scope = Scope {
            cgroup: Some(PathBuf::from("/cg/r")),
            marker: ("RESMON_RESOURCE".into(), "1/r".into()),
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
        });
        assert!(spec.new_session);
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
