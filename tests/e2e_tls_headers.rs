//! TLS-only WebSockets and security headers on responses, through a real Envoy with TLS and
//! plaintext listeners.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::client::{
    h2_request_headers, h2_websocket, raw, raw_tls, raw_upgrade, ws_connect_with_response, ws_echo,
    wss_connect,
};
use support::{Gate, Transport};

/// TLS required (the default), and every response header given explicitly.
const CONFIG: &str = r#"{
  "allowed_origins": ["https://app.example.com"],
  "response_headers": {
    "content_security_policy": {
      "directives": {
        "default-src": ["'self'"],
        "connect-src": ["'self'", "wss://chat.example.com"],
        "frame-ancestors": ["'none'"]
      }
    },
    "strict_transport_security": "max-age=63072000; includeSubDomains",
    "x_content_type_options": "nosniff",
    "referrer_policy": "strict-origin-when-cross-origin",
    "cross_origin_opener_policy": "same-origin",
    "extra": [{"name": "permissions-policy", "value": "camera=(), microphone=()"}]
  }
}"#;

const CSP: &str = "connect-src 'self' wss://chat.example.com; default-src 'self'; frame-ancestors 'none'";

/// Every header CONFIG adds, with its value; HSTS is the last.
const EXPECTED: &[(&str, &str)] = &[
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=()"),
    ("strict-transport-security", "max-age=63072000; includeSubDomains"),
];

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

fn upgrade_from(origin: &str) -> Vec<u8> {
    raw_upgrade(&[b"connection: upgrade", b"upgrade: websocket", format!("origin: {origin}").as_bytes()])
}

/// A plaintext handshake from an allowed origin that claims `x-forwarded-proto: https`. With
/// Envoy's default `use_remote_address: false`, that also makes `:scheme` say https.
fn forwarded_https_upgrade() -> Vec<u8> {
    raw_upgrade(&[
        b"connection: upgrade",
        b"upgrade: websocket",
        b"origin: https://app.example.com",
        b"x-forwarded-proto: https",
    ])
}

fn get(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_wss_handshake_over_tls_gets_101_and_its_message_echoed() {
    let gate = Gate::start_listeners(&[(CONFIG, Transport::Tls)]).await;
    let mut socket = wss_connect(gate.port(), &gate.certificate, "/ws", &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "over tls").await, "over tls");
    assert_eq!(gate.upstream_requests().len(), 1);
}

#[tokio::test]
async fn a_plaintext_handshake_gets_403_and_never_reaches_the_upstream() {
    let gate = Gate::start_listeners(&[(CONFIG, Transport::Plaintext)]).await;
    let reply = raw(gate.port(), &upgrade_from("https://app.example.com")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "Forbidden: WebSockets must use TLS (wss://)");
    assert_eq!(h2_websocket(gate.port(), "/ws", &[ALLOWED]).await.status, 403);
    assert_eq!(gate.upstream_requests(), vec![]);
    let denials: Vec<String> =
        gate.envoy.wsgate_log().into_iter().filter(|l| l.contains("reason=insecure_transport")).collect();
    assert_eq!(denials.len(), 2, "{denials:?}");
}

#[tokio::test]
async fn a_plaintext_client_cannot_pass_for_tls_with_its_own_forwarded_proto_or_scheme() {
    let gate = Gate::start_listeners(&[(CONFIG, Transport::Plaintext)]).await;
    assert_eq!(raw(gate.port(), &forwarded_https_upgrade()).await.status, 403);
    let h2 = h2_websocket(gate.port(), "/ws", &[ALLOWED, ("x-forwarded-proto", "https")]).await;
    assert_eq!(h2.status, 403);
    let claimed_scheme = h2_websocket(gate.port(), "https://localhost/ws", &[ALLOWED]).await;
    assert_eq!(claimed_scheme.status, 403, "an h2c request that names :scheme https");
    assert_eq!(gate.upstream_requests(), vec![]);
}

#[tokio::test]
async fn trust_forwarded_proto_admits_a_handshake_that_a_load_balancer_marked_https() {
    let trusting = r#"{"allowed_origins": ["https://app.example.com"], "trust_forwarded_proto": true}"#;
    let gate = Gate::start_listeners(&[(trusting, Transport::Plaintext)]).await;
    assert_eq!(raw(gate.port(), &forwarded_https_upgrade()).await.status, 101);
    assert_eq!(raw(gate.port(), &upgrade_from("https://app.example.com")).await.status, 403);
}

#[tokio::test]
async fn every_kind_of_ordinary_response_gets_exactly_the_configured_headers() {
    let gate = Gate::start_listeners(&[(CONFIG, Transport::Tls), (CONFIG, Transport::Plaintext)]).await;
    let (tls, plaintext) = (gate.ports[0], gate.ports[1]);
    let requests = [
        ("GET", "/page", 200),
        ("HEAD", "/page", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
        ("GET", "/status/301", 301),
        ("GET", "/status/500", 500),
        ("GET", "/envoy-404", 404),
    ];
    for (method, path, status) in requests {
        let over_tls = raw_tls(tls, &gate.certificate, &get(method, path)).await;
        let over_plaintext = raw(plaintext, &get(method, path)).await;
        for (reply, expected) in [(over_tls, EXPECTED), (over_plaintext, &EXPECTED[..EXPECTED.len() - 1])] {
            assert_eq!(reply.status, status, "{method} {path}");
            for (name, value) in expected {
                assert_eq!(reply.header(name), vec![value.to_string()], "{method} {path}: {name}");
            }
            if expected.len() < EXPECTED.len() {
                assert_eq!(
                    reply.header("strict-transport-security"),
                    Vec::<String>::new(),
                    "HSTS over plaintext"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_ordinary_http2_response_gets_the_headers_too() {
    let gate = Gate::start_listeners(&[(CONFIG, Transport::Plaintext)]).await;
    let headers = h2_request_headers(gate.port(), "GET", "/page").await;
    assert_eq!(headers.get("content-security-policy").map(String::as_str), Some(CSP));
    assert_eq!(headers.get("x-content-type-options").map(String::as_str), Some("nosniff"));
}

#[tokio::test]
async fn the_upstreams_own_headers_are_appended_to_kept_or_replaced_as_configured() {
    let config = |on_existing: &str| {
        format!(
            r#"{{"allowed_origins": ["https://app.example.com"], "require_tls": false,
                "response_headers": {{"content_security_policy": "default-src 'self'",
                "referrer_policy": "same-origin", "on_existing": "{on_existing}"}}}}"#
        )
    };
    let (append, keep, replace) = (config("append"), config("keep"), config("replace"));
    let gate = Gate::start(&[&append, &keep, &replace]).await;
    let upstream_csp = "default-src 'none'".to_string();
    let ours = "default-src 'self'".to_string();
    let cases = [
        ("append", vec![upstream_csp.clone(), ours.clone()], "no-referrer"),
        ("keep", vec![upstream_csp.clone()], "no-referrer"),
        ("replace", vec![ours.clone()], "same-origin"),
    ];
    for (port, (mode, csp, referrer)) in gate.ports.iter().zip(cases) {
        let reply = raw(*port, &get("GET", "/own-headers")).await;
        assert_eq!(reply.header("content-security-policy"), csp, "{mode}");
        assert_eq!(reply.header("referrer-policy"), vec![referrer.to_string()], "{mode}");
        assert_eq!(reply.header("x-content-type-options"), vec!["nosniff".to_string()], "{mode}");
    }
}

#[tokio::test]
async fn answers_to_handshakes_get_none_of_the_headers() {
    let plaintext_config = CONFIG.replacen('{', r#"{"require_tls": false,"#, 1);
    let gate = Gate::start(&[&plaintext_config]).await;
    let managed: Vec<&str> = EXPECTED.iter().map(|(name, _)| *name).collect();

    let (mut socket, names) = ws_connect_with_response(gate.port(), "/ws", &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    assert!(names.iter().all(|n| !managed.contains(&n.as_str())), "the 101 got {names:?}");

    let h2 = h2_websocket(gate.port(), "/ws", &[ALLOWED]).await;
    assert_eq!(h2.status, 200);
    assert!(
        h2.headers.iter().all(|n| !managed.contains(&n.as_str())),
        "the CONNECT 200 got {:?}",
        h2.headers
    );

    let refused = raw(gate.port(), &upgrade_from("https://evil.example")).await;
    assert_eq!(refused.status, 403);
    for name in &managed {
        assert_eq!(refused.header(name), Vec::<String>::new(), "wsgate's refusal got {name}");
    }
}

#[test]
fn a_policy_that_weakens_itself_loads_with_a_warning_in_envoys_log() {
    let weak = r#"{"allowed_origins": ["https://app.example.com"],
        "response_headers": {"content_security_policy": "script-src 'self' 'unsafe-inline'; connect-src *"}}"#;
    let listener = support::listener_yaml("weak", support::free_port(), weak, None);
    let bootstrap =
        support::bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), support::free_port());
    let output = support::validate_yaml(&bootstrap);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("configuration weakens itself: default: response_headers.content_security_policy: script-src allows 'unsafe-inline'"), "{log}");
    assert!(log.contains("connect-src allows \"*\""), "{log}");
}
