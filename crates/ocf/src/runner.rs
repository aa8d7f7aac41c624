//! Running one agent action: its environment, its timeout, its exit code.
//!
//! An action runs in a session of its own (so its process group can be
//! killed whole) and, for a resource's actions, in the resource's cgroup: a
//! daemon that `start` leaves behind belongs to the resource, and
//! `terminate` kills it even where `stop` could not. An action past its
//! timeout is killed with its whole process group. Its output (stdout and
//! stderr) is kept to explain a failure.

use resmon_contract::Scope;
use resmon_task::{CheckAbort, Output, Reaper, SpawnSpec};
use std::path::Path;
use std::time::Duration;

/// OCF exit codes.
pub const OCF_SUCCESS: i32 = 0;
pub const OCF_ERR_UNIMPLEMENTED: i32 = 3;
pub const OCF_NOT_RUNNING: i32 = 7;
pub const OCF_RUNNING_PROMOTED: i32 = 8;
pub const OCF_FAILED_PROMOTED: i32 = 9;
pub const OCF_DEGRADED: i32 = 190;
pub const OCF_DEGRADED_PROMOTED: i32 = 191;

/// The name of an OCF exit code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "success",
        1 => "generic error",
        2 => "invalid argument",
        3 => "unimplemented feature",
        4 => "insufficient privileges",
        5 => "not installed",
        6 => "not configured",
        7 => "not running",
        8 => "running promoted",
        9 => "failed promoted",
        190 => "degraded",
        191 => "degraded promoted",
        _ => "unknown exit code",
    }
}

/// How an action ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit code; `None` when it was killed at its timeout.
    pub code: Option<i32>,
    /// All it printed on stdout (`meta-data` prints its document there).
    pub stdout: String,
    /// All it printed on stderr.
    pub stderr: String,
}

impl Outcome {
    /// "exited 6 (not configured): <output>" or "timed out after 20s: ...".
    pub fn describe(&self, action: &str, timeout: Duration) -> String {
        let how = match self.code {
            Some(c) => format!("{action} exited {c} ({})", code_name(c)),
            None => format!("{action} did not finish within {timeout:?} and was killed"),
        };
        let said = tail(&format!("{}\n{}", self.stdout, self.stderr), 5);
        if said.is_empty() {
            how
        } else {
            format!("{how}: {said}")
        }
    }
}

/// What to run.
pub struct Run<'a> {
    pub agent: &'a Path,
    pub action: &'a str,
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    /// The resource's scope; `None` for meta-data and checks.
    pub scope: Option<&'a Scope>,
    /// For a health check (`monitor`): cuts it short when a stop comes.
    pub abort: Option<&'a CheckAbort>,
}

/// Why an action gave no outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{step} for the output of {action}: {source}")]
    Output {
        step: &'static str,
        action: String,
        source: std::io::Error,
    },
    #[error("running {agent} {action}: {source}")]
    Spawn {
        agent: String,
        action: String,
        source: std::io::Error,
    },
    #[error("waiting for {action}: {source}")]
    Wait {
        action: String,
        source: resmon_task::TaskError,
    },
    #[error("{action} cancelled: the resource is being stopped")]
    Cancelled { action: String },
}

/// Runs an action and waits for it, at most `timeout`. Call it from a
/// thread that may block (not from the event loop).
pub fn run(r: &Run<'_>, reaper: &Reaper, rt: &tokio::runtime::Handle) -> Result<Outcome, RunError> {
    let output = |step: &'static str| {
        let action = r.action.to_owned();
        move |source| RunError::Output {
            step,
            action,
            source,
        }
    };
    let file = || tempfile::NamedTempFile::new().map_err(output("creating a file"));
    let (out, err) = (file()?, file()?);
    // The action writes to the files this monitor made, not to whatever a
    // path names by the time the child opens it.
    let fd = |f: &tempfile::NamedTempFile| {
        f.as_file()
            .try_clone()
            .map(|c| Output::Fd(std::sync::Arc::new(c.into())))
            .map_err(output("duplicating the file"))
    };
    let mut env = r.env.to_vec();
    env.push((
        "OCF_RESKEY_CRM_meta_timeout".into(),
        r.timeout.as_millis().to_string(),
    ));
    let mut spec = SpawnSpec {
        program: r.agent.display().to_string(),
        args: vec![r.action.to_string()],
        env,
        new_session: true,
        stdout: fd(&out)?,
        stderr: fd(&err)?,
        ..Default::default()
    };
    if let Some(scope) = r.scope {
        spec.set_scope(scope);
    }
    let task = reaper.spawn(&spec).map_err(|source| RunError::Spawn {
        agent: r.agent.display().to_string(),
        action: r.action.to_owned(),
        source,
    })?;
    // A cancel kills it with its process group, which ends the wait.
    let watched = r.abort.map(|a| a.watch(&task));
    let cancelled = || RunError::Cancelled {
        action: r.action.to_owned(),
    };
    if let Some(Err(_)) = watched {
        return Err(cancelled());
    }
    let waited = rt.block_on(async { tokio::time::timeout(r.timeout, task.wait()).await });
    let code = match waited {
        Ok(Ok(code)) => Some(code),
        Ok(Err(source)) => {
            return Err(RunError::Wait {
                action: r.action.to_owned(),
                source,
            })
        }
        Err(_) => {
            // The action and everything in its process group.
            if let Some(pgid) = task
                .pid()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = task.terminate(137);
            let _ = rt.block_on(task.wait());
            None
        }
    };
    drop(watched);
    if r.abort.is_some_and(CheckAbort::is_cancelled) {
        return Err(cancelled());
    }
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap_or_default();
    Ok(Outcome {
        code,
        stdout: read(&out),
        stderr: read(&err),
    })
}

/// The last `n` non-empty lines, joined.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_names_and_outcomes_say_what_happened() {
        assert_eq!(code_name(7), "not running");
        assert_eq!(code_name(191), "degraded promoted");
        assert_eq!(code_name(42), "unknown exit code");
        let o = Outcome {
            code: Some(6),
            stdout: String::new(),
            stderr: "no state file\n".into(),
        };
        assert_eq!(
            o.describe("start", Duration::from_secs(1)),
            "start exited 6 (not configured): no state file"
        );
        let o = Outcome {
            code: None,
            stdout: String::new(),
            stderr: String::new(),
        };
        assert!(o
            .describe("stop", Duration::from_secs(2))
            .contains("did not finish within 2s"));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }
}
