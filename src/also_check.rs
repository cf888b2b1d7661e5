//! `also_check`: ordinary requests that get an upgrade's decision. Socket.IO (engine.io), SockJS
//! and SignalR fall back to HTTP long-polling, whose requests carry the same cookies as the
//! socket: without this, a page on a foreign origin opens a session through them with no upgrade
//! at all.
//!
//! A request is checked when some reading of it is under the prefix and carries the parameter:
//! checking a request that needed none refuses at worst a request that no browser page should
//! send, while missing one lets a foreign page through. So the path is read every way an
//! upgrade's is ([`crate::canonical::Readings`]), and the query every way some server parses it.

use crate::canonical::Reading;
use crate::config::AlsoCheckConfig;
use crate::error::ConfigError;
use crate::scope::{canonical_prefix, path_matches};

/// One compiled entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlsoCheck {
    /// `None` for `/`: every path.
    prefix: Option<String>,
    /// The parameter's name and value.
    query: Option<(String, String)>,
}

/// Compiles `also_check`; errors name the entry (`also_check[1].query`).
pub fn compile(entries: &[AlsoCheckConfig]) -> Result<Vec<AlsoCheck>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let field = format!("also_check[{index}]");
            let prefix = canonical_prefix(&entry.path_prefix, &format!("{field}.path_prefix"))?;
            let query = match entry.query.as_deref() {
                None => None,
                Some(text) => match text.split_once('=') {
                    Some((name, value))
                        if !name.is_empty()
                            && !value.is_empty()
                            && !value.contains('=')
                            && text.bytes().all(|b| b.is_ascii_graphic() && !b"&;#?%".contains(&b)) =>
                    {
                        Some((name.to_string(), value.to_string()))
                    }
                    _ => {
                        let problem = format!("{text:?} is not name=value (visible ASCII, no & ; # ? %)");
                        return Err(ConfigError::new(format!("{field}.query"), problem));
                    }
                },
            };
            Ok(AlsoCheck { prefix, query })
        })
        .collect()
}

/// Whether `entries` check a request whose target is `target` on one `reading` of its path.
pub fn checks_reading(entries: &[AlsoCheck], reading: Reading<'_>, target: &[u8]) -> bool {
    entries.iter().any(|entry| {
        path_matches(entry.prefix.as_deref(), reading.path.as_bytes(), reading.fold_case)
            && entry.query.as_ref().is_none_or(|(name, value)| carries(target, name, value))
    })
}

/// Whether `entries` would check a request whose target has no reading as a path, on its
/// query alone: such a target is checked rather than guessed at.
pub fn checks_unreadable(entries: &[AlsoCheck], target: &[u8]) -> bool {
    entries.iter().any(|entry| entry.query.as_ref().is_none_or(|(name, value)| carries(target, name, value)))
}

/// Whether the query of `target` has `name=value` as some server reads it: after the first `?`,
/// or after an escaped one (servers that decode before they split), pairs separated by `&` or
/// `;`, names and values percent-decoded, compared without case and surrounding spaces.
fn carries(target: &[u8], name: &str, value: &str) -> bool {
    let mut queries = Vec::new();
    if let Some(at) = target.iter().position(|&b| b == b'?') {
        queries.push(target.get(at + 1..).unwrap_or_default());
    }
    if let Some(at) = target.windows(3).position(|w| w.eq_ignore_ascii_case(b"%3f")) {
        queries.push(target.get(at + 3..).unwrap_or_default());
    }
    queries.into_iter().any(|query| {
        let query: Vec<u8> = query.iter().map(|&b| if b == b';' { b'&' } else { b }).collect();
        let query = query.split(|&b| b == b'#').next().unwrap_or_default();
        form_urlencoded::parse(query)
            .any(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Readings;
    use crate::request::Request;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Whether `request`, an ordinary request, is one that `entries` check on some reading.
    fn checks(entries: &[AlsoCheck], request: &Request) -> bool {
        if entries.is_empty() {
            return false;
        }
        let authority = request.values(":authority").next().unwrap_or_default();
        let target = request.path();
        match Readings::of(authority, target) {
            Ok(readings) => {
                readings.all().into_iter().any(|reading| checks_reading(entries, reading, target))
            }
            Err(_) => checks_unreadable(entries, target),
        }
    }

    fn entries(prefix: &str, query: Option<&str>) -> Vec<AlsoCheck> {
        compile(&[AlsoCheckConfig { path_prefix: prefix.into(), query: query.map(str::to_string) }]).unwrap()
    }

    fn request(target: &str) -> Request {
        Request::new(vec![
            (":authority".into(), b"chat.example.com".to_vec()),
            (":path".into(), target.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn a_polling_request_under_the_prefix_is_checked() {
        let list = entries("/socket.io", Some("transport=polling"));
        assert!(checks(&list, &request("/socket.io/?EIO=4&transport=polling&t=Pq1")));
    }

    #[test]
    fn another_transport_or_path_is_not_checked() {
        let list = entries("/socket.io", Some("transport=polling"));
        assert!(!checks(&list, &request("/socket.io/?EIO=4&transport=websocket")));
        assert!(!checks(&list, &request("/socket.iox/?transport=polling")));
        assert!(!checks(&list, &request("/api?transport=polling")));
    }

    #[test]
    fn every_spelling_some_server_reads_as_the_parameter_is_checked() {
        let list = entries("/socket.io", Some("transport=polling"));
        for target in [
            "/socket.io/?transport=websocket&transport=polling",
            "/socket.io/?Transport=POLLING",
            "/socket.io/?transport=pollin%67",
            "/socket.io/?EIO=4;transport=polling",
            "/socket.io/%3Ftransport=polling",
            "/Socket.IO/?transport=polling",
            "/x/../socket.io/?transport=polling",
            "/socket.io;v=1/?transport=polling",
        ] {
            assert!(checks(&list, &request(target)), "{target}");
        }
    }

    #[test]
    fn without_a_query_every_request_under_the_prefix_is_checked() {
        let list = entries("/sockjs", None);
        assert!(checks(&list, &request("/sockjs/123/abc/xhr_streaming")));
        assert!(!checks(&list, &request("/static/app.js")));
    }

    #[test]
    fn a_query_that_is_not_one_name_and_value_is_refused_at_load() {
        for query in ["transport", "=polling", "transport=", "a=b=c", "a=b&c=d", "a=%41", "a b=c"] {
            let config = AlsoCheckConfig { path_prefix: "/socket.io".into(), query: Some(query.into()) };
            let error = compile(&[config]).unwrap_err();
            assert!(error.to_string().contains("also_check[0].query"), "{query}: {error}");
        }
    }

    #[test]
    fn a_prefix_not_in_canonical_form_is_refused_at_load() {
        let config = AlsoCheckConfig { path_prefix: "/Socket.io/../x".into(), query: None };
        assert!(compile(&[config]).unwrap_err().to_string().contains("also_check[0].path_prefix"));
    }
}
