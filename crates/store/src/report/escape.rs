//! Text that any local user chooses (process names, command lines,
//! executable paths, cgroups) made safe for each output it reaches: shown
//! escaped on a terminal, never run as a formula by a spreadsheet, and
//! always valid XML in a chart.
//!
//! JSON needs nothing here: serde_json escapes every control character.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a terminal must be shown `c` escaped: C0 controls (ESC, which
/// starts terminal sequences, among them), DEL, C1 controls (U+009B is a
/// one-character CSI), and the bidirectional controls that reorder what is
/// shown around them.
fn is_terminal_control(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as a terminal may show it: every control character written as
/// visible text (`\n`, `\r`, `\t`, `\x1b`, `\x7f`, `\u{9b}`, `\u{202e}`),
/// so a name can neither move the cursor, clear the screen nor start a
/// line of its own. Everything else, a backslash included, is kept as it is
/// (systemd's cgroup names hold `\x2d`).
pub(crate) fn terminal(s: &str) -> Cow<'_, str> {
    if !needs_terminal_escape(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_terminal(&mut out, s);
    Cow::Owned(out)
}

/// True when [`terminal`] would change `s`.
pub(crate) fn needs_terminal_escape(s: &str) -> bool {
    // Plain printable ASCII, by far the most common, is checked bytewise.
    !s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.chars().any(is_terminal_control)
}

/// [`terminal`], appended to `out`.
pub(crate) fn push_terminal(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_terminal_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The first characters that make a spreadsheet read a cell as a formula
/// (or, for tab and carriage return, hide the one that follows).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV text cell that a spreadsheet shows as text: one that starts with
/// `=`, `+`, `-`, `@`, tab or carriage return gets a single quote `'` in
/// front. Numbers are written apart from text; a text cell that is a plain
/// negative number (`-2`, a uid in the `user` column) is a number to a
/// spreadsheet, not a formula, and is left as it is.
pub(crate) fn csv_text(s: &str) -> Cow<'_, str> {
    if s.starts_with(FORMULA_STARTS) && !is_negative_number(s) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// `-` then digits, with at most one `.` between digits: `-2`, `-0.5`.
fn is_negative_number(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('-') else {
        return false;
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && all_digits(frac)
}

/// Whether XML 1.0 allows `c` in a document (`Char` of the specification:
/// tab, newline, carriage return and everything from U+0020 except the
/// noncharacters U+FFFE and U+FFFF; Rust strings hold no surrogates).
fn xml_allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{fffd}' | '\u{10000}'..)
}

/// `s` as XML character data or an attribute value: `& < > " '` as
/// entities, and the characters XML 1.0 does not allow replaced by U+FFFD,
/// so the document stays well-formed whatever a name holds.
pub(crate) fn xml(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) && s.chars().all(xml_allowed) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if xml_allowed(c) => out.push(c),
            _ => out.push('\u{fffd}'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escape_sequence_is_shown_as_visible_text_on_a_terminal() {
        assert_eq!(terminal("\x1b[2J\x1b[Hroot"), "\\x1b[2J\\x1b[Hroot");
    }

    #[test]
    fn newline_carriage_return_and_tab_are_shown_by_their_usual_escapes() {
        assert_eq!(terminal("a\nb\rc\td"), "a\\nb\\rc\\td");
    }

    #[test]
    fn nul_del_and_other_c0_controls_are_shown_in_hex() {
        assert_eq!(terminal("\0\x07\x08\x7f"), "\\x00\\x07\\x08\\x7f");
    }

    #[test]
    fn c1_and_bidirectional_controls_are_shown_as_unicode_escapes() {
        assert_eq!(terminal("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        assert_eq!(terminal("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(terminal("\u{2066}\u{200f}"), "\\u{2066}\\u{200f}");
    }

    #[test]
    fn printable_text_and_backslashes_are_left_as_they_are() {
        for s in [
            "/usr/bin/curl",
            "/system.slice/systemd-fsck@dev-disk-by\\x2duuid.service",
            "émile → 東京",
            "",
        ] {
            assert!(matches!(terminal(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn a_cell_starting_a_formula_gets_a_quote_in_front_in_csv() {
        assert_eq!(csv_text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_text("+1+1"), "'+1+1");
        assert_eq!(csv_text("-bash"), "'-bash");
        assert_eq!(csv_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_text("\t=1"), "'\t=1");
        assert_eq!(csv_text("\r=1"), "'\r=1");
        assert_eq!(csv_text("curl"), "curl");
        assert_eq!(csv_text("-1+1"), "'-1+1");
        assert_eq!(csv_text("-2."), "'-2.");
        assert_eq!(csv_text("-"), "'-");
        assert_eq!(csv_text("a=b"), "a=b");
    }

    #[test]
    fn a_negative_number_in_a_text_cell_stays_a_number_in_csv() {
        assert_eq!(csv_text("-2"), "-2");
        assert_eq!(csv_text("-0.5"), "-0.5");
        assert_eq!(csv_text("1234"), "1234");
    }

    #[test]
    fn xml_text_escapes_markup_and_replaces_characters_xml_forbids() {
        assert_eq!(
            xml("\x1b[2J<script>&\"'"),
            "\u{fffd}[2J&lt;script&gt;&amp;&quot;&apos;"
        );
        assert_eq!(xml("a\0b\u{fffe}c\td\ne"), "a\u{fffd}b\u{fffd}c\td\ne");
        assert!(matches!(xml("/usr/bin/curl · 東京"), Cow::Borrowed(_)));
    }
}
