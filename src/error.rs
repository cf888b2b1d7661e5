//! Configuration errors: each names the field it is about, so that Envoy's log says what to fix.

use std::fmt;

/// A configuration that wsgate refuses to run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, as a JSON path: `allowed_origins[2]`, `deny_status`.
    pub field: String,
    /// What is wrong with it, in words.
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), problem: problem.into() }
    }
}

impl ConfigError {
    /// The same error, for a field inside `outer` (`policies[0]`); an empty `outer` changes
    /// nothing.
    pub fn within(self, outer: &str) -> ConfigError {
        let field = match (outer, self.field.as_str()) {
            ("", _) => self.field,
            (outer, "configuration") => outer.to_string(),
            (outer, inner) => format!("{outer}.{inner}"),
        };
        ConfigError { field, problem: self.problem }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}
