//! Checks for the text fields clients send. Pure functions, tested below.
//!
//! Names, room names and chat must show something: characters that render as nothing (format
//! characters such as U+200B, fillers such as U+3164, the blank braille pattern U+2800, the soft
//! hyphen, variation selectors, tags) only let a name look blank or imitate another ("Dana" and
//! "Dana" + U+200B), so they are stripped, and what is left must hold a visible character (a
//! combining mark alone is not one). The joiners stay where they do something: U+200D inside emoji
//! sequences (👩‍💻), U+200C/U+200D between letters of the Arabic and Indic scripts, U+FE0F/U+FE0E
//! after an emoji or a keycap digit, tags after 🏴. `web/js/protocol.js`'s `cleanName` applies the
//! same rules with the same tables: change both together.

/// A display name, room name or file name: control characters and bidi overrides refused,
/// invisible characters stripped, runs of spaces made one, trimmed; then 1..=`max` Unicode scalar
/// values with at least one visible. Returns the cleaned text.
pub fn label(raw: &str, max: u32) -> Option<String> {
    if raw.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return None;
    }
    let stripped = strip_invisible(raw, false);
    let mut out = String::with_capacity(stripped.len());
    for word in stripped.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    shows_something(&out, max).then_some(out)
}

/// A chat message: line breaks and tabs allowed, other control characters not; invisible
/// characters and bidi controls stripped (emoji sequences and the joiners of the scripts that
/// need them kept, and the blank braille pattern, which braille art uses as a space); trimmed;
/// then 1..=`max` characters with at least one visible. Returns the cleaned text.
pub fn chat_text(raw: &str, max: u32) -> Option<String> {
    if raw.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return None;
    }
    let out = strip_invisible(raw, true).trim().to_string();
    shows_something(&out, max).then_some(out)
}

/// A room password: trimmed, 1..=`max` characters, no control characters. Kept as typed
/// otherwise (it is hashed, never shown).
pub fn password(raw: &str, max: u32) -> Option<&str> {
    let s = raw.trim();
    let n = s.chars().count();
    (n > 0 && n <= max as usize && !s.chars().any(char::is_control)).then_some(s)
}

fn shows_something(s: &str, max: u32) -> bool {
    let n = s.chars().count();
    n > 0 && n <= max as usize && s.chars().any(is_visible)
}

/// Drops the invisible characters of `s`, keeping the joiners, selectors and tags where they
/// join (see the module's documentation). `chat`: bidi controls go too, and U+2800 stays.
fn strip_invisible(s: &str, chat: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let keep = match c {
            '\u{200D}' => {
                let emoji =
                    prev.is_some_and(|p| is_emoji(p) || p == '\u{FE0F}' || is_tag(p)) && next.is_some_and(is_emoji);
                emoji || joins_script(prev, next)
            }
            '\u{200C}' => joins_script(prev, next),
            '\u{FE0E}' | '\u{FE0F}' => prev.is_some_and(|p| is_emoji(p) || p.is_ascii_digit() || p == '#' || p == '*'),
            '\u{E0020}'..='\u{E007F}' => prev.is_some_and(|p| p == '\u{1F3F4}' || is_tag(p)),
            '\u{2800}' => chat,
            c if is_bidi_control(c) => !chat,
            c => !is_invisible(c),
        };
        if keep {
            out.push(c);
            prev = Some(c);
        }
    }
    out
}

/// Characters that render as nothing and change nothing but what a text compares equal to.
/// (The joiners, selectors and tags that do join something are kept by [`strip_invisible`].)
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}'
        | '\u{206A}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Bidi embeddings, overrides and isolates: in a name they let it pretend to be something else
/// in a list.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn is_tag(c: char) -> bool {
    matches!(c, '\u{E0020}'..='\u{E007F}')
}

/// Characters that start or continue an emoji sequence (roughly Unicode's emoji blocks).
fn is_emoji(c: char) -> bool {
    matches!(c,
        '\u{00A9}' | '\u{00AE}' | '\u{203C}' | '\u{2049}' | '\u{2122}' | '\u{2139}' | '\u{2190}'..='\u{21FF}'
        | '\u{2300}'..='\u{23FF}' | '\u{24C2}' | '\u{25A0}'..='\u{27BF}' | '\u{2900}'..='\u{297F}'
        | '\u{2B00}'..='\u{2BFF}' | '\u{3030}' | '\u{303D}' | '\u{3297}' | '\u{3299}' | '\u{1F000}'..='\u{1FAFF}')
}

/// Whether a zero-width joiner or non-joiner between `prev` and `next` shapes letters: the
/// Arabic and Indic scripts use them inside words.
fn joins_script(prev: Option<char>, next: Option<char>) -> bool {
    let joining = |c: char| {
        !is_invisible(c)
            && matches!(c, '\u{0600}'..='\u{08FF}' | '\u{0900}'..='\u{0DFF}' | '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFC}')
    };
    prev.is_some_and(joining) && next.is_some_and(joining)
}

/// A character that shows: a letter or digit of any script, or any other character that is
/// not a space, a control, invisible, a joiner, a bidi control or a combining mark.
fn is_visible(c: char) -> bool {
    c.is_alphanumeric()
        || !(c.is_whitespace()
            || c.is_control()
            || is_invisible(c)
            || is_bidi_control(c)
            || matches!(c, '\u{200C}' | '\u{200D}')
            || is_combining(c))
}

/// Combining marks that are not letters (a mark alone shows nothing, or a dotted circle).
fn is_combining(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}' | '\u{0483}'..='\u{0489}' | '\u{0591}'..='\u{05BD}' | '\u{05BF}'
        | '\u{05C1}' | '\u{05C2}' | '\u{05C4}' | '\u{05C5}' | '\u{05C7}' | '\u{0610}'..='\u{061A}'
        | '\u{064B}'..='\u{065F}' | '\u{0670}' | '\u{06D6}'..='\u{06DC}' | '\u{06DF}'..='\u{06E4}'
        | '\u{06E7}' | '\u{06E8}' | '\u{06EA}'..='\u{06ED}' | '\u{0E31}' | '\u{0E34}'..='\u{0E3A}'
        | '\u{0E47}'..='\u{0E4E}' | '\u{0EB1}' | '\u{0EB4}'..='\u{0EBC}' | '\u{0EC8}'..='\u{0ECD}'
        | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{302A}'..='\u{302F}'
        | '\u{3099}' | '\u{309A}' | '\u{FE20}'..='\u{FE2F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Option<String> {
        label(s, 64)
    }

    #[test]
    fn labels_accept_unicode_and_trim() {
        assert_eq!(l("  주간 회의 ").as_deref(), Some("주간 회의"));
        assert_eq!(label("<img src=x onerror=alert(1)>", 32).as_deref(), Some("<img src=x onerror=alert(1)>"));
        assert_eq!(label("가".repeat(32).as_str(), 32).map(|s| s.chars().count()), Some(32));
        for name in
            ["Zoë", "Zoe\u{0308}", "José", "Nguyễn", "محمد", "דנה", "สมชาย", "राहुल", "李小龙", "🎉", "★", "@@", "1"]
        {
            assert_eq!(l(name).as_deref(), Some(name), "{name}");
        }
    }

    #[test]
    fn labels_refuse_empty_long_and_control() {
        assert_eq!(l("   "), None);
        assert_eq!(l(&"a".repeat(65)), None);
        assert_eq!(l("a\nb"), None);
        assert_eq!(l("a\u{0}b"), None);
        assert_eq!(l("evil\u{202E}gpj.exe"), None);
        assert_eq!(l("a\u{2067}b"), None);
    }

    #[test]
    fn labels_made_only_of_invisible_characters_are_refused() {
        for s in [
            "\u{200B}",
            "\u{3164}",
            "\u{2800}",
            "\u{00AD}",
            "\u{FE0F}",
            "\u{FEFF}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            "\u{E0041}\u{E007F}",
            "\u{E0100}",
            "\u{180E}",
            "\u{0301}",
            "\u{0301}\u{0302}\u{20DD}",
            "\u{200D}\u{200C}",
            "\u{3000}\u{200B} \u{2800}\u{2060}",
        ] {
            assert_eq!(l(s), None, "{s:?}");
        }
    }

    #[test]
    fn invisible_characters_that_only_change_identity_are_stripped() {
        assert_eq!(l("Dana\u{200B}").as_deref(), Some("Dana"));
        assert_eq!(l("\u{3164}Dana\u{2800}").as_deref(), Some("Dana"));
        assert_eq!(l("Da\u{00AD}na\u{FE0F}\u{200D}").as_deref(), Some("Dana"));
        assert_eq!(l("Da\u{200C}na").as_deref(), Some("Dana"), "no joiner inside Latin");
        assert_eq!(l("Mina\u{3000}\u{00A0} Kim").as_deref(), Some("Mina Kim"), "one space");
        assert_eq!(l("r\u{200B}").as_deref(), Some("r"));
    }

    #[test]
    fn joiners_stay_where_they_join() {
        for s in [
            "👩\u{200D}💻",
            "🏳\u{FE0F}\u{200D}🌈",
            "1\u{FE0F}\u{20E3}",
            "❤\u{FE0F}",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "👍🏽",
            "می\u{200C}خواهم",
            "क\u{094D}\u{200D}ष",
        ] {
            assert_eq!(l(s).as_deref(), Some(s), "{s:?}");
        }
        assert_eq!(l("👩\u{200D}\u{200B}💻").as_deref(), Some("👩💻"));
        assert_eq!(l("a\u{FE0F}").as_deref(), Some("a"));
    }

    #[test]
    fn cleaning_is_stable() {
        for s in
            ["Dana\u{200B}", "👩\u{200D}\u{200D}💻", "ب\u{200C}\u{061C}x", "a \u{200B} b", " 🏴\u{E0067}\u{E007F}x "]
        {
            let once = l(s).expect("valid");
            assert_eq!(l(&once), Some(once.clone()), "{s:?}");
        }
    }

    #[test]
    fn chat_allows_newlines_not_other_controls() {
        assert_eq!(chat_text(" hi\nthere ", 10).as_deref(), Some("hi\nthere"));
        assert_eq!(chat_text("bell\u{7}", 10), None);
        assert_eq!(chat_text("", 10), None);
        assert_eq!(chat_text(&"x".repeat(11), 10), None);
    }

    #[test]
    fn chat_must_show_something_and_keeps_emoji_sequences() {
        for s in ["\u{200B}", "\u{3164}\u{2800}", " \u{FE0F} ", "\u{2800}\n\u{2800}", "\u{202E}"] {
            assert_eq!(chat_text(s, 100), None, "{s:?}");
        }
        assert_eq!(chat_text("a\u{200B}b", 100).as_deref(), Some("ab"));
        assert_eq!(chat_text("look \u{202E}gpj.exe", 100).as_deref(), Some("look gpj.exe"));
        for s in ["👩\u{200D}💻 on it", "1\u{FE0F}\u{20E3} ❤\u{FE0F}", "⠀⣿⣿\n⣿⠀⣿"] {
            assert_eq!(chat_text(s, 100).as_deref(), Some(s), "{s:?}");
        }
    }

    #[test]
    fn passwords_are_trimmed_and_kept_as_typed() {
        assert_eq!(password(" blue whale ", 64), Some("blue whale"));
        assert_eq!(password("a\u{200B}", 64), Some("a\u{200B}"));
        assert_eq!(password("  ", 64), None);
        assert_eq!(password("a\nb", 64), None);
        assert_eq!(password(&"a".repeat(65), 64), None);
    }
}
