//! `wsgate-check` decides as the filter in Envoy does, on the same configuration and requests;
//! and it reports configuration errors with their JSON paths.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Command;

use support::client::raw;
use support::Gate;

const CONFIG: &str = r#"{
  "stat_prefix": "edge",
  "policies": [
    {"name": "chat", "match": {"hosts": ["chat.example.com"], "path_prefix": "/ws"},
     "allowed_origins": ["https://chat.example.com"], "require_tls": false,
     "auth": {"sources": [{"query": "access_token"}],
              "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}}
  ],
  "default": {"allowed_origins": ["https://app.example.com"], "require_tls": false}
}"#;

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wsgate-check-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate-check")).args(args).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).to_string())
}

/// The HTTP status the checker's verdict stands for: 101 for an admission.
fn checked_status(stdout: &str) -> u16 {
    if stdout.contains("verdict: admit") {
        return 101;
    }
    let status = stdout.lines().find_map(|line| line.strip_prefix("status: ")).expect("a status");
    status.parse().unwrap()
}

#[tokio::test]
async fn the_checker_gives_the_same_verdict_as_envoy_on_the_same_requests() {
    let config = write_temp("same.json", CONFIG);
    let gate = Gate::start(&[CONFIG]).await;
    let cases = [
        ("chat.example.com", "/ws?access_token=k-7f3a9c", "https://chat.example.com"),
        ("chat.example.com", "/ws?access_token=k-guess", "https://chat.example.com"),
        ("chat.example.com", "/ws", "https://chat.example.com"),
        ("chat.example.com", "/ws?access_token=k-7f3a9c", "https://app.example.com"),
        ("www.example.com", "/ws", "https://app.example.com"),
        ("www.example.com", "/ws", "https://chat.example.com"),
        ("www.example.com", "/ws", "null"),
    ];
    for (host, path, origin) in cases {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n\r\n"
        );
        let envoy = raw(gate.port(), request.as_bytes()).await.status;
        let url = format!("ws://{host}{path}");
        let (code, stdout) = check(&[config.to_str().unwrap(), "--url", &url, "--origin", origin]);
        assert_eq!(code, Some(0), "{stdout}");
        assert_eq!(
            checked_status(&stdout),
            envoy,
            "{host}{path} from {origin}: Envoy said {envoy}, the checker:\n{stdout}"
        );
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_checker_reports_the_errors_of_every_policy_and_part_with_their_paths_and_fails() {
    let broken = r#"{
      "policies": [
        {"match": {"hosts": ["a.example"]}, "allowed_origins": ["https//x"]},
        {"match": {"hosts": ["b.example"]}, "allowed_origins": ["*"], "deny_status": 200}
      ],
      "default": {"allowed_origins": []}
    }"#;
    let config = write_temp("broken.json", broken);
    let (code, stdout) = check(&[config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    for line in [
        r#"error: policies[0].allowed_origins[0]: "https//x" is not an origin (missing "://")"#,
        r#"error: policies[1].allowed_origins[0]: "*" is not an origin"#,
        "error: policies[1].deny_status: 200 is not a client or server error status (400-599)",
        "error: default.allowed_origins: is empty; list at least one origin",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_checker_accepts_a_valid_configuration_and_says_what_it_compiled_to() {
    let config = write_temp("valid.json", CONFIG);
    let (code, stdout) = check(&[config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("policy chat (mode=enforce"), "{stdout}");
    assert!(stdout.contains("policy default (mode=enforce"), "{stdout}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_checker_says_when_a_handshake_waits_for_its_first_message() {
    let waiting = r#"{
      "allowed_origins": ["https://app.example.com"],
      "auth": {"sources": [{"query": "access_token"}, {"first_message": {"token_pointer": "/token", "timeout_ms": 3000}}],
               "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}
    }"#;
    let config = write_temp("waiting.json", waiting);
    let path = config.to_str().unwrap();
    let (code, stdout) =
        check(&[path, "--url", "wss://app.example.com/ws", "--origin", "https://app.example.com"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("verdict: admit once the first message verifies"), "{stdout}");
    assert!(stdout.contains("first message: within 3000 ms, else the socket is closed"), "{stdout}");
    let (_, stdout) = check(&[
        path,
        "--url",
        "wss://app.example.com/ws?access_token=k-7f3a9c",
        "--origin",
        "https://app.example.com",
    ]);
    assert!(stdout.contains("verdict: admit\n"), "{stdout}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_checker_advises_the_connection_manager_settings_that_the_demo_config_ships() {
    let config = write_temp("advice.json", CONFIG);
    let (code, stdout) = check(&[config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    let demo = std::fs::read_to_string(support::repo().join("envoy/envoy.yaml")).unwrap();
    let advised: Vec<&str> = stdout.lines().filter_map(|line| line.strip_prefix("advice:   ")).collect();
    assert_eq!(advised.len(), 5, "{stdout}");
    for line in advised {
        let setting = line.split("  # ").next().unwrap();
        assert!(demo.contains(setting), "envoy/envoy.yaml lacks {setting:?}");
    }
}

#[test]
fn the_checker_describes_message_rules_limits_and_compression_and_advises_on_the_client_address() {
    let config = write_temp(
        "bounds.json",
        r#"{"allowed_origins": ["https://app.example.com"],
            "messages": {"client": {"max_message_bytes": 4096, "opcodes": ["text"]}},
            "limits": {"max_sockets_per_client": 50}}"#,
    );
    let (code, stdout) = check(&[config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("compression=strip"), "{stdout}");
    assert!(stdout.contains("limits: max_sockets_per_client=50"), "{stdout}");
    assert!(stdout.contains("messages: client(max_message_bytes=4096 opcodes=text)"), "{stdout}");
    assert!(stdout.contains("advice:   use_remote_address: true"), "{stdout}");
    let _ = std::fs::remove_file(config);
}
