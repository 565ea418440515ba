//! Test helpers of the forge crate: a fake forge (a small HTTP server on
//! loopback that records every request and answers as a test scripts it),
//! fixtures, and a log capture. Shared by the crate's test files; nothing
//! here reaches beyond 127.0.0.1.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request the fake forge received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    pub fn state(&self) -> String {
        self.json()["state"].as_str().expect("a state").to_string()
    }
}

/// How the fake forge answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Held this long before answering; `None` with `hang`: never.
    pub delay: Duration,
    pub hang: bool,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            hang: false,
            body: "{}".into(),
            headers: Vec::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn never() -> Answer {
        Answer {
            hang: true,
            ..Answer::status(200)
        }
    }

    pub fn with_body(mut self, body: &str) -> Answer {
        self.body = body.into();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

type Script = Arc<dyn Fn(&Recorded, usize) -> Answer + Send + Sync>;

struct ForgeState {
    script: Script,
    seen: Mutex<Vec<Recorded>>,
    /// The number of requests received, for waiting on.
    count: tokio::sync::watch::Sender<usize>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Requests being answered per path, and whether two ever overlapped.
    in_flight_per_path: Mutex<HashMap<String, usize>>,
    overlapped: Mutex<Vec<String>>,
}

/// An HTTP server on 127.0.0.1 standing in for a forge's API. It lives as
/// long as the test's runtime.
pub struct FakeForge {
    pub url: String,
    state: Arc<ForgeState>,
}

impl FakeForge {
    /// Answers `201` to everything.
    pub async fn start() -> FakeForge {
        FakeForge::scripted(|_, _| Answer::status(201)).await
    }

    /// Answers each request as `script` says, given the request and how
    /// many came before it.
    pub async fn scripted(
        script: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static,
    ) -> FakeForge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(ForgeState {
            script: Arc::new(script),
            seen: Mutex::default(),
            count: tokio::sync::watch::Sender::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            in_flight_per_path: Mutex::default(),
            overlapped: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(record_and_answer)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeForge { url, state }
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// The requests whose path contains `part`.
    pub fn requests_to(&self, part: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(part))
            .collect()
    }

    /// Waits (at most 10 s) until `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut count = self.state.count.subscribe();
        tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests within 10 s; got {:?}", self.requests()))
            .expect("the forge runs");
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// The paths that received a request while another to the same path
    /// was still being answered.
    pub fn overlapped_paths(&self) -> Vec<String> {
        self.state.overlapped.lock().expect("lock").clone()
    }
}

async fn record_and_answer(
    State(state): State<Arc<ForgeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let index = {
        let mut seen = state.seen.lock().expect("lock");
        seen.push(recorded.clone());
        seen.len() - 1
    };
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    {
        let mut per_path = state.in_flight_per_path.lock().expect("lock");
        let on_path = per_path.entry(recorded.path.clone()).or_default();
        *on_path += 1;
        if *on_path > 1 {
            state
                .overlapped
                .lock()
                .expect("lock")
                .push(recorded.path.clone());
        }
    }
    state.count.send_modify(|c| *c += 1);
    let answer = (state.script)(&recorded, index);
    if answer.hang {
        std::future::pending::<()>().await;
    }
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if let Some(on_path) = state
        .in_flight_per_path
        .lock()
        .expect("lock")
        .get_mut(&recorded.path)
    {
        *on_path -= 1;
    }
    let mut response = (
        StatusCode::from_u16(answer.status).expect("a status"),
        answer.body,
    )
        .into_response();
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("a header value"));
    }
    response
}

/// A fixture's bytes (`forge/tests/fixtures/NAME`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Everything logged (at any level) while the guard lives, on this thread:
/// use it in a current-thread runtime so the spawned tasks log here too.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    pub fn start() -> LogCapture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .finish();
        LogCapture {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("lock")).into_owned()
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
