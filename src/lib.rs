//! wsgate: a proxy-wasm filter for Envoy that guards WebSocket handshakes.
//!
//! Browsers do not apply CORS to the WebSocket handshake, so any page can open a socket to a
//! server with the user's cookies (Cross-Site WebSocket Hijacking). wsgate checks the handshake
//! at the proxy, before it reaches the upstream.
//!
//! The request flow:
//! 1. `on_configure`: the plugin's JSON is parsed ([`Config`]) and compiled ([`Policy::compile`])
//!    once per VM; an invalid configuration is refused, and Envoy refuses the filter with it.
//! 2. `on_http_request_headers`: the shell builds a [`Request`] from the host's headers and calls
//!    [`decide`].
//! 3. A request that is not an upgrade passes ([`Verdict::Pass`]), without any identity
//!    header a client forged.
//! 4. An upgrade that arrived over TLS (when `require_tls`), whose `Origin` the policy admits
//!    and whose credential verifies (when `auth` is set) goes on ([`Verdict::Admit`]), with the
//!    credential removed and the verified identity added.
//! 5. Any other upgrade gets a local reply ([`Verdict::Deny`]) and one log line; the upstream
//!    never sees it.
//! 6. `on_http_response_headers`: the response to an ordinary request gets the security headers
//!    ([`respond`]: Content-Security-Policy and friends, rendered at load); the answer to an
//!    upgrade gets none.
//!
//! Everything but `filter` is plain Rust that never calls the host, so it is tested natively and
//! compiled to wasm32. `filter` is the only module that names `proxy_wasm`.

pub mod also_check;
pub mod canonical;
pub mod config;
pub mod config_json;
pub mod csp;
pub mod error;
pub mod first_message;
pub mod frames;
pub mod headers;
pub mod limits;
pub mod logs;
pub mod messages;
pub mod origin;
pub mod policy;
pub mod request;
#[cfg(feature = "schema")]
pub mod schema;
pub mod scope;
pub mod session;
pub mod sockets;
pub mod stats;
pub mod token;
pub mod verdict;

#[cfg(target_os = "wasi")]
mod filter;

pub use config::{Admission, Config};
pub use error::ConfigError;
pub use headers::{HeaderEdit, Response};
pub use policy::{decide, decide_and_plan, plan_response, respond, Policy, ResponsePlan};
pub use request::Request;
pub use verdict::{Denial, DenyReason, RequestEdit, Verdict};
