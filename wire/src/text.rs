//! Text that came from a peer, made safe to show on a terminal and bounded in size.
//!
//! A node's error reason ends up in a run's log and on an operator's terminal. Raw, it could carry
//! escape sequences that move the cursor, erase lines, retitle the window or write the clipboard,
//! and newlines that forge whole log lines. Every control character (C0, DEL, C1) and every
//! Unicode bidirectional override is therefore shown escaped, as Rust's `{:?}` shows it.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// `text` with every control character and bidirectional override escaped (`\u{1b}`, `\n`).
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            escaped.extend(c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// `text` escaped, then cut to at most `max_chars` characters; a cut is marked with how much was
/// left out.
pub fn sanitize(text: &str, max_chars: usize) -> String {
    let escaped = escape_controls(text);
    let total = escaped.chars().count();
    if total <= max_chars {
        return escaped.into_owned();
    }
    let kept: String = escaped.chars().take(max_chars).collect();
    format!("{kept}… ({} more characters)", total - max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_newlines_are_shown_not_obeyed() {
        let forged = "\r\x1b[2K\x1b[1A[ROUND 3/3]\n\u{9b}31m\x1b]52;c;aGk=\x07\u{202E}txt";
        let safe = escape_controls(forged);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        assert_eq!(
            safe,
            "\\r\\u{1b}[2K\\u{1b}[1A[ROUND 3/3]\\n\\u{9b}31m\\u{1b}]52;c;aGk=\\u{7}\\u{202e}txt"
        );
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "node 7: training diverged\tat step 3 (ü, 日本)";
        assert!(matches!(escape_controls(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_says_so() {
        let text = "é".repeat(600);
        let cut = sanitize(&text, 512);
        assert!(cut.starts_with(&"é".repeat(512)));
        assert!(cut.ends_with("… (88 more characters)"), "{cut}");
        assert_eq!(sanitize("short", 512), "short");
    }
}
