//! Write resmon resource types ("plugins") in Rust.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) that speaks the
//! C ABI of `include/resmon.h`. This crate turns an implementation of
//! [`ResourceType`] and [`Resource`] into that ABI: implement the traits and
//! call [`export_resource_types!`] once in the library. A plugin depends on
//! this crate only; nothing here needs an async runtime.
//!
//! ```ignore
//! use resmon_sdk::{export_resource_types, Handle, Resource, ResourceType, Status, json};
//!
//! struct Flag;
//! struct FlagResource { on: std::sync::atomic::AtomicBool }
//!
//! impl ResourceType for Flag {
//!     type Resource = FlagResource;
//!     fn serves(type_name: &str) -> bool { type_name == "flag" }
//!     fn new() -> Result<Self, String> { Ok(Flag) }
//!     fn open(&self, _name: &str, _params: &json::Value, _h: Handle) -> Result<FlagResource, String> {
//!         Ok(FlagResource { on: false.into() })
//!     }
//! }
//! impl Resource for FlagResource {
//!     fn online(&self) -> Result<Status, String> { self.on.store(true, Relaxed); Ok(Status::Done) }
//!     fn offline(&self) -> Result<Status, String> { self.on.store(false, Relaxed); Ok(Status::Done) }
//!     fn terminate(&self) { self.on.store(false, Relaxed) }
//!     fn looks_alive(&self) -> bool { self.on.load(Relaxed) }
//! }
//! export_resource_types!(Flag);
//! ```
//!
//! The rules of the header hold here too: entry points of one resource are
//! serialized except [`Resource::terminate`], which may run beside the
//! others (so a resource is `Sync` and guards what `terminate` shares);
//! entry points return within 300 ms, and longer work returns
//! [`Status::Pending`] and reports through [`Handle::set_status`] from a
//! thread of its own. A panic in an entry point is caught at the boundary
//! and reported as an error, never unwound into the host.

pub mod ffi;

/// The JSON library the parameters come in.
pub use serde_json as json;

use std::any::{Any, TypeId};
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// How an `online` or `offline` call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Finished: the resource is online (or offline).
    Done,
    /// Goes on in the background; report with [`Handle::set_status`] and end
    /// with [`State::Online`] / [`State::Offline`] (or [`State::Failed`]).
    Pending,
}

/// The states a pending call reports through [`Handle::set_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Offline,
    OnlinePending,
    Online,
    OfflinePending,
    Failed,
}

impl State {
    fn code(self) -> i32 {
        match self {
            State::Offline => ffi::RESMON_STATE_OFFLINE,
            State::OnlinePending => ffi::RESMON_STATE_ONLINE_PENDING,
            State::Online => ffi::RESMON_STATE_ONLINE,
            State::OfflinePending => ffi::RESMON_STATE_OFFLINE_PENDING,
            State::Failed => ffi::RESMON_STATE_FAILED,
        }
    }
}

/// How much a log message matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Why a control code gave no output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Not a code this type handles: the monitor's default handling applies.
    NotSupported,
    /// The code failed; the message goes to the monitor's log.
    Failed(String),
}

/// A resource's line to the monitor: progress of pending calls, the
/// "should terminate" flag, log messages. Cheap to copy, usable from any
/// thread, for as long as the resource is open.
#[derive(Clone, Copy, Debug)]
pub struct Handle {
    raw: usize,
}

impl Handle {
    /// A handle for messages that are about the type, not one resource.
    fn type_wide() -> Handle {
        Handle { raw: 0 }
    }

    fn callbacks() -> Option<&'static ffi::Callbacks> {
        let p = CALLBACKS.load(Ordering::Acquire);
        // SAFETY: the pointer was given by the host to `resmon_startup`; the
        // header requires it to stay valid while the library is loaded.
        unsafe { p.as_ref() }
    }

    /// Reports progress (a checkpoint that grows) or the end of a pending
    /// call. Returns true once the resource is being terminated: stop the
    /// work and return.
    pub fn set_status(&self, state: State, checkpoint: u32) -> bool {
        Handle::callbacks()
            .is_some_and(|c| (c.set_status)(self.raw as *mut c_void, state.code(), checkpoint) != 0)
    }

    /// True once `terminate` was called for the resource, or once a health
    /// check that runs was cancelled (an offline, terminate or shutdown
    /// came): a long `looks_alive`/`is_alive` should return then. False
    /// again when the next `online`/`offline` starts.
    pub fn should_terminate(&self) -> bool {
        Handle::callbacks().is_some_and(|c| (c.should_terminate)(self.raw as *mut c_void) != 0)
    }

    /// Cluster mode: the fencing token of this node's ownership of the
    /// resource's group as of the last `online` (it grows with every new
    /// owner; hand it to what the resource guards). `None` outside cluster
    /// mode, or with a monitor too old to offer it.
    pub fn fencing_token(&self) -> Option<i64> {
        let c = Handle::callbacks()?;
        let needed = std::mem::offset_of!(ffi::Callbacks, fencing_token)
            + std::mem::size_of::<extern "C" fn(*mut c_void) -> i64>();
        if (c.size as usize) < needed {
            return None;
        }
        Some((c.fencing_token)(self.raw as *mut c_void)).filter(|t| *t > 0)
    }

    /// A message for the operator's event feed and the monitor's log.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let Some(c) = Handle::callbacks() else {
            return;
        };
        let level = match level {
            Level::Error => ffi::RESMON_LOG_ERROR,
            Level::Warn => ffi::RESMON_LOG_WARN,
            Level::Info => ffi::RESMON_LOG_INFO,
            Level::Debug => ffi::RESMON_LOG_DEBUG,
        };
        let text = CString::new(message.as_ref().replace('\0', " ")).unwrap_or_default();
        (c.log)(self.raw as *mut c_void, level, text.as_ptr());
    }
}

/// A kind of resource. One value of it lives in each host process that
/// serves it.
pub trait ResourceType: Send + Sync + Sized + 'static {
    type Resource: Resource;

    /// Whether this type serves `type = "type_name"`.
    fn serves(type_name: &str) -> bool;

    /// Makes the type, once per host process, when a name it serves is
    /// first asked for. An error is logged and the type refused.
    fn new() -> Result<Self, String>;

    /// Entry point `open`: creates a resource from its `params` table.
    /// Nothing runs yet. An error refuses the resource; its message is
    /// logged.
    fn open(
        &self,
        name: &str,
        params: &json::Value,
        handle: Handle,
    ) -> Result<Self::Resource, String>;

    /// Type-wide control codes.
    fn resource_type_control(
        &self,
        _type_name: &str,
        _code: u32,
        _input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        Err(ControlError::NotSupported)
    }
}

/// One resource: the entry points of the contract. Dropping it is `close`
/// (the monitor calls `terminate` first when it is not offline).
pub trait Resource: Send + Sync + 'static {
    /// Brings it online, at once ([`Status::Done`]) or in the background
    /// ([`Status::Pending`]). An error is logged and fails the resource.
    fn online(&self) -> Result<Status, String>;

    /// Takes it offline gracefully.
    fn offline(&self) -> Result<Status, String>;

    /// Ends it at once, without cleanup, without waiting. May run beside
    /// every other entry point.
    fn terminate(&self);

    /// The cheap health check.
    fn looks_alive(&self) -> bool;

    /// The thorough health check; by default the cheap one.
    fn is_alive(&self) -> bool {
        self.looks_alive()
    }

    /// A control code; unknown codes answer [`ControlError::NotSupported`].
    fn resource_control(&self, _code: u32, _input: &[u8]) -> Result<Vec<u8>, ControlError> {
        Err(ControlError::NotSupported)
    }
}

static CALLBACKS: AtomicPtr<ffi::Callbacks> = AtomicPtr::new(std::ptr::null_mut());

/// One served type: its value and its function table, both leaked (they
/// live as long as the library).
struct Served {
    id: TypeId,
    value: &'static (dyn Any + Send + Sync),
    table: &'static ffi::FunctionTable,
}

static SERVED: Mutex<Vec<Served>> = Mutex::new(Vec::new());

fn served<T: ResourceType>() -> Option<&'static T> {
    let list = SERVED.lock().unwrap_or_else(|e| e.into_inner());
    list.iter()
        .find(|s| s.id == TypeId::of::<T>())
        .and_then(|s| s.value.downcast_ref::<T>())
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Runs `f`, turning a panic into a logged error and `failed`.
fn guarded<R>(handle: Handle, what: &str, failed: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            handle.log(
                Level::Error,
                format!("{what} panicked: {}", panic_text(p.as_ref())),
            );
            failed
        }
    }
}

/// What the resource pointer given to C points at.
struct Wrapped<R> {
    handle: Handle,
    resource: R,
}

/// # Safety
/// `resource` is a pointer `open_fn::<T>` returned and `close` has not freed.
unsafe fn wrapped<'a, T: ResourceType>(resource: *mut c_void) -> &'a Wrapped<T::Resource> {
    // SAFETY: per this function's contract.
    unsafe { &*(resource as *const Wrapped<T::Resource>) }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

unsafe extern "C" fn open_fn<T: ResourceType>(
    name: *const c_char,
    params: *const c_char,
    resource_handle: *mut c_void,
) -> *mut c_void {
    let handle = Handle {
        raw: resource_handle as usize,
    };
    let Some(ty) = served::<T>() else {
        return std::ptr::null_mut();
    };
    // SAFETY: the host passes NUL-terminated strings valid for the call.
    let (name, params) = unsafe { (text(name), text(params)) };
    guarded(handle, "open", std::ptr::null_mut(), || {
        let params: json::Value = match json::from_str(&params) {
            Ok(v) => v,
            Err(e) => {
                handle.log(Level::Error, format!("open: params are not JSON: {e}"));
                return std::ptr::null_mut();
            }
        };
        match ty.open(&name, &params, handle) {
            Ok(resource) => Box::into_raw(Box::new(Wrapped { handle, resource })) as *mut c_void,
            Err(e) => {
                handle.log(Level::Error, format!("open: {e}"));
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn close_fn<T: ResourceType>(resource: *mut c_void) {
    if resource.is_null() {
        return;
    }
    // SAFETY: `resource` came from `open_fn::<T>` (Box::into_raw) and the
    // host calls close once, with no other entry point running.
    let boxed = unsafe { Box::from_raw(resource as *mut Wrapped<T::Resource>) };
    let handle = boxed.handle;
    guarded(handle, "close", (), move || drop(boxed));
}

fn status_code(handle: Handle, what: &str, r: Result<Status, String>) -> i32 {
    match r {
        Ok(Status::Done) => ffi::RESMON_OK,
        Ok(Status::Pending) => ffi::RESMON_PENDING,
        Err(e) => {
            handle.log(Level::Error, format!("{what}: {e}"));
            -1
        }
    }
}

unsafe extern "C" fn online_fn<T: ResourceType>(resource: *mut c_void) -> i32 {
    // SAFETY: the host passes the pointer `open` returned.
    let w = unsafe { wrapped::<T>(resource) };
    guarded(w.handle, "online", -1, || {
        status_code(w.handle, "online", w.resource.online())
    })
}

unsafe extern "C" fn offline_fn<T: ResourceType>(resource: *mut c_void) -> i32 {
    // SAFETY: the host passes the pointer `open` returned.
    let w = unsafe { wrapped::<T>(resource) };
    guarded(w.handle, "offline", -1, || {
        status_code(w.handle, "offline", w.resource.offline())
    })
}

unsafe extern "C" fn terminate_fn<T: ResourceType>(resource: *mut c_void) {
    // SAFETY: the host passes the pointer `open` returned.
    let w = unsafe { wrapped::<T>(resource) };
    guarded(w.handle, "terminate", (), || w.resource.terminate())
}

unsafe extern "C" fn looks_alive_fn<T: ResourceType>(resource: *mut c_void) -> i32 {
    // SAFETY: the host passes the pointer `open` returned.
    let w = unsafe { wrapped::<T>(resource) };
    guarded(w.handle, "looks_alive", 0, || {
        w.resource.looks_alive() as i32
    })
}

unsafe extern "C" fn is_alive_fn<T: ResourceType>(resource: *mut c_void) -> i32 {
    // SAFETY: the host passes the pointer `open` returned.
    let w = unsafe { wrapped::<T>(resource) };
    guarded(w.handle, "is_alive", 0, || w.resource.is_alive() as i32)
}

/// Writes a control answer into the caller's buffer.
///
/// # Safety
/// `out` is valid for `out_len` bytes; `out_written` is valid or NULL.
unsafe fn answer(
    handle: Handle,
    what: &str,
    r: Result<Vec<u8>, ControlError>,
    out: *mut u8,
    out_len: usize,
    out_written: *mut usize,
) -> i32 {
    let set_written = |n: usize| {
        if !out_written.is_null() {
            // SAFETY: per this function's contract.
            unsafe { *out_written = n };
        }
    };
    match r {
        Ok(data) if data.len() > out_len => {
            set_written(data.len());
            ffi::RESMON_MORE_DATA
        }
        Ok(data) => {
            if !data.is_empty() {
                // SAFETY: `out` holds `out_len >= data.len()` bytes.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
            }
            set_written(data.len());
            ffi::RESMON_OK
        }
        Err(ControlError::NotSupported) => ffi::RESMON_INVALID_FUNCTION,
        Err(ControlError::Failed(e)) => {
            handle.log(Level::Error, format!("{what}: {e}"));
            -1
        }
    }
}

/// # Safety
/// `p` is valid for `len` bytes, or `len` is 0.
unsafe fn input<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: per this function's contract.
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

unsafe extern "C" fn resource_control_fn<T: ResourceType>(
    resource: *mut c_void,
    code: u32,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut u8,
    out_len: usize,
    out_written: *mut usize,
) -> i32 {
    // SAFETY: the host passes the pointer `open` returned, and buffers of
    // the lengths it gives.
    let (w, inp) = unsafe { (wrapped::<T>(resource), input(in_ptr, in_len)) };
    let r = guarded(
        w.handle,
        "resource_control",
        Err(ControlError::Failed("panicked".into())),
        || w.resource.resource_control(code, inp),
    );
    // SAFETY: as above.
    unsafe { answer(w.handle, "resource_control", r, out, out_len, out_written) }
}

unsafe extern "C" fn resource_type_control_fn<T: ResourceType>(
    type_name: *const c_char,
    code: u32,
    in_ptr: *const u8,
    in_len: usize,
    out: *mut u8,
    out_len: usize,
    out_written: *mut usize,
) -> i32 {
    let handle = Handle::type_wide();
    let Some(ty) = served::<T>() else {
        return ffi::RESMON_INVALID_FUNCTION;
    };
    // SAFETY: the host passes a NUL-terminated name and buffers of the
    // lengths it gives.
    let (name, inp) = unsafe { (text(type_name), input(in_ptr, in_len)) };
    let r = guarded(
        handle,
        "resource_type_control",
        Err(ControlError::Failed("panicked".into())),
        || ty.resource_type_control(&name, code, inp),
    );
    // SAFETY: as above.
    unsafe {
        answer(
            handle,
            "resource_type_control",
            r,
            out,
            out_len,
            out_written,
        )
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// `resmon_startup` for one type: its function table when it serves
    /// `type_name` in a version the host speaks, else NULL.
    ///
    /// # Safety
    /// The arguments are what the host passed to `resmon_startup`.
    pub unsafe fn startup<T: ResourceType>(
        type_name: *const c_char,
        min_version: u32,
        max_version: u32,
        callbacks: *const ffi::Callbacks,
    ) -> *const ffi::FunctionTable {
        if !(min_version..=max_version).contains(&ffi::RESMON_ABI_VERSION) || callbacks.is_null() {
            return std::ptr::null();
        }
        CALLBACKS.store(callbacks as *mut ffi::Callbacks, Ordering::Release);
        // SAFETY: the host passes a NUL-terminated name.
        let name = unsafe { text(type_name) };
        if !catch_unwind(|| T::serves(&name)).unwrap_or(false) {
            return std::ptr::null();
        }
        let mut list = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = list.iter().find(|s| s.id == TypeId::of::<T>()) {
            return s.table;
        }
        let value = match catch_unwind(T::new) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                drop(list);
                Handle::type_wide().log(Level::Error, format!("type {name:?}: {e}"));
                return std::ptr::null();
            }
            Err(p) => {
                drop(list);
                Handle::type_wide().log(
                    Level::Error,
                    format!("type {name:?}: new panicked: {}", panic_text(p.as_ref())),
                );
                return std::ptr::null();
            }
        };
        let table: &'static ffi::FunctionTable = Box::leak(Box::new(ffi::FunctionTable {
            size: std::mem::size_of::<ffi::FunctionTable>() as u32,
            version: ffi::RESMON_ABI_VERSION,
            open: Some(open_fn::<T>),
            close: Some(close_fn::<T>),
            online: Some(online_fn::<T>),
            offline: Some(offline_fn::<T>),
            terminate: Some(terminate_fn::<T>),
            looks_alive: Some(looks_alive_fn::<T>),
            is_alive: Some(is_alive_fn::<T>),
            resource_control: Some(resource_control_fn::<T>),
            resource_type_control: Some(resource_type_control_fn::<T>),
        }));
        list.push(Served {
            id: TypeId::of::<T>(),
            value: Box::leak(Box::new(value)),
            table,
        });
        table
    }
}

/// Exports `resmon_startup` for the given [`ResourceType`]s: the host gets
/// the table of the first one that serves the type name it asks for.
#[macro_export]
macro_rules! export_resource_types {
    ($($t:ty),+ $(,)?) => {
        /// The plugin's entry: see `include/resmon.h`.
        ///
        /// # Safety
        /// Called by a resmon host with the arguments the header describes.
        #[no_mangle]
        pub unsafe extern "C" fn resmon_startup(
            type_name: *const ::std::ffi::c_char,
            min_version: u32,
            max_version: u32,
            callbacks: *const $crate::ffi::Callbacks,
        ) -> *const $crate::ffi::FunctionTable {
            $(
                // SAFETY: the host's arguments, passed on unchanged.
                let table = unsafe {
                    $crate::__private::startup::<$t>(type_name, min_version, max_version, callbacks)
                };
                if !table.is_null() {
                    return table;
                }
            )+
            ::std::ptr::null()
        }
    };
}
