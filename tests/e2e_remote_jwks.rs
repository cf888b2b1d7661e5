//! Key sets fetched from the identity provider (`remote_jwks`) through a real Envoy: a small
//! key-set server of ours is the `idp` cluster, and each test changes what it serves.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::client::ws_connect;
use support::{repo, Gate, Transport};

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");
const STAT: &str = "wasmcustom.wsgate.keys";

/// What the key-set server answers, and how many requests it has had.
#[derive(Clone)]
struct KeySetServer {
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<AtomicUsize>,
    address: SocketAddr,
}

impl KeySetServer {
    async fn start(status: u16, body: String) -> KeySetServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = KeySetServer {
            answer: Arc::new(Mutex::new((status, body))),
            requests: Arc::new(AtomicUsize::new(0)),
            address: listener.local_addr().unwrap(),
        };
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    shared.requests.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = shared.answer.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} Status\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        server
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The test keys with these kids, as a JWK Set.
fn key_set(kids: &[&str]) -> String {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/keys/jwks.json")).unwrap()).unwrap();
    let keys: Vec<&Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn config(refresh: u64, retry: u64) -> String {
    json!({
        "stat_prefix": "keys",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": {
                "algorithms": ["RS256"],
                "remote_jwks": {"cluster": "idp", "authority": "idp.example.com", "path": "/jwks.json",
                                "refresh_seconds": refresh, "retry_seconds": retry, "timeout_ms": 1000},
                "issuers": ["https://issuer.example"],
                "audiences": ["chat"],
                "cache": {"max_entries": 0}
            }
        }
    })
    .to_string()
}

/// An RS256 token signed with the key of `kid` (`rsa-1`: rsa.pem, `rsa-2`: rsa-other.pem).
fn token(kid: &str) -> String {
    let file = if kid == "rsa-1" { "rsa.pem" } else { "rsa-other.pem" };
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(repo().join("tests/keys").join(file)).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": "https://issuer.example", "aud": "chat", "sub": "u", "exp": now + 300});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The status of a handshake with a token signed by `kid`'s key (101: admitted).
async fn handshake(gate: &Gate, kid: &str) -> u16 {
    match ws_connect(gate.port(), &format!("/ws?access_token={}", token(kid)), &[ALLOWED]).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

async fn start(server: &KeySetServer, refresh: u64, retry: u64) -> Gate {
    let config = config(refresh, retry);
    Gate::start_with_clusters(&[(&config, Transport::Plaintext)], &[("idp", server.address)]).await
}

/// Waits until counter `name` (after the prefix) reaches `at_least`.
async fn wait_for_stat(gate: &Gate, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let full = format!("{STAT}.{name}");
    while gate.envoy.stat(&full).unwrap_or(0) < at_least {
        assert!(Instant::now() < deadline, "{full} did not reach {at_least}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tokens_verify_once_the_first_key_set_has_been_fetched() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 600, 1).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    assert_eq!(handshake(&gate, "rsa-1").await, 101);
    assert_eq!(handshake(&gate, "rsa-2").await, 401);
}

#[tokio::test]
async fn with_the_key_server_down_at_start_handshakes_get_503_until_it_is_up() {
    let server = KeySetServer::start(503, String::new()).await;
    let gate = start(&server, 600, 1).await;
    wait_for_stat(&gate, "jwks.fetch_failed", 1).await;
    assert_eq!(handshake(&gate, "rsa-1").await, 503);
    assert!(gate.envoy.stat(&format!("{STAT}.denied.jwks_unavailable")).unwrap_or(0) >= 1);
    assert!(gate.upstream_requests().is_empty());
    server.serve(200, key_set(&["rsa-1"]));
    wait_for_stat(&gate, "jwks.updated", 1).await;
    assert_eq!(handshake(&gate, "rsa-1").await, 101);
}

#[tokio::test]
async fn a_rotated_key_set_is_picked_up_on_the_next_refresh() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 2, 1).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    let updated = gate.envoy.stat(&format!("{STAT}.jwks.updated")).unwrap();
    server.serve(200, key_set(&["rsa-2"]));
    // Every VM refreshes on its own; two more updates are at least one refresh of each.
    wait_for_stat(&gate, "jwks.updated", updated + 2).await;
    assert_eq!(handshake(&gate, "rsa-2").await, 101);
    assert_eq!(handshake(&gate, "rsa-1").await, 401, "a key gone from the set still verifies");
}

#[tokio::test]
async fn an_unknown_kid_brings_the_next_fetch_forward() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 600, 1).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    server.serve(200, key_set(&["rsa-1", "rsa-2"]));
    assert_eq!(handshake(&gate, "rsa-2").await, 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake(&gate, "rsa-2").await != 101 {
        assert!(Instant::now() < deadline, "the rotated key was not fetched after an unknown kid");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_one_fetch_per_retry_seconds() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 600, 5).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    // Both VMs (main thread and worker) have fetched once and sit idle for 600 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.requests();
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(4) {
        refused += usize::from(handshake(&gate, "rsa-2").await == 401);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(refused > 20, "only {refused} handshakes were sent");
    assert_eq!(server.requests() - before, 1, "fetches during a flood of unknown kids");
}

#[tokio::test]
async fn a_key_server_failing_later_keeps_the_last_good_set() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 2, 1).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    server.serve(500, String::new());
    wait_for_stat(&gate, "jwks.fetch_failed", 2).await;
    assert_eq!(handshake(&gate, "rsa-1").await, 101);
}

#[tokio::test]
async fn a_malformed_key_set_is_refused_and_the_last_good_one_stays() {
    let server = KeySetServer::start(200, key_set(&["rsa-1"])).await;
    let gate = start(&server, 2, 1).await;
    wait_for_stat(&gate, "jwks.updated", 1).await;
    server.serve(200, r#"{"keys": [{"kty": "RSA", "kid": "rsa-2", "n": "AQAB", "e": "AQAB"}]}"#.to_string());
    wait_for_stat(&gate, "jwks.rejected", 2).await;
    assert_eq!(handshake(&gate, "rsa-1").await, 101);
    assert_eq!(handshake(&gate, "rsa-2").await, 401);
    assert!(gate.envoy.wsgate_log().iter().any(|line| line.contains("key set refused")));
}
