//! Configuration reload under traffic, through ECDS (a file Envoy watches): a new configuration
//! applies to new handshakes, established sockets keep working, and a configuration that wsgate
//! refuses is refused by Envoy while the previous one keeps serving.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::client::{ws_connect, ws_echo};
use support::{bootstrap_yaml, build, module_path, wasm_path, Build, Envoy, Recorder};

/// The filter's configuration as an ECDS resource, for the build under test.
fn ecds_resource(allowed_origin: &str) -> String {
    let plugin = format!(r#"{{"allowed_origins": ["{allowed_origin}"], "require_tls": false}}"#);
    let value = serde_json::to_string(&plugin).unwrap();
    let typed_config = match build() {
        Build::Native => format!(
            r#"    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config:
      module: {{local: {{filename: {module}}}}}
      metrics_namespace: wasmcustom
    filter_name: wsgate
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {value}
"#,
            module = module_path().display(),
        ),
        Build::Wasm => format!(
            r#"    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: wsgate
      root_id: wsgate
      failure_policy: FAIL_CLOSED
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {value}
      vm_config:
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: {wasm}}}}}
"#,
            wasm = wasm_path().display(),
        ),
    };
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: wsgate\n  typed_config:\n{typed_config}"
    )
}

/// The shared test bootstrap, with one listener whose wsgate filter comes through ECDS from
/// `resource`; a file subscription also needs the node's id and cluster.
fn bootstrap(upstream: std::net::SocketAddr, resource: &Path) -> String {
    let listener = format!(
        r#"
  - name: ecds
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ecds
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}]
          http_filters:
          - name: wsgate
            config_discovery:
              config_source: {{path_config_source: {{path: {}}}}}
              type_urls: [{type_url}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        resource.display(),
        type_url = match build() {
            Build::Wasm => "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            Build::Native => {
                "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
            }
        }
    );
    format!(
        "node: {{id: wsgate-reload-test, cluster: wsgate-tests}}\n{}",
        bootstrap_yaml(&[listener], upstream, 0)
    )
}

/// Replaces the watched file the way Envoy expects: a whole new file moved over the old one.
fn publish(resource: &Path, text: &str) {
    let staging = resource.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, resource).unwrap();
}

/// Waits until a handshake from `origin` gets `status`, for at most 15 s.
async fn until_status(port: u16, origin: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = match ws_connect(port, "/ws", &[("origin", origin)]).await {
            Ok(_) => 101,
            Err(status) => status,
        };
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{origin} still gets {got}, not {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_new_configuration_applies_to_new_handshakes_while_open_sockets_keep_working() {
    let upstream = wsgate_echo::start("127.0.0.1:0", Recorder::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("wsgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resource = dir.join("wsgate.yaml");
    std::fs::write(&resource, ecds_resource("https://app.example.com")).unwrap();
    let mut envoy = Envoy::start(&bootstrap(upstream, &resource));
    envoy.also_remove(dir);
    let port = envoy.listener_port("ecds");

    until_status(port, "https://app.example.com", 101).await;
    let mut admitted_before =
        ws_connect(port, "/ws", &[("origin", "https://app.example.com")]).await.unwrap();
    assert_eq!(ws_echo(&mut admitted_before, "before").await, "before");

    // A new policy: only other.example. New handshakes follow it.
    publish(&resource, &ecds_resource("https://other.example"));
    until_status(port, "https://other.example", 101).await;
    until_status(port, "https://app.example.com", 403).await;
    // The socket admitted under the old policy is untouched.
    assert_eq!(ws_echo(&mut admitted_before, "after").await, "after");

    // A configuration wsgate refuses: Envoy refuses the update, the last good one keeps serving.
    publish(&resource, &ecds_resource("https//broken"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !envoy.log().contains("configuration rejected: allowed_origins[0]") {
        assert!(Instant::now() < deadline, "the bad configuration was never loaded:\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ws_connect(port, "/ws", &[("origin", "https://other.example")]).await.is_ok());
    assert_eq!(ws_connect(port, "/ws", &[("origin", "https://app.example.com")]).await.err(), Some(403));
    assert_eq!(ws_echo(&mut admitted_before, "still").await, "still");

    // The native build: each configuration has a timer thread, which stops with it once its
    // last socket is gone, so that reloads do not pile threads up.
    if build() == Build::Native {
        drop(admitted_before);
        let deadline = Instant::now() + Duration::from_secs(15);
        while timer_threads(envoy.pid()) != 1 {
            assert!(Instant::now() < deadline, "{} timer threads", timer_threads(envoy.pid()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How many threads of the process are the module's timer threads, by their name.
fn timer_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "wsgate-timer")
        .count()
}
