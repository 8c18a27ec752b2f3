//! The writer side of the store: runs, batched flow records, samples.
//!
//! [`Store::write`] takes a batch of [`FlowRecord`]s (cumulative counters)
//! and writes it in one transaction: each record upserts its flow's row, and
//! the growth of its byte counters since the flow's previous record goes into
//! a 10-second sample of its series (process, remote, service port, proto,
//! direction, remote name, deciding rule) and into the hourly total of that
//! series. The previous
//! counters of live flows are kept in memory, and
//! read back from the flow's row when they are not (after a restart of the
//! writer, or when the bounded caches were emptied), so a flow is never
//! counted twice. A batch either lands whole or not at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::IpAddr;

use procflow_core::flow::{
    BeforeStart, Counters, Direction, FlowRecord, FlowState, Origin, Proto, Verdict,
};
use procflow_core::ProcessIdentity;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::StoreError;
use crate::schema;
use crate::timespec::{self, bucket_start};

/// Width of the samples written by [`Store::write`], in seconds.
pub const SAMPLE_SECONDS: i64 = 10;

/// Width of the rows of `hourly`, in seconds.
pub const HOUR_SECONDS: i64 = 3_600;

/// How many live flows the writer remembers, and how many row ids of
/// executables, processes and series, before such a cache is emptied.
/// Emptying is always safe: everything is read back from the database. With
/// SQLite's page cache (32 MiB) this bounds the writer's memory to about
/// 100 MiB however many flows arrive.
const LIVE_LIMIT: usize = 1 << 18;

/// `last_seen_us` of processes and series in use is brought up to date at
/// least this often (microseconds); retention leaves them hours of margin.
const TOUCH_EVERY_US: i64 = 600 * 1_000_000;
const ID_LIMIT: usize = 1 << 16;

/// How many processes of recent records are looked up without hashing.
const RECENT_PROCESSES: usize = 8;

/// Counters of the writer, for the daemon's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub batches_written: u64,
    pub records_written: u64,
    pub batches_failed: u64,
    /// Records that could not be written (their batch failed).
    pub records_failed: u64,
    /// Flows given a row of their own in `flows`.
    pub flows_kept: u64,
    /// Short flows folded into their series, with no row of their own
    /// (see [`FoldPolicy`]).
    pub flows_folded: u64,
}

/// Which flows get no row of their own: a flow is *folded* when it closed
/// less than [`shorter_than`](Self::shorter_than) after it started, was not
/// blocked, and more than [`above_rate`](Self::above_rate) new flows a
/// second arrive (counted over 10-second windows: the current one and the
/// one before). Its bytes, packets and its connection still go into the
/// samples and hourly totals of its series, which count the flows folded
/// there too, so reports add up exactly; only its row in `flows` (its own
/// addresses, ports and times) is not kept. Every other flow gets its row:
/// long ones, blocked ones, and all of them while the rate is at or below
/// `above_rate`.
///
/// While the rate is above `above_rate`, the row of a new flow is written
/// only when it closes or once it has been open for `shorter_than` (a
/// `kill -9` before then loses the row, never its traffic, which is in the
/// samples of the batches written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldPolicy {
    /// Flows lasting at least this long are never folded; zero folds none.
    pub shorter_than: Duration,
    /// New flows per second at or below which every flow is kept.
    pub above_rate: u64,
}

impl Default for FoldPolicy {
    fn default() -> Self {
        FoldPolicy {
            shorter_than: Duration::from_secs(10),
            above_rate: 20,
        }
    }
}

impl FoldPolicy {
    /// Every flow gets its row.
    pub const NEVER: FoldPolicy = FoldPolicy {
        shorter_than: Duration::ZERO,
        above_rate: u64::MAX,
    };

    fn enabled(&self) -> bool {
        !self.shorter_than.is_zero() && self.above_rate < u64::MAX
    }

    fn shorter_than_us(&self) -> i64 {
        i64::try_from(self.shorter_than.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Width of the windows over which new flows are counted for the
/// [`FoldPolicy`] rate, in seconds.
pub const RATE_WINDOW_SECONDS: i64 = 10;

/// New flows per [`RATE_WINDOW_SECONDS`] window: the current one and the
/// one before.
#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    window: i64,
    current: u64,
    before: u64,
}

impl Rate {
    fn roll(&mut self, now_us: i64) {
        let w = now_us.div_euclid(RATE_WINDOW_SECONDS * 1_000_000);
        if w != self.window {
            self.before = if w == self.window + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.window = w;
        }
    }

    fn count(&mut self, now_us: i64) {
        self.roll(now_us);
        self.current += 1;
    }

    /// Whether more than `p.above_rate` new flows a second arrived, in the
    /// current window or the one before.
    fn above(&mut self, now_us: i64, p: &FoldPolicy) -> bool {
        self.roll(now_us);
        let limit = p.above_rate.saturating_mul(RATE_WINDOW_SECONDS as u64);
        self.current.max(self.before) > limit
    }
}

/// Bytes, packets and flows of one series in one bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_packets: u64,
    pub(crate) rx_packets: u64,
    /// Flows first recorded here.
    pub(crate) flows: u64,
    /// Flows folded here (at their close).
    pub(crate) folded: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(o.tx_packets);
        self.rx_packets = self.rx_packets.saturating_add(o.rx_packets);
        self.flows = self.flows.saturating_add(o.flows);
        self.folded = self.folded.saturating_add(o.folded);
    }

    fn params(&self, at: i64, series: i64) -> [i64; 8] {
        [
            at,
            series,
            db_u64(self.tx_bytes),
            db_u64(self.rx_bytes),
            db_u64(self.tx_packets),
            db_u64(self.rx_packets),
            db_u64(self.flows),
            db_u64(self.folded),
        ]
    }
}

/// Flows kept and folded in the batch being written.
#[derive(Debug, Default, Clone, Copy)]
struct BatchCounts {
    kept: u64,
    folded: u64,
}

/// A fingerprint of a process identity, so that looking one up in the
/// cache copies nothing; entries keep the identity to compare.
fn process_hash(p: &ProcessIdentity) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one((
        p.pid,
        p.ppid,
        p.uid,
        &p.user,
        &p.comm,
        &p.exe,
        &p.cmdline,
        &p.cgroup,
        &p.exe_unknown,
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    process_id: Option<i64>,
    remote_ip: IpAddr,
    port: u16,
    proto: Proto,
    direction: Direction,
    remote_name: Option<String>,
    /// `allow` or `block`.
    verdict: Option<&'static str>,
    rule: Option<String>,
}

/// What the writer remembers of a live flow (or one closed a moment ago).
#[derive(Debug, Clone, Default)]
struct LiveFlow {
    /// `flows.flow_row`; 0 while it has no row.
    row: i64,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    remote_name: Option<String>,
    /// The flow's verdict and deciding rule, once known.
    verdict: Option<Verdict>,
    rule: Option<String>,
    before_start: Option<BeforeStart>,
    /// Counted in the `flows` of a sample (at its first traffic).
    counted: bool,
    /// Folded at its close.
    folded: bool,
    /// A flow without a row yet, that may still be folded: its latest
    /// record, to write the row from.
    waiting: Option<Box<Waiting>>,
}

#[derive(Debug, Clone)]
struct Waiting {
    row: RowData,
    process_id: Option<i64>,
    /// The batch in which it began to wait.
    since_batch: u64,
}

/// What a flow's row holds of its latest record, without the text fields
/// (so keeping it copies nothing).
#[derive(Debug, Clone, Copy)]
struct RowData {
    state: FlowState,
    proto: Proto,
    family: u8,
    direction: Direction,
    local_ip: IpAddr,
    local_port: u16,
    remote_ip: IpAddr,
    remote_port: u16,
    netns: u64,
    start_us: i64,
    end_us: Option<i64>,
    counters: Counters,
    before_start: Option<BeforeStart>,
    origin: Origin,
}

impl RowData {
    fn new(r: &FlowRecord, start_us: i64, end_us: Option<i64>) -> RowData {
        RowData {
            state: r.state,
            proto: r.proto,
            family: r.family,
            direction: r.direction,
            local_ip: r.local_ip,
            local_port: r.local_port,
            remote_ip: r.remote_ip,
            remote_port: r.remote_port,
            netns: r.netns,
            start_us,
            end_us,
            counters: r.counters,
            before_start: r.before_start,
            origin: r.origin,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Caches {
    exes: HashMap<String, i64>,
    /// Fingerprint -> (identity, row id, when last_seen_us was written).
    processes: HashMap<u64, Vec<(ProcessIdentity, i64, i64)>>,
    /// The processes of the last records, compared before any hashing:
    /// (identity, row id, when last_seen_us was written).
    recent: Vec<(ProcessIdentity, i64, i64)>,
    /// Key -> (row id, when last_seen_us was written).
    series: HashMap<SeriesKey, (i64, i64)>,
    live: HashMap<String, LiveFlow>,
    /// `live` has held every live flow of the current run since it
    /// started: a flow it lacks is new (or closed), no need to look for
    /// its row.
    live_complete: bool,
}

impl Caches {
    #[cfg(test)]
    fn clear(&mut self) {
        self.clear_ids();
        self.live.clear();
        self.live_complete = false;
    }

    /// Forgets the row ids (after retention may have deleted rows).
    pub(crate) fn clear_ids(&mut self) {
        self.exes.clear();
        self.processes.clear();
        self.recent.clear();
        self.series.clear();
    }
}

fn bound<K, V>(map: &mut HashMap<K, V>, limit: usize) {
    if map.len() >= limit {
        map.clear();
    }
}

/// The embedded flow store (one writer).
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
    run_id: Option<i64>,
    pub(crate) caches: Caches,
    stats: WriteStats,
    fold: FoldPolicy,
    rate: Rate,
    /// When the live flows without a row are next looked at, to give a
    /// row to those no longer short.
    next_aged_us: i64,
    /// Batches begun, to tell the flows that began to wait in this one.
    batch_no: u64,
    /// Flows closed in this batch, and in the one before (a repeated close
    /// must not count them again); with what a flow closed in this batch
    /// was before it, if it was waiting for a row.
    closed: (Closed, Closed),
    /// What other live flows without a row were before this batch: put
    /// back if it fails, as they are in no table.
    journal: Vec<(String, LiveFlow)>,
    batch_counts: BatchCounts,
}

/// Flows closed in one batch: what the store knows of each, and what it was
/// before the batch if it was waiting for a row.
type Closed = HashMap<String, (LiveFlow, Option<LiveFlow>)>;

fn state_str(s: FlowState) -> &'static str {
    match s {
        FlowState::Open => "open",
        FlowState::Closed => "closed",
    }
}

/// Clamps a counter into SQLite's signed 64-bit integers.
pub(crate) fn db_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Out => "out",
        Direction::In => "in",
        Direction::Unknown => "unknown",
    }
}

pub(crate) fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Block => "block",
    }
}

fn parse_verdict(s: Option<String>) -> Option<Verdict> {
    match s.as_deref() {
        Some("allow") => Some(Verdict::Allow),
        Some("block") => Some(Verdict::Block),
        _ => None,
    }
}

fn origin_str(o: Origin) -> &'static str {
    match o {
        Origin::Connect => "connect",
        Origin::Accept => "accept",
        Origin::Send => "send",
        Origin::Startup => "startup",
        Origin::Packet => "packet",
        Origin::PacketSocket => "packet_socket",
    }
}

/// The port that names the service of a flow: the remote port of flows we
/// opened, the local port of flows we accepted.
pub fn service_port(r: &FlowRecord) -> u16 {
    match r.direction {
        Direction::In => r.local_port,
        Direction::Out | Direction::Unknown => r.remote_port,
    }
}

impl Store {
    /// Opens or creates the database at `path` (WAL mode), migrating an older
    /// schema. A file that is not a procflow database, or that has a newer
    /// schema, is refused and left untouched.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        let conn = schema::open_writer(path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            run_id: None,
            caches: Caches::default(),
            stats: WriteStats::default(),
            fold: FoldPolicy::default(),
            rate: Rate::default(),
            next_aged_us: 0,
            batch_no: 0,
            closed: Default::default(),
            journal: Vec::new(),
            batch_counts: BatchCounts::default(),
        })
    }

    /// Which flows are folded from now on (default [`FoldPolicy::default`]).
    pub fn set_fold_policy(&mut self, policy: FoldPolicy) {
        self.fold = policy;
    }

    pub fn fold_policy(&self) -> FoldPolicy {
        self.fold
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// The current run, if one was started.
    pub fn run_id(&self) -> Option<i64> {
        self.run_id
    }

    /// Starts a new run: flow ids are unique only within a run. [`Store::write`]
    /// starts one by itself if none was started.
    pub fn start_run(&mut self, now_unix_ns: u64) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO runs (started_us, version) VALUES (?1, ?2)",
            params![db_u64(now_unix_ns / 1_000), env!("CARGO_PKG_VERSION")],
        )?;
        let id = self.conn.last_insert_rowid();
        self.new_run(id);
        Ok(id)
    }

    /// Forgets the flows of the run before: flow ids are unique per run.
    fn new_run(&mut self, id: i64) {
        self.run_id = Some(id);
        self.caches.live.clear();
        self.caches.live_complete = true;
        self.closed.0.clear();
        self.closed.1.clear();
    }

    /// Ends the current run: its end time and its final stats record (a
    /// JSON object, kept as text in `runs.stats`). Starts a run first if
    /// none was started, so that the stats of a run that recorded nothing
    /// are kept too.
    pub fn end_run(
        &mut self,
        stats: &impl serde::Serialize,
        now_unix_ns: u64,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(stats)?;
        let now_us = db_u64(now_unix_ns / 1_000);
        let run_id = self.ensure_run(now_us)?;
        // Flows still open and without a row get theirs.
        if self.caches.live.values().any(|l| l.waiting.is_some()) {
            self.batch("flow records", 0, |s| s.keep_all_waiting(run_id, now_us))?;
        }
        self.conn.execute(
            "UPDATE runs SET ended_us = ?2, stats = ?3 WHERE run_id = ?1",
            params![run_id, now_us, text],
        )?;
        Ok(())
    }

    /// The current run, started now if there is none. Inside a transaction
    /// that fails, the caller must forget the run again (see
    /// [`Store::write`]).
    pub(crate) fn ensure_run(&mut self, now_us: i64) -> rusqlite::Result<i64> {
        if let Some(id) = self.run_id {
            return Ok(id);
        }
        self.conn.execute(
            "INSERT INTO runs (started_us, version) VALUES (?1, ?2)",
            params![now_us, env!("CARGO_PKG_VERSION")],
        )?;
        let id = self.conn.last_insert_rowid();
        self.new_run(id);
        Ok(id)
    }

    /// Writes a batch of records in one transaction and returns how many were
    /// written. On failure (for example [`StoreError::is_disk_full`]) nothing
    /// of the batch is kept, [`StoreError::Write`] tells how many records were
    /// lost, and the store stays usable for the next batch.
    pub fn write(&mut self, records: &[FlowRecord], now_unix_ns: u64) -> Result<usize, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        self.batch("flow records", records.len(), |s| {
            s.write_batch(records, now_unix_ns)
        })
    }

    /// Runs `write` (which writes `records` records) in one transaction,
    /// counting it in the stats; on failure nothing of it is kept and the
    /// store stays usable.
    pub(crate) fn batch(
        &mut self,
        what: &'static str,
        records: usize,
        write: impl FnOnce(&mut Self) -> rusqlite::Result<()>,
    ) -> Result<usize, StoreError> {
        let started_run = self.run_id.is_none();
        self.journal.clear();
        self.batch_counts = BatchCounts::default();
        self.batch_no += 1;
        let result = self
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| write(self))
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        match result {
            Ok(()) => {
                self.stats.batches_written += 1;
                self.stats.records_written += records as u64;
                self.stats.flows_kept += self.batch_counts.kept;
                self.stats.flows_folded += self.batch_counts.folded;
                self.journal.clear();
                if !self.closed.0.is_empty() {
                    std::mem::swap(&mut self.closed.0, &mut self.closed.1);
                    self.closed.0.clear();
                }
                Ok(records)
            }
            Err(source) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // What the caches learned in the lost transaction is not in
                // the database: forget it all, the database is the truth,
                // except for the flows without a row, which are put back
                // as they were before the batch.
                self.caches.clear_ids();
                let batch = self.batch_no;
                let live = &mut self.caches.live;
                live.retain(|_, l| l.waiting.as_ref().is_some_and(|w| w.since_batch != batch));
                for (id, (_, old)) in self.closed.0.drain() {
                    if let Some(l) = old {
                        live.insert(id, l);
                    }
                }
                for (id, l) in self.journal.drain(..).rev() {
                    live.insert(id, l);
                }
                self.caches.live_complete = false;
                if started_run {
                    self.run_id = None;
                }
                self.stats.batches_failed += 1;
                self.stats.records_failed += records as u64;
                Err(StoreError::Write {
                    records,
                    what,
                    source,
                })
            }
        }
    }

    fn write_batch(&mut self, records: &[FlowRecord], now_unix_ns: u64) -> rusqlite::Result<()> {
        let now_us = db_u64(now_unix_ns / 1_000);
        let run_id = self.ensure_run(now_us)?;
        let mut samples: HashMap<(i64, i64), Counts> = HashMap::new();
        for r in records {
            self.write_record(run_id, r, now_us, &mut samples)?;
        }
        self.keep_aged(run_id, now_us)?;
        self.write_samples(samples)
    }

    /// Adds `samples` (per bucket and series) to the 10-second samples and
    /// to the hourly totals.
    fn write_samples(&mut self, samples: HashMap<(i64, i64), Counts>) -> rusqlite::Result<()> {
        let mut hours: HashMap<(i64, i64), Counts> = HashMap::new();
        let mut up = self.conn.prepare_cached(
            "INSERT INTO samples (bucket, series_id, tx_bytes, rx_bytes, tx_packets, rx_packets,
                flows, folded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (bucket, series_id) DO UPDATE SET
                tx_bytes = tx_bytes + excluded.tx_bytes,
                rx_bytes = rx_bytes + excluded.rx_bytes,
                tx_packets = tx_packets + excluded.tx_packets,
                rx_packets = rx_packets + excluded.rx_packets,
                flows = flows + excluded.flows,
                folded = folded + excluded.folded",
        )?;
        for ((bucket, series), c) in samples {
            up.execute(c.params(bucket, series))?;
            hours
                .entry((bucket_start(bucket, HOUR_SECONDS), series))
                .or_default()
                .add(&c);
        }
        let mut up = self.conn.prepare_cached(
            "INSERT INTO hourly (hour, series_id, tx_bytes, rx_bytes, tx_packets, rx_packets,
                flows, folded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (hour, series_id) DO UPDATE SET
                tx_bytes = tx_bytes + excluded.tx_bytes,
                rx_bytes = rx_bytes + excluded.rx_bytes,
                tx_packets = tx_packets + excluded.tx_packets,
                rx_packets = rx_packets + excluded.rx_packets,
                flows = flows + excluded.flows,
                folded = folded + excluded.folded",
        )?;
        for ((hour, series), c) in hours {
            up.execute(c.params(hour, series))?;
        }
        Ok(())
    }

    /// Gives a row to every flow still without one that has been open for
    /// [`FoldPolicy::shorter_than`] (it can no longer be folded), so that a
    /// long flow's row is in the database within a batch of that age.
    fn keep_aged(&mut self, run_id: i64, now_us: i64) -> rusqlite::Result<()> {
        if now_us < self.next_aged_us {
            return Ok(());
        }
        // Once a second: a long flow's row is late by at most that.
        self.next_aged_us = now_us.saturating_add(1_000_000);
        let short = self.fold.shorter_than_us();
        let aged: Vec<String> = self
            .caches
            .live
            .iter()
            .filter(|(_, l)| {
                l.waiting
                    .as_ref()
                    .is_some_and(|w| w.row.start_us.saturating_add(short) <= now_us)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in aged {
            self.keep_waiting(run_id, &id, now_us)?;
        }
        Ok(())
    }

    /// Writes the row of the live flow `id` if it has none yet.
    fn keep_waiting(&mut self, run_id: i64, id: &str, now_us: i64) -> rusqlite::Result<()> {
        let Some((key, old)) = self.caches.live.remove_entry(id) else {
            return Ok(());
        };
        let Some(w) = old.waiting.as_deref() else {
            self.caches.live.insert(key, old);
            return Ok(());
        };
        let row = self
            .insert_row(run_id, &key, &w.row, w.process_id, &old, now_us)?
            .unwrap_or(0);
        self.batch_counts.kept += 1;
        let kept = LiveFlow {
            row,
            waiting: None,
            ..old.clone()
        };
        self.journal.push((key.clone(), old));
        if row != 0 {
            self.caches.live.insert(key, kept);
        }
        Ok(())
    }

    /// Gives a row to every live flow that has none (before the cache of
    /// live flows is emptied, or at the end of a run).
    fn keep_all_waiting(&mut self, run_id: i64, now_us: i64) -> rusqlite::Result<()> {
        let ids: Vec<String> = self
            .caches
            .live
            .iter()
            .filter(|(_, l)| l.waiting.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.keep_waiting(run_id, &id, now_us)?;
        }
        Ok(())
    }

    /// Inserts the row of flow `r` (with what `known` already says of it).
    /// `None` if the flow already has a row in this run (a record after its
    /// close): the caller updates that row instead.
    fn insert_row(
        &mut self,
        run_id: i64,
        flow_id: &str,
        r: &RowData,
        process_id: Option<i64>,
        known: &LiveFlow,
        now_us: i64,
    ) -> rusqlite::Result<Option<i64>> {
        let c = &r.counters;
        let before = r.before_start.or(known.before_start);
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO flows (run_id, flow_id, process_id, state, proto, family,
                    direction, local_ip, local_port, remote_ip, remote_port, netns,
                    start_us, end_us, last_us, tx_bytes, rx_bytes, tx_packets,
                    rx_packets, tx_payload, rx_payload, before_tx_payload,
                    before_rx_payload, origin, verdict, rule, remote_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                    ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)
                 ON CONFLICT (run_id, flow_id) DO NOTHING",
            )?
            .execute(params![
                run_id,
                flow_id,
                process_id,
                state_str(r.state),
                r.proto.to_string(),
                r.family,
                direction_str(r.direction),
                r.local_ip.to_string(),
                r.local_port,
                r.remote_ip.to_string(),
                r.remote_port,
                db_u64(r.netns),
                r.start_us,
                r.end_us,
                now_us,
                db_u64(c.tx_bytes),
                db_u64(c.rx_bytes),
                db_u64(c.tx_packets),
                db_u64(c.rx_packets),
                db_u64(c.tx_payload),
                db_u64(c.rx_payload),
                before.map(|b| db_u64(b.tx_payload)),
                before.map(|b| db_u64(b.rx_payload)),
                origin_str(r.origin),
                known.verdict.map(verdict_str),
                known.rule,
                known.remote_name,
            ])?;
        Ok((n > 0).then(|| self.conn.last_insert_rowid()))
    }

    /// What the store holds of flow `flow_id`'s row in this run.
    fn read_row(&self, run_id: i64, flow_id: &str) -> rusqlite::Result<Option<LiveFlow>> {
        self.conn
            .prepare_cached(
                "SELECT flow_row, tx_bytes, rx_bytes, tx_packets, rx_packets, remote_name,
                    verdict, rule FROM flows
                 WHERE run_id = ?1 AND flow_id = ?2",
            )?
            .query_row(params![run_id, flow_id], |row| {
                let n = |i| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(LiveFlow {
                    row: row.get(0)?,
                    tx_bytes: n(1)?,
                    rx_bytes: n(2)?,
                    tx_packets: n(3)?,
                    rx_packets: n(4)?,
                    remote_name: row.get(5)?,
                    verdict: parse_verdict(row.get(6)?),
                    rule: row.get(7)?,
                    ..Default::default()
                })
                .map(|mut l| {
                    l.counted =
                        (l.tx_bytes, l.rx_bytes, l.tx_packets, l.rx_packets) != (0, 0, 0, 0);
                    l
                })
            })
            .optional()
    }

    fn write_record(
        &mut self,
        run_id: i64,
        r: &FlowRecord,
        now_us: i64,
        samples: &mut HashMap<(i64, i64), Counts>,
    ) -> rusqlite::Result<()> {
        let process_id = match &r.process {
            Some(p) => Some(self.process_id(run_id, p, now_us)?),
            None => None,
        };
        // What is known of the flow: the cache of live flows (which holds
        // every live flow of this run that has no row), the flows closed in
        // this batch and the one before, or its row.
        // A flow waiting for a row: what it was before this batch, and
        // since which batch it waits.
        let mut before: Option<LiveFlow> = None;
        let mut waiting_since = self.batch_no;
        let mut waiting_pid = None;
        let mut start_known = None;
        let (key, cached) = match self.caches.live.remove_entry(&r.flow_id) {
            Some((k, mut l)) => {
                if let Some(w) = l.waiting.take() {
                    waiting_pid = w.process_id;
                    waiting_since = w.since_batch;
                    start_known = Some(w.row.start_us);
                    l.before_start = l.before_start.or(w.row.before_start);
                    if w.since_batch != self.batch_no {
                        before = Some(LiveFlow {
                            waiting: Some(w),
                            ..l.clone()
                        });
                    }
                }
                (k, Some(l))
            }
            None => {
                let closed = self
                    .closed
                    .0
                    .get(&r.flow_id)
                    .or_else(|| self.closed.1.get(&r.flow_id))
                    .map(|(l, _)| l.clone());
                (r.flow_id.clone(), closed)
            }
        };
        let was_waiting = start_known.is_some();
        let known = match cached {
            Some(l) => Some(l),
            None if self.caches.live_complete => None,
            None => self.read_row(run_id, &r.flow_id)?,
        };
        let start_us = match start_known {
            Some(s) => s,
            None => timespec::parse_rfc3339_us(&r.start).unwrap_or(now_us),
        };
        let end_us = r.end.as_deref().and_then(timespec::parse_rfc3339_us);
        let c = &r.counters;

        let new = known.is_none();
        let mut l = known.unwrap_or_default();
        // A record without a verdict keeps the one the flow already has
        // (the row does the same with coalesce); the first name learned stays.
        if r.verdict.is_some() {
            l.verdict = r.verdict;
            l.rule = r.rule.clone();
        }
        let mut named = false;
        if l.remote_name.is_none() && r.remote_name.is_some() {
            l.remote_name = r.remote_name.clone();
            named = true;
        }
        if new {
            self.rate.count(now_us);
        }
        let process_id = process_id.or(waiting_pid);
        let short = self.fold.shorter_than_us();
        let young = |until_us: i64| until_us.saturating_sub(start_us) < short;
        let may_fold = l.verdict != Some(Verdict::Block)
            && self.fold.enabled()
            && self.rate.above(now_us, &self.fold);
        let mut folded_now = false;
        if l.row == 0 && !l.folded {
            match r.state {
                FlowState::Closed if may_fold && young(end_us.unwrap_or(now_us)) => {
                    folded_now = true;
                    l.folded = true;
                    self.batch_counts.folded += 1;
                }
                FlowState::Open if may_fold && young(now_us) => {
                    if let Some(b) = before.take() {
                        // Put back, should the batch fail.
                        self.journal.push((key.clone(), b));
                    }
                    l.waiting = Some(Box::new(Waiting {
                        row: RowData::new(r, start_us, end_us),
                        process_id,
                        since_batch: if was_waiting {
                            waiting_since
                        } else {
                            self.batch_no
                        },
                    }));
                }
                _ => {
                    let data = RowData::new(r, start_us, end_us);
                    match self.insert_row(run_id, &key, &data, process_id, &l, now_us)? {
                        Some(row) => {
                            l.row = row;
                            self.batch_counts.kept += 1;
                        }
                        None => {
                            // A record after the flow's close, forgotten
                            // since: its row has what was counted.
                            if let Some(old) = self.read_row(run_id, &r.flow_id)? {
                                l = LiveFlow {
                                    verdict: l.verdict.or(old.verdict),
                                    rule: l.rule.take().or(old.rule.clone()),
                                    remote_name: old.remote_name.clone().or(l.remote_name.take()),
                                    ..old
                                };
                                self.update_row(&l, r, process_id, end_us, now_us, true)?;
                            }
                        }
                    }
                }
            }
        } else if l.row != 0 {
            self.update_row(&l, r, process_id, end_us, now_us, named)?;
        }
        let mut d = Counts {
            tx_bytes: c.tx_bytes.saturating_sub(l.tx_bytes),
            rx_bytes: c.rx_bytes.saturating_sub(l.rx_bytes),
            tx_packets: c.tx_packets.saturating_sub(l.tx_packets),
            rx_packets: c.rx_packets.saturating_sub(l.rx_packets),
            ..Default::default()
        };
        // A flow is counted where its first traffic is, and if folded,
        // counted as folded where it closed: a flow that never moved a
        // packet is in no group.
        if !l.counted && d != Counts::default() {
            d.flows = 1;
            l.counted = true;
        }
        if folded_now && l.counted {
            d.folded = 1;
        }
        if d != Counts::default() {
            let key = SeriesKey {
                process_id,
                remote_ip: r.remote_ip,
                port: service_port(r),
                proto: r.proto,
                direction: r.direction,
                remote_name: l.remote_name.clone(),
                verdict: l.verdict.map(verdict_str),
                rule: l.rule.clone(),
            };
            let series = self.series_id(key, now_us)?;
            // Traffic up to a close belongs to the close; the rest to now.
            let at_us = match (r.state, end_us) {
                (FlowState::Closed, Some(e)) => e,
                _ => now_us,
            };
            let bucket = bucket_start(at_us.div_euclid(1_000_000), SAMPLE_SECONDS);
            samples.entry((bucket, series)).or_default().add(&d);
        }
        l.tx_bytes = l.tx_bytes.max(c.tx_bytes);
        l.rx_bytes = l.rx_bytes.max(c.rx_bytes);
        l.tx_packets = l.tx_packets.max(c.tx_packets);
        l.rx_packets = l.rx_packets.max(c.rx_packets);
        match r.state {
            FlowState::Closed => {
                // Remembered a little while, in case of a repeated close.
                self.closed.0.insert(key, (l, before.take()));
            }
            FlowState::Open => {
                if self.caches.live.len() >= LIVE_LIMIT {
                    // Flows without a row are known only here: give them
                    // one before forgetting.
                    self.keep_all_waiting(run_id, now_us)?;
                    self.caches.live.clear();
                    self.caches.live_complete = false;
                }
                if let Some(b) = before.take() {
                    // Given a row in this batch: put back, should it fail.
                    self.journal.push((key.clone(), b));
                }
                self.caches.live.insert(key, l);
            }
        }
        Ok(())
    }

    /// Updates the row of a flow from its record `r`.
    fn update_row(
        &self,
        l: &LiveFlow,
        r: &FlowRecord,
        process_id: Option<i64>,
        end_us: Option<i64>,
        now_us: i64,
        named: bool,
    ) -> rusqlite::Result<()> {
        let c = &r.counters;
        self.conn
            .prepare_cached(
                "UPDATE flows SET
                    process_id = coalesce(?2, process_id),
                    state = ?3, end_us = ?4, last_us = ?5,
                    tx_bytes = ?6, rx_bytes = ?7, tx_packets = ?8, rx_packets = ?9,
                    tx_payload = ?10, rx_payload = ?11,
                    before_tx_payload = coalesce(?12, before_tx_payload),
                    before_rx_payload = coalesce(?13, before_rx_payload),
                    verdict = coalesce(?14, verdict),
                    rule = coalesce(?15, rule)
                 WHERE flow_row = ?1",
            )?
            .execute(params![
                l.row,
                process_id,
                state_str(r.state),
                end_us,
                now_us,
                db_u64(c.tx_bytes),
                db_u64(c.rx_bytes),
                db_u64(c.tx_packets),
                db_u64(c.rx_packets),
                db_u64(c.tx_payload),
                db_u64(c.rx_payload),
                r.before_start.map(|b| db_u64(b.tx_payload)),
                r.before_start.map(|b| db_u64(b.rx_payload)),
                r.verdict.map(verdict_str),
                r.rule,
            ])?;
        if named {
            if let Some(name) = &l.remote_name {
                self.conn
                    .prepare_cached(
                        "UPDATE flows SET remote_name = ?2 WHERE flow_row = ?1 AND remote_name IS NULL",
                    )?
                    .execute(params![l.row, name])?;
            }
        }
        Ok(())
    }

    fn exe_id(&mut self, path: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.caches.exes.get(path) {
            return Ok(*id);
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO executables (path) VALUES (?1)")?
            .execute([path])?;
        let id = self
            .conn
            .prepare_cached("SELECT exe_id FROM executables WHERE path = ?1")?
            .query_row([path], |r| r.get(0))?;
        bound(&mut self.caches.exes, ID_LIMIT);
        self.caches.exes.insert(path.to_string(), id);
        Ok(id)
    }

    pub(crate) fn process_id(
        &mut self,
        run_id: i64,
        p: &ProcessIdentity,
        now_us: i64,
    ) -> rusqlite::Result<i64> {
        if let Some((_, id, touched)) = self
            .caches
            .recent
            .iter()
            .find(|(q, _, _)| q.pid == p.pid && q == p)
        {
            if now_us - touched < TOUCH_EVERY_US {
                return Ok(*id);
            }
        }
        let id = self.process_id_slow(run_id, p, now_us)?;
        let recent = &mut self.caches.recent;
        match recent.iter_mut().find(|(q, _, _)| q.pid == p.pid && q == p) {
            Some(e) => {
                e.1 = id;
                e.2 = now_us;
            }
            None => {
                if recent.len() >= RECENT_PROCESSES {
                    recent.remove(0);
                }
                recent.push((p.clone(), id, now_us));
            }
        }
        Ok(id)
    }

    fn process_id_slow(
        &mut self,
        run_id: i64,
        p: &ProcessIdentity,
        now_us: i64,
    ) -> rusqlite::Result<i64> {
        let hash = process_hash(p);
        if let Some(entry) = self
            .caches
            .processes
            .get_mut(&hash)
            .and_then(|v| v.iter_mut().find(|(q, _, _)| q == p))
        {
            if now_us - entry.2 >= TOUCH_EVERY_US {
                entry.2 = now_us;
                let id = entry.1;
                self.touch("processes", "process_id", id, now_us)?;
                return Ok(id);
            }
            return Ok(entry.1);
        }
        let exe_id = match &p.exe {
            Some(e) => Some(self.exe_id(e)?),
            None => None,
        };
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT process_id FROM processes
                 WHERE run_id = ?1 AND pid = ?2 AND ppid = ?3 AND uid = ?4 AND user IS ?5
                   AND comm = ?6 AND exe_id IS ?7 AND cmdline IS ?8 AND cgroup IS ?9
                   AND exe_unknown IS ?10",
            )?
            .query_row(
                params![
                    run_id,
                    p.pid,
                    p.ppid,
                    p.uid,
                    p.user,
                    p.comm,
                    exe_id,
                    p.cmdline,
                    p.cgroup,
                    p.exe_unknown
                ],
                |r| r.get(0),
            )
            .optional()?;
        let id = match found {
            Some(id) => {
                self.touch("processes", "process_id", id, now_us)?;
                id
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO processes (run_id, pid, ppid, uid, user, comm, exe_id,
                            cmdline, cgroup, exe_unknown, first_seen_us, last_seen_us)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                    )?
                    .execute(params![
                        run_id,
                        p.pid,
                        p.ppid,
                        p.uid,
                        p.user,
                        p.comm,
                        exe_id,
                        p.cmdline,
                        p.cgroup,
                        p.exe_unknown,
                        now_us
                    ])?;
                self.conn.last_insert_rowid()
            }
        };
        bound(&mut self.caches.processes, ID_LIMIT);
        self.caches
            .processes
            .entry(hash)
            .or_default()
            .push((p.clone(), id, now_us));
        Ok(id)
    }

    /// Brings `last_seen_us` of one row of `table` to `now_us`.
    fn touch(&self, table: &str, id_col: &str, id: i64, now_us: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(&format!(
                "UPDATE {table} SET last_seen_us = ?2 WHERE {id_col} = ?1"
            ))?
            .execute(params![id, now_us])?;
        Ok(())
    }

    fn series_id(&mut self, key: SeriesKey, now_us: i64) -> rusqlite::Result<i64> {
        if let Some(entry) = self.caches.series.get_mut(&key) {
            if now_us - entry.1 >= TOUCH_EVERY_US {
                entry.1 = now_us;
                let id = entry.0;
                self.touch("series", "series_id", id, now_us)?;
                return Ok(id);
            }
            return Ok(entry.0);
        }
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT series_id FROM series
                 WHERE process_id IS ?1 AND remote_ip = ?2 AND port = ?3 AND proto = ?4
                   AND direction = ?5 AND remote_name IS ?6 AND verdict IS ?7 AND rule IS ?8",
            )?
            .query_row(
                params![
                    key.process_id,
                    key.remote_ip.to_string(),
                    key.port,
                    key.proto.to_string(),
                    direction_str(key.direction),
                    key.remote_name,
                    key.verdict,
                    key.rule,
                ],
                |r| r.get(0),
            )
            .optional()?;
        let id = match found {
            Some(id) => {
                self.touch("series", "series_id", id, now_us)?;
                id
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO series (process_id, remote_ip, port, proto, direction,
                            remote_name, verdict, rule, last_seen_us)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        key.process_id,
                        key.remote_ip.to_string(),
                        key.port,
                        key.proto.to_string(),
                        direction_str(key.direction),
                        key.remote_name,
                        key.verdict,
                        key.rule,
                        now_us
                    ])?;
                self.conn.last_insert_rowid()
            }
        };
        bound(&mut self.caches.series, ID_LIMIT);
        self.caches.series.insert(key, (id, now_us));
        Ok(id)
    }

    /// Names the remote of flow `flow_id` of the current run (a host name
    /// learned from a DNS answer). Traffic recorded from now on is sampled
    /// under that name. Returns false if the flow is not in the store.
    pub fn set_remote_name(&mut self, flow_id: &str, name: &str) -> Result<bool, StoreError> {
        let Some(run_id) = self.run_id else {
            return Ok(false);
        };
        let n = self.conn.execute(
            "UPDATE flows SET remote_name = ?3 WHERE run_id = ?1 AND flow_id = ?2",
            params![run_id, flow_id, name],
        )?;
        let mut waiting = false;
        if let Some(l) = self.caches.live.get_mut(flow_id) {
            l.remote_name = Some(name.to_string());
            waiting = l.waiting.is_some();
        }
        Ok(n > 0 || waiting)
    }

    /// Runs SQLite's own consistency check; `Ok(())` when it says "ok".
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let report: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if report == "ok" {
            Ok(())
        } else {
            Err(StoreError::NotProcflow {
                path: self.path.clone(),
                reason: format!("integrity check failed: {report}"),
            })
        }
    }

    /// Moves everything from the write-ahead log into the database file, so
    /// that its size can be measured or the file copied.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
