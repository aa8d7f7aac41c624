//! The `[cluster]` settings as plain values, and their validation.
//!
//! The daemon parses its config file into a [`Settings`] and calls
//! [`Settings::validate`] before it touches etcd or a resource, so every
//! problem is reported at once, each naming the key it is about.
//!
//! The TLS and password files are named here by path and read by
//! [`Settings::credentials`], which every connection to etcd goes through
//! (validation reads them too, so `resmon check` reports a file that
//! cannot be used). Reading them at each connection picks up a renewed
//! certificate when the node joins again.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keys::{check_name, Keys};

/// How one node takes part in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name, unique in the cluster: `[A-Za-z0-9._-]`, 1 to 64
    /// characters, not starting with `.` or `-`.
    pub node: String,
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`, or all `https://`
    /// with [`tls`](Self::tls).
    pub endpoints: Vec<String>,
    /// The TTL of the node's lease: a whole number of seconds, at least 2
    /// (etcd's smallest lease).
    pub lease_ttl: Duration,
    /// Every key lives under this prefix (starts with `/`).
    pub key_prefix: String,
    /// How long before the lease could expire in etcd the node must have
    /// its groups' resources down: covers the terminate time and the drift
    /// between this machine's clock and etcd's. Less than half the TTL.
    pub margin: Duration,
    /// `tls`: the files for `https://` endpoints (required with them,
    /// refused without them).
    pub tls: Option<Tls>,
    /// `user`: the etcd user this node authenticates as, with the password
    /// in [`password_file`](Self::password_file).
    pub user: Option<String>,
    /// `password_file`: holds `user`'s password on its first line; must be
    /// the monitor's user's own and not readable by others.
    pub password_file: Option<PathBuf>,
}

/// `[cluster] tls = { ca = PATH, cert = PATH, key = PATH }`: PEM files,
/// absolute paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// `tls.ca`: the CA certificate(s) that signed etcd's server
    /// certificates; etcd's certificate is checked against these only.
    pub ca: Option<PathBuf>,
    /// `tls.cert`: this node's client certificate, for an etcd that runs
    /// with `--client-cert-auth`. Goes with `key`.
    pub cert: Option<PathBuf>,
    /// `tls.key`: the client certificate's private key.
    pub key: Option<PathBuf>,
}

/// What the TLS and password files of [`Settings`] hold, as
/// [`Settings::credentials`] read them. Its `Debug` leaves out the secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `tls.ca`'s PEM.
    pub ca: Option<Vec<u8>>,
    /// `tls.cert`'s and `tls.key`'s PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// `user` and the first line of `password_file`.
    pub user: Option<(String, String)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "(certificate and key)"),
            )
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Settings {
    /// The default lease TTL.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
    /// The smallest lease etcd grants.
    pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "/resmon";

    /// Settings with the default TTL, prefix and margin.
    pub fn new(node: impl Into<String>, endpoints: Vec<String>) -> Settings {
        Settings {
            node: node.into(),
            endpoints,
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            margin: Self::default_margin(Self::DEFAULT_LEASE_TTL),
            tls: None,
            user: None,
            password_file: None,
        }
    }

    /// Sets the TLS files (for `https://` endpoints).
    pub fn with_tls(mut self, tls: Tls) -> Settings {
        self.tls = Some(tls);
        self
    }

    /// Authenticates as etcd user `user`, whose password is the first line
    /// of `password_file`.
    pub fn with_user(
        mut self,
        user: impl Into<String>,
        password_file: impl Into<PathBuf>,
    ) -> Settings {
        self.user = Some(user.into());
        self.password_file = Some(password_file.into());
        self
    }

    /// Sets the lease TTL and the margin that goes with it
    /// ([`default_margin`](Self::default_margin)).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Settings {
        self.lease_ttl = ttl;
        self.margin = Self::default_margin(ttl);
        self
    }

    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Settings {
        self.key_prefix = prefix.into();
        self
    }

    pub fn with_margin(mut self, margin: Duration) -> Settings {
        self.margin = margin;
        self
    }

    /// A quarter of the TTL: 750 ms for the default 3 s, room for the
    /// default 300 ms `terminate_timeout`, a forced kill and clock drift.
    pub fn default_margin(lease_ttl: Duration) -> Duration {
        lease_ttl / 4
    }

    /// How often the lease is renewed: a third of the time a renewal
    /// keeps the node running (`TTL - margin`), so two renewals in a row
    /// can be lost before the deadline passes (docs/design.md §7).
    pub fn renew_interval(&self) -> Duration {
        self.lease_ttl.saturating_sub(self.margin) / 3
    }

    /// The lease TTL in etcd's unit, whole seconds.
    pub fn lease_ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// The key layout under [`key_prefix`](Self::key_prefix).
    pub fn keys(&self) -> Keys {
        Keys::new(&self.key_prefix)
    }

    /// Checks every field; the error lists each problem with the key it
    /// is about.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        if let Err(e) = check_name(&self.node) {
            problems.push(format!("node: {e}"));
        }
        if self.endpoints.is_empty() {
            problems
                .push("etcd: give at least one endpoint, e.g. \"http://127.0.0.1:2379\"".into());
        }
        for e in &self.endpoints {
            if let Err(why) = check_endpoint(e) {
                problems.push(format!("etcd: endpoint {e:?}: {why}"));
            }
        }
        if self.lease_ttl < Self::MIN_LEASE_TTL {
            problems.push(format!(
                "lease_ttl: {:?} is shorter than etcd's smallest lease, 2s",
                self.lease_ttl
            ));
        } else if self.lease_ttl.subsec_nanos() != 0 {
            problems.push(format!(
                "lease_ttl: {:?} is not a whole number of seconds (etcd counts leases in seconds)",
                self.lease_ttl
            ));
        }
        if self.margin.is_zero() || self.margin >= self.lease_ttl / 2 {
            problems.push(format!(
                "fence_margin: {:?} must be more than 0 and less than half of lease_ttl ({:?})",
                self.margin, self.lease_ttl
            ));
        }
        if let Err(e) = check_prefix(&self.key_prefix) {
            problems.push(format!("key_prefix {:?}: {e}", self.key_prefix));
        }
        problems.extend(self.security_problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError { problems })
        }
    }
}

impl Settings {
    /// `tls`, `user` and `password_file` against the endpoints' scheme and
    /// each other, and the files they name.
    fn security_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let http = self.endpoints.iter().any(|e| e.starts_with("http://"));
        if https && http {
            problems.push(
                "etcd: mixes http:// and https:// endpoints: reach every member the same way"
                    .into(),
            );
        }
        let missing_ca = "tls.ca is missing: https:// endpoints need the CA certificate that \
                          signed etcd's, e.g. tls = { ca = \"/etc/resmon/etcd-ca.pem\" }";
        match &self.tls {
            None if https => problems.push(missing_ca.into()),
            Some(t) if https && t.ca.is_none() => problems.push(missing_ca.into()),
            Some(_) if http && !https => problems.push(
                "tls: set, but the etcd endpoints are http://: use https:// endpoints, or drop tls"
                    .into(),
            ),
            _ => {}
        }
        if let Some(t) = &self.tls {
            match (&t.cert, &t.key) {
                (Some(_), None) => problems.push(
                    "tls.key is missing: tls.cert and tls.key go together (the client \
                     certificate and its private key)"
                        .into(),
                ),
                (None, Some(_)) => problems.push(
                    "tls.cert is missing: tls.cert and tls.key go together (the client \
                     certificate and its private key)"
                        .into(),
                ),
                _ => {}
            }
        }
        match (&self.user, &self.password_file) {
            (Some(u), _) if u.is_empty() || u.chars().any(char::is_control) => {
                problems.push(format!("user {u:?}: must be an etcd user name"))
            }
            (Some(u), None) => problems.push(format!(
                "password_file is missing: user {u:?} needs the file that holds its password"
            )),
            (None, Some(_)) => problems.push(
                "user is missing: password_file is set, but not the etcd user it is for".into(),
            ),
            _ => {}
        }
        if let Err(e) = self.credentials() {
            problems.extend(e.problems);
        }
        problems
    }

    /// Reads the TLS files and the password. The error names each file
    /// that cannot be used, with its key and why: missing or unreadable,
    /// not PEM, a relative path, or (the password file) open to other users.
    pub fn credentials(&self) -> Result<Credentials, SettingsError> {
        let mut problems = Vec::new();
        let mut read = |key: &str, path: Option<&Path>, kind: FileKind| {
            let path = path?;
            read_file(path, kind)
                .map_err(|e| problems.push(format!("{key} {path:?}: {e}")))
                .ok()
        };
        let tls = self.tls.clone().unwrap_or_default();
        let ca = read("tls.ca", tls.ca.as_deref(), FileKind::Certificate);
        let cert = read("tls.cert", tls.cert.as_deref(), FileKind::Certificate);
        let key = read("tls.key", tls.key.as_deref(), FileKind::PrivateKey);
        let password = read(
            "password_file",
            self.password_file.as_deref(),
            FileKind::Password,
        );
        if !problems.is_empty() {
            return Err(SettingsError { problems });
        }
        let password = password.map(|p| {
            let text = String::from_utf8(p).unwrap_or_default();
            text.lines().next().unwrap_or_default().to_owned()
        });
        Ok(Credentials {
            ca,
            identity: cert.zip(key),
            user: self.user.clone().zip(password),
        })
    }
}

/// What a file named in [`Settings`] must hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Certificate,
    PrivateKey,
    /// A password on the first line: a secret, the monitor's user's alone.
    Password,
}

/// The most any of these files may hold.
const MAX_FILE: u64 = 1 << 20;

/// Reads a file named in [`Settings`] and checks it holds what `kind`
/// says; the error says why it cannot be used (the caller names it).
fn read_file(path: &Path, kind: FileKind) -> Result<Vec<u8>, String> {
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    // Not a FIFO or a device, which could block or never end.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    // The opened file's own owner and mode, not those of what the path
    // names a moment later.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if kind == FileKind::Password {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(format!(
                "is owned by uid {}, not by the monitor's user (uid {me}); it holds a secret",
                meta.uid()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "is open to group or others (mode {:04o}); it holds a secret: chmod 600 it",
                meta.mode() & 0o7777
            ));
        }
    }
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if data.len() as u64 > MAX_FILE {
        return Err("is larger than 1 MiB".into());
    }
    let text = String::from_utf8_lossy(&data);
    match kind {
        FileKind::Certificate if !text.contains("-----BEGIN CERTIFICATE-----") => {
            Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into())
        }
        FileKind::PrivateKey
            if !(text.contains("-----BEGIN ") && text.contains("PRIVATE KEY-----")) =>
        {
            Err("holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into())
        }
        FileKind::Password if std::str::from_utf8(&data).is_err() => {
            Err("is not UTF-8 text".into())
        }
        FileKind::Password if text.lines().next().unwrap_or_default().is_empty() => {
            Err("has no password on its first line".into())
        }
        _ => Ok(data),
    }
}

/// Every problem [`Settings::validate`] found, one line each.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    pub problems: Vec<String>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[cluster]: {}", self.problems.join("; "))
    }
}

/// `http[s]://HOST[:PORT][/]`, HOST a name, an IPv4 address or `[IPv6]`.
fn check_endpoint(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err("must start with http:// or https://".into());
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("must be scheme, host and port only, without path or user".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(format!("host {host:?} is not a host name or address"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        }
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err("must start with '/', e.g. \"/resmon\"".into());
    }
    if prefix.contains("//") {
        return Err("must not hold an empty path element (\"//\")".into());
    }
    if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not hold spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Settings {
        Settings::new("node-1", vec!["http://127.0.0.1:2379".into()])
    }

    #[test]
    fn defaults_are_valid() {
        let s = good();
        s.validate().unwrap();
        assert_eq!(s.lease_ttl, Duration::from_secs(3));
        assert_eq!(s.margin, Duration::from_millis(750));
        assert_eq!(s.renew_interval(), Duration::from_millis(750));
        assert!(s.renew_interval() <= s.lease_ttl / 3);
        assert_eq!(s.lease_ttl_secs(), 3);
        assert_eq!(s.keys().node("node-1"), "/resmon/nodes/node-1");
        let two = good().with_lease_ttl(Duration::from_secs(2));
        two.validate().unwrap();
        assert_eq!(two.margin, Duration::from_millis(500));
    }

    #[test]
    fn endpoints_are_checked() {
        let table: &[(&str, bool)] = &[
            ("http://127.0.0.1:2379", true),
            ("http://127.0.0.1:2379/", true),
            ("http://etcd-1.example:2379", true),
            ("http://etcd", true),
            ("http://[::1]:2379", true),
            ("http://[::1]", true),
            ("127.0.0.1:2379", false),
            ("https://127.0.0.1:2379", true),
            ("https://[::1]:2379", true),
            ("ftp://127.0.0.1:2379", false),
            ("https://", false),
            ("http://", false),
            ("http://:2379", false),
            ("http://host:0", false),
            ("http://host:99999", false),
            ("http://host:port", false),
            ("http://host:2379/v3", false),
            ("http://user@host:2379", false),
            ("http://[::1:2379", false),
            ("http://[zz]:2379", false),
            ("http://ho st:2379", false),
        ];
        for (url, ok) in table {
            assert_eq!(
                check_endpoint(url).is_ok(),
                *ok,
                "{url}: {:?}",
                check_endpoint(url)
            );
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let s = Settings {
            node: "no spaces".into(),
            endpoints: vec!["ftp://x".into()],
            lease_ttl: Duration::from_millis(1500),
            key_prefix: "resmon".into(),
            margin: Duration::from_secs(1),
            tls: None,
            user: None,
            password_file: None,
        };
        let e = s.validate().unwrap_err();
        assert_eq!(e.problems.len(), 5, "{e}");
        let text = e.to_string();
        for key in [
            "node:",
            "etcd: endpoint",
            "lease_ttl:",
            "margin:",
            "key_prefix",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn single_problems() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    endpoints: vec![],
                    ..good()
                },
                "at least one endpoint",
            ),
            (
                good().with_lease_ttl(Duration::from_millis(2500)),
                "whole number",
            ),
            (
                good().with_margin(Duration::from_millis(1500)),
                "half of lease_ttl",
            ),
            (good().with_key_prefix("/a//b"), "\"//\""),
            (good().with_key_prefix(""), "must start with '/'"),
            (
                Settings {
                    node: String::new(),
                    ..good()
                },
                "node:",
            ),
            (
                Settings {
                    node: "-x".into(),
                    ..good()
                },
                "node:",
            ),
        ];
        for (s, expect) in cases {
            let e = s.validate().unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            assert!(e.to_string().contains(expect), "{e} lacks {expect}");
        }
        good().with_key_prefix("/").validate().unwrap();
        good().with_key_prefix("/a/b/").validate().unwrap();
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    /// A file in `dir` with `text` and `mode`.
    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn tls(dir: &Path) -> Settings {
        Settings::new("n1", vec!["https://127.0.0.1:2379".into()])
            .with_tls(Tls {
                ca: Some(file(dir, "ca.pem", CERT, 0o644)),
                cert: Some(file(dir, "cert.pem", CERT, 0o644)),
                key: Some(file(dir, "key.pem", KEY, 0o600)),
            })
            .with_user("resmon", file(dir, "password", "s3cret\nignored\n", 0o600))
    }

    #[test]
    fn tls_and_user_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = tls(dir.path());
        s.validate().unwrap();
        let c = s.credentials().unwrap();
        assert_eq!(c.ca.as_deref(), Some(CERT.as_bytes()));
        let (cert, key) = c.identity.clone().unwrap();
        assert_eq!(
            (cert.as_slice(), key.as_slice()),
            (CERT.as_bytes(), KEY.as_bytes())
        );
        assert_eq!(c.user, Some(("resmon".into(), "s3cret".into())));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("MIIE"),
            "{shown}"
        );
        // The server's certificate alone; no user.
        let s = Settings::new("n1", vec!["https://e:2379".into()]).with_tls(Tls {
            ca: Some(file(dir.path(), "ca2.pem", CERT, 0o644)),
            ..Tls::default()
        });
        s.validate().unwrap();
        assert_eq!(s.credentials().unwrap().identity, None);
        // A password file without a newline.
        let s = good().with_user("u", file(dir.path(), "p2", "pw", 0o400));
        assert_eq!(s.credentials().unwrap().user.unwrap().1, "pw");
    }

    #[test]
    fn tls_and_user_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = tls(d);
        let with_tls =
            |ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>| Settings {
                tls: Some(Tls { ca, cert, key }),
                ..base.clone()
            };
        let ca = base.tls.clone().unwrap().ca;
        let missing = d.join("nope.pem");
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    endpoints: vec!["https://a:2379".into(), "http://b:2379".into()],
                    ..base.clone()
                },
                "etcd: mixes http:// and https://",
            ),
            (
                Settings {
                    tls: None,
                    ..base.clone()
                },
                "tls.ca is missing: https:// endpoints need the CA",
            ),
            (with_tls(None, None, None), "tls.ca is missing"),
            (
                Settings {
                    endpoints: vec!["http://a:2379".into()],
                    ..base.clone()
                },
                "tls: set, but the etcd endpoints are http://",
            ),
            (
                with_tls(ca.clone(), Some(d.join("cert.pem")), None),
                "tls.key is missing: tls.cert and tls.key go together",
            ),
            (
                with_tls(ca.clone(), None, Some(d.join("key.pem"))),
                "tls.cert is missing",
            ),
            (
                with_tls(Some("ca.pem".into()), None, None),
                "tls.ca \"ca.pem\": must be an absolute path",
            ),
            (with_tls(Some(missing.clone()), None, None), "tls.ca \""),
            (
                with_tls(
                    ca.clone(),
                    Some(file(d, "notcert", "hello", 0o644)),
                    Some(d.join("key.pem")),
                ),
                "tls.cert \"",
            ),
            (
                with_tls(
                    ca.clone(),
                    Some(d.join("cert.pem")),
                    Some(d.join("cert.pem")),
                ),
                "holds no PEM private key",
            ),
            (
                with_tls(Some(d.to_path_buf()), None, None),
                "is not a regular file",
            ),
            (
                Settings {
                    password_file: None,
                    ..base.clone()
                },
                "password_file is missing: user \"resmon\"",
            ),
            (
                Settings {
                    user: None,
                    ..base.clone()
                },
                "user is missing",
            ),
            (
                Settings {
                    user: Some(String::new()),
                    ..base.clone()
                },
                "user \"\": must be an etcd user name",
            ),
            (
                Settings {
                    password_file: Some(file(d, "open", "pw\n", 0o640)),
                    ..base.clone()
                },
                "is open to group or others (mode 0640); it holds a secret: chmod 600 it",
            ),
            (
                Settings {
                    password_file: Some(file(d, "empty", "\nsecond\n", 0o600)),
                    ..base.clone()
                },
                "has no password on its first line",
            ),
        ];
        for (s, expect) in cases {
            let e = s.validate().unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            assert!(e.to_string().contains(expect), "{e} lacks {expect}");
        }
        // An unreadable file is named with its key and path, and why.
        let e = with_tls(Some(missing.clone()), None, None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("tls.ca {missing:?}: cannot be read: No such file")),
            "{e}"
        );
    }

    #[test]
    fn a_password_file_of_another_user_is_refused() {
        if !rustix::process::geteuid().is_root() {
            return; // only root can give a file away
        }
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "pw", "x\n", 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = good()
            .with_user("u", &p)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("password_file")
                && e.contains("is owned by uid 65534, not by the monitor's user (uid 0)"),
            "{e}"
        );
    }
}
