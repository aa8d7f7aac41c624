//! Where a group may run, and in which order the live nodes take it: the
//! placement rules as pure functions of what etcd says, so that every node
//! reaches the same answer from the same view, and each rule is tested on
//! its own.
//!
//! The rules, by `[group.NAME]` key:
//!
//! * `possible_nodes`: a hard limit. A node not listed never takes the
//!   group; with no live possible node the group stays offline, and
//!   [`Line::why_empty`] says so.
//! * `anti_affinity = "CLASS"`: groups of one class avoid sharing a node.
//!   Soft by default (a node already running another group of the class
//!   comes after every node that does not); `anti_affinity_strict = true`
//!   makes it a hard limit (such a node never takes the group).
//! * A requested move target first, then `preferred_nodes` in their order,
//!   then the other live nodes in an order hashed from the group's and the
//!   node's names (rendezvous hashing: groups spread evenly over the
//!   nodes, and each keeps its place when another node comes or goes).
//! * Demoted to the end of the line (all but a move target), in this
//!   order of weight: drained
//!   nodes (left out while any other node can take the group), nodes where
//!   the group recently failed, nodes sharing its anti-affinity class.
//! * `failback` with `failback_window = "HH:MM-HH:MM"`: a group moves back
//!   to a more preferred node only while the window is open on that node's
//!   clock ([`failback_to`]).
//! * `failover_threshold` in `failover_period`: past that many failovers
//!   in the period the group stays where it is, failed, instead of moving
//!   between nodes ([`may_fail_over`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// One group's placement rules, from its `[group.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Nodes in order of preference.
    pub preferred_nodes: Vec<String>,
    /// The only nodes the group may run on; empty: any node.
    pub possible_nodes: Vec<String>,
    /// The group's anti-affinity class.
    pub anti_affinity: Option<String>,
    /// Never share a node with a group of the same class.
    pub anti_affinity_strict: bool,
    /// Move back to a more preferred node when it is live again.
    pub failback: bool,
    /// When failback may happen, on the preferred node's clock.
    pub failback_window: Option<Window>,
    /// How many failovers in `failover_period` the group may make.
    pub failover_threshold: Option<u32>,
    pub failover_period: Duration,
}

impl Default for Rules {
    /// Any node, no preference, no failback, no limit on failovers.
    fn default() -> Rules {
        Rules {
            preferred_nodes: Vec::new(),
            possible_nodes: Vec::new(),
            anti_affinity: None,
            anti_affinity_strict: false,
            failback: false,
            failback_window: None,
            failover_threshold: None,
            failover_period: Rules::DEFAULT_FAILOVER_PERIOD,
        }
    }
}

impl Rules {
    /// The default `failover_period`: six hours, as Windows clusters have it.
    pub const DEFAULT_FAILOVER_PERIOD: Duration = Duration::from_secs(6 * 3600);

    /// Whether the group may run on `node` at all.
    pub fn possible(&self, node: &str) -> bool {
        self.possible_nodes.is_empty() || self.possible_nodes.iter().any(|n| n == node)
    }
}

/// What placement needs to know of the cluster, for one group.
#[derive(Clone, Debug, Default)]
pub struct Situation<'a> {
    /// The live nodes.
    pub live: BTreeSet<&'a str>,
    /// Drained nodes.
    pub drained: BTreeSet<&'a str>,
    /// A requested move target for this group.
    pub target: Option<&'a str>,
    /// Nodes where this group recently failed.
    pub failed_on: BTreeSet<&'a str>,
    /// Nodes running another group of this group's anti-affinity class,
    /// and which group.
    pub sharing: BTreeMap<&'a str, &'a str>,
}

/// Why a live node cannot take the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// Not among `possible_nodes`.
    NotPossible,
    /// Runs another group of the class, and anti-affinity is strict.
    Strict { group: String },
    /// Drained, and another node can take the group.
    Drained,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotPossible => f.write_str("it is not among the group's possible_nodes"),
            Exclusion::Strict { group } => write!(
                f,
                "it runs group {group} of the same anti-affinity class (strict)"
            ),
            Exclusion::Drained => f.write_str("it is drained"),
        }
    }
}

/// The live nodes that may take a group, in the order they should, and
/// those that may not, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub nodes: Vec<String>,
    pub excluded: Vec<(String, Exclusion)>,
}

impl Line {
    /// Where `node` stands in line (0: takes the group at once).
    pub fn rank(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }

    /// Why no node can take the group, when none can.
    pub fn why_empty(&self, rules: &Rules) -> Option<String> {
        if !self.nodes.is_empty() {
            return None;
        }
        if self.excluded.is_empty() {
            return Some("no node is live".into());
        }
        let mut why: Vec<String> = Vec::new();
        let not_possible: Vec<&str> = self
            .excluded
            .iter()
            .filter(|(_, e)| *e == Exclusion::NotPossible)
            .map(|(n, _)| n.as_str())
            .collect();
        if !not_possible.is_empty() {
            why.push(format!(
                "the live node(s) {} are not among its possible_nodes [{}]",
                not_possible.join(", "),
                rules.possible_nodes.join(", ")
            ));
        }
        for (node, e) in &self.excluded {
            if let Exclusion::Strict { group } = e {
                why.push(format!(
                    "{node} runs group {group} of anti-affinity class {:?} (strict)",
                    rules.anti_affinity.as_deref().unwrap_or_default()
                ));
            }
        }
        Some(format!("no live node may run it: {}", why.join("; ")))
    }
}

/// The line of nodes for `group` under `rules` (see the module doc).
pub fn line_up(group: &str, rules: &Rules, s: &Situation) -> Line {
    let mut line = Line::default();
    let mut ok: Vec<&str> = Vec::new();
    for &node in &s.live {
        if !rules.possible(node) {
            line.excluded.push((node.into(), Exclusion::NotPossible));
        } else if let Some(other) = s.sharing.get(node).filter(|_| rules.anti_affinity_strict) {
            line.excluded.push((
                node.into(),
                Exclusion::Strict {
                    group: (*other).into(),
                },
            ));
        } else {
            ok.push(node);
        }
    }
    // The base order: target, preferred, then hashed.
    let base = |n: &str| -> (u8, usize, std::cmp::Reverse<u64>) {
        if s.target == Some(n) {
            (0, 0, std::cmp::Reverse(0))
        } else if let Some(i) = rules.preferred_nodes.iter().position(|p| p == n) {
            (1, i, std::cmp::Reverse(0))
        } else {
            (2, 0, std::cmp::Reverse(weight(group, n)))
        }
    };
    // An operator's move target leads whatever demotes it.
    ok.sort_by_key(|&n| {
        (
            s.target != Some(n),
            s.drained.contains(n),
            s.failed_on.contains(n),
            s.sharing.contains_key(n),
            base(n),
            n,
        )
    });
    // A drained node takes a group only when no other node can.
    if ok.iter().any(|n| !s.drained.contains(n)) {
        for n in ok.iter().filter(|n| s.drained.contains(*n)) {
            line.excluded.push(((*n).into(), Exclusion::Drained));
        }
        ok.retain(|n| !s.drained.contains(n));
    }
    line.nodes = ok.into_iter().map(str::to_owned).collect();
    line
}

/// The rendezvous weight of `node` for `group`: FNV-1a of both names,
/// mixed, so that the order of the non-preferred nodes is the same on
/// every node and in every version.
fn weight(group: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix (splitmix64) so that names differing in one letter still
    // spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node the group should fail back to from `me`, if any: the first in
/// line, when it is more preferred than `me` and its failback window (on
/// its own clock: `local_minute(node)`, minutes after its midnight) is
/// open. `None` for a node whose time is not known, when a window is set.
pub fn failback_to(
    rules: &Rules,
    line: &Line,
    me: &str,
    local_minute: impl Fn(&str) -> Option<u16>,
) -> Option<String> {
    if !rules.failback {
        return None;
    }
    let first = line.nodes.first()?;
    let theirs = rules.preferred_nodes.iter().position(|n| n == first)?;
    let mine = rules.preferred_nodes.iter().position(|n| n == me);
    if first == me || mine.is_some_and(|m| theirs >= m) {
        return None;
    }
    if let Some(w) = &rules.failback_window {
        if !local_minute(first).is_some_and(|m| w.contains(m)) {
            return None;
        }
    }
    Some(first.clone())
}

/// Whether the group may fail over once more, given the times (Unix
/// milliseconds) of its earlier failovers; `Err` says why not.
pub fn may_fail_over(rules: &Rules, history: &[u64], now_ms: u64) -> Result<(), String> {
    let Some(limit) = rules.failover_threshold else {
        return Ok(());
    };
    let recent = recent_failovers(rules, history, now_ms).len();
    if recent >= limit as usize {
        return Err(format!(
            "it failed over {recent} time(s) in the last {} (failover_threshold {limit}): it stays here, failed",
            period_text(rules.failover_period)
        ));
    }
    Ok(())
}

/// `6h`, `90m`, `45s`: a period as the config would write it.
fn period_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The failovers of `history` inside the period before `now_ms`, oldest
/// first: what is kept when one more is recorded.
pub fn recent_failovers(rules: &Rules, history: &[u64], now_ms: u64) -> Vec<u64> {
    let period = u64::try_from(rules.failover_period.as_millis()).unwrap_or(u64::MAX);
    let since = now_ms.saturating_sub(period);
    let mut recent: Vec<u64> = history
        .iter()
        .copied()
        .filter(|&t| t > since && t <= now_ms)
        .collect();
    recent.sort_unstable();
    recent
}

/// A daily window `HH:MM-HH:MM` of local time; it may span midnight
/// (`22:00-02:00`). The start is inside, the end is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight.
    pub start: u16,
    pub end: u16,
}

impl Window {
    /// Whether `minute` (after midnight) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Window, String> {
        let bad = || format!("{s:?}: must be a daily window \"HH:MM-HH:MM\", e.g. \"01:00-05:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("{s:?}: the window is empty (its start is its end)"));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Minutes after local midnight at `now_unix_s` for a clock `offset_s`
/// seconds east of UTC.
pub fn local_minute(now_unix_s: i64, offset_s: i32) -> u16 {
    let local = now_unix_s.saturating_add(i64::from(offset_s));
    // rem_euclid of a positive modulus is in 0..86400.
    u16::try_from(local.rem_euclid(86_400) / 60).unwrap_or(0)
}
