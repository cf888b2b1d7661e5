//! The one canonical view of a request's host and path that a policy is chosen on, and the other
//! readings of them that common upstreams make.
//!
//! An upstream routes on its own reading of the request target: Tomcat drops `;` parameters,
//! IIS and ASP.NET fold case, most servers decode `%77` to `w`, remove `.` and `..` segments
//! and merge slashes; Go's and Express's routers do some of these and not others; Envoy's own
//! virtual hosts let `*.example.com` match any number of labels. A policy chosen on one reading
//! while the upstream acts on another could be a weaker one. So the policy for an upgrade is
//! chosen on every reading ([`Readings`]); where they do not all choose the same policy, the
//! request is refused (`path_ambiguous`, `host_ambiguous`) rather than given any of them.

/// The connection-manager settings that bring most spellings to one reading before wsgate and
/// the upstream see them, each with why: `wsgate-check` prints them, the configs under `envoy/`
/// ship them. wsgate refuses what they leave (case, `;` parameters) on its own.
pub const CONNECTION_MANAGER_ADVICE: [(&str, &str); 5] = [
    (
        "normalize_path: true",
        "RFC 3986 normalisation: escapes of unreserved characters decoded, `.` and `..` removed",
    ),
    ("merge_slashes: true", "`//ws` is `/ws`, as nginx and Go's router read it"),
    (
        "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
        "`/ws%2Froom` is `/ws/room` to some upstreams and not to others; or REJECT_REQUEST",
    ),
    ("strip_trailing_host_dot: true", "`chat.example.com.` is `chat.example.com`"),
    (
        "common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}",
        "`x_wsgate_key_id` is `x-wsgate-key-id` to CGI-style upstreams (WSGI, Rack, PHP)",
    ),
];

/// A request's host as a policy is chosen on it: lower-cased, without the port, without
/// trailing dots (`Chat.Example.com.:443` is `chat.example.com`). An IPv6 literal keeps its
/// brackets.
pub fn host(authority: &[u8]) -> String {
    let sent = host_as_sent(authority);
    match sent.trim_end_matches('.') {
        "" => sent,
        stripped => stripped.to_string(),
    }
}

/// The host as sent, lower-cased and without the port but with any trailing dot: Envoy's
/// virtual hosts (without `strip_trailing_host_dot`) and some upstreams tell `example.com.`
/// from `example.com`.
fn host_as_sent(authority: &[u8]) -> String {
    let authority = String::from_utf8_lossy(authority).to_ascii_lowercase();
    let end = match authority.starts_with('[') {
        // An IPv6 literal keeps its brackets: [::1]:8080 is [::1].
        true => authority.find(']').map(|at| at + 1),
        false => authority.find(':'),
    };
    match end.and_then(|end| authority.get(..end)) {
        Some(host) => host.to_string(),
        None => authority,
    }
}

/// Why a request target has no one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not a path: it does not start with `/`.
    NotAPath,
    /// A byte outside visible ASCII, a `#`, or a `%` not followed by two hexadecimal digits.
    BadByte,
}

/// The path of a request target (`:path`, query cut off) in canonical form:
/// - each segment's `;` parameters removed (`/ws;jsessionid=1` is `/ws`);
/// - percent-encoded unreserved characters decoded (`/%77s` is `/ws`; RFC 3986 section 6.2.2.2)
///   and the hex digits of the other escapes upper-cased; `%2F` stays an escape, so it never
///   becomes a segment boundary here;
/// - `.` and `..` segments removed (RFC 3986 section 5.2.4), after decoding, so `%2e%2e` is `..`;
/// - empty segments removed (`//ws/` is `/ws`).
///
/// Case is kept: most upstreams tell `/WS` from `/ws`. The other readings are in [`Readings`].
pub fn path(target: &[u8]) -> Result<String, Malformed> {
    canonical(cut_query(target), CANONICAL)
}

/// The part of a request target before `?`; `/` for none at all (Envoy always gives a path,
/// a request built by hand may not).
fn cut_query(target: &[u8]) -> &[u8] {
    match target.split(|&b| b == b'?').next() {
        None | Some(b"") if target.is_empty() => b"/",
        path => path.unwrap_or_default(),
    }
}

/// Which bytes end a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Separators {
    /// `/` only.
    Slash,
    /// `/`, `\`, `%2F` and `%5C`: servers that decode before they split, or that take `\` for
    /// `/` (IIS, some Java and Windows servers). `%3F`, `%23` and `%00` stay in the path.
    AnySlash,
    /// As [`Separators::AnySlash`], and the path ends at `%3F`, `%23` or `%00`: servers that
    /// decode the whole target before they split off the query, or read the path as a C string.
    AnySlashCut,
}

/// One way of bringing a path to segments: each upstream does some of these steps and not
/// others.
#[derive(Clone, Copy)]
struct Steps {
    separators: Separators,
    /// `;` parameters removed from each segment.
    cut_parameters: bool,
    /// `.` and `..` segments removed.
    remove_dots: bool,
    /// Empty segments removed (`//ws` is `/ws`).
    merge_slashes: bool,
}

const CANONICAL: Steps =
    Steps { separators: Separators::Slash, cut_parameters: true, remove_dots: true, merge_slashes: true };

fn canonical(path: &[u8], steps: Steps) -> Result<String, Malformed> {
    if !path.starts_with(b"/") {
        return Err(Malformed::NotAPath);
    }
    let decoded = decode(path, steps.separators)?;
    let mut segments: Vec<&str> = Vec::new();
    // The leading `/` makes the first segment empty: it is not one.
    for segment in decoded.split('/').skip(1) {
        let segment = match (steps.cut_parameters, segment.split_once(';')) {
            (true, Some((before, _))) => before,
            _ => segment,
        };
        match segment {
            "" if steps.merge_slashes => {}
            "." if steps.remove_dots => {}
            ".." if steps.remove_dots => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

/// Decodes the escapes of unreserved characters (and, with [`Separators::AnySlash`], of `/` and
/// `\`, and `\` itself, to `/`); upper-cases the hex digits of the others.
fn decode(path: &[u8], separators: Separators) -> Result<String, Malformed> {
    let mut out = String::with_capacity(path.len());
    let mut bytes = path.iter().copied();
    while let Some(byte) = bytes.next() {
        if !byte.is_ascii_graphic() || byte == b'#' {
            return Err(Malformed::BadByte);
        }
        match byte {
            b'%' => {
                let (high, low) =
                    (bytes.next().ok_or(Malformed::BadByte)?, bytes.next().ok_or(Malformed::BadByte)?);
                let value = hex(high).zip(hex(low)).map(|(h, l)| h * 16 + l).ok_or(Malformed::BadByte)?;
                let decoded = char::from(value);
                if decoded.is_ascii_alphanumeric() || matches!(decoded, '-' | '.' | '_' | '~') {
                    out.push(decoded);
                } else if separators != Separators::Slash && matches!(decoded, '/' | '\\') {
                    out.push('/');
                } else if separators == Separators::AnySlashCut && matches!(decoded, '?' | '#' | '\0') {
                    // A server that decodes the whole target before it splits off the query, or
                    // reads the path as a C string, ends the path here.
                    break;
                } else {
                    out.push('%');
                    out.push(char::from(high.to_ascii_uppercase()));
                    out.push(char::from(low.to_ascii_uppercase()));
                }
            }
            b'\\' if separators != Separators::Slash => out.push('/'),
            other => out.push(char::from(other)),
        }
    }
    Ok(out)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// One reading of a request's host and path that some upstream or Envoy route table makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading<'r> {
    pub host: &'r str,
    pub path: &'r str,
    /// Paths compared without regard to case (IIS, ASP.NET, case-insensitive file systems).
    pub fold_case: bool,
    /// `*.` host entries match any number of labels, as in Envoy's virtual hosts.
    pub deep_wildcards: bool,
}

/// The hosts and paths a policy is chosen on for an upgrade; the canonical ones first.
#[derive(Clone, Debug)]
pub struct Readings {
    hosts: Vec<String>,
    paths: Vec<String>,
}

impl Readings {
    /// The readings of a request's authority and target, or why the target has none: the
    /// canonical path ([`path`]), the path exactly as sent, with `;` parameters kept, with
    /// escaped and back slashes as segment boundaries; the host with and without a trailing
    /// dot.
    pub fn of(authority: &[u8], target: &[u8]) -> Result<Readings, Malformed> {
        let raw = cut_query(target);
        let mut paths = vec![canonical(raw, CANONICAL)?];
        let as_sent = String::from_utf8_lossy(raw).into_owned();
        if !paths.contains(&as_sent) {
            paths.push(as_sent);
        }
        // Each of the canonical steps left out, one at a time, and every separator set.
        let partial = [
            Steps { cut_parameters: false, ..CANONICAL },
            Steps { remove_dots: false, ..CANONICAL },
            Steps { merge_slashes: false, ..CANONICAL },
        ];
        for separators in [Separators::Slash, Separators::AnySlash, Separators::AnySlashCut] {
            for steps in [CANONICAL].iter().chain(&partial) {
                let path = canonical(raw, Steps { separators, ..*steps })?;
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        let mut hosts = vec![host(authority)];
        let sent = host_as_sent(authority);
        if !hosts.contains(&sent) {
            hosts.push(sent);
        }
        Ok(Readings { hosts, paths })
    }

    /// The canonical reading.
    pub fn canonical(&self) -> Reading<'_> {
        let (host, path) = (self.hosts.first(), self.paths.first());
        let (host, path) = (host.map_or("", String::as_str), path.map_or("", String::as_str));
        Reading { host, path, fold_case: false, deep_wildcards: false }
    }

    /// Every reading: each host with each path, each with and without case, and with `*.` as
    /// one label and as any number. The canonical reading comes first.
    pub fn all(&self) -> Vec<Reading<'_>> {
        let mut all = Vec::with_capacity(self.hosts.len() * self.paths.len() * 4);
        for host in &self.hosts {
            for path in &self.paths {
                for (fold_case, deep_wildcards) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    all.push(Reading { host, path, fold_case, deep_wildcards });
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn canon(target: &str) -> String {
        path(target.as_bytes()).unwrap()
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_case() {
        assert_eq!(canon("/%77s"), "/ws");
        assert_eq!(canon("/%7e%2d%5F"), "/~-_");
        assert_eq!(canon("/ws%2froom"), "/ws%2Froom");
        assert_eq!(canon("/a%20b"), "/a%20b");
    }

    #[test]
    fn dot_segments_go_also_when_encoded() {
        assert_eq!(canon("/./ws"), "/ws");
        assert_eq!(canon("/x/../ws"), "/ws");
        assert_eq!(canon("/x/%2e%2E/ws"), "/ws");
        assert_eq!(canon("/../../ws"), "/ws");
    }

    #[test]
    fn slashes_merge_and_parameters_go_from_every_segment() {
        assert_eq!(canon("//ws//room/"), "/ws/room");
        assert_eq!(canon("/ws;x=1"), "/ws");
        assert_eq!(canon("/ws;x=1/room;y"), "/ws/room");
        assert_eq!(canon("/;x/ws"), "/ws");
    }

    #[test]
    fn the_query_is_not_part_of_the_path() {
        assert_eq!(canon("/ws?token=a/../b"), "/ws");
        assert_eq!(canon("/"), "/");
    }

    #[test]
    fn targets_that_are_not_paths_or_have_bad_escapes_are_malformed() {
        assert_eq!(path(b"ws"), Err(Malformed::NotAPath));
        assert_eq!(path(b"*"), Err(Malformed::NotAPath));
        assert_eq!(path(b"/ws%"), Err(Malformed::BadByte));
        assert_eq!(path(b"/ws%2"), Err(Malformed::BadByte));
        assert_eq!(path(b"/ws%zz"), Err(Malformed::BadByte));
        assert_eq!(path(b"/w s"), Err(Malformed::BadByte));
        assert_eq!(path(b"/ws#x"), Err(Malformed::BadByte));
        assert_eq!(path("/wś".as_bytes()), Err(Malformed::BadByte));
    }

    #[test]
    fn hosts_lose_case_port_and_one_trailing_dot() {
        assert_eq!(host(b"Chat.Example.com.:443"), "chat.example.com");
        assert_eq!(host(b"chat.example.com"), "chat.example.com");
        assert_eq!(host(b"[::1]:8080"), "[::1]");
        assert_eq!(host(b"."), ".");
        assert_eq!(host(b"a.."), "a");
        assert_eq!(host(b""), "");
    }

    #[test]
    fn the_readings_include_each_way_an_upstream_may_read_the_request() {
        let all = Readings::of(b"chat.example.com.", b"/WS;x=1/a%5Cb").unwrap();
        let readings = all.all();
        let paths: Vec<&str> = readings.iter().map(|r| r.path).collect();
        assert_eq!(readings[0].path, "/WS/a%5Cb");
        assert_eq!(readings[0].host, "chat.example.com");
        assert!(!readings[0].fold_case && !readings[0].deep_wildcards);
        for expected in ["/WS;x=1/a%5Cb", "/WS/a/b", "/WS;x=1/a/b"] {
            assert!(paths.contains(&expected), "{expected} in {paths:?}");
        }
        assert!(readings.iter().any(|r| r.host == "chat.example.com."));
        assert!(readings.iter().any(|r| r.fold_case) && readings.iter().any(|r| r.deep_wildcards));
    }

    #[test]
    fn servers_that_decode_before_splitting_end_the_path_at_an_escaped_query_fragment_or_nul() {
        for target in [b"/ws%3Fx".as_slice(), b"/ws%23x", b"/ws%00.html"] {
            let all = Readings::of(b"a.example", target).unwrap();
            assert!(all.all().iter().any(|r| r.path == "/ws"), "{:?}", String::from_utf8_lossy(target));
        }
    }

    #[test]
    fn servers_that_decode_escaped_slashes_but_keep_an_escaped_query_read_past_it() {
        let all = Readings::of(b"a.example", b"/public/x%3F%2F..%2F..%2Fadmin").unwrap();
        assert!(all.all().iter().any(|r| r.path == "/admin"));
    }

    #[test]
    fn each_canonical_step_left_out_is_a_reading_of_its_own() {
        let paths = |target: &str| {
            let all = Readings::of(b"a.example", target.as_bytes()).unwrap();
            all.all().iter().map(|r| r.path.to_string()).collect::<Vec<_>>()
        };
        assert!(paths("/%77s/%2e%2e/x").contains(&"/ws/../x".to_string()), "dots kept");
        assert!(paths("/%77s//../x").contains(&"/ws/x".to_string()), "empty segments kept");
    }

    #[test]
    fn a_plain_request_has_one_path_and_one_host() {
        let all = Readings::of(b"chat.example.com", b"/ws?x=1").unwrap();
        let readings = all.all();
        assert!(readings.iter().all(|r| r.path == "/ws" && r.host == "chat.example.com"));
        assert_eq!(readings.len(), 4);
    }
}
