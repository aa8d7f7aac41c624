//! Boots a real `resmon serve` per test and drives it through the real CLI.
//! Every wait polls for a condition with a deadline; nothing sleeps and hopes.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_resmon");

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts a monitor on `config` (a `[monitor] socket` line is added) and
    /// waits until its socket answers.
    pub fn start(config: &str) -> Daemon {
        Self::start_with(config, "")
    }

    pub fn start_with(config: &str, monitor_extra: &str) -> Daemon {
        let mut d = Self::prepare(config, monitor_extra);
        d.launch();
        d
    }

    /// Starts a monitor that first moves itself into cgroup directory
    /// `cgroup` (a shell writes its pid to `cgroup.procs`, then execs it).
    pub fn start_in(config: &str, cgroup: &Path) -> Daemon {
        let mut d = Self::prepare(config, "");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
            .arg(cgroup)
            .arg(BIN);
        d.launch_with(cmd);
        d
    }

    /// A monitor configured but not started: see [`Daemon::launch_with`].
    pub fn prepare(config: &str, monitor_extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        // Other users' CLIs must reach the socket (the monitor checks rights).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let socket = dir.path().join("resmon.sock");
        let text = format!(
            "[monitor]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{monitor_extra}\n{config}",
            socket.display(),
            dir.path().join("state").display()
        );
        std::fs::write(dir.path().join("resmon.toml"), text).unwrap();
        Daemon {
            dir,
            socket,
            child: None,
        }
    }

    /// Starts `resmon serve` on this daemon's config and waits for its socket.
    pub fn launch(&mut self) {
        self.launch_with(Command::new(BIN));
    }

    /// Starts `cmd` (the resmon binary, or a wrapper that execs it) as the
    /// monitor and waits for its socket.
    pub fn launch_with(&mut self, cmd: Command) {
        self.child = Some(serve(cmd, self.dir.path(), "debug"));
        let d = self;
        let s = d.socket.clone();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            // A socket left by a killed monitor does not answer.
            if std::os::unix::net::UnixStream::connect(&s).is_ok() {
                break;
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("resmon serve exited with {status}:\n{}", d.log());
            }
            assert!(Instant::now() < end, "socket never answered:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Launches the monitor in a mount namespace of its own in which `dir`
    /// (created here) is a tmpfs of `size` (e.g. `"256k"`), for a test
    /// that fills it.
    pub fn launch_on_tmpfs(&mut self, dir: &Path, size: &str) {
        std::fs::create_dir(dir).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size},mode=0700 resmon-test \"$0\" && exec \"$@\""
            ))
            .arg(dir)
            .arg(BIN);
        self.launch_with(cmd);
    }

    /// Kills the monitor with SIGKILL: no cleanup, its resources keep running.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until the state file records every resource as it runs now
    /// (pids included), so a SIGKILL loses nothing.
    pub fn wait_saved(&self) {
        wait_for(
            "the state file to catch up",
            Duration::from_secs(20),
            || {
                let Some(saved) = saved_state(self.dir.path()) else {
                    return false;
                };
                self.status().iter().all(|r| {
                    let s = &saved["resources"][r["name"].as_str().unwrap()];
                    s["state"] == r["state"]
                        && r["pids"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|p| s["saved"]["pid"] == *p)
                })
            },
        );
    }

    /// The config file, to edit between runs.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("resmon.toml")
    }

    /// The monitor's instance name, as used in process markers.
    pub fn instance(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/instance"))
            .expect("the monitor writes its instance")
            .trim()
            .to_string()
    }

    /// Whether this monitor keeps resource processes in cgroup v2 (it logs
    /// its backend when it starts), rather than in process groups.
    pub fn uses_cgroups(&self) -> bool {
        self.log()
            .contains("resource processes are kept in cgroup v2")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this monitor.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.run_cli(Command::new(BIN), args)
    }

    /// Runs the CLI as another user (`setpriv`, no supplementary groups).
    pub fn cli_as(&self, uid: u32, args: &[&str]) -> Output {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(BIN);
        self.run_cli(c, args)
    }

    fn run_cli(&self, mut c: Command, args: &[&str]) -> Output {
        c.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("RESMON_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run resmon")
    }

    /// Runs the CLI and insists on exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "resmon {args:?} failed ({}): {}{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> Vec<Value> {
        let text = self.ok(&["status", "--json"]);
        let v: Value = serde_json::from_str(&text).expect("status --json is JSON");
        v["resources"].as_array().expect("resources").clone()
    }

    pub fn resource(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no resource {name}"))
    }

    pub fn state(&self, name: &str) -> String {
        self.resource(name)["state"].as_str().unwrap().to_string()
    }

    /// Waits until `name` is in `state`. A resource not listed yet (a
    /// reload that adds it is still being applied) is waited for too.
    pub fn wait_state(&self, name: &str, state: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let r = self.status().into_iter().find(|r| r["name"] == name);
            if r.as_ref().is_some_and(|r| r["state"] == state) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{name} never became {state}; now {}\n--- daemon log ---\n{}",
                r.map_or_else(|| "not listed".to_string(), |r| r.to_string()),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pids(&self, name: &str) -> Vec<u32> {
        self.resource(name)["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect()
    }

    /// Every live process that carries this resource's marker, found through
    /// /proc independently of the monitor.
    pub fn marked(&self, name: &str) -> Vec<u32> {
        marked_processes(&format!("RESMON_RESOURCE={}/{name}", self.instance()))
    }

    /// The event feed as JSON values.
    pub fn events(&self) -> Vec<Value> {
        self.ok(&["events", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    /// The reasons of every event so far, of resource `name` when given.
    pub fn reasons(&self, name: Option<&str>) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| name.is_none_or(|n| e["resource"] == n))
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    /// Sends SIGTERM and waits for the monitor to exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc_sig::TERM);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("monitor did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            signal(pid, libc_sig::TERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub mod libc_sig {
    pub const TERM: i32 = 15;
    pub const KILL: i32 = 9;
    pub const STOP: i32 = 19;
    pub const CONT: i32 = 18;
}

/// Starts `cmd` (the resmon binary, or a wrapper that execs it) as
/// `serve --config DIR/resmon.toml`, logging at `level` to DIR/daemon.log.
pub fn serve(mut cmd: Command, dir: &Path, level: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    cmd.args(["serve", "--config"])
        .arg(dir.join("resmon.toml"))
        .env("RESMON_LOG", level)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start resmon serve")
}

/// Sends a signal by pid ("no such process" is fine: it is gone already).
pub fn signal(pid: u32, sig: i32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let sig = match sig {
        1 => rustix::process::Signal::HUP,
        libc_sig::KILL => rustix::process::Signal::KILL,
        libc_sig::STOP => rustix::process::Signal::STOP,
        libc_sig::CONT => rustix::process::Signal::CONT,
        _ => rustix::process::Signal::TERM,
    };
    let _ = rustix::process::kill_process(pid, sig);
}

pub use resmon_test_support::alive;

pub fn marked_processes(entry: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// The cgroup v2 directory this test runs in (a monitor it starts makes
/// its root below it); `None` without cgroup v2.
pub fn own_cgroup() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(PathBuf::from(mount).join(path.trim_start_matches('/')))
}

/// Every cgroup directory named `name` on this machine's cgroup v2 mounts
/// (found from /proc/self/mountinfo), at most four levels down.
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if e.file_name() == name {
                out.push(path.clone());
            }
            if depth > 0 {
                walk(&path, name, depth - 1, out);
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() == Some("cgroup2") {
            if let Some(point) = left.split(' ').nth(4) {
                walk(Path::new(point), name, 3, &mut out);
            }
        }
    }
    out
}

/// Removes the cgroup tree at `root` (a monitor's `resmon.INSTANCE`)
/// that a killed monitor left: waits (bounded) for its processes to be
/// gone, killing what is left, then removes the directories bottom-up.
pub fn remove_cgroup_tree(root: &Path) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let populated = || {
        std::fs::read_to_string(root.join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "populated 1"))
    };
    let end = Instant::now() + Duration::from_secs(10);
    while populated() && Instant::now() < end {
        let _ = std::fs::write(root.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(10));
    }
    remove(root);
}

/// The state file of a monitor whose files are under `dir`
/// (`dir/state/state.json`), when it can be read and parsed.
pub fn saved_state(dir: &Path) -> Option<Value> {
    let text = std::fs::read(dir.join("state/state.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn uid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `resmon COMMAND --config FILE` (`check` or `serve`) on a config it
/// must refuse, insists on exit `code`, and returns what it printed on stderr.
pub fn refused(command: &str, file: &Path, code: i32) -> String {
    let out = Command::new(BIN)
        .args([command, "--config"])
        .arg(file)
        .env("RESMON_LOG", "warn")
        .output()
        .expect("run resmon");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "resmon {command} --config {}: {err}",
        file.display()
    );
    err
}

/// What `resmon check` says of a config it refuses (exit 2).
pub fn check_refuses(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    refused("check", &write(dir.path(), "c.toml", config), 2)
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Says a test was skipped, on stderr and, under `scripts/test`, in the
/// file `RESMON_TEST_SKIPS` names (which it counts at the end).
pub fn skip(test: &str, why: &str) {
    eprintln!("skipped: {test}: {why}");
    if let Some(file) = std::env::var_os("RESMON_TEST_SKIPS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
        {
            let _ = std::io::Write::write_all(&mut f, format!("{test}: {why}\n").as_bytes());
        }
    }
}

/// Runs `resmon check --config FILE`, with `--validate` when asked.
pub fn check(file: &Path, validate: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check");
    if validate {
        cmd.arg("--validate");
    }
    cmd.arg("--config")
        .arg(file)
        .env("RESMON_LOG", "warn")
        .output()
        .expect("run resmon")
}

/// The live processes that have `path` mapped (a plugin library's hosts).
pub fn processes_mapping(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(&needle))
        })
        .collect()
}

/// The value of the metric sample `series` (its name and labels, exactly
/// as `/metrics` writes them), if the text has it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends one HTTP/1.1 request without a body on `stream` (`headers`: whole
/// lines, each ending in CRLF) and returns the status and the whole answer.
pub fn http_on(
    mut stream: impl std::io::Read + std::io::Write,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{headers}content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// Writes an executable OCF agent `resource.d/test/NAME` under `ROOT`
/// (`work/ocf`), with `script` as its body; returns the OCF root.
pub fn test_agent(work: &Path, name: &str, script: &str) -> PathBuf {
    let root = work.join("ocf");
    let dir = root.join("resource.d/test");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join(name);
    std::fs::write(&agent, script).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    root
}
