//! An example resmon plugin: the `lockfile` resource type.
//!
//! A `lockfile` resource owns an exclusive `flock` on a file: online takes
//! the lock (and writes the holder's name into the file), offline releases
//! it, and the health checks say whether the lock is still held on the file
//! that is at the path now. Because the lock belongs to an open file of the
//! host process, it is released by the kernel when the host dies, so a
//! crashed or killed host never leaves it held.
//!
//! ```toml
//! [[plugin]]
//! type = "lockfile"
//! library = "target/release/libresmon_example_lockfile.so"
//!
//! [[resource]]
//! name = "leader-lock"
//! type = "lockfile"
//! params = { path = "/run/myapp/leader.lock" }
//! ```

use resmon_sdk::{
    export_resource_types, json, ControlError, Handle, Level, Resource, ResourceType, Status,
};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The control code of the contract that asks for private properties.
const GET_PRIVATE_PROPERTIES: u32 = 4;

struct LockFileType;

struct LockFile {
    name: String,
    path: PathBuf,
    handle: Handle,
    /// The open, locked file while online. `terminate` takes it too, so it
    /// sits behind a mutex.
    held: Mutex<Option<File>>,
}

impl ResourceType for LockFileType {
    type Resource = LockFile;

    fn serves(type_name: &str) -> bool {
        type_name == "lockfile"
    }

    fn new() -> Result<Self, String> {
        Ok(LockFileType)
    }

    fn open(&self, name: &str, params: &json::Value, handle: Handle) -> Result<LockFile, String> {
        let path = params
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .ok_or("params.path must be an absolute file path")?;
        if let Some(unknown) = params
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "path"))
        {
            return Err(format!(
                "unknown parameter {unknown:?}; the one parameter is path"
            ));
        }
        Ok(LockFile {
            name: name.to_string(),
            path: PathBuf::from(path),
            handle,
            held: Mutex::new(None),
        })
    }
}

impl LockFile {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Resource for LockFile {
    fn online(&self) -> Result<Status, String> {
        let mut held = self.held();
        if held.is_some() {
            return Ok(Status::Done);
        }
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| format!("opening {}: {e}", self.path.display()))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => {
                format!("{} is locked by another holder", self.path.display())
            }
            std::fs::TryLockError::Error(e) => format!("locking {}: {e}", self.path.display()),
        })?;
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", self.name))
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        *held = Some(file);
        self.handle.log(
            Level::Info,
            format!("holding the lock on {}", self.path.display()),
        );
        Ok(Status::Done)
    }

    fn offline(&self) -> Result<Status, String> {
        // Closing the file releases the lock.
        self.held().take();
        Ok(Status::Done)
    }

    fn terminate(&self) {
        self.held().take();
    }

    fn looks_alive(&self) -> bool {
        self.held().is_some()
    }

    fn is_alive(&self) -> bool {
        // Held, and on the file that is at the path now (not one that was
        // deleted or replaced since).
        let held = self.held();
        let Some(file) = held.as_ref() else {
            return false;
        };
        match (file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(ours), Ok(there)) => ours.ino() == there.ino() && ours.dev() == there.dev(),
            _ => false,
        }
    }

    fn resource_control(&self, code: u32, _input: &[u8]) -> Result<Vec<u8>, ControlError> {
        match code {
            GET_PRIVATE_PROPERTIES => Ok(json::json!({
                "path": self.path,
                "held": self.held().is_some(),
            })
            .to_string()
            .into_bytes()),
            _ => Err(ControlError::NotSupported),
        }
    }
}

export_resource_types!(LockFileType);
