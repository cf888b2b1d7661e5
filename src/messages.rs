//! Rules for the messages of an admitted socket (`messages`): frame and message sizes, message
//! and byte rates, the data message kinds, and what a text message must be as JSON. Each
//! direction of a socket has an [`Inspector`], fed the stream's bytes as they pass, in pieces of
//! any size; a socket that breaks a rule is ended ([`Violation`]).
//!
//! Every rule but the JSON one is decided on a frame's header, before its payload goes on. A
//! text message under the JSON rule is held (in the inspector, not in Envoy's buffer) from its
//! first byte until it is whole and checked, so the upstream never gets the last frame of a
//! message that breaks the rule; bytes before it go on at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::config::{JsonRuleConfig, MessageRulesConfig, MessagesConfig, Opcode};
use crate::error::ConfigError;
use crate::frames::Pointer;
use crate::token::jwt::unique_object;

/// The longest JSON `max_bytes`: Envoy's default per-stream buffer limit (1 MiB).
const MAX_JSON_BYTES: usize = 1_048_576;
/// How many bytes of frame headers and control frames a held message may carry beyond its
/// payload: a thousand fragments or pings.
const HELD_BEYOND_JSON: usize = 16_384;
/// The deepest JSON `max_depth`: `serde_json`'s own recursion limit.
const MAX_JSON_DEPTH: usize = 128;

/// Which way a socket's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the upstream: masked frames (RFC 6455 section 5.3).
    Client,
    /// From the upstream to the client: unmasked frames.
    Server,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Client, Direction::Server];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Client => "client",
            Direction::Server => "server",
        }
    }
}

/// Which rule a socket broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A frame longer than `max_frame_bytes`.
    FrameTooLarge,
    /// A message longer than `max_message_bytes`, its fragments together.
    MessageTooLarge,
    /// More messages than `messages_per_second` and `message_burst` allow.
    MessageRate,
    /// More payload bytes than `bytes_per_second` and `byte_burst` allow.
    ByteRate,
    /// A data message of a kind that `opcodes` does not list.
    Opcode,
    /// A text message that is not a JSON object with an allowed string at the pointer, or is
    /// deeper or longer than the rule reads.
    Json,
    /// A frame with the compression bit (RSV1) set: no extension was agreed.
    Compressed,
    /// A message under the JSON rule that the policy's sockets cannot hold: together they hold
    /// [`MAX_HELD_BYTES`] already.
    HeldBytes,
    /// Frames that break RFC 6455: a mask where none belongs or none where one does, another
    /// reserved bit, an undefined opcode, a control frame fragmented or too long, a
    /// continuation outside a message or a new message inside one.
    Protocol,
}

impl Violation {
    pub const ALL: [Violation; 9] = [
        Violation::FrameTooLarge,
        Violation::MessageTooLarge,
        Violation::MessageRate,
        Violation::ByteRate,
        Violation::Opcode,
        Violation::Json,
        Violation::Compressed,
        Violation::HeldBytes,
        Violation::Protocol,
    ];

    /// The word for it in logs, counters and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::FrameTooLarge => "frame_too_large",
            Violation::MessageTooLarge => "message_too_large",
            Violation::MessageRate => "message_rate",
            Violation::ByteRate => "byte_rate",
            Violation::Opcode => "opcode",
            Violation::Json => "json",
            Violation::Compressed => "compressed",
            Violation::HeldBytes => "held_bytes",
            Violation::Protocol => "protocol",
        }
    }

    /// The close code the client gets, where the build sends one (RFC 6455 section 7.4.1): 1009
    /// for a message too big, 1002 for a protocol error, 1013 (try again later) when wsgate
    /// holds too much, 1008 for any other rule.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooLarge | Violation::MessageTooLarge => 1009,
            Violation::Compressed | Violation::Protocol => 1002,
            Violation::HeldBytes => 1013,
            _ => 1008,
        }
    }
}

/// A policy's compiled `messages`.
#[derive(Clone, Debug)]
pub struct MessageRules {
    client: Option<Arc<DirectionRules>>,
    server: Option<Arc<DirectionRules>>,
    /// The bytes its sockets hold for the JSON rule, together.
    held: Arc<HeldBytes>,
}

/// The most bytes the sockets of one policy hold for the JSON rule at once, in one VM (the wasm
/// build) or one configuration (the native build): beyond it, a socket that would hold more is
/// ended (`held_bytes`), so that slow clients cannot fill the VM's memory.
pub const MAX_HELD_BYTES: usize = 32 * 1024 * 1024;

/// The bytes held by every inspector of a policy.
#[derive(Debug)]
struct HeldBytes {
    held: AtomicUsize,
    max: usize,
}

impl HeldBytes {
    /// Changes one inspector's part from `from` to `to` bytes; false (and no change) if that
    /// would go over the bound.
    fn change(&self, from: usize, to: usize) -> bool {
        if to <= from {
            self.held.fetch_sub(from - to, Ordering::Relaxed);
            return true;
        }
        let more = to - from;
        let before = self.held.fetch_add(more, Ordering::Relaxed);
        if before.saturating_add(more) > self.max {
            self.held.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The rules of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DirectionRules {
    max_frame_bytes: u64,
    max_message_bytes: u64,
    /// (per second, burst)
    messages: Option<(u64, u64)>,
    bytes: Option<(u64, u64)>,
    text: bool,
    binary: bool,
    json: Option<JsonRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct JsonRule {
    pointer: Pointer,
    /// The pointer as configured, for the summary.
    pointer_text: String,
    one_of: Vec<String>,
    max_depth: usize,
    max_bytes: usize,
}

impl MessageRules {
    /// Compiles `messages` (`field` names it in errors).
    pub fn compile(config: &MessagesConfig, field: &str) -> Result<MessageRules, ConfigError> {
        if config.client.is_none() && config.server.is_none() {
            return Err(ConfigError::new(field, "sets no rule: give \"client\", \"server\" or both"));
        }
        let compile = |rules: &Option<MessageRulesConfig>, direction: Direction| {
            let field = format!("{field}.{}", direction.as_str());
            rules.as_ref().map(|rules| DirectionRules::compile(rules, &field).map(Arc::new))
        };
        Ok(MessageRules {
            client: compile(&config.client, Direction::Client).transpose()?,
            server: compile(&config.server, Direction::Server).transpose()?,
            held: Arc::new(HeldBytes { held: AtomicUsize::new(0), max: MAX_HELD_BYTES }),
        })
    }

    /// Whether the upstream's messages have a JSON rule: those are held, which the upstream's
    /// bytes held for a first-message credential cannot be.
    pub fn checks_server_json(&self) -> bool {
        self.server.as_ref().is_some_and(|rules| rules.json.is_some())
    }

    /// Whether there are rules for `direction`.
    pub fn has(&self, direction: Direction) -> bool {
        self.rules(direction).is_some()
    }

    fn rules(&self, direction: Direction) -> Option<&Arc<DirectionRules>> {
        match direction {
            Direction::Client => self.client.as_ref(),
            Direction::Server => self.server.as_ref(),
        }
    }

    /// What each direction's rules are, for the load log and `wsgate-check`:
    /// `client(max_message_bytes=4096 messages=20/s burst 40 opcodes=text json=/type in ["join","say"] depth<=16 bytes<=65536)`.
    pub fn summary(&self) -> String {
        let sides: Vec<String> = Direction::ALL
            .into_iter()
            .filter_map(|direction| {
                Some(format!("{}({})", direction.as_str(), self.rules(direction)?.summary()))
            })
            .collect();
        sides.join(" ")
    }
}

impl DirectionRules {
    fn compile(config: &MessageRulesConfig, field: &str) -> Result<DirectionRules, ConfigError> {
        let positive = |value: Option<u64>, key: &str| -> Result<Option<u64>, ConfigError> {
            match value {
                Some(0) => {
                    Err(ConfigError::new(format!("{field}.{key}"), "is 0; give at least 1, or leave it out"))
                }
                other => Ok(other),
            }
        };
        let max_frame_bytes = positive(config.max_frame_bytes, "max_frame_bytes")?;
        let max_message_bytes = positive(config.max_message_bytes, "max_message_bytes")?;
        let rate = |rate: Option<u64>, burst: Option<u64>, (rate_key, burst_key): (&str, &str)| {
            let rate = positive(rate, rate_key)?;
            let burst = positive(burst, burst_key)?;
            match (rate, burst) {
                (Some(rate), burst) => Ok(Some((rate, burst.unwrap_or(rate)))),
                (None, Some(_)) => {
                    Err(ConfigError::new(format!("{field}.{burst_key}"), format!("needs {rate_key}")))
                }
                (None, None) => Ok(None),
            }
        };
        let messages =
            rate(config.messages_per_second, config.message_burst, ("messages_per_second", "message_burst"))?;
        let bytes = rate(config.bytes_per_second, config.byte_burst, ("bytes_per_second", "byte_burst"))?;
        let (text, binary) = match &config.opcodes {
            None => (true, true),
            Some(opcodes) if opcodes.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.opcodes"),
                    "is empty; list \"text\", \"binary\" or both",
                ))
            }
            Some(opcodes) => (opcodes.contains(&Opcode::Text), opcodes.contains(&Opcode::Binary)),
        };
        let json =
            config.json.as_ref().map(|json| JsonRule::compile(json, &format!("{field}.json"))).transpose()?;
        if json.is_some() && !text {
            return Err(ConfigError::new(
                format!("{field}.json"),
                "checks text messages, which opcodes does not allow",
            ));
        }
        let rules = DirectionRules {
            max_frame_bytes: max_frame_bytes.unwrap_or(u64::MAX),
            max_message_bytes: max_message_bytes.unwrap_or(u64::MAX),
            messages,
            bytes,
            text,
            binary,
            json,
        };
        let unset = DirectionRules {
            max_frame_bytes: u64::MAX,
            max_message_bytes: u64::MAX,
            messages: None,
            bytes: None,
            text: true,
            binary: true,
            json: None,
        };
        if rules == unset {
            return Err(ConfigError::new(field, "sets no rule"));
        }
        Ok(rules)
    }
}

impl DirectionRules {
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.max_frame_bytes < u64::MAX {
            parts.push(format!("max_frame_bytes={}", self.max_frame_bytes));
        }
        if self.max_message_bytes < u64::MAX {
            parts.push(format!("max_message_bytes={}", self.max_message_bytes));
        }
        if let Some((rate, burst)) = self.messages {
            parts.push(format!("messages={rate}/s burst {burst}"));
        }
        if let Some((rate, burst)) = self.bytes {
            parts.push(format!("bytes={rate}/s burst {burst}"));
        }
        if !(self.text && self.binary) {
            parts.push(format!("opcodes={}", if self.text { "text" } else { "binary" }));
        }
        if let Some(json) = &self.json {
            parts.push(format!(
                "json={} in {:?} depth<={} bytes<={}",
                json.pointer_text, json.one_of, json.max_depth, json.max_bytes
            ));
        }
        parts.join(" ")
    }
}

impl JsonRule {
    fn compile(config: &JsonRuleConfig, field: &str) -> Result<JsonRule, ConfigError> {
        let pointer = Pointer::parse(&config.pointer).ok_or_else(|| {
            let problem =
                format!("{:?} is not a JSON Pointer to a member of ASCII names (\"/type\")", config.pointer);
            ConfigError::new(format!("{field}.pointer"), problem)
        })?;
        if config.one_of.is_empty() {
            return Err(ConfigError::new(format!("{field}.one_of"), "is empty; list the strings allowed"));
        }
        if !(1..=MAX_JSON_DEPTH).contains(&config.max_depth) {
            let problem = format!("{} is not between 1 and {MAX_JSON_DEPTH}", config.max_depth);
            return Err(ConfigError::new(format!("{field}.max_depth"), problem));
        }
        if !(2..=MAX_JSON_BYTES).contains(&config.max_bytes) {
            let problem = format!("{} is not between 2 and {MAX_JSON_BYTES}", config.max_bytes);
            return Err(ConfigError::new(format!("{field}.max_bytes"), problem));
        }
        Ok(JsonRule {
            pointer,
            pointer_text: config.pointer.clone(),
            one_of: config.one_of.clone(),
            max_depth: config.max_depth,
            max_bytes: config.max_bytes,
        })
    }

    /// Whether a whole text message keeps the rule: UTF-8, a JSON object with no member name
    /// twice (nor, along the pointer, in another case), no deeper than `max_depth`, and one of
    /// the listed strings at the pointer.
    fn allows(&self, payload: &[u8]) -> bool {
        if std::str::from_utf8(payload).is_err() {
            return false;
        }
        let Some(object) = unique_object(payload) else { return false };
        let value = Value::Object(object);
        if depth(&value) > self.max_depth || self.pointer.has_case_variant(&value) {
            return false;
        }
        matches!(self.pointer.find(&value), Some(Value::String(found)) if self.one_of.iter().any(|allowed| allowed == found))
    }
}

/// How deeply arrays and objects nest in `value` (a scalar is 0), without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, at)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        deepest = deepest.max(at + 1);
        stack.extend(children.map(|child| (child, at + 1)));
    }
    deepest
}

/// A token bucket: `rate` a second, at most `burst` at once; starts full. In thousandths, so
/// that a millisecond refills a part of a token.
#[derive(Clone, Debug)]
struct Bucket {
    rate: u64,
    burst: u64,
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    fn new((rate, burst): (u64, u64), now_ms: u64) -> Bucket {
        Bucket { rate, burst, milli: burst.saturating_mul(1000), at_ms: now_ms }
    }

    /// Takes `cost` tokens at `now_ms`, if there are that many.
    fn take(&mut self, cost: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let full = self.burst.saturating_mul(1000);
        self.milli = self.milli.saturating_add(elapsed.saturating_mul(self.rate)).min(full);
        let needed = cost.saturating_mul(1000);
        let enough = self.milli >= needed && needed <= full;
        if enough {
            self.milli -= needed;
        }
        enough
    }
}

/// The reading of one admitted socket's messages: an inspector for each direction with rules.
#[derive(Debug)]
pub struct Inspection {
    pub client: Option<Inspector>,
    pub server: Option<Inspector>,
    /// A shadow-mode policy reports a broken rule and ends nothing.
    pub shadow: bool,
    /// The policy, the request's details and the verified identity, for the log line.
    pub context: String,
}

impl Inspection {
    pub fn inspector(&mut self, direction: Direction) -> &mut Option<Inspector> {
        match direction {
            Direction::Client => &mut self.client,
            Direction::Server => &mut self.server,
        }
    }
}

/// What the host does with the bytes it holds after [`Inspector::feed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Let them go on as they are.
    All,
    /// Replace them with these bytes and let those go on: bytes held back from earlier come
    /// first, and the start of a message under the JSON rule stays in the inspector.
    Replace(Vec<u8>),
}

/// The current frame, once its header is read.
#[derive(Clone, Debug)]
struct Frame {
    fin: bool,
    /// A data frame (text, binary or continuation), not a control frame.
    data: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far, and still to come.
    read: u64,
    remaining: u64,
}

/// One direction of one socket: reads its frames as they pass and says whether they keep the
/// rules.
#[derive(Debug)]
pub struct Inspector {
    rules: Arc<DirectionRules>,
    direction: Direction,
    /// Whether a message under the JSON rule is held until it is checked (not in shadow mode,
    /// which changes nothing the upstream sees).
    hold: bool,
    /// The current frame's header while it is incomplete (at most 14 bytes).
    header: Vec<u8>,
    frame: Option<Frame>,
    /// Within a data message: whether it is text, and its payload bytes so far.
    message: Option<(bool, u64)>,
    /// The payload of a text message under the JSON rule, unmasked, until it is whole.
    json: Option<Vec<u8>>,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Bytes held back: from the start of the message under the JSON rule.
    carry: Vec<u8>,
    /// What the policy's sockets hold together, and this inspector's part of it.
    budget: Arc<HeldBytes>,
    accounted: usize,
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.budget.change(self.accounted, 0);
    }
}

impl Inspector {
    /// An inspector for `direction` of a socket opened at `now_ms`, if the rules have that
    /// direction. `hold`: whether messages under the JSON rule are held until checked.
    pub fn new(rules: &MessageRules, direction: Direction, hold: bool, now_ms: u64) -> Option<Inspector> {
        let own = rules.rules(direction)?;
        Some(Inspector {
            messages: own.messages.map(|rate| Bucket::new(rate, now_ms)),
            bytes: own.bytes.map(|rate| Bucket::new(rate, now_ms)),
            rules: Arc::clone(own),
            direction,
            hold,
            header: Vec::with_capacity(14),
            frame: None,
            message: None,
            json: None,
            carry: Vec::new(),
            budget: Arc::clone(&rules.held),
            accounted: 0,
        })
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether [`Inspector::feed`] reads its time: only for the rates.
    pub fn needs_time(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// Takes the next bytes that the host holds, at `now_ms`: what to let go on, or the rule
    /// the socket broke (the host then ends it; nothing of these bytes goes on).
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64) -> Result<Release, Violation> {
        let release = self.read(bytes, now_ms)?;
        // What this socket holds now counts against what the policy's sockets may hold.
        let holds = self.carry.len() + self.json.as_ref().map_or(0, Vec::len);
        // Most reads hold nothing before or after: no shared count to touch then.
        if holds != self.accounted && !self.budget.change(self.accounted, holds) {
            return Err(Violation::HeldBytes);
        }
        self.accounted = holds;
        Ok(release)
    }

    fn read(&mut self, bytes: &[u8], now_ms: u64) -> Result<Release, Violation> {
        let carried = self.carry.len();
        // Where, in the carried bytes then `bytes`, the bytes still held start.
        let mut held_from = (carried > 0).then_some(0);
        let mut at = 0;
        while at < bytes.len() {
            let rest = bytes.get(at..).unwrap_or_default();
            match &mut self.frame {
                None => {
                    // A text message under the JSON rule is held from its first byte.
                    let text = rest.first().is_some_and(|byte| byte & 0x0f == 0x1);
                    if self.header.is_empty() && text && self.message.is_none() && self.holds_json() {
                        held_from.get_or_insert(carried + at);
                    }
                    let (taken, held) = self.read_header(rest, now_ms)?;
                    if held {
                        held_from.get_or_insert(carried + at);
                    }
                    at += taken;
                }
                Some(frame) => {
                    let take = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(rest.len());
                    let payload = rest.get(..take).unwrap_or_default();
                    if let (Some(json), true) = (&mut self.json, frame.data) {
                        // The mask key goes on where the frame's payload so far left it.
                        let offset = (frame.read % 4) as usize;
                        match frame.mask {
                            Some(mask) => json.extend(
                                payload
                                    .iter()
                                    .zip(mask.iter().cycle().skip(offset))
                                    .map(|(byte, key)| byte ^ key),
                            ),
                            None => json.extend_from_slice(payload),
                        }
                    }
                    frame.read += take as u64;
                    frame.remaining -= take as u64;
                    at += take;
                }
            }
            // A message under the JSON rule that is whole and kept the rule goes on.
            if self.frame.as_ref().is_some_and(|frame| frame.remaining == 0) && self.end_frame()? {
                held_from = None;
            }
        }
        match (held_from, carried) {
            (None, 0) => Ok(Release::All),
            (None, _) => {
                let mut out = std::mem::take(&mut self.carry);
                out.extend_from_slice(bytes);
                Ok(Release::Replace(out))
            }
            (Some(from), _) => {
                self.carry.extend_from_slice(bytes);
                // What goes on is taken from the front; the held message stays where it is,
                // so that a message held over many reads is copied once, not once per read.
                let out: Vec<u8> = self.carry.drain(..from.min(self.carry.len())).collect();
                // The payload is bounded by the rule's `max_bytes`; what else is held (frame
                // headers, pings between fragments) by this much more.
                let bound = self
                    .rules
                    .json
                    .as_ref()
                    .map_or(0, |json| json.max_bytes)
                    .saturating_add(HELD_BEYOND_JSON);
                if self.carry.len() > bound {
                    return Err(Violation::Json);
                }
                Ok(Release::Replace(out))
            }
        }
    }

    /// Whether text messages are held until the JSON rule has checked them.
    fn holds_json(&self) -> bool {
        self.hold && self.rules.json.is_some()
    }

    /// Reads header bytes from `bytes`; once the header is whole, checks it and starts the
    /// frame. Returns how many bytes it took, and whether the frame starts a text message under
    /// the JSON rule that is to be held.
    fn read_header(&mut self, bytes: &[u8], now_ms: u64) -> Result<(usize, bool), Violation> {
        let mut taken = 0;
        for &byte in bytes {
            self.header.push(byte);
            taken += 1;
            if let Some(frame) = self.parse_header()? {
                self.header.clear();
                let starts = frame.0 == 0x1 && self.message.is_none();
                self.start_frame(frame, now_ms)?;
                return Ok((taken, starts && self.holds_json()));
            }
        }
        Ok((taken, false))
    }

    /// The frame whose header is `self.header`, once it is whole.
    fn parse_header(&self) -> Result<Option<(u8, Frame)>, Violation> {
        let (Some(&first), Some(&second)) = (self.header.first(), self.header.get(1)) else {
            return Ok(None);
        };
        let masked = second & 0x80 != 0;
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let length = 2 + extended + if masked { 4 } else { 0 };
        if self.header.len() < length {
            return Ok(None);
        }
        if first & 0x40 != 0 {
            return Err(Violation::Compressed);
        }
        if first & 0x30 != 0 || masked != (self.direction == Direction::Client) {
            return Err(Violation::Protocol);
        }
        let payload = match extended {
            0 => u64::from(second & 0x7f),
            _ => self
                .header
                .get(2..2 + extended)
                .unwrap_or_default()
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b)),
        };
        if payload >> 63 != 0 {
            return Err(Violation::Protocol);
        }
        let mask = masked
            .then(|| self.header.get(2 + extended..length).and_then(|key| <[u8; 4]>::try_from(key).ok()))
            .flatten();
        let opcode = first & 0x0f;
        let frame = Frame { fin: first & 0x80 != 0, data: opcode < 0x8, mask, read: 0, remaining: payload };
        Ok(Some((opcode, frame)))
    }

    /// Checks a frame whose header is whole against the rules, and makes it the current one.
    fn start_frame(&mut self, (opcode, frame): (u8, Frame), now_ms: u64) -> Result<(), Violation> {
        let rules: &DirectionRules = &self.rules;
        match (opcode, self.message) {
            (0x8..=0xA, _) if !frame.fin || frame.remaining > 125 => return Err(Violation::Protocol),
            (0x8..=0xA, _) => {}
            (0x0, None) | (0x1 | 0x2, Some(_)) => return Err(Violation::Protocol),
            (0x0, Some(_)) => {}
            (0x1 | 0x2, None) => {
                let text = opcode == 0x1;
                if !(if text { rules.text } else { rules.binary }) {
                    return Err(Violation::Opcode);
                }
                if let Some(bucket) = &mut self.messages {
                    if !bucket.take(1, now_ms) {
                        return Err(Violation::MessageRate);
                    }
                }
                self.message = Some((text, 0));
                self.json = (text && rules.json.is_some()).then(Vec::new);
            }
            _ => return Err(Violation::Protocol),
        }
        if frame.data {
            if frame.remaining > rules.max_frame_bytes {
                return Err(Violation::FrameTooLarge);
            }
            let Some((text, so_far)) = self.message else { return Err(Violation::Protocol) };
            let total = so_far.saturating_add(frame.remaining);
            if total > rules.max_message_bytes {
                return Err(Violation::MessageTooLarge);
            }
            if let Some(bucket) = &mut self.bytes {
                if !bucket.take(frame.remaining, now_ms) {
                    return Err(Violation::ByteRate);
                }
            }
            if self.json.is_some() && rules.json.as_ref().is_some_and(|json| total > json.max_bytes as u64) {
                return Err(Violation::Json);
            }
            self.message = Some((text, total));
        }
        self.frame = Some(frame);
        Ok(())
    }

    /// The current frame's payload has all passed. Returns whether that completed a message
    /// under the JSON rule, which kept it.
    fn end_frame(&mut self) -> Result<bool, Violation> {
        let Some(frame) = self.frame.take() else { return Ok(false) };
        if !(frame.data && frame.fin) {
            return Ok(false);
        }
        self.message = None;
        let Some(payload) = self.json.take() else { return Ok(false) };
        match self.rules.json.as_ref().is_some_and(|rule| rule.allows(&payload)) {
            true => Ok(true),
            false => Err(Violation::Json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const MORE: u8 = 0x0;
    const PING: u8 = 0x9;

    /// A frame the way `direction` sends it: masked from the client, not from the server.
    fn frame(direction: Direction, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let masked = if direction == Direction::Client { 0x80 } else { 0 };
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(masked | n as u8),
            n if n <= 0xFFFF => {
                out.push(masked | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(masked | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match direction {
            Direction::Client => {
                out.extend_from_slice(&MASK);
                out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
            }
            Direction::Server => out.extend_from_slice(payload),
        }
        out
    }

    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(Direction::Client, fin, opcode, payload)
    }

    fn rules(client: serde_json::Value) -> MessageRules {
        let config: MessagesConfig =
            serde_json::from_value(json!({"client": client.clone(), "server": client})).unwrap();
        MessageRules::compile(&config, "messages").unwrap()
    }

    fn inspector(rules: &MessageRules, direction: Direction) -> Inspector {
        Inspector::new(rules, direction, true, 0).unwrap()
    }

    /// Feeds `bytes` in pieces of `piece` bytes at time 0; returns what went on, or the rule
    /// broken.
    fn pass(inspector: &mut Inspector, bytes: &[u8], piece: usize) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            match inspector.feed(chunk, 0)? {
                Release::All => out.extend_from_slice(chunk),
                Release::Replace(bytes) => out.extend(bytes),
            }
        }
        Ok(out)
    }

    fn chat() -> MessageRules {
        rules(json!({"json": {"pointer": "/type", "one_of": ["join", "say"]}, "max_message_bytes": 4096}))
    }

    #[test]
    fn a_frame_longer_than_the_limit_breaks_the_rule_on_its_header_alone() {
        let rules = rules(json!({"max_frame_bytes": 10}));
        let mut at_the_limit = inspector(&rules, Direction::Client);
        assert!(pass(&mut at_the_limit, &client(true, BINARY, &[0; 10]), 64).is_ok());
        let header = client(true, BINARY, &[0; 11]);
        let mut over = inspector(&rules, Direction::Client);
        assert_eq!(over.feed(header.get(..6).unwrap(), 0), Err(Violation::FrameTooLarge));
    }

    #[test]
    fn a_message_is_measured_with_its_fragments_together() {
        let rules = rules(json!({"max_message_bytes": 10}));
        let fragments = [client(false, TEXT, b"hello"), client(true, MORE, b"world")].concat();
        assert!(pass(&mut inspector(&rules, Direction::Client), &fragments, 3).is_ok());
        let longer = [client(false, TEXT, b"hello"), client(true, MORE, b"world!")].concat();
        assert_eq!(
            pass(&mut inspector(&rules, Direction::Client), &longer, 3),
            Err(Violation::MessageTooLarge)
        );
    }

    #[test]
    fn messages_beyond_the_burst_break_the_rate_and_time_refills_it() {
        let rules = rules(json!({"messages_per_second": 2, "message_burst": 3}));
        let mut socket = inspector(&rules, Direction::Client);
        let message = client(true, TEXT, b"hi");
        for _ in 0..3 {
            assert_eq!(socket.feed(&message, 0), Ok(Release::All));
        }
        assert_eq!(socket.feed(&message, 0), Err(Violation::MessageRate));
        let mut later = inspector(&rules, Direction::Client);
        for at in [0, 0, 0, 500, 1000] {
            assert_eq!(later.feed(&message, at), Ok(Release::All), "at {at} ms");
        }
        assert_eq!(later.feed(&message, 1000), Err(Violation::MessageRate));
    }

    #[test]
    fn pings_and_fragments_do_not_count_as_messages() {
        let rules = rules(json!({"messages_per_second": 1}));
        let mut socket = inspector(&rules, Direction::Client);
        let stream = [
            client(true, PING, b""),
            client(false, TEXT, b"a"),
            client(true, PING, b""),
            client(true, MORE, b"b"),
        ]
        .concat();
        assert!(pass(&mut socket, &stream, 1).is_ok());
        assert_eq!(socket.feed(&client(true, TEXT, b"c"), 0), Err(Violation::MessageRate));
    }

    #[test]
    fn payload_bytes_beyond_the_burst_break_the_byte_rate() {
        let rules = rules(json!({"bytes_per_second": 100, "byte_burst": 150}));
        let mut socket = inspector(&rules, Direction::Client);
        assert!(pass(&mut socket, &client(true, BINARY, &[1; 150]), 7).is_ok());
        assert_eq!(socket.feed(&client(true, BINARY, &[1; 1]), 0), Err(Violation::ByteRate));
        let mut refilled = inspector(&rules, Direction::Client);
        assert!(pass(&mut refilled, &client(true, BINARY, &[1; 150]), 7).is_ok());
        assert_eq!(refilled.feed(&client(true, BINARY, &[1; 100]), 1000), Ok(Release::All));
        let mut once = inspector(&rules, Direction::Client);
        assert_eq!(once.feed(&client(true, BINARY, &[1; 151]), 0), Err(Violation::ByteRate));
    }

    #[test]
    fn a_data_message_of_a_kind_not_listed_breaks_the_opcode_rule() {
        let rules = rules(json!({"opcodes": ["text"]}));
        assert!(pass(&mut inspector(&rules, Direction::Client), &client(true, TEXT, b"ok"), 2).is_ok());
        assert_eq!(
            pass(&mut inspector(&rules, Direction::Client), &client(true, BINARY, b"no"), 2),
            Err(Violation::Opcode)
        );
    }

    #[test]
    fn a_compressed_frame_or_one_against_rfc_6455_breaks_the_rules() {
        let rules = rules(json!({"max_frame_bytes": 1000}));
        let mut compressed = client(true, TEXT, b"x");
        compressed[0] |= 0x40;
        let mut rsv2 = client(true, TEXT, b"x");
        rsv2[0] |= 0x20;
        let cases = [
            (compressed, Direction::Client, Violation::Compressed),
            (rsv2, Direction::Client, Violation::Protocol),
            (frame(Direction::Server, true, TEXT, b"x"), Direction::Client, Violation::Protocol),
            (client(true, TEXT, b"x"), Direction::Server, Violation::Protocol),
            (client(true, 0x3, b"x"), Direction::Client, Violation::Protocol),
            (client(false, PING, b""), Direction::Client, Violation::Protocol),
            (client(true, PING, &[0; 126]), Direction::Client, Violation::Protocol),
            (client(true, MORE, b"x"), Direction::Client, Violation::Protocol),
            (
                [client(false, TEXT, b"x"), client(true, TEXT, b"y")].concat(),
                Direction::Client,
                Violation::Protocol,
            ),
        ];
        for (bytes, direction, violation) in cases {
            assert_eq!(pass(&mut inspector(&rules, direction), &bytes, 100), Err(violation), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_text_message_must_be_an_object_with_an_allowed_string_at_the_pointer() {
        let rules = chat();
        let allowed = [r#"{"type":"join","room":"a"}"#, r#"{"type":"say","text":"hi"}"#];
        for message in allowed {
            assert!(pass(
                &mut inspector(&rules, Direction::Client),
                &client(true, TEXT, message.as_bytes()),
                5
            )
            .is_ok());
        }
        let refused = [
            r#"{"type":"admin"}"#,
            r#"{"type":1}"#,
            r#"{"kind":"say"}"#,
            r#"["say"]"#,
            r#"{"type":"say","type":"admin"}"#,
            r#"{"type":"say","TYPE":"admin"}"#,
            r#"{"type":"say""#,
            "not json",
        ];
        for message in refused {
            let bytes = client(true, TEXT, message.as_bytes());
            assert_eq!(
                pass(&mut inspector(&rules, Direction::Client), &bytes, 5),
                Err(Violation::Json),
                "{message}"
            );
        }
        let binary = client(true, BINARY, b"\x00\x01");
        assert!(pass(&mut inspector(&rules, Direction::Client), &binary, 5).is_ok());
    }

    #[test]
    fn json_deeper_or_longer_than_the_rule_reads_breaks_it() {
        let rules =
            rules(json!({"json": {"pointer": "/type", "one_of": ["say"], "max_depth": 3, "max_bytes": 64}}));
        let at_depth = r#"{"type":"say","a":{"b":[1]}}"#;
        assert!(pass(&mut inspector(&rules, Direction::Client), &client(true, TEXT, at_depth.as_bytes()), 4)
            .is_ok());
        let deeper = r#"{"type":"say","a":{"b":[[1]]}}"#;
        let long = format!(r#"{{"type":"say","pad":"{}"}}"#, "x".repeat(64));
        for message in [deeper.to_string(), long] {
            let bytes = client(true, TEXT, message.as_bytes());
            assert_eq!(
                pass(&mut inspector(&rules, Direction::Client), &bytes, 4),
                Err(Violation::Json),
                "{message}"
            );
        }
    }

    #[test]
    fn a_message_under_the_json_rule_is_held_until_checked_whatever_the_pieces() {
        let rules = chat();
        let good = [
            client(true, BINARY, b"before"),
            client(false, TEXT, br#"{"type":"#),
            client(true, PING, b"p"),
            client(true, MORE, br#""say"}"#),
            client(true, TEXT, br#"{"type":"join"}"#),
        ]
        .concat();
        let bad_last = client(true, MORE, br#""admin"}"#);
        let bad =
            [client(true, BINARY, b"before"), client(false, TEXT, br#"{"type":"#), bad_last.clone()].concat();
        for piece in 1..=good.len() {
            assert_eq!(
                pass(&mut inspector(&rules, Direction::Client), &good, piece).unwrap(),
                good,
                "pieces of {piece}"
            );
            let mut socket = inspector(&rules, Direction::Client);
            let mut passed = Vec::new();
            let mut outcome = Ok(());
            for chunk in bad.chunks(piece) {
                match socket.feed(chunk, 0) {
                    Ok(Release::All) => passed.extend_from_slice(chunk),
                    Ok(Release::Replace(bytes)) => passed.extend(bytes),
                    Err(violation) => {
                        outcome = Err(violation);
                        break;
                    }
                }
            }
            assert_eq!(outcome, Err(Violation::Json), "pieces of {piece}");
            // The upstream had at most the binary message before it, nothing of the text one.
            assert!(client(true, BINARY, b"before").starts_with(&passed), "pieces of {piece}: {passed:02x?}");
        }
    }

    #[test]
    fn pings_cannot_grow_a_held_message_without_bound() {
        let rules = rules(json!({"json": {"pointer": "/type", "one_of": ["say"], "max_bytes": 16}}));
        let mut socket = inspector(&rules, Direction::Client);
        assert!(socket.feed(&client(false, TEXT, b"{"), 0).is_ok());
        let pings: Vec<u8> = (0..200).flat_map(|_| client(true, PING, &[0; 125])).collect();
        assert_eq!(socket.feed(&pings, 0), Err(Violation::Json));
    }

    #[test]
    fn a_json_rule_pointer_names_ascii_members_only() {
        // A server may fold `AÇÃO` to `ação` by Unicode rules; the rule cannot say which it reads.
        let config: MessagesConfig =
            serde_json::from_value(json!({"client": {"json": {"pointer": "/ação", "one_of": ["say"]}}}))
                .unwrap();
        assert!(MessageRules::compile(&config, "messages").is_err());
    }

    #[test]
    fn the_sockets_of_a_policy_hold_no_more_than_their_bound_together_and_give_it_back() {
        let rules = rules(json!({"json": {"pointer": "/type", "one_of": ["say"], "max_bytes": 1_048_576}}));
        let start = |length: usize| {
            let mut frame = client(false, TEXT, b"{");
            // A fragment's header that announces `length` bytes, then the first of them.
            frame[1] = 0x80 | 127;
            frame.splice(2..2, (length as u64).to_be_bytes());
            frame
        };
        let fill = |socket: &mut Inspector| socket.feed(&[start(1_000_000), vec![0; 999_999]].concat(), 0);
        // Each socket holds about 2 MB (the frames, and the payload read so far).
        let mut sockets = Vec::new();
        let refused = loop {
            let mut socket = inspector(&rules, Direction::Client);
            match fill(&mut socket) {
                Ok(_) if sockets.len() < 64 => sockets.push(socket),
                outcome => break outcome,
            }
        };
        assert_eq!(refused, Err(Violation::HeldBytes));
        assert!(sockets.len() >= MAX_HELD_BYTES / 2_100_000, "refused after {} sockets", sockets.len());
        drop(sockets);
        let mut after = inspector(&rules, Direction::Client);
        assert!(fill(&mut after).is_ok(), "the bytes of ended sockets stayed counted");
    }

    #[test]
    fn the_server_direction_reads_unmasked_frames() {
        let rules = rules(json!({"max_message_bytes": 4}));
        let mut server = inspector(&rules, Direction::Server);
        assert!(pass(&mut server, &frame(Direction::Server, true, TEXT, b"four"), 1).is_ok());
        let long = frame(Direction::Server, true, TEXT, b"fives");
        assert_eq!(pass(&mut server, &long, 1), Err(Violation::MessageTooLarge));
    }

    #[test]
    fn shadow_inspection_holds_nothing_and_still_finds_the_violation() {
        let rules = chat();
        let mut socket = Inspector::new(&rules, Direction::Client, false, 0).unwrap();
        let half = client(false, TEXT, br#"{"type":"#);
        assert_eq!(socket.feed(&half, 0), Ok(Release::All));
        assert_eq!(socket.feed(&client(true, MORE, br#""admin"}"#), 0), Err(Violation::Json));
    }

    #[test]
    fn the_summary_names_every_rule_of_each_direction() {
        let config: MessagesConfig = serde_json::from_value(json!({
            "client": {"max_message_bytes": 4096, "messages_per_second": 20, "message_burst": 40, "opcodes": ["text"],
                       "json": {"pointer": "/type", "one_of": ["join", "say"]}},
            "server": {"max_frame_bytes": 100, "bytes_per_second": 1000}
        }))
        .unwrap();
        assert_eq!(
            MessageRules::compile(&config, "messages").unwrap().summary(),
            "client(max_message_bytes=4096 messages=20/s burst 40 opcodes=text \
             json=/type in [\"join\", \"say\"] depth<=16 bytes<=65536) \
             server(max_frame_bytes=100 bytes=1000/s burst 1000)"
        );
    }

    #[test]
    fn rules_that_cannot_work_are_load_errors() {
        let refused = [
            (json!({}), "messages"),
            (json!({"client": {}}), "messages.client"),
            (json!({"client": {"max_frame_bytes": 0}}), "messages.client.max_frame_bytes"),
            (json!({"server": {"message_burst": 5}}), "messages.server.message_burst"),
            (json!({"client": {"opcodes": []}}), "messages.client.opcodes"),
            (
                json!({"client": {"opcodes": ["binary"], "json": {"pointer": "/t", "one_of": ["a"]}}}),
                "messages.client.json",
            ),
            (
                json!({"client": {"json": {"pointer": "type", "one_of": ["a"]}}}),
                "messages.client.json.pointer",
            ),
            (json!({"client": {"json": {"pointer": "/t", "one_of": []}}}), "messages.client.json.one_of"),
            (
                json!({"client": {"json": {"pointer": "/t", "one_of": ["a"], "max_depth": 0}}}),
                "messages.client.json.max_depth",
            ),
            (
                json!({"client": {"json": {"pointer": "/t", "one_of": ["a"], "max_bytes": 2_000_000}}}),
                "messages.client.json.max_bytes",
            ),
        ];
        for (config, field) in refused {
            let parsed: MessagesConfig = serde_json::from_value(config.clone()).unwrap();
            let error = MessageRules::compile(&parsed, "messages").unwrap_err();
            assert_eq!(error.field, field, "{config}");
        }
        assert!(serde_json::from_value::<MessagesConfig>(json!({"client": {"opcodes": ["close"]}})).is_err());
    }
}
