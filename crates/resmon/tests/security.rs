//! The attacks of docs/security.md, each run for real: an unprivileged local
//! user (`nobody`, through `setpriv`) attacks a real `resmon serve` running
//! as root, and each test checks that the attack fails and that nothing was
//! written, chmodded, killed or left running.
//!
//! Every test needs root (to run the monitor as root and the attacker as
//! another user), the user `nobody` (uid 65534) and `setpriv`; some need a
//! `python3` that `nobody` can run. Where something is missing the test
//! prints `skipped: <test>: <why>` and passes.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const LONG: Duration = Duration::from_secs(20);
const SECRET: &str = "root only\n";

// ---------------------------------------------------------------------------
// Preconditions

/// Whether the machine can run an attack as `nobody` against a root
/// monitor; prints why not and returns false otherwise.
fn attack_possible(test: &str) -> bool {
    if uid_of(std::process::id()) != Some(0) {
        skip(
            test,
            "needs root to run the monitor as root and the attacker as nobody",
        );
        return false;
    }
    let nobody = Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == NOBODY.to_string())
        .unwrap_or(false);
    if !nobody {
        skip(test, "no user nobody with uid 65534");
        return false;
    }
    let setpriv = as_nobody("true")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !setpriv {
        skip(test, "setpriv cannot run a command as uid 65534");
        return false;
    }
    true
}

/// A `python3` that `nobody` can run (a root-only pyenv shim does not do).
fn nobody_python(test: &str) -> Option<String> {
    for candidate in ["python3", "/usr/bin/python3", "/usr/local/bin/python3"] {
        let ok = nobody_cmd(&[candidate, "-c", "import socket, select, resource"])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(candidate.to_string());
        }
    }
    skip(test, "no python3 that nobody can run");
    None
}

// ---------------------------------------------------------------------------
// The attacker

/// `setpriv` as nobody (no supplementary groups) running `args`.
fn nobody_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .args(args);
    c
}

/// A shell script run as nobody.
fn as_nobody(script: &str) -> Command {
    nobody_cmd(&["sh", "-c", script])
}

/// Runs a shell script as nobody and insists that it succeeds.
fn nobody_ok(script: &str) {
    let out = as_nobody(script)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process this test started: killed (and reaped) when the test ends,
/// whatever way it ends.
struct Proc(Option<Child>);

impl Proc {
    fn new(child: Child) -> Proc {
        Proc(Some(child))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Waits up to `limit` for it to exit on its own.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child().try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lines a child prints, read on a thread of their own.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The first line (from now) that `pick` accepts, within `limit`.
    fn wait(&self, what: &str, limit: Duration, mut pick: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if pick(&line) => return line,
                Ok(line) => {
                    seen.push(line);
                    if seen.len() > 20 {
                        seen.remove(0);
                    }
                }
                Err(e) => panic!("waiting for {what}: {e}; last lines: {seen:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Files the attacks aim at

/// A temporary directory that nobody can traverse (a root tempdir is 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    chmod(dir.path(), 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A directory `name` in `parent` with `mode`, owned by nobody when asked.
fn mkdir(parent: &Path, name: &str, mode: u32, nobody: bool) -> PathBuf {
    let p = parent.join(name);
    std::fs::create_dir(&p).unwrap();
    chmod(&p, mode);
    if nobody {
        chown_nobody(&p);
    }
    p
}

/// A root-owned 0600 file holding [`SECRET`].
fn secret(dir: &Path) -> PathBuf {
    let p = write(dir, "secret", SECRET);
    chmod(&p, 0o600);
    p
}

/// The secret is as it was: content, mode 0600, owned by root.
fn assert_secret_intact(path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("the secret is still there");
    assert!(meta.is_file(), "{} is no longer a file", path.display());
    assert_eq!(
        meta.mode() & 0o7777,
        0o600,
        "{} was chmodded to {:o}",
        path.display(),
        meta.mode() & 0o7777
    );
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "{} was chowned",
        path.display()
    );
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        SECRET,
        "{} was written",
        path.display()
    );
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Monitors

/// Writes `DIR/resmon.toml`.
fn write_config(dir: &Path, socket: &Path, state_dir: &Path, body: &str) {
    write(
        dir,
        "resmon.toml",
        &format!(
            "[monitor]\nsocket = \"{}\"\nstate_dir = \"{}\"\n\n{body}",
            socket.display(),
            state_dir.display()
        ),
    );
}

/// Runs `resmon serve` on `DIR/resmon.toml`, which it must refuse: returns
/// its exit status and what it logged.
fn serve_refused(dir: &Path) -> (ExitStatus, String) {
    let log = dir.join("daemon.log");
    let before = std::fs::read_to_string(&log).map(|s| s.len()).unwrap_or(0);
    let mut p = Proc::new(serve(Command::new(BIN), dir, "warn"));
    let status = p.wait_exit(LONG);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let text = text[before.min(text.len())..].to_string();
    let status = status.unwrap_or_else(|| panic!("resmon serve did not refuse to start:\n{text}"));
    assert!(!status.success(), "resmon serve exited 0:\n{text}");
    (status, text)
}

/// Starts a monitor as [`Daemon::start`] does, but through `cmd` (a wrapper
/// that ends in exec'ing resmon with the arguments it is given).
fn start_through(cmd: Command, config: &str) -> Daemon {
    let dir = open_tempdir();
    let socket = dir.path().join("resmon.sock");
    write_config(dir.path(), &socket, &dir.path().join("state"), config);
    let child = serve(cmd, dir.path(), "debug");
    let mut d = Daemon {
        dir,
        socket,
        child: Some(child),
    };
    wait_for("the monitor's socket to answer", LONG, || {
        if let Ok(Some(status)) = d.child.as_mut().unwrap().try_wait() {
            panic!("resmon serve exited with {status}:\n{}", d.log());
        }
        std::os::unix::net::UnixStream::connect(&d.socket).is_ok()
    });
    d
}

/// The start time of `pid` in clock ticks after boot.
fn start_time(pid: u32) -> u64 {
    resmon_test_support::stat(pid).unwrap().start_time
}

// ---------------------------------------------------------------------------
// 1. Files opened for a service are opened as the service

#[test]
fn a_symlinked_output_file_is_opened_as_the_service() {
    let test = "a_symlinked_output_file_is_opened_as_the_service";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let secret = secret(tmp.path());
    let logs = mkdir(tmp.path(), "logs", 0o755, true);
    let out = logs.join("out.log");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "svc"
type = "process"
command = ["sh", "-c", "echo hi; exec sleep 1000"]
user = "nobody"
stdout = "{}"
restart_delay = "0s"
"#,
        out.display()
    ));
    d.wait_state("svc", "online", LONG);
    let pid = d.pids("svc")[0];
    assert_eq!(uid_of(pid), Some(NOBODY), "the service runs as nobody");
    wait_for("the service's first line in out.log", LONG, || {
        std::fs::read_to_string(&out).unwrap_or_default() == "hi\n"
    });

    // The attack: the service's user points its output file at root's
    // secret and kills the service, so that the monitor opens it again.
    nobody_ok(&format!(
        "rm -f {out} && ln -s {secret} {out} && kill -9 {pid}",
        out = out.display(),
        secret = secret.display()
    ));
    wait_for("a restart to fail on out.log", LONG, || {
        d.reasons(Some("svc"))
            .iter()
            .any(|r| r.contains("out.log") && r.contains("online failed"))
    });
    wait_for("the old main process to be gone", LONG, || !alive(pid));

    assert_secret_intact(&secret);
    assert!(is_symlink(&out), "the attacker's symlink is left as it was");
    let reasons = d.reasons(Some("svc"));
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("as the resource's user") && r.contains("Permission denied")),
        "the failure says the file was opened as the service's user: {reasons:?}"
    );
    // Nothing of the resource runs: every restart failed before exec.
    let r = d.resource("svc");
    assert_ne!(r["state"], "online", "{r}");
    assert!(d.marked("svc").is_empty(), "{:?}", d.marked("svc"));
}

// ---------------------------------------------------------------------------
// 2. The API socket cannot be hijacked

#[test]
fn a_socket_directory_another_user_owns_is_refused() {
    let test = "a_socket_directory_another_user_owns_is_refused";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let secret = secret(tmp.path());
    let sockdir = mkdir(tmp.path(), "run", 0o755, true);
    let socket = sockdir.join("resmon.sock");
    // The owner of the directory plants a symlink where the socket goes.
    nobody_ok(&format!("ln -s {} {}", secret.display(), socket.display()));
    write_config(tmp.path(), &socket, &tmp.path().join("state"), "");

    let (_, err) = serve_refused(tmp.path());
    assert!(err.contains(&sockdir.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(
        err.contains("other users could replace the socket"),
        "{err}"
    );
    assert_secret_intact(&secret);
    assert!(is_symlink(&socket), "the planted symlink is not touched");
    let entries: Vec<_> = std::fs::read_dir(&sockdir).unwrap().flatten().collect();
    assert_eq!(
        entries.len(),
        1,
        "nothing was created in {sockdir:?}: {entries:?}"
    );
}

#[test]
fn a_file_at_the_socket_path_is_left_alone() {
    let test = "a_file_at_the_socket_path_is_left_alone";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let sockdir = mkdir(tmp.path(), "run", 0o755, false);
    let socket = write(&sockdir, "resmon.sock", "not a socket\n");
    write_config(tmp.path(), &socket, &tmp.path().join("state"), "");

    let (_, err) = serve_refused(tmp.path());
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("is a regular file, not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&socket).unwrap(),
        "not a socket\n",
        "the file is still there with its content"
    );
}

#[test]
fn a_symlink_planted_at_the_socket_path_in_a_sticky_directory_is_refused() {
    let test = "a_symlink_planted_at_the_socket_path_in_a_sticky_directory_is_refused";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let secret = secret(tmp.path());
    let sticky = mkdir(tmp.path(), "tmp", 0o1777, false);
    let socket = sticky.join("resmon.sock");
    nobody_ok(&format!("ln -s {} {}", secret.display(), socket.display()));
    write_config(tmp.path(), &socket, &tmp.path().join("state"), "");

    let (_, err) = serve_refused(tmp.path());
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("is a symlink, not a socket"), "{err}");
    assert_secret_intact(&secret);
    assert!(is_symlink(&socket), "the planted symlink is not removed");
}

/// Renames a fresh symlink to the target onto the socket path and takes it
/// away again, over and over (so the path flips between missing and
/// planted while monitors start and stop), until the flag file appears or
/// the time is up.
const RACER: &str = r#"
import os, sys, time
d, target, flag, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
x, sock = os.path.join(d, "x"), os.path.join(d, "resmon.sock")
end = time.monotonic() + limit
wins = 0
print("racing", flush=True)
while time.monotonic() < end and not os.path.exists(flag):
    try:
        os.symlink(target, x)
    except FileExistsError:
        pass
    try:
        os.rename(x, sock)
        wins += 1
    except OSError:
        pass
    try:
        if os.lstat(sock).st_uid == os.getuid():
            os.unlink(sock)
    except OSError:
        pass
print("renamed", wins, flush=True)
"#;

#[test]
fn a_symlink_raced_onto_the_socket_path_never_gets_chmodded() {
    let test = "a_symlink_raced_onto_the_socket_path_never_gets_chmodded";
    if !attack_possible(test) {
        return;
    }
    let Some(python) = nobody_python(test) else {
        return;
    };
    let tmp = open_tempdir();
    let secret = secret(tmp.path());
    let sticky = mkdir(tmp.path(), "tmp", 0o1777, false);
    let socket = sticky.join("resmon.sock");
    let flag = tmp.path().join("stop-racing");
    write_config(tmp.path(), &socket, &tmp.path().join("state"), "");

    let mut racer = Proc::new(
        nobody_cmd(&[&python, "-c", RACER])
            .arg(&sticky)
            .arg(&secret)
            .arg(&flag)
            .arg("120")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the racer"),
    );
    let lines = Lines::of(racer.child());
    lines.wait("the racer to start", LONG, |l| l == "racing");

    let (mut started, mut refused) = (0, 0);
    for run in 0..10 {
        let mut p = Proc::new(serve(Command::new(BIN), tmp.path(), "warn"));
        // Up, or refused.
        let mut exited = None;
        wait_for("the monitor to start or refuse", LONG, || {
            if let Some(s) = p.child().try_wait().unwrap() {
                exited = Some(s);
                return true;
            }
            // An answer, not just a connection: the socket accepts
            // connections before the monitor handles SIGTERM (see the
            // report), and a SIGTERM then kills it outright.
            Command::new(BIN)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .env("RESMON_LOG", "off")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        match exited {
            Some(s) => {
                assert!(!s.success(), "run {run}: serve exited 0 without SIGTERM");
                refused += 1;
            }
            None => {
                started += 1;
                signal(p.id(), libc_sig::TERM);
                let s = p
                    .wait_exit(LONG)
                    .unwrap_or_else(|| panic!("run {run}: the monitor did not stop on SIGTERM"));
                assert!(s.success(), "run {run}: the monitor stopped with {s}");
            }
        }
        assert_secret_intact(&secret);
    }
    std::fs::write(&flag, "").unwrap();
    let done = lines.wait("the racer to stop", LONG, |l| l.starts_with("renamed"));
    assert!(racer.wait_exit(LONG).is_some(), "the racer did not stop");
    eprintln!("{test}: {started} runs started, {refused} refused; racer: {done}");
    assert_secret_intact(&secret);
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.starts_with("resmon: ")) {
        assert!(
            line.contains("is a symlink, not a socket"),
            "a refusal for another reason: {line}"
        );
    }
}

/// Binds a Unix socket at argv[1], or the loopback port N of `tcp:N`, as
/// its user and answers any request with a fake monitor's status; prints
/// how many bytes it was sent once its stdin closes.
const IMPOSTOR: &str = r#"
import os, signal, socket, sys, threading
signal.alarm(120)
where = sys.argv[1]
if where.startswith("tcp:"):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", int(where[4:])))
else:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(where)
    os.chmod(where, 0o666)
srv.listen(16)
got, threads = [0], []
def serve(c):
    c.settimeout(10)
    try:
        while True:
            b = c.recv(4096)
            if not b:
                break
            got[0] += len(b)
            body = b'{"resources":[]}'
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    c.close()
def accept():
    while True:
        c, _ = srv.accept()
        t = threading.Thread(target=serve, args=(c,), daemon=True)
        t.start()
        threads.append(t)
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
for t in list(threads):
    t.join(5)
print("received", got[0], "bytes on", len(threads), "connections", flush=True)
"#;

#[test]
fn the_cli_refuses_a_socket_another_user_serves() {
    let test = "the_cli_refuses_a_socket_another_user_serves";
    let tmp = open_tempdir();
    let sticky = mkdir(tmp.path(), "tmp", 0o1777, false);
    let socket = sticky.join("resmon.sock");
    let socket = socket.to_str().unwrap();
    the_cli_refuses_an_impostor(test, socket, &["--socket", socket], socket);
}

/// A loopback port is checked like a socket (its server's socket is found
/// in /proc/net/tcp), so a user who binds the listener's port while the
/// monitor is down never gets a token.
#[test]
fn the_cli_sends_no_token_to_a_loopback_port_another_user_serves() {
    let test = "the_cli_sends_no_token_to_a_loopback_port_another_user_serves";
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    the_cli_refuses_an_impostor(test, &format!("tcp:{port}"), &["--url", &url], &url);
}

/// Starts the impostor as nobody at `listen`, runs `resmon status` with
/// `reach` (and a token in RESMON_TOKEN), and checks that the CLI refused
/// it, naming `shown`, before sending it a byte.
fn the_cli_refuses_an_impostor(test: &str, listen: &str, reach: &[&str], shown: &str) {
    if !attack_possible(test) {
        return;
    }
    let Some(python) = nobody_python(test) else {
        return;
    };
    let mut impostor = Proc::new(
        nobody_cmd(&[&python, "-c", IMPOSTOR, listen])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the impostor"),
    );
    let lines = Lines::of(impostor.child());
    lines.wait("the impostor to listen", LONG, |l| l == "ready");

    let out = Command::new(BIN)
        .arg("status")
        .args(reach)
        .env("RESMON_LOG", "warn")
        .env("RESMON_TOKEN", "secret-token-0123456789")
        .stdin(Stdio::null())
        .output()
        .expect("run resmon status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(err.contains(shown), "{err}");
    assert!(err.contains("is served by uid 65534"), "{err}");
    assert!(err.contains("refusing to talk to it"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("NAME"),
        "the fake answer was not shown: {out:?}"
    );

    // The client sent the impostor nothing at all: no request, no token.
    drop(impostor.child().stdin.take());
    let received = lines.wait("the impostor's count", LONG, |l| l.starts_with("received"));
    assert!(received.starts_with("received 0 bytes"), "{received}");
    assert!(
        impostor.wait_exit(LONG).is_some(),
        "the impostor did not end"
    );
}

// ---------------------------------------------------------------------------
// 3. The state directory is the monitor's alone

#[test]
fn a_state_directory_another_user_owns_is_refused() {
    let test = "a_state_directory_another_user_owns_is_refused";
    if !attack_possible(test) {
        return;
    }
    for mode in [0o755, 0o700] {
        let tmp = open_tempdir();
        let secret = secret(tmp.path());
        let private = mkdir(tmp.path(), "private", 0o700, false);
        let planted = private.join("created-by-root");
        let run = mkdir(tmp.path(), "run", 0o755, false);
        let state = mkdir(tmp.path(), "state", mode, true);
        nobody_ok(&format!(
            "cd {state} && ln -s {secret} state.tmp && ln -s {secret} state.json && ln -s {planted} lock && ln -s {planted} instance",
            state = state.display(),
            secret = secret.display(),
            planted = planted.display()
        ));
        write_config(tmp.path(), &run.join("resmon.sock"), &state, "");

        let (_, err) = serve_refused(tmp.path());
        assert!(err.contains(&state.display().to_string()), "{err}");
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert!(err.contains(&format!("mode {mode:04o}")), "{err}");
        assert_secret_intact(&secret);
        assert!(
            std::fs::symlink_metadata(&planted).is_err(),
            "{planted:?} was created"
        );
        for name in ["state.tmp", "state.json", "lock", "instance"] {
            assert!(is_symlink(&state.join(name)), "{name} was replaced");
        }
        assert!(
            std::fs::read_dir(&run).unwrap().next().is_none(),
            "the refused monitor left its socket behind"
        );
    }
}

#[test]
fn a_log_directory_another_user_owns_is_refused() {
    let test = "a_log_directory_another_user_owns_is_refused";
    if !attack_possible(test) {
        return;
    }
    // nobody owns the log directory and plants the service's log as a
    // link to a root file, hoping the relay appends the service's output
    // to it (or truncates it at a rotation).
    let tmp = open_tempdir();
    let secret = secret(tmp.path());
    let run = mkdir(tmp.path(), "run", 0o755, false);
    let logs = mkdir(tmp.path(), "logs", 0o755, true);
    nobody_ok(&format!(
        "ln -s {secret} {logs}/svc.log && ln -s {secret} {logs}/svc.1.log",
        secret = secret.display(),
        logs = logs.display()
    ));
    write_config(
        tmp.path(),
        &run.join("resmon.sock"),
        &tmp.path().join("state"),
        &format!("log_dir = \"{}\"\n\n{SLEEPER}", logs.display()),
    );
    let (_, err) = serve_refused(tmp.path());
    assert!(err.contains("[monitor] log_dir"), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert_secret_intact(&secret);
}

#[test]
fn a_symlinked_state_directory_is_not_followed() {
    let test = "a_symlinked_state_directory_is_not_followed";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let theirs = mkdir(tmp.path(), "theirs", 0o755, true);
    let roots = mkdir(tmp.path(), "roots", 0o700, false);
    let run = mkdir(tmp.path(), "run", 0o755, false);
    let state = theirs.join("state");
    nobody_ok(&format!("ln -s {} {}", roots.display(), state.display()));
    write_config(tmp.path(), &run.join("resmon.sock"), &state, "");

    let (_, err) = serve_refused(tmp.path());
    assert!(
        err.contains(&format!(
            "{} is a symlink in {}",
            state.display(),
            theirs.display()
        )),
        "{err}"
    );
    assert!(err.contains("refusing to follow it"), "{err}");
    let inside: Vec<_> = std::fs::read_dir(&roots).unwrap().flatten().collect();
    assert!(inside.is_empty(), "created in {roots:?}: {inside:?}");
    let meta = std::fs::metadata(&roots).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, 0));
}

// ---------------------------------------------------------------------------
// 4. Adoption trusts nothing it cannot verify

const SLEEPER: &str = r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
restart_delay = "0s"
"#;

#[test]
fn a_forged_state_file_does_not_adopt_a_foreign_process() {
    let test = "a_forged_state_file_does_not_adopt_a_foreign_process";
    if !attack_possible(test) {
        return;
    }
    let mut d = Daemon::start(SLEEPER);
    d.wait_state("svc", "online", LONG);
    let old = d.pids("svc")[0];
    d.wait_saved();
    d.kill9();
    signal(old, libc_sig::KILL);
    wait_for("the old service process to be gone", LONG, || !alive(old));

    // A process of root's that resmon never started.
    let mut victim = Proc::new(
        Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the victim"),
    );
    let vpid = victim.id();
    let file = d.dir.path().join("state/state.json");
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(saved["resources"]["svc"]["saved"].is_object(), "{saved}");
    saved["resources"]["svc"]["saved"] =
        serde_json::json!({ "pid": vpid, "start_time": start_time(vpid) });
    std::fs::write(&file, serde_json::to_string(&saved).unwrap()).unwrap();

    d.launch();
    wait_for("svc online with a process of its own", LONG, || {
        let r = d.resource("svc");
        r["state"] == "online" && !r["pids"].as_array().unwrap().is_empty()
    });
    let pids = d.pids("svc");
    assert!(
        !pids.contains(&vpid),
        "the victim {vpid} was adopted: {pids:?}"
    );
    assert!(alive(vpid), "the victim was killed");
    let reasons = d.reasons(Some("svc"));
    assert!(
        !reasons.iter().any(|r| r.contains("adopted after")),
        "{reasons:?}"
    );

    let log = d.log();
    assert!(
        log.contains(&format!(
            "the saved main process {vpid} is not in this resource's"
        )),
        "the monitor says why it did not adopt {vpid}:\n{log}"
    );

    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(alive(vpid), "stopping the monitor killed the victim {vpid}");
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "the real service was stopped"
    );
    assert_eq!(
        victim.child().try_wait().unwrap(),
        None,
        "the victim still runs"
    );
}

#[test]
fn a_forged_instance_does_not_take_over_a_running_monitor() {
    let test = "a_forged_instance_does_not_take_over_a_running_monitor";
    if !attack_possible(test) {
        return;
    }
    let a = Daemon::start(SLEEPER);
    a.wait_state("svc", "online", LONG);
    let pids = a.pids("svc");
    let instance = a.instance();

    // A second monitor whose state directory names A's instance.
    let b = open_tempdir();
    let b_state = mkdir(b.path(), "state", 0o700, false);
    write(&b_state, "instance", &format!("{instance}\n"));
    chmod(&b_state.join("instance"), 0o600);
    write_config(b.path(), &b.path().join("resmon.sock"), &b_state, SLEEPER);
    let (_, err) = serve_refused(b.path());
    assert!(err.contains("is in use by another monitor"), "{err}");
    assert!(err.contains(&instance), "{err}");

    // A and its service are untouched.
    assert!(pids.iter().all(|&p| alive(p)), "A's service was killed");
    let r = a.resource("svc");
    assert_eq!(r["state"], "online", "{r}");
    assert_eq!(a.pids("svc"), pids);
    assert_eq!(a.marked("svc"), pids, "only A's service carries the marker");
    a.ok(&["online", "svc", "--wait"]);
    a.ok(&["status"]);
    assert!(
        !b.path().join("resmon.sock").exists(),
        "B left its socket behind"
    );
}

// ---------------------------------------------------------------------------
// 5. Starvation

/// Opens up to argv[2] connections to argv[1] and keeps them, sending
/// nothing; then reports, every 200 ms until stdin closes, how many the
/// server still keeps open (the others read EOF), and the seconds since
/// its first connect.
const FLOOD: &str = r#"
import os, resource, select, signal, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
signal.alarm(int(sys.argv[3]))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ValueError, OSError):
    pass
t0 = time.monotonic()
conns, failed = [], 0
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        s.setblocking(False)
        conns.append(s)
    except OSError:
        s.close()
        failed += 1
        if failed > 50:
            break
print("connected", len(conns), flush=True)
while True:
    still = 0
    for s in conns:
        try:
            if s.recv(1, socket.MSG_PEEK):
                still += 1
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    print("open", still, round(time.monotonic() - t0, 3), flush=True)
    r, _, _ = select.select([0], [], [], 0.2)
    if r and not os.read(0, 1):
        break
"#;

#[test]
fn a_connection_flood_does_not_starve_the_monitor() {
    let test = "a_connection_flood_does_not_starve_the_monitor";
    if !attack_possible(test) {
        return;
    }
    let Some(python) = nobody_python(test) else {
        return;
    };
    let d = Daemon::start(SLEEPER);
    d.wait_state("svc", "online", LONG);
    let old = d.pids("svc")[0];

    let mut flood = Proc::new(
        nobody_cmd(&[&python, "-c", FLOOD])
            .arg(&d.socket)
            .args(["2000", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the flood"),
    );
    let lines = Lines::of(flood.child());
    let connected = lines.wait("the flood's connections", Duration::from_secs(60), |l| {
        l.starts_with("connected ")
    });
    let n: usize = connected["connected ".len()..].parse().unwrap();
    assert!(
        n > 32,
        "the flood could not even exceed the cap: {connected}"
    );
    // The ones over the cap are closed at once: well before the header
    // timeout (10 s) would close them all anyway.
    let kept = lines.wait(
        "the monitor to close the connections over the cap",
        LONG,
        |l| {
            l.split(' ')
                .nth(1)
                .and_then(|k| k.parse::<usize>().ok())
                .is_some_and(|k| k <= 32)
        },
    );
    let mut f = kept.split(' ').skip(1);
    let (k, at): (usize, f64) = (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
    );
    assert!(
        at < 9.0,
        "connections over the cap lingered until {at}s (the header timeout is 10s): {kept}"
    );
    eprintln!("{test}: {n} connections accepted, {k} kept after {at}s");

    // Root still gets answers, promptly, while the attacker holds its share.
    for _ in 0..5 {
        let t = Instant::now();
        let out = d.cli(&["status", "--json"]);
        assert!(out.status.success(), "status during the flood: {out:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "status took {:?} during the flood",
            t.elapsed()
        );
    }
    // And the monitor still restarts what dies.
    signal(old, libc_sig::KILL);
    wait_for(
        "svc restarted during the flood",
        Duration::from_secs(10),
        || {
            let r = d.resource("svc");
            r["state"] == "online"
                && r["pids"]
                    .as_array()
                    .unwrap()
                    .first()
                    .is_some_and(|p| p.as_u64() != Some(old as u64))
        },
    );
    let new = d.pids("svc")[0];
    assert!(alive(new) && !alive(old));
    let still = lines.wait("the flood's next count", LONG, |l| l.starts_with("open "));
    assert!(
        flood.child().try_wait().unwrap().is_none(),
        "the flood ended early: {still}"
    );

    drop(flood.child().stdin.take());
    assert!(
        flood.wait_exit(LONG).is_some(),
        "the flood did not end when its stdin closed"
    );
    d.ok(&["status"]);
}

// ---------------------------------------------------------------------------
// 6. Services inherit only what they should; probes run as the service

#[test]
fn an_exec_probe_runs_as_the_service_user() {
    let test = "an_exec_probe_runs_as_the_service_user";
    if !attack_possible(test) {
        return;
    }
    let tmp = open_tempdir();
    let dir = mkdir(tmp.path(), "probe", 0o755, true);
    let out = dir.join("ids");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
user = "nobody"
is_alive_interval = "200ms"
probe = {{ type = "exec", command = ["sh", "-c", "{{ id -u; id -G; }} > {tmp} && mv {tmp} {out}; exit 0"] }}
"#,
        tmp = dir.join("ids.tmp").display(),
        out = out.display()
    ));
    d.wait_state("svc", "online", LONG);
    wait_for("the probe to write its ids", LONG, || out.exists());
    let ids = std::fs::read_to_string(&out).unwrap();
    let gid = String::from_utf8(
        Command::new("id")
            .args(["-g", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        ids,
        format!("{NOBODY}\n{}\n", gid.trim()),
        "the probe runs as nobody with only nobody's primary group"
    );
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.uid(), NOBODY, "the file was written by nobody");
    assert_eq!(d.state("svc"), "online");
}

#[test]
fn a_service_inherits_no_descriptor_of_the_monitor() {
    let test = "a_service_inherits_no_descriptor_of_the_monitor";
    if !attack_possible(test) {
        return;
    }
    let listing = open_tempdir();
    let out = listing.path().join("fds");
    // The monitor is started with descriptors 7 and 9 (from a shell) and
    // 250 (dup2'd in pre_exec) open without close-on-exec.
    let extra = std::fs::File::open("/dev/null").unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "exec 7</dev/null 9>/dev/null; exec \"$0\" \"$@\"",
        BIN,
    ]);
    {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let raw = extra.as_raw_fd();
        // SAFETY: only dup2 (async-signal-safe) runs between fork and exec;
        // the OwnedFd naming 250 is forgotten, never closed here.
        unsafe {
            cmd.pre_exec(move || {
                let src = std::os::fd::BorrowedFd::borrow_raw(raw);
                let mut target = OwnedFd::from_raw_fd(250);
                let r = rustix::io::dup2(src, &mut target);
                std::mem::forget(target);
                r.map_err(std::io::Error::from)
            });
        }
    }
    let d = start_through(
        cmd,
        &format!(
            r#"
[[resource]]
name = "svc"
type = "process"
command = ["sh", "-c", "ls /proc/self/fd > {tmp} && mv {tmp} {out}; exec sleep 1000"]
"#,
            tmp = listing.path().join("fds.tmp").display(),
            out = out.display()
        ),
    );
    drop(extra);
    let monitor_fds: Vec<i32> = [7, 9, 250]
        .into_iter()
        .filter(|fd| Path::new(&format!("/proc/{}/fd/{fd}", d.pid())).exists())
        .collect();
    eprintln!("{test}: the monitor holds the inherited descriptors {monitor_fds:?}");
    d.wait_state("svc", "online", LONG);
    wait_for("the service to list its descriptors", LONG, || out.exists());
    let fds: Vec<u32> = std::fs::read_to_string(&out)
        .unwrap()
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    for fd in [0, 1, 2] {
        assert!(fds.contains(&fd), "stdio {fd} is missing: {fds:?}");
    }
    for fd in [7, 9, 250] {
        assert!(
            !fds.contains(&fd),
            "the service inherited descriptor {fd}: {fds:?}"
        );
    }
    let others: Vec<_> = fds.iter().filter(|&&f| f > 2).collect();
    assert!(
        others.len() <= 1,
        "beyond stdio only ls's own directory may be open: {fds:?}"
    );
    // The service's running process too (not just ls): only stdio.
    let pid = d.pids("svc")[0];
    let live: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert!(live.iter().all(|&f| f <= 2), "the service holds {live:?}");
}

// ---------------------------------------------------------------------------
// 5. A service cannot escape its stop: a root service that moves itself (or
// a child) out of its cgroup is followed through the process connector and
// stopped with the rest.

/// Kills the given pid files' processes when the test ends, pass or fail:
/// an escaped process is outside every cgroup the monitor removes.
struct Reap(Vec<std::path::PathBuf>);

impl Drop for Reap {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = read_pid(f) {
                signal(pid, libc_sig::KILL);
            }
        }
    }
}

fn read_pid(f: &Path) -> Option<u32> {
    std::fs::read_to_string(f).ok()?.trim().parse().ok()
}

/// A root-run config whose service runs `script` with `sh`; `None` when
/// this machine cannot show the attack (not root, no cgroup v2).
fn start_escaper(test: &str, script: &str) -> Option<(Daemon, std::path::PathBuf)> {
    start_escaper_with(test, script, true)
}

/// As [`start_escaper`], with the fork tracking on or off.
fn start_escaper_with(
    test: &str,
    script: &str,
    tracking: bool,
) -> Option<(Daemon, std::path::PathBuf)> {
    if uid_of(std::process::id()) != Some(0) {
        skip(
            test,
            "needs root: the service must run as root to move itself",
        );
        return None;
    }
    let mut cmd = Command::new(BIN);
    if !tracking {
        cmd.env("RESMON_FORK_TRACKING", "off");
    }
    let d = start_through(cmd, "");
    wait_for("the monitor to say where it keeps processes", LONG, || {
        d.log().contains("resource processes are kept in")
    });
    if !d.uses_cgroups() {
        skip(test, "no usable cgroup v2");
        return None;
    }
    let dir = d.dir.path().to_path_buf();
    let file = write(&dir, "escape.sh", script);
    std::fs::write(
        d.config_file(),
        std::fs::read_to_string(d.config_file()).unwrap()
            + &format!(
                r#"
[[resource]]
name = "svc"
type = "process"
command = ["sh", "{}", "{}"]
stdout = "null"
pending_timeout = "2s"
restart_action = "none"
"#,
                file.display(),
                dir.display()
            ),
    )
    .unwrap();
    d.ok(&["reload"]);
    d.wait_state("svc", "online", LONG);
    Some((d, dir))
}

/// The main process leaves, then forks a child outside too.
const MAIN_ESCAPES: &str = r#"m=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
echo $$ > "$m/cgroup.procs"
echo $$ > "$1/main"
sleep 1000 &
echo $! > "$1/child"
wait
"#;

/// A child leaves; the main process stays inside.
const CHILD_ESCAPES: &str = r#"m=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
sh -c 'echo $$ > "$1/cgroup.procs"; echo $$ > "$2/child"; exec sleep 1000' x "$m" "$1" &
echo $$ > "$1/main"
exec sleep 1000
"#;

fn wait_pids(dir: &Path) -> (u32, u32) {
    wait_for("the service to move out and write its pids", LONG, || {
        read_pid(&dir.join("main")).is_some() && read_pid(&dir.join("child")).is_some()
    });
    (
        read_pid(&dir.join("main")).unwrap(),
        read_pid(&dir.join("child")).unwrap(),
    )
}

fn in_cgroup_root(pid: u32) -> bool {
    // Seen from our cgroup namespace (the initial one): the root is "/".
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|s| s.lines().any(|l| l == "0::/"))
}

#[test]
fn a_main_process_that_leaves_its_cgroup_is_stopped_by_offline() {
    let Some((d, dir)) = start_escaper(
        "a_main_process_that_leaves_its_cgroup_is_stopped_by_offline",
        MAIN_ESCAPES,
    ) else {
        return;
    };
    let _reap = Reap(vec![dir.join("main"), dir.join("child")]);
    let (main, child) = wait_pids(&dir);
    wait_for("the main process to be out of its cgroup", LONG, || {
        in_cgroup_root(main)
    });
    d.ok(&["offline", "svc", "--wait"]);
    wait_for("both escaped processes to be gone", LONG, || {
        !alive(main) && !alive(child)
    });
    assert_eq!(d.state("svc"), "offline");
    let reasons = d.reasons(Some("svc")).join("\n");
    assert!(reasons.contains("left the resource's cgroup"), "{reasons}");
    // Online again runs one copy, not two.
    d.ok(&["online", "svc", "--wait"]);
    wait_for("the new main process to write its pid", LONG, || {
        read_pid(&dir.join("main")).is_some_and(|p| p != main)
    });
}

#[test]
fn a_child_that_leaves_its_cgroup_dies_with_terminate() {
    let Some((d, dir)) = start_escaper(
        "a_child_that_leaves_its_cgroup_dies_with_terminate",
        CHILD_ESCAPES,
    ) else {
        return;
    };
    let _reap = Reap(vec![dir.join("main"), dir.join("child")]);
    let (main, child) = wait_pids(&dir);
    wait_for("the child to be out of its cgroup", LONG, || {
        in_cgroup_root(child)
    });
    assert!(alive(main));
    d.ok(&["terminate", "svc"]);
    wait_for("the escaped child to be gone", LONG, || {
        !alive(child) && !alive(main)
    });
}

#[test]
fn an_escaped_child_does_not_outlive_the_monitor() {
    let Some((mut d, dir)) = start_escaper(
        "an_escaped_child_does_not_outlive_the_monitor",
        CHILD_ESCAPES,
    ) else {
        return;
    };
    let _reap = Reap(vec![dir.join("main"), dir.join("child")]);
    let (_, child) = wait_pids(&dir);
    wait_for("the child to be out of its cgroup", LONG, || {
        in_cgroup_root(child)
    });
    assert!(d.stop().success());
    assert!(!alive(child), "process {child} outlived the monitor");
}

#[test]
fn without_fork_tracking_a_child_that_left_is_found_through_its_parent() {
    let test = "without_fork_tracking_a_child_that_left_is_found_through_its_parent";
    let Some((d, dir)) = start_escaper_with(test, CHILD_ESCAPES, false) else {
        return;
    };
    let _reap = Reap(vec![dir.join("main"), dir.join("child")]);
    let (main, child) = wait_pids(&dir);
    wait_for("the child to be out of its cgroup", LONG, || {
        in_cgroup_root(child)
    });
    assert!(alive(main));
    d.ok(&["terminate", "svc"]);
    wait_for("the escaped child to be gone", LONG, || {
        !alive(child) && !alive(main)
    });
}

#[test]
fn without_fork_tracking_an_orphan_that_left_does_not_outlive_the_monitor() {
    let test = "without_fork_tracking_an_orphan_that_left_does_not_outlive_the_monitor";
    // The main process exits once its child is out: the child is an orphan
    // outside every cgroup, re-parented to the monitor.
    let script = CHILD_ESCAPES.replace(
        "exec sleep 1000\n",
        "while [ ! -s \"$1/child\" ]; do sleep 0.01; done\nsleep 0.2\n",
    );
    let Some((mut d, dir)) = start_escaper_with(test, &script, false) else {
        return;
    };
    let _reap = Reap(vec![dir.join("child")]);
    let (_, child) = wait_pids(&dir);
    wait_for("the child to be out of its cgroup", LONG, || {
        in_cgroup_root(child)
    });
    wait_for("the orphan to be the monitor's child", LONG, || {
        resmon_test_support::stat(child).is_some_and(|s| s.ppid == d.pid())
    });
    assert!(d.stop().success());
    assert!(!alive(child), "process {child} outlived the monitor");
}

// ---------------------------------------------------------------------------
// 6b. A connection that never sends a request is closed after the header
// timeout (10 s), so idle connections cannot pile up.

#[test]
fn an_idle_connection_is_closed_after_the_header_timeout() {
    use std::io::Read;
    let d = Daemon::start("");
    let mut idle = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    // A keep-alive connection that answered once, then idles, is closed too.
    let mut kept = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    std::io::Write::write_all(
        &mut kept,
        b"GET /v1/resources HTTP/1.1\r\nhost: resmon\r\n\r\n",
    )
    .unwrap();
    let t0 = Instant::now();
    for (what, conn) in [("idle", &mut idle), ("kept", &mut kept)] {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                // A signal for this test process (another test's child
                // exiting) interrupts the read; the read goes on.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("the {what} connection was not closed within 30 s: {e}"),
            }
        }
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "closed after {took:?}, before the 10 s header timeout"
    );
}
