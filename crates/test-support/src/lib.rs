//! What resmon's tests and benchmarks read of `/proc`, in one place:
//! a process's `stat` line, whether it is alive, and every process of the
//! machine. The monitor has its own reader (`resmon-task`'s `procfs`,
//! with start times pinned for pid reuse); this one serves code that
//! watches the monitor from outside, and depends on nothing. With the
//! `browser` feature, also a headless Chromium to drive the dashboard.

#[cfg(feature = "browser")]
pub mod browser;

use std::path::Path;

/// One line of `/proc/PID/stat`, as far as tests and benchmarks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// The command name (field 2), without its parentheses.
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (a zombie: dead, not yet reaped), `X`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// utime + stime, in clock ticks.
    pub ticks: u64,
    /// When the process started, in clock ticks after boot (field 22).
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has ended (a zombie or a dead entry).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of a `/proc/PID/stat` file. The command name may hold
/// spaces and parentheses, so the fields after it are counted from the
/// last `)`.
pub fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // `rest` starts at field 3 (the state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(Stat {
        pid,
        comm,
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(4)?).ok()?,
        pgrp: u32::try_from(num(5)?).ok()?,
        session: u32::try_from(num(6)?).ok()?,
        ticks: num(14)?.checked_add(num(15)?)?,
        start_time: num(22)?,
    })
}

/// The `stat` of process `pid`, if it exists (zombies included).
pub fn stat(pid: u32) -> Option<Stat> {
    stat_in(Path::new("/proc"), pid)
}

/// The `stat` of process `pid` under the `/proc` mounted at `proc_root`.
pub fn stat_in(proc_root: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(pid, &text)
}

/// Whether `pid` runs: it exists and is not a zombie. A process that died
/// is dead here even before its parent reaps it.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.is_dead())
}

/// Whether `pid` is gone for good: no process, not even a zombie.
pub fn reaped(pid: u32) -> bool {
    stat(pid).is_none()
}

/// Every process now, zombies included.
pub fn all() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_read_whole() {
        let line =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123456 1000 10";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(s.comm, "a (b) c");
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('S', 1, 4242, 4242));
        assert_eq!(s.ticks, 12);
        assert_eq!(s.start_time, 123456);
        assert!(!s.is_dead());
        assert!(parse_stat(1, "1 (x) Z 0").is_none());
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_its_fields_are_its_own() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(alive(me));
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(all().iter().any(|p| p.pid == me));
        assert!(!alive(u32::MAX));
        assert!(reaped(u32::MAX));
    }
}
