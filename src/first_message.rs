//! Credentials in the client's first WebSocket message (`auth.sources[].first_message`).
//!
//! A handshake with no credential in an earlier source is admitted on condition
//! ([`crate::Verdict::Await`]): the shell holds every byte the client sends and feeds it to
//! [`Awaiting`] until [`crate::Policy::read_first_message`] says to release the stream or to
//! close it. The upstream gets none of the client's bytes unless the credential verified.

use crate::config::FirstMessageConfig;
use crate::error::ConfigError;
use crate::frames::{credential, FirstMessage, FrameError, Message, MessageError, Pointer};
use crate::policy::Applies;
use crate::request::Request;
use crate::sockets::{Close, CloseReason};
use crate::verdict::{request_fields, DenyReason};

/// The longest `max_bytes`: well inside Envoy's default per-stream buffer limit (1 MiB).
const MAX_BYTES: usize = 65_536;
/// The longest `upstream_max_bytes`: Envoy's default per-stream buffer limit (1 MiB).
const MAX_UPSTREAM_BYTES: usize = 1_048_576;

/// The compiled `first_message` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstMessageRule {
    token_pointer: Pointer,
    /// The type member's pointer and the value that makes a message the auth message.
    kind: Option<(Pointer, String)>,
    timeout_ms: u64,
    max_bytes: usize,
    upstream_max_bytes: usize,
    forward: bool,
}

impl FirstMessageRule {
    pub fn compile(config: &FirstMessageConfig, field: &str) -> Result<FirstMessageRule, ConfigError> {
        let token_pointer = pointer(&config.token_pointer, &format!("{field}.token_pointer"))?;
        let kind = match (&config.type_pointer, &config.type_value) {
            (Some(type_pointer), Some(value)) => {
                Some((pointer(type_pointer, &format!("{field}.type_pointer"))?, value.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    format!("{field}.type_value"),
                    "is missing; type_pointer needs it",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{field}.type_pointer"),
                    "is missing; type_value needs it",
                ))
            }
        };
        if !(100..=60_000).contains(&config.timeout_ms) {
            let problem = format!("{} is not between 100 and 60000", config.timeout_ms);
            return Err(ConfigError::new(format!("{field}.timeout_ms"), problem));
        }
        if !(64..=MAX_BYTES).contains(&config.max_bytes) {
            let problem = format!("{} is not between 64 and {MAX_BYTES}", config.max_bytes);
            return Err(ConfigError::new(format!("{field}.max_bytes"), problem));
        }
        if config.upstream_max_bytes > MAX_UPSTREAM_BYTES {
            let problem = format!("{} is more than {MAX_UPSTREAM_BYTES}", config.upstream_max_bytes);
            return Err(ConfigError::new(format!("{field}.upstream_max_bytes"), problem));
        }
        Ok(FirstMessageRule {
            token_pointer,
            kind,
            timeout_ms: config.timeout_ms,
            max_bytes: config.max_bytes,
            upstream_max_bytes: config.upstream_max_bytes,
            forward: config.forward,
        })
    }

    /// What the socket that `request` opens at `now_ms` waits with under policy `policy`.
    pub(crate) fn awaiting(
        &self,
        request: &Request,
        (applies, policy): (Applies, &str),
        now_ms: u64,
        max_age_at: Option<u64>,
    ) -> Awaiting {
        Awaiting {
            applies,
            reader: FirstMessage::new(self.max_bytes),
            upstream_max_bytes: self.upstream_max_bytes,
            deadline_ms: now_ms.saturating_add(self.timeout_ms),
            max_age_at,
            context: format!("policy={policy} {}", request_fields(request)),
        }
    }

    /// The credential in a complete first message, or why there is none.
    pub(crate) fn credential(&self, message: &Message) -> Result<Vec<u8>, DenyReason> {
        let kind = self.kind.as_ref().map(|(pointer, value)| (pointer, value.as_str()));
        credential(message, &self.token_pointer, kind).map_err(|error| match error {
            MessageError::NotJson => DenyReason::FirstMessageMalformed,
            MessageError::NotAuth => DenyReason::FirstMessageMissing,
            MessageError::NoToken => DenyReason::TokenMissing,
        })
    }

    /// What the shell does with the held bytes once `message` verified: with `forward`, nothing;
    /// otherwise the message's frames are cut out and the pings and pongs among them kept.
    pub(crate) fn release(&self, message: Message, close: Option<Close>, identity: Option<String>) -> Step {
        match self.forward {
            true => Step::Release { cut: 0, keep: Vec::new(), close, identity },
            false => Step::Release { cut: message.end, keep: message.control_frames, close, identity },
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "first_message(max_bytes={} timeout_ms={} forward={})",
            self.max_bytes, self.timeout_ms, self.forward
        )
    }
}

fn pointer(text: &str, field: &str) -> Result<Pointer, ConfigError> {
    Pointer::parse(text).ok_or_else(|| {
        ConfigError::new(
            field,
            format!("{text:?} is not a JSON Pointer to a member of ASCII names, such as \"/token\""),
        )
    })
}

/// One socket waiting for its first message: what has been read of it, by when it must be
/// complete, and what the handshake already decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Awaiting {
    /// The policy that admitted the handshake.
    pub(crate) applies: Applies,
    pub(crate) reader: FirstMessage,
    /// The most bytes from the upstream held for the client until the credential verified.
    upstream_max_bytes: usize,
    /// When the socket is closed if the message has not verified (milliseconds since the Unix
    /// epoch).
    pub deadline_ms: u64,
    /// When `max_connection_seconds` closes the socket, counted from the handshake
    /// (milliseconds since the Unix epoch).
    pub(crate) max_age_at: Option<u64>,
    /// The policy and the request's details, for the log line if the socket is refused.
    context: String,
}

impl Awaiting {
    /// When the timer closes the socket if it is still waiting.
    pub fn timeout(&self) -> Close {
        Close { at: self.deadline_ms, reason: CloseReason::FirstMessageTimeout }
    }

    /// Why a socket that ended at `now_ms` while still waiting is refused: its time ran out (the
    /// timer closed it), or the client went away first.
    pub fn abandoned(&self, now_ms: u64) -> DenyReason {
        if now_ms >= self.deadline_ms {
            DenyReason::FirstMessageTimeout
        } else {
            DenyReason::FirstMessageMissing
        }
    }

    /// Whether the client may get `held` bytes from the upstream, which are held until the
    /// credential has verified: nothing from the upstream reaches a client that is not admitted
    /// yet, and a socket whose upstream sends more than `upstream_max_bytes` first is closed.
    pub fn hold_upstream(&self, held: usize) -> Result<(), DenyReason> {
        match held <= self.upstream_max_bytes {
            true => Ok(()),
            false => Err(DenyReason::FirstMessageUpstreamTooLarge),
        }
    }

    /// The log line for a socket refused for `reason`. Never the message or its credential.
    pub fn log_line(&self, reason: DenyReason) -> String {
        format!(
            "closed socket before its first message verified: reason={} {}",
            reason.as_str(),
            self.context
        )
    }
}

/// What the shell does after feeding the client's bytes to [`crate::Policy::read_first_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Hold what has arrived: the message is not complete yet.
    Hold,
    /// The credential verified. Replace the first `cut` bytes held with `keep`, then let the
    /// stream go on; close the socket at `close`, if set. `identity`: whom the credential
    /// verified as (the subject or the key id).
    Release { cut: usize, keep: Vec<u8>, close: Option<Close>, identity: Option<String> },
    /// Close the socket; the upstream gets none of the held bytes.
    Refuse(DenyReason),
}

impl From<FrameError> for DenyReason {
    fn from(error: FrameError) -> DenyReason {
        match error {
            FrameError::TooLarge => DenyReason::FirstMessageTooLarge,
            FrameError::Closed => DenyReason::FirstMessageMissing,
            FrameError::Unmasked
            | FrameError::Reserved
            | FrameError::UnknownOpcode
            | FrameError::BadControl
            | FrameError::BadFragment
            | FrameError::BadLength => DenyReason::FirstMessageMalformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config(json: serde_json::Value) -> FirstMessageConfig {
        serde_json::from_value(json).unwrap()
    }

    fn compile(json: serde_json::Value) -> Result<FirstMessageRule, ConfigError> {
        FirstMessageRule::compile(&config(json), "auth.sources[1].first_message")
    }

    #[test]
    fn pointers_must_be_json_pointers_to_a_member() {
        assert!(compile(serde_json::json!({"token_pointer": "/a~1b/c~0"})).is_ok());
        for bad in ["token", "", "/a~2", "/a~"] {
            let error = compile(serde_json::json!({"token_pointer": bad})).unwrap_err();
            assert_eq!(error.field, "auth.sources[1].first_message.token_pointer", "{bad:?}");
        }
    }

    #[test]
    fn type_pointer_and_type_value_come_together() {
        let error = compile(serde_json::json!({"token_pointer": "/t", "type_pointer": "/type"})).unwrap_err();
        assert_eq!(error.field, "auth.sources[1].first_message.type_value");
        let error = compile(serde_json::json!({"token_pointer": "/t", "type_value": "auth"})).unwrap_err();
        assert_eq!(error.field, "auth.sources[1].first_message.type_pointer");
    }

    #[test]
    fn timeout_and_size_are_bounded() {
        let error = compile(serde_json::json!({"token_pointer": "/t", "timeout_ms": 0})).unwrap_err();
        assert_eq!(error.field, "auth.sources[1].first_message.timeout_ms");
        let error = compile(serde_json::json!({"token_pointer": "/t", "max_bytes": 1_048_576})).unwrap_err();
        assert_eq!(error.field, "auth.sources[1].first_message.max_bytes");
    }
}
