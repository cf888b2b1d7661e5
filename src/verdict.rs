//! What the core decided, and why. Each reason has one log word and one reply, defined here.

use crate::first_message::Awaiting;
use crate::request::Request;

/// The outcome of [`crate::decide`] for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// Not an upgrade: the request passes, with only the identity headers that wsgate sets
    /// removed where a client sent them (no upstream should trust a forged copy on any request).
    Pass(Vec<RequestEdit<'p>>),
    /// An upgrade the policy admits: it goes on to the upstream after these edits (the
    /// credential removed, the verified identity added).
    Admit(Vec<RequestEdit<'p>>),
    /// An upgrade the policy admits on condition: it carries no credential, and one must come in
    /// the client's first message. The handshake goes on after these edits (forged identity
    /// headers and the extension offer removed); the client's bytes are then held and read
    /// with `awaiting`.
    Await { edits: Vec<RequestEdit<'p>>, awaiting: Awaiting },
    /// An upgrade the policy refuses: answered locally, the upstream never sees it.
    Deny(Denial<'p>),
    /// A shadow-mode policy would admit this upgrade; it goes on unchanged but for these edits
    /// (forged identity headers removed, as from every request).
    ShadowAdmit(Vec<RequestEdit<'p>>),
    /// A shadow-mode policy would refuse this upgrade; it is counted and logged, and goes on
    /// unchanged but for these edits (forged identity headers removed).
    ShadowDeny(Denial<'p>, Vec<RequestEdit<'p>>),
}

/// A change to the request headers before the upstream sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestEdit<'p> {
    /// Replace every line of the header with this value.
    Set(&'p str, Vec<u8>),
    /// Remove every line of the header.
    Remove(&'p str),
    /// Replace every line of the header with these lines; none left removes it.
    Lines(&'p str, Vec<Vec<u8>>),
    /// Remove every line of a header under the name the client gave it: a copy of an identity
    /// header in another spelling (`x_wsgate_subject`).
    RemoveForged(String),
}

impl RequestEdit<'_> {
    /// Applies the edit to a header list the way the shell's host calls change Envoy's: what the
    /// upstream receives. For checkers and tests; the shell edits Envoy's map directly.
    pub fn apply(self, headers: &mut Vec<(String, Vec<u8>)>) {
        match self {
            RequestEdit::Set(name, value) => {
                headers.retain(|(n, _)| n != name);
                headers.push((name.to_string(), value));
            }
            RequestEdit::Remove(name) => headers.retain(|(n, _)| n != name),
            RequestEdit::RemoveForged(name) => headers.retain(|(n, _)| *n != name),
            RequestEdit::Lines(name, lines) => {
                headers.retain(|(n, _)| n != name);
                headers.extend(lines.into_iter().map(|line| (name.to_string(), line)));
            }
        }
    }
}

/// A refusal: the reason, and the local reply that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial<'p> {
    pub reason: DenyReason,
    pub status: u16,
    pub body: &'p str,
    /// `WWW-Authenticate`, for a refused credential (RFC 6750 section 3).
    pub challenge: Option<&'static str>,
    /// The name of the policy that decided.
    pub policy: &'p str,
    /// Edits to the request before the reply, which Envoy's access log then shows: the
    /// credentials in its query removed.
    pub scrub: Vec<RequestEdit<'p>>,
}

/// Why an upgrade was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// A well-formed origin that the allow-list does not admit.
    OriginNotAllowed,
    /// No `Origin` header, and `missing_origin` is `deny`.
    OriginMissing,
    /// `Origin: null`, and `null_origin` is `deny`.
    OriginNull,
    /// An `Origin` that is not exactly one serialized origin.
    OriginMalformed,
    /// An upgrade that did not arrive over TLS, and `require_tls` is true.
    InsecureTransport,
    /// No configured source carries a credential.
    TokenMissing,
    /// The first source present holds an empty or undecodable credential, or a header without
    /// its prefix.
    TokenMalformed,
    /// The credential's name appears more than once (parameter, cookie, header, subprotocol),
    /// or credentials appear in more than one configured source.
    TokenDuplicated,
    /// A credential that matches no configured API key.
    ApiKeyInvalid,
    /// A JWT whose `exp` (plus leeway) has passed.
    TokenExpired,
    /// A JWT whose `nbf` (minus leeway) has not come yet.
    TokenNotYetValid,
    /// A JWT whose signature does not verify with the key(s) that fit it.
    TokenBadSignature,
    /// A JWT that no configured key fits (`kid` unknown, or of another key type).
    TokenUnknownKey,
    /// A JWT from an issuer not in `issuers`.
    TokenBadIssuer,
    /// A JWT for none of the `audiences`.
    TokenBadAudience,
    /// No key set has been fetched yet (`remote_jwks`) and no inline key fits the JWT.
    JwksUnavailable,
    /// The client's first message is not the auth message (`type_value`), or the client closed
    /// before sending one.
    FirstMessageMissing,
    /// No first message with a credential within `first_message.timeout_ms`.
    FirstMessageTimeout,
    /// More than `first_message.max_bytes` before the first message was complete.
    FirstMessageTooLarge,
    /// The client's frames break RFC 6455 or use an extension, or the message is not a JSON
    /// object in text.
    FirstMessageMalformed,
    /// wsgate holds no valid configuration: upgrades are refused, never passed.
    NoPolicy,
    /// No policy applies to the request (none matches and there is no `default`).
    NoPolicyMatched,
    /// The upstream sent more than `first_message.upstream_max_bytes` before the client's
    /// credential verified.
    FirstMessageUpstreamTooLarge,
    /// The upgrade's path is not one path: readings that upstreams make of it (case, escapes,
    /// `;` parameters, dot segments, slashes) choose different policies, or it has a bad escape.
    PathAmbiguous,
    /// The upgrade's host is not one host: readings of it (a trailing dot, `*.` over several
    /// labels as in Envoy's virtual hosts) choose different policies.
    HostAmbiguous,
    /// The verified identity has `limits.max_sockets_per_identity` sockets open already.
    TooManySocketsPerIdentity,
    /// The client's address has `limits.max_sockets_per_client` sockets open already.
    TooManySocketsPerClient,
}

/// The status of the reply to [`DenyReason::NoPolicy`].
pub const NO_POLICY_STATUS: u16 = 503;
/// The body of the reply to [`DenyReason::NoPolicy`].
pub const NO_POLICY_BODY: &str = "Service Unavailable: WebSocket gate has no valid configuration";
/// The status of the reply to [`DenyReason::NoPolicyMatched`].
pub const NO_POLICY_MATCHED_STATUS: u16 = 403;
/// The body of the reply to [`DenyReason::NoPolicyMatched`].
pub const NO_POLICY_MATCHED_BODY: &str = "Forbidden: no WebSocket policy for this host and path";
/// The status of the reply to [`DenyReason::PathAmbiguous`] and [`DenyReason::HostAmbiguous`].
pub const AMBIGUOUS_STATUS: u16 = 403;
/// The body of that reply.
pub const AMBIGUOUS_BODY: &str = "Forbidden: the host or path can be read more than one way";
/// The status of the reply to [`DenyReason::InsecureTransport`].
pub const INSECURE_TRANSPORT_STATUS: u16 = 403;
/// The body of the reply to [`DenyReason::InsecureTransport`].
pub const INSECURE_TRANSPORT_BODY: &str = "Forbidden: WebSockets must use TLS (wss://)";
/// The body of the reply to a refused credential: it says no more than the status.
pub const UNAUTHORIZED_BODY: &str = "Unauthorized";
/// The status of the reply to [`DenyReason::JwksUnavailable`].
pub const JWKS_UNAVAILABLE_STATUS: u16 = 503;
/// The body of the reply to [`DenyReason::JwksUnavailable`].
pub const JWKS_UNAVAILABLE_BODY: &str = "Service Unavailable: the token issuer's keys are not available yet";
/// The challenge when no credential was presented.
pub const CHALLENGE: &str = "Bearer realm=\"wsgate\"";
/// The challenge when a credential was presented and refused.
pub const CHALLENGE_INVALID: &str = "Bearer realm=\"wsgate\", error=\"invalid_token\"";
/// The status of the reply to a handshake over a socket limit.
pub const TOO_MANY_SOCKETS_STATUS: u16 = 429;
/// The bodies of those replies.
pub const TOO_MANY_SOCKETS_PER_IDENTITY_BODY: &str =
    "Too Many Requests: too many sockets open for this identity";
pub const TOO_MANY_SOCKETS_PER_CLIENT_BODY: &str =
    "Too Many Requests: too many sockets open from this client";
/// The content type of every local reply.
pub const REPLY_CONTENT_TYPE: &str = "text/plain";

/// The longest excerpt of a request value that a log line quotes.
const LOG_EXCERPT_BYTES: usize = 256;

impl DenyReason {
    /// Every reason, in a fixed order (stat names are made from it).
    pub const ALL: [DenyReason; 27] = [
        DenyReason::OriginNotAllowed,
        DenyReason::OriginMissing,
        DenyReason::OriginNull,
        DenyReason::OriginMalformed,
        DenyReason::InsecureTransport,
        DenyReason::TokenMissing,
        DenyReason::TokenMalformed,
        DenyReason::TokenDuplicated,
        DenyReason::ApiKeyInvalid,
        DenyReason::TokenExpired,
        DenyReason::TokenNotYetValid,
        DenyReason::TokenBadSignature,
        DenyReason::TokenUnknownKey,
        DenyReason::TokenBadIssuer,
        DenyReason::TokenBadAudience,
        DenyReason::NoPolicy,
        DenyReason::NoPolicyMatched,
        DenyReason::JwksUnavailable,
        DenyReason::FirstMessageMissing,
        DenyReason::FirstMessageTimeout,
        DenyReason::FirstMessageTooLarge,
        DenyReason::FirstMessageMalformed,
        DenyReason::PathAmbiguous,
        DenyReason::HostAmbiguous,
        DenyReason::FirstMessageUpstreamTooLarge,
        DenyReason::TooManySocketsPerIdentity,
        DenyReason::TooManySocketsPerClient,
    ];

    /// The word for this reason in logs (and, later, in stat names).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::OriginNotAllowed => "origin_not_allowed",
            DenyReason::OriginMissing => "origin_missing",
            DenyReason::OriginNull => "origin_null",
            DenyReason::OriginMalformed => "origin_malformed",
            DenyReason::InsecureTransport => "insecure_transport",
            DenyReason::TokenMissing => "token_missing",
            DenyReason::TokenMalformed => "token_malformed",
            DenyReason::TokenDuplicated => "token_duplicated",
            DenyReason::ApiKeyInvalid => "api_key_invalid",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::TokenNotYetValid => "token_not_yet_valid",
            DenyReason::TokenBadSignature => "token_bad_signature",
            DenyReason::TokenUnknownKey => "token_unknown_key",
            DenyReason::TokenBadIssuer => "token_bad_issuer",
            DenyReason::TokenBadAudience => "token_bad_audience",
            DenyReason::NoPolicy => "no_policy",
            DenyReason::NoPolicyMatched => "no_policy_matched",
            DenyReason::JwksUnavailable => "jwks_unavailable",
            DenyReason::FirstMessageMissing => "first_message_missing",
            DenyReason::FirstMessageTimeout => "first_message_timeout",
            DenyReason::FirstMessageTooLarge => "first_message_too_large",
            DenyReason::FirstMessageMalformed => "first_message_malformed",
            DenyReason::PathAmbiguous => "path_ambiguous",
            DenyReason::HostAmbiguous => "host_ambiguous",
            DenyReason::FirstMessageUpstreamTooLarge => "first_message_upstream_too_large",
            DenyReason::TooManySocketsPerIdentity => "too_many_sockets_per_identity",
            DenyReason::TooManySocketsPerClient => "too_many_sockets_per_client",
        }
    }
}

impl Denial<'_> {
    /// The headers of the local reply.
    pub fn headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut headers = vec![("content-type", REPLY_CONTENT_TYPE)];
        headers.extend(self.challenge.map(|challenge| ("www-authenticate", challenge)));
        headers
    }

    /// One log line for this denial, in `key=value` form: the reason, the status, the policy
    /// that decided, and the request's details ([`request_fields`]).
    fn describe(&self, what: &str, request: &Request) -> String {
        format!(
            "{what}: reason={} status={} policy={} {}",
            self.reason.as_str(),
            self.status,
            self.policy,
            request_fields(request)
        )
    }
}

/// The request's host, origin, path without its query string (where credentials travel) and
/// `x-request-id`, for a log line. Request values are escaped and cut short, so a hostile header
/// cannot forge or flood log lines. No credential is ever part of it.
pub fn request_fields(request: &Request) -> String {
    let quoted = |name: &str| {
        let values: Vec<String> = request.values(name).map(excerpt).collect();
        if values.is_empty() {
            "-".to_string()
        } else {
            values.join("\",\"")
        }
    };
    let path = request.path();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    format!(
        "host=\"{}\" origin=\"{}\" path=\"{}\" request_id=\"{}\"",
        quoted(":authority"),
        quoted("origin"),
        excerpt(path),
        quoted("x-request-id"),
    )
}

impl<'p> Verdict<'p> {
    /// Whether this verdict is logged: a refusal or a shadow refusal.
    pub fn is_logged(&self) -> bool {
        matches!(self, Verdict::Deny(_) | Verdict::ShadowDeny(..))
    }

    /// The log line for a refusal or a shadow refusal; none for the other verdicts. An
    /// ordinary request (of `also_check`) is named as such.
    pub fn log_line(&self, request: &Request) -> Option<String> {
        let what = if request.is_upgrade() { "upgrade" } else { "request" };
        match self {
            Verdict::Deny(denial) => Some(denial.describe(&format!("denied {what}"), request)),
            Verdict::ShadowDeny(denial, _) => {
                Some(denial.describe(&format!("shadow mode, would deny {what}"), request))
            }
            Verdict::Pass(_) | Verdict::Admit(_) | Verdict::Await { .. } | Verdict::ShadowAdmit(_) => None,
        }
    }

    /// The same verdict with `first` carried out before its own edits; a refusal, which sends
    /// nothing on, is unchanged.
    pub(crate) fn with_edits_first(self, mut first: Vec<RequestEdit<'p>>) -> Verdict<'p> {
        if first.is_empty() {
            return self;
        }
        let mut put = |edits: Vec<RequestEdit<'p>>| {
            first.extend(edits);
            std::mem::take(&mut first)
        };
        match self {
            Verdict::Pass(edits) => Verdict::Pass(put(edits)),
            Verdict::Admit(edits) => Verdict::Admit(put(edits)),
            Verdict::Await { edits, awaiting } => Verdict::Await { edits: put(edits), awaiting },
            Verdict::ShadowAdmit(edits) => Verdict::ShadowAdmit(put(edits)),
            Verdict::ShadowDeny(denial, edits) => Verdict::ShadowDeny(denial, put(edits)),
            Verdict::Deny(denial) => Verdict::Deny(denial),
        }
    }

    /// The edits to carry out on the request before it goes on (or, refused, before the reply).
    pub fn edits(self) -> Vec<RequestEdit<'p>> {
        match self {
            Verdict::Pass(edits)
            | Verdict::Admit(edits)
            | Verdict::Await { edits, .. }
            | Verdict::ShadowAdmit(edits)
            | Verdict::ShadowDeny(_, edits) => edits,
            Verdict::Deny(denial) => denial.scrub,
        }
    }
}

pub(crate) fn excerpt(value: &[u8]) -> String {
    let cut = value.get(..LOG_EXCERPT_BYTES).unwrap_or(value);
    // escape_ascii also escapes '"' and '\\', so a value cannot close the quotes around it.
    let mut text = cut.escape_ascii().to_string();
    if cut.len() < value.len() {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn denial() -> Verdict<'static> {
        Verdict::Deny(Denial {
            reason: DenyReason::OriginNotAllowed,
            status: 403,
            body: "no",
            challenge: None,
            policy: "default",
            scrub: Vec::new(),
        })
    }

    /// An upgrade with these further headers.
    fn request(headers: &[(&str, &[u8])]) -> Request {
        let upgrade: [(&str, &[u8]); 2] = [("connection", b"upgrade"), ("upgrade", b"websocket")];
        Request::new(upgrade.iter().chain(headers).map(|(n, v)| (n.to_string(), v.to_vec())).collect())
    }

    #[test]
    fn a_refused_ordinary_request_is_logged_as_a_request() {
        let r = Request::new(vec![(":path".into(), b"/socket.io/?transport=polling".to_vec())]);
        assert!(denial().log_line(&r).unwrap().starts_with("denied request: reason=origin_not_allowed"));
    }

    #[test]
    fn the_log_line_names_reason_policy_host_origin_path_without_query_and_request_id() {
        let r = request(&[
            (":path", b"/ws?access_token=secret"),
            (":authority", b"chat.example.com"),
            ("origin", b"https://evil.example"),
            ("x-request-id", b"r-1"),
        ]);
        let line = denial().log_line(&r).unwrap();
        assert_eq!(
            line,
            "denied upgrade: reason=origin_not_allowed status=403 policy=default host=\"chat.example.com\" \
             origin=\"https://evil.example\" path=\"/ws\" request_id=\"r-1\""
        );
    }

    #[test]
    fn a_shadow_refusal_is_logged_as_one_and_an_admission_not_at_all() {
        let Verdict::Deny(denial) = denial() else { unreachable!() };
        let r = request(&[(":path", b"/ws")]);
        let line = Verdict::ShadowDeny(denial, Vec::new()).log_line(&r).unwrap();
        assert!(line.starts_with("shadow mode, would deny upgrade: reason=origin_not_allowed"), "{line}");
        assert_eq!(Verdict::ShadowAdmit(Vec::new()).log_line(&r), None);
        assert_eq!(Verdict::Admit(Vec::new()).log_line(&r), None);
    }

    #[test]
    fn the_log_line_escapes_control_bytes_quotes_and_non_ascii() {
        let r = request(&[(":path", b"/ws"), ("origin", b"https://e\"vil\x1b\xff")]);
        let line = denial().log_line(&r).unwrap();
        assert!(line.contains(r#"origin="https://e\"vil\x1b\xff""#), "{line}");
    }

    #[test]
    fn the_log_line_cuts_long_values_short() {
        let long = vec![b'a'; 10_000];
        let r = request(&[(":path", b"/"), ("origin", &long)]);
        assert!(denial().log_line(&r).unwrap().len() < 400);
    }

    #[test]
    fn the_log_line_marks_a_missing_origin() {
        let r = request(&[(":path", b"/ws")]);
        assert!(denial().log_line(&r).unwrap().contains("origin=\"-\""));
    }
}
