//! What the benchmark reads from `/proc`: processes, their parents and
//! states, the marker in their environment, their command lines, CPU time
//! and proportional set size; and the one way it kills what it started.
//!
//! Every workload exports `BENCH_PEERS_MARK=<run>/<tool>/<scenario>` before
//! it starts anything, so that all its descendants carry the mark whatever
//! the supervisor did with its own environment (Pacemaker's `anything` agent
//! starts the command through `su -`, which clears it). Every program the
//! benchmark starts carries `BENCH_PEERS_RUN=<run>`.

use rustix::process::{Pid, Signal};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The variable every workload exports.
pub const MARK: &str = "BENCH_PEERS_MARK";
/// The variable every program of this run inherits.
pub const RUN: &str = "BENCH_PEERS_RUN";

pub use resmon_test_support::{all, stat, Stat};

/// The value of `key` in the environment of `pid`, if it has one.
pub fn env_value(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// Live (not zombie) processes per workload mark, for the marks of `run`.
pub fn marked(run: &str) -> HashMap<String, Vec<u32>> {
    let prefix = format!("{run}/");
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for p in all() {
        if p.state == 'Z' || p.state == 'X' {
            continue;
        }
        if let Some(mark) = env_value(p.pid, MARK) {
            if mark.starts_with(&prefix) {
                out.entry(mark).or_default().push(p.pid);
            }
        }
    }
    out
}

/// The first word of the command line of `pid` (empty when it is gone).
pub fn argv0(pid: u32) -> Vec<u8> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|&b| b == 0).next().unwrap_or(&[]).to_vec()
}

pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

pub fn kill(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        // "No such process" is what we want anyway.
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// SIGKILLs every live process `pick` selects, again and again until none
/// is left or `limit` passes; answers how many were left at the end.
fn kill_until_gone(pick: impl Fn() -> Vec<u32>, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    loop {
        let pids = pick();
        if pids.is_empty() || Instant::now() > end {
            return pids.len();
        }
        for pid in pids {
            kill(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills what carries `mark`; answers how many could not be killed.
pub fn kill_marked(mark: &str) -> usize {
    let run = mark.split('/').next().unwrap_or(mark).to_owned();
    kill_until_gone(
        || marked(&run).remove(mark).unwrap_or_default(),
        Duration::from_secs(5),
    )
}

/// Kills every process of the run (supervisors and workloads) but the
/// callers in `spare`; answers how many could not be killed.
pub fn kill_run(run: &str, spare: &[u32]) -> usize {
    let prefix = format!("{run}/");
    kill_until_gone(
        || {
            all()
                .into_iter()
                .filter(|p| p.state != 'Z' && p.state != 'X' && !spare.contains(&p.pid))
                .filter(|p| {
                    env_value(p.pid, RUN).is_some_and(|r| r == run)
                        || env_value(p.pid, MARK).is_some_and(|m| m.starts_with(&prefix))
                })
                .map(|p| p.pid)
                .collect()
        },
        Duration::from_secs(10),
    )
}

/// `root` and its descendants that carry no workload mark: the supervisor's
/// own processes (runsvdir and its runsv, s6-svscan and its s6-supervise).
pub fn supervisor_processes(root: u32) -> Vec<Stat> {
    let procs = all();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let by_pid: HashMap<u32, Stat> = procs.iter().map(|p| (p.pid, p.clone())).collect();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let Some(s) = by_pid.get(&pid) else { continue };
        if s.state == 'Z' || env_value(pid, MARK).is_some() {
            continue;
        }
        out.push(s.clone());
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    out
}

/// A field of `/proc/PID/FILE` in kB (`Pss:` of `smaps_rollup`, `VmRSS:` of `status`).
pub fn kb(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}
