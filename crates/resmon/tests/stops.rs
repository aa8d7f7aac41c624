//! End-to-end: a stop is never held up and leaves nothing behind, whatever
//! a health check is doing when it comes.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// A service whose `is_alive` probe hangs for far longer than any deadline
/// (`deadlock_timeout` is 300 s): a stop that waited for it would not end
/// within the tests' limits.
fn hung_probe(extra: &str) -> String {
    format!(
        r#"
[[resource]]
name = "app"
type = "process"
command = "sleep 1000"
probe = {{ type = "exec", command = ["sleep", "7777"], timeout = "600s" }}
is_alive_interval = "1s"
{extra}
"#
    )
}

/// The processes of this resource running `sleep 7777`: the probe.
fn probes(d: &Daemon) -> Vec<u32> {
    d.marked("app")
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x007777\x00")
        })
        .collect()
}

fn wait_for_probe(d: &Daemon) -> u32 {
    d.wait_state("app", "online", LONG);
    let mut found = Vec::new();
    wait_for("the probe to run", LONG, || {
        found = probes(d);
        !found.is_empty()
    });
    assert_eq!(d.resource("app")["call"], "is_alive");
    found[0]
}

fn offline_cancels_the_probe(cgroups: &str) {
    let d = Daemon::start_with(&hung_probe(""), &format!("cgroups = \"{cgroups}\""));
    let probe = wait_for_probe(&d);
    d.ok(&["offline", "app"]);
    d.wait_state("app", "offline", LONG);
    assert!(!alive(probe), "the probe {probe} outlived the stop");
    assert!(d.marked("app").is_empty(), "{:?}", d.marked("app"));
    // It was a stop, not a failure: no terminate, and the check said nothing.
    let events = d.events();
    assert!(
        !events.iter().any(|e| e["kind"] == "terminate"),
        "{events:#?}"
    );
    assert!(
        !d.reasons(Some("app"))
            .iter()
            .any(|r| r.contains("is_alive")),
        "{:?}",
        d.reasons(Some("app"))
    );
    // And it comes back with its checks working.
    d.ok(&["online", "app", "--wait"]);
    let again = wait_for_probe(&d);
    assert_ne!(again, probe);
}

#[test]
fn an_offline_cancels_a_hung_probe_with_cgroups() {
    offline_cancels_the_probe("auto");
}

#[test]
fn an_offline_cancels_a_hung_probe_with_process_groups() {
    offline_cancels_the_probe("off");
}

#[test]
fn a_terminate_cancels_a_hung_probe() {
    let d = Daemon::start(&hung_probe(""));
    let probe = wait_for_probe(&d);
    d.ok(&["terminate", "app"]);
    d.wait_state("app", "offline", LONG);
    assert!(!alive(probe), "the probe {probe} outlived the terminate");
    assert!(d.marked("app").is_empty());
}

#[test]
fn a_stopping_monitor_cancels_a_hung_probe_and_leaves_nothing() {
    let mut d = Daemon::start(&hung_probe(""));
    let probe = wait_for_probe(&d);
    let instance = d.instance();
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(!alive(probe), "the probe {probe} outlived the monitor");
    assert!(marked_processes(&format!("RESMON_RESOURCE={instance}/app")).is_empty());
}

#[test]
fn a_restart_after_a_hung_check_does_not_wait_for_it() {
    // The check is past deadlock_timeout: the resource fails, is
    // terminated (which kills the probe) and restarts at once.
    let d = Daemon::start(&hung_probe(
        "deadlock_timeout = \"1s\"\nrestart_delay = \"0s\"",
    ));
    let probe = wait_for_probe(&d);
    wait_for("the restart", LONG, || {
        let r = d.resource("app");
        r["restarts"] == 1 && r["state"] == "online"
    });
    assert!(!alive(probe), "the hung probe {probe} survived the restart");
    let why = d.reasons(Some("app"));
    assert!(
        why.iter()
            .any(|r| r.contains("is_alive did not return within 1s (deadlock_timeout)")),
        "{why:?}"
    );
}

#[test]
fn a_stopping_monitor_answers_clearly() {
    // `slow` ignores SIGTERM: the monitor stays stopping until
    // pending_timeout has it terminated, or an operator terminates it.
    let mut d = Daemon::start(
        r#"
[[resource]]
name = "slow"
type = "process"
command = "sh -c 'trap \"\" TERM; while :; do sleep 1; done'"
pending_timeout = "60s"

[[resource]]
name = "quick"
type = "process"
command = "sleep 1000"
"#,
    );
    d.wait_state("slow", "online", LONG);
    d.wait_state("quick", "online", LONG);
    let follow = std::process::Command::new(BIN)
        .args(["--socket"])
        .arg(&d.socket)
        .args(["events", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Connected once it printed the history's first line.
    let mut follow = follow;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    assert!(lines.next().is_some_and(|l| l.is_ok()));
    let pid = d.child.as_ref().unwrap().id();
    signal(pid, libc_sig::TERM);
    d.wait_state("slow", "offline_pending", LONG);
    d.wait_state("quick", "offline", LONG);

    // Bringing something online is refused, and so is a reload.
    let out = d.cli(&["online", "quick"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the monitor is stopping"), "{err}");
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the monitor is stopping"));
    assert_eq!(d.state("quick"), "offline");

    // A terminate is carried out, says so, and lets the monitor finish.
    let out = d.cli(&["terminate", "slow"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "slow: offline");
    let mut child = d.child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", d.log());

    // The follower saw the monitor's last event and ended with exit 0.
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["reason"], "monitor stopped", "{rest:?}");
    // The log says which signal came and what it did, and that it exited.
    let log = d.log();
    assert!(
        log.contains("SIGTERM: taking every resource offline, then stopping"),
        "{log}"
    );
    assert!(
        log.contains("monitor stopped: every resource is down; exiting 0"),
        "{log}"
    );
}

/// A cgroup of the v1 freezer hierarchy, for a process that even SIGKILL
/// cannot end until it is thawed. Thawed and removed on drop.
struct Freezer {
    dir: std::path::PathBuf,
}

impl Freezer {
    /// `None` (and a skip notice) where there is no v1 freezer or no root.
    fn new(test: &str) -> Option<Freezer> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // "... - cgroup cgroup rw,...,freezer": a v1 mount with the freezer.
        let root = mounts.lines().find_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let mut t = tail.split(' ');
            let fs = t.next()?;
            let opts = t.nth(1)?;
            (fs == "cgroup" && opts.split(',').any(|o| o == "freezer"))
                .then(|| head.split(' ').nth(4).map(std::path::PathBuf::from))?
        });
        let Some(root) = root else {
            skip(test, "no cgroup v1 freezer hierarchy");
            return None;
        };
        let dir = root.join(format!("resmon-test-freezer-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            skip(test, &format!("cannot create {}: {e}", dir.display()));
            return None;
        }
        Some(Freezer { dir })
    }

    fn freeze(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join freezer");
        std::fs::write(self.dir.join("freezer.state"), "FROZEN").expect("freeze");
        wait_for("the process to freeze", LONG, || {
            std::fs::read_to_string(self.dir.join("freezer.state"))
                .is_ok_and(|s| s.trim() == "FROZEN")
        });
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        // The thawed processes die of the SIGKILL they hold, or are killed
        // by the monitor's stop; the directory goes once it is empty.
        let procs = self.dir.join("cgroup.procs");
        let _ = std::panic::catch_unwind(|| {
            wait_for("the freezer cgroup to empty", LONG, || {
                std::fs::read_to_string(&procs).map_or(true, |s| s.trim().is_empty())
            })
        });
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn an_unkillable_process_repeats_as_one_counted_event() {
    let test = "an_unkillable_process_repeats_as_one_counted_event";
    let Some(freezer) = Freezer::new(test) else {
        return;
    };
    let d = Daemon::start(
        r#"
[[resource]]
name = "app"
type = "process"
command = "sleep 1000"
terminate_timeout = "100ms"

[[resource]]
name = "bystander"
type = "process"
command = "sleep 1000"
"#,
    );
    d.wait_state("app", "online", LONG);
    d.wait_state("bystander", "online", LONG);
    let pid = d.pids("app")[0];
    freezer.freeze(pid);
    // `terminate` waits for the tree to go, which a frozen one never does.
    d.ok(&["terminate", "app", "--no-wait"]);
    // The kill is retried every few hundred ms and fails each time: that is
    // one event, counted, not a flood.
    let mut kills = Vec::new();
    wait_for("ten forced kills in one event", LONG, || {
        kills = d
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "force_kill" && e["resource"] == "app")
            .collect();
        kills.len() == 1 && kills[0]["count"].as_u64().is_some_and(|n| n >= 10)
    });
    assert!(kills[0]["last_time"].is_string(), "{kills:#?}");
    let events = d.events();
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "force_kill").count(),
        1,
        "{events:#?}"
    );
    // Everything else is still there and still served.
    assert!(
        events
            .iter()
            .any(|e| e["resource"] == "bystander" && e["state"] == "online"),
        "{events:#?}"
    );
    assert_eq!(d.state("bystander"), "online");
    assert!(alive(pid), "frozen, so not dead yet");
    assert_eq!(d.state("app"), "offline_pending", "on its way down");
    // Thawed, it dies of the kill at last and the stop ends.
    freezer.thaw();
    d.wait_state("app", "offline", LONG);
    wait_for("the process to die", LONG, || !alive(pid));
}
