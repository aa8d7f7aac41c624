//! `Reaper::kill_orphans`, in a test binary of its own: it kills every
//! child of the process that is not a task, which would hit the orphans
//! other tests make on purpose.

use resmon_task::{Output, Reaper, SpawnSpec};
use std::time::{Duration, Instant};

use resmon_test_support::alive;

#[test]
fn orphans_and_their_trees_are_killed_and_tasks_are_kept() {
    let reaper = Reaper::get().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pids");
    // A task that stays, and a shell that leaves an orphan tree behind: a
    // sleep that left its session and cleared its environment, with a child.
    let kept = reaper.spawn(&SpawnSpec::new("sleep", ["1000"])).unwrap();
    let mut spec = SpawnSpec::new(
        "sh",
        [
            "-c",
            "setsid env -i sh -c 'sleep 1000 & echo $$ $!; wait' > \"$0\" &",
            out.to_str().unwrap(),
        ],
    );
    spec.stdout = Output::Null;
    let shell = reaper.spawn(&spec).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(shell.wait()).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let pids: Vec<u32> = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let pids: Vec<u32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(Instant::now() < end, "the orphan tree never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(reaper.kill_orphans() >= 2);
    let end = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < end, "orphans {pids:?} still run");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(kept.pid().unwrap()), "a task was killed");
    kept.terminate(1).unwrap();
    rt.block_on(kept.wait()).unwrap();
}
