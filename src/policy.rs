//! The compiled policy: everything that depends only on configuration is done in
//! [`Policy::compile`], once per VM; [`Policy::decide`] and [`Policy::respond`] only look things
//! up.

use std::time::Duration;

use crate::also_check::{self, AlsoCheck};
use crate::config::{Admission, Compression, Config, Mode, PolicyConfig};
use crate::error::ConfigError;
use crate::first_message::{Awaiting, Step};
use crate::headers::{has_header_key, header_key};
use crate::headers::{HeaderEdit, Response, ResponseHeaders};
use crate::limits::{client_key, identity_key, Limits, Places};
use crate::messages::{Direction, Inspection, Inspector, MessageRules};
use crate::origin::{Origin, OriginAllowList};
use crate::request::Request;
use crate::scope::{self, Ambiguity, Selector};
use crate::sockets::Close;
use crate::token::jwk::Algorithm;
use crate::token::remote::{Fetch, FetchOutcome, RemoteJwks};
use crate::token::source;
use crate::token::{Auth, Checked};
use crate::verdict::{excerpt, request_fields};
use crate::verdict::{
    Denial, DenyReason, RequestEdit, Verdict, AMBIGUOUS_BODY, AMBIGUOUS_STATUS, CHALLENGE, CHALLENGE_INVALID,
    INSECURE_TRANSPORT_BODY, INSECURE_TRANSPORT_STATUS, JWKS_UNAVAILABLE_BODY, JWKS_UNAVAILABLE_STATUS,
    NO_POLICY_BODY, NO_POLICY_MATCHED_BODY, NO_POLICY_MATCHED_STATUS, NO_POLICY_STATUS, UNAUTHORIZED_BODY,
};
use crate::verdict::{
    TOO_MANY_SOCKETS_PER_CLIENT_BODY, TOO_MANY_SOCKETS_PER_IDENTITY_BODY, TOO_MANY_SOCKETS_STATUS,
};

/// A configuration checked and compiled for use on the request path: the policies, how to
/// choose between them, and the counters' names.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Every counter's full name, in [`crate::stats::Counter::index`] order.
    stat_names: Vec<String>,
    /// The configuration's `stat_prefix`: it also names its socket counts in shared data.
    stat_prefix: String,
    selector: Selector,
    /// The policies of `policies`, in order.
    scoped: Vec<Rules>,
    default: Option<Rules>,
    /// Every identity header any policy sets, as [`header_key`] reads them: removed from every
    /// request that carries one, in any spelling, whatever policy applies.
    identity_headers: Vec<String>,
    /// Every query parameter any policy takes a credential from: removed from a refused
    /// request before the reply, so that no access log line holds it.
    query_credentials: Vec<String>,
}

/// One policy, compiled: what an upgrade must satisfy, and what ordinary responses get.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The policy's name in log lines.
    name: String,
    mode: Mode,
    origins: OriginAllowList,
    missing_origin: Admission,
    null_origin: Admission,
    deny_status: u16,
    deny_body: String,
    response_headers: Option<ResponseHeaders>,
    require_tls: bool,
    trust_forwarded_proto: bool,
    auth: Option<Auth>,
    close_on_expiry: bool,
    max_connection_seconds: Option<u64>,
    /// Ordinary requests decided as upgrades are (long-polling fallbacks).
    also_check: Vec<AlsoCheck>,
    /// The rules for an admitted socket's messages.
    messages: Option<MessageRules>,
    /// Whether the client's compression offer is removed from the handshake.
    strip_compression: bool,
    /// Sockets per identity and per client.
    limits: Option<Limits>,
}

/// Which policy applies to a request and its response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Applies {
    #[default]
    Default,
    Scoped(usize),
    Nothing,
}

/// What the response path needs to know of its request. The shell keeps it between the
/// request and the response callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponsePlan {
    /// The policy whose headers the response gets.
    applies: Applies,
    /// Whether the response gets the security headers: only answers to ordinary requests do.
    /// A 101, the 200 of an HTTP/2 extended CONNECT and wsgate's own refusals create no
    /// document.
    security_headers: bool,
    /// Whether the request arrived over TLS (for Strict-Transport-Security).
    secure: bool,
    /// When an admitted socket must close (`close_on_expiry`, `max_connection_seconds`).
    close: Option<Close>,
    /// Whether an admitted upgrade offered the policy's subprotocol marker, which its 101 gets
    /// where the upstream selected no protocol.
    marker: bool,
}

impl ResponsePlan {
    /// Only answers to ordinary requests get the security headers; HSTS only over TLS.
    fn new(
        applies: Applies,
        rules: Option<&Rules>,
        request: &Request,
        verdict: &Verdict<'_>,
    ) -> ResponsePlan {
        // An ordinary request's connection may not have been asked about (see
        // `Policy::needs_transport`): its `:scheme` says whether HSTS is any use.
        let secure = rules.is_some_and(|rules| rules.secure(request))
            || (!request.is_upgrade() && request.scheme_is_https());
        // A shadow-mode decision lets the request go on unchanged, the marker too; the answer
        // selects it all the same, as enforcing would have.
        let going_on =
            matches!(verdict, Verdict::Admit(_) | Verdict::ShadowAdmit(_) | Verdict::ShadowDeny(..));
        let upgrade = request.is_upgrade();
        let marker = going_on
            && upgrade
            && rules.and_then(|rules| rules.auth.as_ref()).is_some_and(|auth| auth.offers_marker(request));
        // Ordinary requests go on to a document, those of `also_check` too.
        let security_headers = matches!(verdict, Verdict::Pass(_)) || (going_on && !upgrade);
        ResponsePlan { applies, security_headers, secure, close: None, marker }
    }

    /// Whether the response may get headers at all: when not, the shell need not even read it.
    pub fn edits_response(&self) -> bool {
        self.security_headers || self.marker
    }

    /// Whether the response must be looked at for [`ResponsePlan::close_after`].
    pub fn may_close(&self) -> bool {
        self.close.is_some()
    }

    /// When the socket this response opens must close: only an admitted upgrade that the
    /// upstream accepted (101, or a 2xx to an HTTP/2 extended CONNECT) is a socket.
    pub fn close_after(&self, response: &Response) -> Option<Close> {
        self.close.filter(|_| response.opens_socket())
    }
}

/// For a response whose request the filter never saw (Envoy answered it before the filter
/// chain ran): the default policy's headers, without HSTS.
impl Default for ResponsePlan {
    fn default() -> ResponsePlan {
        ResponsePlan {
            applies: Applies::Default,
            security_headers: true,
            secure: false,
            close: None,
            marker: false,
        }
    }
}

impl Policy {
    /// Checks and compiles a configuration. Every error names the field it is about. Secrets
    /// named by `k_env` are read from the process environment (in Envoy, the VM's
    /// `environment_variables`).
    pub fn compile(config: Config) -> Result<Policy, ConfigError> {
        Policy::compile_with_env(config, &|name| std::env::var(name).ok())
    }

    /// [`Policy::compile`] with the environment given as a lookup function.
    pub fn compile_with_env(
        config: Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, ConfigError> {
        Policy::compile_all(config, env).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Compiles as [`Policy::compile_with_env`], but goes on after an error to report one per
    /// part: `stat_prefix`, the policies' `match`es, each policy and `default`. For checkers.
    /// The list is never empty.
    pub fn compile_all(
        config: Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let prefix = &config.stat_prefix;
        if prefix.is_empty()
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            let problem = format!("{prefix:?} is not lower-case letters, digits and '_'");
            errors.push(ConfigError::new("stat_prefix", problem));
        }
        if config.policies.is_empty() && config.default.is_none() {
            errors
                .push(ConfigError::new("configuration", "has no policy: give `policies`, `default` or both"));
        }
        let fields: Vec<String> =
            (0..config.policies.len()).map(|index| format!("policies[{index}]")).collect();
        let matches: Vec<_> =
            config.policies.iter().map(|p| &p.matches).zip(fields.iter().cloned()).collect();
        let selector = Selector::compile(&matches).map_err(|e| errors.push(e)).ok();
        let mut scoped = Vec::with_capacity(config.policies.len());
        for (policy, field) in config.policies.into_iter().zip(&fields) {
            // An entry outside the policy's own path would match only spellings that another
            // reading puts there: it would silently check nothing a client really sends.
            let within = policy
                .matches
                .path_prefix
                .as_deref()
                .and_then(|prefix| scope::canonical_prefix(prefix, "").ok().flatten());
            for (index, entry) in policy.policy.also_check.iter().enumerate() {
                let entry_prefix = scope::canonical_prefix(&entry.path_prefix, "").ok().flatten();
                let inside = match (&within, &entry_prefix) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(within), Some(entry)) => scope::path_matches(Some(within), entry.as_bytes(), false),
                };
                if !inside {
                    let problem = format!(
                        "{:?} is outside the policy's match.path_prefix, so no request it lists would reach this policy",
                        entry.path_prefix
                    );
                    errors.push(
                        ConfigError::new(format!("also_check[{index}].path_prefix"), problem).within(field),
                    );
                }
            }
            let name = policy.name.unwrap_or_else(|| field.clone());
            match Rules::compile(policy.policy, name, env) {
                Ok(rules) => scoped.push(rules),
                Err(found) => errors.extend(found.into_iter().map(|error| error.within(field))),
            }
        }
        let default_field = if config.default_is_top_level { "" } else { "default" };
        let default = match config.default.map(|policy| Rules::compile(policy, "default".to_string(), env)) {
            Some(Ok(rules)) => Some(rules),
            Some(Err(found)) => {
                errors.extend(found.into_iter().map(|error| error.within(default_field)));
                None
            }
            None => None,
        };
        let mut identity_headers: Vec<String> = Vec::new();
        let mut query_credentials: Vec<String> = Vec::new();
        for auth in scoped.iter().chain(default.as_ref()).filter_map(|rules| rules.auth.as_ref()) {
            for key in auth.identity_headers().map(header_key) {
                if !identity_headers.contains(&key) {
                    identity_headers.push(key);
                }
            }
            for name in auth.query_names() {
                if !query_credentials.iter().any(|known| known == name) {
                    query_credentials.push(name.to_string());
                }
            }
        }
        match (selector, errors.is_empty()) {
            (Some(selector), true) => Ok(Policy {
                stat_names: crate::stats::names(prefix),
                stat_prefix: prefix.clone(),
                selector,
                scoped,
                default,
                identity_headers,
                query_credentials,
            }),
            _ => Err(errors),
        }
    }

    /// Parses and compiles the JSON text of a plugin configuration.
    pub fn from_json(json: &[u8]) -> Result<Policy, ConfigError> {
        Policy::compile(Config::from_json(json)?)
    }

    /// The policy that applies to `request`: the first in `policies` whose `match` fits its
    /// canonical host and path, else `default`. For an upgrade, and an ordinary request that
    /// `also_check` checks, every reading of its host and path must choose the same one
    /// ([`crate::canonical`]), or it is refused.
    fn applies(&self, request: &Request) -> Result<Applies, DenyReason> {
        self.applies_as(request, request.is_upgrade() || self.also_checks(request))
    }

    /// [`Policy::applies`], told whether the request is decided as an upgrade (`strict`).
    fn applies_as(&self, request: &Request, strict: bool) -> Result<Applies, DenyReason> {
        let chosen = match strict {
            true => self.selector.select_upgrade(request).map_err(|ambiguity| match ambiguity {
                Ambiguity::Path => DenyReason::PathAmbiguous,
                Ambiguity::Host => DenyReason::HostAmbiguous,
            })?,
            false => self.selector.select(request),
        };
        Ok(match chosen {
            Some(index) => Applies::Scoped(index),
            None if self.default.is_some() => Applies::Default,
            None => Applies::Nothing,
        })
    }

    /// Whether deciding `request` needs to know if its connection is TLS ([`Request::with_tls`]):
    /// an upgrade, or a request of `also_check`, is checked for its transport and may be matched
    /// on its own origin. An ordinary request is not: its Strict-Transport-Security follows its
    /// `:scheme` (a browser ignores the header over plaintext whatever it says), so a host need
    /// not ask for the connection's TLS on the path that every request takes.
    pub fn needs_transport(&self, request: &Request) -> bool {
        request.is_upgrade() || self.also_checks(request)
    }

    /// Whether `request`, an ordinary request, is one that some reading of it puts under a
    /// policy whose `also_check` lists it; a target with no reading, if any policy's would list
    /// its query. Read only where some policy has `also_check`.
    fn also_checks(&self, request: &Request) -> bool {
        if !self.all_rules().any(|rules| !rules.also_check.is_empty()) || request.is_upgrade() {
            return false;
        }
        let target = request.path();
        let found = self.selector.any_reading(request, |reading, chosen| {
            let rules = match chosen {
                Some(index) => self.scoped.get(index),
                None => self.default.as_ref(),
            };
            rules.is_some_and(|rules| also_check::checks_reading(&rules.also_check, reading, target))
        });
        found.unwrap_or_else(|| {
            self.all_rules().any(|rules| also_check::checks_unreadable(&rules.also_check, target))
        })
    }

    /// Removes every header whose name some upstream reads as an identity header's (any case,
    /// `_` for `-`): whatever the policy, the mode or the verdict, no client's copy goes on.
    fn unforge(&self, request: &Request) -> Vec<RequestEdit<'_>> {
        if self.identity_headers.is_empty() {
            return Vec::new();
        }
        let mut forged: Vec<String> = request
            .names()
            .filter(|name| self.identity_headers.iter().any(|key| has_header_key(name, key)))
            .map(str::to_string)
            .collect();
        forged.dedup();
        forged.into_iter().map(RequestEdit::RemoveForged).collect()
    }

    /// The edits that keep a refused request's credentials out of Envoy's logs.
    fn scrub(&self, request: &Request) -> Vec<RequestEdit<'_>> {
        match source::without_query_credentials(request.path(), &self.query_credentials) {
            Some(path) => vec![RequestEdit::Set(":path", path)],
            None => Vec::new(),
        }
    }

    /// The name of the policy that applies to `request` (for checkers and logs).
    pub fn policy_for(&self, request: &Request) -> Option<&str> {
        self.rules(self.applies(request).ok()?).map(|rules| rules.name.as_str())
    }

    fn rules(&self, applies: Applies) -> Option<&Rules> {
        match applies {
            Applies::Scoped(index) => self.scoped.get(index),
            Applies::Default => self.default.as_ref(),
            Applies::Nothing => None,
        }
    }

    /// Decides one request. `now` is the host's clock in seconds since the Unix epoch. An
    /// upgrade that no policy applies to is refused.
    pub fn decide(&self, request: &Request, now: u64) -> Verdict<'_> {
        self.decide_and_plan(request, || now.saturating_mul(1000)).0
    }

    /// Decides one request and what its response will need, choosing the policy once: what the
    /// shell calls for every request. `clock` gives the host's time in milliseconds since the
    /// Unix epoch; it is read only for a decision that needs it (an upgrade under a policy),
    /// since asking the host costs a call across the VM boundary.
    pub fn decide_and_plan(
        &self,
        request: &Request,
        clock: impl FnOnce() -> u64,
    ) -> (Verdict<'_>, ResponsePlan) {
        // Whether `also_check` lists it is worked out once: it reads every reading of the path.
        let upgrade = request.is_upgrade();
        let checked = !upgrade && self.also_checks(request);
        let (applies, chosen) = match self.applies_as(request, upgrade || checked) {
            Ok(applies) => (applies, Ok(applies)),
            Err(reason) => (Applies::Nothing, Err(reason)),
        };
        let rules = self.rules(applies);
        let (verdict, close) = match (chosen, rules) {
            _ if !upgrade && !checked => (Verdict::Pass(Vec::new()), None),
            (Ok(_), Some(rules)) if checked => (rules.decide_ordinary(request, clock()), None),
            (Err(reason), _) => (Verdict::Deny(unruled_denial(reason)), None),
            (Ok(applies), Some(rules)) => rules.decide(request, applies, clock()),
            (Ok(_), None) => (Verdict::Deny(unruled_denial(DenyReason::NoPolicyMatched)), None),
        };
        let verdict = match verdict {
            Verdict::Deny(mut denial) => {
                denial.scrub = self.scrub(request);
                Verdict::Deny(denial)
            }
            going_on => going_on.with_edits_first(self.unforge(request)),
        };
        let mut plan = ResponsePlan::new(applies, rules, request, &verdict);
        plan.close = close;
        (verdict, plan)
    }

    /// What the response to `request` will need, once `verdict` was reached.
    pub fn plan_response(&self, request: &Request, verdict: &Verdict<'_>) -> ResponsePlan {
        let applies = self.applies(request).unwrap_or(Applies::Nothing);
        ResponsePlan::new(applies, self.rules(applies), request, verdict)
    }

    /// The header edits for one response.
    pub fn respond(&self, plan: ResponsePlan, response: &Response) -> Vec<HeaderEdit<'_>> {
        match self.rules(plan.applies) {
            Some(rules) if plan.security_headers => rules.respond(plan.secure, response),
            Some(_) | None => Vec::new(),
        }
    }

    /// The subprotocol the 101 must select, if any: the marker the client offered, where the
    /// upstream accepted the socket and selected no protocol (a browser that offered protocols
    /// fails a handshake whose answer selects none).
    pub fn select_protocol(&self, plan: ResponsePlan, response: &Response) -> Option<HeaderEdit<'_>> {
        let marker = self.rules(plan.applies)?.auth.as_ref()?.marker()?;
        (plan.marker && response.opens_socket() && !response.has_value("sec-websocket-protocol"))
            .then_some(HeaderEdit::Set("sec-websocket-protocol", marker))
    }

    /// The credential caches' hits and misses since the last call, over every policy.
    pub fn take_cache_counts(&self) -> (u64, u64) {
        self.all_rules()
            .filter_map(|rules| rules.auth.as_ref())
            .map(Auth::take_cache_counts)
            .fold((0, 0), |(hits, misses), (h, m)| (hits + h, misses + m))
    }

    /// Every counter's full name, in [`crate::stats::Counter::index`] order.
    pub fn stat_names(&self) -> &[String] {
        &self.stat_names
    }

    /// Whether some policy lists `same_origin`, which reads the handshake's `:authority`.
    pub fn uses_same_origin(&self) -> bool {
        self.all_rules().any(|rules| rules.origins.same_origin())
    }

    /// Ways in which the configuration weakens itself: logged at load, not refused.
    pub fn warnings(&self) -> Vec<String> {
        self.all_rules()
            .flat_map(|rules| rules.warnings().iter().map(move |w| format!("{}: {w}", rules.name)))
            .collect()
    }

    fn all_rules(&self) -> impl Iterator<Item = &Rules> {
        self.scoped.iter().chain(self.default.as_ref())
    }

    /// Every fetched key set (`remote_jwks`) of every policy, in a fixed order: the index the
    /// shell keeps for a fetch under way.
    fn remote_jwks(&self) -> impl Iterator<Item = (&RemoteJwks, &[Algorithm])> {
        self.all_rules()
            .filter_map(|rules| rules.auth.as_ref()?.jwt())
            .filter_map(|jwt| Some((jwt.remote()?, jwt.algorithms())))
    }

    /// How often the shell's timer must run: every 100 ms when some policy times out first
    /// messages (a timeout is given in milliseconds), else every second (key set fetches,
    /// sockets to close, and the count of refusal lines left out, [`crate::logs`]).
    pub fn tick_period(&self) -> Duration {
        if self.all_rules().any(|rules| rules.auth.as_ref().and_then(Auth::first_message).is_some()) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        }
    }

    /// Reads the next bytes the client sent on a socket that waits for its first message
    /// (`end_of_stream`: the client will send no more), at `now` (milliseconds since the Unix
    /// epoch), and says what to do with the bytes held.
    pub fn read_first_message(
        &self,
        awaiting: &mut Awaiting,
        bytes: &[u8],
        end_of_stream: bool,
        now: u64,
    ) -> Step {
        let Some(rules) = self.rules(awaiting.applies) else { return Step::Refuse(DenyReason::NoPolicy) };
        let Some(auth) = rules.auth.as_ref() else { return Step::Refuse(DenyReason::NoPolicy) };
        let Some(rule) = auth.first_message() else { return Step::Refuse(DenyReason::NoPolicy) };
        if now >= awaiting.deadline_ms {
            return Step::Refuse(DenyReason::FirstMessageTimeout);
        }
        let message = match awaiting.reader.feed(bytes) {
            Err(error) => return Step::Refuse(error.into()),
            Ok(None) if end_of_stream => return Step::Refuse(DenyReason::FirstMessageMissing),
            Ok(None) => return Step::Hold,
            Ok(Some(message)) => message,
        };
        let verified = rule
            .credential(&message)
            .and_then(|credential| auth.verify_first_message(&credential, now / 1000));
        match verified {
            Ok((identity, expiry)) => {
                let close = Close::earliest(rules.expiry_close(expiry), awaiting.max_age_at);
                rule.release(message, close, identity)
            }
            Err(reason) => Step::Refuse(reason),
        }
    }

    /// The reading of an admitted socket's messages, begun now (`clock`, read only then), if the policy that
    /// decided `request` (`plan`, `verdict`, admitting `identity`) has message rules. A
    /// shadow-mode policy reads and
    /// reports, and holds nothing back.
    pub fn inspection(
        &self,
        plan: ResponsePlan,
        request: &Request,
        verdict: &Verdict<'_>,
        identity: Option<&str>,
        clock: impl FnOnce() -> u64,
    ) -> Option<Inspection> {
        let rules = self.rules(plan.applies)?;
        let messages = rules.messages.as_ref()?;
        let shadow = match verdict {
            _ if !request.is_upgrade() => return None,
            Verdict::Admit(_) | Verdict::Await { .. } => false,
            Verdict::ShadowAdmit(_) | Verdict::ShadowDeny(..) => true,
            Verdict::Pass(_) | Verdict::Deny(_) => return None,
        };
        let now_ms = clock();
        let [client, server] =
            Direction::ALL.map(|direction| Inspector::new(messages, direction, !shadow, now_ms));
        let identity = identity.map_or_else(|| "-".to_string(), |id| excerpt(id.as_bytes()));
        let context = format!("policy={} {} identity=\"{identity}\"", rules.name, request_fields(request));
        Some(Inspection { client, server, shadow, context })
    }

    /// Whether the host must give the client's address ([`Request::with_client`]) to decide
    /// `request`: only an upgrade, where a policy limits sockets per client; asking costs a
    /// host call.
    pub fn needs_client(&self, request: &Request) -> bool {
        request.is_upgrade() && self.limits_clients()
    }

    /// Whether a policy limits sockets per client: the client is then the address Envoy
    /// resolved, which a client can choose unless the connection manager has
    /// `use_remote_address` (for checkers' advice).
    pub fn limits_clients(&self) -> bool {
        self.all_rules().any(|rules| rules.limits.is_some_and(|limits| limits.per_client.is_some()))
    }

    /// Takes the places an admitted socket needs under its policy's `limits` (`clock` read only
    /// then, in milliseconds): per client when its handshake is given (`request`), per identity
    /// when it has one. The keys taken, to give back when the socket ends; or why it is
    /// refused, with nothing taken.
    pub fn take_places(
        &self,
        plan: ResponsePlan,
        request: Option<&Request>,
        identity: Option<&str>,
        places: Option<&Places>,
        clock: &dyn Fn() -> u64,
    ) -> Result<Vec<String>, DenyReason> {
        let Some((rules, limits)) = self.rules(plan.applies).and_then(|rules| Some((rules, rules.limits?)))
        else {
            return Ok(Vec::new());
        };
        let mut wanted = Vec::new();
        if let (Some(limit), Some(request)) = (limits.per_client, request) {
            // No address to count by is refused rather than not counted.
            let address = request.client().ok_or(DenyReason::TooManySocketsPerClient)?;
            let key = client_key(&self.stat_prefix, &rules.name, address);
            wanted.push((key, limit, DenyReason::TooManySocketsPerClient));
        }
        if let (Some(limit), Some(identity)) = (limits.per_identity, identity) {
            let key = identity_key(&self.stat_prefix, &rules.name, identity);
            wanted.push((key, limit, DenyReason::TooManySocketsPerIdentity));
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // Nothing to count in is refused rather than not counted.
        let Some(places) = places else { return Err(wanted.first().map_or(DenyReason::NoPolicy, |w| w.2)) };
        let now = clock();
        let mut taken: Vec<String> = Vec::new();
        for (key, limit, reason) in wanted {
            if !places.take(&key, limit, now) {
                for key in &taken {
                    places.give_back(key, now);
                }
                return Err(reason);
            }
            taken.push(key);
        }
        Ok(taken)
    }

    /// The refusal of `reason` under the policy that decided `plan`.
    pub fn refusal(&self, plan: ResponsePlan, reason: DenyReason, request: &Request) -> Denial<'_> {
        let mut denial = match self.rules(plan.applies) {
            Some(rules) => rules.denial(reason),
            None => unruled_denial(reason),
        };
        denial.scrub = self.scrub(request);
        denial
    }

    /// The name of the policy that decided (`plan`), and whom `verdict` admitted: the subject or
    /// the key id it forwards.
    pub fn describe(&self, plan: ResponsePlan, verdict: &Verdict<'_>) -> (Option<&str>, Option<String>) {
        let Some(rules) = self.rules(plan.applies) else { return (None, None) };
        let identity = match verdict {
            Verdict::Admit(edits) => rules.identity(edits),
            _ => None,
        };
        (Some(rules.name.as_str()), identity)
    }

    /// The key set fetches due at `now`, each with its index for [`Policy::keys_fetched`].
    pub fn key_fetches_due(&self, now: u64) -> Vec<(usize, Fetch<'_>)> {
        self.remote_jwks()
            .enumerate()
            .filter_map(|(index, (remote, _))| Some((index, remote.due(now)?)))
            .collect()
    }

    /// What came back for fetch `index`: its status (`None`: no answer) and body.
    pub fn keys_fetched(
        &self,
        index: usize,
        now: u64,
        status: Option<u16>,
        body: &[u8],
    ) -> Option<FetchOutcome> {
        let (remote, algorithms) = self.remote_jwks().nth(index)?;
        Some(remote.answer(now, status, body, algorithms))
    }

    /// A description of what was compiled, for the log at load.
    pub fn summary(&self) -> String {
        self.policy_summaries().join("; ")
    }

    /// One line per policy, in the order they are tried: its name and what it checks.
    pub fn policy_summaries(&self) -> Vec<String> {
        self.all_rules().map(|rules| format!("{} ({})", rules.name, rules.summary())).collect()
    }
}

/// `messages` and `compression`, compiled: the rules, and whether the handshake loses its
/// compression offer (the rules read frames only uncompressed).
fn compile_messages(
    config: &PolicyConfig,
    first_message: Option<usize>,
) -> Result<(Option<MessageRules>, bool), ConfigError> {
    let messages =
        config.messages.as_ref().map(|messages| MessageRules::compile(messages, "messages")).transpose()?;
    if let (Some(rules), Some(index)) = (&messages, first_message) {
        if rules.checks_server_json() {
            let problem = format!(
                "cannot go with a first_message source (auth.sources[{index}]): the upstream's messages are \
                 held whole until that credential verifies, so none can be held back on its own"
            );
            return Err(ConfigError::new("messages.server.json", problem));
        }
    }
    if config.compression == Some(Compression::Allow) && messages.is_some() {
        let problem =
            "is \"allow\", but message rules read frames only uncompressed; use \"strip\" or leave it out";
        return Err(ConfigError::new("compression", problem));
    }
    let strip = messages.is_some() || config.compression == Some(Compression::Strip);
    Ok((messages, strip))
}

/// `limits`, compiled. Shadow mode decides nothing a limit could refuse.
fn compile_limits(config: &PolicyConfig, auth: Option<&Auth>) -> Result<Option<Limits>, ConfigError> {
    let Some(limits) = &config.limits else { return Ok(None) };
    if config.mode == Mode::Shadow {
        return Err(ConfigError::new("limits", "cannot be tried in shadow mode: use enforce"));
    }
    Limits::compile(limits, auth.is_some_and(Auth::has_identity)).map(Some)
}

impl Rules {
    /// Compiles one policy. Its parts (origins, `deny_status`, `response_headers`, `auth`) are
    /// independent, so each reports its first error: a checker shows them all at once.
    fn compile(
        config: PolicyConfig,
        name: String,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Rules, Vec<ConfigError>> {
        let origins = if config.allowed_origins.is_empty() {
            Err(ConfigError::new("allowed_origins", "is empty; list at least one origin"))
        } else {
            OriginAllowList::compile(&config.allowed_origins).map_err(|e| {
                let problem = format!("{:?} is not an origin ({})", e.entry, e.error);
                ConfigError::new(format!("allowed_origins[{}]", e.index), problem)
            })
        };
        let deny_status = if (400..=599).contains(&config.deny_status) {
            Ok(config.deny_status)
        } else {
            let problem = format!("{} is not a client or server error status (400-599)", config.deny_status);
            Err(ConfigError::new("deny_status", problem))
        };
        let first_message =
            config.auth.as_ref().and_then(|auth| auth.sources.iter().position(|s| s.first_message.is_some()));
        let response_headers = config
            .response_headers
            .as_ref()
            .map(|h| ResponseHeaders::compile(h, config.require_tls))
            .transpose();
        let auth = config.auth.as_ref().map(|auth| Auth::compile(auth, env)).transpose();
        let also_check = also_check::compile(&config.also_check);
        let messages = compile_messages(&config, first_message);
        let limits = compile_limits(&config, auth.as_ref().ok().and_then(Option::as_ref));
        let closing = if config.close_on_expiry && config.auth.as_ref().and_then(|a| a.jwt.as_ref()).is_none()
        {
            Err(ConfigError::new("close_on_expiry", "needs auth.jwt: only a JWT has an expiry"))
        } else if config.max_connection_seconds == Some(0) {
            Err(ConfigError::new("max_connection_seconds", "is 0; give at least 1, or leave it out"))
        } else if let (Some(index), Mode::Shadow) = (first_message, config.mode) {
            let problem = "cannot be tried in shadow mode: holding the client's messages would change \
                           what the upstream sees; use enforce";
            Err(ConfigError::new(format!("auth.sources[{index}].first_message"), problem))
        } else {
            Ok(())
        };
        match (origins, deny_status, response_headers, auth, closing, also_check, (messages, limits)) {
            (
                Ok(origins),
                Ok(deny_status),
                Ok(response_headers),
                Ok(auth),
                Ok(()),
                Ok(also_check),
                (Ok((messages, strip_compression)), Ok(limits)),
            ) => Ok(Rules {
                name,
                mode: config.mode,
                auth,
                origins,
                missing_origin: config.missing_origin,
                null_origin: config.null_origin,
                deny_status,
                deny_body: config.deny_body,
                response_headers,
                require_tls: config.require_tls,
                trust_forwarded_proto: config.trust_forwarded_proto,
                close_on_expiry: config.close_on_expiry,
                max_connection_seconds: config.max_connection_seconds,
                also_check,
                messages,
                strip_compression,
                limits,
            }),
            (origins, deny_status, response_headers, auth, closing, also_check, (messages, limits)) => Err([
                origins.err(),
                deny_status.err(),
                response_headers.err(),
                auth.err(),
                closing.err(),
                also_check.err(),
                messages.err(),
                limits.err(),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }

    /// Decides one upgrade at `now` (milliseconds since the Unix epoch). The transport is
    /// checked first (403), then the origin (403), then the credential (401). And when an
    /// admitted socket must close, if this policy closes sockets.
    fn decide(&self, request: &Request, applies: Applies, now: u64) -> (Verdict<'_>, Option<Close>) {
        let checked =
            self.check_transport(request).and_then(|()| self.check_origin(request, false)).and_then(|()| {
                let unchecked = Checked::Verified { edits: Vec::new(), expiry: None };
                self.auth.as_ref().map_or(Ok(unchecked), |auth| auth.check(request, now / 1000))
            });
        let max_age_at =
            self.max_connection_seconds.map(|seconds| now.saturating_add(seconds.saturating_mul(1000)));
        match (checked, self.mode) {
            (Ok(Checked::Verified { mut edits, expiry }), Mode::Enforce) => {
                self.strip_compression(request, &mut edits);
                (Verdict::Admit(edits), Close::earliest(self.expiry_close(expiry), max_age_at))
            }
            (Ok(Checked::Awaits { mut edits, rule }), Mode::Enforce) => {
                self.strip_compression(request, &mut edits);
                let awaiting = rule.awaiting(request, (applies, &self.name), now, max_age_at);
                (Verdict::Await { edits, awaiting }, None)
            }
            (Err(reason), Mode::Enforce) => (Verdict::Deny(self.denial(reason)), None),
            // Shadow mode: decided and reported, but nothing is refused, changed or closed.
            (Ok(_), Mode::Shadow) => (Verdict::ShadowAdmit(Vec::new()), None),
            (Err(reason), Mode::Shadow) => (Verdict::ShadowDeny(self.denial(reason), Vec::new()), None),
        }
    }

    /// The verified identity that `edits` forward: the subject or the key id.
    fn identity(&self, edits: &[RequestEdit<'_>]) -> Option<String> {
        self.auth.as_ref().and_then(|auth| auth.identity(edits))
    }

    /// Removes the client's compression offer from an admitted handshake, where the policy
    /// says to (once: the first-message source may have removed it already).
    fn strip_compression<'p>(&self, request: &Request, edits: &mut Vec<RequestEdit<'p>>) {
        let remove = RequestEdit::Remove("sec-websocket-extensions");
        let offered = request.values("sec-websocket-extensions").next().is_some();
        if self.strip_compression && offered && !edits.contains(&remove) {
            edits.push(remove);
        }
    }

    /// Decides an ordinary request of `also_check` at `now` (milliseconds) as an upgrade is:
    /// transport, origin, credential, with the same reasons. There is no socket to wait on or
    /// close, so a credential that would come in a first message is missing.
    fn decide_ordinary(&self, request: &Request, now: u64) -> Verdict<'_> {
        let checked =
            self.check_transport(request).and_then(|()| self.check_origin(request, true)).and_then(|()| {
                match &self.auth {
                    // A CORS preflight carries no credential; the request it asks for will.
                    _ if is_preflight(request) => Ok(Vec::new()),
                    None => Ok(Vec::new()),
                    Some(auth) => match auth.check(request, now / 1000)? {
                        Checked::Verified { edits, .. } => Ok(edits),
                        Checked::Awaits { .. } => Err(DenyReason::TokenMissing),
                    },
                }
            });
        match (checked, self.mode) {
            (Ok(edits), Mode::Enforce) => Verdict::Admit(edits),
            (Err(reason), Mode::Enforce) => Verdict::Deny(self.denial(reason)),
            (Ok(_), Mode::Shadow) => Verdict::ShadowAdmit(Vec::new()),
            (Err(reason), Mode::Shadow) => Verdict::ShadowDeny(self.denial(reason), Vec::new()),
        }
    }

    /// When a socket admitted with a credential that expires at `expiry` (seconds since the
    /// Unix epoch) must close for it, in milliseconds: only with `close_on_expiry`.
    fn expiry_close(&self, expiry: Option<u64>) -> Option<u64> {
        expiry.filter(|_| self.close_on_expiry).map(|at| at.saturating_mul(1000))
    }

    /// Whether the request arrived over TLS, directly or (if trusted) through a load balancer.
    pub(crate) fn secure(&self, request: &Request) -> bool {
        request.tls() || (self.trust_forwarded_proto && request.forwarded_https())
    }

    fn check_transport(&self, request: &Request) -> Result<(), DenyReason> {
        if self.require_tls && !self.secure(request) {
            return Err(DenyReason::InsecureTransport);
        }
        Ok(())
    }

    /// The origin the handshake was sent to, for `same_origin`: the scheme from the transport
    /// (TLS, or `x-forwarded-proto` only where `trust_forwarded_proto` says so) and the one
    /// `:authority` as Envoy received it; never `Host` copies such as `x-forwarded-host`.
    fn own_origin(&self, request: &Request) -> Option<Origin> {
        let mut lines = request.values(":authority");
        match (lines.next(), lines.next()) {
            (Some(authority), None) => Origin::of_authority(self.secure(request), authority),
            _ => None,
        }
    }

    /// The origin check. An `ordinary` request (of `also_check`) without `Origin` is a browser's
    /// same-origin GET when it says so in `Sec-Fetch-Site`, a header no page can set: its origin
    /// is then the request's own.
    fn check_origin(&self, request: &Request, ordinary: bool) -> Result<(), DenyReason> {
        let mut lines = request.values("origin");
        let admit = |admission, reason| match admission {
            Admission::Allow => Ok(()),
            Admission::Deny => Err(reason),
        };
        match (lines.next(), lines.next()) {
            (None, _) if ordinary => match fetch_site(request) {
                FetchSite::SameOrigin => {
                    let own = self.own_origin(request).ok_or(DenyReason::OriginMissing)?;
                    match self.origins.allows(&own, Some(&own)) {
                        true => Ok(()),
                        false => Err(DenyReason::OriginNotAllowed),
                    }
                }
                // A page of another site loading it (a script, an image, a frame, a form):
                // refused whatever `missing_origin` allows non-browser clients.
                FetchSite::Other => Err(DenyReason::OriginMissing),
                FetchSite::Unsaid => admit(self.missing_origin, DenyReason::OriginMissing),
            },
            (None, _) => admit(self.missing_origin, DenyReason::OriginMissing),
            // Envoy joins repeated Origin lines into one value; should a host ever not, two
            // lines are no more one origin than a joined list is.
            (Some(_), Some(_)) => Err(DenyReason::OriginMalformed),
            (Some(b"null"), None) => admit(self.null_origin, DenyReason::OriginNull),
            (Some(value), None) => {
                let origin = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| Origin::parse(text).ok())
                    .ok_or(DenyReason::OriginMalformed)?;
                let own = self.origins.same_origin().then(|| self.own_origin(request)).flatten();
                if self.origins.allows(&origin, own.as_ref()) {
                    Ok(())
                } else {
                    Err(DenyReason::OriginNotAllowed)
                }
            }
        }
    }

    /// The one place where a reason becomes a reply.
    fn denial(&self, reason: DenyReason) -> Denial<'_> {
        match reason {
            DenyReason::NoPolicy
            | DenyReason::NoPolicyMatched
            | DenyReason::PathAmbiguous
            | DenyReason::HostAmbiguous => unruled_denial(reason),
            DenyReason::JwksUnavailable => Denial {
                reason,
                status: JWKS_UNAVAILABLE_STATUS,
                body: JWKS_UNAVAILABLE_BODY,
                challenge: None,
                policy: &self.name,
                scrub: Vec::new(),
            },
            DenyReason::InsecureTransport => Denial {
                reason,
                status: INSECURE_TRANSPORT_STATUS,
                body: INSECURE_TRANSPORT_BODY,
                challenge: None,
                policy: &self.name,
                scrub: Vec::new(),
            },
            DenyReason::OriginNotAllowed
            | DenyReason::OriginMissing
            | DenyReason::OriginNull
            | DenyReason::OriginMalformed => Denial {
                reason,
                status: self.deny_status,
                body: &self.deny_body,
                challenge: None,
                policy: &self.name,
                scrub: Vec::new(),
            },
            DenyReason::TokenMissing => Denial {
                reason,
                status: self.auth.as_ref().map_or(401, Auth::deny_status),
                body: UNAUTHORIZED_BODY,
                challenge: Some(CHALLENGE),
                policy: &self.name,
                scrub: Vec::new(),
            },
            DenyReason::TokenMalformed
            | DenyReason::TokenDuplicated
            | DenyReason::ApiKeyInvalid
            | DenyReason::TokenExpired
            | DenyReason::TokenNotYetValid
            | DenyReason::TokenBadSignature
            | DenyReason::TokenUnknownKey
            | DenyReason::TokenBadIssuer
            | DenyReason::TokenBadAudience
            // A first message is refused by closing the socket, never with a reply; these
            // only go with the reply's form for completeness.
            | DenyReason::FirstMessageMissing
            | DenyReason::FirstMessageTimeout
            | DenyReason::FirstMessageTooLarge
            | DenyReason::FirstMessageMalformed
            | DenyReason::FirstMessageUpstreamTooLarge => Denial {
                reason,
                status: self.auth.as_ref().map_or(401, Auth::deny_status),
                body: UNAUTHORIZED_BODY,
                challenge: Some(CHALLENGE_INVALID),
                policy: &self.name,
                scrub: Vec::new(),
            },
            DenyReason::TooManySocketsPerIdentity | DenyReason::TooManySocketsPerClient => Denial {
                reason,
                status: TOO_MANY_SOCKETS_STATUS,
                body: match reason {
                    DenyReason::TooManySocketsPerIdentity => TOO_MANY_SOCKETS_PER_IDENTITY_BODY,
                    _ => TOO_MANY_SOCKETS_PER_CLIENT_BODY,
                },
                challenge: None,
                policy: &self.name,
                scrub: Vec::new(),
            },
        }
    }

    /// The header edits for one response to an ordinary request.
    fn respond(&self, secure: bool, response: &Response) -> Vec<HeaderEdit<'_>> {
        self.response_headers.as_ref().map(|headers| headers.edits(response, secure)).unwrap_or_default()
    }

    fn warnings(&self) -> &[String] {
        self.response_headers.as_ref().map(ResponseHeaders::warnings).unwrap_or_default()
    }

    fn summary(&self) -> String {
        let auth = self.auth.as_ref().map_or_else(|| "none".to_string(), Auth::summary);
        let messages = self.messages.as_ref().map_or_else(|| "none".to_string(), MessageRules::summary);
        let limits = match self.limits {
            None => "none".to_string(),
            Some(Limits { per_identity, per_client }) => [
                per_identity.map(|n| format!("max_sockets_per_identity={n}")),
                per_client.map(|n| format!("max_sockets_per_client={n}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        };
        format!(
            "mode={}, {} allowed origin entries, missing_origin={}, null_origin={}, deny_status={}, \
             require_tls={}, trust_forwarded_proto={}, {} response headers, also_check={}, \
             compression={}, limits: {limits}, messages: {messages}, auth: {auth}",
            format!("{:?}", self.mode).to_ascii_lowercase(),
            self.origins.len(),
            format!("{:?}", self.missing_origin).to_ascii_lowercase(),
            format!("{:?}", self.null_origin).to_ascii_lowercase(),
            self.deny_status,
            self.require_tls,
            self.trust_forwarded_proto,
            self.response_headers.as_ref().map_or(0, ResponseHeaders::len),
            self.also_check.len(),
            if self.strip_compression { "strip" } else { "allow" },
        )
    }
}

/// Whether `request` is a CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
fn is_preflight(request: &Request) -> bool {
    request.values(":method").next() == Some(b"OPTIONS".as_slice())
        && request.values("access-control-request-method").next().is_some()
}

/// Where a browser says a request without `Origin` comes from (Fetch Metadata,
/// `Sec-Fetch-Site`, a header pages cannot set).
enum FetchSite {
    /// Exactly one `same-origin`: a page of the request's own origin.
    SameOrigin,
    /// Anything else said: another site, the same site, or lines that disagree. (`none`, a
    /// user's own navigation, is no page's request either.)
    Other,
    /// Not said: no browser, or one without Fetch Metadata.
    Unsaid,
}

fn fetch_site(request: &Request) -> FetchSite {
    let mut lines = request.values("sec-fetch-site");
    match (lines.next(), lines.next()) {
        (None, _) => FetchSite::Unsaid,
        (Some(value), None) if value.trim_ascii().eq_ignore_ascii_case(b"same-origin") => {
            FetchSite::SameOrigin
        }
        _ => FetchSite::Other,
    }
}

/// The refusals that no policy's settings shape: no valid configuration at all (503), and no
/// policy for the request's host and path (403).
fn unruled_denial(reason: DenyReason) -> Denial<'static> {
    let (status, body) = match reason {
        DenyReason::NoPolicyMatched => (NO_POLICY_MATCHED_STATUS, NO_POLICY_MATCHED_BODY),
        DenyReason::PathAmbiguous | DenyReason::HostAmbiguous => (AMBIGUOUS_STATUS, AMBIGUOUS_BODY),
        _ => (NO_POLICY_STATUS, NO_POLICY_BODY),
    };
    Denial { reason, status, body, challenge: None, policy: "-", scrub: Vec::new() }
}

/// Decides one request with whatever policy the VM holds. Without a valid policy (none was
/// ever loaded) upgrades are refused with 503 and other requests pass: wsgate fails closed for
/// what it guards and does not take ordinary traffic down with it.
pub fn decide<'p>(policy: Option<&'p Policy>, request: &Request, now: u64) -> Verdict<'p> {
    decide_and_plan(policy, request, || now.saturating_mul(1000)).0
}

/// [`Policy::decide_and_plan`] with whatever policy the VM holds (see [`decide`]).
pub fn decide_and_plan<'p>(
    policy: Option<&'p Policy>,
    request: &Request,
    clock: impl FnOnce() -> u64,
) -> (Verdict<'p>, ResponsePlan) {
    match policy {
        Some(policy) => policy.decide_and_plan(request, clock),
        None if request.is_upgrade() => {
            (Verdict::Deny(unruled_denial(DenyReason::NoPolicy)), ResponsePlan::default())
        }
        None => (Verdict::Pass(Vec::new()), ResponsePlan::default()),
    }
}

/// [`Policy::plan_response`] with whatever policy the VM holds.
pub fn plan_response(policy: Option<&Policy>, request: &Request, verdict: &Verdict<'_>) -> ResponsePlan {
    policy.map(|policy| policy.plan_response(request, verdict)).unwrap_or_default()
}

/// [`Policy::respond`] with whatever policy the VM holds: without one, responses are untouched.
pub fn respond<'p>(
    policy: Option<&'p Policy>,
    plan: ResponsePlan,
    response: &Response,
) -> Vec<HeaderEdit<'p>> {
    policy.map(|policy| policy.respond(plan, response)).unwrap_or_default()
}
