//! Report output: an aligned table with human units, JSON and CSV with raw
//! numbers.

use std::fmt::Write as _;
use std::io::Write;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

use crate::error::StoreError;
use crate::report::escape;
use crate::report::filters::DEFAULT_RULE;
use crate::report::query::{Cell, GroupBy, Query, Row, Sums};
use crate::services;
use crate::timespec::{human_time, rfc3339_s};

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.0 MiB`, `2.1 GiB`.
pub fn human_bytes(n: u64) -> String {
    let mut s = String::new();
    push_human_bytes(&mut s, n);
    s
}

/// [`human_bytes`], appended to `s`.
fn push_human_bytes(s: &mut String, n: u64) {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        let _ = write!(s, "{n} B");
        return;
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let _ = write!(s, "{v:.1} {}", UNITS[u]);
}

/// The whole of a report, ready to print.
#[derive(Debug)]
pub struct Report<'a> {
    pub query: &'a Query,
    /// Rows shown (after `--top`).
    pub rows: &'a [Row],
    /// All traffic that matched, including groups left out by `--top`.
    pub total: Sums,
    /// Groups left out by `--top`, and their traffic.
    pub other: Option<(usize, Sums)>,
}

fn columns(by: &[GroupBy]) -> Vec<&'static str> {
    by.iter()
        .flat_map(|g| g.columns().iter().copied())
        .collect()
}

/// A JSON object that keeps its keys in the order they were added.
struct Ordered<'a>(Vec<(&'static str, Node<'a>)>);

/// A value inside an [`Ordered`] object.
enum Node<'a> {
    Value(Value),
    Object(Ordered<'a>),
    Rows(JsonRows<'a>),
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            match v {
                Node::Value(v) => m.serialize_entry(k, v)?,
                Node::Object(o) => m.serialize_entry(k, o)?,
                Node::Rows(r) => m.serialize_entry(k, r)?,
            }
        }
        m.end()
    }
}

/// The rows of a JSON report, written as they are serialized (no copy of
/// the rows as JSON values in between).
struct JsonRows<'a> {
    columns: Vec<&'static str>,
    rows: &'a [Row],
}

/// One row of a JSON report: the time bucket, the key's columns, the bytes.
struct JsonRow<'a> {
    columns: &'a [&'static str],
    row: &'a Row,
}

impl Serialize for JsonRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.rows.iter().map(|row| JsonRow {
            columns: &self.columns,
            row,
        }))
    }
}

impl Serialize for JsonRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let row = self.row;
        let mut m = s.serialize_map(None)?;
        if let Some(b) = row.bucket {
            m.serialize_entry("time", &rfc3339_s(b))?;
            m.serialize_entry("bucket_start", &b)?;
        }
        for (c, cell) in self.columns.iter().zip(&row.key) {
            match cell {
                Cell::Null => m.serialize_entry(c, &())?,
                Cell::Int(i) => m.serialize_entry(c, i)?,
                Cell::Text(t) => m.serialize_entry(c, t)?,
            }
        }
        m.serialize_entry("tx_bytes", &row.tx_bytes)?;
        m.serialize_entry("rx_bytes", &row.rx_bytes)?;
        m.serialize_entry("total_bytes", &row.total())?;
        m.serialize_entry("tx_packets", &row.tx_packets)?;
        m.serialize_entry("rx_packets", &row.rx_packets)?;
        m.serialize_entry("flows", &row.flows)?;
        m.serialize_entry("flows_folded", &row.folded)?;
        m.end()
    }
}

fn v(value: Value) -> Node<'static> {
    Node::Value(value)
}

fn out_err(e: std::io::Error) -> StoreError {
    StoreError::output(e)
}

/// JSON: one document with the window, the rows and the total.
pub fn write_json(out: &mut dyn Write, r: &Report<'_>) -> Result<(), StoreError> {
    let mut doc = vec![
        ("since", v(json!(rfc3339_s(r.query.since)))),
        ("until", v(json!(rfc3339_s(r.query.until)))),
        (
            "by",
            v(json!(r
                .query
                .by
                .iter()
                .map(|g| by_name(*g))
                .collect::<Vec<_>>())),
        ),
    ];
    if let Some(b) = r.query.bucket {
        doc.push(("bucket_seconds", v(json!(b))));
    }
    doc.push((
        "rows",
        Node::Rows(JsonRows {
            columns: columns(&r.query.by),
            rows: r.rows,
        }),
    ));
    doc.push((
        "total",
        Node::Object(Ordered(vec![
            ("tx_bytes", v(json!(r.total.tx_bytes))),
            ("rx_bytes", v(json!(r.total.rx_bytes))),
            ("total_bytes", v(json!(r.total.total()))),
            ("tx_packets", v(json!(r.total.tx_packets))),
            ("rx_packets", v(json!(r.total.rx_packets))),
            ("flows", v(json!(r.total.flows))),
            ("flows_folded", v(json!(r.total.folded))),
        ])),
    ));
    serde_json::to_writer_pretty(&mut *out, &Ordered(doc))?;
    writeln!(out).map_err(out_err)
}

/// The name of a grouping as written on the command line.
pub fn by_name(g: GroupBy) -> &'static str {
    match g {
        GroupBy::Exe => "exe",
        GroupBy::Process => "process",
        GroupBy::User => "user",
        GroupBy::Cgroup => "cgroup",
        GroupBy::Remote => "remote",
        GroupBy::Host => "host",
        GroupBy::Port => "port",
        GroupBy::Proto => "proto",
        GroupBy::Direction => "direction",
        GroupBy::Rule => "rule",
    }
}

#[cfg(test)]
fn csv_field(s: &str) -> String {
    let mut out = String::new();
    push_csv_field(&mut out, s);
    out
}

/// A CSV text field, appended to `out`: one that a spreadsheet would take
/// for a formula gets a `'` in front ([`escape::csv_text`]), and the field
/// is quoted only when it needs to be.
pub(crate) fn push_csv_field(out: &mut String, s: &str) {
    let s = escape::csv_text(s);
    let s = s.as_ref();
    if s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// CSV: a header line, then one line per row, raw numbers.
pub fn write_csv(out: &mut dyn Write, r: &Report<'_>) -> Result<(), StoreError> {
    let mut header: Vec<&str> = Vec::new();
    if r.query.bucket.is_some() {
        header.extend(["bucket_start", "time"]);
    }
    header.extend(columns(&r.query.by));
    header.extend([
        "tx_bytes",
        "rx_bytes",
        "total_bytes",
        "tx_packets",
        "rx_packets",
        "flows",
        "flows_folded",
    ]);
    writeln!(out, "{}", header.join(",")).map_err(out_err)?;
    let mut line = String::new();
    for row in r.rows {
        line.clear();
        if let Some(b) = row.bucket {
            let _ = write!(line, "{b},{},", rfc3339_s(b));
        }
        for c in &row.key {
            match c {
                Cell::Null => {}
                Cell::Int(i) => {
                    let _ = write!(line, "{i}");
                }
                Cell::Text(t) => push_csv_field(&mut line, t),
            }
            line.push(',');
        }
        let _ = writeln!(
            line,
            "{},{},{},{},{},{},{}",
            row.tx_bytes,
            row.rx_bytes,
            row.total(),
            row.tx_packets,
            row.rx_packets,
            row.flows,
            row.folded
        );
        out.write_all(line.as_bytes()).map_err(out_err)?;
    }
    Ok(())
}

/// Table cells of a group key: ports carry their service name, a missing
/// value is shown as `-`.
pub(crate) fn key_cells(by: &[GroupBy], key: &[Cell]) -> Vec<String> {
    let mut cells = Cells::default();
    push_key_cells(&mut cells, by, key);
    (0..cells.len()).map(|i| cells.get(i).to_string()).collect()
}

/// [`key_cells`], appended to `cells`.
fn push_key_cells(cells: &mut Cells, by: &[GroupBy], key: &[Cell]) {
    let mut i = 0;
    for g in by {
        let s = &mut cells.text;
        match g {
            GroupBy::Port => {
                if let Cell::Int(_) | Cell::Text(_) = &key[i] {
                    push_text_or_dash(s, &key[i]);
                }
                if let Some(name) = match &key[i] {
                    Cell::Int(p) => u16::try_from(*p).ok().and_then(services::service_name),
                    Cell::Text(p) => p.parse::<u16>().ok().and_then(services::service_name),
                    Cell::Null => None,
                } {
                    let _ = write!(s, " ({name})");
                }
                i += 2;
            }
            GroupBy::Exe => {
                s.push_str(&exe_text(cell_text(&key[i]), cell_text(&key[i + 1])));
                i += 2;
            }
            GroupBy::Rule => {
                match (&key[i], &key[i + 1]) {
                    (Cell::Null, Cell::Text(_)) => s.push_str(DEFAULT_RULE),
                    (rule, _) => push_text_or_dash(s, rule),
                }
                i += 2;
            }
            GroupBy::Process => {
                push_text_or_dash(s, &key[i + 1]);
                s.push_str(" [");
                push_text_or_dash(s, &key[i]);
                s.push(']');
                i += 2;
            }
            _ => {
                push_text_or_dash(s, &key[i]);
                i += 1;
            }
        }
        cells.end();
    }
}

fn cell_text(c: &Cell) -> Option<&str> {
    match c {
        Cell::Text(t) => Some(t),
        _ => None,
    }
}

fn push_text_or_dash(s: &mut String, c: &Cell) {
    match c {
        Cell::Null => s.push('-'),
        Cell::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Cell::Text(t) => s.push_str(t),
    }
}

/// The cells of a table, one after the other in one string.
#[derive(Debug, Default)]
struct Cells {
    text: String,
    /// Where each cell ends in `text`.
    ends: Vec<usize>,
}

impl Cells {
    /// Ends the cell written to `text` since the previous one, its control
    /// characters shown escaped ([`escape::terminal`]).
    fn end(&mut self) {
        let start = self.ends.last().copied().unwrap_or(0);
        if escape::needs_terminal_escape(&self.text[start..]) {
            let raw = self.text.split_off(start);
            escape::push_terminal(&mut self.text, &raw);
        }
        self.ends.push(self.text.len());
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.end();
    }

    fn push_bytes(&mut self, n: u64) {
        push_human_bytes(&mut self.text, n);
        self.end();
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// The aligned table for people.
pub fn write_table(out: &mut dyn Write, r: &Report<'_>) -> Result<(), StoreError> {
    let q = r.query;
    let by_list: Vec<&str> = q.by.iter().map(|g| by_name(*g)).collect();
    let mut caption = format!(
        "traffic from {} to {} UTC, by {}",
        human_time(q.since, true),
        human_time(q.until, true),
        by_list.join(", ")
    );
    if let Some(b) = q.bucket {
        caption.push_str(&format!(", per {}", human_span(b)));
    }
    writeln!(out, "{caption}").map_err(out_err)?;

    // Header, rows and footer, each `columns` cells.
    let mut cells = Cells::default();
    if q.bucket.is_some() {
        cells.push("TIME (UTC)");
    }
    for g in &q.by {
        cells.push(&by_name(*g).to_uppercase());
    }
    let key_cols = cells.len();
    for h in ["SENT", "RECEIVED", "TOTAL"] {
        cells.push(h);
    }
    let columns = cells.len();

    let seconds = q.bucket.is_some_and(|b| b % 60 != 0);
    for row in r.rows {
        if let Some(b) = row.bucket {
            cells.push(&human_time(b, seconds));
        }
        push_key_cells(&mut cells, &q.by, &row.key);
        for n in [row.tx_bytes, row.rx_bytes, row.total()] {
            cells.push_bytes(n);
        }
    }
    let mut footer = |first: &str, s: &Sums| {
        let (tx, rx) = (s.tx_bytes, s.rx_bytes);
        cells.push(first);
        for _ in 1..key_cols {
            cells.push("");
        }
        for n in [tx, rx, tx.saturating_add(rx)] {
            cells.push_bytes(n);
        }
    };
    if let Some((n, rest)) = &r.other {
        footer(&format!("({n} more)"), rest);
    }
    footer("TOTAL", &r.total);

    let width = |s: &str| {
        if s.is_ascii() {
            s.len()
        } else {
            s.chars().count()
        }
    };
    let mut widths = vec![0usize; columns];
    for i in 0..cells.len() {
        let w = &mut widths[i % columns];
        *w = (*w).max(width(cells.get(i)));
    }
    let mut line = String::new();
    for first in (0..cells.len()).step_by(columns) {
        line.clear();
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(first + i);
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w - width(c);
            if i < key_cols {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(c);
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(out_err)?;
    }
    if r.total.folded > 0 {
        // The flows table lacks their rows: say so where flows are counted.
        writeln!(
            out,
            "{} flows, {} of them folded into their series (short flows while many arrived: no rows of their own)",
            r.total.flows, r.total.folded
        )
        .map_err(out_err)?;
    }
    Ok(())
}

/// A JSON object whose keys keep the order they were given in.
pub(crate) struct Fields(pub(crate) Vec<(&'static str, Value)>);

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Writes `doc` as one pretty-printed JSON document.
pub(crate) fn write_json_doc(out: &mut dyn Write, doc: &impl Serialize) -> Result<(), StoreError> {
    serde_json::to_writer_pretty(&mut *out, doc)?;
    writeln!(out).map_err(out_err)
}

/// CSV: the header, then one line per row of cells: null is empty, a
/// number is written as it is, text through [`push_csv_field`].
pub(crate) fn write_csv_rows(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<Value>],
) -> Result<(), StoreError> {
    writeln!(out, "{}", header.join(",")).map_err(out_err)?;
    let mut line = String::new();
    for row in rows {
        line.clear();
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            match c {
                Value::Null => {}
                Value::String(t) => push_csv_field(&mut line, t),
                Value::Number(n) => {
                    let _ = write!(line, "{n}");
                }
                v => push_csv_field(&mut line, &v.to_string()),
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes()).map_err(out_err)?;
    }
    Ok(())
}

/// A caption, then `rows` (the header first) aligned in columns: the first
/// `left` columns left-aligned, the others (numbers) right-aligned. Control
/// characters in a cell are shown escaped ([`escape::terminal`]).
pub(crate) fn write_aligned(
    out: &mut dyn Write,
    caption: &str,
    rows: &[Vec<String>],
    left: usize,
) -> Result<(), StoreError> {
    writeln!(out, "{caption}").map_err(out_err)?;
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape::terminal(c)).collect())
        .collect();
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let mut line = String::new();
    for row in &rows {
        line.clear();
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - width(c);
            if i < left {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(c);
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(out_err)?;
    }
    Ok(())
}

/// How a table shows an executable: its path, why it is not known
/// (`(unknown: exited before first seen)`), or `-`.
pub(crate) fn exe_text(exe: Option<&str>, unknown: Option<&str>) -> String {
    match (exe, unknown) {
        (Some(e), _) => e.to_string(),
        (None, Some(why)) => format!("(unknown: {why})"),
        (None, None) => "-".to_string(),
    }
}

/// `10s`, `1m`, `1h`, `1d`, or a combination.
pub fn human_span(secs: i64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut s = String::new();
    let mut left = secs;
    for (n, u) in units {
        if left >= n {
            s.push_str(&format!("{}{u}", left / n));
            left %= n;
        }
    }
    if s.is_empty() {
        s.push_str("0s");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_span(90), "1m30s");
        assert_eq!(human_span(86_400), "1d");
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("/usr/bin/curl"), "/usr/bin/curl");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
