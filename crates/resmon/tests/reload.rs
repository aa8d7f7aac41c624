//! Reload (`resmon reload` and SIGHUP): added resources start, removed ones
//! stop, changed ones restart only when their type or params changed, and an
//! invalid file is refused whole while the running config keeps working.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn res(name: &str, command: &str, extra: &str) -> String {
    format!(
        "[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = \"{command}\"\n{extra}\n"
    )
}

/// Rewrites the resources part of the daemon's config.
fn rewrite(d: &Daemon, resources: &str) {
    let file = d.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    let head = &text[..text.find("[[resource]]").unwrap_or(text.len())];
    std::fs::write(&file, format!("{head}{resources}")).unwrap();
}

fn pid(d: &Daemon, name: &str) -> u64 {
    d.resource(name)["pids"][0].as_u64().unwrap()
}

#[test]
fn reload_applies_only_what_changed() {
    let d = Daemon::start(&format!(
        "{}{}{}{}",
        res("same", "sleep 1000", ""),
        res("cmd", "sleep 1000", ""),
        res("policy", "sleep 1000", ""),
        res("gone", "sleep 1000", ""),
    ));
    for n in ["same", "cmd", "policy", "gone"] {
        d.wait_state(n, "online", LONG);
    }
    let (same, cmd, policy, gone) = (
        pid(&d, "same"),
        pid(&d, "cmd"),
        pid(&d, "policy"),
        pid(&d, "gone"),
    );
    rewrite(
        &d,
        &format!(
            "{}{}{}{}",
            res("same", "sleep 1000", ""),
            res("cmd", "sleep 1001", ""),
            res("policy", "sleep 1000", "looks_alive_interval = \"2s\""),
            res("new", "sleep 1000", ""),
        ),
    );
    let out = d.ok(&["reload"]);
    assert!(out.contains("added:     new"), "{out}");
    assert!(out.contains("removed:   gone"), "{out}");
    assert!(out.contains("restarted: cmd"), "{out}");
    assert!(out.contains("updated:   policy"), "{out}");
    d.wait_state("new", "online", LONG);
    wait_for("cmd back online with a new pid", LONG, || {
        let r = d.resource("cmd");
        r["state"] == "online" && r["pids"][0].as_u64() != Some(cmd)
    });
    assert!(!alive(cmd as u32));
    wait_for("gone to stop", LONG, || !alive(gone as u32));
    assert!(d.status().iter().all(|r| r["name"] != "gone"));
    assert_eq!(pid(&d, "same"), same);
    assert_eq!(
        pid(&d, "policy"),
        policy,
        "a policy change needs no restart"
    );
    let common = d.ok(&["control", "policy", "get_common_properties"]);
    assert!(
        common.contains("\"looks_alive_interval\": \"2s\""),
        "{common}"
    );
    let private = d.ok(&["control", "cmd", "get_private_properties"]);
    assert!(private.contains("sleep 1001"), "{private}");
}

#[test]
fn an_invalid_config_is_refused_whole_and_sighup_reloads() {
    let d = Daemon::start(&res("svc", "sleep 1000", ""));
    d.wait_state("svc", "online", LONG);
    let before = pid(&d, "svc");
    rewrite(
        &d,
        &format!(
            "{}{}",
            res("svc", "sleep 1001", ""),
            res(
                "broken",
                "/no/such/program",
                "looks_alive_interval = \"soon\""
            )
        ),
    );
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/program"), "{err}");
    assert!(err.contains("looks_alive_interval"), "{err}");
    // Nothing changed.
    assert_eq!(pid(&d, "svc"), before);
    assert!(d.status().iter().all(|r| r["name"] != "broken"));
    // A fixed file, through SIGHUP.
    rewrite(
        &d,
        &format!(
            "{}{}",
            res("svc", "sleep 1000", ""),
            res("more", "sleep 1000", "")
        ),
    );
    signal(d.pid(), 1);
    d.wait_state("more", "online", LONG);
    assert_eq!(pid(&d, "svc"), before);
}

#[test]
fn a_reload_that_adds_a_resource_that_does_not_open_adds_it_failed() {
    let d = Daemon::start(&res("a", "sleep 1000", ""));
    d.wait_state("a", "online", LONG);
    let agent = "/usr/lib/ocf/resource.d/heartbeat/anything";
    assert!(
        std::path::Path::new(agent).exists(),
        "needs Debian's resource-agents (scripts/test installs it)"
    );
    rewrite(
        &d,
        &format!(
            "{}{}",
            res("a", "sleep 1000", ""),
            "[[resource]]\nname = \"bad\"\ntype = \"ocf:heartbeat:anything\"\nparams = { binfile = \"/no/such/daemon\" }\n",
        ),
    );
    let out = d.ok(&["reload"]);
    assert!(out.contains("added:     bad"), "{out}");
    d.wait_state("bad", "failed", LONG);
    let why = d.resource("bad")["reason"].as_str().unwrap().to_string();
    assert!(why.contains("validate-all exited 5"), "{why}");
    assert_eq!(d.state("a"), "online", "the others run on");
    // Its online tries the open again, and fails again with the reason.
    let out = d.cli(&["online", "bad", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("validate-all exited 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_changed_resource_that_does_not_open_with_its_new_params_fails_alone() {
    let work = tempfile::tempdir().unwrap();
    let binfile = work.path().join("daemon.sh");
    std::fs::write(&binfile, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(
        &binfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let any = |bin: &str| {
        format!(
            "[[resource]]\nname = \"any\"\ntype = \"ocf:heartbeat:anything\"\nparams = {{ binfile = \"{bin}\", pidfile = \"{}\" }}\n",
            work.path().join("any.pid").display()
        )
    };
    let d = Daemon::start(&format!(
        "{}{}",
        res("a", "sleep 1000", ""),
        any(&binfile.display().to_string())
    ));
    d.wait_state("any", "online", LONG);
    rewrite(
        &d,
        &format!("{}{}", res("a", "sleep 1000", ""), any("/no/such/daemon")),
    );
    let out = d.ok(&["reload"]);
    assert!(out.contains("restarted: any"), "{out}");
    d.wait_state("any", "failed", LONG);
    let why = d.resource("any")["reason"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("with its new config: open failed: validate-all exited 5"),
        "{why}"
    );
    assert!(d.pids("any").is_empty());
    assert_eq!(d.state("a"), "online");
}

#[test]
fn a_resource_added_back_while_its_old_self_stops_is_refused_until_it_is_gone() {
    let slow = res(
        "grace",
        "sh -c 'trap \\\"\\\" TERM; while :; do sleep 1; done'",
        "pending_timeout = \"2s\"",
    );
    let d = Daemon::start(&format!("{}{slow}", res("a", "sleep 1000", "")));
    d.wait_state("grace", "online", LONG);
    let old = d.marked("grace");
    assert!(!old.is_empty());
    rewrite(&d, &res("a", "sleep 1000", ""));
    let out = d.ok(&["reload"]);
    assert!(out.contains("removed:   grace"), "{out}");
    // Added back at once: refused, with the reason; nothing changes.
    rewrite(&d, &format!("{}{slow}", res("a", "sleep 1000", "")));
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resource \"grace\": removed by an earlier reload and still stopping"),
        "{err}"
    );
    // Once the old one is gone (terminated after its pending_timeout), the
    // same reload adds it, and it runs in a cgroup that stays.
    wait_for("the old one to be gone", LONG, || {
        old.iter().all(|&p| !alive(p))
    });
    wait_for("the reload to be taken", LONG, || {
        d.cli(&["reload"]).status.success()
    });
    d.wait_state("grace", "online", LONG);
    let new = d.marked("grace");
    assert!(!new.is_empty() && new.iter().all(|p| !old.contains(p)));
    d.ok(&["offline", "grace"]);
    d.ok(&["online", "grace", "--wait"]);
    assert_eq!(d.state("a"), "online");
}

/// An agent whose `validate-all` says it started (a file) and then waits
/// for the test to open its gate (a FIFO), for as long as a minute.
fn gated_agent(work: &std::path::Path) -> std::path::PathBuf {
    let root = work.join("ocf");
    let dir = root.join("resource.d/test");
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("Gated");
    std::fs::write(
        &agent,
        r#"#!/bin/sh
case "$1" in
meta-data) cat <<'XML'
<?xml version="1.0"?>
<resource-agent name="Gated" version="1.0">
<version>1.0</version>
<shortdesc lang="en">validate-all waits for a gate</shortdesc>
<longdesc lang="en">Test agent.</longdesc>
<parameters>
<parameter name="gate" required="1"><shortdesc lang="en">FIFO</shortdesc><content type="string"/></parameter>
<parameter name="state" required="1"><shortdesc lang="en">State file</shortdesc><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="5s"/><action name="stop" timeout="5s"/>
<action name="monitor" timeout="5s"/><action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="60s"/>
</actions>
</resource-agent>
XML
  exit 0;;
validate-all) touch "$OCF_RESKEY_gate.waiting"; read x < "$OCF_RESKEY_gate"; exit 0;;
start) touch "$OCF_RESKEY_state"; exit 0;;
stop) rm -f "$OCF_RESKEY_state"; exit 0;;
monitor) [ -f "$OCF_RESKEY_state" ] || exit 7; exit 0;;
*) exit 3;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    root
}

/// A monitor running `a`, and a reload that added a `Gated` resource
/// whose open (its validate-all) waits at its gate: returns the monitor,
/// the agent's file and the gate.
fn open_waiting_at_a_gate(
    work: &std::path::Path,
) -> (Daemon, std::path::PathBuf, std::path::PathBuf) {
    let root = gated_agent(work);
    let gate = work.join("gate");
    assert!(std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap()
        .success());
    let d = Daemon::start(&res("a", "sleep 1000", ""));
    d.wait_state("a", "online", LONG);
    rewrite(
        &d,
        &format!(
            "{}[[resource]]\nname = \"gated\"\ntype = \"ocf:test:Gated\"\nocf_root = \"{}\"\nparams = {{ gate = \"{}\", state = \"{}\" }}\n",
            res("a", "sleep 1000", ""),
            root.display(),
            gate.display(),
            work.join("state").display()
        ),
    );
    // The reload answers once the config is read and applied; the open
    // runs after it, off the monitor's loop.
    let out = d.ok(&["reload"]);
    assert!(out.contains("added:     gated"), "{out}");
    wait_for("validate-all to wait at its gate", LONG, || {
        work.join("gate.waiting").exists()
    });
    assert_eq!(d.resource("gated")["call"], "open");
    (d, root.join("resource.d/test/Gated"), gate)
}

#[test]
fn the_monitor_answers_while_an_added_resource_waits_for_its_agent() {
    let work = tempfile::tempdir().unwrap();
    let (d, _, gate) = open_waiting_at_a_gate(work.path());
    // The open waits for the agent; the monitor does not. `timeout`
    // bounds the answer so that a monitor that waits fails here.
    for args in [
        &["status"][..],
        &["offline", "a", "--wait"],
        &["online", "a", "--wait"],
    ] {
        let out = std::process::Command::new("timeout")
            .arg("10")
            .arg(BIN)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resmon {args:?} while the open waits: {out:?}"
        );
    }
    assert_eq!(d.resource("gated")["call"], "open", "still opening");
    assert_eq!(d.state("gated"), "offline");
    // Open the gate: the open ends and the resource comes online.
    std::fs::write(&gate, "go\n").unwrap();
    d.wait_state("gated", "online", LONG);
}

#[test]
fn a_stop_does_not_wait_for_an_agent_that_an_open_waits_for() {
    let work = tempfile::tempdir().unwrap();
    let (mut d, agent, _) = open_waiting_at_a_gate(work.path());
    let agents = || {
        resmon_test_support::all()
            .into_iter()
            .filter(|p| !p.is_dead())
            .filter(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*agent.to_string_lossy()))
            })
            .map(|p| p.pid)
            .collect::<Vec<_>>()
    };
    let waiting = agents();
    assert!(!waiting.is_empty(), "no agent found waiting");
    // The agent would wait a minute (its validate-all timeout); the stop
    // kills it, and the monitor exits within Daemon::stop's deadline.
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(
        waiting.iter().all(|&p| !alive(p)),
        "{waiting:?} outlived the monitor"
    );
}

#[test]
fn the_start_opens_every_resource_at_once_and_answers_meanwhile() {
    let work = tempfile::tempdir().unwrap();
    let root = gated_agent(work.path());
    let mut config = res("a", "sleep 1000", "");
    for i in 0..3 {
        let gate = work.path().join(format!("gate{i}"));
        assert!(std::process::Command::new("mkfifo")
            .arg(&gate)
            .status()
            .unwrap()
            .success());
        config += &format!(
            "[[resource]]\nname = \"g{i}\"\ntype = \"ocf:test:Gated\"\nocf_root = \"{}\"\nparams = {{ gate = \"{}\", state = \"{}\" }}\n",
            root.display(),
            gate.display(),
            work.path().join(format!("state{i}")).display()
        );
    }
    let d = Daemon::start(&config);
    // Every validate-all waits at its gate at the same time: the opens run
    // side by side, not one after another.
    wait_for("every open to wait at its gate", LONG, || {
        (0..3).all(|i| work.path().join(format!("gate{i}.waiting")).exists())
    });
    // Meanwhile the monitor answers, starts what is open, and is not ready.
    d.wait_state("a", "online", LONG);
    for i in 0..3 {
        let r = d.resource(&format!("g{i}"));
        assert_eq!(r["call"], "open", "{r}");
        assert_eq!(r["wanted_online"], true, "{r}");
    }
    let readyz = || {
        let unix = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        http_on(unix, "GET", "/readyz", "")
    };
    let (code, answer) = readyz();
    assert_eq!(code, 503, "{answer}");
    assert!(answer.contains("the monitor is starting"), "{answer}");
    for i in 0..3 {
        std::fs::write(work.path().join(format!("gate{i}")), "go\n").unwrap();
    }
    for i in 0..3 {
        d.wait_state(&format!("g{i}"), "online", LONG);
    }
    wait_for("readyz to say ready", LONG, || readyz().0 == 200);
}
