//! Multi-node failover for resmon: the pieces a monitor needs to run a
//! group on at most one node at a time, with etcd holding ownership
//! (docs/design.md §7).
//!
//! The rules this crate implements:
//!
//! * **Membership.** Each node holds one etcd lease and a node key bound
//!   to it; the key exists exactly while the node is a live member.
//! * **Ownership.** A group is owned through one owner key, taken by a
//!   single transaction (compare `create_revision == 0`, put with the
//!   node's lease). No election API. A node brings a group online only
//!   after its own transaction succeeded, and hands the resources the owner
//!   key's `create_revision` as a fencing token, which only grows from one
//!   owner to the next.
//! * **The deadline.** The lease is renewed every `(TTL - margin) / 3`. The
//!   node may run its groups until *the send time of the last acknowledged
//!   renewal* `+ TTL - margin`, measured on `CLOCK_BOOTTIME`; the margin
//!   covers the terminate time and clock drift. An explicit loss (etcd
//!   says the lease is gone, or the node key was deleted) ends it at once.
//!   While etcd is unreachable the owner keeps running until the deadline,
//!   then fences; nobody takes a group without its own transaction.
//! * **The fence guard.** A separate small process holds the deadline and
//!   kills the owned groups' resources if the monitor dies or freezes; when
//!   the monitor dies, it kills them at once (after a short grace), and once
//!   they are seen gone it revokes the node's lease, so that the groups fail
//!   over without waiting for the lease to expire.
//!
//! Modules, and what each owns:
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`settings`] | [`Settings`]: the `[cluster]` values and their validation; [`Credentials`]: the TLS and password files they name | reads those files |
//! | [`clock`] | [`BootInstant`]: points on `CLOCK_BOOTTIME` | reads the clock |
//! | [`lease`] | [`LeaseClock`]: renewals sent and acknowledged, the deadline | none |
//! | [`keys`] | the etcd key layout: build and parse | none |
//! | [`placement`] | which live nodes may take a group, in which order; failback windows, failover thresholds | none |
//! | [`guard`] | the fence guard process and the monitor's client of it | processes, sockets |
//! | `etcd` (feature `etcd`) | `Member`: lease, keep-alive, ownership transactions, watches | etcd |
//! | `testkit` (feature `testkit`) | `EtcdCluster`: real etcd clusters on loopback for tests | processes |
//!
//! The etcd client sits behind the cargo feature `etcd` because it needs
//! `protoc` at build time; everything else builds without it.
//!
//! # Using it from the monitor
//!
//! ```text
//! settings.validate()?;                                 // at config load
//! let mut guard = GuardClient::spawn(&reaper, guard::command(&exe, None))?;
//! guard.attach(&settings, reattach_grace, Some(&report_file), Some(&listen_path))?;
//! let member = Member::join(settings).await?;           // lease + node key
//! let mut lease = member.lease_state();                 // watch::Receiver<LeaseState>
//! match member.acquire("web").await? {
//!     Claim::Won(own) => { /* arm the guard first, then online with own.token */ }
//!     Claim::Held(owner) => { /* someone else runs it */ }
//! }
//! // on every lease change:
//! //   guard.arm_lease(member.lease_id(), until, &scopes_of_owned_groups)?;
//! // fence yourself before `until`; on `lost`, terminate at once.
//! ```

pub mod clock;
pub mod guard;
pub mod keys;
pub mod lease;
pub mod placement;
pub mod settings;

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use clock::BootInstant;
pub use keys::{Key, Keys, NodeRecord};
pub use lease::{LeaseClock, RenewalId};
pub use settings::{Credentials, Settings, SettingsError, Tls};

#[cfg(feature = "etcd")]
pub use etcd::{Change, Claim, ClusterView, Error, LeaseState, Member, NodeInfo, Owner, Ownership};
