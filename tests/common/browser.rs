//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`): `chromedriver` on a free port, one browser session
//! per simulated person (each with its own profile), elements found by CSS
//! and checked by their accessible name. Plain WebDriver HTTP with `ureq`;
//! every call runs off the async runtime (the nodes under test share it).
//! Without Chromium the tests fail, saying how to install it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a page has to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

const INSTALL: &str = "the browser tests need Debian's chromium and chromium-driver: \
     apt-get install -y chromium chromium-driver (.ci/run installs them)";

/// Where a program is on the PATH, if it is.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running `chromedriver`, stopped on drop.
pub struct Driver {
    child: Child,
    wd: Wd,
    chromium: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub fn start() -> Driver {
        let driver = which("chromedriver").unwrap_or_else(|| panic!("no chromedriver: {INSTALL}"));
        let chromium = which("chromium")
            .or_else(|| which("chromium-browser"))
            .unwrap_or_else(|| panic!("no chromium: {INSTALL}"));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let d = Driver {
            child,
            wd: Wd {
                base: format!("http://127.0.0.1:{port}"),
                agent,
            },
            chromium,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(v) = d.wd.call("GET", "/status", None)
                && v["ready"] == true
            {
                return d;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new browser with an empty profile in `profile`.
    pub async fn browser(&self, profile: &Path) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900",
                         "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.display())],
                "prefs": {
                    "download.default_directory": profile.join("downloads"),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let this = self.wd.clone();
        let v = tokio::task::spawn_blocking(move || this.call("POST", "/session", Some(caps)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}; {INSTALL}"));
        let id = v["sessionId"].as_str().expect("session id").to_owned();
        let b = Browser {
            driver: self.wd.clone(),
            session: format!("/session/{id}"),
        };
        b.cmd(
            "POST",
            "/timeouts",
            json!({"script": 60000, "pageLoad": 20000}),
        )
        .await;
        b
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the driver listens: what a browser needs to send commands.
#[derive(Clone)]
struct Wd {
    base: String,
    agent: ureq::Agent,
}

impl Wd {
    /// One WebDriver command: its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if status >= 400 {
            return Err(format!(
                "{}: {}",
                v["value"]["error"], v["value"]["message"]
            ));
        }
        Ok(v["value"].clone())
    }
}

/// One browser window (a WebDriver session).
pub struct Browser {
    driver: Wd,
    session: String,
}

/// An element's WebDriver id.
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let d = self.driver.clone();
        let (m, p) = (method.to_owned(), format!("{}{path}", self.session));
        tokio::task::spawn_blocking(move || d.call(&m, &p, Some(body)))
            .await
            .unwrap()
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn refresh(&self) {
        self.cmd("POST", "/refresh", json!({})).await;
    }

    /// Elements matching a CSS selector.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The element matching `css` whose accessible name is `name` (waits
    /// for it): how a user of a screen reader would find it.
    pub async fn named(&self, css: &str, name: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for e in self.all(css).await {
                let label = self
                    .try_cmd("GET", &format!("/element/{}/computedlabel", e.0), json!({}))
                    .await
                    .unwrap_or_else(Value::String);
                if label.as_str().map(str::trim) == Some(name) && self.displayed(&e).await {
                    return e;
                }
                seen.push(label);
            }
            if Instant::now() >= deadline {
                let url = self.try_cmd("GET", "/url", json!({})).await;
                let src = self.try_cmd("GET", "/source", json!({})).await;
                panic!(
                    "no visible {css} named {name:?} on the page; there are {seen:?}; at {url:?}: {src:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn displayed(&self, e: &Element) -> bool {
        self.try_cmd("GET", &format!("/element/{}/displayed", e.0), json!({}))
            .await
            .map(|v| v == true)
            .unwrap_or(false)
    }

    /// Presses keys as a keyboard would, on whatever has the focus
    /// (WebDriver actions): `\u{E004}` is Tab, `\u{E007}` Enter; Shift
    /// (`\u{E008}`) is held down until it comes again (or the end).
    pub async fn keys(&self, text: &str) {
        let mut actions = Vec::new();
        let mut shift = false;
        for c in text.chars() {
            let key = c.to_string();
            if c == '\u{E008}' {
                let kind = if shift { "keyUp" } else { "keyDown" };
                actions.push(json!({"type": kind, "value": key}));
                shift = !shift;
                continue;
            }
            actions.push(json!({"type": "keyDown", "value": key}));
            actions.push(json!({"type": "keyUp", "value": key}));
        }
        if shift {
            actions.push(json!({"type": "keyUp", "value": "\u{E008}"}));
        }
        self.cmd(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// The accessible name of the element that has the focus ("" for none).
    pub async fn focused(&self) -> String {
        let Ok(v) = self.try_cmd("GET", "/element/active", json!({})).await else {
            return String::new();
        };
        let Some(id) = v[ELEMENT_KEY].as_str() else {
            return String::new();
        };
        self.try_cmd("GET", &format!("/element/{id}/computedlabel"), json!({}))
            .await
            .ok()
            .and_then(|l| l.as_str().map(|s| s.trim().to_owned()))
            .unwrap_or_default()
    }

    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), json!({}))
            .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), json!({}))
            .await;
    }

    /// Types `text` into an element (or, for a file input, picks that path).
    /// ChromeDriver types only characters of the Basic Multilingual Plane
    /// (148 refuses the rest: "ChromeDriver only supports characters in
    /// the BMP"); a character beyond it (an emoji) is entered the way an
    /// input method or a paste enters it, as an `insertText` edit of the
    /// focused field, which fires the same `input` events.
    pub async fn type_into(&self, e: &Element, text: &str) {
        let mut run = String::new();
        for c in text.chars() {
            if (c as u32) < 0x10000 {
                run.push(c);
                continue;
            }
            self.send_keys(e, &std::mem::take(&mut run)).await;
            self.execute(
                "arguments[0].focus(); \
                 if (!document.execCommand('insertText', false, arguments[1])) \
                 throw new Error('insertText refused');",
                vec![json!({ ELEMENT_KEY: e.0 }), json!(c.to_string())],
            )
            .await;
        }
        self.send_keys(e, &run).await;
    }

    async fn send_keys(&self, e: &Element, text: &str) {
        if text.is_empty() {
            return;
        }
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            json!({ "text": text }),
        )
        .await;
    }

    /// A DOM property of an element (`download`, `value`, ...).
    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.cmd(
            "GET",
            &format!("/element/{}/property/{name}", e.0),
            json!({}),
        )
        .await
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/text", e.0), json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs an async function body; its last argument is the callback.
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until the text of the element matching `css` satisfies `pred`.
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut last = String::new();
            for e in self.all(css).await {
                if let Ok(v) = self
                    .try_cmd("GET", &format!("/element/{}/text", e.0), json!({}))
                    .await
                {
                    last = v.as_str().unwrap_or_default().to_owned();
                    if pred(&last) {
                        return last;
                    }
                }
            }
            if Instant::now() >= deadline {
                let page = self
                    .try_cmd(
                        "POST",
                        "/execute/sync",
                        json!({"script": "return ['status', 'errors', 'log'].map((id) => document.getElementById(id).innerText).join(' | ')", "args": []}),
                    )
                    .await;
                panic!("waited for {what} in {css}; it shows: {last:?}; the page: {page:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", json!({})).await;
        let png = base64_std(v.as_str().unwrap_or_default());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    pub async fn quit(self) {
        let _ = self.try_cmd("DELETE", "", json!({})).await;
    }
}

/// Standard base64 (WebDriver's screenshots), decoded.
fn base64_std(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

// ---- the page, driven by its accessible names ----

/// The page's identity for `user`: the fixture key imported from its
/// `socp client` key file, then Connect.
pub async fn sign_in(b: &Browser, url: &str, user: &str) {
    b.goto(url).await;
    let name = b.named("input", "User name").await;
    b.type_into(&name, user).await;
    let file = b.named("input[type=file]", "Import key file").await;
    let pem = std::fs::canonicalize(super::clientproc::fixture_pem(user)).unwrap();
    b.type_into(&file, &pem.display().to_string()).await;
    b.click(&b.named("button", "Connect").await).await;
    b.wait_text("#status", "connected", |t| t.starts_with("connected to"))
        .await;
}

/// Sends `text` to `to` (a user or a group) from the page.
pub async fn send(b: &Browser, to: &str, text: &str) {
    let field = b.named("input", "To").await;
    b.clear(&field).await;
    b.type_into(&field, to).await;
    b.type_into(&b.named("input", "Message").await, text).await;
    b.click(&b.named("button", "Send").await).await;
}

/// Waits for a line in the "Messages" region containing all of `parts`.
pub async fn expect_message(b: &Browser, parts: &[&str]) -> String {
    let what = parts.join(" + ");
    b.wait_text("#log li", &what, |t| parts.iter().all(|p| t.contains(p)))
        .await
}

/// Saves a screenshot named `name`.png: into `$SOCP_SCREENSHOTS` (relative
/// to the repository; `SOCP_SCREENSHOTS=docs/screenshots` refreshes the
/// README's) when set, else under target/ (a test run never changes
/// tracked files).
pub async fn screenshot(b: &Browser, name: &str) {
    let dir = match std::env::var_os("SOCP_SCREENSHOTS") {
        Some(d) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(d),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
    };
    b.screenshot(&dir.join(format!("{name}.png"))).await;
}

/// The page of a node.
pub fn page(node: &super::cluster::TestNode) -> String {
    format!("http://{}/", node.addr())
}

/// A fresh browser profile directory `root/name`.
pub fn profile(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Waits for the first finished download in the profile's downloads
/// folder: its name (as the browser saved it) and bytes.
pub async fn downloaded(profile: &Path) -> (String, Vec<u8>) {
    let dir = profile.join("downloads");
    let deadline = Instant::now() + WAIT;
    loop {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let [name] = &names[..]
            && !name.ends_with(".crdownload")
            && let Ok(data) = std::fs::read(dir.join(name))
        {
            return (name.clone(), data);
        }
        assert!(
            Instant::now() < deadline,
            "no download in {}: {names:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
