//! The demo behind `make run`, in Chromium: the shipped Envoy config of the build under test
//! (its ports made free ones), the echo upstream serving the demo page, and a token from
//! `scripts/demo-token.sh`, as `scripts/run-demo.sh` starts them. The page through Envoy opens
//! its socket, logs in by first message and has its CSP refuse a socket elsewhere; the same page
//! on the upstream's own origin is refused by wsgate.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;

use support::browser::Browser;
use support::{build, repo, Build, Envoy, Recorder};

/// The shipped demo of the build under test.
fn demo_config() -> &'static str {
    match build() {
        Build::Wasm => "envoy/envoy.yaml",
        Build::Native => "envoy/dynamic-module/envoy.yaml",
    }
}

/// `scripts/demo-token.sh` on the demo config: a valid token, or a forged one.
fn demo_token(kind: &str) -> String {
    let output = Command::new(repo().join("scripts/demo-token.sh"))
        .args([demo_config(), kind])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

struct Demo {
    envoy: Envoy,
    /// The page through Envoy, and the same page straight from the upstream.
    gate: String,
    other: String,
    browser: Browser,
}

impl Demo {
    async fn start() -> Demo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = listener.local_addr().unwrap().to_string();
        let settings = std::sync::Arc::new(std::sync::RwLock::new(wsgate_echo::Demo {
            gate: String::new(),
            other: other.clone(),
            token: Some(demo_token("valid")),
        }));
        tokio::spawn(wsgate_echo::serve_demo(listener, Recorder::default(), false, Some(settings.clone())));
        let mut config = std::fs::read_to_string(repo().join(demo_config())).unwrap();
        for port in ["8443", "8080", "8081", "9901"] {
            config = config.replace(&format!("port_value: {port}}}"), "port_value: 0}");
        }
        let upstream_port = other.rsplit(':').next().unwrap();
        config = config.replace("port_value: 9000}", &format!("port_value: {upstream_port}}}"));
        let envoy = Envoy::start(&config);
        let gate = format!("127.0.0.1:{}", envoy.listener_port("public"));
        settings.write().unwrap().gate = gate.clone();
        Demo { envoy, gate, other, browser: Browser::start().await }
    }

    /// Opens the demo page at `host` and waits for its three lines: `[class, text]` each.
    async fn lines(&mut self, host: &str) -> Vec<(String, String)> {
        self.browser.open(&format!("http://{host}/")).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.browser.eval("document.body.dataset.done === 'true'").await != json!(true) {
            assert!(Instant::now() < deadline, "the demo page never finished:\n{}", self.envoy.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lines = self
            .browser
            .eval("[...document.querySelectorAll('#results li')].map(li => [li.className, li.querySelector('.seen').textContent])")
            .await;
        let lines: Vec<Value> = serde_json::from_value(lines).unwrap();
        lines
            .iter()
            .map(|line| (line[0].as_str().unwrap().into(), line[1].as_str().unwrap().into()))
            .collect()
    }
}

/// The demo page's sources, hashed: `docs/demo.png` records the hash it was made from.
fn page_sources_sha256() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for file in ["echo/demo/index.html", "echo/demo/demo.js"] {
        hash.update(std::fs::read(repo().join(file)).unwrap());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

const SCREENSHOTS: [&str; 2] = ["docs/demo.png", "docs/demo-other-origin.png"];
const SCREENSHOT_RECORD: &str = "docs/demo.png.sources";

/// `make screenshot` (`WSGATE_DEMO_SCREENSHOT=1`): the pictures of the demo page in `docs/`,
/// through Envoy and on the other origin, with the hash of the page they show.
#[tokio::test]
async fn the_demo_screenshots_are_of_the_current_page() {
    if std::env::var_os("WSGATE_DEMO_SCREENSHOT").is_some() {
        let mut demo = Demo::start().await;
        for (host, path) in [demo.gate.clone(), demo.other.clone()].iter().zip(SCREENSHOTS) {
            demo.lines(host).await;
            demo.browser.screenshot(&repo().join(path)).await;
        }
        std::fs::write(repo().join(SCREENSHOT_RECORD), format!("{}\n", page_sources_sha256())).unwrap();
    }
    for path in SCREENSHOTS {
        assert!(repo().join(path).exists(), "{path} is missing: run `make screenshot`");
    }
    let recorded = std::fs::read_to_string(repo().join(SCREENSHOT_RECORD)).unwrap_or_default();
    assert_eq!(
        recorded.trim(),
        page_sources_sha256(),
        "the demo page changed since docs/demo.png: run `make screenshot`"
    );
}

#[tokio::test]
async fn the_demo_page_through_envoy_opens_its_socket_logs_in_by_first_message_and_has_its_csp_refuse_a_socket_elsewhere(
) {
    let mut demo = Demo::start().await;
    let gate = demo.gate.clone();
    let lines = demo.lines(&gate).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], ("ok".to_string(), "opened, and the upstream echoed \"hello\"".to_string()));
    assert_eq!(lines[1].0, "ok", "{lines:?}");
    assert!(lines[1].1.starts_with("logged in"), "{lines:?}");
    assert_eq!(
        lines[2],
        ("ok".to_string(), "blocked by this page's Content-Security-Policy (connect-src)".to_string())
    );
}

#[tokio::test]
async fn the_same_page_on_another_origin_is_refused_by_wsgate() {
    let mut demo = Demo::start().await;
    let other = demo.other.clone();
    let lines = demo.lines(&other).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines[..2] {
        assert_eq!(line.0, "refused", "{lines:?}");
        assert!(line.1.starts_with("refused at the handshake"), "{lines:?}");
    }
    assert_eq!(demo.envoy.stat("wasmcustom.wsgate.default.denied.origin_not_allowed"), Some(2));
}

#[tokio::test]
async fn the_demo_token_opens_private_in_each_place_and_a_forged_one_is_refused() {
    let demo = Demo::start().await;
    let port: u16 = demo.gate.rsplit(':').next().unwrap().parse().unwrap();
    let origin = ("origin", "https://app.example.com");
    let token = demo_token("valid");
    let query = support::client::ws_connect(port, &format!("/private?access_token={token}"), &[origin]).await;
    assert!(query.is_ok(), "in the query: {:?}", query.err());
    let cookie = format!("ws_token={token}");
    let in_cookie = support::client::ws_connect(port, "/private", &[origin, ("cookie", &cookie)]).await;
    assert!(in_cookie.is_ok(), "in a cookie: {:?}", in_cookie.err());
    let forged = demo_token("forged");
    let refused =
        support::client::ws_connect(port, &format!("/private?access_token={forged}"), &[origin]).await;
    assert_eq!(refused.err(), Some(401));
}

#[tokio::test]
async fn a_rebound_name_reaches_nothing_where_same_origin_would_admit_it() {
    let demo = Demo::start().await;
    let port: u16 = demo.gate.rsplit(':').next().unwrap().parse().unwrap();
    let handshake = |host: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: http://{host}:{port}\r\n\r\n"
        )
    };
    let own = support::client::raw(port, handshake("127.0.0.1").as_bytes()).await;
    assert_eq!(own.status, 101, "the page's own socket");
    let rebound = support::client::raw(port, handshake("evil.example").as_bytes()).await;
    assert_eq!(rebound.status, 404, "a page on evil.example, rebound to 127.0.0.1");
}
