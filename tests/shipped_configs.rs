//! The configs users copy (`envoy/`) load in the real Envoy, agree with each other, and a bad
//! plugin config is refused by Envoy with the field named.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use support::{bootstrap_yaml, envoy_bin, free_port, listener_yaml, repo, validate, validate_yaml};

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every value of key `key` anywhere below `value`.
fn find_all<'v>(value: &'v Value, key: &str, found: &mut Vec<&'v Value>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some(key) {
                    found.push(v);
                }
                find_all(v, key, found);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| find_all(v, key, found)),
        _ => {}
    }
}

fn strings<'v>(value: &'v Value, key: &str) -> Vec<&'v str> {
    let mut found = Vec::new();
    find_all(value, key, &mut found);
    found.iter().filter_map(|v| v.as_str()).collect()
}

/// The JSON plugin configurations of every wasm filter in an Envoy config.
fn plugin_configs(envoy: &Value) -> Vec<String> {
    let mut found = Vec::new();
    find_all(envoy, "configuration", &mut found);
    found
        .iter()
        .map(|c| c["value"].as_str().expect("a StringValue plugin configuration").to_string())
        .collect()
}

fn demo() -> PathBuf {
    repo().join("envoy/envoy.yaml")
}

#[test]
fn the_demo_envoy_config_passes_envoy_validate() {
    let output = validate(&demo(), &repo());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "envoy --mode validate refused envoy/envoy.yaml:\n{log}");
    assert!(log.contains("configuration loaded"), "wsgate did not load:\n{log}");
}

#[test]
fn the_native_demo_passes_envoy_validate_with_the_wasm_demos_policies_byte_for_byte() {
    let native = repo().join("envoy/dynamic-module/envoy.yaml");
    let output = validate(&native, &repo());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "envoy --mode validate refused {}:\n{log}", native.display());
    assert_eq!(log.matches("wsgate: configuration loaded").count(), 3, "{log}");
    let native = yaml(&native);
    let mut found = Vec::new();
    find_all(&native, "filter_config", &mut found);
    let policies: Vec<String> = found.iter().map(|c| c["value"].as_str().unwrap().to_string()).collect();
    assert_eq!(policies, plugin_configs(&yaml(&demo())));
}

#[test]
fn every_plugin_config_in_the_demo_compiles_with_the_core() {
    let configs = plugin_configs(&yaml(&demo()));
    assert_eq!(configs.len(), 3, "the demo has three listeners, each with its own plugin config");
    for config in configs {
        if let Err(error) = wsgate::Policy::from_json(config.as_bytes()) {
            panic!("{error}\n{config}");
        }
    }
}

#[test]
fn docker_compose_runs_the_demo_with_the_same_envoy_module_and_upstream() {
    assert_compose_runs("envoy/docker-compose.yaml", "envoy/envoy.yaml");
}

#[test]
fn docker_compose_runs_the_native_demo_with_the_same_envoy_module_and_upstream() {
    assert_compose_runs("envoy/dynamic-module/docker-compose.yaml", "envoy/dynamic-module/envoy.yaml");
}

/// The compose file at `compose` runs Envoy on the config at `demo` (both under the repository),
/// with every file that config names, and the echo upstream where its cluster points.
fn assert_compose_runs(compose: &str, demo: &str) {
    let compose_path = repo().join(compose);
    let compose_dir = compose_path.parent().unwrap().to_path_buf();
    let compose = yaml(&compose_path);
    let envoy_yaml = yaml(&repo().join(demo));
    let services = &compose["services"];
    // Where a path inside a service's container comes from on the host: the volume whose
    // container side is the path itself or a folder above it.
    let host_of = |service: &str, inside: &str| -> PathBuf {
        let volumes = services[service]["volumes"].as_sequence().unwrap();
        volumes
            .iter()
            .filter_map(Value::as_str)
            .find_map(|volume| {
                let mut parts = volume.split(':');
                let (host, mount) = (parts.next()?, parts.next()?);
                let rest = Path::new(inside).strip_prefix(mount).ok()?;
                Some(compose_dir.join(host).join(rest))
            })
            .unwrap_or_else(|| panic!("{service} mounts nothing at {inside}"))
    };
    let normal = |path: PathBuf| -> PathBuf {
        let mut out = PathBuf::new();
        for part in path.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    let root = std::fs::canonicalize(repo()).unwrap();

    // The same Envoy version as the one the tests run.
    let version = Command::new(envoy_bin()).arg("--version").output().unwrap();
    // "<path>  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.split("version: ").nth(1).unwrap().split('/').nth(1).unwrap();
    assert_eq!(services["envoy"]["image"].as_str(), Some(format!("envoyproxy/envoy:v{version}").as_str()));

    // The same envoy.yaml.
    let command: Vec<&str> =
        services["envoy"]["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    let config_inside = command[command.iter().position(|a| *a == "-c").unwrap() + 1];
    assert_eq!(normal(host_of("envoy", config_inside)), root.join(demo));

    // The same module and certificate, at the paths envoy.yaml names, seen from Envoy's
    // working directory.
    let workdir = services["envoy"]["working_dir"].as_str().unwrap();
    let filenames = strings(&envoy_yaml, "filename");
    assert!(filenames.len() >= 4, "the module (per listener) and the certificate: {filenames:?}");
    assert!(filenames.iter().any(|f| f.ends_with(".wasm") || f.ends_with(".so")), "{filenames:?}");
    for filename in filenames {
        let inside = Path::new(workdir).join(filename);
        assert_eq!(normal(host_of("envoy", inside.to_str().unwrap())), root.join(filename), "{filename}");
    }

    // The upstream listens where envoy.yaml's cluster points, and shares Envoy's network.
    let mut addresses = Vec::new();
    find_all(&envoy_yaml["static_resources"]["clusters"], "socket_address", &mut addresses);
    let cluster = format!(
        "{}:{}",
        addresses[0]["address"].as_str().unwrap(),
        addresses[0]["port_value"].as_u64().unwrap()
    );
    let echo: Vec<&str> =
        services["echo"]["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(echo[1], cluster);
    assert_eq!(normal(host_of("echo", echo[0])), root.join("target/release/wsgate-echo"));
    for service in ["echo", "envoy"] {
        assert_eq!(services[service]["network_mode"].as_str(), Some("host"), "{service}");
    }
}

const BAD_CONFIG: &str = r#"{"allowed_origins": ["https://app.example.com", "https//x.com"]}"#;

#[test]
fn envoy_validate_refuses_a_bad_plugin_config_and_names_the_field() {
    let listener = listener_yaml("bad", free_port(), BAD_CONFIG, None);
    let output = validate_yaml(&bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), free_port()));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "Envoy accepted a bad config:\n{log}");
    assert!(
        log.contains(
            r#"configuration rejected: allowed_origins[1]: "https//x.com" is not an origin (missing "://")"#
        ),
        "{log}"
    );
}

#[test]
fn envoy_refuses_to_start_with_a_bad_plugin_config() {
    let listener = listener_yaml("bad", free_port(), r#"{"allowed_origins": ["*"]}"#, None);
    let dir = std::env::temp_dir().join(format!("wsgate-bad-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), free_port()))
        .unwrap();
    let mut child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "1", "--disable-hot-restart"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&output.stderr);
    let status = status.unwrap_or_else(|| panic!("Envoy kept running with a bad plugin config:\n{log}"));
    assert!(!status.success());
    assert!(log.contains("allowed_origins[0]: \"*\" is not an origin"), "{log}");
}

#[test]
fn every_shipped_envoy_config_fails_closed() {
    for path in ["envoy/envoy.yaml", "envoy/ecds/wsgate.yaml"] {
        let config = yaml(&repo().join(path));
        let policies = strings(&config, "failure_policy");
        let mut wasm_filters = Vec::new();
        find_all(&config, "vm_config", &mut wasm_filters);
        assert_eq!(policies.len(), wasm_filters.len(), "{path}: a wasm filter without failure_policy");
        assert!(policies.iter().all(|p| *p == "FAIL_CLOSED"), "{path}: {policies:?}");
        let text = std::fs::read_to_string(repo().join(path)).unwrap();
        assert!(!text.contains("FAIL_OPEN") && !text.contains("fail_open"), "{path} can fail open");
    }
}

const CONNECTION_MANAGER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Every mapping below `value` whose `@type` is the HTTP connection manager.
fn connection_managers(value: &Value) -> Vec<&Value> {
    let mut typed = Vec::new();
    find_all(value, "typed_config", &mut typed);
    typed.into_iter().filter(|config| config["@type"].as_str() == Some(CONNECTION_MANAGER)).collect()
}

#[test]
fn every_connection_manager_under_envoy_has_the_path_and_host_hardening() {
    let shipped = [
        "envoy/envoy.yaml",
        "envoy/dynamic-module/envoy.yaml",
        "envoy/ecds/envoy.yaml",
        "envoy/istio/envoyfilter-hardening.yaml",
    ];
    for path in shipped {
        let config = yaml(&repo().join(path));
        let managers = connection_managers(&config);
        assert!(!managers.is_empty(), "{path}: no connection manager");
        for manager in managers {
            assert_eq!(manager["normalize_path"].as_bool(), Some(true), "{path}");
            assert_eq!(manager["merge_slashes"].as_bool(), Some(true), "{path}");
            let escaped = manager["path_with_escaped_slashes_action"].as_str();
            assert!(
                matches!(escaped, Some("UNESCAPE_AND_REDIRECT" | "REJECT_REQUEST")),
                "{path}: {escaped:?}"
            );
            assert_eq!(manager["strip_trailing_host_dot"].as_bool(), Some(true), "{path}");
            let underscores =
                manager["common_http_protocol_options"]["headers_with_underscores_action"].as_str();
            assert_eq!(underscores, Some("REJECT_REQUEST"), "{path}");
        }
    }
}

#[test]
fn the_envoy_gateway_client_traffic_policy_states_the_path_and_host_hardening() {
    let policy = yaml(&repo().join("envoy/envoy-gateway/clienttrafficpolicy.yaml"));
    assert_eq!(policy["kind"].as_str(), Some("ClientTrafficPolicy"));
    let spec = &policy["spec"];
    assert!(matches!(
        spec["path"]["escapedSlashesAction"].as_str(),
        Some("UnescapeAndRedirect" | "RejectRequest")
    ));
    assert_eq!(spec["path"]["disableMergeSlashes"].as_bool(), Some(false));
    assert_eq!(spec["headers"]["withUnderscoresAction"].as_str(), Some("RejectRequest"));
    assert_eq!(spec["headers"]["host"]["stripTrailingHostDot"].as_bool(), Some(true));
}

#[test]
fn the_end_to_end_tests_use_the_shipped_hardening() {
    let demo = yaml(&demo());
    let shipped = connection_managers(&demo)[0];
    let tested: Value = serde_yaml::from_str(support::HARDENED).unwrap();
    for (key, value) in tested.as_mapping().unwrap() {
        assert_eq!(&shipped[key.as_str().unwrap()], value, "{key:?}");
    }
}

#[test]
fn envoy_refuses_an_identity_header_that_proxies_set_and_names_the_field() {
    let config = r#"{"allowed_origins": ["https://app.example.com"], "auth": {"sources": [{"query": "t"}],
        "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}],
        "key_id_header": "X-Forwarded-User"}}"#;
    let listener = listener_yaml("reserved", free_port(), config, None);
    let output = validate_yaml(&bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), free_port()));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "Envoy accepted a reserved identity header:\n{log}");
    assert!(
        log.contains(r#"configuration rejected: auth.key_id_header: "X-Forwarded-User" is a header"#),
        "{log}"
    );
}

#[test]
fn envoy_refuses_an_rsa_key_over_max_rsa_bits_and_names_the_field() {
    use base64ct::Encoding;
    // An odd modulus of 4104 bits: past the default max_rsa_bits of 4096.
    let mut modulus = vec![0u8; 513];
    modulus[0] = 0x80;
    modulus[512] = 0x01;
    let n = base64ct::Base64UrlUnpadded::encode_string(&modulus);
    let config = format!(
        r#"{{"allowed_origins": ["https://app.example.com"], "auth": {{"sources": [{{"query": "t"}}],
            "jwt": {{"algorithms": ["RS256"], "jwks": {{"keys": [{{"kty": "RSA", "n": "{n}", "e": "AQAB"}}]}},
                    "issuers": ["i"], "audiences": ["a"]}}}}}}"#
    );
    let listener = listener_yaml("big", free_port(), &config, None);
    let output = validate_yaml(&bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), free_port()));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "Envoy accepted a 4104-bit key:\n{log}");
    assert!(
        log.contains("configuration rejected: auth.jwt.jwks.keys[0].n:") && log.contains("max_rsa_bits"),
        "{log}"
    );
    // The positive control: the same key with max_rsa_bits raised loads.
    let raised = config.replace(r#""audiences": ["a"]"#, r#""audiences": ["a"], "max_rsa_bits": 8192"#);
    let listener = listener_yaml("raised", free_port(), &raised, None);
    let output = validate_yaml(&bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), free_port()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_two_access_log_examples_log_the_same_fields_each_the_way_its_build_records_them() {
    let read = |name: &str| std::fs::read_to_string(repo().join("envoy/access-log").join(name)).unwrap();
    let (wasm, native) = (read("wasm.yaml"), read("native.yaml"));
    let lines = |text: &str| -> Vec<String> {
        text.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    };
    let native_as_wasm: Vec<String> = lines(&native)
        .iter()
        .map(|line| {
            let Some((head, note)) = line.split_once("%DYNAMIC_METADATA(wsgate:") else {
                return line.clone();
            };
            format!("{head}%FILTER_STATE(wasm.wsgate_{}", note.replacen(")%", ":PLAIN)%", 1))
        })
        .collect();
    assert_eq!(native_as_wasm, lines(&wasm));
    for note in wsgate::session::Note::ALL {
        assert!(wasm.contains(&format!(
            "wsgate_{}: \"%FILTER_STATE(wasm.wsgate_{}:PLAIN)%\"",
            note.as_str(),
            note.as_str()
        )));
    }
}
