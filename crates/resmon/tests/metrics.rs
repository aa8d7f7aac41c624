//! `/metrics` of a real monitor: what its series say after real starts,
//! kills and stops, on the Unix socket (`resmon metrics`) and on the TCP
//! listener, in both text formats, and only for callers with the `query`
//! right.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);
const NOBODY: u32 = 65534;
const READ: &str = "read-only-token-0123456789";

fn labels(resource: &str) -> String {
    format!(r#"resource="{resource}",group="{resource}",type="process""#)
}

/// A GET with extra header lines, over any stream.
fn get(s: impl Read + Write, path: &str, headers: &str) -> (u16, String) {
    http_on(s, "GET", path, headers)
}

#[test]
fn metrics_show_states_failures_and_the_rung_that_ended_each_stop() {
    let d = Daemon::start(
        r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
restart_delay = "0s"

[[resource]]
name = "stubborn"
type = "process"
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
pending_timeout = "1s"
"#,
    );
    d.wait_state("svc", "online", LONG);
    d.wait_state("stubborn", "online", LONG);
    let text = d.ok(&["metrics"]);
    let svc = labels("svc");
    assert_eq!(sample(&text, "resmon_resources_configured"), Some(2.0));
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_resource_state{{{svc},state="online"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_resource_state{{{svc},state="failed"}}"#)
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            &format!("resmon_resource_online_since_timestamp_seconds{{{svc}}}")
        )
        .is_some(),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"resmon_call_duration_seconds_count{entry="online",type="process"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));

    // A crash: counted as a failure the resource reported, ended by the
    // terminate rung, restarted; its exit code is kept.
    let old = d.pids("svc")[0];
    signal(old, libc_sig::KILL);
    let mut text = String::new();
    wait_for("the restart to show in the metrics", LONG, || {
        text = d.ok(&["metrics"]);
        sample(&text, &format!("resmon_resource_restarts_total{{{svc}}}")) == Some(1.0)
            && sample(
                &text,
                &format!(r#"resmon_resource_state{{{svc},state="online"}}"#),
            ) == Some(1.0)
    });
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_resource_failures_total{{{svc},class="notice"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_stops_total{{{svc},rung="terminate"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("resmon_resource_last_exit_code{{{svc}}}")),
        Some(137.0),
        "killed by SIGKILL: 128 + 9\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("resmon_resource_in_restart_window{{{svc}}}")
        ),
        Some(1.0)
    );

    // An offline that works ends by the first rung; one whose service
    // ignores SIGTERM runs into pending_timeout and ends by terminate.
    d.ok(&["offline", "svc", "--wait"]);
    d.ok(&["offline", "stubborn", "--wait"]);
    let text = d.ok(&["metrics"]);
    let stubborn = labels("stubborn");
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_stops_total{{{svc},rung="offline"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_stops_total{{{stubborn},rung="terminate"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_stops_total{{{stubborn},rung="offline"}}"#)
        ),
        None
    );
    let took = sample(
        &text,
        r#"resmon_stop_duration_seconds_sum{type="process",rung="terminate"}"#,
    )
    .unwrap();
    assert!(took >= 1.0, "the stop waited out pending_timeout: {took}");
    assert!(
        !text.contains("resmon_stop_survivors_total{"),
        "nothing survived a stop:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"resmon_resource_state{{{svc},state="offline"}}"#)
        ),
        Some(1.0)
    );
    // Requests are counted by route, never by path.
    assert!(
        sample(
            &text,
            r#"resmon_api_requests_total{route="/v1/resources/{name}/offline",status="200"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(!text.contains(r#"route="/v1/resources/svc"#), "{text}");

    // The Prometheus format by default; OpenMetrics when asked.
    let unix = || std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let (code, answer) = get(unix(), "/metrics", "");
    assert_eq!(code, 200);
    assert!(
        answer.contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    assert!(!answer.contains("# EOF"));
    let (code, answer) = get(
        unix(),
        "/metrics",
        "accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert_eq!(code, 200);
    assert!(
        answer.contains("content-type: application/openmetrics-text"),
        "{answer}"
    );
    assert!(answer.ends_with("# EOF\n"), "{answer}");
    assert!(answer.contains("# TYPE resmon_stops counter"), "{answer}");
}

#[test]
fn metrics_need_the_query_right() {
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[api]
tcp = "127.0.0.1:{port}"

[[api.token]]
name = "reader"
token = "{READ}"
rights = ["query"]

[access]
query = ["root"]

[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
"#
    ));
    d.wait_state("svc", "online", LONG);
    let tcp = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(get(tcp(), "/metrics", "").0, 401);
    let (code, answer) = get(
        tcp(),
        "/metrics",
        &format!("authorization: Bearer {READ}\r\n"),
    );
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains(r#"resmon_resource_state{resource="svc""#));
    if uid_of(std::process::id()) != Some(0) {
        eprintln!("skipped the Unix socket half: needs root to run as another user");
        return;
    }
    let out = d.cli_as(NOBODY, &["metrics"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not hold the query right"), "{err}");
}

#[test]
fn a_removed_resource_leaves_no_series_once_released() {
    let svc = |name: &str| {
        format!("\n[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n")
    };
    let d = Daemon::start(&format!("{}{}", svc("keep"), svc("gone")));
    d.wait_state("keep", "online", LONG);
    d.wait_state("gone", "online", LONG);
    // A stop of `gone` is counted under its name.
    d.ok(&["offline", "gone", "--wait"]);
    d.ok(&["online", "gone", "--wait"]);
    let text = d.ok(&["metrics"]);
    assert!(
        text.contains(r#"resmon_stops_total{resource="gone""#),
        "{text}"
    );
    // The reload removes it: once stopped and released, nothing of it is left.
    let config = std::fs::read_to_string(d.config_file()).unwrap();
    let without = config.replace(&svc("gone"), "");
    assert_ne!(config, without);
    std::fs::write(d.config_file(), without).unwrap();
    d.ok(&["reload"]);
    let mut text = String::new();
    wait_for("the removed resource's series to go", LONG, || {
        text = d.ok(&["metrics"]);
        !text.contains(r#"resource="gone""#)
    });
    assert!(
        text.contains(r#"resmon_resource_state{resource="keep""#),
        "{text}"
    );
    assert_eq!(sample(&text, "resmon_resources_configured"), Some(1.0));
}
