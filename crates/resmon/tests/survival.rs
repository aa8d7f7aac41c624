//! End-to-end: the monitor survives what the system refuses it. With no
//! thread or process to be had (a `pids.max` on its cgroup), calls wait
//! for a worker, starts fail with the reason, and the monitor keeps
//! answering; once the limit goes, everything works again.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// A pids cgroup of this test's own: under a cgroup v1 `pids` hierarchy,
/// or under a cgroup v2 mount whose root delegates the `pids` controller.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn make() -> Option<PidsCgroup> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        for line in info.lines() {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = right.split(' ');
            let fstype = fields.next()?;
            let options = fields.nth(1).unwrap_or("");
            let point = Path::new(left.split(' ').nth(4)?);
            let usable = match fstype {
                "cgroup" => options.split(',').any(|o| o == "pids"),
                "cgroup2" => std::fs::read_to_string(point.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids")),
                _ => false,
            };
            if usable {
                let dir = point.join(format!("resmon-test-pids-{}", std::process::id()));
                std::fs::create_dir(&dir).ok()?;
                return Some(PidsCgroup(dir));
            }
        }
        None
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.0.join("pids.max"), max).unwrap();
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.0.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("pids.max"), "max");
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn no_thread_to_be_had_does_not_kill_the_monitor() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to make a pids cgroup");
        return;
    }
    let Some(cg) = PidsCgroup::make() else {
        eprintln!("skipped: no pids controller on this machine");
        return;
    };
    let names: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let config: String = names
        .iter()
        .map(|n| {
            format!(
                "[[resource]]\nname = \"{n}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\nrestart_action = \"none\"\nlooks_alive_interval = \"100ms\"\n"
            )
        })
        .collect();
    // The monitor is started in the pids cgroup (the shell moves itself
    // there, then execs it), so every thread and process it makes counts.
    let mut d = Daemon::start_in(&config, &cg.0);
    for n in &names {
        d.wait_state(n, "online", LONG);
    }
    let pid = d.pid();
    // Idle workers leave after 10 s; the monitor's first one stays (and
    // the event journal's writer). Then not one more thread or process
    // may be made.
    wait_for("idle workers to leave", LONG, || threads(pid) <= 5);
    cg.set_max(&cg.current().to_string());
    // Every offline needs a worker and there is no thread to be had: they
    // wait for the one that is there, and all get done.
    for n in &names {
        d.ok(&["offline", n]);
    }
    for n in &names {
        d.wait_state(n, "offline", LONG);
    }
    // A start that cannot fork fails with the reason; the monitor answers
    // on. (The stopped services freed their pids: take those too.)
    cg.set_max(&cg.current().to_string());
    let out = d.cli(&["online", "r0", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    d.wait_state("r0", "failed", LONG);
    let why = d.resource("r0")["reason"].as_str().unwrap().to_string();
    assert!(why.contains("temporarily unavailable"), "{why}");
    assert!(alive(pid), "the monitor died:\n{}", d.log());
    // Once the limit goes, everything works again.
    cg.set_max("max");
    d.ok(&["online", "r0", "--wait"]);
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}

#[test]
fn a_state_that_cannot_be_saved_is_shown_and_said() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for a mount namespace");
        return;
    }
    let mut d = Daemon::prepare(
        "[[resource]]\nname = \"a\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n",
        "",
    );
    // The state directory is a small tmpfs of the monitor's own mount
    // namespace, which the test fills up and empties again.
    let state = d.dir.path().join("state");
    d.launch_on_tmpfs(&state, "256k");
    d.wait_state("a", "online", LONG);
    let fill = state.join("fill");
    let in_its_namespace = |script: &str| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &d.pid().to_string(), "-m", "sh", "-c", script, "x"])
            .arg(&fill)
            .output()
            .unwrap();
        assert!(
            out.status.success() || script.contains("/dev/zero"),
            "{out:?}"
        );
    };
    in_its_namespace("cat /dev/zero > \"$1\"");
    let out = d.cli(&["offline", "a", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the failure to show", LONG, || {
        d.ok(&["status"])
            .starts_with("WARNING: the state is not being saved")
    });
    // Now an operator's command says it will not last.
    let out = d.cli(&["online", "a", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        err.contains("warning: the state is not being saved") && err.contains("No space left"),
        "{err}"
    );
    let reasons = d.reasons(None);
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("the state is not being saved")),
        "{reasons:?}"
    );
    // Writable again: the next save works, and says so.
    in_its_namespace("rm \"$1\"");
    d.ok(&["offline", "a", "--wait"]);
    wait_for("the state to be saved again", LONG, || {
        d.reasons(None)
            .iter()
            .any(|r| r == "the state is saved again")
    });
    assert!(!d.ok(&["status"]).contains("WARNING"));
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}

#[test]
fn processes_of_a_lost_instance_are_reported_at_start() {
    let config = "[[resource]]\nname = \"a\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n";
    let mut first = Daemon::start(config);
    first.wait_state("a", "online", LONG);
    if !first.uses_cgroups() {
        skip(
            "processes_of_a_lost_instance_are_reported_at_start",
            "needs cgroup v2",
        );
        return;
    }
    let left = first.marked("a");
    let root = cgroups_named(&format!("resmon.{}", first.instance()));
    assert_eq!(root.len(), 1, "{root:?}");
    let listed = format!(
        "warning: cgroup {} holds 1 process(es) of a monitor that is not running",
        root[0].display()
    );
    // While its monitor runs, `check` does not list it.
    let out = check(&first.config_file(), false);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&listed),
        "{out:?}"
    );
    // Killed, and its state directory lost with its instance.
    first.kill9();
    std::fs::remove_dir_all(first.dir.path().join("state")).unwrap();
    let out = check(&first.config_file(), false);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&listed),
        "{out:?}"
    );
    let second = Daemon::start(config);
    second.wait_state("a", "online", LONG);
    let said = second.reasons(None);
    let warning = format!(
        "cgroup {} holds 1 process(es) of another monitor instance that no running monitor owns",
        root[0].display()
    );
    assert!(said.iter().any(|r| r.starts_with(&warning)), "{said:?}");
    // What it left is untouched by the second monitor; the test clears it.
    assert!(left.iter().all(|&p| alive(p)));
    std::fs::write(root[0].join("cgroup.kill"), "1").unwrap();
    wait_for("the lost instance's processes to die", LONG, || {
        left.iter().all(|&p| !alive(p))
    });
    wait_for("its cgroups to empty", LONG, || {
        std::fs::read_to_string(root[0].join("cgroup.events"))
            .is_ok_and(|e| e.contains("populated 0"))
    });
    common::remove_cgroup_tree(&root[0]);
    assert!(!root[0].exists(), "{} is left", root[0].display());
}

#[test]
fn check_lists_marked_processes_of_a_monitor_that_is_gone() {
    let config = "[[resource]]\nname = \"a\"\ntype = \"process\"\ncommand = \"sh -c 'sleep 1000 & sleep 1000'\"\n";
    let mut first = Daemon::start_with(config, "cgroups = \"off\"");
    first.wait_state("a", "online", LONG);
    wait_for("both sleeps", LONG, || first.marked("a").len() == 3);
    let left = first.marked("a");
    let instance = first.instance();
    let listed = format!(
        "warning: 3 process(es) marked RESMON_RESOURCE={instance}/... of a monitor that is not running"
    );
    let out = check(&first.config_file(), false);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&listed),
        "{out:?}"
    );
    first.wait_saved();
    first.kill9();
    let out = check(&first.config_file(), false);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&listed),
        "{out:?}"
    );
    // The same state directory takes them back, and its stop ends them.
    first.launch();
    first.wait_state("a", "online", LONG);
    assert_eq!(first.marked("a"), left);
    let status = first.stop();
    assert!(status.success(), "{status}\n{}", first.log());
    wait_for("the adopted processes to end", LONG, || {
        left.iter().all(|&p| !alive(p))
    });
}
