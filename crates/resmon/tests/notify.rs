//! `notify = true`: resmon as systemd for its resources, with real clients
//! of the protocol: Debian's `systemd-notify` from a shell service, and
//! PostgreSQL, which says READY=1 once it accepts connections. A service
//! that never says it is ready is terminated at pending_timeout, one that
//! stops pinging its watchdog is restarted, and a process outside the
//! resource is not heard.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn shell(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[resource]]\nname = \"{name}\"\ntype = \"process\"\nnotify = true\ncommand = [\"sh\", \"-c\", {}]\n{extra}\n",
        serde_json::Value::String(script.into())
    )
}

#[test]
fn a_service_is_online_at_its_ready_and_its_status_shows() {
    let work = tempfile::tempdir().unwrap();
    let flag = work.path().join("go");
    let d = Daemon::start(&shell(
        "svc",
        &format!(
            "while [ ! -e {} ]; do sleep 0.02; done; systemd-notify --ready --status='serving requests' --pid=$$; exec sleep 1000",
            flag.display()
        ),
        "",
    ));
    wait_for("svc coming online", LONG, || {
        d.state("svc") == "online_pending"
    });
    // Its process runs, but it has not said it is ready.
    for _ in 0..5 {
        assert_eq!(d.state("svc"), "online_pending");
    }
    std::fs::write(&flag, "").unwrap();
    d.wait_state("svc", "online", LONG);
    wait_for("its status", LONG, || {
        d.resource("svc")["detail"] == "serving requests"
    });
    assert!(d
        .reasons(Some("svc"))
        .iter()
        .any(|r| r == "status: serving requests"));
}

#[test]
fn a_service_that_never_says_ready_is_terminated_at_pending_timeout() {
    let d = Daemon::start(
        "[[resource]]\nname = \"mute\"\ntype = \"process\"\nnotify = true\ncommand = \"sleep 1000\"\npending_timeout = \"1s\"\nrestart_action = \"none\"\n",
    );
    d.wait_state("mute", "failed", LONG);
    let why = d.resource("mute")["reason"].as_str().unwrap().to_string();
    assert!(
        why.contains("online made no progress for 1s (pending_timeout)"),
        "{why}"
    );
    wait_for("nothing of it left", LONG, || d.marked("mute").is_empty());
}

#[test]
fn a_service_that_stops_pinging_its_watchdog_is_restarted() {
    let d = Daemon::start(&shell(
        "dog",
        "systemd-notify --ready --pid=$$; for i in 1 2 3; do systemd-notify --pid=$$ WATCHDOG=1; sleep 0.1; done; exec sleep 1000",
        "watchdog_interval = \"500ms\"\nlooks_alive_interval = \"100ms\"\nrestart_delay = \"0s\"",
    ));
    wait_for("a restart", LONG, || {
        d.resource("dog")["restarts"].as_u64() >= Some(1)
    });
    assert!(
        d.reasons(Some("dog"))
            .iter()
            .any(|r| r.contains("it missed its watchdog: no WATCHDOG=1 within 500ms")),
        "{:#?}",
        d.reasons(Some("dog"))
    );
}

#[test]
fn a_process_outside_the_resource_is_not_heard() {
    use std::os::linux::net::SocketAddrExt;
    let d = Daemon::start(
        "[[resource]]\nname = \"svc\"\ntype = \"process\"\nnotify = true\ncommand = \"sleep 1000\"\npending_timeout = \"60s\"\n",
    );
    wait_for("svc coming online", LONG, || {
        d.state("svc") == "online_pending"
    });
    let name = format!("resmon-notify/{}/svc", d.instance());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to_addr(b"READY=1\nSTATUS=forged", &addr).unwrap();
    let me = format!(
        "ignored a notification from pid {}: not a process of this resource",
        std::process::id()
    );
    wait_for("the forged READY=1 refused", LONG, || {
        d.reasons(Some("svc")).contains(&me)
    });
    let svc = d.resource("svc");
    assert_eq!(svc["state"], "online_pending", "{svc}");
    assert!(svc["detail"].is_null(), "{svc}");
}

#[test]
fn postgresql_is_online_only_once_it_accepts_connections() {
    let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
    else {
        return skip(
            "postgresql_is_online_only_once_it_accepts_connections",
            "no PostgreSQL server here",
        );
    };
    if uid_of(std::process::id()) != Some(0) {
        return skip(
            "postgresql_is_online_only_once_it_accepts_connections",
            "needs root (runs it as postgres)",
        );
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(work.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let initdb = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        initdb.status.success(),
        "{}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = free_port();
    let d = Daemon::start(&format!(
        "[[resource]]\nname = \"pg\"\ntype = \"process\"\nuser = \"postgres\"\nnotify = true\nautostart = false\ncommand = [\"{}\", \"-D\", \"{}\", \"-p\", \"{port}\", \"-k\", \"{}\", \"-c\", \"listen_addresses=127.0.0.1\"]\n",
        bin.join("postgres").display(),
        data.display(),
        work.path().display()
    ));
    d.ok(&["online", "pg", "--wait"]);
    // Online means it accepts connections now.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("postgres accepts connections");
    let psql = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-tAc",
            "select 1",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "1");
    d.ok(&["offline", "pg", "--wait"]);
}

#[test]
fn mainpid_moves_the_main_process_to_one_of_the_resource() {
    // The shell starts the daemon, hands over to it and exits.
    let d = Daemon::start(&shell(
        "fork",
        "sleep 1000 & systemd-notify --ready --pid=$!; exec sleep 0.5",
        "looks_alive_interval = \"100ms\"",
    ));
    d.wait_state("fork", "online", LONG);
    wait_for("the hand-over", LONG, || {
        d.reasons(Some("fork"))
            .iter()
            .any(|r| r.starts_with("the main process is now"))
    });
    let main = d.pids("fork");
    assert_eq!(main.len(), 1);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", main[0])).unwrap();
    assert!(cmdline.starts_with("sleep\x001000"), "{cmdline:?}");
    // The first main process ends: no failure, the new one is watched.
    wait_for("the shell gone", LONG, || d.marked("fork").len() == 1);
    let r = d.resource("fork");
    assert_eq!(
        (r["state"].as_str(), r["restarts"].as_u64()),
        (Some("online"), Some(0)),
        "{r}"
    );
    // And its end is the resource's failure.
    signal(main[0], libc_sig::KILL);
    wait_for("a restart", LONG, || d.resource("fork")["restarts"] == 1);
}

#[test]
fn extend_timeout_is_progress_and_errno_is_the_reason() {
    // Four extensions half a second apart carry it past a 1.5 s pending_timeout.
    let d = Daemon::start(&format!(
        "{}{}",
        shell(
            "slow",
            "for i in 1 2 3 4; do systemd-notify --pid=$$ EXTEND_TIMEOUT_USEC=1000000; sleep 0.5; done; systemd-notify --ready --pid=$$; exec sleep 1000",
            "pending_timeout = \"1500ms\"",
        ),
        shell(
            "broken",
            "systemd-notify --pid=$$ ERRNO=2; exec sleep 1000",
            "restart_action = \"none\"",
        )
    ));
    d.wait_state("slow", "online", LONG);
    assert_eq!(d.resource("slow")["restarts"], 0);
    d.wait_state("broken", "failed", LONG);
    let why = d.resource("broken")["reason"].as_str().unwrap().to_string();
    assert!(
        why.contains("before READY=1: the service reported errno 2 (No such file or directory"),
        "{why}"
    );
}
