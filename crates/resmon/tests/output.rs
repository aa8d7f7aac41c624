//! Resource output: a `process` resource's stdout and stderr are captured
//! by its log relay into its log, with a timestamp and the stream, and
//! `resmon logs` reads them: for a resource that stopped, across a monitor
//! restart (the relay keeps capturing while no monitor runs), with long
//! lines split but whole, and with rotation keeping the newest.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn res(name: &str, command: &str, extra: &str) -> String {
    format!("[[resource]]\nname = \"{name}\"\ntype = \"process\"\ncommand = {command:?}\n{extra}\n")
}

fn logs(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["logs", "--json"];
    all.extend_from_slice(args);
    d.ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a log line is JSON"))
        .collect()
}

fn texts(lines: &[Value], stream: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["stream"] == stream)
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn output_is_captured_with_time_and_stream_and_read_after_a_crash() {
    let d = Daemon::start(&format!(
        "{}{}",
        res(
            "talker",
            "sh -c 'echo hello out; echo oops >&2; exec sleep 1000'",
            ""
        ),
        res(
            "dies",
            "sh -c 'echo starting; echo \"fatal: no config\" >&2; exit 3'",
            "restart_action = \"none\""
        )
    ));
    d.wait_state("talker", "online", LONG);
    wait_for("talker's output in its log", LONG, || {
        logs(&d, &["talker"]).len() >= 2
    });
    let lines = logs(&d, &["talker"]);
    assert_eq!(texts(&lines, "stdout"), ["hello out"]);
    assert_eq!(texts(&lines, "stderr"), ["oops"]);
    assert!(
        humantime::parse_rfc3339(lines[0]["time"].as_str().unwrap()).is_ok(),
        "{lines:?}"
    );
    assert_eq!(
        texts(&logs(&d, &["talker", "--stream", "stderr"]), "stdout"),
        Vec::<String>::new()
    );
    // The monitor's own log stays its own.
    assert!(!d.log().contains("hello out"), "{}", d.log());
    // A service that died: its last words are there to read.
    d.wait_state("dies", "failed", LONG);
    wait_for("the crash's last words", LONG, || {
        texts(&logs(&d, &["dies"]), "stderr") == ["fatal: no config"]
    });
    let plain = d.ok(&["logs", "dies", "--stream", "stderr"]);
    assert!(
        plain.trim_end().ends_with("stderr: fatal: no config"),
        "{plain}"
    );
    // Bad requests name what is wrong.
    let out = d.cli(&["logs", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    let out = d.cli(&["logs", "talker", "--since", "soon"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("since=\"soon\""));
}

#[test]
fn capture_goes_on_while_no_monitor_runs() {
    let counter = res(
        "counter",
        "sh -c 'i=0; while :; do echo line $i; i=$((i+1)); sleep 0.02; done'",
        "",
    );
    let mut d = Daemon::start(&counter);
    d.wait_state("counter", "online", LONG);
    wait_for("the first lines", LONG, || {
        logs(&d, &["counter"]).len() >= 5
    });
    d.wait_saved();
    d.kill9();
    // The relay, not the monitor, holds the pipe: the log grows meanwhile.
    let file = d.dir.path().join("state/logs/counter.log");
    let size = std::fs::metadata(&file).unwrap().len();
    wait_for("the log to grow with no monitor", LONG, || {
        std::fs::metadata(&file).unwrap().len() > size + 200
    });
    d.launch();
    d.wait_state("counter", "online", LONG);
    let numbers = || -> Vec<u64> {
        texts(&logs(&d, &["counter", "--lines", "100000"]), "stdout")
            .iter()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect()
    };
    let before = numbers().len();
    wait_for("the capture to go on with the new monitor", LONG, || {
        numbers().len() > before + 10
    });
    let numbers = numbers();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost across the restart: {numbers:?}"
    );

    // --follow: new lines come as they are written.
    let mut follow = Command::new(BIN)
        .args(["--socket"])
        .arg(&d.socket)
        .args(["logs", "counter", "--follow", "--lines", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        seen.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let n = |l: &String| -> u64 { l.trim().rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(
        seen.windows(2).all(|w| n(&w[1]) == n(&w[0]) + 1),
        "followed in order: {seen:?}"
    );
}

#[test]
fn long_lines_are_split_whole_and_rotation_keeps_the_newest() {
    let d = Daemon::start(&format!(
        "{}{}",
        res(
            "long",
            "sh -c 'head -c 100000 /dev/zero | tr \"\\000\" x; echo; echo after; exec sleep 1000'",
            ""
        ),
        res(
            "rotor",
            "sh -c 'i=0; while [ $i -lt 300 ]; do echo short line number $i; i=$((i+1)); done; exec sleep 1000'",
            "log_max_size = \"4KiB\"\nlog_keep = 1"
        )
    ));
    d.wait_state("long", "online", LONG);
    wait_for("the long line", LONG, || {
        texts(&logs(&d, &["long"]), "stdout")
            .last()
            .map(String::as_str)
            == Some("after")
    });
    let pieces = logs(&d, &["long"]);
    assert!(pieces.len() >= 3, "split into records of at most 64 KiB");
    let joined: String = pieces[..pieces.len() - 1]
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "x".repeat(100_000), "nothing lost");
    assert!(pieces[0]["continues"].as_bool().unwrap());
    // The CLI prints it as the one line it was.
    let plain = d.ok(&["logs", "long"]);
    let first = plain.lines().next().unwrap();
    assert!(first.ends_with(&"x".repeat(100_000)), "{}", &first[..80]);

    wait_for("rotor's last line", LONG, || {
        texts(&logs(&d, &["rotor"]), "stdout")
            .last()
            .map(String::as_str)
            == Some("short line number 299")
    });
    let dir = d.dir.path().join("state/logs");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rotor.") && n.ends_with(".log"))
        .collect();
    assert_eq!(files.len(), 2, "rotor.log and one rotated file: {files:?}");
    let kept = texts(&logs(&d, &["rotor", "--lines", "1000"]), "stdout");
    assert!(kept.len() < 300, "the oldest went with rotation");
    let first: u64 = kept[0].rsplit(' ').next().unwrap().parse().unwrap();
    let want: Vec<String> = (first..300)
        .map(|i| format!("short line number {i}"))
        .collect();
    assert_eq!(kept, want, "the newest lines, in order, none missing");
}

#[test]
fn inherit_and_null_send_output_elsewhere() {
    let d = Daemon::start(&format!(
        "{}{}",
        res(
            "loud",
            "sh -c 'echo to the monitor; exec sleep 1000'",
            "log = \"inherit\""
        ),
        res(
            "quiet",
            "sh -c 'echo to nowhere; exec sleep 1000'",
            "log = \"null\""
        )
    ));
    d.wait_state("loud", "online", LONG);
    d.wait_state("quiet", "online", LONG);
    wait_for("loud's line in the monitor's output", LONG, || {
        d.log().contains("to the monitor")
    });
    assert!(logs(&d, &["quiet"]).is_empty());
    assert!(logs(&d, &["loud"]).is_empty());
    assert!(!d.log().contains("to nowhere"));
    // No journal to be had: captured as with "file", and said.
    if !std::path::Path::new("/run/systemd/journal/stdout").exists() {
        let d = Daemon::start(&res(
            "j",
            "sh -c 'echo for the journal; exec sleep 1000'",
            "log = \"journal\"",
        ));
        d.wait_state("j", "online", LONG);
        wait_for("j's line in its log", LONG, || {
            texts(&logs(&d, &["j"]), "stdout") == ["for the journal"]
        });
        assert!(
            d.reasons(Some("j"))
                .iter()
                .any(|r| r.contains("the systemd journal cannot be reached")),
            "{:?}",
            d.reasons(Some("j"))
        );
    }
    let refused = check_refuses(&res("bad", "sleep 1", "log = \"syslog\""));
    assert!(refused.contains("log: use \"file\""), "{refused}");
    let refused = check_refuses(&res("bad", "sleep 1", "log_max_line = \"1TiB\""));
    assert!(
        refused.contains("log_max_line: must be at most 16MiB"),
        "{refused}"
    );

    // A smaller limit splits sooner, still losing nothing.
    let d = Daemon::start(&res(
        "narrow",
        "sh -c 'head -c 3000 /dev/zero | tr \"\\000\" y; echo; exec sleep 1000'",
        "log_max_line = \"1KiB\"",
    ));
    d.wait_state("narrow", "online", LONG);
    wait_for("the whole line", LONG, || {
        texts(&logs(&d, &["narrow"]), "stdout").concat() == "y".repeat(3000)
    });
    let pieces = texts(&logs(&d, &["narrow"]), "stdout");
    assert!(
        pieces.iter().all(|p| p.len() <= 1024),
        "{:?}",
        pieces.iter().map(String::len).collect::<Vec<_>>()
    );
    assert_eq!(pieces.len(), 3);
}

/// The log relays of resource `name`, by their command lines.
fn relays(name: &str) -> Vec<u32> {
    resmon_test_support::all()
        .into_iter()
        .filter(|p| !p.is_dead())
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains("log-relay") && c.contains(&format!("--name {name} "))
            })
        })
        .map(|p| p.pid)
        .collect()
}

#[test]
fn a_restart_keeps_the_relay_and_a_stop_ends_it() {
    let mut d = Daemon::start(&res(
        "crashy",
        "sh -c 'echo up; exec sleep 1000'",
        "restart_delay = \"0s\"",
    ));
    d.wait_state("crashy", "online", LONG);
    let relay = relays("crashy");
    assert_eq!(relay.len(), 1, "one relay per resource");
    let pid = d.pids("crashy")[0];
    signal(pid, libc_sig::KILL);
    wait_for("the restart", LONG, || {
        d.pids("crashy").first().is_some_and(|&p| p != pid) && d.state("crashy") == "online"
    });
    assert_eq!(relays("crashy"), relay, "the restart reused the relay");
    wait_for("both starts' lines", LONG, || {
        texts(&logs(&d, &["crashy"]), "stdout") == ["up", "up"]
    });
    assert!(d.stop().success());
    assert!(
        relays("crashy").is_empty(),
        "the relay outlived the monitor"
    );
}

#[test]
fn what_an_agents_actions_print_goes_to_its_log() {
    let work = tempfile::tempdir().unwrap();
    let root = test_agent(
        work.path(),
        "Talk",
        r#"#!/bin/sh
case "$1" in
meta-data) cat <<'XML'
<?xml version="1.0"?>
<resource-agent name="Talk" version="1.0">
<version>1.0</version>
<shortdesc lang="en">says what it does</shortdesc>
<longdesc lang="en">Test agent.</longdesc>
<parameters>
<parameter name="state" required="1"><shortdesc lang="en">State file</shortdesc><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="5s"/><action name="stop" timeout="5s"/>
<action name="monitor" timeout="5s"/><action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="5s"/>
</actions>
</resource-agent>
XML
  exit 0;;
start) echo "starting for real"; echo "a warning" >&2; touch "$OCF_RESKEY_state"; exit 0;;
stop) rm -f "$OCF_RESKEY_state"; exit 0;;
monitor) [ -f "$OCF_RESKEY_state" ] || exit 7; exit 0;;
validate-all) exit 0;;
*) exit 3;;
esac
"#,
    );
    let d = Daemon::start(&format!(
        "[[resource]]\nname = \"talk\"\ntype = \"ocf:test:Talk\"\nocf_root = \"{}\"\nparams = {{ state = \"{}\" }}\n",
        root.display(),
        work.path().join("state").display()
    ));
    d.wait_state("talk", "online", LONG);
    let lines = logs(&d, &["talk"]);
    assert_eq!(
        texts(&lines, "stdout"),
        ["start: starting for real"],
        "{lines:?}"
    );
    assert_eq!(texts(&lines, "stderr"), ["start: a warning"], "{lines:?}");
}

#[test]
fn without_its_relay_program_the_monitor_relays_with_itself() {
    // An install of resmon alone, without resmon-log-relay beside it.
    let alone = tempfile::tempdir().unwrap();
    let bin = alone.path().join("resmon");
    std::fs::copy(BIN, &bin).unwrap();
    let mut d = Daemon::prepare(
        &res("solo", "sh -c 'echo still captured; exec sleep 1000'", ""),
        "",
    );
    d.launch_with(Command::new(&bin));
    d.wait_state("solo", "online", LONG);
    wait_for("the line in its log", LONG, || {
        texts(&logs(&d, &["solo"]), "stdout") == ["still captured"]
    });
    assert_eq!(relays("solo").len(), 1);
}

#[test]
fn a_full_disk_drops_lines_says_so_and_the_service_runs_on() {
    if !rustix::process::geteuid().is_root() {
        skip(
            "a_full_disk_drops_lines_says_so_and_the_service_runs_on",
            "needs root for a mount namespace",
        );
        return;
    }
    let mut d = Daemon::prepare(
        &res(
            "chatty",
            "sh -c 'i=0; while :; do echo line $i; i=$((i+1)); sleep 0.01; done'",
            "",
        ),
        "",
    );
    // The state directory, and the logs in it, are a small tmpfs of the
    // monitor's own mount namespace, which the test fills and empties.
    let state = d.dir.path().join("state");
    d.launch_on_tmpfs(&state, "256k");
    d.wait_state("chatty", "online", LONG);
    let pid = d.pids("chatty")[0];
    let fill = state.join("fill");
    let in_its_namespace = |script: &str| {
        Command::new("nsenter")
            .args(["-t", &d.pid().to_string(), "-m", "sh", "-c", script, "x"])
            .arg(&fill)
            .output()
            .unwrap()
    };
    in_its_namespace("cat /dev/zero > \"$1\"");
    wait_for("the dropped lines to show in status", LONG, || {
        d.resource("chatty")["output_dropped"].as_u64() > Some(0)
    });
    let metrics = d.ok(&["metrics"]);
    let dropped = sample(
        &metrics,
        r#"resmon_output_dropped_lines{resource="chatty",group="chatty",type="process"}"#,
    );
    assert!(dropped > Some(0.0), "{metrics}");
    assert!(d
        .ok(&["status"])
        .contains("lines of output could not be logged"));
    // The service never waited for the disk.
    assert_eq!(d.pids("chatty"), [pid]);
    assert_eq!(d.state("chatty"), "online");
    // Room again: the log says how many went, and goes on.
    assert!(in_its_namespace("rm -f \"$1\"").status.success());
    wait_for("the note in the log", LONG, || {
        logs(&d, &["chatty", "--lines", "100000"]).iter().any(|l| {
            l["stream"] == "resmon" && l["text"].as_str().unwrap().contains("line(s) were dropped")
        })
    });
}
