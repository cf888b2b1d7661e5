//! A soak: mixed traffic at saturation through Envoy with wsgate, for WSGATE_SOAK_SECONDS
//! (5 in `make test`, minutes in `make soak`). It passes when no response is unexpected, no
//! message is lost, reordered or corrupted, no VM was restarted, every decision was counted, and
//! (in a run of a minute or more) Envoy's memory is flat after warm-up.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::client::{raw, ws_connect, ws_echo};
use support::Gate;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "k-7f3a9c";
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";
const LONG_LIVED_SOCKETS: usize = 16;
const HANDSHAKE_WORKERS: usize = 4;

#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    denied_origin: AtomicU64,
    denied_credential: AtomicU64,
    ordinary: AtomicU64,
    messages: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn unexpected(&self, what: String) {
        self.unexpected.lock().unwrap().push(what);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_at_saturation_loses_nothing_and_restarts_no_vm() {
    let seconds: u64 = std::env::var("WSGATE_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let config = format!(
        r#"{{"stat_prefix": "soak", "allowed_origins": ["https://app.example.com"], "require_tls": false,
            "auth": {{"sources": [{{"query": "token"}}], "api_keys": [{{"id": "bot", "sha256": "{KEY_SHA256}"}}]}}}}"#
    );
    let gate = Gate::start(&[&config]).await;
    let port = gate.port();
    let created_before = gate.envoy.stat("wasm.envoy.wasm.runtime.v8.created").unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    let allowed = [("origin", "https://app.example.com")];
    let path = format!("/ws?token={KEY}");

    let mut tasks = Vec::new();
    for socket_id in 0..LONG_LIVED_SOCKETS {
        let (tally, path) = (Arc::clone(&tally), path.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut socket) = ws_connect(port, &path, &allowed).await else {
                tally.unexpected(format!("long-lived socket {socket_id} was refused"));
                return;
            };
            tally.allowed.fetch_add(1, Ordering::Relaxed);
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                let sent = format!("{socket_id}:{sequence}:{}", "x".repeat((sequence % 64) as usize));
                if socket.send(Message::text(sent.clone())).await.is_err() {
                    tally.unexpected(format!("socket {socket_id} could not send message {sequence}"));
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                    Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == sent => {
                        tally.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tally.unexpected(format!(
                            "socket {socket_id} message {sequence}: sent {sent:?}, got {other:?}"
                        ));
                        return;
                    }
                }
                sequence += 1;
            }
            let _ = socket.close(None).await;
        }));
    }
    for worker in 0..HANDSHAKE_WORKERS {
        let (tally, path) = (Arc::clone(&tally), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while Instant::now() < deadline {
                match (round + worker as u64) % 4 {
                    0 => match ws_connect(port, &path, &allowed).await {
                        Ok(mut socket) => {
                            tally.allowed.fetch_add(1, Ordering::Relaxed);
                            if ws_echo(&mut socket, "short-lived").await != "short-lived" {
                                tally.unexpected("a short-lived socket echoed something else".into());
                            }
                            tally.messages.fetch_add(1, Ordering::Relaxed);
                            let _ = socket.close(None).await;
                        }
                        Err(status) => tally.unexpected(format!("an allowed handshake got {status}")),
                    },
                    1 => match ws_connect(port, &path, &[("origin", "https://evil.example")]).await {
                        Err(403) => drop(tally.denied_origin.fetch_add(1, Ordering::Relaxed)),
                        other => tally.unexpected(format!("a foreign origin got {:?}", other.map(|_| 101))),
                    },
                    2 => match ws_connect(port, "/ws?token=k-guess", &allowed).await {
                        Err(401) => drop(tally.denied_credential.fetch_add(1, Ordering::Relaxed)),
                        other => tally.unexpected(format!("a wrong key got {:?}", other.map(|_| 101))),
                    },
                    _ => {
                        let reply = raw(port, b"GET /page HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
                        if reply.status == 200 {
                            tally.ordinary.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.unexpected(format!("an ordinary GET got {}", reply.status));
                        }
                    }
                }
                round += 1;
            }
        }));
    }

    // Memory after a warm-up of a fifth of the run, and at its end.
    let warm_up = Duration::from_secs((seconds / 5).max(1));
    tokio::time::sleep(warm_up).await;
    let rss_start = rss_kib(gate.envoy.pid());
    for task in tasks {
        task.await.unwrap();
    }
    let rss_end = rss_kib(gate.envoy.pid());
    let elapsed = started.elapsed();

    let unexpected = tally.unexpected.lock().unwrap().clone();
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let requests = count(&tally.allowed)
        + count(&tally.denied_origin)
        + count(&tally.denied_credential)
        + count(&tally.ordinary);
    println!(
        "soak: {:.0} s, {requests} requests ({} sockets admitted, {} foreign origins and {} wrong keys refused, {} ordinary), \
         {} messages, Envoy RSS {} KiB after warm-up and {} KiB at the end, {} unexpected",
        elapsed.as_secs_f64(),
        count(&tally.allowed),
        count(&tally.denied_origin),
        count(&tally.denied_credential),
        count(&tally.ordinary),
        count(&tally.messages),
        rss_start,
        rss_end,
        unexpected.len()
    );
    assert!(unexpected.is_empty(), "unexpected: {:?}", &unexpected[..unexpected.len().min(5)]);
    assert_eq!(
        gate.envoy.stat("wasm.envoy.wasm.runtime.v8.created"),
        Some(created_before),
        "a VM was created anew"
    );
    assert_eq!(gate.envoy.stat("wasm.wsgate-listener_0.vm_reload"), Some(0), "a VM was reloaded");
    // Every decision was counted.
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.soak.allowed"), Some(count(&tally.allowed)));
    assert_eq!(
        gate.envoy.stat("wasmcustom.wsgate.soak.denied.origin_not_allowed"),
        Some(count(&tally.denied_origin))
    );
    assert_eq!(
        gate.envoy.stat("wasmcustom.wsgate.soak.denied.api_key_invalid"),
        Some(count(&tally.denied_credential))
    );
    if seconds >= 60 {
        let growth = rss_end.saturating_sub(rss_start);
        assert!(growth < 8 * 1024, "Envoy grew by {growth} KiB after warm-up");
    }
}
