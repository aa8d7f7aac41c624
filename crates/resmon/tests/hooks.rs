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
/// SIGTERM comes (then exits), and `sighup` on each SIGHUP; its child
/// writes `child started` and `child sighup` likewise (and exits quietly
/// on SIGTERM). Its argument is the file.
const SERVICE: &str = r#"
f="$1"
trap 'echo sigterm >> "$f"; exit 0' TERM
trap 'echo sighup >> "$f"' HUP
sh -c 'trap "echo child sighup >> \"$0\"" HUP; trap "exit 0" TERM; echo child started >> "$0"; while :; do sleep 1000 & wait; done' "$f" &
echo started >> "$f"
while :; do sleep 1000 & wait; done
"#;

/// The lines of `file` so far, the child's left out.
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("child "))
        .map(str::to_string)
        .collect()
}

/// How many lines of `file` are `line` (the child's counted too).
fn count(file: &Path, line: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}

fn wait_count(file: &Path, line: &str, n: usize) {
    wait_for(
        &format!("{n} of {line:?} in {}", file.display()),
        LONG,
        || count(file, line) >= n,
    );
}

/// Starts a monitor whose resource `web` runs [`SERVICE`] with `extra`
/// keys (`{file}` and `{dir}` in them are replaced), and waits until its
/// traps are set.
fn start(extra: &str) -> (Daemon, PathBuf, PathBuf) {
    start_with("", extra)
}

/// [`start`], with `monitor` lines in the config's `[monitor]`.
fn start_with(monitor: &str, extra: &str) -> (Daemon, PathBuf, PathBuf) {
    let mut d = Daemon::prepare("", monitor);
    let (dir, file) = workdir(&d);
    let script = write(&dir, "service.sh", SERVICE);
    let extra = extra
        .replace("{file}", &file.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let config = format!(
        "\n[[resource]]\nname = \"web\"\ntype = \"process\"\ncommand = [\"sh\", {:?}, {:?}]\n{extra}\n",
        script.display().to_string(),
        file.display().to_string()
    );
    let text = std::fs::read_to_string(d.config_file()).unwrap() + &config;
    std::fs::write(d.config_file(), text).unwrap();
    d.launch();
    d.wait_state("web", "online", LONG);
    wait_count(&file, "started", 1);
    wait_count(&file, "child started", 1);
    (d, dir, file)
}

/// Runs the CLI and insists on exit `code` with `want` in what it printed
/// on stderr.
fn fails(d: &Daemon, args: &[&str], code: i32, want: &str) {
    let out = d.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "resmon {args:?}: {err}");
    assert!(err.contains(want), "resmon {args:?}: {want:?} not in {err}");
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
    wait_for("the hook's output in the resource's log", LONG, || {
        d.ok(&["logs", "web"]).contains("bye from stop_command")
    });
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

/// With cgroups the hook dies in `cgroup.kill`; with process groups it is
/// found by its marker.
fn a_hung_stop_command_is_ended_at_pending_timeout(cgroups: &str) {
    let (d, _, file) = start_with(
        &format!("cgroups = \"{cgroups}\""),
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

#[test]
fn a_hung_stop_command_is_ended_at_pending_timeout_with_cgroups() {
    a_hung_stop_command_is_ended_at_pending_timeout("auto");
}

#[test]
fn a_hung_stop_command_is_ended_at_pending_timeout_with_process_groups() {
    a_hung_stop_command_is_ended_at_pending_timeout("off");
}

#[test]
fn reload_resource_sends_reload_signal_to_the_main_process_only() {
    let (d, _, file) = start(r#"reload_signal = "SIGHUP""#);
    let pids = d.pids("web");
    let said = d.ok(&["reload-resource", "web"]);
    assert_eq!(
        said.trim(),
        format!("web: sent SIGHUP to main process {}", pids[0])
    );
    wait_count(&file, "sighup", 1);
    assert_eq!(count(&file, "child sighup"), 0);
    assert_eq!(d.state("web"), "online");
    assert_eq!(d.pids("web"), pids);
    assert_eq!(d.resource("web")["restarts"], 0);
    let logged = reasons_of(&d, "log");
    assert!(
        logged.contains(&format!("reload: sent SIGHUP to main process {}", pids[0])),
        "{logged:?}"
    );
}

#[test]
fn reload_resource_runs_reload_command_bounded_by_pending_timeout() {
    // Both keys: the command wins, and no SIGHUP goes out.
    let (d, dir, file) = start(
        r#"
pending_timeout = "1s"
environment = { GREETING = "hello" }
reload_signal = "SIGHUP"
reload_command = ["sh", "-c", "test -e {dir}/hang && exec sleep 7777; test -e {dir}/fail && exit 4; echo reloaded $GREETING $RESMON_RESOURCE >> {file}"]
"#,
    );
    let pids = d.pids("web");
    let said = d.ok(&["reload-resource", "web"]);
    assert_eq!(said.trim(), "web: reload_command exited with code 0");
    assert_eq!(
        lines(&file),
        [
            "started".to_string(),
            format!("reloaded hello {}/web", d.instance())
        ]
    );
    // A failing command fails the request (exit 1) and says how.
    write(&dir, "fail", "");
    fails(
        &d,
        &["reload-resource", "web"],
        1,
        "reload of resource web: reload_command exited with code 4",
    );
    // A hung one is killed at pending_timeout; the service is untouched.
    std::fs::remove_file(dir.join("fail")).unwrap();
    write(&dir, "hang", "");
    let asked = Instant::now();
    fails(
        &d,
        &["reload-resource", "web"],
        1,
        "reload_command did not finish within 1s; it was killed",
    );
    assert!(asked.elapsed() >= Duration::from_secs(1));
    assert_eq!(d.state("web"), "online");
    assert_eq!(d.pids("web"), pids);
    assert_eq!(count(&file, "sighup"), 0);
    let sleeping = d.marked("web").into_iter().any(|p| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x007777\x00")
    });
    assert!(!sleeping, "the hung reload_command outlived its limit");
}

#[test]
fn reload_and_signal_say_why_they_cannot_be_done() {
    let (d, _, file) = start("");
    fails(
        &d,
        &["reload-resource", "web"],
        2,
        "resource web has no reload_signal or reload_command",
    );
    // A signal that is not one: usage, and nothing is sent.
    let pids = d.pids("web");
    for bad in ["SIGFOO", "0", "hup!"] {
        fails(&d, &["signal", "web", bad], 2, "bad signal");
    }
    fails(
        &d,
        &["signal", "nope", "HUP"],
        1,
        "no resource named \"nope\"",
    );
    assert_eq!(d.pids("web"), pids);
    assert_eq!(lines(&file), ["started"]);
    // Not online: nothing to reload or signal.
    d.ok(&["offline", "web", "--wait"]);
    fails(
        &d,
        &["reload-resource", "web"],
        1,
        "resource web is offline, not online: only an online resource can be reloaded",
    );
    fails(
        &d,
        &["signal", "web", "HUP"],
        1,
        "resource web is offline: no process of it runs to be signalled",
    );
}

#[test]
fn signal_reaches_the_main_process_or_with_all_every_process() {
    let (d, _, file) = start("");
    let pids = d.pids("web");
    let said = d.ok(&["signal", "web", "HUP"]);
    assert_eq!(
        said.trim(),
        format!("web: sent SIGHUP to main process {}", pids[0])
    );
    wait_count(&file, "sighup", 1);
    assert_eq!(count(&file, "child sighup"), 0);
    let said = d.ok(&["signal", "web", "1", "--all"]);
    assert_eq!(
        said.trim(),
        "web: sent SIGHUP to every process of the resource"
    );
    wait_count(&file, "sighup", 2);
    wait_count(&file, "child sighup", 1);
    assert_eq!(d.state("web"), "online");
    assert_eq!(d.pids("web"), pids);
}

#[test]
fn types_without_reload_or_signal_say_so() {
    if !Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists() {
        skip(
            "types_without_reload_or_signal_say_so",
            "no ocf:heartbeat:Dummy (apt-get install resource-agents)",
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!(
        "[[resource]]\nname = \"dummy\"\ntype = \"ocf:heartbeat:Dummy\"\nparams = {{ state = \"{}\" }}\n",
        work.path().join("dummy.state").display()
    ));
    d.wait_state("dummy", "online", LONG);
    for (args, op) in [
        (&["reload-resource", "dummy"][..], "reload"),
        (&["signal", "dummy", "HUP"], "signal"),
    ] {
        let want = format!("{op} is not supported by type ocf:heartbeat:Dummy (resource dummy)");
        fails(&d, args, 2, &want);
    }
}

#[test]
fn start_and_stop_are_online_and_offline() {
    let (d, _, file) = start("");
    let said = d.ok(&["stop", "web", "--wait"]);
    assert_eq!(said.trim(), "web: offline");
    assert_eq!(lines(&file), ["started", "sigterm"]);
    let said = d.ok(&["start", "web", "--wait"]);
    assert_eq!(said.trim(), "web: online");
    let help = d.ok(&["--help"]);
    assert!(help.contains("[alias: start]"), "{help}");
    assert!(help.contains("[alias: stop]"), "{help}");
}

#[test]
fn a_query_only_user_may_neither_reload_nor_signal() {
    if !root() {
        skip(
            "a_query_only_user_may_neither_reload_nor_signal",
            "needs root to run the CLI as another user",
        );
        return;
    }
    let (d, _, file) = start(r#"reload_signal = "HUP""#);
    let pids = d.pids("web");
    for args in [
        &["reload-resource", "web"][..],
        &["signal", "web", "HUP"],
        &["signal", "web", "KILL", "--all"],
    ] {
        let out = d.cli_as(NOBODY, args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not hold the control right"), "{err}");
    }
    assert_eq!(d.pids("web"), pids);
    assert_eq!(lines(&file), ["started"]);
    // Refused and granted requests alike are in the journal, with who asked.
    d.ok(&["signal", "web", "HUP"]);
    let requests: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e["kind"] == "request")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    for want in [
        "POST /v1/resources/web/reload by uid 65534 (nobody) refused",
        "POST /v1/resources/web/signal/KILL by uid 65534 (nobody) refused",
        "POST /v1/resources/web/signal/HUP by uid 0 (root)",
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(want)),
            "{want:?} not in {requests:#?}"
        );
    }
}
