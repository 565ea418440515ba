//! Headless Chromium driven through chromedriver's WebDriver HTTP API,
//! for the dashboard's browser tests and the benchmark's page timings.
//! Needs Debian's `chromium` and `chromium-driver`; without them a caller
//! fails and says what to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, processes_matching, wait_for, Scratch};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const WINDOW: (u32, u32) = (1280, 1000);

/// The key under which WebDriver returns an element reference.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on PATH (or in /usr/bin), or a failure saying what to install.
pub fn require_chromium() -> PathBuf {
    let driver = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromedriver"))
        .find(|candidate| candidate.is_file());
    match driver {
        Some(driver) if Path::new(CHROMIUM).is_file() => driver,
        _ => panic!(
            "the dashboard browser test needs headless Chromium: install Debian's chromium and \
             chromium-driver packages (`sudo apt-get install -y chromium chromium-driver`; \
             .ci/run does it). Missing: {}",
            [
                (!Path::new(CHROMIUM).is_file()).then_some(CHROMIUM),
                driver.is_none().then_some("chromedriver"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
        ),
    }
}

/// A headless Chromium behind chromedriver, both killed on drop (also
/// when the test fails).
pub struct Browser {
    driver: Option<Child>,
    endpoint: String,
    session: Option<String>,
    http: reqwest::blocking::Client,
    /// Chromium's profile; its path marks every Chromium process of ours.
    profile: PathBuf,
    /// Where screenshots and failure dumps go.
    artifacts: PathBuf,
}

impl Browser {
    pub fn start(chromedriver: &Path, scratch: &Scratch) -> Browser {
        let port = free_port();
        let profile = scratch.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let log = scratch.join("chromedriver.log");
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that Drop can kill it and
                // everything it started at once.
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut browser = Browser {
            driver: Some(driver),
            endpoint: format!("http://127.0.0.1:{port}"),
            session: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            profile,
            artifacts: scratch.path().to_path_buf(),
        };
        wait_for("chromedriver to answer", Duration::from_secs(20), || {
            browser
                .request("GET", "/status", None)
                .ok()
                .filter(|status| status["ready"] == true)
        });
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            &format!("--user-data-dir={}", browser.profile.display()),
        ];
        let created = browser
            .request(
                "POST",
                "/session",
                Some(json!({
                    "capabilities": {
                        "alwaysMatch": {
                            "browserName": "chrome",
                            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                            "goog:loggingPrefs": { "browser": "ALL" },
                            // An alert stays open, so the test can see it.
                            "unhandledPromptBehavior": "ignore"
                        }
                    }
                })),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium: {e}\n(see {})",
                    log.display()
                )
            });
        browser.session = Some(
            created["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        );
        browser
    }

    /// One WebDriver call; the `value` of the answer, or the error.
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.endpoint);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let response = request
            .send()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let ok = response.status().is_success();
        let answer: Value = response
            .json()
            .map_err(|e| format!("{method} {path}: bad JSON: {e}"))?;
        let value = answer["value"].clone();
        if ok {
            Ok(value)
        } else {
            Err(format!(
                "{method} {path}: {}: {}",
                value["error"].as_str().unwrap_or("error"),
                value["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ))
        }
    }

    pub fn session(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let session = self.session.as_deref().expect("a session");
        self.request(method, &format!("/session/{session}{path}"), body)
    }

    pub fn goto(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn current_url(&self) -> String {
        self.session("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub fn try_exec(&self, script: &str, args: Value) -> Result<Value, String> {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.try_exec(script, args)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub fn find(&self, css: &str) -> Result<String, String> {
        let found = self.session(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element reference for {css}: {found}"))
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css).unwrap_or_else(|e| panic!("{e}"));
        self.session("POST", &format!("/element/{element}/click"), None)
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The text of an open alert, prompt or confirm, if there is one.
    pub fn alert_text(&self) -> Option<String> {
        self.session("GET", "/alert/text", None)
            .ok()
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// The page's console messages since the last call.
    pub fn console(&self) -> Vec<Value> {
        match self.session("POST", "/se/log", Some(json!({ "type": "browser" }))) {
            Ok(Value::Array(entries)) => entries,
            _ => Vec::new(),
        }
    }

    /// A PNG of the window, saved as `name` in the artifacts dir (and in
    /// $WARREN_SCREENSHOTS, if set).
    pub fn screenshot(&self, name: &str) -> (PathBuf, Vec<u8>) {
        let encoded = self
            .session("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64_decode(encoded.as_str().expect("base64 text"));
        let path = self.artifacts.join(name);
        std::fs::write(&path, &png).expect("write screenshot");
        if let Some(dir) = std::env::var_os("WARREN_SCREENSHOTS") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(Path::new(&dir).join(name), &png);
        }
        (path, png)
    }

    /// Polls `check` every 100 ms until it returns `Ok`; on timeout saves a
    /// screenshot and the page's HTML, and fails with the last `Err`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let last = match check() {
                Ok(value) => return value,
                Err(last) => last,
            };
            if Instant::now() > deadline {
                let _ = self.session("GET", "/screenshot", None).map(|shot| {
                    let png = base64_decode(shot.as_str().unwrap_or_default());
                    std::fs::write(self.artifacts.join("timeout.png"), png)
                });
                if let Ok(html) =
                    self.try_exec("return document.documentElement.outerHTML", json!([]))
                {
                    let _ = std::fs::write(
                        self.artifacts.join("timeout.html"),
                        html.as_str().unwrap_or_default(),
                    );
                }
                panic!(
                    "timed out after {within:?} waiting for {what}; last seen: {last}\n\
                     page: {}\nconsole: {:?}\n(timeout.png and timeout.html are in the kept scratch dir)",
                    self.current_url(),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Closing the session ends Chromium in an orderly way; what
            // follows kills whatever is left either way.
            let _ = self
                .http
                .delete(format!("{}/session/{session}", self.endpoint))
                .timeout(Duration::from_secs(10))
                .send();
        }
        if let Some(mut driver) = self.driver.take() {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe {
                libc::kill(-(driver.id() as i32), libc::SIGKILL);
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
        // Chromium processes that left the group: they carry our profile
        // dir on their command line.
        let marker = format!("--user-data-dir={}", self.profile.display());
        for process in processes_matching(&marker) {
            if let Some(pid) = process
                .split(':')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a Chromium this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let mut bits = 0u32;
        for (i, s) in chunk.iter().enumerate() {
            bits |= u32::from(*s) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// A real PNG of the window's size with enough in it not to be blank: a
/// blank page compresses to a few KB of few distinct bytes.
pub fn assert_png_not_blank(path: &Path, png: &[u8]) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24 && &png[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert!(
        width >= 800 && height >= 600,
        "{}: {width}x{height}",
        path.display()
    );
    let mut seen = [false; 256];
    png.iter().for_each(|&b| seen[b as usize] = true);
    let distinct = seen.iter().filter(|&&s| s).count();
    assert!(
        png.len() > 15_000 && distinct > 200,
        "{} looks blank: {} bytes, {distinct} distinct",
        path.display(),
        png.len()
    );
}

/// The console's errors since the last call (CSP violations, failed
/// requests, exceptions).
pub fn console_errors(browser: &Browser) -> Vec<String> {
    browser
        .console()
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
        .collect()
}
