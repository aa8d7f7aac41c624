//! Cluster mode end to end: three etcd members (`--pre-vote`) and three
//! real `resmon serve` nodes, each pair in a network namespace of its own
//! joined by a bridge in another (or all on loopback where namespaces
//! cannot be made), under faults: a partitioned node, a frozen monitor
//! (SIGSTOP), a killed monitor (SIGKILL), a killed etcd member, a restarted
//! node, a move.
//!
//! Every group's resource is a heartbeat process (this test binary run
//! again, [`heartbeat_process`]) that appends `CLOCK_BOOTTIME` nanoseconds
//! and its fencing token to a file of its node every few milliseconds. All
//! nodes share the machine's clock, so the checker can assert that no two
//! owners' heartbeats of a group ever interleave: a group never ran on two
//! nodes at once.
//!
//! `RESMON_CLUSTER_RUNS` sets how many randomized runs
//! `randomized_faults_never_run_a_group_twice` makes (20 by default;
//! `scripts/chaos` makes 100), `RESMON_CLUSTER_SEED` replays one. The
//! failover benchmark is `failover_time` (ignored; `scripts/bench-failover`;
//! `RESMON_FAILOVER_RUNS`, `RESMON_FAILOVER_CASES`, `RESMON_FAILOVER_GRACE`).

#![cfg(feature = "etcd")]

mod common;

use common::{http_on, sample, serve, wait_for, BIN};
use resmon_cluster::BootInstant;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;

/// The cluster tests run one at a time: each starts three etcd members and
/// three nodes, which is what this machine's cores can take at once (and
/// on loopback they would share ports).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
const GROUPS: [&str; 2] = ["alpha", "beta"];
/// Selects [`heartbeat_process`]: the file to append to.
const HEARTBEAT_ENV: &str = "RESMON_TEST_HEARTBEAT";
/// How often it beats, in milliseconds (5 by default).
const HEARTBEAT_MS_ENV: &str = "RESMON_TEST_HEARTBEAT_MS";

/// Not a test of its own: the heartbeat every group's resource runs,
/// `CLOCK_BOOTTIME` ns and the fencing token, one line per beat. Without
/// the variable it does nothing. Rust rather than a script, so that a
/// hundred of them start fast and cost little.
#[test]
fn heartbeat_process() {
    use std::io::Write;
    let Some(file) = std::env::var_os(HEARTBEAT_ENV) else {
        return;
    };
    let every = std::env::var(HEARTBEAT_MS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(5), Duration::from_millis);
    let token = std::env::var("RESMON_FENCING_TOKEN").unwrap_or_else(|_| "0".into());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .expect("opening the heartbeat file");
    loop {
        // One write per line: lines never interleave.
        f.write_all(format!("{} {token}\n", boottime_ns()).as_bytes())
            .expect("writing a heartbeat");
        std::thread::sleep(every);
    }
}

/// The `command` of a resource that beats into `file` every `every_ms`.
fn heartbeat_command(file: &Path, every_ms: u64) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    format!(
        "[\"env\", \"{HEARTBEAT_ENV}={}\", \"{HEARTBEAT_MS_ENV}={every_ms}\", \"{}\", \"heartbeat_process\", \"--exact\", \"--nocapture\", \"--test-threads=1\", \"-q\"]",
        file.display(),
        exe.display()
    )
}

fn boottime_ns() -> u64 {
    BootInstant::now().as_nanos()
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sig(pid: u32, s: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, s);
    }
}

/// Where the nodes live: network namespaces, or loopback.
struct Net {
    tag: String,
    /// Namespace names per node, and the bridge's; `None` on loopback.
    netns: Option<(Vec<String>, String)>,
}

impl Net {
    fn new() -> Net {
        let tag = format!("rsm{}", std::process::id() % 100_000);
        let root = rustix::process::geteuid().is_root();
        if root && std::env::var_os("RESMON_CLUSTER_LOOPBACK").is_none() {
            if let Some(n) = Net::namespaces(&tag) {
                return n;
            }
        }
        eprintln!("cluster test: network namespaces are not available; nodes share loopback (no partitions)");
        Net { tag, netns: None }
    }

    fn namespaces(tag: &str) -> Option<Net> {
        let br = format!("{tag}-br");
        let nodes: Vec<String> = (0..NODES).map(|i| format!("{tag}-n{i}")).collect();
        let net = Net {
            tag: tag.to_string(),
            netns: Some((nodes.clone(), br.clone())),
        };
        let mut ok = run("ip", &["netns", "add", &br])
            && run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])
            && run("ip", &["-n", &br, "link", "set", "br0", "up"]);
        for (i, ns) in nodes.iter().enumerate() {
            let (inner, outer) = (format!("va{i}"), format!("vb{i}"));
            let addr = format!("{}/24", Net::ns_addr(i));
            ok = ok
                && run("ip", &["netns", "add", ns])
                && run(
                    "ip",
                    &[
                        "-n", &br, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                        "netns", ns,
                    ],
                )
                && run(
                    "ip",
                    &["-n", &br, "link", "set", &outer, "master", "br0", "up"],
                )
                && run("ip", &["-n", ns, "addr", "add", &addr, "dev", &inner])
                && run("ip", &["-n", ns, "link", "set", &inner, "up"])
                && run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        if ok {
            Some(net)
        } else {
            drop(net);
            None
        }
    }

    /// The test's own addresses, inside the namespaces it made.
    fn ns_addr(i: usize) -> String {
        format!("10.213.7.{}", i + 1)
    }

    fn addr(&self, i: usize) -> String {
        match self.netns {
            Some(_) => Net::ns_addr(i),
            None => "127.0.0.1".into(),
        }
    }

    fn client_port(&self, i: usize) -> u16 {
        match self.netns {
            Some(_) => 2379,
            None => 24379 + 10 * i as u16,
        }
    }

    fn peer_port(&self, i: usize) -> u16 {
        match self.netns {
            Some(_) => 2380,
            None => 24380 + 10 * i as u16,
        }
    }

    /// A command that runs in node `i`'s namespace (only the network one:
    /// the mounts, and so the cgroup tree, stay the machine's).
    fn command(&self, i: usize, program: &str) -> Command {
        match &self.netns {
            Some((nodes, _)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", nodes[i]))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn can_partition(&self) -> bool {
        self.netns.is_some()
    }

    /// Cuts node `i` off (its link on the bridge down), or heals it.
    fn partition(&self, i: usize, cut: bool) {
        let (_, br) = self.netns.as_ref().expect("namespaces");
        let state = if cut { "down" } else { "up" };
        assert!(run(
            "ip",
            &["-n", br, "link", "set", &format!("vb{i}"), state]
        ));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some((nodes, br)) = &self.netns {
            for ns in nodes.iter().chain([br]) {
                run("ip", &["netns", "del", ns]);
            }
        }
        let _ = &self.tag;
    }
}

/// Three etcd members, one per node.
struct Etcd {
    dir: PathBuf,
    members: Vec<Option<Child>>,
}

impl Etcd {
    fn start(net: &Net, dir: &Path) -> Etcd {
        let mut e = Etcd {
            dir: dir.to_path_buf(),
            members: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            e.launch(net, i, "new");
        }
        let endpoints = (0..NODES)
            .map(|i| format!("http://{}:{}", net.addr(i), net.client_port(i)))
            .collect::<Vec<_>>()
            .join(",");
        wait_for(
            "the etcd cluster to be healthy",
            Duration::from_secs(30),
            || {
                net.command(0, "etcdctl")
                    .args(["--endpoints", &endpoints, "endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        e
    }

    fn launch(&mut self, net: &Net, i: usize, state: &str) {
        let name = format!("e{i}");
        let peers = (0..NODES)
            .map(|j| format!("e{j}=http://{}:{}", net.addr(j), net.peer_port(j)))
            .collect::<Vec<_>>()
            .join(",");
        let client = format!("http://{}:{}", net.addr(i), net.client_port(i));
        let mut listen = client.clone();
        if net.netns.is_some() {
            listen.push_str(&format!(",http://127.0.0.1:{}", net.client_port(i)));
        }
        let peer = format!("http://{}:{}", net.addr(i), net.peer_port(i));
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = net
            .command(i, "etcd")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(self.dir.join(&name))
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &peers])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &net.tag])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .arg("--pre-vote")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian: apt-get install etcd-server)");
        self.members[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}

/// One resmon node.
struct Node {
    i: usize,
    dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("resmon.sock")
    }

    /// `cluster_keys` go into `[cluster]`; `extra` at the end.
    fn write_config(&self, net: &Net, prefix: &str, beats: &Path, cluster_keys: &str, extra: &str) {
        let endpoints: Vec<String> = (0..NODES)
            .map(|j| {
                // Its own member first.
                let j = (self.i + j) % NODES;
                format!("\"http://{}:{}\"", net.addr(j), net.client_port(j))
            })
            .collect();
        // 2 s unless the test sets its own.
        let ttl = if cluster_keys.contains("lease_ttl") {
            ""
        } else {
            "lease_ttl = \"2s\"\n"
        };
        let mut text = format!(
            "[monitor]\nsocket = \"{}\"\nstate_dir = \"{}\"\n\n[cluster]\nnode = \"n{}\"\netcd = [{}]\n{ttl}key_prefix = \"{prefix}\"\n{cluster_keys}\n\n[defaults]\nterminate_timeout = \"1s\"\npending_timeout = \"2s\"\n",
            self.socket().display(),
            self.dir.join("state").display(),
            self.i,
            endpoints.join(", ")
        );
        text.push_str("\n[group.alpha]\npreferred_nodes = [\"n0\", \"n1\", \"n2\"]\n");
        text.push_str("\n[group.beta]\npreferred_nodes = [\"n2\", \"n1\"]\nfailback = true\n");
        for g in GROUPS {
            let file = beats.join(format!("{g}.n{}", self.i));
            text.push_str(&format!(
                "\n[[resource]]\nname = \"{g}\"\ngroup = \"{g}\"\ntype = \"process\"\ncommand = {}\n",
                heartbeat_command(&file, 5)
            ));
        }
        text.push_str(extra);
        std::fs::write(self.dir.join("resmon.toml"), text).unwrap();
    }

    fn launch(&mut self, net: &Net) {
        self.child = Some(serve(net.command(self.i, BIN), &self.dir, "info"));
        self.stopped = false;
        let sock = self.socket();
        wait_for("the node's socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// Waits until this node has joined the cluster.
    fn wait_member(&self, limit: Duration) {
        wait_for(&format!("n{} to join", self.i), limit, || {
            let out = self.cli(&["nodes", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["member"] == true)
        });
    }

    /// The monitor's pid (nsenter execs it, so the child is the monitor).
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (thawed first), then waits up to `limit` for the monitor
    /// to exit, and kills it if it did not. Whether it stopped on the
    /// SIGTERM.
    fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        sig(c.id(), rustix::process::Signal::CONT);
        sig(c.id(), rustix::process::Signal::TERM);
        let end = Instant::now() + limit;
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn stop(&mut self) {
        if !self.terminate(Duration::from_secs(30)) {
            panic!(
                "node n{} did not stop on SIGTERM:\n{}",
                self.i,
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run the CLI")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stopped as an operator would, so that it removes its cgroups;
        // killed if that takes too long.
        self.terminate(Duration::from_secs(20));
        // What a monitor killed during the test left: its fence guard
        // kills the processes; the empty cgroups are removed here.
        if let Ok(instance) = std::fs::read_to_string(self.dir.join("state/instance")) {
            for root in common::cgroups_named(&format!("resmon.{}", instance.trim())) {
                common::remove_cgroup_tree(&root);
            }
        }
    }
}

/// One heartbeat line.
#[derive(Clone, Copy, Debug)]
struct Beat {
    at: u64,
    node: usize,
    token: i64,
}

fn beats(dir: &Path, group: &str) -> Vec<Beat> {
    let mut out = Vec::new();
    for node in 0..NODES {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{group}.n{node}"))) else {
            continue;
        };
        for line in text.lines() {
            let mut it = line.split(' ');
            if let (Some(Ok(at)), Some(Ok(token))) = (
                it.next().map(str::parse::<u64>),
                it.next().map(str::parse::<i64>),
            ) {
                out.push(Beat { at, node, token });
            }
        }
    }
    out.sort_by_key(|b| b.at);
    out
}

/// Runs of one owner: (node, token) -> [first, last].
fn intervals(beats: &[Beat]) -> Vec<(usize, i64, u64, u64)> {
    let mut runs: BTreeMap<(usize, i64), (u64, u64)> = BTreeMap::new();
    for b in beats {
        let e = runs.entry((b.node, b.token)).or_insert((b.at, b.at));
        e.1 = e.1.max(b.at);
    }
    let mut v: Vec<_> = runs
        .into_iter()
        .map(|((n, t), (a, b))| (n, t, a, b))
        .collect();
    v.sort_by_key(|x| x.2);
    v
}

/// The checker: no two owners' runs of a group overlap, and later owners
/// hold larger fencing tokens.
fn check_no_overlap(dir: &Path) -> Result<usize, String> {
    check_groups(dir, &GROUPS)
}

/// [`check_no_overlap`] for `groups`.
fn check_groups(dir: &Path, groups: &[&str]) -> Result<usize, String> {
    let mut owners = 0;
    for &g in groups {
        let runs = intervals(&beats(dir, g));
        owners += runs.len();
        for w in runs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.2 <= a.3 {
                return Err(format!(
                    "group {g} ran twice: on n{} (token {}) until {} ns and on n{} (token {}) from {} ns, {:.1} ms of overlap",
                    a.0, a.1, a.3, b.0, b.1, b.2,
                    (a.3 - b.2) as f64 / 1e6
                ));
            }
            if b.1 <= a.1 {
                return Err(format!(
                    "group {g}: owner n{} got token {} after n{} had {}",
                    b.0, b.1, a.0, a.1
                ));
            }
        }
        if runs.iter().any(|r| r.1 <= 0) {
            return Err(format!("group {g} ran without a fencing token"));
        }
    }
    Ok(owners)
}

/// A whole cluster for one run.
struct Cluster {
    nodes: Vec<Node>,
    beats: PathBuf,
}

impl Cluster {
    fn start(net: &Net, root: &Path, run: usize) -> Cluster {
        Cluster::start_with(net, root, run, |_| String::new())
    }

    /// With `extra(i)` appended to node `i`'s config. The nodes take
    /// groups as soon as they join (`startup_wait = "0s"`): each test
    /// says where its groups go with preferences.
    fn start_with(net: &Net, root: &Path, run: usize, extra: impl Fn(usize) -> String) -> Cluster {
        Cluster::start_tuned(net, root, run, "startup_wait = \"0s\"", extra)
    }

    /// With `cluster_keys` in every node's `[cluster]`.
    fn start_tuned(
        net: &Net,
        root: &Path,
        run: usize,
        cluster_keys: &str,
        extra: impl Fn(usize) -> String,
    ) -> Cluster {
        let beats = root.join(format!("run{run}"));
        std::fs::create_dir_all(&beats).unwrap();
        let prefix = format!("/test{}/run{run}", std::process::id());
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let dir = beats.join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let n = Node {
                i,
                dir,
                child: None,
                stopped: false,
            };
            n.write_config(net, &prefix, &beats, cluster_keys, &extra(i));
            nodes.push(n);
        }
        // One after another, each a member before the next starts: where a
        // group without failback first runs depends on who had joined when
        // it was placed, and the tests expect the order n0, n1, n2.
        for n in &mut nodes {
            n.launch(net);
            n.wait_member(Duration::from_secs(20));
        }
        Cluster { nodes, beats }
    }

    /// The node whose heartbeat of `group` is the newest, if it is fresh.
    fn runs_on(&self, group: &str, fresher_than: u64) -> Option<(usize, i64)> {
        let b = beats(&self.beats, group);
        b.last()
            .filter(|b| b.at > fresher_than)
            .map(|b| (b.node, b.token))
    }

    /// Waits until every group beats on some node after `since`.
    fn wait_all_running(&self, since: u64, limit: Duration) {
        for g in GROUPS {
            wait_for(&format!("group {g} running"), limit, || {
                self.runs_on(g, since.max(boottime_ns() - 100_000_000))
                    .is_some()
            });
        }
    }

    /// Waits until every node is a member and sees all three live.
    fn wait_all_members(&self, limit: Duration) {
        for n in &self.nodes {
            wait_for(&format!("n{} to be a member", n.i), limit, || {
                let out = n.cli(&["nodes", "--json"]);
                serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
                    v["member"] == true
                        && v["nodes"].as_array().is_some_and(|a| {
                            a.iter().filter(|x| x["live"] == true).count() == NODES
                        })
                })
            });
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- n{} ---\n{}",
                    n.i,
                    std::fs::read_to_string(n.dir.join("daemon.log")).unwrap_or_default()
                )
            })
            .collect()
    }
}

/// The faults, as the randomized runs pick them.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Partition,
    Freeze,
    KillMonitor,
    KillEtcd,
    Restart,
    Move,
    Drain,
    /// The owner's monitor killed and started again within the grace.
    Reattach,
}

/// The groups with placement rules the randomized runs add: `db1` and
/// `db2` of one strict anti-affinity class, and `pinned`, which may run
/// only on n0 and n1. With one node out at a time, each can always run.
const RULED: [&str; 3] = ["db1", "db2", "pinned"];

fn ruled_groups(beats: &Path, i: usize) -> String {
    RULED
        .iter()
        .map(|g| {
            let rule = if *g == "pinned" {
                "possible_nodes = [\"n0\", \"n1\"]".to_string()
            } else {
                "anti_affinity = \"db\"\nanti_affinity_strict = true".to_string()
            };
            format!(
                "\n[group.{g}]\n{rule}\n\n[[resource]]\nname = \"{g}\"\ngroup = \"{g}\"\ntype = \"process\"\ncommand = {}\n",
                heartbeat_command(&beats.join(format!("{g}.n{i}")), 5)
            )
        })
        .collect()
}

/// The placement checker: `pinned` ran only on its possible nodes, and
/// `db1` and `db2` never ran on one node at the same instant. Also no
/// overlap of any of them between nodes.
fn check_placement(dir: &Path) -> Result<(), String> {
    for g in RULED {
        let runs = intervals(&beats(dir, g));
        for w in runs.windows(2) {
            if w[1].2 <= w[0].3 {
                return Err(format!("group {g} ran twice: {w:?}"));
            }
        }
    }
    if let Some(r) = intervals(&beats(dir, "pinned")).iter().find(|r| r.0 == 2) {
        return Err(format!(
            "group pinned ran on n2, not among its possible nodes: {r:?}"
        ));
    }
    for a in intervals(&beats(dir, "db1")) {
        for b in intervals(&beats(dir, "db2")) {
            if a.0 == b.0 && a.2 <= b.3 && b.2 <= a.3 {
                return Err(format!(
                    "db1 {a:?} and db2 {b:?} shared n{} (strict anti-affinity)",
                    a.0
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn randomized_faults_never_run_a_group_twice() {
    let runs: usize = std::env::var("RESMON_CLUSTER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("RESMON_CLUSTER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| boottime_ns() % 1_000_000);
    let _one = one_at_a_time();
    eprintln!("cluster test: {runs} runs, seed {seed} (RESMON_CLUSTER_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let mut etcd = Etcd::start(&net, root.path());
    let mut faults_done: BTreeMap<String, usize> = BTreeMap::new();
    let ruled_running = |c: &Cluster| {
        for g in RULED {
            wait_for(
                &format!("group {g} running"),
                Duration::from_secs(30),
                || c.runs_on(g, boottime_ns() - 100_000_000).is_some(),
            );
        }
    };
    for run in 0..runs {
        let dir = root.path().join(format!("run{run}"));
        // A grace a restarted monitor meets even on a loaded machine.
        let mut c = Cluster::start_tuned(
            &net,
            root.path(),
            run,
            "startup_wait = \"0s\"\nreattach_grace = \"1s\"",
            |i| ruled_groups(&dir, i),
        );
        c.wait_all_running(0, Duration::from_secs(20));
        ruled_running(&c);
        for _ in 0..2 {
            let mut pick = [
                Fault::Partition,
                Fault::Freeze,
                Fault::KillMonitor,
                Fault::KillEtcd,
                Fault::Restart,
                Fault::Move,
                Fault::Drain,
                Fault::Reattach,
            ][rng.usize(0..8)];
            if matches!(pick, Fault::Partition) && !net.can_partition() {
                pick = Fault::Freeze;
            }
            *faults_done.entry(format!("{pick:?}")).or_default() += 1;
            let group = GROUPS[rng.usize(0..GROUPS.len())];
            let now = boottime_ns();
            let owner = c.runs_on(group, now - 200_000_000).map(|(n, _)| n);
            let victim = owner.unwrap_or_else(|| rng.usize(0..NODES));
            let hold = Duration::from_millis(2500 + rng.u64(0..1500));
            match pick {
                Fault::Partition => {
                    net.partition(victim, true);
                    // The others carry on without it, and it knows it is
                    // cut off, before the link comes back.
                    wait_for_elsewhere(&c, group, victim, now);
                    wait_for("the cut-off node to see it", hold * 4, || {
                        let out = c.nodes[victim].cli(&["nodes", "--json"]);
                        serde_json::from_slice::<serde_json::Value>(&out.stdout)
                            .is_ok_and(|v| v["member"] == false || !v["problem"].is_null())
                    });
                    net.partition(victim, false);
                }
                Fault::Freeze => {
                    let pid = c.nodes[victim].pid().unwrap();
                    sig(pid, rustix::process::Signal::STOP);
                    c.nodes[victim].stopped = true;
                    wait_for_elsewhere(&c, group, victim, now);
                    sig(pid, rustix::process::Signal::CONT);
                    c.nodes[victim].stopped = false;
                }
                Fault::KillMonitor => {
                    c.nodes[victim].kill9();
                    wait_for_elsewhere(&c, group, victim, now);
                    c.nodes[victim].launch(&net);
                }
                Fault::KillEtcd => {
                    let m = rng.usize(0..NODES);
                    etcd.kill(m);
                    // The other two elect a leader and serve on.
                    let others: Vec<String> = (0..NODES)
                        .filter(|j| *j != m)
                        .map(|j| format!("http://{}:{}", net.addr(j), net.client_port(j)))
                        .collect();
                    wait_for("the other etcd members to serve", hold * 8, || {
                        net.command((m + 1) % NODES, "etcdctl")
                            .args(["--endpoints", &others.join(","), "endpoint", "health"])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success())
                    });
                    c.wait_all_running(boottime_ns(), Duration::from_secs(30));
                    etcd.launch(&net, m, "existing");
                }
                Fault::Restart => {
                    c.nodes[victim].stop();
                    wait_for_elsewhere(&c, group, victim, now);
                    c.nodes[victim].launch(&net);
                }
                Fault::Move => {
                    let to = (victim + 1 + rng.usize(0..NODES - 1)) % NODES;
                    let out = c.nodes[rng.usize(0..NODES)].cli(&["move", group, &format!("n{to}")]);
                    assert!(
                        out.status.success(),
                        "move failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if group == "alpha" {
                        // It gets there (beta may fail back at once).
                        let t = boottime_ns();
                        wait_for(&format!("alpha on n{to}"), Duration::from_secs(30), || {
                            c.runs_on(group, t).is_some_and(|(n, _)| n == to)
                        });
                    }
                }
                Fault::Reattach => {
                    // Nothing moves: the new monitor re-attaches to the
                    // guard and keeps its groups, tokens and all. alpha has
                    // no failback, so nothing else moves it meanwhile.
                    let t = boottime_ns();
                    let before = wait_some(&c, "alpha", t);
                    let at = before.0;
                    let log = c.nodes[at].dir.join("daemon.log");
                    let seen = |s: &str| s.matches("re-attached to the fence guard").count();
                    let attached = seen(&std::fs::read_to_string(&log).unwrap_or_default());
                    c.nodes[at].kill9();
                    c.nodes[at].launch(&net);
                    c.nodes[at].wait_member(Duration::from_secs(20));
                    let t = boottime_ns();
                    let after = wait_some(&c, "alpha", t);
                    assert_eq!(
                        after,
                        before,
                        "run {run} (seed {seed}): alpha moved although n{at}'s monitor came back within the grace\n{}",
                        c.logs()
                    );
                    assert!(
                        seen(&std::fs::read_to_string(&log).unwrap_or_default()) > attached,
                        "run {run} (seed {seed}): n{at} did not re-attach\n{}",
                        c.logs()
                    );
                }
                Fault::Drain => {
                    // Drained from any node: everything leaves the victim,
                    // then it is resumed.
                    let from = &c.nodes[rng.usize(0..NODES)];
                    let out = from.cli(&["node", "drain", &format!("n{victim}"), "--wait"]);
                    assert!(
                        out.status.success(),
                        "drain failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    c.wait_all_running(boottime_ns(), Duration::from_secs(30));
                    let t = boottime_ns();
                    for g in GROUPS.iter().chain(RULED.iter()) {
                        wait_for(
                            &format!("{g} running off the drained node"),
                            Duration::from_secs(30),
                            || c.runs_on(g, t).is_some_and(|(n, _)| n != victim),
                        );
                    }
                    let out = from.cli(&["node", "resume", &format!("n{victim}")]);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            c.wait_all_running(boottime_ns(), Duration::from_secs(30));
            ruled_running(&c);
            // Healed: every node is a member again before the next fault.
            c.wait_all_members(Duration::from_secs(30));
        }
        for n in &mut c.nodes {
            n.stop();
        }
        if let Err(e) = check_placement(&c.beats) {
            panic!("run {run} (seed {seed}): {e}\n{}", c.logs());
        }
        match check_no_overlap(&c.beats) {
            Ok(owners) => eprintln!("run {run}: {owners} ownerships, no overlap"),
            Err(e) => panic!("run {run} (seed {seed}): {e}\n{}", c.logs()),
        }
    }
    eprintln!("cluster test: faults {faults_done:?}");
}

/// Waits until `group` beats on some node after `since`; where and with
/// which token.
fn wait_some(c: &Cluster, group: &str, since: u64) -> (usize, i64) {
    let mut on = None;
    wait_for(
        &format!("group {group} running"),
        Duration::from_secs(30),
        || {
            on = c.runs_on(group, since);
            on.is_some()
        },
    );
    on.unwrap_or_default()
}

/// Waits until `group` beats on a node other than `victim` (after `since`).
fn wait_for_elsewhere(c: &Cluster, group: &str, victim: usize, since: u64) {
    wait_for(
        &format!("group {group} to run elsewhere than n{victim}"),
        Duration::from_secs(30),
        || {
            c.runs_on(group, since.max(boottime_ns() - 100_000_000))
                .is_some_and(|(n, _)| n != victim)
        },
    );
}

/// Runs `body` on three nodes with their groups running, then stops them
/// and checks no group ran twice.
fn on_a_cluster(body: impl FnOnce(&mut Cluster, &Net)) {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    let mut c = Cluster::start(&net, root.path(), 0);
    c.wait_all_running(0, Duration::from_secs(20));
    body(&mut c, &net);
    for n in &mut c.nodes {
        n.stop();
    }
    if let Err(e) = check_no_overlap(&c.beats) {
        panic!("{e}\n{}", c.logs());
    }
}

/// A killed monitor's groups come back elsewhere well before its lease
/// could have expired: its fence guard kills them, sees them gone, and
/// revokes the lease (with the default `reattach_grace`). The node, started
/// again, tells what its guard did.
#[test]
fn a_killed_owner_fails_over_before_its_lease_runs_out() {
    on_a_cluster(|c, net| {
        for _ in 0..3 {
            let (owner, took) = kill_owner(c, net, "alpha", Fault::KillMonitor);
            // lease_ttl is 2 s: before, the group waited for it to expire.
            assert!(
                took < Duration::from_millis(1500),
                "alpha came back after {took:?}\n{}",
                c.logs()
            );
            let events =
                String::from_utf8_lossy(&c.nodes[owner].cli(&["events"]).stdout).to_string();
            assert!(
                events.contains("its fence guard killed 2 scope(s)")
                    || events.contains("its fence guard killed 1 scope(s)"),
                "{events}"
            );
            assert!(events.contains("and revoked lease"), "{events}");
        }
    });
}

/// The fence guard's pid of the monitor `monitor`: its child running
/// `resmon fence-guard`.
fn guard_pid(monitor: u32) -> Option<u32> {
    resmon_test_support::all()
        .into_iter()
        .filter(|p| p.ppid == monitor)
        .find(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"fence-guard"))
        })
        .map(|p| p.pid)
}

/// Sends SIGCONT to a stopped process when dropped.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        sig(self.0, rustix::process::Signal::CONT);
    }
}

/// A group taken by a node starts only once the node's fence guard holds
/// its scopes: with the guard frozen, the group is taken but nothing of
/// it runs (a monitor dying then would leave processes the guard would
/// not kill before revoking the lease); thawed, it starts.
#[test]
fn a_taken_group_starts_only_once_the_fence_guard_holds_it() {
    on_a_cluster(|c, _| {
        let (owner, _) = c.runs_on("alpha", boottime_ns() - 100_000_000).unwrap();
        let to = (owner + 1) % NODES;
        let guard = guard_pid(c.nodes[to].pid().unwrap()).expect("the node's fence guard");
        sig(guard, rustix::process::Signal::STOP);
        // Thawed also when an assertion fails, so that it fences what its
        // monitor leaves.
        let frozen = Thaw(guard);
        let t0 = boottime_ns();
        let out = c.nodes[owner].cli(&["move", "alpha", &format!("n{to}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            "n{to} to wait for its guard",
            Duration::from_secs(30),
            || {
                let events = c.nodes[to].cli(&["events"]);
                String::from_utf8_lossy(&events.stdout).contains("the fence guard has not answered")
            },
        );
        let owners = c.nodes[to].cli(&["nodes", "--json"]);
        let owners: serde_json::Value = serde_json::from_slice(&owners.stdout).unwrap();
        assert_eq!(owners["owners"]["alpha"], format!("n{to}"), "{owners}");
        assert!(
            !beats(&c.beats, "alpha")
                .iter()
                .any(|b| b.at > t0 && b.node == to),
            "alpha started on n{to} before its guard answered\n{}",
            c.logs()
        );
        drop(frozen);
        wait_for(&format!("alpha on n{to}"), Duration::from_secs(30), || {
            c.runs_on("alpha", t0).is_some_and(|(n, _)| n == to)
        });
    });
}

/// Makes `fault` (a monitor killed, frozen, or its node cut off) hit the
/// node that runs `group`, waits until `group` beats on another node, and
/// heals the node (started again, thawed, or linked again) once every
/// group runs and every node is a member. Returns the node and the time
/// from the fault to the first heartbeat elsewhere.
fn kill_owner(c: &mut Cluster, net: &Net, group: &str, fault: Fault) -> (usize, Duration) {
    let (owner, token) = c
        .runs_on(group, boottime_ns() - 100_000_000)
        .unwrap_or_else(|| panic!("{group} runs"));
    let t0 = boottime_ns();
    match fault {
        Fault::KillMonitor => c.nodes[owner].kill9(),
        Fault::Freeze => {
            sig(c.nodes[owner].pid().unwrap(), rustix::process::Signal::STOP);
            c.nodes[owner].stopped = true;
        }
        Fault::Partition => net.partition(owner, true),
        other => unreachable!("not a fault of an owner: {other:?}"),
    }
    wait_for(
        &format!("{group} on another node"),
        Duration::from_secs(30),
        || {
            c.runs_on(group, t0)
                .is_some_and(|(n, t)| n != owner && t > token)
        },
    );
    let took = first_beat_elsewhere(&c.beats, group, owner, t0);
    match fault {
        Fault::KillMonitor => {
            // The dead monitor's guard reports to the next one.
            let report = c.nodes[owner].dir.join("state/fence-guard-report.json");
            wait_for("the guard's report", Duration::from_secs(10), || {
                report.exists()
            });
            c.nodes[owner].launch(net)
        }
        Fault::Freeze => {
            sig(c.nodes[owner].pid().unwrap(), rustix::process::Signal::CONT);
            c.nodes[owner].stopped = false;
        }
        Fault::Partition => net.partition(owner, false),
        _ => {}
    }
    c.wait_all_members(Duration::from_secs(30));
    c.wait_all_running(boottime_ns(), Duration::from_secs(30));
    (owner, took)
}

/// The time from `t0` to the first heartbeat of `group` on a node other
/// than `owner`.
fn first_beat_elsewhere(dir: &Path, group: &str, owner: usize, t0: u64) -> Duration {
    let first = beats(dir, group)
        .into_iter()
        .find(|b| b.at > t0 && b.node != owner)
        .unwrap_or_else(|| panic!("no heartbeat of {group} elsewhere"));
    Duration::from_nanos(first.at - t0)
}

/// One case's line of the benchmark, printed at once too.
fn case_line(what: &str, samples: &mut [Duration], overlap: &Result<usize, String>) -> String {
    let line = format!(
        "{what}: {}; overlap: {}",
        percentiles(samples),
        overlap
            .as_ref()
            .map_or_else(Clone::clone, |_| "none".into())
    );
    println!("{line}");
    line
}

/// p50, p99 and max of `samples`, as the benchmark prints them.
fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "runs={} p50={:.3} s p99={:.3} s max={:.3} s",
        samples.len(),
        pct(0.5).as_secs_f64(),
        pct(0.99).as_secs_f64(),
        samples.last().map_or(0.0, Duration::as_secs_f64),
    )
}

/// The failover benchmark (`scripts/bench-failover`), `lease_ttl = "2s"`,
/// three nodes and three etcd members. For each case, the time from the
/// fault to the group's first heartbeat on another node:
///
/// * `kill`: the owner's monitor SIGKILLed (its fence guard kills the
///   group after `reattach_grace`, sees it gone, and revokes the lease);
/// * `stop`: the owner's monitor SIGSTOPped (the guard fences at the
///   deadline; the lease expires in etcd);
/// * `partition`: the owner's node cut off (it fences itself; the lease
///   expires), only where network namespaces can be made;
/// * `many`: 100 more groups on one node whose monitor is SIGKILLed, until
///   the last of them beats elsewhere.
///
/// `RESMON_FAILOVER_RUNS` runs of each (30), `RESMON_FAILOVER_CASES` picks
/// cases (`kill,stop,partition,many`), `RESMON_FAILOVER_GRACE` sets
/// `reattach_grace` (`100ms`). The checker runs over every case.
#[test]
#[ignore = "a benchmark: scripts/bench-failover"]
fn failover_time() {
    let runs: usize = std::env::var("RESMON_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cases = std::env::var("RESMON_FAILOVER_CASES")
        .unwrap_or_else(|_| "kill,stop,partition,many".into());
    let grace = std::env::var("RESMON_FAILOVER_GRACE").unwrap_or_else(|_| "100ms".into());
    let cluster_extra = format!("reattach_grace = \"{grace}\"\nstartup_wait = \"0s\"");
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    let mut lines = Vec::new();
    let mut overlaps = Vec::new();
    let single: Vec<(&str, Fault, &str)> = vec![
        ("kill", Fault::KillMonitor, "monitor SIGKILL"),
        ("stop", Fault::Freeze, "monitor SIGSTOP"),
        ("partition", Fault::Partition, "node partitioned"),
    ];
    let mut run_no = 0;
    for (name, fault, what) in single {
        if !cases.split(',').any(|c| c == name) {
            continue;
        }
        if matches!(fault, Fault::Partition) && !net.can_partition() {
            lines.push(format!(
                "{what}: skipped (no network namespaces: run as root)"
            ));
            continue;
        }
        let mut c =
            Cluster::start_tuned(&net, root.path(), run_no, &cluster_extra, |_| String::new());
        run_no += 1;
        c.wait_all_running(0, Duration::from_secs(20));
        let mut samples: Vec<Duration> = (0..runs)
            .map(|_| kill_owner(&mut c, &net, "alpha", fault).1)
            .collect();
        for n in &mut c.nodes {
            n.stop();
        }
        let overlap = check_no_overlap(&c.beats);
        let what = format!("{what} -> group online elsewhere");
        lines.push(case_line(&what, &mut samples, &overlap));
        overlaps.push(overlap);
    }
    if cases.split(',').any(|c| c == "many") {
        const MANY: usize = 100;
        let names: Vec<String> = (0..MANY).map(|k| format!("g{k:03}")).collect();
        let beats_dir = root.path().join(format!("run{run_no}"));
        let mut c = Cluster::start_tuned(&net, root.path(), run_no, &cluster_extra, |i| {
            names
                .iter()
                .map(|g| {
                    let file = beats_dir.join(format!("{g}.n{i}"));
                    format!(
                        "\n[group.{g}]\npreferred_nodes = [\"n0\", \"n1\", \"n2\"]\n\n[[resource]]\nname = \"{g}\"\ngroup = \"{g}\"\ntype = \"process\"\ncommand = {}\n",
                        heartbeat_command(&file, 50)
                    )
                })
                .collect()
        });
        let fresh = || boottime_ns() - 500_000_000;
        for g in &names {
            wait_for(&format!("{g} running"), Duration::from_secs(60), || {
                c.runs_on(g, fresh()).is_some()
            });
        }
        let mut samples = Vec::new();
        for _ in 0..runs {
            let (owner, token) = c.runs_on(&names[0], fresh()).expect("g000 runs");
            let t0 = boottime_ns();
            c.nodes[owner].kill9();
            let mut last = Duration::ZERO;
            for g in &names {
                wait_for(
                    &format!("{g} on another node"),
                    Duration::from_secs(60),
                    || {
                        c.runs_on(g, t0)
                            .is_some_and(|(n, t)| n != owner && t > token)
                    },
                );
                last = last.max(first_beat_elsewhere(&c.beats, g, owner, t0));
            }
            samples.push(last);
            c.nodes[owner].launch(&net);
            c.wait_all_members(Duration::from_secs(30));
        }
        for n in &mut c.nodes {
            n.stop();
        }
        let groups: Vec<&str> = names.iter().map(String::as_str).collect();
        let overlap = check_groups(&c.beats, &groups);
        let what = format!("monitor SIGKILL with {MANY} groups -> last of them online elsewhere");
        lines.push(case_line(&what, &mut samples, &overlap));
        overlaps.push(overlap);
    }
    println!(
        "failover, lease_ttl 2s, reattach_grace {grace}, three nodes{}:",
        if net.can_partition() {
            " in network namespaces"
        } else {
            " on loopback"
        }
    );
    for l in &lines {
        println!("  {l}");
    }
    for o in overlaps {
        o.unwrap();
    }
}

#[test]
fn nodes_moves_failback_and_failover() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    // gamma prefers n0, where its resource cannot start: past its restart
    // threshold there, it fails over.
    let beats_dir = root.path().join("run0");
    let c = Cluster::start_with(&net, root.path(), 0, |i| {
        let file = beats_dir.join(format!("gamma.n{i}"));
        let command = if i == 0 {
            "[\"false\"]".to_string()
        } else {
            heartbeat_command(&file, 5)
        };
        format!(
            "\n[group.gamma]\npreferred_nodes = [\"n0\", \"n1\"]\n\n[[resource]]\nname = \"gamma\"\ngroup = \"gamma\"\ntype = \"process\"\ncommand = {command}\nrestart_action = \"restart_then_failover\"\nrestart_threshold = 1\nrestart_delay = \"0s\"\n"
        )
    });
    let mut c = c;
    c.wait_all_running(0, Duration::from_secs(20));
    // Where each group runs: the first live preferred node. beta started
    // on n0, the only node then; it fails back to n2 once n2 is live.
    let fresh = || boottime_ns() - 100_000_000;
    assert_eq!(c.runs_on("alpha", fresh()).map(|r| r.0), Some(0));
    wait_for("beta to fail back to n2", Duration::from_secs(20), || {
        c.runs_on("beta", fresh()).is_some_and(|(n, _)| n == 2)
    });
    wait_for("gamma to fail over to n1", Duration::from_secs(30), || {
        c.runs_on("gamma", fresh()).is_some_and(|(n, _)| n == 1)
    });
    let events = c.nodes[0].cli(&["events"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("failing over"), "{events}");

    // resmon nodes, on any node, and the OWNER column. Each node sees
    // etcd on its next look (every 100 ms): beta's move may be news to n1.
    wait_for("n1 to see beta on n2", Duration::from_secs(5), || {
        let out = c.nodes[1].cli(&["nodes", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["owners"]["beta"] == "n2")
    });
    let out = c.nodes[1].cli(&["nodes", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node"], "n1");
    assert_eq!(v["member"], true);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["owners"]["alpha"], "n0", "{v}");
    assert_eq!(v["owners"]["beta"], "n2", "{v}");
    // n0, owner of alpha, in its metrics: a member with its lease renewed,
    // the fence guard armed, alpha's fencing token, gamma given up.
    let text = String::from_utf8_lossy(&c.nodes[0].cli(&["metrics"]).stdout).to_string();
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value("resmon_cluster_member"), 1.0);
    assert_eq!(value("resmon_cluster_fence_guard_armed"), 1.0);
    assert_eq!(value("resmon_cluster_groups_owned"), 1.0, "alpha");
    assert!(value(r#"resmon_cluster_fencing_token{group="alpha"}"#) > 0.0);
    assert!(value("resmon_cluster_lease_left_seconds") > 0.0);
    assert!(value("resmon_cluster_lease_renewals_total") > 0.0);
    assert!(value(r#"resmon_cluster_ownership_changes_total{change="acquired"}"#) >= 2.0);
    assert!(value(r#"resmon_cluster_ownership_changes_total{change="released"}"#) >= 1.0);
    // Ready, as a member.
    let unix = std::os::unix::net::UnixStream::connect(c.nodes[0].socket()).unwrap();
    let (code, answer) = http_on(unix, "GET", "/readyz", "");
    assert_eq!(code, 200, "{answer}");
    let table = String::from_utf8_lossy(&c.nodes[1].cli(&["nodes"]).stdout).to_string();
    assert!(table.contains("NODE") && table.contains("alpha"), "{table}");
    let status = String::from_utf8_lossy(&c.nodes[1].cli(&["status"]).stdout).to_string();
    assert!(status.contains("OWNER"), "{status}");
    let alpha_row = status.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(
        alpha_row.contains(" n0 ") && alpha_row.contains("offline"),
        "{status}"
    );

    // A move, asked of a node that is neither source nor target.
    let (_, before) = c.runs_on("alpha", fresh()).unwrap();
    let out = c.nodes[2].cli(&["move", "alpha", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("alpha on n1", Duration::from_secs(20), || {
        c.runs_on("alpha", fresh())
            .is_some_and(|(n, t)| n == 1 && t > before)
    });
    // Bad moves are refused and change nothing.
    let out = c.nodes[0].cli(&["move", "alpha", "n9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not live"));
    let out = c.nodes[0].cli(&["move", "nosuch", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no group"));
    let out = c.nodes[0].cli(&["move", "alpha", "bad name"]);
    assert_ne!(out.status.code(), Some(0));

    // Node maintenance, asked of another node: alpha, now on n1, keeps
    // running while its process is killed; cleared, it is checked at once
    // and restarted.
    let out = c.nodes[0].cli(&["maintenance", "on", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alpha_on_n1 = |what: &str| -> serde_json::Value {
        let out = c.nodes[1].cli(&["status", "alpha", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["resources"][0][what].clone()
    };
    wait_for(
        "alpha in maintenance on n1",
        Duration::from_secs(10),
        || alpha_on_n1("maintenance") == true,
    );
    // Every node shows the mark once its own look at etcd has seen it.
    wait_for("n2 to show n1's mark", Duration::from_secs(10), || {
        let out = c.nodes[2].cli(&["nodes", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "n1" && n["maintenance"] == true)
    });
    let pid = alpha_on_n1("pids")[0].as_u64().unwrap() as u32;
    sig(pid, rustix::process::Signal::KILL);
    wait_for(
        "the failure seen and not acted on",
        Duration::from_secs(10),
        || {
            alpha_on_n1("reason")
                .as_str()
                .is_some_and(|r| r.starts_with("maintenance: is_alive returned false"))
        },
    );
    assert_eq!(alpha_on_n1("state"), "online");
    assert_eq!(alpha_on_n1("restarts"), 0);
    let out = c.nodes[2].cli(&["maintenance", "off", "--node", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("alpha restarted on n1", Duration::from_secs(20), || {
        alpha_on_n1("restarts") == 1 && alpha_on_n1("maintenance").is_null()
    });
    let t = boottime_ns();
    wait_for("alpha beating on n1 again", Duration::from_secs(20), || {
        c.runs_on("alpha", t).is_some_and(|(n, _)| n == 1)
    });

    // A drain, asked of another node: every group leaves n1 and none
    // comes back until it is resumed.
    let out = c.nodes[0].cli(&["node", "drain", "n1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node n1 runs no group"));
    let t = boottime_ns();
    for g in ["alpha", "gamma"] {
        wait_for(
            &format!("{g} running off n1"),
            Duration::from_secs(20),
            || c.runs_on(g, t).is_some_and(|(n, _)| n != 1),
        );
    }
    let view = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&c.nodes[i].cli(&["nodes", "--json"]).stdout).unwrap()
    };
    let n1_of = |v: &serde_json::Value| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "n1")
            .cloned()
            .unwrap()
    };
    let v = view(0);
    assert_eq!(n1_of(&v)["drained"], true, "{v}");
    assert!(n1_of(&v)["groups"].as_array().unwrap().is_empty(), "{v}");
    let table = String::from_utf8_lossy(&c.nodes[0].cli(&["nodes"]).stdout).to_string();
    assert!(table.contains("DRAINED"), "{table}");
    let out = c.nodes[2].cli(&["node", "resume", "n1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("n1 resumed", Duration::from_secs(10), || {
        n1_of(&view(1))["drained"].is_null()
    });

    // beta fails back: its node dies (the guard fences what it ran), beta
    // moves to n1, and returns to n2 once n2 is back.
    let t0 = boottime_ns();
    c.nodes[2].kill9();
    wait_for_elsewhere(&c, "beta", 2, t0);
    assert_eq!(c.runs_on("beta", fresh()).map(|r| r.0), Some(1));
    let out = c.nodes[0].cli(&["nodes", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n2 = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n2");
    assert_eq!(n2.map(|n| n["live"].clone()), Some(false.into()), "{v}");
    c.nodes[2].launch(&net);
    wait_for("beta back on n2", Duration::from_secs(30), || {
        c.runs_on("beta", fresh()).is_some_and(|(n, _)| n == 2)
    });
    for n in &mut c.nodes {
        n.stop();
    }
    // And never twice at once, gamma included.
    for g in ["alpha", "beta", "gamma"] {
        let runs = intervals(&beats(&c.beats, g));
        for w in runs.windows(2) {
            assert!(w[1].2 > w[0].3, "group {g} ran twice: {w:?}");
        }
    }
    check_no_overlap(&c.beats).unwrap();
}

/// The placement rules across real nodes: `possible_nodes` is a hard
/// limit, strict anti-affinity never shares a node, `failover_threshold`
/// keeps a failing group from bouncing, and a group no live node may run
/// stays offline and says why.
#[test]
fn placement_rules_hold_across_nodes() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    let beats_dir = root.path().join("run0");
    let heartbeat = |g: &str, i: usize| heartbeat_command(&beats_dir.join(format!("{g}.n{i}")), 5);
    // Placed once all three are live: theta's failover must find n1.
    let mut c = Cluster::start_tuned(&net, root.path(), 0, "startup_wait = \"3s\"", |i| {
        let mut extra = String::new();
        for g in ["delta", "epsilon"] {
            extra.push_str(&format!(
                "\n[group.{g}]\nanti_affinity = \"db\"\nanti_affinity_strict = true\npossible_nodes = [\"n1\", \"n2\"]\n\n[[resource]]\nname = \"{g}\"\ngroup = \"{g}\"\ntype = \"process\"\ncommand = {}\n",
                heartbeat(g, i)
            ));
        }
        extra.push_str(&format!(
            "\n[group.zeta]\npossible_nodes = [\"n0\"]\n\n[[resource]]\nname = \"zeta\"\ngroup = \"zeta\"\ntype = \"process\"\ncommand = {}\n",
            heartbeat("zeta", i)
        ));
        // theta cannot start on n0 or n1: it fails over once, from n0 to
        // n1, and then stays there, failed, instead of going on to n2.
        let theta = if i < 2 {
            "[\"false\"]".to_string()
        } else {
            heartbeat("theta", i)
        };
        extra.push_str(&format!(
            "\n[group.theta]\npreferred_nodes = [\"n0\", \"n1\", \"n2\"]\nfailover_threshold = 1\nfailover_period = \"1h\"\n\n[[resource]]\nname = \"theta\"\ngroup = \"theta\"\ntype = \"process\"\ncommand = {theta}\nrestart_action = \"restart_then_failover\"\nrestart_threshold = 1\nrestart_delay = \"0s\"\n"
        ));
        extra
    });
    let fresh = || boottime_ns() - 100_000_000;
    for g in ["delta", "epsilon", "zeta"] {
        wait_for(&format!("{g} running"), Duration::from_secs(30), || {
            c.runs_on(g, fresh()).is_some()
        });
    }
    let (d, _) = c.runs_on("delta", fresh()).unwrap();
    let (e, _) = c.runs_on("epsilon", fresh()).unwrap();
    assert!(d != e && d != 0 && e != 0, "delta on n{d}, epsilon on n{e}");
    assert_eq!(c.runs_on("zeta", fresh()).map(|r| r.0), Some(0));
    let events = |c: &Cluster, i: usize| {
        String::from_utf8_lossy(&c.nodes[i].cli(&["events"]).stdout).to_string()
    };
    wait_for("theta to stay on n1", Duration::from_secs(30), || {
        events(&c, 1).contains("group theta does not fail over: it failed over 1 time(s) in the last 1h (failover_threshold 1)")
    });
    let owners = |i: usize| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&c.nodes[i].cli(&["nodes", "--json"]).stdout)
            .unwrap()["owners"]
            .clone()
    };
    assert_eq!(owners(0)["theta"], "n1");

    // Moves the rules forbid are refused, naming the rule.
    let refused = |args: &[&str], want: &str| {
        let out = c.nodes[0].cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(
        &["move", "zeta", "n1"],
        "group zeta cannot move to n1: it is not among the group's possible_nodes",
    );
    let e_node = format!("n{e}");
    refused(
        &["move", "delta", &e_node],
        "it runs group epsilon of the same anti-affinity class (strict)",
    );

    // The node of one db group dies: the other node runs the other db
    // group, and n0 is not possible, so it stays offline and says why.
    let (victim, stays) = if d == 2 {
        ("delta", "epsilon")
    } else {
        ("epsilon", "delta")
    };
    c.nodes[2].kill9();
    wait_for(
        &format!("{victim} to stay offline, said on n1"),
        Duration::from_secs(30),
        || {
            events(&c, 1).contains(&format!("group {victim} stays offline: no live node may run it: the live node(s) n0 are not among its possible_nodes [n1, n2]; n1 runs group {stays} of anti-affinity class \"db\" (strict)"))
        },
    );
    let v: serde_json::Value =
        serde_json::from_slice(&c.nodes[1].cli(&["nodes", "--json"]).stdout).unwrap();
    assert!(
        v["unplaced"][victim]
            .as_str()
            .is_some_and(|w| w.contains("(strict)")),
        "{v}"
    );
    let table = String::from_utf8_lossy(&c.nodes[1].cli(&["nodes"]).stdout).to_string();
    assert!(
        table.contains(&format!("  {victim}: no live node may run it")),
        "{table}"
    );
    // zeta's only possible node dies too.
    c.nodes[0].kill9();
    wait_for(
        "zeta to stay offline, said on n1",
        Duration::from_secs(30),
        || {
            events(&c, 1).contains("group zeta stays offline: no live node may run it: the live node(s) n1 are not among its possible_nodes [n0]")
        },
    );
    for n in &mut c.nodes {
        n.stop();
    }
    // At every instant: zeta only on n0, the db groups never on n0 and
    // never together, theta never on n2.
    let runs = |g: &str| intervals(&beats(&c.beats, g));
    assert!(runs("zeta").iter().all(|r| r.0 == 0), "{:?}", runs("zeta"));
    assert!(runs("theta").is_empty(), "{:?}", runs("theta"));
    for a in runs("delta") {
        assert_ne!(a.0, 0);
        for b in runs("epsilon") {
            assert_ne!(b.0, 0);
            assert!(
                a.0 != b.0 || a.3 < b.2 || b.3 < a.2,
                "delta {a:?} and epsilon {b:?} shared a node"
            );
        }
    }
}

/// `groups` groups `s000`… of one `sleep` resource each, for the scale
/// test and the idle benchmark: no preferences, so placement spreads them.
fn many_groups(groups: usize) -> String {
    (0..groups)
        .map(|g| {
            format!(
                "\n[[resource]]\nname = \"s{g:03}\"\ngroup = \"s{g:03}\"\ntype = \"process\"\ncommand = [\"sleep\", \"1000000\"]\n"
            )
        })
        .collect()
}

/// Which node runs each of the `s…` groups online, as the live nodes'
/// own status says: group -> node.
fn online_many(c: &Cluster, live: &[usize]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for &i in live {
        let o = c.nodes[i].cli(&["status", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
            continue;
        };
        for r in v["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or_default();
            if name.starts_with('s') && r["state"] == "online" {
                out.insert(name.to_string(), i);
            }
        }
    }
    out
}

/// Three nodes and 300 groups: placement spreads them over the nodes, and
/// when a node's monitor is killed every one of its groups comes online on
/// the others, each on one node only.
#[test]
fn three_nodes_three_hundred_groups_spread_and_fail_over() {
    const GROUPS_N: usize = 300;
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    // Placement by the full view: no node takes a group before the three
    // had the time to join.
    let mut c = Cluster::start_tuned(&net, root.path(), 0, "startup_wait = \"10s\"", |_| {
        many_groups(GROUPS_N)
    });
    wait_for("all 300 groups online", Duration::from_secs(60), || {
        online_many(&c, &[0, 1, 2]).len() == GROUPS_N
    });
    let placed = online_many(&c, &[0, 1, 2]);
    let per: Vec<usize> = (0..NODES)
        .map(|i| placed.values().filter(|n| **n == i).count())
        .collect();
    eprintln!("groups per node: {per:?}");
    // Rendezvous hashing: about 100 each, none empty or crowded.
    assert!(per.iter().all(|&n| (70..=130).contains(&n)), "{per:?}");
    let victim = 1;
    let theirs: Vec<String> = placed
        .iter()
        .filter(|(_, n)| **n == victim)
        .map(|(g, _)| g.clone())
        .collect();
    c.nodes[victim].kill9();
    wait_for(
        "every group of the killed node online on the others",
        Duration::from_secs(60),
        || {
            let now = online_many(&c, &[0, 2]);
            now.len() == GROUPS_N
        },
    );
    let after = online_many(&c, &[0, 2]);
    // Only the victim's groups moved, and they spread over both others.
    for (g, n) in &placed {
        if *n != victim {
            assert_eq!(after.get(g), Some(n), "{g} moved although its node stayed");
        }
    }
    let to: std::collections::BTreeSet<usize> = theirs.iter().map(|g| after[g]).collect();
    assert_eq!(to.len(), 2, "the killed node's groups all went to one node");
    for n in &mut c.nodes {
        n.stop();
    }
}

/// The etcd traffic of idle nodes (`scripts/bench-etcd-idle`): three nodes,
/// 300 groups placed and online, then gRPC messages received per second by
/// each node's own etcd member over a window, by method, read from etcd's
/// `/metrics` (`grpc_server_msg_received_total`). Each node talks to its
/// own member first, so a member's count is its node's traffic.
#[test]
#[ignore = "a benchmark: scripts/bench-etcd-idle"]
fn idle_etcd_requests() {
    let groups: usize = std::env::var("RESMON_IDLE_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let window = Duration::from_secs(
        std::env::var("RESMON_IDLE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    let mut c = Cluster::start_tuned(&net, root.path(), 0, "startup_wait = \"10s\"", |_| {
        many_groups(groups)
    });
    wait_for("all groups online", Duration::from_secs(120), || {
        online_many(&c, &[0, 1, 2]).len() == groups
    });
    // Open watch streams on a member (a gauge, not a rate).
    const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
    let scrape = |i: usize| -> BTreeMap<String, f64> {
        let url = format!("http://{}:{}/metrics", net.addr(i), net.client_port(i));
        let out = net
            .command(i, "python3")
            .args([
                "-c",
                "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(&format!("{STREAMS} ")) {
                by.insert(STREAMS.into(), v.trim().parse().unwrap_or(f64::NAN));
            }
            let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                continue;
            };
            let method = rest
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next())
                .unwrap_or("?");
            let v: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *by.entry(method.to_string()).or_default() += v;
        }
        by
    };
    let before: Vec<_> = (0..NODES).map(scrape).collect();
    let t0 = std::time::Instant::now();
    // The window itself is what is measured.
    while t0.elapsed() < window {
        std::thread::park_timeout(window - t0.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<_> = (0..NODES).map(scrape).collect();
    println!("idle etcd traffic, {groups} groups on 3 nodes, over {secs:.1} s (messages/s received by each node's etcd member):");
    let methods: std::collections::BTreeSet<&String> = after
        .iter()
        .flat_map(|m| m.keys())
        .filter(|k| *k != STREAMS)
        .collect();
    println!("{:<24} {:>8} {:>8} {:>8}", "method", "n0", "n1", "n2");
    let mut total = [0.0; NODES];
    for m in methods {
        let rates: Vec<f64> = (0..NODES)
            .map(|i| {
                (after[i].get(m).copied().unwrap_or(0.0) - before[i].get(m).copied().unwrap_or(0.0))
                    / secs
            })
            .collect();
        if rates.iter().all(|r| *r == 0.0) {
            continue;
        }
        for i in 0..NODES {
            total[i] += rates[i];
        }
        println!(
            "{m:<24} {:>8.2} {:>8.2} {:>8.2}",
            rates[0], rates[1], rates[2]
        );
    }
    println!(
        "{:<24} {:>8.2} {:>8.2} {:>8.2}",
        "all", total[0], total[1], total[2]
    );
    // Each node talks to its own member: its streams are the node's.
    let streams: Vec<f64> = after
        .iter()
        .map(|m| m.get(STREAMS).copied().unwrap_or(f64::NAN))
        .collect();
    println!(
        "{:<24} {:>8} {:>8} {:>8}",
        "open watch streams", streams[0], streams[1], streams[2]
    );
    for n in &mut c.nodes {
        n.stop();
    }
}

/// Upgrades without failover: the owner's monitor is SIGKILLed and started
/// again (or upgraded in place, every fifth time), 20 times, under load
/// (21 resources on it). Each time the new
/// monitor re-attaches to the fence guard the last one left waiting and
/// resumes its lease: no group changes owner, no process is restarted,
/// every fencing token stays.
#[test]
fn a_restarted_owner_keeps_its_groups_processes_and_tokens() {
    const LOAD: usize = 20;
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let net = Net::new();
    let _etcd = Etcd::start(&net, root.path());
    let mut c = Cluster::start_tuned(
        &net,
        root.path(),
        0,
        "lease_ttl = \"4s\"\nreattach_grace = \"1500ms\"\nstartup_wait = \"0s\"",
        |_| {
            let mut extra = String::from("\n[group.load]\npreferred_nodes = [\"n0\"]\n");
            for k in 0..LOAD {
                extra.push_str(&format!(
                    "\n[[resource]]\nname = \"load{k:02}\"\ngroup = \"load\"\ntype = \"process\"\ncommand = [\"sleep\", \"1000000\"]\n"
                ));
            }
            extra
        },
    );
    // Each resource on n0 (alpha and the load), online, and its pids.
    let on_n0 = |c: &Cluster| -> BTreeMap<String, (String, serde_json::Value, u64)> {
        let out = c.nodes[0].cli(&["status", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return BTreeMap::new();
        };
        v["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == "alpha" || r["group"] == "load")
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    (
                        r["state"].as_str().unwrap_or_default().to_string(),
                        r["pids"].clone(),
                        r["restarts"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect()
    };
    let all_online = |m: &BTreeMap<String, (String, serde_json::Value, u64)>| {
        m.len() == LOAD + 1
            && m.values()
                .all(|(s, p, _)| s == "online" && p.as_array().is_some_and(|a| !a.is_empty()))
    };
    wait_for(
        "alpha and the load online on n0",
        Duration::from_secs(30),
        || all_online(&on_n0(&c)),
    );
    let before = on_n0(&c);
    // A monitor killed before it saved where its processes are could not
    // find them again: wait for the state file to hold every one.
    let n0 = c.nodes[0].dir.clone();
    let saved = || {
        wait_for(
            "n0's state to name every process",
            Duration::from_secs(20),
            || {
                let Some(v) = common::saved_state(&n0) else {
                    return false;
                };
                before.iter().all(|(name, (_, pids, _))| {
                    let s = v["resources"][name.as_str()]["saved"].to_string();
                    pids.as_array()
                        .is_some_and(|p| p.iter().all(|pid| s.contains(&pid.to_string())))
                })
            },
        )
    };
    let (_, token) = c.runs_on("alpha", boottime_ns() - 100_000_000).unwrap();
    for round in 0..20 {
        if round % 5 == 4 {
            // An upgrade in place: the same process runs the binary again.
            let out = c.nodes[0].cli(&["upgrade"]);
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            saved();
            c.nodes[0].kill9();
            c.nodes[0].launch(&net);
        }
        c.nodes[0].wait_member(Duration::from_secs(20));
        wait_for(
            &format!("round {round}: everything adopted on n0"),
            Duration::from_secs(20),
            || all_online(&on_n0(&c)),
        );
        let now = on_n0(&c);
        assert_eq!(now, before, "round {round}: a process changed or restarted");
        let owners: serde_json::Value =
            serde_json::from_slice(&c.nodes[1].cli(&["nodes", "--json"]).stdout).unwrap();
        assert_eq!(owners["owners"]["alpha"], "n0", "round {round}: {owners}");
        assert_eq!(owners["owners"]["load"], "n0", "round {round}: {owners}");
    }
    // Past every grace and every old deadline, all of it still runs.
    let last = boottime_ns();
    wait_for(
        "alpha beating on n0 5 s after the last restart",
        Duration::from_secs(20),
        || {
            c.runs_on("alpha", last + 5_000_000_000)
                .is_some_and(|(n, t)| n == 0 && t == token)
        },
    );
    assert_eq!(on_n0(&c), before, "a process changed or restarted");
    let events = String::from_utf8_lossy(&c.nodes[0].cli(&["events"]).stdout).to_string();
    assert!(events.contains("kept group load"), "{events}");
    // One guard all along, re-attached by each new monitor, fencing nothing.
    let log = std::fs::read_to_string(c.nodes[0].dir.join("daemon.log")).unwrap();
    assert_eq!(log.matches("fence guard started").count(), 1, "{log}");
    assert_eq!(
        log.matches("re-attached to the fence guard").count(),
        20,
        "{log}"
    );
    assert!(
        !log.contains("scope(s); revoked") && !log.contains("passed at"),
        "{log}"
    );
    for i in [1, 2] {
        let ev = String::from_utf8_lossy(&c.nodes[i].cli(&["events"]).stdout).to_string();
        assert!(
            !ev.contains("took group alpha") && !ev.contains("took group load"),
            "n{i}: {ev}"
        );
    }
    // (Stopping the nodes moves the groups: count up to here.)
    let end = boottime_ns();
    for n in &mut c.nodes {
        n.stop();
    }
    // alpha beat on n0 only, with one token, all along.
    let before_stop: Vec<Beat> = beats(&c.beats, "alpha")
        .into_iter()
        .filter(|b| b.at < end)
        .collect();
    let runs = intervals(&before_stop);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].0, runs[0].1), (0, token));
}
