//! The counters wsgate keeps, and their names. The shell defines one Envoy counter per name at
//! load and increments the one the core points at; every VM that defines the same name shares
//! the counter.
//!
//! Names follow Envoy's conventions: `wsgate.<stat_prefix>.<name>`, lower case, underscores.
//! Envoy shows a module's counters at `/stats` under `wasmcustom.` and at `/stats/prometheus`
//! without it: `wasmcustom.wsgate.edge.denied.origin_not_allowed` is
//! `wsgate_edge_denied_origin_not_allowed`.

use crate::messages::{Direction, Violation};
use crate::sockets::CloseReason;
use crate::token::remote::FetchOutcome;
use crate::verdict::{DenyReason, Verdict};

/// One counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Handshakes admitted.
    Allowed,
    /// Handshakes refused, per reason.
    Denied(DenyReason),
    /// Handshakes a shadow-mode policy would have admitted.
    ShadowAllowed,
    /// Handshakes a shadow-mode policy would have refused, per reason; they went on.
    ShadowDenied(DenyReason),
    /// Security headers added to responses.
    ResponseHeadersAdded,
    /// Configurations loaded (once per VM).
    ConfigLoads,
    /// Verified JWTs served from the cache.
    CredentialCacheHits,
    /// JWTs looked up in the cache and not found there (then verified).
    CredentialCacheMisses,
    /// Key sets fetched (`remote_jwks`) and put in use.
    JwksUpdated,
    /// Key set fetches that got no set: no answer, a timeout, a status other than 200.
    JwksFetchFailed,
    /// Key sets fetched and refused; the last good set stays in use.
    JwksRejected,
    /// Admitted sockets closed when their JWT expired.
    ClosedExpired,
    /// Admitted sockets closed after `max_connection_seconds`.
    ClosedMaxAge,
    /// Handshakes admitted on condition of a credential in the first message; each is later
    /// counted once more, as `allowed` or `denied.<reason>`.
    AwaitedFirstMessage,
    /// Admitted sockets ended for breaking a message rule, per direction and rule.
    MessageViolation(Direction, Violation),
    /// Sockets whose shadow-mode policy would have ended them for a message rule; they went on.
    ShadowMessageViolation(Direction, Violation),
}

/// Configurations refused. Not under a `stat_prefix`: a refused configuration has none.
pub const CONFIG_REJECTIONS: &str = "wsgate.config_rejections";

const FIXED: usize = 12;
const REASONS: usize = DenyReason::ALL.len();
const VIOLATIONS: usize = Violation::ALL.len();

impl Counter {
    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Counter> {
        [
            Counter::Allowed,
            Counter::ShadowAllowed,
            Counter::ResponseHeadersAdded,
            Counter::ConfigLoads,
            Counter::CredentialCacheHits,
            Counter::CredentialCacheMisses,
            Counter::JwksUpdated,
            Counter::JwksFetchFailed,
            Counter::JwksRejected,
            Counter::ClosedExpired,
            Counter::ClosedMaxAge,
            Counter::AwaitedFirstMessage,
        ]
        .into_iter()
        .chain(DenyReason::ALL.into_iter().map(Counter::Denied))
        .chain(DenyReason::ALL.into_iter().map(Counter::ShadowDenied))
        .chain(violations().map(|(direction, violation)| Counter::MessageViolation(direction, violation)))
        .chain(
            violations().map(|(direction, violation)| Counter::ShadowMessageViolation(direction, violation)),
        )
    }

    /// The counter's place in [`names`].
    pub fn index(self) -> usize {
        match self {
            Counter::Allowed => 0,
            Counter::ShadowAllowed => 1,
            Counter::ResponseHeadersAdded => 2,
            Counter::ConfigLoads => 3,
            Counter::CredentialCacheHits => 4,
            Counter::CredentialCacheMisses => 5,
            Counter::JwksUpdated => 6,
            Counter::JwksFetchFailed => 7,
            Counter::JwksRejected => 8,
            Counter::ClosedExpired => 9,
            Counter::ClosedMaxAge => 10,
            Counter::AwaitedFirstMessage => 11,
            Counter::Denied(reason) => FIXED + reason_index(reason),
            Counter::ShadowDenied(reason) => FIXED + REASONS + reason_index(reason),
            Counter::MessageViolation(direction, violation) => {
                FIXED + 2 * REASONS + violation_index(direction, violation)
            }
            Counter::ShadowMessageViolation(direction, violation) => {
                FIXED + 2 * REASONS + 2 * VIOLATIONS + violation_index(direction, violation)
            }
        }
    }

    /// The name after `wsgate.<stat_prefix>.`.
    fn suffix(self) -> String {
        match self {
            Counter::Allowed => "allowed".to_string(),
            Counter::ShadowAllowed => "shadow_allowed".to_string(),
            Counter::ResponseHeadersAdded => "response_headers_added".to_string(),
            Counter::ConfigLoads => "config_loads".to_string(),
            Counter::CredentialCacheHits => "credential_cache.hits".to_string(),
            Counter::CredentialCacheMisses => "credential_cache.misses".to_string(),
            Counter::JwksUpdated => "jwks.updated".to_string(),
            Counter::JwksFetchFailed => "jwks.fetch_failed".to_string(),
            Counter::JwksRejected => "jwks.rejected".to_string(),
            Counter::ClosedExpired => CloseReason::Expired.as_str().to_string(),
            Counter::ClosedMaxAge => CloseReason::MaxAge.as_str().to_string(),
            Counter::AwaitedFirstMessage => "first_message.awaited".to_string(),
            Counter::Denied(reason) => format!("denied.{}", reason.as_str()),
            Counter::ShadowDenied(reason) => format!("shadow_denied.{}", reason.as_str()),
            Counter::MessageViolation(direction, violation) => {
                format!("message_violations.{}.{}", direction.as_str(), violation.as_str())
            }
            Counter::ShadowMessageViolation(direction, violation) => {
                format!("shadow_message_violations.{}.{}", direction.as_str(), violation.as_str())
            }
        }
    }

    /// The counter that a key set fetch moves.
    pub fn for_fetch(outcome: &FetchOutcome) -> Counter {
        match outcome {
            FetchOutcome::Updated { .. } => Counter::JwksUpdated,
            FetchOutcome::Failed(_) => Counter::JwksFetchFailed,
            FetchOutcome::Rejected(_) => Counter::JwksRejected,
        }
    }

    /// The counter that the timer's close of a socket moves, if the timer counts it. A socket
    /// whose first message did not come in time was never admitted: the stream counts it as it
    /// ends, as `denied.first_message_timeout`, and logs it with its request's details.
    pub fn for_close(reason: CloseReason) -> Option<Counter> {
        match reason {
            CloseReason::Expired => Some(Counter::ClosedExpired),
            CloseReason::MaxAge => Some(Counter::ClosedMaxAge),
            CloseReason::FirstMessageTimeout => None,
        }
    }

    /// The counter that a verdict moves, if any (requests that are not upgrades move none).
    pub fn for_verdict(verdict: &Verdict<'_>) -> Option<Counter> {
        match verdict {
            Verdict::Pass(_) => None,
            Verdict::Admit(_) => Some(Counter::Allowed),
            Verdict::Await { .. } => Some(Counter::AwaitedFirstMessage),
            Verdict::Deny(denial) => Some(Counter::Denied(denial.reason)),
            Verdict::ShadowAdmit(_) => Some(Counter::ShadowAllowed),
            Verdict::ShadowDeny(denial, _) => Some(Counter::ShadowDenied(denial.reason)),
        }
    }
}

/// Each reason's place in [`DenyReason::ALL`]; a match, so that a new reason cannot be left out.
fn reason_index(reason: DenyReason) -> usize {
    match reason {
        DenyReason::OriginNotAllowed => 0,
        DenyReason::OriginMissing => 1,
        DenyReason::OriginNull => 2,
        DenyReason::OriginMalformed => 3,
        DenyReason::InsecureTransport => 4,
        DenyReason::TokenMissing => 5,
        DenyReason::TokenMalformed => 6,
        DenyReason::TokenDuplicated => 7,
        DenyReason::ApiKeyInvalid => 8,
        DenyReason::TokenExpired => 9,
        DenyReason::TokenNotYetValid => 10,
        DenyReason::TokenBadSignature => 11,
        DenyReason::TokenUnknownKey => 12,
        DenyReason::TokenBadIssuer => 13,
        DenyReason::TokenBadAudience => 14,
        DenyReason::NoPolicy => 15,
        DenyReason::NoPolicyMatched => 16,
        DenyReason::JwksUnavailable => 17,
        DenyReason::FirstMessageMissing => 18,
        DenyReason::FirstMessageTimeout => 19,
        DenyReason::FirstMessageTooLarge => 20,
        DenyReason::FirstMessageMalformed => 21,
        DenyReason::PathAmbiguous => 22,
        DenyReason::HostAmbiguous => 23,
        DenyReason::FirstMessageUpstreamTooLarge => 24,
        DenyReason::TooManySocketsPerIdentity => 25,
        DenyReason::TooManySocketsPerClient => 26,
    }
}

/// Every (direction, rule) pair, in index order.
fn violations() -> impl Iterator<Item = (Direction, Violation)> {
    Direction::ALL.into_iter().flat_map(|direction| Violation::ALL.into_iter().map(move |v| (direction, v)))
}

/// A (direction, rule) pair's place in [`violations`]; matches, so that none can be left out.
fn violation_index(direction: Direction, violation: Violation) -> usize {
    let side = match direction {
        Direction::Client => 0,
        Direction::Server => VIOLATIONS,
    };
    side + match violation {
        Violation::FrameTooLarge => 0,
        Violation::MessageTooLarge => 1,
        Violation::MessageRate => 2,
        Violation::ByteRate => 3,
        Violation::Opcode => 4,
        Violation::Json => 5,
        Violation::Compressed => 6,
        Violation::HeldBytes => 7,
        Violation::Protocol => 8,
    }
}

/// Every counter's full name, in index order, for `stat_prefix`.
pub fn names(stat_prefix: &str) -> Vec<String> {
    Counter::all().map(|counter| format!("wsgate.{stat_prefix}.{}", counter.suffix())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_counter_has_the_index_of_its_place_in_the_list() {
        for (place, counter) in Counter::all().enumerate() {
            assert_eq!(counter.index(), place, "{counter:?}");
        }
        assert_eq!(Counter::all().count(), FIXED + 2 * REASONS + 4 * VIOLATIONS);
    }

    #[test]
    fn names_follow_envoys_conventions() {
        let names = names("edge");
        assert_eq!(names[Counter::Allowed.index()], "wsgate.edge.allowed");
        assert_eq!(
            names[Counter::Denied(DenyReason::OriginNotAllowed).index()],
            "wsgate.edge.denied.origin_not_allowed"
        );
        assert_eq!(
            names[Counter::ShadowDenied(DenyReason::TokenExpired).index()],
            "wsgate.edge.shadow_denied.token_expired"
        );
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b"._".contains(&b))));
    }
}
