//! A panic in the dynamic module fails the stream closed and Envoy keeps serving: with the test
//! build of the module (`tests/crasher-module`, the same binding with a probe that panics on a
//! request asking for it).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::client::raw;
use support::{bootstrap_yaml, module_listener_yaml, repo, Envoy, Recorder};

fn handshake(extra: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nhost: chat.example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         origin: https://app.example.com\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_panic_answers_503_to_its_stream_and_envoy_goes_on_serving_the_next() {
    let crasher = repo().join("target/module/libwsgate_test_crasher_module.so");
    assert!(crasher.exists(), "no {}: run the tests with `make test`, which builds it", crasher.display());
    let upstream = Recorder::default();
    let address = wsgate_echo::start("127.0.0.1:0", upstream.clone()).await.unwrap();
    let config = r#"{"allowed_origins": ["https://app.example.com"], "require_tls": false}"#;
    let listener = module_listener_yaml("crash", &crasher, config);
    let envoy = Envoy::start(&bootstrap_yaml(&[listener], address, 0));
    let port = envoy.listener_port("crash");

    let panicked = raw(port, &handshake("x-wsgate-test-panic: 1\r\n")).await;
    assert_eq!(panicked.status, 503);
    assert!(upstream.requests().is_empty(), "the request that panicked reached the upstream");
    assert!(envoy.log().contains("a stream failed closed"), "{}", envoy.log());
    // The positive control, on the same Envoy: the next handshake is decided as usual.
    assert_eq!(raw(port, &handshake("")).await.status, 101);
    assert!(envoy.admin_get("/ready").is_some(), "Envoy stopped serving");
}
