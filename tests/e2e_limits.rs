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

#[tokio::test]
async fn a_crashed_vm_does_not_lock_its_users_out_once_its_shares_expire() {
    // Only the wasm build has VMs that crash and come back (FAIL_RELOAD); the native build has
    // one process, whose counts end with it.
    if support::build() != support::Build::Wasm {
        return;
    }
    let probe = support::repo().join("target/probe/wasm32-wasip1/release/wsgate.wasm");
    assert!(probe.exists(), "no {}: run the tests with `make test`, which builds it", probe.display());
    let upstream = wsgate_echo::start("127.0.0.1:0", support::Recorder::default()).await.unwrap();
    let listener = support::listener_yaml("probe", 0, &config(json!({"max_sockets_per_identity": 1})), None)
        .replace(&support::wasm_path().display().to_string(), &probe.display().to_string())
        .replace("failure_policy: FAIL_CLOSED", "failure_policy: FAIL_RELOAD");
    let envoy = support::Envoy::start_workers(&support::bootstrap_yaml(&[listener], upstream, 0), 2);
    let port = envoy.listener_port("probe");
    let connect = || async move { ws_connect(port, &path("alice"), &[ALLOWED]).await };
    let held = connect().await.expect("the first socket");
    assert_eq!(connect().await.err(), Some(429), "the limit before the crash");
    // Crash the VMs: each worker's in turn, until a request reaches each one.
    let crash = b"GET / HTTP/1.1\r\nhost: localhost\r\nx-wsgate-test-panic: 1\r\nconnection: close\r\n\r\n";
    for _ in 0..6 {
        let _ = support::client::raw(port, crash).await;
    }
    drop(held);
    // The crashed VMs' shares stop counting once they are no longer refreshed; the new VMs'
    // own count is nothing.
    let started = std::time::Instant::now();
    let mut refused = Vec::new();
    let mut admitted = None;
    while started.elapsed() < Duration::from_secs(45) {
        match connect().await {
            Ok(socket) => {
                admitted = Some(started.elapsed());
                drop(socket);
                break;
            }
            Err(status) => refused.push(status),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admitted =
        admitted.unwrap_or_else(|| panic!("alice was still locked out after 45 s:\n{}", envoy.log()));
    // The crashed VM's share counted for a while (so the crash happened with the socket
    // counted), and no longer than it may.
    assert!(refused.contains(&429), "no refusal after the crash: {refused:?}");
    assert!(admitted < Duration::from_secs(wsgate::limits::SHARE_TTL_MS / 1000 + 10), "{admitted:?}");
}
