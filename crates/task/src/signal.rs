//! Signal names, both ways: what an operator writes in a config
//! (`"SIGTERM"`, `"term"`, `"15"`) and what a death report says
//! (`killed by SIGSEGV`). The names are nix's, so every signal the
//! platform has is known, and none is spelled twice.

use nix::sys::signal::Signal as Named;
use rustix::process::Signal;
use std::str::FromStr;

/// Why a signal could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("{0} is not a signal number")]
    Number(i32),
    #[error("unknown signal {0:?}: use a name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\", \"SIGHUP\", or a number")]
    Name(String),
    #[error("{0} cannot be sent to a process")]
    NotSendable(&'static str),
}

/// Parses a signal by name, with or without `SIG`, in any case, or by
/// number: `"SIGTERM"`, `"term"`, `"15"`.
pub fn parse_signal(text: &str) -> Result<Signal, SignalError> {
    let t = text.trim();
    let named = match t.parse::<i32>() {
        Ok(n) => Named::try_from(n).map_err(|_| SignalError::Number(n)),
        Err(_) => {
            let upper = t.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            Named::from_str(&full).map_err(|_| SignalError::Name(t.to_owned()))
        }
    }?;
    Signal::from_named_raw(named as i32).ok_or(SignalError::NotSendable(named.as_str()))
}

/// The name of signal number `sig` (`SIGSEGV`), or `signal N` for a
/// number the platform does not name (a real-time signal).
pub fn signal_name(sig: i32) -> String {
    Named::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_in_any_form_or_by_number() {
        for (text, want) in [
            ("SIGTERM", Signal::TERM),
            ("TERM", Signal::TERM),
            ("term", Signal::TERM),
            (" sigint ", Signal::INT),
            ("15", Signal::TERM),
            ("SIGUSR2", Signal::USR2),
            ("SIGPWR", Signal::POWER),
            ("9", Signal::KILL),
        ] {
            assert_eq!(parse_signal(text), Ok(want), "{text}");
        }
        for bad in ["", "SIGNOPE", "0", "65", "-1", "TERM!"] {
            let e = parse_signal(bad).unwrap_err().to_string();
            assert!(e.contains("signal"), "{bad}: {e}");
        }
    }

    #[test]
    fn signals_are_named_or_numbered() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(34), "signal 34");
        assert_eq!(signal_name(0), "signal 0");
    }
}
