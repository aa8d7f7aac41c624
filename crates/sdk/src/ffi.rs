//! The C ABI of `include/resmon.h`, in Rust. Both sides use it: the SDK to
//! export a plugin, the host process to call one. The header documents
//! every rule; the layouts here must match it field for field.

use std::ffi::{c_char, c_void};

pub const RESMON_ABI_VERSION: u32 = 1;

pub const RESMON_OK: i32 = 0;
pub const RESMON_INVALID_FUNCTION: i32 = 1;
pub const RESMON_MORE_DATA: i32 = 234;
pub const RESMON_PENDING: i32 = 997;

pub const RESMON_STATE_OFFLINE: i32 = 0;
pub const RESMON_STATE_ONLINE_PENDING: i32 = 1;
pub const RESMON_STATE_ONLINE: i32 = 2;
pub const RESMON_STATE_OFFLINE_PENDING: i32 = 3;
pub const RESMON_STATE_FAILED: i32 = 4;

pub const RESMON_LOG_ERROR: i32 = 0;
pub const RESMON_LOG_WARN: i32 = 1;
pub const RESMON_LOG_INFO: i32 = 2;
pub const RESMON_LOG_DEBUG: i32 = 3;

/// `struct resmon_callbacks`: what the host offers the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct Callbacks {
    pub size: u32,
    pub set_status: extern "C" fn(resource_handle: *mut c_void, state: i32, checkpoint: u32) -> i32,
    pub should_terminate: extern "C" fn(resource_handle: *mut c_void) -> i32,
    pub log: extern "C" fn(resource_handle: *mut c_void, level: i32, message: *const c_char),
    /// Added after the first release: check `size` before calling.
    pub fencing_token: extern "C" fn(resource_handle: *mut c_void) -> i64,
}

pub type OpenFn = unsafe extern "C" fn(
    resource_name: *const c_char,
    params_json: *const c_char,
    resource_handle: *mut c_void,
) -> *mut c_void;
pub type CloseFn = unsafe extern "C" fn(resource: *mut c_void);
pub type CallFn = unsafe extern "C" fn(resource: *mut c_void) -> i32;
pub type TerminateFn = unsafe extern "C" fn(resource: *mut c_void);
pub type ControlFn = unsafe extern "C" fn(
    resource: *mut c_void,
    code: u32,
    input: *const u8,
    in_len: usize,
    out: *mut u8,
    out_len: usize,
    out_written: *mut usize,
) -> i32;
pub type TypeControlFn = unsafe extern "C" fn(
    type_name: *const c_char,
    code: u32,
    input: *const u8,
    in_len: usize,
    out: *mut u8,
    out_len: usize,
    out_written: *mut usize,
) -> i32;

/// `struct resmon_function_table`. Every entry is nullable on the C side;
/// the host checks them before use.
#[repr(C)]
#[derive(Debug)]
pub struct FunctionTable {
    pub size: u32,
    pub version: u32,
    pub open: Option<OpenFn>,
    pub close: Option<CloseFn>,
    pub online: Option<CallFn>,
    pub offline: Option<CallFn>,
    pub terminate: Option<TerminateFn>,
    pub looks_alive: Option<CallFn>,
    pub is_alive: Option<CallFn>,
    pub resource_control: Option<ControlFn>,
    pub resource_type_control: Option<TypeControlFn>,
}

/// `resmon_startup`, the one symbol a plugin exports.
pub type StartupFn = unsafe extern "C" fn(
    type_name: *const c_char,
    min_version: u32,
    max_version: u32,
    callbacks: *const Callbacks,
) -> *const FunctionTable;

/// The name of the symbol.
pub const STARTUP_SYMBOL: &[u8] = b"resmon_startup\0";
