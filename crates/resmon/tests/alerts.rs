//! Alert hooks through the real daemon: events reach a hook in order with
//! their variables and JSON, a hook that hangs is terminated at its timeout
//! while the monitor keeps answering, a failed delivery is retried, a full
//! queue drops and counts, a webhook gets the JSON, a hook runs as its
//! user, and nothing of a hook outlives the monitor.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// A shell command for `command = [...]`, as TOML (a JSON string is a
/// TOML basic string).
fn sh(script: &str) -> String {
    format!(
        "[\"sh\", \"-c\", {}]",
        serde_json::Value::String(script.into())
    )
}

/// A service that stays up, for hooks that hear of its maintenance.
const SVC: &str = "\n[[resource]]\nname = \"svc\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n";

/// A directory anyone may write (for a hook run as another user).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    dir
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The events of kind `alert` (what the hooks machinery says).
fn alert_events(d: &Daemon) -> Vec<String> {
    d.events()
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_hook_gets_each_event_in_order_with_its_variables_and_json() {
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("alerts.log");
    let json = out.path().join("alerts.json");
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "crash"
type = "process"
command = ["sh", "-c", "sleep 0.2; exit 3"]
restart_action = "restart"
restart_threshold = 2
restart_delay = "0s"

[[alert]]
name = "ops"
command = {}
on = ["failed", "restarted"]
resources = ["crash"]
"#,
        sh(&format!(
            "cat >> {json}; echo \"$RESMON_ALERT_SEQ $RESMON_ALERT_KIND $RESMON_ALERT_RESOURCE $RESMON_ALERT_STATE $RESMON_ALERT_EXIT_CODE $RESMON_ALERT_NAME\" >> {log}",
            log = log.display(),
            json = json.display()
        ))
    ));
    // Three failures, two restarts between them.
    wait_for("five alerts", LONG, || lines(&log).len() >= 5);
    let got = lines(&log);
    let seqs: Vec<u64> = got
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in event order: {got:?}"
    );
    let rest: Vec<String> = got
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    assert_eq!(
        rest[..5],
        [
            "failed crash failed 3 ops",
            "restarted crash online_pending  ops",
            "failed crash failed 3 ops",
            "restarted crash online_pending  ops",
            "failed crash failed 3 ops",
        ],
        "{got:?}"
    );
    // The same alerts as JSON on stdin, one per line (each written before
    // its line above).
    let records: Vec<serde_json::Value> = lines(&json)
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(records.len() >= got.len());
    let seq_of = |r: &serde_json::Value| r["seq"].as_u64().unwrap();
    assert_eq!(
        records.iter().map(seq_of).take(5).collect::<Vec<_>>(),
        seqs[..5]
    );
    let r = &records[0];
    assert_eq!(r["alert"], "ops");
    assert_eq!(r["kind"], "failed");
    assert_eq!(r["event"], "state");
    assert_eq!(r["resource"], "crash");
    assert_eq!(r["group"], "crash");
    assert_eq!(r["exit_code"], 3);
    assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(r["reason"].as_str().unwrap().contains("exit"), "{r}");
    let metrics = d.ok(&["metrics"]);
    assert!(
        sample(
            &metrics,
            r#"resmon_alerts_total{alert="ops",result="delivered"}"#
        )
        .is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
}

#[test]
fn a_hook_that_hangs_is_terminated_at_its_timeout_and_the_monitor_keeps_answering() {
    let mut d = Daemon::start(&format!(
        r#"{SVC}
[[alert]]
name = "hang"
command = {}
on = ["maintenance"]
timeout = "500ms"
retries = 0
"#,
        // Deaf to SIGTERM: only the kill that follows ends it.
        sh("trap '' TERM; sleep 1000 & wait")
    ));
    d.wait_state("svc", "online", LONG);
    let marker = format!("RESMON_RESOURCE={}/-alert-hang", d.instance());
    d.ok(&["maintenance", "on", "svc"]);
    wait_for("the hook to run", LONG, || {
        !marked_processes(&marker).is_empty()
    });
    // The monitor answers while the hook hangs.
    assert_eq!(d.state("svc"), "online");
    wait_for("the hook to be given up", LONG, || {
        alert_events(&d)
            .iter()
            .any(|r| r.contains("did not finish within its timeout of 500ms: terminated"))
    });
    wait_for("the hook's processes to be gone", LONG, || {
        marked_processes(&marker).is_empty()
    });
    // One that hangs when the monitor stops goes with it.
    d.ok(&["maintenance", "off", "svc"]);
    wait_for("the hook to run again", LONG, || {
        !marked_processes(&marker).is_empty()
    });
    let hook = marked_processes(&marker);
    assert!(d.stop().success());
    for pid in hook {
        assert!(!alive(pid), "hook process {pid} outlived the monitor");
    }
}

#[test]
fn a_failed_delivery_is_retried_and_a_full_queue_drops_and_counts() {
    let out = tempfile::tempdir().unwrap();
    let (first, done) = (out.path().join("first"), out.path().join("done"));
    let d = Daemon::start(&format!(
        r#"{SVC}
[[alert]]
name = "flaky"
command = {}
on = ["maintenance"]
retries = 1

[[alert]]
name = "slow"
command = ["sleep", "0.3"]
on = ["maintenance"]
queue = 1
"#,
        sh(&format!(
            "test -e {first} || {{ touch {first}; exit 1; }}; echo \"$RESMON_ALERT_ATTEMPT\" >> {done}",
            first = first.display(),
            done = done.display()
        ))
    ));
    d.wait_state("svc", "online", LONG);
    d.ok(&["maintenance", "on", "svc"]);
    wait_for("the second attempt", LONG, || lines(&done) == ["2"]);
    // Events faster than the slow hook: its queue of one overflows.
    for _ in 0..5 {
        d.ok(&["maintenance", "off", "svc"]);
        d.ok(&["maintenance", "on", "svc"]);
    }
    wait_for("drops counted", LONG, || {
        sample(
            &d.ok(&["metrics"]),
            r#"resmon_alerts_total{alert="slow",result="dropped"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    });
    let status: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("alert \\\"slow\\\" dropped") && problems.contains("queue of 1 was full"),
        "{problems}"
    );
    assert!(alert_events(&d)
        .iter()
        .any(|r| r.contains("alert \"slow\": its queue of 1 is full")));
}

#[test]
fn a_webhook_gets_the_json_and_a_hook_runs_as_its_user() {
    if uid_of(std::process::id()) != Some(0) {
        return skip(
            "a_webhook_gets_the_json_and_a_hook_runs_as_its_user",
            "needs root",
        );
    }
    let out = open_dir();
    let (posts, ids) = (out.path().join("posts"), out.path().join("ids"));
    let port = free_port();
    // A webhook receiver run by the monitor itself.
    let server = format!(
        r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("{posts}", "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#,
        posts = posts.display()
    );
    let d = Daemon::start(&format!(
        r#"
[[resource]]
name = "sink"
type = "process"
command = ["python3", "-u", "-c", {server}]
startup = {{ type = "tcp", address = "127.0.0.1:{port}" }}

[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
autostart = false

[[alert]]
name = "hook"
url = "http://127.0.0.1:{port}/alert"
command = {cmd}
user = "nobody"
on = ["online"]
resources = ["svc"]
"#,
        server = serde_json::Value::String(server.clone()),
        cmd = sh(&format!("id -u >> {}", ids.display())),
    ));
    d.wait_state("sink", "online", LONG);
    d.ok(&["online", "svc", "--wait"]);
    wait_for("the webhook's POST", LONG, || !lines(&posts).is_empty());
    let post: serde_json::Value = serde_json::from_str(&lines(&posts)[0]).unwrap();
    assert_eq!(post["kind"], "online");
    assert_eq!(post["resource"], "svc");
    assert_eq!(post["alert"], "hook");
    wait_for("the command", LONG, || !lines(&ids).is_empty());
    assert_eq!(lines(&ids), ["65534"], "run as nobody");
}

#[test]
fn bad_alert_tables_are_refused_with_their_place() {
    let text = check_refuses(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"

[[alert]]
name = "a"
command = ["no-such-program-xyz"]
on = ["faild"]

[[alert]]
name = "b"

[[alert]]
name = "c"
url = "ftp://example"
resources = ["nope"]
groups = ["nogroup"]
timeout = "5"
queue = 0

[[alert]]
command = ["true"]
colour = "red"

[alerts]
"#,
    );
    for needle in [
        "alert \"a\" ([[alert]] #1): command: program \"no-such-program-xyz\" not found",
        "alert \"a\" ([[alert]] #1): on: unknown kind \"faild\"; did you mean \"failed\"?",
        "alert \"b\" ([[alert]] #2): give command = [\"PROGRAM\", ...] or url = \"http://...\" (or both)",
        "alert \"c\" ([[alert]] #3): url \"ftp://example\" must start with http:// or https://",
        "alert \"c\" ([[alert]] #3): resources: \"nope\" is not a resource",
        "alert \"c\" ([[alert]] #3): groups: no resource is in group \"nogroup\"",
        "alert \"c\" ([[alert]] #3): timeout: duration \"5\" has no unit",
        "alert \"c\" ([[alert]] #3): queue: from 1 to 1000000 alerts",
        "[[alert]] #4: colour: unknown key \"colour\"",
        "[[alert]] #4: name is missing",
        "unknown section [alerts]; did you mean [[alert]]?",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}
