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

/// A digest that pins a module: 64 lower-case hex digits, given as a YAML string (unquoted, a
/// digest of digits only would be a number, which the API server refuses). The pattern is the
/// one Istio's WasmPlugin CRD enforces (`(^$|^[a-f0-9]{64}$)`, extensions/v1alpha1/wasm.proto).
fn assert_pinned(value: &Value, place: &str) {
    let digest = value.as_str().unwrap_or_else(|| panic!("{place}: sha256 is not a string: {value:?}"));
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{place}: {digest:?} is not a bare sha256 digest"
    );
}

/// The pod labels of the ingress gateways that Istio's documented installs create, by namespace:
/// the Helm chart `gateway` installed as release `istio-ingress` in `istio-ingress` labels its pods
/// `istio: ingress` (manifests/charts/gateway/templates/_helpers.tpl, `gateway.selectorLabels`:
/// the release name without `istio-`); istioctl's default profile runs `istio-ingressgateway` in
/// `istio-system`, labelled `istio: ingressgateway` (manifests/charts/gateways/istio-ingress/values.yaml).
const DOCUMENTED_GATEWAYS: [(&str, &str); 2] =
    [("istio-ingress", "ingress"), ("istio-system", "ingressgateway")];

/// Asserts an Istio extension attaches to something a documented install has: a Gateway API
/// `Gateway` by `targetRefs`, or the pods of a documented gateway install by `selector`.
fn assert_attached(resource: &Value, place: &str) {
    let spec = &resource["spec"];
    let namespace = resource["metadata"]["namespace"].as_str().unwrap();
    match (spec["targetRefs"].as_sequence(), spec["selector"].as_mapping()) {
        (Some(targets), None) => {
            assert!(!targets.is_empty(), "{place}: no target");
            for target in targets {
                assert_eq!(target["kind"].as_str(), Some("Gateway"), "{place}");
                assert_eq!(target["group"].as_str(), Some("gateway.networking.k8s.io"), "{place}");
                assert!(target["name"].as_str().is_some_and(|name| !name.is_empty()), "{place}");
            }
        }
        (None, Some(_)) => {
            let labels = spec["selector"]["matchLabels"].as_mapping().unwrap();
            assert_eq!(labels.len(), 1, "{place}: a selector narrower than any documented install");
            let istio = labels.get("istio").and_then(Value::as_str);
            assert!(
                DOCUMENTED_GATEWAYS.iter().any(|&(ns, label)| ns == namespace && Some(label) == istio),
                "{place}: istio={istio:?} in {namespace} is no documented gateway install"
            );
        }
        // Istio's CEL rule: only one of targetRefs or selector.
        _ => panic!("{place}: exactly one of targetRefs and selector"),
    }
}

/// Istio runs the extensions of one phase by priority, highest first, and sorts one without a
/// priority after every one with one (pilot/pkg/model/push_context.go, `WasmPluginsByListenerInfo`:
/// an unset priority counts as i32::MIN). wsgate must come first in AUTHN.
fn assert_first_in_authn(spec: &Value, place: &str) {
    assert_eq!(spec["phase"].as_str(), Some("AUTHN"), "{place}");
    let priority = spec["priority"].as_i64().unwrap_or_else(|| panic!("{place}: no priority"));
    assert!(priority >= 1000, "{place}: priority {priority} leaves room for other AUTHN plugins first");
}

#[test]
fn every_istio_wasm_plugin_attaches_to_a_documented_gateway_runs_first_is_pinned_and_fails_closed() {
    for path in ["envoy/istio/wasmplugin.yaml", "envoy/istio/wasmplugin-selector.yaml"] {
        let plugin = manifest(path);
        assert_eq!(plugin["kind"].as_str(), Some("WasmPlugin"), "{path}");
        let spec = &plugin["spec"];
        assert_attached(&plugin, path);
        assert_first_in_authn(spec, path);
        assert_eq!(spec["failStrategy"].as_str(), Some("FAIL_CLOSE"), "{path}");
        assert!(spec["url"].as_str().is_some_and(|url| url.starts_with("oci://")), "{path}");
        assert_pinned(&spec["sha256"], path);
        compiles(&spec["pluginConfig"], path);
    }
}

#[test]
fn the_istio_traffic_extension_is_the_wasm_plugin_in_the_newer_api() {
    let path = "envoy/istio/trafficextension.yaml";
    let extension = manifest(path);
    assert_eq!(extension["kind"].as_str(), Some("TrafficExtension"));
    assert_attached(&extension, path);
    assert_first_in_authn(&extension["spec"], path);
    let wasm = &extension["spec"]["wasm"];
    assert_eq!(wasm["failStrategy"].as_str(), Some("FAIL_CLOSE"));
    assert_pinned(&wasm["sha256"], path);
    let plugin = manifest("envoy/istio/wasmplugin.yaml");
    assert_eq!(wasm["url"], plugin["spec"]["url"]);
    assert_eq!(wasm["pluginConfig"], plugin["spec"]["pluginConfig"], "the same configuration");
    compiles(&wasm["pluginConfig"], path);
}

#[test]
fn the_istio_plugins_guard_their_host_and_leave_the_gateways_others_alone() {
    let plugin = manifest("envoy/istio/wasmplugin.yaml");
    let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).unwrap();
    let policy = wsgate::Policy::from_json(json.as_bytes()).unwrap();
    let handshake = |host: &str| {
        wsgate::Request::new(vec![
            (":authority".into(), host.as_bytes().to_vec()),
            (":path".into(), b"/ws".to_vec()),
            ("connection".into(), b"upgrade".to_vec()),
            ("upgrade".into(), b"websocket".to_vec()),
            ("origin".into(), b"https://evil.example".to_vec()),
        ])
        .with_tls(true)
    };
    assert!(matches!(policy.decide(&handshake("chat.example.com"), 1_790_000_000), wsgate::Verdict::Deny(_)));
    assert!(matches!(
        policy.decide(&handshake("shop.example.com"), 1_790_000_000),
        wsgate::Verdict::ShadowDeny(..)
    ));
}

/// Envoy Gateway's default order of the HTTP filters it may add, by filter type
/// (internal/xds/translator/httpfilters.go, `newOrderedHTTPFilter`), the authentication filters
/// among them.
const EG_DEFAULT_ORDER: [&str; 10] = [
    "envoy.filters.http.cors",
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.api_key_auth",
    "envoy.filters.http.basic_auth",
    "envoy.filters.http.oauth2",
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.ext_proc",
    "envoy.filters.http.wasm",
    // Order 250 and up in Envoy Gateway 1.8, after wasm.
    "envoy.filters.http.dynamic_modules",
    "envoy.filters.http.rbac",
];

const EG_AUTHENTICATION: [&str; 5] = [
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.api_key_auth",
    "envoy.filters.http.basic_auth",
    "envoy.filters.http.oauth2",
    "envoy.filters.http.jwt_authn",
];

/// Envoy Gateway's `sortHTTPFilters` with a `filterOrder` of `before` entries: each entry, in
/// turn, moves every filter of its type in front of the first filter of the named type, if the
/// chain has one (internal/xds/translator/httpfilters.go).
fn eg_sorted(mut chain: Vec<&'static str>, order: &[(String, String)]) -> Vec<&'static str> {
    for (name, before) in order {
        let moving: Vec<&str> = chain.iter().copied().filter(|f| f == name).collect();
        if moving.is_empty() {
            continue;
        }
        if let Some(at) = chain.iter().position(|f| f == before) {
            let rest: Vec<&str> = chain.iter().copied().filter(|f| f != name).collect();
            let at = rest.iter().position(|f| *f == chain[at]).unwrap();
            chain = rest[..at].iter().chain(&moving).chain(&rest[at..]).copied().collect();
        }
    }
    chain
}

#[test]
fn the_envoy_gateway_filter_order_puts_wsgate_before_every_authentication_filter_present() {
    assert_first_in_eg_chain("envoy/envoy-gateway/envoyproxy.yaml", "envoy.filters.http.wasm");
}

#[test]
fn the_native_envoy_gateway_filter_order_puts_the_module_before_every_authentication_filter_present() {
    assert_first_in_eg_chain(
        "envoy/envoy-gateway/envoyproxy-native.yaml",
        "envoy.filters.http.dynamic_modules",
    );
}

/// The `filterOrder` of the EnvoyProxy at `path` puts `wsgate` (a filter type) before every
/// authentication filter, whichever of them a route has.
fn assert_first_in_eg_chain(path: &str, wsgate: &str) {
    let proxy = manifest(path);
    assert_eq!(proxy["kind"].as_str(), Some("EnvoyProxy"));
    let order: Vec<(String, String)> = proxy["spec"]["filterOrder"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|entry| (entry["name"].as_str().unwrap().into(), entry["before"].as_str().unwrap().into()))
        .collect();
    // Every subset of the authentication filters a route can have.
    for present in 0..(1u32 << EG_AUTHENTICATION.len()) {
        let chain: Vec<&'static str> = EG_DEFAULT_ORDER
            .iter()
            .copied()
            .filter(|f| match EG_AUTHENTICATION.iter().position(|a| a == f) {
                Some(bit) => present & (1 << bit) != 0,
                None => true,
            })
            .collect();
        let sorted = eg_sorted(chain, &order);
        let wasm = sorted.iter().position(|f| *f == wsgate).unwrap();
        for auth in EG_AUTHENTICATION {
            if let Some(at) = sorted.iter().position(|f| *f == auth) {
                assert!(wasm < at, "wsgate after {auth} in {sorted:?}");
            }
        }
    }
    // The model is no tautology: without the order, wsgate comes after them.
    let unordered = eg_sorted(EG_DEFAULT_ORDER.to_vec(), &[]);
    assert!(
        unordered.iter().position(|f| *f == wsgate)
            > unordered.iter().position(|f| *f == "envoy.filters.http.jwt_authn")
    );
}

#[test]
fn the_native_envoy_gateway_policy_names_a_registered_module_and_its_config_compiles() {
    let path = "envoy/envoy-gateway/envoyextensionpolicy-native.yaml";
    let policy = manifest(path);
    assert_eq!(policy["kind"].as_str(), Some("EnvoyExtensionPolicy"));
    let module = &policy["spec"]["dynamicModule"][0];
    let proxy = manifest("envoy/envoy-gateway/envoyproxy-native.yaml");
    let registered = &proxy["spec"]["dynamicModules"][0];
    assert_eq!(module["name"], registered["name"], "the policy names the registered module");
    // A local file in the proxy's image: a remote one that fails to download installs no filter.
    assert_eq!(registered["source"]["type"].as_str(), Some("Local"));
    assert!(registered["source"]["local"]["path"].as_str().unwrap().ends_with("libwsgate_module.so"));
    compiles(&module["config"], path);
}

#[test]
fn the_istio_envoy_filter_puts_the_module_first_on_the_ingress_gateway_and_its_config_compiles() {
    let path = "envoy/istio/envoyfilter-native.yaml";
    let filter = manifest(path);
    assert_eq!(filter["spec"]["workloadSelector"]["labels"]["istio"].as_str(), Some("ingress"));
    let patch = &filter["spec"]["configPatches"][0];
    assert_eq!(patch["match"]["context"].as_str(), Some("GATEWAY"));
    assert_eq!(patch["patch"]["operation"].as_str(), Some("INSERT_FIRST"));
    let typed = &patch["patch"]["value"]["typed_config"];
    assert!(typed["@type"].as_str().unwrap().ends_with("DynamicModuleFilter"));
    // Istio keeps only the stats whose names it lists, `wasm` among them.
    assert_eq!(typed["dynamic_module_config"]["metrics_namespace"].as_str(), Some("wasmcustom"));
    let json: serde_json::Value =
        serde_json::from_str(typed["filter_config"]["value"].as_str().unwrap()).unwrap();
    compiles(&serde_yaml::to_value(&json).unwrap(), path);
}

#[test]
fn the_envoy_gateway_policy_fails_closed_is_pinned_and_its_config_compiles() {
    let policy = manifest("envoy/envoy-gateway/envoyextensionpolicy.yaml");
    assert_eq!(policy["kind"].as_str(), Some("EnvoyExtensionPolicy"));
    let wasm = &policy["spec"]["wasm"][0];
    assert_eq!(wasm["failOpen"].as_bool(), Some(false));
    assert_eq!(wasm["rootID"].as_str(), Some("wsgate"));
    assert_eq!(wasm["code"]["type"].as_str(), Some("Image"));
    assert_pinned(&wasm["code"]["image"]["sha256"], "envoy/envoy-gateway/envoyextensionpolicy.yaml");
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
