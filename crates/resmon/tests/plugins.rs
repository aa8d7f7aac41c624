//! Plugin resources through the real daemon: the example plugins in Rust
//! and C, and a test plugin that hangs, crashes and lies in every way the
//! contract forbids. Each misbehaviour must be contained: reported in the
//! event feed with its cause, its host killed and replaced, the other
//! resources of that host brought back, and the resources of other hosts
//! and the monitor itself untouched.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// Compiles a C plugin with `cc` (once per test run).
fn c_plugin(source: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lib{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&out)
        .arg(root.join(source))
        .arg("-lpthread")
        .status()
        .expect("run cc (scripts/test installs gcc)");
    assert!(status.success(), "cc {source} failed");
    out
}

fn misbehave() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| c_plugin("crates/resmon/tests/plugins/misbehave.c", "misbehave"))
}

fn listener() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| c_plugin("examples/plugins/listener/listener.c", "tcp_listener"))
}

/// The Rust example, built by cargo into the target directory of this test.
fn lockfile() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let profile_dir = Path::new(BIN).parent().unwrap();
        let lib = profile_dir.join("libresmon_example_lockfile.so");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "resmon-example-lockfile"])
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the lockfile example failed");
        assert!(lib.is_file(), "{} was not built", lib.display());
        lib
    })
}

fn resource(name: &str, library: &Path, type_name: &str, params: &str, extra: &str) -> String {
    format!(
        "[[resource]]\nname = \"{name}\"\ntype = \"plugin:{type_name}\"\nlibrary = \"{}\"\nparams = {params}\n{extra}\n",
        library.display()
    )
}

fn shown_pid(d: &Daemon, name: &str) -> Option<u32> {
    d.pids(name).first().copied()
}

#[test]
fn the_rust_lockfile_example_holds_its_lock_while_online() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("leader.lock");
    let d = Daemon::start(&resource(
        "lock",
        lockfile(),
        "lockfile",
        &format!("{{ path = \"{}\" }}", path.display()),
        "looks_alive_interval = \"100ms\"\nrestart_delay = \"0s\"",
    ));
    d.wait_state("lock", "online", LONG);
    let held_elsewhere = || {
        let f = std::fs::File::open(&path).unwrap();
        matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    };
    assert!(held_elsewhere(), "the lock is held by the host");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "lock\n");
    let props = d.ok(&["control", "lock", "get_private_properties"]);
    assert!(props.contains("\"held\": true"), "{props}");

    // The host dies: the kernel drops the lock, the monitor sees it, checks
    // the resource in a new host, and takes the lock again.
    let host = shown_pid(&d, "lock").expect("the host's pid is shown");
    signal(host, libc_sig::KILL);
    wait_for("the lock to be taken again by a new host", LONG, || {
        let r = d.resource("lock");
        r["restarts"] == 1 && r["state"] == "online" && shown_pid(&d, "lock") != Some(host)
    });
    assert!(held_elsewhere());
    assert!(d
        .reasons(Some("lock"))
        .iter()
        .any(|r| r.contains("killed by SIGKILL")));

    d.ok(&["offline", "lock", "--wait"]);
    assert!(!held_elsewhere(), "offline released the lock");
}

#[test]
fn the_c_listener_example_listens_while_online() {
    let port = free_port();
    let d = Daemon::start(&resource(
        "web",
        listener(),
        "tcp-listener",
        &format!("{{ port = {port} }}"),
        "looks_alive_interval = \"100ms\"\nis_alive_interval = \"200ms\"",
    ));
    d.wait_state("web", "online", LONG);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("it listens");
    let props = d.ok(&["control", "web", "get_private_properties"]);
    assert!(props.contains(&format!("\"port\": {port}")), "{props}");
    d.ok(&["offline", "web", "--wait"]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    d.ok(&["online", "web", "--wait"]);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("it listens again");
}

#[test]
fn bad_plugin_configs_are_refused_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "[[resource]]\nname = \"a\"\ntype = \"plugin:misbehave\"\nlibrary = \"/no/such/lib.so\"\nparams = 3\nflavour = 1\n",
    );
    let err = refused("check", &file, 2);
    for want in [
        "resource \"a\"",
        "library \"/no/such/lib.so\" is not a file",
        "params must be a table",
        "unknown key \"flavour\"; the keys are library, params, and those of every resource: name, type, group, depends_on, autostart, looks_alive_interval,",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
}

#[test]
fn check_validate_opens_each_resource_in_a_host_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of its own, so that the hosts found mapping it are this test's.
    let lib = dir.path().join("libmisbehave-check.so");
    std::fs::copy(misbehave(), &lib).unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        &resource("a", &lib, "misbehave", "{ mode = \"ok\" }", ""),
    );
    let out = check(&good, true);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok, 1 resources, each opened"),
        "{out:?}"
    );
    // Neither the library nor the plain check knows of these until the
    // library is asked: a type it does not serve, a library that is no
    // plugin.
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!(
            "{}{}[[resource]]\nname = \"good\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n",
            resource("nosuch", &lib, "nosuchtype", "{}", ""),
            resource("libc", &libc_path(), "anything", "{}", ""),
        ),
    );
    let plain = check(&bad, false);
    assert!(plain.status.success(), "{plain:?}");
    let out = check(&bad, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "2 problems",
        "resource \"nosuch\": open failed: ",
        "resmon_startup returned NULL for type \"nosuchtype\"",
        "resource \"libc\": open failed: ",
        "exports no resmon_startup",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    assert!(!err.contains("\"good\""), "{err}");
    // The check's hosts went with it.
    assert_eq!(processes_mapping(&lib), Vec::<u32>::new());
}

/// Starts `resmon serve` on this resource, which does not open, beside a
/// good one: the bad one is `failed`, the monitor and the good one run on.
/// Returns why it failed.
fn fails_alone(resource_table: &str) -> String {
    let d = Daemon::start(&format!(
        "{resource_table}\n[[resource]]\nname = \"good\"\ntype = \"process\"\ncommand = \"sleep 1000\"\n"
    ));
    d.wait_state("good", "online", LONG);
    d.wait_state("a", "failed", LONG);
    let why = d.resource("a")["reason"].as_str().unwrap().to_string();
    assert!(why.starts_with("open failed: "), "{why}");
    assert!(d.pids("a").is_empty());
    why
}

#[test]
fn a_type_the_library_does_not_serve_fails_the_resource() {
    let err = fails_alone(&resource(
        "a",
        misbehave(),
        "nosuchtype",
        "{ mode = \"ok\" }",
        "",
    ));
    assert!(
        err.contains("resmon_startup returned NULL for type \"nosuchtype\""),
        "{err}"
    );
}

/// A monitor with three resources of the test plugin: the `culprit` in the
/// given mode, a well-behaved `bystander` in the same host, and `other`, well
/// behaved in a host of its own. A thread keeps asking for `status` and
/// records the slowest answer.
struct Scenario {
    d: Daemon,
    other_host: u32,
    bystander_host: u32,
    slowest_status_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

const FAST: &str = "pending_timeout = \"300ms\"\ndeadlock_timeout = \"600ms\"\nterminate_timeout = \"200ms\"\nlooks_alive_interval = \"100ms\"\nis_alive_interval = \"250ms\"\nrestart_delay = \"0s\"";

impl Scenario {
    fn start(mode: &str, culprit_extra: &str, culprit_online: bool) -> Scenario {
        let lib = misbehave();
        let config = format!(
            "[defaults]\n{FAST}\n{}{}{}",
            resource(
                "culprit",
                lib,
                "misbehave",
                &format!("{{ mode = \"{mode}\" }}"),
                &format!("restart_action = \"none\"\n{culprit_extra}")
            ),
            resource("bystander", lib, "misbehave", "{ mode = \"ok\" }", ""),
            resource(
                "other",
                lib,
                "misbehave",
                "{ mode = \"needs_lock\" }",
                "separate_monitor = true"
            ),
        );
        let d = Daemon::start(&config);
        d.wait_state("other", "online", LONG);
        d.wait_state("bystander", "online", LONG);
        if culprit_online {
            d.wait_state("culprit", "online", LONG);
        }
        let other_host = shown_pid(&d, "other").unwrap();
        let bystander_host = shown_pid(&d, "bystander").unwrap();
        assert_ne!(other_host, bystander_host, "other has a host of its own");
        let slowest = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (slowest, stop, socket) = (slowest.clone(), stop.clone(), d.socket.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = Command::new(BIN)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["status", "--json"])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if ok {
                        slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        Scenario {
            d,
            other_host,
            bystander_host,
            slowest_status_us: slowest,
            stop,
        }
    }

    fn reasons(&self) -> String {
        self.d.reasons(Some("culprit")).join("\n")
    }

    fn wait_reason(&self, what: &str) {
        let end = Instant::now() + LONG;
        while !self.reasons().contains(what) {
            assert!(
                Instant::now() < end,
                "no event says {what:?}; the events of culprit:\n{}",
                self.reasons()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The culprit's host was killed and replaced: the bystander was
    /// checked in a new host and is online there.
    fn wait_bystander_moved(&self) {
        wait_for("the bystander to be online in a new host", LONG, || {
            let r = self.d.resource("bystander");
            r["state"] == "online"
                && shown_pid(&self.d, "bystander").is_some_and(|p| p != self.bystander_host)
        });
    }

    /// What must hold after every misbehaviour.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let other = self.d.resource("other");
        assert_eq!(other["state"], "online", "{other}");
        assert_eq!(other["restarts"], 0, "{other}");
        assert_eq!(
            shown_pid(&self.d, "other"),
            Some(self.other_host),
            "the resource of another host is untouched"
        );
        assert!(alive(self.other_host));
        let slowest = self.slowest_status_us.load(Ordering::Relaxed);
        eprintln!("slowest status answer meanwhile: {} us", slowest);
        assert!(slowest < 1_000_000, "status took {slowest} us");
    }
}

#[test]
fn a_hung_online_gets_its_host_killed() {
    let s = Scenario::start("hang_online", "", false);
    s.wait_reason("online did not return within 600ms (deadlock_timeout)");
    s.wait_reason("gets a host of its own from now on (separate_monitor)");
    s.d.wait_state("culprit", "failed", LONG);
    s.wait_bystander_moved();
    s.finish();
}

#[test]
fn a_hung_offline_is_terminated_and_its_host_killed() {
    let s = Scenario::start("hang_offline", "", true);
    s.d.ok(&["offline", "culprit"]);
    s.wait_reason("offline made no progress for 300ms (pending_timeout)");
    s.wait_reason("offline did not return within 600ms (deadlock_timeout)");
    s.d.wait_state("culprit", "offline", LONG);
    s.wait_bystander_moved();
    s.finish();
}

#[test]
fn a_hung_terminate_gets_its_host_killed() {
    // offline fails, so the monitor calls terminate, which hangs.
    let s = Scenario::start("hang_terminate", "", true);
    s.d.ok(&["offline", "culprit"]);
    s.wait_reason("terminate did not return within 200ms (terminate_timeout)");
    s.d.wait_state("culprit", "offline", LONG);
    s.wait_bystander_moved();
    // The metrics tell the same: the stop needed the forced rung, a host
    // was replaced for a hang, and the culprit got a host of its own.
    let text = s.d.ok(&["metrics"]);
    let value = |name: &str, has: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && has.iter().all(|h| l.contains(h)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let culprit = [r#"resource="culprit""#];
    assert_eq!(
        value("resmon_stops_total{", &[culprit[0], r#"rung="forced""#]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("resmon_stops_total{", &[culprit[0], r#"rung="offline""#]),
        0.0
    );
    assert!(
        value("resmon_plugin_host_restarts_total{", &[r#"cause="hang""#]) >= 1.0,
        "{text}"
    );
    assert!(value("resmon_plugin_culprits_total", &[]) >= 1.0, "{text}");
    assert!(value("resmon_plugin_hosts", &[]) >= 1.0, "{text}");
    s.finish();
}

#[test]
fn hung_health_checks_get_their_host_killed() {
    for mode in ["hang_looks_alive", "hang_is_alive"] {
        let entry = mode.strip_prefix("hang_").unwrap();
        let s = Scenario::start(mode, "", true);
        s.wait_reason(&format!(
            "{entry} did not return within 600ms (deadlock_timeout)"
        ));
        s.d.wait_state("culprit", "failed", LONG);
        s.wait_bystander_moved();
        s.finish();
    }
}

/// Waits until culprit's `is_alive` is the call in flight.
fn wait_is_alive_in_flight(s: &Scenario) {
    wait_for("culprit's is_alive to be in flight", LONG, || {
        s.d.resource("culprit")["call"] == "is_alive"
    });
}

#[test]
fn an_offline_cancels_a_hung_health_check_at_once() {
    // The check would be waited for a minute (deadlock_timeout); the
    // offline cancels it, and a check that does not return within
    // terminate_timeout of that gets its host killed.
    let s = Scenario::start("hang_is_alive", "deadlock_timeout = \"60s\"", true);
    wait_is_alive_in_flight(&s);
    let asked = Instant::now();
    s.d.ok(&["offline", "culprit", "--wait"]);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(30), "offline took {took:?}");
    s.wait_reason("is_alive did not return within 200ms of being cancelled");
    s.wait_reason("gets a host of its own from now on (separate_monitor)");
    assert_eq!(s.d.state("culprit"), "offline");
    s.wait_bystander_moved();
    s.finish();
}

#[test]
fn a_cancelled_health_check_that_returns_keeps_its_host() {
    // The check ends once should_terminate says so: the offline goes on in
    // the same host, and nothing else is disturbed.
    let s = Scenario::start("slow_is_alive", "deadlock_timeout = \"60s\"", true);
    let host = shown_pid(&s.d, "culprit").unwrap();
    wait_is_alive_in_flight(&s);
    s.d.ok(&["offline", "culprit", "--wait"]);
    assert_eq!(s.d.state("culprit"), "offline");
    let reasons = s.reasons();
    assert!(!reasons.contains("of being cancelled"), "{reasons}");
    // Not ended by the termination ladder: the offline ran, and returned.
    assert!(!reasons.contains("pending_timeout"), "{reasons}");
    assert!(alive(host), "the host lives on");
    assert_eq!(shown_pid(&s.d, "bystander"), Some(s.bystander_host));
    assert_eq!(s.d.state("bystander"), "online");
    // Brought up again, it is checked again: should_terminate is lowered.
    s.d.ok(&["online", "culprit", "--wait"]);
    wait_is_alive_in_flight(&s);
    assert_eq!(s.d.state("culprit"), "online");
    s.finish();
}

#[test]
fn a_hung_control_code_gets_its_host_killed() {
    let s = Scenario::start("hang_control", "", true);
    let out = s.d.cli(&["control", "culprit", "get_private_properties"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resource_control did not return within 600ms (deadlock_timeout)"),
        "{err}"
    );
    s.wait_reason("gets a host of its own from now on (separate_monitor)");
    s.wait_bystander_moved();
    s.finish();
}

#[test]
fn a_mutex_held_by_a_hung_call_dies_with_its_host() {
    // The culprit hangs in online holding a mutex every resource of the host
    // needs; the bystander's looks_alive needs it too and blocks. Killing the
    // host frees the mutex: nothing keeps using a process a thread hung in.
    let lib = misbehave();
    let config = format!(
        "[defaults]\n{FAST}\n{}{}",
        resource(
            "culprit",
            lib,
            "misbehave",
            "{ mode = \"lock_hang_online\" }",
            "restart_action = \"none\"\nautostart = false"
        ),
        resource("needy", lib, "misbehave", "{ mode = \"needs_lock\" }", ""),
    );
    let d = Daemon::start(&config);
    d.wait_state("needy", "online", LONG);
    let host = shown_pid(&d, "needy").unwrap();
    d.ok(&["online", "culprit"]);
    wait_for("the culprit to be failed", LONG, || {
        d.state("culprit") == "failed"
    });
    wait_for("needy to be online in a new host", LONG, || {
        d.state("needy") == "online" && shown_pid(&d, "needy").is_some_and(|p| p != host)
    });
    let reasons = d.reasons(Some("culprit")).join("\n");
    assert!(
        reasons.contains("online did not return within 600ms"),
        "{reasons}"
    );
    // The new host's looks_alive (every 100 ms) takes the mutex freely: over
    // three deadlock timeouts, needy stays online in the same host.
    let moved = shown_pid(&d, "needy").unwrap();
    let until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < until {
        assert_eq!(d.state("needy"), "online");
        assert_eq!(shown_pid(&d, "needy"), Some(moved));
        std::thread::sleep(Duration::from_millis(50));
    }
    d.ok(&["offline", "needy", "--wait"]);
}

#[test]
fn crashes_are_contained_and_blamed() {
    for (mode, signal_name) in [
        ("abort_looks_alive", "SIGABRT"),
        ("segv_looks_alive", "SIGSEGV"),
    ] {
        let s = Scenario::start(mode, "", false);
        s.wait_reason(&format!("killed by {signal_name}"));
        s.wait_reason("gets a host of its own from now on (separate_monitor)");
        s.wait_bystander_moved();
        s.finish();
    }
}

#[test]
fn writing_past_the_output_buffer_crashes_only_its_host() {
    let s = Scenario::start("overflow_control", "", true);
    let out = s.d.cli(&["control", "culprit", "get_private_properties"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("killed by SIGSEGV"), "{err}");
    s.wait_bystander_moved();
    s.finish();
}

#[test]
fn garbage_answers_are_errors_not_crashes() {
    let s = Scenario::start("garbage", "", false);
    s.wait_reason("online returned 12345, an error");
    s.d.wait_state("culprit", "failed", LONG);
    // A plain error is the resource's failure, not its host's.
    assert_eq!(shown_pid(&s.d, "bystander"), Some(s.bystander_host));
    s.finish();

    for (mode, want) in [
        ("lying_control", "more than out_len"),
        ("greedy_control", "more than the 1048576 allowed"),
        ("error_control", "returned error code 87"),
    ] {
        let s = Scenario::start(mode, "", true);
        let out = s.d.cli(&["control", "culprit", "get_private_properties"]);
        assert_eq!(out.status.code(), Some(1), "{mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{mode}: {err}");
        assert_eq!(s.d.state("culprit"), "online");
        assert_eq!(shown_pid(&s.d, "bystander"), Some(s.bystander_host));
        s.finish();
    }
}

#[test]
fn pending_online_reports_progress_and_a_stalled_one_is_terminated() {
    let s = Scenario::start("pending", "", true);
    let events = s.d.events();
    assert!(
        events
            .iter()
            .any(|e| e["resource"] == "culprit" && e["state"] == "online"),
        "{events:#?}"
    );
    s.finish();

    let s = Scenario::start("pending_stall", "", false);
    s.wait_reason("online made no progress for 300ms (pending_timeout)");
    s.d.wait_state("culprit", "failed", LONG);
    s.finish();
}

#[test]
fn type_control_codes_reach_the_library() {
    let s = Scenario::start("ok", "", true);
    let out = s.d.ok(&[
        "type-control",
        "plugin:misbehave",
        "get_private_property_names",
    ]);
    assert!(out.contains("\"mode\""), "{out}");
    let info =
        s.d.ok(&["type-control", "plugin:misbehave", "get_type_info"]);
    assert!(
        info.contains("culprit") && info.contains("bystander"),
        "{info}"
    );
    s.finish();
}

#[test]
fn a_hung_open_fails_the_resource_at_start() {
    let err = fails_alone(&resource(
        "a",
        misbehave(),
        "misbehave",
        "{ mode = \"hang_open\" }",
        "deadlock_timeout = \"300ms\"",
    ));
    assert!(
        err.contains("open did not return within 300ms (deadlock_timeout)"),
        "{err}"
    );
}

/// The C library this test runs with: a shared library that is no plugin.
fn libc_path() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
        .expect("libc is mapped")
}

#[test]
fn a_library_that_is_no_plugin_fails_the_resource() {
    let why = fails_alone(&resource("a", &libc_path(), "anything", "{}", ""));
    assert!(why.contains("resmon_startup"), "{why}");
}
