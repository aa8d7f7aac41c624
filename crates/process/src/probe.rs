//! Health probes: `exec`, `tcp` and `http`, each bounded by its own timeout.
//!
//! Probes run on the worker thread of the entry point that asked for them
//! (`is_alive`, or `online` waiting for readiness), never on the monitor's
//! event loop. An `exec` probe runs as the resource's user and in the
//! resource's scope (its cgroup, its marker): it has no more rights than the
//! service it checks, and a stop or terminate of the resource kills it with
//! the rest. It is killed when its timeout passes.

use crate::params::{Probe, ProbeKind};
use resmon_contract::Scope;
use resmon_task::{Output, Reaper, SpawnSpec};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where an `exec` probe runs: as whom, and in which resource's scope.
pub struct ProbeEnv<'a> {
    pub user: Option<(u32, u32)>,
    pub scope: &'a Scope,
    pub reaper: &'a Reaper,
    pub rt: &'a tokio::runtime::Handle,
}

/// Runs a probe once. `Ok(())` is healthy; `Err` says what was wrong.
pub fn run(probe: &Probe, env: &ProbeEnv<'_>) -> Result<(), String> {
    match &probe.kind {
        ProbeKind::Tcp(addr) => tcp(addr, probe.timeout),
        ProbeKind::Http { url, expect } => http(url, *expect, probe.timeout),
        ProbeKind::Exec(argv) => exec(argv, probe.timeout, env),
    }
}

fn tcp(addr: &str, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("tcp probe: resolving {addr}: {e}"))?
        .collect();
    let mut last = format!("tcp probe: {addr} resolved to nothing");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("tcp probe: connecting to {a}: {e}"),
        }
    }
    Err(last)
}

fn http(url: &str, expect: Option<u16>, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("http probe: GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let ok = match expect {
        Some(want) => status == want,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("http probe: GET {url} answered {status}"))
    }
}

fn exec(argv: &[String], timeout: Duration, env: &ProbeEnv<'_>) -> Result<(), String> {
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
    let task = env
        .reaper
        .spawn(&spec)
        .map_err(|e| format!("exec probe: {e}"))?;
    let waited = env
        .rt
        .block_on(async { tokio::time::timeout(timeout, task.wait()).await });
    match waited {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => Err(format!("exec probe {:?} exited with {code}", argv[0])),
        Ok(Err(e)) => Err(format!("exec probe: {e}")),
        Err(_) => {
            let _ = task.terminate(1);
            Err(format!(
                "exec probe {:?} did not finish within {timeout:?}",
                argv[0]
            ))
        }
    }
}
