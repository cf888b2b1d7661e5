//! A real browser for the end-to-end tests: headless Chromium (Debian's `chromium`, or
//! `$WSGATE_CHROMIUM`), driven over the DevTools protocol. A test opens a page and runs script in
//! it, as the page's own code would; whatever the browser does on its own (the `Origin` it sends,
//! the cookies it attaches, the CSP it enforces, the close codes it reports) is the browser's.
//!
//! The process runs with a user-data folder of its own and is stopped by PID when the handle
//! drops, pass or fail.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::scratch_dir;

/// How long one DevTools command or page load may take.
const STEP: Duration = Duration::from_secs(20);

pub struct Browser {
    child: Child,
    dir: PathBuf,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// The browser binary.
pub fn chromium() -> PathBuf {
    let path =
        std::env::var_os("WSGATE_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(path.exists(), "no browser at {}: `make setup` installs Debian's chromium", path.display());
    path
}

impl Browser {
    /// Starts Chromium with an empty profile and one blank page to drive.
    pub async fn start() -> Browser {
        let dir = scratch_dir();
        let profile = dir.join("profile");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=900,640",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
            .spawn()
            .unwrap();
        // Stopped if starting fails half-way, as a started Browser is when it drops.
        let mut launched = Launched(Some(child));
        // Chromium writes the port it bound, and its browser endpoint, into the profile.
        let deadline = Instant::now() + STEP;
        let (port, endpoint) = loop {
            if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
                let mut lines = text.lines();
                if let (Some(Ok(port)), Some(path)) = (lines.next().map(str::parse::<u16>), lines.next()) {
                    break (port, format!("ws://127.0.0.1:{port}{path}"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not start: see {}",
                dir.join("chromium.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let target = Self::new_page(&endpoint).await;
        let (page, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/devtools/page/{target}"))
                .await
                .unwrap();
        let child = launched.0.take().unwrap();
        Browser { child, dir, page, next_id: 0 }
    }

    /// Opens a new blank page through the browser's endpoint; its id.
    async fn new_page(endpoint: &str) -> String {
        let (mut browser, _) = tokio_tungstenite::connect_async(endpoint).await.unwrap();
        let command = json!({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}});
        browser.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(STEP, browser.next()).await.unwrap().unwrap().unwrap();
            let reply: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
            if reply["id"] == 1 {
                return reply["result"]["targetId"].as_str().unwrap().to_string();
            }
        }
    }

    /// Sends one DevTools command to the page and returns its result, skipping events.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.page.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(STEP, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("{method} had no answer in {STEP:?}"))
                .unwrap()
                .unwrap();
            let Ok(text) = message.to_text() else { continue };
            let reply: Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Loads `url` in the page and waits until it has loaded.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        let deadline = Instant::now() + STEP;
        loop {
            let state = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": "[location.href, document.readyState]", "returnByValue": true}),
                )
                .await;
            let seen = &state["result"]["value"];
            if seen[0] == url && seen[1] == "complete" {
                return;
            }
            assert!(Instant::now() < deadline, "{url} did not load: {seen}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG of the page's viewport to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64ct::Encoding;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64ct::Base64::decode_vec(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Runs `script` (an expression, awaited if it is a promise) in the page; its value as JSON.
    pub async fn eval(&mut self, script: &str) -> Value {
        let reply = self
            .call(
                "Runtime.evaluate",
                json!({"expression": script, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(reply.get("exceptionDetails").is_none(), "the script threw: {reply}");
        reply["result"]["value"].clone()
    }

    /// Opens a WebSocket to `url` from the page, sends `send` once it is open and waits for
    /// the socket to close (closing it itself with 1000 once `echoes` messages came, if that is
    /// not 0), or for an error with no close: what the page saw, `{"opened", "messages", "code",
    /// "reason", "violations"}`, the last being the `securitypolicyviolation` events (blocked
    /// URIs) the page got meanwhile.
    pub async fn socket(&mut self, url: &str, send: &[&str], echoes: usize) -> Value {
        self.socket_with(url, &[], send, echoes).await
    }

    /// [`Browser::socket`], offering `protocols`; what the page saw also has the `protocol`
    /// the handshake selected.
    pub async fn socket_with(
        &mut self,
        url: &str,
        protocols: &[&str],
        send: &[&str],
        echoes: usize,
    ) -> Value {
        let script = format!(
            r#"new Promise(resolve => {{
                const seen = {{opened: false, protocol: null, messages: [], code: null, reason: null, violations: []}};
                document.addEventListener("securitypolicyviolation", e => seen.violations.push(e.blockedURI));
                const send = {send};
                let ws;
                try {{ ws = new WebSocket({url}, {protocols}); }}
                catch (e) {{ seen.reason = "threw: " + e.name; resolve(seen); return; }}
                ws.onopen = () => {{ seen.opened = true; seen.protocol = ws.protocol; send.forEach(m => ws.send(m)); }};
                ws.onmessage = e => {{
                    seen.messages.push(e.data);
                    if (seen.messages.length === {echoes}) ws.close(1000);
                }};
                ws.onclose = e => {{ seen.code = e.code; seen.reason = e.reason; setTimeout(() => resolve(seen), 50); }};
                // A socket that CSP blocks gets an error and no close.
                ws.onerror = () => setTimeout(() => resolve(seen), 500);
            }})"#,
            send = serde_json::to_string(send).unwrap(),
            url = serde_json::to_string(url).unwrap(),
            protocols = serde_json::to_string(protocols).unwrap(),
        );
        self.eval(&script).await
    }
}

/// A browser process not yet handed to a [`Browser`]: killed if the start panics.
struct Launched(Option<Child>);

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("chromium.log")) {
                eprintln!("--- chromium log ---\n{log}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
