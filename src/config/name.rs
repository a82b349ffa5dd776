//! Binding names: the one rule that the configuration file and the control
//! socket both apply, and the one way a name is printed.
//!
//! A name is chosen by whoever writes the file or sends the request, and
//! ends up inside tetherd's log lines (`binding "NAME" #7 (uid 1000): ...`).
//! So it must never be able to look like tetherd's own words: it cannot
//! close the quotes around it, break the line, hide characters, or reorder
//! what is shown after it. The rule is an allow-list: letters and digits of
//! any script, combining marks on them, ASCII punctuation other than the
//! double quote, backslash and backquote, and single ASCII spaces between
//! words. The characters that could deceive (controls, invisible format
//! characters, bidirectional controls, line and paragraph separators,
//! spaces other than U+0020, ...) are named by explicit ranges below, so
//! that an error can say what a character is.
//!
//! The standard library has no general-category lookup. Letters and digits
//! are `char::is_alphanumeric`; a combining mark is found through
//! `escape_debug`, which escapes a printable grapheme extender only at the
//! start of a string (documented on `str::escape_debug`).

/// The longest binding name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The most combining marks in a row on one letter: enough for any script
/// (Vietnamese, Hebrew points, Indic signs), too few to pile marks over the
/// neighbouring lines of a terminal.
const MAX_MARKS_IN_A_ROW: usize = 4;

/// What a name may hold, appended to every error about a character.
pub const NAME_RULE: &str = "a name has letters and digits of any script, combining marks \
     on them, ASCII punctuation other than the double quote, backslash and backquote, \
     and single spaces between words";

/// Bidirectional controls: they reorder what is displayed after them.
const BIDI: &[(u32, u32)] = &[
    (0x061C, 0x061C), // ARABIC LETTER MARK
    (0x200E, 0x200F), // LEFT-TO-RIGHT and RIGHT-TO-LEFT MARK
    (0x202A, 0x202E), // LRE, RLE, PDF, LRO, RLO
    (0x2066, 0x2069), // LRI, RLI, FSI, PDI
];

/// Line and paragraph separators (Zl, Zp): many viewers break the line.
const SEPARATORS: &[(u32, u32)] = &[(0x2028, 0x2029)];

/// Spaces other than U+0020 (Zs), which look like it or like nothing.
const OTHER_SPACES: &[(u32, u32)] = &[
    (0x00A0, 0x00A0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
];

/// Variation selectors: they change how the character before them looks.
const VARIATION_SELECTORS: &[(u32, u32)] = &[
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0xFE00, 0xFE0F),
    (0xE0100, 0xE01EF),
];

/// Tag characters: invisible, they once spelled language tags.
const TAGS: &[(u32, u32)] = &[(0xE0000, 0xE007F)];

/// Format characters (Cf) and other default-ignorable code points that
/// show nothing, or nothing a reader would notice, and are not named
/// above: zero-width spaces and joiners, the soft hyphen, the byte order
/// mark, invisible operators, interlinear annotations, Hangul fillers,
/// prepended concatenation marks, shorthand and musical format controls.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD), // SOFT HYPHEN
    (0x034F, 0x034F), // COMBINING GRAPHEME JOINER
    (0x0600, 0x0605), // Arabic number signs (prepended concatenation marks)
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160), // HANGUL CHOSEONG and JUNGSEONG FILLER
    (0x17B4, 0x17B5), // KHMER VOWEL INHERENT AQ and AA
    (0x180E, 0x180E), // MONGOLIAN VOWEL SEPARATOR
    (0x200B, 0x200D), // ZERO WIDTH SPACE, NON-JOINER, JOINER
    (0x2060, 0x2065), // WORD JOINER, invisible operators
    (0x206A, 0x206F), // deprecated format characters
    (0x3164, 0x3164), // HANGUL FILLER
    (0xFEFF, 0xFEFF), // ZERO WIDTH NO-BREAK SPACE (byte order mark)
    (0xFFA0, 0xFFA0), // HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFFB), // unassigned specials, interlinear annotations
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol format controls
    (0xE0080, 0xE00FF), // default ignorable, unassigned
    (0xE01F0, 0xE0FFF), // default ignorable, unassigned
];

/// Private use: a font may draw anything there.
const PRIVATE_USE: &[(u32, u32)] = &[(0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD)];

/// Letters that look like a double quote (modifier letters).
const QUOTE_LOOKALIKES: &[(u32, u32)] = &[
    (0x02BA, 0x02BA), // MODIFIER LETTER DOUBLE PRIME
    (0x02EE, 0x02EE), // MODIFIER LETTER DOUBLE APOSTROPHE
];

/// What `c` is, if it can hide, reorder or break the text around it: a
/// control, a bidirectional control, a separator, a space other than
/// U+0020, a variation selector, a tag, an invisible format character, a
/// private-use character or a noncharacter.
fn hidden(c: char) -> Option<&'static str> {
    let code = u32::from(c);
    let within = |ranges: &[(u32, u32)]| within_any(c, ranges);
    if c.is_control() {
        Some("a control character")
    } else if within(BIDI) {
        Some("a bidirectional control")
    } else if within(SEPARATORS) {
        Some("a line or paragraph separator")
    } else if within(OTHER_SPACES) {
        Some("a space other than U+0020")
    } else if within(VARIATION_SELECTORS) {
        Some("a variation selector")
    } else if within(TAGS) {
        Some("a tag character")
    } else if within(INVISIBLE) {
        Some("an invisible format character")
    } else if within(PRIVATE_USE) {
        Some("a private-use character")
    } else if (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE {
        Some("a noncharacter")
    } else if within(QUOTE_LOOKALIKES) {
        Some("a letter that looks like a double quote")
    } else {
        None
    }
}

/// Whether `c` hides, reorders or breaks text around it: a control, a
/// bidirectional control, a separator, a space other than U+0020, a
/// variation selector, a tag, an invisible format, private-use or
/// noncharacter. No line tetherd prints may carry one raw.
pub fn is_hidden(c: char) -> bool {
    hidden(c).is_some() && !within_any(c, QUOTE_LOOKALIKES)
}

/// Whether `c` is in one of `ranges` (inclusive).
fn within_any(c: char, ranges: &[(u32, u32)]) -> bool {
    let code = u32::from(c);
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
}

/// Whether `c` is a combining mark (a printable grapheme extender: it is
/// drawn on the character before it). `escape_debug` on a lone character
/// escapes grapheme extenders and non-printable characters; on a string it
/// leaves a printable extender alone unless it comes first.
fn is_mark(c: char) -> bool {
    if c.is_ascii() || c.escape_debug().eq(std::iter::once(c)) {
        return false;
    }
    let after_letter = format!("a{c}");
    after_letter.escape_debug().eq(after_letter.chars())
}

/// What is wrong with one character of a name, whatever its place; `None`
/// if it may appear (a mark still needs a letter before it).
fn refused(c: char) -> Option<&'static str> {
    if c.is_ascii() {
        return match c {
            '"' => Some("a double quote"),
            '\\' => Some("a backslash"),
            '`' => Some("a backquote"),
            ' ' => None,
            c if c.is_ascii_alphanumeric() || c.is_ascii_punctuation() => None,
            _ => Some("a control character"),
        };
    }
    if let Some(why) = hidden(c) {
        return Some(why);
    }
    if c.is_alphanumeric() || is_mark(c) {
        return None;
    }
    Some("neither a letter, a digit, a combining mark nor ASCII punctuation")
}

/// Checks a binding name: 1 to 64 characters that [`NAME_RULE`] allows.
/// The error shows the name escaped (see [`quote_name`]) and the offending
/// character as `U+XXXX`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name (leave the name out or write a label)".to_string());
    }
    let n_chars = name.chars().count();
    if n_chars > MAX_NAME_CHARS {
        return Err(format!(
            "name is {n_chars} characters long (at most {MAX_NAME_CHARS})"
        ));
    }
    let shown = quote_name(name);
    let mut prev: Option<char> = None;
    let mut n_marks = 0;
    for (idx, c) in name.chars().enumerate() {
        let at = idx + 1;
        if let Some(why) = refused(c) {
            return Err(format!(
                "name {shown} has {} at character {at}, {why} ({NAME_RULE})",
                code_point(c)
            ));
        }
        if c == ' ' {
            let place = match prev {
                None => Some("starts with a space"),
                Some(' ') => Some("has two spaces in a row"),
                Some(_) if at == n_chars => Some("ends with a space"),
                Some(_) => None,
            };
            if let Some(place) = place {
                return Err(format!(
                    "name {shown} {place} at character {at} ({NAME_RULE})"
                ));
            }
        }
        if !c.is_ascii() && is_mark(c) {
            n_marks += 1;
            let on_letter = prev.is_some_and(|p| p.is_alphanumeric() || is_mark(p));
            if !on_letter {
                return Err(format!(
                    "name {shown} has {} at character {at}, a combining mark with no letter before it ({NAME_RULE})",
                    code_point(c)
                ));
            }
            if n_marks > MAX_MARKS_IN_A_ROW {
                return Err(format!(
                    "name {shown} has more than {MAX_MARKS_IN_A_ROW} combining marks in a row at character {at}"
                ));
            }
        } else {
            n_marks = 0;
        }
        prev = Some(c);
    }
    Ok(())
}

/// `U+XXXX`.
fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// The name as it is printed anywhere (logs, errors, `tetherctl list`):
/// characters a name may hold are shown as they are, a double quote as
/// `\"`, a backslash as `\\`, and every other character a name may not
/// hold as `\u{XXXX}`. Names that passed [`check_name`] come out unchanged;
/// any other text (an old state file, a daemon of another version) can
/// still not hide or fake anything.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev: Option<char> = None;
    for c in name.chars() {
        let bare_mark =
            !c.is_ascii() && is_mark(c) && !prev.is_some_and(|p| p.is_alphanumeric() || is_mark(p));
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' ' => out.push(' '),
            c if refused(c).is_some() || bare_mark => {
                out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
            }
            c => out.push(c),
        }
        prev = Some(c);
    }
    out
}

/// The name in double quotes, escaped by [`escape_name`]: a name can never
/// close its quotes.
pub fn quote_name(name: &str) -> String {
    format!("\"{}\"", escape_name(name))
}

/// A valid name made from a program path, for `tetherctl exec`: the last
/// component, with every character a name may not hold dropped, runs of
/// spaces made one, and cut to [`MAX_NAME_CHARS`]; `None` if nothing is
/// left.
pub fn name_for_program(program: &str) -> Option<String> {
    let base = program
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let mut out = String::new();
    let mut n_chars = 0;
    let mut n_marks = 0;
    let mut prev: Option<char> = None;
    for c in base.chars() {
        if n_chars == MAX_NAME_CHARS {
            break;
        }
        let keep = if c == ' ' {
            prev.is_some_and(|p| p != ' ')
        } else if refused(c).is_some() {
            false
        } else if !c.is_ascii() && is_mark(c) {
            prev.is_some_and(|p| p.is_alphanumeric() || is_mark(p)) && n_marks < MAX_MARKS_IN_A_ROW
        } else {
            true
        };
        if !keep {
            continue;
        }
        if !c.is_ascii() && is_mark(c) {
            n_marks += 1;
        } else {
            n_marks = 0;
        }
        out.push(c);
        n_chars += 1;
        prev = Some(c);
    }
    let name = out.trim_end_matches(' ');
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The error for `name`, which must be refused.
    fn refusal(name: &str) -> String {
        match check_name(name) {
            Ok(()) => panic!("{name:?} was accepted"),
            Err(err) => err,
        }
    }

    #[test]
    fn names_of_any_script_are_accepted() {
        for name in [
            "qemu",
            "qemu-nbd: disk 1 (sda)",
            "a.b_c/d@e+f=g,h;i'j!k?l#m$n%o&p*q~r^s|t<u>v{w}x[y]z",
            "Ελληνικά",
            "日本語の名前",
            "Привет мир",
            "नमस्ते",
            "e\u{301}te\u{301}",
            "שָׁלוֹם",
            "①²½",
            "ʻokina",
            &"é".repeat(64),
        ] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
            assert_eq!(escape_name(name), name, "printed as it is");
        }
    }

    #[test]
    fn every_deceptive_range_is_refused_with_its_code_point() {
        let cases: &[(char, &str)] = &[
            ('\u{7}', "a control character"),
            ('\u{7F}', "a control character"),
            ('\u{85}', "a control character"),
            ('\u{061C}', "a bidirectional control"),
            ('\u{200E}', "a bidirectional control"),
            ('\u{200F}', "a bidirectional control"),
            ('\u{202A}', "a bidirectional control"),
            ('\u{202E}', "a bidirectional control"),
            ('\u{2066}', "a bidirectional control"),
            ('\u{2069}', "a bidirectional control"),
            ('\u{2028}', "a line or paragraph separator"),
            ('\u{2029}', "a line or paragraph separator"),
            ('\u{00A0}', "a space other than U+0020"),
            ('\u{1680}', "a space other than U+0020"),
            ('\u{2000}', "a space other than U+0020"),
            ('\u{200A}', "a space other than U+0020"),
            ('\u{202F}', "a space other than U+0020"),
            ('\u{205F}', "a space other than U+0020"),
            ('\u{3000}', "a space other than U+0020"),
            ('\u{FE00}', "a variation selector"),
            ('\u{FE0F}', "a variation selector"),
            ('\u{180B}', "a variation selector"),
            ('\u{E0100}', "a variation selector"),
            ('\u{E01EF}', "a variation selector"),
            ('\u{E0000}', "a tag character"),
            ('\u{E0001}', "a tag character"),
            ('\u{E0041}', "a tag character"),
            ('\u{E007F}', "a tag character"),
            ('\u{00AD}', "an invisible format character"),
            ('\u{034F}', "an invisible format character"),
            ('\u{0600}', "an invisible format character"),
            ('\u{115F}', "an invisible format character"),
            ('\u{180E}', "an invisible format character"),
            ('\u{200B}', "an invisible format character"),
            ('\u{200C}', "an invisible format character"),
            ('\u{200D}', "an invisible format character"),
            ('\u{2060}', "an invisible format character"),
            ('\u{2064}', "an invisible format character"),
            ('\u{206F}', "an invisible format character"),
            ('\u{3164}', "an invisible format character"),
            ('\u{FEFF}', "an invisible format character"),
            ('\u{FFA0}', "an invisible format character"),
            ('\u{FFF9}', "an invisible format character"),
            ('\u{FFFB}', "an invisible format character"),
            ('\u{1BCA0}', "an invisible format character"),
            ('\u{1D173}', "an invisible format character"),
            ('\u{E000}', "a private-use character"),
            ('\u{F8FF}', "a private-use character"),
            ('\u{10FFFD}', "a private-use character"),
            ('\u{FDD0}', "a noncharacter"),
            ('\u{FFFE}', "a noncharacter"),
            ('\u{1FFFF}', "a noncharacter"),
            ('\u{02BA}', "a letter that looks like a double quote"),
            ('\u{02EE}', "a letter that looks like a double quote"),
            ('"', "a double quote"),
            ('\\', "a backslash"),
            ('`', "a backquote"),
            ('\u{201C}', "neither a letter"),
            ('\u{FF02}', "neither a letter"),
            ('\u{1F600}', "neither a letter"),
        ];
        for &(c, why) in cases {
            let err = refusal(&format!("a{c}b"));
            let code = format!("U+{:04X}", u32::from(c));
            assert!(
                err.contains(&format!("has {code} at character 2, {why}")),
                "{code}: {err}"
            );
            assert!(err.ends_with(&format!("({NAME_RULE})")), "{err}");
            assert!(
                !err.contains(c) || c.is_ascii_punctuation(),
                "the error shows {code} raw: {err}"
            );
        }
    }

    #[test]
    fn the_forged_log_fragment_is_refused_and_shown_escaped() {
        assert_eq!(
            refusal("x\" #1 (uid 0): removed (parent exited)"),
            format!(
                "name \"x\\\" #1 (uid 0): removed (parent exited)\" has U+0022 at character 2, a double quote ({NAME_RULE})"
            )
        );
        assert_eq!(
            refusal("a\u{2028}tetherd: info: b"),
            format!(
                "name \"a\\u{{2028}}tetherd: info: b\" has U+2028 at character 2, a line or paragraph separator ({NAME_RULE})"
            )
        );
    }

    #[test]
    fn spaces_only_single_and_inside() {
        assert_eq!(check_name("a b c"), Ok(()));
        assert_eq!(
            refusal(" a"),
            format!("name \" a\" starts with a space at character 1 ({NAME_RULE})")
        );
        assert_eq!(
            refusal("a "),
            format!("name \"a \" ends with a space at character 2 ({NAME_RULE})")
        );
        assert_eq!(
            refusal("a  b"),
            format!("name \"a  b\" has two spaces in a row at character 3 ({NAME_RULE})")
        );
        assert!(refusal(" ").contains("starts with a space"));
    }

    #[test]
    fn combining_marks_need_a_letter_and_stay_few() {
        assert!(refusal("\u{301}a")
            .contains("has U+0301 at character 1, a combining mark with no letter before it"));
        assert!(refusal("a \u{301}").contains("has U+0301 at character 3, a combining mark"));
        assert!(refusal("-\u{301}").contains("a combining mark with no letter"));
        assert_eq!(check_name("a\u{301}\u{302}\u{303}\u{304}"), Ok(()));
        assert!(refusal("a\u{301}\u{302}\u{303}\u{304}\u{305}")
            .contains("more than 4 combining marks in a row at character 6"));
        assert!(is_mark('\u{301}') && is_mark('\u{94D}') && is_mark('\u{5B0}'));
        assert!(!is_mark('a') && !is_mark('"') && !is_mark('\u{202E}') && !is_mark('é'));
    }

    #[test]
    fn lengths() {
        assert_eq!(
            refusal(""),
            "empty name (leave the name out or write a label)"
        );
        assert_eq!(
            refusal(&"x".repeat(65)),
            "name is 65 characters long (at most 64)"
        );
        assert_eq!(check_name(&"x".repeat(64)), Ok(()));
    }

    #[test]
    fn quoting_escapes_what_a_name_may_not_hold() {
        assert_eq!(quote_name("qemu"), "\"qemu\"");
        assert_eq!(
            quote_name("x\" #1 (uid 0)\\\u{202E}\u{2028}\n"),
            "\"x\\\" #1 (uid 0)\\\\\\u{202E}\\u{2028}\\u{000A}\""
        );
        assert_eq!(quote_name("\u{301}a\u{301}"), "\"\\u{0301}a\u{301}\"");
        assert_eq!(escape_name("\u{1F600}"), "\\u{1F600}");
    }

    #[test]
    fn hidden_characters() {
        for c in [
            '\n',
            '\u{202E}',
            '\u{2028}',
            '\u{200B}',
            '\u{A0}',
            '\u{E0041}',
            '\u{FEFF}',
        ] {
            assert!(is_hidden(c), "{c:?}");
        }
        for c in ['a', ' ', '"', 'é', '\u{301}', '\u{2BA}', '\u{1F600}'] {
            assert!(!is_hidden(c), "{c:?}");
        }
    }

    #[test]
    fn program_names_become_valid_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("sleep", Some("sleep")),
            ("/usr/bin/qemu-nbd", Some("qemu-nbd")),
            ("./run.sh", Some("run.sh")),
            ("dir/", Some("dir")),
            ("/tmp/we\"ird\u{202E} name  x ", Some("weird name x")),
            ("/tmp/ lead", Some("lead")),
            ("\u{301}a\u{2028}b", Some("ab")),
            ("/tmp/\"\u{200B}\\`", None),
            ("/", None),
            ("", None),
        ];
        for &(program, expected) in cases {
            assert_eq!(
                name_for_program(program).as_deref(),
                expected,
                "{program:?}"
            );
        }
        let long = name_for_program(&"a".repeat(100));
        assert_eq!(long.map(|n| n.chars().count()), Some(MAX_NAME_CHARS));
        // A space at the cut is dropped, not kept at the end.
        let cut = name_for_program(&format!("{} b", "a".repeat(63)));
        assert_eq!(cut, Some("a".repeat(63)));
    }

    proptest! {
        #[test]
        fn a_program_name_is_always_valid(program in any::<String>()) {
            if let Some(name) = name_for_program(&program) {
                prop_assert_eq!(check_name(&name), Ok(()));
            }
        }

        #[test]
        fn a_quoted_name_never_shows_a_quote_or_hidden_character(name in any::<String>()) {
            let quoted = quote_name(&name);
            let inner = &quoted[1..quoted.len() - 1];
            prop_assert!(!inner.chars().any(is_hidden));
            // Outside escapes (a backslash and the character after it),
            // no double quote.
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                prop_assert_ne!(c, '"');
                if c == '\\' {
                    chars.next();
                }
            }
            if check_name(&name).is_ok() {
                prop_assert_eq!(escape_name(&name), name);
            }
        }
    }
}
