//! The plugin configuration exactly as users write it (JSON).
//!
//! These types only describe shape and defaults; every value is checked, normalised and
//! compiled by [`crate::policy::Policy::compile`]. Unknown keys are errors: a misspelt key must
//! never leave a protection silently switched off.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;

/// The whole plugin configuration. Two forms: the keys of one policy at the top level (which is
/// then the `default` policy), or `policies` (each with a `match`) and/or `default`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Names this configuration's counters: `wsgate.<stat_prefix>.<name>`, so that two
    /// listeners are told apart. Lower-case letters, digits and `_`. Defaults to `default`.
    pub stat_prefix: String,
    /// Policies for some hosts and paths; the first that matches a request decides.
    pub policies: Vec<ScopedPolicyConfig>,
    /// The policy for requests that match none. Without one, such upgrades are refused.
    pub default: Option<PolicyConfig>,
    /// Whether `default` was given as the top level (the single-policy form), so that its
    /// errors name top-level fields.
    pub default_is_top_level: bool,
}

/// A policy that applies to some hosts and paths.
#[derive(Clone, Debug)]
pub struct ScopedPolicyConfig {
    /// Its name in log lines. Defaults to `policies[<index>]`.
    pub name: Option<String>,
    pub matches: MatchConfig,
    pub policy: PolicyConfig,
}

/// `match`: which requests a policy applies to. Both parts must match; an empty part matches all.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host names, exact or with a left-most `*` label (`*.internal.example`), compared without
    /// the port and case-insensitively. Defaults to every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A path prefix on segment boundaries: `/ws` matches `/ws` and `/ws/x`, not `/wsx`.
    /// Defaults to every path.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// One entry of `also_check`: a path prefix, and optionally a query parameter it must carry.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsoCheckConfig {
    /// A path prefix on segment boundaries, in canonical form (`/socket.io`). Required.
    pub path_prefix: String,
    /// `name=value`: only requests with this query parameter (`transport=polling`), under any
    /// spelling some server reads as it. Defaults to every request under the prefix.
    #[serde(default)]
    pub query: Option<String>,
}

/// One policy: what an upgrade must satisfy, and what ordinary responses get.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `enforce` refuses what the policy refuses; `shadow` makes, counts and logs every
    /// decision and lets every request go on unchanged. Defaults to `enforce`.
    #[serde(default)]
    pub mode: Mode,
    /// Origins allowed to open a WebSocket: RFC 6454 serialized origins
    /// (`scheme://host[:port]`), where the left-most host label may be `*` (exactly one label)
    /// or `**` (one or more), and the port may be `*`; and `same_origin`, the origin the
    /// handshake itself was sent to (the scheme of its transport and its `:authority`).
    /// Required and non-empty.
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
    /// Security headers for every response that is not the answer to an upgrade. Defaults to
    /// the recommended set; `null` sends none.
    #[serde(default = "default_response_headers")]
    pub response_headers: Option<ResponseHeadersConfig>,
    /// Refuse upgrades that did not arrive over TLS (403, `insecure_transport`), before any
    /// other check. Defaults to true.
    #[serde(default = "default_true")]
    pub require_tls: bool,
    /// Also count `x-forwarded-proto: https` as TLS, for a TLS-terminating load balancer in
    /// front of Envoy. Defaults to false: a client can send that header itself.
    #[serde(default)]
    pub trust_forwarded_proto: bool,
    /// The credential an upgrade must carry, checked after the origin. Defaults to none: no
    /// credential is required.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Close an admitted WebSocket when the JWT that admitted it expires (plus leeway). Needs
    /// `auth.jwt`. Defaults to false.
    #[serde(default)]
    pub close_on_expiry: bool,
    /// Close any admitted WebSocket after this many seconds, whatever admitted it. Defaults to
    /// never.
    #[serde(default)]
    pub max_connection_seconds: Option<u64>,
    /// Ordinary requests that get the same origin and credential decision as an upgrade: the
    /// HTTP long-polling of Socket.IO (engine.io), SockJS and SignalR, which carries the same
    /// cookies. Defaults to none.
    #[serde(default)]
    pub also_check: Vec<AlsoCheckConfig>,
    /// Rules for the messages of an admitted socket, per direction. Defaults to none: frames are
    /// not read.
    #[serde(default)]
    pub messages: Option<MessagesConfig>,
    /// `strip` removes the client's `Sec-WebSocket-Extensions` offer (`permessage-deflate`)
    /// from the handshake, for upstreams whose inflate has no bound. Defaults to `allow`, or to
    /// `strip` when `messages` is set, which reads frames only uncompressed.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Sockets open at once per verified identity and per client, across the workers of one
    /// Envoy. Defaults to no limit.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
}

/// `limits`: how many sockets may be open at once under this policy.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Per verified identity: the subject (`sub`, forwarded by `claims_to_headers`) or the API
    /// key's id. Defaults to no limit.
    #[serde(default)]
    pub max_sockets_per_identity: Option<u32>,
    /// Per client: the downstream address as Envoy resolved it (never a raw
    /// `x-forwarded-for`). Defaults to no limit.
    #[serde(default)]
    pub max_sockets_per_client: Option<u32>,
}

/// `messages`: the rules for each direction of an admitted socket.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    /// Rules for what the client sends. Defaults to none.
    #[serde(default)]
    pub client: Option<MessageRulesConfig>,
    /// Rules for what the upstream sends. Defaults to none.
    #[serde(default)]
    pub server: Option<MessageRulesConfig>,
}

/// The rules for one direction of a socket. Each defaults to no limit; at least one is set.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRulesConfig {
    /// The largest frame payload, in bytes.
    #[serde(default)]
    pub max_frame_bytes: Option<u64>,
    /// The largest message payload, its fragments put together, in bytes.
    #[serde(default)]
    pub max_message_bytes: Option<u64>,
    /// Data messages per second, on average.
    #[serde(default)]
    pub messages_per_second: Option<u64>,
    /// Data messages allowed at once above the average. Defaults to `messages_per_second`.
    #[serde(default)]
    pub message_burst: Option<u64>,
    /// Payload bytes of data messages per second, on average.
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
    /// Payload bytes allowed at once above the average; a frame longer than this always breaks
    /// the rule. Defaults to `bytes_per_second`.
    #[serde(default)]
    pub byte_burst: Option<u64>,
    /// The data message kinds allowed: `text`, `binary`. Defaults to both.
    #[serde(default)]
    pub opcodes: Option<Vec<Opcode>>,
    /// Text messages must be a JSON object with one of the listed strings at a pointer.
    #[serde(default)]
    pub json: Option<JsonRuleConfig>,
}

/// `json`: what a text message must be.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRuleConfig {
    /// A JSON Pointer (RFC 6901) to the member whose string is checked (`/type`). Required.
    pub pointer: String,
    /// The strings allowed there (`["join", "say"]`). Required and non-empty.
    pub one_of: Vec<String>,
    /// The deepest nesting of arrays and objects allowed, 1 to 128. Defaults to 16.
    #[serde(default = "default_json_depth")]
    pub max_depth: usize,
    /// The longest text message read as JSON, in bytes, 2 to 1048576; a longer one breaks the
    /// rule. It is held until complete. Defaults to 65536.
    #[serde(default = "default_json_bytes")]
    pub max_bytes: usize,
}

fn default_json_depth() -> usize {
    16
}

fn default_json_bytes() -> usize {
    65_536
}

/// A data message kind: `"text"` or `"binary"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Opcode {
    Text,
    Binary,
}

impl TryFrom<String> for Opcode {
    type Error = String;

    fn try_from(value: String) -> Result<Opcode, String> {
        choose(&value, &[("text", Opcode::Text), ("binary", Opcode::Binary)])
    }
}

/// Whether the handshake keeps the client's compression offer: `"allow"` or `"strip"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Compression {
    Allow,
    Strip,
}

impl TryFrom<String> for Compression {
    type Error = String;

    fn try_from(value: String) -> Result<Compression, String> {
        choose(&value, &[("allow", Compression::Allow), ("strip", Compression::Strip)])
    }
}

/// `auth`: where the handshake's credential comes from and how it is verified.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where to look, in order; the first one present carries the credential. Required.
    pub sources: Vec<SourceConfig>,
    /// JSON Web Tokens (JWS compact serialization). Defaults to none.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// API keys, by the SHA-256 of the key. Defaults to none. `jwt`, `api_keys` or both.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// The header that carries the verified API key's `id` to the upstream. Defaults to
    /// `x-wsgate-key-id`; a copy sent by the client is always removed.
    #[serde(default = "default_key_id_header")]
    pub key_id_header: String,
    /// Remove the credential from where it came before the upstream sees it. Defaults to true.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Status of the reply to a missing or invalid credential, 400 to 599. Defaults to 401.
    #[serde(default = "default_auth_deny_status")]
    pub deny_status: u16,
}

/// `auth.jwt`: which tokens are accepted, with which keys, for whom.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The JWS algorithms accepted (`RS256`, `ES256`, `EdDSA`, ...). Required; never `none`.
    pub algorithms: Vec<String>,
    /// The verification keys, as a JWK Set (RFC 7517 section 5). Required unless `remote_jwks`
    /// is given; both may be given, the inline keys serving until a fetched set arrives.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// A JWK Set fetched from the identity provider through an Envoy cluster, and refreshed.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Accepted `iss` values. Required: a token from another issuer is refused.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; the token's `aud` must share one. Required: without it, a token
    /// the issuer made for another service would be accepted here.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, at most 300. Defaults to 60 seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Refuse tokens without `exp`. Defaults to true.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// The longest token accepted, in bytes. Defaults to 8192.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// The largest RSA modulus accepted, in bits, for inline and fetched keys: 2048 to 8192.
    /// Defaults to 4096; a bigger key makes every verification with it slower.
    #[serde(default = "default_max_rsa_bits")]
    pub max_rsa_bits: usize,
    /// Verified claims forwarded as headers. Defaults to none.
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimHeader>,
    /// The cache of verified tokens. Defaults to 1024 entries for at most 300 s each.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `auth.jwt.remote_jwks`: where the identity provider publishes its JWK Set, fetched through
/// an Envoy cluster at start and every `refresh_seconds`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster that reaches the identity provider (with TLS, as it should be).
    pub cluster: String,
    /// The `:authority` (Host) of the request: the identity provider's host name.
    pub authority: String,
    /// The path of the JWK Set, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// Seconds between fetches of a good set, 1 to 86400. Defaults to 600.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Seconds before another try after a failed fetch, and the least time between two fetches
    /// brought forward by unknown `kid`s. 1 to `refresh_seconds`; defaults to 10.
    #[serde(default = "default_retry")]
    pub retry_seconds: u64,
    /// How long a fetch may take, 100 to 60000 ms. Defaults to 2000.
    #[serde(default = "default_fetch_timeout")]
    pub timeout_ms: u64,
}

fn default_max_rsa_bits() -> usize {
    4096
}

fn default_refresh() -> u64 {
    600
}

fn default_retry() -> u64 {
    10
}

fn default_fetch_timeout() -> u64 {
    2000
}

/// `auth.jwt.cache`: verified tokens kept per VM, keyed by their SHA-256, until the earlier of
/// their `exp` (plus leeway) and `ttl_seconds`. Failures are never kept.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most tokens kept; those used longest ago make room. 0 turns the cache off.
    /// Defaults to 1024.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// The longest a token is kept, whatever its `exp`. Defaults to 300.
    #[serde(default = "default_cache_ttl")]
    pub ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig { max_entries: default_cache_entries(), ttl_seconds: default_cache_ttl() }
    }
}

fn default_cache_entries() -> usize {
    1024
}

fn default_cache_ttl() -> u64 {
    300
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// Each key is a JWK object; members this version does not use (`x5c`, `x5t`) are ignored,
    /// as RFC 7517 section 4 asks.
    pub keys: Vec<serde_json::Value>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    /// A top-level claim whose value is a string or a number.
    pub claim: String,
    /// The header the upstream receives it in.
    pub header: String,
}

/// One place a credential may travel. Exactly one of `query`, `cookie`, `header`,
/// `subprotocol` and `first_message`; `prefix` only with `header`, `marker` only with
/// `subprotocol`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A query parameter name (`access_token`).
    pub query: Option<String>,
    /// A cookie name (`ws_token`).
    pub cookie: Option<String>,
    /// A header name (`authorization`).
    pub header: Option<String>,
    /// What the header value starts with before the credential (`Bearer `), compared
    /// case-insensitively.
    pub prefix: Option<String>,
    /// The `Sec-WebSocket-Protocol` entry prefix whose remainder is the base64url-encoded
    /// credential (`base64url.bearer.authorization.k8s.io.`).
    pub subprotocol: Option<String>,
    /// Only with `subprotocol`: a protocol name the client offers beside the credential
    /// (`wsgate`). It is removed with the credential, and an admitted socket whose upstream
    /// selected no protocol gets it selected on its 101, as a browser that offered protocols
    /// requires.
    pub marker: Option<String>,
    /// The client's first WebSocket message, a JSON object that carries the credential. Only as
    /// the last source: used when no earlier source holds a credential.
    pub first_message: Option<FirstMessageConfig>,
}

/// `first_message`: the handshake goes on to the upstream without a credential, and wsgate
/// holds every byte the client sends until its first message has been read and its credential
/// verified. The socket is closed if that fails, and the upstream gets none of those bytes.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstMessageConfig {
    /// Where the credential is in the message: a JSON Pointer (RFC 6901) to a string, `/token`.
    /// Required.
    pub token_pointer: String,
    /// Where the message says what it is: a JSON Pointer, `/type`. Defaults to none: any
    /// message is read as the auth message. Given with `type_value`.
    #[serde(default)]
    pub type_pointer: Option<String>,
    /// The string at `type_pointer` that makes a message the auth message, `auth`.
    #[serde(default)]
    pub type_value: Option<String>,
    /// How long the client has, from the handshake, to send the whole message: 100 to 60000 ms.
    /// Defaults to 5000.
    #[serde(default = "default_first_message_timeout")]
    pub timeout_ms: u64,
    /// The most bytes held before the message is complete, frame headers and control frames
    /// included: 64 to 65536. Defaults to 8192.
    #[serde(default = "default_first_message_bytes")]
    pub max_bytes: usize,
    /// Pass the auth message on to the upstream once verified. Defaults to false: it is
    /// removed, and the upstream's first message is the client's second.
    #[serde(default)]
    pub forward: bool,
    /// The most bytes the upstream may send the client before the credential verified: they
    /// are held until it has, and past this the socket is closed. 0 to 1048576; defaults to
    /// 65536.
    #[serde(default = "default_first_message_upstream_bytes")]
    pub upstream_max_bytes: usize,
}

fn default_first_message_timeout() -> u64 {
    5000
}

fn default_first_message_upstream_bytes() -> usize {
    65_536
}

fn default_first_message_bytes() -> usize {
    8192
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who the key belongs to; forwarded in `key_id_header`.
    pub id: String,
    /// The SHA-256 of the key, 64 hex digits. The key itself is never in the configuration.
    pub sha256: String,
}

/// `response_headers`: each header has a recommended default and is switched off with `null`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeadersConfig {
    /// A ready policy string, or `{"directives": {...}, "report_only": false, "report_to": ...}`.
    /// Defaults to [`DEFAULT_CSP`].
    #[serde(default = "default_csp")]
    pub content_security_policy: Option<CspConfig>,
    /// What to do where the upstream already sent the header. Defaults to `append`.
    #[serde(default)]
    pub on_existing: OnExisting,
    /// Sent only on responses to requests that arrived over TLS.
    /// Defaults to `max-age=63072000; includeSubDomains` (two years).
    #[serde(default = "default_hsts")]
    pub strict_transport_security: Option<String>,
    /// Defaults to `nosniff`, its only value.
    #[serde(default = "default_nosniff")]
    pub x_content_type_options: Option<String>,
    /// Defaults to `strict-origin-when-cross-origin`.
    #[serde(default = "default_referrer_policy")]
    pub referrer_policy: Option<String>,
    /// Defaults to `same-origin`.
    #[serde(default = "default_coop")]
    pub cross_origin_opener_policy: Option<String>,
    /// Further headers, added like the others. Defaults to none.
    #[serde(default)]
    pub extra: Vec<ExtraHeader>,
}

/// A Content-Security-Policy: a ready string, or directives rendered once at load.
#[derive(Clone, Debug)]
pub enum CspConfig {
    Text(String),
    Directives(CspDirectives),
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CspDirectives {
    /// Directive name to its values; rendered in the order of the names.
    pub directives: std::collections::BTreeMap<String, Vec<String>>,
    /// Send `Content-Security-Policy-Report-Only` instead. Defaults to false.
    #[serde(default)]
    pub report_only: bool,
    /// Adds `report-to <group>`. Defaults to none.
    #[serde(default)]
    pub report_to: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraHeader {
    pub name: String,
    pub value: String,
}

/// Whether a policy's decisions are carried out.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl TryFrom<String> for Mode {
    type Error = String;

    fn try_from(value: String) -> Result<Mode, String> {
        choose(&value, &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)])
    }
}

/// What to do where the upstream's response already has the header.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum OnExisting {
    /// Content-Security-Policy: add ours beside the upstream's (browsers enforce both, so this
    /// can only tighten). Other headers: add ours only where there is none.
    #[default]
    Append,
    /// Add ours only where the upstream sent none.
    Keep,
    /// Remove the upstream's and send ours.
    Replace,
}

/// The policy sent when `content_security_policy` is not given. It limits what every page
/// needs limiting without knowing the site: where it may connect (its own origin, which
/// includes `wss://` to the same host), plugins, `<base>` and framing. Script and style sources
/// need knowledge of the site, so they are left to `directives`.
pub const DEFAULT_CSP: &str =
    "base-uri 'self'; connect-src 'self'; frame-ancestors 'self'; object-src 'none'";

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
        choose(&value, &[("deny", Admission::Deny), ("allow", Admission::Allow)])
    }
}

impl TryFrom<String> for OnExisting {
    type Error = String;

    fn try_from(value: String) -> Result<OnExisting, String> {
        let choices =
            [("append", OnExisting::Append), ("keep", OnExisting::Keep), ("replace", OnExisting::Replace)];
        choose(&value, &choices)
    }
}

/// The choice named `value`, or an error that lists the names.
fn choose<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*choice);
    }
    let names: Vec<String> = choices.iter().map(|(name, _)| format!("{name:?}")).collect();
    Err(format!("unknown value {value:?}, expected one of {}", names.join(", ")))
}

fn default_stat_prefix() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

fn default_leeway() -> u64 {
    60
}

fn default_max_token_bytes() -> usize {
    8192
}

fn default_key_id_header() -> String {
    "x-wsgate-key-id".to_string()
}

fn default_auth_deny_status() -> u16 {
    401
}

fn default_response_headers() -> Option<ResponseHeadersConfig> {
    Some(ResponseHeadersConfig::default())
}

fn default_csp() -> Option<CspConfig> {
    Some(CspConfig::Text(DEFAULT_CSP.to_string()))
}

fn default_hsts() -> Option<String> {
    Some("max-age=63072000; includeSubDomains".to_string())
}

fn default_nosniff() -> Option<String> {
    Some("nosniff".to_string())
}

fn default_referrer_policy() -> Option<String> {
    Some("strict-origin-when-cross-origin".to_string())
}

fn default_coop() -> Option<String> {
    Some("same-origin".to_string())
}

impl Default for ResponseHeadersConfig {
    fn default() -> ResponseHeadersConfig {
        ResponseHeadersConfig {
            content_security_policy: default_csp(),
            on_existing: OnExisting::default(),
            strict_transport_security: default_hsts(),
            x_content_type_options: default_nosniff(),
            referrer_policy: default_referrer_policy(),
            cross_origin_opener_policy: default_coop(),
            extra: Vec::new(),
        }
    }
}

/// Reads a string or an object, so that each form keeps serde's own errors (an untagged enum
/// would only say that nothing matched).
impl<'de> Deserialize<'de> for CspConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<CspConfig, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = CspConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a policy string or an object with \"directives\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CspConfig, E> {
                Ok(CspConfig::Text(text.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<CspConfig, M::Error> {
                let deserializer = serde::de::value::MapAccessDeserializer::new(map);
                CspDirectives::deserialize(deserializer).map(CspConfig::Directives)
            }
        }
        deserializer.deserialize_any(Either)
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
    /// offending value (`policies[0].allowed_origins[1]`), or the key that is not known.
    pub fn from_json(json: &[u8]) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            let problem = "is empty; wsgate needs at least `allowed_origins`";
            return Err(ConfigError::new("configuration", problem));
        }
        let value: Value =
            serde_json::from_slice(json).map_err(|e| ConfigError::new("configuration", e.to_string()))?;
        // Read as an object only: serde would also read a struct from an array, by position.
        let Value::Object(mut top) = value else {
            return Err(ConfigError::new(
                "configuration",
                "invalid type: the configuration must be a JSON object",
            ));
        };
        let stat_prefix = match top.remove("stat_prefix") {
            None => default_stat_prefix(),
            Some(prefix) => parse(prefix, "stat_prefix")?,
        };
        let (policies, default) = (top.remove("policies"), top.remove("default"));
        if policies.is_none() && default.is_none() {
            let policy = parse(Value::Object(top), "")?;
            return Ok(Config {
                stat_prefix,
                policies: Vec::new(),
                default: Some(policy),
                default_is_top_level: true,
            });
        }
        if let Some(key) = top.keys().next() {
            let problem = "with \"policies\" or \"default\", a policy's settings go inside them";
            return Err(ConfigError::new(key.clone(), problem));
        }
        let policies = match policies {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| scoped(item, index))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ConfigError::new("policies", "invalid type: expected a list of policies")),
        };
        let default = default.map(|value| parse(value, "default")).transpose()?;
        Ok(Config { stat_prefix, policies, default, default_is_top_level: false })
    }
}

/// One entry of `policies`: `match`, an optional `name`, and a policy's keys.
fn scoped(item: Value, index: usize) -> Result<ScopedPolicyConfig, ConfigError> {
    let field = format!("policies[{index}]");
    let Value::Object(mut members) = item else {
        return Err(ConfigError::new(field, "invalid type: expected a policy object"));
    };
    let matches = members.remove("match").ok_or_else(|| {
        ConfigError::new(
            format!("{field}.match"),
            "is missing; a policy in `policies` needs one (or use `default`)",
        )
    })?;
    let matches = parse(matches, &format!("{field}.match"))?;
    let name = match members.remove("name") {
        None => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(ConfigError::new(format!("{field}.name"), "invalid type: expected a string")),
    };
    let policy = parse(Value::Object(members), &field)?;
    Ok(ScopedPolicyConfig { name, matches, policy })
}

/// Deserializes `value` (found at JSON path `at`), naming the path of any error.
fn parse<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> Result<T, ConfigError> {
    crate::config_json::from_value(value).map_err(|error| {
        let path = error.path();
        let field = match (at, path.as_str()) {
            ("", ".") => "configuration".to_string(),
            ("", inner) => inner.to_string(),
            (outer, ".") => outer.to_string(),
            (outer, inner) if inner.starts_with('[') => format!("{outer}{inner}"),
            (outer, inner) => format!("{outer}.{inner}"),
        };
        ConfigError::new(field, error.message())
    })
}

/// The schemas that serde's attributes cannot tell schemars: enums read from strings, and a
/// policy given as a string or an object.
#[cfg(feature = "schema")]
mod schema_impls {
    use std::borrow::Cow;

    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

    use super::{Admission, Compression, CspConfig, CspDirectives, Mode, OnExisting, Opcode};

    macro_rules! string_enum {
        ($type:ty, $name:literal, [$($value:literal),+], $description:literal) => {
            impl JsonSchema for $type {
                fn schema_name() -> Cow<'static, str> {
                    $name.into()
                }
                fn json_schema(_: &mut SchemaGenerator) -> Schema {
                    json_schema!({"type": "string", "enum": [$($value),+], "description": $description})
                }
            }
        };
    }

    string_enum!(Admission, "Admission", ["deny", "allow"], "Whether a class of requests is let through.");
    string_enum!(Mode, "Mode", ["enforce", "shadow"], "Whether a policy's decisions are carried out.");
    string_enum!(Opcode, "Opcode", ["text", "binary"], "A data message kind.");
    string_enum!(
        Compression,
        "Compression",
        ["allow", "strip"],
        "Whether the handshake keeps the client's compression offer."
    );
    string_enum!(
        OnExisting,
        "OnExisting",
        ["append", "keep", "replace"],
        "What to do where the upstream's response already has the header."
    );

    impl JsonSchema for CspConfig {
        fn schema_name() -> Cow<'static, str> {
            "ContentSecurityPolicy".into()
        }
        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            let directives = generator.subschema_for::<CspDirectives>();
            json_schema!({
                "description": "A ready policy string, or directives rendered once at load.",
                "oneOf": [{"type": "string"}, directives]
            })
        }
    }
}
