//! Health probes: `exec`, `tcp` and `http`, each bounded by its own timeout.
//!
//! Probes run on the worker thread of the entry point that asked for them
//! (`is_alive`, or `online` waiting for readiness), never on the monitor's
//! event loop. An `exec` probe runs as the resource's user and in the
//! resource's scope (its cgroup, its marker): it has no more rights than the
//! service it checks, and a stop or terminate of the resource kills it with
//! the rest. It is killed when its timeout passes.
//!
//! A health check that the monitor stops waiting for (an offline, terminate
//! or shutdown came) is cut short through the resource's [`CheckAbort`]: an
//! `exec` probe is killed with its process group, and a `tcp` or `http`
//! probe is left to its own timeout on a thread of its own while the check
//! returns at once.

use crate::params::{Probe, ProbeKind, Tls};
use resmon_contract::Scope;
use resmon_task::lock;
use resmon_task::{CheckAbort, Output, Reaper, SpawnSpec};
use std::time::Duration;

/// Where an `exec` probe runs: as whom, and in which resource's scope.
pub struct ProbeEnv<'a> {
    pub user: Option<(u32, u32)>,
    pub scope: &'a Scope,
    pub reaper: &'a Reaper,
    pub rt: &'a tokio::runtime::Handle,
    /// Cuts a health check short; `None` for readiness probes, which
    /// `terminate` ends with the rest of the resource.
    pub abort: Option<&'a CheckAbort>,
}

/// What a probe found wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("health check cancelled: the resource is being stopped")]
    Cancelled,
    #[error("probe: {0}")]
    Lost(&'static str),
    #[error("tcp probe: resolving {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("tcp probe: {0} resolved to nothing")]
    Unresolved(String),
    #[error("tcp probe: connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http probe: GET {url}: {source}")]
    Http { url: String, source: ureq::Error },
    #[error("http probe: GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("exec probe: {0}")]
    Spawn(std::io::Error),
    #[error("exec probe: {0}")]
    Wait(resmon_task::TaskError),
    #[error("exec probe {program:?} exited with {code}")]
    Exited { program: String, code: i32 },
    #[error("exec probe {program:?} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
}

/// Runs a probe once. `Ok(())` is healthy; `Err` says what was wrong.
pub fn run(probe: &Probe, env: &ProbeEnv<'_>) -> Result<(), ProbeError> {
    if env.abort.is_some_and(CheckAbort::is_cancelled) {
        return Err(ProbeError::Cancelled);
    }
    let started = std::time::Instant::now();
    let out = run_once(probe, env);
    let kind = match probe.kind {
        ProbeKind::Tcp(_) => "tcp",
        ProbeKind::Http { .. } => "http",
        ProbeKind::Exec(_) => "exec",
    };
    counted(kind, started, out)
}

/// A probe's answer, timed in the metrics; a cancelled probe said nothing
/// of the service and is not counted.
fn counted(
    kind: &str,
    started: std::time::Instant,
    out: Result<(), ProbeError>,
) -> Result<(), ProbeError> {
    if !matches!(out, Err(ProbeError::Cancelled)) {
        resmon_metrics::global().probe(kind, started.elapsed(), out.is_ok());
    }
    out
}

/// A `tcp` probe on the runtime itself, without a thread: what a readiness
/// probe checked every few seconds of many resources costs least as.
pub async fn tcp_async(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    let started = std::time::Instant::now();
    counted("tcp", started, tcp(addr, timeout).await)
}

fn run_once(probe: &Probe, env: &ProbeEnv<'_>) -> Result<(), ProbeError> {
    match &probe.kind {
        ProbeKind::Tcp(addr) => {
            let (addr, timeout, rt) = (addr.clone(), probe.timeout, env.rt.clone());
            aside(env, move || rt.block_on(tcp(&addr, timeout)))
        }
        ProbeKind::Http { url, expect, tls } => {
            let (url, expect, tls, timeout) = (url.clone(), *expect, tls.clone(), probe.timeout);
            aside(env, move || http(&url, expect, &tls, timeout))
        }
        ProbeKind::Exec(argv) => exec(argv, probe.timeout, env),
    }
}

/// Runs a blocking probe on a thread of its own when it can be cut short,
/// and waits for its answer or the cancel, whichever comes first. When no
/// thread can be made now, it runs here, bounded by its own timeout.
fn aside(
    env: &ProbeEnv<'_>,
    probe: impl FnOnce() -> Result<(), ProbeError> + Send + 'static,
) -> Result<(), ProbeError> {
    let Some(abort) = env.abort else {
        return probe();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Kept here until the thread takes it, so that it can still run here.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(probe)));
    let take = {
        let slot = slot.clone();
        move || lock(&slot).take()
    };
    let spawned = std::thread::Builder::new()
        .name("resmon-probe".into())
        .spawn(move || {
            if let Some(probe) = take() {
                let _ = tx.send(probe());
            }
        });
    let probe = match spawned {
        Ok(_) => rx,
        Err(e) => {
            tracing::warn!("no thread for a probe ({e}): it runs on the check's thread");
            let probe = lock(&slot).take();
            return probe.map_or(Err(ProbeError::Lost("lost")), |p| p());
        }
    };
    env.rt.block_on(async {
        tokio::select! {
            answer = probe => answer.unwrap_or(Err(ProbeError::Lost("its thread ended without an answer"))),
            () = abort.cancelled() => Err(ProbeError::Cancelled),
        }
    })
}

/// Connects to `addr` (`HOST:PORT`), each address it resolves to in turn,
/// each within `timeout`.
async fn tcp(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    let addrs: Vec<std::net::SocketAddr> = match addr.parse() {
        Ok(a) => vec![a],
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|source| ProbeError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .collect(),
    };
    let mut last = ProbeError::Unresolved(addr.to_owned());
    for a in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(source)) => last = ProbeError::Connect { addr: a, source },
            Err(_) => {
                last = ProbeError::Connect {
                    addr: a,
                    source: std::io::ErrorKind::TimedOut.into(),
                }
            }
        }
    }
    Err(last)
}

fn http(url: &str, expect: Option<u16>, tls: &Tls, timeout: Duration) -> Result<(), ProbeError> {
    let mut config = ureq::tls::TlsConfig::builder().disable_verification(!tls.verify);
    if let Some(pem) = &tls.roots {
        let roots: Vec<_> = ureq::tls::parse_pem(pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        config = config.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(config.build())
        .build()
        .into();
    let resp = agent.get(url).call().map_err(|source| ProbeError::Http {
        url: url.to_owned(),
        source,
    })?;
    let status = resp.status().as_u16();
    let ok = match expect {
        Some(want) => status == want,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

fn exec(argv: &[String], timeout: Duration, env: &ProbeEnv<'_>) -> Result<(), ProbeError> {
    let mut spec = SpawnSpec {
        program: argv[0].clone(),
        args: argv[1..].to_vec(),
        user: env.user,
        stdout: Output::Null,
        stderr: Output::Null,
        ..Default::default()
    };
    spec.set_scope(env.scope);
    spec.new_session = true;
    let task = env.reaper.spawn(&spec).map_err(ProbeError::Spawn)?;
    // A cancel kills it (with its process group), which ends the wait.
    let _watched = match env.abort.map(|a| a.watch(&task)) {
        Some(Err(_)) => return Err(ProbeError::Cancelled),
        Some(Ok(w)) => Some(w),
        None => None,
    };
    let waited = env
        .rt
        .block_on(async { tokio::time::timeout(timeout, task.wait()).await });
    match waited {
        _ if env.abort.is_some_and(CheckAbort::is_cancelled) => Err(ProbeError::Cancelled),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => Err(ProbeError::Exited {
            program: argv[0].clone(),
            code,
        }),
        Ok(Err(e)) => Err(ProbeError::Wait(e)),
        Err(_) => {
            let _ = task.terminate(1);
            Err(ProbeError::Timeout {
                program: argv[0].clone(),
                timeout,
            })
        }
    }
}
