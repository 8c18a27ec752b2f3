//! `procflow report --rules-changes`: every load and reload of the rules
//! file in the window, accepted or refused, in time order.

use std::io::Write;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::error::StoreError;
use crate::report::escape;
use crate::report::output::{write_aligned, write_csv_rows, write_json_doc, Fields};
use crate::report::query::Query;
use crate::report::Format;
use crate::timespec::{human_time, rfc3339_s};

/// One load or reload of the rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesChange {
    /// Microseconds since the epoch.
    pub time_us: i64,
    pub run_id: i64,
    /// The generation in force after it (see `RulesRecord::generation`).
    pub generation: i64,
    /// `accepted` or `refused`.
    pub outcome: String,
    pub path: String,
    /// How many rules are in force after it.
    pub rules: i64,
    /// Why the file was refused (`file:line:column: message` lines).
    pub error: Option<String>,
}

/// The changes of the window, in time order.
pub fn changes(conn: &Connection, q: &Query) -> Result<Vec<RulesChange>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT time_us, run_id, generation, outcome, path, rules, error FROM rules_changes
         WHERE time_us >= ?1 AND time_us < ?2 ORDER BY time_us, change_id",
    )?;
    let us = |s: i64| s.saturating_mul(1_000_000);
    let rows = stmt.query_map([us(q.since), us(q.until)], |r| {
        Ok(RulesChange {
            time_us: r.get(0)?,
            run_id: r.get(1)?,
            generation: r.get(2)?,
            outcome: r.get(3)?,
            path: r.get(4)?,
            rules: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const COLUMNS: [&str; 7] = [
    "time",
    "run",
    "generation",
    "outcome",
    "path",
    "rules",
    "error",
];

fn values(c: &RulesChange) -> [Value; 7] {
    let time = procflow_core::timefmt::rfc3339(
        u64::try_from(c.time_us).unwrap_or(0).saturating_mul(1_000),
    );
    [
        json!(time),
        json!(c.run_id),
        json!(c.generation),
        json!(c.outcome),
        json!(c.path),
        json!(c.rules),
        json!(c.error),
    ]
}

/// Runs `procflow report --rules-changes`; `top` keeps the most recent.
pub fn report(
    conn: &Connection,
    q: &Query,
    top: Option<usize>,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let mut all = changes(conn, q)?;
    if let Some(n) = top {
        all.drain(..all.len().saturating_sub(n));
    }
    match format {
        Format::Json => {
            let rows: Vec<Fields> = all
                .iter()
                .map(|c| Fields(COLUMNS.iter().copied().zip(values(c)).collect()))
                .collect();
            let doc = Fields(vec![
                ("since", json!(rfc3339_s(q.since))),
                ("until", json!(rfc3339_s(q.until))),
                ("rows", serde_json::to_value(rows)?),
            ]);
            write_json_doc(out, &doc)
        }
        Format::Csv => {
            let rows: Vec<Vec<Value>> = all.iter().map(|c| values(c).to_vec()).collect();
            write_csv_rows(out, &COLUMNS, &rows)
        }
        Format::Table => {
            let caption = format!(
                "rules loads from {} to {} UTC",
                human_time(q.since, true),
                human_time(q.until, true)
            );
            let mut rows = vec![["TIME (UTC)", "OUTCOME", "PATH", "GENERATION", "RULES"]
                .map(String::from)
                .to_vec()];
            let mut errors = Vec::new();
            for c in &all {
                rows.push(vec![
                    human_time(c.time_us.div_euclid(1_000_000), true),
                    c.outcome.clone(),
                    c.path.clone(),
                    c.generation.to_string(),
                    c.rules.to_string(),
                ]);
                if let Some(e) = &c.error {
                    errors.push((rows.len() - 1, e.clone()));
                }
            }
            // An error goes under its line, indented, one line per problem
            // (cells are escaped, so each row is one line of `text`).
            let mut text = Vec::new();
            write_aligned(&mut text, &caption, &rows, 3)?;
            let text = String::from_utf8_lossy(&text).into_owned();
            let mut errors = errors.into_iter().peekable();
            for (i, line) in text.lines().enumerate() {
                writeln!(out, "{line}").map_err(StoreError::output)?;
                // Line 0 is the caption, line 1 the header.
                while let Some((_, e)) = errors.next_if(|(row, _)| *row + 1 == i) {
                    for l in e.lines() {
                        let l = escape::terminal(l);
                        writeln!(out, "    {l}").map_err(StoreError::output)?;
                    }
                }
            }
            Ok(())
        }
    }
}
