//! Property-based fuzzing of the two places where outside input enters the
//! monitor: the config parser and the API's request decoding. Whatever comes
//! in, the answer is a clear error, never a panic or a 5xx.

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use resmon_daemon::access::{Access, AccessConfig};
use resmon_daemon::api::{router, ApiState, Caller};
use resmon_daemon::config::Config;
use resmon_daemon::events::EventBus;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[a-z0-9 ._/-]{0,12}\"",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("\"5s\"".to_string()),
        Just("\"0\"".to_string()),
        Just("[\"a\", \"@b\", \"*\"]".to_string()),
        Just("{ type = \"tcp\", address = \"127.0.0.1:1\" }".to_string()),
        Just("[\"sleep\", \"1\"]".to_string()),
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name"),
        Just("type"),
        Just("group"),
        Just("depends_on"),
        Just("command"),
        Just("probe"),
        Just("readiness"),
        Just("looks_alive_interval"),
        Just("restart_action"),
        Just("restart_threshold"),
        Just("restart_delay"),
        Just("socket"),
        Just("cgroups"),
        Just("query"),
        Just("control"),
        Just("user"),
        Just("stop_signal"),
        Just("x"),
    ]
    .prop_map(str::to_string)
}

fn toml_doc() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("[monitor]"),
        Just("[access]"),
        Just("[defaults]"),
        Just("[[resource]]"),
        Just("[other]"),
    ];
    proptest::collection::vec(
        (
            section,
            proptest::collection::vec((toml_key(), toml_value()), 0..6),
        ),
        0..5,
    )
    .prop_map(|sections| {
        let mut s = String::new();
        for (head, kvs) in sections {
            s.push_str(head);
            s.push('\n');
            for (k, v) in kvs {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_config_parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = Config::parse(Path::new("fuzz.toml"), &text, &[]);
    }

    #[test]
    fn the_config_parser_never_panics_on_config_like_documents(doc in toml_doc()) {
        if let Err(e) = Config::parse(Path::new("fuzz.toml"), &doc, &[]) {
            // Every report names the file.
            prop_assert!(e.to_string().starts_with("fuzz.toml: "));
        }
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE)
    ]
}

fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("v1".to_string()),
        Just("resources".to_string()),
        Just("svc".to_string()),
        Just("online".to_string()),
        Just("terminate".to_string()),
        Just("control".to_string()),
        Just("types".to_string()),
        Just("events".to_string()),
        Just("calls".to_string()),
        Just("metrics".to_string()),
        "[a-zA-Z0-9%._~-]{0,10}",
    ];
    (proptest::collection::vec(seg, 0..6), "(\\?[a-z=&]{0,12})?")
        .prop_map(|(segs, q)| format!("/{}{q}", segs.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn requests_of_any_shape_get_an_answer_and_no_server_error(
        m in method(),
        p in path(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async move {
            // No driver behind the channel: requests that get that far are
            // answered 503, which is what a stopping monitor says.
            let (tx, _) = tokio::sync::mpsc::unbounded_channel();
            let (reload, _) = tokio::sync::mpsc::unbounded_channel();
            let (upgrade, _) = tokio::sync::mpsc::unbounded_channel();
            let app = router(ApiState {
                tx,
                bus: EventBus::new(),
                access: Arc::new(std::sync::RwLock::new(Arc::new(Access::new(AccessConfig::default())))),
                reload,
                cluster: None,
                problems: Arc::new(Vec::new),
                metrics: Arc::default(),
                journal: None,
                logs: None,
                upgrade,
            });
            let Ok(mut req) = Request::builder().method(m).uri(p.as_str()).body(Body::from(body)) else {
                return StatusCode::BAD_REQUEST;
            };
            req.extensions_mut().insert(ConnectInfo(Caller { uid: Some(0), pid: None, tcp: false }));
            app.oneshot(req).await.unwrap().status()
        });
        prop_assert!(
            status.is_success() || status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
}
