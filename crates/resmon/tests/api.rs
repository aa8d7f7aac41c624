//! The API beyond status and operations: control codes, calls in progress,
//! and bad input on the real socket, none of which may crash the monitor or
//! change a resource.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn control_codes_reach_the_type_or_the_monitor_defaults() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = ["sleep", "1000"]
looks_alive_interval = "2s"
"#,
    );
    d.wait_state("svc", "online", LONG);
    let pid = d.pids("svc")[0];
    let state = json(&d.ok(&["control", "svc", "get_state"]));
    assert_eq!(state["state"], "online");
    let common = json(&d.ok(&["control", "svc", "2"]));
    assert_eq!(common["looks_alive_interval"], "2s");
    assert_eq!(common["restart_threshold"], 3);
    let ch = json(&d.ok(&["control", "svc", "get_characteristics"]));
    assert_eq!(ch["type"], "process");
    // Answered by the process type itself.
    let private = json(&d.ok(&["control", "svc", "get_private_properties"]));
    assert_eq!(
        private["params"]["command"],
        serde_json::json!(["sleep", "1000"])
    );
    assert_eq!(private["main_pid"], pid);
    let info = json(&d.ok(&["type-control", "process", "get_type_info"]));
    assert_eq!(info["resources"], serde_json::json!(["svc"]));
    let names = json(&d.ok(&["type-control", "process", "get_private_property_names"]));
    assert!(names.as_array().unwrap().contains(&Value::from("command")));

    // Bad input: clear errors, nothing changes.
    let out = d.cli(&["control", "svc", "77"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control code 77 is not supported"));
    let out = d.cli(&["control", "svc", "get_everything"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["control", "svc", "get_state", "--input", "{not json"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["control", "nope", "get_state"]);
    assert_eq!(out.status.code(), Some(1));
    let out = d.cli(&["type-control", "nope", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(d.pids("svc"), vec![pid]);
}

#[test]
fn calls_lists_what_is_in_flight_with_its_deadline() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "stubborn"
type = "process"
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
pending_timeout = "60s"
"#,
    );
    d.wait_state("stubborn", "online", LONG);
    d.ok(&["offline", "stubborn"]);
    let mut seen = Value::Null;
    wait_for("the offline call to show", LONG, || {
        seen = json(&d.ok(&["calls", "--json"]));
        seen["calls"].as_array().is_some_and(|c| !c.is_empty())
    });
    let call = &seen["calls"][0];
    assert_eq!(call["resource"], "stubborn");
    assert_eq!(call["entry"], "offline");
    let remaining = call["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 50_000 && remaining <= 60_000, "{call}");
    let table = d.ok(&["calls"]);
    assert!(
        table.contains("stubborn") && table.contains("offline"),
        "{table}"
    );
    d.ok(&["terminate", "stubborn"]);
    let after = json(&d.ok(&["calls", "--json"]));
    assert_eq!(after["calls"], serde_json::json!([]));
}

/// Sends raw bytes on the socket and returns the status code of the answer
/// (0 when the monitor closed the connection without one).
fn raw(d: &Daemon, request: &[u8]) -> u16 {
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    // A request that asks to close is answered, then closed. Closing our
    // side early instead would race the answer: the server may see the end
    // of the stream first and drop the connection unanswered.
    if !request
        .windows(17)
        .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
    {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Every error answer is JSON, except hyper's own to bytes that are not
    // HTTP at all.
    if code >= 400 && (request.starts_with(b"POST") || request.starts_with(b"DELETE")) {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(
            body.contains("{\"error\":"),
            "error answer is not JSON: {text}"
        );
    }
    code
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn bad_requests_get_clear_4xx_and_change_nothing() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
"#,
    );
    d.wait_state("svc", "online", LONG);
    let pid = d.pids("svc")[0];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "malformed terminate body",
            post("/v1/resources/svc/terminate", b"{\"exit_code\": \"x\"}"),
            400,
        ),
        (
            "unknown field",
            post("/v1/resources/svc/terminate", b"{\"exit\": 1}"),
            400,
        ),
        (
            "oversized body",
            post("/v1/resources/svc/terminate", &vec![b' '; 200 * 1024]),
            413,
        ),
        (
            "control input not JSON",
            post("/v1/resources/svc/control/1", b"\x00\xff"),
            400,
        ),
        ("odd name", post("/v1/resources/..%2Fetc/online", b""), 400),
        ("unknown endpoint", post("/v1/nothing", b""), 404),
        (
            "wrong method",
            b"DELETE /v1/resources HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            405,
        ),
        (
            "not HTTP",
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let got = raw(&d, &request);
        // hyper answers unparsable requests 400 or just closes.
        assert!(
            got == want || (want == 400 && got == 0),
            "{what}: got {got}, want {want}"
        );
    }
    // Still the same process, still answering.
    let r = d.resource("svc");
    assert_eq!(r["state"], "online");
    assert_eq!(d.pids("svc"), vec![pid]);
}

#[test]
fn cluster_commands_on_a_single_node_say_so() {
    let d = Daemon::start(
        "[[resource]]\nname = \"a\"\ntype = \"process\"\ncommand = [\"sleep\", \"1000\"]\n",
    );
    for args in [
        &["nodes"][..],
        &["move", "a", "n2"][..],
        &["maintenance", "on", "--node", "n2"][..],
        &["node", "drain", "n2"][..],
        &["node", "resume", "n2"][..],
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no [cluster] section"), "{args:?}: {err}");
    }
    // No OWNER column without a cluster.
    assert!(!d.ok(&["status"]).contains("OWNER"));
}
