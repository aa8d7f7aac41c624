//! resmon under systemd, its side of the notify protocol: `resmon serve` is
//! given a `NOTIFY_SOCKET` the test listens on (as systemd would) and says
//! `READY=1` once started, `STATUS=` with its counts, `WATCHDOG=1` from its
//! event loop (and not while the loop is frozen), `RELOADING=1`/`READY=1`
//! around a reload and `STOPPING=1`; its resources do not inherit the
//! socket.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// What systemd would hear: each datagram's text.
struct Listener {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Listener {
    fn new() -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Listener {
            sock,
            _dir: dir,
            path,
        }
    }

    /// Datagrams until one contains `needle` (returned), within `limit`.
    fn until(&self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.contains(needle) {
                    return text;
                }
                seen.push(text);
            }
        }
        panic!("no {needle:?} within {limit:?}; heard {seen:?}");
    }

    /// Every datagram heard over `d`.
    fn heard_for(&self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        out
    }
}

#[test]
fn the_monitor_speaks_the_notify_protocol_and_its_resources_do_not_inherit_it() {
    let sd = Listener::new();
    let work = tempfile::tempdir().unwrap();
    let seen = work.path().join("env");
    let mut d = Daemon::prepare(
        &format!(
            "[[resource]]\nname = \"svc\"\ntype = \"process\"\ncommand = [\"sh\", \"-c\", \"echo ${{NOTIFY_SOCKET:-none}} ${{WATCHDOG_USEC:-none}} > {}; exec sleep 1000\"]\n",
            seen.display()
        ),
        "",
    );
    let mut cmd = Command::new(BIN);
    cmd.env("NOTIFY_SOCKET", &sd.path)
        .env("WATCHDOG_USEC", "400000");
    d.launch_with(cmd);
    let ready = sd.until("READY=1", LONG);
    assert!(ready.contains("STATUS="), "{ready}");
    d.wait_state("svc", "online", LONG);
    // STATUS= is said when the counts change: with READY=1 when svc was
    // online by then, else after it.
    let counts = "STATUS=1 online, 0 failed, 0 pending, 0 offline";
    if !ready.contains(counts) {
        let status = sd.until(counts, LONG);
        assert!(!status.contains("READY"), "{status}");
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "none none");
    // The watchdog: every 200 ms (half of WATCHDOG_USEC), from the loop.
    sd.until("WATCHDOG=1", LONG);
    let pings = sd
        .heard_for(Duration::from_millis(1000))
        .iter()
        .filter(|t| t.contains("WATCHDOG=1"))
        .count();
    assert!((3..=7).contains(&pings), "{pings} pings in a second");
    // A frozen loop stops the pings; they come back with it.
    let pid = d.pid();
    signal(pid, libc_sig::STOP);
    let frozen = sd.heard_for(Duration::from_millis(800));
    signal(pid, libc_sig::CONT);
    assert!(
        frozen.iter().filter(|t| t.contains("WATCHDOG=1")).count() <= 1,
        "pinged while frozen: {frozen:?}"
    );
    sd.until("WATCHDOG=1", LONG);
    // A reload: RELOADING=1, then READY=1.
    d.ok(&["reload"]);
    let reloading = sd.until("RELOADING=1", LONG);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    sd.until("READY=1", LONG);
    // A stop.
    signal(pid, libc_sig::TERM);
    sd.until("STOPPING=1", LONG);
    assert!(d.stop().success());
}

#[test]
fn the_unit_file_is_one_systemd_takes() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        return skip(
            "the_unit_file_is_one_systemd_takes",
            "no systemd-analyze here",
        );
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/systemd/resmon.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=process",
        "Delegate=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit");
    }
    // As installed: the binary where the unit says, no manual page needed.
    let dir = tempfile::tempdir().unwrap();
    let installed: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/local/bin/resmon", BIN) + "\n")
        .collect();
    let file = write(dir.path(), "resmon.service", &installed);
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_prints_the_longest_stop_for_timeout_stop_sec() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        "[[resource]]\nname = \"a\"\ntype = \"process\"\ncommand = \"sleep 1\"\ngroup = \"g\"\npending_timeout = \"30s\"\n[[resource]]\nname = \"b\"\ntype = \"process\"\ncommand = \"sleep 1\"\ngroup = \"g\"\npending_timeout = \"10s\"\nterminate_timeout = \"1s\"\n[[resource]]\nname = \"c\"\ntype = \"process\"\ncommand = \"sleep 1\"\npending_timeout = \"20s\"\n",
    );
    let out = check(&file, false);
    let text = String::from_utf8_lossy(&out.stdout);
    // Group g: 30 s + 2 x 300 ms, then 10 s + 2 x 1 s.
    assert!(
        text.contains("a stop takes at most 42s 600ms (under systemd: TimeoutStopSec=52s or more)"),
        "{text}"
    );
}

/// A cgroup v2 directory of the test's own, removed (with what the
/// monitor left in it once it stopped) when dropped.
struct Delegated(std::path::PathBuf);

impl Drop for Delegated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("resmon.supervisor"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn in_a_delegated_cgroup_the_monitor_moves_into_a_leaf_and_keeps_it_across_an_upgrade() {
    let Some(own) = own_cgroup() else {
        return skip(
            "in_a_delegated_cgroup_the_monitor_moves_into_a_leaf_and_keeps_it_across_an_upgrade",
            "no cgroup v2 here",
        );
    };
    let delegated = Delegated(own.join(format!("resmon-test-{}", std::process::id())));
    std::fs::create_dir(&delegated.0).unwrap();
    let mut d = Daemon::start_in(
        "[[resource]]\nname = \"svc\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n",
        &delegated.0,
    );
    d.wait_state("svc", "online", LONG);
    let cgroup_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .unwrap()
    };
    let leaf = format!("/resmon-test-{}/resmon.supervisor", std::process::id());
    let monitor = d.pid();
    assert!(
        cgroup_of(monitor).ends_with(&leaf),
        "{}",
        cgroup_of(monitor)
    );
    // The delegated cgroup holds no process of its own: it may give its
    // children controllers.
    let procs = std::fs::read_to_string(delegated.0.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "{procs}");
    let svc = d.pids("svc")[0];
    let root = format!(
        "/resmon-test-{}/resmon.{}/r.svc",
        std::process::id(),
        d.instance()
    );
    assert!(cgroup_of(svc).ends_with(&root), "{}", cgroup_of(svc));
    // Run again in place: the same leaf, the same root, the same service.
    d.ok(&["upgrade"]);
    assert_eq!(d.pid(), monitor);
    assert!(cgroup_of(monitor).ends_with(&leaf));
    assert_eq!(d.pids("svc"), [svc]);
    assert!(d.stop().success());
}
