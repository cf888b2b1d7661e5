//! The client's first WebSocket message (RFC 6455 section 5), read from the bytes that follow an
//! admitted handshake, for a credential sent in it. Only what that needs: frames are parsed as
//! they arrive, in pieces of any size; control frames before the message are passed over; a
//! fragmented message is put together; nothing beyond `max_bytes` is ever held.

use serde_json::Value;

use crate::token::jwt::unique_object;

/// Why the first message cannot be read; the socket is closed for any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More than `max_bytes` arrived before the first message was complete.
    TooLarge,
    /// A client frame without a mask (RFC 6455 section 5.1).
    Unmasked,
    /// Reserved bits set: an extension such as `permessage-deflate`, which this reader does not
    /// undo, or a protocol error.
    Reserved,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode,
    /// A control frame that is fragmented or longer than 125 bytes (section 5.5).
    BadControl,
    /// A continuation frame outside a message, or a new message inside one (section 5.4).
    BadFragment,
    /// A 64-bit length with its top bit set (section 5.2).
    BadLength,
    /// The client closed before sending a message.
    Closed,
}

/// The first data message: its payload (unmasked, fragments joined), whether it is text, and
/// how many bytes of the stream it took, control frames before it included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub text: bool,
    pub end: usize,
    /// The pings and pongs among those bytes, as they came: what is left of them once the
    /// message itself is taken out.
    pub control_frames: Vec<u8>,
}

/// Reads the first message from the client's bytes, fed as they arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstMessage {
    max_bytes: usize,
    /// Every byte fed so far.
    held: Vec<u8>,
    /// Where the next frame starts in `held`.
    at: usize,
    /// The message being put together: its payload and whether it is text.
    message: Option<(Vec<u8>, bool)>,
    /// The pings and pongs read so far, whole frames as they came.
    control_frames: Vec<u8>,
}

/// One frame's header: FIN, opcode, mask key, and where it and its payload lie in `held`.
struct Frame {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    start: usize,
    payload: std::ops::Range<usize>,
}

impl FirstMessage {
    pub fn new(max_bytes: usize) -> FirstMessage {
        FirstMessage { max_bytes, held: Vec::new(), at: 0, message: None, control_frames: Vec::new() }
    }

    /// Every byte fed so far, for the shell to release (or drop) once the message is read.
    pub fn held(&self) -> &[u8] {
        &self.held
    }

    /// Takes the next bytes of the stream. `Ok(None)`: more are needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Message>, FrameError> {
        self.held.extend_from_slice(bytes);
        loop {
            let Some(frame) = self.next_frame()? else {
                if self.held.len() > self.max_bytes {
                    return Err(FrameError::TooLarge);
                }
                return Ok(None);
            };
            if frame.payload.end > self.max_bytes {
                return Err(FrameError::TooLarge);
            }
            self.at = frame.payload.end;
            let payload: Vec<u8> = self
                .held
                .get(frame.payload.clone())
                .unwrap_or_default()
                .iter()
                .zip(frame.mask.iter().cycle())
                .map(|(byte, mask)| byte ^ mask)
                .collect();
            match (frame.opcode, self.message.take()) {
                // Ping and pong before the message are passed over, and kept.
                (0x9 | 0xA, message) => {
                    self.message = message;
                    let whole = self.held.get(frame.start..frame.payload.end).unwrap_or_default();
                    self.control_frames.extend_from_slice(whole);
                }
                (0x8, _) => return Err(FrameError::Closed),
                (0x1 | 0x2, None) => self.message = Some((payload, frame.opcode == 0x1)),
                (0x0, Some((mut joined, text))) => {
                    joined.extend_from_slice(&payload);
                    self.message = Some((joined, text));
                }
                (0x0, None) | (0x1 | 0x2, Some(_)) => return Err(FrameError::BadFragment),
                _ => return Err(FrameError::UnknownOpcode),
            }
            if frame.fin && frame.opcode < 0x8 {
                if let Some((payload, text)) = self.message.take() {
                    let control_frames = std::mem::take(&mut self.control_frames);
                    return Ok(Some(Message { payload, text, end: self.at, control_frames }));
                }
            }
        }
    }

    /// The next whole frame in `held`, if it has all arrived.
    fn next_frame(&self) -> Result<Option<Frame>, FrameError> {
        // Only the first `max_bytes` are ever read, so that what is decided does not depend on
        // how the bytes were split: a frame not whole within them is too large once more came.
        let limit = self.held.len().min(self.max_bytes);
        let bytes = self.held.get(self.at..limit).unwrap_or_default();
        let (Some(&first), Some(&second)) = (bytes.first(), bytes.get(1)) else { return Ok(None) };
        if first & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        if second & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
        let (length, header) = match second & 0x7F {
            126 => match bytes.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match bytes.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) if b[0] & 0x80 != 0 => return Err(FrameError::BadLength),
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode >= 0x8 && (!fin || length > 125) {
            return Err(FrameError::BadControl);
        }
        let Some(mask) = bytes.get(header..header + 4).and_then(|m| <[u8; 4]>::try_from(m).ok()) else {
            return Ok(None);
        };
        let start = self.at + header + 4;
        // A length past what may be held is refused before it is waited for.
        let length = usize::try_from(length).map_err(|_| FrameError::TooLarge)?;
        let end =
            start.checked_add(length).filter(|end| *end <= self.max_bytes).ok_or(FrameError::TooLarge)?;
        if end > self.held.len() {
            return Ok(None);
        }
        Ok(Some(Frame { fin, opcode, mask, start: self.at, payload: start..end }))
    }
}

/// Why a first message carries no credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Not a JSON object in a text message, or one with a member name twice.
    NotJson,
    /// The type member is not the configured one: not the auth message.
    NotAuth,
    /// No string at the token pointer.
    NoToken,
}

/// A JSON Pointer (RFC 6901) to a member of nested objects, split into its member names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// `/a/b~1c` (`~1` for `/`, `~0` for `~`), of ASCII member names; `None` for anything
    /// else, the whole document (`""`) included.
    pub fn parse(text: &str) -> Option<Pointer> {
        // Names are ASCII: a server may fold a member name's case by Unicode rules (Go's
        // `encoding/json` does), which `has_case_variant` does not model beyond two letters.
        if !text.is_ascii() {
            return None;
        }
        let rest = text.strip_prefix('/')?;
        let names = rest.split('/').map(|name| {
            let valid = name.split('~').skip(1).all(|after| after.starts_with(['0', '1']));
            valid.then(|| name.replace("~1", "/").replace("~0", "~"))
        });
        names.collect::<Option<Vec<String>>>().map(Pointer)
    }

    /// The value it points at in `value`.
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(value, |value, name| value.as_object()?.get(name))
    }

    /// Whether an object along the way has another member whose name differs from the one
    /// pointed at only in case: a parser that folds case could take that one. Go's
    /// `encoding/json` folds by Unicode, where the Kelvin sign is a `k` and the long s an `s`.
    pub(crate) fn has_case_variant(&self, value: &Value) -> bool {
        let folded = |key: &str| key.replace('\u{212A}', "k").replace('\u{17F}', "s");
        let mut at = value;
        for name in &self.0 {
            let Some(object) = at.as_object() else { return false };
            if object.keys().any(|key| key != name && folded(key).eq_ignore_ascii_case(name)) {
                return true;
            }
            match object.get(name) {
                Some(next) => at = next,
                None => return false,
            }
        }
        false
    }
}

/// The credential in an auth message: the string at `token_pointer`, once the value at
/// `type_pointer` (when configured) is `type_value`.
pub fn credential(
    message: &Message,
    token_pointer: &Pointer,
    kind: Option<(&Pointer, &str)>,
) -> Result<Vec<u8>, MessageError> {
    if !message.text {
        return Err(MessageError::NotJson);
    }
    // Text messages are UTF-8 (RFC 6455 section 5.6); member names given twice at any depth,
    // or in another case along a pointer's path, are refused, as the upstream's parser could
    // read the other one.
    std::str::from_utf8(&message.payload).map_err(|_| MessageError::NotJson)?;
    let value = Value::Object(unique_object(&message.payload).ok_or(MessageError::NotJson)?);
    let pointers = [Some(token_pointer), kind.map(|(pointer, _)| pointer)];
    if pointers.into_iter().flatten().any(|pointer| pointer.has_case_variant(&value)) {
        return Err(MessageError::NotJson);
    }
    if let Some((type_pointer, type_value)) = kind {
        if type_pointer.find(&value).and_then(Value::as_str) != Some(type_value) {
            return Err(MessageError::NotAuth);
        }
    }
    match token_pointer.find(&value) {
        Some(Value::String(token)) if !token.is_empty() => Ok(token.as_bytes().to_vec()),
        _ => Err(MessageError::NoToken),
    }
}

/// Where the upstream's bytes to the client stand: between frames, or inside one. A close frame
/// may be sent only between frames (RFC 6455 section 5.4 lets control frames come between the
/// fragments of a message, never inside a frame).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boundary {
    /// The current frame's header so far, while it is incomplete (at most 14 bytes).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
}

impl Boundary {
    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(bytes.len());
                self.remaining -= skip as u64;
                bytes = bytes.get(skip..).unwrap_or_default();
                continue;
            }
            let Some((&byte, rest)) = bytes.split_first() else { return };
            self.header.push(byte);
            bytes = rest;
            if let Some(length) = Boundary::payload_length(&self.header) {
                self.header.clear();
                self.remaining = length;
            }
        }
    }

    /// Whether the client has had whole frames only.
    pub fn between_frames(&self) -> bool {
        self.header.is_empty() && self.remaining == 0
    }

    /// The payload length of a frame whose header is `header`, once it is complete.
    fn payload_length(header: &[u8]) -> Option<u64> {
        let second = *header.get(1)?;
        let (extended, masked) = (
            match second & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            },
            usize::from(second & 0x80 != 0) * 4,
        );
        if header.len() < 2 + extended + masked {
            return None;
        }
        let length = match extended {
            0 => u64::from(second & 0x7f),
            _ => header.get(2..2 + extended)?.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)),
        };
        Some(length)
    }
}

/// A server's close frame (unmasked) with `code` and as much of `reason` as fits (123 bytes,
/// cut at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or_default().as_bytes();
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn read(bytes: &[u8], max: usize) -> Result<Option<Message>, FrameError> {
        FirstMessage::new(max).feed(bytes)
    }

    #[test]
    fn a_masked_text_frame_is_unmasked() {
        let bytes = frame(true, 0x1, br#"{"token":"t"}"#);
        let message = read(&bytes, 1024).unwrap().unwrap();
        assert_eq!(message.payload, br#"{"token":"t"}"#);
        assert!(message.text);
        assert_eq!(message.end, bytes.len());
    }

    #[test]
    fn seven_sixteen_and_sixty_four_bit_lengths_are_read() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; len];
            let message = read(&frame(true, 0x2, &payload), 100_000).unwrap().unwrap();
            assert_eq!(message.payload.len(), len);
            assert!(!message.text);
        }
    }

    #[test]
    fn bytes_fed_one_at_a_time_give_the_same_message_and_what_follows_is_left() {
        let mut bytes = frame(true, 0x1, b"hello");
        let first_len = bytes.len();
        bytes.extend(frame(true, 0x1, b"next"));
        let mut reader = FirstMessage::new(1024);
        let mut found = None;
        for byte in &bytes {
            if let Some(message) = reader.feed(std::slice::from_ref(byte)).unwrap() {
                found = Some(message);
                break;
            }
        }
        let message = found.unwrap();
        assert_eq!(message.payload, b"hello");
        assert_eq!(message.end, first_len);
    }

    #[test]
    fn a_fragmented_message_is_put_together_and_pings_between_are_passed_over() {
        let mut bytes = frame(true, 0x9, b"ping");
        bytes.extend(frame(false, 0x1, b"hel"));
        bytes.extend(frame(true, 0xA, b""));
        bytes.extend(frame(false, 0x0, b"l"));
        bytes.extend(frame(true, 0x0, b"o"));
        let message = read(&bytes, 1024).unwrap().unwrap();
        assert_eq!(message.payload, b"hello");
        assert_eq!(message.end, bytes.len());
        let mut pings = frame(true, 0x9, b"ping");
        pings.extend(frame(true, 0xA, b""));
        assert_eq!(message.control_frames, pings);
    }

    #[test]
    fn nothing_beyond_max_bytes_is_held() {
        assert_eq!(read(&frame(true, 0x1, &[b'a'; 100]), 50), Err(FrameError::TooLarge));
        // A length announced past the limit is refused before its payload arrives.
        assert_eq!(read(&frame(true, 0x1, &[b'a'; 100])[..8], 50), Err(FrameError::TooLarge));
        let mut pings = Vec::new();
        for _ in 0..10 {
            pings.extend(frame(true, 0x9, &[0; 10]));
        }
        assert_eq!(read(&pings, 100), Err(FrameError::TooLarge));
    }

    #[test]
    fn a_frame_that_starts_before_max_bytes_and_ends_past_it_is_too_large_however_it_is_split() {
        let mut bytes = frame(true, 0x9, &[0; 6]);
        // A 64-bit length with its top bit set, announced across the limit.
        bytes.extend_from_slice(&[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        let max = 14;
        assert_eq!(read(&bytes, max), Err(FrameError::TooLarge));
        let mut reader = FirstMessage::new(max);
        let outcomes: Vec<_> = bytes.iter().map(|byte| reader.feed(std::slice::from_ref(byte))).collect();
        assert_eq!(
            outcomes.into_iter().find(|outcome| *outcome != Ok(None)),
            Some(Err(FrameError::TooLarge))
        );
    }

    #[test]
    fn protocol_errors_are_refused() {
        let mut unmasked = frame(true, 0x1, b"x");
        unmasked[1] &= 0x7F;
        assert_eq!(read(&unmasked, 1024), Err(FrameError::Unmasked));
        let mut compressed = frame(true, 0x1, b"x");
        compressed[0] |= 0x40;
        assert_eq!(read(&compressed, 1024), Err(FrameError::Reserved));
        assert_eq!(read(&frame(true, 0x3, b"x"), 1024), Err(FrameError::UnknownOpcode));
        assert_eq!(read(&frame(false, 0x9, b"x"), 1024), Err(FrameError::BadControl));
        assert_eq!(read(&frame(true, 0x9, &[0; 126]), 1024), Err(FrameError::BadControl));
        assert_eq!(read(&frame(true, 0x0, b"x"), 1024), Err(FrameError::BadFragment));
        let mut interleaved = frame(false, 0x1, b"a");
        interleaved.extend(frame(true, 0x1, b"b"));
        assert_eq!(read(&interleaved, 1024), Err(FrameError::BadFragment));
        assert_eq!(read(&frame(true, 0x8, &[0x03, 0xe8]), 1024), Err(FrameError::Closed));
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(read(&huge, 1024), Err(FrameError::BadLength));
    }

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    #[test]
    fn pointers_name_members_with_their_escapes_and_nothing_else() {
        let value: Value = serde_json::from_str(r#"{"a/b":{"m~n":"x"},"":{"":"y"},"arr":["z"]}"#).unwrap();
        assert_eq!(p("/a~1b/m~0n").find(&value), Some(&Value::from("x")));
        assert_eq!(p("//").find(&value), Some(&Value::from("y")));
        assert_eq!(p("/arr/0").find(&value), None, "members only, not array elements");
        for bad in ["", "token", "/a~2", "/a~"] {
            assert_eq!(Pointer::parse(bad), None, "{bad:?}");
        }
    }

    fn message(payload: &[u8]) -> Message {
        Message { payload: payload.to_vec(), text: true, end: 0, control_frames: Vec::new() }
    }

    #[test]
    fn the_credential_is_read_at_its_pointer_once_the_type_matches() {
        let auth = message(br#"{"type":"auth","token":"abc"}"#);
        assert_eq!(credential(&auth, &p("/token"), Some((&p("/type"), "auth"))), Ok(b"abc".to_vec()));
        assert_eq!(credential(&auth, &p("/token"), None), Ok(b"abc".to_vec()));
        let nested = message(br#"{"auth":{"jwt":"x.y.z"}}"#);
        assert_eq!(credential(&nested, &p("/auth/jwt"), None), Ok(b"x.y.z".to_vec()));
    }

    #[test]
    fn a_member_twice_at_any_depth_or_in_another_case_on_the_path_is_refused() {
        let token = p("/auth/token");
        let read = |json: &str| credential(&message(json.as_bytes()), &token, None);
        assert_eq!(read(r#"{"auth":{"token":"a"}}"#), Ok(b"a".to_vec()));
        assert_eq!(read(r#"{"auth":{"token":"a","token":"b"}}"#), Err(MessageError::NotJson));
        assert_eq!(read(r#"{"auth":{"token":"a","Token":"b"}}"#), Err(MessageError::NotJson));
        assert_eq!(read(r#"{"auth":{"token":"a"},"AUTH":{"token":"b"}}"#), Err(MessageError::NotJson));
        assert_eq!(read(r#"{"auth":{"token":"a"},"x":{"y":1,"y":2}}"#), Err(MessageError::NotJson));
        assert_eq!(read(r#"{"auth":{"token":"a"},"Other":1,"other":2}"#), Ok(b"a".to_vec()));
        // Go folds the Kelvin sign to `k` and the long s to `s`.
        assert_eq!(read(r#"{"auth":{"token":"a","to\u212Aen":"b"}}"#), Err(MessageError::NotJson));
        let session = p("/session");
        let long_s = credential(&message(r#"{"session":"a","\u017Fession":"b"}"#.as_bytes()), &session, None);
        assert_eq!(long_s, Err(MessageError::NotJson));
    }

    #[test]
    fn a_message_that_is_not_the_auth_message_gives_no_credential() {
        let chat = message(br#"{"type":"chat","token":"abc"}"#);
        assert_eq!(credential(&chat, &p("/token"), Some((&p("/type"), "auth"))), Err(MessageError::NotAuth));
        assert_eq!(
            credential(&message(br#"{"type":"auth"}"#), &p("/token"), None),
            Err(MessageError::NoToken)
        );
        assert_eq!(credential(&message(br#"{"token":7}"#), &p("/token"), None), Err(MessageError::NoToken));
        assert_eq!(credential(&message(b"not json"), &p("/token"), None), Err(MessageError::NotJson));
        assert_eq!(credential(&message(b"[\"token\"]"), &p("/0"), None), Err(MessageError::NotJson));
        assert_eq!(
            credential(&message(b"{\"token\":\"\xff\"}"), &p("/token"), None),
            Err(MessageError::NotJson)
        );
        let twice = message(br#"{"type":"chat","type":"auth","token":"abc"}"#);
        assert_eq!(credential(&twice, &p("/token"), Some((&p("/type"), "auth"))), Err(MessageError::NotJson));
        let binary = Message { text: false, ..message(br#"{"token":"abc"}"#) };
        assert_eq!(credential(&binary, &p("/token"), None), Err(MessageError::NotJson));
    }

    fn server_frame(payload_len: usize) -> Vec<u8> {
        let mut frame = vec![0x82];
        match payload_len {
            0..=125 => frame.push(payload_len as u8),
            126..=65535 => {
                frame.push(126);
                frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                frame.push(127);
                frame.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        frame.extend(std::iter::repeat_n(0x61, payload_len));
        frame
    }

    #[test]
    fn the_boundary_between_frames_is_found_in_pieces_of_any_size() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(server_frame(len));
        }
        let ends: Vec<usize> = [0, 5, 125, 126, 300, 70_000]
            .iter()
            .scan(0, |at, &len| {
                *at += server_frame(len).len();
                Some(*at)
            })
            .collect();
        for piece in [1, 2, 3, 7, 1000, stream.len()] {
            let mut boundary = Boundary::default();
            let mut fed = 0;
            for chunk in stream.chunks(piece) {
                boundary.feed(chunk);
                fed += chunk.len();
                assert_eq!(boundary.between_frames(), ends.contains(&fed), "piece {piece}, at {fed}");
            }
        }
    }

    #[test]
    fn a_close_frame_carries_its_code_and_a_reason_cut_to_fit() {
        assert_eq!(close_frame(1008, "expired"), b"\x88\x09\x03\xf0expired".to_vec());
        let long = close_frame(1008, &"é".repeat(100));
        assert_eq!(long.len(), 2 + 2 + 122, "cut at a character boundary below 123 bytes");
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
