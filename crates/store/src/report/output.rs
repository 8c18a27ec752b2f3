//! Report output: an aligned table with human units, JSON and CSV with raw
//! numbers.

use std::io::Write;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

use crate::error::StoreError;
use crate::report::query::{Cell, GroupBy, Query, Row};
use crate::services;
use crate::timespec::{human_time, rfc3339_s};

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.0 MiB`, `2.1 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The whole of a report, ready to print.
#[derive(Debug)]
pub struct Report<'a> {
    pub query: &'a Query,
    /// Rows shown (after `--top`).
    pub rows: &'a [Row],
    /// All traffic that matched, including groups left out by `--top`.
    pub total: (u64, u64),
    /// Groups left out by `--top`, and their traffic.
    pub other: Option<(usize, u64, u64)>,
}

fn columns(by: &[GroupBy]) -> Vec<&'static str> {
    by.iter()
        .flat_map(|g| g.columns().iter().copied())
        .collect()
}

/// A JSON object that keeps its keys in the order they were added.
struct Ordered(Vec<(&'static str, Node)>);

/// A value inside an [`Ordered`] object.
enum Node {
    Value(Value),
    Object(Ordered),
    Rows(Vec<Ordered>),
}

impl Serialize for Ordered {
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

fn v(value: Value) -> Node {
    Node::Value(value)
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Int(i) => json!(i),
        Cell::Text(s) => json!(s),
    }
}

fn cell_text(c: &Cell) -> String {
    match c {
        Cell::Null => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Text(s) => s.clone(),
    }
}

fn out_err(e: std::io::Error) -> StoreError {
    StoreError::output(e)
}

/// JSON: one document with the window, the rows and the total.
pub fn write_json(out: &mut dyn Write, r: &Report<'_>) -> Result<(), StoreError> {
    let cols = columns(&r.query.by);
    let rows: Vec<Ordered> = r
        .rows
        .iter()
        .map(|row| {
            let mut m = Vec::new();
            if let Some(b) = row.bucket {
                m.push(("time", v(json!(rfc3339_s(b)))));
                m.push(("bucket_start", v(json!(b))));
            }
            for (c, cell) in cols.iter().zip(&row.key) {
                m.push((*c, v(cell_json(cell))));
            }
            m.push(("tx_bytes", v(json!(row.tx_bytes))));
            m.push(("rx_bytes", v(json!(row.rx_bytes))));
            m.push(("total_bytes", v(json!(row.total()))));
            Ordered(m)
        })
        .collect();
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
    doc.push(("rows", Node::Rows(rows)));
    doc.push((
        "total",
        Node::Object(Ordered(vec![
            ("tx_bytes", v(json!(r.total.0))),
            ("rx_bytes", v(json!(r.total.1))),
            ("total_bytes", v(json!(r.total.0.saturating_add(r.total.1)))),
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
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV: a header line, then one line per row, raw numbers.
pub fn write_csv(out: &mut dyn Write, r: &Report<'_>) -> Result<(), StoreError> {
    let mut header: Vec<&str> = Vec::new();
    if r.query.bucket.is_some() {
        header.extend(["bucket_start", "time"]);
    }
    header.extend(columns(&r.query.by));
    header.extend(["tx_bytes", "rx_bytes", "total_bytes"]);
    writeln!(out, "{}", header.join(",")).map_err(out_err)?;
    for row in r.rows {
        let mut f: Vec<String> = Vec::new();
        if let Some(b) = row.bucket {
            f.push(b.to_string());
            f.push(rfc3339_s(b));
        }
        f.extend(row.key.iter().map(|c| csv_field(&cell_text(c))));
        f.push(row.tx_bytes.to_string());
        f.push(row.rx_bytes.to_string());
        f.push(row.total().to_string());
        writeln!(out, "{}", f.join(",")).map_err(out_err)?;
    }
    Ok(())
}

/// Table cells of a group key: ports carry their service name, a missing
/// value is shown as `-`.
pub(crate) fn key_cells(by: &[GroupBy], key: &[Cell]) -> Vec<String> {
    let mut cells = Vec::new();
    let mut i = 0;
    for g in by {
        match g {
            GroupBy::Port => {
                let port = cell_text(&key[i]);
                cells.push(
                    match port.parse::<u16>().ok().and_then(services::service_name) {
                        Some(s) => format!("{port} ({s})"),
                        None => port,
                    },
                );
                i += 2;
            }
            GroupBy::Process => {
                cells.push(format!(
                    "{} [{}]",
                    text_or_dash(&key[i + 1]),
                    text_or_dash(&key[i])
                ));
                i += 2;
            }
            _ => {
                cells.push(text_or_dash(&key[i]));
                i += 1;
            }
        }
    }
    cells
}

fn text_or_dash(c: &Cell) -> String {
    match c {
        Cell::Null => "-".into(),
        c => cell_text(c),
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

    let mut header: Vec<String> = Vec::new();
    if q.bucket.is_some() {
        header.push("TIME (UTC)".into());
    }
    header.extend(q.by.iter().map(|g| by_name(*g).to_uppercase()));
    let key_cols = header.len();
    header.extend(["SENT", "RECEIVED", "TOTAL"].map(String::from));

    let seconds = q.bucket.is_some_and(|b| b % 60 != 0);
    let mut lines: Vec<Vec<String>> = Vec::new();
    for row in r.rows {
        let mut l = Vec::new();
        if let Some(b) = row.bucket {
            l.push(human_time(b, seconds));
        }
        l.extend(key_cells(&q.by, &row.key));
        l.extend([row.tx_bytes, row.rx_bytes, row.total()].map(human_bytes));
        lines.push(l);
    }
    let mut footer: Vec<Vec<String>> = Vec::new();
    if let Some((n, tx, rx)) = r.other {
        let mut l = vec![String::new(); key_cols];
        l[0] = format!("({n} more)");
        l.extend([tx, rx, tx.saturating_add(rx)].map(human_bytes));
        footer.push(l);
    }
    let mut l = vec![String::new(); key_cols];
    l[0] = "TOTAL".into();
    l.extend([r.total.0, r.total.1, r.total.0.saturating_add(r.total.1)].map(human_bytes));
    footer.push(l);

    let all = std::iter::once(&header).chain(&lines).chain(&footer);
    let mut widths = vec![0usize; header.len()];
    for l in all.clone() {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let print = |out: &mut dyn Write, l: &[String]| -> Result<(), StoreError> {
        let mut s = String::new();
        for (i, (c, w)) in l.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w - c.chars().count();
            if i < key_cols {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        writeln!(out, "{}", s.trim_end()).map_err(out_err)
    };
    print(out, &header)?;
    for l in &lines {
        print(out, l)?;
    }
    for l in &footer {
        print(out, l)?;
    }
    Ok(())
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
