//! WebSockets over HTTP/3 (RFC 9220) through the real Envoy, driven by an HTTP/3 client
//! (`tests/support/h3_client.py`, aioquic): a socket that waits for its first message holds its
//! bytes whatever ends the client's stream, here trailers, as over HTTP/2.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{bootstrap_yaml, http_filters_yaml, repo, scratch_dir, Envoy, Recorder};

const KEY: &str = "k-7f3a9c";
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";

/// Envoy with one HTTP/3 listener (QUIC on UDP, a certificate made for the test) and wsgate
/// waiting for the credential in the first message, in front of a fresh echo upstream.
async fn start() -> (Envoy, u16, Recorder) {
    let upstream = Recorder::default();
    let address = wsgate_echo::start("127.0.0.1:0", upstream.clone()).await.unwrap();
    let dir = scratch_dir();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let config = json!({
        "stat_prefix": "h3",
        "allowed_origins": ["https://app.example.com"],
        "auth": {"sources": [{"first_message": {"token_pointer": "/token", "type_pointer": "/type",
                                                "type_value": "auth", "timeout_ms": 5000}}],
                 "api_keys": [{"id": "bot", "sha256": KEY_SHA256}]}
    });
    let listener = format!(
        r#"
  - name: h3
    address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 0}}}}
    udp_listener_config: {{quic_options: {{}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.quic
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport
          downstream_tls_context:
            common_tls_context:
              alpn_protocols: [h3]
              tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h3
          codec_type: HTTP3
          http3_protocol_options: {{allow_extended_connect: true}}
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}]}}
          http_filters:{filters}
"#,
        cert = cert.display(),
        key = key.display(),
        filters = http_filters_yaml("h3", &config.to_string()),
    );
    let mut envoy = Envoy::start(&bootstrap_yaml(&[listener], address, 0));
    envoy.also_remove(dir);
    let port = envoy.listener_port("h3");
    (envoy, port, upstream)
}

/// Runs the HTTP/3 client on `port` with `args`; what it saw.
fn h3_client(port: u16, args: &[&str]) -> Value {
    let python = repo().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(repo().join("tests/support/h3_client.py"))
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (make setup installs aioquic there)", python.display()));
    assert!(output.status.success(), "h3_client.py: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn http3_trailers_on_a_waiting_socket_end_it_and_release_nothing() {
    let (envoy, port, upstream) = start().await;
    let seen = tokio::task::spawn_blocking(move || h3_client(port, &["trailers"])).await.unwrap();
    assert_eq!(seen["status"], "200", "{seen}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sockets = upstream.sockets();
    assert_eq!(sockets.len(), 1, "the upstream saw one handshake");
    assert_eq!(sockets[0].bytes, 0, "the held bytes reached the upstream");
    assert_eq!(seen["reset"], true, "the stream was not ended: {seen}");
    assert_eq!(envoy.stat("wasmcustom.wsgate.h3.denied.first_message_missing"), Some(1));
}

#[tokio::test]
async fn http3_sockets_are_admitted_by_their_first_message() {
    let (envoy, port, upstream) = start().await;
    let seen = tokio::task::spawn_blocking(move || h3_client(port, &["auth", KEY])).await.unwrap();
    assert_eq!(seen["status"], "200", "{seen}");
    assert!(seen["data"].as_str().unwrap().ends_with("over h3"), "no echo: {seen}");
    assert_eq!(upstream.sockets()[0].messages, ["over h3"]);
    assert_eq!(envoy.stat("wasmcustom.wsgate.h3.allowed"), Some(1));
}
