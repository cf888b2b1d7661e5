//! Where a credential travels (query, cookie, header, subprotocol), how it is found there, and
//! how it is removed again without touching anything else.

use base64ct::{Base64UrlUnpadded, Encoding};

use crate::headers::has_header_key;
use crate::request::Request;
use crate::verdict::RequestEdit;

/// One configured place to look, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A query parameter, by its decoded name.
    Query(String),
    /// A cookie, by name.
    Cookie(String),
    /// A header (lower-case name), whose value starts with `prefix` (may be empty).
    Header { name: String, prefix: String },
    /// The `Sec-WebSocket-Protocol` entry that starts with `prefix`; `marker`, an entry the
    /// client offers beside it, is removed with it.
    Subprotocol { prefix: String, marker: Option<String> },
}

/// What a source holds in one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'s> {
    Absent,
    /// Present once: the credential, and the edit that removes it from the request.
    Found {
        credential: Vec<u8>,
        strip: RequestEdit<'s>,
    },
    /// Present more than once: refused, whichever copy is valid.
    Duplicated,
    /// Present, but empty or not in the expected form.
    Malformed,
}

impl Source {
    /// Whether `other` looks in the same place: a second such source would find the same
    /// credential again.
    pub fn same_place(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Subprotocol { prefix, .. }, Source::Subprotocol { prefix: other, .. }) => {
                prefix == other
            }
            _ => self == other,
        }
    }

    /// The subprotocol marker this source has, if any.
    pub fn marker(&self) -> Option<&str> {
        match self {
            Source::Subprotocol { marker, .. } => marker.as_deref(),
            _ => None,
        }
    }

    /// Looks for the credential in `request`.
    pub fn lookup(&self, request: &Request) -> Lookup<'_> {
        let lookup = match self {
            Source::Query(name) => query(request.path(), name),
            Source::Cookie(name) => cookie(request, name),
            Source::Header { name, prefix } => header(request, name, prefix),
            Source::Subprotocol { prefix, marker } => subprotocol(request, prefix, marker.as_deref()),
        };
        match lookup {
            Lookup::Found { credential, .. } if credential.is_empty() => Lookup::Malformed,
            other => other,
        }
    }
}

/// Splits on the first `separator`.
fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}

/// A parameter or cookie name as the most lenient parsers read it: trimmed, lower-cased
/// (ASP.NET), and with `.`, ` ` and `[` as `_` (PHP). Two names with the same loose form are
/// one name to some upstream.
fn loose_name(name: &[u8]) -> Vec<u8> {
    name.trim_ascii()
        .iter()
        .map(|&b| match b.to_ascii_lowercase() {
            b'.' | b' ' | b'[' => b'_',
            lower => lower,
        })
        .collect()
}

/// Whether some parser reads the name `key` as the one whose [`loose_name`] is `wanted`: as it
/// is; ended at a NUL (C strings); or without leading brackets and from its next bracket on, as
/// Rack and PHP read `[name]`, `name[]` and `name[x]` (an array or map called `name`).
fn reads_as(key: &[u8], wanted: &[u8]) -> bool {
    let key = key.split(|&b| b == 0).next().unwrap_or_default();
    let unbracketed = key.trim_ascii();
    let start = unbracketed.iter().position(|&b| b != b'[' && b != b']').unwrap_or(unbracketed.len());
    let bare = unbracketed.get(start..).unwrap_or_default();
    let bare = bare.split(|&b| b == b'[' || b == b']').next().unwrap_or_default();
    loose_name(key) == wanted || loose_name(bare) == wanted
}

/// How many `name=value` items of `items` have a name (form-decoded) that some parser reads as
/// `name`.
fn readings_of<'a>(items: impl Iterator<Item = &'a [u8]>, name: &str) -> usize {
    let wanted = loose_name(name.as_bytes());
    items
        .filter(|item| item.contains(&b'='))
        .filter_map(|item| form_urlencoded::parse(item.trim_ascii()).next())
        .filter(|(key, _)| reads_as(key.as_bytes(), &wanted))
        .count()
}

/// `application/x-www-form-urlencoded` parameters, names compared after decoding, exactly. The
/// other parameters are written back byte for byte, in order. A name that another parser reads
/// as this one (`ACCESS_TOKEN`, `access.token`, `access%5Ftoken`, or after a `;`, which some
/// take for `&`) counts as the credential too ([`one`]).
fn query(path: &[u8], name: &str) -> Lookup<'static> {
    let Some((before, query)) = split_once(path, b'?') else {
        return Lookup::Absent;
    };
    let mut found = Vec::new();
    let mut kept: Vec<&[u8]> = Vec::new();
    for pair in query.split(|&b| b == b'&') {
        match form_urlencoded::parse(pair).next() {
            Some((key, value)) if key == name => found.push(value.into_owned().into_bytes()),
            _ => kept.push(pair),
        }
    }
    let readings = readings_of(query.split(|&b| b == b'&' || b == b';'), name);
    let left = readings_of(kept.iter().flat_map(|pair| pair.split(|&b| b == b';')), name);
    let mut new_path = before.to_vec();
    if kept.iter().any(|pair| !pair.is_empty()) {
        new_path.push(b'?');
        new_path.extend_from_slice(&kept.join(&b'&'));
    }
    one(found, readings, left, RequestEdit::Set(":path", new_path))
}

/// `path` without any query parameter that some parser reads as one of `names`: what Envoy's
/// access log may show of a refused request.
pub fn without_query_credentials(path: &[u8], names: &[String]) -> Option<Vec<u8>> {
    let (before, query) = split_once(path, b'?')?;
    let pairs: Vec<&[u8]> = query.split(|&b| b == b'&' || b == b';').collect();
    let kept: Vec<&[u8]> = pairs
        .iter()
        .copied()
        .filter(|pair| names.iter().all(|name| readings_of([*pair].into_iter(), name) == 0))
        .collect();
    if kept.len() == pairs.len() {
        return None;
    }
    let mut new_path = before.to_vec();
    if kept.iter().any(|pair| !pair.is_empty()) {
        new_path.push(b'?');
        new_path.extend_from_slice(&kept.join(&b'&'));
    }
    Some(new_path)
}

/// RFC 6265 section 4.2.1 pairs over every `Cookie` line (Envoy keeps the lines apart), each
/// split on its first `=`, names compared exactly. A value in double quotes is unquoted. A name
/// that another parser reads as this one counts as the credential too ([`one`]): after a `,`
/// (RFC 2109) or whitespace inside a pair (`a=1 ws_token=x`), in another case, encoded, or with
/// `.` for `_` (PHP).
fn cookie(request: &Request, name: &str) -> Lookup<'static> {
    let mut found = Vec::new();
    let mut lines = Vec::new();
    let items = request.values("cookie").flat_map(|line| line.split(|&b| cookie_separator(b)));
    let readings = readings_of(items, name);
    for line in request.values("cookie") {
        let mut kept: Vec<&[u8]> = Vec::new();
        for pair in line.split(|&b| b == b';').map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
            match split_once(pair, b'=') {
                Some((key, value)) if key.trim_ascii() == name.as_bytes() => {
                    let value = value.trim_ascii();
                    let unquoted = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\""));
                    found.push(unquoted.unwrap_or(value).to_vec());
                }
                _ => kept.push(pair),
            }
        }
        if !kept.is_empty() {
            lines.push(kept.join(b"; ".as_slice()));
        }
    }
    let left = readings_of(lines.iter().flat_map(|line| line.split(|&b| cookie_separator(b))), name);
    one(found, readings, left, RequestEdit::Lines("cookie", lines))
}

/// What some parser ends a cookie pair at: `;`, `,` (RFC 2109) or whitespace.
fn cookie_separator(b: u8) -> bool {
    b == b';' || b == b',' || b.is_ascii_whitespace()
}

/// A header present on exactly one line, whose value starts with `prefix` (case-insensitively,
/// as an authentication scheme is, RFC 9110 section 11.1). A header whose name is this one with
/// `_` for `-` (`x_api_key`) counts as another line of it: CGI-style upstreams read it so.
fn header<'s>(request: &Request, name: &'s str, prefix: &str) -> Lookup<'s> {
    let values: Vec<&[u8]> = request.values(name).collect();
    let look_alikes =
        request.names().filter(|n| !n.eq_ignore_ascii_case(name) && has_header_key(n, name)).count();
    let [value] = values.as_slice() else {
        return if values.is_empty() && look_alikes == 0 { Lookup::Absent } else { Lookup::Duplicated };
    };
    if look_alikes > 0 {
        return Lookup::Duplicated;
    }
    let value = value.trim_ascii();
    match value.get(..prefix.len()) {
        Some(start) if start.eq_ignore_ascii_case(prefix.as_bytes()) => {
            let credential = value.get(prefix.len()..).unwrap_or_default().trim_ascii().to_vec();
            Lookup::Found { credential, strip: RequestEdit::Remove(name) }
        }
        _ => Lookup::Malformed,
    }
}

/// The one `Sec-WebSocket-Protocol` entry that starts with `prefix`; the rest of the entry is
/// the credential in base64url without padding (the Kubernetes convention). The other entries
/// are the application's and are written back, but for `marker`, which is wsgate's own.
fn subprotocol(request: &Request, prefix: &str, marker: Option<&str>) -> Lookup<'static> {
    let mut found = Vec::new();
    let mut kept: Vec<&[u8]> = Vec::new();
    for entry in offered_subprotocols(request) {
        match entry.strip_prefix(prefix.as_bytes()) {
            Some(encoded) => found.push(encoded),
            None if marker.is_some_and(|marker| entry == marker.as_bytes()) => {}
            None => kept.push(entry),
        }
    }
    let strip = match kept.is_empty() {
        true => RequestEdit::Remove("sec-websocket-protocol"),
        false => RequestEdit::Set("sec-websocket-protocol", kept.join(b", ".as_slice())),
    };
    match found.as_slice() {
        [] => Lookup::Absent,
        [encoded] => match Base64UrlUnpadded::decode_vec(&String::from_utf8_lossy(encoded)) {
            Ok(credential) => Lookup::Found { credential, strip },
            Err(_) => Lookup::Malformed,
        },
        _ => Lookup::Duplicated,
    }
}

/// The non-empty entries of every `Sec-WebSocket-Protocol` line, trimmed.
pub fn offered_subprotocols(request: &Request) -> impl Iterator<Item = &[u8]> {
    request
        .values("sec-websocket-protocol")
        .flat_map(|line| line.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|entry| !entry.is_empty())
}

/// The single credential found, or why there is not exactly one. `readings` counts the items
/// that some parser reads as the credential, the ones `found` included: more than one is a
/// duplicate, whichever is valid; one that only another parser reads so is no credential here
/// and would be one there, so it is refused too (malformed). `left` counts those readings in what
/// stays once the credential is stripped: a found credential is taken only when nothing the
/// upstream receives can still be read as one (a reading the split into `readings` missed, such
/// as `ws_token =a` beside `n= ws_token=b`, is one found and another left).
fn one(
    mut found: Vec<Vec<u8>>,
    readings: usize,
    left: usize,
    strip: RequestEdit<'static>,
) -> Lookup<'static> {
    match (found.len(), readings, left) {
        (0, 0, _) => Lookup::Absent,
        (0, 1, _) => Lookup::Malformed,
        (1, 0 | 1, 0) => Lookup::Found { credential: found.pop().unwrap_or_default(), strip },
        _ => Lookup::Duplicated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect())
    }

    fn found(credential: &str, strip: RequestEdit<'static>) -> Lookup<'static> {
        Lookup::Found { credential: credential.as_bytes().to_vec(), strip }
    }

    fn path(path: &str) -> RequestEdit<'static> {
        RequestEdit::Set(":path", path.as_bytes().to_vec())
    }

    /// Looks up with a source that lives for the test, so the lookup may borrow from it.
    fn lookup(source: Source, headers: &[(&str, &str)]) -> Lookup<'static> {
        let source: &'static Source = Box::leak(Box::new(source));
        source.lookup(&request(headers))
    }

    fn in_query(target: &str) -> Lookup<'static> {
        lookup(Source::Query("token".into()), &[(":path", target)])
    }

    #[test]
    fn a_query_credential_is_removed_and_every_other_parameter_kept_byte_for_byte() {
        assert_eq!(in_query("/ws?a=1&token=abc&b=%2F+x&c"), found("abc", path("/ws?a=1&b=%2F+x&c")));
        assert_eq!(in_query("/ws?token=abc"), found("abc", path("/ws")));
        assert_eq!(in_query("/ws?token=abc&x=1"), found("abc", path("/ws?x=1")));
    }

    #[test]
    fn query_names_are_compared_exactly_after_decoding() {
        assert_eq!(in_query("/ws?xtoken=abc&tokenx=d"), Lookup::Absent);
        assert_eq!(in_query("/ws?to%6Ben=abc"), found("abc", path("/ws")));
    }

    #[test]
    fn a_query_name_that_another_parser_reads_as_the_credential_is_refused() {
        // ASP.NET folds case; PHP reads `.`, ` ` and `[` as `_`; some frameworks split on `;`.
        let lookup = |target: &str| lookup(Source::Query("access_token".into()), &[(":path", target)]);
        for look_alike in [
            "ACCESS_TOKEN=x",
            "access.token=x",
            "access+token=x",
            "access%20token=x",
            "access[token=x",
            "y=1;access_token=x",
            "access_token[]=x",
            "access_token[x]=x",
            "access_token%5B%5D=x",
            "access_token%00=x",
            "]access_token=x",
            "[access_token]=x",
        ] {
            assert_eq!(
                lookup(&format!("/ws?access_token=v&{look_alike}")),
                Lookup::Duplicated,
                "{look_alike}"
            );
            assert_eq!(lookup(&format!("/ws?{look_alike}")), Lookup::Malformed, "{look_alike} alone");
        }
        // An escape is decoded before names are compared: this one is the credential itself.
        assert_eq!(lookup("/ws?access_token=v&access%5Ftoken=x"), Lookup::Duplicated);
    }

    #[test]
    fn query_values_are_form_decoded_and_may_hold_an_equals_sign() {
        assert_eq!(in_query("/ws?token=a%2Bb+c%3D=d"), found("a+b c==d", path("/ws")));
    }

    #[test]
    fn a_query_parameter_twice_is_duplicated() {
        assert_eq!(in_query("/ws?token=a&token=b"), Lookup::Duplicated);
        assert_eq!(in_query("/ws?token=a&to%6Ben=a"), Lookup::Duplicated);
    }

    #[test]
    fn an_empty_or_valueless_query_credential_is_malformed() {
        assert_eq!(in_query("/ws?token="), Lookup::Malformed);
        assert_eq!(in_query("/ws?token"), Lookup::Malformed);
    }

    #[test]
    fn a_path_without_query_has_no_query_credential() {
        assert_eq!(in_query("/ws"), Lookup::Absent);
    }

    fn in_cookies(lines: &[&str]) -> Lookup<'static> {
        let headers: Vec<(&str, &str)> = lines.iter().map(|line| ("cookie", *line)).collect();
        lookup(Source::Cookie("ws_token".into()), &headers)
    }

    fn cookies(lines: &[&str]) -> RequestEdit<'static> {
        RequestEdit::Lines("cookie", lines.iter().map(|l| l.as_bytes().to_vec()).collect())
    }

    #[test]
    fn a_cookie_credential_is_removed_from_its_line_and_the_other_cookies_kept() {
        assert_eq!(in_cookies(&["a=1; ws_token=abc; b=2"]), found("abc", cookies(&["a=1; b=2"])));
        assert_eq!(in_cookies(&["a=1", "ws_token=abc"]), found("abc", cookies(&["a=1"])));
        assert_eq!(in_cookies(&["ws_token=abc"]), found("abc", cookies(&[])));
    }

    #[test]
    fn cookies_split_on_the_first_equals_sign_and_keep_pairs_without_one() {
        assert_eq!(in_cookies(&["flag; ws_token=a=b==; c=d"]), found("a=b==", cookies(&["flag; c=d"])));
    }

    #[test]
    fn cookie_names_are_compared_exactly_and_quoted_values_unquoted() {
        assert_eq!(in_cookies(&["ws_tokenx=1; xws_token=2"]), Lookup::Absent);
        assert_eq!(in_cookies(&["ws_token=\"abc\""]), found("abc", cookies(&[])));
    }

    #[test]
    fn a_credential_is_taken_only_when_nothing_left_behind_reads_as_one() {
        // `ws_token =a` is found but, split at whitespace, is no reading; the look-alike after
        // whitespace in another pair is one, and would go to the upstream.
        assert_eq!(in_cookies(&["n= ws_token=b; ws_token =a"]), Lookup::Duplicated);
        assert_eq!(in_cookies(&["n=1; ws_token =a"]), found("a", cookies(&["n=1"])));
    }

    #[test]
    fn a_cookie_name_that_another_parser_reads_as_the_credential_is_refused() {
        for line in [
            "ws_token=v; a=1 ws_token=x",
            "ws_token=v, ws_token=x",
            "ws_token=v; WS_TOKEN=x",
            "ws_token=v; ws.token=x",
            "ws_token=v; ws%5Ftoken=x",
        ] {
            assert_eq!(in_cookies(&[line]), Lookup::Duplicated, "{line}");
        }
        assert_eq!(in_cookies(&["a=1 ws_token=x"]), Lookup::Malformed);
    }

    #[test]
    fn a_cookie_twice_is_duplicated_also_across_lines() {
        assert_eq!(in_cookies(&["ws_token=a; ws_token=b"]), Lookup::Duplicated);
        assert_eq!(in_cookies(&["ws_token=a", "x=1; ws_token=a"]), Lookup::Duplicated);
    }

    fn in_header(headers: &[(&str, &str)]) -> Lookup<'static> {
        lookup(Source::Header { name: "authorization".into(), prefix: "Bearer ".into() }, headers)
    }

    #[test]
    fn a_header_credential_follows_its_prefix_in_any_case() {
        assert_eq!(
            in_header(&[("authorization", "Bearer abc")]),
            found("abc", RequestEdit::Remove("authorization"))
        );
        assert_eq!(
            in_header(&[("authorization", "bearer abc")]),
            found("abc", RequestEdit::Remove("authorization"))
        );
    }

    #[test]
    fn a_header_without_its_prefix_is_malformed_not_absent() {
        assert_eq!(in_header(&[("authorization", "Basic abc")]), Lookup::Malformed);
        assert_eq!(in_header(&[("authorization", "Bearer ")]), Lookup::Malformed);
    }

    #[test]
    fn a_header_with_underscores_for_dashes_counts_as_another_line() {
        let source = || Source::Header { name: "x-api-key".into(), prefix: String::new() };
        assert_eq!(lookup(source(), &[("x-api-key", "k"), ("x_api_key", "x")]), Lookup::Duplicated);
        assert_eq!(lookup(source(), &[("x_api_key", "x")]), Lookup::Duplicated);
        assert_eq!(lookup(source(), &[("x-api-key", "k")]), found("k", RequestEdit::Remove("x-api-key")));
    }

    #[test]
    fn a_header_on_two_lines_is_duplicated() {
        let lines = [("authorization", "Bearer a"), ("authorization", "Bearer a")];
        assert_eq!(in_header(&lines), Lookup::Duplicated);
    }

    const K8S: &str = "base64url.bearer.authorization.k8s.io.";

    fn in_subprotocols(value: &str) -> Lookup<'static> {
        lookup(Source::Subprotocol { prefix: K8S.into(), marker: None }, &[("sec-websocket-protocol", value)])
    }

    #[test]
    fn a_subprotocol_credential_is_decoded_and_the_other_entries_kept() {
        let value = format!("chat, {K8S}YWJj, v2.chat");
        let kept = RequestEdit::Set("sec-websocket-protocol", b"chat, v2.chat".to_vec());
        assert_eq!(in_subprotocols(&value), found("abc", kept));
        let none_left = RequestEdit::Remove("sec-websocket-protocol");
        assert_eq!(in_subprotocols(&format!("{K8S}YWJj")), found("abc", none_left));
    }

    #[test]
    fn a_subprotocol_credential_that_is_not_strict_base64url_is_malformed() {
        assert_eq!(in_subprotocols(&format!("{K8S}YWJj=")), Lookup::Malformed);
        assert_eq!(in_subprotocols(&format!("{K8S}YW+j")), Lookup::Malformed);
        assert_eq!(in_subprotocols(K8S), Lookup::Malformed);
    }

    #[test]
    fn two_credential_subprotocols_are_duplicated() {
        assert_eq!(in_subprotocols(&format!("{K8S}YWJj, {K8S}YWJj")), Lookup::Duplicated);
    }
}
