//! The JSON Schema of the plugin configuration, generated from the configuration types
//! (feature `schema`; never part of the module). `schema/wsgate.schema.json` is its output, and
//! a test fails when the two differ.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::config::{MatchConfig, PolicyConfig};

/// The schema of both forms of the configuration: one policy's keys at the top level, or
/// `policies` and/or `default`.
pub fn generate() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    generator.subschema_for::<PolicyConfig>();
    generator.subschema_for::<MatchConfig>();
    let mut defs: Map<String, Value> = generator.take_definitions(true);
    let policy = defs.get("PolicyConfig").cloned().unwrap_or_default();
    let stat_prefix = json!({
        "type": "string",
        "pattern": "^[a-z0-9_]+$",
        "default": "default",
        "description": "Names this configuration's counters: wsgate.<stat_prefix>.<name>."
    });
    // A policy's keys with further members; the policy object allows no others.
    let extended = |extra: &[(&str, Value)], required: &[&str]| -> Value {
        let mut object = policy.clone();
        if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
            for (name, schema) in extra {
                properties.insert((*name).to_string(), schema.clone());
            }
        }
        if let Some(list) = object.get_mut("required").and_then(Value::as_array_mut) {
            list.extend(required.iter().map(|name| json!(name)));
        }
        object
    };
    let single = extended(&[("stat_prefix", stat_prefix.clone())], &[]);
    let scoped = extended(
        &[
            ("match", json!({"$ref": "#/$defs/MatchConfig"})),
            ("name", json!({"type": "string", "description": "The policy's name in log lines."})),
        ],
        &["match"],
    );
    defs.insert("ScopedPolicy".to_string(), scoped);
    let several = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "stat_prefix": stat_prefix,
            "policies": {
                "type": "array",
                "items": {"$ref": "#/$defs/ScopedPolicy"},
                "description": "Policies for some hosts and paths; the first that matches a request decides."
            },
            "default": {
                "$ref": "#/$defs/PolicyConfig",
                "description": "The policy for requests that match none; without it, their upgrades are refused."
            }
        },
        "anyOf": [{"required": ["policies"]}, {"required": ["default"]}]
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "wsgate plugin configuration",
        "description": "The JSON configuration of the wsgate proxy-wasm filter.",
        "oneOf": [single, several],
        "$defs": defs
    })
}
