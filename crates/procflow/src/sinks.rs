//! Where records go: the JSON-lines log (optional, rotated by size) and the
//! SQLite flow history (by default). Sinks only consume records; a failing
//! store is reported and counted, never fatal.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use procflow_core::flow::FlowRecord;
use procflow_store::{JsonLog, Store, StoreError, DEFAULT_DB_PATH};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Write flow records as JSON lines to FILE ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Rotate the log when it would grow past this size (e.g. 100M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    log_max_size: Option<u64>,
    /// Rotated logs to keep (FILE.1 ... FILE.N).
    #[arg(long, value_name = "N", default_value_t = 5)]
    log_keep: usize,
    /// The flow history database.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB_PATH)]
    db: PathBuf,
    /// Do not record to the database.
    #[arg(long)]
    no_db: bool,
    /// Delete history older than this (e.g. 30d, 12h); samples older than
    /// two days are rolled up into hourly totals.
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_age)]
    retain: Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let mult = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100M)"))?;
    Ok(n * mult)
}

fn parse_age(s: &str) -> Result<Duration, String> {
    procflow_store::timespec::parse_duration(s).map_err(|e| e.to_string())
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How often retention runs while procflow runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub struct Sinks {
    log: Option<JsonLog>,
    store: Option<Store>,
    pending: Vec<FlowRecord>,
    retain: Duration,
    last_retention: Option<Instant>,
    store_errors: u64,
    /// Standard output was closed by its reader: not an error, just stop.
    pub broken: bool,
}

impl Sinks {
    pub fn open(args: &SinkArgs) -> Result<Sinks> {
        let log = match &args.log {
            None => None,
            Some(p) => Some(
                JsonLog::open(p, args.log_max_size, args.log_keep)
                    .with_context(|| format!("opening the log {}", p.display()))?,
            ),
        };
        let store = if args.no_db {
            None
        } else {
            if let Some(dir) = args.db.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut s = Store::open(&args.db)
                .with_context(|| format!("opening the flow history {}", args.db.display()))?;
            s.start_run(now_ns())
                .context("starting a run in the flow history")?;
            Some(s)
        };
        Ok(Sinks {
            log,
            store,
            pending: Vec::new(),
            retain: args.retain,
            last_retention: None,
            store_errors: 0,
            broken: false,
        })
    }

    /// A record for the log only (stats, verdicts).
    pub fn write(&mut self, value: &impl serde::Serialize) -> Result<()> {
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        match log.write(value) {
            Ok(()) => Ok(()),
            Err(StoreError::BrokenPipe) => {
                self.broken = true;
                self.log = None;
                Ok(())
            }
            Err(e) => Err(e).context("writing the flow log"),
        }
    }

    /// Flow records: the log and the store.
    pub fn flows(&mut self, recs: &[FlowRecord]) -> Result<()> {
        for r in recs {
            self.write(r)?;
        }
        if self.store.is_some() {
            self.pending.extend_from_slice(recs);
        }
        Ok(())
    }

    /// Flushes the log and writes the batch of flow records to the store.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(log) = self.log.as_mut() {
            match log.flush() {
                Ok(()) => {}
                Err(StoreError::BrokenPipe) => {
                    self.broken = true;
                    self.log = None;
                }
                Err(e) => return Err(e).context("writing the flow log"),
            }
        }
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let now = now_ns();
        if !self.pending.is_empty() {
            if let Err(e) = store.write(&self.pending, now) {
                self.store_errors += 1;
                // Rate-limit the message: a full disk fails every batch.
                if self.store_errors.is_power_of_two() {
                    tracing::error!(
                        "flow history: {e:#} (monitoring continues; {} batches failed so far)",
                        self.store_errors
                    );
                }
            }
            self.pending.clear();
        }
        if self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            self.last_retention = Some(Instant::now());
            if let Err(e) = store.apply_retention(self.retain, now) {
                tracing::error!("flow history retention: {e:#}");
            }
        }
        Ok(())
    }

    /// The store's counters, for the stats record.
    pub fn stats(&self) -> serde_json::Value {
        match &self.store {
            None => serde_json::Value::Null,
            Some(s) => {
                let st = s.stats();
                json!({
                    "path": s.path(),
                    "records_written": st.records_written,
                    "records_failed": st.records_failed,
                    "batches_failed": st.batches_failed,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("5X").is_err());
        assert!(parse_size("M").is_err());
    }
}
