//! Day-two operations through the real daemon and CLI: probe thresholds on
//! a real HTTP server, maintenance mode (across a reload and a monitor
//! restart), `restart`, continuous readiness gating a dependent, a startup
//! probe's deadline, and restart backoff.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// A real HTTP server on a loopback port, probed every 200 ms; `extra` is
/// added to its resource.
fn web(port: u16, extra: &str) -> String {
    format!(
        r#"
[[resource]]
name = "web"
type = "process"
command = ["python3", "-u", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
startup = {{ type = "tcp", address = "127.0.0.1:{port}" }}
probe = {{ type = "http", url = "http://127.0.0.1:{port}/", timeout = "300ms" }}
is_alive_interval = "200ms"
looks_alive_interval = "100ms"
restart_delay = "0s"
{extra}
"#
    )
}

/// The `resmon_resource_{what}` series of a process resource.
fn gauge(d: &Daemon, what: &str, name: &str, group: &str) -> Option<f64> {
    let series =
        format!(r#"resmon_resource_{what}{{resource="{name}",group="{group}",type="process"}}"#);
    sample(&d.ok(&["metrics"]), &series)
}

/// `db` (with `extra` keys) and `app`, which depends on it, in group `g`.
fn db_and_app(extra: &str) -> String {
    format!(
        r#"
[[resource]]
name = "db"
type = "process"
group = "g"
command = "sleep 1000"
{extra}
[[resource]]
name = "app"
type = "process"
group = "g"
depends_on = ["db"]
command = "sleep 1000"
"#
    )
}

/// The events of `name` whose reason contains `needle`.
fn events_with(d: &Daemon, name: &str, needle: &str) -> usize {
    d.reasons(Some(name))
        .iter()
        .filter(|r| r.contains(needle))
        .count()
}

#[test]
fn an_http_probe_fails_the_resource_only_after_failure_threshold_checks() {
    let port = free_port();
    let d = Daemon::start(&web(port, "failure_threshold = 3"));
    d.wait_state("web", "online", LONG);
    let pid = d.pids("web")[0];
    // The server stops answering: its probes time out.
    signal(pid, libc_sig::STOP);
    wait_for("the resource to fail", LONG, || {
        d.resource("web")["restarts"] == 1
    });
    // The state changes of web, in order.
    let states: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e["resource"] == "web" && e["kind"] == "state")
        .map(|e| {
            format!(
                "{}: {}",
                e["state"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            )
        })
        .collect();
    let at = |needle: &str| {
        states
            .iter()
            .position(|r| r.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {states:#?}"))
    };
    let (one, two, failed) = (
        at("online: is_alive returned false (1 of failure_threshold 3)"),
        at("online: is_alive returned false (2 of failure_threshold 3)"),
        at("failed: is_alive returned false"),
    );
    assert!(one < two && two < failed, "{states:#?}");
    // Failed and restarted: the stopped server is gone, a new one serves.
    d.wait_state("web", "online", LONG);
    assert_ne!(d.pids("web"), [pid]);
    wait_for("the stopped server to be gone", LONG, || !alive(pid));
}

#[test]
fn maintenance_keeps_a_failing_service_running_across_a_reload_and_a_monitor_restart() {
    let port = free_port();
    let mut d = Daemon::start(&format!(
        "{}\n[[resource]]\nname = \"beat\"\ntype = \"process\"\ngroup = \"web\"\ndepends_on = [\"web\"]\ncommand = \"sleep 1000\"\n",
        web(port, "group = \"web\"")
    ));
    d.wait_state("beat", "online", LONG);
    let pid = d.pids("web")[0];
    let out = d.ok(&["maintenance", "on", "web"]);
    assert_eq!(out.trim(), "web: online, maintenance");
    assert_eq!(d.resource("web")["maintenance"], true);
    assert!(d.ok(&["status"]).contains("online,maintenance"));
    // The checks fail; they are reported, nothing acts.
    signal(pid, libc_sig::STOP);
    wait_for("a failure found in maintenance", LONG, || {
        events_with(&d, "web", "maintenance: is_alive") > 0
    });
    let failures = |d: &Daemon| {
        sample(
            &d.ok(&["metrics"]),
            r#"resmon_probe_failures_total{probe="http"}"#,
        )
        .unwrap_or(0.0)
    };
    let seen = failures(&d);
    wait_for("three more failed probes", LONG, || {
        failures(&d) >= seen + 3.0
    });
    let web = d.resource("web");
    assert_eq!(web["state"], "online", "{web}");
    assert_eq!(web["restarts"], 0);
    assert_eq!(d.pids("web"), [pid]);
    assert_eq!(d.state("beat"), "online", "its dependent stays up");
    assert_eq!(gauge(&d, "maintenance", "web", "web"), Some(1.0));
    // A reload keeps it.
    d.ok(&["reload"]);
    assert_eq!(d.resource("web")["maintenance"], true);
    // A monitor killed and started again keeps it, and the same process.
    let found = events_with(&d, "web", "maintenance: is_alive");
    d.wait_saved();
    d.kill9();
    d.launch();
    d.wait_state("web", "online", LONG);
    assert_eq!(d.resource("web")["maintenance"], true);
    assert_eq!(d.pids("web"), [pid]);
    wait_for("a failure found after the restart", LONG, || {
        events_with(&d, "web", "maintenance: is_alive") > found
    });
    assert_eq!(d.pids("web"), [pid]);
    // Off: checked at once, found failed, restarted.
    d.ok(&["maintenance", "off", "web"]);
    wait_for("the restart", LONG, || d.resource("web")["restarts"] == 1);
    d.wait_state("web", "online", LONG);
    assert_ne!(d.pids("web"), [pid]);
    let kinds: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e["kind"] == "maintenance")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds
            .last()
            .is_some_and(|r| r.starts_with("maintenance off")),
        "{kinds:?}"
    );
}

#[test]
fn maintenance_by_group_and_for_all_and_bad_requests() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "a"
type = "process"
group = "g"
command = "sleep 1000"
[[resource]]
name = "b"
type = "process"
command = "sleep 1000"
"#,
    );
    d.wait_state("b", "online", LONG);
    let out = d.ok(&["maintenance", "on", "--group", "g"]);
    assert_eq!(out.trim(), "a: online, maintenance");
    assert!(d.resource("b")["maintenance"].is_null(), "off: not shown");
    d.ok(&["maintenance", "on", "--all"]);
    assert!(d.status().iter().all(|r| r["maintenance"] == true));
    d.ok(&["maintenance", "off", "--all"]);
    assert!(d.status().iter().all(|r| r["maintenance"].is_null()));
    // Bad input: a clear error, nothing changes.
    let out = d.cli(&["maintenance", "on", "--group", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no group \"nope\""));
    let out = d.cli(&["maintenance", "on", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let out = d.cli(&["maintenance", "maybe", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["maintenance", "on"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(d.status().iter().all(|r| r["maintenance"].is_null()));
    // A caller without the control right cannot turn it on.
    let out = d.cli_as(65534, &["maintenance", "on", "a"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(d.resource("a")["maintenance"], serde_json::Value::Null);
}

#[test]
fn restart_takes_a_resource_down_with_its_dependents_and_brings_them_back() {
    let d = Daemon::start(&db_and_app(""));
    d.wait_state("app", "online", LONG);
    let (db, app) = (d.pids("db")[0], d.pids("app")[0]);
    let out = d.ok(&["restart", "db", "--wait"]);
    assert_eq!(out.trim(), "db: online");
    d.wait_state("app", "online", LONG);
    assert_ne!(d.pids("db"), [db]);
    assert_ne!(d.pids("app"), [app]);
    assert!(!alive(db) && !alive(app));
    // Of a resource that is down: brought online.
    d.ok(&["offline", "app", "--wait"]);
    d.ok(&["restart", "app", "--wait"]);
    assert_eq!(d.state("app"), "online");
}

#[test]
fn readiness_gates_a_dependent_reports_not_ready_and_restarts_nothing() {
    let work = tempfile::tempdir().unwrap();
    let flag = work.path().join("ready");
    let d = Daemon::start(&db_and_app(&format!(
        "readiness = {{ type = \"exec\", command = [\"test\", \"-e\", \"{}\"], interval = \"100ms\" }}\nfailure_threshold = 2",
        flag.display()
    )));
    d.wait_state("db", "online", LONG);
    let db = d.resource("db");
    assert_eq!(db["ready"], false, "{db}");
    assert!(d.ok(&["status"]).contains("online,not-ready"));
    // The dependent waits while its provider is not ready.
    for _ in 0..5 {
        assert_eq!(d.state("app"), "offline");
    }
    std::fs::write(&flag, "").unwrap();
    d.wait_state("app", "online", LONG);
    assert_eq!(d.resource("db")["ready"], true);
    let pid = d.pids("db")[0];
    // Not ready again: reported, nothing stops.
    std::fs::remove_file(&flag).unwrap();
    wait_for("db not ready", LONG, || d.resource("db")["ready"] == false);
    let not_ready: Vec<_> = d
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "not_ready")
        .collect();
    assert_eq!(not_ready.len(), 1, "{not_ready:?}");
    assert_eq!(not_ready[0]["resource"], "db");
    assert_eq!(d.state("app"), "online");
    assert_eq!(d.pids("db"), [pid]);
    assert_eq!(d.resource("db")["restarts"], 0);
    assert_eq!(gauge(&d, "ready", "db", "g"), Some(0.0));
}

#[test]
fn a_startup_probe_that_never_passes_fails_the_start_at_its_deadline() {
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "never"
type = "process"
command = "sleep 1000"
startup = {{ type = "tcp", address = "127.0.0.1:{port}", deadline = "1s" }}
pending_timeout = "60s"
restart_action = "restart"
restart_threshold = 1
restart_delay = "0s"
"#
    ));
    wait_for("two failed starts", LONG, || {
        events_with(
            &d,
            "never",
            "the startup probe did not pass within its deadline of 1s",
        ) >= 2
    });
    let r = d.resource("never");
    assert_eq!(r["restarts"], 1, "{r}");
    // Past its threshold: failed, the next attempt an hour away, and said.
    wait_for("the next attempt shown", LONG, || {
        d.resource("never")["next_attempt"].is_string()
    });
    assert_eq!(d.state("never"), "failed");
}

#[test]
fn restart_backoff_spaces_out_the_restarts_of_a_crashing_service() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "crash"
type = "process"
command = "false"
restart_action = "restart"
restart_threshold = 100
restart_delay = "200ms"
restart_backoff = 2.0
restart_delay_max = "800ms"
"#,
    );
    wait_for("five restarts", LONG, || {
        d.resource("crash")["restarts"].as_u64() >= Some(5)
    });
    // Each restart's start, from the event feed's own clock.
    let starts: Vec<f64> = d
        .events()
        .iter()
        .filter(|e| e["resource"] == "crash" && e["reason"] == "restarting")
        .map(|e| {
            let t = e["time"].as_str().unwrap();
            humantime::parse_rfc3339(t)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        })
        .collect();
    assert!(starts.len() >= 5, "{starts:?}");
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // At least 400, 800, 800 ms: the delay doubled, then held at its bound.
    for (gap, least) in gaps.iter().zip([0.4, 0.8, 0.8]) {
        assert!(*gap >= least, "gaps {gaps:?}");
    }
}
