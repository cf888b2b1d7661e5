//! The handshake's credential: where it comes from ([`source`]), how it is verified, and what
//! the upstream gets instead of it (the verified identity, never the credential).

pub mod cache;
pub mod jwk;
pub mod jwt;
pub mod remote;
pub mod source;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{AuthConfig, SourceConfig};
use crate::error::ConfigError;
use crate::first_message::FirstMessageRule;
use crate::headers::{credential_header_name, is_tchar};
use crate::request::Request;
use crate::verdict::{DenyReason, RequestEdit};
use cache::CredentialCache;
use jwt::JwtVerifier;
use source::{Lookup, Source};

/// The compiled `auth`.
#[derive(Clone, Debug)]
pub struct Auth {
    sources: Vec<Source>,
    /// The credential in the client's first message, when no source above holds one.
    first_message: Option<FirstMessageRule>,
    jwt: Option<JwtVerifier>,
    /// Verified JWTs, by the SHA-256 of the token.
    cache: CredentialCache,
    api_keys: Vec<ApiKey>,
    key_id_header: String,
    strip: bool,
    deny_status: u16,
}

#[derive(Clone, Debug)]
struct ApiKey {
    id: String,
    sha256: [u8; 32],
}

impl Auth {
    /// Compiles `auth`; `env` reads the VM's environment (for JWT secrets in `k_env`).
    pub fn compile(config: &AuthConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Auth, ConfigError> {
        if config.sources.is_empty() {
            return Err(ConfigError::new("auth.sources", "is empty; name where the credential travels"));
        }
        let mut sources: Vec<Source> = Vec::new();
        let mut first_message = None;
        for (index, source) in config.sources.iter().enumerate() {
            let field = format!("auth.sources[{index}]");
            if first_message.is_some() {
                let problem = "follows first_message, which must be the last source: the handshake has \
                               gone on before the first message arrives";
                return Err(ConfigError::new(field, problem));
            }
            if let (Some(rule), 1) = (&source.first_message, source.kinds()) {
                first_message = Some(FirstMessageRule::compile(rule, &format!("{field}.first_message"))?);
                continue;
            }
            let compiled = compile_source(source, &field)?;
            if sources.iter().any(|listed| listed.same_place(&compiled)) {
                return Err(ConfigError::new(field, "is listed twice"));
            }
            if compiled.marker().is_some() && sources.iter().any(|listed| listed.marker().is_some()) {
                return Err(ConfigError::new(
                    format!("{field}.marker"),
                    "a second marker: one source may have one",
                ));
            }
            sources.push(compiled);
        }
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::compile(jwt, env)?),
            None => None,
        };
        if jwt.is_none() && config.api_keys.is_empty() {
            return Err(ConfigError::new("auth", "verifies nothing; give \"jwt\", \"api_keys\" or both"));
        }
        let mut api_keys: Vec<ApiKey> = Vec::new();
        for (index, key) in config.api_keys.iter().enumerate() {
            let field = format!("auth.api_keys[{index}]");
            if key.id.is_empty() || !key.id.bytes().all(|b| b.is_ascii_graphic()) {
                let problem = format!("{:?} is not an id: visible ASCII, no spaces", key.id);
                return Err(ConfigError::new(format!("{field}.id"), problem));
            }
            if api_keys.iter().any(|k| k.id == key.id) {
                return Err(ConfigError::new(format!("{field}.id"), format!("{:?} is given twice", key.id)));
            }
            let sha256 = decode_sha256(&key.sha256).ok_or_else(|| {
                ConfigError::new(format!("{field}.sha256"), "is not a SHA-256 hash: 64 hexadecimal digits")
            })?;
            api_keys.push(ApiKey { id: key.id.clone(), sha256 });
        }
        let key_id_header = credential_header_name(&config.key_id_header, "auth.key_id_header")?;
        if sources.iter().any(|s| matches!(s, Source::Header { name, .. } if *name == key_id_header)) {
            let problem = "is also a credential source; the identity would overwrite the credential";
            return Err(ConfigError::new("auth.key_id_header", problem));
        }
        if !(400..=599).contains(&config.deny_status) {
            let problem = format!("{} is not a client or server error status (400-599)", config.deny_status);
            return Err(ConfigError::new("auth.deny_status", problem));
        }
        if let Some(jwt) = &jwt {
            if jwt.identity_headers().any(|header| header == key_id_header) {
                let problem = "is also a claims_to_headers header";
                return Err(ConfigError::new("auth.key_id_header", problem));
            }
            for header in jwt.identity_headers() {
                if sources.iter().any(|s| matches!(s, Source::Header { name, .. } if name == header)) {
                    let problem = format!("{header:?} is also a credential source");
                    return Err(ConfigError::new("auth.jwt.claims_to_headers", problem));
                }
            }
        }
        let cache = config.jwt.as_ref().map(|jwt| jwt.cache).unwrap_or_default();
        let cache =
            CredentialCache::new(if jwt.is_some() { cache.max_entries } else { 0 }, cache.ttl_seconds);
        Ok(Auth {
            sources,
            first_message,
            jwt,
            cache,
            api_keys,
            key_id_header,
            strip: config.strip,
            deny_status: config.deny_status,
        })
    }

    /// What is verified, for the configuration summary: `api_keys=2 jwt=RS256,ES256`.
    pub fn summary(&self) -> String {
        let jwt = self.jwt.as_ref().map(JwtVerifier::summary).unwrap_or_else(|| "none".to_string());
        let first_message = self.first_message.as_ref().map(|rule| format!(" {}", rule.summary()));
        format!(
            "sources={}{} api_keys={} jwt={jwt} strip={}",
            self.sources.len(),
            first_message.unwrap_or_default(),
            self.api_keys.len(),
            self.strip
        )
    }

    /// The cache's hits and misses since the last call.
    pub fn take_cache_counts(&self) -> (u64, u64) {
        self.cache.take_counts()
    }

    /// The JWT verifier, if JWTs are accepted.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    pub fn deny_status(&self) -> u16 {
        self.deny_status
    }

    /// The subprotocol source's marker, if it has one: the protocol wsgate selects on the 101
    /// when the upstream selects none.
    pub fn marker(&self) -> Option<&str> {
        self.sources.iter().find_map(Source::marker)
    }

    /// Whether `request` offers the marker among its subprotocols.
    pub fn offers_marker(&self, request: &Request) -> bool {
        self.marker().is_some_and(|marker| {
            source::offered_subprotocols(request).any(|entry| entry == marker.as_bytes())
        })
    }

    /// The first-message source, if configured.
    pub fn first_message(&self) -> Option<&FirstMessageRule> {
        self.first_message.as_ref()
    }

    /// Checks the request's credential at `now` (seconds since the Unix epoch). On success, the
    /// edits that remove the credential (with `strip`) and forward the verified identity (the
    /// policy removes every identity header the client sent, [`crate::Policy`]); and, for a JWT with `exp`, the first second
    /// at which it is expired (leeway included).
    pub fn check(&self, request: &Request, now: u64) -> Result<Checked<'_>, DenyReason> {
        // The source present carries the credential; one that is present but invalid is
        // refused, never rescued by another source.
        let mut present =
            self.sources.iter().map(|source| source.lookup(request)).filter(|l| *l != Lookup::Absent);
        let found = present.next();
        // A credential in a second place too is refused like one given twice in one place:
        // the upstream could read the copy that wsgate did not verify.
        if present.next().is_some() {
            return Err(DenyReason::TokenDuplicated);
        }
        if let (None, Some(rule)) = (&found, &self.first_message) {
            // The credential is to come in the first message. The extension offer goes: a
            // compressed first message could not be read, nor cut out of the stream (README,
            // "Credentials in the first message").
            let mut edits = Vec::new();
            if request.values("sec-websocket-extensions").next().is_some() {
                edits.push(RequestEdit::Remove("sec-websocket-extensions"));
            }
            return Ok(Checked::Awaits { edits, rule });
        }
        let (credential, strip) = match found {
            None | Some(Lookup::Absent) => return Err(DenyReason::TokenMissing),
            Some(Lookup::Duplicated) => return Err(DenyReason::TokenDuplicated),
            Some(Lookup::Malformed) => return Err(DenyReason::TokenMalformed),
            Some(Lookup::Found { credential, strip }) => (credential, strip),
        };
        let (identity, expiry) = self.verify(&credential, now)?;
        let mut edits = Vec::new();
        if self.strip {
            edits.push(strip);
        }
        edits.extend(identity.into_iter().map(|(header, value)| RequestEdit::Set(header, value)));
        Ok(Checked::Verified { edits, expiry })
    }

    /// Verifies a credential from the first message at `now` (seconds); returns the identity
    /// ([`Auth::identity`]) and a JWT's expiry. The identity is not forwarded: the handshake went
    /// on before the message arrived.
    pub fn verify_first_message(
        &self,
        credential: &[u8],
        now: u64,
    ) -> Result<(Option<String>, Option<u64>), DenyReason> {
        let (headers, expiry) = self.verify(credential, now)?;
        let edits: Vec<RequestEdit<'_>> =
            headers.into_iter().map(|(header, value)| RequestEdit::Set(header, value)).collect();
        Ok((self.identity(&edits), expiry))
    }

    /// Whether a verified credential gives an identity ([`Auth::identity`]): API keys, or a JWT
    /// whose `sub` is forwarded.
    pub fn has_identity(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.as_ref().and_then(JwtVerifier::subject_header).is_some()
    }

    /// The verified identity among a handshake's edits, for logs, the access log and limits:
    /// the subject (`sub`, where `claims_to_headers` forwards it) or the API key's id.
    pub fn identity(&self, edits: &[RequestEdit<'_>]) -> Option<String> {
        let subject = self.jwt.as_ref().and_then(JwtVerifier::subject_header);
        edits.iter().find_map(|edit| match edit {
            RequestEdit::Set(name, value) if Some(*name) == subject || *name == self.key_id_header => {
                String::from_utf8(value.clone()).ok()
            }
            _ => None,
        })
    }

    /// Every identity header wsgate sets for this `auth` (`key_id_header`, `claims_to_headers`).
    pub fn identity_headers(&self) -> impl Iterator<Item = &str> {
        self.jwt.iter().flat_map(JwtVerifier::identity_headers).chain([self.key_id_header.as_str()])
    }

    /// The query parameter names that carry a credential.
    pub fn query_names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|source| match source {
            Source::Query(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Verifies a credential; returns the identity headers to forward and a JWT's expiry. With
    /// both JWT and API keys configured, a credential of three dot-separated segments is read as
    /// a JWT.
    #[allow(clippy::type_complexity)]
    fn verify(&self, credential: &[u8], now: u64) -> Result<(Vec<(&str, Vec<u8>)>, Option<u64>), DenyReason> {
        let looks_like_jwt = credential.iter().filter(|&&b| b == b'.').count() == 2;
        match &self.jwt {
            Some(jwt) if self.api_keys.is_empty() || looks_like_jwt => {
                let key: [u8; 32] = Sha256::digest(credential).into();
                let (identity, expiry) = match self.cache.get(&key, now) {
                    Some(cached) => cached,
                    None => {
                        let claims = jwt.verify(credential, now)?;
                        let identity = jwt.identity(&claims)?;
                        let expiry = jwt.expiry(&claims);
                        self.cache.put(key, identity.clone(), expiry, now);
                        (identity, expiry)
                    }
                };
                let headers = identity
                    .into_iter()
                    .filter_map(|(index, value)| Some((jwt.header(index)?, value)))
                    .collect();
                Ok((headers, expiry))
            }
            _ => {
                let key = self.verify_api_key(credential).ok_or(DenyReason::ApiKeyInvalid)?;
                Ok((vec![(self.key_id_header.as_str(), key.id.as_bytes().to_vec())], None))
            }
        }
    }

    /// The key whose hash matches, comparing with every configured hash in constant time and
    /// without stopping at a match, so that timing tells nothing about which key is close.
    fn verify_api_key(&self, credential: &[u8]) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(credential).into();
        let mut matched = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.api_keys.iter().enumerate() {
            let equal = key.sha256.ct_eq(&digest);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), equal);
            matched |= equal;
        }
        if bool::from(matched) {
            self.api_keys.get(usize::try_from(index).ok()?)
        } else {
            None
        }
    }
}

/// What [`Auth::check`] found.
#[derive(Debug)]
pub enum Checked<'a> {
    /// A credential that verified: the edits for the handshake, and a JWT's expiry (seconds).
    Verified { edits: Vec<RequestEdit<'a>>, expiry: Option<u64> },
    /// No credential in the handshake; it is to come in the first message.
    Awaits { edits: Vec<RequestEdit<'a>>, rule: &'a FirstMessageRule },
}

impl SourceConfig {
    /// How many kinds of source this entry names (exactly one is valid).
    fn kinds(&self) -> usize {
        [self.query.is_some(), self.cookie.is_some(), self.header.is_some(), self.subprotocol.is_some()]
            .into_iter()
            .chain([self.first_message.is_some()])
            .filter(|&named| named)
            .count()
    }
}

fn compile_source(source: &SourceConfig, field: &str) -> Result<Source, ConfigError> {
    if source.kinds() != 1 {
        let problem =
            "needs exactly one of \"query\", \"cookie\", \"header\", \"subprotocol\", \"first_message\"";
        return Err(ConfigError::new(field, problem));
    }
    if source.prefix.is_some() && source.header.is_none() {
        return Err(ConfigError::new(format!("{field}.prefix"), "goes only with \"header\""));
    }
    if source.marker.is_some() && source.subprotocol.is_none() {
        return Err(ConfigError::new(format!("{field}.marker"), "goes only with \"subprotocol\""));
    }
    let token = |value: &str, key: &str| -> Result<String, ConfigError> {
        if value.is_empty() || !value.bytes().all(is_tchar) {
            return Err(ConfigError::new(format!("{field}.{key}"), format!("{value:?} is not a valid name")));
        }
        Ok(value.to_string())
    };
    Ok(match (&source.query, &source.cookie, &source.header, &source.subprotocol) {
        (Some(name), _, _, _) => {
            if name.is_empty() {
                return Err(ConfigError::new(format!("{field}.query"), "is empty"));
            }
            Source::Query(name.clone())
        }
        (_, Some(name), _, _) => Source::Cookie(token(name, "cookie")?),
        (_, _, Some(name), _) => {
            let name = credential_header_name(name, &format!("{field}.header"))?;
            let prefix = source.prefix.clone().unwrap_or_default();
            if !prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(ConfigError::new(format!("{field}.prefix"), "is not visible ASCII"));
            }
            Source::Header { name, prefix }
        }
        (_, _, _, Some(prefix)) => {
            let prefix = token(prefix, "subprotocol")?;
            let marker = source.marker.as_deref().map(|marker| token(marker, "marker")).transpose()?;
            if marker.as_ref().is_some_and(|marker| marker.starts_with(&prefix)) {
                let problem = "starts with the subprotocol prefix, so it would be read as a credential";
                return Err(ConfigError::new(format!("{field}.marker"), problem));
            }
            Source::Subprotocol { prefix, marker }
        }
        (None, None, None, None) => return Err(ConfigError::new(field, "names no source")),
    })
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    // from_str_radix alone would also take a sign ("+f").
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}
