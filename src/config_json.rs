//! The configuration's JSON, once parsed into a `serde_json::Value`, read into the
//! configuration's types, with every error naming where it happened (`auth.sources[0].query`).
//!
//! serde_json's own reader of a `Value` says what is wrong but not where. Wrapping it to say where
//! (as `serde_path_to_error` does) wraps every type's visitor as well, and so doubled the code that
//! reads the configuration in the module, all of which V8 compiles when Envoy loads it. This
//! reader is serde's data model over the parsed value and nothing else: an error records the
//! member or item it came out of on its way back up, and no visitor is wrapped.
//!
//! It reads what serde_json reads, with the same messages, except that a struct is read from a
//! JSON object only, never from a list by position (a list has no keys to check against
//! `deny_unknown_fields`), and a map's keys are read as strings only (serde_json would also read
//! `"1"` as a number key; no configuration type has one).

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Unexpected, Visitor};
use serde_json::{Map, Value};

/// Reads `value` as a `T`, naming the path of any error.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, PathError> {
    T::deserialize(Reader(value))
}

/// What went wrong, and where in the value.
#[derive(Debug)]
pub struct PathError {
    /// From the innermost step out: the path is built as the error leaves each member or item.
    steps: Vec<Step>,
    message: String,
}

#[derive(Debug)]
enum Step {
    Member(String),
    Item(usize),
}

impl PathError {
    /// The path within the value read: `auth.sources[0].query`, or `.` for the value itself.
    pub fn path(&self) -> String {
        if self.steps.is_empty() {
            return ".".to_string();
        }
        let mut path = String::new();
        for (n, step) in self.steps.iter().rev().enumerate() {
            match step {
                Step::Item(index) => path.push_str(&format!("[{index}]")),
                Step::Member(key) => {
                    if n > 0 {
                        path.push('.');
                    }
                    path.push_str(key);
                }
            }
        }
        path
    }

    /// What is wrong, in serde's words.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn within(mut self, step: Step) -> PathError {
        self.steps.push(step);
        self
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.message)
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<T: fmt::Display>(message: T) -> PathError {
        PathError { steps: Vec::new(), message: message.to_string() }
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> PathError {
        de::Error::custom(format_args!("invalid type: {}, expected {expected}", AsJson(unexpected)))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> PathError {
        de::Error::custom(format_args!("invalid value: {}, expected {expected}", AsJson(unexpected)))
    }
}

/// A value of the wrong kind or range named as serde_json names it: `null` rather than serde's
/// "unit value", and a floating-point number as JSON writes it (`1e16`).
struct AsJson<'a>(Unexpected<'a>);

impl fmt::Display for AsJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Float(value) => match serde_json::Number::from_f64(value) {
                Some(number) => write!(f, "floating point `{number}`"),
                None => self.0.fmt(f),
            },
            other => other.fmt(f),
        }
    }
}

/// How serde's messages name a value of the wrong kind.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            (None, None) => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn wrong_kind<'de, V: Visitor<'de>, T>(value: &Value, visitor: &V) -> Result<T, PathError> {
    Err(de::Error::invalid_type(unexpected(value), visitor))
}

/// One value to read.
struct Reader(Value);

impl Reader {
    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let Value::Number(n) = &self.0 else {
            return wrong_kind(&self.0, &visitor);
        };
        match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => visitor.visit_u64(u),
            (None, Some(i), _) => visitor.visit_i64(i),
            (None, None, Some(f)) => visitor.visit_f64(f),
            (None, None, None) => wrong_kind(&self.0, &visitor),
        }
    }

    fn items<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, PathError> {
        let len = items.len();
        let mut items = Items { items: items.into_iter(), index: 0 };
        let read = visitor.visit_seq(&mut items)?;
        match items.items.len() {
            0 => Ok(read),
            _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
        }
    }

    fn members<'de, V: Visitor<'de>>(members: Map<String, Value>, visitor: V) -> Result<V::Value, PathError> {
        let len = members.len();
        let mut members = Members { members: members.into_iter(), value: None };
        let read = visitor.visit_map(&mut members)?;
        match members.members.len() {
            0 => Ok(read),
            _ => Err(de::Error::invalid_length(len, &"fewer elements in map")),
        }
    }
}

/// Methods of serde's data model that read as another does, as in serde_json's reader of a
/// `Value`.
macro_rules! read_as {
    ($via:ident: $($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
                self.$via(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Reader {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(_) => self.number(visitor),
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => Reader::items(items, visitor),
            Value::Object(members) => Reader::members(members, visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Bool(b) => visitor.visit_bool(b),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Array(items) => Reader::items(items, visitor),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Object(members) => Reader::members(members, visitor),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        match self.0 {
            Value::String(name) => visitor.visit_enum(Variant { name, value: None }),
            Value::Object(members) => {
                let mut members = members.into_iter();
                match (members.next(), members.next()) {
                    (Some((name, value)), None) => visitor.visit_enum(Variant { name, value: Some(value) }),
                    _ => Err(de::Error::invalid_value(Unexpected::Map, &"map with a single key")),
                }
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &"string or map")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_unit()
    }

    read_as!(number: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128 deserialize_f32
        deserialize_f64);
    read_as!(deserialize_string: deserialize_str deserialize_char deserialize_identifier);
    read_as!(deserialize_bytes: deserialize_byte_buf);

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => Reader::items(items, visitor),
            other => wrong_kind(&other, &visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, PathError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.deserialize_seq(visitor)
    }
}

/// The items of a list, each read with its index on the path.
struct Items {
    items: std::vec::IntoIter<Value>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for Items {
    type Error = PathError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, PathError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(Reader(item)).map(Some).map_err(|error| error.within(Step::Item(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The members of an object, each key and value read with the key on the path.
struct Members {
    members: serde_json::map::IntoIter,
    /// The value of the key read last, with its key.
    value: Option<(String, Value)>,
}

impl<'de> de::MapAccess<'de> for Members {
    type Error = PathError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, PathError> {
        let Some((key, value)) = self.members.next() else {
            return Ok(None);
        };
        let read = seed.deserialize(de::value::StrDeserializer::<PathError>::new(&key));
        match read {
            Ok(read) => {
                self.value = Some((key, value));
                Ok(Some(read))
            }
            Err(error) => Err(error.within(Step::Member(key))),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, PathError> {
        match self.value.take() {
            Some((key, value)) => {
                seed.deserialize(Reader(value)).map_err(|error| error.within(Step::Member(key)))
            }
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

/// An enum's variant: its name, and its content when written as `{"name": content}`.
struct Variant {
    name: String,
    value: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = PathError;
    type Variant = Content;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Content), PathError> {
        let variant = seed.deserialize(de::value::StrDeserializer::<PathError>::new(&self.name))?;
        Ok((variant, Content { name: self.name, value: self.value }))
    }
}

/// What a variant holds, read with the variant's name on the path.
struct Content {
    name: String,
    value: Option<Value>,
}

impl Content {
    fn inside<T>(
        self,
        expected: &'static str,
        read: impl FnOnce(Reader) -> Result<T, PathError>,
    ) -> Result<T, PathError> {
        let read = match self.value {
            Some(value) => read(Reader(value)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &expected)),
        };
        read.map_err(|error| error.within(Step::Member(self.name)))
    }
}

impl<'de> de::VariantAccess<'de> for Content {
    type Error = PathError;

    fn unit_variant(self) -> Result<(), PathError> {
        match self.value {
            None => Ok(()),
            Some(_) => self.inside("unit variant", <() as de::Deserialize>::deserialize),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, PathError> {
        self.inside("newtype variant", |value| seed.deserialize(value))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, PathError> {
        self.inside("tuple variant", |value| match value.0 {
            Value::Array(items) if items.is_empty() => visitor.visit_unit(),
            Value::Array(items) => Reader::items(items, visitor),
            other => Err(de::Error::invalid_type(unexpected(&other), &"tuple variant")),
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        self.inside("struct variant", |value| match value.0 {
            Value::Object(members) => Reader::members(members, visitor),
            other => Err(de::Error::invalid_type(unexpected(&other), &"struct variant")),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{json, Value};

    use super::from_value;
    use crate::config::{MatchConfig, PolicyConfig};

    /// A policy that sets every key of the configuration's types at least once.
    fn every_key() -> Value {
        json!({
            "mode": "shadow",
            "allowed_origins": ["https://app.example", "https://*.example.org"],
            "missing_origin": "allow",
            "null_origin": "deny",
            "deny_status": 403,
            "deny_body": "no",
            "response_headers": {
                "content_security_policy": {
                    "directives": {"connect-src": ["'self'", "wss://app.example"], "default-src": ["'self'"]},
                    "report_only": true,
                    "report_to": "csp"
                },
                "on_existing": "replace",
                "strict_transport_security": "max-age=60",
                "x_content_type_options": null,
                "referrer_policy": "no-referrer",
                "cross_origin_opener_policy": "same-origin",
                "extra": [{"name": "x-frame-options", "value": "DENY"}]
            },
            "require_tls": false,
            "trust_forwarded_proto": true,
            "auth": {
                "sources": [
                    {"query": "access_token"},
                    {"cookie": "session", "prefix": "Bearer "},
                    {"subprotocol": "token.", "marker": "bearer"},
                    {"first_message": {
                        "token_pointer": "/token", "type_pointer": "/type", "type_value": "auth",
                        "timeout_ms": 2000, "max_bytes": 4096, "forward": true, "upstream_max_bytes": 1024
                    }}
                ],
                "jwt": {
                    "algorithms": ["RS256", "ES256"],
                    "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "n": 1.5}]},
                    "remote_jwks": {
                        "cluster": "idp", "authority": "idp.example", "path": "/jwks",
                        "refresh_seconds": 600, "retry_seconds": 5, "timeout_ms": 1000
                    },
                    "issuers": ["https://idp.example"],
                    "audiences": ["chat"],
                    "leeway_seconds": 30,
                    "require_exp": true,
                    "max_token_bytes": 8192,
                    "max_rsa_bits": 4096,
                    "claims_to_headers": [{"claim": "sub", "header": "x-user"}],
                    "cache": {"max_entries": 64, "ttl_seconds": 60}
                },
                "api_keys": [{"id": "ci", "sha256": "00"}],
                "key_id_header": "x-key",
                "strip": true,
                "deny_status": 401
            },
            "close_on_expiry": true,
            "max_connection_seconds": 3600,
            "also_check": [{"path_prefix": "/poll", "query": "transport=polling"}],
            "messages": {
                "client": {
                    "max_frame_bytes": 1024, "max_message_bytes": 4096,
                    "messages_per_second": 10, "message_burst": 20,
                    "bytes_per_second": 1000, "byte_burst": 2000,
                    "opcodes": ["text"],
                    "json": {"pointer": "/type", "one_of": ["say"], "max_depth": 8, "max_bytes": 1024}
                },
                "server": {"max_message_bytes": 65536}
            },
            "compression": "strip",
            "limits": {"max_sockets_per_identity": 4, "max_sockets_per_client": 8}
        })
    }

    /// What serde_path_to_error says of the same value over serde_json's own reader.
    fn reference<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(value)
            .map_err(|error| (error.path().to_string(), error.into_inner().to_string()))
    }

    fn ours<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
        from_value(value).map_err(|error| (error.path(), error.message().to_string()))
    }

    /// Every value the mutations put in a place.
    fn replacements() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(7),
            json!(-3),
            json!(70000),
            json!(1.5),
            json!(1e16),
            json!(-1e20),
            json!(1e-6),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(""),
            json!("x"),
            json!(["x"]),
            json!([]),
            json!({}),
            json!({"unknown_key": 1}),
        ]
    }

    /// `value` with each place (member or item) replaced in turn, each object given an unknown
    /// member, and each member removed in turn; each with a description.
    fn mutations(value: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for replacement in replacements() {
            out.push((format!(". = {replacement}"), replacement));
        }
        match value {
            Value::Object(members) => {
                let mut more = members.clone();
                more.insert("unknown_key".into(), json!(1));
                out.push(("+unknown_key".into(), Value::Object(more)));
                for (key, member) in members {
                    let mut fewer = members.clone();
                    fewer.remove(key);
                    out.push((format!("-{key}"), Value::Object(fewer)));
                    for (what, changed) in mutations(member) {
                        let mut whole = members.clone();
                        whole.insert(key.clone(), changed);
                        out.push((format!("{key}{what}"), Value::Object(whole)));
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    for (what, changed) in mutations(item) {
                        let mut whole = items.clone();
                        if let Some(place) = whole.get_mut(index) {
                            *place = changed;
                        }
                        out.push((format!("[{index}]{what}"), Value::Array(whole)));
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// Whether the only difference is the one this reader means to make: a struct read from a list.
    fn struct_from_a_list<T>(ours: &Result<T, (String, String)>) -> bool {
        matches!(ours, Err((_, message)) if message.starts_with("invalid type: sequence, expected struct"))
    }

    #[test]
    fn the_policy_with_every_key_reads_as_serde_json_reads_it() {
        let ours = format!("{:?}", ours::<PolicyConfig>(every_key()));
        let reference = format!("{:?}", reference::<PolicyConfig>(every_key()));
        assert!(ours.starts_with("Ok("), "{ours}");
        assert_eq!(ours, reference);
    }

    #[test]
    fn every_mutation_of_a_policy_gets_serde_path_to_errors_path_and_message() {
        let cases = mutations(&every_key());
        assert!(cases.len() > 1000, "only {} mutations", cases.len());
        let mut differences = Vec::new();
        for (what, value) in cases {
            let ours = ours::<PolicyConfig>(value.clone());
            let reference = reference::<PolicyConfig>(value);
            let (ours_text, reference_text) = (format!("{ours:?}"), format!("{reference:?}"));
            if ours_text != reference_text && !struct_from_a_list(&ours) {
                differences.push(format!("{what}:\n  ours      {ours_text}\n  reference {reference_text}"));
            }
        }
        assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    }

    #[test]
    fn every_mutation_of_a_match_gets_serde_path_to_errors_path_and_message() {
        let base = json!({"hosts": ["chat.example", "*.chat.example"], "path_prefix": "/ws"});
        for (what, value) in mutations(&base) {
            let ours = ours::<MatchConfig>(value.clone());
            let reference = reference::<MatchConfig>(value);
            if !struct_from_a_list(&ours) {
                assert_eq!(format!("{ours:?}"), format!("{reference:?}"), "{what}");
            }
        }
    }

    #[test]
    fn a_struct_is_not_read_from_a_list_by_position() {
        let value = json!({"allowed_origins": [], "limits": [4, 8]});
        assert!(reference::<PolicyConfig>(value.clone()).is_ok(), "serde_json reads it by position");
        let (path, message) = ours::<PolicyConfig>(value).unwrap_err();
        assert_eq!(path, "limits");
        assert_eq!(message, "invalid type: sequence, expected struct LimitsConfig");
    }

    #[test]
    fn an_error_names_the_members_and_items_it_came_out_of() {
        let mut value = every_key();
        value["auth"]["sources"][3]["first_message"]["timeout_ms"] = json!("soon");
        let (path, message) = ours::<PolicyConfig>(value).unwrap_err();
        assert_eq!(path, "auth.sources[3].first_message.timeout_ms");
        assert_eq!(message, "invalid type: string \"soon\", expected u64");
    }

    #[test]
    fn an_error_in_the_value_itself_has_the_path_dot() {
        let (path, message) = ours::<PolicyConfig>(json!("policy")).unwrap_err();
        assert_eq!(path, ".");
        assert_eq!(message, "invalid type: string \"policy\", expected struct PolicyConfig");
    }

    #[test]
    fn a_member_with_an_empty_name_keeps_its_place_on_the_path() {
        type Nested = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u8>>;
        let value = json!({"": {"x": "bad"}});
        let ours = ours::<Nested>(value.clone());
        assert_eq!(ours, reference::<Nested>(value));
        assert_eq!(ours.unwrap_err().0, ".x");
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Dot,
        Line(u8),
        Box { side: u8 },
        Pair(u8, u8),
    }

    #[test]
    fn an_enum_reads_a_unit_variant_from_its_name() {
        assert_eq!(ours::<Shape>(json!("dot")), Ok(Shape::Dot));
        assert_eq!(ours::<Shape>(json!({"dot": null})), reference::<Shape>(json!({"dot": null})));
    }

    #[test]
    fn an_enum_reads_other_variants_from_a_single_member_named_after_them() {
        assert_eq!(ours::<Shape>(json!({"line": 3})), Ok(Shape::Line(3)));
        assert_eq!(ours::<Shape>(json!({"box": {"side": 2}})), Ok(Shape::Box { side: 2 }));
        assert_eq!(ours::<Shape>(json!({"pair": [1, 2]})), Ok(Shape::Pair(1, 2)));
    }

    #[test]
    fn an_error_inside_a_variant_has_the_variant_on_its_path() {
        let (path, message) = ours::<Shape>(json!({"box": {"side": 300}})).unwrap_err();
        assert_eq!(path, "box.side");
        assert_eq!(message, "invalid value: integer `300`, expected u8");
    }

    #[test]
    fn enums_written_wrongly_get_serde_path_to_errors_path_and_message() {
        for value in [
            json!("circle"),
            json!({"line": 3, "dot": null}),
            json!({}),
            json!(7),
            json!("line"),
            json!({"dot": 1}),
            json!({"box": [2]}),
            json!({"pair": {"a": 1}}),
            json!({"pair": []}),
            json!({"pair": null}),
            json!({"box": null}),
        ] {
            assert_eq!(ours::<Shape>(value.clone()), reference::<Shape>(value.clone()), "{value}");
        }
    }
}
