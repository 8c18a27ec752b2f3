//! Where records go: the JSON-lines log (optional, rotated by size) and the
//! SQLite flow history (by default). Sinks only consume records; a failing
//! log or store is reported (rate-limited) and counted, never fatal: the
//! monitor, and the rules in the kernel, keep running.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use procflow_core::flow::FlowRecord;
use procflow_core::{RulesRecord, VerdictRecord};
use procflow_store::{JsonLog, Store, StoreError, DEFAULT_DB_PATH};
use serde_json::json;

#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Write flow records as JSON lines to FILE ("-" for standard output).
    /// A new file is created readable by root only (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) log: Option<PathBuf>,
    /// Rotate the log when it would grow past this size (e.g. 100M, 1G);
    /// 0 turns rotation off.
    #[arg(long, value_name = "SIZE", value_parser = procflow_store::timespec::parse_size, default_value = "100M", requires = "log")]
    pub(crate) log_max_size: u64,
    /// Rotated logs to keep (FILE.1 ... FILE.N).
    #[arg(long, value_name = "N", default_value_t = 5, requires = "log")]
    pub(crate) log_keep: usize,
    /// The flow history database.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB_PATH, conflicts_with = "no_db")]
    pub(crate) db: PathBuf,
    /// Do not record to the database.
    #[arg(long)]
    pub(crate) no_db: bool,
    /// Delete history older than this (e.g. 30d, 12h); samples older than
    /// two days are rolled up into hourly totals.
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_age, conflicts_with = "no_db")]
    pub(crate) retain: Duration,
    /// Fold flows shorter than this into their series (no row of their own
    /// in the history, their bytes, packets and count still in every
    /// report) while more than --fold-above new flows a second arrive;
    /// 0s keeps a row for every flow. Blocked flows are never folded.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_age, conflicts_with = "no_db")]
    pub(crate) fold_under: Duration,
    /// New flows a second at or below which every flow keeps its row.
    #[arg(long, value_name = "N", default_value_t = 20, conflicts_with = "no_db")]
    pub(crate) fold_above: u64,
}

impl SinkArgs {
    /// Which flows get no row of their own (`--fold-under`, `--fold-above`).
    fn fold_policy(&self) -> procflow_store::FoldPolicy {
        procflow_store::FoldPolicy {
            shorter_than: self.fold_under,
            above_rate: self.fold_above,
        }
    }

    /// The history database, unless `--no-db`.
    pub fn db(&self) -> Option<PathBuf> {
        (!self.no_db).then(|| self.db.clone())
    }
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
    pending_verdicts: Vec<VerdictRecord>,
    pending_rules: Vec<RulesRecord>,
    retain: Duration,
    last_retention: Option<Instant>,
    store_errors: u64,
    /// How long the store's last batch took (records wait that long).
    last_write_ms: f64,
    /// Failed writes of the log, and whether the last one failed.
    log_errors: u64,
    log_failing: bool,
    /// Standard output was closed by its reader: not an error, just stop.
    pub broken: bool,
}

/// The log `args` ask for, if any.
fn open_log(args: &SinkArgs) -> Result<Option<JsonLog>> {
    let Some(p) = &args.log else {
        return Ok(None);
    };
    let max = Some(args.log_max_size).filter(|m| *m > 0);
    JsonLog::open(p, max, args.log_keep)
        .map(Some)
        .with_context(|| format!("opening the log {}", p.display()))
}

impl Sinks {
    pub fn open(args: &SinkArgs) -> Result<Sinks> {
        let log = open_log(args)?;
        let store = if args.no_db {
            None
        } else {
            // Store::open creates missing directories (mode 0700: the history
            // holds every user's command lines) and the file (0600).
            let mut s = Store::open(&args.db)
                .with_context(|| format!("opening the flow history {}", args.db.display()))?;
            s.set_fold_policy(args.fold_policy());
            s.start_run(now_ns())
                .context("starting a run in the flow history")?;
            Some(s)
        };
        Ok(Sinks {
            log,
            store,
            pending: Vec::new(),
            pending_verdicts: Vec::new(),
            pending_rules: Vec::new(),
            retain: args.retain,
            last_retention: None,
            store_errors: 0,
            last_write_ms: 0.0,
            log_errors: 0,
            log_failing: false,
            broken: false,
        })
    }

    /// SIGHUP: takes the settings that can change while running (the
    /// log, its rotation, retention and folding). A log that cannot be
    /// opened leaves the one in use in use.
    pub fn reconfigure(&mut self, args: &SinkArgs, changed: &[String]) -> Result<()> {
        self.retain = args.retain;
        if let Some(s) = self.store.as_mut() {
            s.set_fold_policy(args.fold_policy());
        }
        if !changed
            .iter()
            .any(|k| matches!(k.as_str(), "log" | "log-max-size" | "log-keep"))
        {
            return Ok(());
        }
        let log = open_log(args)?;
        if let Some(mut old) = std::mem::replace(&mut self.log, log) {
            let r = old.flush();
            self.log_outcome(r);
        }
        Ok(())
    }

    /// What a write to the log (or a flush) came to.
    fn log_outcome(&mut self, r: Result<(), StoreError>) {
        match r {
            Ok(()) => {
                if std::mem::take(&mut self.log_failing) {
                    tracing::warn!(
                        "flow log: writing again (after {} failed writes)",
                        self.log_errors
                    );
                }
            }
            Err(StoreError::BrokenPipe) => {
                self.broken = true;
                self.log = None;
            }
            Err(e) => {
                self.log_errors += 1;
                self.log_failing = true;
                // Rate-limit the message: a full disk fails every flush.
                if self.log_errors.is_power_of_two() {
                    tracing::error!(
                        "flow log: {e:#} (monitoring continues; records wait in memory \
                         and are written when the log works again; {} writes failed so far)",
                        self.log_errors
                    );
                }
            }
        }
    }

    /// A record for the log only.
    fn log_record(&mut self, value: &impl serde::Serialize) {
        if let Some(log) = self.log.as_mut() {
            let r = log.write(value);
            self.log_outcome(r);
        }
    }

    /// Any record: the log and the store.
    pub fn record(&mut self, r: &procflow_core::live::Record) {
        use procflow_core::live::Record;
        match r {
            Record::Flow(f) => self.flows(std::slice::from_ref(f)),
            Record::Verdict(v) => self.verdict(v.clone()),
            Record::Rules(r) => self.rules_change(r.clone()),
            // The run's final stats go in with `finish`; periodic ones are
            // for viewers only.
            Record::Stats(_) => {}
        }
    }

    /// Flow records: the log and the store.
    pub fn flows(&mut self, recs: &[FlowRecord]) {
        for r in recs {
            self.log_record(r);
        }
        if self.store.is_some() {
            self.pending.extend_from_slice(recs);
        }
    }

    /// A blocked attempt: the log and the store.
    pub fn verdict(&mut self, v: VerdictRecord) {
        self.log_record(&v);
        if self.store.is_some() {
            self.pending_verdicts.push(v);
        }
    }

    /// A load or reload of the rules: the log and the store.
    pub fn rules_change(&mut self, r: RulesRecord) {
        self.log_record(&r);
        if self.store.is_some() {
            self.pending_rules.push(r);
        }
    }

    fn store_failed(&mut self, e: &StoreError) {
        self.store_errors += 1;
        // Rate-limit the message: a full disk fails every batch.
        if self.store_errors.is_power_of_two() {
            tracing::error!(
                "flow history: {e:#} (monitoring continues; {} batches failed so far)",
                self.store_errors
            );
        }
    }

    /// Records waiting for the store.
    pub fn waiting(&self) -> usize {
        self.pending.len() + self.pending_verdicts.len() + self.pending_rules.len()
    }

    /// Flushes the log and writes the batch of records to the store.
    pub fn flush(&mut self) {
        if let Some(log) = self.log.as_mut() {
            let r = log.flush();
            self.log_outcome(r);
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let now = now_ns();
        let mut failed = Vec::new();
        if !self.pending.is_empty() {
            let t = Instant::now();
            if let Err(e) = store.write(&self.pending, now) {
                failed.push(e);
            }
            self.last_write_ms = t.elapsed().as_secs_f64() * 1e3;
            self.pending.clear();
        }
        if !self.pending_verdicts.is_empty() || !self.pending_rules.is_empty() {
            if let Err(e) =
                store.write_enforcement(&self.pending_verdicts, &self.pending_rules, now)
            {
                failed.push(e);
            }
            self.pending_verdicts.clear();
            self.pending_rules.clear();
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
        for e in &failed {
            self.store_failed(e);
        }
    }

    /// The end of a run: the stats record to the log and to the store (the
    /// run's row), after everything else.
    pub fn finish(&mut self, stats: &serde_json::Value) {
        self.log_record(stats);
        self.flush();
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.end_run(stats, now_ns()) {
                tracing::error!("flow history: storing the stats record: {e:#}");
            }
        }
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
                    "flows_kept": st.flows_kept,
                    "flows_folded": st.flows_folded,
                    "last_write_ms": self.last_write_ms,
                })
            }
        }
    }

    /// The log's counters, for the stats record: lines written, lines not
    /// written (dropped from the full queue, or still waiting), and failed
    /// writes.
    pub fn log_stats(&self) -> serde_json::Value {
        match &self.log {
            None => serde_json::Value::Null,
            Some(l) => {
                let st = l.stats();
                json!({
                    "path": l.path().map_or_else(|| "-".into(), |p| p.display().to_string()),
                    "records_written": st.records_written,
                    "records_failed": st.records_dropped + st.records_pending,
                    "records_dropped": st.records_dropped,
                    "write_errors": st.write_errors,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;
    use procflow_core::{RulesOutcome, RulesRecord};

    fn args(argv: &[&str]) -> SinkArgs {
        let mut all = vec!["run", "--no-db"];
        all.extend(argv);
        let m = crate::config::run_command()
            .try_get_matches_from(all)
            .unwrap();
        crate::run::RunArgs::from_arg_matches(&m).unwrap().sinks
    }

    fn record(generation: u64) -> procflow_core::live::Record {
        procflow_core::live::Record::Rules(RulesRecord {
            kind: RulesRecord::KIND,
            time: "2026-12-01T00:00:00Z".into(),
            generation,
            outcome: RulesOutcome::Accepted,
            path: "r.toml".into(),
            rules: 1,
            error: None,
        })
    }

    fn generations(path: &std::path::Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["generation"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_reload_moves_the_log_and_a_log_that_cannot_open_leaves_it_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let mut s = Sinks::open(&args(&["--log", a.to_str().unwrap()])).unwrap();
        s.record(&record(1));
        let changed = vec!["log".to_string()];
        s.reconfigure(&args(&["--log", b.to_str().unwrap()]), &changed)
            .unwrap();
        s.record(&record(2));
        let bad = dir.path().join("missing-dir").join("c.jsonl");
        let e = s
            .reconfigure(&args(&["--log", bad.to_str().unwrap()]), &changed)
            .unwrap_err();
        assert!(format!("{e:#}").contains("c.jsonl"), "{e:#}");
        s.record(&record(3));
        s.flush();
        assert_eq!(generations(&a), vec![1]);
        assert_eq!(generations(&b), vec![2, 3], "the log in use stays in use");
        // No log at all any more.
        s.reconfigure(&args(&[]), &changed).unwrap();
        s.record(&record(4));
        s.flush();
        assert_eq!(generations(&b), vec![2, 3]);
    }
}
