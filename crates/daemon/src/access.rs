//! Access rights: who may query, control or terminate, decided for every
//! request from the caller's credentials.
//!
//! On the Unix socket the caller is whoever the kernel says is at the other
//! end (`SO_PEERCRED`): its uid, and through the user database its name and
//! groups. Three rights, each granted in `[access]` to user names and
//! `@group` names:
//!
//! * `query`: status, events, calls (default: everyone);
//! * `control`: online, offline, control codes, reload (default: nobody);
//! * `terminate` (default: nobody).
//!
//! Root, and the user the monitor runs as, always hold every right. A
//! denied request is answered 403 and changes nothing.

use resmon_task::lock;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One of the three rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    Query,
    Control,
    Terminate,
}

impl Right {
    pub const ALL: [Right; 3] = [Right::Query, Right::Control, Right::Terminate];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Query => "query",
            Right::Control => "control",
            Right::Terminate => "terminate",
        }
    }

    pub fn parse(s: &str) -> Option<Right> {
        Right::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds one right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub everyone: bool,
    pub users: BTreeSet<String>,
    pub groups: BTreeSet<String>,
}

impl Grant {
    /// Parses `["alice", "@ops", "*"]`; unknown users and groups are errors.
    pub fn parse(entries: &[String], field: &str, problems: &mut Vec<String>) -> Grant {
        let mut g = Grant::default();
        for e in entries {
            if e == "*" {
                g.everyone = true;
            } else if let Some(group) = e.strip_prefix('@') {
                match nix::unistd::Group::from_name(group) {
                    Ok(Some(_)) => {
                        g.groups.insert(group.to_string());
                    }
                    _ => problems.push(format!("[access] {field}: no such group {group:?}")),
                }
            } else {
                match nix::unistd::User::from_name(e) {
                    Ok(Some(_)) => {
                        g.users.insert(e.clone());
                    }
                    _ => problems.push(format!(
                        "[access] {field}: no such user {e:?} (write groups as \"@name\", everyone as \"*\")"
                    )),
                }
            }
        }
        g
    }

    fn admits(&self, who: &Identity) -> bool {
        self.everyone
            || self.users.contains(&who.name)
            || who.groups.iter().any(|g| self.groups.contains(g))
    }
}

/// A bearer token of the TCP listener and the rights it carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// A name for messages and logs (never the secret).
    pub name: String,
    pub secret: String,
    pub rights: Vec<Right>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// The `[access]` section, and the tokens of `[[api.token]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessConfig {
    pub query: Grant,
    pub control: Grant,
    pub terminate: Grant,
    pub tokens: Vec<Token>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            query: Grant {
                everyone: true,
                ..Grant::default()
            },
            control: Grant::default(),
            terminate: Grant::default(),
            tokens: Vec::new(),
        }
    }
}

/// A caller as the user database knows it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub uid: u32,
    pub name: String,
    pub groups: Vec<String>,
}

impl Identity {
    fn lookup(uid: u32) -> Identity {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let Some(user) = user else {
            return Identity {
                uid,
                name: format!("uid {uid}"),
                groups: Vec::new(),
            };
        };
        let mut groups = Vec::new();
        if let Ok(cname) = CString::new(user.name.clone()) {
            if let Ok(gids) = nix::unistd::getgrouplist(&cname, user.gid) {
                for gid in gids {
                    if let Ok(Some(g)) = nix::unistd::Group::from_gid(gid) {
                        groups.push(g.name);
                    }
                }
            }
        }
        Identity {
            uid,
            name: user.name,
            groups,
        }
    }
}

/// Decides requests; caches identities for a short while.
pub struct Access {
    config: AccessConfig,
    owner: u32,
    cache: Mutex<HashMap<u32, (Instant, Identity)>>,
}

const CACHE_FOR: Duration = Duration::from_secs(10);

impl Access {
    pub fn new(config: AccessConfig) -> Access {
        Access {
            config,
            owner: rustix::process::geteuid().as_raw(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn identity(&self, uid: u32) -> Identity {
        let mut cache = lock(&self.cache);
        if let Some((at, id)) = cache.get(&uid) {
            if at.elapsed() < CACHE_FOR {
                return id.clone();
            }
        }
        let id = Identity::lookup(uid);
        cache.insert(uid, (Instant::now(), id.clone()));
        id
    }

    /// The rights a uid holds.
    pub fn rights_of(&self, uid: u32) -> Vec<Right> {
        Right::ALL
            .into_iter()
            .filter(|&r| self.check(uid, r).is_ok())
            .collect()
    }

    /// `Ok` when the bearer token `presented` carries `right`; else the
    /// message for the 401/403. Tokens are compared in constant time.
    pub fn check_token(&self, presented: Option<&str>, right: Right) -> Result<(), TokenDenied> {
        let Some(presented) = presented else {
            return Err(TokenDenied::Missing);
        };
        match self.token(presented) {
            None => Err(TokenDenied::Unknown),
            Some(t) if t.rights.contains(&right) => Ok(()),
            Some(t) => Err(TokenDenied::Lacks(format!(
                "token {:?} does not carry the {right} right",
                t.name
            ))),
        }
    }

    /// The configured token whose secret is `presented` (compared in
    /// constant time).
    pub fn token(&self, presented: &str) -> Option<&Token> {
        use subtle::ConstantTimeEq;
        self.config
            .tokens
            .iter()
            .find(|t| bool::from(t.secret.as_bytes().ct_eq(presented.as_bytes())))
    }

    /// `Ok` when `uid` holds `right`; else why not, for the 403.
    pub fn check(&self, uid: u32, right: Right) -> Result<(), Denied> {
        if uid == 0 || uid == self.owner {
            return Ok(());
        }
        let grant = match right {
            Right::Query => &self.config.query,
            Right::Control => &self.config.control,
            Right::Terminate => &self.config.terminate,
        };
        let who = self.identity(uid);
        if grant.admits(&who) {
            Ok(())
        } else {
            Err(Denied {
                user: who.name,
                uid,
                right,
            })
        }
    }
}

/// A local user who lacks a right.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("user {user:?} (uid {uid}) does not hold the {right} right; grant it in the config's [access] {right} list")]
pub struct Denied {
    pub user: String,
    pub uid: u32,
    pub right: Right,
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenDenied {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// Not a configured token (401).
    Unknown,
    /// A valid token without the right (403).
    Lacks(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_rights_only() {
        let a = Access::new(AccessConfig {
            tokens: vec![Token {
                name: "ops".into(),
                secret: "s3cret-s3cret-s3cret".into(),
                rights: vec![Right::Query, Right::Control],
            }],
            ..AccessConfig::default()
        });
        assert!(a
            .check_token(Some("s3cret-s3cret-s3cret"), Right::Control)
            .is_ok());
        assert!(matches!(
            a.check_token(Some("s3cret-s3cret-s3cret"), Right::Terminate),
            Err(TokenDenied::Lacks(m)) if m.contains("\"ops\" does not carry the terminate right")
        ));
        assert_eq!(
            a.check_token(Some("nope"), Right::Query),
            Err(TokenDenied::Unknown)
        );
        assert_eq!(a.check_token(None, Right::Query), Err(TokenDenied::Missing));
        assert!(!format!("{:?}", a.config.tokens[0]).contains("s3cret"));
    }

    #[test]
    fn defaults_let_everyone_query_and_nobody_else_act() {
        let a = Access::new(AccessConfig::default());
        assert!(
            a.check(0, Right::Terminate).is_ok(),
            "root holds every right"
        );
        assert!(
            a.check(a.owner, Right::Terminate).is_ok(),
            "so does the monitor's user"
        );
        let nobody = 65534;
        assert!(a.check(nobody, Right::Query).is_ok());
        let e = a.check(nobody, Right::Control).unwrap_err();
        assert_eq!((e.uid, e.right), (nobody, Right::Control));
        assert!(
            e.to_string()
                .contains("\"nobody\" (uid 65534) does not hold the control right"),
            "{e}"
        );
        assert!(a.check(nobody, Right::Terminate).is_err());
    }

    #[test]
    fn users_and_groups_are_granted_and_checked() {
        let mut problems = Vec::new();
        let control = Grant::parse(&["nobody".into()], "control", &mut problems);
        let terminate = Grant::parse(&["@nogroup".into()], "terminate", &mut problems);
        let query = Grant::parse(&["root".into()], "query", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let a = Access::new(AccessConfig {
            query,
            control,
            terminate,
            tokens: Vec::new(),
        });
        // nobody's primary group is nogroup on Debian.
        assert_eq!(a.rights_of(65534), vec![Right::Control, Right::Terminate]);
    }

    #[test]
    fn unknown_names_are_refused() {
        let mut problems = Vec::new();
        Grant::parse(
            &["no-such-user-xyz".into(), "@no-such-group-xyz".into()],
            "control",
            &mut problems,
        );
        assert_eq!(problems.len(), 2);
        assert!(problems[0].contains("no such user \"no-such-user-xyz\""));
        assert!(problems[1].contains("no such group \"no-such-group-xyz\""));
    }
}
