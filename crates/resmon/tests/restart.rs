//! Surviving a monitor restart: a monitor killed with SIGKILL leaves its
//! resources running, and the next one adopts them (same pids, online,
//! watched again), restarts what died meanwhile, and applies a changed
//! config only to the resources it changes.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

fn sleepers(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[resource]]\nname = \"{n}\"\ntype = \"process\"\ncommand = \"sleep 1000\"\nrestart_delay = \"0s\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn pids_by_name(d: &Daemon) -> BTreeMap<String, Vec<u64>> {
    d.status()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn all_online(d: &Daemon) -> bool {
    d.status().iter().all(|r| r["state"] == "online")
}

fn twenty_survive(extra: &str) {
    let names: Vec<String> = (0..20).map(|i| format!("svc{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut d = Daemon::start_with(&sleepers(&refs), extra);
    wait_for("20 online", LONG, || all_online(&d));
    let before = pids_by_name(&d);
    d.wait_saved();
    d.kill9();
    for pids in before.values() {
        assert!(
            pids.iter().all(|&p| alive(p as u32)),
            "resources keep running"
        );
    }
    let t0 = Instant::now();
    d.launch();
    wait_for("20 online again", LONG, || all_online(&d));
    eprintln!(
        "{extra}: all 20 adopted and online {:?} after the restart began",
        t0.elapsed()
    );
    assert_eq!(
        pids_by_name(&d),
        before,
        "same pids: adopted, not restarted"
    );
    assert!(d.status().iter().all(|r| r["restarts"] == 0));
    let reasons = d.reasons(Some("svc0"));
    assert!(reasons.iter().any(|r| r.contains("adopted")), "{reasons:?}");
    // Their later death is still seen, at once.
    let old = before["svc3"][0];
    signal(old as u32, libc_sig::KILL);
    wait_for("svc3 restarted", LONG, || {
        let r = d.resource("svc3");
        r["state"] == "online" && r["pids"][0].as_u64() != Some(old)
    });
    // And a clean stop still takes everything down.
    let instance = d.instance();
    assert!(d.stop().success());
    assert!(marked_processes(&format!("RESMON_RESOURCE={instance}/")).is_empty());
}

#[test]
fn twenty_resources_survive_a_sigkilled_monitor_with_cgroups() {
    twenty_survive("");
}

#[test]
fn twenty_resources_survive_a_sigkilled_monitor_with_process_groups() {
    twenty_survive("cgroups = \"off\"");
}

#[test]
fn what_died_while_no_monitor_watched_is_restarted_by_policy() {
    let mut d = Daemon::start(&sleepers(&["keep", "lost"]));
    wait_for("online", LONG, || all_online(&d));
    let before = pids_by_name(&d);
    d.wait_saved();
    d.kill9();
    signal(before["lost"][0] as u32, libc_sig::KILL);
    wait_for("lost to die", LONG, || !alive(before["lost"][0] as u32));
    d.launch();
    wait_for("both online", LONG, || all_online(&d));
    let after = pids_by_name(&d);
    assert_eq!(after["keep"], before["keep"]);
    assert_ne!(after["lost"], before["lost"]);
    assert_eq!(d.resource("lost")["restarts"], 1);
}

#[test]
fn a_config_change_applies_only_to_what_it_changes() {
    let mut d = Daemon::start(&sleepers(&["same", "command", "policy", "removed"]));
    wait_for("online", LONG, || all_online(&d));
    let before = pids_by_name(&d);
    let instance = d.instance();
    d.wait_saved();
    d.kill9();
    let file = d.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    let head = &text[..text.find("[[resource]]").unwrap()];
    let new = format!(
        "{head}{}\n{}\n{}\n{}",
        sleepers(&["same"]),
        "[[resource]]\nname = \"command\"\ntype = \"process\"\ncommand = \"sleep 1001\"\n",
        "[[resource]]\nname = \"policy\"\ntype = \"process\"\ncommand = \"sleep 1000\"\nlooks_alive_interval = \"2s\"\n",
        sleepers(&["added"]),
    );
    std::fs::write(&file, new).unwrap();
    d.launch();
    wait_for("online", LONG, || all_online(&d));
    let after = pids_by_name(&d);
    assert_eq!(after["same"], before["same"]);
    assert_eq!(
        after["policy"], before["policy"],
        "a policy change needs no restart"
    );
    assert_ne!(
        after["command"], before["command"],
        "a changed command restarts it"
    );
    assert!(!alive(before["command"][0] as u32));
    assert!(!after.contains_key("removed"));
    assert!(
        !alive(before["removed"][0] as u32),
        "a removed resource is stopped"
    );
    assert!(marked_processes(&format!("RESMON_RESOURCE={instance}/removed")).is_empty());
    assert_eq!(after["added"].len(), 1);
    let common = d.ok(&["control", "policy", "get_common_properties"]);
    assert!(
        common.contains("\"looks_alive_interval\": \"2s\""),
        "{common}"
    );
}

#[test]
fn after_a_clean_stop_what_was_wanted_comes_back() {
    let mut d = Daemon::start(&sleepers(&["up", "down"]));
    wait_for("online", LONG, || all_online(&d));
    d.ok(&["offline", "down", "--wait"]);
    assert!(d.stop().success());
    d.launch();
    d.wait_state("up", "online", LONG);
    assert_eq!(d.state("down"), "offline", "the operator's offline is kept");
}
