//! The fence guard ends the node's lease when its monitor dies: a real
//! etcd, a real lease owning a real owner key, a real guard armed with the
//! cgroup of real processes, and a real monitor process that is SIGKILLed.
//!
//! The monitor is this test binary run again with only [`monitor_process`]
//! selected: it spawns the resource's processes into the cgroup the test
//! made, starts the guard (the binary again, [`guard_process`]), attaches
//! and arms it with the lease the test holds, says `READY` on stdout, and
//! waits to be killed. The test stands for the monitor's etcd side: it
//! holds the lease, and stops renewing it when it kills the monitor.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resmon_cluster::etcd::Member;
use resmon_cluster::guard::protocol::WireScope;
use resmon_cluster::guard::{self, FenceReport, GuardClient, GuardOptions, LeaseAction};
use resmon_cluster::testkit::{etcd_available, EtcdCluster};
use resmon_cluster::{BootInstant, Settings};
use resmon_task::{Container, Containers, Output, Reaper, SpawnSpec};

const MONITOR_ENV: &str = "RESMON_CLUSTER_TEST_MONITOR";
const GUARD_ENV: &str = "RESMON_CLUSTER_TEST_LEASE_GUARD";

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the test tells its monitor process.
#[derive(serde::Serialize, serde::Deserialize)]
struct MonitorOrder {
    settings: resmon_cluster::guard::protocol::WireSettings,
    lease: i64,
    until_boottime_ns: u64,
    grace_ms: u64,
    scope: WireScope,
    /// Run the guard as this uid and gid.
    guard_user: Option<(u32, u32)>,
    /// The guard's stderr, and its report file.
    log: PathBuf,
    report: PathBuf,
}

/// Not a test of its own: the body of the guard processes. Without the
/// variable it does nothing.
#[test]
fn guard_process() {
    if std::env::var_os(GUARD_ENV).is_none() {
        return;
    }
    let options = GuardOptions {
        settle: Duration::from_secs(1),
        ..GuardOptions::default()
    };
    let sock = guard::take_socket(0).expect("the socket on stdin");
    std::process::exit(guard::run(sock, &options));
}

/// Not a test of its own: the monitor process. Without the variable it
/// does nothing.
#[test]
fn monitor_process() {
    let Ok(order) = std::env::var(MONITOR_ENV) else {
        return;
    };
    let order: MonitorOrder = serde_json::from_str(&order).expect("the monitor's order");
    let reaper = Reaper::get().expect("starting the reaper");
    let scope = resmon_contract::Scope::from(order.scope);
    let mut spec = SpawnSpec::new("sh", ["-c", "sleep 1000 & exec sleep 1000"]);
    spec.set_scope(&scope);
    let _tree = reaper.spawn(&spec).expect("spawning the resource");
    let mut spec = common::rerun("guard_process");
    spec.env.push((GUARD_ENV.into(), "1".into()));
    spec.stderr = Output::File(order.log.clone());
    spec.user = order.guard_user;
    let mut client = GuardClient::spawn(&reaper, spec).expect("starting the guard");
    let settings = Settings::try_from(order.settings).expect("valid settings");
    client
        .attach(
            &settings,
            Duration::from_millis(order.grace_ms),
            Some(&order.report),
            None,
        )
        .expect("attach");
    client
        .arm_lease(
            order.lease,
            BootInstant::from_nanos(order.until_boottime_ns),
            &[scope],
        )
        .expect("arm");
    let guard_pid = client.task().and_then(|t| t.pid()).unwrap_or(0);
    println!("READY {guard_pid}");
    // Killed here; should the test die first, its end of stdin closes.
    let _ = std::io::stdin().read_line(&mut String::new());
}

/// The resource's cgroup and its processes, torn down on drop.
struct Resource {
    containers: Containers,
    container: Container,
}

impl Resource {
    fn new(test: &str) -> Option<Resource> {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.contains(" - cgroup2 ")))
            .unwrap_or(false);
        if !mounted {
            eprintln!("cgroup v2 is not mounted: skipping {test}");
            return None;
        }
        let containers =
            Containers::detect(Some(&format!("resmon-lease-{test}-{}", std::process::id())));
        assert!(
            containers.uses_cgroups(),
            "{}",
            containers.backend_description()
        );
        let container = containers.create("web").expect("creating the cgroup");
        Some(Resource {
            containers,
            container,
        })
    }

    /// Whether any of `pids` runs (a zombie is dead).
    fn any_alive(pids: &[u32]) -> bool {
        pids.iter().any(|&p| resmon_test_support::alive(p))
    }
}

impl Drop for Resource {
    fn drop(&mut self) {
        common::tear_down(&self.containers, &self.container, DEADLINE);
    }
}

/// The monitor process, SIGKILLed on drop if the test did not.
struct Monitor {
    child: Child,
    guard_pid: u32,
}

impl Monitor {
    fn start(order: &MonitorOrder) -> Monitor {
        let spec = common::rerun("monitor_process");
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .env(MONITOR_ENV, serde_json::to_string(order).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the monitor process");
        let out = child.stdout.take().unwrap();
        let mut guard_pid = None;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // Behind the harness's "test monitor_process ... ".
            if let Some((_, pid)) = line.split_once("READY ") {
                guard_pid = pid.trim().parse().ok();
                break;
            }
        }
        let Some(guard_pid) = guard_pid else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the monitor process did not get ready");
        };
        Monitor { child, guard_pid }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.kill9();
        // The guard outlives it; it exits once it has fenced.
        let start = Instant::now();
        while resmon_test_support::alive(self.guard_pid) && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A plain etcd client for looking at keys and leases.
async fn client(endpoints: &[String]) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connecting to etcd")
}

/// Whether `key` exists; `None` when etcd does not answer in time.
async fn exists(c: &mut etcd_client::Client, key: &str) -> Option<bool> {
    match tokio::time::timeout(Duration::from_millis(500), c.get(key, None)).await {
        Ok(Ok(r)) => Some(!r.kvs().is_empty()),
        _ => None,
    }
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// etcd, the settings of the node whose lease owns `web`, and the files
/// the guard writes.
struct Setup {
    etcd: EtcdCluster,
    settings: Settings,
    owner_key: String,
    dir: tempfile::TempDir,
}

impl Setup {
    /// With the node, a member owning `web`: the monitor's etcd side.
    async fn new(test: &str, ttl: Duration) -> Option<(Setup, Member)> {
        if !etcd_available() {
            eprintln!("etcd is not installed: skipping {test}");
            return None;
        }
        let etcd = EtcdCluster::start(1).expect("starting etcd");
        let settings = Settings::new("n1", etcd.endpoints())
            .with_lease_ttl(ttl)
            .with_key_prefix(format!("/{test}"));
        let member = Member::join(settings.clone()).await.expect("joining");
        member
            .acquire("web")
            .await
            .expect("acquiring")
            .won()
            .expect("web is free");
        let owner_key = settings.keys().owner("web");
        let dir = tempfile::tempdir().unwrap();
        // The guard may run as another user: it writes here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let setup = Setup {
            etcd,
            settings,
            owner_key,
            dir,
        };
        Some((setup, member))
    }

    /// The order for a monitor of `member`, arming its guard as the
    /// controller does.
    fn order(
        &self,
        member: &Member,
        res: &Resource,
        grace: Duration,
        guard_user: Option<(u32, u32)>,
    ) -> MonitorOrder {
        let until = member.lease_state().borrow().may_run_until.unwrap() + self.settings.margin / 2;
        MonitorOrder {
            settings: (&self.settings).into(),
            lease: member.lease_id(),
            until_boottime_ns: until.as_nanos(),
            grace_ms: grace.as_millis() as u64,
            scope: WireScope::from(&res.container.scope()),
            guard_user,
            log: self.dir.path().join("guard.log"),
            report: self.dir.path().join("report.json"),
        }
    }

    fn log(&self) -> String {
        read(&self.dir.path().join("guard.log"))
    }

    fn report(&self) -> Option<FenceReport> {
        serde_json::from_str(&read(&self.dir.path().join("report.json"))).ok()
    }
}

async fn two_sleeps(res: &Resource) -> Vec<u32> {
    eventually("the resource's two processes", || {
        res.container.pids().len() == 2
    })
    .await;
    res.container.pids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_monitors_resources_die_before_its_lease_is_revoked() {
    let test = "revoke";
    let ttl = Duration::from_secs(10);
    let Some((setup, member)) = Setup::new(test, ttl).await else {
        return;
    };
    let Some(res) = Resource::new(test) else {
        return;
    };
    let order = setup.order(&member, &res, Duration::from_millis(200), None);
    let mut monitor = Monitor::start(&order);
    let pids = two_sleeps(&res).await;
    let mut etcd = client(&setup.etcd.endpoints()).await;
    let lease = member.lease_id();
    assert_eq!(exists(&mut etcd, &setup.owner_key).await, Some(true));

    let t0 = Instant::now();
    monitor.kill9();
    // The monitor's renewals end with it.
    drop(member);
    let mut dead_at = None;
    let gone_at = loop {
        let key = exists(&mut etcd, &setup.owner_key).await;
        let alive = Resource::any_alive(&pids);
        if !alive && dead_at.is_none() {
            dead_at = Some(t0.elapsed());
        }
        if key == Some(false) {
            // Looked at after the key was seen gone: all dead by then.
            assert!(
                !alive,
                "the owner key is gone while a resource process lives"
            );
            break t0.elapsed();
        }
        assert!(t0.elapsed() < DEADLINE, "the owner key is still there");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let dead_at = dead_at.expect("dead before the key went");
    eprintln!(
        "processes dead after {dead_at:?}, owner key gone after {gone_at:?} (lease TTL {ttl:?})"
    );
    assert!(
        dead_at >= Duration::from_millis(200),
        "killed within the grace"
    );
    assert!(gone_at < ttl / 4, "the key went only after {gone_at:?}");
    // The lease itself is gone, with every key bound to it.
    let ttl_left = etcd.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert_eq!(ttl_left, -1, "lease {lease:x} still known to etcd");
    assert_eq!(
        exists(&mut etcd, &setup.settings.keys().node("n1")).await,
        Some(false)
    );
    // The guard says what it did, in its log and its report.
    eventually("the report", || setup.report().is_some()).await;
    let report = setup.report().unwrap();
    assert!(report.early && report.complete(), "{report:?}");
    assert!(
        matches!(report.lease, Some(LeaseAction::Revoked { lease: l, found: true, .. }) if l == lease),
        "{report:?}"
    );
    let log = setup.log();
    assert!(log.contains(&format!("revoked lease {lease:x}")), "{log}");
    drop(monitor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_cannot_kill_leaves_the_lease_to_expire() {
    let test = "cannotkill";
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root to run the guard as another user: skipping {test}");
        return;
    }
    let ttl = Duration::from_secs(3);
    let Some((setup, member)) = Setup::new(test, ttl).await else {
        return;
    };
    let Some(res) = Resource::new(test) else {
        return;
    };
    // The guard runs as nobody: the cgroup is root's, and nobody may not
    // write its cgroup.kill. The kill fails, and is seen to fail.
    let order = setup.order(
        &member,
        &res,
        Duration::from_millis(100),
        Some((65534, 65534)),
    );
    let mut monitor = Monitor::start(&order);
    let pids = two_sleeps(&res).await;
    let mut etcd = client(&setup.etcd.endpoints()).await;
    let renew = setup.settings.renew_interval();
    let t0 = Instant::now();
    monitor.kill9();
    drop(member);
    eventually("the guard to give up on the lease", || {
        setup.log().contains("left lease")
    })
    .await;
    let log = setup.log();
    assert!(log.contains("not every scope was seen empty"), "{log}");
    assert!(
        Resource::any_alive(&pids),
        "the processes were killed after all"
    );
    // The lease runs out in etcd as it would have without the guard: not
    // before a TTL after its last renewal.
    let gone_at = loop {
        let key = exists(&mut etcd, &setup.owner_key).await;
        if key == Some(false) {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < DEADLINE, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("owner key gone {gone_at:?} after the monitor died (lease TTL {ttl:?})");
    assert!(
        gone_at >= ttl - renew,
        "the key went after only {gone_at:?}"
    );
    drop(monitor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_cannot_reach_etcd_leaves_the_lease_to_expire() {
    let test = "noetcd";
    let ttl = Duration::from_secs(3);
    let Some((mut setup, member)) = Setup::new(test, ttl).await else {
        return;
    };
    let Some(res) = Resource::new(test) else {
        return;
    };
    let order = setup.order(&member, &res, Duration::from_millis(300), None);
    let mut monitor = Monitor::start(&order);
    let pids = two_sleeps(&res).await;
    let lease = member.lease_id();
    monitor.kill9();
    setup.etcd.kill(0);
    drop(member);
    eventually("the processes to die", || !Resource::any_alive(&pids)).await;
    // The report comes last, after the log line.
    eventually("the guard's report", || setup.report().is_some()).await;
    let log = setup.log();
    assert!(log.contains("left lease"), "{log}");
    assert!(log.contains("revoking it failed"), "{log}");
    let report = setup.report().expect("the report");
    assert!(report.complete(), "{report:?}");
    assert!(
        matches!(&report.lease, Some(LeaseAction::Kept { lease: Some(l), .. }) if *l == lease),
        "{report:?}"
    );
    // etcd back: the lease is still there, and expires by itself.
    setup.etcd.restart(0).expect("restarting etcd");
    let mut etcd = client(&setup.etcd.endpoints()).await;
    let mut present = None;
    let start = Instant::now();
    while present.is_none() {
        present = exists(&mut etcd, &setup.owner_key).await;
        assert!(start.elapsed() < DEADLINE, "etcd does not answer");
    }
    assert_eq!(present, Some(true), "the lease was revoked");
    let restarted = Instant::now();
    loop {
        if exists(&mut etcd, &setup.owner_key).await == Some(false) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "owner key gone {:?} after etcd came back (lease TTL {ttl:?})",
        restarted.elapsed()
    );
    drop(monitor);
}
