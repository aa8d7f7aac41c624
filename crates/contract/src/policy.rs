//! The failure policy of a resource: health-check periods, timeouts and the
//! restart rules. Defaults are those of the Windows failover-cluster model.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the monitor does when a resource fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartAction {
    /// Leave the resource failed.
    None,
    /// Restart it, up to `restart_threshold` times within `restart_period`.
    Restart,
    /// Restart it; past the threshold, fail its group over.
    RestartThenFailover,
}

impl RestartAction {
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "none" => Ok(RestartAction::None),
            "restart" => Ok(RestartAction::Restart),
            "restart_then_failover" => Ok(RestartAction::RestartThenFailover),
            other => Err(PolicyError(format!(
                "unknown restart_action {other:?}: use \"none\", \"restart\" or \"restart_then_failover\""
            ))),
        }
    }
}

/// The properties of docs/design.md §3 for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub looks_alive_interval: Duration,
    pub is_alive_interval: Duration,
    pub pending_timeout: Duration,
    pub terminate_timeout: Duration,
    pub deadlock_timeout: Duration,
    pub restart_action: RestartAction,
    pub restart_threshold: u32,
    pub restart_period: Duration,
    pub restart_delay: Duration,
    pub retry_period_on_failure: Duration,
    pub separate_monitor: bool,
    /// Consecutive failed `is_alive` answers (and readiness checks) before
    /// the resource is failed (made not ready).
    pub failure_threshold: u32,
    /// Consecutive passed checks that clear a run of failures (and make a
    /// resource ready).
    pub success_threshold: u32,
    /// Each restart's delay is the one before times this, up to
    /// `restart_delay_max`; 1 keeps `restart_delay` as it is.
    pub restart_backoff: Backoff,
    pub restart_delay_max: Duration,
}

/// The factor by which restart delays grow: 1 to 100, kept in thousandths
/// so that a policy compares and hashes exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "f64")]
pub struct Backoff(u32);

impl Backoff {
    pub const NONE: Backoff = Backoff(1000);

    /// A factor from 1.0 to 100.0, to the thousandth.
    pub fn new(factor: f64) -> Result<Backoff, PolicyError> {
        if !(1.0..=100.0).contains(&factor) {
            return Err(PolicyError(format!(
                "restart_backoff {factor} must be from 1.0 (no growth) to 100.0"
            )));
        }
        Ok(Backoff((factor * 1000.0).round() as u32))
    }

    pub fn factor(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// `base` grown `steps` times, at most `max`.
    pub fn delay(self, base: Duration, steps: u32, max: Duration) -> Duration {
        if self == Backoff::NONE || steps == 0 {
            return base;
        }
        let grown = base.as_secs_f64() * self.factor().powf(f64::from(steps.min(10_000)));
        if !grown.is_finite() || grown >= max.as_secs_f64() {
            return max.max(base);
        }
        Duration::try_from_secs_f64(grown).unwrap_or(max).max(base)
    }
}

impl From<Backoff> for f64 {
    fn from(b: Backoff) -> f64 {
        b.factor()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            looks_alive_interval: Duration::from_secs(5),
            is_alive_interval: Duration::from_secs(60),
            pending_timeout: Duration::from_secs(180),
            terminate_timeout: Duration::from_millis(300),
            deadlock_timeout: Duration::from_secs(300),
            restart_action: RestartAction::RestartThenFailover,
            restart_threshold: 3,
            restart_period: Duration::from_secs(15 * 60),
            restart_delay: Duration::from_millis(500),
            retry_period_on_failure: Duration::from_secs(3600),
            separate_monitor: false,
            failure_threshold: 1,
            success_threshold: 1,
            restart_backoff: Backoff::NONE,
            restart_delay_max: Duration::from_secs(300),
        }
    }
}

/// A property value that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// Why a duration-valued key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{key}: write durations as strings, e.g. {key} = \"5s\"")]
    NotAString { key: String },
    #[error("{key}: must be more than zero")]
    Zero { key: String },
    #[error("{key}: {source}")]
    Parse { key: String, source: PolicyError },
}

/// The value of the duration-valued key `key` of a config: `text` is the
/// value when it is a string. One rule and one wording for every duration
/// of the config (policy keys, probes, `[cluster]`, OCF timeouts); zero is
/// refused unless `zero_ok`.
pub fn duration_value(
    key: &str,
    text: Option<&str>,
    zero_ok: bool,
) -> Result<Duration, DurationError> {
    let key = || key.to_owned();
    let text = text.ok_or_else(|| DurationError::NotAString { key: key() })?;
    match parse_duration(text) {
        Ok(d) if d.is_zero() && !zero_ok => Err(DurationError::Zero { key: key() }),
        Ok(d) => Ok(d),
        Err(source) => Err(DurationError::Parse { key: key(), source }),
    }
}

/// Parses a size written as a string such as `"10MiB"`, `"512 KiB"` or
/// `"1GB"` (a bare number is bytes), for the size-valued keys of a config.
/// Zero is refused: a file that may hold nothing holds nothing useful.
pub fn parse_size(text: &str) -> Result<u64, PolicyError> {
    let t = text.trim();
    let n = t
        .parse::<bytesize::ByteSize>()
        .map_err(|e| {
            PolicyError(format!(
                "bad size {text:?} ({e}): write a number with a unit, e.g. \"10MiB\", \"512KiB\", \"1GiB\""
            ))
        })?
        .as_u64();
    if n == 0 {
        return Err(PolicyError(format!("size {text:?} must be more than 0")));
    }
    Ok(n)
}

/// Parses a duration written as a string such as `"300ms"`, `"5s"`, `"15m"`,
/// `"1h"` or `"1m 30s"`. A bare number is refused: the unit must be explicit.
pub fn parse_duration(text: &str) -> Result<Duration, PolicyError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(PolicyError(
            "empty duration: write a number with a unit, e.g. \"300ms\", \"5s\", \"15m\"".into(),
        ));
    }
    if t.chars().all(|c| c.is_ascii_digit()) && t != "0" {
        return Err(PolicyError(format!(
            "duration {text:?} has no unit: write e.g. \"{t}s\" or \"{t}ms\""
        )));
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        PolicyError(format!(
            "bad duration {text:?} ({e}): write a number with a unit, e.g. \"300ms\", \"5s\", \"15m\""
        ))
    })?;
    // Bounded, so that no deadline computed from it can overflow.
    if d > MAX_DURATION {
        return Err(PolicyError(format!(
            "duration {text:?} is longer than the longest allowed, 10 years (\"87600h\")"
        )));
    }
    Ok(d)
}

/// The longest duration a property may have: ten years. Deadlines are
/// instants plus durations; with this bound they never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_refuse_nonsense() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "ten", "0", "0MiB", "-1MiB", "10 parsecs"] {
            let e = parse_size(bad).unwrap_err().0;
            assert!(e.contains(bad) || bad.is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("87600h").unwrap(), MAX_DURATION);
        for long in ["18446744073709551615s", "87601h", "100years"] {
            let e = parse_duration(long).unwrap_err().0;
            assert!(
                e.contains("longest allowed") || e.contains("bad duration"),
                "{long}: {e}"
            );
        }
        assert!(parse_duration("18446744073709551615s")
            .unwrap_err()
            .0
            .contains("longest allowed"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = Policy::default();
        assert_eq!(p.looks_alive_interval, Duration::from_secs(5));
        assert_eq!(p.is_alive_interval, Duration::from_secs(60));
        assert_eq!(p.pending_timeout, Duration::from_secs(180));
        assert_eq!(p.terminate_timeout, Duration::from_millis(300));
        assert_eq!(p.deadlock_timeout, Duration::from_secs(300));
        assert_eq!(p.restart_action, RestartAction::RestartThenFailover);
        assert_eq!(p.restart_threshold, 3);
        assert_eq!(p.restart_period, Duration::from_secs(900));
        assert_eq!(p.restart_delay, Duration::from_millis(500));
        assert_eq!(p.retry_period_on_failure, Duration::from_secs(3600));
        assert!(!p.separate_monitor);
    }

    #[test]
    fn durations_parse_with_units() {
        let cases = [
            ("300ms", Duration::from_millis(300)),
            ("5s", Duration::from_secs(5)),
            ("15m", Duration::from_secs(900)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1m 30s", Duration::from_secs(90)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_a_hint() {
        for text in ["", "5", "five seconds", "-1s", "3 parsecs"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.0.contains("e.g.") || err.0.contains("unit"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn backoff_grows_the_delay_up_to_its_bound() {
        let b = Backoff::new(2.0).unwrap();
        let s = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let got: Vec<u64> = (0..9).map(|k| b.delay(s, k, max).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(s, u32::MAX, max), max);
        assert_eq!(Backoff::NONE.delay(s, 50, max), s);
        assert_eq!(b.delay(Duration::ZERO, 5, max), Duration::ZERO);
        // A base above the bound is never cut below itself.
        assert_eq!(
            b.delay(Duration::from_secs(90), 1, max),
            Duration::from_secs(90)
        );
        for bad in [0.5, 0.0, -2.0, 101.0, f64::NAN, f64::INFINITY] {
            assert!(Backoff::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Backoff::new(1.5).unwrap().factor(), 1.5);
    }

    #[test]
    fn restart_actions_parse() {
        assert_eq!(RestartAction::parse("none").unwrap(), RestartAction::None);
        assert_eq!(
            RestartAction::parse("restart").unwrap(),
            RestartAction::Restart
        );
        assert_eq!(
            RestartAction::parse("restart_then_failover").unwrap(),
            RestartAction::RestartThenFailover
        );
        assert!(RestartAction::parse("reboot").is_err());
    }
}
