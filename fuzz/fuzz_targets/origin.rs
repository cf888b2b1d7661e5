//! Any text as an Origin and as an allow-list entry: parsed or refused, never a panic; a parsed
//! origin survives normalising again unchanged, and an exact entry allows its own origin.
#![no_main]

use wsgate::origin::{Origin, OriginAllowList};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (entry, origin) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(parsed) = Origin::parse(origin) {
        let again = Origin::parse(&parsed.to_string());
        assert_eq!(again.as_ref(), Ok(&parsed), "normalising twice changed {origin:?}");
        if let Ok(list) = OriginAllowList::compile(&[entry]) {
            let _ = list.allows(&parsed, None);
        }
        if parsed.scheme() == "http" || parsed.scheme() == "https" {
            let own =
                OriginAllowList::compile(&[parsed.to_string()]).expect("a normalised origin is an entry");
            assert!(own.allows(&parsed, None), "{origin:?} is not allowed by its own entry");
        }
    }
});
