//! Which policy applies to a request: `match` (hosts and a path prefix) compiled into lookups by
//! host, so that choosing does not scan every policy.

use std::collections::HashMap;

use crate::config::MatchConfig;
use crate::error::ConfigError;
use crate::request::Request;

/// A compiled `match` host.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.suffix`: exactly one label before `suffix`.
    Wildcard(String),
}

/// One policy's compiled `match`.
#[derive(Clone, Debug)]
struct Scope {
    /// Empty: every host.
    hosts: Vec<Host>,
    /// `None`: every path. Without a trailing `/`.
    path_prefix: Option<String>,
}

/// The compiled `match` of every policy, in order.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    scopes: Vec<Scope>,
    /// Policy indexes by exact host, ascending.
    exact: HashMap<String, Vec<usize>>,
    /// Policy indexes by the suffix of a `*.suffix` host, ascending.
    wildcard: HashMap<String, Vec<usize>>,
    /// Policies without hosts, ascending.
    any_host: Vec<usize>,
}

impl Selector {
    /// Compiles each policy's `match` (with the JSON path of the policy). A policy that an
    /// earlier one makes unreachable is refused: it would silently never apply.
    pub fn compile(matches: &[(&MatchConfig, String)]) -> Result<Selector, ConfigError> {
        let mut selector = Selector::default();
        for (index, (config, field)) in matches.iter().enumerate() {
            let scope = compile_scope(config, field)?;
            if let Some(earlier) = selector.scopes.iter().position(|earlier| covers(earlier, &scope)) {
                let earlier_field = &matches.get(earlier).map(|(_, f)| f.as_str()).unwrap_or_default();
                let problem = format!(
                    "is unreachable: {earlier_field} comes first and matches every request it matches"
                );
                return Err(ConfigError::new(format!("{field}.match"), problem));
            }
            for host in &scope.hosts {
                let (map, key) = match host {
                    Host::Exact(name) => (&mut selector.exact, name),
                    Host::Wildcard(suffix) => (&mut selector.wildcard, suffix),
                };
                map.entry(key.clone()).or_default().push(index);
            }
            if scope.hosts.is_empty() {
                selector.any_host.push(index);
            }
            selector.scopes.push(scope);
        }
        Ok(selector)
    }

    /// The first policy whose `match` fits the request, if any.
    pub fn select(&self, request: &Request) -> Option<usize> {
        let host = request_host(request);
        let path = request.path();
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let parent = host.split_once('.').map(|(_, rest)| rest);
        let exact = self.exact.get(&host).map(Vec::as_slice).unwrap_or_default();
        let wildcard = parent.and_then(|p| self.wildcard.get(p)).map(Vec::as_slice).unwrap_or_default();
        // Three short ascending lists: the first fit in the union is the lowest index that fits.
        [exact, wildcard, self.any_host.as_slice()]
            .into_iter()
            .filter_map(|candidates| {
                candidates.iter().copied().find(|&index| {
                    self.scopes
                        .get(index)
                        .is_some_and(|scope| path_matches(scope.path_prefix.as_deref(), path))
                })
            })
            .min()
    }
}

/// The request's host without its port, lower-cased (`:authority`, or `host` in HTTP/1.0).
fn request_host(request: &Request) -> String {
    let authority =
        request.values(":authority").next().or_else(|| request.values("host").next()).unwrap_or_default();
    let authority = String::from_utf8_lossy(authority).to_ascii_lowercase();
    match authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets: [::1]:8080 is [::1].
        Some(rest) => rest.split_once(']').map(|(ip, _)| format!("[{ip}]")).unwrap_or(authority),
        None => authority.split(':').next().unwrap_or_default().to_string(),
    }
}

/// `/ws` matches `/ws` and `/ws/x`, not `/wsx`.
fn path_matches(prefix: Option<&str>, path: &[u8]) -> bool {
    let Some(prefix) = prefix else {
        return true;
    };
    match path.strip_prefix(prefix.as_bytes()) {
        Some(rest) => rest.is_empty() || rest.starts_with(b"/"),
        None => false,
    }
}

fn compile_scope(config: &MatchConfig, field: &str) -> Result<Scope, ConfigError> {
    let mut hosts = Vec::new();
    for (index, host) in config.hosts.iter().enumerate() {
        let at = format!("{field}.match.hosts[{index}]");
        let lower = host.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            let problem =
                format!("{host:?} is not a host name, nor `*.` and a host name; give it without a port");
            return Err(ConfigError::new(at, problem));
        }
        let compiled =
            if wildcard { Host::Wildcard(name.to_string()) } else { Host::Exact(name.to_string()) };
        if hosts.contains(&compiled) {
            return Err(ConfigError::new(at, format!("{host:?} is listed twice")));
        }
        hosts.push(compiled);
    }
    let path_prefix = match config.path_prefix.as_deref() {
        None | Some("/") => None,
        Some(prefix) if prefix.starts_with('/') && !prefix.contains(['?', '#']) => {
            Some(prefix.trim_end_matches('/').to_string())
        }
        Some(prefix) => {
            let problem =
                format!("{prefix:?} is not a path: it starts with '/' and has no query or fragment");
            return Err(ConfigError::new(format!("{field}.match.path_prefix"), problem));
        }
    };
    Ok(Scope { hosts, path_prefix })
}

/// Whether `earlier` matches every request that `later` matches.
fn covers(earlier: &Scope, later: &Scope) -> bool {
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty()
            && later.hosts.iter().all(|host| earlier.hosts.iter().any(|e| host_covers(e, host))));
    let paths = match (&earlier.path_prefix, &later.path_prefix) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(earlier), Some(later)) => path_matches(Some(earlier), later.as_bytes()),
    };
    hosts && paths
}

fn host_covers(earlier: &Host, later: &Host) -> bool {
    match (earlier, later) {
        (Host::Wildcard(suffix), Host::Exact(name)) => name
            .strip_suffix(suffix.as_str())
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|l| !l.contains('.')),
        _ => earlier == later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn matching(hosts: &[&str], path: Option<&str>) -> MatchConfig {
        MatchConfig {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: path.map(str::to_string),
        }
    }

    fn selector(matches: &[MatchConfig]) -> Result<Selector, ConfigError> {
        let with_fields: Vec<(&MatchConfig, String)> =
            matches.iter().enumerate().map(|(i, m)| (m, format!("policies[{i}]"))).collect();
        Selector::compile(&with_fields)
    }

    fn request(authority: &str, path: &str) -> Request {
        Request::new(vec![(":authority".into(), authority.into()), (":path".into(), path.into())])
    }

    #[test]
    fn hosts_are_compared_without_port_and_case() {
        let s = selector(&[matching(&["chat.example.com"], None)]).unwrap();
        assert_eq!(s.select(&request("CHAT.example.com:8443", "/")), Some(0));
        assert_eq!(s.select(&request("chat.example.com.evil", "/")), None);
    }

    #[test]
    fn a_wildcard_host_matches_exactly_one_label() {
        let s = selector(&[matching(&["*.internal.example"], None)]).unwrap();
        assert_eq!(s.select(&request("a.internal.example", "/")), Some(0));
        assert_eq!(s.select(&request("internal.example", "/")), None);
        assert_eq!(s.select(&request("a.b.internal.example", "/")), None);
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let s = selector(&[matching(&[], Some("/ws"))]).unwrap();
        assert_eq!(s.select(&request("x", "/ws")), Some(0));
        assert_eq!(s.select(&request("x", "/ws/room?x=1")), Some(0));
        assert_eq!(s.select(&request("x", "/ws?x=1")), Some(0));
        assert_eq!(s.select(&request("x", "/wsx")), None);
        assert_eq!(s.select(&request("x", "/")), None);
    }

    #[test]
    fn the_first_matching_policy_decides() {
        let s = selector(&[
            matching(&["chat.example.com"], Some("/ws/admin")),
            matching(&["*.example.com"], None),
            matching(&[], Some("/ws")),
        ])
        .unwrap();
        assert_eq!(s.select(&request("chat.example.com", "/ws/admin/1")), Some(0));
        assert_eq!(s.select(&request("chat.example.com", "/ws")), Some(1));
        assert_eq!(s.select(&request("other.net", "/ws")), Some(2));
        assert_eq!(s.select(&request("other.net", "/")), None);
    }

    #[test]
    fn a_policy_that_an_earlier_one_covers_is_refused() {
        let unreachable = [
            vec![matching(&[], None), matching(&["a.example"], None)],
            vec![matching(&["*.example.com"], None), matching(&["chat.example.com"], Some("/ws"))],
            vec![matching(&["a.example"], Some("/ws")), matching(&["a.example"], Some("/ws/x"))],
            vec![matching(&["a.example", "b.example"], None), matching(&["b.example"], None)],
        ];
        for matches in unreachable {
            let error = selector(&matches).unwrap_err();
            assert_eq!(error.field, "policies[1].match", "{matches:?}");
            assert!(error.problem.contains("unreachable: policies[0]"), "{error}");
        }
    }

    #[test]
    fn a_narrower_policy_before_a_wider_one_is_fine() {
        assert!(selector(&[matching(&["a.example"], Some("/ws")), matching(&["a.example"], None)]).is_ok());
        assert!(selector(&[matching(&["a.b.example"], None), matching(&["*.b.example"], None)]).is_ok());
        assert!(selector(&[matching(&["a.example"], Some("/ws")), matching(&[], Some("/ws"))]).is_ok());
    }

    #[test]
    fn bad_hosts_and_paths_are_refused() {
        let cases = [
            (matching(&["*"], None), "policies[0].match.hosts[0]"),
            (matching(&["a.*.example"], None), "policies[0].match.hosts[0]"),
            (matching(&["a.example:443"], None), "policies[0].match.hosts[0]"),
            (matching(&["a.example", "A.example"], None), "policies[0].match.hosts[1]"),
            (matching(&[], Some("ws")), "policies[0].match.path_prefix"),
            (matching(&[], Some("/ws?x")), "policies[0].match.path_prefix"),
        ];
        for (config, field) in cases {
            assert_eq!(selector(std::slice::from_ref(&config)).unwrap_err().field, field, "{config:?}");
        }
    }
}
