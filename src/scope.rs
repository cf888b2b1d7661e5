//! Which policy applies to a request: `match` (hosts and a path prefix) compiled into lookups by
//! host, so that choosing does not scan every policy. Hosts and paths are compared in the
//! canonical form of [`crate::canonical`]; an upgrade's policy is chosen on every reading of its
//! host and path, and must be the same on each.

use std::collections::HashMap;

use crate::canonical::{self, Malformed, Reading, Readings};
use crate::config::MatchConfig;
use crate::error::ConfigError;
use crate::request::Request;

/// A compiled `match` host.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.suffix`: exactly one label before `suffix`.
    Wildcard(String),
    /// `**.suffix`: one or more labels before `suffix`.
    Deep(String),
}

/// Why no one policy can be chosen for an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    /// The path is not a path, or has a bad escape, or its readings choose different policies.
    Path,
    /// The host's readings (with a trailing dot, `*.` over several labels) choose different
    /// policies.
    Host,
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
    /// Policy indexes by the suffix of a `**.suffix` host, ascending.
    deep: HashMap<String, Vec<usize>>,
    /// Policies without hosts, ascending.
    any_host: Vec<usize>,
    /// The longest key of the three maps: no longer host or parent is looked up, so a host of
    /// thousands of labels costs one pass over it rather than a hash of each of its parents.
    longest: usize,
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
                    Host::Deep(suffix) => (&mut selector.deep, suffix),
                };
                selector.longest = selector.longest.max(key.len());
                map.entry(key.clone()).or_default().push(index);
            }
            if scope.hosts.is_empty() {
                selector.any_host.push(index);
            }
            selector.scopes.push(scope);
        }
        Ok(selector)
    }

    /// The first policy whose `match` fits the request's canonical host and path, if any: the
    /// choice for an ordinary request, which is not refused whatever its spelling. A target that
    /// is not a path matches only policies without a path prefix.
    pub fn select(&self, request: &Request) -> Option<usize> {
        if self.scopes.is_empty() {
            return None;
        }
        let path = canonical::path(request.path()).unwrap_or_default();
        let host = canonical::host(authority(request));
        self.select_reading(Reading { host: &host, path: &path, fold_case: false, deep_wildcards: false })
    }

    /// Whether `f` holds for some reading of the request's host and path with the policy that
    /// reading selects (`None`: no scoped policy); `None` if the target has no reading.
    pub fn any_reading(
        &self,
        request: &Request,
        f: impl Fn(Reading<'_>, Option<usize>) -> bool,
    ) -> Option<bool> {
        let readings = Readings::of(authority(request), request.path()).ok()?;
        let found = readings.all().into_iter().any(|reading| {
            let chosen = if self.scopes.is_empty() { None } else { self.select_reading(reading) };
            f(reading, chosen)
        });
        Some(found)
    }

    /// The policy for an upgrade: the same on every reading of its host and path, or refused.
    pub fn select_upgrade(&self, request: &Request) -> Result<Option<usize>, Ambiguity> {
        if self.scopes.is_empty() {
            return Ok(None);
        }
        let readings =
            Readings::of(authority(request), request.path()).map_err(|_: Malformed| Ambiguity::Path)?;
        let first = readings.canonical();
        let chosen = self.select_reading(first);
        for reading in readings.all() {
            if self.select_reading(reading) != chosen {
                // Which part made the difference: the same host on the canonical path agrees.
                let on_canonical_path = Reading { path: first.path, fold_case: false, ..reading };
                return Err(match self.select_reading(on_canonical_path) == chosen {
                    true => Ambiguity::Path,
                    false => Ambiguity::Host,
                });
            }
        }
        Ok(chosen)
    }

    /// The first policy whose `match` fits one reading, if any.
    fn select_reading(&self, reading: Reading<'_>) -> Option<usize> {
        let host = reading.host;
        // Each list is ascending: its first fit is its best; the lowest index over all wins.
        let first_fit = |list: Option<&Vec<usize>>| {
            list?.iter().copied().find(|&index| {
                self.scopes.get(index).is_some_and(|scope| {
                    path_matches(scope.path_prefix.as_deref(), reading.path.as_bytes(), reading.fold_case)
                })
            })
        };
        let fits = |name: &str| name.len() <= self.longest;
        let mut best = first_fit(Some(host).filter(|h| fits(h)).and_then(|h| self.exact.get(h)));
        let mut consider = |candidate: Option<usize>| {
            if let Some(candidate) = candidate {
                best = Some(best.map_or(candidate, |best| best.min(candidate)));
            }
        };
        // The parents of the host: `b.example.com` and `example.com` for `a.b.example.com`.
        let parents = host.match_indices('.').filter_map(|(at, _)| host.get(at + 1..));
        for (depth, parent) in parents.enumerate().filter(|(_, parent)| fits(parent)) {
            if depth == 0 || reading.deep_wildcards {
                consider(first_fit(self.wildcard.get(parent)));
            }
            consider(first_fit(self.deep.get(parent)));
        }
        consider(first_fit(Some(&self.any_host)));
        best
    }
}

/// The request's authority (`:authority`, or `host` in HTTP/1.0).
fn authority(request: &Request) -> &[u8] {
    request.values(":authority").next().or_else(|| request.values("host").next()).unwrap_or_default()
}

/// `/ws` matches `/ws` and `/ws/x`, not `/wsx`; with `fold_case`, also `/WS/x`.
pub(crate) fn path_matches(prefix: Option<&str>, path: &[u8], fold_case: bool) -> bool {
    let Some(prefix) = prefix else {
        return true;
    };
    let (Some(start), rest) = (path.get(..prefix.len()), path.get(prefix.len()..).unwrap_or_default()) else {
        return false;
    };
    let same =
        if fold_case { start.eq_ignore_ascii_case(prefix.as_bytes()) } else { start == prefix.as_bytes() };
    same && (rest.is_empty() || rest.starts_with(b"/"))
}

/// A configured path prefix, which must be in canonical form (requests are matched in it, so a
/// prefix in any other would match none); `None` for `/`, every path.
pub(crate) fn canonical_prefix(prefix: &str, at: &str) -> Result<Option<String>, ConfigError> {
    if prefix == "/" {
        return Ok(None);
    }
    let canonical = match prefix.contains('?') {
        true => Err(Malformed::BadByte),
        false => canonical::path(prefix.as_bytes()),
    };
    match canonical {
        Ok(canonical) if canonical == prefix.trim_end_matches('/') => Ok(Some(canonical)),
        Ok(canonical) => {
            let problem = format!("{prefix:?} is not in canonical form; write {canonical:?}");
            Err(ConfigError::new(at, problem))
        }
        Err(_) => {
            let problem = format!(
                "{prefix:?} is not a path: it starts with '/', has visible ASCII only and no query or fragment"
            );
            Err(ConfigError::new(at, problem))
        }
    }
}

fn compile_scope(config: &MatchConfig, field: &str) -> Result<Scope, ConfigError> {
    let mut hosts = Vec::new();
    for (index, host) in config.hosts.iter().enumerate() {
        let at = format!("{field}.match.hosts[{index}]");
        let lower = host.to_ascii_lowercase();
        let (kind, name): (fn(String) -> Host, &str) =
            match (lower.strip_prefix("**."), lower.strip_prefix("*.")) {
                (Some(rest), _) => (Host::Deep, rest),
                (None, Some(rest)) => (Host::Wildcard, rest),
                (None, None) => (Host::Exact, lower.as_str()),
            };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            let problem = format!(
                "{host:?} is not a host name, nor `*.` or `**.` and a host name; give it without a port \
                 or trailing dot"
            );
            return Err(ConfigError::new(at, problem));
        }
        let compiled = kind(name.to_string());
        if hosts.contains(&compiled) {
            return Err(ConfigError::new(at, format!("{host:?} is listed twice")));
        }
        hosts.push(compiled);
    }
    let path_prefix = match config.path_prefix.as_deref() {
        None => None,
        Some(prefix) => canonical_prefix(prefix, &format!("{field}.match.path_prefix"))?,
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
        (Some(earlier), Some(later)) => path_matches(Some(earlier), later.as_bytes(), false),
    };
    hosts && paths
}

fn host_covers(earlier: &Host, later: &Host) -> bool {
    fn below<'n>(name: &'n str, suffix: &str) -> Option<&'n str> {
        name.strip_suffix(suffix).and_then(|labels| labels.strip_suffix('.')).filter(|l| !l.is_empty())
    }
    match (earlier, later) {
        (Host::Wildcard(suffix), Host::Exact(name)) => below(name, suffix).is_some_and(|l| !l.contains('.')),
        (Host::Deep(suffix), Host::Exact(name) | Host::Wildcard(name) | Host::Deep(name)) => {
            name == suffix && !matches!(later, Host::Exact(_)) || below(name, suffix).is_some()
        }
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
    fn a_host_of_many_labels_is_chosen_on_its_parents_short_enough_to_be_listed() {
        let s = selector(&[matching(&["**.example.com"], None), matching(&["*.example.net"], None)]).unwrap();
        let labels = "a.".repeat(40_000);
        let upgrade = |host: &str| s.select_upgrade(&request(host, "/ws"));
        assert_eq!(upgrade(&format!("{labels}example.com")), Ok(Some(0)));
        assert_eq!(upgrade(&format!("{labels}example.org")), Ok(None));
        assert_eq!(upgrade(&format!("{labels}example.net")), Err(Ambiguity::Host));
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
