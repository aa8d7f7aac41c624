//! End-to-end: a real monitor, real processes, the real CLI over the real socket.

mod common;

use common::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// A service that ignores SIGTERM, with a `setsid` grandchild that ignores it too.
const STUBBORN: &str =
    r#"sh -c 'trap "" TERM; setsid sh -c "sleep 1000 & sleep 1000" & sleep 1000 & wait'"#;

fn stubborn(name: &str, pending: &str) -> String {
    format!(
        r#"
[[resource]]
name = "{name}"
type = "process"
command = {command:?}
stdout = "null"
pending_timeout = "{pending}"
"#,
        command = STUBBORN
    )
}

#[test]
fn a_service_ignoring_sigterm_is_terminated_after_pending_timeout() {
    let d = Daemon::start(&stubborn("svc", "1s"));
    d.wait_state("svc", "online", LONG);
    wait_for("the whole tree to start", LONG, || {
        d.marked("svc").len() >= 5
    });
    let before = d.marked("svc");
    let start = Instant::now();
    d.ok(&["offline", "svc", "--wait"]);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(1), "offline took only {took:?}");
    assert_eq!(d.state("svc"), "offline");
    assert!(
        d.marked("svc").is_empty(),
        "survivors: {:?}",
        d.marked("svc")
    );
    for pid in before {
        assert!(!alive(pid), "{pid} survived");
    }
    let events = d.events();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "terminate" && e["resource"] == "svc"),
        "no terminate event: {events:?}"
    );
}

fn no_survivors_after(cgroups: &str, how: &[&str]) {
    let d = Daemon::start_with(&stubborn("svc", "1s"), &format!("cgroups = \"{cgroups}\""));
    d.wait_state("svc", "online", LONG);
    wait_for("the whole tree to start", LONG, || {
        d.marked("svc").len() >= 5
    });
    let mut args = how.to_vec();
    args.push("svc");
    d.ok(&args);
    assert!(
        d.marked("svc").is_empty(),
        "{cgroups} {how:?}: survivors {:?}",
        d.marked("svc")
    );
}

#[test]
fn setsid_grandchildren_do_not_survive_offline_with_cgroups() {
    no_survivors_after("auto", &["offline", "--wait"]);
}

#[test]
fn setsid_grandchildren_do_not_survive_terminate_with_cgroups() {
    no_survivors_after("auto", &["terminate"]);
}

#[test]
fn setsid_grandchildren_do_not_survive_offline_with_process_groups() {
    no_survivors_after("off", &["offline", "--wait"]);
}

#[test]
fn setsid_grandchildren_do_not_survive_terminate_with_process_groups() {
    no_survivors_after("off", &["terminate"]);
}

#[test]
fn terminate_reports_its_exit_code_and_does_not_restart() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
restart_delay = "0s"
"#,
    );
    d.wait_state("svc", "online", LONG);
    let pid = d.pids("svc")[0];
    d.ok(&["terminate", "svc", "--exit-code", "7"]);
    assert!(!alive(pid));
    let r = d.resource("svc");
    assert_eq!(r["state"], "offline");
    assert!(r["reason"].as_str().unwrap().contains("exit code 7"), "{r}");
    assert_eq!(r["restarts"], 0);
}

#[test]
fn a_crash_loop_stops_at_the_restart_threshold() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "crashy"
type = "process"
command = "sh -c 'exit 3'"
restart_action = "restart"
restart_threshold = 2
restart_delay = "0s"
"#,
    );
    d.wait_state("crashy", "failed", LONG);
    // It stays failed: no further restart is scheduled.
    let end = Instant::now() + LONG;
    loop {
        let r = d.resource("crashy");
        if r["state"] == "failed" && r["restarts"] == 2 && r["call"].is_null() {
            break;
        }
        assert!(
            Instant::now() < end,
            "never settled: {r}\n{:#?}\n{}",
            d.events(),
            d.log()
        );
        std::thread::yield_now();
    }
    let r = d.resource("crashy");
    assert!(
        r["reason"].as_str().unwrap().contains("restart_threshold"),
        "{r}"
    );
    let events = d.events();
    let onlines = events
        .iter()
        .filter(|e| e["resource"] == "crashy" && e["state"] == "online_pending")
        .count();
    assert_eq!(onlines, 3, "first start and two restarts: {events:#?}");
}

#[test]
fn a_killed_service_is_restarted_at_once_from_its_pidfd() {
    // looks_alive polls once an hour: only the pidfd can notice the death.
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
looks_alive_interval = "1h"
is_alive_interval = "1h"
restart_delay = "0s"
"#,
    );
    d.wait_state("svc", "online", LONG);
    let old = d.pids("svc")[0];
    signal(old, libc_sig::KILL);
    wait_for("a new pid", Duration::from_secs(5), || {
        let r = d.resource("svc");
        r["state"] == "online" && r["pids"].as_array().unwrap().iter().any(|p| p != old)
    });
    assert_eq!(d.resource("svc")["restarts"], 1);
    let reasons = d.reasons(None);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("main process {old}"))),
        "{reasons:?}"
    );
}

#[test]
fn dependencies_order_online_and_offline() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "web"
type = "process"
group = "app"
depends_on = ["api"]
command = "sleep 1000"

[[resource]]
name = "api"
type = "process"
group = "app"
depends_on = ["db"]
command = "sleep 1000"

[[resource]]
name = "db"
type = "process"
group = "app"
command = "sleep 1000"
"#,
    );
    d.wait_state("web", "online", LONG);
    let order = |state: &str| -> Vec<String> {
        d.events()
            .iter()
            .filter(|e| e["kind"] == "state" && e["state"] == state)
            .map(|e| e["resource"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(order("online"), ["db", "api", "web"]);
    d.ok(&["offline", "db", "--wait"]);
    assert_eq!(order("offline"), ["web", "api", "db"]);
    for n in ["web", "api", "db"] {
        assert_eq!(d.state(n), "offline");
    }
    // Online of the top brings its providers first.
    d.ok(&["online", "web", "--wait"]);
    assert_eq!(order("online"), ["db", "api", "web", "db", "api", "web"]);
}

#[test]
fn a_failing_probe_fails_and_restarts_the_service() {
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
probe = {{ type = "tcp", address = "127.0.0.1:{port}", timeout = "200ms" }}
is_alive_interval = "200ms"
restart_action = "restart"
restart_threshold = 1
restart_delay = "0s"
"#
    ));
    // Failed twice, and its terminate done (status omits `terminating`
    // once it is): only then is nothing of it left.
    wait_for("the probe to fail it twice", LONG, || {
        let r = d.resource("svc");
        r["state"] == "failed"
            && r["restarts"] == 1
            && r["call"].is_null()
            && r["terminating"].is_null()
    });
    assert!(d.marked("svc").is_empty());
    // The event feed says why.
    let why = format!("is_alive: tcp probe: connecting to 127.0.0.1:{port}");
    let events = d.events();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "log" && e["reason"].as_str().unwrap().starts_with(&why)),
        "{events:#?}"
    );
}

#[test]
fn http_probe_and_readiness_keep_a_real_server_online() {
    let port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "web"
type = "process"
command = ["python3", "-u", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
stderr = "{access}"
startup = {{ type = "tcp", address = "127.0.0.1:{port}" }}
probe = {{ type = "http", url = "http://127.0.0.1:{port}/", timeout = "2s" }}
is_alive_interval = "300ms"
"#,
        access = access.display()
    ));
    d.ok(&["online", "web", "--wait"]);
    // Ready means it answers now.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("ready server accepts");
    // The server logs each probe's GET; three of them pass and it stays online.
    wait_for("three http probes", LONG, || {
        std::fs::read_to_string(&access)
            .map(|l| l.matches("\"GET / HTTP/1.1\" 200").count() >= 3)
            .unwrap_or(false)
    });
    assert_eq!(d.state("web"), "online");
    assert_eq!(d.resource("web")["restarts"], 0);
    // The probes are in the metrics: timed, none failed.
    let text = d.ok(&["metrics"]);
    let count = sample(
        &text,
        r#"resmon_probe_duration_seconds_count{probe="http"}"#,
    );
    assert!(count.is_some_and(|n| n >= 3.0), "{text}");
    assert!(
        !text.contains(r#"resmon_probe_failures_total{probe="http"}"#),
        "{text}"
    );
    let pid = d.pids("web")[0];
    d.ok(&["offline", "web", "--wait"]);
    assert!(!alive(pid));
}

#[test]
fn user_drops_privileges() {
    if uid_of(std::process::id()) != Some(0) {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
user = "nobody"
"#,
    );
    d.wait_state("svc", "online", LONG);
    let pid = d.pids("svc")[0];
    assert_eq!(uid_of(pid), Some(65534));
}

#[test]
fn sigterm_takes_everything_offline_and_exits_zero() {
    let mut d = Daemon::start(&format!(
        "{}\n{}",
        stubborn("a", "500ms"),
        r#"
[[resource]]
name = "b"
type = "process"
command = "sleep 1000"
"#
    ));
    d.wait_state("a", "online", LONG);
    d.wait_state("b", "online", LONG);
    wait_for("the whole tree to start", LONG, || d.marked("a").len() >= 5);
    let instance = d.instance();
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
    for name in ["a", "b"] {
        assert!(marked_processes(&format!("RESMON_RESOURCE={instance}/{name}")).is_empty());
    }
    assert!(!d.socket.exists(), "socket removed on exit");
}

#[test]
fn cli_errors_have_their_exit_codes() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
autostart = false
"#,
    );
    let out = d.cli(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no resource named \"nope\""));
    let out = d.cli(&["online", "bad/name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad resource name"));
    let out = d.cli(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["terminate", "svc", "--exit-code", "x"]);
    assert_eq!(out.status.code(), Some(2));
    // autostart = false: it stays offline until asked.
    assert_eq!(d.state("svc"), "offline");
    let out = std::process::Command::new(BIN)
        .args(["--socket", "/nonexistent/resmon.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the monitor"));
}

#[test]
fn an_invalid_config_is_refused_whole_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        r#"
[monitor]
socket = "relative.sock"

[defaults]
looks_alive_interval = "5"
restart_action = "reboot"

[[resource]]
name = "ok"
type = "process"
command = "sleep 1000"

[[resource]]
name = "missing"
type = "process"
command = "/no/such/binary --flag"
pending_timeout = "soon"

[[resource]]
name = "weird name!"
type = "process"
command = "sleep 1"

[[resource]]
name = "dep"
type = "nosuchtype"
"#,
    );
    let marker_before = marked_processes("RESMON_RESOURCE=");
    for verb in ["check", "serve"] {
        let out = std::process::Command::new(BIN)
            .args([verb, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "bad.toml",
            "nothing was started",
            "[monitor] socket: must be an absolute path",
            "[defaults]: looks_alive_interval: duration \"5\" has no unit",
            "[defaults]: restart_action: unknown restart_action \"reboot\"",
            "resource \"missing\" ([[resource]] #2): command: program \"/no/such/binary\" not found",
            "resource \"missing\" ([[resource]] #2): pending_timeout: bad duration \"soon\"",
            "[[resource]] #3: name \"weird name!\" may only hold",
            "resource \"dep\" ([[resource]] #4): unknown type \"nosuchtype\"",
        ] {
            assert!(err.contains(needle), "{verb}: missing {needle:?} in:\n{err}");
        }
    }
    assert_eq!(
        marked_processes("RESMON_RESOURCE=").len(),
        marker_before.len()
    );
    // Misspelt keys, wrong types and names of the wrong form: every one is
    // reported with its key path, and the closest key is suggested.
    let exe = write(dir.path(), "not-executable.sh", "#!/bin/sh\n");
    let file = write(
        dir.path(),
        "typos.toml",
        &format!(
            r#"
[monitr]

[[resource]]
name = "web"
type = "process"
command = "sleep 100"
dependson = ["x"]
restart_treshold = 3
environment = {{ PORT = 8080 }}
probe = {{ type = "exec", command = ["true"], timout = "5s" }}

[[resource]]
name = "script"
type = "process"
command = "{}"

[[resource]]
name = "agent"
type = "ocf"

[[resource]]
name = "proc"
type = "proces"
"#,
            exe.display()
        ),
    );
    let err = refused("check", &file, 2);
    for needle in [
        "8 problems",
        "unknown section [monitr]; did you mean [monitor]?",
        "resource \"web\" ([[resource]] #1): dependson: unknown key \"dependson\"; did you mean \"depends_on\"?",
        "resource \"web\" ([[resource]] #1): restart_treshold: unknown key \"restart_treshold\"; did you mean \"restart_threshold\"?",
        "resource \"web\" ([[resource]] #1): environment > PORT: invalid type: integer `8080`, expected a string",
        "resource \"web\" ([[resource]] #1): probe > timout: unknown key \"timout\"; did you mean \"timeout\"?",
        "resource \"script\" ([[resource]] #2): command: ",
        "not-executable.sh exists but is not executable (mode 0644)",
        "resource \"agent\" ([[resource]] #3): unknown type \"ocf\"; did you mean \"ocf:PROVIDER:AGENT\"?",
        "resource \"proc\" ([[resource]] #4): unknown type \"proces\"; did you mean \"process\"?",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // A syntax error names its line.
    let file = write(dir.path(), "syntax.toml", "[[resource]\nname = 1\n");
    assert!(refused("check", &file, 2).contains("line 1"));
    // A missing file.
    let missing = std::path::Path::new("/no/such/config.toml");
    assert!(refused("check", missing, 2).contains("cannot read the file"));
}

#[test]
fn the_quickstart_example_runs_as_written() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let text = std::fs::read_to_string(&root).unwrap();
    // Same file, own socket: strip nothing, the harness prepends [monitor].
    assert!(
        !text.contains("[monitor]"),
        "the quickstart relies on the default socket"
    );
    let d = Daemon::start(&text);
    d.ok(&["online", "web", "--wait"]);
    d.wait_state("heartbeat", "online", LONG);
    let out = d.ok(&["status"]);
    assert!(out.contains("web") && out.contains("online"), "{out}");
    // Its heartbeat rereads on reload-resource, and says so, same pid.
    let pids = d.pids("heartbeat");
    d.ok(&["reload-resource", "heartbeat"]);
    wait_for("the heartbeat to say it reloaded", LONG, || {
        d.ok(&["logs", "heartbeat"]).contains("heartbeat: reloaded")
    });
    assert_eq!(d.pids("heartbeat"), pids);
    d.ok(&["stop", "heartbeat", "--wait"]);
    wait_for("its stop_command's words in its log", LONG, || {
        d.ok(&["logs", "heartbeat"]).contains("heartbeat: stopping")
    });
}

#[test]
fn events_follow_streams_new_events() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
autostart = false
"#,
    );
    let mut follower = std::process::Command::new(BIN)
        .args(["--socket"])
        .arg(&d.socket)
        .args(["events", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    d.ok(&["online", "svc", "--wait"]);
    let end = Instant::now() + LONG;
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = line.contains("\"state\":\"online\"");
            seen.push(line);
            if done {
                break;
            }
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        seen.iter().any(|l| l.contains("\"state\":\"online\"")),
        "{seen:#?}"
    );
}

#[test]
fn environment_and_working_directory_reach_the_service() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("seen");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "svc"
type = "process"
command = ["sh", "-c", "echo \"$GREETING $(pwd)\" > {out}; exec sleep 1000"]
environment = {{ GREETING = "hello world" }}
working_directory = "{dir}"
"#,
        out = out.display(),
        dir = work.path().display()
    ));
    d.wait_state("svc", "online", LONG);
    wait_for("the service to write what it sees", LONG, || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
    });
    let seen = std::fs::read_to_string(&out).unwrap();
    let dir = work.path().canonicalize().unwrap();
    assert_eq!(seen.trim(), format!("hello world {}", dir.display()));
}

#[test]
fn a_stop_signal_during_start_up_stops_cleanly() {
    // The socket answers before the resources are open and started; a
    // SIGTERM at that moment must not kill the monitor outright: it exits
    // 0 and leaves nothing behind.
    let resources: String = (0..50)
        .map(|i| {
            format!(
                "[[resource]]\nname = \"s{i}\"\ntype = \"process\"\ncommand = [\"sleep\", \"1000\"]\nstdout = \"null\"\n"
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("resmon.sock");
    std::fs::write(
        dir.path().join("resmon.toml"),
        format!(
            "[monitor]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{resources}",
            socket.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = serve(std::process::Command::new(BIN), dir.path(), "info");
    // As soon as the socket answers: no pause between the first answer
    // and the signal.
    let end = Instant::now() + LONG;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < end, "the socket never answered");
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::yield_now();
    }
    signal(child.id(), libc_sig::TERM);
    let end = Instant::now() + LONG;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the monitor did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(status.success(), "monitor ended with {status}:\n{log}");
    let instance = std::fs::read_to_string(dir.path().join("state/instance")).unwrap();
    let marker = format!("RESMON_RESOURCE={}/", instance.trim());
    let left: Vec<u32> = (0..50)
        .flat_map(|i| marked_processes(&format!("{marker}s{i}")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{log}");
    assert!(!socket.exists(), "the socket was left behind");
}

/// Sends a raw HTTP request on the socket and returns the whole answer.
fn raw_http(socket: &std::path::Path, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn exit_codes_and_durations_out_of_range_are_refused() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
restart_delay = "0s"
"#,
    );
    d.wait_state("svc", "online", LONG);
    // The CLI refuses an exit code no process can report: usage, exit 2.
    let out = d.cli(&["terminate", "svc", "--exit-code", "300"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // So does the API, and nothing changes.
    let answer = raw_http(
        &d.socket,
        "POST /v1/resources/svc/terminate HTTP/1.1\r\nhost: resmon\r\ncontent-type: application/json\r\ncontent-length: 18\r\nconnection: close\r\n\r\n{\"exit_code\": 300}",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("0 to 255"), "{answer}");
    assert_eq!(d.state("svc"), "online");
    // No body is the same as `{}`: exit code 1.
    let answer = raw_http(
        &d.socket,
        "POST /v1/resources/svc/terminate?wait=true HTTP/1.1\r\nhost: resmon\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = d.resource("svc");
    assert!(r["reason"].as_str().unwrap().contains("exit code 1"), "{r}");

    // A duration too long to add to a clock is refused by check, naming it.
    let file = write(
        d.dir.path(),
        "long.toml",
        "[[resource]]\nname = \"x\"\ntype = \"process\"\ncommand = \"sleep 1\"\nretry_period_on_failure = \"18446744073709551615s\"\n",
    );
    let err = refused("check", &file, 2);
    assert!(
        err.contains("retry_period_on_failure") && err.contains("longest allowed"),
        "{err}"
    );
}

#[test]
fn names_of_cgroup_control_files_get_cgroups_of_their_own() {
    let one = |name: &str| {
        format!("[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n")
    };
    let mut d = Daemon::start(&one("first"));
    d.wait_state("first", "online", LONG);
    if !d.uses_cgroups() {
        eprintln!("skipped: needs cgroup v2");
        return;
    }
    // Every control file the kernel shows in the monitor's own root, as a
    // resource name, beside the names that once shared a directory.
    let root = cgroups_named(&format!("resmon.{}", d.instance()));
    assert_eq!(root.len(), 1, "{root:?}");
    let mut names: Vec<String> = std::fs::read_dir(&root[0])
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "cgroup.procs"), "{names:?}");
    names.extend(["_cgroup.procs-dfcdb7d2".to_string(), "first".to_string()]);
    let file = d.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    let head = &text[..text.find("[[resource]]").unwrap()];
    let all: String = names.iter().map(|n| one(n)).collect();
    std::fs::write(&file, format!("{head}{all}")).unwrap();
    d.ok(&["reload"]);
    let mut pids = std::collections::HashSet::new();
    for n in &names {
        d.wait_state(n, "online", LONG);
        let pid = d.pids(n)[0];
        assert!(pids.insert(pid), "{n} shares pid {pid}");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroup.trim_end().ends_with(&format!("/r.{n}")),
            "{n}: {cgroup}"
        );
    }
    // Stopping one leaves the one whose directory it once shared.
    let other = d.pids("_cgroup.procs-dfcdb7d2")[0];
    d.ok(&["offline", "cgroup.procs", "--wait"]);
    assert!(alive(other));
    assert_eq!(d.state("_cgroup.procs-dfcdb7d2"), "online");
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}

#[test]
fn requests_the_server_cannot_parse_get_json_errors() {
    let d = Daemon::start("");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let big_header = format!(
        "GET /v1/resources HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    for (request, status, words) in [
        ("GARBAGE\r\n\r\n".to_string(), "400", "malformed request"),
        (long_uri, "414", "URI is too long"),
        (big_header, "431", "headers are too large"),
    ] {
        // The server may answer and close before it read all of it: the
        // rest of the write fails, the answer is there all the same.
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let _ = s.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert!(v["error"].as_str().unwrap().contains(words), "{v}");
    }
    // The monitor serves on.
    d.ok(&["status"]);
}

#[test]
fn https_probes_check_certificates_as_configured() {
    let work = tempfile::tempdir().unwrap();
    // A CA of the test's own, and the server's certificate signed by it.
    let w = work.path();
    let (ca, cert, key) = (w.join("ca.pem"), w.join("cert.pem"), w.join("key.pem"));
    std::fs::write(
        w.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=resmon-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr",
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 1 -extfile leaf.ext -out cert.pem",
    ] {
        let made = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(w)
            .output()
            .expect("openssl (scripts/test installs it)");
        assert!(made.status.success(), "openssl {args}: {made:?}");
    }
    let port = free_port();
    let log = work.path().join("server.log");
    let probe = |extra: &str| {
        format!(
            "{{ type = \"http\", url = \"https://127.0.0.1:{port}/\", timeout = \"2s\"{extra} }}"
        )
    };
    let checked = |name: &str, extra: &str| {
        format!(
            "[[resource]]\nname = \"{name}\"\ngroup = \"g\"\ntype = \"process\"\ncommand = \"sleep 1000\"\ndepends_on = [\"tls\"]\nprobe = {}\nis_alive_interval = \"200ms\"\nrestart_action = \"none\"\n",
            probe(extra)
        )
    };
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "tls"
group = "g"
type = "process"
command = ["python3", "-u", "-c", """
import http.server, ssl
s = http.server.ThreadingHTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain("{cert}", "{key}")
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"""]
working_directory = "{dir}"
stderr = "{log}"
startup = {{ type = "tcp", address = "127.0.0.1:{port}" }}

{}{}{}"#,
        checked("self_signed", ", tls_verify = false"),
        checked("own_ca", &format!(", ca_file = \"{}\"", ca.display())),
        checked("strict", ""),
        cert = cert.display(),
        key = key.display(),
        log = log.display(),
        dir = work.path().display(),
    ));
    // The default checks the certificate against Mozilla's roots: refused.
    d.wait_state("strict", "failed", LONG);
    let why = d.reasons(Some("strict")).join("\n");
    assert!(
        why.contains("https://127.0.0.1") && why.contains("ertificate"),
        "{why}"
    );
    // The others pass probe after probe.
    wait_for("six probes that passed", LONG, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.matches("\"GET / HTTP/1.1\" 200").count() >= 6)
    });
    for name in ["self_signed", "own_ca"] {
        assert_eq!(
            d.state(name),
            "online",
            "{name}: {:?}",
            d.reasons(Some(name))
        );
        assert_eq!(d.resource(name)["restarts"], 0);
    }
}

#[test]
fn tls_settings_on_a_plain_http_probe_are_refused() {
    let err = check_refuses(
        r#"
[[resource]]
name = "a"
type = "process"
command = "sleep 1"
probe = { type = "http", url = "http://127.0.0.1:1/", tls_verify = false }

[[resource]]
name = "b"
type = "process"
command = "sleep 1"
probe = { type = "http", url = "https://127.0.0.1:1/", ca_file = "/no/such/ca.pem" }
"#,
    );
    assert!(
        err.contains("probe: tls_verify and ca_file are for https:// URLs only"),
        "{err}"
    );
    assert!(
        err.contains("probe > ca_file: /no/such/ca.pem: No such file"),
        "{err}"
    );
}
