//! Content-Security-Policy, checked against CSP Level 3 and rendered once at load.
//!
//! A policy written as a string is parsed into directives first, so both forms get the same
//! checks: known directive names, valid source expressions (CSP3 section 2.3.1), no CR, LF,
//! `;` or `,` inside a value (each would end a directive or a policy early), and no plaintext
//! `ws:` in `connect-src` while TLS is required.

use crate::config::{CspConfig, CspDirectives};
use crate::error::ConfigError;
use crate::headers::is_tchar;

/// A policy ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledCsp {
    /// `content-security-policy`, or `content-security-policy-report-only`.
    pub header: &'static str,
    pub value: String,
    /// Ways in which the policy weakens itself; logged at load, not refused.
    pub warnings: Vec<String>,
}

/// What kind of values a directive takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A serialized source list: keywords, nonces, hashes, schemes, hosts.
    Sources,
    /// `frame-ancestors`: `'self'`, `'none'`, schemes and hosts only.
    Ancestors,
    /// No values at all.
    Flag,
    /// `sandbox`: zero or more sandboxing flags.
    Sandbox,
    /// Exactly one reporting endpoint group name.
    ReportTo,
    /// One or more URIs.
    ReportUri,
    /// `require-trusted-types-for 'script'`.
    RequireTrustedTypesFor,
    /// Policy names and keywords.
    TrustedTypes,
    /// `'allow'` or `'block'`.
    Webrtc,
}

fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "child-src" | "connect-src" | "default-src" | "fenced-frame-src" | "font-src" | "frame-src"
        | "img-src" | "manifest-src" | "media-src" | "object-src" | "script-src" | "script-src-attr"
        | "script-src-elem" | "style-src" | "style-src-attr" | "style-src-elem" | "worker-src"
        | "base-uri" | "form-action" => Kind::Sources,
        "frame-ancestors" => Kind::Ancestors,
        "upgrade-insecure-requests" | "block-all-mixed-content" => Kind::Flag,
        "sandbox" => Kind::Sandbox,
        "report-to" => Kind::ReportTo,
        "report-uri" => Kind::ReportUri,
        "require-trusted-types-for" => Kind::RequireTrustedTypesFor,
        "trusted-types" => Kind::TrustedTypes,
        "webrtc" => Kind::Webrtc,
        _ => return None,
    })
}

const KEYWORDS: &[&str] = &[
    "'self'",
    "'none'",
    "'unsafe-inline'",
    "'unsafe-eval'",
    "'strict-dynamic'",
    "'unsafe-hashes'",
    "'report-sample'",
    "'unsafe-allow-redirects'",
    "'wasm-unsafe-eval'",
    "'inline-speculation-rules'",
];

const SANDBOX_FLAGS: &[&str] = &[
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
];

/// One directive as written, with the JSON path to name in an error.
struct Directive {
    name: String,
    values: Vec<String>,
    field: String,
}

/// Checks and renders a configured policy. `field` is the JSON path of the policy.
pub fn compile(config: &CspConfig, require_tls: bool, field: &str) -> Result<CompiledCsp, ConfigError> {
    let (directives, report_only) = match config {
        CspConfig::Text(text) => (parse_text(text, field)?, false),
        CspConfig::Directives(object) => (from_object(object, field)?, object.report_only),
    };
    let mut warnings = Vec::new();
    for directive in &directives {
        check(directive, &directives, require_tls, &mut warnings)?;
    }
    let value =
        directives
            .iter()
            .map(|d| {
                if d.values.is_empty() {
                    d.name.clone()
                } else {
                    format!("{} {}", d.name, d.values.join(" "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
    let header = if report_only { "content-security-policy-report-only" } else { "content-security-policy" };
    Ok(CompiledCsp { header, value, warnings })
}

fn parse_text(text: &str, field: &str) -> Result<Vec<Directive>, ConfigError> {
    if text.contains(['\r', '\n', ',']) {
        return Err(ConfigError::new(field, "contains CR, LF or ','; a policy is one line of directives"));
    }
    let mut directives: Vec<Directive> = Vec::new();
    for part in text.split(';').map(str::trim).filter(|part| !part.is_empty()) {
        let mut words = part.split_ascii_whitespace();
        let name = words.next().unwrap_or_default().to_ascii_lowercase();
        if directives.iter().any(|d| d.name == name) {
            // Browsers ignore every repetition after the first (CSP3 section 2.2.1).
            return Err(ConfigError::new(field, format!("directive {name:?} appears twice")));
        }
        let values = words.map(str::to_string).collect();
        directives.push(Directive { field: field.to_string(), name, values });
    }
    if directives.is_empty() {
        return Err(ConfigError::new(field, "is empty; set it to null to send no policy"));
    }
    Ok(directives)
}

fn from_object(object: &CspDirectives, field: &str) -> Result<Vec<Directive>, ConfigError> {
    if object.directives.is_empty() {
        let problem = "is empty; set content_security_policy to null to send no policy";
        return Err(ConfigError::new(format!("{field}.directives"), problem));
    }
    let mut directives: Vec<Directive> = object
        .directives
        .iter()
        .map(|(name, values)| Directive {
            field: format!("{field}.directives.{name}"),
            name: name.clone(),
            values: values.clone(),
        })
        .collect();
    if let Some(group) = &object.report_to {
        if object.directives.contains_key("report-to") {
            let problem = "is given twice, here and as the directive \"report-to\"";
            return Err(ConfigError::new(format!("{field}.report_to"), problem));
        }
        directives.push(Directive {
            field: format!("{field}.report_to"),
            name: "report-to".to_string(),
            values: vec![group.clone()],
        });
    }
    Ok(directives)
}

/// Whether `directive` is the source list that governs `target`: `target` itself, or
/// `default-src` where the policy has no `target`.
fn governs(directive: &Directive, all: &[Directive], target: &str) -> bool {
    directive.name == target || (directive.name == "default-src" && !all.iter().any(|d| d.name == target))
}

fn check(
    directive: &Directive,
    all: &[Directive],
    require_tls: bool,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let refuse = |problem: String| Err(ConfigError::new(directive.field.clone(), problem));
    let name = directive.name.as_str();
    let Some(kind) = kind_of(name) else {
        return refuse(format!("{name:?} is not a CSP directive"));
    };
    for value in &directive.values {
        if value.is_empty() || value.contains(|c: char| c.is_ascii_whitespace() || matches!(c, ';' | ',')) {
            return refuse(format!("{value:?} is empty or contains CR, LF, ';', ',' or whitespace"));
        }
        if !value.is_ascii() || value.contains(|c: char| c.is_ascii_control()) {
            return refuse(format!("{value:?} contains non-ASCII or control characters"));
        }
    }
    let values = &directive.values;
    let count_ok = match kind {
        Kind::Sources | Kind::Ancestors | Kind::ReportUri | Kind::TrustedTypes => !values.is_empty(),
        Kind::Flag => values.is_empty(),
        Kind::Sandbox => true,
        Kind::ReportTo | Kind::Webrtc | Kind::RequireTrustedTypesFor => values.len() == 1,
    };
    if !count_ok {
        return refuse(match kind {
            Kind::Flag => format!("{name} takes no values"),
            Kind::Sources | Kind::Ancestors => {
                format!("{name} has no sources; write [\"'none'\"] to allow nothing")
            }
            _ => format!("{name} takes exactly one value"),
        });
    }
    if matches!(kind, Kind::Sources | Kind::Ancestors)
        && values.len() > 1
        && values.iter().any(|v| v.eq_ignore_ascii_case("'none'"))
    {
        return refuse("'none' must be the only source when present".to_string());
    }
    for value in values {
        let lower = value.to_ascii_lowercase();
        let valid = match kind {
            Kind::Sources => is_source_expression(value),
            Kind::Ancestors => {
                lower == "'self'"
                    || lower == "'none'"
                    || (!value.starts_with('\'') && is_source_expression(value))
            }
            Kind::Flag => false,
            Kind::Sandbox => SANDBOX_FLAGS.contains(&lower.as_str()),
            Kind::ReportTo => value.bytes().all(is_tchar),
            Kind::ReportUri => !value.starts_with('\''),
            Kind::RequireTrustedTypesFor => lower == "'script'",
            Kind::TrustedTypes => {
                matches!(lower.as_str(), "'none'" | "'allow-duplicates'" | "*")
                    || value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-#=_/@.%".contains(&b))
            }
            Kind::Webrtc => lower == "'allow'" || lower == "'block'",
        };
        if !valid {
            let quoted = format!("'{lower}'");
            if KEYWORDS.contains(&quoted.as_str()) {
                return refuse(format!(
                    "{value:?} is a host name to a browser; write {quoted}, in single quotes"
                ));
            }
            return refuse(format!("{value:?} is not a valid value of {name}"));
        }
    }
    if require_tls && governs(directive, all, "connect-src") {
        if let Some(plain) = values.iter().find(|v| v.to_ascii_lowercase().starts_with("ws:")) {
            return refuse(format!(
                "{plain:?} lets pages open plaintext WebSockets while require_tls is true; use wss:"
            ));
        }
    }
    if governs(directive, all, "script-src") {
        for weak in ["'unsafe-inline'", "'unsafe-eval'"] {
            if values.iter().any(|v| v.eq_ignore_ascii_case(weak)) {
                warnings.push(format!(
                    "{}: {name} allows {weak}, which undoes most of what CSP protects",
                    directive.field
                ));
            }
        }
    }
    if governs(directive, all, "connect-src") && values.iter().any(|v| v == "*") {
        warnings.push(format!("{}: {name} allows \"*\": pages may connect anywhere", directive.field));
    }
    Ok(())
}

/// CSP3 section 2.3.1 `source-expression`.
fn is_source_expression(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if lower.starts_with('\'') {
        return KEYWORDS.contains(&lower.as_str()) || is_nonce_or_hash(&lower);
    }
    if value == "*" {
        return true;
    }
    // `self` unquoted is, to a browser, a host named "self": always a mistake for 'self'.
    if KEYWORDS.iter().any(|k| k.trim_matches('\'') == lower) {
        return false;
    }
    if let Some(scheme) = value.strip_suffix(':') {
        return is_scheme(scheme);
    }
    is_host_source(value)
}

/// `'nonce-<base64>'` or `'sha256-<base64>'` (and 384, 512), lower-cased already.
fn is_nonce_or_hash(lower: &str) -> bool {
    let Some(inner) = lower.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
        return false;
    };
    let encoded = ["nonce-", "sha256-", "sha384-", "sha512-"].iter().find_map(|p| inner.strip_prefix(p));
    let Some(encoded) = encoded else {
        return false;
    };
    let body = encoded.trim_end_matches('=');
    encoded.len() - body.len() <= 2
        && !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b))
}

fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `[scheme "://"] host [":" port] [path]`, host `*`, `*.` labels or labels.
fn is_host_source(value: &str) -> bool {
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => rest,
        Some(_) => return false,
        None => value,
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|p| p == "*" || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
    let labels = host.strip_prefix("*.").unwrap_or(host);
    let labels = labels.strip_suffix('.').unwrap_or(labels);
    let host_ok = host == "*"
        || labels
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let path_ok = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+=:@/".contains(&b));
    port_ok && host_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn valid_source_expressions_are_accepted() {
        for value in [
            "'self'",
            "'NONE'",
            "'unsafe-inline'",
            "'strict-dynamic'",
            "'nonce-abc123+/=='",
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
            "*",
            "https:",
            "wss:",
            "data:",
            "example.com",
            "*.example.com",
            "wss://chat.example.com",
            "https://cdn.example.com:8443/js/",
            "https://*.example.com:*",
            "http://localhost:3000",
        ] {
            assert!(is_source_expression(value), "{value}");
        }
    }

    #[test]
    fn invalid_source_expressions_are_refused() {
        for value in [
            "self",
            "'unsafe-everything'",
            "'nonce-'",
            "'nonce-a==='",
            "'sha1-abc'",
            "'self",
            "https://",
            "https://exa mple.com",
            "https://a..example.com",
            "https://example.com:80a",
            "https://*example.com",
            "http://[::1]",
            "1http:",
            "https://example.com/a\"b",
        ] {
            assert!(!is_source_expression(value), "{value}");
        }
    }
}
