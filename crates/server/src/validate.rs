//! Checks for the text fields clients send. Pure functions, tested below.

/// A display name or room name: trimmed, 1..=`max` Unicode scalar values, no control or
/// invisible formatting characters. Returns the trimmed text.
pub fn label(raw: &str, max: u32) -> Option<&str> {
    let s = raw.trim();
    let n = s.chars().count();
    if n == 0 || n > max as usize || s.chars().any(is_forbidden_in_label) {
        return None;
    }
    Some(s)
}

/// A chat message: 1..=`max` characters after trimming; line breaks and tabs allowed, other
/// control characters not. Returns the trimmed text.
pub fn chat_text(raw: &str, max: u32) -> Option<&str> {
    let s = raw.trim();
    let n = s.chars().count();
    if n == 0 || n > max as usize || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return None;
    }
    Some(s)
}

fn is_forbidden_in_label(c: char) -> bool {
    c.is_control()
        // Bidi overrides and isolates let a name pretend to be something else in a list.
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || c == '\u{FEFF}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_unicode_and_trim() {
        assert_eq!(label("  주간 회의 ", 64), Some("주간 회의"));
        assert_eq!(label("<img src=x onerror=alert(1)>", 32), Some("<img src=x onerror=alert(1)>"));
        assert_eq!(label("가".repeat(32).as_str(), 32).map(|s| s.chars().count()), Some(32));
    }

    #[test]
    fn labels_refuse_empty_long_and_control() {
        assert_eq!(label("   ", 64), None);
        assert_eq!(label(&"a".repeat(65), 64), None);
        assert_eq!(label("a\nb", 64), None);
        assert_eq!(label("a\u{0}b", 64), None);
        assert_eq!(label("evil\u{202E}gpj.exe", 64), None);
    }

    #[test]
    fn chat_allows_newlines_not_other_controls() {
        assert_eq!(chat_text(" hi\nthere ", 10), Some("hi\nthere"));
        assert_eq!(chat_text("bell\u{7}", 10), None);
        assert_eq!(chat_text("", 10), None);
        assert_eq!(chat_text(&"x".repeat(11), 10), None);
    }
}
