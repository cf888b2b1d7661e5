//! Security headers on ordinary responses: checked and rendered once at load, then turned into
//! a few header edits per response.

use crate::config::{OnExisting, ResponseHeadersConfig};
use crate::csp;
use crate::error::ConfigError;

const FIELD: &str = "response_headers";

/// Header names that wsgate sets through their own keys, and so not through `extra`.
const MANAGED: &[&str] = &[
    "content-security-policy",
    "content-security-policy-report-only",
    "strict-transport-security",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
];

/// Header names that describe the connection or the message framing, which a filter must not
/// invent (RFC 9110 section 7.6.1, RFC 9112 section 6).
const FORBIDDEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

const REFERRER_POLICIES: &[&str] = &[
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

const OPENER_POLICIES: &[&str] =
    &["unsafe-none", "same-origin-allow-popups", "same-origin", "noopener-allow-popups"];

/// The compiled `response_headers`.
#[derive(Clone, Debug, Default)]
pub struct ResponseHeaders {
    on_existing: OnExisting,
    /// Content-Security-Policy (or its report-only form): the one header that may be repeated.
    csp: Option<(&'static str, String)>,
    /// Strict-Transport-Security, sent only over TLS.
    hsts: Option<String>,
    /// The other headers, one value each: name (lower-case) and value.
    single: Vec<(String, String)>,
    warnings: Vec<String>,
}

/// A change to a response's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderEdit<'p> {
    /// Add a header line, keeping any the response has.
    Add(&'p str, &'p str),
    /// Replace every line of the header with this one.
    Set(&'p str, &'p str),
}

/// The response facts the core needs: its status and which headers it has.
#[derive(Clone, Debug, Default)]
pub struct Response {
    headers: Vec<(String, Vec<u8>)>,
}

impl Response {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Response {
        Response { headers }
    }

    pub fn status(&self) -> Option<u16> {
        let status = self.headers.iter().find(|(name, _)| name == ":status")?;
        std::str::from_utf8(&status.1).ok()?.parse().ok()
    }

    /// Whether this answer to an upgrade opens a socket: a 101, or a 2xx to an HTTP/2 extended
    /// CONNECT.
    pub fn opens_socket(&self) -> bool {
        self.status().is_some_and(|status| status == 101 || (200..300).contains(&status))
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Whether the response has header `name` with a value that is not empty or blank.
    pub fn has_value(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, value)| n.eq_ignore_ascii_case(name) && !value.trim_ascii().is_empty())
    }
}

impl ResponseHeaders {
    /// Checks and renders `response_headers`. `require_tls` forbids `ws:` in `connect-src`.
    pub fn compile(
        config: &ResponseHeadersConfig,
        require_tls: bool,
    ) -> Result<ResponseHeaders, ConfigError> {
        let mut compiled = ResponseHeaders { on_existing: config.on_existing, ..ResponseHeaders::default() };
        if let Some(policy) = &config.content_security_policy {
            let policy = csp::compile(policy, require_tls, &format!("{FIELD}.content_security_policy"))?;
            compiled.warnings = policy.warnings;
            compiled.csp = Some((policy.header, policy.value));
        }
        if let Some(hsts) = &config.strict_transport_security {
            let field = format!("{FIELD}.strict_transport_security");
            check_value(&field, hsts)?;
            let has_max_age = hsts.split(';').map(str::trim).any(|directive| {
                directive.len() > 8
                    && directive.get(..8).is_some_and(|d| d.eq_ignore_ascii_case("max-age="))
                    && directive.bytes().skip(8).all(|b| b.is_ascii_digit())
            });
            if !has_max_age {
                return Err(ConfigError::new(field, format!("{hsts:?} has no max-age=<seconds>")));
            }
            compiled.hsts = Some(hsts.clone());
        }
        let known: [(&str, &Option<String>, &[&str]); 3] = [
            ("x-content-type-options", &config.x_content_type_options, &["nosniff"]),
            ("referrer-policy", &config.referrer_policy, REFERRER_POLICIES),
            ("cross-origin-opener-policy", &config.cross_origin_opener_policy, OPENER_POLICIES),
        ];
        for (name, value, allowed) in known {
            let Some(value) = value else { continue };
            let field = format!("{FIELD}.{}", name.replace('-', "_"));
            check_value(&field, value)?;
            // Referrer-Policy may list fallbacks; the browser uses the last one it knows.
            let tokens_ok = value.split(',').map(str::trim).all(|token| allowed.contains(&token));
            if !tokens_ok {
                let problem = format!("{value:?} is not one of {}", allowed.join(", "));
                return Err(ConfigError::new(field, problem));
            }
            compiled.single.push((name.to_string(), value.clone()));
        }
        for (index, extra) in config.extra.iter().enumerate() {
            let field = format!("{FIELD}.extra[{index}]");
            let name = extra.name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("{:?} is not a header name", extra.name),
                ));
            }
            if MANAGED.contains(&name.as_str()) {
                let problem = format!("{name:?} has its own key in response_headers; set it there");
                return Err(ConfigError::new(format!("{field}.name"), problem));
            }
            if FORBIDDEN.contains(&name.as_str()) {
                let problem = format!("{name:?} describes the connection or framing, not the response");
                return Err(ConfigError::new(format!("{field}.name"), problem));
            }
            if compiled.single.iter().any(|(n, _)| *n == name) {
                return Err(ConfigError::new(format!("{field}.name"), format!("{name:?} is given twice")));
            }
            check_value(&format!("{field}.value"), &extra.value)?;
            compiled.single.push((name, extra.value.clone()));
        }
        Ok(compiled)
    }

    /// Ways in which the configured headers weaken themselves, for the log at load.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How many headers a response can get at most.
    pub fn len(&self) -> usize {
        usize::from(self.csp.is_some()) + usize::from(self.hsts.is_some()) + self.single.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edits for one response. `tls`: whether its request arrived over TLS.
    pub fn edits<'p>(&'p self, response: &Response, tls: bool) -> Vec<HeaderEdit<'p>> {
        let mut edits = Vec::with_capacity(self.len());
        if response.status() == Some(101) {
            return edits;
        }
        if let Some((name, value)) = &self.csp {
            // Browsers enforce every policy they get, so a second one can only tighten.
            let edit = match self.on_existing {
                OnExisting::Append => Some(HeaderEdit::Add(name, value)),
                OnExisting::Keep => (!response.has(name)).then_some(HeaderEdit::Add(name, value)),
                OnExisting::Replace => Some(HeaderEdit::Set(name, value)),
            };
            edits.extend(edit);
        }
        let hsts = self.hsts.as_deref().filter(|_| tls).map(|value| ("strict-transport-security", value));
        let singles = self.single.iter().map(|(name, value)| (name.as_str(), value.as_str()));
        for (name, value) in hsts.into_iter().chain(singles) {
            // These carry one value each: a second line would make the header invalid.
            match self.on_existing {
                OnExisting::Replace => edits.push(HeaderEdit::Set(name, value)),
                OnExisting::Append | OnExisting::Keep if !response.has(name) => {
                    edits.push(HeaderEdit::Add(name, value))
                }
                OnExisting::Append | OnExisting::Keep => {}
            }
        }
        edits
    }
}

/// RFC 9110 section 5.6.2 `tchar`: the characters of a token, such as a header name.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header value must be one line of visible ASCII (RFC 9110 section 5.5), no surrounding
/// whitespace: anything else could split the response or be read differently by each client.
fn check_value(field: &str, value: &str) -> Result<(), ConfigError> {
    let visible = value.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
    if value.is_empty() || !visible || value.trim() != value {
        let problem = format!("{value:?} is not a header value: empty, surrounding whitespace, CR, LF, control or non-ASCII characters");
        return Err(ConfigError::new(field, problem));
    }
    Ok(())
}

/// A header name as the upstreams that are most lenient read it: lower case, and `_` as `-`
/// (CGI and its heirs, WSGI, Rack, PHP, Django, turn both into the same variable).
pub fn header_key(name: &str) -> String {
    name.bytes().map(|b| char::from(key_byte(b))).collect()
}

/// Whether `name` read as [`header_key`] reads it is `key` (itself a key), without allocating.
pub fn has_header_key(name: &str, key: &str) -> bool {
    name.len() == key.len() && name.bytes().zip(key.bytes()).all(|(n, k)| key_byte(n) == k)
}

fn key_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Headers that Envoy, the connection or a WebSocket need, or that proxies set to say who the
/// client is: no credential is taken from them and no identity is written to them.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "expect",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "origin",
    "forwarded",
    "via",
    "x-real-ip",
    "x-request-id",
];

/// Prefixes of reserved header names.
const RESERVED_PREFIXES: &[&str] = &["x-forwarded-", "x-envoy-", "sec-websocket-"];

/// A lower-cased header name that may carry a credential or an identity: a token with no `_`
/// (an upstream that reads `_` as `-` could not tell it from another header), not reserved
/// ([`RESERVED_HEADERS`], [`RESERVED_PREFIXES`], pseudo-headers).
pub(crate) fn credential_header_name(name: &str, field: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') {
        return Err(ConfigError::new(field, format!("{name:?} is a pseudo-header, not a header name")));
    }
    if lower.is_empty() || !lower.bytes().all(is_tchar) {
        return Err(ConfigError::new(field, format!("{name:?} is not a header name")));
    }
    if lower.contains('_') {
        let problem = format!("{name:?} has '_', which some upstreams read as '-'; write it with '-'");
        return Err(ConfigError::new(field, problem));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        let problem = format!("{name:?} is a header that Envoy, proxies or WebSockets set or need");
        return Err(ConfigError::new(field, problem));
    }
    Ok(lower)
}
