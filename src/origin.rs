//! Origins (RFC 6454) and the compiled allow-list they are matched against.
//!
//! Both the configured entries and the request's `Origin` go through the same parser, so that
//! they are compared in one normal form: scheme and host lower-cased, the scheme's default port
//! dropped, IPv6 literals in their canonical text (RFC 5952). Anything that is not exactly one
//! serialized origin is refused rather than guessed at: a guess is where a bypass hides.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv6Addr;

/// One serialized origin, normalised: `https://app.example.com`, `http://localhost:8080`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    /// Lower-case DNS name or IPv4 address, or a bracketed IPv6 literal.
    host: String,
    /// `None` when the origin names no port or the scheme's default port.
    port: Option<u16>,
}

/// Why a text is not an origin (or not an allowed pattern). The wording completes the sentence
/// `"<text>" is not an origin (...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginError {
    Empty,
    NonAscii,
    Whitespace,
    List,
    NoSchemeSeparator,
    BadScheme,
    Userinfo,
    Path,
    Query,
    Fragment,
    EmptyHost,
    BadHost,
    BadPort,
    BareWildcard,
    MisplacedWildcard,
    WildcardTooBroad,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OriginError::Empty => "it is empty",
            OriginError::NonAscii => "non-ASCII characters; write the host in punycode (xn--)",
            OriginError::Whitespace => "it contains whitespace or control characters",
            OriginError::List => "a comma-separated list, not one origin",
            OriginError::NoSchemeSeparator => "missing \"://\"",
            OriginError::BadScheme => "the scheme is not a valid URL scheme",
            OriginError::Userinfo => "it has userinfo, user@; an origin is scheme://host[:port]",
            OriginError::Path => {
                "it has a path, and even a trailing \"/\" is one; an origin is scheme://host[:port]"
            }
            OriginError::Query => "it has a query; an origin is scheme://host[:port]",
            OriginError::Fragment => "it has a fragment; an origin is scheme://host[:port]",
            OriginError::EmptyHost => "the host is empty",
            OriginError::BadHost => "the host is not a DNS name, IPv4 or bracketed IPv6 address",
            OriginError::BadPort => "the port is not a number from 1 to 65535",
            OriginError::BareWildcard => "a bare \"*\" would allow every origin; list the origins instead",
            OriginError::MisplacedWildcard => {
                "a wildcard may only be the whole left-most host label, \"*.\" or \"**.\", or the whole port"
            }
            OriginError::WildcardTooBroad => {
                "a host wildcard needs at least two labels after it: \"*.example.com\", not \"*.com\""
            }
        })
    }
}

/// The parts of an origin text, checked but not yet interpreted.
struct Parts<'a> {
    scheme: String,
    host: &'a str,
    port: Option<&'a str>,
}

fn split(text: &str) -> Result<Parts<'_>, OriginError> {
    if text.is_empty() {
        return Err(OriginError::Empty);
    }
    if !text.is_ascii() {
        return Err(OriginError::NonAscii);
    }
    if text.contains(',') {
        return Err(OriginError::List);
    }
    if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(OriginError::Whitespace);
    }
    let (scheme, authority) = text.split_once("://").ok_or(OriginError::NoSchemeSeparator)?;
    // RFC 3986 section 3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let mut scheme_chars = scheme.chars();
    let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(OriginError::BadScheme);
    }
    // The order matters only for the message: each of these ends the authority.
    if authority.contains('@') {
        return Err(OriginError::Userinfo);
    }
    if authority.contains('/') {
        return Err(OriginError::Path);
    }
    if authority.contains('?') {
        return Err(OriginError::Query);
    }
    if authority.contains('#') {
        return Err(OriginError::Fragment);
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or(OriginError::BadHost)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(OriginError::BadPort)?),
        };
        // Keep the brackets' span: the host is re-serialized from the parsed address below.
        (authority.get(..inside.len() + 2).ok_or(OriginError::BadHost)?, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(OriginError::EmptyHost);
    }
    Ok(Parts { scheme: scheme.to_ascii_lowercase(), host, port })
}

/// The port a scheme implies when none is written (RFC 6454 section 4, step 5).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn parse_port(scheme: &str, port: &str) -> Result<Option<u16>, OriginError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::BadPort);
    }
    let number: u16 = port.parse().map_err(|_| OriginError::BadPort)?;
    if number == 0 {
        return Err(OriginError::BadPort);
    }
    Ok(if default_port(scheme) == Some(number) { None } else { Some(number) })
}

/// Normalises a host that has no wildcard: a bracketed IPv6 literal, or DNS labels.
fn parse_host(host: &str) -> Result<String, OriginError> {
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let address: Ipv6Addr = inside.parse().map_err(|_| OriginError::BadHost)?;
        return Ok(format!("[{address}]"));
    }
    // Labels of letters, digits, '-' and '_' (seen in real host names), none empty: this also
    // refuses a trailing dot, which would name a different origin from the same host.
    let valid = host.split('.').all(|label| {
        !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid {
        return Err(OriginError::BadHost);
    }
    Ok(host.to_ascii_lowercase())
}

impl Origin {
    /// Parses one serialized origin, as a browser sends it in `Origin`. A `*` is no wildcard
    /// here, just a character that no host or port has.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let parts = split(text)?;
        let host = parse_host(parts.host)?;
        let port = match parts.port {
            Some(port) => parse_port(&parts.scheme, port)?,
            None => None,
        };
        Ok(Origin { scheme: parts.scheme, host, port })
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The origin a request was sent to: `scheme` (`https` if it arrived over TLS, `http` if
    /// not) and its `:authority`, through the same parser as `Origin`. `None` where the
    /// authority is not a plain host and port (userinfo, a path, a trailing dot, a list).
    pub fn of_authority(tls: bool, authority: &[u8]) -> Option<Origin> {
        let scheme = if tls { "https" } else { "http" };
        let authority = std::str::from_utf8(authority).ok()?;
        Origin::parse(&format!("{scheme}://{authority}")).ok()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// A configured entry that is a pattern rather than one origin.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: exactly one label before `.suffix` (stored with its leading dot).
    OneLabel(String),
    /// `**.suffix`: one or more labels before `.suffix` (stored with its leading dot).
    AnyLabels(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortPattern {
    Is(Option<u16>),
    Any,
}

impl OriginPattern {
    fn matches(&self, origin: &Origin) -> bool {
        if self.scheme != origin.scheme {
            return false;
        }
        if let PortPattern::Is(port) = self.port {
            if port != origin.port {
                return false;
            }
        }
        match &self.host {
            HostPattern::Exact(host) => *host == origin.host,
            // A parsed host has no empty label, so a non-empty prefix is whole labels.
            HostPattern::OneLabel(suffix) => origin
                .host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            HostPattern::AnyLabels(suffix) => {
                origin.host.strip_suffix(suffix.as_str()).is_some_and(|labels| !labels.is_empty())
            }
        }
    }
}

/// A configured entry: one origin, or a pattern.
enum Entry {
    Origin(Origin),
    Pattern(OriginPattern),
}

fn parse_entry(text: &str) -> Result<Entry, OriginError> {
    if text == "*" {
        return Err(OriginError::BareWildcard);
    }
    let parts = split(text)?;
    let scheme = parts.scheme.clone();
    let any_port = parts.port == Some("*");
    let wildcard = parts.host.split_once('.').and_then(|(first, rest)| match first {
        "*" => Some((true, rest)),
        "**" => Some((false, rest)),
        _ => None,
    });
    let host = match wildcard {
        Some((one_label, suffix)) => {
            if suffix.contains('*') {
                return Err(OriginError::MisplacedWildcard);
            }
            if suffix.starts_with('[') || !suffix.contains('.') {
                return Err(OriginError::WildcardTooBroad);
            }
            let suffix = format!(".{}", parse_host(suffix)?);
            if one_label {
                HostPattern::OneLabel(suffix)
            } else {
                HostPattern::AnyLabels(suffix)
            }
        }
        None if parts.host.contains('*') => {
            return Err(if parts.host == "*" || parts.host == "**" {
                OriginError::WildcardTooBroad
            } else {
                OriginError::MisplacedWildcard
            });
        }
        None => HostPattern::Exact(parse_host(parts.host)?),
    };
    if matches!(parts.port, Some(port) if port != "*" && port.contains('*')) {
        return Err(OriginError::MisplacedWildcard);
    }
    let port = match parts.port {
        Some("*") => PortPattern::Any,
        Some(port) => PortPattern::Is(parse_port(&scheme, port)?),
        None => PortPattern::Is(None),
    };
    match (host, port) {
        (HostPattern::Exact(host), PortPattern::Is(port)) if !any_port => {
            Ok(Entry::Origin(Origin { scheme, host, port }))
        }
        (host, port) => Ok(Entry::Pattern(OriginPattern { scheme, host, port })),
    }
}

/// The entry of `allowed_origins` that allows a page's own origin: the origin of the handshake
/// itself (its scheme and `:authority`).
pub const SAME_ORIGIN: &str = "same_origin";

/// The compiled `allowed_origins`: exact origins in a set, patterns in a short list, and
/// whether `same_origin` is one of them.
#[derive(Clone, Debug, Default)]
pub struct OriginAllowList {
    exact: HashSet<Origin>,
    patterns: Vec<OriginPattern>,
    same_origin: bool,
}

/// An entry of `allowed_origins` that was refused, with its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryError {
    pub index: usize,
    pub entry: String,
    pub error: OriginError,
}

impl OriginAllowList {
    /// Compiles the configured entries. Only `http` and `https` origins can open a WebSocket
    /// from a page, so other schemes are refused rather than silently never matching.
    pub fn compile<S: AsRef<str>>(entries: &[S]) -> Result<OriginAllowList, EntryError> {
        let mut list = OriginAllowList::default();
        for (index, entry) in entries.iter().enumerate() {
            let text = entry.as_ref();
            if text == SAME_ORIGIN {
                list.same_origin = true;
                continue;
            }
            let refuse = |error| EntryError { index, entry: text.to_string(), error };
            let parsed = parse_entry(text).map_err(refuse)?;
            let scheme = match &parsed {
                Entry::Origin(origin) => origin.scheme.as_str(),
                Entry::Pattern(pattern) => pattern.scheme.as_str(),
            };
            if scheme != "http" && scheme != "https" {
                return Err(refuse(OriginError::BadScheme));
            }
            match parsed {
                Entry::Origin(origin) => {
                    list.exact.insert(origin);
                }
                Entry::Pattern(pattern) => list.patterns.push(pattern),
            }
        }
        Ok(list)
    }

    /// Whether `origin` may open a socket whose handshake was sent to `own` (see
    /// [`Origin::of_authority`]; `None` if the handshake names no origin of its own).
    pub fn allows(&self, origin: &Origin, own: Option<&Origin>) -> bool {
        self.exact.contains(origin)
            || self.patterns.iter().any(|pattern| pattern.matches(origin))
            || (self.same_origin && own == Some(origin))
    }

    /// Whether `same_origin` is listed: only then is the handshake's own origin worked out.
    pub fn same_origin(&self) -> bool {
        self.same_origin
    }

    /// How many entries were compiled (for the configuration summary in the log).
    pub fn len(&self) -> usize {
        self.exact.len() + self.patterns.len() + usize::from(self.same_origin)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn normal(text: &str) -> String {
        Origin::parse(text).unwrap().to_string()
    }

    fn list(entries: &[&str]) -> OriginAllowList {
        OriginAllowList::compile(entries).unwrap()
    }

    fn allows(entries: &[&str], origin: &str) -> bool {
        list(entries).allows(&Origin::parse(origin).unwrap(), None)
    }

    /// Whether `entries` allow `origin` on a handshake to `authority`, over TLS or not.
    fn allows_on(entries: &[&str], origin: &str, tls: bool, authority: &str) -> bool {
        let own = Origin::of_authority(tls, authority.as_bytes());
        list(entries).allows(&Origin::parse(origin).unwrap(), own.as_ref())
    }

    #[test]
    fn same_origin_allows_the_origin_the_handshake_was_sent_to() {
        assert!(allows_on(&["same_origin"], "https://tenant.example", true, "tenant.example"));
        assert!(allows_on(&["same_origin"], "http://127.0.0.1:8080", false, "127.0.0.1:8080"));
        assert!(allows_on(&["same_origin"], "https://[::1]:8443", true, "[0:0::1]:8443"));
    }

    #[test]
    fn same_origin_reads_the_authority_in_the_origins_normal_form() {
        assert!(allows_on(&["same_origin"], "https://tenant.example", true, "Tenant.EXAMPLE:443"));
        assert!(allows_on(&["same_origin"], "http://tenant.example", false, "tenant.example:80"));
    }

    #[test]
    fn same_origin_takes_the_scheme_from_the_transport() {
        assert!(!allows_on(&["same_origin"], "https://tenant.example", false, "tenant.example"));
        assert!(!allows_on(&["same_origin"], "http://tenant.example", true, "tenant.example"));
    }

    #[test]
    fn same_origin_refuses_another_host_or_port() {
        assert!(!allows_on(&["same_origin"], "https://evil.example", true, "tenant.example"));
        assert!(!allows_on(&["same_origin"], "https://tenant.example:8443", true, "tenant.example"));
        assert!(!allows_on(&["same_origin"], "https://tenant.example", true, "tenant.example:8443"));
    }

    #[test]
    fn same_origin_refuses_an_authority_that_is_not_a_plain_host_and_port() {
        for authority in
            ["", "tenant.example.", "user@tenant.example", "tenant.example/x", "a.example,tenant.example"]
        {
            assert!(!allows_on(&["same_origin"], "https://tenant.example", true, authority), "{authority}");
        }
    }

    #[test]
    fn without_same_origin_the_handshakes_own_origin_is_not_allowed() {
        assert!(!allows_on(&["https://app.example"], "https://tenant.example", true, "tenant.example"));
    }

    fn entry_error(entry: &str) -> OriginError {
        OriginAllowList::compile(&[entry]).unwrap_err().error
    }

    #[test]
    fn scheme_and_host_are_lower_cased() {
        assert_eq!(normal("HTTPS://App.Example.COM"), "https://app.example.com");
    }

    #[test]
    fn the_default_port_of_the_scheme_is_dropped() {
        assert_eq!(normal("https://app.example.com:443"), "https://app.example.com");
        assert_eq!(normal("http://app.example.com:80"), "http://app.example.com");
    }

    #[test]
    fn another_scheme_keeps_a_port_that_is_default_elsewhere() {
        assert_eq!(normal("http://app.example.com:443"), "http://app.example.com:443");
    }

    #[test]
    fn ipv6_literals_are_written_canonically() {
        assert_eq!(normal("http://[0:0:0:0:0:0:0:1]:8080"), "http://[::1]:8080");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for text in ["HTTPS://A.example:443", "http://[::FFFF:1.2.3.4]", "http://localhost:08080"] {
            let once = normal(text);
            assert_eq!(normal(&once), once, "{text}");
        }
    }

    #[test]
    fn texts_that_are_not_one_origin_are_refused() {
        let cases = [
            ("", OriginError::Empty),
            ("https://app.example.com/", OriginError::Path),
            ("https://app.example.com/chat", OriginError::Path),
            ("https://app.example.com?x", OriginError::Query),
            ("https://app.example.com#x", OriginError::Fragment),
            ("https://user@app.example.com", OriginError::Userinfo),
            ("https://app.example.com, https://evil.example", OriginError::List),
            ("https://app.example.com,https://evil.example", OriginError::List),
            ("https://app.example.com ", OriginError::Whitespace),
            ("https://app.exa\tmple.com", OriginError::Whitespace),
            ("https://bücher.example", OriginError::NonAscii),
            ("https//app.example.com", OriginError::NoSchemeSeparator),
            ("app.example.com", OriginError::NoSchemeSeparator),
            ("null", OriginError::NoSchemeSeparator),
            ("1http://app.example.com", OriginError::BadScheme),
            ("https://", OriginError::EmptyHost),
            ("https://:443", OriginError::EmptyHost),
            ("https://app..example.com", OriginError::BadHost),
            ("https://app.example.com.", OriginError::BadHost),
            ("https://[::1", OriginError::BadHost),
            ("https://[zz::1]", OriginError::BadHost),
            ("https://*.example.com", OriginError::BadHost),
            ("https://app.example.com:", OriginError::BadPort),
            ("https://app.example.com:0", OriginError::BadPort),
            ("https://app.example.com:65536", OriginError::BadPort),
            ("https://app.example.com:8a", OriginError::BadPort),
            ("https://app.example.com:443:443", OriginError::BadPort),
            ("https://app.example.com:*", OriginError::BadPort),
        ];
        for (text, error) in cases {
            assert_eq!(Origin::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn an_exact_entry_matches_only_its_origin() {
        let entries = ["https://app.example.com"];
        assert!(allows(&entries, "https://app.example.com"));
        assert!(allows(&entries, "https://APP.example.com:443"));
        assert!(!allows(&entries, "http://app.example.com"));
        assert!(!allows(&entries, "https://app.example.com:8443"));
        assert!(!allows(&entries, "https://app.example.com.evil.example"));
        assert!(!allows(&entries, "https://evilapp.example.com"));
        assert!(!allows(&entries, "https://example.com"));
    }

    #[test]
    fn a_single_star_matches_exactly_one_label_and_never_the_apex() {
        let entries = ["https://*.tenants.example.net"];
        assert!(allows(&entries, "https://a.tenants.example.net"));
        assert!(!allows(&entries, "https://tenants.example.net"));
        assert!(!allows(&entries, "https://a.b.tenants.example.net"));
        assert!(!allows(&entries, "https://atenants.example.net"));
        assert!(!allows(&entries, "https://a.tenants.example.net.evil.example"));
        assert!(!allows(&entries, "http://a.tenants.example.net"));
    }

    #[test]
    fn a_double_star_matches_one_or_more_labels_and_never_the_apex() {
        let entries = ["https://**.example.net"];
        assert!(allows(&entries, "https://a.example.net"));
        assert!(allows(&entries, "https://a.b.c.example.net"));
        assert!(!allows(&entries, "https://example.net"));
        assert!(!allows(&entries, "https://evilexample.net"));
    }

    #[test]
    fn a_star_port_matches_any_port_including_the_default() {
        let entries = ["http://localhost:*"];
        assert!(allows(&entries, "http://localhost:3000"));
        assert!(allows(&entries, "http://localhost"));
        assert!(!allows(&entries, "https://localhost:3000"));
        assert!(!allows(&entries, "http://localhost.evil.example:3000"));
    }

    #[test]
    fn a_wildcard_entry_keeps_its_port() {
        let entries = ["https://*.example.com:8443"];
        assert!(allows(&entries, "https://a.example.com:8443"));
        assert!(!allows(&entries, "https://a.example.com"));
    }

    #[test]
    fn unsafe_or_unclear_entries_are_refused() {
        let cases = [
            ("*", OriginError::BareWildcard),
            ("https://*", OriginError::WildcardTooBroad),
            ("https://*.com", OriginError::WildcardTooBroad),
            ("https://**.com", OriginError::WildcardTooBroad),
            ("https://app.*.example.com", OriginError::MisplacedWildcard),
            ("https://app-*.example.com", OriginError::MisplacedWildcard),
            ("https://*app.example.com", OriginError::MisplacedWildcard),
            ("https://*.*.example.com", OriginError::MisplacedWildcard),
            ("https://app.example.com:80*", OriginError::MisplacedWildcard),
            ("*://app.example.com", OriginError::BadScheme),
            ("ws://app.example.com", OriginError::BadScheme),
            ("chrome-extension://abcdef", OriginError::BadScheme),
            ("https://app.example.com/", OriginError::Path),
            ("https://app.example.com ", OriginError::Whitespace),
            ("null", OriginError::NoSchemeSeparator),
        ];
        for (entry, error) in cases {
            assert_eq!(entry_error(entry), error, "{entry:?}");
        }
    }

    #[test]
    fn a_refused_entry_is_reported_with_its_index() {
        let error = OriginAllowList::compile(&["https://ok.example", "https//x.com"]).unwrap_err();
        assert_eq!(error.index, 1);
        assert_eq!(error.entry, "https//x.com");
    }
}
