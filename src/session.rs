//! The host-agnostic filter: what each host event means under a policy, as the actions the host
//! is to carry out (sans-IO, in the manner of `quinn-proto` or `rustls`). A host binding (the
//! proxy-wasm one in `filter.rs`, the Envoy dynamic module in `module/`) turns Envoy's callbacks
//! into calls of [`Session`] and the returned [`Action`]s into its own calls, and decides
//! nothing itself.
//!
//! Per configuration the binding keeps one [`Policy`] and one [`LogLimiter`] (shared by every
//! stream, and by every worker thread in the native build); per stream, one [`Session`].

use std::sync::Arc;

use crate::first_message::{Awaiting, Step};
use crate::frames::{close_frame, Boundary};
use crate::headers::{HeaderEdit, Response};
use crate::limits::Places;
use crate::logs::{LogLimiter, LINES_PER_SECOND};
use crate::messages::{Direction, Inspection, Release, Violation};
use crate::policy::{decide_and_plan, respond, Policy, ResponsePlan};
use crate::request::Request;
use crate::sockets::{Close, CloseReason};
use crate::stats::{Counter, CONFIG_REJECTIONS};
use crate::token::remote::Fetch;
use crate::verdict::{excerpt, Denial, DenyReason, RequestEdit, Verdict};

/// Whether the stream goes on after an event, or stops where it is (Envoy keeps what it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One thing for the host to do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<'p> {
    /// Change the request headers.
    EditRequest(RequestEdit<'p>),
    /// Answer the request locally with the refusal's status, headers and body.
    Reply(Denial<'p>),
    /// Change the response headers.
    EditResponse(Vec<HeaderEdit<'p>>),
    /// Replace the first `cut` bytes of the request body held so far with `keep`.
    ReplaceRequestBody { cut: usize, keep: Vec<u8> },
    /// Replace the first `cut` bytes of the response body held so far with `keep`.
    ReplaceResponseBody { cut: usize, keep: Vec<u8> },
    /// Let the response body that was held go on.
    ResumeResponse,
    /// Send the client these bytes, a WebSocket close frame, before the [`Action::Reset`] that
    /// follows: only from a session [`Session::with_close_frames`].
    CloseFrame(Vec<u8>),
    /// End the stream at once, in both directions.
    Reset,
    /// Add to a counter.
    Count(Counter, usize),
    /// Write a log line (never one with a credential in it).
    Log(Level, String),
    /// Close the socket at this time, with this reason: the host calls
    /// [`Session::on_close_due`] then. Replaces any time set before.
    CloseAt(Close),
    /// The socket no longer needs closing at a set time.
    KeepOpen,
    /// Record this about the stream where Envoy's access log can read it (never a credential).
    Note(Note, String),
}

/// What wsgate records about a decided stream for Envoy's access log: filter state
/// `wasm.wsgate_<name>` in the wasm build, dynamic metadata `wsgate:<name>` in the native one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The policy that decided.
    Policy,
    /// `allowed`, `denied`, `awaiting_first_message`, `shadow_allowed`, `shadow_denied`.
    Decision,
    /// Why it was refused (the `denied.<reason>` counter's reason).
    Reason,
    /// Whom the credential verified as: the subject, or the API key's id.
    Identity,
    /// Why wsgate ended an admitted socket.
    Close,
}

impl Note {
    pub const ALL: [Note; 5] = [Note::Policy, Note::Decision, Note::Reason, Note::Identity, Note::Close];

    pub fn as_str(self) -> &'static str {
        match self {
            Note::Policy => "policy",
            Note::Decision => "decision",
            Note::Reason => "reason",
            Note::Identity => "identity",
            Note::Close => "close",
        }
    }
}

/// A configuration as it loaded: the policy and what to log and count, or why it was refused.
pub struct Loaded {
    pub policy: Option<Policy>,
    pub lines: Vec<(Level, String)>,
}

impl Loaded {
    /// Compiles the plugin configuration (JSON).
    pub fn from_json(json: &[u8]) -> Loaded {
        match Policy::from_json(json) {
            Ok(policy) => {
                let mut lines = vec![(Level::Info, format!("configuration loaded: {}", policy.summary()))];
                for warning in policy.warnings() {
                    lines.push((Level::Warn, format!("configuration weakens itself: {warning}")));
                }
                Loaded { policy: Some(policy), lines }
            }
            // The host refuses this configuration; a policy loaded earlier (if any) keeps
            // serving.
            Err(error) => Loaded {
                policy: None,
                lines: vec![(Level::Error, format!("configuration rejected: {error}"))],
            },
        }
    }

    /// The counter a refused configuration adds one to, by its full name (no policy, so no
    /// prefix).
    pub fn rejection_counter() -> &'static str {
        CONFIG_REJECTIONS
    }
}

/// What the host does once a key set fetch for `index` came back (`status`: `None` for no
/// answer at all) at `now` (seconds).
pub fn keys_fetched(
    policy: &Policy,
    index: usize,
    now: u64,
    status: Option<u16>,
    body: &[u8],
) -> Vec<Action<'static>> {
    let Some(outcome) = policy.keys_fetched(index, now, status, body) else { return Vec::new() };
    let level = if outcome.is_failure() { Level::Warn } else { Level::Info };
    vec![Action::Log(level, outcome.log_line()), Action::Count(Counter::for_fetch(&outcome), 1)]
}

/// The key set fetches due at `now` (seconds): each with the index to hand back to
/// [`keys_fetched`].
pub fn fetches_due(policy: &Policy, now: u64) -> Vec<(usize, Fetch<'_>)> {
    policy.key_fetches_due(now)
}

/// The line that tells how many refusal lines were left out, once the flood is over: for the
/// host's timer, at `now` (milliseconds).
pub fn left_out_line(logs: &LogLimiter, now: u64) -> Option<Action<'static>> {
    let left_out = logs.take_left_out(now)?;
    Some(Action::Log(
        Level::Warn,
        format!("{left_out} refusal lines left out (at most {LINES_PER_SECOND} a second; every one counted)"),
    ))
}

/// One stream: an HTTP request and its response, and after an upgrade, the socket.
#[derive(Debug)]
pub struct Session {
    policy: Option<Arc<Policy>>,
    logs: Arc<LogLimiter>,
    /// What the request decided for the response.
    plan: ResponsePlan,
    /// A socket whose credential is to come in its first message, until it has.
    awaiting: Option<Awaiting>,
    /// How many of the client's bytes the host holds (all read by `awaiting`).
    held: usize,
    /// The host holds the upstream's bytes until the credential has verified.
    upstream_held: bool,
    /// The socket was refused and reset: nothing more of it goes on.
    refused: bool,
    /// A close time was set and not taken back.
    closing: bool,
    /// The host can send the client a close frame before it resets the socket.
    close_frames: bool,
    /// Where the upstream's bytes to the client stand, when close frames are sent.
    server: Boundary,
    /// The reading of an admitted socket's messages, under a policy with message rules.
    inspection: Option<Box<Inspection>>,
    /// Where this VM counts its sockets under the policies' `limits`.
    places: Option<Arc<Places>>,
    /// The places this socket took, given back when it ends.
    taken: Vec<String>,
    /// How many of the upstream's bytes the host holds (while the first message is awaited).
    response_held: usize,
}

/// The close code wsgate sends (RFC 6455 section 7.4.1: the endpoint's policy was violated).
pub const CLOSE_POLICY: u16 = 1008;

impl Session {
    /// A stream under `policy` (`None`: no valid configuration, so upgrades are refused).
    pub fn new(policy: Option<Arc<Policy>>, logs: Arc<LogLimiter>) -> Session {
        Session {
            policy,
            logs,
            plan: ResponsePlan::default(),
            awaiting: None,
            held: 0,
            upstream_held: false,
            refused: false,
            closing: false,
            close_frames: false,
            server: Boundary::default(),
            inspection: None,
            response_held: 0,
            places: None,
            taken: Vec::new(),
        }
    }

    /// A session that counts its socket under the policies' `limits` in `places` (without them,
    /// a handshake under a limit is refused: there is nothing to count it in).
    pub fn with_places(mut self, places: Arc<Places>) -> Session {
        self.places = Some(places);
        self
    }

    /// Whether the host must tell [`Session::on_request_headers`] the client's address
    /// ([`Request::with_client`]): asking costs a host call that most requests need not pay.
    pub fn needs_client(&self, request: &Request) -> bool {
        self.policy.as_deref().is_some_and(|policy| policy.needs_client(request))
    }

    /// A session whose host can write to the client of an upgraded stream: sockets that wsgate
    /// ends get a close frame (1008 and the reason) before the reset, where it cannot cut into
    /// a frame of the upstream's, so that browsers see why instead of 1006.
    pub fn with_close_frames(mut self) -> Session {
        self.close_frames = true;
        self
    }

    /// The close frame for a socket ended for `reason`, when this session sends them.
    fn close_frame(&self, reason: &str) -> Option<Action<'static>> {
        self.close_frames.then(|| Action::CloseFrame(close_frame(CLOSE_POLICY, &format!("wsgate: {reason}"))))
    }

    /// Whether the host must tell [`Session::on_request_headers`] if the connection is TLS
    /// ([`Request::with_tls`]) for this request: asking costs a host call that an ordinary
    /// request need not pay.
    pub fn needs_transport(&self, request: &Request) -> bool {
        self.policy.as_deref().is_some_and(|policy| policy.needs_transport(request))
    }

    /// The request headers arrived. `clock` gives the time in milliseconds since the Unix epoch;
    /// it is read only when a decision needs it.
    pub fn on_request_headers(
        &mut self,
        request: &Request,
        clock: impl Fn() -> u64,
    ) -> (Flow, Vec<Action<'_>>) {
        let policy = self.policy.as_deref();
        let (mut verdict, plan) = decide_and_plan(policy, request, &clock);
        self.plan = plan;
        // The policy's name and whom it admitted, worked out once for the limits, the reading of
        // messages and the access log.
        let (name, mut identity) = policy.map(|policy| policy.describe(plan, &verdict)).unwrap_or_default();
        if let (Some(policy), Verdict::Admit(_) | Verdict::Await { .. }) = (policy, &verdict) {
            // An admitted socket takes its places under the policy's limits, or is refused.
            match policy.take_places(plan, Some(request), identity.as_deref(), self.places.as_deref(), &clock)
            {
                Ok(taken) => self.taken = taken,
                Err(reason) => {
                    verdict = Verdict::Deny(policy.refusal(plan, reason, request));
                    identity = None;
                }
            }
        }
        self.inspection = policy
            .and_then(|policy| policy.inspection(plan, request, &verdict, identity.as_deref(), &clock))
            .map(Box::new);
        let mut actions = Vec::new();
        if verdict.is_logged() {
            let line = || verdict.log_line(request).unwrap_or_default();
            if let Some(line) = self.logs.admit_with(line, clock()) {
                actions.push(Action::Log(Level::Warn, line));
            }
        }
        if let Some(counter) = Counter::for_verdict(&verdict) {
            actions.push(Action::Count(counter, 1));
        }
        actions.extend(notes(name, identity, &verdict));
        if let Some(policy) = policy {
            let (hits, misses) = policy.take_cache_counts();
            for (counter, count) in
                [(Counter::CredentialCacheHits, hits), (Counter::CredentialCacheMisses, misses)]
            {
                if count > 0 {
                    actions.push(Action::Count(counter, usize::try_from(count).unwrap_or(usize::MAX)));
                }
            }
        }
        let flow = match verdict {
            Verdict::Pass(edits)
            | Verdict::Admit(edits)
            | Verdict::ShadowAdmit(edits)
            | Verdict::ShadowDeny(_, edits) => {
                actions.extend(edits.into_iter().map(Action::EditRequest));
                Flow::Continue
            }
            Verdict::Await { edits, awaiting } => {
                actions.extend(edits.into_iter().map(Action::EditRequest));
                actions.push(Action::CloseAt(awaiting.timeout()));
                self.closing = true;
                self.awaiting = Some(awaiting);
                Flow::Continue
            }
            Verdict::Deny(mut denial) => {
                // Before the reply: Envoy's access log reads the request as it is then.
                actions.extend(std::mem::take(&mut denial.scrub).into_iter().map(Action::EditRequest));
                actions.push(Action::Reply(denial));
                Flow::Pause
            }
        };
        (flow, actions)
    }

    /// Whether the host must hand over the request body: only while a socket waits for its
    /// first message, or has message rules for the client. Every frame of every socket is a
    /// body event; the others cost nothing.
    pub fn wants_request_body(&self) -> bool {
        (self.awaiting.is_some() || self.inspects(Direction::Client)) && !self.refused
    }

    /// Whether `direction` of the socket is read for its message rules.
    fn inspects(&self, direction: Direction) -> bool {
        self.inspection.as_ref().is_some_and(|inspection| match direction {
            Direction::Client => inspection.client.is_some(),
            Direction::Server => inspection.server.is_some(),
        })
    }

    /// How many bytes of the request body the host holds already: [`Session::on_request_body`]
    /// wants only the ones after these.
    pub fn request_body_held(&self) -> usize {
        self.held
    }

    /// The client's next bytes: `new` are the ones after [`Session::request_body_held`], and
    /// `held` how many the host holds now, these included (`end_of_stream`: no more will come).
    /// `clock` gives the time in milliseconds since the Unix epoch; it is read only when needed
    /// (asking the host is a call across the VM boundary, which every frame would pay).
    pub fn on_request_body(
        &mut self,
        new: &[u8],
        held: usize,
        end_of_stream: bool,
        clock: impl Fn() -> u64,
    ) -> (Flow, Vec<Action<'static>>) {
        if self.refused {
            return (Flow::Pause, Vec::new());
        }
        if self.awaiting.is_none() {
            return self.inspect(Direction::Client, new, held, &clock);
        }
        self.held = held;
        self.read_first_message(new, end_of_stream, clock())
    }

    /// Reads `bytes`, the ones just come in `direction`, for the message rules; the host holds
    /// `held` bytes of that direction, these last.
    fn inspect(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        held: usize,
        clock: &dyn Fn() -> u64,
    ) -> (Flow, Vec<Action<'static>>) {
        let Some(inspection) = self.inspection.as_deref_mut() else { return (Flow::Continue, Vec::new()) };
        let Some(inspector) = inspection.inspector(direction).as_mut() else {
            return (Flow::Continue, Vec::new());
        };
        let now = if inspector.needs_time() { clock() } else { 0 };
        match inspector.feed(bytes, now) {
            Ok(Release::All) => (Flow::Continue, Vec::new()),
            Ok(Release::Replace(keep)) => {
                let replace = match direction {
                    Direction::Client => Action::ReplaceRequestBody { cut: held, keep },
                    Direction::Server => Action::ReplaceResponseBody { cut: held, keep },
                };
                (Flow::Continue, vec![replace])
            }
            Err(violation) => self.violated(direction, violation, clock()),
        }
    }

    /// A socket broke a message rule in `direction`: ended, counted and logged; under a
    /// shadow-mode policy only counted and logged, and that direction no longer read.
    fn violated(
        &mut self,
        direction: Direction,
        violation: Violation,
        now: u64,
    ) -> (Flow, Vec<Action<'static>>) {
        let Some(inspection) = self.inspection.as_deref_mut() else { return (Flow::Continue, Vec::new()) };
        let shadow = inspection.shadow;
        if shadow && violation == Violation::Compressed {
            // Shadow mode keeps the compression offer that enforcing would remove: a compressed
            // socket would not be one under enforcement, and its frames cannot be read.
            *inspection.inspector(direction) = None;
            return (Flow::Continue, Vec::new());
        }
        let line = || {
            let verb = if shadow { "would close (shadow)" } else { "closed" };
            format!(
                "{verb} socket that broke a message rule: rule={} direction={} {}",
                violation.as_str(),
                direction.as_str(),
                inspection.context
            )
        };
        let mut actions: Vec<Action<'static>> =
            self.logs.admit_with(line, now).map(|line| Action::Log(Level::Warn, line)).into_iter().collect();
        if shadow {
            *inspection.inspector(direction) = None;
            actions.push(Action::Count(Counter::ShadowMessageViolation(direction, violation), 1));
            return (Flow::Continue, actions);
        }
        self.inspection = None;
        self.refused = true;
        if self.closing {
            actions.push(self.close_at(None));
        }
        actions.push(Action::Note(Note::Close, format!("{}_{}", direction.as_str(), violation.as_str())));
        actions.push(Action::Count(Counter::MessageViolation(direction, violation), 1));
        // The upstream's bytes of this event, if they are what broke the rule, go no further:
        // the client is where the ones before left it.
        if self.close_frames && self.server.between_frames() {
            let reason = format!("wsgate: {}", violation.as_str());
            actions.push(Action::CloseFrame(close_frame(violation.close_code(), &reason)));
        }
        actions.push(Action::Reset);
        (Flow::Pause, actions)
    }

    /// Trailers end the client's stream (HTTP/2 and HTTP/3). While the socket waits, they would
    /// carry the held bytes on with them: the stream ends here, before its credential.
    pub fn on_request_trailers(&mut self, now: u64) -> (Flow, Vec<Action<'static>>) {
        if self.refused {
            return (Flow::Pause, Vec::new());
        }
        if self.awaiting.is_none() {
            return (Flow::Continue, Vec::new());
        }
        self.read_first_message(&[], true, now)
    }

    fn read_first_message(
        &mut self,
        bytes: &[u8],
        end_of_stream: bool,
        now: u64,
    ) -> (Flow, Vec<Action<'static>>) {
        let (Some(mut awaiting), Some(policy)) = (self.awaiting.take(), self.policy.clone()) else {
            return (Flow::Continue, Vec::new());
        };
        match policy.read_first_message(&mut awaiting, bytes, end_of_stream, now) {
            Step::Hold => {
                self.awaiting = Some(awaiting);
                (Flow::Pause, Vec::new())
            }
            Step::Release { cut, keep, close, identity } => {
                // Now that it has an identity, the socket counts under it too.
                match policy.take_places(
                    self.plan,
                    None,
                    identity.as_deref(),
                    self.places.as_deref(),
                    &|| now,
                ) {
                    Ok(taken) => self.taken.extend(taken),
                    Err(reason) => return (Flow::Pause, self.refuse_and_reset(&awaiting, reason, now)),
                }
                let held = std::mem::take(&mut self.held);
                let mut actions = vec![Action::Note(Note::Decision, "allowed".to_string())];
                actions.extend(
                    identity.map(|identity| Action::Note(Note::Identity, excerpt(identity.as_bytes()))),
                );
                if self.inspects(Direction::Client) {
                    // What goes on to the upstream is read for the message rules: the auth
                    // message too, when it is forwarded.
                    let upstream =
                        [keep.as_slice(), awaiting.reader.held().get(cut..).unwrap_or_default()].concat();
                    let (flow, inspected) = self.inspect(Direction::Client, &upstream, held, &|| now);
                    if flow == Flow::Pause {
                        // Admitted, then ended by a rule in the same read.
                        actions.push(Action::Count(Counter::Allowed, 1));
                        actions.extend(inspected);
                        return (flow, actions);
                    }
                    let replaced =
                        inspected.iter().any(|action| matches!(action, Action::ReplaceRequestBody { .. }));
                    if !replaced {
                        actions.push(Action::ReplaceRequestBody { cut: held, keep: upstream });
                    }
                    actions.extend(inspected);
                } else if cut > 0 {
                    actions.push(Action::ReplaceRequestBody { cut, keep });
                }
                actions.push(self.close_at(close));
                actions.push(Action::Count(Counter::Allowed, 1));
                if self.upstream_held {
                    self.upstream_held = false;
                    self.response_held = 0;
                    actions.push(Action::ResumeResponse);
                }
                (Flow::Continue, actions)
            }
            Step::Refuse(reason) => (Flow::Pause, self.refuse_and_reset(&awaiting, reason, now)),
        }
    }

    /// Whether the host must hand over the response headers: reading them costs a host call
    /// that most responses need not pay.
    pub fn wants_response_headers(&self) -> bool {
        self.plan.edits_response()
            || self.plan.may_close()
            || self.awaiting.is_some()
            || self.inspection.is_some()
    }

    /// The response headers arrived.
    pub fn on_response_headers(&mut self, response: &Response) -> Vec<Action<'_>> {
        if !response.opens_socket() {
            // No socket: the body that follows is no frames.
            self.inspection = None;
        }
        let mut actions = Vec::new();
        if self.awaiting.is_some() && !response.opens_socket() {
            // The upstream refused the upgrade: there is no socket to wait on.
            self.awaiting = None;
            actions.push(self.close_at(None));
        }
        if let Some(close) = self.plan.close_after(response) {
            actions.push(self.close_at(Some(close)));
        }
        let mut edits = respond(self.policy.as_deref(), self.plan, response);
        if !edits.is_empty() {
            actions.push(Action::Count(Counter::ResponseHeadersAdded, edits.len()));
        }
        edits.extend(self.policy.as_deref().and_then(|policy| policy.select_protocol(self.plan, response)));
        if !edits.is_empty() {
            actions.push(Action::EditResponse(edits));
        }
        actions
    }

    /// Whether the host must hand over the response body: while a socket waits for its first
    /// message, or was refused, or has message rules for the upstream, or may be closed with a
    /// close frame (whose place in the upstream's frames is then followed).
    pub fn wants_response_body(&self) -> bool {
        self.awaiting.is_some()
            || self.refused
            || self.inspects(Direction::Server)
            || (self.close_frames && (self.plan.may_close() || self.inspection.is_some()))
    }

    /// Whether [`Session::on_response_body`] reads the bytes themselves, not only how many: for
    /// the message rules, or to follow the frames for a close frame.
    pub fn reads_response_body(&self) -> bool {
        self.close_frames || self.inspects(Direction::Server)
    }

    /// How many bytes of the response body the host holds already: [`Session::on_response_body`]
    /// wants only the ones after these.
    pub fn response_body_held(&self) -> usize {
        self.response_held
    }

    /// The upstream's next bytes: `new` are the ones after [`Session::response_body_held`]
    /// (only where [`Session::reads_response_body`]; others take none), `held` how many the host
    /// holds now, these included. Read for the message rules; held while the socket waits for
    /// its first message, within the policy's bound.
    /// `clock` as for [`Session::on_request_body`].
    pub fn on_response_body(
        &mut self,
        new: &[u8],
        held: usize,
        clock: impl Fn() -> u64,
    ) -> (Flow, Vec<Action<'static>>) {
        if self.refused {
            return (Flow::Pause, Vec::new());
        }
        let (flow, mut actions) = self.inspect(Direction::Server, new, held, &clock);
        if flow == Flow::Pause {
            return (flow, actions);
        }
        if self.close_frames {
            // The client gets what the rules let go on now.
            let released = actions.iter().find_map(|action| match action {
                Action::ReplaceResponseBody { keep, .. } => Some(keep.as_slice()),
                _ => None,
            });
            self.server.feed(released.unwrap_or(new));
        }
        let Some(awaiting) = self.awaiting.take() else {
            self.response_held = 0;
            return (Flow::Continue, actions);
        };
        match awaiting.hold_upstream(held) {
            Ok(()) => {
                self.awaiting = Some(awaiting);
                self.upstream_held = true;
                self.response_held = held;
                (Flow::Pause, actions)
            }
            Err(reason) => {
                actions.extend(self.refuse_and_reset(&awaiting, reason, clock()));
                (Flow::Pause, actions)
            }
        }
    }

    /// The time set by [`Action::CloseAt`] has come: the host resets the stream, then counts
    /// and logs. A socket still waiting for its first message is refused instead, when the
    /// stream ends ([`Session::on_done`]).
    pub fn on_close_due(&mut self, reason: CloseReason, now: u64) -> Vec<Action<'static>> {
        self.closing = false;
        // While the socket waits, the upstream's bytes are held: the client has had none.
        let between_frames = self.awaiting.is_some() || self.server.between_frames();
        let mut actions: Vec<Action<'static>> =
            self.close_frame(reason.as_str()).filter(|_| between_frames).into_iter().collect();
        // What `closed` says goes first: its note must be on the stream before the reset logs it.
        let after = if self.awaiting.is_none() { closed(&self.logs, reason, now) } else { Vec::new() };
        let (notes, rest): (Vec<_>, Vec<_>) = after.into_iter().partition(|a| matches!(a, Action::Note(..)));
        actions.extend(notes);
        actions.push(Action::Reset);
        actions.extend(rest);
        actions
    }

    /// The stream ended. A socket still waiting was closed by its timer or left by its client.
    /// `clock` is asked only when a socket ends (most streams are ordinary requests).
    pub fn on_done(&mut self, clock: impl Fn() -> u64) -> Vec<Action<'static>> {
        if let Some(places) = &self.places {
            for key in std::mem::take(&mut self.taken) {
                places.give_back(&key, clock());
            }
        }
        let mut actions = Vec::new();
        if self.closing {
            actions.push(self.close_at(None));
        }
        if let Some(awaiting) = self.awaiting.take() {
            let now = clock();
            let reason = awaiting.abandoned(now);
            actions.extend(self.refuse(&awaiting, reason, now));
        }
        actions
    }

    fn close_at(&mut self, close: Option<Close>) -> Action<'static> {
        self.closing = close.is_some();
        match close {
            Some(close) => Action::CloseAt(close),
            None => Action::KeepOpen,
        }
    }

    /// Refuses a socket that waits for its first message, and resets it; the client, which has
    /// had nothing from the upstream yet, first gets a close frame if this session sends them.
    fn refuse_and_reset(
        &mut self,
        awaiting: &Awaiting,
        reason: DenyReason,
        now: u64,
    ) -> Vec<Action<'static>> {
        let mut actions = self.refuse(awaiting, reason, now);
        actions.extend(self.close_frame(reason.as_str()));
        actions.push(Action::Reset);
        actions
    }

    /// Counts and logs a socket refused after its handshake. The caller resets it.
    fn refuse(&mut self, awaiting: &Awaiting, reason: DenyReason, now: u64) -> Vec<Action<'static>> {
        self.refused = true;
        let mut actions = vec![
            self.close_at(None),
            Action::Note(Note::Decision, "denied".to_string()),
            Action::Note(Note::Reason, reason.as_str().to_string()),
        ];
        if let Some(line) = self.logs.admit_with(|| awaiting.log_line(reason), now) {
            actions.push(Action::Log(Level::Warn, line));
        }
        actions.push(Action::Count(Counter::Denied(reason), 1));
        actions
    }
}

/// What the access log gets of a decided request: the policy, the decision, why it was refused
/// and whom it admitted. Nothing for a request that is not decided (an ordinary one).
/// `name` and `identity` as [`Policy::describe`] gives them.
fn notes(name: Option<&str>, identity: Option<String>, verdict: &Verdict<'_>) -> Vec<Action<'static>> {
    let (decision, reason) = match verdict {
        Verdict::Pass(_) => return Vec::new(),
        Verdict::Admit(_) => ("allowed", None),
        Verdict::Await { .. } => ("awaiting_first_message", None),
        Verdict::Deny(denial) => ("denied", Some(denial.reason)),
        Verdict::ShadowAdmit(_) => ("shadow_allowed", None),
        Verdict::ShadowDeny(denial, _) => ("shadow_denied", Some(denial.reason)),
    };
    [
        name.map(|name| (Note::Policy, name.to_string())),
        Some((Note::Decision, decision.to_string())),
        reason.map(|reason| (Note::Reason, reason.as_str().to_string())),
        identity.map(|identity| (Note::Identity, excerpt(identity.as_bytes()))),
    ]
    .into_iter()
    .flatten()
    .map(|(note, value)| Action::Note(note, value))
    .collect()
}

/// What follows the reset of an admitted socket whose time came (`reason`) at `now`: for a host
/// that resets streams from its own timer, by their ids, without their sessions at hand.
pub fn closed(logs: &LogLimiter, reason: CloseReason, now: u64) -> Vec<Action<'static>> {
    let mut actions = Vec::new();
    let Some(counter) = Counter::for_close(reason) else { return actions };
    actions.push(Action::Note(Note::Close, reason.as_str().to_string()));
    if let Some(line) = logs.admit_with(|| format!("admitted socket closed: reason={}", reason.as_str()), now)
    {
        actions.push(Action::Log(Level::Warn, line));
    }
    actions.push(Action::Count(counter, 1));
    actions
}

/// Every worker thread of the native build shares one policy and one log limiter.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Policy>();
    shared::<LogLimiter>();
};
