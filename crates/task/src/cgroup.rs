//! cgroup v2 plumbing: finding the hierarchy and our place in it, and
//! reading and writing cgroup files.
//!
//! The parsers take file contents and the directory helpers take their root
//! as parameters, so they are tested on strings and temporary directories.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is mounted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mount point, e.g. `/sys/fs/cgroup`.
    pub point: PathBuf,
    /// The directory of the hierarchy the mount shows (usually `/`).
    pub root: String,
}

/// Undoes the octal escapes (`\040` for a space, ...) of `/proc/self/mountinfo`.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0_u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The cgroup2 mounts listed in `/proc/self/mountinfo`. Each line is
/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
pub(crate) fn cgroup2_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            Some(Mount {
                root: String::from_utf8_lossy(&unescape(fields.get(3)?)).into_owned(),
                point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
            })
        })
        .collect()
}

/// This process's cgroup v2 path from `/proc/self/cgroup` (the `0::/path` line).
pub(crate) fn own_cgroup(self_cgroup: &str) -> Option<String> {
    self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_owned())
        .filter(|path| path.starts_with('/'))
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` gives it) under
/// one of `mounts`: the mount whose root is the longest prefix of `path`.
pub(crate) fn cgroup_dir(mounts: &[Mount], path: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|m| {
            let root = m.root.trim_end_matches('/');
            let rest = path.strip_prefix(root)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((root.len(), m, rest))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, m, rest)| m.point.join(rest.trim_start_matches('/')))
}

/// Finds the directory of this process's cgroup from the contents of
/// `/proc/self/mountinfo` and `/proc/self/cgroup`. The error says why not.
pub(crate) fn locate(mountinfo: &str, self_cgroup: &str) -> Result<PathBuf, String> {
    let mounts = cgroup2_mounts(mountinfo);
    if mounts.is_empty() {
        return Err("cgroup v2 not mounted".into());
    }
    let own =
        own_cgroup(self_cgroup).ok_or("no cgroup v2 entry (\"0::/...\") in /proc/self/cgroup")?;
    cgroup_dir(&mounts, &own)
        .ok_or_else(|| format!("our cgroup {own} is not visible under any cgroup2 mount"))
}

/// The leaf cgroup the monitor moves itself into when its own cgroup is
/// delegated to it (see [`settle_in`]).
pub(crate) const SUPERVISOR: &str = "resmon.supervisor";

/// Where the monitor's root cgroup goes, given the directory of the cgroup
/// it runs in: that cgroup, or, when the monitor already sits in its
/// [`SUPERVISOR`] leaf (a monitor that ran its binary again in place), the
/// cgroup above it.
pub(crate) fn delegated(own: &Path) -> PathBuf {
    match (own.file_name(), own.parent()) {
        (Some(n), Some(parent)) if n == SUPERVISOR => parent.to_path_buf(),
        _ => own.to_path_buf(),
    }
}

/// A cgroup below the hierarchy's root that holds a process may not give
/// its children controllers ("no internal processes"): under systemd with
/// `Delegate=yes` the service's cgroup holds the monitor itself. So the
/// monitor moves into a leaf of its own, `own/resmon.supervisor`, and
/// `own` may enable for its children the controllers limits need. Nothing
/// to do in the hierarchy's root (exempt) or when the leaf is already
/// where it runs. A failure is said and changes nothing else.
pub(crate) fn settle_in(own: &Path, is_mount_root: bool) -> Result<(), String> {
    if is_mount_root {
        return Ok(());
    }
    let leaf = own.join(SUPERVISOR);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())
        .map_err(|e| format!("moving the monitor into {}: {e}", leaf.display()))
}

/// Creates (or reuses) the directory `parent/name` as the monitor's root
/// cgroup and checks that it can kill: `cgroup.kill` must exist in it.
/// On failure a directory this call created is removed again.
pub(crate) fn prepare_root(parent: &Path, name: &str) -> Result<PathBuf, String> {
    let root = parent.join(name);
    let created = match fs::create_dir(&root) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && root.is_dir() => false,
        Err(e) => return Err(format!("cannot create {}: {e}", root.display())),
    };
    if !root.join("cgroup.kill").exists() {
        if created {
            let _ = fs::remove_dir(&root);
        }
        return Err(format!(
            "{} has no cgroup.kill (kernel older than 5.14?)",
            root.display()
        ));
    }
    Ok(root)
}

/// The `populated` field of a `cgroup.events` file.
pub(crate) fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|line| match line.trim() {
        "populated 0" => Some(false),
        "populated 1" => Some(true),
        _ => None,
    })
}

/// The pids listed in a `cgroup.procs` file.
pub(crate) fn parse_procs(procs: &str) -> Vec<u32> {
    procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A directory name for the monitor's root cgroup (`resmon.INSTANCE`): the
/// name itself when it is plain (ASCII letters, digits, `_`, `-`, `.`; not
/// starting with a dot or `cgroup.`), else a cleaned-up name plus a hash
/// of the original.
pub(crate) fn sanitize_name(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let reserved = clean.is_empty() || clean.starts_with('.') || clean.starts_with("cgroup.");
    if clean == name && !reserved && clean.len() <= 200 {
        return clean;
    }
    if reserved {
        clean.insert(0, '_');
    }
    clean.truncate(200);
    format!("{clean}-{:08x}", fnv1a(name) as u32)
}

/// The directory of resource `name` under the monitor's root cgroup:
/// `r.NAME` when the name is plain (ASCII letters, digits, `_`, `-`, `.`;
/// at most 200 bytes), else `h.CLEANED-HASH` with a 64-bit hash of the
/// name. The prefixes give resources a name space of their own: no
/// resource's directory is a control file of the kernel's (those are
/// `CONTROLLER.FILE`, and no controller is called `r` or `h`), and since a
/// plain name never maps to `h.` two names never share a directory.
pub(crate) fn resource_dir(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.is_empty() && name.len() <= 200 && name.chars().all(plain) {
        return format!("r.{name}");
    }
    let mut clean: String = name
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let mut cut = clean.len().min(200);
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    clean.truncate(cut);
    format!("h.{clean}-{:016x}", fnv1a(name))
}

/// FNV-1a: small, stable across runs and Rust versions.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether an error reading a cgroup file means the cgroup is gone (it was
/// removed, which the kernel allows only once it is empty).
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error())
}

/// Reads `populated` from `dir/cgroup.events`; a removed cgroup is empty.
pub(crate) fn populated(dir: &Path) -> io::Result<bool> {
    let path = dir.join("cgroup.events");
    match fs::read_to_string(&path) {
        Ok(text) => parse_populated(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no \"populated\" line in {}", path.display()),
            )
        }),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// Every pid in `dir` and its descendant cgroups, as a list.
pub(crate) fn all_procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    procs_recursive(dir, &mut out);
    out
}

/// Every pid in `dir` and its descendant cgroups.
pub(crate) fn procs_recursive(dir: &Path, out: &mut Vec<u32>) {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(text) => out.extend(parse_procs(&text)),
        Err(e) if is_gone(&e) => return,
        Err(e) => tracing::warn!("reading {}: {e}", path.display()),
    }
    for sub in subdirs(dir) {
        procs_recursive(&sub, out);
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes `value` to the cgroup file `path`, naming the file in the error.
pub(crate) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// Removes the cgroup `dir` and any cgroups below it (deepest first). Each
/// must be empty of processes. A missing directory is fine.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("removing cgroup {}: {e}", dir.display()),
        )),
    }
}

/// Replaces the empty cgroup `dir` (and any cgroups below it) with a new
/// one of the same name. A cgroup once killed through `cgroup.kill` kills
/// every child later born into it by `clone3(CLONE_INTO_CGROUP)` on some
/// kernels; a new one has never been killed. Fails, leaving `dir` as it
/// was, while it holds a process.
pub(crate) fn renew(dir: &Path) -> io::Result<()> {
    remove_tree(dir)?;
    fs::create_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    const MOUNTINFO_UNIFIED: &str = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_cgroup2_mounts_only() {
        assert_eq!(
            cgroup2_mounts(MOUNTINFO_HYBRID),
            vec![Mount {
                point: "/sys/fs/cgroup/unified".into(),
                root: "/".into()
            }]
        );
        assert_eq!(cgroup2_mounts(MOUNTINFO_UNIFIED).len(), 1);
        assert!(cgroup2_mounts("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").is_empty());
        assert!(cgroup2_mounts("garbage\n\n").is_empty());
    }

    #[test]
    fn mount_points_are_unescaped() {
        let info = "40 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mounts(info)[0].point,
            PathBuf::from("/mnt/my cgroups")
        );
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let hybrid = "9:name=systemd:/x\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(own_cgroup(hybrid).as_deref(), Some("/"));
        let unified = "0::/system.slice/resmon.service\n";
        assert_eq!(
            own_cgroup(unified).as_deref(),
            Some("/system.slice/resmon.service")
        );
        assert_eq!(own_cgroup("4:memory:/a\n"), None);
    }

    #[test]
    fn locate_joins_mount_and_path() {
        assert_eq!(
            locate(MOUNTINFO_UNIFIED, "0::/system.slice/resmon.service\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup/system.slice/resmon.service")
        );
        assert_eq!(
            locate(MOUNTINFO_HYBRID, "0::/\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        // A mount showing only a subtree (a bind mount of /system.slice).
        let sub = "30 22 0:26 /system.slice /cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate(sub, "0::/system.slice/a.service\n").unwrap(),
            PathBuf::from("/cg/a.service")
        );
        assert!(locate(sub, "0::/user.slice\n")
            .unwrap_err()
            .contains("not visible"));
        assert!(locate("", "0::/\n").unwrap_err().contains("not mounted"));
        assert!(locate(MOUNTINFO_UNIFIED, "1:cpu:/\n").is_err());
    }

    #[test]
    fn prepare_root_needs_cgroup_kill() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare_root(tmp.path(), "resmon.1").unwrap_err();
        assert!(err.contains("cgroup.kill"), "{err}");
        assert!(
            !tmp.path().join("resmon.1").exists(),
            "created dir is removed again"
        );

        // A directory that looks like a cgroup (has cgroup.kill) is reused.
        fs::create_dir(tmp.path().join("resmon.2")).unwrap();
        fs::write(tmp.path().join("resmon.2/cgroup.kill"), "").unwrap();
        assert_eq!(
            prepare_root(tmp.path(), "resmon.2").unwrap(),
            tmp.path().join("resmon.2")
        );

        let err = prepare_root(&tmp.path().join("missing"), "x").unwrap_err();
        assert!(err.contains("cannot create"), "{err}");
    }

    #[test]
    fn parses_events_and_procs() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
        assert_eq!(parse_procs("12\n345\n\n"), vec![12, 345]);
        assert!(parse_procs("").is_empty());
    }

    #[test]
    fn names_are_sanitized_without_collisions() {
        assert_eq!(sanitize_name("web-1.db_x"), "web-1.db_x");
        let a = sanitize_name("a/b");
        let b = sanitize_name("a b");
        assert!(a.starts_with("a_b-") && b.starts_with("a_b-"), "{a} {b}");
        assert_ne!(a, b);
        for bad in ["", ".", "..", "cgroup.procs", "../x"] {
            let s = sanitize_name(bad);
            assert!(
                !s.starts_with('.') && !s.starts_with("cgroup.") && !s.contains('/'),
                "{s}"
            );
            assert!(!s.is_empty());
        }
        assert!(sanitize_name(&"x".repeat(300)).len() <= 209);
    }

    #[test]
    fn every_resource_name_has_a_directory_of_its_own() {
        assert_eq!(resource_dir("web-1.db_x"), "r.web-1.db_x");
        // A hashed name's directory cannot be a plain name's.
        let hashed = resource_dir("cgroup procs");
        assert!(hashed.starts_with("h.cgroup_procs-"), "{hashed}");
        let plain = hashed.strip_prefix("h.").unwrap();
        assert_ne!(resource_dir(plain), hashed);
        assert_ne!(resource_dir("a/b"), resource_dir("a b"));
        for odd in ["", ".", "..", "../x", "é", &"x".repeat(300)] {
            let d = resource_dir(odd);
            assert!(d.len() <= 2 + 200 + 17 && !d.contains('/'), "{d}");
            assert!(d != "." && d != "..");
        }
        // No control file the kernel exposes here is a resource's directory.
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| {
                        l.split(" - ")
                            .nth(1)
                            .is_some_and(|t| t.starts_with("cgroup2 "))
                    })
                    .and_then(|l| l.split(' ').nth(4).map(str::to_string))
            });
        if let Some(mount) = mount {
            for e in std::fs::read_dir(mount).unwrap().flatten() {
                if e.path().is_file() {
                    let file = e.file_name().to_string_lossy().into_owned();
                    assert!(resource_dir(&file).starts_with("r."), "{file}");
                    assert!(!file.starts_with("r.") && !file.starts_with("h."), "{file}");
                }
            }
        }
    }

    #[test]
    fn remove_tree_removes_deepest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        remove_tree(&dir).unwrap();
    }
}
