//! The state directory: what a monitor killed without warning needs to pick
//! up its running resources again.
//!
//! * `instance`: this monitor's name in cgroup paths and process markers,
//!   made once and kept, so a restarted monitor finds the same cgroups and
//!   marked processes.
//! * `state.json`: per resource, what its config was (type and params), whether
//!   it is wanted online, and what its type saved to find it running again
//!   (`Resource::persist`, e.g. the main pid and its start time). Written
//!   atomically (temporary file, fsync, rename) off the event loop, one
//!   write at a time, the next starting as soon as the last one ended while
//!   something changed; once more on a clean stop.
//! * `cluster-lease.json` (cluster mode): the etcd lease this node's
//!   monitor holds, so that a monitor restarted within the fence guard's
//!   grace takes it up again and keeps its groups. A hint like the rest:
//!   etcd must confirm the lease still holds this node's key.
//! * `lock`: held (`flock`) while a monitor runs, so two monitors never share
//!   a state directory.
//!
//! The directory is the monitor's alone: owned by its uid and writable by
//! nobody else (see [`private_dir`](crate::private_dir)), and every file in
//! it is opened relative to the directory's descriptor without following
//! symlinks. What is read back is a hint: a saved pid is adopted only once
//! the kernel confirms it is the same process and the resource's.

use crate::private_dir;
use resmon_contract::State;
use resmon_task::lock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The saved state of every resource.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SavedState {
    pub version: u32,
    pub resources: BTreeMap<String, SavedResource>,
}

/// One resource as the last run left it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SavedResource {
    /// Its type and params as configured: a resource whose fingerprint
    /// changed is restarted, not adopted.
    pub fingerprint: String,
    pub wanted_online: bool,
    pub state: State,
    pub restarts: u32,
    /// In maintenance: it stays so across a restart of the monitor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
    /// What its type needs to find it running again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<serde_json::Value>,
}

pub const VERSION: u32 = 1;

/// The etcd lease of this node's monitor, as `cluster-lease.json` has it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    pub node: String,
    pub key_prefix: String,
    pub lease: i64,
}

const LEASE_FILE: &str = "cluster-lease.json";

/// What decides whether a resource is the same one as before.
pub fn fingerprint(type_name: &str, params: &serde_json::Value) -> String {
    format!("{type_name} {params}")
}

/// An open, locked state directory.
pub struct StateDir {
    dir: PathBuf,
    fd: OwnedFd,
    instance: String,
    _lock: File,
    /// The sequence number of the last snapshot written: writes run off the
    /// event loop and may finish out of order; an older one is dropped.
    written: std::sync::Mutex<u64>,
    /// Why the last write failed; `None` once one works again.
    problem: std::sync::Mutex<Option<String>>,
}

impl StateDir {
    /// Opens (creating it, mode 0700) and locks `dir`, which must be owned
    /// by the monitor's uid and not writable by group or others.
    pub fn open(dir: &Path) -> io::Result<StateDir> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", dir.display()))
        };
        let fd = private_dir::open_private(dir).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the state directory {e}"),
            )
        })?;
        let lock = private_dir::create_file(&fd, "lock", false)
            .map_err(|e| ctx("opening the lock of", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another monitor is using the state directory {}; stop it or set [monitor] state_dir to another directory",
                    dir.display()
                ),
            )
        })?;
        let instance = match private_dir::read_file(&fd, "instance") {
            Ok(s) if valid_instance(String::from_utf8_lossy(&s).trim()) => {
                String::from_utf8_lossy(&s).trim().to_string()
            }
            _ => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let id = format!(
                    "{:08x}",
                    (now.as_nanos() as u32) ^ std::process::id().rotate_left(16)
                );
                private_dir::write_atomically(&fd, "instance", id.as_bytes())
                    .map_err(|e| ctx("writing the instance of", e))?;
                id
            }
        };
        Ok(StateDir {
            dir: dir.to_path_buf(),
            fd,
            instance,
            _lock: lock,
            written: std::sync::Mutex::new(0),
            problem: std::sync::Mutex::new(None),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory's descriptor: files in it are opened relative to it.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The saved state, if any. A file that cannot be read or understood
    /// is reported and ignored: the monitor then starts its resources
    /// afresh, after killing what the earlier run left.
    pub fn load(&self) -> Option<SavedState> {
        let file = self.dir.join("state.json");
        let text = match private_dir::read_file(&self.fd, "state.json") {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; starting afresh", file.display());
                return None;
            }
        };
        match serde_json::from_str::<SavedState>(&text) {
            Ok(s) if s.version == VERSION => Some(s),
            Ok(s) => {
                tracing::warn!(
                    "{} has version {}, not {VERSION}; starting afresh",
                    file.display(),
                    s.version
                );
                None
            }
            Err(e) => {
                tracing::warn!("{} is not valid: {e}; starting afresh", file.display());
                None
            }
        }
    }

    pub fn save(&self, state: &SavedState) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        private_dir::write_atomically(&self.fd, "state.json", &text)
    }

    /// Writes snapshot number `seq` unless a later one was written already.
    /// Returns what changed in [`problem`](Self::problem): `Some(Some(e))`
    /// when saving just started to fail, `Some(None)` when it works again.
    pub fn save_in_order(&self, seq: u64, state: &SavedState) -> Option<Option<String>> {
        let mut written = lock(&self.written);
        if seq <= *written {
            return None;
        }
        let result = self.save(state);
        let mut problem = lock(&self.problem);
        let was = problem.is_some();
        match result {
            Ok(()) => {
                *written = seq;
                *problem = None;
                was.then_some(None)
            }
            Err(e) => {
                let why = format!(
                    "the state is not being saved ({}: {e}): operator commands since then are lost if the monitor restarts",
                    self.dir.display()
                );
                let first = !was;
                *problem = Some(why.clone());
                tracing::error!("{why}");
                first.then_some(Some(why))
            }
        }
    }

    /// The lease an earlier monitor recorded, if any (a file that does not
    /// parse is no record).
    pub fn load_lease(&self) -> Option<LeaseRecord> {
        let text = private_dir::read_file(&self.fd, LEASE_FILE).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records this monitor's lease, or (`None`) that it holds none.
    pub fn save_lease(&self, record: Option<&LeaseRecord>) -> io::Result<()> {
        match record {
            Some(r) => {
                let text = serde_json::to_vec(r).map_err(io::Error::other)?;
                private_dir::write_atomically(&self.fd, LEASE_FILE, &text)
            }
            None => {
                match rustix::fs::unlinkat(&self.fd, LEASE_FILE, rustix::fs::AtFlags::empty()) {
                    Ok(()) => Ok(()),
                    Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Why the state cannot be saved now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }
}

fn valid_instance(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where state lives when the config does not say.
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/resmon");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("resmon");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Path::new(&home).join(".local/state/resmon");
    }
    // Never a shared place like /tmp: the passwd entry's home directory.
    let uid = rustix::process::geteuid().as_raw();
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) if user.dir.is_absolute() && user.dir != Path::new("/") => {
            user.dir.join(".local/state/resmon")
        }
        _ => PathBuf::from(format!("/var/tmp/resmon-{uid}/state")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_the_instance_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let instance;
        {
            let sd = StateDir::open(&dir).unwrap();
            instance = sd.instance().to_string();
            assert!(sd.load().is_none());
            let mut s = SavedState {
                version: VERSION,
                ..Default::default()
            };
            s.resources.insert(
                "web".into(),
                SavedResource {
                    fingerprint: fingerprint("process", &serde_json::json!({"command": "x"})),
                    wanted_online: true,
                    state: State::Online,
                    restarts: 2,
                    maintenance: true,
                    saved: Some(serde_json::json!({"pid": 42})),
                },
            );
            sd.save(&s).unwrap();
            assert_eq!(sd.load(), Some(s));
            // A second monitor on the same directory is refused.
            let e = StateDir::open(&dir).err().unwrap();
            assert!(e
                .to_string()
                .contains("another monitor is using the state directory"));
        }
        let again = StateDir::open(&dir).unwrap();
        assert_eq!(again.instance(), instance);
        assert!(again.load().is_some());
    }

    #[test]
    fn a_corrupt_state_file_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = StateDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("state.json"), "{ not json").unwrap();
        assert!(sd.load().is_none());
    }
}
