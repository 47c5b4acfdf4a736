//! The display boundary (PROTOCOL.md C15): everything a peer wrote is shown
//! in the terminal with its control characters made visible, so a message
//! cannot forge a line, move the cursor or reorder text.

use std::borrow::Cow;

/// True for characters that change how a terminal shows what follows rather
/// than being shown: C0 and C1 controls, DEL, line and paragraph separators,
/// and the Unicode bidirectional controls (U+061C, U+200E-U+200F,
/// U+202A-U+202E, U+2066-U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every unsafe character written as an escape: `\n`, `\r`,
/// `\t`, `\x1b` (ASCII controls), `\u{202e}` (others). Text without any comes
/// back borrowed.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_become_visible() {
        assert_eq!(escape("plain é 😀"), "plain é 😀");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("hi\n21:22:08 [dm from bob] ✓ forged\x1b[2J"),
            "hi\\n21:22:08 [dm from bob] ✓ forged\\x1b[2J"
        );
        assert_eq!(escape("a\r\tb\0\x7f"), "a\\r\\tb\\x00\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("x\u{2066}y\u{2028}"), "x\\u{2066}y\\u{2028}");
    }
}
