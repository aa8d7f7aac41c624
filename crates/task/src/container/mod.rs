//! Containers: where a resource's processes live, so that all of them can be
//! found and killed (rung 3 of the termination ladder, docs/design.md §4).
//!
//! Two backends, chosen once by [`Containers::detect`]:
//!
//! * **cgroup v2** (preferred): one directory per resource under a root
//!   cgroup `resmon.<pid>` created below the monitor's own cgroup. A child
//!   joins it before `exec`, and nothing it forks can leave it without
//!   privileges. `cgroup.kill` kills the whole subtree atomically, even
//!   processes forking at that moment, and `cgroup.events` tells when the
//!   last one is gone (the kernel notifies it with `POLLPRI`).
//! * **process groups** (fallback): every process of the resource carries a
//!   marker variable in its environment; a scan of `/proc` finds those plus
//!   all their descendants. Killing repeats {scan; `SIGKILL` each process and
//!   its process group} until a scan finds nothing, so children forked
//!   during a round die in the next one. Descendants that `setsid` or
//!   double-fork keep the marker (and, as the monitor is a child subreaper,
//!   stay our descendants); one that also clears its environment and leaves
//!   its process group escapes: that is the price of not having cgroups.
//!
//! Each backend's mechanics (finding, signalling, killing, waiting) are a
//! file of their own, `cgroup_tree.rs` and `marked.rs`; this file holds
//! what both share (the processes seen, those that escaped, waiting for
//! reaping) and picks the backend in each operation.

mod cgroup_tree;
mod marked;

use crate::sync::lock;
use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use resmon_contract::{FencingToken, Scope};
use rustix::process::{getpid, Pid, Signal};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cgroup;
use crate::handle::{Record, TaskCore, TaskHandle};
use crate::procfs;
use crate::reaper::Reaper;
use crate::tracker::tracker;

pub use crate::leaf::MARKER_VAR;

#[derive(Debug)]
enum Backend {
    Cgroup { root: PathBuf },
    ProcessGroups { reason: String },
}

/// Decides where resources' processes live: a cgroup v2 directory per
/// resource when cgroups are usable, else process groups.
#[derive(Debug)]
pub struct Containers {
    backend: Backend,
    /// Names this monitor in markers: `RESMON_RESOURCE=<instance>/<name>`.
    instance: String,
}

impl Containers {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo` and this process's
    /// cgroup in `/proc/self/cgroup`, creates `<mount><own path>/resmon.<pid>`
    /// (or `<...>/<root_name>`) and checks that it is usable: `mkdir` works
    /// and `cgroup.kill` exists. On any failure it falls back to process
    /// groups and records why ([`backend_description`](Self::backend_description)).
    pub fn detect(root_name: Option<&str>) -> Containers {
        Self::detect_as(root_name, false)
    }

    /// [`detect`](Self::detect) for the monitor itself: when the cgroup it
    /// runs in is delegated to it (not the hierarchy's root), it first
    /// moves into a leaf of its own (`resmon.supervisor`), so that its
    /// cgroup may give the resources' cgroups controllers; its root goes
    /// beside that leaf. A monitor that runs its binary again in place
    /// finds itself in the leaf and uses the same root.
    pub fn detect_for_monitor(root_name: Option<&str>) -> Containers {
        Self::detect_as(root_name, true)
    }

    fn detect_as(root_name: Option<&str>, settle: bool) -> Containers {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
        };
        let name = match root_name {
            Some(name) => cgroup::sanitize_name(name),
            None => format!("resmon.{}", getpid().as_raw_nonzero()),
        };
        let found = read("/proc/self/mountinfo").and_then(|mountinfo| {
            let here = cgroup::locate(&mountinfo, &read("/proc/self/cgroup")?)?;
            let own = cgroup::delegated(&here);
            let is_mount_root = cgroup::cgroup2_mounts(&mountinfo)
                .iter()
                .any(|m| m.point == own);
            if settle && here == own {
                if let Err(e) = cgroup::settle_in(&own, is_mount_root) {
                    tracing::warn!(
                        "{e}: the monitor stays in {}, whose children cannot be given controllers (limits)",
                        own.display()
                    );
                }
            }
            cgroup::prepare_root(&own, &name)
        });
        let backend = match found {
            Ok(root) => Backend::Cgroup { root },
            Err(reason) => {
                tracing::warn!("cgroups not usable, falling back to process groups: {reason}");
                Backend::ProcessGroups { reason }
            }
        };
        Containers {
            backend,
            instance: getpid().as_raw_nonzero().to_string(),
        }
    }

    /// Claims this monitor's instance for as long as the returned guard
    /// lives, so that two monitors never act on the same cgroups or
    /// markers, even when a copied or forged `instance` file gives them the
    /// same name: the cgroup root is locked (`flock` on its directory, made
    /// 0700 so no other user can open it to hold the lock), and an abstract
    /// socket named after the instance is bound (it covers the markers,
    /// which both backends give to every process). Call it before acting on
    /// anything an earlier run left.
    pub fn claim_instance(&self) -> io::Result<InstanceClaim> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        let in_use = |by: String| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "instance {} is in use by another monitor ({by}): two monitors must not share an instance; give this one a state directory of its own without a copied `instance` file",
                    self.instance
                ),
            )
        };
        let root = match &self.backend {
            Backend::Cgroup { root } => {
                let fd = rustix::fs::open(
                    root,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("opening {}: {e}", root.display()),
                    )
                })?;
                if let Err(e) = rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o700)) {
                    tracing::debug!("making {} 0700: {e}", root.display());
                }
                rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .map_err(|_| in_use(format!("its cgroup root {} is locked", root.display())))?;
                Some(fd)
            }
            Backend::ProcessGroups { .. } => None,
        };
        let addr = SocketAddr::from_abstract_name(format!("resmon/instance/{}", self.instance))?;
        let name = match UnixListener::bind_addr(&addr) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let me = rustix::process::geteuid().as_raw();
                let holder = UnixStream::connect_addr(&addr)
                    .ok()
                    .and_then(|s| rustix::net::sockopt::socket_peercred(&s).ok());
                match holder {
                    Some(cred) if cred.uid.as_raw() == 0 || cred.uid.as_raw() == me => {
                        return Err(in_use(format!("pid {}", cred.pid.as_raw_nonzero())));
                    }
                    // Another user holds the name: it cannot be a monitor
                    // of ours, and must not keep this one from starting.
                    Some(cred) => {
                        tracing::warn!(
                            "the name of instance {} is held by uid {} (pid {}), not by a monitor",
                            self.instance,
                            cred.uid.as_raw(),
                            cred.pid.as_raw_nonzero()
                        );
                        None
                    }
                    None => return Err(in_use("its name is taken".into())),
                }
            }
            Err(e) => {
                tracing::warn!("cannot claim the name of instance {}: {e}", self.instance);
                None
            }
        };
        Ok(InstanceClaim {
            _root: root,
            _name: name,
        })
    }

    /// The root cgroups of other instances beside this monitor's
    /// (`resmon.*` in the same parent) that hold processes while no running
    /// monitor holds them (their lock is free): what a monitor whose state
    /// directory was lost left running. Each with how many processes it
    /// holds. Empty without cgroups.
    pub fn unowned_roots(&self) -> Vec<(PathBuf, usize)> {
        let Backend::Cgroup { root } = &self.backend else {
            return Vec::new();
        };
        let Some(parent) = root.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|dir| dir != root)
            .filter_map(|dir| unowned_root(&dir).map(|pids| (dir, pids.len())))
            .collect()
    }

    /// Names this monitor in the markers with `instance` instead of its
    /// pid, so that a restarted monitor recognises its resources' processes.
    pub fn with_instance(mut self, instance: &str) -> Containers {
        self.instance = instance.to_owned();
        self
    }

    /// The containers left by an earlier run of this monitor for resources
    /// not in `keep`: cgroup directories under the root, or (without
    /// cgroups) names found in markers. Kill and remove them.
    pub fn leftovers(&self, keep: &[&str]) -> Vec<Container> {
        let mut names = std::collections::BTreeSet::new();
        match &self.backend {
            Backend::Cgroup { root } => {
                if let Ok(dir) = std::fs::read_dir(root) {
                    for e in dir.flatten() {
                        if e.path().is_dir() {
                            names.insert(e.file_name().to_string_lossy().into_owned());
                        }
                    }
                }
                names.retain(|n| !keep.iter().any(|k| cgroup::resource_dir(k) == *n));
                // `r.NAME` is resource NAME's; a hashed name stays as it is.
                return names
                    .into_iter()
                    .map(|n| {
                        let name = n.strip_prefix("r.").unwrap_or(&n);
                        self.container(name, Some(root.join(&n)))
                    })
                    .collect();
            }
            Backend::ProcessGroups { .. } => {
                let prefix = format!("{}/", self.instance);
                let snapshot = procfs::index().snapshot();
                for mark in snapshot.marks() {
                    if let Some(name) = mark.strip_prefix(prefix.as_bytes()) {
                        names.insert(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
        names
            .into_iter()
            .filter(|n| !keep.contains(&n.as_str()))
            .map(|n| self.container(&n, None))
            .collect()
    }

    /// Which of `resource_names` have processes right now, in one look:
    /// without cgroups one scan of `/proc` answers for all of them, where
    /// asking each [`Container::is_empty`] in turn would scan once per
    /// resource (a monitor starting a thousand resources asks this once).
    pub fn occupied(&self, resource_names: &[&str]) -> Vec<bool> {
        match &self.backend {
            // Populated, or with processes that left it (the fork tracker
            // knows them; without it this costs nothing).
            Backend::Cgroup { root } => resource_names
                .iter()
                .map(|n| {
                    cgroup::populated(&root.join(cgroup::resource_dir(n))).unwrap_or(false)
                        || !tracker()
                            .outside(&format!("{}/{n}", self.instance), &[])
                            .is_empty()
                })
                .collect(),
            Backend::ProcessGroups { .. } => {
                let snapshot = procfs::index().snapshot();
                let marks = snapshot.marks();
                resource_names
                    .iter()
                    .map(|n| marks.contains(format!("{}/{n}", self.instance).as_bytes()))
                    .collect()
            }
        }
    }

    fn container(&self, resource_name: &str, cgroup: Option<PathBuf>) -> Container {
        Container {
            inner: Arc::new(Inner {
                name: resource_name.to_owned(),
                marker: (
                    MARKER_VAR.to_owned(),
                    format!("{}/{resource_name}", self.instance),
                ),
                cgroup,
                fencing: FencingToken::default(),
                tree: Mutex::new(Weak::new()),
                seen: Mutex::new(Vec::new()),
                escaped: Mutex::new(Escaped::default()),
            }),
        }
    }

    /// Process groups only (where cgroups are turned off by configuration).
    pub fn process_groups() -> Containers {
        Containers {
            backend: Backend::ProcessGroups {
                reason: "cgroups turned off".into(),
            },
            instance: getpid().as_raw_nonzero().to_string(),
        }
    }

    /// Which backend is in use and why, e.g. `cgroup v2 at /sys/fs/cgroup/resmon.123`
    /// or `process groups (cgroup v2 not mounted)`.
    pub fn backend_description(&self) -> String {
        match &self.backend {
            Backend::Cgroup { root } => format!("cgroup v2 at {}", root.display()),
            Backend::ProcessGroups { reason } => format!("process groups ({reason})"),
        }
    }

    pub fn uses_cgroups(&self) -> bool {
        matches!(self.backend, Backend::Cgroup { .. })
    }

    /// The root cgroup directory, in cgroup mode.
    pub fn root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Cgroup { root } => Some(root),
            Backend::ProcessGroups { .. } => None,
        }
    }

    /// The container of resource `resource_name`. In cgroup mode this makes
    /// `<root>/<sanitized name>`; a directory left by an earlier run is
    /// reused if it holds no process, and refused otherwise.
    pub fn create(&self, resource_name: &str) -> io::Result<Container> {
        self.open(resource_name, false)
    }

    /// A container for a resource whose own could not be made: no cgroup,
    /// only the marker, so it is empty as long as nothing is started in it
    /// (nothing is: the resource cannot be opened).
    pub fn unopened(&self, resource_name: &str) -> Container {
        self.container(resource_name, None)
    }

    /// The container of `resource_name` as an earlier run of this monitor
    /// left it, processes and all: a restarted monitor adopts them.
    pub fn adopt(&self, resource_name: &str) -> io::Result<Container> {
        self.open(resource_name, true)
    }

    fn open(&self, resource_name: &str, adopt: bool) -> io::Result<Container> {
        let cgroup = match &self.backend {
            Backend::ProcessGroups { .. } => None,
            Backend::Cgroup { root } => {
                let dir = root.join(cgroup::resource_dir(resource_name));
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
                        if !adopt && cgroup::populated(&dir)? {
                            return Err(io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                format!(
                                    "cgroup {} of resource {resource_name:?} still holds processes \
                                     (left from an earlier run?): kill them or remove the cgroup",
                                    dir.display()
                                ),
                            ));
                        }
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("creating cgroup {}: {e}", dir.display()),
                        ))
                    }
                }
                Some(dir)
            }
        };
        Ok(self.container(resource_name, cgroup))
    }

    /// Makes the cgroup v2 `controllers` (`memory`, `cpu`, `pids`, `io`)
    /// work in every resource's cgroup: enabled in the root's
    /// `cgroup.subtree_control`, and first in its parent's when the root
    /// does not have one. What cannot be had is said, with why: no cgroups
    /// at all, or a controller the cgroup resmon runs in does not offer (a
    /// host that binds it to a cgroup v1 hierarchy, a service manager that
    /// does not delegate it).
    pub fn enable_controllers(&self, controllers: &[&str]) -> Result<(), String> {
        if controllers.is_empty() {
            return Ok(());
        }
        let root = match &self.backend {
            Backend::Cgroup { root } => root,
            Backend::ProcessGroups { reason } => {
                return Err(format!(
                    "limits need cgroup v2, and resources run in process groups here ({reason})"
                ))
            }
        };
        let available = |dir: &Path| -> Vec<String> {
            std::fs::read_to_string(dir.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let parent = root.parent().unwrap_or(root);
        for &c in controllers {
            if !available(root).iter().any(|a| a == c) {
                // The parent holds the monitor itself: it takes a controller
                // for its children only where the kernel allows (no process
                // of its own, or the root of the hierarchy).
                let _ =
                    cgroup::write_file(&parent.join("cgroup.subtree_control"), &format!("+{c}"));
            }
            if !available(root).iter().any(|a| a == c) {
                let offered = available(parent);
                return Err(format!(
                    "the {c} controller is not available to {}: {} offers [{}]; on a host whose cgroup v1 hierarchies hold it, or under a service manager that does not delegate it (systemd: Delegate=yes), cgroup v2 limits cannot be set",
                    root.display(),
                    parent.join("cgroup.controllers").display(),
                    offered.join(" ")
                ));
            }
            cgroup::write_file(&root.join("cgroup.subtree_control"), &format!("+{c}"))
                .map_err(|e| format!("enabling the {c} controller: {e}"))?;
        }
        Ok(())
    }

    /// Removes the root cgroup; do it after removing the containers. Errors
    /// are logged, not returned.
    pub fn cleanup(&self) {
        if let Backend::Cgroup { root } = &self.backend {
            if let Err(e) = std::fs::remove_dir(root) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("removing cgroup {}: {e}", root.display());
                }
            }
        }
    }
}

/// The processes `dir` holds if it is a monitor's root cgroup (`resmon.*`)
/// that holds some while no running monitor holds its lock (a running
/// monitor keeps it locked for as long as it runs).
fn unowned_root(dir: &Path) -> Option<Vec<u32>> {
    let name = dir.file_name()?.to_string_lossy();
    if !name.starts_with("resmon.") || !cgroup::populated(dir).unwrap_or(false) {
        return None;
    }
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared).ok()?;
    Some(cgroup::all_procs(dir))
}

/// Processes of monitors that are not running, found anywhere on the
/// machine: root cgroups (`resmon.*`, at any depth of every cgroup v2
/// mount) that hold processes while their lock is free, and processes whose
/// marker names an instance no running monitor has claimed. Each as a
/// phrase saying where they are and how many there are. What `resmon
/// check` lists: a monitor whose state directory was lost left them.
pub fn unowned_processes() -> Vec<String> {
    let mut out = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| cgroup::cgroup2_mounts(&m))
        .unwrap_or_default();
    let mut cgroup_pids = HashSet::new();
    for mount in mounts {
        // Depth-first, bounded: cgroup trees are shallow, and a huge one
        // must not make a check take long.
        let mut todo = vec![(mount.point, 0u32)];
        let mut seen = 0usize;
        while let Some((dir, depth)) = todo.pop() {
            seen += 1;
            if seen > 100_000 {
                break;
            }
            if let Some(pids) = unowned_root(&dir) {
                out.push(format!(
                    "cgroup {} holds {} process(es)",
                    dir.display(),
                    pids.len()
                ));
                cgroup_pids.extend(pids);
                continue;
            }
            if depth >= 16 {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                // Directories only, never through a symlink.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
    }
    // Markers: `<instance>/<name>`; an instance is claimed by listening on
    // its abstract socket name for as long as its monitor runs.
    let claimed = std::fs::read_to_string("/proc/net/unix")
        .map(|t| claimed_instances(&t))
        .unwrap_or_default();
    let snap = procfs::index().snapshot();
    let mut by_instance: std::collections::BTreeMap<String, usize> = Default::default();
    for (p, mark) in snap.marked() {
        if cgroup_pids.contains(&p) {
            continue;
        }
        let mark = String::from_utf8_lossy(mark);
        let Some((instance, _)) = mark.split_once('/') else {
            continue;
        };
        *by_instance.entry(instance.to_owned()).or_default() += 1;
    }
    for (instance, n) in by_instance {
        if !claimed.contains(&instance) {
            out.push(format!(
                "{n} process(es) marked {MARKER_VAR}={instance}/..."
            ));
        }
    }
    out
}

/// The instances whose abstract socket (`resmon/instance/ID`, see
/// [`Containers::claim_instance`]) is listening, from the text of
/// `/proc/net/unix`. Read rather than connected to: a connection would
/// wait forever on a name whose backlog another user has filled, and
/// binding the name to test it could make a starting monitor fail its
/// claim. The table is the caller's network namespace's: a monitor in
/// another one is not seen.
fn claimed_instances(net_unix: &str) -> HashSet<String> {
    // Num RefCount Protocol Flags Type St Inode Path; Flags has
    // __SO_ACCEPTCON (0x10000) on a listening socket.
    net_unix
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening =
                u32::from_str_radix(fields.get(3)?, 16).is_ok_and(|f| f & 0x1_0000 != 0);
            let id = fields.get(7)?.strip_prefix("@resmon/instance/")?;
            (listening && fields.len() == 8).then(|| id.to_owned())
        })
        .collect()
}

/// Held while a monitor runs: see [`Containers::claim_instance`].
#[derive(Debug)]
pub struct InstanceClaim {
    _root: Option<OwnedFd>,
    _name: Option<std::os::unix::net::UnixListener>,
}

struct Inner {
    name: String,
    marker: (String, String),
    cgroup: Option<PathBuf>,
    /// The group's fencing token in cluster mode, given to every process.
    fencing: FencingToken,
    /// The tree task, shared by all its handles while any is alive.
    tree: Mutex<Weak<TreeRecord>>,
    /// Processes seen in the container (pid, start time) that may not be
    /// reaped yet: `wait_empty` waits for them too.
    seen: Mutex<Vec<(u32, Option<u64>)>>,
    /// Processes found outside the container that are still the
    /// resource's (they left its cgroup): reported once each.
    escaped: Mutex<Escaped>,
}

#[derive(Default)]
struct Escaped {
    reported: HashSet<u32>,
    new: Vec<u32>,
}

/// Where one resource's processes live. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Container {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.inner.name)
            .field("cgroup", &self.inner.cgroup)
            .finish()
    }
}

impl Container {
    /// The container a [`Scope`] describes (as [`Container::scope`] gave it):
    /// how a resource type reaches its own processes without holding the
    /// monitor's [`Container`].
    pub fn from_scope(scope: &Scope) -> Container {
        let name = scope
            .marker
            .1
            .split_once('/')
            .map_or(scope.marker.1.as_str(), |(_, n)| n)
            .to_owned();
        Container {
            inner: Arc::new(Inner {
                name,
                marker: scope.marker.clone(),
                cgroup: scope.cgroup.clone(),
                fencing: scope.fencing.clone(),
                tree: Mutex::new(Weak::new()),
                seen: Mutex::new(Vec::new()),
                escaped: Mutex::new(Escaped::default()),
            }),
        }
    }

    /// Writes `limits` to its cgroup: every file of an enabled controller
    /// ([`Containers::enable_controllers`]) gets its value, an unset limit
    /// the kernel's "no limit", so changing limits needs no restart. Without
    /// a cgroup, limits that are set are an error.
    pub fn apply_limits(&self, limits: &resmon_contract::Limits) -> io::Result<()> {
        let Some(dir) = &self.inner.cgroup else {
            if limits.is_empty() {
                return Ok(());
            }
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "limits need a cgroup, and this resource has none",
            ));
        };
        let needed = limits.controllers();
        for (controller, file, value) in limits.files() {
            let path = dir.join(file);
            if !path.exists() {
                if needed.contains(&controller) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "{} is missing: the {controller} controller is not enabled for it",
                            path.display()
                        ),
                    ));
                }
                continue;
            }
            cgroup::write_file(&path, &value)?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process of it
    /// (`memory.events` `oom_kill`); `None` without a cgroup or the
    /// memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.inner.cgroup.as_ref()?;
        let events = std::fs::read_to_string(dir.join("memory.events")).ok()?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// The fencing token its processes get (cluster mode): set it when the
    /// resource's group is taken, before `online`.
    pub fn fencing(&self) -> &FencingToken {
        &self.inner.fencing
    }

    /// The resource name this container was created for.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the resource's processes must be started: the cgroup directory
    /// in cgroup mode, and always the marker variable
    /// (`RESMON_RESOURCE=<monitor pid>/<name>`). See [`SpawnSpec::set_scope`](crate::SpawnSpec::set_scope).
    pub fn scope(&self) -> Scope {
        Scope {
            cgroup: self.inner.cgroup.clone(),
            marker: self.inner.marker.clone(),
            fencing: self.inner.fencing.clone(),
        }
    }

    /// The live processes, with their start times (for pid-reuse checks)
    /// where the scan had them. A cgroup's list needs none: `wait_reaped`
    /// runs once the cgroup is empty, when a live process is never ours.
    /// Processes that left the cgroup (or lost the marker) but descend from
    /// the resource's are included, with their start times (see
    /// [`tracker`](crate::tracker)).
    fn processes(&self) -> Vec<(u32, Option<u64>)> {
        let mut own = match &self.inner.cgroup {
            Some(dir) => Container::cgroup_processes(dir),
            None => self.marked_processes(),
        };
        let known: Vec<u32> = own.iter().map(|p| p.0).collect();
        own.extend(
            self.escapees(&known)
                .into_iter()
                .map(|(pid, start)| (pid, Some(start))),
        );
        own
    }

    /// What a stop acts on: [`processes`](Self::processes), and, where
    /// forks are not followed (a monitor without root), the descendants of
    /// the cgroup's processes by parent links: a child that moved itself
    /// out of the cgroup is still its parent's child.
    fn stop_set(&self) -> Vec<(u32, Option<u64>)> {
        let mut procs = self.processes();
        if self.inner.cgroup.is_some() && !tracker().is_active() && !procs.is_empty() {
            let known: Vec<u32> = procs.iter().map(|p| p.0).collect();
            let outside = procfs::index().snapshot().descendants(&known);
            if let (false, Some(dir)) = (outside.is_empty(), &self.inner.cgroup) {
                let now = cgroup::all_procs(dir);
                let left: Vec<(u32, u64)> = outside
                    .iter()
                    .filter(|p| !now.contains(&p.pid))
                    .map(|p| (p.pid, p.start_time))
                    .collect();
                self.note_escaped(&left);
                procs.extend(left.into_iter().map(|(pid, start)| (pid, Some(start))));
            }
        }
        procs
    }

    /// Notes every process of the resource as it is now, descendants that
    /// left the cgroup included, before its main process is killed: where
    /// forks are not followed, the parent link is what finds them, and it
    /// is cut once the parent is gone.
    pub fn note_tree(&self) {
        if !tracker().is_active() && self.inner.cgroup.is_some() {
            self.remember(&self.stop_set());
        }
    }

    /// The remembered processes that have a start time (found outside the
    /// cgroup) and still run: after the cgroup is empty, what is left.
    fn remembered_alive(&self) -> Vec<(u32, u64)> {
        lock(&self.inner.seen)
            .iter()
            .filter_map(|&(pid, start)| {
                let start = start?;
                procfs::read_stat(crate::leaf::proc_root(), pid)
                    .filter(|st| st.start_time == start && !st.is_dead())
                    .map(|_| (pid, start))
            })
            .collect()
    }

    /// The resource's processes outside what its backend sees (`known`),
    /// noting new ones for [`take_escaped`](Self::take_escaped).
    fn escapees(&self, known: &[u32]) -> Vec<(u32, u64)> {
        let mut out = tracker().outside(&self.inner.marker.1, known);
        if !out.is_empty() {
            // `known` may predate a fork the tracker has seen since: a
            // candidate that is inside after all is no escapee. Every
            // candidate was forked before this second look, so it sees it.
            match &self.inner.cgroup {
                Some(dir) => {
                    let now = cgroup::all_procs(dir);
                    out.retain(|(pid, _)| !now.contains(pid));
                }
                None => out.retain(|&(pid, _)| {
                    let parent_known = procfs::read_stat(crate::leaf::proc_root(), pid)
                        .is_some_and(|st| known.contains(&st.ppid));
                    !self.carries_marker(pid) && !parent_known
                }),
            }
        }
        self.note_escaped(&out);
        out
    }

    /// Logs each process found outside the resource the first time, and
    /// keeps it for [`take_escaped`](Self::take_escaped).
    fn note_escaped(&self, found: &[(u32, u64)]) {
        if found.is_empty() {
            return;
        }
        let mut e = lock(&self.inner.escaped);
        for &(pid, _) in found {
            if e.reported.insert(pid) {
                tracing::warn!(
                    "process {pid} of resource {:?} left its {}; it is still the resource's and stops with it",
                    self.inner.name,
                    if self.inner.cgroup.is_some() { "cgroup" } else { "process tree" }
                );
                e.new.push(pid);
            }
        }
    }

    /// Processes found outside the resource's cgroup (or marker) since the
    /// last call, for the resource to report: they left, and are stopped
    /// and waited for with the rest all the same.
    pub fn take_escaped(&self) -> Vec<u32> {
        std::mem::take(&mut lock(&self.inner.escaped).new)
    }

    /// Makes every process of the resource that is running now a member
    /// the fork tracker follows (after adoption: their forks from now on
    /// stay the resource's wherever they go).
    pub fn track_all(&self) {
        for (pid, _) in self.processes() {
            tracker().register(pid, &self.inner.marker.1, None);
        }
    }

    /// Whether the kernel says process `pid` is the resource's: listed in
    /// its cgroup (or one below it), or, without cgroups, carrying its
    /// marker. What a state file says is only a hint; this is what a
    /// monitor checks before it adopts (and may later kill) a process.
    pub fn holds(&self, pid: u32) -> bool {
        match &self.inner.cgroup {
            Some(dir) => cgroup::all_procs(dir).contains(&pid),
            None => self.carries_marker(pid),
        }
    }

    /// Every live process of the resource: the `cgroup.procs` of its cgroup
    /// (and cgroups below it); without cgroups, every process whose
    /// environment holds the marker plus all their descendants.
    pub fn pids(&self) -> Vec<u32> {
        self.processes().into_iter().map(|(pid, _)| pid).collect()
    }

    /// Sends `sig` to every process of [`pids`](Self::pids), through pidfds.
    /// A process that is gone meanwhile is success.
    pub fn signal_all(&self, sig: Signal) -> io::Result<()> {
        let mut first_error = None;
        let procs = self.stop_set();
        self.remember(&procs);
        let outcome = match &self.inner.cgroup {
            Some(dir) => self.cgroup_signal(dir, &procs, sig),
            None => self.marked_signal(procs, sig),
        };
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Kills every process of the resource and returns without waiting for
    /// them to be gone (see [`wait_empty`](Self::wait_empty)).
    ///
    /// In cgroup mode it writes `1` to `cgroup.kill`. Without cgroups it
    /// repeats {find the processes; `SIGKILL` each and its process group}
    /// until a scan finds none, at most 50 rounds (a process in
    /// uninterruptible sleep can outlive them; it dies when it wakes).
    pub fn kill_all(&self) -> io::Result<()> {
        match &self.inner.cgroup {
            Some(dir) => self.cgroup_kill(dir),
            None => self.marked_kill(),
        }
    }

    /// Whether no process of the resource is left.
    pub fn is_empty(&self) -> bool {
        match &self.inner.cgroup {
            Some(dir) => self.cgroup_is_empty(dir),
            None => self.pids().is_empty(),
        }
    }

    /// Resolves once no process of the resource is left. In cgroup mode it
    /// sleeps on `cgroup.events` (the kernel raises `POLLPRI` when it
    /// changes) and re-reads it, with a slow re-read as a safety net; without
    /// cgroups it re-scans with a short backoff. Needs a tokio runtime with
    /// I/O and time enabled.
    ///
    /// "Left" includes zombies: a process leaves its cgroup before its
    /// parent is told it exited, so once the container looks empty this also
    /// waits until every process it saw (through `signal_all`, `kill_all` or
    /// here) is reaped.
    ///
    /// A cgroup killed through [`kill_all`](Self::kill_all) is replaced by a
    /// new, empty one of the same name once it is empty, so that the next
    /// process can be born into it (see [`cgroup::renew`]).
    pub async fn wait_empty(&self) {
        if !self.is_empty() {
            self.remember(&self.stop_set());
        }
        self.wait_unpopulated().await;
        self.wait_reaped().await;
        if let Some(dir) = &self.inner.cgroup {
            cgroup_tree::renew_if_killed(dir);
        }
    }

    async fn wait_unpopulated(&self) {
        match &self.inner.cgroup {
            Some(dir) => self.cgroup_wait_unpopulated(dir).await,
            None => self.marked_wait_gone().await,
        }
    }

    /// Waits until `find` finds nothing: for the exit of every process it
    /// found (a pidfd turns readable when its process exits), then looks
    /// again for any forked meanwhile. A pid reused after the look by a
    /// process elsewhere holds this up only until the next look.
    async fn wait_exits(&self, find: impl Fn() -> Vec<(u32, u64)>) {
        let mut rescan = Duration::from_millis(2);
        loop {
            let procs = find();
            if procs.is_empty() {
                return;
            }
            let exits: Vec<AsyncFd<OwnedFd>> = procs
                .iter()
                .filter_map(|&(pid, _)| procfs::pidfd(pid).ok().flatten())
                .filter_map(|fd| {
                    // SAFETY: the AsyncFd owns the pidfd, so the descriptor
                    // stays open and the same for the AsyncFd's whole life.
                    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
                })
                .collect();
            let all_exited = async {
                for fd in &exits {
                    let _ = fd.readable().await;
                }
            };
            if tokio::time::timeout(rescan, all_exited).await.is_err() {
                rescan = (rescan * 2).min(Duration::from_millis(100));
            }
        }
    }

    fn remember(&self, procs: &[(u32, Option<u64>)]) {
        let mut seen = lock(&self.inner.seen);
        for p in procs {
            if !seen.iter().any(|q| q.0 == p.0) {
                seen.push(*p);
            }
        }
    }

    /// Waits until no process seen in the container is left in `/proc`,
    /// reaping on this thread as they turn into zombies.
    async fn wait_reaped(&self) {
        let reaper = Reaper::running();
        let proc_root = crate::leaf::proc_root();
        let mut rounds = 0u32;
        loop {
            if let Some(r) = &reaper {
                r.reap_now();
            }
            let left = {
                let mut seen = lock(&self.inner.seen);
                let me = own_pid();
                seen.retain(|&(pid, start)| match procfs::read_stat(proc_root, pid) {
                    // A zombie that is not our child is not ours to reap (a
                    // process an earlier monitor started, now init's child).
                    Some(st) if st.is_dead() => st.ppid == me,
                    // Alive: the same process (not a reuse of its pid) is
                    // still there. Without a start time the pid came from
                    // the cgroup, which is empty by now: not ours.
                    Some(st) => start == Some(st.start_time),
                    None => false,
                });
                seen.len()
            };
            if left == 0 {
                return;
            }
            rounds += 1;
            // Between leaving the cgroup and becoming a zombie a process
            // takes microseconds: yield at first, then back off.
            if rounds < 200 {
                tokio::task::yield_now().await;
            } else if rounds < 1200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tracing::warn!(
                    "resource {:?}: {left} exited processes are still not reaped",
                    self.inner.name
                );
                return;
            }
        }
    }

    /// A tree task for the whole container: `terminate(code)` kills it all,
    /// it is signaled once the container is seen empty (exit code 0 if it
    /// emptied by itself). All handles from this call share one task while
    /// any of them is alive; take it after the first process started, since
    /// an empty container finishes the task at once.
    pub fn task(&self) -> TaskHandle {
        let mut slot = lock(&self.inner.tree);
        if let Some(record) = slot.upgrade() {
            return TaskHandle::new(record);
        }
        let record = Arc::new(TreeRecord {
            container: self.clone(),
            core: TaskCore::new(),
        });
        *slot = Arc::downgrade(&record);
        TaskHandle::new(record)
    }

    /// Removes the cgroup directory (and any cgroups the resource made below
    /// it); it must hold no process. Nothing to do without cgroups.
    pub fn remove(&self) -> io::Result<()> {
        match &self.inner.cgroup {
            Some(dir) => cgroup::remove_tree(dir),
            None => Ok(()),
        }
    }
}

fn own_pid() -> u32 {
    pid_u32(Some(getpid())).unwrap_or(0)
}

fn pid_u32(pid: Option<Pid>) -> Option<u32> {
    pid.and_then(|p| u32::try_from(p.as_raw_nonzero().get()).ok())
}

/// A task that is every process of a container: finished the first time
/// the container is seen empty (a tree has no exit status of its own, so
/// emptying by itself is success); killing it kills the container.
pub(crate) struct TreeRecord {
    container: Container,
    core: TaskCore,
}

impl Record for TreeRecord {
    fn core(&self) -> &TaskCore {
        &self.core
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn kill(&self) -> io::Result<()> {
        self.container.kill_all()
    }

    fn signal(&self, sig: Signal) -> io::Result<()> {
        self.container.signal_all(sig)
    }

    fn refresh(&self) -> bool {
        if self.core.is_finished() {
            return true;
        }
        if self.container.is_empty() {
            self.core.finish(0);
            return true;
        }
        false
    }

    fn finished(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async {
            tokio::select! {
                () = self.core.finished() => {}
                () = self.container.wait_empty() => self.core.finish(0),
            }
        })
    }

    fn describe(&self) -> String {
        format!("container {}", self.container.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_claimed_only_by_a_listening_socket_of_its_name() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 101 @resmon/instance/41\n\
            0000000000000000: 00000002 00000000 00000000 0001 01 102 @resmon/instance/42\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 103 /run/resmon/instance/43\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 104 @resmon/instance/44 x\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 105\n\
            garbage\n";
        let claimed = claimed_instances(table);
        assert_eq!(claimed, HashSet::from(["41".to_owned()]));
    }

    #[test]
    fn a_listening_instance_socket_is_seen_in_proc_net_unix() {
        use std::os::linux::net::SocketAddrExt;
        let id = format!("test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(format!("resmon/instance/{id}"))
                .unwrap();
        let read = || claimed_instances(&std::fs::read_to_string("/proc/net/unix").unwrap());
        assert!(!read().contains(&id));
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        assert!(read().contains(&id));
        drop(listener);
        assert!(!read().contains(&id));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// A directory standing in for a cgroup whose `controllers` are enabled:
    /// their files exist, as the kernel makes them.
    fn fake_cgroup(controllers: &[&str]) -> (tempfile::TempDir, Container) {
        let dir = tempfile::tempdir().unwrap();
        for (c, file, _) in resmon_contract::Limits::default().files() {
            if controllers.contains(&c) {
                std::fs::write(dir.path().join(file), "").unwrap();
            }
        }
        let scope = Scope {
            cgroup: Some(dir.path().to_path_buf()),
            marker: ("M".into(), "i/r".into()),
            fencing: FencingToken::default(),
        };
        (dir, Container::from_scope(&scope))
    }

    #[test]
    fn limits_are_written_and_lifted_and_a_missing_controller_is_an_error() {
        let (dir, c) = fake_cgroup(&["memory", "cpu"]);
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let mut l = resmon_contract::Limits::default();
        l.set("memory_max", &resmon_contract::LimitValue::Int(1 << 20))
            .unwrap();
        l.set("cpu_max", &resmon_contract::LimitValue::Text("150%".into()))
            .unwrap();
        c.apply_limits(&l).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("memory.high"), "max");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("cpu.weight"), "100");
        // A reload without them lifts them.
        c.apply_limits(&resmon_contract::Limits::default()).unwrap();
        assert_eq!(
            (read("memory.max"), read("cpu.max")),
            ("max".into(), "max 100000".into())
        );
        // pids is not enabled here: asking for it is an error naming it.
        l.set("pids_max", &resmon_contract::LimitValue::Int(10))
            .unwrap();
        let e = c.apply_limits(&l).unwrap_err().to_string();
        assert!(
            e.contains("pids.max is missing: the pids controller is not enabled"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 2\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(c.oom_kills(), Some(2));
    }

    #[test]
    fn without_a_cgroup_limits_are_an_error_and_none_are_fine() {
        let c = Containers::process_groups().unopened("r");
        assert!(c.apply_limits(&resmon_contract::Limits::default()).is_ok());
        let mut l = resmon_contract::Limits::default();
        l.set("pids_max", &resmon_contract::LimitValue::Int(10))
            .unwrap();
        assert!(c.apply_limits(&l).is_err());
        assert_eq!(c.oom_kills(), None);
        let e = Containers::process_groups()
            .enable_controllers(&["memory"])
            .unwrap_err();
        assert!(e.starts_with("limits need cgroup v2"), "{e}");
    }
}
