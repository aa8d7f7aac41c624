//! A headless Chromium of a test's own, driven over WebDriver: its
//! chromedriver runs in a process group of its own, its browsers use a
//! profile directory of their own, and dropping it kills both (a browser
//! that left the group is found by its profile).

use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fantoccini;

/// How long a wait for the page lasts.
pub const LONG: Duration = Duration::from_secs(30);

pub struct Browser {
    driver: Child,
    port: u16,
    profile: PathBuf,
}

/// Where Debian puts chromedriver, if it is installed.
pub fn chromedriver() -> Option<&'static str> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

impl Browser {
    /// Starts chromedriver; `None` when it is not installed.
    pub fn start(profile: &Path) -> Option<Browser> {
        use std::os::unix::process::CommandExt;
        let exe = chromedriver()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let driver = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        let end = Instant::now() + LONG;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Browser {
            driver,
            port,
            profile: profile.to_path_buf(),
        })
    }

    /// A new session in headless Chromium.
    pub async fn client(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1400,900",
                    format!("--user-data-dir={}", self.profile.display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless Chromium")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
        let profile = self.profile.display().to_string();
        for p in crate::all() {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&profile) {
                if let Some(pid) = rustix::process::Pid::from_raw(p.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Polls until the text of the first element matching `css` satisfies
/// `ok`, and returns it; panics with the page's source after [`LONG`].
pub async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + LONG;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
        }
        assert!(
            Instant::now() < end,
            "{css}: still {last:?} after {LONG:?}\n{}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Signs in to the dashboard with `token` (signing out first if needed).
pub async fn sign_in(c: &Client, token: &str) {
    if let Ok(b) = c.find(Locator::Css("#signout")).await {
        if b.is_displayed().await.unwrap_or(false) {
            b.click().await.expect("sign out");
        }
    }
    let field = c
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .expect("the token field");
    field.send_keys(token).await.expect("typing the token");
    c.find(Locator::Css("#login button"))
        .await
        .expect("the connect button")
        .click()
        .await
        .expect("connect");
}
