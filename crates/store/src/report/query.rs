//! Reading the store for reports: which samples fall in the window, which
//! series pass the filters, and the totals per group (and per time bucket).
//! Each series is given its group by the sibling module `grouping`.
//!
//! Traffic is counted from the samples, not from the flow rows: a sample is
//! counted whole in a window when its bucket starts in it (`since <= bucket <
//! until`), so a long-lived flow is split over time at the sample width:
//! 10 seconds for the last two days, 1 hour (the hourly totals) before. Whole
//! hours of a window are read from the hourly totals, which have far fewer
//! rows; see [`plan`].

use std::collections::HashMap;

use rusqlite::Connection;

use crate::error::StoreError;
pub use crate::report::filters::{Action, Filters, Net};
use crate::report::grouping::Grouper;
use crate::services;
use crate::store::HOUR_SECONDS;
use crate::timespec::bucket_start;

/// What a report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum GroupBy {
    /// Full path of the executable (or why it is not known).
    Exe,
    /// One process (pid and command name).
    Process,
    /// User name (or uid when the name is unknown).
    User,
    /// cgroup path (container, service).
    Cgroup,
    /// Remote IP address.
    Remote,
    /// Remote host name (from DNS answers), or the address when unknown.
    Host,
    /// Service port: the remote port of outgoing flows, the local port of incoming ones.
    Port,
    /// tcp, udp, icmp, ...
    Proto,
    /// out, in or unknown.
    Direction,
    /// The rule that decided (its name, `(default)`, or `-` when no rules
    /// decided); with --verdicts, the rule that blocked.
    Rule,
}

impl GroupBy {
    /// The columns this grouping adds to a report.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            GroupBy::Exe => &["exe", "exe_unknown"],
            GroupBy::Process => &["pid", "comm"],
            GroupBy::User => &["user"],
            GroupBy::Cgroup => &["cgroup"],
            GroupBy::Remote => &["remote"],
            GroupBy::Host => &["host"],
            GroupBy::Port => &["port", "service"],
            GroupBy::Proto => &["proto"],
            GroupBy::Direction => &["direction"],
            GroupBy::Rule => &["rule", "action"],
        }
    }
}

/// One value of a group key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    fn text(s: Option<&str>) -> Cell {
        s.map_or(Cell::Null, |s| Cell::Text(s.to_string()))
    }
}

/// What a series (process, remote, port, proto, direction) is, borrowed
/// from the rows it was read from.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeriesInfo<'a> {
    pub exe: Option<&'a str>,
    /// Why `exe` is not known.
    pub exe_unknown: Option<&'a str>,
    pub pid: Option<i64>,
    pub comm: Option<&'a str>,
    pub uid: Option<i64>,
    pub user: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub remote_ip: &'a str,
    pub remote_name: Option<&'a str>,
    pub port: u16,
    pub proto: &'a str,
    pub direction: &'a str,
    /// `allow` or `block`, when rules decided.
    pub verdict: Option<&'a str>,
    /// The deciding rule; `None` for the default (or no decision).
    pub rule: Option<&'a str>,
}

impl SeriesInfo<'_> {
    /// The group key of this series for `by`.
    pub fn key(&self, by: &[GroupBy]) -> Vec<Cell> {
        let mut k = Vec::with_capacity(by.len() + 1);
        for g in by {
            match g {
                GroupBy::Exe => {
                    k.push(Cell::text(self.exe));
                    // A known path needs no reason.
                    k.push(Cell::text(self.exe_unknown.filter(|_| self.exe.is_none())));
                }
                GroupBy::Process => {
                    k.push(self.pid.map_or(Cell::Null, Cell::Int));
                    k.push(Cell::text(self.comm));
                }
                GroupBy::User => k.push(match (self.user, self.uid) {
                    (Some(u), _) => Cell::Text(u.to_string()),
                    (None, Some(uid)) => Cell::Text(uid.to_string()),
                    (None, None) => Cell::Null,
                }),
                GroupBy::Cgroup => k.push(Cell::text(self.cgroup)),
                GroupBy::Remote => k.push(Cell::Text(self.remote_ip.to_string())),
                GroupBy::Host => k.push(Cell::Text(
                    self.remote_name.unwrap_or(self.remote_ip).to_string(),
                )),
                GroupBy::Port => {
                    k.push(Cell::Int(i64::from(self.port)));
                    k.push(Cell::text(services::service_name(self.port)));
                }
                GroupBy::Proto => k.push(Cell::Text(self.proto.to_string())),
                GroupBy::Direction => k.push(Cell::Text(self.direction.to_string())),
                GroupBy::Rule => {
                    k.push(Cell::text(self.rule));
                    k.push(Cell::text(self.verdict));
                }
            }
        }
        k
    }
}

/// What a series moved in a bucket, or a group over a window: bytes,
/// packets, flows (counted where their first traffic is) and of those, the
/// flows folded (counted where they closed; they have no row in `flows`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub flows: u64,
    pub folded: u64,
}

impl Sums {
    pub fn add(&mut self, o: &Sums) {
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(o.tx_packets);
        self.rx_packets = self.rx_packets.saturating_add(o.rx_packets);
        self.flows = self.flows.saturating_add(o.flows);
        self.folded = self.folded.saturating_add(o.folded);
    }

    pub fn total(&self) -> u64 {
        self.tx_bytes.saturating_add(self.rx_bytes)
    }
}

/// Totals of one group (and one time bucket, in a timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Start of the time bucket (seconds since the epoch), in a timeline.
    pub bucket: Option<i64>,
    pub key: Vec<Cell>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub flows: u64,
    pub folded: u64,
}

impl Row {
    fn new(bucket: Option<i64>, key: Vec<Cell>, s: &Sums) -> Row {
        Row {
            bucket,
            key,
            tx_bytes: s.tx_bytes,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            rx_packets: s.rx_packets,
            flows: s.flows,
            folded: s.folded,
        }
    }
}

impl Row {
    pub fn total(&self) -> u64 {
        self.tx_bytes.saturating_add(self.rx_bytes)
    }
}

/// The query of a report.
#[derive(Debug, Clone)]
pub struct Query {
    /// Samples whose bucket starts in `[since, until)` (seconds since the epoch).
    pub since: i64,
    pub until: i64,
    pub by: Vec<GroupBy>,
    pub filters: Filters,
    /// Per time bucket of this many seconds, or totals over the window.
    pub bucket: Option<i64>,
}

/// What a process row says, shared by the series of the process.
#[derive(Debug)]
pub(super) struct ProcInfo {
    pub(super) pid: i64,
    pub(super) comm: String,
    pub(super) uid: i64,
    pub(super) user: Option<String>,
    pub(super) cgroup: Option<String>,
    pub(super) exe: Option<String>,
    pub(super) exe_unknown: Option<String>,
}

fn load_processes(conn: &Connection) -> Result<HashMap<i64, ProcInfo>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT p.process_id, p.pid, p.comm, p.uid, p.user, p.cgroup, e.path, p.exe_unknown
         FROM processes p LEFT JOIN executables e ON e.exe_id = p.exe_id",
    )?;
    let mut out = HashMap::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        out.insert(
            r.get(0)?,
            ProcInfo {
                pid: r.get(1)?,
                comm: r.get(2)?,
                uid: r.get(3)?,
                user: r.get(4)?,
                cgroup: r.get(5)?,
                exe: r.get(6)?,
                exe_unknown: r.get(7)?,
            },
        );
    }
    Ok(out)
}

fn conversion(i: usize, e: rusqlite::types::FromSqlError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

/// A text column, borrowed from the row.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    r.get_ref(i)?.as_str().map_err(|e| conversion(i, e))
}

fn text_or_null<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'r str>> {
    r.get_ref(i)?.as_str_or_null().map_err(|e| conversion(i, e))
}

/// Where the traffic of a time range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// 10-second samples (the last two days).
    Samples,
    /// Hourly totals (the whole retention time).
    Hourly,
}

/// Splits the window `[since, until)` into ranges read from one table each:
/// whole hours from the hourly totals (far fewer rows), the rest from the
/// 10-second samples where they are still kept. Each row counts in the
/// range where its bucket (or hour) starts. A timeline whose buckets do not
/// hold whole hours reads the samples wherever it can.
fn plan(
    conn: &Connection,
    since: i64,
    until: i64,
    width: i64,
) -> Result<Vec<(Table, i64, i64)>, StoreError> {
    let ceil_h = |t: i64| bucket_start(t.saturating_add(HOUR_SECONDS - 1), HOUR_SECONDS);
    let floor_h = |t: i64| bucket_start(t, HOUR_SECONDS);
    let oldest: Option<i64> =
        conn.query_row("SELECT min(bucket) FROM samples", [], |r| r.get(0))?;
    // Samples are complete from the hour of the oldest one on.
    let fine_from = oldest.map_or(i64::MAX, floor_h);
    let mut plan = Vec::new();
    if since < fine_from.min(until) {
        plan.push((Table::Hourly, since, fine_from.min(until)));
    }
    let start = since.max(fine_from);
    if start >= until {
        return Ok(plan);
    }
    let (h0, h1) = (ceil_h(start), floor_h(until));
    if (width == 0 || width % HOUR_SECONDS == 0) && h0 < h1 {
        plan.push((Table::Samples, start, h0));
        plan.push((Table::Hourly, h0, h1));
        plan.push((Table::Samples, h1, until));
    } else {
        plan.push((Table::Samples, start, until));
    }
    plan.retain(|(_, lo, hi)| lo < hi);
    Ok(plan)
}

/// The columns of `series` that a query reads: `series_id`, `process_id`,
/// then only those of the other columns that its fields and filters need.
#[derive(Debug, Clone, Default)]
pub(super) struct SeriesColumns {
    /// `SELECT ... FROM series`
    pub(super) select: String,
    remote_ip: Option<usize>,
    remote_name: Option<usize>,
    port: Option<usize>,
    proto: Option<usize>,
    direction: Option<usize>,
    verdict: Option<usize>,
    rule: Option<usize>,
}

impl SeriesColumns {
    pub(super) fn new(q: &Query) -> Self {
        let f = &q.filters;
        let by = |g: GroupBy| q.by.contains(&g);
        let mut names = vec!["series_id", "process_id"];
        let mut pick = |need: bool, name: &'static str| {
            need.then(|| {
                names.push(name);
                names.len() - 1
            })
        };
        let mut c = SeriesColumns {
            remote_ip: pick(
                by(GroupBy::Remote) || by(GroupBy::Host) || f.remote.is_some() || f.host.is_some(),
                "remote_ip",
            ),
            remote_name: pick(by(GroupBy::Host) || f.host.is_some(), "remote_name"),
            port: pick(by(GroupBy::Port) || f.port.is_some(), "port"),
            proto: pick(by(GroupBy::Proto) || f.proto.is_some(), "proto"),
            direction: pick(by(GroupBy::Direction), "direction"),
            verdict: pick(
                by(GroupBy::Rule) || f.rule.is_some() || f.action.is_some(),
                "verdict",
            ),
            rule: pick(
                by(GroupBy::Rule) || f.rule.is_some() || f.action.is_some(),
                "rule",
            ),
            ..Default::default()
        };
        c.select = format!("SELECT {} FROM series", names.join(", "));
        c
    }

    /// What the series row `r` says beyond its process (empty values for
    /// the columns not read).
    pub(super) fn read<'r>(&self, r: &'r rusqlite::Row<'_>) -> rusqlite::Result<SeriesInfo<'r>> {
        let text_at = |i: Option<usize>| i.map_or(Ok(""), |i| text(r, i));
        Ok(SeriesInfo {
            remote_ip: text_at(self.remote_ip)?,
            remote_name: match self.remote_name {
                Some(i) => text_or_null(r, i)?,
                None => None,
            },
            port: match self.port {
                Some(i) => r.get::<_, Option<i64>>(i)?.unwrap_or(0).clamp(0, 65_535) as u16,
                None => 0,
            },
            proto: text_at(self.proto)?,
            direction: text_at(self.direction)?,
            verdict: match self.verdict {
                Some(i) => text_or_null(r, i)?,
                None => None,
            },
            rule: match self.rule {
                Some(i) => text_or_null(r, i)?,
                None => None,
            },
            ..Default::default()
        })
    }
}

/// The traffic of the window per series (and time bucket, in a timeline):
/// `(series, bucket, sums)`, sorted by series and bucket.
fn window_sums(
    conn: &Connection,
    q: &Query,
    width: i64,
) -> Result<Vec<(i64, i64, Sums)>, StoreError> {
    let mut sums: Vec<(i64, i64, Sums)> = Vec::new();
    for (table, lo, hi) in plan(conn, q.since, q.until, width)? {
        // The time of a row is read only for a timeline.
        let sql = match (table, width > 0) {
            (Table::Samples, true) => {
                "SELECT series_id, tx_bytes, rx_bytes, tx_packets, rx_packets, flows, folded,
                    bucket FROM samples
                 WHERE bucket >= ?1 AND bucket < ?2"
            }
            (Table::Samples, false) => {
                "SELECT series_id, tx_bytes, rx_bytes, tx_packets, rx_packets, flows, folded
                 FROM samples
                 WHERE bucket >= ?1 AND bucket < ?2"
            }
            (Table::Hourly, true) => {
                "SELECT series_id, tx_bytes, rx_bytes, tx_packets, rx_packets, flows, folded,
                    hour FROM hourly
                 WHERE hour >= ?1 AND hour < ?2"
            }
            (Table::Hourly, false) => {
                "SELECT series_id, tx_bytes, rx_bytes, tx_packets, rx_packets, flows, folded
                 FROM hourly
                 WHERE hour >= ?1 AND hour < ?2"
            }
        };
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query([lo, hi])?;
        // Integer columns of a known table: read them without conversions.
        let int = |r: &rusqlite::Row<'_>, i| r.get_ref_unwrap(i).as_i64().unwrap_or(0);
        while let Some(r) = rows.next()? {
            let b = if width > 0 {
                bucket_start(int(r, 7), width)
            } else {
                0
            };
            let n = |i| int(r, i).max(0) as u64;
            sums.push((
                int(r, 0),
                b,
                Sums {
                    tx_bytes: n(1),
                    rx_bytes: n(2),
                    tx_packets: n(3),
                    rx_packets: n(4),
                    flows: n(5),
                    folded: n(6),
                },
            ));
        }
    }
    // Rows come sorted by series within each time bucket: a stable sort
    // merges those runs.
    sums.sort_by_key(|s| (s.0, s.1));
    add_up_runs(&mut sums);
    Ok(sums)
}

/// Adds up neighbours with the same key (the first two fields) of a list
/// sorted by it, keeping one entry per key.
fn add_up_runs<A: PartialEq, B: PartialEq>(v: &mut Vec<(A, B, Sums)>) {
    v.dedup_by(|next, kept| {
        if (&next.0, &next.1) == (&kept.0, &kept.1) {
            kept.2.add(&next.2);
            true
        } else {
            false
        }
    });
}

/// The rows of a report and what they add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouped {
    /// The rows of the groups kept, sorted by time, then by total bytes
    /// (largest first), then by key.
    pub rows: Vec<Row>,
    /// All traffic that matched, the groups left out included.
    pub total: Sums,
    /// How many groups were left out, and their traffic.
    pub other: Option<(usize, Sums)>,
}

/// Runs `q`: one row per group (per time bucket in a timeline), sorted by
/// time, then by total bytes (largest first), then by key.
pub fn run(conn: &Connection, q: &Query) -> Result<Vec<Row>, StoreError> {
    Ok(run_top(conn, q, None)?.rows)
}

/// Runs `q`, keeping the rows of the `top` groups with the most traffic
/// over the whole window (all of them when `None`; ties go by key). The
/// total and the traffic of the groups left out are exact; only the kept
/// groups' keys are built.
///
/// The samples of the window are read in primary-key order, summed per
/// series (and time bucket) and sorted by series; the series are then read
/// in id order beside them, so each series with traffic is looked at once,
/// filtered and given its group.
pub fn run_top(conn: &Connection, q: &Query, top: Option<usize>) -> Result<Grouped, StoreError> {
    let width = q.bucket.unwrap_or(0).max(0);
    let sums = window_sums(conn, q, width)?;

    let procs = if sums.is_empty() {
        HashMap::new()
    } else {
        load_processes(conn)?
    };
    let mut grouper = Grouper::new(q, procs);
    // Per group, over the window.
    let mut totals: Vec<Sums> = Vec::new();
    // (time bucket, group, sums), in a timeline.
    let mut cells: Vec<(i64, u32, Sums)> = Vec::new();
    let mut add = |group: Option<u32>, mine: &[(i64, i64, Sums)]| {
        let Some(g) = group else { return };
        if totals.len() <= g as usize {
            totals.resize(g as usize + 1, Sums::default());
        }
        let t = &mut totals[g as usize];
        for (_, b, s) in mine {
            t.add(s);
            if width > 0 {
                cells.push((*b, g, *s));
            }
        }
    };
    if let (Some(first), Some(last)) = (sums.first(), sums.last()) {
        let (lo, hi) = (first.0, last.0);
        let series_count = sums.chunk_by(|a, b| a.0 == b.0).count() as i64;
        let cols = grouper.cols.select.clone();
        // Read the id range once, or, when only a few of the series in it
        // have traffic, each of them by id.
        if series_count.saturating_mul(8) >= hi - lo {
            let mut stmt =
                conn.prepare_cached(&format!("{cols} WHERE series_id BETWEEN ?1 AND ?2"))?;
            let mut rows = stmt.query([lo, hi])?;
            let mut rest = &sums[..];
            while let Some(r) = rows.next()? {
                let id = r.get_ref_unwrap(0).as_i64().unwrap_or(0);
                // Samples of series that no longer exist are skipped.
                while rest.first().is_some_and(|s| s.0 < id) {
                    rest = &rest[1..];
                }
                let n = rest.iter().take_while(|s| s.0 == id).count();
                if n > 0 {
                    add(grouper.group(r)?, &rest[..n]);
                    rest = &rest[n..];
                }
            }
        } else {
            let mut stmt = conn.prepare_cached(&format!("{cols} WHERE series_id = ?1"))?;
            for mine in sums.chunk_by(|a, b| a.0 == b.0) {
                let mut rows = stmt.query([mine[0].0])?;
                if let Some(r) = rows.next()? {
                    add(grouper.group(r)?, mine);
                }
            }
        }
    }
    totals.resize(grouper.len(), Sums::default());

    let n = totals.len();
    let keep = top.unwrap_or(n).min(n);
    let size = |g: u32| totals[g as usize].total();
    // Only the groups at least as large as the keep-th largest can be
    // kept; their keys decide ties.
    let mut ranked: Vec<(u64, u32, Vec<Cell>)> = Vec::new();
    if keep > 0 {
        let mut least = 0;
        if keep < n {
            let mut sizes: Vec<u64> = (0..n as u32).map(size).collect();
            least = *sizes.select_nth_unstable_by(keep - 1, |a, b| b.cmp(a)).1;
        }
        ranked = (0..n as u32)
            .filter(|g| size(*g) >= least)
            .map(|g| (size(g), g, grouper.key(g)))
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
        ranked.truncate(keep);
    }
    let total = totals.iter().fold(Sums::default(), |mut a, t| {
        a.add(t);
        a
    });
    let mut kept = vec![false; n];
    for (_, g, _) in &ranked {
        kept[*g as usize] = true;
    }
    let other = (keep < n).then(|| {
        let rest = (0..n)
            .filter(|g| !kept[*g])
            .fold(Sums::default(), |mut a, g| {
                a.add(&totals[g]);
                a
            });
        (n - keep, rest)
    });

    let rows = if width == 0 {
        ranked
            .into_iter()
            .map(|(_, g, key)| Row::new(None, key, &totals[g as usize]))
            .collect()
    } else {
        cells.retain(|c| kept[c.1 as usize]);
        cells.sort_unstable_by_key(|c| (c.0, c.1));
        add_up_runs(&mut cells);
        let mut keys: Vec<Option<Vec<Cell>>> = vec![None; n];
        for (_, g, key) in ranked {
            keys[g as usize] = Some(key);
        }
        let mut rows: Vec<Row> = cells
            .into_iter()
            .map(|(b, g, s)| Row::new(Some(b), keys[g as usize].clone().unwrap_or_default(), &s))
            .collect();
        rows.sort_by(|a, b| {
            a.bucket
                .cmp(&b.bucket)
                .then(b.total().cmp(&a.total()))
                .then_with(|| a.key.cmp(&b.key))
        });
        rows
    };
    Ok(Grouped { rows, total, other })
}

/// Keeps the `n` groups with the most traffic over all rows (all buckets).
pub fn top_groups(rows: &[Row], n: usize) -> Vec<Vec<Cell>> {
    let mut totals: HashMap<&Vec<Cell>, u64> = HashMap::new();
    for r in rows {
        *totals.entry(&r.key).or_default() += r.total();
    }
    let mut v: Vec<(&Vec<Cell>, u64)> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(k, _)| k.clone()).collect()
}
