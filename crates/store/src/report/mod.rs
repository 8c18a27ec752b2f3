//! `procflow report`: totals, timelines and charts from the store.
//!
//! Reports read the database through a read-only connection, so they work
//! while `procflow run` is writing (WAL). Traffic is taken from the samples
//! (see [`query`]), so the bytes of a long-lived flow land in the time
//! buckets in which they were transferred.

pub mod chart;
mod escape;
pub mod filters;
mod grouping;
pub mod output;
pub mod query;
pub mod rules_changes;
pub mod verdicts;

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::StoreError;
use crate::schema;
use crate::services;
use crate::timespec::{parse_duration, parse_time};

pub use query::{Cell, Filters, GroupBy, Query, Row};

/// Where `procflow run` records and `procflow report` reads by default.
pub const DEFAULT_DB_PATH: &str = "/var/lib/procflow/procflow.db";

/// Output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table with human units.
    Table,
    /// One JSON document with raw numbers.
    Json,
    /// CSV with a header line and raw numbers.
    Csv,
}

/// Who used the network, talking to whom: totals over a time window.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The procflow database to read (default: the `db` of
    /// /etc/procflow/procflow.toml when it sets one).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,

    /// Start of the window: a duration back from now (30m, 1h, 7d), an RFC 3339
    /// timestamp (2026-11-26T09:00:00Z) or a date (2026-11-26, midnight UTC).
    #[arg(long, value_name = "TIME", default_value = "24h")]
    pub since: String,

    /// End of the window (excluded), in the same forms as --since; default now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,

    /// Group by one or more of these (comma-separated); default exe.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIELD")]
    pub by: Vec<GroupBy>,

    /// Show only the N groups with the most traffic (charts: default 8).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,

    /// Only this executable: a full path, or a file name (curl).
    #[arg(long, value_name = "EXE")]
    pub exe: Option<String>,

    /// Only this remote host name and its subdomains (example.com).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// Only this remote address or network (192.0.2.1, 10.0.0.0/8).
    #[arg(long, value_name = "ADDR")]
    pub remote: Option<String>,

    /// Only this service port: a number or a name (443, https).
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,

    /// Only this protocol (tcp, udp, icmp, icmpv6).
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,

    /// Only this user: a name or a uid.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Only what this rule decided (its name; `(default)` for the default).
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,

    /// Only what the rules allowed, or blocked.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub action: Option<filters::Action>,

    /// Blocked attempts instead of traffic: one line per attempt, or with
    /// --by (or --timeline) the number of attempts per group.
    #[arg(long, conflicts_with = "chart")]
    pub verdicts: bool,

    /// Loads and reloads of the rules file (accepted or refused) instead of
    /// traffic.
    #[arg(long, conflicts_with_all = ["verdicts", "chart", "timeline", "by", "bucket"])]
    pub rules_changes: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Totals per time bucket instead of over the whole window.
    #[arg(long)]
    pub timeline: bool,

    /// Width of the time buckets of --timeline and --chart (10s, 1m, 1h, 1d);
    /// default: chosen from the window.
    #[arg(long, value_name = "DURATION")]
    pub bucket: Option<String>,

    /// Draw a stacked-area chart of the top groups over time to FILE.svg or
    /// FILE.png (chosen by the extension; PNG needs a system font, e.g.
    /// Debian's fonts-dejavu-core).
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
}

impl Default for ReportArgs {
    fn default() -> Self {
        ReportArgs {
            db: PathBuf::from(DEFAULT_DB_PATH),
            since: "24h".into(),
            until: None,
            by: Vec::new(),
            top: None,
            exe: None,
            host: None,
            remote: None,
            port: None,
            proto: None,
            user: None,
            rule: None,
            action: None,
            verdicts: false,
            rules_changes: false,
            format: Format::Table,
            timeline: false,
            bucket: None,
            chart: None,
        }
    }
}

/// The widest bucket `--bucket` takes: 100 years (5200w).
const MAX_BUCKET_S: u64 = 5_200 * 7 * 86_400;

/// Bucket widths chosen automatically, smallest first.
const AUTO_BUCKETS: [i64; 9] = [
    10,
    60,
    300,
    900,
    3_600,
    3 * 3_600,
    6 * 3_600,
    86_400,
    7 * 86_400,
];

/// A bucket width that cuts `span` seconds into at most `max` buckets.
pub fn auto_bucket(span: i64, max: i64) -> i64 {
    AUTO_BUCKETS
        .iter()
        .copied()
        .find(|b| span / b <= max)
        .unwrap_or(AUTO_BUCKETS[AUTO_BUCKETS.len() - 1])
}

/// Builds the query of `args` at time `now_s` (seconds since the epoch).
///
/// The history holds nothing before the Unix epoch, so a window reaching
/// back further (`--since 1000w`, a year 0001 timestamp) starts there: the
/// window's span and its buckets then always fit in an i64.
pub fn build_query(args: &ReportArgs, now_s: i64) -> Result<Query, StoreError> {
    let since = parse_time(&args.since, now_s)?.max(0);
    let until = match &args.until {
        Some(u) => parse_time(u, now_s)?.max(0),
        // Include the bucket now is in.
        None => now_s.saturating_add(1),
    };
    if until <= since {
        return Err(StoreError::invalid(
            "time window",
            &format!(
                "{} .. {}",
                args.since,
                args.until.as_deref().unwrap_or("now")
            ),
            "--until must be later than --since",
        ));
    }
    let port = match &args.port {
        None => None,
        Some(p) => Some(match p.parse::<u16>() {
            Ok(n) => n,
            Err(_) => services::service_port(p).ok_or_else(|| {
                StoreError::invalid("port", p, "not a port number or a known service name")
            })?,
        }),
    };
    let remote = args.remote.as_deref().map(query::Net::parse).transpose()?;
    let bucket = if args.timeline || args.chart.is_some() {
        Some(match &args.bucket {
            Some(b) => {
                let secs = parse_duration(b)?.as_secs();
                if secs == 0 {
                    return Err(StoreError::invalid("bucket", b, "must be at least 1s"));
                }
                if secs > MAX_BUCKET_S {
                    return Err(StoreError::invalid("bucket", b, "must be at most 5200w"));
                }
                secs as i64
            }
            None => auto_bucket(until - since, if args.chart.is_some() { 150 } else { 60 }),
        })
    } else {
        None
    };
    let by = if args.by.is_empty() {
        vec![GroupBy::Exe]
    } else {
        let mut by = args.by.clone();
        let mut seen = std::collections::HashSet::new();
        by.retain(|g| seen.insert(*g));
        by
    };
    Ok(Query {
        since,
        until,
        by,
        filters: Filters {
            exe: args.exe.clone(),
            host: args.host.clone(),
            remote,
            port,
            proto: args.proto.clone(),
            user: args.user.clone(),
            rule: args.rule.clone(),
            action: args.action,
        },
        bucket,
    })
}

/// Runs `procflow report` with `args`, printing to `out` (a chart is
/// written to its file, and a line saying so to `out`).
pub fn run_report(args: &ReportArgs, out: &mut dyn Write) -> Result<(), StoreError> {
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    run_report_at(args, now_s, out)
}

/// [`run_report`] with the clock passed in.
pub fn run_report_at(args: &ReportArgs, now_s: i64, out: &mut dyn Write) -> Result<(), StoreError> {
    if let Some(path) = &args.chart {
        chart::check_path(path)?;
    }
    let q = build_query(args, now_s)?;
    let conn = schema::open_reader(&args.db)?;
    if args.rules_changes {
        return rules_changes::report(&conn, &q, args.top, args.format, out);
    }
    if args.verdicts {
        // Without --by or --timeline: every attempt, one per line.
        let list = args.by.is_empty() && !args.timeline;
        return verdicts::report(&conn, &q, list, args.top, args.format, out);
    }
    // A chart draws its own top groups from all of them.
    let top = args.top.filter(|_| args.chart.is_none());
    let query::Grouped { rows, total, other } = query::run_top(&conn, &q, top)?;
    drop(conn);

    if let Some(path) = &args.chart {
        chart::write(path, &q, &rows, args.top.unwrap_or(chart::DEFAULT_TOP))?;
        writeln!(out, "wrote {}", path.display()).map_err(StoreError::output)?;
        return out.flush().map_err(StoreError::output);
    }

    let report = output::Report {
        query: &q,
        rows: &rows,
        total,
        other,
    };
    match args.format {
        Format::Table => output::write_table(out, &report)?,
        Format::Json => output::write_json(out, &report)?,
        Format::Csv => output::write_csv(out, &report)?,
    }
    out.flush().map_err(StoreError::output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000;

    fn timeline(since: &str, until: Option<&str>, bucket: Option<&str>) -> ReportArgs {
        ReportArgs {
            since: since.into(),
            until: until.map(String::from),
            bucket: bucket.map(String::from),
            timeline: true,
            ..ReportArgs::default()
        }
    }

    /// Found by the `report_args` fuzz target: a window reaching back
    /// further than i64 seconds from now overflowed its span.
    #[test]
    fn a_window_reaching_back_past_the_epoch_starts_at_the_epoch() {
        for since in [
            "9223372036854775807s",
            "18446744073709551615s",
            "0001-01-01",
        ] {
            let q = build_query(&timeline(since, None, None), NOW).unwrap();
            assert_eq!((q.since, q.until), (0, NOW + 1), "{since}");
            assert_eq!(q.bucket, Some(7 * 86_400), "{since}");
        }
        let q = build_query(&timeline("1h", None, None), NOW).unwrap();
        assert_eq!(q.since, NOW - 3_600);
        // A window wholly before the epoch is empty.
        let err = build_query(&timeline("3000w", Some("2999w"), None), NOW).unwrap_err();
        assert!(err.to_string().contains("--until must be later"), "{err}");
    }

    /// Found by the `report_args` fuzz target: a bucket as wide as an i64
    /// overflowed the chart's bucket count.
    #[test]
    fn a_bucket_wider_than_a_hundred_years_is_refused() {
        assert_eq!(
            build_query(&timeline("1h", None, Some("5200w")), NOW)
                .unwrap()
                .bucket,
            Some(MAX_BUCKET_S as i64)
        );
        for b in ["5201w", "9223372036854775807s", "18446744073709551615s"] {
            let err = build_query(&timeline("1h", None, Some(b)), NOW).unwrap_err();
            assert!(err.to_string().contains("at most 5200w"), "{b}: {err}");
        }
    }
}
