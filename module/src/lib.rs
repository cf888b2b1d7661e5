//! wsgate as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`): the binding that
//! turns Envoy's calls into events of the core's [`Session`] and carries out the actions it
//! returns. The only file that names Envoy's C ABI; it decides nothing about policy.
//!
//! The ABI is Envoy's `abi.h` at the v1.40.0 tag (ABI version `v0.2.0`); only what wsgate uses
//! is declared, each symbol checked against the exports of Envoy 1.40's binary. A Rust cdylib is
//! linked with immediate binding, so an Envoy without one of these symbols refuses to load the
//! module at configuration time rather than failing later.
//!
//! Every entry point catches panics: a panic on a stream fails it closed (a 503 before the
//! request went on, a reset after), and Envoy keeps serving.
//!
//! Threads: the configuration ([`Gate`]) is created and destroyed on Envoy's main thread and
//! shared by every worker. Its policy (credential cache, key sets) and log limiter lock or use
//! atomics inside; the list of sockets to close is one mutex, held for an insert, a removal or
//! a scan of what is due. A timer thread of the module's own wakes the main thread for key set
//! fetches and each stream's worker for a socket whose time has come, through Envoy's
//! schedulers.

// Every `envoy_dynamic_module_on_*` is `unsafe`, with one contract: Envoy calls it as abi.h
// says, with the pointers it gave or was given, on the thread abi.h names.
#![allow(clippy::missing_safety_doc)]

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgate::headers::HeaderEdit;
use wsgate::limits::{MemoryStore, Places};
use wsgate::logs::LogLimiter;
use wsgate::session::{self, Action, Flow, Level, Loaded, Session};
use wsgate::sockets::{CloseReason, OpenSockets};
use wsgate::stats::Counter;
use wsgate::token::remote::MAX_BODY_BYTES;
use wsgate::{Policy, Request, RequestEdit, Response};

// ---- The ABI (abi.h, Envoy v1.40.0) -------------------------------------------------------

/// `envoy_dynamic_module_type_envoy_buffer` and `_module_buffer`: bytes and their length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf {
    pub ptr: *const u8,
    pub len: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header` and `_module_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    pub key: *const u8,
    pub key_len: usize,
    pub value: *const u8,
    pub value_len: usize,
}

const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

// `envoy_dynamic_module_type_http_header_type`.
const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
// `envoy_dynamic_module_type_http_body_type`.
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
const RECEIVED_RESPONSE_BODY: u32 = 2;
const BUFFERED_RESPONSE_BODY: u32 = 3;
// The statuses the hooks return: headers, body and trailers all have Continue = 0; headers and
// trailers StopIteration = 1, a body StopIterationAndBuffer = 1.
const CONTINUE: u32 = 0;
const STOP: u32 = 1;
// `envoy_dynamic_module_type_attribute_id`: ConnectionTlsVersion, set only on a TLS connection.
const ATTRIBUTE_TLS_VERSION: u32 = 31;
// SourceAddress: the downstream address (`ip:port`) as Envoy resolved it.
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
// `envoy_dynamic_module_type_log_level`.
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;
// `envoy_dynamic_module_type_http_callout_init_result` and `_http_callout_result`.
const CALLOUT_SUCCESS: u32 = 0;
// `envoy_dynamic_module_type_http_filter_stream_reset_reason`: LocalReset.
const LOCAL_RESET: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buf);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buf,
        label_names: *const Buf,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const Buf,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buf,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        kind: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        kind: u32,
        key: Buf,
        value: Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        kind: u32,
        key: Buf,
        value: Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *const Header,
        headers_len: usize,
        body: Buf,
        details: Buf,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(filter: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        kind: u32,
        out: *mut Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(filter: *mut c_void, kind: u32, bytes: usize) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(filter: *mut c_void, kind: u32, data: Buf) -> bool;
    // Declared without its result (in some versions a bool, in others none): either way the
    // three buffers are passed as (pointer, length) pairs, and nothing is read back.
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter: *mut c_void,
        namespace: Buf,
        key: Buf,
        value: Buf,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_send_response_data(
        filter: *mut c_void,
        data: Buf,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_http_filter_reset_stream(filter: *mut c_void, reason: u32, details: Buf);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: u32,
        out: *mut Buf,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        id_out: *mut u64,
        cluster: Buf,
        headers: *const Header,
        headers_len: usize,
        body: Buf,
        timeout_ms: u64,
    ) -> u32;
}

fn buf(bytes: &[u8]) -> Buf {
    Buf { ptr: bytes.as_ptr(), len: bytes.len() }
}

const EMPTY: Buf = Buf { ptr: std::ptr::null(), len: 0 };

/// The bytes of an Envoy buffer, valid for the hook that gave it.
///
/// # Safety
/// `buffer` must point at `len` readable bytes (or be null), alive while the slice is used.
unsafe fn bytes<'a>(buffer: Buf) -> &'a [u8] {
    match buffer.ptr.is_null() {
        true => &[],
        false => std::slice::from_raw_parts(buffer.ptr, buffer.len),
    }
}

fn header(name: &str, value: &[u8]) -> Header {
    Header { key: name.as_ptr(), key_len: name.len(), value: value.as_ptr(), value_len: value.len() }
}

fn log(level: Level, line: &str) {
    let level = match level {
        Level::Info => LOG_INFO,
        Level::Warn => LOG_WARN,
        Level::Error => LOG_ERROR,
    };
    let line = format!("wsgate: {line}");
    // SAFETY: the message is copied before the call returns.
    unsafe { envoy_dynamic_module_callback_log(level, buf(line.as_bytes())) }
}

fn now_ms() -> u64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    elapsed.as_secs().saturating_mul(1000).saturating_add(u64::from(elapsed.subsec_millis()))
}

// ---- The configuration, shared by every worker ---------------------------------------------

/// Envoy's pointer to something of its own, used only as the ABI allows from other threads.
#[derive(Clone, Copy)]
struct EnvoyPtr(*mut c_void);
// SAFETY: Envoy's schedulers may be committed from any thread; the configuration's pointer is
// only used on the main thread and the stream's on its worker.
unsafe impl Send for EnvoyPtr {}
unsafe impl Sync for EnvoyPtr {}

/// Sockets that must close at a set time, and the scheduler that wakes each one's worker.
#[derive(Default)]
struct Closing {
    sockets: OpenSockets,
    schedulers: HashMap<u32, EnvoyPtr>,
}

/// One per filter configuration.
struct Gate {
    envoy: EnvoyPtr,
    policy: Arc<Policy>,
    logs: Arc<LogLimiter>,
    /// Envoy's counter ids, in [`Counter::index`] order.
    counters: Vec<usize>,
    closing: Mutex<Closing>,
    next_stream: AtomicU32,
    /// Key set fetches under way (Envoy's callout id, the set's index): main thread only.
    fetches: Mutex<Vec<(u64, usize)>>,
    ticker: Mutex<Option<Ticker>>,
    /// Sockets under the policies' `limits`: one process, so one store and one share for every
    /// worker.
    places: Arc<Places>,
}

/// The module's timer thread, and Envoy's scheduler for the main thread.
struct Ticker {
    /// Dropped to stop the thread at once.
    stop: Sender<()>,
    thread: JoinHandle<()>,
    scheduler: EnvoyPtr,
}

/// The event that wakes the main thread for key set fetches.
const TICK: u64 = 0;

/// A close reason as a scheduler event, and back.
fn close_event(reason: CloseReason) -> u64 {
    match reason {
        CloseReason::Expired => 1,
        CloseReason::MaxAge => 2,
        CloseReason::FirstMessageTimeout => 3,
    }
}

fn close_reason(event: u64) -> Option<CloseReason> {
    match event {
        1 => Some(CloseReason::Expired),
        2 => Some(CloseReason::MaxAge),
        3 => Some(CloseReason::FirstMessageTimeout),
        _ => None,
    }
}

impl Gate {
    fn counter(&self, counter: Counter) -> Option<usize> {
        self.counters.get(counter.index()).copied().filter(|&id| id != 0)
    }

    /// Counts and logs on the main thread, with no stream at hand.
    fn count_and_log(&self, actions: Vec<Action<'_>>) {
        for action in actions {
            match action {
                Action::Count(counter, amount) => {
                    if let Some(id) = self.counter(counter) {
                        // SAFETY: the configuration's pointer, on the main thread.
                        unsafe {
                            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                                self.envoy.0,
                                id,
                                std::ptr::null(),
                                0,
                                amount as u64,
                            );
                        }
                    }
                }
                Action::Log(level, line) => log(level, &line),
                _ => {}
            }
        }
    }

    /// On the timer thread: wakes the main thread, and each stream whose socket is due.
    fn tick(&self, main: EnvoyPtr) {
        // SAFETY: a configuration scheduler may be committed from any thread until deleted,
        // which happens only after this thread has stopped.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(main.0, TICK) };
        let Ok(mut closing) = self.closing.lock() else { return };
        for (stream, reason) in closing.sockets.due(now_ms()) {
            if let Some(scheduler) = closing.schedulers.get(&stream) {
                // SAFETY: a stream's scheduler is deleted only under this lock, after it has
                // left the map.
                unsafe {
                    envoy_dynamic_module_callback_http_filter_scheduler_commit(
                        scheduler.0,
                        close_event(reason),
                    )
                };
            }
        }
    }

    /// On the main thread: the key set fetches that are due, and the count of log lines left
    /// out.
    fn on_tick(&self) {
        let now = now_ms();
        for (index, fetch) in session::fetches_due(&self.policy, now / 1000) {
            let headers: Vec<Header> =
                fetch.headers.iter().map(|(name, value)| header(name, value.as_bytes())).collect();
            let mut id = 0u64;
            let timeout = u64::try_from(fetch.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
            // SAFETY: the configuration's pointer, on the main thread; Envoy copies what it is
            // given before the call returns.
            let started = unsafe {
                envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.envoy.0,
                    &mut id,
                    buf(fetch.cluster.as_bytes()),
                    headers.as_ptr(),
                    headers.len(),
                    EMPTY,
                    timeout,
                )
            };
            match (started == CALLOUT_SUCCESS, self.fetches.lock()) {
                (true, Ok(mut fetches)) => fetches.push((id, index)),
                _ => self.count_and_log(session::keys_fetched(&self.policy, index, now / 1000, None, &[])),
            }
        }
        self.count_and_log(session::left_out_line(&self.logs, now).into_iter().collect());
    }

    fn stop_ticker(&self) {
        let Some(ticker) = self.ticker.lock().ok().and_then(|mut ticker| ticker.take()) else { return };
        drop(ticker.stop);
        let _ = ticker.thread.join();
        // SAFETY: the thread that committed to it has stopped.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(ticker.scheduler.0) };
    }
}

/// Starts the timer thread of a configuration.
fn start_ticker(gate: &Arc<Gate>) {
    // SAFETY: on the main thread, in `config_new`.
    let scheduler =
        EnvoyPtr(unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(gate.envoy.0) });
    let (stop, stopped) = mpsc::channel::<()>();
    let period = gate.policy.tick_period();
    let weak = Arc::downgrade(gate);
    let thread = std::thread::Builder::new().name("wsgate-timer".into()).spawn(move || loop {
        match stopped.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {
                let Some(gate) = weak.upgrade() else { return };
                let _ = catch_unwind(AssertUnwindSafe(|| gate.tick(scheduler)));
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    });
    match (thread, gate.ticker.lock()) {
        (Ok(thread), Ok(mut ticker)) => *ticker = Some(Ticker { stop, thread, scheduler }),
        _ => {
            log(
                Level::Error,
                "the timer thread could not start: no key set fetches, no socket closes at a set time",
            );
            // SAFETY: nothing else holds it.
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler.0) };
        }
    }
}

// ---- One stream ----------------------------------------------------------------------------

struct Filter {
    gate: Arc<Gate>,
    session: Session,
    /// This stream's key in the list of sockets to close.
    id: u32,
    /// Envoy's scheduler for this stream's worker, once a close time was set.
    scheduler: Option<EnvoyPtr>,
}

/// What a stream's actions need besides its session, which they may borrow from.
struct Carrier<'f> {
    gate: &'f Gate,
    id: u32,
    scheduler: &'f mut Option<EnvoyPtr>,
}

impl Filter {
    /// The session, and what carries out its actions.
    fn split(&mut self) -> (&mut Session, Carrier<'_>) {
        let Filter { gate, session, id, scheduler } = self;
        (session, Carrier { gate, id: *id, scheduler })
    }
}

impl Carrier<'_> {
    fn count(&self, envoy: *mut c_void, counter: Counter, amount: usize) {
        if let Some(id) = self.gate.counter(counter) {
            // SAFETY: the stream's pointer, in one of its hooks.
            unsafe {
                envoy_dynamic_module_callback_http_filter_increment_counter(
                    envoy,
                    id,
                    std::ptr::null(),
                    0,
                    amount as u64,
                );
            }
        }
    }

    /// Carries out the session's actions on stream `envoy`, in order.
    fn carry_out(&mut self, envoy: *mut c_void, actions: Vec<Action<'_>>) {
        for action in actions {
            match action {
                Action::EditRequest(edit) => edit_request(envoy, edit),
                Action::Reply(denial) => {
                    let headers: Vec<Header> =
                        denial.headers().iter().map(|(name, value)| header(name, value.as_bytes())).collect();
                    // SAFETY: the stream's pointer; Envoy copies the reply.
                    unsafe {
                        envoy_dynamic_module_callback_http_send_response(
                            envoy,
                            u32::from(denial.status),
                            headers.as_ptr(),
                            headers.len(),
                            buf(denial.body.as_bytes()),
                            buf(b"wsgate_refused"),
                        );
                    }
                }
                Action::EditResponse(edits) => {
                    for edit in edits {
                        let (name, value, add) = match edit {
                            HeaderEdit::Add(name, value) => (name, value, true),
                            HeaderEdit::Set(name, value) => (name, value, false),
                        };
                        let (name, value) = (buf(name.as_bytes()), buf(value.as_bytes()));
                        // SAFETY: the stream's pointer, in its response-header hook.
                        unsafe {
                            match add {
                                true => envoy_dynamic_module_callback_http_add_header(
                                    envoy,
                                    RESPONSE_HEADERS,
                                    name,
                                    value,
                                ),
                                false => envoy_dynamic_module_callback_http_set_header(
                                    envoy,
                                    RESPONSE_HEADERS,
                                    name,
                                    value,
                                ),
                            };
                        }
                    }
                }
                Action::ReplaceRequestBody { cut, keep } => {
                    replace_body(envoy, (BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY), cut, &keep)
                }
                Action::ReplaceResponseBody { cut, keep } => {
                    replace_body(envoy, (BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY), cut, &keep)
                }
                // SAFETY (the next two): the stream's pointer, on its worker.
                Action::ResumeResponse => unsafe {
                    envoy_dynamic_module_callback_http_filter_continue_encoding(envoy)
                },
                // SAFETY: the stream's pointer, on its worker; Envoy copies the bytes. Sent on the
                // upgraded stream as the upstream's bytes are (an HTTP/1.1 socket or an HTTP/2 stream).
                Action::CloseFrame(frame) => unsafe {
                    envoy_dynamic_module_callback_http_send_response_data(envoy, buf(&frame), false);
                },
                Action::Reset => unsafe {
                    envoy_dynamic_module_callback_http_filter_reset_stream(
                        envoy,
                        LOCAL_RESET,
                        buf(b"wsgate_closed"),
                    );
                },
                Action::Count(counter, amount) => self.count(envoy, counter, amount),
                Action::Log(level, line) => log(level, &line),
                Action::CloseAt(close) => {
                    let scheduler = *self.scheduler.get_or_insert_with(|| {
                        // SAFETY: the stream's pointer, on its worker.
                        EnvoyPtr(unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(envoy) })
                    });
                    if let Ok(mut closing) = self.gate.closing.lock() {
                        closing.sockets.admit(self.id, close);
                        closing.schedulers.insert(self.id, scheduler);
                    }
                }
                Action::KeepOpen => {
                    if let Ok(mut closing) = self.gate.closing.lock() {
                        closing.sockets.forget(self.id);
                    }
                }
                // SAFETY: the stream's pointer, on its worker; the buffers live across the call.
                Action::Note(note, value) => unsafe {
                    envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                        envoy,
                        buf(b"wsgate"),
                        buf(note.as_str().as_bytes()),
                        buf(value.as_bytes()),
                    );
                },
            }
        }
    }
}

fn edit_request(envoy: *mut c_void, edit: RequestEdit<'_>) {
    // SAFETY: the stream's pointer, in its request-header hook; Envoy copies names and values.
    // An empty value removes the header.
    unsafe {
        match edit {
            RequestEdit::Set(name, value) => {
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    REQUEST_HEADERS,
                    buf(name.as_bytes()),
                    buf(&value),
                );
            }
            RequestEdit::Remove(name) => {
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    REQUEST_HEADERS,
                    buf(name.as_bytes()),
                    EMPTY,
                );
            }
            RequestEdit::RemoveForged(name) => {
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    REQUEST_HEADERS,
                    buf(name.as_bytes()),
                    EMPTY,
                );
            }
            RequestEdit::Lines(name, lines) => {
                envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    REQUEST_HEADERS,
                    buf(name.as_bytes()),
                    EMPTY,
                );
                for line in lines {
                    envoy_dynamic_module_callback_http_add_header(
                        envoy,
                        REQUEST_HEADERS,
                        buf(name.as_bytes()),
                        buf(&line),
                    );
                }
            }
        }
    }
}

/// A string attribute of the stream (`envoy_dynamic_module_type_attribute_id`), copied.
fn attribute(envoy: *mut c_void, id: u32) -> Option<Vec<u8>> {
    let mut value = EMPTY;
    // SAFETY: the stream's pointer, in one of its hooks; Envoy's buffer is copied at once.
    unsafe {
        envoy_dynamic_module_callback_http_filter_get_attribute_string(envoy, id, &mut value)
            .then(|| bytes(value).to_vec())
    }
}

/// Every chunk of one body, copied.
fn body(envoy: *mut c_void, kind: u32) -> Vec<u8> {
    // SAFETY: the stream's pointer, in a body hook; the chunks are read before any change.
    unsafe {
        let count = envoy_dynamic_module_callback_http_get_body_chunks_size(envoy, kind);
        let mut chunks = vec![EMPTY; count];
        if count == 0 || !envoy_dynamic_module_callback_http_get_body_chunks(envoy, kind, chunks.as_mut_ptr())
        {
            return Vec::new();
        }
        chunks.iter().flat_map(|chunk| bytes(*chunk).iter().copied()).collect()
    }
}

fn body_size(envoy: *mut c_void, kind: u32) -> usize {
    // SAFETY: the stream's pointer, in a body hook.
    unsafe { envoy_dynamic_module_callback_http_get_body_size(envoy, kind) }
}

/// Replaces the first `cut` bytes of what is held of one direction's body (`buffered`, then
/// the chunk at hand, `received`) with `keep`. Envoy cannot prepend: everything is drained and
/// what goes on is appended to the chunk at hand, which Envoy sends on after the buffered body
/// (now empty).
fn replace_body(envoy: *mut c_void, (buffered, received): (u32, u32), cut: usize, keep: &[u8]) {
    let mut held = body(envoy, buffered);
    held.extend(body(envoy, received));
    let mut out = keep.to_vec();
    out.extend_from_slice(held.get(cut..).unwrap_or_default());
    // SAFETY: the stream's pointer, in that direction's body hook.
    unsafe {
        envoy_dynamic_module_callback_http_drain_body(envoy, buffered, usize::MAX);
        envoy_dynamic_module_callback_http_drain_body(envoy, received, usize::MAX);
        if !out.is_empty() {
            envoy_dynamic_module_callback_http_append_body(envoy, received, buf(&out));
        }
    }
}

fn status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => CONTINUE,
        Flow::Pause => STOP,
    }
}

/// The request headers, copied.
fn headers(envoy: *mut c_void, kind: u32) -> Vec<(String, Vec<u8>)> {
    // SAFETY: the stream's pointer, in a header hook; the entries are copied at once.
    unsafe {
        let count = envoy_dynamic_module_callback_http_get_headers_size(envoy, kind);
        let empty = Header { key: std::ptr::null(), key_len: 0, value: std::ptr::null(), value_len: 0 };
        let mut entries = vec![empty; count];
        if count == 0 || !envoy_dynamic_module_callback_http_get_headers(envoy, kind, entries.as_mut_ptr()) {
            return Vec::new();
        }
        entries
            .iter()
            .map(|entry| {
                let name = bytes(Buf { ptr: entry.key, len: entry.key_len });
                let value = bytes(Buf { ptr: entry.value, len: entry.value_len });
                (String::from_utf8_lossy(name).into_owned(), value.to_vec())
            })
            .collect()
    }
}

/// # Safety
/// `filter` is the pointer [`envoy_dynamic_module_on_http_filter_new`] returned, not destroyed.
unsafe fn filter<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
    (filter as *mut Filter).as_mut()
}

/// Runs a stream hook on its filter (none: the stream goes on untouched).
///
/// # Safety
/// `filter_ptr` is the pointer [`envoy_dynamic_module_on_http_filter_new`] returned, not
/// destroyed, and this is its worker thread.
unsafe fn on_stream(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    reply: bool,
    hook: impl FnOnce(&mut Filter) -> u32,
) -> u32 {
    guarded(envoy, reply, || match filter(filter_ptr) {
        Some(filter) => hook(filter),
        None => CONTINUE,
    })
}

/// Runs a stream hook; a panic resets the stream (or answers 503 if `reply` and nothing has
/// gone on yet) and stops it.
fn guarded(envoy: *mut c_void, reply: bool, hook: impl FnOnce() -> u32) -> u32 {
    match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(status) => status,
        Err(_) => {
            log(Level::Error, "a stream failed closed: the filter panicked");
            // SAFETY: the stream's pointer, in one of its hooks.
            unsafe {
                match reply {
                    true => envoy_dynamic_module_callback_http_send_response(
                        envoy,
                        503,
                        std::ptr::null(),
                        0,
                        buf(b"wsgate failed\n"),
                        buf(b"wsgate_failed"),
                    ),
                    false => envoy_dynamic_module_callback_http_filter_reset_stream(
                        envoy,
                        LOCAL_RESET,
                        buf(b"wsgate_failed"),
                    ),
                }
            }
            STOP
        }
    }
}

/// The test build's probe (`tests/crasher-module`, feature `panic-probe`, never in the shipped
/// module): panics on a request that asks for it.
#[cfg(feature = "panic-probe")]
#[allow(clippy::panic)]
fn panic_probe(request: &Request) {
    if request.values("x-wsgate-test-panic").next().is_some() {
        panic!("the test probe panicked on purpose");
    }
}

// ---- The events Envoy calls ----------------------------------------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    _name: Buf,
    config: Buf,
) -> *const c_void {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's buffer, alive for this call.
        let loaded = Loaded::from_json(unsafe { bytes(config) });
        for (level, line) in &loaded.lines {
            log(*level, line);
        }
        let define = |name: &str| {
            let mut id = 0usize;
            // SAFETY: the configuration's pointer, on the main thread, in `config_new`.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_define_counter(
                    config_envoy,
                    buf(name.as_bytes()),
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            };
            id
        };
        let Some(policy) = loaded.policy else {
            let id = define(Loaded::rejection_counter());
            // SAFETY: as above.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config_envoy,
                    id,
                    std::ptr::null(),
                    0,
                    1,
                )
            };
            return std::ptr::null();
        };
        let counters = policy.stat_names().iter().map(|name| define(name)).collect();
        let gate = Arc::new(Gate {
            envoy: EnvoyPtr(config_envoy),
            policy: Arc::new(policy),
            logs: Arc::default(),
            counters,
            closing: Mutex::default(),
            next_stream: AtomicU32::new(1),
            fetches: Mutex::default(),
            ticker: Mutex::default(),
            places: Arc::new(Places::new(Box::new(MemoryStore::default()), 0)),
        });
        gate.count_and_log(vec![Action::Count(Counter::ConfigLoads, 1)]);
        start_ticker(&gate);
        Box::into_raw(Box::new(gate)) as *const c_void
    }))
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer `config_new` returned, destroyed once.
        let gate = unsafe { Box::from_raw(config as *mut Arc<Gate>) };
        gate.stop_ticker();
    }));
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config: *const c_void,
    event: u64,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer `config_new` returned, alive until `config_destroy`.
        let Some(gate) = (unsafe { (config as *const Arc<Gate>).as_ref() }) else { return };
        if event == TICK {
            gate.on_tick();
        }
    }));
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config: *const c_void,
    callout: u64,
    result: u32,
    headers: *const Header,
    headers_len: usize,
    chunks: *const Buf,
    chunks_len: usize,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer `config_new` returned, alive until `config_destroy`.
        let Some(gate) = (unsafe { (config as *const Arc<Gate>).as_ref() }) else { return };
        let index = {
            let Ok(mut fetches) = gate.fetches.lock() else { return };
            let Some(place) = fetches.iter().position(|(id, _)| *id == callout) else { return };
            fetches.swap_remove(place).1
        };
        // SAFETY: Envoy's arrays, alive for this call.
        let (headers, chunks) = unsafe {
            (
                if headers.is_null() { &[][..] } else { std::slice::from_raw_parts(headers, headers_len) },
                if chunks.is_null() { &[][..] } else { std::slice::from_raw_parts(chunks, chunks_len) },
            )
        };
        // No :status means no answer: a reset, a timeout, no healthy host.
        let status = headers
            .iter()
            .find(|h| unsafe { bytes(Buf { ptr: h.key, len: h.key_len }) } == b":status")
            .and_then(|h| {
                std::str::from_utf8(unsafe { bytes(Buf { ptr: h.value, len: h.value_len }) })
                    .ok()?
                    .parse()
                    .ok()
            })
            .filter(|_| result == CALLOUT_SUCCESS);
        // One byte past the limit is enough for the core to refuse an oversized set.
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(unsafe { bytes(*chunk) });
            if body.len() > MAX_BODY_BYTES {
                break;
            }
        }
        body.truncate(MAX_BODY_BYTES + 1);
        gate.count_and_log(session::keys_fetched(&gate.policy, index, now_ms() / 1000, status, &body));
    }));
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: *mut c_void,
) -> *const c_void {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer `config_new` returned, alive until `config_destroy`.
        let Some(gate) = (unsafe { (config as *const Arc<Gate>).as_ref() }) else { return std::ptr::null() };
        let filter = Filter {
            gate: Arc::clone(gate),
            session: Session::new(Some(Arc::clone(&gate.policy)), Arc::clone(&gate.logs))
                .with_close_frames()
                .with_places(Arc::clone(&gate.places)),
            id: gate.next_stream.fetch_add(1, Ordering::Relaxed),
            scheduler: None,
        };
        Box::into_raw(Box::new(filter)) as *const c_void
    }))
    .unwrap_or(std::ptr::null())
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(envoy, filter_ptr, true, |filter| {
        let request = Request::new(headers(envoy, REQUEST_HEADERS));
        // Each only where the decision needs it: asking is a call into Envoy.
        let tls = filter.session.needs_transport(&request)
            && attribute(envoy, ATTRIBUTE_TLS_VERSION).is_some_and(|version| !version.is_empty());
        let request = request.with_tls(tls);
        let client =
            filter.session.needs_client(&request).then(|| attribute(envoy, ATTRIBUTE_SOURCE_ADDRESS));
        let client = client.flatten().map(|address| String::from_utf8_lossy(&address).into_owned());
        let request = request.with_client(client);
        #[cfg(feature = "panic-probe")]
        panic_probe(&request);
        let (session, mut carrier) = filter.split();
        let (flow, actions) = session.on_request_headers(&request, now_ms);
        carrier.carry_out(envoy, actions);
        status(flow)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    on_stream(envoy, filter_ptr, false, |filter| {
        if !filter.session.wants_request_body() {
            return status(filter.session.on_request_body(&[], 0, end_of_stream, || 0).0);
        }
        let new = body(envoy, RECEIVED_REQUEST_BODY);
        let held = body_size(envoy, BUFFERED_REQUEST_BODY) + new.len();
        let (flow, actions) = filter.session.on_request_body(&new, held, end_of_stream, now_ms);
        filter.split().1.carry_out(envoy, actions);
        status(flow)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
) -> u32 {
    on_stream(envoy, filter_ptr, false, |filter| {
        let (flow, actions) = filter.session.on_request_trailers(now_ms());
        filter.split().1.carry_out(envoy, actions);
        status(flow)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(envoy, filter_ptr, false, |filter| {
        if !filter.session.wants_response_headers() {
            return CONTINUE;
        }
        let response = Response::new(headers(envoy, RESPONSE_HEADERS));
        let (session, mut carrier) = filter.split();
        let actions = session.on_response_headers(&response);
        carrier.carry_out(envoy, actions);
        CONTINUE
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(envoy, filter_ptr, false, |filter| {
        if !filter.session.wants_response_body() {
            // Every frame from the upstream comes here: no host call unless a socket waits or
            // has rules for the upstream's messages.
            return status(filter.session.on_response_body(&[], 0, || 0).0);
        }
        let new = body(envoy, RECEIVED_RESPONSE_BODY);
        let held = body_size(envoy, BUFFERED_RESPONSE_BODY) + new.len();
        let (flow, actions) = filter.session.on_response_body(&new, held, now_ms);
        filter.split().1.carry_out(envoy, actions);
        status(flow)
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
) {
    on_stream(envoy, filter_ptr, false, |filter| {
        let actions = filter.session.on_done(now_ms);
        filter.split().1.carry_out(envoy, actions);
        CONTINUE
    });
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_ptr: *const c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer `filter_new` returned, destroyed once.
        let filter = unsafe { Box::from_raw(filter_ptr as *mut Filter) };
        let Filter { gate, id, scheduler, .. } = *filter;
        let Some(scheduler) = scheduler else { return };
        // A lock that cannot be had leaves the scheduler to leak rather than be deleted while
        // the timer thread may still commit to it.
        let Ok(mut closing) = gate.closing.lock() else { return };
        closing.sockets.forget(id);
        closing.schedulers.remove(&id);
        // SAFETY: no longer in the map, under its lock: the timer thread cannot commit to it
        // any more.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler.0) };
    }));
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: *mut c_void,
    filter_ptr: *const c_void,
    event: u64,
) {
    on_stream(envoy, filter_ptr, false, |filter| {
        if let Some(reason) = close_reason(event) {
            let actions = filter.session.on_close_due(reason, now_ms());
            filter.split().1.carry_out(envoy, actions);
        }
        CONTINUE
    });
}

// The rest of the required events: wsgate starts no per-stream callouts or streams and does
// not watch the client's write buffer.

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _callout: u64,
    _result: u32,
    _headers: *const Header,
    _headers_len: usize,
    _chunks: *const Buf,
    _chunks_len: usize,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream: u64,
    _headers: *const Header,
    _headers_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream: u64,
    _data: *const Buf,
    _data_len: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream: u64,
    _trailers: *const Header,
    _trailers_len: usize,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}
