//! The deployment examples users copy (Istio, Envoy Gateway, ECDS) fail closed and carry plugin
//! configurations that compile with the core, so they cannot drift from the code.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use serde_yaml::Value;
use support::{repo, validate};

fn manifest(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap()
}

/// Compiles a plugin configuration given as YAML, as Istio and Envoy Gateway pass it on: JSON.
fn compiles(config: &Value, place: &str) {
    let json = serde_json::to_string(config).unwrap();
    if let Err(error) = wsgate::Policy::from_json(json.as_bytes()) {
        panic!("{place}: {error}\n{json}");
    }
}

#[test]
fn the_istio_wasm_plugin_fails_closed_runs_before_authentication_and_its_config_compiles() {
    let plugin = manifest("envoy/istio/wasmplugin.yaml");
    assert_eq!(plugin["kind"].as_str(), Some("WasmPlugin"));
    let spec = &plugin["spec"];
    assert_eq!(spec["failStrategy"].as_str(), Some("FAIL_CLOSE"));
    assert_eq!(spec["phase"].as_str(), Some("AUTHN"));
    assert!(spec["url"].as_str().is_some_and(|url| url.starts_with("oci://") || url.starts_with("file://")));
    compiles(&spec["pluginConfig"], "envoy/istio/wasmplugin.yaml");
}

#[test]
fn the_envoy_gateway_policy_fails_closed_and_its_config_compiles() {
    let policy = manifest("envoy/envoy-gateway/envoyextensionpolicy.yaml");
    assert_eq!(policy["kind"].as_str(), Some("EnvoyExtensionPolicy"));
    let wasm = &policy["spec"]["wasm"][0];
    assert_eq!(wasm["failOpen"].as_bool(), Some(false));
    assert_eq!(wasm["rootID"].as_str(), Some("wsgate"));
    compiles(&wasm["config"], "envoy/envoy-gateway/envoyextensionpolicy.yaml");
}

#[test]
fn the_ecds_example_passes_envoy_validate_and_its_config_compiles() {
    let output = validate(&repo().join("envoy/ecds/envoy.yaml"), &repo());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "envoy --mode validate refused envoy/ecds/envoy.yaml:\n{log}");
    let resource = manifest("envoy/ecds/wsgate.yaml");
    let config = &resource["resources"][0]["typed_config"]["config"];
    assert_eq!(config["failure_policy"].as_str(), Some("FAIL_CLOSED"));
    let json = config["configuration"]["value"].as_str().unwrap();
    if let Err(error) = wsgate::Policy::from_json(json.as_bytes()) {
        panic!("envoy/ecds/wsgate.yaml: {error}");
    }
}
