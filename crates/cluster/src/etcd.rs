//! The node's membership in etcd: its lease and the renewals that keep it,
//! the ownership transactions, and watches on the cluster's keys.
//!
//! [`Member::join`] grants a lease of `lease_ttl`, creates the node key
//! with it (refusing if a live node of the same name exists), and starts
//! a keep-alive task. That task sends a renewal every
//! [`Settings::renew_interval`], reading `CLOCK_BOOTTIME` *before* each
//! send, and feeds etcd's answers to a [`LeaseClock`]; the deadline it
//! proves is published as a [`LeaseState`] on a `tokio::sync::watch`
//! channel. etcd answers the renewals of one stream in order, so the n-th
//! answer belongs to the n-th renewal sent on it. A stream that breaks, or
//! leaves a renewal unanswered for a whole interval, is replaced by a new
//! one on the same lease; the renewals pending on the old one are
//! forgotten (they prove nothing). The task also watches the node key: its
//! deletion means the lease was revoked or expired.
//!
//! The lease is **lost** (and [`LeaseState::lost`] says why) when etcd
//! answers that it does not know the lease, when the node key is deleted,
//! or when the deadline passes without a newer acknowledged renewal. A
//! lost member stays lost; the daemon fences and joins again with a new
//! [`Member`].
//!
//! Ownership of a group is the owner key, created by one transaction
//! ([`Member::acquire`]); its `create_revision` is the fencing token. No
//! election API: it produced false wins under partitions where the single
//! transaction did not (docs/design.md §7).
//!
//! Requests go to one endpoint at a time; one that cannot be reached, has
//! no leader, or takes longer than half a TTL is left for the next
//! (etcd-client's own balancing kept sending a share of the requests to a
//! dead member). Errors name the endpoints and the key they were about.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse,
    WatchStream,
};
use tokio::sync::{watch, Notify};

use crate::clock::BootInstant;
use crate::keys::{check_name, Key, Keys, NameError, NodeRecord};
use crate::lease::{Ack, LeaseClock, RenewalId};
use crate::settings::{Settings, SettingsError};

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("invalid group or node name: {0}")]
    Name(#[from] NameError),
    #[error("etcd at {endpoint}: authentication failed for user {}: {detail}",
        user.as_deref().map_or_else(|| "(none)".to_owned(), |u| format!("{u:?}")))]
    Auth {
        endpoint: String,
        /// The `user` of the settings.
        user: Option<String>,
        detail: String,
    },
    #[error("etcd at {endpoints}: {what}: {}", describe(source))]
    Etcd {
        endpoints: String,
        what: String,
        source: etcd_client::Error,
    },
    #[error(
        "node {node:?} is already a live member (key {key}{}): another monitor runs with this node \
         name, or an earlier one's lease has not expired yet{}",
        record.as_ref().map(|r| format!(", pid {}", r.pid)).unwrap_or_default(),
        remaining.map(|d| format!(" (it expires in {d:?} unless renewed)")).unwrap_or_default()
    )]
    NodeTaken {
        node: String,
        key: String,
        record: Option<NodeRecord>,
        remaining: Option<Duration>,
    },
    #[error("{what}: no etcd endpoint answered: {}", tried.join("; "))]
    Unreachable {
        what: String,
        /// Each endpoint tried and how it failed.
        tried: Vec<String>,
    },
    #[error("the node's lease is lost: {0}")]
    LeaseLost(String),
    #[error("etcd at {endpoints}: {what}: unexpected answer: {detail}")]
    Unexpected {
        endpoints: String,
        what: String,
        detail: String,
    },
}

impl Error {
    /// Whether joining failed only because a node of the same name is
    /// still a member: retry after [`Error::NodeTaken::remaining`].
    pub fn is_node_taken(&self) -> bool {
        matches!(self, Error::NodeTaken { .. })
    }
}

/// What the keep-alive task knows about the lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// Run the groups only until this point on `CLOCK_BOOTTIME` (the send
    /// time of the last acknowledged renewal `+ TTL - margin`); `None` once
    /// lost.
    pub may_run_until: Option<BootInstant>,
    /// Why the lease is lost: terminate the groups at once.
    pub lost: Option<String>,
}

impl LeaseState {
    fn of(clock: &LeaseClock) -> LeaseState {
        LeaseState {
            may_run_until: clock.may_run_until(),
            lost: clock.lost().map(str::to_owned),
        }
    }
}

/// This node's ownership of a group, as its transaction created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub group: String,
    /// The fencing token: the owner key's `create_revision`.
    pub token: i64,
    pub mod_revision: i64,
}

/// Who owns a group, as the owner key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub group: String,
    pub node: String,
    /// The owner key's `create_revision`: the owner's fencing token.
    pub token: i64,
    pub mod_revision: i64,
    /// The owner's lease.
    pub lease: i64,
}

/// The outcome of [`Member::acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the group now (or already did, with this lease).
    Won(Ownership),
    /// Someone else does: this owner key exists.
    Held(Owner),
}

impl Claim {
    pub fn won(self) -> Option<Ownership> {
        match self {
            Claim::Won(o) => Some(o),
            Claim::Held(_) => None,
        }
    }
}

/// A live node, as [`Member::nodes`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    /// The node key's value; `None` if it could not be read.
    pub record: Option<NodeRecord>,
    pub lease: i64,
    /// How long its lease has left unless renewed, as etcd says.
    pub ttl_remaining: Option<Duration>,
}

/// Every key of the cluster at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The revision the view was read at: watch from `revision + 1`.
    pub revision: i64,
    /// Live nodes and their records.
    pub nodes: BTreeMap<String, Option<NodeRecord>>,
    pub owners: BTreeMap<String, Owner>,
    /// Requested moves: group -> node.
    pub targets: BTreeMap<String, String>,
    /// Nodes that gave a group up: group -> nodes.
    pub failed: BTreeMap<String, Vec<String>>,
    /// Nodes marked for maintenance.
    pub maintenance: std::collections::BTreeSet<String>,
    /// Drained nodes: no group runs there while another node can take it.
    pub drained: std::collections::BTreeSet<String>,
    /// When each group recently failed over (Unix milliseconds).
    pub failovers: BTreeMap<String, Vec<u64>>,
}

impl ClusterView {
    fn from_kvs(keys: &Keys, revision: i64, kvs: &[KeyValue]) -> ClusterView {
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for kv in kvs {
            let Some(key) = kv.key_str().ok().and_then(|k| keys.parse(k)) else {
                continue;
            };
            match key {
                Key::Node(node) => {
                    view.nodes
                        .insert(node, NodeRecord::from_json(kv.value()).ok());
                }
                Key::Owner(group) => {
                    view.owners.insert(group.clone(), owner_of(&group, kv));
                }
                Key::Target(group) => {
                    view.targets
                        .insert(group, String::from_utf8_lossy(kv.value()).into_owned());
                }
                Key::Failed { group, node } => view.failed.entry(group).or_default().push(node),
                Key::Maintenance(node) => {
                    view.maintenance.insert(node);
                }
                Key::Drain(node) => {
                    view.drained.insert(node);
                }
                Key::Failovers(group) => {
                    view.failovers.insert(group, failover_times(kv.value()));
                }
            }
        }
        view
    }
}

impl ClusterView {
    /// Brings the view up to date with one change of a [`Watch`] started
    /// at its revision. An owner change older than what the view holds for
    /// that group (the holder wrote it itself, from its own transaction's
    /// answer) is skipped.
    pub fn apply(&mut self, change: &Change) {
        fn mark(set: &mut std::collections::BTreeSet<String>, node: &str, present: bool) {
            if present {
                set.insert(node.to_owned());
            } else {
                set.remove(node);
            }
        }
        let revision = match change {
            Change::Resync(view) => {
                *self = view.clone();
                return;
            }
            Change::Node {
                node,
                present,
                record,
                revision,
            } => {
                if *present {
                    self.nodes.insert(node.clone(), record.clone());
                } else {
                    self.nodes.remove(node);
                }
                *revision
            }
            Change::Owner {
                group,
                owner,
                revision,
                ..
            } => {
                let newer = self
                    .owners
                    .get(group)
                    .is_none_or(|cur| cur.mod_revision <= *revision);
                if newer {
                    match owner {
                        Some(o) => self.owners.insert(group.clone(), o.clone()),
                        None => self.owners.remove(group),
                    };
                }
                *revision
            }
            Change::Target {
                group,
                node,
                revision,
            } => {
                match node {
                    Some(n) => self.targets.insert(group.clone(), n.clone()),
                    None => self.targets.remove(group),
                };
                *revision
            }
            Change::Failed {
                group,
                node,
                present,
                revision,
            } => {
                let marks = self.failed.entry(group.clone()).or_default();
                marks.retain(|n| n != node);
                if *present {
                    marks.push(node.clone());
                }
                if marks.is_empty() {
                    self.failed.remove(group);
                }
                *revision
            }
            Change::Maintenance {
                node,
                present,
                revision,
            } => {
                mark(&mut self.maintenance, node, *present);
                *revision
            }
            Change::Drain {
                node,
                present,
                revision,
            } => {
                mark(&mut self.drained, node, *present);
                *revision
            }
            Change::Failovers {
                group,
                times,
                revision,
            } => {
                if times.is_empty() {
                    self.failovers.remove(group);
                } else {
                    self.failovers.insert(group.clone(), times.clone());
                }
                *revision
            }
        };
        self.revision = self.revision.max(revision);
    }
}

/// A change to the cluster's keys, from [`Watch::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node joined (`present`) or its key went away (left, or its
    /// lease expired).
    Node {
        node: String,
        present: bool,
        /// The node key's value, when it was put.
        record: Option<NodeRecord>,
        revision: i64,
    },
    /// An owner key was created or changed (`owner`), or deleted
    /// (`owner: None`: released, or its owner's lease ended); `previous`
    /// is the owner before the change, when etcd still had it.
    Owner {
        group: String,
        owner: Option<Owner>,
        previous: Option<Owner>,
        revision: i64,
    },
    /// A move was requested (`node`) or the request cleared.
    Target {
        group: String,
        node: Option<String>,
        revision: i64,
    },
    /// A node marked a group failed (`present`) or the mark went away.
    Failed {
        group: String,
        node: String,
        present: bool,
        revision: i64,
    },
    /// A node was marked for maintenance (`present`) or the mark cleared.
    Maintenance {
        node: String,
        present: bool,
        revision: i64,
    },
    /// A node was drained (`present`) or resumed.
    Drain {
        node: String,
        present: bool,
        revision: i64,
    },
    /// A group's record of recent failovers changed.
    Failovers {
        group: String,
        times: Vec<u64>,
        revision: i64,
    },
    /// Changes were missed (the history was compacted): here is the whole
    /// state again; the watch goes on after it.
    Resync(ClusterView),
}

/// How long one request to one endpoint may take: half the TTL.
fn attempt_timeout(settings: &Settings) -> Duration {
    settings.lease_ttl / 2
}

/// The options every connection to etcd uses, built from `settings`:
/// a connect timeout of half the TTL, "require leader", and the TLS files
/// and etcd user of the settings (read here, so a renewed certificate is
/// used from the next connection on). Fails, naming the key and the file,
/// when one of them cannot be used.
pub fn connect_options(settings: &Settings) -> Result<ConnectOptions, Error> {
    let credentials = settings.credentials()?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(attempt_timeout(settings))
        // A member cut off from the others answers "no leader" instead
        // of serving stale reads or holding watches that never fire.
        .with_require_leader(true);
    if credentials.ca.is_some() || credentials.identity.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = credentials.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = credentials.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = credentials.user {
        // etcd's tokens expire when unused (5 min by default): get a new
        // one instead of failing.
        options = options
            .with_user(user, password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// One client per endpoint, used one at a time: the current one until a
/// request on it fails for want of a connection (or a leader), or times
/// out; then the next. etcd-client can balance over several endpoints
/// itself, but it keeps sending a share of the requests to a member that is
/// down; a node must reach the members left at once.
///
/// A client connects on its endpoint's first use, and again after a failed
/// attempt: with an etcd user, connecting authenticates, which a member
/// that is down cannot answer.
#[derive(Clone)]
struct Clients(Arc<ClientsInner>);

struct ClientsInner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// The etcd user, to name in errors.
    user: Option<String>,
    /// With TLS: whether the node has a client certificate.
    client_cert: Option<bool>,
    clients: Vec<tokio::sync::OnceCell<Client>>,
    current: AtomicUsize,
    /// The endpoint in use, published when a failure moves it, so that a
    /// watch open on the endpoint the renewals just gave up follows them
    /// at once instead of waiting to notice its silence.
    moved: tokio::sync::watch::Sender<usize>,
    /// When a renewal was last acknowledged (`CLOCK_BOOTTIME`, ns), and on
    /// which endpoint: a watch on that endpoint needs no progress request
    /// to know its connection answers.
    renewed: std::sync::Mutex<Option<(BootInstant, usize)>>,
}

impl Clients {
    /// Clients for every endpoint; they connect on their first request.
    fn new(settings: &Settings) -> Result<Clients, Error> {
        let options = connect_options(settings)?;
        Ok(Clients(Arc::new(ClientsInner {
            endpoints: settings.endpoints.clone(),
            options,
            user: settings.user.clone(),
            client_cert: settings
                .tls
                .as_ref()
                .map(|t| t.cert.is_some() && t.key.is_some()),
            clients: settings
                .endpoints
                .iter()
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            current: AtomicUsize::new(0),
            moved: tokio::sync::watch::Sender::new(0),
            renewed: std::sync::Mutex::new(None),
        })))
    }

    /// The index of the endpoint in use.
    fn current(&self) -> usize {
        self.0.current.load(Ordering::Relaxed) % self.0.clients.len()
    }

    /// The client of endpoint `i`, connected now if it was not.
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        self.0.clients[i]
            .get_or_try_init(|| {
                Client::connect([self.0.endpoints[i].as_str()], Some(self.0.options.clone()))
            })
            .await
            .cloned()
    }

    /// Runs `f` on the client of endpoint `i`, connecting it first if
    /// need be.
    async fn with<T, F, Fut>(&self, i: usize, f: F) -> Result<T, etcd_client::Error>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        f(self.client(i).await?).await
    }

    fn endpoint(&self, i: usize) -> &str {
        &self.0.endpoints[i]
    }

    /// Moves on from endpoint `failed` (unless someone did already).
    fn advance(&self, failed: usize) {
        let next = (failed + 1) % self.0.clients.len();
        if self
            .0
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.0.moved.send_replace(next);
        }
    }

    /// A renewal was acknowledged on endpoint `i`.
    fn renewed(&self, i: usize) {
        if let Ok(mut r) = self.0.renewed.lock() {
            *r = Some((BootInstant::now(), i));
        }
    }

    /// Whether a renewal was acknowledged on endpoint `i` within `within`.
    fn renewed_on(&self, i: usize, within: Duration) -> bool {
        self.0
            .renewed
            .lock()
            .ok()
            .and_then(|r| *r)
            .is_some_and(|(at, on)| on == i && BootInstant::now() - at < within)
    }

    /// Told the endpoint in use each time a failure moves it.
    fn moves(&self) -> tokio::sync::watch::Receiver<usize> {
        self.0.moved.subscribe()
    }

    /// Runs `f` on the current endpoint, and on the next ones while it
    /// fails for want of a connection or takes longer than `attempt`: each
    /// endpoint is tried at most once. The requests made here are safe to
    /// repeat (a transaction that took effect before its answer was lost
    /// finds its own work done).
    async fn run<T, F, Fut>(&self, what: &str, attempt: Duration, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut tried = Vec::new();
        for _ in 0..self.0.clients.len() {
            let i = self.current();
            match tokio::time::timeout(attempt, self.with(i, &mut f)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_unavailable(&e) => {
                    tried.push(format!("{}: {}", self.endpoint(i), self.describe(&e)));
                    self.advance(i);
                }
                Ok(Err(source)) => return Err(self.failed(i, what, source)),
                Err(_) => {
                    tried.push(format!(
                        "{}: no answer within {attempt:?}",
                        self.endpoint(i)
                    ));
                    self.advance(i);
                }
            }
        }
        Err(Error::Unreachable {
            what: what.to_owned(),
            tried,
        })
    }

    /// [`describe`], knowing whether this node has a client certificate.
    fn describe(&self, e: &etcd_client::Error) -> String {
        explain(&causes(e), self.0.client_cert)
    }

    /// The error for a request to endpoint `i` that etcd refused.
    fn failed(&self, i: usize, what: &str, source: etcd_client::Error) -> Error {
        let endpoint = self.endpoint(i).to_owned();
        match auth_failure(&source) {
            Some(detail) => Error::Auth {
                endpoint,
                user: self.0.user.clone(),
                detail,
            },
            None => Error::Etcd {
                endpoints: endpoint,
                what: what.to_owned(),
                source,
            },
        }
    }
}

/// What is wrong with the node's etcd user, if that is why etcd refused a
/// request.
fn auth_failure(e: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return None;
    };
    let m = s.message();
    if m.contains("authentication failed") {
        Some("wrong user name or password (password_file)".into())
    } else if m.contains("user name is empty") || m.contains("user name not found") {
        Some("etcd requires a user: set user and password_file".into())
    } else if m.contains("authentication is not enabled") {
        Some("etcd has authentication off: drop user and password_file".into())
    } else if i32::from(s.code()) == 7 {
        // PermissionDenied
        Some(format!("the user may not do this: {m}"))
    } else {
        None
    }
}

/// An etcd client error with its causes (`a: b: c`), so that a TLS or
/// connection failure says why and not just "transport error"; a TLS
/// failure is named as one, with what it most likely means.
pub fn describe(e: &etcd_client::Error) -> String {
    explain(&causes(e), None)
}

/// The error's text and its causes', each once.
fn causes(e: &etcd_client::Error) -> String {
    // A status's own text repeats its source's `Debug`: take its message,
    // and the causes one by one.
    let (first, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_owned(), std::error::Error::source(s)),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    let mut parts = vec![first];
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `chain` (from [`causes`]) with what it means, when it is a TLS
/// failure; `client_cert` says whether the node has a client certificate
/// (`None`: unknown, or no TLS).
///
/// An etcd that wants a client certificate and gets none (or one it does
/// not trust) finishes the TLS 1.3 handshake and then sends an alert and
/// closes the connection: depending on timing the request sees the alert,
/// "connection closed", or a broken pipe.
fn explain(chain: &str, client_cert: Option<bool>) -> String {
    let has = |needles: &[&str]| needles.iter().any(|n| chain.contains(n));
    let cert_alert = has(&[
        "CertificateRequired",
        "BadCertificate",
        "certificate required",
        "bad certificate",
    ]);
    let closed = has(&[
        "connection closed",
        "operation was canceled",
        "broken pipe",
        "connection reset",
    ]);
    let why = if has(&["invalid peer certificate"]) {
        "etcd's certificate did not verify against tls.ca"
    } else if cert_alert && client_cert == Some(false) {
        "etcd requires a client certificate, and this node has none: set tls.cert and tls.key"
    } else if cert_alert {
        "etcd refused this node's client certificate (tls.cert): is it signed by a CA in \
         etcd's --trusted-ca-file?"
    } else if closed && client_cert == Some(false) {
        "etcd closed the connection during or right after the TLS handshake: if it does so \
         every time, it requires a client certificate, and this node has none: set tls.cert \
         and tls.key"
    } else if has(&[
        "received fatal alert",
        "corrupt message",
        "InvalidContentType",
    ]) {
        "is etcd serving https:// here?"
    } else {
        return chain.to_owned();
    };
    format!("TLS handshake failed: {chain} ({why})")
}

/// Whether a request failed for want of a connection or a leader, so that
/// another endpoint may do better.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => true,
        etcd_client::Error::LeaseKeepAliveError(m) => m != "lease not found",
        // Cancelled, Unknown (transport errors), DeadlineExceeded, Unavailable.
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 2 | 4 | 14),
        _ => false,
    }
}

/// Controls the keep-alive task.
#[derive(Debug, Default)]
struct Control {
    /// Test hook: send no renewals while set.
    paused: AtomicBool,
    stop: Notify,
    /// Renewals etcd acknowledged.
    renewals: AtomicU64,
    /// Keep-alive streams that ended with renewals unanswered, or could
    /// not be opened: each a renewal that failed.
    renewal_failures: AtomicU64,
    /// Live [`Watch`]es of the member. While one runs it tells the keeper
    /// when the node key goes, and the keeper keeps no watch of its own:
    /// one watch stream per node.
    followers: AtomicUsize,
    /// Why the node key is gone, as a [`Watch`] saw it.
    node_gone: std::sync::Mutex<Option<String>>,
    node_gone_told: Notify,
}

impl Control {
    fn followed(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    /// A watch saw the node key go: the lease is lost.
    fn node_gone(&self, why: String) {
        if let Ok(mut gone) = self.node_gone.lock() {
            gone.get_or_insert(why);
        }
        self.node_gone_told.notify_one();
    }

    fn take_node_gone(&self) -> Option<String> {
        self.node_gone.lock().ok()?.take()
    }
}

/// This node as a member of the cluster. Dropping it stops the renewals
/// (the lease then expires in etcd); [`leave`](Self::leave) revokes it at
/// once.
pub struct Member {
    clients: Clients,
    settings: Settings,
    keys: Keys,
    endpoints: String,
    lease: i64,
    state: watch::Receiver<LeaseState>,
    control: Arc<Control>,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("node", &self.settings.node)
            .field("endpoints", &self.endpoints)
            .field("lease", &format_args!("{:x}", self.lease))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Member {
    /// Connects, grants the lease, creates the node key and starts the
    /// renewals. Fails with [`Error::NodeTaken`] while a live node of the
    /// same name exists (e.g. this node's previous monitor, whose lease has
    /// not expired yet).
    pub async fn join(settings: Settings) -> Result<Member, Error> {
        settings.validate()?;
        let endpoints = settings.endpoints.join(",");
        let attempt = attempt_timeout(&settings);
        let clients = Clients::new(&settings)?;
        let keys = settings.keys();
        let mut clock = LeaseClock::new(settings.margin);
        let ttl = settings.lease_ttl_secs();
        // The grant counts as the first renewal, sent before the request.
        let mut grant_sent = clock.sent(BootInstant::now());
        let grant = clients
            .run("granting the node's lease", attempt, |mut c| {
                grant_sent = clock.sent(BootInstant::now());
                async move { c.lease_grant(ttl, None).await }
            })
            .await?;
        let lease = grant.id();
        clock.acked(grant_sent, grant.ttl());
        let revoke = || revoke(&clients, attempt, lease);

        let key = keys.node(&settings.node);
        let record = NodeRecord::now(&settings.node);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let created = clients
            .run(&format!("creating node key {key}"), attempt, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let resp = match created {
            Ok(r) => r,
            Err(e) => {
                let _ = revoke().await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            let existing = first_kv(&resp.op_responses());
            let remaining = match &existing {
                Some(kv) if kv.lease() != 0 => {
                    let theirs = kv.lease();
                    clients
                        .run(
                            "reading the other node's lease",
                            attempt,
                            |mut c| async move { c.lease_time_to_live(theirs, None).await },
                        )
                        .await
                        .ok()
                        .and_then(|t| u64::try_from(t.ttl()).ok())
                        .map(Duration::from_secs)
                }
                _ => None,
            };
            let _ = revoke().await;
            return Err(Error::NodeTaken {
                node: settings.node.clone(),
                key,
                record: existing.and_then(|kv| NodeRecord::from_json(kv.value()).ok()),
                remaining,
            });
        }
        let node_revision = resp.header().map_or(0, |h| h.revision());
        tracing::info!(
            "joined the cluster at {endpoints} as node {:?} with lease {lease:x} (TTL {ttl}s)",
            settings.node
        );
        Ok(Member::start(
            settings,
            clients,
            lease,
            grant.ttl(),
            clock,
            node_revision,
        ))
    }

    /// Takes up the membership of an earlier monitor of this node (one
    /// restarted for an upgrade, or after a crash) whose lease `lease`
    /// still lives: renews it at once, checks that this node's key is
    /// bound to it, and puts this process's record there. Every owner key
    /// of that lease is this member's again ([`owned`](Self::owned)); the
    /// fencing tokens stay. Fails with [`Error::LeaseLost`] when the lease
    /// is gone or does not hold this node's key: then join afresh.
    pub async fn resume(settings: Settings, lease: i64) -> Result<Member, Error> {
        settings.validate()?;
        let endpoints = settings.endpoints.join(",");
        let attempt = attempt_timeout(&settings);
        let clients = Clients::new(&settings)?;
        let keys = settings.keys();
        let mut clock = LeaseClock::new(settings.margin);
        let mut sent = clock.sent(BootInstant::now());
        let renewing = format!("renewing lease {lease:x} of this node's earlier monitor");
        let renewed = clients
            .run(&renewing, attempt, |mut c| {
                sent = clock.sent(BootInstant::now());
                async move { c.lease_keep_alive(lease).await.map(|_| ()) }
            })
            .await;
        match renewed {
            Ok(()) => {}
            Err(Error::Etcd { source, .. }) if is_lease_not_found(&source) => {
                return Err(Error::LeaseLost(format!(
                    "lease {lease:x} of this node's earlier monitor expired or was revoked"
                )))
            }
            Err(e) => return Err(e),
        }
        let granted = clients
            .run("reading the lease's TTL", attempt, |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?
            .granted_ttl();
        if clock.acked(sent, granted) == Ack::Lost {
            return Err(Error::LeaseLost(format!(
                "lease {lease:x}: its renewal came back too late"
            )));
        }
        // The node key must still be this lease's: put the new record
        // only if it is.
        let key = keys.node(&settings.node);
        let record = NodeRecord::now(&settings.node);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key.clone(),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = clients
            .run(&format!("updating node key {key}"), attempt, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Err(Error::LeaseLost(format!(
                "lease {lease:x} no longer holds node key {key}"
            )));
        }
        let node_revision = resp.header().map_or(0, |h| h.revision());
        tracing::info!(
            "resumed node {:?} in the cluster at {endpoints} with lease {lease:x}",
            settings.node
        );
        Ok(Member::start(
            settings,
            clients,
            lease,
            granted,
            clock,
            node_revision,
        ))
    }

    /// Starts the renewals of a lease that holds the node key (written at
    /// `node_revision`) and makes the member.
    fn start(
        settings: Settings,
        clients: Clients,
        lease: i64,
        ttl: i64,
        clock: LeaseClock,
        node_revision: i64,
    ) -> Member {
        let keys = settings.keys();
        let (tx, state) = watch::channel(LeaseState::of(&clock));
        let control = Arc::new(Control::default());
        let keeper = tokio::spawn(
            Keeper {
                clients: clients.clone(),
                endpoint: clients.current(),
                lease,
                node_key: keys.node(&settings.node),
                watch_from: node_revision + 1,
                interval: settings.renew_interval(),
                ttl,
                clock,
                tx,
                control: Arc::clone(&control),
            }
            .run(),
        );
        Member {
            endpoints: settings.endpoints.join(","),
            clients,
            settings,
            keys,
            lease,
            state,
            control,
            keeper,
        }
    }

    /// The groups whose owner key this member's lease holds, with their
    /// tokens: after [`resume`](Self::resume), the groups it still owns.
    pub async fn owned(&self) -> Result<Vec<Ownership>, Error> {
        let view = self.view().await?;
        Ok(view
            .owners
            .into_values()
            .filter(|o| o.lease == self.lease && o.node == self.settings.node)
            .map(|o| Ownership {
                group: o.group,
                token: o.token,
                mod_revision: o.mod_revision,
            })
            .collect())
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The node's lease id.
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// The lease's state, updated on every acknowledged renewal and on loss.
    pub fn lease_state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Renewals acknowledged, and renewals that failed, since the member
    /// joined.
    pub fn renewals(&self) -> (u64, u64) {
        (
            self.control.renewals.load(Ordering::Relaxed),
            self.control.renewal_failures.load(Ordering::Relaxed),
        )
    }

    /// Test hook: stops sending renewals (as a frozen monitor would) until
    /// called with `false`. The lease then runs out in etcd.
    #[cfg(feature = "testkit")]
    pub fn pause_renewals(&self, paused: bool) {
        self.control.paused.store(paused, Ordering::Relaxed);
    }

    /// Takes group `group` if nobody owns it, in one transaction: if the
    /// owner key does not exist (`create_revision == 0`), put it with this
    /// node's name and lease; else read it. Bring the group online only
    /// after [`Claim::Won`], and hand its resources [`Ownership::token`].
    pub async fn acquire(&self, group: &str) -> Result<Claim, Error> {
        check_name(group)?;
        self.check_lease()?;
        let key = self.keys.owner(group);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    self.settings.node.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::get(key.clone(), None),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let what = format!("acquiring group {group:?} (owner key {key})");
        let resp = self
            .op(&what, txn, |mut c, txn| async move { c.txn(txn).await })
            .await?;
        let Some(kv) = first_kv(&resp.op_responses()) else {
            // Possible only if the key vanished between compare and get,
            // which one transaction rules out.
            return Err(self.unexpected(&what, "the owner key is missing from the answer"));
        };
        let owner = owner_of(group, &kv);
        if resp.succeeded() || (owner.lease == self.lease && owner.node == self.settings.node) {
            Ok(Claim::Won(Ownership {
                group: group.to_owned(),
                token: owner.token,
                mod_revision: owner.mod_revision,
            }))
        } else {
            Ok(Claim::Held(owner))
        }
    }

    /// Gives the group up: deletes the owner key if it is still the one
    /// `ownership` created (same `create_revision`). Returns whether it
    /// deleted it. Take the group's resources down *before* calling this.
    pub async fn release(&self, ownership: &Ownership) -> Result<bool, Error> {
        let key = self.keys.owner(&ownership.group);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                ownership.token,
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        let what = format!(
            "releasing group {:?} (owner key {key}, token {})",
            ownership.group, ownership.token
        );
        let resp = self
            .op(&what, txn, |mut c, txn| async move { c.txn(txn).await })
            .await?;
        Ok(resp.succeeded())
    }

    /// Who owns `group`, if anyone.
    pub async fn owner(&self, group: &str) -> Result<Option<Owner>, Error> {
        check_name(group)?;
        let key = self.keys.owner(group);
        let what = format!("reading owner key {key}");
        let resp = self
            .op(
                &what,
                key,
                |mut c, key| async move { c.get(key, None).await },
            )
            .await?;
        Ok(resp.kvs().first().map(|kv| owner_of(group, kv)))
    }

    /// Every key of the cluster, read at one revision.
    pub async fn view(&self) -> Result<ClusterView, Error> {
        read_view(&self.clients, &self.keys, attempt_timeout(&self.settings)).await
    }

    /// The live nodes (those whose node key exists), with what their
    /// lease has left.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let prefix = self.keys.nodes();
        let what = format!("listing nodes under {prefix}");
        let resp = self
            .op(&what, prefix, |mut c, prefix| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let mut nodes = Vec::new();
        for kv in resp.kvs() {
            let Some(Key::Node(node)) = kv.key_str().ok().and_then(|k| self.keys.parse(k)) else {
                continue;
            };
            let lease = kv.lease();
            let ttl_remaining = if lease == 0 {
                None
            } else {
                let what = format!("reading the lease of node {node:?}");
                self.op(&what, lease, |mut c, lease| async move {
                    c.lease_time_to_live(lease, None).await
                })
                .await
                .ok()
                .and_then(|t| u64::try_from(t.ttl()).ok())
                .map(Duration::from_secs)
            };
            nodes.push(NodeInfo {
                node,
                record: NodeRecord::from_json(kv.value()).ok(),
                lease,
                ttl_remaining,
            });
        }
        Ok(nodes)
    }

    /// Requests that `group` move to `node` (a key without lease: it
    /// stays until cleared).
    pub async fn set_target(&self, group: &str, node: &str) -> Result<(), Error> {
        check_name(group)?;
        check_name(node)?;
        let key = self.keys.target(group);
        let what = format!("setting target key {key} to {node:?}");
        let node = node.to_owned();
        self.op(&what, (key, node), |mut c, (key, node)| async move {
            c.put(key, node, None).await
        })
        .await?;
        Ok(())
    }

    /// Marks `node` for maintenance (`on`) or clears the mark. The key has
    /// no lease: the mark outlives the node's monitor.
    pub async fn set_maintenance(&self, node: &str, on: bool) -> Result<(), Error> {
        check_name(node)?;
        self.set_mark("maintenance", self.keys.maintenance(node), on)
            .await
    }

    /// Drains `node` (`on`) or resumes it; like maintenance, a mark
    /// without a lease.
    pub async fn set_drain(&self, node: &str, on: bool) -> Result<(), Error> {
        check_name(node)?;
        self.set_mark("drain", self.keys.drain(node), on).await
    }

    async fn set_mark(&self, what: &str, key: String, on: bool) -> Result<(), Error> {
        if !on {
            return self.delete(what, key).await;
        }
        let doing = format!("setting {what} key {key}");
        self.op(&doing, key, |mut c, key| async move {
            c.put(key, "", None).await
        })
        .await?;
        Ok(())
    }

    pub async fn clear_target(&self, group: &str) -> Result<(), Error> {
        check_name(group)?;
        self.delete("target", self.keys.target(group)).await
    }

    /// The node `group` was asked to move to, if any.
    pub async fn target(&self, group: &str) -> Result<Option<String>, Error> {
        check_name(group)?;
        let key = self.keys.target(group);
        let what = format!("reading target key {key}");
        let resp = self
            .op(
                &what,
                key,
                |mut c, key| async move { c.get(key, None).await },
            )
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Records that this node gave `group` up (past its restart
    /// threshold). Bound to the node's lease: it goes when the node does.
    pub async fn mark_failed(&self, group: &str) -> Result<(), Error> {
        check_name(group)?;
        let key = self.keys.failed(group, &self.settings.node);
        let what = format!("putting failed key {key}");
        let lease = self.lease;
        self.op(&what, key, |mut c, key| async move {
            c.put(key, "", Some(PutOptions::new().with_lease(lease)))
                .await
        })
        .await?;
        Ok(())
    }

    /// Records when `group` recently failed over (Unix milliseconds, the
    /// new one included): read by every node for `failover_threshold`.
    pub async fn record_failovers(&self, group: &str, times: &[u64]) -> Result<(), Error> {
        check_name(group)?;
        let key = self.keys.failovers(group);
        let what = format!("putting failovers key {key}");
        let value = serde_json::to_string(times).unwrap_or_else(|_| "[]".into());
        self.op(&what, (key, value), |mut c, (key, value)| async move {
            c.put(key, value, None).await
        })
        .await?;
        Ok(())
    }

    /// Withdraws this node's failed mark on `group`.
    pub async fn clear_failed(&self, group: &str) -> Result<(), Error> {
        check_name(group)?;
        self.delete("failed", self.keys.failed(group, &self.settings.node))
            .await
    }

    /// The cluster's state now, and a [`Watch`] of every change after it.
    pub async fn watch(&self) -> Result<(ClusterView, Watch), Error> {
        let view = self.view().await?;
        self.control.followers.fetch_add(1, Ordering::Relaxed);
        let watch = Watch {
            member: Arc::clone(&self.control),
            node: self.settings.node.clone(),
            lease: self.lease,
            moves: self.clients.moves(),
            clients: self.clients.clone(),
            endpoint: 0,
            keys: self.keys.clone(),
            endpoints: self.endpoints.clone(),
            attempt: attempt_timeout(&self.settings),
            wait: self.settings.lease_ttl,
            next_revision: view.revision + 1,
            stream: None,
            queue: VecDeque::new(),
        };
        Ok((view, watch))
    }

    /// Leaves the cluster: stops the renewals and revokes the lease, which
    /// deletes the node key and every owner and failed key of this node.
    /// Take the owned groups down first.
    pub async fn leave(self) -> Result<(), Error> {
        self.control.stop.notify_one();
        self.keeper.abort();
        // Gone already (expired or revoked) is what leaving wants.
        revoke(&self.clients, attempt_timeout(&self.settings), self.lease)
            .await
            .map(drop)
    }

    fn check_lease(&self) -> Result<(), Error> {
        let state = self.state.borrow();
        if let Some(why) = &state.lost {
            return Err(Error::LeaseLost(why.clone()));
        }
        match state.may_run_until {
            Some(until) if !until.has_passed() => Ok(()),
            _ => Err(Error::LeaseLost(
                "no renewal acknowledged in time: the deadline passed".into(),
            )),
        }
    }

    /// Deletes one key (`kind` names it in errors: "deleting target key ...").
    async fn delete(&self, kind: &str, key: String) -> Result<(), Error> {
        let what = format!("deleting {kind} key {key}");
        self.op(
            &what,
            key,
            |mut c, key| async move { c.delete(key, None).await },
        )
        .await?;
        Ok(())
    }

    /// Runs one request (see [`Clients::run`]), naming it in errors.
    async fn op<A, T, F, Fut>(&self, what: &str, arg: A, f: F) -> Result<T, Error>
    where
        A: Clone,
        F: Fn(Client, A) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.clients
            .run(what, attempt_timeout(&self.settings), |c| f(c, arg.clone()))
            .await
    }

    fn unexpected(&self, what: &str, detail: &str) -> Error {
        Error::Unexpected {
            endpoints: self.endpoints.clone(),
            what: what.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// Revokes lease `lease` (hexadecimal in messages, as etcdctl shows it)
/// with a client built from `settings`, for a process that is not a
/// [`Member`]: the fence guard, once it has killed everything the lease
/// let its node run. etcd deletes every key bound to the lease at once (the
/// node key, the owner keys), so the next nodes in line take the groups
/// without waiting for the TTL. Returns whether etcd still knew the lease
/// (`false`: it had expired or was revoked already, which is no error).
///
/// Each endpoint is tried once, for at most half the TTL; bound the whole
/// call with a timeout of your own when time counts.
pub async fn revoke_lease(settings: &Settings, lease: i64) -> Result<bool, Error> {
    settings.validate()?;
    let attempt = attempt_timeout(settings);
    let clients = Clients::new(settings)?;
    revoke(&clients, attempt, lease).await
}

/// Revokes `lease`; whether etcd still knew it.
async fn revoke(clients: &Clients, attempt: Duration, lease: i64) -> Result<bool, Error> {
    let what = format!("revoking lease {lease:x}");
    let revoked = clients
        .run(&what, attempt, move |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await;
    match revoked {
        Ok(_) => Ok(true),
        Err(Error::Etcd { source, .. }) if is_lease_not_found(&source) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn read_view(
    clients: &Clients,
    keys: &Keys,
    attempt: Duration,
) -> Result<ClusterView, Error> {
    let root = keys.root();
    let what = format!("reading every key under {root}");
    let resp = clients
        .run(&what, attempt, |mut c| {
            let root = root.clone();
            async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok(ClusterView::from_kvs(keys, revision, resp.kvs()))
}

/// A failovers key's value; what does not parse counts as none (a bad
/// value must not keep a group from failing over).
fn failover_times(value: &[u8]) -> Vec<u64> {
    serde_json::from_slice(value).unwrap_or_default()
}

fn owner_of(group: &str, kv: &KeyValue) -> Owner {
    Owner {
        group: group.to_owned(),
        node: String::from_utf8_lossy(kv.value()).into_owned(),
        token: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

/// The first key-value of the first `get` among a transaction's answers.
fn first_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// Whether etcd said the lease does not exist (expired or revoked).
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
        etcd_client::Error::GRpcStatus(s) => s.message().contains("requested lease not found"),
        _ => false,
    }
}

/// The keep-alive task.
struct Keeper {
    clients: Clients,
    /// The endpoint of the stream in use.
    endpoint: usize,
    lease: i64,
    node_key: String,
    /// Watch the node key from this revision.
    watch_from: i64,
    interval: Duration,
    /// The lease's TTL as granted, in seconds.
    ttl: i64,
    clock: LeaseClock,
    tx: watch::Sender<LeaseState>,
    control: Arc<Control>,
}

/// Why a keep-alive stream ended.
enum StreamEnd {
    /// Make a new one.
    Reconnect(String),
    /// The lease is lost or the member stops.
    Done,
}

impl Keeper {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.finished() {
                return;
            }
            match self.stream().await {
                StreamEnd::Done => return,
                StreamEnd::Reconnect(why) => {
                    self.control
                        .renewal_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.clock.abandon_pending();
                    tracing::warn!(
                        "etcd at {}: lease {:x} keep-alive: {why}; reconnecting",
                        self.clients.endpoint(self.endpoint),
                        self.lease
                    );
                    self.clients.advance(self.endpoint);
                    let pause = backoff.min(self.until_deadline());
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.control.stop.notified() => return,
                    }
                    backoff = (backoff * 2).min(self.interval);
                }
            }
            if self.clock.pending() == 0 && self.clock.may_run_until().is_some() {
                backoff = Duration::from_millis(50);
            }
        }
    }

    fn publish(&self) {
        let next = LeaseState::of(&self.clock);
        self.tx.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }

    fn lose(&mut self, why: String) {
        tracing::warn!(
            "etcd at {}: lease {:x} lost: {why}",
            self.clients.endpoint(self.endpoint),
            self.lease
        );
        self.clock.lose(why);
        self.publish();
    }

    /// Checks the deadline; true when the task should end.
    fn finished(&mut self) -> bool {
        if self.clock.lost().is_some() {
            return true;
        }
        if self.clock.expired(BootInstant::now()) {
            self.lose(format!(
                "no renewal acknowledged in time: the deadline passed (renewing every {:?})",
                self.interval
            ));
            return true;
        }
        false
    }

    fn until_deadline(&self) -> Duration {
        self.clock
            .may_run_until()
            .map_or(Duration::ZERO, BootInstant::remaining)
    }

    fn paused(&self) -> bool {
        self.control.paused.load(Ordering::Relaxed)
    }

    /// One keep-alive stream, from opening to its end.
    async fn stream(&mut self) -> StreamEnd {
        // Opening the stream sends a first renewal and waits for its answer.
        if self.paused() {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.control.stop.notified() => return StreamEnd::Done,
            }
            return StreamEnd::Reconnect("renewals paused".into());
        }
        let first = self.clock.sent(BootInstant::now());
        let wait = self.interval.min(self.until_deadline());
        self.endpoint = self.clients.current();
        let lease = self.lease;
        let opened = tokio::time::timeout(
            wait,
            self.clients.with(self.endpoint, |mut c| async move {
                c.lease_keep_alive(lease).await
            }),
        )
        .await;
        let (mut keeper, mut answers) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if is_lease_not_found(&e) => {
                self.lose(format!(
                    "etcd does not know lease {:x}: it expired or was revoked",
                    self.lease
                ));
                return StreamEnd::Done;
            }
            Ok(Err(e)) => return StreamEnd::Reconnect(self.clients.describe(&e)),
            Err(_) => return StreamEnd::Reconnect(format!("no answer within {wait:?}")),
        };
        self.control.renewals.fetch_add(1, Ordering::Relaxed);
        if self.clock.acked(first, self.ttl) == Ack::Lost {
            self.publish();
            return StreamEnd::Done;
        }
        self.publish();
        // Of its own only while no Watch of the member runs.
        let mut node_watch = if self.control.followed() {
            None
        } else {
            self.watch_node().await
        };
        let mut pending: VecDeque<RenewalId> = VecDeque::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let deadline = tokio::time::sleep(self.until_deadline());
            tokio::select! {
                _ = tick.tick() => {
                    if self.finished() {
                        return StreamEnd::Done;
                    }
                    // A renewal sent on the last tick and still not
                    // answered (a live member answers within
                    // milliseconds). Half the interval, not all of it: the
                    // tick that would see a whole interval can come a hair
                    // early and leave the member one more interval, which
                    // the deadline may not have.
                    if let Some(oldest) = self.clock.oldest_pending() {
                        let waited = BootInstant::now() - oldest;
                        if waited >= self.interval / 2 {
                            return StreamEnd::Reconnect(format!(
                                "a renewal went unanswered for {waited:?}"
                            ));
                        }
                    }
                    if self.paused() {
                        continue;
                    }
                    if self.control.followed() {
                        node_watch = None;
                    } else if node_watch.is_none() {
                        node_watch = self.watch_node().await;
                    }
                    let id = self.clock.sent(BootInstant::now());
                    if let Err(e) = keeper.keep_alive().await {
                        return StreamEnd::Reconnect(e.to_string());
                    }
                    pending.push_back(id);
                }
                answer = answers.message() => match answer {
                    Ok(Some(resp)) => {
                        let Some(id) = pending.pop_front() else { continue };
                        self.control.renewals.fetch_add(1, Ordering::Relaxed);
                        self.clients.renewed(self.endpoint);
                        let ack = self.clock.acked(id, resp.ttl());
                        self.publish();
                        if ack == Ack::Lost {
                            tracing::warn!(
                                "etcd at {}: lease {:x} lost: {}",
                                self.clients.endpoint(self.endpoint), self.lease,
                                self.clock.lost().unwrap_or_default()
                            );
                            return StreamEnd::Done;
                        }
                    }
                    Ok(None) => return StreamEnd::Reconnect("the stream ended".into()),
                    Err(e) => return StreamEnd::Reconnect(e.to_string()),
                },
                () = self.control.node_gone_told.notified() => {
                    if let Some(why) = self.control.take_node_gone() {
                        self.lose(why);
                        return StreamEnd::Done;
                    }
                }
                msg = next_message(&mut node_watch) => {
                    if let Some(end) = self.node_event(msg, &mut node_watch).await {
                        return end;
                    }
                }
                _ = deadline => {
                    if self.finished() {
                        return StreamEnd::Done;
                    }
                }
                _ = self.control.stop.notified() => return StreamEnd::Done,
            }
        }
    }

    /// A watch on the node key from `watch_from`, or `None` for now.
    async fn watch_node(&mut self) -> Option<WatchStream> {
        let options = WatchOptions::new().with_start_revision(self.watch_from);
        let key = self.node_key.clone();
        match tokio::time::timeout(
            self.interval,
            self.clients
                .with(self.clients.current(), |mut c| async move {
                    c.watch(key, Some(options)).await
                }),
        )
        .await
        {
            Ok(Ok(w)) => Some(w),
            Ok(Err(e)) => {
                tracing::debug!("watching {}: {e}", self.node_key);
                None
            }
            Err(_) => None,
        }
    }

    /// Handles a message of the node key watch; `Some` ends the stream.
    async fn node_event(
        &mut self,
        msg: Result<Option<WatchResponse>, etcd_client::Error>,
        node_watch: &mut Option<WatchStream>,
    ) -> Option<StreamEnd> {
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => {
                *node_watch = None;
                return None;
            }
        };
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                self.watch_from = self.watch_from.max(kv.mod_revision() + 1);
            }
            if ev.event_type() == EventType::Delete {
                self.lose(format!(
                    "node key {} was deleted: the lease was revoked or expired",
                    self.node_key
                ));
                return Some(StreamEnd::Done);
            }
        }
        if resp.canceled() {
            *node_watch = None;
            // Compacted past our revision: look at the key itself.
            let key = self.node_key.clone();
            let got = tokio::time::timeout(
                self.interval,
                self.clients
                    .with(self.clients.current(), |mut c| async move {
                        c.get(key, None).await
                    }),
            )
            .await;
            if let Ok(Ok(got)) = got {
                match got.kvs().first() {
                    Some(kv) if kv.lease() == self.lease => {
                        self.watch_from =
                            got.header().map_or(self.watch_from, |h| h.revision() + 1);
                    }
                    _ => {
                        self.lose(format!(
                            "node key {} is gone: the lease was revoked or expired",
                            self.node_key
                        ));
                        return Some(StreamEnd::Done);
                    }
                }
            }
        }
        None
    }
}

/// The next message of an optional watch; pending forever without one.
async fn next_message(
    w: &mut Option<WatchStream>,
) -> Result<Option<WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// Every change to the cluster's keys after a [`ClusterView`], from
/// [`Member::watch`]. Reconnects by itself from the last revision seen;
/// when etcd compacted that history away it yields [`Change::Resync`].
pub struct Watch {
    clients: Clients,
    /// The endpoint of the stream in use.
    endpoint: usize,
    keys: Keys,
    endpoints: String,
    /// How long one request may take.
    attempt: Duration,
    /// After this long without a message, ask for progress.
    wait: Duration,
    next_revision: i64,
    stream: Option<WatchStream>,
    queue: VecDeque<Change>,
    /// Where the node's other requests (the renewals) moved.
    moves: tokio::sync::watch::Receiver<usize>,
    /// The member's keeper, told when this node's key goes.
    member: Arc<Control>,
    node: String,
    lease: i64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.member.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.keys.root())
            .field("endpoints", &self.endpoints)
            .field("next_revision", &self.next_revision)
            .finish()
    }
}

impl Watch {
    /// The next change. An error is passing (etcd unreachable): call
    /// again, the watch resumes where it was.
    pub async fn next(&mut self) -> Result<Change, Error> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Ok(change);
            }
            if self.stream.is_none() {
                let root = self.keys.root();
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(self.next_revision);
                let what = format!("watching {root} from revision {}", self.next_revision);
                let mut endpoint = 0;
                let stream = self
                    .clients
                    .run(&what, self.attempt, |mut c| {
                        endpoint = self.clients.current();
                        let (root, options) = (root.clone(), options.clone());
                        async move { c.watch(root, Some(options)).await }
                    })
                    .await?;
                self.endpoint = endpoint;
                self.stream = Some(stream);
                self.moves.borrow_and_update();
            }
            let stream = self.stream.as_mut().expect("opened above");
            // Silence for a whole TTL, with no renewal answered on this
            // endpoint meanwhile: ask for progress, and give up on the
            // stream if even that gets no answer (a dead connection). The
            // renewals leaving this endpoint (they go every fraction of
            // the TTL) end the stream at once: the member is likely gone.
            let first = tokio::select! {
                m = tokio::time::timeout(self.wait, stream.message()) => Some(m),
                Ok(()) = self.moves.changed() => None,
            };
            let Some(first) = first else {
                if *self.moves.borrow() != self.endpoint {
                    tracing::warn!(
                        "etcd at {}: the node's requests moved to {}; the watch of {} follows from revision {}",
                        self.clients.endpoint(self.endpoint),
                        self.clients.endpoint(self.clients.current()),
                        self.keys.root(),
                        self.next_revision
                    );
                    self.stream = None;
                }
                continue;
            };
            let msg = match first {
                Ok(m) => m,
                // Renewals acknowledged on this endpoint meanwhile: the
                // connection the stream shares with them answers, and a
                // stream the member ended would have said so.
                Err(_) if self.clients.renewed_on(self.endpoint, self.wait) => continue,
                Err(_) => {
                    let _ = stream.request_progress().await;
                    match tokio::time::timeout(self.wait, stream.message()).await {
                        Ok(m) => m,
                        Err(_) => {
                            self.drop_stream("no answer to a progress request");
                            continue;
                        }
                    }
                }
            };
            match msg {
                Ok(Some(resp)) => self.take(resp).await?,
                Ok(None) => self.drop_stream("the stream ended"),
                Err(e) => self.drop_stream(&e.to_string()),
            }
        }
    }

    /// Gives up the stream, and its endpoint for the next one.
    fn drop_stream(&mut self, why: &str) {
        tracing::warn!(
            "etcd at {}: the watch of {} broke off: {why}; resuming from revision {}",
            self.clients.endpoint(self.endpoint),
            self.keys.root(),
            self.next_revision
        );
        self.stream = None;
        self.clients.advance(self.endpoint);
    }

    async fn take(&mut self, resp: WatchResponse) -> Result<(), Error> {
        if resp.compact_revision() > 0 {
            self.stream = None;
            let view = read_view(&self.clients, &self.keys, self.attempt).await?;
            self.next_revision = view.revision + 1;
            if !view.nodes.contains_key(&self.node) {
                self.member.node_gone(format!(
                    "node key {} is gone (seen by the cluster watch): the lease was revoked or expired",
                    self.keys.node(&self.node)
                ));
            }
            self.queue.push_back(Change::Resync(view));
            return Ok(());
        }
        if resp.canceled() {
            // Canceled without compaction: e.g. the member lost its leader.
            self.drop_stream(&format!("canceled: {}", resp.cancel_reason()));
            return Ok(());
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let revision = kv.mod_revision();
            self.next_revision = self.next_revision.max(revision + 1);
            let present = ev.event_type() == EventType::Put;
            let Some(key) = kv.key_str().ok().and_then(|k| self.keys.parse(k)) else {
                continue;
            };
            let change = match key {
                Key::Node(node) => {
                    if !present
                        && node == self.node
                        && ev.prev_kv().is_none_or(|p| p.lease() == self.lease)
                    {
                        self.member.node_gone(format!(
                            "node key {} was deleted (seen by the cluster watch): the lease was revoked or expired",
                            self.keys.node(&self.node)
                        ));
                    }
                    Change::Node {
                        node,
                        present,
                        record: present
                            .then(|| NodeRecord::from_json(kv.value()).ok())
                            .flatten(),
                        revision,
                    }
                }
                Key::Owner(group) => Change::Owner {
                    owner: present.then(|| owner_of(&group, kv)),
                    previous: ev.prev_kv().map(|p| owner_of(&group, p)),
                    group,
                    revision,
                },
                Key::Target(group) => Change::Target {
                    group,
                    node: present.then(|| String::from_utf8_lossy(kv.value()).into_owned()),
                    revision,
                },
                Key::Failed { group, node } => Change::Failed {
                    group,
                    node,
                    present,
                    revision,
                },
                Key::Maintenance(node) => Change::Maintenance {
                    node,
                    present,
                    revision,
                },
                Key::Drain(node) => Change::Drain {
                    node,
                    present,
                    revision,
                },
                Key::Failovers(group) => Change::Failovers {
                    group,
                    times: if present {
                        failover_times(kv.value())
                    } else {
                        Vec::new()
                    },
                    revision,
                },
            };
            self.queue.push_back(change);
        }
        if resp.events().is_empty() {
            if let Some(h) = resp.header() {
                // A progress notice: everything up to it was sent.
                if !resp.created() {
                    self.next_revision = self.next_revision.max(h.revision() + 1);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    /// Errors as tonic and rustls gave them against a real etcd.
    #[test]
    fn tls_failures_say_why() {
        let unknown_ca = "invalid peer certificate: UnknownIssuer: transport error";
        let alert = "transport error: connection error: received fatal alert: BadCertificate";
        let closed = "operation was canceled: transport error: connection closed";
        let pipe = "transport error: connection error: stream closed because of a broken pipe";
        let plain = "transport error: received corrupt message of type InvalidContentType";
        let table: &[(&str, Option<bool>, Option<&str>)] = &[
            (
                unknown_ca,
                Some(true),
                Some("did not verify against tls.ca"),
            ),
            (unknown_ca, None, Some("did not verify against tls.ca")),
            (
                alert,
                Some(false),
                Some("requires a client certificate, and this node has none"),
            ),
            (
                alert,
                Some(true),
                Some("refused this node's client certificate"),
            ),
            (
                closed,
                Some(false),
                Some("it requires a client certificate"),
            ),
            (pipe, Some(false), Some("it requires a client certificate")),
            (plain, Some(true), Some("is etcd serving https:// here?")),
            // Without TLS, or with a certificate, a closed connection is
            // only that.
            (closed, None, None),
            (pipe, Some(true), None),
        ];
        for (chain, cert, why) in table {
            let text = explain(chain, *cert);
            match why {
                Some(why) => {
                    assert!(text.starts_with("TLS handshake failed: "), "{text}");
                    assert!(text.contains(chain) && text.contains(why), "{text}");
                }
                None => assert_eq!(&text, chain),
            }
        }
    }
}
