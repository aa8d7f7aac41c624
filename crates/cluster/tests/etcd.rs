//! Members against a real etcd (the `etcd` binary, started by the testkit
//! on loopback). Leases are 2 s, etcd's smallest, to keep the cases quick.

use std::time::{Duration, Instant};

use resmon_cluster::testkit::{etcd_available, EtcdCluster};
use resmon_cluster::{BootInstant, Change, Claim, Error, Member, Settings};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A 1-member cluster, or `None` (with a note) where `etcd` is missing.
fn cluster(members: usize) -> Option<EtcdCluster> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if !etcd_available() {
        eprintln!("etcd is not installed: skipping (Debian: apt-get install etcd-server)");
        return None;
    }
    Some(EtcdCluster::start(members).expect("starting etcd"))
}

fn settings(cluster: &EtcdCluster, node: &str, test: &str) -> Settings {
    Settings::new(node, cluster.endpoints())
        .with_lease_ttl(Duration::from_secs(2))
        .with_key_prefix(format!("/test/{test}"))
}

async fn join(cluster: &EtcdCluster, node: &str, test: &str) -> Member {
    Member::join(settings(cluster, node, test))
        .await
        .unwrap_or_else(|e| panic!("joining as {node}: {e}"))
}

/// Polls `cond` until it is `Some`, failing the test after [`DEADLINE`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next(w: &mut resmon_cluster::etcd::Watch) -> Change {
    within("a change", w.next()).await.unwrap()
}

/// The next change, applied to `view` too.
async fn next_into(
    w: &mut resmon_cluster::etcd::Watch,
    view: &mut resmon_cluster::ClusterView,
) -> Change {
    let c = next(w).await;
    view.apply(&c);
    c
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_members_exactly_one_wins_and_the_token_is_the_create_revision() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "race").await;
    let b = join(&etcd, "b", "race").await;
    for i in 0..10 {
        let group = format!("g{i}");
        let (ra, rb) = tokio::join!(a.acquire(&group), b.acquire(&group));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let (won, held, winner) = match (&ra, &rb) {
            (Claim::Won(w), Claim::Held(h)) => (w, h, "a"),
            (Claim::Held(h), Claim::Won(w)) => (w, h, "b"),
            other => panic!("{group}: not exactly one winner: {other:?}"),
        };
        let owner = a.owner(&group).await.unwrap().expect("an owner key");
        assert_eq!(owner.node, winner);
        assert_eq!(won.token, owner.token, "the token is the create_revision");
        assert_eq!(held.token, owner.token);
        assert_eq!(held.node, winner);
        // Asking again changes nothing: the winner still wins, same token.
        let again = if winner == "a" { &a } else { &b };
        assert_eq!(
            again.acquire(&group).await.unwrap(),
            Claim::Won(won.clone())
        );
    }
    assert_eq!(a.view().await.unwrap().owners.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_of_the_same_name_is_refused() {
    let Some(etcd) = cluster(1) else { return };
    let _a = join(&etcd, "a", "twice").await;
    let e = Member::join(settings(&etcd, "a", "twice"))
        .await
        .unwrap_err();
    assert!(e.is_node_taken(), "{e}");
    let text = e.to_string();
    assert!(text.contains("/test/twice/nodes/a"), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains("expires in"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_advances_with_renewals_and_stays_before_send_plus_ttl() {
    let Some(etcd) = cluster(1) else { return };
    let before_join = BootInstant::now();
    let a = join(&etcd, "a", "deadline").await;
    let s = a.settings().clone();
    let mut state = a.lease_state();
    let mut last = state
        .borrow_and_update()
        .may_run_until
        .expect("a deadline after join");
    assert!(last >= before_join + s.lease_ttl - s.margin);
    let mut advanced = 0;
    while advanced < 4 {
        within("a renewal", state.changed()).await.unwrap();
        let observed = BootInstant::now();
        let current = state.borrow_and_update().clone();
        assert_eq!(current.lost, None);
        let until = current.may_run_until.expect("a deadline");
        // Only a renewal sent before now can have proved it.
        assert!(
            until <= observed + s.lease_ttl - s.margin,
            "{until} is later than now + TTL - margin"
        );
        assert!(until > last, "did not advance: {last} -> {until}");
        assert!(!until.has_passed());
        last = until;
        advanced += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_owners_lease_expires_another_takes_over_with_a_larger_token() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "expire").await;
    let b = join(&etcd, "b", "expire").await;
    let first = a.acquire("g").await.unwrap().won().expect("a wins");
    assert!(matches!(b.acquire("g").await.unwrap(), Claim::Held(o) if o.node == "a"));
    // a freezes: no more renewals.
    a.pause_renewals(true);
    let a_state = a.lease_state();
    let second = eventually("b to take the group", || async {
        b.acquire("g").await.unwrap().won()
    })
    .await;
    // The safety rule: by the time b could win, a's deadline had passed.
    let a_until = a_state.borrow().may_run_until;
    assert!(
        a_until.is_none_or(|u| u.has_passed()),
        "b won while a may still run until {a_until:?}"
    );
    assert!(second.token > first.token, "{second:?} after {first:?}");
    let mut a_state = a.lease_state();
    let lost = within("a to see its loss", a_state.wait_for(|s| s.lost.is_some()))
        .await
        .unwrap()
        .clone();
    assert_eq!(lost.may_run_until, None);
    assert!(matches!(a.acquire("h").await, Err(Error::LeaseLost(_))));
    // a's stale ownership cannot be released over b's.
    assert!(!b.release(&first).await.unwrap());
    assert_eq!(b.owner("g").await.unwrap().unwrap().node, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_from_outside_is_lost_promptly() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "revoke").await;
    a.acquire("g").await.unwrap().won().unwrap();
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    let revoked = Instant::now();
    raw.lease_revoke(a.lease_id()).await.unwrap();
    let mut state = a.lease_state();
    let lost = within("the loss", state.wait_for(|s| s.lost.is_some()))
        .await
        .unwrap()
        .clone();
    // The node key's deletion is watched: no need to wait for a renewal.
    assert!(
        revoked.elapsed() < a.settings().renew_interval(),
        "seen after {:?}",
        revoked.elapsed()
    );
    assert!(lost.lost.unwrap().contains("revoked"));
    assert_eq!(lost.may_run_until, None);
    assert_eq!(
        a.owner("g").await.unwrap(),
        None,
        "the owner key went with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_deletes_only_the_ownership_it_names() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "release").await;
    let b = join(&etcd, "b", "release").await;
    let mine = a.acquire("g").await.unwrap().won().unwrap();
    assert!(a.release(&mine).await.unwrap());
    assert!(!a.release(&mine).await.unwrap(), "already released");
    let theirs = b.acquire("g").await.unwrap().won().unwrap();
    assert!(theirs.token > mine.token);
    assert!(!a.release(&mine).await.unwrap());
    assert_eq!(a.owner("g").await.unwrap().unwrap().token, theirs.token);
}

/// The endpoints of a 3-member cluster with a follower first (the one
/// members talk to until it fails), and that follower's index.
fn follower_first(etcd: &EtcdCluster) -> (Vec<String>, usize) {
    let leader = etcd.wait_leader(DEADLINE).unwrap();
    let follower = (0..etcd.len()).find(|&i| i != leader).unwrap();
    let mut endpoints = vec![etcd.endpoint(follower)];
    endpoints.extend(
        (0..etcd.len())
            .filter(|&i| i != follower)
            .map(|i| etcd.endpoint(i)),
    );
    (endpoints, follower)
}

async fn join_at(endpoints: &[String], node: &str, test: &str) -> Member {
    let s = Settings::new(node, endpoints.to_vec())
        .with_lease_ttl(Duration::from_secs(2))
        .with_key_prefix(format!("/test/{test}"));
    Member::join(s)
        .await
        .unwrap_or_else(|e| panic!("joining as {node}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_with_a_member_killed_still_serves_at_once() {
    let Some(mut etcd) = cluster(3) else { return };
    let (endpoints, follower) = follower_first(&etcd);
    let a = join_at(&endpoints, "a", "three").await;
    let b = join_at(&endpoints, "b", "three").await;
    a.acquire("before").await.unwrap().won().unwrap();
    // The member both nodes talk to dies.
    etcd.kill(follower);
    // Every request still gets through at once, on the members left.
    for i in 0..5 {
        let group = format!("g{i}");
        let claim = a.acquire(&group).await.unwrap();
        assert!(matches!(claim, Claim::Won(_)), "{claim:?}");
        assert!(matches!(b.acquire(&group).await.unwrap(), Claim::Held(o) if o.node == "a"));
    }
    // And the leases live on through renewals on the other members.
    let mut state = a.lease_state();
    for _ in 0..6 {
        within("a renewal", state.changed()).await.unwrap();
        assert_eq!(state.borrow().lost, None);
    }
    assert_eq!(b.lease_state().borrow().lost, None);
    etcd.restart(follower).unwrap();
    a.acquire("after").await.unwrap().won().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_a_new_one_serves() {
    let Some(mut etcd) = cluster(3) else { return };
    let leader = etcd.wait_leader(DEADLINE).unwrap();
    let endpoints = etcd.endpoints();
    etcd.kill(leader);
    // Until the others elect a leader, requests fail; then they work. A
    // node that joins now has a lease that holds.
    let a = eventually("a join", || async {
        let s = Settings::new("a", endpoints.clone())
            .with_lease_ttl(Duration::from_secs(2))
            .with_key_prefix("/test/leader");
        Member::join(s).await.ok()
    })
    .await;
    let claim = a.acquire("g").await.unwrap();
    assert!(matches!(claim, Claim::Won(_)), "{claim:?}");
    let mut state = a.lease_state();
    for _ in 0..4 {
        within("a renewal", state.changed()).await.unwrap();
        assert_eq!(state.borrow().lost, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_left_for_the_others_without_losing_the_lease() {
    let Some(etcd) = cluster(3) else { return };
    let (endpoints, follower) = follower_first(&etcd);
    let a = join_at(&endpoints, "a", "frozen").await;
    let mut state = a.lease_state();
    // The member a talks to stops answering but keeps its connections.
    etcd.freeze(follower);
    let claim = a.acquire("g").await.unwrap();
    assert!(matches!(claim, Claim::Won(_)), "{claim:?}");
    for _ in 0..6 {
        within("a renewal", state.changed()).await.unwrap();
        assert_eq!(state.borrow().lost, None, "lost the lease");
    }
    etcd.thaw(follower);
}

/// A member with a [`Watch`] running keeps one watch stream in all: the
/// keeper drops its own watch of the node key, and the Watch tells it
/// when the key goes (here with renewals paused, so that only a watch can
/// tell, and the reason says which one did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_watch_running_the_node_keeps_one_watch_and_still_sees_a_revoke() {
    let Some(etcd) = cluster(1) else { return };
    let watchers = || etcd.metric(0, "etcd_debugging_mvcc_watcher_total");
    let a = join(&etcd, "a", "one-watch").await;
    eventually("the keeper's own watch", || async {
        (watchers() == Some(1.0)).then_some(())
    })
    .await;
    let (_, mut watch) = a.watch().await.unwrap();
    let (seen, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let follow = tokio::spawn(async move {
        loop {
            if let Ok(c) = watch.next().await {
                let _ = seen.send(c);
            }
        }
    });
    // The Watch's stream is open once it brings a change.
    a.acquire("g").await.unwrap().won().unwrap();
    within("the owner change", async {
        while !matches!(changes.recv().await, Some(Change::Owner { .. }) | None) {}
    })
    .await;
    eventually("the Watch's stream alone", || async {
        (watchers() == Some(1.0)).then_some(())
    })
    .await;
    a.pause_renewals(true);
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    raw.lease_revoke(a.lease_id()).await.unwrap();
    let mut state = a.lease_state();
    let lost = within("the loss", state.wait_for(|s| s.lost.is_some()))
        .await
        .unwrap()
        .lost
        .clone()
        .unwrap();
    assert!(lost.contains("seen by the cluster watch"), "{lost}");
    follow.abort();
    let _ = follow.await;
}

/// The watch follows the renewals off a member that stops answering: it
/// brings a change made meanwhile before its own silence check (a whole
/// TTL without a message) could even have begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_frozen_member_follows_the_renewals_to_another() {
    let Some(etcd) = cluster(3) else { return };
    let ttl = Duration::from_secs(4);
    let (endpoints, follower) = follower_first(&etcd);
    let settings = |node: &str, endpoints: &[String]| {
        Settings::new(node, endpoints.to_vec())
            .with_lease_ttl(ttl)
            .with_key_prefix("/test/follow")
    };
    let a = Member::join(settings("a", &endpoints)).await.unwrap();
    let (_, mut watch) = a.watch().await.unwrap();
    let others: Vec<String> = endpoints[1..].to_vec();
    let b = Member::join(settings("b", &others)).await.unwrap();
    assert!(matches!(next(&mut watch).await, Change::Node { node, .. } if node == "b"));
    etcd.freeze(follower);
    let frozen = Instant::now();
    let own = b.acquire("g").await.unwrap().won().unwrap();
    let change = within("the owner change", async {
        loop {
            match watch.next().await {
                Ok(c @ Change::Owner { .. }) => return c,
                Ok(_) | Err(_) => continue,
            }
        }
    })
    .await;
    let took = frozen.elapsed();
    etcd.thaw(follower);
    assert!(
        matches!(&change, Change::Owner { owner: Some(o), .. } if o.token == own.token),
        "{change:?}"
    );
    assert!(
        took < ttl,
        "the watch stayed on the frozen member for {took:?} (the renewals left it within the TTL, or the lease would be lost)"
    );
    assert_eq!(a.lease_state().borrow().lost, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reports_owners_nodes_targets_and_failed_marks() {
    let Some(etcd) = cluster(1) else { return };
    let observer = join(&etcd, "observer", "watch").await;
    let (view, mut watch) = observer.watch().await.unwrap();
    // A view kept current by the changes alone matches a fresh read.
    let mut mirror = view.clone();
    let same = |mirror: &resmon_cluster::ClusterView, read: resmon_cluster::ClusterView| {
        let mut m = mirror.clone();
        m.revision = read.revision;
        assert_eq!(m, read);
    };
    assert!(view.nodes.contains_key("observer"));
    assert!(view.owners.is_empty());
    let a = join(&etcd, "a", "watch").await;
    assert!(
        matches!(next_into(&mut watch, &mut mirror).await, Change::Node { node, present: true, .. } if node == "a")
    );
    let own = a.acquire("g").await.unwrap().won().unwrap();
    match next_into(&mut watch, &mut mirror).await {
        Change::Owner {
            group,
            owner: Some(o),
            previous: None,
            ..
        } => {
            assert_eq!(group, "g");
            assert_eq!((o.node.as_str(), o.token), ("a", own.token));
        }
        other => panic!("{other:?}"),
    }
    a.set_target("g", "observer").await.unwrap();
    assert!(
        matches!(next_into(&mut watch, &mut mirror).await, Change::Target { node: Some(n), .. } if n == "observer")
    );
    assert_eq!(a.target("g").await.unwrap().as_deref(), Some("observer"));
    a.clear_target("g").await.unwrap();
    assert!(matches!(
        next_into(&mut watch, &mut mirror).await,
        Change::Target { node: None, .. }
    ));
    a.mark_failed("g").await.unwrap();
    assert!(
        matches!(next_into(&mut watch, &mut mirror).await, Change::Failed { node, present: true, .. } if node == "a")
    );
    a.record_failovers("g", &[1, 2]).await.unwrap();
    assert!(matches!(
        next_into(&mut watch, &mut mirror).await,
        Change::Failovers { times, .. } if times == [1, 2]
    ));
    let view = observer.view().await.unwrap();
    same(&mirror, view.clone());
    assert_eq!(view.failovers.get("g"), Some(&vec![1, 2]));
    assert_eq!(view.failed.get("g"), Some(&vec!["a".to_owned()]));
    assert_eq!(view.owners.get("g").map(|o| o.token), Some(own.token));

    // Leaving revokes the lease: the owner key, the failed mark and the
    // node key go with it, and the watch says so.
    a.leave().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(next_into(&mut watch, &mut mirror).await);
    }
    assert!(seen.iter().any(|c| matches!(c,
        Change::Owner { owner: None, previous: Some(p), .. } if p.node == "a" && p.token == own.token)));
    assert!(seen
        .iter()
        .any(|c| matches!(c, Change::Node { node, present: false, .. } if node == "a")));
    assert!(seen
        .iter()
        .any(|c| matches!(c, Change::Failed { present: false, .. })));
    assert!(!observer.view().await.unwrap().failed.contains_key("g"));
    same(&mirror, observer.view().await.unwrap());
    // An owner change older than what the view holds is skipped.
    let mut held = mirror.clone();
    let mine = resmon_cluster::Owner {
        group: "h".into(),
        node: "observer".into(),
        token: 50,
        mod_revision: 50,
        lease: 1,
    };
    held.owners.insert("h".into(), mine.clone());
    held.apply(&Change::Owner {
        group: "h".into(),
        owner: None,
        previous: None,
        revision: 49,
    });
    assert_eq!(held.owners.get("h"), Some(&mine));
    held.apply(&Change::Owner {
        group: "h".into(),
        owner: None,
        previous: None,
        revision: 51,
    });
    assert_eq!(held.owners.get("h"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_lists_the_live_members_with_their_lease() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "nodes").await;
    let b = join(&etcd, "b", "nodes").await;
    let nodes = a.nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    for n in &nodes {
        let record = n.record.as_ref().unwrap();
        assert_eq!(record.node, n.node);
        assert_eq!(record.pid, std::process::id());
        assert!(n.ttl_remaining.unwrap() <= Duration::from_secs(2));
    }
    assert_eq!(nodes[1].lease, b.lease_id());
    b.leave().await.unwrap();
    let names: Vec<String> = a
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(names, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_an_unreachable_etcd_fails_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let s = Settings::new("a", vec![endpoint.clone()]).with_lease_ttl(Duration::from_secs(2));
    let start = Instant::now();
    let e = Member::join(s).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains(&endpoint), "{e}");
    let bad = Settings::new("a b", vec![]);
    let e = Member::join(bad).await.unwrap_err();
    assert!(matches!(e, Error::Settings(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_sends_the_whole_state_again() {
    let Some(etcd) = cluster(1) else { return };
    let observer = join(&etcd, "observer", "compact").await;
    // The watch opens its stream on the first next(): from the revision
    // read, which the compaction below removes from etcd's history.
    let (view, mut watch) = observer.watch().await.unwrap();
    let mut mirror = view.clone();
    let a = join(&etcd, "a", "compact").await;
    let own = a.acquire("g").await.unwrap().won().unwrap();
    a.set_target("g", "observer").await.unwrap();
    let now = observer.view().await.unwrap();
    let mut client = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    client
        .compact(
            now.revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    let change = next_into(&mut watch, &mut mirror).await;
    let Change::Resync(all) = &change else {
        panic!("expected the whole state again, got {change:?}")
    };
    assert!(all.revision >= now.revision);
    assert_eq!(all.owners.get("g").map(|o| o.token), Some(own.token));
    assert_eq!(all.targets.get("g").map(String::as_str), Some("observer"));
    assert!(all.nodes.contains_key("a"));
    // And the watch goes on from there.
    a.clear_target("g").await.unwrap();
    assert!(matches!(
        next_into(&mut watch, &mut mirror).await,
        Change::Target { node: None, .. }
    ));
    let mut fresh = observer.view().await.unwrap();
    fresh.revision = mirror.revision;
    assert_eq!(mirror, fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_resumes_its_lease_and_keeps_its_groups_and_tokens() {
    let Some(etcd) = cluster(1) else { return };
    let a = join(&etcd, "a", "resume").await;
    let own = a.acquire("g").await.unwrap().won().unwrap();
    let lease = a.lease_id();
    let ttl = a.settings().lease_ttl;
    // The monitor dies: its renewals stop, the lease lives on in etcd.
    drop(a);
    let died = Instant::now();
    let a = Member::resume(settings(&etcd, "a", "resume"), lease)
        .await
        .unwrap();
    assert_eq!(a.lease_id(), lease);
    assert!(a.lease_state().borrow().may_run_until.is_some());
    let owned = a.owned().await.unwrap();
    assert_eq!(owned, vec![own.clone()]);
    // Taking it again is a no-op that keeps the token.
    let again = a.acquire("g").await.unwrap().won().unwrap();
    assert_eq!(again.token, own.token);
    // Renewed: the owner key outlives the lease the old monitor left.
    let mut state = a.lease_state();
    while died.elapsed() < ttl * 2 {
        within("a renewal", state.changed()).await.unwrap();
        assert_eq!(state.borrow_and_update().lost, None);
    }
    let owner = a.owner("g").await.unwrap().expect("still owned");
    assert_eq!((owner.node.as_str(), owner.token), ("a", own.token));
    // The node key holds this process's record now.
    let nodes = a.nodes().await.unwrap();
    assert_eq!(
        nodes[0].record.as_ref().map(|r| r.pid),
        Some(std::process::id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_lease_that_is_gone_or_not_this_nodes_fails_naming_it() {
    let Some(etcd) = cluster(1) else { return };
    let b = join(&etcd, "b", "noresume").await;
    // Another node's lease: it does not hold a's node key.
    let e = Member::resume(settings(&etcd, "a", "noresume"), b.lease_id())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost(_)), "{e}");
    assert!(
        e.to_string()
            .contains("no longer holds node key /test/noresume/nodes/a"),
        "{e}"
    );
    // A lease that was revoked.
    let lease = b.lease_id();
    b.leave().await.unwrap();
    let e = Member::resume(settings(&etcd, "b", "noresume"), lease)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost(_)), "{e}");
    assert!(e.to_string().contains("expired or was revoked"), "{e}");
    // A lease id etcd never granted.
    let e = Member::resume(settings(&etcd, "b", "noresume"), 0x1234_5678)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost(_)), "{e}");
}
