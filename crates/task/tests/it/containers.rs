//! Containers in both backends: every case runs once with a cgroup and once
//! with process groups.

use resmon_task::{Containers, Rights, STILL_ACTIVE};
use rustix::process::Signal;

use crate::util::{
    count_comm, eventually, proc_info, reaped, running, spawn_in, until_comm, within, Backend,
    Fixture,
};

/// Runs each case as `cgroup::<case>` and `process_groups::<case>`.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod cgroup {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::util::Backend::Cgroup, concat!("cg-", stringify!($case))).await
                }
            )*
        }
        mod process_groups {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::util::Backend::ProcessGroups, concat!("pg-", stringify!($case))).await
                }
            )*
        }
    };
}

both_backends!(
    kill_all_reaches_setsid_and_double_forked_descendants,
    kill_all_kills_a_100_process_tree,
    signal_all_delivers_sigterm,
    wait_empty_resolves_when_the_last_process_exits,
    a_tree_task_terminates_the_whole_container,
    a_tree_task_is_signaled_when_the_container_empties,
    leftovers_are_found_by_name,
);

async fn leftovers_are_found_by_name(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    let _main = spawn_in(c, "exec sleep 1000");
    until_comm(c, "sleep", 1).await;
    let names = |keep: &[&str]| -> Vec<String> {
        fx.containers
            .leftovers(keep)
            .iter()
            .map(|l| l.name().to_owned())
            .collect()
    };
    // Other tests of this process may have containers too: look for ours.
    assert!(names(&[]).iter().any(|n| n == c.name()), "{:?}", names(&[]));
    assert!(!names(&[c.name()]).iter().any(|n| n == c.name()));
    let found = fx.containers.leftovers(&[]);
    let ours = found.iter().find(|l| l.name() == c.name()).unwrap();
    assert_eq!(ours.pids(), c.pids());
}

async fn kill_all_reaches_setsid_and_double_forked_descendants(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    let main = spawn_in(c, "setsid sh -c 'sleep 1000 & sleep 1000' & sleep 1000");
    until_comm(c, "sleep", 3).await;
    let pids = c.pids();
    assert!(pids.contains(&main.pid().unwrap()), "{pids:?}");
    // One of them escaped into a session of its own.
    let sessions: std::collections::HashSet<u32> = pids
        .iter()
        .filter_map(|&p| resmon_test_support::stat(p))
        .map(|s| s.session)
        .collect();
    assert!(
        sessions.len() >= 2,
        "expected a setsid descendant: {sessions:?}"
    );

    c.kill_all().unwrap();
    within("the container to empty", c.wait_empty()).await;
    // Empty means reaped too: no zombie is left behind.
    let unreaped: Vec<u32> = pids.iter().copied().filter(|p| !reaped(*p)).collect();
    assert!(unreaped.is_empty(), "not reaped: {unreaped:?}");
    assert!(c.is_empty());
    assert!(c.pids().is_empty());
    assert_eq!(
        within("the main process", main.wait()).await.unwrap(),
        128 + 9
    );
    eventually("every process reaped", || pids.iter().all(|p| reaped(*p))).await;
}

async fn kill_all_kills_a_100_process_tree(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    // 10 subshells with 9 sleeps each, plus the main shell: 100 processes.
    let main = spawn_in(
        c,
        "for i in $(seq 10); do (for j in $(seq 9); do sleep 1000 & done; wait) & done; wait",
    );
    until_comm(c, "sleep", 90).await;
    let pids = c.pids();
    assert_eq!(pids.len(), 101, "main shell, 10 subshells, 90 sleeps");
    c.kill_all().unwrap();
    within("the container to empty", c.wait_empty()).await;
    let unreaped: Vec<u32> = pids.iter().copied().filter(|p| !reaped(*p)).collect();
    assert!(unreaped.is_empty(), "not reaped: {unreaped:?}");
    assert!(c.pids().is_empty());
    assert_eq!(within("the main process", main.wait()).await.unwrap(), 137);
    eventually("every process reaped", || pids.iter().all(|p| reaped(*p))).await;
}

async fn signal_all_delivers_sigterm(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    let main = spawn_in(c, "trap 'exit 42' TERM; sleep 1000 & wait");
    until_comm(c, "sleep", 1).await;
    c.signal_all(Signal::TERM).unwrap();
    // The shell ran its TERM trap; the sleep died of SIGTERM.
    assert_eq!(within("the shell", main.wait()).await.unwrap(), 42);
    within("the container to empty", c.wait_empty()).await;
}

async fn wait_empty_resolves_when_the_last_process_exits(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = fx.container.clone();
    let main = spawn_in(&c, "exec sleep 1000");
    until_comm(&c, "sleep", 1).await;
    assert!(!c.is_empty());
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.wait_empty().await })
    };
    assert!(!waiter.is_finished());
    // Not kill_all: the process ends through its own handle.
    main.terminate(1).unwrap();
    within("wait_empty", waiter).await.unwrap();
    assert!(c.is_empty());
    assert_eq!(main.wait().await.unwrap(), 1);
}

async fn a_tree_task_terminates_the_whole_container(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    let main = spawn_in(c, "sleep 1000 & setsid sleep 1000 & wait");
    until_comm(c, "sleep", 2).await;
    let tree = c.task();
    assert_eq!(tree.pid(), None);
    assert_eq!(tree.exit_code().unwrap(), STILL_ACTIVE);
    assert!(!tree.is_signaled());

    let observer = tree.duplicate(Rights::QUERY | Rights::SYNCHRONIZE).unwrap();
    assert!(observer.terminate(1).is_err());
    assert_eq!(
        count_comm(c, "sleep"),
        2,
        "a denied terminate kills nothing"
    );

    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let t = observer.clone();
            tokio::spawn(async move { t.wait().await.unwrap() })
        })
        .collect();
    tree.terminate(77).unwrap();
    tree.terminate(5).unwrap();
    for w in waiters {
        assert_eq!(within("a tree waiter", w).await.unwrap(), 77);
    }
    assert!(c.is_empty());
    assert!(tree.is_signaled());
    assert_eq!(tree.exit_code().unwrap(), 77);
    // Another handle from the container is the same task while this one lives.
    assert_eq!(c.task().exit_code().unwrap(), 77);
    assert_eq!(within("the main process", main.wait()).await.unwrap(), 137);
}

async fn a_tree_task_is_signaled_when_the_container_empties(backend: Backend, test: &str) {
    let Some(fx) = Fixture::new(backend, test) else {
        return;
    };
    let c = &fx.container;
    let main = spawn_in(c, "exec sleep 1000");
    until_comm(c, "sleep", 1).await;
    let tree = c.task();
    let waiter = {
        let t = tree.clone();
        tokio::spawn(async move { t.wait().await.unwrap() })
    };
    main.terminate(3).unwrap();
    // Emptied by itself (nobody terminated the tree): exit code 0.
    assert_eq!(within("the tree task", waiter).await.unwrap(), 0);
    assert_eq!(tree.exit_code().unwrap(), 0);
    tree.terminate(9).unwrap();
    assert_eq!(tree.exit_code().unwrap(), 0);
}

#[tokio::test]
async fn cgroup_children_start_inside_their_cgroup() {
    let Some(fx) = Fixture::new(Backend::Cgroup, "cg-inside") else {
        return;
    };
    let c = &fx.container;
    let dir = c.scope().cgroup.unwrap();
    let main = spawn_in(c, "exec sleep 1000");
    let pid = main.pid().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(dir.ends_with(v2.trim_start_matches('/')), "{dir:?} vs {v2}");
    assert_eq!(c.pids(), vec![pid]);
    // On x86-64 from Linux 5.7 the child is born there (clone3 with
    // CLONE_INTO_CGROUP) instead of moving itself in.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .split(|ch: char| !ch.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    let kernel: (u32, u32) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    if cfg!(all(target_arch = "x86_64", target_env = "gnu")) && kernel >= (5, 7) {
        assert_eq!(
            resmon_task::children_born_in_cgroup(),
            Some(true),
            "kernel {release}"
        );
        // As root, in a cgroup namespace of its own: its cgroup is its "/".
        if rustix::process::geteuid().is_root() {
            let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/cgroup")).unwrap();
            assert_ne!(ns(&pid.to_string()), ns("self"));
        }
    } else {
        assert!(resmon_task::children_born_in_cgroup().is_some());
    }

    // A second container for the same name reuses the directory only if it
    // is empty.
    let err = fx.containers.create(c.name()).unwrap_err();
    assert!(err.to_string().contains("still holds processes"), "{err}");
    main.terminate(1).unwrap();
    main.wait().await.unwrap();
    within("the container to empty", c.wait_empty()).await;
    let again = fx.containers.create(c.name()).unwrap();
    assert_eq!(again.scope().cgroup.as_deref(), Some(dir.as_path()));
}

#[tokio::test]
async fn cgroup_children_run_after_their_cgroup_was_killed() {
    let Some(fx) = Fixture::new(Backend::Cgroup, "cg-killed") else {
        return;
    };
    let c = &fx.container;
    let dir = c.scope().cgroup.unwrap();
    // Killed by the monitor: emptied, then renewed, and the next child is
    // born into it and runs.
    let first = spawn_in(c, "exec sleep 1000");
    c.kill_all().unwrap();
    within("the container to empty", c.wait_empty()).await;
    within("the first child's end", first.wait()).await.unwrap();
    let second = spawn_in(c, "exec sleep 1000");
    let pid = second.pid().unwrap();
    assert!(running(pid), "the child was killed at birth");
    assert_eq!(c.pids(), vec![pid]);

    // Killed from outside (another process wrote cgroup.kill): the next
    // child still runs.
    std::fs::write(dir.join("cgroup.kill"), "1").unwrap();
    within("the container to empty", c.wait_empty()).await;
    let third = spawn_in(c, "exec sleep 1000");
    let pid = third.pid().unwrap();
    assert!(running(pid), "the child was killed at birth");
    assert_eq!(c.pids(), vec![pid]);
    third.terminate(1).unwrap();
    within("the third child's end", third.wait()).await.unwrap();
}

#[tokio::test]
async fn cgroup_detect_reports_the_backend() {
    let Some(fx) = Fixture::new(Backend::Cgroup, "cg-detect") else {
        return;
    };
    let desc = fx.containers.backend_description();
    assert!(desc.starts_with("cgroup v2 at /"), "{desc}");
    assert!(desc.contains("resmon-test-cg-detect-"), "{desc}");
    assert!(fx.container.scope().marker.1.ends_with(fx.container.name()));

    let pg = Containers::process_groups();
    assert!(!pg.uses_cgroups());
    assert!(pg.backend_description().starts_with("process groups ("));
    let c = pg.create("x").unwrap();
    assert_eq!(c.scope().cgroup, None);
    assert_eq!(
        c.scope().marker,
        (
            "RESMON_RESOURCE".to_owned(),
            format!("{}/x", std::process::id())
        )
    );
    assert!(c.is_empty() && c.pids().is_empty());
    c.remove().unwrap();
}

#[tokio::test]
async fn process_group_containers_keep_to_their_own_processes() {
    // Two resources side by side: killing one leaves the other alone.
    let Some(a) = Fixture::new(Backend::ProcessGroups, "pg-own-a") else {
        return;
    };
    let Some(b) = Fixture::new(Backend::ProcessGroups, "pg-own-b") else {
        return;
    };
    let main_a = spawn_in(&a.container, "sleep 1000 & wait");
    let main_b = spawn_in(&b.container, "sleep 1000 & wait");
    eventually("both sleeps", || {
        count_comm(&a.container, "sleep") == 1 && count_comm(&b.container, "sleep") == 1
    })
    .await;
    a.container.kill_all().unwrap();
    assert_eq!(within("a", main_a.wait()).await.unwrap(), 137);
    assert!(!main_b.is_signaled());
    assert_eq!(b.container.pids().len(), 2);
    assert!(b.container.pids().iter().all(|p| proc_info(*p).is_some()));
}
