//! A headless Chromium driven over WebDriver (chromedriver), for browser tests of the
//! console. Chromium comes from the system's packages, like PostgreSQL: when it is missing
//! it is installed (`apt-get install chromium chromium-driver`) once, under a lock that
//! parallel test binaries share; when it cannot be, the test fails and says why.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a page may take to show what a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium with its chromedriver; both stop when it is dropped.
pub struct Browser {
    client: Client,
    driver: Child,
}

/// The executables: `CHROMIUM_PATH` and `CHROMEDRIVER_PATH` override.
fn executables() -> (PathBuf, PathBuf) {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    (
        path("CHROMIUM_PATH", CHROMIUM),
        path("CHROMEDRIVER_PATH", CHROMEDRIVER),
    )
}

/// Installs Chromium and chromedriver from the system's packages unless they are there.
/// Once per process; across processes `flock` serialises the installs.
fn ensure_installed() -> &'static Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let (chromium, driver) = executables();
        if chromium.exists() && driver.exists() {
            return Ok(());
        }
        let script = format!(
            "test -x {chromium} -a -x {driver} || {{ apt-get update -qq && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }}",
            chromium = chromium.display(),
            driver = driver.display(),
        );
        let out = Command::new("flock")
            .args(["/tmp/tenantflow-chromium-install.lock", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run flock/apt-get to install Chromium: {e}"))?;
        if out.status.success() && chromium.exists() && driver.exists() {
            Ok(())
        } else {
            Err(format!(
                "Chromium is needed for the console's browser tests and could not be installed \
                 (`apt-get install chromium chromium-driver` as root; or set CHROMIUM_PATH \
                 and CHROMEDRIVER_PATH): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port for chromedriver")
}

impl Browser {
    /// A new headless Chromium with a fresh profile, its window `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        Self::start_with(width, height, &[]).await
    }

    /// Like [`start`](Self::start), with extra Chromium switches (e.g. `--force-dark-mode`).
    pub async fn start_with(width: u32, height: u32, switches: &[&str]) -> Self {
        if let Err(why) = ensure_installed() {
            panic!("{why}");
        }
        let (chromium, driver_path) = executables();
        let port = free_port();
        let driver = Command::new(&driver_path)
            .args([format!("--port={port}"), "--log-level=SEVERE".to_owned()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", driver_path.display()));
        let mut args = vec![
            "--headless=new".to_owned(),
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        args.extend(switches.iter().map(|s| (*s).to_owned()));
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium, "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last_error = String::new();
        // chromedriver takes a moment to listen: bounded retries of the session's creation.
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Self { client, driver },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session from chromedriver on {url}: {last_error}");
    }

    /// The WebDriver client, for what this type does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("could not open {url}: {e}"));
    }

    /// Waits (at most [`PAGE_WAIT`]) for an element matching `css`.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}` within {PAGE_WAIT:?}: {e}"))
    }

    /// Waits for `css` and clicks it.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("could not click `{css}`: {e}"));
    }

    /// Whether an element matches `css` now (no waiting).
    pub async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
            .is_empty()
    }

    /// Runs `script` (a function body that `return`s) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` (returning a boolean) until it is true, at most [`PAGE_WAIT`]; says
    /// what it waited for when it never is.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            if self.eval(script).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self.eval("return document.body.innerText").await;
                panic!("{what}: not within {PAGE_WAIT:?}; the page reads:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the page's body.
    pub async fn text(&self) -> String {
        self.eval("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every URL this document requested (itself, scripts, styles, images, fetches,
    /// sockets) that is not on `origin` (`http://127.0.0.1:1234`).
    pub async fn foreign_requests(&self, origin: &str) -> Vec<String> {
        let urls = self
            .eval(
                "return performance.getEntriesByType('navigation')
                   .concat(performance.getEntriesByType('resource')).map(e => e.name)",
            )
            .await;
        foreign(
            urls.as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            origin,
        )
    }

    /// The document's Navigation Timing entry (ms since navigation start), and when the
    /// console marked its page rendered (`tf:rendered:<page>`), if it did.
    pub async fn navigation_timing(&self) -> Value {
        self.eval(
            "const n = performance.getEntriesByType('navigation')[0];
             const r = performance.getEntriesByType('mark').find(m => m.name.startsWith('tf:rendered:'));
             return { responseEnd: n.responseEnd, domContentLoaded: n.domContentLoadedEventEnd,
                      load: n.loadEventEnd, rendered: r ? r.startTime : null,
                      transferred: n.transferSize };",
        )
        .await
    }

    /// Saves a PNG of the window to `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("no screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot's directory");
        }
        std::fs::write(path, png).expect("the screenshot written");
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver takes its Chromium down with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The URLs of `urls` that are not on `origin`, nor sockets to its host.
pub fn foreign(urls: Vec<&str>, origin: &str) -> Vec<String> {
    let socket = origin
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let same = |u: &str, o: &str| u == o || u.starts_with(&format!("{o}/"));
    urls.into_iter()
        .filter(|u| !same(u, origin) && !same(u, &socket))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::foreign;

    #[test]
    fn only_the_service_origin_is_its_own() {
        let origin = "http://127.0.0.1:8080";
        let urls = vec![
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/console/main.js",
            "ws://127.0.0.1:8080/graphql/ws",
            "http://127.0.0.1:80800/x.js",
            "http://127.0.0.1:9090/x.js",
            "https://cdn.example/react.js",
            "http://localhost:8080/",
        ];
        assert_eq!(
            foreign(urls, origin),
            [
                "http://127.0.0.1:80800/x.js",
                "http://127.0.0.1:9090/x.js",
                "https://cdn.example/react.js",
                "http://localhost:8080/",
            ]
        );
    }
}
