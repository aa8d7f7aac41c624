//! Helpers shared by the integration tests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use resmon_task::{Container, Containers, Reaper, SpawnSpec, TaskHandle};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn reaper() -> Arc<Reaper> {
    Reaper::get().expect("starting the reaper")
}

/// A spec running `script` with `sh -c`.
pub fn sh(script: &str) -> SpawnSpec {
    SpawnSpec::new("sh", ["-c", script])
}

/// Spawns `script` in `container`'s scope.
pub fn spawn_in(container: &Container, script: &str) -> TaskHandle {
    let mut spec = sh(script);
    spec.set_scope(&container.scope());
    reaper().spawn(&spec).expect("spawning a shell")
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// The `(state, ppid, comm)` of a process, if it exists.
pub fn proc_info(pid: u32) -> Option<(char, u32, String)> {
    resmon_test_support::stat(pid).map(|s| (s.state, s.ppid, s.comm))
}

pub use resmon_test_support::reaped;

/// Whether `pid` runs (exists and is not a zombie).
pub fn running(pid: u32) -> bool {
    matches!(proc_info(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// How many processes of `container` run `comm`.
pub fn count_comm(container: &Container, comm: &str) -> usize {
    container
        .pids()
        .into_iter()
        .filter(|pid| proc_info(*pid).is_some_and(|(_, _, c)| c == comm))
        .count()
}

/// Waits until `container` holds exactly `n` processes named `comm`; on a
/// timeout the failure lists what it holds instead.
pub async fn until_comm(container: &Container, comm: &str, n: usize) {
    let start = Instant::now();
    while count_comm(container, comm) != n {
        if start.elapsed() >= DEADLINE {
            let held: Vec<_> = container
                .pids()
                .into_iter()
                .map(|p| (p, proc_info(p)))
                .collect();
            panic!(
                "timed out waiting for {n} {comm} in {}: it holds {held:?}",
                container.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn cgroup2_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.contains(" - cgroup2 ")))
        .unwrap_or(false)
}

/// Which backend a container test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Cgroup,
    ProcessGroups,
}

/// A container for one test, torn down on drop: everything in it is
/// killed, the container and (in cgroup mode) the test's root cgroup removed.
pub struct Fixture {
    pub containers: Containers,
    pub container: Container,
}

impl Fixture {
    /// `None` when the backend is not available here (cgroup v2 not mounted).
    pub fn new(backend: Backend, test: &str) -> Option<Fixture> {
        let unique = format!("resmon-test-{test}-{}", std::process::id());
        let containers = match backend {
            Backend::Cgroup => {
                if !cgroup2_mounted() {
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
        Some(Fixture {
            containers,
            container,
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.container.kill_all();
        let start = Instant::now();
        while !self.container.is_empty() && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = self.container.remove() {
            eprintln!("cleanup: {e}");
        }
        self.containers.cleanup();
        if let Some(root) = self.containers.root() {
            if Path::new(root).exists() && !std::thread::panicking() {
                panic!("cleanup left {}", root.display());
            }
        }
    }
}
