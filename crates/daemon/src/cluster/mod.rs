//! Cluster mode: nodes that share their groups through etcd, each group
//! owned by one node at a time (docs/design.md §7).
//!
//! * [`config`]: `[cluster]` and `[group.NAME]`.
//! * [`view`]: what the API shows of the cluster (nodes, owners) and the
//!   requests it passes on (moves).
//! * `controller` (with the `etcd` feature): this node's membership, the
//!   groups it takes, keeps, fences and gives up, and its fence guard.

pub mod config;
#[cfg(feature = "etcd")]
pub mod controller;
pub mod view;
