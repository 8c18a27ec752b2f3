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

use std::net::IpAddr;

use procflow_core::flow::{Direction, FlowRecord, FlowState, Origin, Proto, Verdict};
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

/// Counters of the writer, for the daemon's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub batches_written: u64,
    pub records_written: u64,
    pub batches_failed: u64,
    /// Records that could not be written (their batch failed).
    pub records_failed: u64,
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

/// What the writer remembers of a live flow.
#[derive(Debug, Clone, Default)]
struct LiveFlow {
    /// `flows.flow_row`
    row: i64,
    tx_bytes: u64,
    rx_bytes: u64,
    remote_name: Option<String>,
    /// The flow's verdict and deciding rule, once known.
    verdict: Option<Verdict>,
    rule: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Caches {
    exes: HashMap<String, i64>,
    /// Fingerprint -> (identity, row id, when last_seen_us was written).
    processes: HashMap<u64, Vec<(ProcessIdentity, i64, i64)>>,
    /// Key -> (row id, when last_seen_us was written).
    series: HashMap<SeriesKey, (i64, i64)>,
    live: HashMap<String, LiveFlow>,
}

impl Caches {
    fn clear(&mut self) {
        self.clear_ids();
        self.live.clear();
    }

    /// Forgets the row ids (after retention may have deleted rows).
    pub(crate) fn clear_ids(&mut self) {
        self.exes.clear();
        self.processes.clear();
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
        })
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
        self.run_id = Some(id);
        self.caches.live.clear();
        Ok(id)
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
        self.run_id = Some(id);
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
        let result = self
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| write(self))
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        match result {
            Ok(()) => {
                self.stats.batches_written += 1;
                self.stats.records_written += records as u64;
                Ok(records)
            }
            Err(source) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // What the caches learned in the lost transaction is not in
                // the database: forget it all, the database is the truth.
                self.caches.clear();
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
        let mut samples: HashMap<(i64, i64), (u64, u64)> = HashMap::new();
        for r in records {
            self.write_record(run_id, r, now_us, &mut samples)?;
        }
        let mut hours: HashMap<(i64, i64), (u64, u64)> = HashMap::new();
        let mut up = self.conn.prepare_cached(
            "INSERT INTO samples (bucket, series_id, tx_bytes, rx_bytes)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (bucket, series_id) DO UPDATE SET
                tx_bytes = tx_bytes + excluded.tx_bytes,
                rx_bytes = rx_bytes + excluded.rx_bytes",
        )?;
        for ((bucket, series), (tx, rx)) in samples {
            up.execute(params![bucket, series, db_u64(tx), db_u64(rx)])?;
            let h = hours
                .entry((bucket_start(bucket, HOUR_SECONDS), series))
                .or_default();
            h.0 += tx;
            h.1 += rx;
        }
        let mut up = self.conn.prepare_cached(
            "INSERT INTO hourly (hour, series_id, tx_bytes, rx_bytes)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hour, series_id) DO UPDATE SET
                tx_bytes = tx_bytes + excluded.tx_bytes,
                rx_bytes = rx_bytes + excluded.rx_bytes",
        )?;
        for ((hour, series), (tx, rx)) in hours {
            up.execute(params![hour, series, db_u64(tx), db_u64(rx)])?;
        }
        Ok(())
    }

    fn write_record(
        &mut self,
        run_id: i64,
        r: &FlowRecord,
        now_us: i64,
        samples: &mut HashMap<(i64, i64), (u64, u64)>,
    ) -> rusqlite::Result<()> {
        let process_id = match &r.process {
            Some(p) => Some(self.process_id(run_id, p, now_us)?),
            None => None,
        };
        let prev = match self.caches.live.get(&r.flow_id) {
            Some(l) => Some(l.clone()),
            None => self
                .conn
                .prepare_cached(
                    "SELECT flow_row, tx_bytes, rx_bytes, remote_name, verdict, rule FROM flows
                     WHERE run_id = ?1 AND flow_id = ?2",
                )?
                .query_row(params![run_id, r.flow_id], |row| {
                    Ok(LiveFlow {
                        row: row.get(0)?,
                        tx_bytes: row.get::<_, i64>(1)?.max(0) as u64,
                        rx_bytes: row.get::<_, i64>(2)?.max(0) as u64,
                        remote_name: row.get(3)?,
                        verdict: parse_verdict(row.get(4)?),
                        rule: row.get(5)?,
                    })
                })
                .optional()?,
        };
        let start_us = timespec::parse_rfc3339_us(&r.start).unwrap_or(now_us);
        let end_us = r.end.as_deref().and_then(timespec::parse_rfc3339_us);
        let c = &r.counters;
        let state = match r.state {
            FlowState::Open => "open",
            FlowState::Closed => "closed",
        };
        let row = match &prev {
            // Known flow: update its row.
            Some(l) => {
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
                        state,
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
                l.row
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO flows (run_id, flow_id, process_id, state, proto, family,
                            direction, local_ip, local_port, remote_ip, remote_port, netns,
                            start_us, end_us, last_us, tx_bytes, rx_bytes, tx_packets,
                            rx_packets, tx_payload, rx_payload, before_tx_payload,
                            before_rx_payload, origin, verdict, rule)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                            ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
                    )?
                    .execute(params![
                        run_id,
                        r.flow_id,
                        process_id,
                        state,
                        r.proto.to_string(),
                        r.family,
                        direction_str(r.direction),
                        r.local_ip.to_string(),
                        r.local_port,
                        r.remote_ip.to_string(),
                        r.remote_port,
                        db_u64(r.netns),
                        start_us,
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
                        origin_str(r.origin),
                        r.verdict.map(verdict_str),
                        r.rule,
                    ])?;
                self.conn.last_insert_rowid()
            }
        };

        let mut prev = prev.unwrap_or_default();
        // A record without a verdict keeps the one the flow already has
        // (the row does the same with coalesce).
        if r.verdict.is_some() {
            prev.verdict = r.verdict;
            prev.rule = r.rule.clone();
        }
        if prev.remote_name.is_none() {
            if let Some(name) = &r.remote_name {
                self.conn
                    .prepare_cached("UPDATE flows SET remote_name = ?2 WHERE flow_row = ?1")?
                    .execute(params![row, name])?;
                prev.remote_name = Some(name.clone());
            }
        }
        let dtx = c.tx_bytes.saturating_sub(prev.tx_bytes);
        let drx = c.rx_bytes.saturating_sub(prev.rx_bytes);
        if dtx > 0 || drx > 0 {
            let key = SeriesKey {
                process_id,
                remote_ip: r.remote_ip,
                port: service_port(r),
                proto: r.proto,
                direction: r.direction,
                remote_name: prev.remote_name.clone(),
                verdict: prev.verdict.map(verdict_str),
                rule: prev.rule.clone(),
            };
            let series = self.series_id(key, now_us)?;
            // Traffic up to a close belongs to the close; the rest to now.
            let at_us = match (r.state, end_us) {
                (FlowState::Closed, Some(e)) => e,
                _ => now_us,
            };
            let bucket = bucket_start(at_us.div_euclid(1_000_000), SAMPLE_SECONDS);
            let s = samples.entry((bucket, series)).or_default();
            s.0 += dtx;
            s.1 += drx;
        }
        let live = &mut self.caches.live;
        match r.state {
            FlowState::Closed => {
                live.remove(&r.flow_id);
            }
            FlowState::Open => {
                bound(live, LIVE_LIMIT);
                live.insert(
                    r.flow_id.clone(),
                    LiveFlow {
                        row,
                        tx_bytes: c.tx_bytes.max(prev.tx_bytes),
                        rx_bytes: c.rx_bytes.max(prev.rx_bytes),
                        remote_name: prev.remote_name,
                        verdict: prev.verdict,
                        rule: prev.rule,
                    },
                );
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
        if let Some(l) = self.caches.live.get_mut(flow_id) {
            l.remote_name = Some(name.to_string());
        }
        Ok(n > 0)
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
