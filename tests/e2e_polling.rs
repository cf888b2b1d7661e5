//! `also_check` through a real Envoy: the HTTP long-polling of engine.io (Socket.IO) and SockJS
//! gets the decision a WebSocket handshake gets, with the same reasons and counters; other
//! ordinary requests pass untouched.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::client::{raw, RawReply};
use support::Gate;

fn config() -> String {
    json!({
        "stat_prefix": "poll",
        "allowed_origins": ["https://app.example.com", "same_origin"],
        "require_tls": false,
        "also_check": [{"path_prefix": "/socket.io", "query": "transport=polling"}, {"path_prefix": "/sockjs"}],
        "auth": {"sources": [{"cookie": "io_token"}], "jwt": support::hs256_jwt()}
    })
    .to_string()
}

fn token() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    support::hs256_token(
        json!({"iss": "https://issuer.example", "aud": "chat", "sub": "u", "exp": now + 300}),
    )
}

/// An ordinary request to `target` with the given header lines, as engine.io's client sends it.
async fn request(gate: &Gate, method: &str, target: &str, lines: &[String]) -> RawReply {
    let body = if method == "POST" { "1:6" } else { "" };
    let mut text =
        format!("{method} {target} HTTP/1.1\r\nhost: chat.example.com\r\ncontent-length: {}\r\n", body.len());
    for line in lines {
        text.push_str(&format!("{line}\r\n"));
    }
    text.push_str(&format!("\r\n{body}"));
    raw(gate.port(), text.as_bytes()).await
}

fn stat(gate: &Gate, name: &str) -> Option<u64> {
    gate.envoy.stat(&format!("wasmcustom.wsgate.poll.{name}"))
}

#[tokio::test]
async fn engine_io_polling_from_a_foreign_origin_is_refused_before_the_upstream() {
    let gate = Gate::start(&[&config()]).await;
    let lines = [format!("cookie: io_token={}", token()), "origin: https://evil.example".to_string()];
    let open = request(&gate, "GET", "/socket.io/?EIO=4&transport=polling&t=PqX1", &lines).await;
    let send = request(&gate, "POST", "/socket.io/?EIO=4&transport=polling&sid=abc", &lines).await;
    assert_eq!((open.status, send.status), (403, 403));
    assert_eq!(gate.upstream_requests(), vec![], "the upstream saw a refused poll");
    assert_eq!(stat(&gate, "denied.origin_not_allowed"), Some(2));
}

#[tokio::test]
async fn engine_io_polling_from_the_allowed_origin_goes_on_without_its_token() {
    let gate = Gate::start(&[&config()]).await;
    let token = token();
    let lines = [format!("cookie: a=1; io_token={token}"), "origin: https://app.example.com".to_string()];
    let reply = request(&gate, "GET", "/socket.io/?EIO=4&transport=polling&t=PqX1", &lines).await;
    assert_eq!(reply.status, 200);
    let seen = &gate.upstream_requests()[0];
    assert!(!format!("{seen:?}").contains(&token), "the token reached the upstream: {seen:?}");
    assert_eq!(seen.header_values("cookie"), vec!["a=1"]);
    assert_eq!(stat(&gate, "allowed"), Some(1));
}

#[tokio::test]
async fn a_poll_without_its_credential_gets_401() {
    let gate = Gate::start(&[&config()]).await;
    let reply =
        request(&gate, "GET", "/sockjs/123/abc/xhr", &["origin: https://app.example.com".to_string()]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(stat(&gate, "denied.token_missing"), Some(1));
}

#[tokio::test]
async fn a_same_origin_poll_without_origin_is_judged_by_fetch_metadata() {
    let gate = Gate::start(&[&config()]).await;
    let cookie = format!("cookie: io_token={}", token());
    let target = "/socket.io/?EIO=4&transport=polling";
    // Browsers send no Origin on a same-origin GET, and say where it came from instead.
    let same = request(&gate, "GET", target, &[cookie.clone(), "sec-fetch-site: same-origin".into()]).await;
    assert_eq!(same.status, 200);
    let cross = request(&gate, "GET", target, &[cookie.clone(), "sec-fetch-site: cross-site".into()]).await;
    assert_eq!(cross.status, 403);
    let neither = request(&gate, "GET", target, std::slice::from_ref(&cookie)).await;
    assert_eq!(neither.status, 403);
    assert_eq!(stat(&gate, "denied.origin_missing"), Some(2));
}

#[tokio::test]
async fn every_spelling_of_the_polling_parameter_is_checked() {
    let gate = Gate::start(&[&config()]).await;
    let lines = [format!("cookie: io_token={}", token()), "origin: https://evil.example".to_string()];
    for target in [
        "/socket.io/?transport=websocket&transport=polling",
        "/socket.io/?Transport=POLLING",
        "/socket.io/?EIO=4;transport=polling",
        "/socket.io/?transport=pollin%67",
        "/Socket.IO/?transport=polling",
    ] {
        assert_eq!(request(&gate, "GET", target, &lines).await.status, 403, "{target}");
    }
    assert_eq!(gate.upstream_requests(), vec![]);
}

#[tokio::test]
async fn ordinary_requests_outside_also_check_pass_untouched() {
    let gate = Gate::start(&[&config()]).await;
    let lines = ["origin: https://evil.example".to_string()];
    for target in ["/socket.io/?EIO=4&transport=websocket", "/api/rooms", "/socket.iox/?transport=polling"] {
        assert_eq!(request(&gate, "GET", target, &lines).await.status, 200, "{target}");
    }
    assert_eq!(gate.upstream_requests().len(), 3);
}

/// Socket.IO under a policy of its own, beside a default policy that checks nothing; clients
/// without `Origin` allowed (native apps).
fn scoped_config() -> String {
    json!({
        "stat_prefix": "poll",
        "policies": [{
            "name": "socket.io",
            "match": {"path_prefix": "/socket.io"},
            "allowed_origins": ["https://app.example.com"],
            "missing_origin": "allow",
            "require_tls": false,
            "also_check": [{"path_prefix": "/socket.io", "query": "transport=polling"}],
            "auth": {"sources": [{"cookie": "io_token"}], "jwt": support::hs256_jwt()}
        }],
        "default": {"allowed_origins": ["https://app.example.com"], "require_tls": false}
    })
    .to_string()
}

#[tokio::test]
async fn a_poll_that_another_reading_puts_under_the_checking_policy_is_refused() {
    let gate = Gate::start(&[&scoped_config()]).await;
    let lines = [format!("cookie: io_token={}", token()), "origin: https://evil.example".to_string()];
    // engine.io matches the raw path's prefix; the canonical reading of this one is `/x`, under
    // the default policy.
    let reply = request(&gate, "GET", "/socket.io/..;/x?EIO=4&transport=polling", &lines).await;
    assert_eq!(reply.status, 403);
    assert_eq!(gate.upstream_requests(), vec![]);
    assert_eq!(stat(&gate, "denied.path_ambiguous"), Some(1));
}

#[tokio::test]
async fn a_cross_site_load_without_origin_is_refused_where_clients_without_origin_are_allowed() {
    let gate = Gate::start(&[&scoped_config()]).await;
    let cookie = format!("cookie: io_token={}", token());
    let target = "/socket.io/?EIO=4&transport=polling&j=0";
    // A foreign page's <script> or <img> sends no Origin, and says where it came from.
    let script = request(&gate, "GET", target, &[cookie.clone(), "sec-fetch-site: cross-site".into()]).await;
    assert_eq!(script.status, 403);
    // A native client says nothing, and is allowed by `missing_origin`.
    let native = request(&gate, "GET", target, std::slice::from_ref(&cookie)).await;
    assert_eq!(native.status, 200);
}

#[tokio::test]
async fn a_cors_preflight_from_the_allowed_origin_goes_on_without_a_credential() {
    let gate = Gate::start(&[&config()]).await;
    let target = "/socket.io/?EIO=4&transport=polling";
    let ask = "access-control-request-method: POST".to_string();
    let allowed =
        request(&gate, "OPTIONS", target, &["origin: https://app.example.com".into(), ask.clone()]).await;
    assert_eq!(allowed.status, 200);
    let foreign = request(&gate, "OPTIONS", target, &["origin: https://evil.example".into(), ask]).await;
    assert_eq!(foreign.status, 403);
    assert_eq!(gate.upstream_requests().len(), 1);
}
