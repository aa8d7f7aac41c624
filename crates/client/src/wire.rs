//! What the monitor's API sends and takes, as typed values: the one
//! definition the monitor serializes and every client decodes
//! (docs/api.md describes the same shapes).

use resmon_contract::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One resource as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResourceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub group: String,
    /// The resources it needs online first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub depends_on: Vec<String>,
    pub state: State,
    pub pids: Vec<u32>,
    pub restarts: u32,
    /// When it entered `state`, RFC 3339.
    pub since: String,
    /// Why it is in `state`.
    pub reason: String,
    /// More than the state says, from its type (e.g. `degraded`, `promoted`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// The entry point in flight, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub call: Option<String>,
    /// Being terminated right now.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub terminating: bool,
    /// Whether it is meant to be online (an operator's online or autostart).
    pub wanted_online: bool,
    /// In maintenance: its checks run and are reported, no failure acts.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub maintenance: bool,
    /// Whether it is ready, for a resource with readiness checks that is
    /// online.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ready: Option<bool>,
    /// A failed resource's next attempt (restart or retry), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_attempt: Option<String>,
    /// Failed `is_alive` answers in a row, short of `failure_threshold`.
    #[serde(skip_serializing_if = "is_zero_u32", default)]
    pub health_failures: u32,
    /// A restart is under way.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub restarting: bool,
    /// Cluster mode: the node that owns its group (`-`: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
    /// Lines of its output its log could not take (a full disk); absent
    /// while none were lost.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub output_dropped: u64,
}

/// `GET /v1/whoami`: who the monitor takes the caller for, and the rights
/// it holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmIReply {
    /// `token "NAME"` on TCP, `uid N (USER)` on the Unix socket.
    pub caller: String,
    /// `query`, `control`, `terminate`: those it holds.
    pub rights: Vec<String>,
}

/// An entry-point call in progress, for `resmon calls`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CallStatus {
    pub resource: String,
    pub entry: String,
    /// RFC 3339.
    pub started: String,
    pub elapsed_ms: u64,
    /// When the monitor acts if it has not returned: RFC 3339.
    pub deadline: String,
    /// Negative once past the deadline.
    pub remaining_ms: i64,
}

/// What a reload did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Type or params changed: stopped and started anew.
    pub restarted: Vec<String>,
    /// Policy, group or dependencies changed: applied in place.
    pub updated: Vec<String>,
    pub notes: Vec<String>,
}

/// `{"resources": [...]}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct StatusReply {
    pub resources: Vec<ResourceStatus>,
    /// What is wrong with the monitor itself (absent when nothing is).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub problems: Vec<String>,
}

/// The answer to an operation.
#[derive(Serialize, Deserialize, Debug)]
pub struct OpReply {
    pub resource: ResourceStatus,
    /// Why what was done may not last (the state cannot be saved).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorReply {
    pub error: String,
}

/// `POST .../maintenance`: on or off.
#[derive(Deserialize, Serialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    pub on: bool,
}

/// `POST /v1/resources/{name}/terminate`: the exit code its tasks report.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TerminateBody {
    #[serde(default = "default_exit_code")]
    pub exit_code: i32,
}

/// No body is the same as `{}`: exit code 1, as the docs and the CLI say.
impl Default for TerminateBody {
    fn default() -> Self {
        TerminateBody {
            exit_code: default_exit_code(),
        }
    }
}

fn default_exit_code() -> i32 {
    1
}

/// The answer to a control code.
#[derive(Serialize, Deserialize, Debug)]
pub struct ControlReply {
    pub code: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// The output: JSON when it is JSON, else a string (lossy UTF-8).
    pub output: serde_json::Value,
}

/// The answer to a request that acts on a running resource at once
/// (`POST /v1/resources/{name}/reload`, `.../signal/{signal}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActedReply {
    pub resource: String,
    /// What was done, for people (e.g. `sent SIGHUP to main process 4242`).
    pub message: String,
}

/// `{"calls": [...]}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct CallsReply {
    pub calls: Vec<CallStatus>,
}

/// One node as etcd knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Its key is there, bound to a lease etcd keeps alive. Nodes named
    /// in `preferred_nodes` or seen before are listed when they are not.
    pub live: bool,
    /// The groups it owns.
    pub groups: Vec<String>,
    /// Marked for maintenance (`resmon maintenance on --node`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub maintenance: bool,
    /// Drained (`resmon node drain`): its groups move off it.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub drained: bool,
}

/// `GET /v1/nodes`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesReply {
    /// This node.
    pub node: String,
    /// Whether this node reaches etcd and holds its lease.
    pub member: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub problem: Option<String>,
    /// Milliseconds this node may still run its groups without a renewal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub may_run_for_ms: Option<u64>,
    pub nodes: Vec<NodeView>,
    /// Each configured group and its owner (`None`: nobody runs it).
    pub owners: BTreeMap<String, Option<String>>,
    /// Groups no live node may run now, and why (their placement rules).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub unplaced: BTreeMap<String, String>,
}

/// `POST /v1/groups/{group}/move`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The node to move to.
    pub node: String,
}

/// One entry of the event feed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// `state`, `terminate`, `force_kill`, `failover` or `monitor`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<State>,
    pub reason: String,
    /// How many times it happened: a repeat of a recent event (the same
    /// kind, resource and reason; never a state change) is counted here
    /// instead of being added again.
    #[serde(skip_serializing_if = "is_one", default = "one")]
    pub count: u64,
    /// When it last happened, once it repeated; RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_time: Option<String>,
    /// A resource that failed: the exit code of its main process when it
    /// last ended (`process` resources), if it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn one() -> u64 {
    1
}

/// The answer to `POST /v1/groups/{group}/move`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveReply {
    /// What was done, for people.
    pub message: String,
}

/// The answer to `GET /healthz` and `GET /readyz` when all is well.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReply {
    /// `ok` or `stopping` (`/healthz`), `ready` (`/readyz`).
    pub status: String,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
