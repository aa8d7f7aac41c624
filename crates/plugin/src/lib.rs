//! Resource plugins: shared libraries speaking the C ABI of
//! `include/resmon.h`, run in host processes so that a plugin that hangs or
//! crashes never takes the monitor with it.
//!
//! - [`host`]: the host process (`resmon host`), which loads a library and
//!   runs its entry points on worker threads;
//! - [`client`]: the monitor's side, the resource types that plugin
//!   libraries provide, which start, use, kill and restart hosts;
//! - [`protocol`]: the framed messages between the two.

pub mod client;
pub mod host;
pub mod protocol;

pub use client::Plugins;
