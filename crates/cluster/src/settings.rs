//! The `[cluster]` settings as plain values, and their validation.
//!
//! The daemon parses its config file into a [`Settings`] and calls
//! [`Settings::validate`] before it touches etcd or a resource, so every
//! problem is reported at once, each naming the key it is about.

use std::fmt;
use std::time::Duration;

use crate::keys::{check_name, Keys};

/// How one node takes part in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name, unique in the cluster: `[A-Za-z0-9._-]`, 1 to 64
    /// characters, not starting with `.` or `-`.
    pub node: String,
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
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
        }
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError { problems })
        }
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

/// `http://HOST[:PORT][/]`, HOST a name, an IPv4 address or `[IPv6]`.
fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err("https needs TLS settings, which resmon does not have yet: use http".into());
    } else {
        return Err("must start with http://".into());
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
            ("https://127.0.0.1:2379", false),
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
}
