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

/// A configuration in which every reason can happen: TLS required on one host (checked before
/// anything else), no default for unknown hosts, API keys and RS256 JWTs.
fn every_reason_config() -> String {
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(support::repo().join("tests/keys/jwks.json")).unwrap())
            .unwrap();
    let rsa = jwks["keys"][0].clone();
    serde_json::json!({
        "stat_prefix": "every",
        "policies": [
            {"name": "tls", "match": {"hosts": ["tls.example"]}, "allowed_origins": ["https://app.example.com"]},
            {"name": "app", "match": {"hosts": ["app.example"]}, "allowed_origins": ["https://app.example.com"],
             "require_tls": false,
             "auth": {"sources": [{"query": "t"}],
                      "api_keys": [{"id": "bot", "sha256": KEY_SHA256}],
                      "jwt": {"algorithms": ["RS256"], "jwks": {"keys": [rsa]},
                              "issuers": ["https://issuer.example"], "audiences": ["chat"], "leeway_seconds": 0}}}
        ]
    })
    .to_string()
}

fn rs256(claims: serde_json::Value, kid: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(support::repo().join("tests/keys/rsa.pem")).unwrap(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn every_reason_a_request_can_cause_moves_its_own_counter_once() {
    let gate = Gate::start(&[&every_reason_config()]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = |iss: &str, aud: &str, exp: i64, nbf: i64| serde_json::json!({"iss": iss, "aud": aud, "exp": now + exp, "nbf": now + nbf});
    let good = |kid: &str| rs256(claims("https://issuer.example", "chat", 300, -10), kid);
    let tampered = {
        let token = good("rsa-1");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let payload = claims("https://issuer.example", "chat", 9000, -10).to_string();
        parts[1] = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(payload.as_bytes());
        parts.join(".")
    };
    let cases: Vec<(&str, &str, String, Vec<&str>)> = vec![
        ("insecure_transport", "tls.example", "/ws".into(), vec!["origin: https://app.example.com"]),
        ("no_policy_matched", "other.example", "/ws".into(), vec!["origin: https://app.example.com"]),
        ("origin_not_allowed", "app.example", "/ws".into(), vec!["origin: https://evil.example"]),
        ("origin_missing", "app.example", "/ws".into(), vec![]),
        ("origin_null", "app.example", "/ws".into(), vec!["origin: null"]),
        ("origin_malformed", "app.example", "/ws".into(), vec!["origin: https://app.example.com/"]),
        ("token_missing", "app.example", "/ws".into(), vec!["origin: https://app.example.com"]),
        ("token_malformed", "app.example", "/ws?t=".into(), vec!["origin: https://app.example.com"]),
        (
            "token_duplicated",
            "app.example",
            format!("/ws?t={KEY}&t={KEY}"),
            vec!["origin: https://app.example.com"],
        ),
        ("api_key_invalid", "app.example", "/ws?t=k-guess".into(), vec!["origin: https://app.example.com"]),
        (
            "token_expired",
            "app.example",
            format!("/ws?t={}", rs256(claims("https://issuer.example", "chat", -10, -20), "rsa-1")),
            vec!["origin: https://app.example.com"],
        ),
        (
            "token_not_yet_valid",
            "app.example",
            format!("/ws?t={}", rs256(claims("https://issuer.example", "chat", 300, 100), "rsa-1")),
            vec!["origin: https://app.example.com"],
        ),
        (
            "token_bad_signature",
            "app.example",
            format!("/ws?t={tampered}"),
            vec!["origin: https://app.example.com"],
        ),
        (
            "token_unknown_key",
            "app.example",
            format!("/ws?t={}", good("rsa-9")),
            vec!["origin: https://app.example.com"],
        ),
        (
            "token_bad_issuer",
            "app.example",
            format!("/ws?t={}", rs256(claims("https://evil.example", "chat", 300, -10), "rsa-1")),
            vec!["origin: https://app.example.com"],
        ),
        (
            "token_bad_audience",
            "app.example",
            format!("/ws?t={}", rs256(claims("https://issuer.example", "billing", 300, -10), "rsa-1")),
            vec!["origin: https://app.example.com"],
        ),
    ];
    for (reason, host, path, lines) in &cases {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for line in lines {
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let status = raw(gate.port(), request.as_bytes()).await.status;
        assert!(status == 401 || status == 403, "{reason}: got {status}");
    }
    let counters = counters(&gate, "every");
    for (reason, ..) in &cases {
        assert_eq!(counters.get(&format!("denied.{reason}")), Some(&1), "{reason} in {counters:?}");
    }
    let denied: u64 = counters.iter().filter(|(name, _)| name.starts_with("denied.")).map(|(_, v)| v).sum();
    assert_eq!(denied, cases.len() as u64, "one counter moved per request");
    assert_eq!(counters.get("allowed"), Some(&0));
}

#[tokio::test]
async fn a_flood_of_refusals_is_logged_at_a_bounded_rate_and_counted_exactly() {
    let gate = Gate::start(&[&config("enforce")]).await;
    let refusals = 120;
    let foreign = support::client::raw_upgrade(&[
        b"connection: upgrade",
        b"upgrade: websocket",
        b"origin: https://evil.example",
    ]);
    for _ in 0..refusals {
        assert_eq!(raw(gate.port(), &foreign).await.status, 403);
    }
    // The positive control: a refusal after a quiet second is logged again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(raw(gate.port(), &foreign).await.status, 403);
    assert_eq!(counters(&gate, "edge")["denied.origin_not_allowed"], refusals + 1);
    let log = gate.envoy.wsgate_log();
    let written =
        log.iter().filter(|line| line.contains("denied upgrade: reason=origin_not_allowed")).count() as u64;
    assert!(written < refusals / 2, "{written} of {refusals} refusals were logged");
    let left_out: u64 = log
        .iter()
        .filter_map(|line| {
            line.split("wsgate: ").nth(1)?.split(" refusal lines left out").next()?.parse::<u64>().ok()
        })
        .sum();
    let noted: u64 = log
        .iter()
        .filter_map(|line| line.split("(and ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(written + left_out + noted, refusals + 1, "every refusal is written or counted as left out");
}
