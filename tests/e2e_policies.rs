//! Per-host and per-path policies through a real Envoy: one listener, several hosts.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::client::raw;
use support::Gate;

const CONFIG: &str = r#"{
  "stat_prefix": "edge",
  "policies": [
    {"name": "chat", "match": {"hosts": ["chat.example.com"], "path_prefix": "/ws"},
     "allowed_origins": ["https://chat.example.com"], "require_tls": false},
    {"name": "internal", "match": {"hosts": ["*.internal.example"]},
     "allowed_origins": ["https://admin.example"], "require_tls": false, "mode": "shadow"}
  ],
  "default": {"allowed_origins": ["https://app.example.com"], "require_tls": false}
}"#;

/// A handshake to `host` and `path` from `origin`.
fn handshake(host: &str, path: &str, origin: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn two_hosts_on_one_listener_get_different_policies() {
    let gate = Gate::start(&[CONFIG]).await;
    let port = gate.port();
    let status = |host: &'static str, path: &'static str, origin: &'static str| async move {
        raw(port, &handshake(host, path, origin)).await.status
    };
    assert_eq!(status("chat.example.com", "/ws/room", "https://chat.example.com").await, 101);
    assert_eq!(
        status("chat.example.com", "/ws/room", "https://app.example.com").await,
        403,
        "chat's own origins"
    );
    assert_eq!(status("www.example.com", "/ws", "https://app.example.com").await, 101, "the default");
    assert_eq!(status("www.example.com", "/ws", "https://chat.example.com").await, 403);
    assert_eq!(
        status("chat.example.com", "/other", "https://app.example.com").await,
        101,
        "outside /ws: the default"
    );
    assert_eq!(
        status("tools.internal.example", "/", "https://evil.example").await,
        101,
        "shadow mode lets it through"
    );

    let log = gate.envoy.wsgate_log().join("\n");
    assert!(
        log.contains(
            r#"denied upgrade: reason=origin_not_allowed status=403 policy=chat host="chat.example.com""#
        ),
        "{log}"
    );
    assert!(
        log.contains(
            r#"denied upgrade: reason=origin_not_allowed status=403 policy=default host="www.example.com""#
        ),
        "{log}"
    );
    assert!(
        log.contains("shadow mode, would deny upgrade: reason=origin_not_allowed status=403 policy=internal"),
        "{log}"
    );
    assert_eq!(gate.upstream_requests().len(), 4);
}
