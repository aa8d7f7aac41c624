//! The fence guard as a real process, killing real process trees: each case
//! runs once with a cgroup and once with process groups.
//!
//! The guard process is this test binary run again with only
//! [`guard_process`] selected and `RESMON_CLUSTER_TEST_GUARD` set: that
//! "test" then calls `resmon_cluster::guard::run` on its stdin, as
//! `resmon fence-guard` does.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resmon_cluster::guard::{self, GuardClient, GuardError, GuardOptions};
use resmon_cluster::BootInstant;
use resmon_task::{Container, Containers, Output, Reaper, Rights, SpawnSpec, TaskHandle};
use rustix::process::Signal;

const CHILD_ENV: &str = "RESMON_CLUSTER_TEST_GUARD";

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Not a test of its own: the body of the guard processes the other
/// tests start. Without the variable it does nothing.
#[test]
fn guard_process() {
    let Ok(watchdog) = std::env::var(CHILD_ENV) else {
        return;
    };
    let options = GuardOptions {
        watchdog: (!watchdog.is_empty()).then(|| PathBuf::from(watchdog)),
        watchdog_interval: Duration::from_millis(50),
        settle: Duration::from_secs(5),
    };
    let sock = guard::take_socket(0).expect("the socket on stdin");
    std::process::exit(guard::run(sock, &options));
}

fn reaper() -> Arc<Reaper> {
    Reaper::get().expect("starting the reaper")
}

fn spawn_guard(watchdog: Option<&Path>) -> GuardClient {
    let mut spec = common::rerun("guard_process");
    spec.env.push((
        CHILD_ENV.into(),
        watchdog
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    ));
    spec.stderr = Output::Inherit;
    GuardClient::spawn(&reaper(), spec).expect("starting the guard")
}

fn guard_task(client: &GuardClient) -> TaskHandle {
    client.task().unwrap().duplicate(Rights::all()).unwrap()
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// Waits, checking `cond` all along, until `until` has passed by `extra`.
async fn holds_until(what: &str, until: BootInstant, extra: Duration, cond: impl Fn() -> bool) {
    let end = until + extra;
    while !end.has_passed() {
        assert!(
            cond(),
            "{what} stopped holding {:?} before {end}",
            end.remaining()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cond(), "{what}");
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Cgroup,
    ProcessGroups,
}

/// A container holding a shell and two `sleep`s, torn down on drop.
struct Fixture {
    containers: Containers,
    container: Container,
    _main: TaskHandle,
}

impl Fixture {
    async fn new(backend: Backend, test: &str) -> Option<Fixture> {
        let unique = format!("resmon-cluster-{test}-{}", std::process::id());
        let containers = match backend {
            Backend::Cgroup => {
                let mounted = std::fs::read_to_string("/proc/self/mountinfo")
                    .map(|m| m.lines().any(|l| l.contains(" - cgroup2 ")))
                    .unwrap_or(false);
                if !mounted {
                    eprintln!("cgroup v2 is not mounted: skipping the cgroup case of {test}");
                    return None;
                }
                let c = Containers::detect(Some(&unique));
                assert!(c.uses_cgroups(), "{}", c.backend_description());
                c
            }
            Backend::ProcessGroups => Containers::process_groups(),
        };
        let container = containers.create(&unique).expect("creating the container");
        let mut spec = SpawnSpec::new("sh", ["-c", "sleep 1000 & exec sleep 1000"]);
        spec.set_scope(&container.scope());
        let main = reaper().spawn(&spec).expect("spawning the tree");
        let fx = Fixture {
            containers,
            container,
            _main: main,
        };
        let last = std::sync::Mutex::new(Vec::new());
        let report = || {
            let pids = fx.container.pids();
            let n = pids.len();
            *last.lock().unwrap() = pids;
            n == 2
        };
        let start = Instant::now();
        while !report() {
            let pids = last.lock().unwrap().clone();
            let described: Vec<String> = pids
                .iter()
                .map(|&p| {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                        .unwrap_or_default();
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    format!("{p} [{cmd}] {stat}")
                })
                .collect();
            if start.elapsed() >= DEADLINE {
                let main = fx._main.pid().unwrap_or(0);
                let env = |p: u32| {
                    std::fs::read(format!("/proc/{p}/environ"))
                        .map(|e| {
                            e.split(|&b| b == 0)
                                .filter(|kv| kv.starts_with(b"RESMON_RESOURCE="))
                                .map(|kv| String::from_utf8_lossy(kv).into_owned())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                };
                let family: Vec<String> = resmon_test_support::all()
                    .into_iter()
                    .filter(|s| s.pid == main || s.ppid == main)
                    .map(|s| format!("{s:?} env {:?}", env(s.pid)))
                    .collect();
                panic!(
                    "timed out waiting for two sleeps; the container lists {described:#?}; main {main} and its children: {family:#?}; marker {:?}",
                    fx.container.scope()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(fx)
    }

    fn alive(&self) -> bool {
        self.container.pids().len() == 2
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        common::tear_down(&self.containers, &self.container, DEADLINE);
    }
}

/// Runs each case as `cgroup::<case>` and `process_groups::<case>`.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod cgroup {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Cgroup, concat!("cg-", stringify!($case))).await
                }
            )*
        }
        mod process_groups {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::ProcessGroups, concat!("pg-", stringify!($case))).await
                }
            )*
        }
    };
}

both_backends!(
    a_monitor_that_dies_is_fenced_at_its_deadline_not_before,
    a_frozen_monitor_is_fenced_and_told_so,
    re_arming_keeps_the_resources_running,
    disarm_means_no_kill_even_when_the_monitor_goes_away,
    a_deadline_in_the_past_fences_at_once,
);

async fn a_monitor_that_dies_is_fenced_at_its_deadline_not_before(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test).await else {
        return;
    };
    let mut client = spawn_guard(None);
    let task = guard_task(&client);
    let until = BootInstant::now() + Duration::from_millis(800);
    client.arm(until, &[fx.container.scope()]).unwrap();
    // The monitor is SIGKILLed: its end of the socket closes.
    drop(client);
    // The guard does not kill on the close: it waits for the deadline
    // the monitor last proved.
    let mut killed_before = false;
    while !fx.container.is_empty() {
        if !fx.alive() && !until.has_passed() {
            killed_before = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            BootInstant::now() < until + DEADLINE,
            "the container was not killed after the deadline"
        );
    }
    assert!(!killed_before, "killed before the deadline");
    assert!(until.has_passed());
    // Then it exits, reporting the fence in its exit code.
    let code = within("the guard to exit", task.wait()).await.unwrap();
    assert_eq!(code, guard::EXIT_FENCED);
}

async fn a_frozen_monitor_is_fenced_and_told_so(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test).await else {
        return;
    };
    let mut client = spawn_guard(None);
    let until = BootInstant::now() + Duration::from_millis(300);
    client.arm(until, &[fx.container.scope()]).unwrap();
    // The monitor stops talking (SIGSTOP) but keeps the socket open.
    eventually("the fence", || fx.container.is_empty()).await;
    assert!(until.has_passed());
    let mut reports = Vec::new();
    eventually("the fence report", || {
        reports.extend(client.take_fenced().unwrap());
        !reports.is_empty()
    })
    .await;
    let report = &reports[0];
    assert_eq!(report.scopes, 1);
    assert!(report.complete(), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.deadline_boottime_ns, until.as_nanos());
    assert!(report.at_boottime_ns >= until.as_nanos());
    // The guard stays, disarmed, and can be armed again.
    let status = client.ping().unwrap();
    assert_eq!(status.armed_until_boottime_ns, None);
    let task = guard_task(&client);
    client.shutdown().unwrap();
    let code = within("the guard to exit", task.wait()).await.unwrap();
    assert_eq!(code, guard::EXIT_CLEAN);
}

async fn re_arming_keeps_the_resources_running(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test).await else {
        return;
    };
    let mut client = spawn_guard(None);
    let task = guard_task(&client);
    let step = Duration::from_millis(300);
    let first = BootInstant::now() + step;
    client.arm(first, &[fx.container.scope()]).unwrap();
    // Renew well past the first deadline, as acknowledged renewals do.
    let mut until = first;
    while BootInstant::now() < first + 3 * step {
        until = BootInstant::now() + step;
        client.arm(until, &[fx.container.scope()]).unwrap();
        assert!(fx.alive(), "killed although re-armed");
        tokio::time::sleep(step / 4).await;
    }
    assert_eq!(
        client.ping().unwrap().armed_until_boottime_ns,
        Some(until.as_nanos())
    );
    client.disarm().unwrap();
    holds_until("the resources to live after disarm", until, step, || {
        fx.alive()
    })
    .await;
    assert!(client.take_fenced().unwrap().is_empty());
    // The guard runs in a session of its own, outside the resources.
    let pid = task.pid().unwrap();
    let session = resmon_test_support::stat(pid).unwrap().session;
    assert_eq!(session, pid, "the guard leads its own session");
    assert!(!fx.container.pids().contains(&pid));
    client.shutdown().unwrap();
    assert_eq!(within("the guard to exit", task.wait()).await.unwrap(), 0);
    assert!(fx.alive());
}

async fn disarm_means_no_kill_even_when_the_monitor_goes_away(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test).await else {
        return;
    };
    let mut client = spawn_guard(None);
    let task = guard_task(&client);
    let until = BootInstant::now() + Duration::from_millis(300);
    client.arm(until, &[fx.container.scope()]).unwrap();
    client.disarm().unwrap();
    drop(client);
    // Disarmed and alone, the guard exits at once and kills nothing.
    assert_eq!(
        within("the guard to exit", task.wait()).await.unwrap(),
        guard::EXIT_CLEAN
    );
    holds_until(
        "the resources to live",
        until,
        Duration::from_millis(200),
        || fx.alive(),
    )
    .await;
}

async fn a_deadline_in_the_past_fences_at_once(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test).await else {
        return;
    };
    let mut client = spawn_guard(None);
    let until = BootInstant::now() - Duration::from_millis(1);
    client.arm(until, &[fx.container.scope()]).unwrap();
    eventually("the fence", || fx.container.is_empty()).await;
    let mut reports = Vec::new();
    eventually("the fence report", || {
        reports.extend(client.take_fenced().unwrap());
        !reports.is_empty()
    })
    .await;
    assert!(reports[0].complete());
    client.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_are_ignored_only_while_armed() {
    let mut client = spawn_guard(None);
    let task = guard_task(&client);
    let until = BootInstant::now() + Duration::from_secs(60);
    client.arm(until, &[]).unwrap();
    for sig in [Signal::TERM, Signal::INT, Signal::HUP] {
        task.signal(sig).unwrap();
    }
    // Still there and still armed.
    let status = client.ping().unwrap();
    assert_eq!(status.armed_until_boottime_ns, Some(until.as_nanos()));
    assert_eq!(status.pid, task.pid().unwrap());
    client.disarm().unwrap();
    task.signal(Signal::TERM).unwrap();
    assert_eq!(
        within("the guard to die of SIGTERM", task.wait())
            .await
            .unwrap(),
        128 + 15
    );
    assert!(matches!(client.ping(), Err(GuardError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_while_armed_and_closed_with_v() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("watchdog");
    std::fs::write(&device, b"").unwrap();
    let mut client = spawn_guard(Some(&device));
    assert!(!client.ping().unwrap().watchdog, "opened only when armed");
    let until = BootInstant::now() + Duration::from_secs(60);
    client.arm(until, &[]).unwrap();
    assert!(client.ping().unwrap().watchdog);
    let len = || std::fs::metadata(&device).unwrap().len();
    eventually("three keepalives", || len() >= 3).await;
    client.disarm().unwrap();
    let written = std::fs::read(&device).unwrap();
    assert_eq!(written.last(), Some(&b'V'), "{written:?}");
    assert!(written[..written.len() - 1].iter().all(|&b| b == 0));
    assert!(!client.ping().unwrap().watchdog);
    // A deadline that passes with everything killed closes it cleanly too.
    client
        .arm(BootInstant::now() + Duration::from_millis(100), &[])
        .unwrap();
    let before = len();
    let mut reports = Vec::new();
    eventually("the fence report", || {
        reports.extend(client.take_fenced().unwrap());
        !reports.is_empty()
    })
    .await;
    let written = std::fs::read(&device).unwrap();
    assert!(written.len() as u64 > before);
    assert_eq!(written.last(), Some(&b'V'));
    client.shutdown().unwrap();
}

#[test]
fn take_socket_refuses_what_is_not_a_socket() {
    let file = tempfile::tempfile().unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    let e = guard::take_socket(fd).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    // SAFETY: `fd` came from `into_raw_fd` above and was not closed.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    assert!(guard::take_socket(-1).is_err());
}

/// A guard whose monitor went away waits for one to come back at its
/// socket. A process of another user that connects there (the socket
/// opened to everyone for the attack; in resmon it is in the monitor's
/// private state directory) is refused and changes nothing; a monitor of
/// the guard's own user takes over what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_monitor_of_the_guards_user_can_reattach() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: skipping (the attack runs as nobody)");
        return;
    }
    let Some(fx) = Fixture::new(Backend::ProcessGroups, "reattach").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guard.sock");
    let mut client = spawn_guard(None);
    let task = guard_task(&client);
    let settings = resmon_cluster::Settings::new("n1", vec!["http://127.0.0.1:9".into()]);
    client
        .attach(&settings, Duration::from_millis(100), None, Some(&path))
        .unwrap();
    let until = BootInstant::now() + Duration::from_secs(60);
    client.arm(until, &[fx.container.scope()]).unwrap();
    // The monitor dies.
    drop(client);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The attack, as nobody: connect and ask for a disarm.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let answer = dir.path().join("answer");
    let attack = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"op\":\"disarm\"}\\n')\ns.settimeout(10)\ntry:\n    r=s.recv(100)\nexcept Exception as e:\n    r=repr(e).encode()\nopen(sys.argv[2],'w').write('reply:%r' % r)\n";
    let spec = SpawnSpec::new(
        "/usr/bin/setpriv",
        [
            "--reuid=nobody".to_string(),
            "--regid=nogroup".into(),
            "--clear-groups".into(),
            // Debian's, which nobody can run (not a root-only install).
            "/usr/bin/python3".into(),
            "-c".into(),
            attack.into(),
            path.display().to_string(),
            answer.display().to_string(),
        ],
    );
    let attacker = reaper().spawn(&spec).expect("setpriv");
    assert_eq!(within("the attack", attacker.wait()).await.unwrap(), 0);
    let said = std::fs::read_to_string(&answer).unwrap();
    // Closed on it, unanswered (end of file, or a reset as its request
    // was left unread).
    assert!(
        said == "reply:b''" || said.contains("ConnectionResetError"),
        "the guard answered another user: {said}"
    );
    // Still armed for the monitor that comes back, and the resources run.
    assert!(fx.alive());
    let mut back = GuardClient::reattach(&path).expect("re-attaching as root");
    let status = back.ping().unwrap();
    assert_eq!(status.armed_until_boottime_ns, Some(until.as_nanos()));
    back.disarm().unwrap();
    back.shutdown().unwrap();
    assert_eq!(
        within("the guard to exit", task.wait()).await.unwrap(),
        guard::EXIT_CLEAN
    );
    assert!(fx.alive());
    // It removed its socket on the way out.
    assert!(!path.exists());
}
