//! The web dashboard in a real headless Chromium, driven over WebDriver
//! (chromedriver): it loads with a token, lists the resources, shows a
//! restart without a reload, offers buttons only for the token's rights,
//! and says so when a token is wrong.

mod common;

use common::*;
use resmon_test_support::browser::fantoccini::{Client, Locator};
use resmon_test_support::browser::{sign_in, wait_text, Browser, LONG};

const READ: &str = "read-only-token-0123456789";
const OPS: &str = "operations-token-0123456789";

async fn buttons(c: &Client, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let css = format!(r#".row[data-name="{name}"] button"#);
    for b in c.find_all(Locator::Css(&css)).await.unwrap() {
        out.push(b.text().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_resources_live_and_offers_only_what_the_token_may_do() {
    let work = tempfile::tempdir().unwrap();
    let Some(browser) = Browser::start(&work.path().join("profile")) else {
        skip(
            "dashboard",
            "chromedriver is not installed (apt-get install chromium-driver)",
        );
        return;
    };
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[api]
tcp = "127.0.0.1:{port}"

[[api.token]]
name = "reader"
token = "{READ}"
rights = ["query"]

[[api.token]]
name = "ops"
token = "{OPS}"
rights = ["query", "control", "terminate"]

[[resource]]
name = "web"
type = "process"
group = "site"
command = "sleep 1000"
restart_delay = "0s"

[[resource]]
name = "worker"
type = "process"
group = "site"
depends_on = ["web"]
command = "sleep 1000"
"#
    ));
    d.wait_state("web", "online", LONG);
    d.wait_state("worker", "online", LONG);
    let c = browser.client().await;
    let url = format!("http://127.0.0.1:{port}/");
    c.goto(&url).await.unwrap();

    // A wrong token is refused, and the page says so.
    sign_in(&c, "wrong-token-0123456789").await;
    wait_text(&c, "#message", |t| t.contains("The token was refused")).await;

    // A query token: the resources and their states, no buttons.
    sign_in(&c, READ).await;
    wait_text(&c, r#".row[data-name="web"] .state"#, |t| t == "online").await;
    wait_text(&c, r#".row[data-name="worker"] .deps"#, |t| t == "web").await;
    wait_text(&c, "#who", |t| t.contains(r#"token "reader": query"#)).await;
    wait_text(&c, "#live", |t| t == "live").await;
    assert_eq!(buttons(&c, "web").await, Vec::<String>::new());
    // Nor would the monitor take the request from this token.
    let refused = c
        .execute(
            &format!(
                "return fetch('/v1/resources/web/offline', {{method: 'POST', headers: \
                 {{Authorization: 'Bearer {READ}'}}}}).then(r => r.status)"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, serde_json::json!(403));
    assert_eq!(d.state("web"), "online");

    // A crash and its restart show without a reload.
    c.execute("window.notReloaded = true; return true", vec![])
        .await
        .unwrap();
    let pid = d.pids("web")[0];
    signal(pid, libc_sig::KILL);
    wait_text(&c, r#".row[data-name="web"] .restarts"#, |t| t == "1").await;
    wait_text(&c, r#".row[data-name="web"] .state"#, |t| t == "online").await;
    wait_text(&c, "#events", |t| {
        t.contains(&format!("main process {pid}"))
    })
    .await;
    let same_page = c
        .execute("return window.notReloaded === true", vec![])
        .await;
    assert_eq!(
        same_page.unwrap(),
        serde_json::json!(true),
        "the page was reloaded"
    );

    // An operations token gets the buttons, and they work.
    sign_in(&c, OPS).await;
    wait_text(&c, "#who", |t| t.contains(r#"token "ops""#)).await;
    wait_text(&c, r#".row[data-name="web"] .state"#, |t| t == "online").await;
    assert_eq!(buttons(&c, "web").await, ["online", "offline", "terminate"]);
    // The picture of the README is this one (RESMON_DASHBOARD_PNG=docs/dashboard.png).
    let png = c.screenshot().await.unwrap();
    std::fs::write(work.path().join("dashboard.png"), &png).unwrap();
    if let Some(to) = std::env::var_os("RESMON_DASHBOARD_PNG") {
        std::fs::write(to, &png).unwrap();
    }
    c.find(Locator::Css(
        r#".row[data-name="web"] button[data-action="offline"]"#,
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(&c, r#".row[data-name="web"] .state"#, |t| t == "offline").await;
    wait_text(&c, r#".row[data-name="worker"] .state"#, |t| t == "offline").await;
    assert_eq!(d.state("web"), "offline");
    assert_eq!(d.state("worker"), "offline", "its dependent went first");

    c.close().await.unwrap();
}
