//! Access rights through the real socket: the CLI runs as an unprivileged
//! user (`setpriv`) and as root, and each right is checked.

mod common;

use common::*;
use std::time::Duration;

const NOBODY: u32 = 65534;
const LONG: Duration = Duration::from_secs(20);

fn root() -> bool {
    uid_of(std::process::id()) == Some(0)
}

const SVC: &str = r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
"#;

fn denied(out: &std::process::Output, right: &str) {
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access denied"), "{err}");
    assert!(
        err.contains(&format!("does not hold the {right} right")),
        "{err}"
    );
}

#[test]
fn by_default_others_may_only_query() {
    if !root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let d = Daemon::start(SVC);
    d.wait_state("svc", "online", LONG);
    let pids = d.pids("svc");

    let out = d.cli_as(NOBODY, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"svc\""));
    assert!(d.cli_as(NOBODY, &["events"]).status.success());

    denied(&d.cli_as(NOBODY, &["offline", "svc", "--wait"]), "control");
    denied(&d.cli_as(NOBODY, &["terminate", "svc"]), "terminate");
    // Nothing changed.
    let r = d.resource("svc");
    assert_eq!(r["state"], "online");
    assert_eq!(d.pids("svc"), pids);
    assert!(pids.iter().all(|&p| alive(p)));
    // Root may do everything.
    d.ok(&["offline", "svc", "--wait"]);
}

#[test]
fn granted_rights_are_honoured_one_by_one() {
    if !root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let d = Daemon::start(&format!(
        r#"
[access]
query = ["root"]
control = ["nobody"]
terminate = ["@nogroup"]
{SVC}
[[resource]]
name = "other"
type = "process"
command = "sleep 1000"
"#
    ));
    d.wait_state("svc", "online", LONG);
    // query was narrowed to root: nobody is not in it.
    denied(&d.cli_as(NOBODY, &["status"]), "query");
    // control: offline and online work.
    let out = d.cli_as(NOBODY, &["offline", "svc", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.state("svc"), "offline");
    let out = d.cli_as(NOBODY, &["online", "svc", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    // terminate through the group nobody belongs to.
    d.wait_state("other", "online", LONG);
    let pid = d.pids("other")[0];
    let out = d.cli_as(NOBODY, &["terminate", "other"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!alive(pid));
}
