//! The monitor's own log: plain text without colour codes when stderr is a
//! file, one JSON object a line with `[monitor] log_format = "json"`, and
//! still on stderr, saying why, when `JOURNAL_STREAM` names stderr but no
//! journal listens.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);
const SVC: &str = "\n[[resource]]\nname = \"svc\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n";

#[test]
fn the_log_is_plain_text_in_a_file_and_json_lines_when_asked() {
    let mut d = Daemon::start(SVC);
    d.wait_state("svc", "online", LONG);
    d.stop();
    let log = d.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log:?}");

    let mut d = Daemon::start_with(SVC, "log_format = \"json\"");
    d.wait_state("svc", "online", LONG);
    d.stop();
    let log = d.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("svc"))
            || l["fields"]["resource"] == "svc"),
        "{log}"
    );
}

#[test]
fn a_wrong_log_format_is_refused_by_name() {
    let err = check_refuses("[monitor]\nlog_format = \"xml\"\n");
    assert!(
        err.contains("[monitor] log_format: use \"text\" or \"json\""),
        "{err}"
    );
}

#[test]
fn a_journal_that_does_not_listen_leaves_the_log_on_stderr() {
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        skip(
            "a_journal_that_does_not_listen_leaves_the_log_on_stderr",
            "this machine runs a journal",
        );
        return;
    }
    let mut d = Daemon::prepare(SVC, "");
    let file = d.dir.path().join("daemon.log");
    std::fs::write(&file, "").unwrap();
    let st = rustix::fs::stat(&file).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
    d.launch_with(cmd);
    d.wait_state("svc", "online", LONG);
    d.stop();
    let log = d.log();
    assert!(
        log.contains("JOURNAL_STREAM names stderr but the journal cannot be reached"),
        "{log}"
    );
    assert!(log.contains("INFO"), "{log}");
}
