//! Bytes → text for web pages: BOM, the HTTP `Content-Type` charset, `<meta charset>`, then
//! detection (chardetng) when the declared charset is missing or does not decode cleanly.
//!
//! A wrong declaration is common on the web (a page says `iso-8859-1` but is UTF-8, or says
//! UTF-8 but is windows-1252). Valid multi-byte UTF-8 is a strong signal by itself, so it wins
//! over a legacy declaration; a declaration that produces decode errors falls back to detection.

use encoding_rs::{Encoding, UTF_8};

/// How the text was decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    /// The encoding used (WHATWG name).
    pub encoding: &'static str,
    /// True when the declared charset was wrong or missing and detection chose the encoding.
    pub detected: bool,
    /// Replacement characters produced by the final decode.
    pub replacements: usize,
}

/// The charset named in an HTTP `Content-Type` value, e.g. `text/html; charset=ISO-8859-1`.
pub fn charset_from_content_type(value: &str) -> Option<&'static Encoding> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("charset=")?;
    let rest = &value[at + 8..];
    let name = rest
        .trim_start_matches(['"', '\''])
        .split(|c: char| c == ';' || c == '"' || c == '\'' || c.is_whitespace())
        .next()?;
    Encoding::for_label(name.as_bytes())
}

/// The charset declared by `<meta charset=…>` or `<meta http-equiv content="…charset=…">` in the
/// first 2 KiB.
pub fn charset_from_meta(html: &[u8]) -> Option<&'static Encoding> {
    let head = &html[..html.len().min(2048)];
    let lower: Vec<u8> = head.iter().map(|b| b.to_ascii_lowercase()).collect();
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&lower[from..], b"<meta") {
        let start = from + i;
        let end = lower[start..]
            .iter()
            .position(|&b| b == b'>')
            .map_or(lower.len(), |e| start + e);
        let tag = &lower[start..end];
        if let Some(c) = memchr::memmem::find(tag, b"charset=") {
            let name: Vec<u8> = tag[c + 8..]
                .iter()
                .copied()
                .skip_while(|&b| b == b'"' || b == b'\'')
                .take_while(|&b| !matches!(b, b'"' | b'\'' | b';' | b' ' | b'/' | b'>'))
                .collect();
            if let Some(enc) = Encoding::for_label(&name) {
                return Some(enc);
            }
        }
        from = end;
    }
    None
}

/// Decode a page given the optional HTTP `Content-Type` header value.
pub fn decode(bytes: &[u8], content_type: Option<&str>) -> Decoded {
    if let Some((enc, bom_len)) = Encoding::for_bom(bytes) {
        let (text, had_errors) = enc.decode_without_bom_handling(&bytes[bom_len..]);
        return finish(text.into_owned(), enc, false, had_errors);
    }
    let declared = content_type
        .and_then(charset_from_content_type)
        .or_else(|| charset_from_meta(bytes));
    // Valid UTF-8 with non-ASCII bytes is almost never a legacy encoding.
    if let Ok(s) = std::str::from_utf8(bytes) {
        let declared_other = declared.is_some_and(|d| d != UTF_8 && !bytes.is_ascii());
        return Decoded {
            text: s.to_owned(),
            encoding: "UTF-8",
            detected: declared_other,
            replacements: 0,
        };
    }
    // UTF-8 with a stray invalid byte or two (a truncated or spliced-in sequence) is still
    // UTF-8: decoding it as a legacy charset would garble every other non-ASCII character. Its
    // replacement characters are counted, so the caller's replacement-ratio limit still applies.
    let declared_utf8 = declared == Some(UTF_8);
    if let Some(text) = mostly_utf8(bytes, declared_utf8) {
        return finish(text, UTF_8, !declared_utf8, true);
    }
    if let Some(enc) = declared.filter(|&d| d != UTF_8) {
        let (text, had_errors) = enc.decode_without_bom_handling(bytes);
        if !had_errors {
            return finish(text.into_owned(), enc, false, false);
        }
    }
    let mut detector = chardetng::EncodingDetector::new();
    detector.feed(bytes, true);
    let enc = detector.guess(None, true);
    let (text, had_errors) = enc.decode_without_bom_handling(bytes);
    finish(text.into_owned(), enc, true, had_errors)
}

/// How many valid non-ASCII characters per invalid sequence make undeclared bytes UTF-8.
/// Legacy-encoded text (windows-1252, Shift_JIS, GBK) almost never forms valid multi-byte
/// UTF-8 sequences, and where it does by chance, far more of its bytes are invalid.
const UTF8_VALID_PER_INVALID: usize = 5;

/// `bytes` (not valid UTF-8) decoded as UTF-8 with replacement characters, when they are
/// UTF-8 all the same: declared so and holding more valid non-ASCII characters than invalid
/// sequences, or undeclared and holding [`UTF8_VALID_PER_INVALID`] times as many.
fn mostly_utf8(bytes: &[u8], declared_utf8: bool) -> Option<String> {
    let (text, _) = UTF_8.decode_without_bom_handling(bytes);
    let literal_replacements = memchr::memmem::find_iter(bytes, "\u{FFFD}".as_bytes()).count();
    let (mut valid, mut replaced) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_ascii()) {
        if c == '\u{FFFD}' {
            replaced += 1;
        } else {
            valid += 1;
        }
    }
    let invalid = replaced.saturating_sub(literal_replacements);
    let is_utf8 = if declared_utf8 {
        valid > invalid
    } else {
        valid >= UTF8_VALID_PER_INVALID * invalid
    };
    is_utf8.then(|| text.into_owned())
}

fn finish(text: String, enc: &'static Encoding, detected: bool, had_errors: bool) -> Decoded {
    let replacements = if had_errors {
        text.chars().filter(|&c| c == '\u{FFFD}').count()
    } else {
        0
    };
    Decoded {
        text,
        encoding: enc.name(),
        detected,
        replacements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_legacy_charset_decodes() {
        let bytes = b"<meta charset=\"iso-8859-1\"><p>caf\xe9</p>";
        let d = decode(bytes, None);
        assert!(d.text.contains("café"), "{d:?}");
        assert_eq!(d.encoding, "windows-1252");
        let d = decode(b"<p>na\xefve</p>", Some("text/html; charset=ISO-8859-1"));
        assert!(d.text.contains("naïve"));
    }

    #[test]
    fn wrong_declared_charset_is_corrected() {
        // Declared latin-1, really UTF-8.
        let d = decode(
            "<p>café ünïcode</p>".as_bytes(),
            Some("text/html; charset=latin1"),
        );
        assert!(d.text.contains("café ünïcode") && d.detected, "{d:?}");
        // Declared UTF-8, really windows-1252: detection takes over.
        let d = decode(
            b"<meta charset=utf-8><p>Les \xe9l\xe8ves du caf\xe9 \xe0 c\xf4t\xe9 de l'\xe9cole</p>",
            None,
        );
        assert!(d.text.contains("élèves") && d.detected, "{d:?}");
        assert_eq!(d.replacements, 0);
    }

    #[test]
    fn one_bad_byte_does_not_turn_utf8_into_windows_1252() {
        let mut page =
            "<meta charset=\"utf-8\"><p>Résumé of José Müller, “quoted” — fine.</p><p>5 "
                .as_bytes()
                .to_vec();
        page.extend_from_slice(b"\xa3 only.</p>");
        let d = decode(&page, None);
        assert!(
            d.text.contains("Résumé of José Müller, “quoted” — fine."),
            "{d:?}"
        );
        assert_eq!(
            (d.encoding, d.replacements, d.detected),
            ("UTF-8", 1, false)
        );
        // Undeclared, the valid sequences still outnumber the bad byte fivefold.
        let undeclared = &page["<meta charset=\"utf-8\">".len()..];
        let d = decode(undeclared, None);
        assert_eq!((d.encoding, d.replacements), ("UTF-8", 1), "{d:?}");
        // A legacy page with no valid multi-byte sequence still goes to detection.
        let d = decode(b"<p>caf\xe9 na\xefve \x93quoted\x94</p>", None);
        assert!(d.text.contains("café naïve “quoted”"), "{d:?}");
    }

    #[test]
    fn bom_wins() {
        let mut bytes = vec![0xEF, 0xBB, 0xBF];
        bytes.extend_from_slice("ok ✓".as_bytes());
        assert_eq!(decode(&bytes, Some("charset=latin1")).text, "ok ✓");
    }
}
