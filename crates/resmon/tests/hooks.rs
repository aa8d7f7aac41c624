//! Stop and reload hooks of `process` resources, through a real monitor and
//! the real CLI: `stop_command` runs before `stop_signal`, as the service
//! runs, and a hung one is ended at `pending_timeout`; `reload-resource`
//! and `signal` reach the running service without a restart; `start` and
//! `stop` are `online` and `offline`.
//!
//! The services are shell scripts that write what happens to them, one
//! line per event, into a file the test reads.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);
const NOBODY: u32 = 65534;

fn root() -> bool {
    uid_of(std::process::id()) == Some(0)
}

/// A directory anyone may write to (the service may run as nobody), and
/// the file the service and its hooks write into.
fn workdir(d: &Daemon) -> (PathBuf, PathBuf) {
    let dir = d.dir.path().join("work");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = dir.join("events");
    (dir, file)
}

/// A service that writes `started` once its traps are set, `sigterm` when
/// SIGTERM comes (then exits), and `sighup` on each SIGHUP.
fn service(file: &Path) -> String {
    format!(
        "trap 'echo sigterm >> {f}; exit 0' TERM; trap 'echo sighup >> {f}' HUP; \
         echo started >> {f}; while :; do sleep 1000 & wait; done",
        f = file.display()
    )
}

/// The lines of `file` so far.
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_line(file: &Path, line: &str) {
    wait_for(&format!("{line:?} in {}", file.display()), LONG, || {
        lines(file).iter().any(|l| l == line)
    });
}

/// Starts a monitor whose resource `web` runs [`service`] with `extra`
/// keys (`{file}` and `{dir}` in them are replaced), and waits until its
/// traps are set.
fn start(extra: &str) -> (Daemon, PathBuf, PathBuf) {
    let mut d = Daemon::prepare("", "");
    let (dir, file) = workdir(&d);
    let extra = extra
        .replace("{file}", &file.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let config = format!(
        "\n[[resource]]\nname = \"web\"\ntype = \"process\"\ncommand = [\"sh\", \"-c\", {:?}]\n{extra}\n",
        service(&file)
    );
    let text = std::fs::read_to_string(d.config_file()).unwrap() + &config;
    std::fs::write(d.config_file(), text).unwrap();
    d.launch();
    d.wait_state("web", "online", LONG);
    wait_line(&file, "started");
    (d, dir, file)
}

/// Events of kind `kind` of resource `web`, as their reasons.
fn reasons_of(d: &Daemon, kind: &str) -> Vec<String> {
    d.events()
        .iter()
        .filter(|e| e["kind"] == kind && e["resource"] == "web")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn stop_command_runs_before_the_stop_signal_as_the_service_runs() {
    // As nobody where the test may, so the hook's user is seen to be the
    // service's and not the monitor's.
    let user = if root() { "user = \"nobody\"" } else { "" };
    let (d, dir, file) = start(&format!(
        r#"
environment = {{ GREETING = "hello there" }}
working_directory = "{{dir}}"
{user}
stop_command = ["sh", "-c", "echo \"stop_command $(id -u) $GREETING $(pwd) $RESMON_RESOURCE\" >> {{file}}; echo bye from stop_command"]
"#
    ));
    let main = d.pids("web")[0];
    d.ok(&["offline", "web", "--wait"]);
    let uid = if root() {
        NOBODY
    } else {
        uid_of(std::process::id()).unwrap()
    };
    assert_eq!(
        lines(&file),
        [
            "started".to_string(),
            format!(
                "stop_command {uid} hello there {} {}/web",
                dir.display(),
                d.instance()
            ),
            "sigterm".to_string(),
        ],
        "{}",
        d.log()
    );
    assert!(!alive(main));
    assert!(d.marked("web").is_empty(), "{:?}", d.marked("web"));
    // Its output went where the service's goes: the resource's log.
    let logs = d.ok(&["logs", "web"]);
    assert!(logs.contains("bye from stop_command"), "{logs}");
    // A stop by offline, not by terminate.
    assert!(reasons_of(&d, "terminate").is_empty());
}

#[test]
fn a_failing_stop_command_is_logged_and_the_stop_signal_still_sent() {
    let (d, _, file) = start(r#"stop_command = ["sh", "-c", "exit 3"]"#);
    d.ok(&["offline", "web", "--wait"]);
    assert_eq!(lines(&file), ["started", "sigterm"]);
    let logged = reasons_of(&d, "log");
    assert!(
        logged
            .iter()
            .any(|r| r == "stop_command exited with code 3; sending stop_signal all the same"),
        "{logged:?}"
    );
    assert!(d.marked("web").is_empty());
}

#[test]
fn a_hung_stop_command_is_ended_at_pending_timeout() {
    let (d, _, file) = start(
        r#"
pending_timeout = "1s"
stop_command = ["sh", "-c", "echo hook $$ >> {file}; exec sleep 7777"]
"#,
    );
    let main = d.pids("web")[0];
    let asked = Instant::now();
    d.ok(&["offline", "web", "--wait"]);
    let took = asked.elapsed();
    assert!(took >= Duration::from_secs(1), "ended after {took:?}");
    assert_eq!(d.state("web"), "offline");
    // The hook ran, hung, and never let the stop signal go out: terminate
    // ended the hook and the service together.
    assert_eq!(lines(&file).len(), 2, "{:?}", lines(&file));
    assert!(!alive(main));
    assert!(d.marked("web").is_empty(), "{:?}", d.marked("web"));
    let hook: u32 = lines(&file)[1]
        .strip_prefix("hook ")
        .and_then(|p| p.parse().ok())
        .expect("the hook wrote its pid");
    assert!(
        !alive(hook),
        "the hung stop_command {hook} outlived the stop"
    );
    let terminated = reasons_of(&d, "terminate");
    assert_eq!(terminated.len(), 1, "{terminated:?}");
    let stopped = reasons_of(&d, "stopped");
    assert!(
        stopped
            .iter()
            .any(|r| r.contains("the terminate rung") || r.contains("the forced rung")),
        "{stopped:?}"
    );
}
