//! JSON Web Tokens (RFC 7519) in JWS compact serialization (RFC 7515 section 7.1), verified
//! against the configured keys and claims. The signature is checked before any claim is read.

use base64ct::{Base64UrlUnpadded, Encoding};
use serde_json::{Map, Value};

use crate::config::JwtConfig;
use crate::error::ConfigError;
use crate::headers::credential_header_name;
use crate::token::jwk::{Algorithm, Jwk, ALGORITHMS, MAX_KEYS_WITHOUT_KID, RSA_MAX_BITS, RSA_MIN_MAX_BITS};
use crate::token::remote::RemoteJwks;
use crate::verdict::DenyReason;

/// The largest `leeway_seconds` accepted: more would keep expired tokens alive for minutes.
const MAX_LEEWAY: u64 = 300;

/// The compiled `auth.jwt`.
#[derive(Clone, Debug)]
pub struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    /// The inline keys (`jwks`).
    keys: Vec<Jwk>,
    /// The fetched keys (`remote_jwks`), if any.
    remote: Option<RemoteJwks>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    require_exp: bool,
    max_bytes: usize,
    /// (claim, lower-case header name)
    claims_to_headers: Vec<(String, String)>,
}

/// The verified claims of a token.
pub type Claims = Map<String, Value>;

impl JwtVerifier {
    /// Compiles `auth.jwt`; `env` reads the VM's environment (for `k_env` secrets).
    pub fn compile(
        config: &JwtConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<JwtVerifier, ConfigError> {
        const FIELD: &str = "auth.jwt";
        if config.algorithms.is_empty() {
            return Err(ConfigError::new(format!("{FIELD}.algorithms"), "is empty"));
        }
        let mut algorithms = Vec::new();
        for (index, name) in config.algorithms.iter().enumerate() {
            let field = format!("{FIELD}.algorithms[{index}]");
            if name.eq_ignore_ascii_case("none") {
                return Err(ConfigError::new(
                    field,
                    "\"none\" means an unsigned token; it is never accepted",
                ));
            }
            let alg = Algorithm::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = ALGORITHMS.iter().map(|alg| alg.name()).collect();
                ConfigError::new(field.clone(), format!("{name:?} is not one of {}", names.join(", ")))
            })?;
            if algorithms.contains(&alg) {
                return Err(ConfigError::new(field, format!("{name:?} is listed twice")));
            }
            algorithms.push(alg);
        }
        let inline = config.jwks.as_ref().map(|jwks| jwks.keys.as_slice()).unwrap_or_default();
        if inline.is_empty() && config.remote_jwks.is_none() {
            return Err(ConfigError::new(
                format!("{FIELD}.jwks.keys"),
                "is empty and there is no remote_jwks; give the issuer's public keys",
            ));
        }
        let mut keys: Vec<Jwk> = Vec::new();
        for (index, key) in inline.iter().enumerate() {
            let field = format!("{FIELD}.jwks.keys[{index}]");
            let jwk = Jwk::compile(key, &algorithms, config.max_rsa_bits, &field, env)?;
            if jwk.kid.is_some() && keys.iter().any(|k| k.kid == jwk.kid) {
                return Err(ConfigError::new(format!("{field}.kid"), "is used by an earlier key"));
            }
            keys.push(jwk);
        }
        let remote = match &config.remote_jwks {
            Some(remote) => Some(
                RemoteJwks::compile(remote, &format!("{FIELD}.remote_jwks"))?
                    .with_max_rsa_bits(config.max_rsa_bits),
            ),
            None => None,
        };
        if config.issuers.is_empty() {
            return Err(ConfigError::new(
                format!("{FIELD}.issuers"),
                "is empty; name the token issuers you trust",
            ));
        }
        if config.audiences.is_empty() {
            let problem = "is empty; name this service's audience, or tokens made for other services pass";
            return Err(ConfigError::new(format!("{FIELD}.audiences"), problem));
        }
        if config.leeway_seconds > MAX_LEEWAY {
            let problem = format!("{} is more than {MAX_LEEWAY} seconds", config.leeway_seconds);
            return Err(ConfigError::new(format!("{FIELD}.leeway_seconds"), problem));
        }
        if !(RSA_MIN_MAX_BITS..=RSA_MAX_BITS).contains(&config.max_rsa_bits) {
            let problem = format!("{} is not {RSA_MIN_MAX_BITS} to {RSA_MAX_BITS}", config.max_rsa_bits);
            return Err(ConfigError::new(format!("{FIELD}.max_rsa_bits"), problem));
        }
        if config.max_token_bytes < 16 {
            return Err(ConfigError::new(format!("{FIELD}.max_token_bytes"), "is too small for any token"));
        }
        let mut claims_to_headers = Vec::new();
        for (index, mapping) in config.claims_to_headers.iter().enumerate() {
            let field = format!("{FIELD}.claims_to_headers[{index}]");
            if mapping.claim.is_empty() {
                return Err(ConfigError::new(format!("{field}.claim"), "is empty"));
            }
            let header = credential_header_name(&mapping.header, &format!("{field}.header"))?;
            if claims_to_headers.iter().any(|(_, h)| *h == header) {
                return Err(ConfigError::new(format!("{field}.header"), format!("{header:?} is used twice")));
            }
            claims_to_headers.push((mapping.claim.clone(), header));
        }
        Ok(JwtVerifier {
            algorithms,
            keys,
            remote,
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway_seconds,
            require_exp: config.require_exp,
            max_bytes: config.max_token_bytes,
            claims_to_headers,
        })
    }

    /// The algorithms and the number of keys: `RS256,ES256 (3 keys)`, and where a remote set
    /// comes from.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.algorithms.iter().map(|alg| alg.name()).collect();
        let remote = self.remote.as_ref().map_or_else(String::new, |remote| {
            format!(" + remote_jwks {}{} via cluster {}", remote.authority, remote.path, remote.cluster)
        });
        format!("{} ({} keys){remote}", names.join(","), self.keys.len())
    }

    /// The fetched key set, if the configuration has one.
    pub fn remote(&self) -> Option<&RemoteJwks> {
        self.remote.as_ref()
    }

    /// The configured algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The headers that carry verified claims (a client's copy of them is always removed).
    pub fn identity_headers(&self) -> impl Iterator<Item = &str> {
        self.claims_to_headers.iter().map(|(_, header)| header.as_str())
    }

    /// The header that `claims_to_headers` forwards `sub` in, if it does.
    pub fn subject_header(&self) -> Option<&str> {
        self.claims_to_headers.iter().find(|(claim, _)| claim == "sub").map(|(_, header)| header.as_str())
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch); returns its claims.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Claims, DenyReason> {
        if token.len() > self.max_bytes {
            return Err(DenyReason::TokenMalformed);
        }
        let mut segments = token.split(|&b| b == b'.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(DenyReason::TokenMalformed);
        };
        let header = decode_object(header_b64)?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => Algorithm::from_name(name),
            _ => None,
        };
        // An algorithm that is not configured (or "none") is refused outright.
        let alg = alg.filter(|alg| self.algorithms.contains(alg)).ok_or(DenyReason::TokenMalformed)?;
        // Extensions this verifier does not implement must not be ignored (RFC 7515 4.1.11).
        if header.contains_key("crit") {
            return Err(DenyReason::TokenMalformed);
        }
        // jku, jwk, x5u and x5c are never read: keys come from the configuration only.
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(DenyReason::TokenMalformed),
        };
        let signature = decode(signature_b64)?;
        let input_len = header_b64.len() + 1 + payload_b64.len();
        let input = token.get(..input_len).ok_or(DenyReason::TokenMalformed)?;
        let fetched = self.remote.as_ref().and_then(RemoteJwks::keys);
        let candidates: Vec<&Jwk> = self
            .keys
            .iter()
            .chain(fetched.iter().flat_map(|keys| keys.iter()))
            .filter(|k| k.fits(alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .collect();
        if candidates.is_empty() {
            if let Some(remote) = &self.remote {
                if fetched.is_none() {
                    return Err(DenyReason::JwksUnavailable);
                }
                // The issuer may have rotated its keys: fetch the set again, soon.
                remote.unknown_kid(now);
            }
            return Err(DenyReason::TokenUnknownKey);
        }
        // Without a `kid`, every key that fits is tried: a few, not as many as the set holds.
        if kid.is_none() && candidates.len() > MAX_KEYS_WITHOUT_KID {
            return Err(DenyReason::TokenUnknownKey);
        }
        if !candidates.iter().any(|key| key.verify(alg, input, &signature)) {
            return Err(DenyReason::TokenBadSignature);
        }
        let claims = decode_object(payload_b64)?;
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    /// `exp`, `nbf`, `iss` and `aud`. A claim of the wrong type refuses the token; it is never
    /// skipped (RFC 7519 section 4.1).
    fn check_claims(&self, claims: &Claims, now: u64) -> Result<(), DenyReason> {
        let now = now as f64;
        let leeway = self.leeway as f64;
        match numeric_date(claims, "exp")? {
            // The token is valid strictly before exp (RFC 7519 section 4.1.4).
            Some(exp) if now >= exp + leeway => return Err(DenyReason::TokenExpired),
            None if self.require_exp => return Err(DenyReason::TokenMalformed),
            _ => {}
        }
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if now + leeway < nbf {
                return Err(DenyReason::TokenNotYetValid);
            }
        }
        match claims.get("iss") {
            Some(Value::String(iss)) if self.issuers.contains(iss) => {}
            Some(Value::String(_)) | None => return Err(DenyReason::TokenBadIssuer),
            Some(_) => return Err(DenyReason::TokenMalformed),
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.as_str()],
            Some(Value::Array(items)) => {
                let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                strings.ok_or(DenyReason::TokenMalformed)?
            }
            None => Vec::new(),
            Some(_) => return Err(DenyReason::TokenMalformed),
        };
        if !audiences.iter().any(|aud| self.audiences.iter().any(|ours| ours == aud)) {
            return Err(DenyReason::TokenBadAudience);
        }
        Ok(())
    }

    /// The forwarded claims as (index of the header, value) pairs; [`JwtVerifier::header`]
    /// names the header. A mapped claim that is absent or not a string or number is left out;
    /// one that holds control characters refuses the token, since it cannot be forwarded
    /// faithfully in a header.
    pub fn identity(&self, claims: &Claims) -> Result<Vec<(usize, Vec<u8>)>, DenyReason> {
        let mut headers = Vec::new();
        for (index, (claim, _)) in self.claims_to_headers.iter().enumerate() {
            let value = match claims.get(claim) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) => number.to_string(),
                _ => continue,
            };
            if value.bytes().any(|b| b.is_ascii_control()) {
                return Err(DenyReason::TokenMalformed);
            }
            headers.push((index, value.into_bytes()));
        }
        Ok(headers)
    }

    /// The name of forwarded header `index`.
    pub fn header(&self, index: usize) -> Option<&str> {
        self.claims_to_headers.get(index).map(|(_, header)| header.as_str())
    }

    /// The first second at which a verified token is refused as expired (`exp` plus leeway,
    /// rounded up), if it has an `exp`.
    pub fn expiry(&self, claims: &Claims) -> Option<u64> {
        let exp = claims.get("exp")?.as_f64()?;
        let end = (exp + self.leeway as f64).ceil();
        // `as` saturates: a date past u64::MAX seconds becomes u64::MAX.
        (end.is_finite() && end >= 0.0).then_some(end as u64)
    }
}

/// Strict base64url without padding (RFC 7515 section 2): padding, `+`, `/` and non-canonical
/// trailing bits are refused.
fn decode(segment: &[u8]) -> Result<Vec<u8>, DenyReason> {
    let text = std::str::from_utf8(segment).map_err(|_| DenyReason::TokenMalformed)?;
    Base64UrlUnpadded::decode_vec(text).map_err(|_| DenyReason::TokenMalformed)
}

/// A segment that decodes to a JSON object. Duplicate member names are refused: two parsers
/// could pick different ones (RFC 7515 section 5.2, step 4).
fn decode_object(segment: &[u8]) -> Result<Map<String, Value>, DenyReason> {
    unique_object(&decode(segment)?).ok_or(DenyReason::TokenMalformed)
}

/// A JSON object whose member names are all different at every depth, from UTF-8 bytes.
pub(crate) fn unique_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<UniqueObject>(bytes).ok().map(|object| object.0)
}

/// A JSON number as a NumericDate, if the claim is present.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<f64>, DenyReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => {
            number.as_f64().filter(|v| v.is_finite()).map(Some).ok_or(DenyReason::TokenMalformed)
        }
        Some(_) => Err(DenyReason::TokenMalformed),
    }
}

/// A JSON object whose member names are all different, at every depth.
struct UniqueObject(Map<String, Value>);

/// A JSON value whose objects have no member name twice, at any depth.
struct UniqueValue(Value);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UniqueObject, D::Error> {
        match UniqueValue::deserialize(deserializer)?.0 {
            Value::Object(map) => Ok(UniqueObject(map)),
            _ => Err(serde::de::Error::custom("not a JSON object")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UniqueValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UniqueValue, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<UniqueValue, A::Error> {
                let mut items = Vec::new();
                while let Some(UniqueValue(item)) = access.next_element()? {
                    items.push(item);
                }
                Ok(UniqueValue(Value::Array(items)))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut access: M) -> Result<UniqueValue, M::Error> {
                let mut map = Map::new();
                while let Some((key, UniqueValue(value))) = access.next_entry::<String, UniqueValue>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate member {key:?}")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueValue(Value::Object(map)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClaimHeader, JwksConfig};
    use hmac::{Hmac, KeyInit, Mac};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        Base64UrlUnpadded::encode_string(bytes)
    }

    fn verifier(algorithms: &[&str], keys: Vec<Value>) -> JwtVerifier {
        JwtVerifier::compile(&config(algorithms, keys), &|_| None).unwrap()
    }

    fn config(algorithms: &[&str], keys: Vec<Value>) -> JwtConfig {
        JwtConfig {
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            jwks: Some(JwksConfig { keys }),
            remote_jwks: None,
            issuers: vec!["https://issuer.example".into()],
            audiences: vec!["chat".into()],
            leeway_seconds: 60,
            require_exp: true,
            max_token_bytes: 8192,
            max_rsa_bits: 4096,
            claims_to_headers: vec![ClaimHeader { claim: "sub".into(), header: "x-subject".into() }],
            cache: Default::default(),
        }
    }

    fn hmac_key() -> Value {
        serde_json::json!({"kty": "oct", "kid": "h1", "k": b64(SECRET)})
    }

    fn hs256() -> JwtVerifier {
        verifier(&["HS256"], vec![hmac_key()])
    }

    /// A token with header and claims given as JSON text, signed with HS256 and `SECRET`.
    fn token(header: &str, claims: &str) -> Vec<u8> {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes())).into_bytes()
    }

    fn claims_with(extra: &str) -> String {
        format!(
            r#"{{"iss": "https://issuer.example", "aud": "chat", "sub": "u1", "exp": {}{extra}}}"#,
            NOW + 600
        )
    }

    const HEADER: &str = r#"{"alg": "HS256", "typ": "JWT"}"#;

    #[test]
    fn a_valid_token_verifies_and_its_claims_become_headers() {
        let claims = hs256().verify(&token(HEADER, &claims_with("")), NOW).unwrap();
        assert_eq!(hs256().identity(&claims).unwrap(), vec![(0, b"u1".to_vec())]);
        assert_eq!(hs256().header(0), Some("x-subject"));
    }

    #[test]
    fn expiry_is_judged_with_the_leeway_at_its_exact_boundary() {
        let exp = NOW + 600;
        let token =
            token(HEADER, &format!(r#"{{"iss": "https://issuer.example", "aud": "chat", "exp": {exp}}}"#));
        assert!(hs256().verify(&token, exp + 59).is_ok());
        assert_eq!(hs256().verify(&token, exp + 60), Err(DenyReason::TokenExpired));
    }

    #[test]
    fn not_before_is_judged_with_the_leeway_at_its_exact_boundary() {
        let nbf = NOW + 1000;
        let token = token(
            HEADER,
            &claims_with(&format!(r#", "nbf": {nbf}"#))
                .replace(&(NOW + 600).to_string(), &(NOW + 5000).to_string()),
        );
        assert!(hs256().verify(&token, nbf - 60).is_ok());
        assert_eq!(hs256().verify(&token, nbf - 61), Err(DenyReason::TokenNotYetValid));
    }

    #[test]
    fn a_token_without_exp_is_refused_unless_exp_is_optional() {
        let token = token(HEADER, r#"{"iss": "https://issuer.example", "aud": "chat"}"#);
        assert_eq!(hs256().verify(&token, NOW), Err(DenyReason::TokenMalformed));
        let mut lenient = hs256();
        lenient.require_exp = false;
        assert!(lenient.verify(&token, NOW).is_ok());
    }

    #[test]
    fn claims_of_the_wrong_type_refuse_the_token() {
        let cases = [
            r#"{"iss": "https://issuer.example", "aud": "chat", "exp": "1900000000"}"#,
            r#"{"iss": "https://issuer.example", "aud": "chat", "exp": 1900000000, "nbf": "0"}"#,
            r#"{"iss": 7, "aud": "chat", "exp": 1900000000}"#,
            r#"{"iss": "https://issuer.example", "aud": ["chat", 1], "exp": 1900000000}"#,
            r#"{"iss": "https://issuer.example", "aud": {"chat": true}, "exp": 1900000000}"#,
        ];
        for claims in cases {
            assert_eq!(
                hs256().verify(&token(HEADER, claims), NOW),
                Err(DenyReason::TokenMalformed),
                "{claims}"
            );
        }
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let wrong_iss = claims_with("").replace("https://issuer.example", "https://evil.example");
        assert_eq!(hs256().verify(&token(HEADER, &wrong_iss), NOW), Err(DenyReason::TokenBadIssuer));
        let no_iss = format!(r#"{{"aud": "chat", "exp": {}}}"#, NOW + 60);
        assert_eq!(hs256().verify(&token(HEADER, &no_iss), NOW), Err(DenyReason::TokenBadIssuer));
        let wrong_aud = claims_with("").replace(r#""aud": "chat""#, r#""aud": ["billing", "admin"]"#);
        assert_eq!(hs256().verify(&token(HEADER, &wrong_aud), NOW), Err(DenyReason::TokenBadAudience));
        let list_aud = claims_with("").replace(r#""aud": "chat""#, r#""aud": ["billing", "chat"]"#);
        assert!(hs256().verify(&token(HEADER, &list_aud), NOW).is_ok());
    }

    #[test]
    fn alg_none_and_unconfigured_algorithms_are_refused() {
        let claims = b64(claims_with("").as_bytes());
        let none = format!("{}.{claims}.", b64(br#"{"alg": "none"}"#));
        assert_eq!(hs256().verify(none.as_bytes(), NOW), Err(DenyReason::TokenMalformed));
        let hs512 = token(r#"{"alg": "HS512"}"#, &claims_with(""));
        assert_eq!(hs256().verify(&hs512, NOW), Err(DenyReason::TokenMalformed));
    }

    #[test]
    fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
        // The classic algorithm confusion: a verifier that lets the header choose the algorithm
        // would use the RSA key's public bytes as an HMAC secret.
        let jwks: Value = serde_json::from_str(include_str!("../../tests/keys/jwks.json")).unwrap();
        let rsa = jwks["keys"][0].clone();
        let verifier = verifier(&["RS256", "HS256"], vec![rsa.clone()]);
        let n = Base64UrlUnpadded::decode_vec(rsa["n"].as_str().unwrap()).unwrap();
        let input =
            format!("{}.{}", b64(br#"{"alg":"HS256","kid":"rsa-1"}"#), b64(claims_with("").as_bytes()));
        for secret in [n.as_slice(), rsa["n"].as_str().unwrap().as_bytes()] {
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            let forged = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
            assert_eq!(verifier.verify(forged.as_bytes(), NOW), Err(DenyReason::TokenUnknownKey));
        }
    }

    #[test]
    fn a_kid_naming_a_key_of_the_wrong_type_is_refused() {
        let jwks: Value = serde_json::from_str(include_str!("../../tests/keys/jwks.json")).unwrap();
        let verifier = verifier(&["RS256", "HS256"], vec![jwks["keys"][0].clone(), hmac_key()]);
        let wrong_kid = token(r#"{"alg": "HS256", "kid": "rsa-1"}"#, &claims_with(""));
        assert_eq!(verifier.verify(&wrong_kid, NOW), Err(DenyReason::TokenUnknownKey));
        let unknown = token(r#"{"alg": "HS256", "kid": "nobody"}"#, &claims_with(""));
        assert_eq!(verifier.verify(&unknown, NOW), Err(DenyReason::TokenUnknownKey));
        let right = token(r#"{"alg": "HS256", "kid": "h1"}"#, &claims_with(""));
        assert!(verifier.verify(&right, NOW).is_ok());
    }

    #[test]
    fn a_token_without_kid_is_refused_when_more_than_a_few_keys_fit_it() {
        // The signing secret last, so that every other key is tried before it.
        let mut keys: Vec<Value> = (0..MAX_KEYS_WITHOUT_KID)
            .map(|i| serde_json::json!({"kty": "oct", "kid": format!("other-{i}"), "k": b64(&[b'x'; 32])}))
            .collect();
        keys.push(hmac_key());
        let many = verifier(&["HS256"], keys);
        let anonymous = token(r#"{"alg": "HS256"}"#, &claims_with(""));
        assert_eq!(many.verify(&anonymous, NOW), Err(DenyReason::TokenUnknownKey));
        let named = token(r#"{"alg": "HS256", "kid": "h1"}"#, &claims_with(""));
        assert!(many.verify(&named, NOW).is_ok());
        // With a few keys, a token without kid is still tried against each.
        let few =
            verifier(&["HS256"], vec![serde_json::json!({"kty": "oct", "k": b64(&[b'x'; 32])}), hmac_key()]);
        assert!(few.verify(&anonymous, NOW).is_ok());
    }

    #[test]
    fn rsa_keys_over_max_rsa_bits_are_refused_at_load() {
        // An odd modulus of 4104 bits: past the default of 4096, within 8192.
        let mut modulus = vec![0u8; 513];
        modulus[0] = 0x80;
        modulus[512] = 0x01;
        let key = serde_json::json!({"kty": "RSA", "n": b64(&modulus), "e": "AQAB"});
        let mut config = config(&["RS256"], vec![key]);
        let error = JwtVerifier::compile(&config, &|_| None).unwrap_err();
        assert_eq!(error.field, "auth.jwt.jwks.keys[0].n", "{error}");
        assert!(error.problem.contains("max_rsa_bits"), "{error}");
        config.max_rsa_bits = 8192;
        assert!(JwtVerifier::compile(&config, &|_| None).is_ok());
        config.max_rsa_bits = 16384;
        assert_eq!(JwtVerifier::compile(&config, &|_| None).unwrap_err().field, "auth.jwt.max_rsa_bits");
    }

    #[test]
    fn a_crit_header_is_refused() {
        let token = token(r#"{"alg": "HS256", "crit": ["exp"], "exp": 1}"#, &claims_with(""));
        assert_eq!(hs256().verify(&token, NOW), Err(DenyReason::TokenMalformed));
    }

    #[test]
    fn keys_named_by_the_token_itself_are_never_used() {
        let header =
            r#"{"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}, "jku": "https://evil.example/k"}"#;
        let mut forged = token(header, &claims_with(""));
        let last = forged.len() - 2;
        forged[last] ^= 1;
        assert_eq!(hs256().verify(&forged, NOW), Err(DenyReason::TokenBadSignature));
    }

    #[test]
    fn a_tampered_payload_or_signature_is_refused() {
        let good = String::from_utf8(token(HEADER, &claims_with(""))).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let admin = b64(claims_with("").replace("u1", "admin").as_bytes());
        let swapped = format!("{}.{admin}.{}", parts[0], parts[2]);
        assert_eq!(hs256().verify(swapped.as_bytes(), NOW), Err(DenyReason::TokenBadSignature));
        let signature = Base64UrlUnpadded::decode_vec(parts[2]).unwrap();
        let cut = format!("{}.{}.{}", parts[0], parts[1], b64(&signature[..signature.len() - 1]));
        assert_eq!(hs256().verify(cut.as_bytes(), NOW), Err(DenyReason::TokenBadSignature));
    }

    #[test]
    fn only_strict_base64url_and_exactly_three_segments_are_read() {
        let good = String::from_utf8(token(HEADER, &claims_with(""))).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.extra"),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            good.replacen('-', "+", 1).replacen('_', "/", 1),
            format!(" {good}"),
            "..".to_string(),
        ];
        for case in cases {
            if case == good {
                continue;
            }
            assert_eq!(hs256().verify(case.as_bytes(), NOW), Err(DenyReason::TokenMalformed), "{case}");
        }
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        let token = token(r#"{"alg": "HS256", "alg": "none"}"#, &claims_with(""));
        assert_eq!(hs256().verify(&token, NOW), Err(DenyReason::TokenMalformed));
        let claims = format!(
            r#"{{"iss": "https://issuer.example", "aud": "chat", "exp": {}, "sub": "u1", "sub": "admin"}}"#,
            NOW + 60
        );
        assert_eq!(hs256().verify(&token_with(&claims), NOW), Err(DenyReason::TokenMalformed));
    }

    fn token_with(claims: &str) -> Vec<u8> {
        token(HEADER, claims)
    }

    #[test]
    fn a_token_over_the_size_limit_is_refused_before_it_is_read() {
        let mut small = hs256();
        small.max_bytes = 64;
        assert_eq!(small.verify(&token(HEADER, &claims_with("")), NOW), Err(DenyReason::TokenMalformed));
    }

    #[test]
    fn a_forwarded_claim_with_control_characters_refuses_the_token() {
        let claims = hs256()
            .verify(&token(HEADER, &claims_with("").replace("u1", "u1\\r\\nx-admin: 1")), NOW)
            .unwrap();
        assert_eq!(hs256().identity(&claims), Err(DenyReason::TokenMalformed));
    }
}
