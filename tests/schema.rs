//! The checked-in JSON Schema is the one generated from the configuration types.
#![cfg(feature = "schema")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/wsgate.schema.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        checked_in == wsgate::schema::generate(),
        "schema/wsgate.schema.json is out of date: run `make schema`"
    );
}

#[test]
fn the_schema_describes_both_forms_and_every_policy_key() {
    let schema = wsgate::schema::generate();
    let forms = schema["oneOf"].as_array().unwrap();
    assert_eq!(forms.len(), 2);
    let policy = &schema["$defs"]["PolicyConfig"]["properties"];
    for key in [
        "allowed_origins",
        "missing_origin",
        "null_origin",
        "deny_status",
        "deny_body",
        "mode",
        "response_headers",
        "require_tls",
        "trust_forwarded_proto",
        "auth",
    ] {
        assert!(policy.get(key).is_some(), "no {key} in the schema");
    }
    assert_eq!(schema["$defs"]["Mode"]["enum"], serde_json::json!(["enforce", "shadow"]));
    assert_eq!(schema["$defs"]["PolicyConfig"]["additionalProperties"], serde_json::json!(false));
}

/// `cargo run --bin wsgate-check` and `cargo install --path . --bin wsgate-check` take the
/// default features: those must hold every feature the checker needs.
#[test]
fn the_checker_builds_with_the_default_features() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let package = metadata["packages"].as_array().unwrap().iter().find(|p| p["name"] == "wsgate").unwrap();
    let defaults = package["features"]["default"].as_array().unwrap();
    let checker =
        package["targets"].as_array().unwrap().iter().find(|t| t["name"] == "wsgate-check").unwrap();
    let needed = checker["required-features"].as_array().cloned().unwrap_or_default();
    for feature in &needed {
        assert!(defaults.contains(feature), "wsgate-check needs {feature}, which is not a default feature");
    }
}
