//! Directories the monitor writes in, opened so that no other local user can
//! redirect what it writes.
//!
//! A root monitor that writes through a path another user can change writes
//! wherever that user points it: a symlink planted at `state.tmp` or at the
//! socket path makes root overwrite or `chmod` a file of the attacker's
//! choosing. So a directory is reached component by component from `/` with
//! `openat(O_NOFOLLOW)`: a symlink is followed only when it sits in a
//! directory no other user can write (its author is then root or the
//! monitor's own user), and every file inside is then opened relative to the
//! directory's descriptor, never by path again. What the directory itself
//! must be is checked on that descriptor (`fstat`), so the check and the use
//! name the same directory:
//!
//! * [`open_private`] (the state directory): owned by the monitor's uid, not
//!   writable by group or others; created 0700 when missing.
//! * [`open_shared`] (the socket's directory): owned by root or the
//!   monitor's uid; writable by others only when sticky (like `/tmp`).

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Component, Path};

/// Why a directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is a symlink in {parent}, a directory other users can write: refusing to follow it; name the real directory instead")]
    UntrustedSymlink { path: String, parent: String },
    #[error("{path} is owned by uid {owner} with mode {mode}; {wanted}")]
    Untrusted {
        path: String,
        owner: u32,
        mode: Octal,
        wanted: String,
    },
}

/// A mode printed as `0755`.
#[derive(Debug)]
pub struct Octal(pub u32);

impl fmt::Display for Octal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0 & 0o7777)
    }
}

fn io_error(path: &Path, e: impl Into<io::Error>) -> DirError {
    DirError::Io {
        path: path.display().to_string(),
        source: e.into(),
    }
}

/// Whether only root or `uid` can change the entries of a directory with
/// this owner and mode.
fn only_trusted_write(st: &rfs::Stat, uid: u32) -> bool {
    (st.st_uid == 0 || st.st_uid == uid) && st.st_mode & 0o022 == 0
}

/// Walks `path` from `/`, creating missing directories when `create` (the
/// last with `mode`, the ones above it 0755), refusing symlinks in
/// directories other users can write.
/// Returns the directory's descriptor and its `fstat`.
fn walk(path: &Path, create: bool, mode: u32) -> Result<(OwnedFd, rfs::Stat), DirError> {
    if !path.is_absolute() {
        return Err(io_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"),
        ));
    }
    let uid = rustix::process::geteuid().as_raw();
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut cur = rfs::open("/", dir_flags, Mode::empty()).map_err(|e| io_error(path, e))?;
    let mut cur_path = std::path::PathBuf::from("/");
    for comp in path.components() {
        let name: &OsStr = match comp {
            Component::RootDir => continue,
            Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io_error(
                    path,
                    io::Error::new(io::ErrorKind::InvalidInput, "\"..\" is not allowed here"),
                ))
            }
        };
        let next_path = cur_path.join(name);
        let is_last = next_path.as_path() == path;
        let new_mode = if is_last { mode } else { 0o755 };
        let parent_st = rfs::fstat(&cur).map_err(|e| io_error(&cur_path, e))?;
        let next = loop {
            match rfs::openat(&cur, name, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(fd) => break fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&cur, name, Mode::from_raw_mode(new_mode)) {
                        Ok(()) | Err(Errno::EXIST) => continue,
                        Err(e) => return Err(io_error(&next_path, e)),
                    }
                }
                // ELOOP: a symlink (ENOTDIR with O_NOFOLLOW on some
                // kernels when the link points at a non-directory).
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let is_link = rfs::statat(&cur, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| {
                            rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink
                        })
                        .unwrap_or(false);
                    if !is_link {
                        return Err(io_error(&next_path, Errno::NOTDIR));
                    }
                    if !only_trusted_write(&parent_st, uid) {
                        return Err(DirError::UntrustedSymlink {
                            path: next_path.display().to_string(),
                            parent: cur_path.display().to_string(),
                        });
                    }
                    break rfs::openat(&cur, name, dir_flags, Mode::empty())
                        .map_err(|e| io_error(&next_path, e))?;
                }
                Err(e) => return Err(io_error(&next_path, e)),
            }
        };
        cur = next;
        cur_path = next_path;
    }
    let st = rfs::fstat(&cur).map_err(|e| io_error(path, e))?;
    Ok((cur, st))
}

/// A directory that only the monitor's user may change: owned by it, not
/// writable by group or others. Created (0700, and 0755 for missing
/// parents) when missing.
pub fn open_private(path: &Path) -> Result<OwnedFd, DirError> {
    let uid = rustix::process::geteuid().as_raw();
    let (fd, st) = walk(path, true, 0o700)?;
    if st.st_uid != uid || st.st_mode & 0o022 != 0 {
        return Err(DirError::Untrusted {
            path: path.display().to_string(),
            owner: st.st_uid,
            mode: Octal(st.st_mode),
            wanted: format!(
                "it must be owned by the monitor's uid {uid} and not writable by group or others (e.g. `chown {uid} {0} && chmod 0700 {0}`, or remove it and resmon creates it)",
                path.display()
            ),
        });
    }
    Ok(fd)
}

/// How much a directory where the socket lives can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Only root or the monitor's user can change its entries.
    Private,
    /// Others can create entries (sticky, like `/tmp`), but not remove or
    /// rename ours.
    Sticky,
}

/// The directory of the API socket: owned by root or the monitor's user,
/// writable by others only when sticky. Missing directories are created
/// (0755).
pub fn open_shared(path: &Path) -> Result<(OwnedFd, Shared), DirError> {
    let uid = rustix::process::geteuid().as_raw();
    let (fd, st) = walk(path, true, 0o755)?;
    let owner_ok = st.st_uid == 0 || st.st_uid == uid;
    let kind = if owner_ok && st.st_mode & 0o022 == 0 {
        Shared::Private
    } else if owner_ok && st.st_mode & 0o1000 != 0 {
        Shared::Sticky
    } else {
        return Err(DirError::Untrusted {
            path: path.display().to_string(),
            owner: st.st_uid,
            mode: Octal(st.st_mode),
            wanted: format!(
                "other users could replace the socket: choose a directory owned by root or uid {uid} that only its owner can write (or a sticky one such as /tmp)"
            ),
        });
    };
    Ok((fd, kind))
}

/// `/proc/self/fd/N/NAME`: a path that reaches `name` through the open
/// directory `dir` (for calls that take only paths, like `bind`).
pub fn via_fd(dir: &impl AsFd, name: &OsStr) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    p.push(name);
    p
}

/// Opens `name` in `dir` for reading, refusing a symlink.
pub fn read_file(dir: &impl AsFd, name: &str) -> io::Result<Vec<u8>> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut f = std::fs::File::from(fd);
    let mut out = Vec::new();
    io::Read::read_to_end(&mut f, &mut out)?;
    Ok(out)
}

/// Opens (creating, 0600) `name` in `dir` for writing, refusing a symlink.
pub fn create_file(dir: &impl AsFd, name: &str, truncate: bool) -> io::Result<std::fs::File> {
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if truncate {
        flags |= OFlags::TRUNC;
    }
    let fd = rfs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    let f = std::fs::File::from(fd);
    // A file that existed keeps its mode: make it the monitor's alone.
    rfs::fchmod(&f, Mode::from_raw_mode(0o600))?;
    Ok(f)
}

/// Writes `name` in `dir` so that a crash leaves the old or the new
/// content: a temporary file, fsync, `renameat`, fsync of the directory.
pub fn write_atomically(dir: &impl AsFd, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    {
        let mut f = create_file(dir, &tmp, true)?;
        io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
    }
    rfs::renameat(dir, tmp.as_str(), dir, name)?;
    rfs::fsync(dir)?;
    Ok(())
}

/// The entry `name` of `dir` as `lstat` sees it, if there is one.
pub fn lstat(dir: &impl AsFd, name: &OsStr) -> io::Result<Option<rfs::Stat>> {
    match rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What kind of file an `lstat` saw, in words.
pub fn kind_of(st: &rfs::Stat) -> &'static str {
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::RegularFile => "a regular file",
        rfs::FileType::Directory => "a directory",
        rfs::FileType::Symlink => "a symlink",
        rfs::FileType::Socket => "a socket",
        rfs::FileType::Fifo => "a FIFO",
        rfs::FileType::CharacterDevice | rfs::FileType::BlockDevice => "a device",
        rfs::FileType::Unknown => "a file of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_dir_is_created_0700_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        open_private(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Writable by others: refused, naming owner and mode.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_private(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0777") && e.contains("owned by uid"), "{e}");
    }

    #[test]
    fn symlinks_are_followed_only_from_trusted_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // The temp dir is ours and 0700: its symlinks are trusted.
        open_private(&link).unwrap();
        // In a directory others can write, a symlink is refused.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_private(&link).unwrap_err().to_string();
        assert!(e.contains("is a symlink in"), "{e}");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn files_in_a_dir_refuse_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_private(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("target"), "keep").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("target"), tmp.path().join("x.tmp")).unwrap();
        assert!(write_atomically(&dir, "x", b"new").is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("target")).unwrap(),
            "keep"
        );
        std::fs::remove_file(tmp.path().join("x.tmp")).unwrap();
        write_atomically(&dir, "x", b"new").unwrap();
        assert_eq!(read_file(&dir, "x").unwrap(), b"new");
    }

    #[test]
    fn a_shared_dir_must_be_sticky_when_others_can_write() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("sock");
        std::fs::create_dir(&d).unwrap();
        assert_eq!(open_shared(&d).unwrap().1, Shared::Private);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(open_shared(&d).unwrap().1, Shared::Sticky);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_shared(&d).unwrap_err().to_string();
        assert!(e.contains("other users could replace the socket"), "{e}");
    }
}
