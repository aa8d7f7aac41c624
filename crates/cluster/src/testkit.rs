//! Real etcd clusters for tests: 1 or 3 members of the `etcd` binary
//! (Debian `etcd-server`) on loopback, with free ports, a temporary data
//! directory, `--pre-vote`, and fast heartbeat and election settings.
//!
//! [`EtcdCluster::start`] returns once the cluster answers `/health`;
//! members can be stopped, killed, frozen (SIGSTOP) and restarted; every
//! member is killed and its data removed on drop.
//!
//! [`EtcdCluster::start_tls`] serves clients over https only, with client
//! certificates required (`--client-cert-auth`), on certificates that
//! [`TlsFiles::generate`] makes; members still talk to each other over
//! plain http, and `/health` is read on a plain metrics port.
//!
//! The processes are spawned with `std::process::Command` and waited for
//! here: do not use this in a process whose [`resmon_task::Reaper`] reaps
//! every child (the reaper would take their exit statuses).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The `etcd` binary: `$RESMON_ETCD` or `etcd` from `PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("RESMON_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Whether the `etcd` binary can be run here.
pub fn etcd_available() -> bool {
    Command::new(etcd_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart`] wait for
/// health.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Certificates and keys (PEM files) for an etcd with TLS, made on the
/// spot: a CA, a server certificate for `127.0.0.1` and `localhost`
/// signed by it, a client certificate signed by it, and a second,
/// unrelated CA (to trust the wrong one).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

impl TlsFiles {
    /// Writes the files into `dir` (keys readable by their owner only).
    pub fn generate(dir: &Path) -> io::Result<TlsFiles> {
        let err = |e: rcgen::Error| io::Error::other(format!("making certificates: {e}"));
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let params = ca_params("resmon test CA").map_err(err)?;
        let ca = params.self_signed(&ca_key).map_err(err)?;
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf = |name: &str, sans: Vec<String>, usage| {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(sans)?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "etcd",
            vec!["127.0.0.1".into(), "localhost".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
        .map_err(err)?;
        let (client_cert, client_key) =
            leaf("resmon", vec![], rcgen::ExtendedKeyUsagePurpose::ClientAuth).map_err(err)?;
        let other_key = rcgen::KeyPair::generate().map_err(err)?;
        let other_ca = ca_params("another CA")
            .and_then(|p| p.self_signed(&other_key))
            .map_err(err)?;
        let write = |name: &str, text: &str, mode: u32| -> io::Result<PathBuf> {
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)?
                .write_all(text.as_bytes())?;
            Ok(path)
        };
        Ok(TlsFiles {
            ca: write("ca.pem", &ca.pem(), 0o644)?,
            server_cert: write("server.pem", &server_cert, 0o644)?,
            server_key: write("server-key.pem", &server_key, 0o600)?,
            client_cert: write("client.pem", &client_cert, 0o644)?,
            client_key: write("client-key.pem", &client_key, 0o600)?,
            other_ca: write("other-ca.pem", &other_ca.pem(), 0o644)?,
        })
    }
}

/// The parameters of a CA certificate named `name`.
fn ca_params(name: &str) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Where `/health` is served over plain http when clients need TLS.
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    tls: Option<TlsFiles>,
}

impl Node {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The port that answers `/health` over plain http.
    fn health_port(&self) -> u16 {
        if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3, usually) and waits until the
    /// cluster is healthy.
    pub fn start(members: usize) -> io::Result<EtcdCluster> {
        Self::start_with(members, None)
    }

    /// Like [`start`](Self::start), with clients served over https only, on
    /// `tls`'s server certificate, and only clients with a certificate
    /// `tls.ca` signed let in. [`leader`](Self::leader) does not work here.
    pub fn start_tls(members: usize, tls: &TlsFiles) -> io::Result<EtcdCluster> {
        Self::start_with(members, Some(tls))
    }

    fn start_with(members: usize, tls: Option<&TlsFiles>) -> io::Result<EtcdCluster> {
        assert!(members > 0, "a cluster needs a member");
        // Data under /dev/shm when there is one: etcd fsyncs every write.
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::Builder::new()
                .prefix("resmon-etcd-")
                .tempdir_in(base)?
        } else {
            tempfile::Builder::new().prefix("resmon-etcd-").tempdir()?
        };
        let ports = free_ports(3 * members)?;
        let nodes: Vec<Node> = (0..members)
            .map(|i| Node {
                name: format!("etcd{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("etcd{i}.data")),
                log: dir.path().join(format!("etcd{i}.log")),
                child: None,
                tls: tls.cloned(),
            })
            .collect();
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            nodes,
            initial_cluster,
        };
        for i in 0..members {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::client_url).collect()
    }

    /// The client URL of member `i`.
    /// The value of the unlabelled metric `name` (a counter or gauge, e.g.
    /// `etcd_debugging_mvcc_watcher_total`) in member `i`'s `/metrics`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        metric(self.nodes[i].health_port(), name)
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].client_url()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let initial_cluster = self.initial_cluster.clone();
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let state = if n.data_dir.exists() {
            "existing"
        } else {
            "new"
        };
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &n.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", n.metrics_port));
        }
        let child = command
            .args(["--name", &n.name])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--listen-client-urls", &n.client_url()])
            .args(["--advertise-client-urls", &n.client_url()])
            .args(["--listen-peer-urls", &n.peer_url()])
            .args(["--initial-advertise-peer-urls", &n.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "resmon-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .arg("--pre-vote")
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting {}: {e}", etcd_binary().display()),
                )
            })?;
        n.child = Some(child);
        Ok(())
    }

    /// Whether member `i` answers `/health` with `true` (it has a leader
    /// and can serve).
    pub fn is_healthy(&self, i: usize) -> bool {
        health(self.nodes[i].health_port()).unwrap_or(false)
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let sick: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some() && !self.is_healthy(i))
                .collect();
            if sick.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> = sick.iter().map(|&i| self.log_tail(i)).collect();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd members {sick:?} not healthy after {timeout:?}; last log lines:\n{}",
                        logs.join("\n")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        format!("{}:\n{}", self.nodes[i].name, lines[from..].join("\n"))
    }

    /// The index of the member that leads, as the members say: `None`
    /// while they do not agree on a running member.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for n in &self.nodes {
            let status = n.child.as_ref().and_then(|_| status(n.client_port));
            ids.push(status.as_ref().map(|s| s.0.clone()));
            if let Some((_, leader)) = status {
                leaders.push(leader);
            }
        }
        let leader = leaders.first()?;
        if leaders.iter().any(|l| l != leader) {
            return None;
        }
        ids.iter().position(|id| id.as_ref() == Some(leader))
    }

    /// Waits until the members agree on a leader, and returns it.
    pub fn wait_leader(&self, timeout: Duration) -> io::Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader() {
                return Ok(i);
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the etcd members agree on no leader after {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` with SIGKILL and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` with SIGTERM and waits for it.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(&child, Signal::TERM);
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < START_TIMEOUT {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes member `i` (SIGSTOP): it holds its connections but answers
    /// nothing, like a member cut off by a partition.
    pub fn freeze(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, Signal::STOP);
        }
    }

    /// Lets a frozen member go on (SIGCONT).
    pub fn thaw(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            signal(child, Signal::CONT);
        }
    }

    /// Starts member `i` again on its data and waits until the cluster is
    /// healthy.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(START_TIMEOUT)
    }

    /// Turns authentication on, through etcd's API as a client with
    /// `files`' client certificate: adds the user `root` with `password`
    /// and the root role. Clients need a user from then on.
    #[cfg(feature = "etcd")]
    pub async fn enable_auth(
        &self,
        files: &TlsFiles,
        password: &str,
    ) -> Result<(), etcd_client::Error> {
        use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
        let read = |p: &Path| std::fs::read(p).map_err(etcd_client::Error::IoError);
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&files.ca)?))
            .identity(Identity::from_pem(
                read(&files.client_cert)?,
                read(&files.client_key)?,
            ));
        let options = ConnectOptions::new().with_tls(tls);
        let mut c = Client::connect(self.endpoints(), Some(options)).await?;
        c.user_add("root", password, None).await?;
        c.user_grant_role("root", "root").await?;
        c.auth_enable().await?;
        Ok(())
    }

    /// Whether member `i` runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(child) = &self.nodes[i].child {
                // A frozen member cannot die until it runs again.
                signal(child, Signal::CONT);
            }
            self.kill(i);
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
        return;
    };
    // The child is ours and not reaped yet (we hold its `Child`), so the
    // pid is still its own.
    let _ = rustix::process::kill_process(pid, sig);
}

/// `count` distinct ports that were free a moment ago.
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// `(member id, leader id)` from a member's `/v3/maintenance/status`.
fn status(port: u16) -> Option<(String, String)> {
    let body = http(
        port,
        "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )?;
    let json = body.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Some((text(&v["header"]["member_id"])?, text(&v["leader"])?))
}

/// Sends one HTTP/1.0 request to a member and returns the whole answer.
fn http(port: u16, request: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The value of the unlabelled metric `name` in a member's `/metrics`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http(port, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    body.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// `GET /health` on a member: `Some(true)` when it says `"health":"true"`.
fn health(port: u16) -> Option<bool> {
    let body = http(port, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    Some(body.contains("\"health\":\"true\""))
}
