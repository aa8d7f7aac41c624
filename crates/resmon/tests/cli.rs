//! How the CLI reaches the monitor: over its TCP listener with a bearer
//! token (`--url`), at the socket it is given, or, with none given, at the
//! first that answers of the caller's own default socket and the system's.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);
const OPS: &str = "operations-token-0123456789";
const READ: &str = "read-only-token-0123456789";
const NOBODY: u32 = 65534;
const SYSTEM_SOCKET: &str = "/run/resmon/resmon.sock";

/// A monitor with its TCP listener on `port`, an `ops` token with every
/// right and a `reader` one with `query`; `svc` waits to be brought online
/// and `talker` writes a line every 50 ms.
fn monitor_on(port: u16) -> Daemon {
    let d = Daemon::start(&format!(
        r#"
[api]
tcp = "127.0.0.1:{port}"

[[api.token]]
name = "ops"
token = "{OPS}"
rights = ["query", "control", "terminate"]

[[api.token]]
name = "reader"
token = "{READ}"
rights = ["query"]

[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
autostart = false

[[resource]]
name = "talker"
type = "process"
command = ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]
"#
    ));
    // The TCP listener is bound before the socket answers.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the TCP listener is there");
    d
}

/// `resmon ARGS` with nothing in the environment naming a monitor or a
/// token.
fn resmon(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RESMON_SOCKET")
        .env_remove("RESMON_URL")
        .env_remove("RESMON_TOKEN")
        .env("RESMON_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run resmon")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
}

/// A command kept running (`--follow`), its stdout read line by line on a
/// thread; killed when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(mut c: Command) -> Follower {
        let mut child = c.stdout(Stdio::piped()).spawn().expect("start resmon");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits for a line that `pick` takes; returns it.
    fn wait(&self, what: &str, mut pick: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + LONG;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pick(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no line with {what}; saw {seen:?}");
    }
}

impl Follower {
    /// Waits for it to exit by itself.
    fn exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + LONG;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "it did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_kind_of_command_works_over_the_tcp_listener() {
    let port = free_port();
    let mut d = monitor_on(port);
    d.wait_state("talker", "online", LONG);
    let url = format!("http://127.0.0.1:{port}");
    let with_token = |args: &[&str]| {
        let mut c = resmon(args);
        c.args(["--url", &url]).env("RESMON_TOKEN", OPS);
        c
    };

    let table = ok(run(&mut with_token(&["status"])));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("svc") && table.contains("talker"), "{table}");

    // Streams: the event feed and a resource's log, followed.
    let mut feed = Follower::start(with_token(&["events", "--follow", "--json"]));
    feed.wait("the history", |l| l.contains("\"kind\":\"monitor\""));
    let log = Follower::start(with_token(&["logs", "talker", "--follow", "--lines", "1"]));
    log.wait("a line the talker wrote", |l| l.ends_with("stdout: tick"));
    log.wait("a line written since", |l| l.ends_with("stdout: tick"));

    assert_eq!(
        ok(run(&mut with_token(&["online", "svc", "--wait"]))).trim(),
        "svc: online"
    );
    feed.wait("svc online", |l| {
        l.contains("\"resource\":\"svc\"") && l.contains("\"state\":\"online\"")
    });
    // The monitor took the request for the token's: it came over TCP.
    let history = ok(run(&mut with_token(&["events"])));
    assert!(
        history.contains("POST /v1/resources/svc/online by token \"ops\""),
        "{history}"
    );

    // The same with the token in a file, and the URL in RESMON_URL.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "token", &format!("{OPS}\n"));
    let mut c = resmon(&["offline", "svc", "--wait", "--token-file"]);
    c.arg(&file).env("RESMON_URL", &url);
    assert_eq!(ok(run(&mut c)).trim(), "svc: offline");
    assert_eq!(d.state("svc"), "offline");

    // A follower over TCP ends when the monitor does, after its last event.
    feed = Follower::start(with_token(&["events", "--follow"]));
    feed.wait("the history", |l| l.contains("svc offline"));
    assert!(d.stop().success());
    feed.wait("the monitor's last event", |l| {
        l.contains("monitor stopped")
    });
    let status = feed.exit();
    assert!(status.success(), "{status}");

    let out = run(&mut with_token(&["status"]));
    assert_eq!(out.status.code(), Some(3), "no monitor any more: {out:?}");
}

#[test]
fn a_token_the_listener_does_not_take_is_refused_naming_its_source() {
    let port = free_port();
    let d = monitor_on(port);
    let url = format!("http://127.0.0.1:{port}");
    let secret = "wrong-token-0123456789";
    let refused = |out: Output, source: &str| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(err.contains(source), "{err}");
        assert!(!err.contains(secret) && !err.contains(OPS), "{err}");
        err
    };

    let mut c = resmon(&["status", "--url", &url]);
    let err = refused(
        run(c.env("RESMON_TOKEN", secret)),
        "the token from RESMON_TOKEN",
    );
    assert!(err.contains("a valid bearer token is required"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "token", secret);
    let mut c = resmon(&["status", "--url", &url, "--token-file"]);
    refused(
        run(c.arg(&file)),
        &format!("the token from --token-file {}", file.display()),
    );

    refused(run(&mut resmon(&["status", "--url", &url])), "no token");

    // A token the listener takes, without the right: 403, also exit 4.
    let mut c = resmon(&["offline", "svc", "--url", &url]);
    let err = refused(
        run(c.env("RESMON_TOKEN", READ)),
        "the token from RESMON_TOKEN",
    );
    assert!(err.contains("access denied"), "{err}");
    assert!(err.contains("does not carry the control right"), "{err}");
    assert_eq!(
        d.state("svc"),
        "offline",
        "a refused request changes nothing"
    );
}

#[test]
fn a_url_nothing_answers_at_is_exit_3_and_https_a_usage_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = run(resmon(&["status", "--url", &url]).env("RESMON_TOKEN", OPS));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stderr(&out).contains(&format!("cannot reach the monitor at {url}")),
        "{out:?}"
    );

    let out = run(&mut resmon(&["status", "--url", "https://127.0.0.1:7474"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("plain HTTP"), "{out:?}");
}

#[test]
fn a_socket_given_is_the_only_one_tried() {
    let d = Daemon::start("");
    let socket = d.socket.to_str().unwrap();
    // After the command, in RESMON_SOCKET, and before the command as in
    // earlier releases.
    ok(run(&mut resmon(&["status", "--socket", socket])));
    ok(run(resmon(&["status"]).env("RESMON_SOCKET", socket)));
    ok(run(&mut resmon(&["--socket", socket, "status"])));

    let dead = d.dir.path().join("nothing.sock");
    let out = run(&mut resmon(&["status", "--socket", dead.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach the monitor at {}", dead.display())),
        "{err}"
    );
    assert!(!err.contains(SYSTEM_SOCKET), "only the socket given: {err}");

    // Commands that ask no monitor take no socket.
    let config = d.config_file();
    let out = run(resmon(&["--socket", socket, "check", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("`resmon check` asks none"), "{out:?}");
    let out = run(resmon(&["check", "--socket", socket, "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The CLI as a user who is not root (nobody, when the tests run as root),
/// with `runtime` as its XDG_RUNTIME_DIR and HOME; `None` (the test
/// skipped) where that user cannot be had.
fn as_a_user(test: &str, runtime: &Path, args: &[&str]) -> Option<Command> {
    let user = |args: &[&str]| {
        if uid_of(std::process::id()) != Some(0) {
            return Command::new(BIN);
        }
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(BIN)
            .args(args);
        c
    };
    let works = user(&["--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        skip(test, "setpriv cannot run resmon as uid 65534");
        return None;
    }
    let mut c = user(&[]);
    c.args(args)
        .env_remove("RESMON_SOCKET")
        .env_remove("RESMON_URL")
        .env("XDG_RUNTIME_DIR", runtime)
        .env("HOME", runtime)
        .env("RESMON_LOG", "warn")
        .stdin(Stdio::null());
    Some(c)
}

#[test]
fn without_a_socket_given_the_cli_tries_its_own_then_the_system_socket() {
    let test = "without_a_socket_given_the_cli_tries_its_own_then_the_system_socket";
    if std::os::unix::net::UnixStream::connect(SYSTEM_SOCKET).is_ok() {
        skip(test, "a monitor answers at /run/resmon/resmon.sock here");
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        runtime.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(mut c) = as_a_user(test, runtime.path(), &["status"]) else {
        return;
    };
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = stderr(&out);
    let own = runtime.path().join("resmon.sock");
    let first = err.find(&format!("  {}: ", own.display()));
    let second = err.find(&format!("  {SYSTEM_SOCKET}: "));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "both sockets, in that order: {err}"
    );
    assert!(err.contains("tried, in this order"), "{err}");
}

#[test]
fn the_callers_own_socket_is_found_without_being_named() {
    let test = "the_callers_own_socket_is_found_without_being_named";
    // A monitor at DIR/resmon.sock, which is the caller's own default
    // when its XDG_RUNTIME_DIR is DIR; others may query by default.
    let d = Daemon::start(
        "[[resource]]\nname = \"svc\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n",
    );
    let Some(mut c) = as_a_user(test, d.dir.path(), &["status", "--json"]) else {
        return;
    };
    let text = ok(run(&mut c));
    assert!(text.contains("\"svc\""), "{text}");
}
