//! The durable event journal: `resmon events` reads the history across
//! monitor restarts (numbered on from the last event), filters it by
//! resource and by time, names who asked for what and which rung ended a
//! stop, and reads past a torn record left by a crash.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn sleeper(name: &str) -> String {
    format!("[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n")
}

fn events(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    d.ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line is JSON"))
        .collect()
}

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or_default()
}

#[test]
fn events_outlive_the_monitor_and_filter_by_resource_and_time() {
    let mut d = Daemon::start(&format!("{}{}", sleeper("a"), sleeper("b")));
    d.wait_state("a", "online", LONG);
    d.wait_state("b", "online", LONG);
    d.ok(&["offline", "b", "--wait"]);
    let first = events(&d, &[]);
    assert!(
        first.iter().any(|e| e["kind"] == "request"
            && reason(e).starts_with("POST /v1/resources/b/offline by uid 0")),
        "who asked is recorded: {first:#?}"
    );
    assert!(
        first.iter().any(|e| e["kind"] == "stopped"
            && e["resource"] == "b"
            && reason(e).starts_with("the offline rung ended the stop after")),
        "the rung that ended the stop is recorded: {first:#?}"
    );
    assert!(d.stop().success());

    // A crash in the middle of a write leaves a torn record at the end.
    let journal = d.dir.path().join("state/events.log");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .expect("the journal is in the state directory");
    f.write_all(b"0badc0de {\"seq\":99999,\"ti").unwrap();
    drop(f);

    d.launch();
    d.wait_state("a", "online", LONG);
    let all = events(&d, &[]);
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "one numbering across both runs: {seqs:?}"
    );
    let stopped = all
        .iter()
        .position(|e| reason(e) == "monitor stopped")
        .expect("the first run's last event");
    assert!(
        all[stopped + 1..]
            .iter()
            .any(|e| reason(e).starts_with("monitor started")),
        "{all:#?}"
    );
    assert!(
        first.len() <= stopped + 1,
        "the first run's events come first"
    );
    for e in &first {
        assert!(
            all.iter()
                .any(|a| a["seq"] == e["seq"] && a["reason"] == e["reason"]),
            "{e} is kept across the restart"
        );
    }
    assert!(
        !all.iter().any(|e| e["seq"] == 99999),
        "the torn record is skipped"
    );

    // One resource's events, from both runs.
    let b = events(&d, &["--resource", "b"]);
    assert!(b.iter().all(|e| e["resource"] == "b"), "{b:#?}");
    assert!(b.iter().any(|e| e["state"] == "offline"), "{b:#?}");
    assert!(b.iter().any(|e| e["state"] == "online"), "{b:#?}");

    // Since a time: only what came after it.
    let cut = all[stopped + 1]["time"].as_str().unwrap().to_string();
    let since = events(&d, &["--since", &cut]);
    assert!(!since.is_empty());
    assert!(
        since
            .iter()
            .all(|e| e["seq"].as_u64() > all[stopped]["seq"].as_u64()),
        "{since:#?}"
    );
    let hour = events(&d, &["--since", "1h"]);
    assert_eq!(
        hour.len(),
        events(&d, &[]).len(),
        "both runs are within the hour"
    );

    // A bad time is refused, naming it.
    let out = d.cli(&["events", "--since", "yesterday-ish"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("since=\"yesterday-ish\""), "{err}");
}

#[test]
fn the_journal_is_bounded_by_its_rotation() {
    let d = Daemon::start_with(
        &sleeper("a"),
        "journal_max_size = \"4KiB\"\njournal_keep = 1",
    );
    d.wait_state("a", "online", LONG);
    for _ in 0..40 {
        d.ok(&["offline", "a", "--wait"]);
        d.ok(&["online", "a", "--wait"]);
    }
    let state = d.dir.path().join("state");
    wait_for("the journal to rotate", LONG, || {
        state.join("events.1.log").exists()
    });
    let files: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("events."))
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f == "events.log" || f == "events.1.log"),
        "only journal_keep rotated files stay: {files:?}"
    );
    let total: u64 = ["events.log", "events.1.log"]
        .iter()
        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(total <= 2 * 4096 + 1024, "{total} bytes");
    // The newest events are still there to read.
    let last = events(&d, &["--resource", "a"]);
    assert_eq!(last.last().unwrap()["state"], "online");
}

#[test]
fn every_death_of_a_main_process_is_recorded_with_its_code_or_signal() {
    let exits = "[[resource]]\nname = \"exits\"\ntype = \"process\"\ncommand = \"sh -c 'sleep 0.2; exit 3'\"\nrestart_action = \"none\"\n";
    let d = Daemon::start(&format!("{}{exits}", sleeper("a")));
    d.wait_state("a", "online", LONG);
    let pid = d.pids("a")[0];
    signal(pid, libc_sig::KILL);
    d.wait_state("exits", "failed", LONG);
    wait_for("a's death in the journal", LONG, || {
        events(&d, &["--resource", "a"]).iter().any(|e| {
            reason(e).contains(&format!(
                "main process {pid} was killed by SIGKILL (exit code 137)"
            ))
        })
    });
    let exits = events(&d, &["--resource", "exits"]);
    assert!(
        exits
            .iter()
            .any(|e| reason(e).contains("exited with code 3")),
        "{exits:#?}"
    );
}
