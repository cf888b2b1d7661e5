//! The plugin configuration exactly as users write it (JSON).
//!
//! These types only describe shape and defaults; every value is checked, normalised and
//! compiled by [`crate::policy::Policy::compile`]. Unknown keys are errors: a misspelt key must
//! never leave a protection silently switched off.

use serde::Deserialize;

use crate::error::ConfigError;

/// The whole plugin configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Origins allowed to open a WebSocket: RFC 6454 serialized origins
    /// (`scheme://host[:port]`), where the left-most host label may be `*` (exactly one label)
    /// or `**` (one or more), and the port may be `*`. Required and non-empty.
    pub allowed_origins: Vec<String>,
    /// What to do with an upgrade that carries no `Origin` (non-browser clients).
    /// Defaults to `deny`.
    #[serde(default)]
    pub missing_origin: Admission,
    /// What to do with `Origin: null` (sandboxed iframes, `file:` pages, some redirects).
    /// Defaults to `deny`.
    #[serde(default)]
    pub null_origin: Admission,
    /// Status of the local reply to a refused origin, 400 to 599. Defaults to 403.
    #[serde(default = "default_deny_status")]
    pub deny_status: u16,
    /// Body of that reply, sent as `text/plain`. Defaults to `Forbidden: origin not allowed`.
    #[serde(default = "default_deny_body")]
    pub deny_body: String,
}

/// Whether a class of requests is let through: `"deny"` or `"allow"`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Admission {
    #[default]
    Deny,
    Allow,
}

/// Read through a string, so that `true` or `"maybe"` get an error that says what is expected
/// (serde's own enum error for a non-string is only "expected value").
impl TryFrom<String> for Admission {
    type Error = String;

    fn try_from(value: String) -> Result<Admission, String> {
        match value.as_str() {
            "deny" => Ok(Admission::Deny),
            "allow" => Ok(Admission::Allow),
            _ => Err(format!(
                "unknown value {value:?}, expected \"deny\" or \"allow\""
            )),
        }
    }
}

fn default_deny_status() -> u16 {
    403
}

fn default_deny_body() -> String {
    "Forbidden: origin not allowed".to_string()
}

impl Config {
    /// Parses the JSON text of a plugin configuration. An error names the JSON path of the
    /// offending value (`allowed_origins[1]`), or the key that is not known.
    pub fn from_json(json: &[u8]) -> Result<Config, ConfigError> {
        match json.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                let problem = "is empty; wsgate needs at least `allowed_origins`";
                return Err(ConfigError::new("configuration", problem));
            }
            // serde would also read a struct from a JSON array, by position: refuse that form.
            Some(b'{') => {}
            Some(_) => {
                let problem = "invalid type: the configuration must be a JSON object";
                return Err(ConfigError::new("configuration", problem));
            }
        }
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let config: Config =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let field = if path == "." {
                    "configuration".to_string()
                } else {
                    path
                };
                ConfigError::new(field, error.into_inner().to_string())
            })?;
        deserializer
            .end()
            .map_err(|error| ConfigError::new("configuration", error.to_string()))?;
        Ok(config)
    }
}
