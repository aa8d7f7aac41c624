//! What the API shows of the cluster, kept up to date by the controller,
//! and the requests the API passes on to it.

pub use resmon_client::wire::{MoveBody, NodeView, NodesReply};
use resmon_cluster::BootInstant;
use resmon_task::lock;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// What the controller last saw; read by the API without asking it.
pub type SharedView = Arc<RwLock<NodesReply>>;

/// Requests for the controller.
pub enum ClusterRequest {
    /// Move a group to a node: offline here, released, online there.
    Move {
        group: String,
        node: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Drain a node, or resume it.
    NodeDrain {
        node: String,
        on: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Mark a node for maintenance, or clear its mark.
    NodeMaintenance {
        node: String,
        on: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// What `/metrics` reads of the cluster side, kept by the controller.
#[derive(Debug, Default)]
pub struct Meter {
    /// The fencing token of each group this node owns.
    pub tokens: std::collections::BTreeMap<String, i64>,
    /// The fence guard holds a deadline for the owned groups.
    pub guard_armed: bool,
    /// Lease renewals acknowledged and failed, over every membership of
    /// this run.
    pub renewals: (u64, u64),
}

/// How the API reaches the cluster side; `None` on a single node.
#[derive(Clone)]
pub struct ClusterHandle {
    pub view: SharedView,
    pub requests: mpsc::UnboundedSender<ClusterRequest>,
    pub meter: Arc<std::sync::Mutex<Meter>>,
    /// The lease deadline every `online` is checked against.
    pub permits: Arc<Permits>,
}

impl ClusterHandle {
    pub fn snapshot(&self) -> NodesReply {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cluster's series for `/metrics`.
    pub fn metrics(&self) -> resmon_metrics::ClusterRow {
        let member = self.view.read().unwrap_or_else(|e| e.into_inner()).member;
        let m = lock(&self.meter);
        resmon_metrics::ClusterRow {
            member,
            lease_seconds_left: self.permits.lease_left().map(|d| d.as_secs_f64()),
            owned: m
                .tokens
                .iter()
                .map(|(g, t)| (g.clone(), u64::try_from(*t).unwrap_or(0)))
                .collect(),
            guard_armed: m.guard_armed,
            renewals: m.renewals.0,
            renewal_failures: m.renewals.1,
        }
    }
}

/// Which groups this node may run right now, and until when: the one gate
/// every `online` of a cluster group passes (restarts included), so that
/// nothing starts after the node's lease ran out or its ownership ended,
/// whatever the order in which the monitor learns of it.
#[derive(Debug, Default)]
pub struct Permits {
    state: std::sync::Mutex<PermitState>,
}

#[derive(Debug, Default)]
struct PermitState {
    /// The lease's "may run until"; `None`: no time at all.
    until: Option<BootInstant>,
    groups: std::collections::BTreeSet<String>,
}

impl Permits {
    fn state(&self) -> std::sync::MutexGuard<'_, PermitState> {
        lock(&self.state)
    }

    /// Whether `group` may run at `now`.
    pub fn allows(&self, group: &str, now: BootInstant) -> bool {
        let s = self.state();
        s.until.is_some_and(|until| now < until) && s.groups.contains(group)
    }

    /// How long the lease lets this node run its groups without a renewal.
    pub fn lease_left(&self) -> Option<std::time::Duration> {
        self.state().until.map(|u| u.remaining())
    }

    pub fn set_until(&self, until: Option<BootInstant>) {
        self.state().until = until;
    }

    pub fn grant(&self, group: &str) {
        self.state().groups.insert(group.to_string());
    }

    /// Whether it was granted.
    pub fn revoke(&self, group: &str) -> bool {
        self.state().groups.remove(group)
    }

    /// Every group granted, now revoked.
    pub fn revoke_all(&self) -> Vec<String> {
        std::mem::take(&mut self.state().groups)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_need_the_group_and_time_left() {
        let at = BootInstant::from_nanos;
        let p = Permits::default();
        assert!(!p.allows("g", at(1)));
        p.grant("g");
        assert!(!p.allows("g", at(1)), "no deadline yet");
        p.set_until(Some(at(100)));
        assert!(p.allows("g", at(99)));
        assert!(!p.allows("g", at(100)), "the deadline itself is too late");
        assert!(!p.allows("h", at(1)));
        assert_eq!(p.revoke_all(), vec!["g".to_string()]);
        assert!(!p.allows("g", at(1)));
        assert!(!p.revoke("g"));
    }
}
