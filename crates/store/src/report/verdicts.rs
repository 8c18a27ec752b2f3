//! `procflow report --verdicts`: the blocked attempts of a window, listed
//! one per line, or counted per group (`--by`, `--timeline`).
//!
//! An attempt counts in a window when its time is in it (`since <= time <
//! until`). The filters are those of traffic reports; an attempt has no
//! remote name, so `--host` and `--by host` see its address.

use std::collections::HashMap;
use std::io::Write;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::error::StoreError;
use crate::report::output::{
    by_name, exe_text, human_span, key_cells, write_aligned, write_csv_rows, write_json_doc, Fields,
};
use crate::report::query::{Cell, GroupBy, Query, SeriesInfo};
use crate::report::Format;
use crate::timespec::{bucket_start, human_time, rfc3339_s};

/// One blocked attempt, with its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Microseconds since the epoch.
    pub time_us: i64,
    pub pid: Option<i64>,
    pub comm: Option<String>,
    pub uid: Option<i64>,
    pub user: Option<String>,
    pub exe: Option<String>,
    /// Why the executable is not known.
    pub exe_unknown: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// `block` (or `allow`).
    pub action: String,
    /// The deciding rule; `None` for the default.
    pub rule: Option<String>,
    pub hook: String,
    pub proto: String,
    pub family: i64,
    pub direction: String,
    pub local_ip: String,
    pub local_port: u16,
    pub remote_ip: String,
    pub remote_port: u16,
}

impl Attempt {
    /// The service port: the remote port going out, the local port coming in.
    pub fn service_port(&self) -> u16 {
        if self.direction == "in" {
            self.local_port
        } else {
            self.remote_port
        }
    }

    fn info(&self) -> SeriesInfo<'_> {
        SeriesInfo {
            exe: self.exe.as_deref(),
            exe_unknown: self.exe_unknown.as_deref(),
            pid: self.pid,
            comm: self.comm.as_deref(),
            uid: self.uid,
            user: self.user.as_deref(),
            cgroup: self.cgroup.as_deref(),
            remote_ip: &self.remote_ip,
            remote_name: None,
            port: self.service_port(),
            proto: &self.proto,
            direction: &self.direction,
            verdict: Some(&self.action),
            rule: self.rule.as_deref(),
        }
    }
}

fn port(v: i64) -> u16 {
    v.clamp(0, 65_535) as u16
}

/// The attempts of the window that pass the filters, in time order.
pub fn attempts(conn: &Connection, q: &Query) -> Result<Vec<Attempt>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT v.time_us, p.pid, p.comm, p.uid, p.user, e.path, p.exe_unknown, p.cmdline,
                p.cgroup, v.action, v.rule, v.hook, v.proto, v.family, v.direction,
                v.local_ip, v.local_port, v.remote_ip, v.remote_port
         FROM verdicts v
         LEFT JOIN processes p ON p.process_id = v.process_id
         LEFT JOIN executables e ON e.exe_id = p.exe_id
         WHERE v.time_us >= ?1 AND v.time_us < ?2
         ORDER BY v.time_us, v.verdict_id",
    )?;
    let us = |s: i64| s.saturating_mul(1_000_000);
    let mut rows = stmt.query([us(q.since), us(q.until)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let a = Attempt {
            time_us: r.get(0)?,
            pid: r.get(1)?,
            comm: r.get(2)?,
            uid: r.get(3)?,
            user: r.get(4)?,
            exe: r.get(5)?,
            exe_unknown: r.get(6)?,
            cmdline: r.get(7)?,
            cgroup: r.get(8)?,
            action: r.get(9)?,
            rule: r.get(10)?,
            hook: r.get(11)?,
            proto: r.get(12)?,
            family: r.get(13)?,
            direction: r.get(14)?,
            local_ip: r.get(15)?,
            local_port: port(r.get(16)?),
            remote_ip: r.get(17)?,
            remote_port: port(r.get(18)?),
        };
        if q.filters.matches(&a.info()) {
            out.push(a);
        }
    }
    Ok(out)
}

/// The attempts of one group (and one time bucket, in a timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub bucket: Option<i64>,
    pub key: Vec<Cell>,
    pub attempts: u64,
    /// The first and the last attempt, microseconds since the epoch.
    pub first_us: i64,
    pub last_us: i64,
}

/// The counted attempts of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Sorted by time bucket, then by attempts (most first), then by key.
    pub rows: Vec<Count>,
    /// All attempts that matched, the groups left out included.
    pub total: u64,
    /// Groups left out by `top`, and their attempts.
    pub other: Option<(usize, u64)>,
}

/// Counts `attempts` per group of `q.by` (and time bucket of `q.bucket`),
/// keeping the `top` groups with the most attempts over the window.
pub fn count(attempts: &[Attempt], q: &Query, top: Option<usize>) -> Counted {
    let width = q.bucket.unwrap_or(0).max(0);
    let mut groups: HashMap<Vec<Cell>, u64> = HashMap::new();
    let mut cells: HashMap<(i64, Vec<Cell>), Count> = HashMap::new();
    for a in attempts {
        let key = a.info().key(&q.by);
        *groups.entry(key.clone()).or_default() += 1;
        let bucket = (width > 0).then(|| bucket_start(a.time_us.div_euclid(1_000_000), width));
        let c = cells
            .entry((bucket.unwrap_or(0), key.clone()))
            .or_insert_with(|| Count {
                bucket,
                key,
                attempts: 0,
                first_us: a.time_us,
                last_us: a.time_us,
            });
        c.attempts += 1;
        c.first_us = c.first_us.min(a.time_us);
        c.last_us = c.last_us.max(a.time_us);
    }
    let mut ranked: Vec<(Vec<Cell>, u64)> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let keep = top.unwrap_or(ranked.len()).min(ranked.len());
    let other = (keep < ranked.len()).then(|| {
        let rest = &ranked[keep..];
        (rest.len(), rest.iter().map(|g| g.1).sum())
    });
    let rank: HashMap<&Vec<Cell>, usize> = ranked[..keep]
        .iter()
        .enumerate()
        .map(|(i, g)| (&g.0, i))
        .collect();
    let mut rows: Vec<Count> = cells
        .into_values()
        .filter(|c| rank.contains_key(&c.key))
        .collect();
    rows.sort_by(|a, b| {
        a.bucket
            .cmp(&b.bucket)
            .then(b.attempts.cmp(&a.attempts))
            .then_with(|| rank[&a.key].cmp(&rank[&b.key]))
    });
    Counted {
        rows,
        total: attempts.len() as u64,
        other,
    }
}

/// Runs `procflow report --verdicts`: every attempt (`list`; `top` keeps
/// the most recent ones) or the attempts counted per group.
pub fn report(
    conn: &Connection,
    q: &Query,
    list: bool,
    top: Option<usize>,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let mut all = attempts(conn, q)?;
    if list {
        let total = all.len();
        if let Some(n) = top {
            all.drain(..all.len().saturating_sub(n));
        }
        return write_list(out, q, &all, total, format);
    }
    let counted = count(&all, q, top);
    write_counts(out, q, &counted, format)
}

fn time_us(us: i64) -> String {
    procflow_core::timefmt::rfc3339(u64::try_from(us).unwrap_or(0).saturating_mul(1_000))
}

fn window(q: &Query) -> String {
    format!(
        "blocked attempts from {} to {} UTC",
        human_time(q.since, true),
        human_time(q.until, true)
    )
}

const LIST_COLUMNS: [&str; 19] = [
    "time",
    "pid",
    "comm",
    "uid",
    "user",
    "exe",
    "exe_unknown",
    "cmdline",
    "cgroup",
    "proto",
    "family",
    "direction",
    "local_ip",
    "local_port",
    "remote_ip",
    "remote_port",
    "rule",
    "action",
    "hook",
];

fn list_values(a: &Attempt) -> [Value; 19] {
    [
        json!(time_us(a.time_us)),
        json!(a.pid),
        json!(a.comm),
        json!(a.uid),
        json!(a.user),
        json!(a.exe),
        json!(a.exe_unknown),
        json!(a.cmdline),
        json!(a.cgroup),
        json!(a.proto),
        json!(a.family),
        json!(a.direction),
        json!(a.local_ip),
        json!(a.local_port),
        json!(a.remote_ip),
        json!(a.remote_port),
        json!(a.rule),
        json!(a.action),
        json!(a.hook),
    ]
}

fn write_list(
    out: &mut dyn Write,
    q: &Query,
    all: &[Attempt],
    total: usize,
    format: Format,
) -> Result<(), StoreError> {
    match format {
        Format::Json => {
            let rows: Vec<Fields> = all
                .iter()
                .map(|a| Fields(LIST_COLUMNS.iter().copied().zip(list_values(a)).collect()))
                .collect();
            let doc = Fields(vec![
                ("since", json!(rfc3339_s(q.since))),
                ("until", json!(rfc3339_s(q.until))),
                ("rows", serde_json::to_value(rows)?),
                ("total", json!({ "attempts": total })),
            ]);
            write_json_doc(out, &doc)
        }
        Format::Csv => {
            let rows: Vec<Vec<Value>> = all.iter().map(|a| list_values(a).to_vec()).collect();
            write_csv_rows(out, &LIST_COLUMNS, &rows)
        }
        Format::Table => {
            let header = [
                "TIME (UTC)",
                "PROCESS",
                "EXE",
                "USER",
                "PROTO",
                "DIRECTION",
                "REMOTE",
                "LOCAL PORT",
                "RULE",
            ];
            let mut rows = vec![header.map(String::from).to_vec()];
            for a in all {
                let remote = if a.remote_ip.contains(':') {
                    format!("[{}]:{}", a.remote_ip, a.remote_port)
                } else {
                    format!("{}:{}", a.remote_ip, a.remote_port)
                };
                rows.push(vec![
                    human_time(a.time_us.div_euclid(1_000_000), true),
                    format!(
                        "{} [{}]",
                        a.comm.as_deref().unwrap_or("-"),
                        a.pid.map_or("-".to_string(), |p| p.to_string())
                    ),
                    exe_text(a.exe.as_deref(), a.exe_unknown.as_deref()),
                    a.user
                        .clone()
                        .or_else(|| a.uid.map(|u| u.to_string()))
                        .unwrap_or_else(|| "-".into()),
                    a.proto.clone(),
                    a.direction.clone(),
                    remote,
                    a.local_port.to_string(),
                    a.rule
                        .clone()
                        .unwrap_or_else(|| crate::report::filters::DEFAULT_RULE.into()),
                ]);
            }
            write_aligned(out, &window(q), &rows, 7)?;
            let shown = if all.len() < total {
                format!(" (the last {} shown)", all.len())
            } else {
                String::new()
            };
            writeln!(out, "{total} attempts{shown}").map_err(StoreError::output)
        }
    }
}

fn columns(by: &[GroupBy]) -> Vec<&'static str> {
    by.iter()
        .flat_map(|g| g.columns().iter().copied())
        .collect()
}

fn key_values(c: &Count) -> Vec<Value> {
    c.key
        .iter()
        .map(|k| match k {
            Cell::Null => Value::Null,
            Cell::Int(i) => json!(i),
            Cell::Text(t) => json!(t),
        })
        .collect()
}

fn write_counts(
    out: &mut dyn Write,
    q: &Query,
    c: &Counted,
    format: Format,
) -> Result<(), StoreError> {
    let cols = columns(&q.by);
    match format {
        Format::Json => {
            let rows: Vec<Fields> = c
                .rows
                .iter()
                .map(|r| {
                    let mut f = Vec::new();
                    if let Some(b) = r.bucket {
                        f.push(("time", json!(rfc3339_s(b))));
                        f.push(("bucket_start", json!(b)));
                    }
                    f.extend(cols.iter().copied().zip(key_values(r)));
                    f.push(("attempts", json!(r.attempts)));
                    f.push(("first", json!(time_us(r.first_us))));
                    f.push(("last", json!(time_us(r.last_us))));
                    Fields(f)
                })
                .collect();
            let mut doc = vec![
                ("since", json!(rfc3339_s(q.since))),
                ("until", json!(rfc3339_s(q.until))),
                (
                    "by",
                    json!(q.by.iter().map(|g| by_name(*g)).collect::<Vec<_>>()),
                ),
            ];
            if let Some(b) = q.bucket {
                doc.push(("bucket_seconds", json!(b)));
            }
            doc.push(("rows", serde_json::to_value(rows)?));
            doc.push(("total", json!({ "attempts": c.total })));
            write_json_doc(out, &Fields(doc))
        }
        Format::Csv => {
            let mut header: Vec<&str> = Vec::new();
            if q.bucket.is_some() {
                header.extend(["bucket_start", "time"]);
            }
            header.extend(&cols);
            header.extend(["attempts", "first", "last"]);
            let rows: Vec<Vec<Value>> = c
                .rows
                .iter()
                .map(|r| {
                    let mut v = Vec::new();
                    if let Some(b) = r.bucket {
                        v.push(json!(b));
                        v.push(json!(rfc3339_s(b)));
                    }
                    v.extend(key_values(r));
                    v.push(json!(r.attempts));
                    v.push(json!(time_us(r.first_us)));
                    v.push(json!(time_us(r.last_us)));
                    v
                })
                .collect();
            write_csv_rows(out, &header, &rows)
        }
        Format::Table => {
            let by_list: Vec<&str> = q.by.iter().map(|g| by_name(*g)).collect();
            let mut caption = format!("{}, by {}", window(q), by_list.join(", "));
            if let Some(b) = q.bucket {
                caption.push_str(&format!(", per {}", human_span(b)));
            }
            let mut header = Vec::new();
            if q.bucket.is_some() {
                header.push("TIME (UTC)".to_string());
            }
            header.extend(q.by.iter().map(|g| by_name(*g).to_uppercase()));
            let left = header.len();
            header.extend(["ATTEMPTS", "FIRST", "LAST"].map(String::from));
            let seconds = q.bucket.is_some_and(|b| b % 60 != 0);
            let mut rows = vec![header];
            for r in &c.rows {
                let mut row = Vec::new();
                if let Some(b) = r.bucket {
                    row.push(human_time(b, seconds));
                }
                row.extend(key_cells(&q.by, &r.key));
                row.push(r.attempts.to_string());
                row.push(human_time(r.first_us.div_euclid(1_000_000), true));
                row.push(human_time(r.last_us.div_euclid(1_000_000), true));
                rows.push(row);
            }
            let mut footer = |first: String, n: u64| {
                let mut row = vec![first];
                row.resize(left, String::new());
                row.push(n.to_string());
                rows.push(row);
            };
            if let Some((n, attempts)) = c.other {
                footer(format!("({n} more)"), attempts);
            }
            footer("TOTAL".into(), c.total);
            write_aligned(out, &caption, &rows, left)
        }
    }
}
