//! The proxy-wasm binding: the only module that talks to the proxy-wasm host. It turns Envoy's
//! callbacks into events of the core's [`Session`] and carries out the [`Action`]s it returns. A
//! decision about policy does not belong here; it belongs in the session or the policy.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::headers::{HeaderEdit, Response};
use crate::limits::{Places, SharedStore};
use crate::logs::LogLimiter;
use crate::policy::Policy;
use crate::request::Request;
use crate::session::{self, Action, Flow, Level, Loaded, Note, Session};
use crate::sockets::OpenSockets;
use crate::stats::Counter;
use crate::token::remote::MAX_BODY_BYTES;
use crate::verdict::RequestEdit;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root {
            id,
            policy: None,
            counters: Rc::new(Counters::default()),
            fetches: Vec::new(),
            sockets: Rc::default(),
            logs: Arc::default(),
            places: Arc::new(Places::new(Box::new(SharedData), vm_id())),
        })
    });
}}

/// Proxy-wasm's shared data: one store for every VM of the same `vm_id` in this Envoy, across
/// its workers.
struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match hostcalls::get_shared_data(key) {
            Ok((value, version)) => (value, version.unwrap_or(0)),
            Err(_) => (None, 0),
        }
    }

    fn set(&self, key: &str, value: &[u8], version: u32) -> bool {
        hostcalls::set_shared_data(key, Some(value), (version != 0).then_some(version)).is_ok()
    }
}

/// The test build's probe (feature `panic-probe`, never in the shipped module): panics on a
/// request that asks for it, so that a test can crash this VM.
#[cfg(feature = "panic-probe")]
#[allow(clippy::panic)]
fn panic_probe(request: &crate::Request) {
    if request.values("x-wsgate-test-panic").next().is_some() {
        panic!("the test probe panicked on purpose");
    }
}

/// A number for this VM that no other VM of the Envoy has: random (WASI's `random_get`).
fn vm_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

/// One per plugin configuration and VM. Holds the compiled policy, shared with every stream.
struct Root {
    /// The host's id of this context.
    id: u32,
    /// `None` until a configuration compiled. Streams then refuse upgrades (fail closed).
    policy: Option<Arc<Policy>>,
    counters: Rc<Counters>,
    /// Key set fetches under way: Envoy's token for the call, and the set's index in the policy.
    fetches: Vec<(u32, usize)>,
    /// Admitted sockets that must close at a set time, shared with the streams.
    sockets: Rc<RefCell<OpenSockets>>,
    /// How many refusal lines this VM may write, shared with the streams.
    logs: Arc<LogLimiter>,
    /// This VM's sockets under the policies' `limits`, shared with the streams.
    places: Arc<Places>,
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

fn log(level: Level, line: &str) {
    match level {
        Level::Info => log::info!("{line}"),
        Level::Warn => log::warn!("{line}"),
        Level::Error => log::error!("{line}"),
    }
}

/// Carries out the actions that need no stream: counting and logging.
fn count_and_log(counters: &Counters, actions: Vec<Action<'_>>) {
    for action in actions {
        match action {
            Action::Count(counter, amount) => counters.add(counter, amount),
            Action::Log(level, line) => log(level, &line),
            _ => {}
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
        let now = seconds(self.get_current_time());
        count_and_log(&self.counters, session::keys_fetched(&policy, index, now, status, &body));
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let json = self.get_plugin_configuration().unwrap_or_default();
        let loaded = Loaded::from_json(&json);
        for (level, line) in &loaded.lines {
            log(*level, line);
        }
        let Some(policy) = loaded.policy else {
            // Returning false makes Envoy refuse this configuration.
            if let Some(id) = define_counter(Loaded::rejection_counter()) {
                let _ = hostcalls::increment_metric(id, 1);
            }
            return false;
        };
        let counters = Counters::define(policy.stat_names());
        counters.add(Counter::ConfigLoads, 1);
        self.counters = Rc::new(counters);
        // Answers to the fetches of an earlier configuration are not for this one.
        self.fetches.clear();
        self.set_tick_period(policy.tick_period());
        self.policy = Some(Arc::new(policy));
        true
    }

    /// Starts the key set fetches that are due (the first one on the first tick, when Envoy's
    /// clusters are up), and closes the sockets that are due.
    fn on_tick(&mut self) {
        let Some(policy) = self.policy.clone() else { return };
        let now = milliseconds(self.get_current_time());
        for (index, fetch) in session::fetches_due(&policy, now / 1000) {
            match self.dispatch_http_call(fetch.cluster, fetch.headers, None, Vec::new(), fetch.timeout) {
                Ok(token) => self.fetches.push((token, index)),
                Err(_) => count_and_log(
                    &self.counters,
                    session::keys_fetched(&policy, index, now / 1000, None, &[]),
                ),
            }
        }
        let due = self.sockets.try_borrow_mut().map(|mut sockets| sockets.due(now)).unwrap_or_default();
        for (stream, reason) in due {
            // A stream with no callback in flight can be reset from here, acting as its context;
            // Envoy offers no way to send it a WebSocket close frame (README, "Sockets that end").
            if hostcalls::set_effective_context(stream).is_err() {
                continue;
            }
            let actions = session::closed(&self.logs, reason, now);
            // The notes go on the stream before the reset logs it.
            for action in &actions {
                if let Action::Note(note, value) = action {
                    note_for_access_log(*note, value);
                }
            }
            if hostcalls::reset_http_request().is_ok() {
                count_and_log(&self.counters, actions);
            }
        }
        count_and_log(&self.counters, session::left_out_line(&self.logs, now).into_iter().collect());
        self.places.refresh(now);
        let _ = hostcalls::set_effective_context(self.id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            sockets: Rc::clone(&self.sockets),
            counters: Rc::clone(&self.counters),
            session: Session::new(self.policy.clone(), Arc::clone(&self.logs))
                .with_places(Arc::clone(&self.places)),
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
    counters: Rc<Counters>,
    session: Session,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        let clock = || hostcalls::get_current_time().map(milliseconds).unwrap_or_default();
        let actions = self.session.on_done(clock);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        true
    }
}

/// Carries out a stream's actions; `flow` becomes the host's answer to the callback.
fn carry_out(id: u32, sockets: &RefCell<OpenSockets>, counters: &Counters, actions: Vec<Action<'_>>) {
    for action in actions {
        match action {
            Action::EditRequest(edit) => edit_request(edit),
            Action::Reply(denial) => {
                let _ = hostcalls::send_http_response(
                    u32::from(denial.status),
                    denial.headers(),
                    Some(denial.body.as_bytes()),
                );
            }
            // One host call per edit (a header added or replaced): cheaper than writing the whole
            // map back in one call once the upstream's answer has more than a few headers
            // (docs/BENCHMARKS.md, "Steps toward the floor").
            Action::EditResponse(edits) => edits.into_iter().for_each(edit_response),
            Action::ReplaceRequestBody { cut, keep } => {
                let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, cut, &keep);
            }
            Action::ReplaceResponseBody { cut, keep } => {
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, cut, &keep);
            }
            Action::ResumeResponse => {
                let _ = hostcalls::resume_http_response();
            }
            // Never asked of this binding: proxy-wasm cannot write to the client of an upgraded
            // stream (README, "Sockets that end").
            Action::CloseFrame(_) => {}
            Action::Reset => {
                let _ = hostcalls::reset_http_request();
            }
            Action::Count(counter, amount) => counters.add(counter, amount),
            Action::Log(level, line) => log(level, &line),
            Action::CloseAt(close) => {
                if let Ok(mut sockets) = sockets.try_borrow_mut() {
                    sockets.admit(id, close);
                }
            }
            Action::KeepOpen => {
                if let Ok(mut sockets) = sockets.try_borrow_mut() {
                    sockets.forget(id);
                }
            }
            Action::Note(note, value) => note_for_access_log(note, &value),
        }
    }
}

/// Filter state `wasm.wsgate_<note>` of the stream whose context is in effect, which Envoy's
/// access log reads as `%FILTER_STATE(wasm.wsgate_<note>:PLAIN)%`.
fn note_for_access_log(note: Note, value: &str) {
    let _ = hostcalls::set_property(vec![&format!("wsgate_{}", note.as_str())], Some(value.as_bytes()));
}

fn edit_request(edit: RequestEdit<'_>) {
    let headers = MapType::HttpRequestHeaders;
    match edit {
        RequestEdit::Set(name, value) => {
            let _ = hostcalls::set_map_value_bytes(headers, name, Some(&value));
        }
        RequestEdit::Remove(name) => {
            let _ = hostcalls::set_map_value_bytes(headers, name, None);
        }
        RequestEdit::RemoveForged(name) => {
            let _ = hostcalls::set_map_value_bytes(headers, &name, None);
        }
        RequestEdit::Lines(name, lines) => {
            let _ = hostcalls::set_map_value_bytes(headers, name, None);
            for line in lines {
                let _ = hostcalls::add_map_value_bytes(headers, name, &line);
            }
        }
    }
}

fn edit_response(edit: HeaderEdit<'_>) {
    let headers = MapType::HttpResponseHeaders;
    let _ = match edit {
        HeaderEdit::Add(name, value) => hostcalls::add_map_value(headers, name, value),
        HeaderEdit::Set(name, value) => hostcalls::set_map_value(headers, name, Some(value)),
    };
}

fn host_action(flow: Flow) -> HostAction {
    match flow {
        Flow::Continue => HostAction::Continue,
        // On a body, Envoy then keeps the bytes (StopIterationAndBuffer); on trailers, it stops.
        Flow::Pause => HostAction::Pause,
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        // The bytes form: header values need not be UTF-8, and the SDK's String form would
        // panic on one that is not.
        let request = Request::new(self.get_http_request_headers_bytes());
        // Whether the downstream connection is TLS, from the connection itself (Envoy sets this
        // property only for a TLS connection), where the decision needs it.
        let tls = self.session.needs_transport(&request)
            && self.get_property(vec!["connection", "tls_version"]).is_some_and(|v| !v.is_empty());
        let request = request.with_tls(tls);
        let client =
            self.session.needs_client(&request).then(|| self.get_property(vec!["source", "address"]));
        let request =
            request.with_client(client.flatten().and_then(|address| String::from_utf8(address).ok()));
        #[cfg(feature = "panic-probe")]
        panic_probe(&request);
        let clock = || hostcalls::get_current_time().map(milliseconds).unwrap_or_default();
        let (flow, actions) = self.session.on_request_headers(&request, clock);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        host_action(flow)
    }

    /// The client's bytes: held while a socket waits for its first message, read for the
    /// message rules.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        if !self.session.wants_request_body() {
            return host_action(self.session.on_request_body(&[], body_size, end_of_stream, || 0).0);
        }
        // Envoy hands over everything held so far; only what is new is read.
        let held = self.session.request_body_held();
        let new = match body_size.saturating_sub(held) {
            0 => Vec::new(),
            new => self.get_http_request_body(held, new).unwrap_or_default(),
        };
        let clock = || hostcalls::get_current_time().map(milliseconds).unwrap_or_default();
        let (flow, actions) = self.session.on_request_body(&new, body_size, end_of_stream, clock);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        host_action(flow)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> HostAction {
        let now = milliseconds(self.get_current_time());
        let (flow, actions) = self.session.on_request_trailers(now);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        host_action(flow)
    }

    /// The upstream's bytes: read for the message rules, held while a socket waits for its
    /// first message.
    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> HostAction {
        if !self.session.wants_response_body() {
            return HostAction::Continue;
        }
        let held = self.session.response_body_held();
        let new = match body_size.saturating_sub(held) {
            0 => Vec::new(),
            _ if !self.session.reads_response_body() => Vec::new(),
            new => self.get_http_response_body(held, new).unwrap_or_default(),
        };
        let clock = || hostcalls::get_current_time().map(milliseconds).unwrap_or_default();
        let (flow, actions) = self.session.on_response_body(&new, body_size, clock);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        host_action(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> HostAction {
        if !self.session.wants_response_headers() {
            return HostAction::Continue;
        }
        let response = Response::new(self.get_http_response_headers_bytes());
        let actions = self.session.on_response_headers(&response);
        carry_out(self.id, &self.sockets, &self.counters, actions);
        HostAction::Continue
    }
}
