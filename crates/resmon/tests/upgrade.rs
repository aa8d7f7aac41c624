//! `resmon upgrade`: the monitor runs its binary from disk again in place,
//! same pid, while a client keeps asking for status; twenty resources keep
//! their processes and are adopted, and nothing but the upgrade happens.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn an_upgrade_in_place_keeps_the_pid_and_every_resource() {
    let config: String = (0..20)
        .map(|i| {
            format!("[[resource]]\nname = \"s{i}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n")
        })
        .collect();
    let mut d = Daemon::start(&config);
    wait_for("twenty online", LONG, || {
        d.status().iter().filter(|r| r["state"] == "online").count() == 20
    });
    let before: Vec<Vec<u32>> = (0..20).map(|i| d.pids(&format!("s{i}"))).collect();
    let monitor = d.pid();
    let last_seq = d
        .events()
        .last()
        .map(|e| e["seq"].as_u64().unwrap())
        .unwrap_or(0);
    // Load: a client asking for status all along.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(BIN)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["status", "--json"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let out = d.ok(&["upgrade"]);
    assert!(
        out.contains("upgrading: running") && out.contains("upgraded: the monitor is ready again"),
        "{out}"
    );
    let seen = answered.load(Ordering::Relaxed);
    wait_for("status answered after the upgrade", LONG, || {
        answered.load(Ordering::Relaxed) > seen + 3
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    // Same monitor process, same resources.
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the monitor exited"
    );
    assert_eq!(d.pid(), monitor);
    let after: Vec<Vec<u32>> = (0..20).map(|i| d.pids(&format!("s{i}"))).collect();
    assert_eq!(after, before);
    assert!(d
        .status()
        .iter()
        .all(|r| r["restarts"] == 0 && r["state"] == "online"));
    // Nothing but the upgrade: the old monitor's last word, the new one's
    // start, and each resource adopted.
    let events: Vec<serde_json::Value> = d
        .events()
        .into_iter()
        .filter(|e| e["seq"].as_u64().unwrap() > last_seq)
        .collect();
    let text = |e: &serde_json::Value| format!("{} {}", e["kind"], e["reason"]);
    assert!(
        events.iter().any(|e| e["kind"] == "monitor"
            && e["reason"]
                .as_str()
                .unwrap()
                .starts_with("upgrading: running")),
        "{:#?}",
        events.iter().map(text).collect::<Vec<_>>()
    );
    assert!(events.iter().any(|e| e["reason"]
        .as_str()
        .unwrap()
        .contains("upgraded in place from")));
    for e in &events {
        let ok = match e["kind"].as_str().unwrap() {
            "monitor" | "request" => true,
            "state" => e["state"] == "online" && e["reason"] == "adopted after a monitor restart",
            _ => false,
        };
        assert!(ok, "an event that is not the upgrade's: {}", text(e));
    }
    assert!(d.stop().success());
    for pids in before {
        for p in pids {
            assert!(!alive(p), "{p} outlived the monitor");
        }
    }
}
