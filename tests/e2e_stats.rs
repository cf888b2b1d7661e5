//! Counters and shadow mode through a real Envoy: read from its admin endpoint, as an operator
//! (or Prometheus) would.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::HashMap;

use support::client::{raw, ws_connect, ws_echo};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");
const KEY: &str = "k-7f3a9c";
/// sha256("k-7f3a9c")
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";

fn config(mode: &str) -> String {
    format!(
        r#"{{"stat_prefix": "edge", "mode": "{mode}", "allowed_origins": ["https://app.example.com"],
            "require_tls": false,
            "auth": {{"sources": [{{"query": "access_token"}}], "api_keys": [{{"id": "bot", "sha256": "{KEY_SHA256}"}}]}}}}"#
    )
}

/// wsgate's counters for `prefix`, by name after `wsgate.<prefix>.`.
fn counters(gate: &Gate, prefix: &str) -> HashMap<String, u64> {
    let stats = gate.envoy.admin_get(&format!("/stats?filter=wsgate\\.{prefix}\\.")).unwrap();
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter_map(|(name, value)| {
            let short = name.strip_prefix(&format!("wasmcustom.wsgate.{prefix}."))?;
            Some((short.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn each_decision_moves_its_own_counter() {
    let gate = Gate::start(&[&config("enforce")]).await;
    let port = gate.port();
    let mut socket = ws_connect(port, &format!("/ws?access_token={KEY}"), &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    assert_eq!(ws_connect(port, "/ws", &[("origin", "https://evil.example")]).await.err(), Some(403));
    assert_eq!(ws_connect(port, "/ws", &[("origin", "https://evil.example")]).await.err(), Some(403));
    assert_eq!(ws_connect(port, "/ws", &[]).await.err(), Some(403));
    assert_eq!(ws_connect(port, "/ws", &[ALLOWED]).await.err(), Some(401));
    assert_eq!(ws_connect(port, "/ws?access_token=k-guess", &[ALLOWED]).await.err(), Some(401));
    let page = raw(port, b"GET /page HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert_eq!(page.status, 200);

    let counters = counters(&gate, "edge");
    let expected = [
        ("allowed", 1),
        ("denied.origin_not_allowed", 2),
        ("denied.origin_missing", 1),
        ("denied.token_missing", 1),
        ("denied.api_key_invalid", 1),
        ("denied.origin_null", 0),
        ("shadow_denied.origin_not_allowed", 0),
        // The recommended set over plaintext: CSP, nosniff, Referrer-Policy, COOP.
        ("response_headers_added", 4),
    ];
    for (name, value) in expected {
        assert_eq!(counters.get(name), Some(&value), "{name} in {counters:?}");
    }
    assert!(counters["config_loads"] >= 1, "{counters:?}");
    let every_name = wsgate::stats::names("edge");
    assert_eq!(counters.len(), every_name.len(), "every counter is defined at load, also those still at 0");
}

#[tokio::test]
async fn prometheus_shows_the_counters_under_their_own_names() {
    let gate = Gate::start(&[&config("enforce")]).await;
    assert_eq!(ws_connect(gate.port(), "/ws", &[("origin", "https://evil.example")]).await.err(), Some(403));
    let prometheus = gate.envoy.admin_get("/stats/prometheus").unwrap();
    assert!(prometheus.contains("# TYPE wsgate_edge_denied_origin_not_allowed counter"), "{prometheus}");
    assert!(prometheus
        .lines()
        .any(|l| l.starts_with("wsgate_edge_denied_origin_not_allowed") && l.ends_with(" 1")));
}

#[tokio::test]
async fn shadow_mode_lets_a_refused_handshake_through_and_counts_it() {
    let gate = Gate::start(&[&config("shadow")]).await;
    let evil = ("origin", "https://evil.example");
    let mut socket = ws_connect(gate.port(), "/ws?access_token=k-guess&room=1", &[evil]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "still open").await, "still open");
    let seen = &gate.upstream_requests()[0];
    assert_eq!(seen.path, "/ws?access_token=k-guess&room=1", "shadow mode changed the request");

    let counters = counters(&gate, "edge");
    assert_eq!(counters.get("shadow_denied.origin_not_allowed"), Some(&1), "{counters:?}");
    assert_eq!(counters.get("denied.origin_not_allowed"), Some(&0));
    let log = gate.envoy.wsgate_log().join("\n");
    assert!(
        log.contains("shadow mode, would deny upgrade: reason=origin_not_allowed status=403 policy=default"),
        "{log}"
    );
    assert!(!log.contains("k-guess"), "the credential reached the log");
}

#[tokio::test]
async fn shadow_mode_leaves_an_admitted_request_unchanged() {
    let gate = Gate::start(&[&config("shadow")]).await;
    let mut socket = ws_connect(gate.port(), &format!("/ws?access_token={KEY}"), &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    let seen = &gate.upstream_requests()[0];
    assert_eq!(seen.path, format!("/ws?access_token={KEY}"));
    assert_eq!(seen.header_values("x-wsgate-key-id"), Vec::<&str>::new());
    assert_eq!(counters(&gate, "edge").get("shadow_allowed"), Some(&1));
}

#[tokio::test]
async fn two_listeners_count_under_their_own_prefixes() {
    let other = config("enforce").replace(r#""stat_prefix": "edge""#, r#""stat_prefix": "internal""#);
    let gate = Gate::start(&[&config("enforce"), &other]).await;
    assert_eq!(ws_connect(gate.ports[1], "/ws", &[]).await.err(), Some(403));
    assert_eq!(counters(&gate, "internal").get("denied.origin_missing"), Some(&1));
    assert_eq!(counters(&gate, "edge").get("denied.origin_missing"), Some(&0));
}
