//! Limits from the resource's cgroup v2: refused with the reason where they
//! cannot be had (never silently ignored), a reload that adds one where it
//! cannot be had changes nothing, and where the controllers are there an
//! OOM kill is the failure's reason and a changed limit applies in place.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// Whether cgroup v2 offers these controllers to what this test starts.
fn controllers_here(wanted: &[&str]) -> bool {
    own_cgroup()
        .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.controllers")).ok())
        .is_some_and(|c| wanted.iter().all(|w| c.split_whitespace().any(|x| x == *w)))
}

#[test]
fn limits_without_cgroups_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        &format!(
            "[monitor]\ncgroups = \"off\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n[[resource]]\nname = \"web\"\ntype = \"process\"\ncommand = \"sleep 1000\"\nmemory_max = \"64MiB\"\n",
            dir.path().join("s.sock").display(),
            dir.path().join("state").display()
        ),
    );
    let err = refused("serve", &file, 1);
    assert!(
        err.contains("resource(s) web set limits")
            && err.contains("limits need cgroup v2, and resources run in process groups here"),
        "{err}"
    );
    // Nothing was started.
    assert!(marked_processes("/web").is_empty());
    // A bad limit is a config error naming its key.
    let text = check_refuses(
        "[[resource]]\nname = \"web\"\ntype = \"process\"\ncommand = \"sleep 1000\"\ncpu_max = \"half\"\n",
    );
    assert!(
        text.contains("resource \"web\" ([[resource]] #1): cpu_max: write a share of one CPU"),
        "{text}"
    );
}

#[test]
fn limits_cgroup_v2_cannot_set_are_refused_and_a_reload_adding_one_changes_nothing() {
    if controllers_here(&["memory"]) {
        return skip(
            "limits_cgroup_v2_cannot_set_are_refused_and_a_reload_adding_one_changes_nothing",
            "cgroup v2 offers the memory controller here (the OOM test covers this machine)",
        );
    }
    let d = Daemon::start(
        "[[resource]]\nname = \"web\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n",
    );
    d.wait_state("web", "online", LONG);
    let pid = d.pids("web")[0];
    let config = std::fs::read_to_string(d.config_file()).unwrap();
    std::fs::write(d.config_file(), format!("{config}memory_max = \"64MiB\"\n")).unwrap();
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("resource(s) web set limits")
            && err.contains("the memory controller is not available"),
        "{err}"
    );
    assert_eq!(d.pids("web"), [pid], "nothing changed");
    // `check --validate` finds it too (a plain `check` reads only the file).
    let out = check(&d.config_file(), true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the memory controller is not available"),
        "{err}"
    );
}

#[test]
fn an_oom_kill_is_the_failures_reason_and_a_changed_limit_applies_in_place() {
    if !controllers_here(&["memory", "cpu"]) {
        return skip(
            "an_oom_kill_is_the_failures_reason_and_a_changed_limit_applies_in_place",
            "cgroup v2 does not offer the memory and cpu controllers here (they are bound to cgroup v1 hierarchies)",
        );
    }
    let d = Daemon::start(
        r#"
[[resource]]
name = "hog"
type = "process"
command = ["python3", "-c", "b = bytearray(256 * 1024 * 1024); import time; time.sleep(100)"]
memory_max = "32MiB"
restart_action = "none"

[[resource]]
name = "calm"
type = "process"
command = "sleep 1000"
cpu_max = "50%"
"#,
    );
    d.wait_state("hog", "failed", LONG);
    let why = d.resource("hog")["reason"].as_str().unwrap().to_string();
    assert!(why.contains("OOM killer"), "{why}");
    d.wait_state("calm", "online", LONG);
    let root = cgroups_named(&format!("resmon.{}", d.instance()))
        .pop()
        .expect("the monitor's root cgroup");
    let cpu_max = || std::fs::read_to_string(root.join("r.calm/cpu.max")).unwrap();
    assert_eq!(cpu_max().trim(), "50000 100000");
    let pid = d.pids("calm")[0];
    let config = std::fs::read_to_string(d.config_file()).unwrap();
    std::fs::write(d.config_file(), config.replace("\"50%\"", "\"200%\"")).unwrap();
    d.ok(&["reload"]);
    wait_for("the new cpu.max", LONG, || {
        cpu_max().trim() == "200000 100000"
    });
    assert_eq!(d.pids("calm"), [pid], "not restarted");
}
