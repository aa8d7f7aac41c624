//! The local API: HTTP/1.1 with JSON bodies over the monitor's Unix socket.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/resources` | status of every resource |
//! | `GET /v1/resources/{name}` | status of one |
//! | `POST /v1/resources/{name}/online?wait=true` | bring online (providers first) |
//! | `POST /v1/resources/{name}/offline?wait=true` | take offline (dependents first) |
//! | `POST /v1/resources/{name}/terminate?wait=true` | terminate; body `{"exit_code": N}` |
//! | `POST /v1/resources/{name}/reload` | the resource takes its configuration again, without a restart |
//! | `POST /v1/resources/{name}/signal/{signal}?all=true` | a signal to its main process (or every process) |
//! | `POST /v1/resources/{name}/control/{code}` | `resource_control` |
//! | `POST /v1/types/{type}/control/{code}` | `resource_type_control` |
//! | `GET /v1/calls` | entry-point calls in progress |
//! | `POST /v1/reload` | re-read the config file and apply what changed |
//! | `GET /v1/events?follow=true` | the event feed as JSON lines |
//! | `GET /metrics` | every metric series, Prometheus text or OpenMetrics (`docs/metrics.md`) |
//! | `GET /healthz`, `GET /readyz` | liveness and readiness, no right needed |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 404 (no such
//! resource), 409 (the operation failed: the resource failed while we
//! waited) or 503 (the monitor is stopping).

use crate::access::{Access, Right};
use crate::cluster::view::{ClusterHandle, ClusterRequest, MoveBody};
use crate::driver::{no_such, Msg, OpError, ResourceStatus};
use crate::events::{EventBus, EventRecord};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
pub use resmon_client::wire::{
    ActedReply, CallsReply, ControlReply, ErrorReply, HealthReply, MaintenanceBody, OpReply,
    ReloadReport, StatusReply, TerminateBody, WhoAmIReply,
};
use resmon_core::{Command, Settled};
use serde::Deserialize;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A reload request for the main loop; the answer is the report or the
/// config's problems.
pub type ReloadRequest = oneshot::Sender<Result<ReloadReport, ReloadRefused>>;

/// Why a reload changed nothing.
#[derive(Clone, Debug)]
pub enum ReloadRefused {
    /// The new config's problems.
    Invalid(String),
    /// The monitor is stopping.
    Stopping,
}

#[derive(Clone)]
pub struct ApiState {
    pub tx: mpsc::UnboundedSender<Msg>,
    pub bus: EventBus,
    /// Replaced whole by a reload.
    pub access: Arc<std::sync::RwLock<Arc<Access>>>,
    pub reload: mpsc::UnboundedSender<ReloadRequest>,
    /// The cluster side, in cluster mode.
    pub cluster: Option<ClusterHandle>,
    /// What is wrong with the monitor itself now (e.g. its state cannot be
    /// saved): shown with `status` and with every operation's answer.
    pub problems: Problems,
    /// The per-resource series of the last `/metrics`.
    pub metrics: Arc<resmon_metrics::Cache>,
    /// Where `/v1/events` reads the history of earlier runs; `None` when
    /// the journal could not be opened.
    pub journal: Option<crate::journal::Reader>,
    /// The log directory, where resources' relays write their output.
    pub logs: Option<Arc<rustix::fd::OwnedFd>>,
    /// Where `POST /v1/upgrade` goes: the event loop.
    pub upgrade: mpsc::UnboundedSender<UpgradeRequest>,
}

/// An upgrade asked for: the new binary's `--version`, and the answer.
pub struct UpgradeRequest {
    pub version: String,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The most events `/v1/events?since=` sends of the past.
const EVENTS_SINCE_LIMIT: usize = 100_000;

/// See [`ApiState::problems`].
pub type Problems = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Who is calling: on the Unix socket, as the kernel says (`SO_PEERCRED`);
/// on TCP, whoever holds a token.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub tcp: bool,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(_stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller {
            uid: None,
            pid: None,
            tcp: true,
        }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Caller {
                uid: Some(c.uid()),
                pid: c.pid(),
                tcp: false,
            },
            Err(_) => Caller {
                uid: None,
                pid: None,
                tcp: false,
            },
        }
    }
}

/// The right a request needs: reading needs `query`, `terminate` needs
/// `terminate`, everything else that changes something needs `control`.
pub fn right_for(method: &axum::http::Method, path: &str) -> Right {
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Right::Query
    } else if path.ends_with("/terminate") {
        Right::Terminate
    } else {
        Right::Control
    }
}

/// Checks every request against the caller's rights before it reaches a
/// handler; without known credentials nothing is allowed.
async fn authorize(AxState(st): AxState<ApiState>, req: Request, next: Next) -> Response {
    let right = right_for(req.method(), req.uri().path());
    let caller = req.extensions().get::<ConnectInfo<Caller>>().map(|c| c.0);
    let access = st.access.read().unwrap_or_else(|e| e.into_inner()).clone();
    // Who asked for a change, and whether it was let through, goes to the
    // event journal.
    // Not for reads: they are most requests, and change nothing.
    let what = (right != Right::Query).then(|| format!("{} {}", req.method(), req.uri().path()));
    let record = |who: &str, denied: Option<&str>| {
        let Some(what) = &what else {
            return;
        };
        let reason = match denied {
            None => format!("{what} by {who}"),
            Some(why) => format!("{what} by {who} refused: {why}"),
        };
        st.bus.publish("request", None, None, None, reason);
    };
    if caller.is_some_and(|c| c.tcp) {
        let presented = bearer(req.headers());
        let who = presented
            .and_then(|t| access.token(t))
            .map_or("an unknown token".to_string(), |t| {
                format!("token {:?}", t.name)
            });
        return match access.check_token(presented, right) {
            Ok(()) => {
                record(&who, None);
                next.run(req).await
            }
            Err(crate::access::TokenDenied::Lacks(why)) => {
                record(&who, Some(&why.to_string()));
                error(StatusCode::FORBIDDEN, format!("access denied: {why}"))
            }
            Err(_) => {
                record(&who, Some("no valid token"));
                (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    Json(ErrorReply {
                        error: "a valid bearer token is required (Authorization: Bearer TOKEN)"
                            .into(),
                    }),
                )
                    .into_response()
            }
        };
    }
    let uid = caller.and_then(|c| c.uid);
    let who = uid.map_or(
        "an unknown caller".to_string(),
        |u| match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)) {
            Ok(Some(user)) => format!("uid {u} ({})", user.name),
            _ => format!("uid {u}"),
        },
    );
    let verdict = match uid {
        Some(uid) => access.check(uid, right).map_err(|d| d.to_string()),
        None => Err("the caller's credentials are unknown".to_string()),
    };
    match verdict {
        Ok(()) => {
            record(&who, None);
            next.run(req).await
        }
        Err(why) => {
            record(&who, Some(&why));
            error(StatusCode::FORBIDDEN, format!("access denied: {why}"))
        }
    }
}

/// The bearer token of a request, if it shows one.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// `GET /v1/whoami`: the caller as the monitor sees it, and its rights
/// (the dashboard shows only the buttons they allow).
async fn whoami(
    AxState(st): AxState<ApiState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    headers: axum::http::HeaderMap,
) -> Response {
    let access = st.access.read().unwrap_or_else(|e| e.into_inner()).clone();
    let (who, rights): (String, Vec<Right>) = if caller.tcp {
        match bearer(&headers).and_then(|t| access.token(t)) {
            Some(t) => (format!("token {:?}", t.name), t.rights.clone()),
            None => return error(StatusCode::UNAUTHORIZED, "no valid token"),
        }
    } else {
        let Some(uid) = caller.uid else {
            return error(
                StatusCode::FORBIDDEN,
                "the caller's credentials are unknown",
            );
        };
        let rights = Right::ALL
            .into_iter()
            .filter(|&r| access.check(uid, r).is_ok())
            .collect();
        (format!("uid {uid}"), rights)
    };
    Json(WhoAmIReply {
        caller: who,
        rights: Right::ALL
            .into_iter()
            .filter(|r| rights.contains(r))
            .map(|r| r.as_str().to_owned())
            .collect(),
    })
    .into_response()
}

#[derive(Deserialize, Default)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

/// `POST /v1/resources/{name}/signal/{signal}`'s query.
#[derive(Deserialize, Default)]
pub struct SignalQuery {
    /// To every process of the resource, not only its main process.
    #[serde(default)]
    pub all: bool,
}

#[derive(Deserialize, Default)]
pub struct FollowQuery {
    #[serde(default)]
    pub follow: bool,
}

/// `GET /v1/events`' query.
#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Only events since then: an RFC 3339 time, or a duration ago ("1h").
    pub since: Option<String>,
    /// Only events of this resource.
    pub resource: Option<String>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/resources", get(status_all))
        .route("/v1/resources/{name}", get(status_one))
        .route("/v1/resources/{name}/online", post(online))
        .route("/v1/resources/{name}/offline", post(offline))
        .route("/v1/resources/{name}/terminate", post(terminate))
        .route("/v1/resources/{name}/restart", post(restart))
        .route("/v1/resources/{name}/maintenance", post(maintenance_one))
        .route("/v1/groups/{group}/maintenance", post(maintenance_group))
        .route("/v1/maintenance", post(maintenance_all))
        .route("/v1/nodes/{node}/maintenance", post(maintenance_node))
        .route("/v1/nodes/{node}/drain", post(drain_node))
        .route("/v1/resources/{name}/logs", get(logs))
        .route("/v1/resources/{name}/reload", post(reload_resource))
        .route("/v1/resources/{name}/signal/{signal}", post(signal))
        .route("/v1/resources/{name}/control/{code}", post(control))
        .route("/v1/types/{name}/control/{code}", post(type_control))
        .route("/v1/calls", get(calls))
        .route("/v1/whoami", get(whoami))
        .route("/v1/nodes", get(nodes))
        .route("/v1/groups/{group}/move", post(move_group))
        .route("/v1/reload", post(reload))
        .route("/v1/upgrade", post(upgrade))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            resmon_metrics::global().api_request("unmatched", 404);
            error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        // For load balancers and orchestrators: no right needed.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::dashboard::routes())
        .route_layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Counts each answered request by its route's pattern (never the path,
/// which holds names) and status.
async fn count_request(
    path: Option<axum::extract::MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = path.map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    resmon_metrics::global().api_request(&route, resp.status().as_u16());
    resp
}

/// `GET /metrics`: the event loop fills in what its state says now (the
/// resources' rows only when they changed since the cached ones), and the
/// series are encoded here, off the loop.
async fn metrics(AxState(st): AxState<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = resmon_metrics::Format::from_accept(accept);
    let (reply, answer) = oneshot::channel();
    let sent = tokio::time::Instant::now();
    let known = st.metrics.known();
    if st.tx.send(Msg::Metrics { sent, known, reply }).is_err() {
        return stopping();
    }
    let Ok(mut scrape) = answer.await else {
        return stopping();
    };
    if let Some(c) = &st.cluster {
        scrape.cluster = Some(c.metrics());
    }
    // Encoding the rows after a change is milliseconds of work for
    // thousands of resources: never on the thread of the event loop.
    let cache = st.metrics.clone();
    let encoded = crate::workers::spawn(move || cache.encode_parts(format, scrape)).await;
    match encoded {
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}"),
        ),
        Ok(Ok(parts)) => {
            let len = parts.resources.len() + parts.rest.len();
            let chunks = [
                bytes::Bytes::from_owner(Shared(parts.resources)),
                bytes::Bytes::from(parts.rest),
            ];
            let body = axum::body::Body::from_stream(futures_util::stream::iter(
                chunks.map(Ok::<_, std::convert::Infallible>),
            ));
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        format.content_type().to_owned(),
                    ),
                    (axum::http::header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}"),
        ),
    }
}

/// Cached text, sent without a copy.
struct Shared(Arc<String>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// How long `/healthz` and `/readyz` wait for the event loop's answer.
const HEALTH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What `/healthz` and `/readyz` say when the loop does not answer.
const LOOP_SILENT: &str = "the monitor's event loop did not answer within 2 s";

/// Asks the event loop how it is; `None` when it does not answer within
/// [`HEALTH_LIMIT`] (or is gone).
async fn ask_health(st: &ApiState) -> Option<crate::driver::Health> {
    let (reply, answer) = oneshot::channel();
    st.tx.send(Msg::Health { reply }).ok()?;
    tokio::time::timeout(HEALTH_LIMIT, answer).await.ok()?.ok()
}

/// `GET /healthz`: 200 while the monitor's event loop turns (also while it
/// stops), 503 when it does not answer within 2 s.
async fn healthz(AxState(st): AxState<ApiState>) -> Response {
    match ask_health(&st).await {
        Some(h) => Json(HealthReply {
            status: if h.stopping { "stopping" } else { "ok" }.into(),
        })
        .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, LOOP_SILENT),
    }
}

/// `GET /readyz`: 200 once start-up and adoption are done (and, in cluster
/// mode, the node is a member), 503 with the reason before, while stopping,
/// or when the loop does not answer.
async fn readyz(AxState(st): AxState<ApiState>) -> Response {
    let not = |why: String| error(StatusCode::SERVICE_UNAVAILABLE, why);
    let Some(h) = ask_health(&st).await else {
        return not(LOOP_SILENT.into());
    };
    if h.stopping {
        return not("the monitor is stopping".into());
    }
    if !h.ready {
        return not("the monitor is starting".into());
    }
    if let Some(c) = &st.cluster {
        let view = c.view.read().unwrap_or_else(|e| e.into_inner());
        if !view.member {
            return not(format!(
                "not a cluster member: {}",
                view.problem.as_deref().unwrap_or("not joined")
            ));
        }
    }
    Json(HealthReply {
        status: "ready".into(),
    })
    .into_response()
}

/// Every error answer is `{"error": "..."}`, also those the HTTP layer
/// makes itself (a wrong method, a body over the limit, a bad query string).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let msg = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase()
    } else {
        text
    };
    let mut out = error(status, msg);
    // Keep what the HTTP layer said beyond the body (e.g. `Allow`).
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

pub(crate) fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ErrorReply { error: msg.into() })).into_response()
}

fn stopping() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the monitor is stopping")
}

async fn ask_status(st: &ApiState, name: Option<String>) -> Response {
    let (reply, rx) = oneshot::channel();
    if st.tx.send(Msg::Status { name, reply }).is_err() {
        return stopping();
    }
    match rx.await {
        Ok(Ok(mut resources)) => {
            if let Some(c) = &st.cluster {
                let view = c.snapshot();
                for r in &mut resources {
                    r.owner = Some(
                        view.owners
                            .get(&r.group)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| "-".into()),
                    );
                }
            }
            Json(StatusReply {
                resources,
                problems: (st.problems)(),
            })
            .into_response()
        }
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Err(_) => stopping(),
    }
}

fn single_node() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this monitor runs alone: its config has no [cluster] section",
    )
}

async fn nodes(AxState(st): AxState<ApiState>) -> Response {
    match &st.cluster {
        None => single_node(),
        Some(c) => Json(c.snapshot()).into_response(),
    }
}

async fn move_group(
    AxState(st): AxState<ApiState>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(c) = &st.cluster else {
        return single_node();
    };
    if let Err(e) = crate::config::check_name(&group) {
        return error(StatusCode::BAD_REQUEST, format!("bad group name: {e}"));
    }
    let body: MoveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"node\": \"NAME\"}}: {e}"),
            )
        }
    };
    let (reply, rx) = oneshot::channel();
    let req = ClusterRequest::Move {
        group,
        node: body.node,
        reply,
    };
    if c.requests.send(req).is_err() {
        return stopping();
    }
    match rx.await {
        Ok(Ok(message)) => Json(resmon_client::wire::MoveReply { message }).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(_) => stopping(),
    }
}

async fn status_all(AxState(st): AxState<ApiState>) -> Response {
    ask_status(&st, None).await
}

async fn status_one(AxState(st): AxState<ApiState>, Path(name): Path<String>) -> Response {
    if let Err(e) = crate::config::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
    }
    ask_status(&st, Some(name)).await
}

/// `GET /v1/resources/{name}/logs` (see [`crate::logs`]).
async fn logs(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<crate::logs::LogsQuery>,
) -> Response {
    if let Err(e) = crate::config::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
    }
    match status_of(&st, &name).await {
        Ok(_) => crate::logs::answer(&st, name, q).await,
        Err(answer) => answer,
    }
}

/// One resource's status from the loop; `Err` is the answer to send
/// instead (404, or 503 while the monitor stops).
async fn status_of(st: &ApiState, name: &str) -> Result<ResourceStatus, Response> {
    let (reply, answer) = oneshot::channel();
    if st
        .tx
        .send(Msg::Status {
            name: Some(name.to_string()),
            reply,
        })
        .is_err()
    {
        return Err(stopping());
    }
    match answer.await {
        Ok(Ok(mut s)) if !s.is_empty() => Ok(s.remove(0)),
        Ok(Ok(_)) => Err(error(StatusCode::NOT_FOUND, no_such(name))),
        Ok(Err(e)) => Err(error(StatusCode::NOT_FOUND, e)),
        Err(_) => Err(stopping()),
    }
}

fn op_error(e: OpError) -> Response {
    match e {
        OpError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        OpError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        OpError::Failed(m) => error(StatusCode::CONFLICT, m),
        OpError::Stopping => stopping(),
    }
}

async fn run_control(
    st: &ApiState,
    name: String,
    code: String,
    body: axum::body::Bytes,
    for_type: bool,
) -> Response {
    let code = match resmon_contract::control::parse_code(&code, for_type) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "the control input must be JSON (e.g. {\"key\": \"value\"}) or empty",
        );
    }
    let (reply, answer) = oneshot::channel();
    let input = body.to_vec();
    let msg = if for_type {
        Msg::TypeControl {
            type_name: name,
            code,
            input,
            reply,
        }
    } else {
        Msg::Control {
            name,
            code,
            input,
            reply,
        }
    };
    if st.tx.send(msg).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(out)) => {
            let output = serde_json::from_slice(&out).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&out).into())
            });
            Json(ControlReply {
                code,
                name: resmon_contract::control::code_name(code, for_type).map(str::to_string),
                output,
            })
            .into_response()
        }
        Ok(Err(e)) => op_error(e),
        Err(_) => stopping(),
    }
}

async fn control(
    AxState(st): AxState<ApiState>,
    Path((name, code)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = crate::config::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
    }
    run_control(&st, name, code, body, false).await
}

async fn type_control(
    AxState(st): AxState<ApiState>,
    Path((name, code)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    run_control(&st, name, code, body, true).await
}

/// `POST /v1/resources/{name}/reload`.
async fn reload_resource(AxState(st): AxState<ApiState>, Path(name): Path<String>) -> Response {
    act(&st, name, |name, reply| Msg::Reload { name, reply }).await
}

/// `POST /v1/resources/{name}/signal/{signal}`: a signal that cannot be
/// read is refused here, and nothing is sent.
async fn signal(
    AxState(st): AxState<ApiState>,
    Path((name, signal)): Path<(String, String)>,
    Query(q): Query<SignalQuery>,
) -> Response {
    let signal = match resmon_task::parse_signal(&signal) {
        Ok(s) => s.as_raw(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad signal: {e}")),
    };
    act(&st, name, |name, reply| Msg::Signal {
        name,
        signal,
        all: q.all,
        reply,
    })
    .await
}

/// Asks the driver to act on resource `name` at once (`msg` makes the
/// request); the answer says what was done.
async fn act(
    st: &ApiState,
    name: String,
    msg: impl FnOnce(String, oneshot::Sender<Result<String, OpError>>) -> Msg,
) -> Response {
    if let Err(e) = crate::config::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
    }
    let (reply, answer) = oneshot::channel();
    if st.tx.send(msg(name.clone(), reply)).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(message)) => Json(ActedReply {
            resource: name,
            message,
        })
        .into_response(),
        Ok(Err(e)) => op_error(e),
        Err(_) => stopping(),
    }
}

async fn reload(AxState(st): AxState<ApiState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if st.reload.send(reply).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(ReloadRefused::Invalid(problems))) => error(StatusCode::BAD_REQUEST, problems),
        Ok(Err(ReloadRefused::Stopping)) | Err(_) => stopping(),
    }
}

async fn calls(AxState(st): AxState<ApiState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if st.tx.send(Msg::Calls { reply }).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(calls) => Json(CallsReply { calls }).into_response(),
        Err(_) => stopping(),
    }
}

async fn online(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    operate(&st, name, Command::Online, q.wait).await
}

async fn offline(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    operate(&st, name, Command::Offline, q.wait).await
}

async fn restart(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    operate(&st, name, Command::Restart, q.wait).await
}

/// A maintenance request's body: `{"on": true}` or `{"on": false}`; the
/// 400 answer otherwise.
fn maintenance_body(body: &[u8]) -> Result<bool, Box<Response>> {
    serde_json::from_slice::<MaintenanceBody>(body)
        .map(|b| b.on)
        .map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("maintenance body: {e}; expected {{\"on\": true}} or {{\"on\": false}}"),
            ))
        })
}

async fn maintenance_one(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match maintenance_body(&body) {
        Ok(on) => operate(&st, name, Command::Maintenance(on), false).await,
        Err(answer) => *answer,
    }
}

async fn maintenance_group(
    AxState(st): AxState<ApiState>,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = crate::config::check_name(&group) {
        return error(StatusCode::BAD_REQUEST, format!("bad group name: {e}"));
    }
    maintenance_many(&st, Some(group), &body).await
}

/// Cluster mode: marks a node (any, from any node) in etcd; its monitor
/// puts every resource it has in maintenance, and takes them out when the
/// mark is cleared.
async fn maintenance_node(
    AxState(st): AxState<ApiState>,
    Path(node): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    node_mark(&st, node, &body, |node, on, reply| {
        ClusterRequest::NodeMaintenance { node, on, reply }
    })
    .await
}

/// Cluster mode: drains a node (from any node): its groups move to other
/// nodes and none comes to it, until it is resumed (`{"on": false}`).
async fn drain_node(
    AxState(st): AxState<ApiState>,
    Path(node): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    node_mark(&st, node, &body, |node, on, reply| {
        ClusterRequest::NodeDrain { node, on, reply }
    })
    .await
}

/// A node's mark in etcd, written by the controller.
async fn node_mark(
    st: &ApiState,
    node: String,
    body: &[u8],
    request: impl FnOnce(String, bool, oneshot::Sender<Result<String, String>>) -> ClusterRequest,
) -> Response {
    let Some(c) = &st.cluster else {
        return single_node();
    };
    if let Err(e) = crate::config::check_name(&node) {
        return error(StatusCode::BAD_REQUEST, format!("bad node name: {e}"));
    }
    let on = match maintenance_body(body) {
        Ok(on) => on,
        Err(answer) => return *answer,
    };
    let (reply, rx) = oneshot::channel();
    if c.requests.send(request(node, on, reply)).is_err() {
        return stopping();
    }
    match rx.await {
        Ok(Ok(message)) => Json(resmon_client::wire::MoveReply { message }).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(_) => stopping(),
    }
}

/// `POST /v1/upgrade`: the binary on disk is tried, then the loop saves
/// everything and runs it in place (see [`crate::upgrade`]). 202 once it
/// is under way: the connection ends with the old process.
async fn upgrade(AxState(st): AxState<ApiState>) -> Response {
    let version = match crate::upgrade::try_new_binary().await {
        Ok(v) => v,
        Err(e) => return error(StatusCode::CONFLICT, format!("not upgrading: {e}")),
    };
    let (reply, answer) = oneshot::channel();
    if st.upgrade.send(UpgradeRequest { version, reply }).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(message)) => (
            StatusCode::ACCEPTED,
            Json(resmon_client::wire::MoveReply { message }),
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(_) => stopping(),
    }
}

async fn maintenance_all(AxState(st): AxState<ApiState>, body: axum::body::Bytes) -> Response {
    maintenance_many(&st, None, &body).await
}

async fn maintenance_many(st: &ApiState, group: Option<String>, body: &[u8]) -> Response {
    let on = match maintenance_body(body) {
        Ok(on) => on,
        Err(answer) => return *answer,
    };
    let (reply, answer) = oneshot::channel();
    if st.tx.send(Msg::Maintenance { group, on, reply }).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(resources)) => Json(StatusReply {
            resources,
            problems: (st.problems)(),
        })
        .into_response(),
        Ok(Err(e)) => op_error(e),
        Err(_) => stopping(),
    }
}

async fn terminate(
    AxState(st): AxState<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    body: axum::body::Bytes,
) -> Response {
    let body: TerminateBody = if body.iter().all(u8::is_ascii_whitespace) {
        TerminateBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("terminate body: {e}; expected {{\"exit_code\": N}}"),
                )
            }
        }
    };
    // What a process can report as its exit status: 0 to 255.
    if !(0..=255).contains(&body.exit_code) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "terminate body: exit_code {} is out of range: an exit code is 0 to 255",
                body.exit_code
            ),
        );
    }
    operate(
        &st,
        name,
        Command::Terminate {
            exit_code: body.exit_code,
        },
        q.wait,
    )
    .await
}

/// Whether `s` is where `command` ends (the core's rule), and whether that
/// is a success.
fn settled(command: Command, s: &ResourceStatus) -> Option<Result<(), String>> {
    let busy = s.call.is_some() || s.terminating || s.restarting;
    Some(match command.settled(s.state, busy, s.wanted_online)? {
        Settled::Done => Ok(()),
        Settled::Failed => Err(format!("{} failed: {}", s.name, s.reason)),
        Settled::Abandoned => Err(format!("{} did not come online: {}", s.name, s.reason)),
    })
}

async fn operate(st: &ApiState, name: String, command: Command, wait: bool) -> Response {
    if let Err(e) = crate::config::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
    }
    // Subscribe first so no state change between the command and the wait is missed.
    let (_, mut rx) = st.bus.subscribe();
    let (reply, answer) = oneshot::channel();
    if st
        .tx
        .send(Msg::Command {
            name: name.clone(),
            command,
            reply,
        })
        .is_err()
    {
        return stopping();
    }
    let mut status = match answer.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return op_error(e),
        Err(_) => return stopping(),
    };
    if !wait {
        return Json(OpReply {
            resource: status,
            warnings: (st.problems)(),
        })
        .into_response();
    }
    loop {
        if let Some(done) = settled(command, &status) {
            return match done {
                Ok(()) => Json(OpReply {
                    resource: status,
                    warnings: (st.problems)(),
                })
                .into_response(),
                Err(e) => error(StatusCode::CONFLICT, e),
            };
        }
        // Wait for the next event of this resource, then look again.
        loop {
            match rx.recv().await {
                Ok(ev) if ev.resource.as_deref() == Some(name.as_str()) => break,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return stopping(),
            }
        }
        status = match status_of(st, &name).await {
            Ok(s) => s,
            Err(answer) => return answer,
        };
    }
}

/// When `since` (an RFC 3339 time, or a duration ago such as `1h`) is.
pub(crate) fn since_time(since: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(since) {
        return Ok(t);
    }
    let ago = resmon_contract::parse_duration(since).map_err(|_| {
        format!("since={since:?}: give a time such as \"2026-12-07T10:00:00Z\" or a duration ago such as \"1h\" or \"30m\"")
    })?;
    Ok(SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

async fn events(AxState(st): AxState<ApiState>, Query(q): Query<EventsQuery>) -> Response {
    let since = match q.since.as_deref().map(since_time).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(r) = &q.resource {
        if let Err(e) = crate::config::check_name(r) {
            return error(StatusCode::BAD_REQUEST, format!("bad resource name: {e}"));
        }
    }
    let filter = crate::journal::Filter {
        since,
        resource: q.resource.clone(),
        // With a time, all of it since; without, the last events as before.
        limit: if since.is_some() {
            EVENTS_SINCE_LIMIT
        } else {
            crate::events::HISTORY
        },
    };
    let (memory, rx) = st.bus.subscribe();
    let ended = st
        .bus
        .last()
        .is_some_and(|l| memory.last().is_some_and(|e| e.seq == l));
    // Earlier runs' events come from the journal, read off the loop.
    let history = match st.journal.clone() {
        Some(reader) => {
            let f = filter.clone();
            let read = crate::workers::spawn(move || reader.read(&f)).await;
            let (journal, damaged) = read.unwrap_or_default();
            if damaged > 0 {
                tracing::warn!(
                    "the event journal has {damaged} damaged record(s); they were skipped"
                );
            }
            crate::journal::join(journal, memory, &filter)
        }
        None => crate::journal::join(Vec::new(), memory, &filter),
    };
    let resource = q.resource.clone();
    let line = |e: &EventRecord| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        axum::body::Bytes::from(s)
    };
    let past: Vec<Result<axum::body::Bytes, std::convert::Infallible>> =
        history.iter().map(|e| Ok(line(e))).collect();
    let past = futures_util::stream::iter(past);
    // Once the monitor stopped, the history ends with its last event.
    if !q.follow || ended {
        return axum::body::Body::from_stream(past).into_response();
    }
    // Live events up to and including the monitor's last one: then the
    // stream ends, and a follower knows the monitor stopped cleanly.
    let bus = st.bus.clone();
    let live = futures_util::stream::unfold((rx, false), move |(mut rx, done)| {
        let bus = bus.clone();
        let resource = resource.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let last = bus.last() == Some(e.seq);
                        // The monitor's last event ends every stream.
                        if !last
                            && resource
                                .as_deref()
                                .is_some_and(|r| e.resource.as_deref() != Some(r))
                        {
                            continue;
                        }
                        return Some((Ok(line(&e)), (rx, last)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    use futures_util::StreamExt;
    let body = axum::body::Body::from_stream(past.chain(live));
    ([("content-type", "application/x-ndjson")], body).into_response()
}
