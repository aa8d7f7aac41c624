//! Real OCF agents from Debian's resource-agents (`scripts/test` installs
//! them) run through the real daemon: Dummy, anything (a daemon the agent
//! starts) and Stateful.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn need_agents() {
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists(),
        "these tests need Debian's resource-agents (apt-get install resource-agents; scripts/test does it)"
    );
}

#[test]
fn dummy_comes_online_is_watched_restarted_and_taken_offline() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("dummy.state");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "dummy"
type = "ocf:heartbeat:Dummy"
params = {{ state = "{}" }}
looks_alive_interval = "200ms"
restart_delay = "0s"
"#,
        state.display()
    ));
    d.wait_state("dummy", "online", LONG);
    assert!(state.exists(), "start created the state file");
    // The monitor notices the state file gone and the resource is restarted.
    std::fs::remove_file(&state).unwrap();
    wait_for("a restart", LONG, || {
        let r = d.resource("dummy");
        r["restarts"] == 1 && r["state"] == "online"
    });
    assert!(state.exists());
    let reasons = d.reasons(None);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("monitor exited 7 (not running)")),
        "{reasons:?}"
    );
    d.ok(&["offline", "dummy", "--wait"]);
    assert!(!state.exists(), "stop removed the state file");
    let private = d.ok(&["control", "dummy", "get_private_properties"]);
    assert!(
        private.contains("\"start\": \"20s\""),
        "meta-data timeouts used: {private}"
    );
}

#[test]
fn bad_ocf_configs_are_refused_with_the_agents_words() {
    need_agents();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        r#"
[[resource]]
name = "a"
type = "ocf:heartbeat:NoSuchAgent"

[[resource]]
name = "b"
type = "ocf:heartbeat:anything"
params = { cmdline_options = "x", bogus = "1" }

[[resource]]
name = "c"
type = "ocf:heartbeat"

[[resource]]
name = "d"
type = "ocf:heartbeat:Dummy"
timeouts = { strat = "10s" }
dependson = ["a"]
params = { stat = "/run/x" }
"#,
    );
    let err = refused("check", &file, 2);
    for needle in [
        "resource \"d\" ([[resource]] #4): timeouts > strat: unknown action; did you mean \"start\"?",
        "resource \"d\" ([[resource]] #4): unknown key \"dependson\"; did you mean \"depends_on\"?",
        "resource \"d\" ([[resource]] #4): params.stat: ocf:heartbeat:Dummy takes no such parameter; did you mean \"state\"?",
        "resource \"a\" ([[resource]] #1): agent ocf:heartbeat:NoSuchAgent not found",
        "resource \"b\" ([[resource]] #2): params.binfile: required by ocf:heartbeat:anything",
        "params.bogus: ocf:heartbeat:anything takes no such parameter",
        "\"ocf:heartbeat\" is not of the form",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_validate_runs_validate_all_and_names_the_resource() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    let binfile = work.path().join("daemon.sh");
    let file = write(
        work.path(),
        "c.toml",
        &format!(
            r#"
[[resource]]
name = "any"
type = "ocf:heartbeat:anything"
params = {{ binfile = "{}", pidfile = "{}" }}
"#,
            binfile.display(),
            work.path().join("any.pid").display()
        ),
    );
    // The plain check cannot know that the program is missing; the agent can.
    let plain = check(&file, false);
    assert!(plain.status.success(), "{plain:?}");
    let out = check(&file, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("resource \"any\": open failed: validate-all exited 5 (not installed)"),
        "{err}"
    );
    std::fs::write(&binfile, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(
        &binfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = check(&file, true);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok, 1 resources, each opened"),
        "{out:?}"
    );
    // Validation starts nothing.
    assert!(!work.path().join("any.pid").exists());
}

#[test]
fn a_resource_that_does_not_open_fails_alone_and_online_opens_it_again() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    let binfile = work.path().join("daemon.sh");
    // validate-all refuses what the agent cannot run (exit 5, not
    // installed): that resource fails with the agent's words, the monitor
    // and the other resource run on.
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "any"
type = "ocf:heartbeat:anything"
params = {{ binfile = "{}", pidfile = "{}" }}

[[resource]]
name = "good"
type = "process"
command = "sleep 1000"
"#,
        binfile.display(),
        work.path().join("any.pid").display()
    ));
    d.wait_state("good", "online", LONG);
    d.wait_state("any", "failed", LONG);
    let why = d.resource("any")["reason"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("open failed: validate-all exited 5 (not installed)"),
        "{why}"
    );
    assert!(
        d.events()
            .iter()
            .any(|e| e["kind"] == "log" && e["resource"] == "any" && e["reason"] == why.as_str()),
        "the event feed says why"
    );
    // Once the daemon is there, an operator's online opens it and starts it.
    std::fs::write(&binfile, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(
        &binfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    d.ok(&["online", "any", "--wait"]);
    assert_eq!(d.state("any"), "online");
    d.ok(&["offline", "any", "--wait"]);
    assert!(d.pids("any").is_empty());
}

fn anything(work: &Path, stubborn: bool, extra: &str) -> String {
    let script = work.join("daemon.sh");
    // The stubborn daemon says when its trap is set: the agent's start
    // returns as soon as the process exists, which can be before that.
    let trap = if stubborn {
        format!("trap '' TERM\n: > {}\n", work.join("trapped").display())
    } else {
        String::new()
    };
    std::fs::write(
        &script,
        format!("#!/bin/sh\n{trap}while :; do sleep 1; done\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        r#"
[[resource]]
name = "any"
type = "ocf:heartbeat:anything"
params = {{ binfile = "{}", pidfile = "{}", stop_timeout = "1000" }}
looks_alive_interval = "200ms"
restart_delay = "0s"
{extra}
"#,
        script.display(),
        work.join("any.pid").display()
    )
}

fn daemon_pid(work: &Path) -> u32 {
    std::fs::read_to_string(work.join("any.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn anything_runs_a_daemon_whose_death_is_seen() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    let d = Daemon::start(&anything(work.path(), false, ""));
    d.wait_state("any", "online", LONG);
    let first = daemon_pid(work.path());
    // The agent starts it through `su -`, which clears the environment: it
    // is the resource's because it is in the resource's cgroup.
    let pids: Vec<u32> = d.pids("any");
    if d.uses_cgroups() {
        assert!(
            pids.contains(&first),
            "the agent's daemon {first} is in the resource's cgroup: {pids:?}"
        );
    }
    signal(first, libc_sig::KILL);
    wait_for("the daemon to be restarted", LONG, || {
        let r = d.resource("any");
        r["restarts"] == 1
            && r["state"] == "online"
            && std::fs::read_to_string(work.path().join("any.pid"))
                .is_ok_and(|p| p.trim() != first.to_string())
    });
    let last = daemon_pid(work.path());
    d.ok(&["offline", "any", "--wait"]);
    assert!(!alive(last));
    assert!(d.pids("any").is_empty());
}

#[test]
fn a_hung_stop_is_terminated_with_nothing_left() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    // The daemon ignores SIGTERM and the agent waits 1000 s before SIGKILL:
    // stop hangs until its 1 s action timeout, then the resource is terminated.
    let d = Daemon::start(&anything(work.path(), true, "timeouts = { stop = \"1s\" }"));
    d.wait_state("any", "online", LONG);
    if !d.uses_cgroups() {
        // Documented in docs/ocf.md: without cgroups, a daemon started
        // through `su -` (cleared environment, own session) is not tracked.
        eprintln!("skipped: needs cgroup v2 to track a daemon started through `su -`");
        signal(daemon_pid(work.path()), libc_sig::KILL);
        return;
    }
    wait_for("the daemon to ignore SIGTERM", LONG, || {
        work.path().join("trapped").exists()
    });
    let before = d.pids("any");
    assert!(before.contains(&daemon_pid(work.path())), "{before:?}");
    d.ok(&["offline", "any", "--wait"]);
    assert_eq!(d.state("any"), "offline");
    assert!(d.pids("any").is_empty(), "survivors: {:?}", d.pids("any"));
    assert!(
        before.iter().all(|&p| !alive(p)),
        "survivors among {before:?}"
    );
    let events = d.events();
    assert!(
        events.iter().any(|e| e["kind"] == "terminate"),
        "terminated after the hung stop: {events:#?}"
    );
}

#[test]
fn stateful_runs_and_reports_through_monitor() {
    need_agents();
    let work = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "st"
type = "ocf:heartbeat:Stateful"
params = {{ state = "{}" }}
looks_alive_interval = "200ms"
"#,
        work.path().join("st.state").display()
    ));
    d.wait_state("st", "online", LONG);
    // Several monitors pass and it stays online.
    let since = d.resource("st")["since"].clone();
    wait_for("a few monitor rounds", LONG, || {
        d.events().iter().filter(|e| e["resource"] == "st").count() >= 2
    });
    assert_eq!(d.resource("st")["since"], since);
    d.ok(&["offline", "st", "--wait"]);
}

#[test]
fn agents_lists_and_shows_the_installed_agents() {
    need_agents();
    let run = |args: &[&str]| std::process::Command::new(BIN).args(args).output().unwrap();
    let out = run(&["agents"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() > 100,
        "the Debian package has about 140 agents"
    );
    assert!(
        text.lines().any(|l| l.starts_with("ocf:heartbeat:Dummy ")
            && l.contains("Example stateless resource agent")),
        "{text}"
    );
    let out = run(&["agents", "show", "ocf:heartbeat:anything"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("binfile") && text.contains("required"),
        "{text}"
    );
    assert!(text.contains("start") && text.contains("20s"), "{text}");
    assert_eq!(
        run(&["agents", "show", "ocf:heartbeat:Nope"]).status.code(),
        Some(1)
    );
    assert_eq!(run(&["agents", "show", "Dummy"]).status.code(), Some(2));
}

/// A small agent of our own in an OCF root of our own: its monitor answers
/// 190 (degraded) or 8 (running promoted) as a file says.
fn custom_root(work: &Path) -> std::path::PathBuf {
    let root = work.join("ocf");
    let dir = root.join("resource.d/test");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("Moody");
    std::fs::write(
        &agent,
        r#"#!/bin/sh
state="$OCF_RESKEY_state"
case "$1" in
meta-data) cat <<'XML'
<?xml version="1.0"?>
<resource-agent name="Moody" version="1.0">
<version>1.0</version>
<shortdesc lang="en">Answers monitor from a file</shortdesc>
<longdesc lang="en">Test agent.</longdesc>
<parameters>
<parameter name="state" required="1"><shortdesc lang="en">State file</shortdesc><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="5s"/><action name="stop" timeout="5s"/>
<action name="monitor" timeout="5s" depth="0"/><action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="5s"/>
</actions>
</resource-agent>
XML
  exit 0;;
start) echo 0 > "$state"; exit 0;;
stop) rm -f "$state"; exit 0;;
monitor) [ -f "$state" ] || exit 7; exit "$(cat "$state")";;
validate-all) exit 0;;
*) exit 3;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    root
}

#[test]
fn degraded_and_promoted_are_shown_in_status() {
    let work = tempfile::tempdir().unwrap();
    let root = custom_root(work.path());
    let state = work.path().join("moody.state");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "moody"
type = "ocf:test:Moody"
ocf_root = "{}"
params = {{ state = "{}" }}
looks_alive_interval = "100ms"
"#,
        root.display(),
        state.display()
    ));
    d.wait_state("moody", "online", LONG);
    for (code, detail) in [
        ("190", "degraded"),
        ("8", "promoted"),
        ("191", "degraded, promoted"),
    ] {
        std::fs::write(&state, code).unwrap();
        wait_for(detail, LONG, || d.resource("moody")["detail"] == detail);
        assert_eq!(d.state("moody"), "online", "{detail} is still running");
    }
    std::fs::write(&state, "0").unwrap();
    wait_for("no detail", LONG, || {
        d.resource("moody")["detail"].is_null()
    });
    assert_eq!(d.resource("moody")["restarts"], 0);
    // `agents` reads another root too.
    let out = std::process::Command::new(BIN)
        .args(["agents", "--ocf-root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ocf:test:Moody"));
}
