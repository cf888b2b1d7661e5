//! Sockets per identity and per client (`limits`) through a real Envoy with two workers: the
//! limit holds across them, a socket that ends frees its place, and the client is the address
//! Envoy resolved, never a header the client wrote.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use support::client::{ws_connect, WebSocket};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

fn config(limits: serde_json::Value) -> String {
    let mut jwt = support::hs256_jwt();
    jwt["claims_to_headers"] = json!([{"claim": "sub", "header": "x-wsgate-subject"}]);
    json!({
        "stat_prefix": "limits",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {"sources": [{"query": "access_token"}], "jwt": jwt},
        "limits": limits
    })
    .to_string()
}

fn path(subject: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = json!({"iss": "https://issuer.example", "aud": "chat", "sub": subject, "exp": exp});
    format!("/ws?access_token={}", support::hs256_token(claims))
}

/// Opens `count` sockets for `subject`, each on a connection of its own; the ones admitted, and
/// the statuses of the others.
async fn open(
    gate: &Gate,
    subject: &str,
    count: usize,
    headers: &[(&str, &str)],
) -> (Vec<WebSocket>, Vec<u16>) {
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..count {
        match ws_connect(gate.port(), &path(subject), headers).await {
            Ok(socket) => open.push(socket),
            Err(status) => refused.push(status),
        }
    }
    (open, refused)
}

fn stat(gate: &Gate, name: &str) -> Option<u64> {
    gate.envoy.stat(&format!("wasmcustom.wsgate.limits.{name}"))
}

#[tokio::test]
async fn the_limit_per_identity_holds_across_workers_and_a_socket_that_ends_frees_its_place() {
    let gate = Gate::start_workers(&[&config(json!({"max_sockets_per_identity": 3}))], 2).await;
    let (mut alice, refused) = open(&gate, "alice", 10, &[ALLOWED]).await;
    assert_eq!(alice.len(), 3, "sockets admitted for one identity");
    assert_eq!(refused, [429; 7]);
    // The connections went to both workers: the count is one across them.
    let admin = gate.envoy.admin_get("/stats?filter=worker_.\\.downstream_cx_total").unwrap();
    let per_worker: Vec<u64> = admin
        .lines()
        .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(per_worker.len(), 2, "one worker took every connection: {admin}");
    let (bob, _) = open(&gate, "bob", 1, &[ALLOWED]).await;
    assert_eq!(bob.len(), 1, "another identity has places of its own");
    alice.pop().unwrap().close(None).await.unwrap();
    let mut admitted = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut socket, _) = open(&gate, "alice", 1, &[ALLOWED]).await;
        if let Some(socket) = socket.pop() {
            admitted = Some(socket);
            break;
        }
    }
    assert!(admitted.is_some(), "the place of the closed socket stayed taken");
    assert!(stat(&gate, "denied.too_many_sockets_per_identity").unwrap() >= 7);
    let handshakes = gate.upstream_requests().iter().filter(|request| request.is_upgrade()).count();
    assert_eq!(handshakes, 3 + 1 + 1, "a refused handshake reached the upstream");
}

#[tokio::test]
async fn the_limit_per_client_counts_the_address_envoy_resolved_not_x_forwarded_for() {
    let gate = Gate::start_with_connection_manager(
        &[&config(json!({"max_sockets_per_client": 2}))],
        "\n          use_remote_address: true",
    )
    .await;
    let (first, _) = open(&gate, "alice", 2, &[ALLOWED]).await;
    assert_eq!(first.len(), 2);
    for forged in ["203.0.113.7", "198.51.100.1, 203.0.113.9"] {
        let (more, refused) = open(&gate, "bob", 1, &[ALLOWED, ("x-forwarded-for", forged)]).await;
        assert!(more.is_empty(), "x-forwarded-for: {forged} made another client");
        assert_eq!(refused, [429]);
    }
    assert_eq!(stat(&gate, "denied.too_many_sockets_per_client"), Some(2));
}
