//! The parameters of a `process` resource, parsed and checked before anything starts.

use resmon_contract::duration_value;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `command` is a string split like a shell would (no shell runs), or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, expecting = "a command line: a string, or a list of strings")]
enum CommandLine {
    Text(String),
    Argv(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    command: CommandLine,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    working_directory: Option<PathBuf>,
    user: Option<String>,
    stop_signal: Option<String>,
    stop_command: Option<CommandLine>,
    reload_signal: Option<String>,
    reload_command: Option<CommandLine>,
    probe: Option<RawProbe>,
    readiness: Option<RawProbe>,
    startup: Option<RawProbe>,
    stdout: Option<String>,
    stderr: Option<String>,
    notify: Option<bool>,
    watchdog_interval: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    address: Option<String>,
    command: Option<CommandLine>,
    timeout: Option<String>,
    interval: Option<String>,
    expect_status: Option<u16>,
    tls_verify: Option<bool>,
    ca_file: Option<PathBuf>,
    deadline: Option<String>,
}

/// A health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Runs a command; exit code 0 means healthy.
    Exec(Vec<String>),
    /// Connects to `host:port`.
    Tcp(String),
    /// GETs a URL; a 2xx/3xx answer (or `expect_status`) means healthy.
    Http {
        url: String,
        expect: Option<u16>,
        tls: Tls,
    },
}

/// How an `https://` probe checks the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// `false`: any certificate is taken (a self-signed host).
    pub verify: bool,
    /// Trusted roots (PEM) instead of the bundled Mozilla ones.
    pub roots: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub timeout: Duration,
    /// For readiness and startup: the pause between attempts.
    pub interval: Duration,
    /// For startup: how long `online` waits for the probe to pass (`None`:
    /// as long as `pending_timeout` allows).
    pub deadline: Option<Duration>,
}

/// Where a stream of the process goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// As the resource's `log` setting says (the default).
    Log,
    Inherit,
    Null,
    File(PathBuf),
}

/// The checked parameters of a `process` resource.
#[derive(Clone, Debug)]
pub struct Params {
    pub argv: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub working_directory: Option<PathBuf>,
    /// (uid, gid) to run as.
    pub user: Option<(u32, u32)>,
    pub stop_signal: rustix::process::Signal,
    /// Runs first when the resource goes offline, as the service runs
    /// (its user, environment, directory, output, scope); then
    /// `stop_signal` is sent.
    pub stop_command: Option<Vec<String>>,
    /// What `resmon reload-resource` sends the main process when there is
    /// no `reload_command`.
    pub reload_signal: Option<rustix::process::Signal>,
    /// What `resmon reload-resource` runs, as the service runs.
    pub reload_command: Option<Vec<String>>,
    pub probe: Option<Probe>,
    /// Checked all along while online: the monitor's thresholds turn its
    /// answers into ready or not ready.
    pub readiness: Option<Probe>,
    /// `online` waits until it passes once.
    pub startup: Option<Probe>,
    pub stdout: Stream,
    pub stderr: Stream,
    /// The service speaks systemd's notify protocol: it gets a
    /// `NOTIFY_SOCKET`, and `online` completes at its `READY=1`.
    pub notify: bool,
    /// With `notify`: a `WATCHDOG=1` is due this often, or `looks_alive`
    /// fails. The service gets it as `WATCHDOG_USEC`.
    pub watchdog_interval: Option<Duration>,
}

pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_STARTUP_INTERVAL: Duration = Duration::from_millis(100);

impl Params {
    /// Parses and checks everything; every problem is one message naming its field.
    pub fn parse(value: &serde_json::Value) -> Result<Params, Vec<String>> {
        let also_known: Vec<&str> = resmon_contract::table::monitor_keys().collect();
        let (raw, mut errors) =
            resmon_contract::table::parse_table::<RawParams>(value, &also_known);
        let Some(raw) = raw else {
            return Err(errors);
        };
        let argv = program_argv(&raw.command, "command", &mut errors).unwrap_or_default();
        let mut hook =
            |c: Option<&CommandLine>, key| c.and_then(|c| program_argv(c, key, &mut errors));
        let stop_command = hook(raw.stop_command.as_ref(), "stop_command");
        let reload_command = hook(raw.reload_command.as_ref(), "reload_command");
        let mut environment = Vec::new();
        for (k, v) in raw.environment {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                errors.push(format!("environment: {k:?} is not a valid variable name"));
            } else if k.len() + v.len() + 2 > resmon_task::MAX_ARG_STRLEN {
                // What execve takes per variable, with "=" and NUL.
                errors.push(format!(
                    "environment: {k} is {} bytes long; the kernel takes at most {} bytes per variable",
                    k.len() + v.len() + 2,
                    resmon_task::MAX_ARG_STRLEN
                ));
            } else {
                environment.push((k, v));
            }
        }
        if let Some(dir) = &raw.working_directory {
            if !dir.is_dir() {
                errors.push(format!(
                    "working_directory: {} is not a directory",
                    dir.display()
                ));
            }
        }
        let user = match &raw.user {
            None => None,
            Some(name) => match resolve_user(name) {
                Ok(u) => Some(u),
                Err(e) => {
                    errors.push(format!("user: {e}"));
                    None
                }
            },
        };
        let stop_signal = signal_param(raw.stop_signal.as_deref(), "stop_signal", &mut errors)
            .unwrap_or(rustix::process::Signal::TERM);
        let reload_signal =
            signal_param(raw.reload_signal.as_deref(), "reload_signal", &mut errors);
        let probe = raw
            .probe
            .as_ref()
            .and_then(|p| parse_probe(p, "probe", &mut errors));
        let readiness = raw
            .readiness
            .as_ref()
            .and_then(|p| parse_probe(p, "readiness", &mut errors));
        let startup = raw
            .startup
            .as_ref()
            .and_then(|p| parse_probe(p, "startup", &mut errors));
        let stdout = parse_stream(raw.stdout.as_deref(), "stdout", &mut errors);
        let stderr = parse_stream(raw.stderr.as_deref(), "stderr", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let notify = raw.notify.unwrap_or(false);
        let watchdog_interval = raw.watchdog_interval.as_deref().and_then(|w| {
            duration_value("watchdog_interval", Some(w), false)
                .map_err(|e| errors.push(e.to_string()))
                .ok()
        });
        if watchdog_interval.is_some() && !notify {
            errors.push(
                "watchdog_interval: needs notify = true (the pings come through the notify socket)"
                    .into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Params {
            notify,
            watchdog_interval,
            argv,
            environment,
            working_directory: raw.working_directory,
            user,
            stop_signal,
            stop_command,
            reload_signal,
            reload_command,
            probe,
            readiness,
            startup,
            stdout,
            stderr,
        })
    }
}

/// A command line as `command` takes it (a list, or a string split like a
/// shell would), for other parts of a config that run a program (e.g. an
/// alert hook): its argv, or what is wrong with it, naming `field`. The
/// program must exist.
pub fn command_of(value: &serde_json::Value, field: &str) -> Result<Vec<String>, String> {
    let c: CommandLine = serde_json::from_value(value.clone())
        .map_err(|_| format!("{field}: must be a list of strings or a command line string"))?;
    let mut errors = Vec::new();
    program_argv(&c, field, &mut errors).ok_or_else(|| errors.join("; "))
}

/// A command line that must name a program that can be run, as `command`
/// does; `None` with its problem added to `errors`.
fn program_argv(c: &CommandLine, field: &str, errors: &mut Vec<String>) -> Option<Vec<String>> {
    let argv = command_argv(c, field).map_err(|e| errors.push(e)).ok()?;
    if find_program(&argv[0]).is_none() {
        errors.push(format!("{field}: {}", why_not_runnable(&argv[0])));
        return None;
    }
    Some(argv)
}

/// A signal given by name or number; `None` when not given, or with its
/// problem added to `errors`.
fn signal_param(
    v: Option<&str>,
    field: &str,
    errors: &mut Vec<String>,
) -> Option<rustix::process::Signal> {
    resmon_task::parse_signal(v?)
        .map_err(|e| errors.push(format!("{field}: {e}")))
        .ok()
}

fn command_argv(c: &CommandLine, field: &str) -> Result<Vec<String>, String> {
    let argv = match c {
        CommandLine::Argv(v) => v.clone(),
        CommandLine::Text(t) => {
            shlex::split(t).ok_or_else(|| format!("{field}: unbalanced quotes in {t:?}"))?
        }
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(format!("{field}: is empty"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(format!("{field}: contains a NUL byte"));
    }
    Ok(argv)
}

/// Resolves a program as `execvp` would: a path as it is, a bare name through `PATH`.
/// Why `prog` cannot be run, for a program [`find_program`] did not find:
/// missing, a directory, or a file without execute permission.
fn why_not_runnable(prog: &str) -> String {
    let why = |p: &Path| -> Option<String> {
        let meta = std::fs::metadata(p).ok()?;
        Some(if meta.is_dir() {
            format!("{} is a directory, not a program", p.display())
        } else {
            use std::os::unix::fs::PermissionsExt;
            format!(
                "{} exists but is not executable (mode {:04o}): chmod +x it, or name the interpreter first",
                p.display(),
                meta.permissions().mode() & 0o7777
            )
        })
    };
    if prog.contains('/') {
        return why(Path::new(prog)).unwrap_or_else(|| format!("program {prog:?} not found"));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .find_map(|d| why(&d.join(prog)))
        .unwrap_or_else(|| format!("program {prog:?} not found in PATH"))
}

pub fn find_program(prog: &str) -> Option<PathBuf> {
    let is_exec =
        |p: &Path| p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| is_exec(p))
}

/// The (uid, gid) of a user name or uid, which the monitor must be able to
/// run as (it runs as root, or as that user).
pub fn resolve_user(name: &str) -> Result<(u32, u32), String> {
    let user = if let Ok(uid) = name.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(name)
    }
    .map_err(|e| format!("looking up {name:?}: {e}"))?
    .ok_or_else(|| format!("no such user {name:?}"))?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let me = rustix::process::geteuid().as_raw();
    if me != 0 && me != uid {
        return Err(format!(
            "running as {name:?} needs the monitor to run as root (it runs as uid {me})"
        ));
    }
    Ok((uid, gid))
}

/// A CA file: PEM with at least one certificate.
fn read_roots(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = ureq::tls::parse_pem(&pem)
        .filter(|i| matches!(i, Ok(ureq::tls::PemItem::Certificate(_))))
        .count();
    if certs == 0 {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(pem)
}

fn parse_probe(p: &RawProbe, field: &str, errors: &mut Vec<String>) -> Option<Probe> {
    let mut dur = |v: &Option<String>, name: &str, default: Duration| match v {
        None => Some(default),
        Some(t) => duration_value(&format!("{field} > {name}"), Some(t), name != "timeout")
            .map_err(|e| errors.push(e.to_string()))
            .ok(),
    };
    let timeout = dur(&p.timeout, "timeout", DEFAULT_PROBE_TIMEOUT)?;
    let default_interval = if field == "startup" {
        DEFAULT_STARTUP_INTERVAL
    } else {
        DEFAULT_READINESS_INTERVAL
    };
    let interval = dur(&p.interval, "interval", default_interval)?;
    let deadline = match (&p.deadline, field) {
        (None, _) => None,
        (Some(d), "startup") => Some(
            duration_value("startup > deadline", Some(d), false)
                .map_err(|e| errors.push(e.to_string()))
                .ok()?,
        ),
        (Some(_), _) => {
            errors.push(format!(
                "{field} > deadline: only a startup probe has a deadline"
            ));
            return None;
        }
    };
    let kind = match p.kind.as_str() {
        "http" => match &p.url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let https = url.starts_with("https://");
                if !https && (p.tls_verify.is_some() || p.ca_file.is_some()) {
                    errors.push(format!(
                        "{field}: tls_verify and ca_file are for https:// URLs only"
                    ));
                    return None;
                }
                let roots = match &p.ca_file {
                    None => None,
                    Some(path) => match read_roots(path) {
                        Ok(pem) => Some(pem),
                        Err(e) => {
                            errors.push(format!("{field} > ca_file: {e}"));
                            return None;
                        }
                    },
                };
                ProbeKind::Http {
                    url: url.clone(),
                    expect: p.expect_status,
                    tls: Tls {
                        verify: p.tls_verify.unwrap_or(true),
                        roots,
                    },
                }
            }
            Some(url) => {
                errors.push(format!(
                    "{field} > url: {url:?} must start with http:// or https://"
                ));
                return None;
            }
            None => {
                errors.push(format!(
                    "{field}: type \"http\" needs url = \"http://HOST:PORT/PATH\""
                ));
                return None;
            }
        },
        "tcp" => match &p.address {
            Some(a)
                if a.rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) =>
            {
                ProbeKind::Tcp(a.clone())
            }
            Some(a) => {
                errors.push(format!("{field} > address: {a:?} is not HOST:PORT"));
                return None;
            }
            None => {
                errors.push(format!(
                    "{field}: type \"tcp\" needs address = \"HOST:PORT\""
                ));
                return None;
            }
        },
        "exec" => match &p.command {
            Some(c) => match command_argv(c, &format!("{field} > command")) {
                Ok(argv) => {
                    if find_program(&argv[0]).is_none() {
                        errors.push(format!(
                            "{field} > command: program {:?} not found",
                            argv[0]
                        ));
                        return None;
                    }
                    ProbeKind::Exec(argv)
                }
                Err(e) => {
                    errors.push(e);
                    return None;
                }
            },
            None => {
                errors.push(format!("{field}: type \"exec\" needs command = [...]"));
                return None;
            }
        },
        other => {
            errors.push(format!(
                "{field} > type: unknown probe type {other:?}: use \"exec\", \"tcp\" or \"http\""
            ));
            return None;
        }
    };
    Some(Probe {
        kind,
        timeout,
        interval,
        deadline,
    })
}

fn parse_stream(v: Option<&str>, field: &str, errors: &mut Vec<String>) -> Stream {
    match v {
        None => Stream::Log,
        Some("inherit") => Stream::Inherit,
        Some("null") => Stream::Null,
        Some(path) if path.starts_with('/') => Stream::File(PathBuf::from(path)),
        Some(other) => {
            errors.push(format!(
                "{field}: {other:?}: use \"inherit\", \"null\" or an absolute file path"
            ));
            Stream::Inherit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_string_command_is_split_without_a_shell() {
        let p = Params::parse(&json!({"command": "sleep '10'"})).unwrap();
        assert_eq!(p.argv, ["sleep", "10"]);
        assert_eq!(p.stop_signal, rustix::process::Signal::TERM);
        assert_eq!(p.stdout, Stream::Log);
    }

    #[test]
    fn probes_parse_with_defaults() {
        let p = Params::parse(&json!({
            "command": ["sleep", "1"],
            "probe": {"type": "http", "url": "http://127.0.0.1:1/", "timeout": "1s"},
            "readiness": {"type": "tcp", "address": "127.0.0.1:1"},
            "stop_signal": "SIGINT",
        }))
        .unwrap();
        assert_eq!(p.probe.unwrap().timeout, Duration::from_secs(1));
        let r = p.readiness.unwrap();
        assert_eq!(r.kind, ProbeKind::Tcp("127.0.0.1:1".into()));
        assert_eq!(r.timeout, DEFAULT_PROBE_TIMEOUT);
        assert_eq!(p.stop_signal, rustix::process::Signal::INT);
    }

    #[test]
    fn a_startup_probe_has_a_deadline_and_the_others_none() {
        let p = Params::parse(&json!({
            "command": "sleep 1",
            "startup": {"type": "tcp", "address": "127.0.0.1:1", "deadline": "90s"},
            "readiness": {"type": "tcp", "address": "127.0.0.1:1"},
        }))
        .unwrap();
        let s = p.startup.unwrap();
        assert_eq!(s.deadline, Some(Duration::from_secs(90)));
        assert_eq!(s.interval, DEFAULT_STARTUP_INTERVAL);
        assert_eq!(p.readiness.unwrap().interval, DEFAULT_READINESS_INTERVAL);
        let e = Params::parse(&json!({
            "command": "sleep 1",
            "startup": {"type": "tcp", "address": "127.0.0.1:1", "deadline": "0s"},
            "readiness": {"type": "tcp", "address": "127.0.0.1:1", "deadline": "5s"},
        }))
        .unwrap_err();
        assert_eq!(
            e,
            [
                "readiness > deadline: only a startup probe has a deadline",
                "startup > deadline: must be more than zero"
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = Params::parse(&json!({
            "command": "no-such-program-xyz --flag",
            "working_directory": "/no/such/dir",
            "stop_signal": "SIGFOO",
            "probe": {"type": "smoke"},
            "readiness": {"type": "http", "url": "ftp://x"},
            "stdout": "relative.log",
            "user": "no-such-user-xyz",
        }))
        .unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "command: program \"no-such-program-xyz\" not found in PATH",
            "working_directory: /no/such/dir",
            "stop_signal: unknown signal",
            "probe > type: unknown probe type \"smoke\"",
            "readiness > url",
            "stdout: \"relative.log\"",
            "user: no such user",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 7, "{all}");
    }

    #[test]
    fn stop_and_reload_hooks_parse_like_command() {
        let p = Params::parse(&json!({"command": "sleep 1"})).unwrap();
        assert_eq!(
            (p.stop_command, p.reload_command, p.reload_signal),
            (None, None, None)
        );
        let p = Params::parse(&json!({
            "command": "sleep 1",
            "stop_command": "sh -c 'echo bye'",
            "reload_command": ["kill", "-HUP", "1"],
            "reload_signal": "hup",
        }))
        .unwrap();
        assert_eq!(p.stop_command.unwrap(), ["sh", "-c", "echo bye"]);
        assert_eq!(p.reload_command.unwrap(), ["kill", "-HUP", "1"]);
        assert_eq!(p.reload_signal, Some(rustix::process::Signal::HUP));
        let p = Params::parse(&json!({"command": "sleep 1", "reload_signal": "10"})).unwrap();
        assert_eq!(p.reload_signal, Some(rustix::process::Signal::USR1));
    }

    #[test]
    fn every_bad_hook_is_named_with_its_key() {
        for (key, value, want) in [
            ("stop_command", json!(""), "stop_command: is empty"),
            ("stop_command", json!([]), "stop_command: is empty"),
            (
                "stop_command",
                json!("no-such-program-xyz now"),
                "stop_command: program \"no-such-program-xyz\" not found in PATH",
            ),
            (
                "stop_command",
                json!("sh -c 'x"),
                "stop_command: unbalanced quotes",
            ),
            ("stop_command", json!(5), "stop_command: "),
            (
                "reload_command",
                json!(["sh", "a\u{0}b"]),
                "reload_command: contains a NUL byte",
            ),
            (
                "reload_command",
                json!(["/no/such/prog"]),
                "reload_command: program \"/no/such/prog\" not found",
            ),
            ("reload_command", json!({"x": 1}), "reload_command: "),
            (
                "reload_signal",
                json!("SIGFOO"),
                "reload_signal: unknown signal \"SIGFOO\"",
            ),
            (
                "reload_signal",
                json!("0"),
                "reload_signal: 0 is not a signal number",
            ),
            ("reload_signal", json!(1), "reload_signal: "),
        ] {
            let e = Params::parse(&json!({"command": "sleep 1", key: value})).unwrap_err();
            assert_eq!(e.len(), 1, "{key} = {value}: {e:?}");
            assert!(e[0].starts_with(want), "{key} = {value}: {e:?}");
        }
    }

    #[test]
    fn an_environment_variable_exec_cannot_take_is_refused() {
        let e = Params::parse(&json!({
            "command": "sleep 1",
            "environment": {"BIG": "x".repeat(200_000)},
        }))
        .unwrap_err();
        assert!(
            e[0].contains("environment: BIG is 200005 bytes long; the kernel takes at most 131072"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_missing_command_are_refused() {
        let e = Params::parse(&json!({"comand": "sleep 1"})).unwrap_err();
        assert_eq!(
            e,
            [
                "comand: unknown key \"comand\"; did you mean \"command\"?",
                "command is missing"
            ]
        );
        let e = Params::parse(&json!({"command": ""})).unwrap_err();
        assert!(e[0].contains("command: is empty"), "{e:?}");
        let e = Params::parse(&json!({"command": "sleep 'x"})).unwrap_err();
        assert!(e[0].contains("unbalanced quotes"), "{e:?}");
    }

    #[test]
    fn probe_bad_durations_are_named() {
        let e = Params::parse(&json!({
            "command": "sleep 1",
            "probe": {"type": "tcp", "address": "127.0.0.1:80", "timeout": "5"},
        }))
        .unwrap_err();
        assert!(
            e[0].starts_with("probe > timeout: duration \"5\" has no unit"),
            "{e:?}"
        );
    }
}
