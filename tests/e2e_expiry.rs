//! Sockets that end with their credential (`close_on_expiry`) or their age
//! (`max_connection_seconds`), through a real Envoy: closed within a stated bound, never early,
//! and sockets of policies without these settings never touched.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use support::client::{ws_connect, WebSocket};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

/// The tick that checks the open sockets, plus the second the clock is counted in.
const LATENESS: Duration = Duration::from_millis(2500);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(settings: serde_json::Value) -> String {
    let mut config = json!({
        "stat_prefix": "expiry",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": {
                "algorithms": ["HS256"],
                "jwks": {"keys": [{"kty": "oct", "kid": "hmac-env", "k_env": "WSGATE_TEST_HS_SECRET"}]},
                "issuers": ["https://issuer.example"],
                "audiences": ["chat"],
                "leeway_seconds": 0
            }
        }
    });
    for (key, value) in settings.as_object().unwrap() {
        config[key] = value.clone();
    }
    config.to_string()
}

fn token(exp: u64) -> String {
    support::hs256_token(json!({"iss": "https://issuer.example", "aud": "chat", "sub": "u", "exp": exp}))
}

async fn open(gate: &Gate, exp: u64) -> WebSocket {
    ws_connect(gate.port(), &format!("/ws?access_token={}", token(exp)), &[ALLOWED]).await.unwrap()
}

/// Echoes on the socket every 200 ms until it fails or `limit` passes; when it failed.
async fn closed_after(socket: &mut WebSocket, limit: Duration) -> Option<Duration> {
    ending(socket, limit).await.map(|(after, _)| after)
}

/// [`closed_after`], with the close frame (code and reason) the client got, if any.
async fn ending(socket: &mut WebSocket, limit: Duration) -> Option<(Duration, Option<(u16, String)>)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let mut close = None;
        let echoed = async {
            socket.send(Message::Text("ping".into())).await.ok()?;
            match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "ping" => Some(()),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    close = Some((u16::from(frame.code), frame.reason.to_string()));
                    None
                }
                _ => None,
            }
        };
        if echoed.await.is_none() {
            return Some((started.elapsed(), close));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test]
async fn a_socket_closes_when_the_token_that_admitted_it_expires_and_not_before() {
    let gate = Gate::start(&[&config(json!({"close_on_expiry": true}))]).await;
    // The token expires at the start of a second 3 to 4 s from now.
    let exp = now() + 4;
    let mut socket = open(&gate, exp).await;
    let until_expiry = Duration::from_secs(exp) - SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let closed = closed_after(&mut socket, until_expiry + LATENESS + Duration::from_secs(2)).await;
    let closed = closed.expect("the socket outlived its token");
    assert!(
        closed + Duration::from_millis(300) >= until_expiry,
        "closed {closed:?}, {until_expiry:?} before expiry"
    );
    assert!(closed <= until_expiry + LATENESS, "closed {closed:?} after open, expiry was {until_expiry:?}");
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.expiry.closed_expired"), Some(1));
}

#[tokio::test]
async fn max_connection_seconds_closes_a_socket_whatever_admitted_it() {
    let gate = Gate::start(&[&config(json!({"max_connection_seconds": 2}))]).await;
    let mut socket = open(&gate, now() + 300).await;
    let closed = closed_after(&mut socket, Duration::from_secs(8)).await.expect("the socket was not closed");
    assert!(closed >= Duration::from_secs(1), "closed after {closed:?}, before its 2 s");
    assert!(closed <= Duration::from_secs(2) + LATENESS, "closed after {closed:?}");
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.expiry.closed_max_age"), Some(1));
}

#[tokio::test]
async fn the_native_build_tells_the_client_why_in_a_close_frame_and_the_wasm_build_cannot() {
    let gate = Gate::start(&[&config(json!({"max_connection_seconds": 1}))]).await;
    let mut socket = open(&gate, now() + 300).await;
    let (_, close) = ending(&mut socket, Duration::from_secs(6)).await.expect("the socket was not closed");
    let expected = match support::build() {
        support::Build::Native => Some((1008, "wsgate: closed_max_age".to_string())),
        // proxy-wasm cannot write to the client of an upgraded stream: the connection just ends.
        support::Build::Wasm => None,
    };
    assert_eq!(close, expected);
}

#[tokio::test]
async fn sockets_without_these_settings_are_never_closed() {
    let gate = Gate::start(&[&config(json!({}))]).await;
    let mut socket = open(&gate, now() + 2).await;
    assert_eq!(closed_after(&mut socket, Duration::from_secs(5)).await, None);
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.expiry.closed_expired"), Some(0));
}
