//! The proxy-wasm shell: the only module that talks to the host. It reads what Envoy gives,
//! asks the core ([`crate::decide`]) and carries out the verdict. A decision about policy does
//! not belong here; it belongs in the core.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::first_message::{Awaiting, Step};
use crate::headers::Response;
use crate::logs::{LogLimiter, LINES_PER_SECOND};
use crate::policy::{decide_and_plan, respond, Policy, ResponsePlan};
use crate::request::Request;
use crate::sockets::{Close, OpenSockets};
use crate::stats::{Counter, CONFIG_REJECTIONS};
use crate::token::remote::MAX_BODY_BYTES;
use crate::verdict::{DenyReason, RequestEdit, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root {
            id,
            policy: None,
            counters: Rc::new(Counters::default()),
            fetches: Vec::new(),
            sockets: Rc::default(),
            logs: Rc::default(),
        })
    });
}}

/// One per plugin configuration and VM. Holds the compiled policy, shared with every stream.
struct Root {
    /// The host's id of this context.
    id: u32,
    /// `None` until a configuration compiled. Streams then refuse upgrades (fail closed).
    policy: Option<Rc<Policy>>,
    counters: Rc<Counters>,
    /// Key set fetches under way: Envoy's token for the call, and the set's index in the policy.
    fetches: Vec<(u32, usize)>,
    /// Admitted sockets that must close at a set time, shared with the streams.
    sockets: Rc<RefCell<OpenSockets>>,
    /// How many refusal lines this VM may write, shared with the streams.
    logs: Rc<LogLimiter>,
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or_default()
}

fn milliseconds(time: SystemTime) -> u64 {
    let elapsed = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    elapsed.as_secs().saturating_mul(1000).saturating_add(u64::from(elapsed.subsec_millis()))
}

/// Envoy's ids of the counters the core names, in [`Counter::index`] order.
#[derive(Default)]
struct Counters {
    ids: Vec<u32>,
}

impl Counters {
    /// Defines (or finds: every VM shares a counter of the same name) each counter.
    fn define(names: &[String]) -> Counters {
        let ids = names.iter().map(|name| define_counter(name).unwrap_or(u32::MAX)).collect();
        Counters { ids }
    }

    fn add(&self, counter: Counter, amount: usize) {
        if amount == 0 {
            return;
        }
        if let Some(&id) = self.ids.get(counter.index()) {
            let _ = hostcalls::increment_metric(id, i64::try_from(amount).unwrap_or(i64::MAX));
        }
    }
}

fn define_counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("counter {name} could not be defined: {status:?}");
            None
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(place) = self.fetches.iter().position(|(token, _)| *token == token_id) else { return };
        let (_, index) = self.fetches.swap_remove(place);
        let Some(policy) = self.policy.clone() else { return };
        // No :status means no answer: a reset, a timeout, no healthy host.
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|status| std::str::from_utf8(&status).ok()?.parse().ok());
        // One byte past the limit is enough for the core to refuse an oversized set.
        let body = self.get_http_call_response_body(0, body_size.min(MAX_BODY_BYTES + 1)).unwrap_or_default();
        self.keys_fetched(&policy, index, status, &body);
    }
}

impl Root {
    /// Hands what came of a key set fetch to the core; logs and counts the outcome.
    fn keys_fetched(&self, policy: &Policy, index: usize, status: Option<u16>, body: &[u8]) {
        let now = seconds(self.get_current_time());
        let Some(outcome) = policy.keys_fetched(index, now, status, body) else { return };
        if outcome.is_failure() {
            log::warn!("{}", outcome.log_line());
        } else {
            log::info!("{}", outcome.log_line());
        }
        self.counters.add(Counter::for_fetch(&outcome), 1);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        match Policy::from_json(&json) {
            Ok(policy) => {
                log::info!("configuration loaded: {}", policy.summary());
                for warning in policy.warnings() {
                    log::warn!("configuration weakens itself: {warning}");
                }
                let counters = Counters::define(policy.stat_names());
                counters.add(Counter::ConfigLoads, 1);
                self.counters = Rc::new(counters);
                // Answers to the fetches of an earlier configuration are not for this one.
                self.fetches.clear();
                self.set_tick_period(policy.tick_period());
                self.policy = Some(Rc::new(policy));
                true
            }
            Err(error) => {
                // Returning false makes Envoy refuse this configuration; a policy loaded earlier
                // (if any) keeps serving.
                log::error!("configuration rejected: {error}");
                if let Some(id) = define_counter(CONFIG_REJECTIONS) {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                false
            }
        }
    }

    /// Starts the key set fetches that are due (the first one on the first tick, when Envoy's
    /// clusters are up), and closes the sockets that are due.
    fn on_tick(&mut self) {
        let Some(policy) = self.policy.clone() else { return };
        let now = milliseconds(self.get_current_time());
        for (index, fetch) in policy.key_fetches_due(now / 1000) {
            match self.dispatch_http_call(fetch.cluster, fetch.headers, None, Vec::new(), fetch.timeout) {
                Ok(token) => self.fetches.push((token, index)),
                Err(_) => self.keys_fetched(&policy, index, None, &[]),
            }
        }
        let due = self.sockets.try_borrow_mut().map(|mut sockets| sockets.due(now)).unwrap_or_default();
        for (stream, reason) in due {
            // A stream with no callback in flight can be reset from here, acting as its context;
            // Envoy offers no way to send it a WebSocket close frame (README, "Sockets that end").
            let reset =
                hostcalls::set_effective_context(stream).is_ok() && hostcalls::reset_http_request().is_ok();
            if let (true, Some(counter)) = (reset, Counter::for_close(reason)) {
                if let Some(line) =
                    self.logs.admit(format!("admitted socket closed: reason={}", reason.as_str()), now)
                {
                    log::warn!("{line}");
                }
                self.counters.add(counter, 1);
            }
        }
        if let Some(left_out) = self.logs.take_left_out(now) {
            log::warn!(
                "{left_out} refusal lines left out (at most {LINES_PER_SECOND} a second; every one counted)"
            );
        }
        let _ = hostcalls::set_effective_context(self.id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            sockets: Rc::clone(&self.sockets),
            logs: Rc::clone(&self.logs),
            policy: self.policy.clone(),
            counters: Rc::clone(&self.counters),
            plan: ResponsePlan::default(),
            awaiting: None,
            held: 0,
            upstream_held: false,
            refused: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request (and, after an upgrade, per WebSocket).
struct Stream {
    /// The host's id of this stream.
    id: u32,
    sockets: Rc<RefCell<OpenSockets>>,
    logs: Rc<LogLimiter>,
    policy: Option<Rc<Policy>>,
    counters: Rc<Counters>,
    /// What the core decided about the response, kept from the request callback.
    plan: ResponsePlan,
    /// A socket whose credential is to come in its first message, until it has.
    awaiting: Option<Awaiting>,
    /// How many of the client's bytes Envoy holds for this filter (all fed to `awaiting`).
    held: usize,
    /// Envoy holds the upstream's bytes for this filter until the credential has verified.
    upstream_held: bool,
    /// The socket was refused and reset: nothing more of it goes on.
    refused: bool,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        self.set_close(None);
        // Still waiting: the timer closed it, or the client went away.
        if let Some(awaiting) = self.awaiting.take() {
            let reason = awaiting.abandoned(milliseconds(self.get_current_time()));
            self.refuse(&awaiting, reason);
        }
        true
    }
}

impl Stream {
    /// Puts the socket on the root's list to close at `close`, or takes it off.
    fn set_close(&self, close: Option<Close>) {
        if let Ok(mut sockets) = self.sockets.try_borrow_mut() {
            match close {
                Some(close) => sockets.admit(self.id, close),
                None => {
                    sockets.forget(self.id);
                }
            }
        }
    }

    /// Counts and logs a socket refused after its handshake. The caller resets it, if needed.
    fn refuse(&mut self, awaiting: &Awaiting, reason: DenyReason) {
        self.refused = true;
        self.set_close(None);
        if let Some(line) = self.logs.admit(awaiting.log_line(reason), milliseconds(self.get_current_time()))
        {
            log::warn!("{line}");
        }
        self.counters.add(Counter::Denied(reason), 1);
    }

    fn apply(&self, edit: RequestEdit<'_>) {
        match edit {
            RequestEdit::Set(name, value) => self.set_http_request_header_bytes(name, Some(&value)),
            RequestEdit::Remove(name) => self.set_http_request_header_bytes(name, None),
            RequestEdit::RemoveForged(name) => self.set_http_request_header_bytes(&name, None),
            RequestEdit::Lines(name, lines) => {
                self.set_http_request_header_bytes(name, None);
                for line in lines {
                    self.add_http_request_header_bytes(name, &line);
                }
            }
        }
    }
}

impl Stream {
    /// Feeds the client's next bytes (`end_of_stream`: it will send no more) to the core and
    /// carries out what it says.
    fn read_first_message(&mut self, bytes: &[u8], end_of_stream: bool) -> Action {
        let (Some(mut awaiting), Some(policy)) = (self.awaiting.take(), self.policy.clone()) else {
            return Action::Continue;
        };
        let now = milliseconds(self.get_current_time());
        match policy.read_first_message(&mut awaiting, bytes, end_of_stream, now) {
            Step::Hold => {
                self.awaiting = Some(awaiting);
                // Pause on a body is StopIterationAndBuffer, on trailers StopIteration: Envoy
                // keeps the bytes.
                Action::Pause
            }
            Step::Release { cut, keep, close } => {
                if cut > 0 {
                    // Replaces the first `cut` bytes held (the auth message) with `keep`.
                    self.set_http_request_body(0, cut, &keep);
                }
                self.set_close(close);
                self.counters.add(Counter::Allowed, 1);
                if self.upstream_held {
                    self.upstream_held = false;
                    self.resume_http_response();
                }
                Action::Continue
            }
            Step::Refuse(reason) => {
                self.refuse(&awaiting, reason);
                let _ = hostcalls::reset_http_request();
                Action::Pause
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The bytes form: header values need not be UTF-8, and the SDK's String form would
        // panic on one that is not.
        // Whether the downstream connection is TLS, from the connection itself: Envoy sets
        // this property only for a TLS connection.
        let tls = self.get_property(vec!["connection", "tls_version"]).is_some_and(|v| !v.is_empty());
        let request = Request::new(self.get_http_request_headers_bytes()).with_tls(tls);
        let clock = || milliseconds(self.get_current_time());
        let policy = self.policy.as_deref();
        let (verdict, plan) = decide_and_plan(policy, &request, clock);
        self.plan = plan;
        if let Some(line) = verdict.log_line(&request) {
            if let Some(line) = self.logs.admit(line, milliseconds(self.get_current_time())) {
                log::warn!("{line}");
            }
        }
        if let Some(counter) = Counter::for_verdict(&verdict) {
            self.counters.add(counter, 1);
        }
        if let Some(policy) = policy {
            let (hits, misses) = policy.take_cache_counts();
            self.counters.add(Counter::CredentialCacheHits, usize::try_from(hits).unwrap_or(usize::MAX));
            self.counters.add(Counter::CredentialCacheMisses, usize::try_from(misses).unwrap_or(usize::MAX));
        }
        match verdict {
            Verdict::Pass(edits)
            | Verdict::Admit(edits)
            | Verdict::ShadowAdmit(edits)
            | Verdict::ShadowDeny(_, edits) => {
                for edit in edits {
                    self.apply(edit);
                }
                Action::Continue
            }
            Verdict::Await { edits, awaiting } => {
                for edit in edits {
                    self.apply(edit);
                }
                self.set_close(Some(awaiting.timeout()));
                self.awaiting = Some(awaiting);
                Action::Continue
            }
            Verdict::Deny(denial) => {
                // Before the reply: Envoy's access log reads the request as it is then.
                for edit in denial.scrub.iter().cloned() {
                    self.apply(edit);
                }
                self.send_http_response(
                    u32::from(denial.status),
                    denial.headers(),
                    Some(denial.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    /// The client's bytes, held while a socket waits for its first message.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.refused {
            return Action::Pause;
        }
        // Every frame of every socket comes here: nothing is asked of the host unless waiting.
        if self.awaiting.is_none() {
            return Action::Continue;
        }
        // Envoy hands over everything held so far; only what is new is read.
        let new = body_size.saturating_sub(self.held);
        let bytes = match new {
            0 => Vec::new(),
            _ => self.get_http_request_body(self.held, new).unwrap_or_default(),
        };
        self.held = body_size;
        self.read_first_message(&bytes, end_of_stream)
    }

    /// Trailers end the client's stream (HTTP/2 and HTTP/3). While the socket waits, they would
    /// carry the held bytes on with them: the stream ends here, before its credential.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.refused {
            return Action::Pause;
        }
        if self.awaiting.is_none() {
            return Action::Continue;
        }
        self.read_first_message(&[], true)
    }

    /// The upstream's bytes to a socket that waits for its first message: held until the
    /// credential has verified, within the policy's bound.
    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.refused {
            return Action::Pause;
        }
        let Some(awaiting) = self.awaiting.take() else { return Action::Continue };
        match awaiting.hold_upstream(body_size) {
            Ok(()) => {
                self.awaiting = Some(awaiting);
                self.upstream_held = true;
                Action::Pause
            }
            Err(reason) => {
                self.refuse(&awaiting, reason);
                let _ = hostcalls::reset_http_request();
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.plan.edits_response() && !self.plan.may_close() && self.awaiting.is_none() {
            return Action::Continue;
        }
        let response = Response::new(self.get_http_response_headers_bytes());
        if self.awaiting.is_some() && !response.opens_socket() {
            // The upstream refused the upgrade: there is no socket to wait on.
            self.awaiting = None;
            self.set_close(None);
        }
        if let Some(close) = self.plan.close_after(&response) {
            self.set_close(Some(close));
        }
        let edits = respond(self.policy.as_deref(), self.plan, &response);
        if !edits.is_empty() {
            self.counters.add(Counter::ResponseHeadersAdded, edits.len());
            // One call for every edit: each call across the VM boundary costs more than the
            // work it asks of Envoy.
            self.set_http_response_headers_bytes(response.edited(&edits));
        }
        Action::Continue
    }
}
