//! Any bytes a client sends after the handshake, fed whole and in pieces of any size: the first
//! message reader gives the same answer either way, never holds more than `max_bytes`, and
//! accounts for every byte it says the message took.
#![no_main]

use wsgate::frames::FirstMessage;

const MAX_BYTES: usize = 512;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte sets the size of the pieces; the rest is the stream.
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let whole = FirstMessage::new(MAX_BYTES).feed(stream);
    let mut reader = FirstMessage::new(MAX_BYTES);
    let mut pieces = Ok(None);
    for chunk in stream.chunks(piece) {
        pieces = reader.feed(chunk);
        if !matches!(pieces, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, pieces, "fed whole and in pieces of {piece}");
    if let Ok(Some(message)) = &whole {
        assert!(message.end <= MAX_BYTES && message.end <= stream.len());
        assert!(message.payload.len() + message.control_frames.len() < message.end);
    }
});
