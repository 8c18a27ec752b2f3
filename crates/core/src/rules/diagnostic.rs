//! Errors in a rules file, with the file, line and column a person needs to
//! find and fix them.

use std::fmt;
use std::ops::Range;

/// One problem in a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A rules file that was refused, with every problem found in it, in file
/// order. Displayed as one `file:line:column: message` line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.diagnostics)
    }
}

/// Diagnostics one `file:line:column: message` line each, for any file
/// that is refused with them (rules, configuration).
pub fn write_lines(f: &mut fmt::Formatter<'_>, diagnostics: &[Diagnostic]) -> fmt::Result {
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        write!(f, "{d}")?;
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Where each line of a text starts, so that finding the line of an offset
/// is a binary search and not a scan of everything before it (a file of
/// many rules asks once per rule).
#[derive(Debug)]
pub(crate) struct Lines {
    /// Byte offset of the start of each line; `starts[0]` is 0.
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Lines { starts }
    }

    /// Same as [`line_col`], for the text this was made from.
    pub(crate) fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// Collects diagnostics against one source text.
#[derive(Debug)]
pub(crate) struct Diags<'a> {
    file: &'a str,
    text: &'a str,
    lines: Lines,
    list: Vec<(usize, Diagnostic)>,
}

impl<'a> Diags<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Diags {
            file,
            text,
            lines: Lines::new(text),
            list: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, column) = self.lines.line_col(self.text, span.start);
        self.list.push((
            span.start,
            Diagnostic {
                file: self.file.to_string(),
                line,
                column,
                message: message.into(),
            },
        ));
    }

    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        self.lines.line_col(self.text, span.start).0
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems found so far, in file order.
    pub(crate) fn into_error(mut self) -> RulesError {
        self.list.sort_by_key(|(off, _)| *off);
        RulesError {
            diagnostics: self.list.into_iter().map(|(_, d)| d).collect(),
        }
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word`, if it is close enough to be a
/// likely typo; `-` and `_` count as the same letter, so either spelling of
/// a key finds it.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let lower = norm(word);
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &norm(c)), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "ab\ncdé\nx";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 5), (2, 3));
        // After the two-byte é.
        assert_eq!(line_col(t, 8), (3, 1));
    }

    #[test]
    fn the_line_index_agrees_with_line_col() {
        for t in ["", "a", "\n", "ab\ncdé\nx", "\n\nxé\n", "é\n\n"] {
            let lines = Lines::new(t);
            for off in 0..=t.len() + 1 {
                assert_eq!(lines.line_col(t, off), line_col(t, off), "{t:?} at {off}");
            }
        }
    }

    #[test]
    fn suggestions_find_typos() {
        let keys = ["remote", "remote_port", "local_port", "exe"];
        assert_eq!(closest("remot", &keys), Some("remote"));
        assert_eq!(closest("remote-port", &keys), Some("remote_port"));
        assert_eq!(closest("dport", &keys), None);
    }
}
