//! The host process (`resmon host --library PATH`): loads one plugin
//! library and runs its entry points for the monitor.
//!
//! The monitor starts a host with one end of a socketpair as its stdin and
//! talks [`crate::protocol`] over it. Each resource gets a *lane*: a socket
//! of its own, which arrives with its `open` request, and a thread that
//! reads its entry points from it and runs them one at a time. `terminate`
//! comes over the main socket and runs on a thread of its own beside the
//! lane, as the contract allows, and never beside `open` or `close` (a
//! per-resource read-write gate keeps them apart). Type-wide control codes
//! run on threads of their own.
//!
//! The host does not judge time: the monitor does, and kills the whole
//! host when an entry point hangs. Writing past a control buffer hits a
//! guard page and crashes the host, which the monitor also sees and
//! handles; a host never lives on with a plugin's damage in it.

use crate::protocol::{read_frame, write_frame, FdReader, FromHost, Op, Reply, Request};
use resmon_sdk::ffi;
use resmon_task::lock;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::io::{BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The first buffer offered to a control code; it grows to what the code
/// asks for with `RESMON_MORE_DATA` (the monitor asks again).
pub const FIRST_OUT_LEN: u32 = 64 * 1024;

/// One open resource in this host.
struct Res {
    /// Its type's function table, once the lane has it.
    table: OnceLock<&'static ffi::FunctionTable>,
    /// What `open` returned.
    ptr: AtomicPtr<c_void>,
    /// The fencing token the last `online` came with.
    fencing_token: AtomicI64,
    /// Raised by `terminate` and by a cancelled health check, lowered when
    /// the next `online`/`offline` starts.
    terminating: AtomicBool,
    /// `open`/`close` take it for writing, every other entry point for
    /// reading: `terminate` never runs beside `open` or `close`.
    gate: RwLock<()>,
}

struct Host {
    writer: Mutex<UnixStream>,
    resources: RwLock<HashMap<u64, Arc<Res>>>,
    startup: Result<ffi::StartupFn, String>,
    tables: Mutex<HashMap<String, Result<&'static ffi::FunctionTable, String>>>,
    /// Keeps the library loaded for the life of the process.
    _library: Option<libloading::Library>,
}

static HOST: OnceLock<Host> = OnceLock::new();

static CALLBACKS: ffi::Callbacks = ffi::Callbacks {
    size: std::mem::size_of::<ffi::Callbacks>() as u32,
    set_status: cb_set_status,
    should_terminate: cb_should_terminate,
    log: cb_log,
    fencing_token: cb_fencing_token,
};

fn host() -> &'static Host {
    HOST.get()
        .expect("the host is set up before any plugin code runs")
}

/// The resource a handle names. Handles are resource numbers, never
/// pointers, so a stale or made-up handle is merely unknown.
fn resource(handle: *mut c_void) -> Option<(u64, Arc<Res>)> {
    let rid = handle as usize as u64;
    let r = host().resources.read().unwrap_or_else(|e| e.into_inner());
    r.get(&rid).map(|res| (rid, res.clone()))
}

extern "C" fn cb_set_status(handle: *mut c_void, state: i32, checkpoint: u32) -> i32 {
    let Some((rid, res)) = resource(handle) else {
        return 0;
    };
    send(&FromHost::Status {
        rid,
        state,
        checkpoint,
    });
    res.terminating.load(Ordering::Acquire) as i32
}

extern "C" fn cb_should_terminate(handle: *mut c_void) -> i32 {
    resource(handle).is_some_and(|(_, r)| r.terminating.load(Ordering::Acquire)) as i32
}

extern "C" fn cb_fencing_token(handle: *mut c_void) -> i64 {
    resource(handle).map_or(0, |(_, r)| r.fencing_token.load(Ordering::Acquire))
}

extern "C" fn cb_log(handle: *mut c_void, level: i32, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the header requires a NUL-terminated message, valid for the call.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .chars()
        .take(4096)
        .collect();
    send(&FromHost::Log {
        rid: handle as usize as u64,
        level,
        message: text,
    });
}

/// Sends a message to the monitor. A monitor that is gone ends the host.
fn send(msg: &FromHost) {
    let frame = match crate::protocol::encode(msg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("resmon host: cannot encode a message: {e}");
            return;
        }
    };
    let mut w = lock(&host().writer);
    if w.write_all(&frame).is_err() {
        exit(0);
    }
}

fn reply(call: u64, reply: Reply) {
    send(&FromHost::Reply { call, reply });
}

/// Ends the process at once: no atexit handlers or destructors of the
/// plugin run (they could hang or touch what a crashed thread left).
fn exit(code: i32) -> ! {
    // SAFETY: `_exit` only ends the process.
    unsafe { libc::_exit(code) }
}

/// Runs the host: serves requests from stdin until the monitor closes it.
pub fn run(library: &Path) -> ! {
    // The socket moves off fd 0, close-on-exec, so processes a plugin
    // starts do not hold it; their stdin is /dev/null.
    let socket = match rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("resmon host: stdin is not the monitor's socket: {e}");
            exit(2);
        }
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(null.as_fd());
    }
    // Dies with the monitor.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));

    let stream = UnixStream::from(socket);
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("resmon host: {e}");
            exit(2);
        }
    };
    // SAFETY: loading a library runs its initializers; that is what a host
    // is for, and it is a process of its own so their damage stays here.
    let loaded = unsafe { libloading::Library::new(library) }
        .map_err(|e| format!("cannot load {}: {e}", library.display()));
    let (library_handle, startup) = match loaded {
        Ok(lib) => {
            // SAFETY: the symbol has the type the header declares.
            let sym = unsafe { lib.get::<ffi::StartupFn>(ffi::STARTUP_SYMBOL) }
                .map(|s| *s)
                .map_err(|e| format!("{} exports no resmon_startup: {e}", library.display()));
            (Some(lib), sym)
        }
        Err(e) => (None, Err(e)),
    };
    let _ = HOST.set(Host {
        writer: Mutex::new(writer),
        resources: RwLock::new(HashMap::new()),
        startup,
        tables: Mutex::new(HashMap::new()),
        _library: library_handle,
    });

    let mut reader = BufReader::new(FdReader::new(stream));
    let mut buf = Vec::new();
    loop {
        match read_frame::<Request>(&mut reader, &mut buf) {
            Ok(Some(req)) => {
                // An `open` brings the resource's lane with it.
                let lane = match req.op {
                    Op::Open { .. } => match reader.get_mut().take_fd() {
                        Some(fd) => Some(UnixStream::from(fd)),
                        None => {
                            eprintln!("resmon host: an open request came without its lane");
                            exit(2);
                        }
                    },
                    _ => None,
                };
                dispatch(req, lane)
            }
            Ok(None) => exit(0),
            Err(e) => {
                eprintln!("resmon host: reading from the monitor: {e}");
                exit(2);
            }
        }
    }
}

/// The function table for `type_name`, asked of the library once.
fn table(type_name: &str) -> Result<&'static ffi::FunctionTable, String> {
    let h = host();
    let mut tables = lock(&h.tables);
    if let Some(t) = tables.get(type_name) {
        return t.clone();
    }
    let t = h.startup.clone().and_then(|startup| {
        let name = CString::new(type_name).map_err(|_| "a type name with a NUL byte".to_string())?;
        // SAFETY: the header's signature; the callbacks are static.
        let p = unsafe {
            startup(
                name.as_ptr(),
                ffi::RESMON_ABI_VERSION,
                ffi::RESMON_ABI_VERSION,
                &CALLBACKS,
            )
        };
        // SAFETY: the header requires NULL or a table that stays valid
        // while the library is loaded, which is for the life of the host.
        let t: &'static ffi::FunctionTable = unsafe { p.as_ref() }.ok_or_else(|| {
            format!("resmon_startup returned NULL for type {type_name:?} (not served, or no ABI version {} spoken)", ffi::RESMON_ABI_VERSION)
        })?;
        check_table(t)?;
        Ok(t)
    });
    tables.insert(type_name.to_string(), t.clone());
    t
}

fn check_table(t: &ffi::FunctionTable) -> Result<(), String> {
    if t.version != ffi::RESMON_ABI_VERSION {
        return Err(format!(
            "the plugin's function table speaks ABI version {}, not {}",
            t.version,
            ffi::RESMON_ABI_VERSION
        ));
    }
    if (t.size as usize) < std::mem::size_of::<ffi::FunctionTable>() {
        return Err(format!(
            "the plugin's function table is {} bytes, fewer than the {} of version {}",
            t.size,
            std::mem::size_of::<ffi::FunctionTable>(),
            ffi::RESMON_ABI_VERSION
        ));
    }
    let missing: Vec<&str> = [
        ("open", t.open.is_none()),
        ("close", t.close.is_none()),
        ("online", t.online.is_none()),
        ("offline", t.offline.is_none()),
        ("terminate", t.terminate.is_none()),
        ("looks_alive", t.looks_alive.is_none()),
        ("is_alive", t.is_alive.is_none()),
    ]
    .into_iter()
    .filter_map(|(n, m)| m.then_some(n))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the plugin's function table has no {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

fn dispatch(req: Request, lane_socket: Option<UnixStream>) {
    let h = host();
    match &req.op {
        Op::Open { .. } => {
            let Some(sock) = lane_socket else { return };
            let res = Arc::new(Res {
                table: OnceLock::new(),
                ptr: AtomicPtr::new(std::ptr::null_mut()),
                fencing_token: AtomicI64::new(0),
                terminating: AtomicBool::new(false),
                gate: RwLock::new(()),
            });
            let rid = req.rid;
            h.resources
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rid, res.clone());
            let mut answer = sock.try_clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lane-{rid}"))
                .spawn(move || lane(rid, res, sock, req.op));
            if let Err(e) = spawned {
                h.resources
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&rid);
                if let Ok(w) = answer.as_mut() {
                    let _ = write_frame(
                        w,
                        &Reply::Failed(format!("no thread for the resource: {e}")),
                    );
                }
            }
        }
        Op::Terminate => match resource(req.rid as usize as *mut c_void) {
            // Nothing open: nothing runs.
            None => reply(req.call, Reply::Done),
            Some((_, res)) => {
                let call = req.call;
                let run = move || {
                    let _gate = res.gate.read().unwrap_or_else(|e| e.into_inner());
                    res.terminating.store(true, Ordering::Release);
                    let ptr = res.ptr.load(Ordering::Acquire);
                    let f = res.table.get().and_then(|t| t.terminate);
                    if let (false, Some(f)) = (ptr.is_null(), f) {
                        // SAFETY: the pointer `open` returned; the gate keeps
                        // `close` from freeing it meanwhile.
                        unsafe { f(ptr) };
                    }
                    reply(call, Reply::Done);
                };
                if let Err(e) = std::thread::Builder::new()
                    .name("terminate".into())
                    .spawn(run)
                {
                    reply(
                        req.call,
                        Reply::Failed(format!("no thread for terminate: {e}")),
                    );
                }
            }
        },
        Op::CancelCheck => {
            // Only a flag: the check (on the lane's thread) sees it through
            // `should_terminate`, or is killed with the host if it does not.
            if let Some((_, res)) = resource(req.rid as usize as *mut c_void) {
                res.terminating.store(true, Ordering::Release);
            }
            reply(req.call, Reply::Done);
        }
        Op::TypeControl { .. } => {
            let call = req.call;
            let run = move || {
                let Op::TypeControl {
                    type_name,
                    code,
                    input,
                    out_len,
                } = req.op
                else {
                    return;
                };
                let r = match table(&type_name) {
                    Err(e) => Reply::Failed(e),
                    Ok(t) => match t.resource_type_control {
                        None => Reply::Output {
                            code: ffi::RESMON_INVALID_FUNCTION,
                            data: Vec::new(),
                            needed: 0,
                        },
                        Some(f) => match CString::new(type_name) {
                            Err(_) => Reply::Failed("a type name with a NUL byte".into()),
                            Ok(name) => with_out_buffer(out_len, |out, len, written| {
                                // SAFETY: the header's signature; the buffers
                                // are valid for the lengths given.
                                unsafe {
                                    f(
                                        name.as_ptr(),
                                        code,
                                        input.as_ptr(),
                                        input.len(),
                                        out,
                                        len,
                                        written,
                                    )
                                }
                            }),
                        },
                    },
                };
                reply(call, r);
            };
            if let Err(e) = std::thread::Builder::new()
                .name("type-control".into())
                .spawn(run)
            {
                reply(call, Reply::Failed(format!("no thread for the call: {e}")));
            }
        }
        _ => reply(
            req.call,
            Reply::Failed(format!(
                "{} comes over the resource's lane, not the host's socket",
                req.op.name()
            )),
        ),
    }
}

/// The lane of one resource: `open`, then its entry points as they come
/// over its socket, one at a time, until `close` (or a failed `open`, or
/// the monitor closing the socket).
fn lane(rid: u64, res: Arc<Res>, sock: UnixStream, open: Op) {
    let remove = || {
        host()
            .resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rid);
    };
    let mut writer = &sock;
    let opened = open_resource(rid, &res, open);
    let ok = opened.is_ok();
    let answer = opened.map_or_else(Reply::Failed, |()| Reply::Done);
    if write_frame(&mut writer, &answer).is_err() || !ok {
        close_resource(&res);
        remove();
        return;
    }
    let mut reader = BufReader::new(&sock);
    let mut buf = Vec::new();
    // Until the monitor closes the lane (letting go of the resource
    // without `close`) or sends `close`.
    while let Ok(Some(op)) = read_frame::<Op>(&mut reader, &mut buf) {
        if op == Op::Close {
            close_resource(&res);
            remove();
            let _ = write_frame(&mut writer, &Reply::Done);
            return;
        }
        let answer = run_on_lane(&res, op);
        if write_frame(&mut writer, &answer).is_err() {
            break;
        }
    }
    close_resource(&res);
    remove();
}

/// `open`: finds the type's table and opens the resource.
fn open_resource(rid: u64, res: &Res, open: Op) -> Result<(), String> {
    let Op::Open {
        type_name,
        name,
        params,
    } = open
    else {
        return Err("the first call of a lane must be open".into());
    };
    let t = table(&type_name)?;
    let _ = res.table.set(t);
    let _gate = res.gate.write().unwrap_or_else(|e| e.into_inner());
    let (Ok(name), Ok(params)) = (CString::new(name), CString::new(params)) else {
        return Err("a name or params with a NUL byte".into());
    };
    let open = t.open.expect("checked");
    // SAFETY: the header's signature; the handle is the resource's number,
    // never dereferenced by anyone.
    let p = unsafe { open(name.as_ptr(), params.as_ptr(), rid as usize as *mut c_void) };
    if p.is_null() {
        return Err("open returned NULL (the plugin's log says why)".into());
    }
    res.ptr.store(p, Ordering::Release);
    Ok(())
}

/// `close`, once, if `open` succeeded.
fn close_resource(res: &Res) {
    let _gate = res.gate.write().unwrap_or_else(|e| e.into_inner());
    let ptr = res.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if let (false, Some(t)) = (ptr.is_null(), res.table.get()) {
        // SAFETY: the pointer `open` returned, closed once (swapped out).
        unsafe { t.close.expect("checked")(ptr) };
    }
}

/// Every entry point but `open`, `close` and `terminate`.
fn run_on_lane(res: &Res, op: Op) -> Reply {
    let _gate = res.gate.read().unwrap_or_else(|e| e.into_inner());
    let ptr = res.ptr.load(Ordering::Acquire);
    let Some(t) = res.table.get().filter(|_| !ptr.is_null()) else {
        return Reply::Failed("the resource is not open".into());
    };
    match op {
        Op::Online { .. } | Op::Offline => {
            res.terminating.store(false, Ordering::Release);
            let f = if let Op::Online { fencing_token } = op {
                res.fencing_token.store(fencing_token, Ordering::Release);
                t.online
            } else {
                t.offline
            };
            // SAFETY: the pointer `open` returned; checked non-NULL entry.
            Reply::Code(unsafe { f.expect("checked")(ptr) })
        }
        // Cancelled (or terminated) and not brought up again since.
        Op::LooksAlive | Op::IsAlive if res.terminating.load(Ordering::Acquire) => Reply::Code(0),
        Op::LooksAlive | Op::IsAlive => {
            let f = if op == Op::LooksAlive {
                t.looks_alive
            } else {
                t.is_alive
            };
            // SAFETY: as above.
            Reply::Code(unsafe { f.expect("checked")(ptr) })
        }
        Op::Control {
            code,
            input,
            out_len,
        } => match t.resource_control {
            None => Reply::Output {
                code: ffi::RESMON_INVALID_FUNCTION,
                data: Vec::new(),
                needed: 0,
            },
            Some(f) => with_out_buffer(out_len, |out, len, written| {
                // SAFETY: the header's signature; the buffers are valid for
                // the lengths given.
                unsafe { f(ptr, code, input.as_ptr(), input.len(), out, len, written) }
            }),
        },
        other => Reply::Failed(format!("{} is not a lane call", other.name())),
    }
}

/// Calls a control entry point with an output buffer of `out_len` bytes
/// that ends exactly at an inaccessible guard page: a write past `out_len`
/// faults at once (the host crashes and the monitor restarts it) instead of
/// corrupting the host quietly.
fn with_out_buffer(out_len: u32, f: impl FnOnce(*mut u8, usize, *mut usize) -> i32) -> Reply {
    let len = out_len as usize;
    let page = rustix::param::page_size();
    let data_pages = len.div_ceil(page);
    let total = (data_pages + 1) * page;
    // SAFETY: a fresh anonymous private mapping, unmapped below.
    let base = match unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            total,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    } {
        Ok(p) => p as *mut u8,
        Err(e) => return Reply::Failed(format!("no memory for the output buffer: {e}")),
    };
    // SAFETY: both ranges are inside the mapping made above.
    let guard = unsafe { base.add(data_pages * page) };
    // SAFETY: the last page of our own mapping.
    let protected = unsafe {
        rustix::mm::mprotect(
            guard as *mut c_void,
            page,
            rustix::mm::MprotectFlags::empty(),
        )
    };
    let reply = match protected {
        Err(e) => Reply::Failed(format!("cannot guard the output buffer: {e}")),
        Ok(()) => {
            // SAFETY: `len` bytes before the guard page are ours.
            let out = unsafe { guard.sub(len) };
            let mut written: usize = 0;
            let code = f(out, len, &mut written);
            match code {
                ffi::RESMON_OK if written > len => Reply::Failed(format!(
                    "returned RESMON_OK with out_written {written}, more than out_len {len}"
                )),
                ffi::RESMON_OK => Reply::Output {
                    code,
                    // SAFETY: `written <= len` bytes of our buffer.
                    data: unsafe { std::slice::from_raw_parts(out, written) }.to_vec(),
                    needed: 0,
                },
                ffi::RESMON_MORE_DATA => Reply::Output {
                    code,
                    data: Vec::new(),
                    needed: written as u64,
                },
                other => Reply::Output {
                    code: other,
                    data: Vec::new(),
                    needed: 0,
                },
            }
        }
    };
    // SAFETY: the mapping made above, no longer used.
    let _ = unsafe { rustix::mm::munmap(base as *mut c_void, total) };
    reply
}
