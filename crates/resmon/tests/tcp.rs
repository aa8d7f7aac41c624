//! The optional TCP listener: loopback only here, every request needs a
//! bearer token, and a token carries only its rights.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);
const READ: &str = "read-only-token-0123456789";
const OPS: &str = "operations-token-0123456789";

fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_on(s, method, path, &auth)
}

/// `[api]` with the TCP listener on `port` and a query-only token.
fn tcp_with_reader(port: u16) -> String {
    format!(
        "\n[api]\ntcp = \"127.0.0.1:{port}\"\n\n[[api.token]]\nname = \"reader\"\ntoken = \"{READ}\"\nrights = [\"query\"]\n"
    )
}

#[test]
fn tokens_carry_their_rights_over_tcp() {
    let port = free_port();
    let d = Daemon::start_with(
        &format!(
            r#"{}
[[api.token]]
name = "ops"
token = "{OPS}"
rights = ["query", "control", "terminate"]

[[resource]]
name = "svc"
type = "process"
command = "sleep 1000"
"#,
            tcp_with_reader(port)
        ),
        "",
    );
    d.wait_state("svc", "online", LONG);
    let (code, answer) = http(port, "GET", "/v1/resources", None);
    assert_eq!(code, 401, "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    assert_eq!(
        http(port, "GET", "/v1/resources", Some("wrong-token-0123456789")).0,
        401
    );
    let (code, answer) = http(port, "GET", "/v1/resources", Some(READ));
    assert_eq!(code, 200);
    assert!(answer.contains("\"svc\""));
    let (code, answer) = http(port, "POST", "/v1/resources/svc/offline", Some(READ));
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer.contains("token \\\"reader\\\" does not carry the control right"),
        "{answer}"
    );
    assert_eq!(d.state("svc"), "online", "a denied request changes nothing");
    let (code, _) = http(
        port,
        "POST",
        "/v1/resources/svc/offline?wait=true",
        Some(OPS),
    );
    assert_eq!(code, 200);
    assert_eq!(d.state("svc"), "offline");
}

#[test]
fn tcp_config_mistakes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[api]\ntcp = true\n", "no [[api.token]] is configured"),
        (
            "[api]\ntcp = true\n[[api.token]]\nname = \"x\"\ntoken = \"short\"\nrights = [\"query\"]\n",
            "at least 16 characters",
        ),
        (
            "[api]\ntcp = \"somewhere\"\n[[api.token]]\nname = \"x\"\ntoken = \"0123456789abcdef\"\nrights = [\"all\"]\n",
            "is not an address",
        ),
        (
            "[api]\ntcp = true\n[[api.token]]\nname = \"x\"\ntoken = \"0123456789abcdef\"\nrights = [\"all\"]\n",
            "rights: \"all\" is not one of",
        ),
    ];
    for (text, needle) in cases {
        let file = write(dir.path(), "c.toml", text);
        let err = refused("check", &file, 2);
        assert!(
            err.contains(needle),
            "{needle:?} not in {err} (config: {text})"
        );
    }
}

#[test]
fn health_and_readiness_need_no_token_and_say_when_the_monitor_stops() {
    let port = free_port();
    let work = tempfile::tempdir().unwrap();
    let trapped = work.path().join("trapped");
    let mut d = Daemon::start_with(
        &format!(
            r#"{}
[[resource]]
name = "stubborn"
type = "process"
command = ["sh", "-c", "trap '' TERM; touch {}; exec sleep 1000"]
pending_timeout = "600s"
"#,
            tcp_with_reader(port),
            trapped.display()
        ),
        "",
    );
    d.wait_state("stubborn", "online", LONG);
    wait_for("the service to ignore SIGTERM", LONG, || trapped.exists());
    // No token, and no right: still answered.
    let (code, body) = http(port, "GET", "/healthz", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("{\"status\":\"ok\"}"), "{body}");
    let (code, body) = http(port, "GET", "/readyz", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("{\"status\":\"ready\"}"), "{body}");
    // Everything else still wants a token.
    assert_eq!(http(port, "GET", "/v1/resources", None).0, 401);
    // Stopping: the service ignores SIGTERM, so the stop takes a while.
    // Alive, not ready.
    signal(d.pid(), libc_sig::TERM);
    wait_for("readyz to say the monitor is stopping", LONG, || {
        let (code, body) = http(port, "GET", "/readyz", None);
        code == 503 && body.contains("the monitor is stopping")
    });
    let (code, body) = http(port, "GET", "/healthz", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("{\"status\":\"stopping\"}"), "{body}");
    // A second signal terminates it at once.
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}
