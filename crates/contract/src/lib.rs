//! The contract between the resmon monitor and the resource types it drives.
//!
//! This crate owns the vocabulary every other part of resmon shares: the
//! resource [`State`]s, the [`EntryPoint`]s, the failure [`Policy`] with its
//! defaults, and the [`ResourceType`] / [`Resource`] traits a resource type
//! implements. It depends on no async runtime and nothing of the daemon, so a
//! resource type can be written against it alone.
//!
//! # The entry-point contract
//!
//! * Per resource, entry points are serialized by the monitor, *except*
//!   [`Resource::terminate`], which may run concurrently with `online`,
//!   `offline`, `looks_alive`, `is_alive` and `resource_control` (never with
//!   `open`/`close`). An implementation must guard what `terminate` shares
//!   with the other entry points.
//! * `online` / `offline` either finish ([`Completion::Done`]) or return
//!   [`Completion::Pending`] and finish later through
//!   [`CallContext::complete`]. While working they report progress with
//!   [`CallContext::checkpoint`]; the monitor's `pending_timeout` is the
//!   longest allowed gap between two reports, not the total time.
//! * When `terminate` arrives, an in-flight `online`/`offline` is cancelled:
//!   [`CallContext::should_terminate`] turns true and stays true.
//! * `terminate` ends the resource at once, without cleanup, and does not wait.
//! * Every entry point should return within 300 ms.

pub mod control;
mod limits;
mod name;
mod policy;
mod resource;
mod state;
pub mod table;

pub use limits::{LimitValue, Limits, LIMIT_KEYS};
pub use name::{check_name, NameError};
pub use policy::{
    duration_value, parse_duration, parse_size, Backoff, DurationError, Policy, PolicyError,
    RestartAction,
};
pub use resource::{
    CallContext, Completion, ControlError, FencingToken, LogLevel, LogMode, LogSettings, Notice,
    Notifier, OpenContext, Resource, ResourceError, ResourceType, Scope, StatusSink,
    FENCING_TOKEN_VAR,
};
pub use state::{EntryPoint, State, ALLOWED_TRANSITIONS};

/// The exit code a task reports while it is still running (Windows `STILL_ACTIVE`).
pub const STILL_ACTIVE: i32 = 259;
