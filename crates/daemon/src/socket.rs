//! The API socket: bound so that no other local user can redirect it, and
//! removed at exit only while it is still the monitor's (see
//! docs/security.md, "The API socket cannot be hijacked").

use crate::private_dir;
use anyhow::{bail, Context};
use std::path::Path;
use tokio::net::UnixListener;

/// The API socket as bound: removed at exit only while the entry at its
/// path is still the one this monitor made.
pub(crate) struct BoundSocket {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
    /// `(st_dev, st_ino)` of the socket file.
    id: (u64, u64),
}

impl BoundSocket {
    pub(crate) fn remove(&self) {
        if let Ok(Some(st)) = private_dir::lstat(&self.dir, &self.name) {
            if (st.st_dev, st.st_ino) == self.id {
                let _ = rustix::fs::unlinkat(
                    &self.dir,
                    self.name.as_os_str(),
                    rustix::fs::AtFlags::empty(),
                );
            }
        }
    }
}

/// Binds the API socket without a path another user could redirect.
///
/// The directory must be owned by root or the monitor's user and be
/// writable by others only when sticky (see [`private_dir::open_shared`]).
/// An entry already at the path is removed only when it is a stale socket
/// of the monitor's own uid: a live one means another monitor, and
/// anything else (a regular file, a symlink, another user's socket) is
/// refused, never deleted. The socket is bound in a private directory made
/// for the purpose, given its mode there, and renamed into place, so its
/// `chmod` can never be turned onto another file.
pub(crate) async fn bind(path: &Path) -> anyhow::Result<(UnixListener, BoundSocket)> {
    let (Some(dir_path), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("[monitor] socket {}: not a file path", path.display());
    };
    let (dir, kind) = private_dir::open_shared(dir_path)
        .map_err(|e| anyhow::anyhow!("[monitor] socket: the socket directory {e}"))?;
    let uid = rustix::process::geteuid().as_raw();
    if let Some(st) =
        private_dir::lstat(&dir, name).with_context(|| format!("looking at {}", path.display()))?
    {
        let is_socket =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket;
        if !is_socket {
            bail!(
                "{} exists and is {}, not a socket: resmon removes only stale sockets of its own; remove it or set [monitor] socket to another path",
                path.display(),
                private_dir::kind_of(&st)
            );
        }
        if st.st_uid != uid {
            bail!(
                "{} is a socket of uid {}, not of this monitor's uid {uid}{}: remove it or set [monitor] socket to another path",
                path.display(),
                st.st_uid,
                if kind == private_dir::Shared::Sticky { " (in a directory every user can write)" } else { "" }
            );
        }
        if tokio::net::UnixStream::connect(private_dir::via_fd(&dir, name))
            .await
            .is_ok()
        {
            bail!(
                "another monitor is already listening on {}; stop it or set [monitor] socket to another path",
                path.display()
            );
        }
        rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty())
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // A private directory beside the socket's final place (the same file
    // system, so the rename is atomic): nobody else can enter it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let tmp_name = format!(".resmon-bind.{}.{nanos:08x}", std::process::id());
    let tmp_name = std::ffi::OsStr::new(&tmp_name);
    let _ = rustix::fs::unlinkat(&dir, tmp_name, rustix::fs::AtFlags::REMOVEDIR);
    rustix::fs::mkdirat(&dir, tmp_name, rustix::fs::Mode::from_raw_mode(0o700))
        .with_context(|| format!("creating a private directory in {}", dir_path.display()))?;
    let bound = (|| -> anyhow::Result<(std::os::unix::net::UnixListener, (u64, u64))> {
        let tmp = rustix::fs::openat(
            &dir,
            tmp_name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let sock = std::ffi::OsStr::new("s");
        let listener = std::os::unix::net::UnixListener::bind(private_dir::via_fd(&tmp, sock))
            .with_context(|| format!("binding {}", path.display()))?;
        // Anyone may connect; every request is checked against its caller's rights.
        rustix::fs::chmodat(
            &tmp,
            sock,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::AtFlags::empty(),
        )
        .with_context(|| format!("setting the mode of {}", path.display()))?;
        let st = rustix::fs::statat(&tmp, sock, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        rustix::fs::renameat(&tmp, sock, &dir, name)
            .with_context(|| format!("moving the socket into place at {}", path.display()))?;
        Ok((listener, (st.st_dev, st.st_ino)))
    })();
    let _ = rustix::fs::unlinkat(&dir, tmp_name, rustix::fs::AtFlags::REMOVEDIR);
    let (listener, id) = bound?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    Ok((
        listener,
        BoundSocket {
            dir,
            name: name.to_os_string(),
            id,
        },
    ))
}
