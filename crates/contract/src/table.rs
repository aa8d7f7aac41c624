//! Reading a `[[resource]]` table: which keys the monitor takes itself
//! (the rest are the type's parameters), and a reader that turns a table
//! into a typed raw struct while reporting **every** problem, each with its
//! key path (`probe > timout`), and the closest known key for a misspelt
//! one.

use serde::de::DeserializeOwned;

/// The keys of a `[[resource]]` table that the monitor reads itself.
pub const RESOURCE_KEYS: &[&str] = &["name", "type", "group", "depends_on", "autostart"];

/// The failure-policy keys (docs/design.md §3), in `[[resource]]` tables
/// and in `[defaults]`.
pub const POLICY_KEYS: &[&str] = &[
    "looks_alive_interval",
    "is_alive_interval",
    "pending_timeout",
    "terminate_timeout",
    "deadlock_timeout",
    "restart_action",
    "restart_threshold",
    "restart_period",
    "restart_delay",
    "retry_period_on_failure",
    "separate_monitor",
    "failure_threshold",
    "success_threshold",
    "restart_backoff",
    "restart_delay_max",
];

/// Every key the monitor reads in a `[[resource]]` table: what a type
/// that does not know a key suggests from, beside its own.
pub fn monitor_keys() -> impl Iterator<Item = &'static str> {
    RESOURCE_KEYS
        .iter()
        .chain(POLICY_KEYS)
        .chain(LOG_KEYS)
        .chain(crate::LIMIT_KEYS)
        .copied()
}

/// Where a resource's output goes (`docs/configuration.md`), in
/// `[[resource]]` tables and in `[defaults]`.
pub const LOG_KEYS: &[&str] = &["log", "log_max_size", "log_keep", "log_max_line"];

/// The candidate closest to `word` if it is close enough to be what was
/// meant: at most one edit (insertion, deletion, substitution or swap of
/// neighbours) per three characters, and at least one.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let most = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|&(d, _)| d <= most)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `unknown key "X"`, with `; did you mean "Y"?` when a key of `known` or
/// `also` is close, else the list of both: `known` (the table's own keys)
/// first, then `also` (those someone else reads in the same table).
pub fn unknown_key(key: &str, known: &[&str], also: &[&str]) -> String {
    match suggest(key, known.iter().chain(also).copied()) {
        Some(s) => format!("unknown key {key:?}; did you mean {s:?}?"),
        None if also.is_empty() => {
            format!("unknown key {key:?}; the keys are {}", known.join(", "))
        }
        None => format!(
            "unknown key {key:?}; the keys are {}, and those of every resource: {}",
            known.join(", "),
            also.join(", ")
        ),
    }
}

/// Reads `value` (a table) into `T`, which should deny unknown fields.
/// Rather than stop at the first problem, each key that is unknown or of
/// the wrong type is reported and left out, and the rest is read again, so
/// every problem is found; the struct read from what is left comes back
/// too (`None` when even that cannot be read, e.g. a required key is
/// missing), so the caller can go on checking values. Top-level keys in
/// `also_known` (read by someone else) are suggested for misspellings too.
pub fn parse_table<T: DeserializeOwned>(
    value: &serde_json::Value,
    also_known: &[&str],
) -> (Option<T>, Vec<String>) {
    let mut v = value.clone();
    let mut problems = Vec::new();
    // Each round removes one key, so this ends; the bound is a guard.
    for _ in 0..=count_keys(value) {
        let err = match serde_path_to_error::deserialize::<_, T>(&v) {
            Ok(t) => return (Some(t), problems),
            Err(e) => e,
        };
        let mut path: Vec<String> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let text = err.inner().to_string();
        let message = match unknown_field(&text) {
            Some((field, expected)) => {
                // The path ends at the table that holds the key.
                if path.last() != Some(&field) {
                    path.push(field.clone());
                }
                let also: &[&str] = if path.len() == 1 { also_known } else { &[] };
                let known: Vec<&str> = expected.iter().map(String::as_str).collect();
                unknown_key(&field, &known, also)
            }
            None => match missing_field(&text) {
                Some(field) => format!("{field} is missing"),
                None => text,
            },
        };
        problems.push(if path.is_empty() {
            message
        } else {
            format!("{}: {message}", path.join(" > "))
        });
        if path.is_empty() || !remove(&mut v, &path) {
            break;
        }
    }
    (None, problems)
}

/// The field and the expected fields of serde's "unknown field `x`,
/// expected one of `a`, `b`" (or "expected `a`", "expected `a` or `b`",
/// "there are no fields").
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let expected = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

/// The field of serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Removes the entry at `path` (keys, or indexes in arrays); false when
/// there is none.
fn remove(v: &mut serde_json::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = v;
    for p in parents {
        at = match at {
            serde_json::Value::Object(m) => match m.get_mut(p) {
                Some(next) => next,
                None => return false,
            },
            serde_json::Value::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i))
            {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        serde_json::Value::Object(m) => m.remove(last).is_some(),
        serde_json::Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// How many keys and elements `v` holds, at every depth.
fn count_keys(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => m.len() + m.values().map(count_keys).sum::<usize>(),
        serde_json::Value::Array(a) => a.len() + a.iter().map(count_keys).sum::<usize>(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        command: String,
        #[serde(default)]
        environment: BTreeMap<String, String>,
        probe: Option<Probe>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        timeout: Option<String>,
        interval: Option<String>,
    }

    fn parse(v: serde_json::Value) -> (Option<Raw>, Vec<String>) {
        parse_table::<Raw>(&v, &["depends_on", "restart_threshold"])
    }

    #[test]
    fn every_problem_is_reported_with_its_path_and_the_rest_is_read() {
        let (raw, problems) = parse(serde_json::json!({
            "command": "x",
            "dependson": ["a"],
            "restart_treshold": 3,
            "environment": { "PORT": 8080, "HOME": "/" },
            "probe": { "timout": "5s" },
            "zzz": 1,
        }));
        assert_eq!(
            problems,
            [
                "dependson: unknown key \"dependson\"; did you mean \"depends_on\"?",
                "environment > PORT: invalid type: integer `8080`, expected a string",
                "probe > timout: unknown key \"timout\"; did you mean \"timeout\"?",
                "restart_treshold: unknown key \"restart_treshold\"; did you mean \"restart_threshold\"?",
                "zzz: unknown key \"zzz\"; the keys are command, environment, probe, and those of every resource: depends_on, restart_threshold",
            ]
        );
        // What is left is read: the good variable stays.
        let raw = raw.unwrap();
        assert_eq!(raw.environment.get("HOME").map(String::as_str), Some("/"));
        assert!(raw.probe.is_some());
    }

    #[test]
    fn a_missing_key_ends_the_reading_with_what_was_found_before() {
        let (raw, problems) = parse(serde_json::json!({ "probe": { "intervall": "1s" } }));
        assert!(raw.is_none());
        assert_eq!(
            problems,
            [
                "probe > intervall: unknown key \"intervall\"; did you mean \"interval\"?",
                "command is missing",
            ]
        );
        let (raw, problems) = parse(serde_json::json!({ "command": "x" }));
        assert!(raw.is_some() && problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn suggestions_are_close_or_none() {
        let keys = ["start", "stop", "monitor", "depends_on"];
        assert_eq!(suggest("strat", keys), Some("start"));
        assert_eq!(suggest("dependson", keys), Some("depends_on"));
        assert_eq!(suggest("monitr", keys), Some("monitor"));
        assert_eq!(suggest("x", keys), None);
        assert_eq!(suggest("reload", keys), None);
    }
}
