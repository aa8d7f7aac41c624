//! What the guard tests share.

use std::time::{Duration, Instant};

use resmon_task::{Container, Containers};

/// Kills what `container` holds, waits up to `limit` for it to empty, and
/// removes its cgroup and the test's root.
pub fn tear_down(containers: &Containers, container: &Container, limit: Duration) {
    let _ = container.kill_all();
    let start = Instant::now();
    while !container.is_empty() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Err(e) = container.remove() {
        eprintln!("cleanup: {e}");
    }
    containers.cleanup();
}

/// This test binary run again with only the test `name` selected, its
/// output not captured: how a test starts a guard or a monitor process.
pub fn rerun(name: &str) -> resmon_task::SpawnSpec {
    let exe = std::env::current_exe().expect("the test binary");
    resmon_task::SpawnSpec::new(
        exe.display().to_string(),
        [name, "--exact", "--nocapture", "--test-threads=1"],
    )
}
