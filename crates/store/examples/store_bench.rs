//! Store benchmark: ingestion rate, report time and database size.
//!
//! Writes N synthetic flows (default 1,000,000) spread over 24 hours, the
//! way the daemon does (batches holding the opening records of new flows and
//! the closing records of earlier ones), then times reports over all of them
//! and measures the database file.
//!
//! ```text
//! cargo run --release -p procflow-store --example store_bench [-- --flows N --db PATH --spread]
//! cargo run --release -p procflow-store --example store_bench -- --db PATH --reports-only [--only NAME]
//! cargo run --release -p procflow-store --example store_bench -- --storm [--rate N --seconds S]
//! ```
//!
//! `--storm` feeds a connection storm instead, with simulated timestamps:
//! `--rate` new TCP connections a second (default 10,000) from
//! STORM_PROCESSES worker processes to STORM_REMOTES remotes on port 443,
//! each closed in the next batch (100 ms later) after a request and an
//! answer, plus one connection a second that lasts STORM_LONG_S seconds,
//! for `--seconds` of simulated time (default 600), in batches of 100 ms.
//! The database then holds the rows of the long flows, and for the short
//! ones only the samples of their series: its size depends on the series,
//! the buckets and the long flows, not on the number of short flows.
//!
//! The database at `--db` is left as the reports saw it (the retention pass
//! runs on a copy), so `--reports-only` can time reports on it again.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use procflow_core::flow::{Counters, Direction, FlowRecord, FlowState, Origin, Proto};
use procflow_core::timefmt::rfc3339;
use procflow_core::ProcessIdentity;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::Store;

/// CPU time this thread has used, from /proc/self/schedstat (first field,
/// nanoseconds on the CPU). Unlike wall time it does not depend on what else
/// the machine is doing.
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(f64::NAN, |ns| ns as f64 / 1e9)
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Log-uniform in `0..n` (density about 1/x, like Zipf's law): a few
    /// values get most draws.
    fn skewed(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (((n as f64 + 1.0).powf(u) - 1.0) as u64).min(n - 1)
    }
}

const EXES: u64 = 200;
const PROCESSES: u64 = 2_000;
const REMOTES: u64 = 20_000;
const REMOTES_PER_PROCESS: u64 = 200;
const PORTS: [u16; 6] = [443, 80, 53, 22, 993, 8443];
const FLOWS_PER_BATCH: usize = 500;
const LONG_LIVED_EVERY: u64 = 20;
const LONG_LIVED_STEPS: u64 = 20;
const DAY: i64 = 86_400;
const END_S: i64 = 1_795_000_000;

fn flow(i: u64, rng: &mut Rng, start_s: i64, spread: bool) -> FlowRecord {
    // Usually a few busy processes make most flows, each mostly to a few of
    // its own remotes (up to REMOTES_PER_PROCESS of them); with `spread`,
    // flows are spread evenly over processes and remotes, so that nearly
    // every flow is a series of its own (the worst case for reports).
    let (p, r) = if spread {
        (rng.below(PROCESSES), rng.below(REMOTES) as u32)
    } else {
        let p = rng.skewed(PROCESSES);
        let k = rng.skewed(REMOTES_PER_PROCESS);
        (p, ((p * 7_919 + k * 104_729) % REMOTES) as u32)
    };
    let exe = p % EXES;
    // A remote serves one service, and a process mostly either connects or
    // accepts; with `spread` they are drawn for each flow.
    let (port, direction) = if spread {
        (
            PORTS[rng.below(PORTS.len() as u64) as usize],
            if rng.below(10) == 0 {
                Direction::In
            } else {
                Direction::Out
            },
        )
    } else {
        let pick = (u64::from(r) * 2_654_435_761) >> 7;
        (
            PORTS[((pick % 100) as usize * PORTS.len() / 100).min(PORTS.len() - 1)],
            if p % 10 == 3 {
                Direction::In
            } else {
                Direction::Out
            },
        )
    };
    FlowRecord {
        kind: "flow",
        flow_id: i.to_string(),
        state: FlowState::Open,
        proto: if port == 53 { Proto::Udp } else { Proto::Tcp },
        family: 4,
        direction,
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        local_port: if direction == Direction::In {
            port
        } else {
            30_000 + (i % 30_000) as u16
        },
        remote_ip: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + 0x0001_0000 + r)),
        remote_port: if direction == Direction::In {
            30_000 + (i % 30_000) as u16
        } else {
            port
        },
        remote_name: None,
        process: Some(ProcessIdentity {
            pid: 1_000 + p as u32,
            ppid: 1,
            uid: (p % 5) as u32 * 1_000,
            user: Some(format!("user{}", p % 5)),
            comm: format!("prog{exe}"),
            exe: Some(format!("/usr/bin/prog{exe}")),
            cmdline: Some(format!("/usr/bin/prog{exe} --worker {p}")),
            cgroup: Some(format!("/system.slice/prog{exe}.service")),
            exe_unknown: None,
        }),
        netns: 4_026_531_840,
        start: rfc3339(start_s as u64 * 1_000_000_000),
        end: None,
        counters: Counters::default(),
        before_start: None,
        origin: Origin::Connect,
        link: None,
        verdict: None,
        rule: None,
    }
}

const STORM_PROCESSES: u64 = 4;
const STORM_REMOTES: u64 = 10;
/// How long the one long connection a second of a storm lasts.
const STORM_LONG_S: u64 = 30;
/// Batches of a storm per simulated second.
const STORM_BATCHES_PER_S: u64 = 10;

/// A connection of the storm: flow `i`, opened at `start_ns`.
fn storm_flow(i: u64, start_ns: u64) -> FlowRecord {
    let p = i % STORM_PROCESSES;
    let r = (i / STORM_PROCESSES) % STORM_REMOTES;
    FlowRecord {
        kind: "flow",
        flow_id: i.to_string(),
        state: FlowState::Open,
        proto: Proto::Tcp,
        family: 4,
        direction: Direction::Out,
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        local_port: 20_000 + (i % 40_000) as u16,
        remote_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10 + r as u8)),
        remote_port: 443,
        remote_name: None,
        process: Some(ProcessIdentity {
            pid: 2_000 + p as u32,
            ppid: 1,
            uid: 33,
            user: Some("www-data".into()),
            comm: "proxy".into(),
            exe: Some("/usr/sbin/proxy".into()),
            cmdline: Some(format!("/usr/sbin/proxy --worker {p}")),
            cgroup: Some("/system.slice/proxy.service".into()),
            exe_unknown: None,
        }),
        netns: 4_026_531_840,
        start: rfc3339(start_ns),
        end: None,
        counters: Counters::default(),
        before_start: None,
        origin: Origin::Connect,
        link: None,
        verdict: None,
        rule: None,
    }
}

/// What a storm fed in.
#[derive(Default)]
struct Fed {
    flows: u64,
    records: u64,
    bytes: u64,
    packets: u64,
}

/// Feeds a storm of `rate` connections a second for `seconds` simulated
/// seconds ending at END_S; see the module header.
fn storm(db: &std::path::Path, rate: u64, seconds: u64) {
    let _ = std::fs::remove_file(db);
    let mut store = Store::open(db).expect("open the store");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per_batch = rate / STORM_BATCHES_PER_S;
    let step_ns = 1_000_000_000 / STORM_BATCHES_PER_S;
    let start_ns = (END_S as u64 - seconds) * 1_000_000_000;
    let batches = seconds * STORM_BATCHES_PER_S;
    let mut fed = Fed::default();
    let mut short: Vec<FlowRecord> = Vec::new();
    let mut long: Vec<(FlowRecord, u64)> = Vec::new();
    let mut next_id = 0u64;
    let t0 = Instant::now();
    let c0 = cpu_s();
    let mut b = 0u64;
    let mut batch = Vec::new();
    let (mut in_store, mut in_store_cpu) = (0.0, 0.0);
    while b < batches || !short.is_empty() || !long.is_empty() {
        let now_ns = start_ns + b * step_ns;
        batch.clear();
        for mut f in short.drain(..) {
            f.state = FlowState::Closed;
            f.end = Some(rfc3339(now_ns - rng.below(step_ns)));
            let c = &mut f.counters;
            c.tx_bytes = 300 + rng.below(500);
            c.rx_bytes = 1_000 + rng.below(20_000);
            c.tx_packets = 5 + rng.below(3);
            c.rx_packets = 5 + c.rx_bytes / 1_448;
            fed.bytes += c.tx_bytes + c.rx_bytes;
            fed.packets += c.tx_packets + c.rx_packets;
            batch.push(f);
        }
        // The long connections report every second.
        if b.is_multiple_of(STORM_BATCHES_PER_S) {
            for (f, left) in long.iter_mut() {
                let c = &mut f.counters;
                let (tx, rx) = (1_000 + rng.below(1_000), 50_000 + rng.below(50_000));
                let (txp, rxp) = (2 + rng.below(2), rx / 1_448 + 1);
                c.tx_bytes += tx;
                c.rx_bytes += rx;
                c.tx_packets += txp;
                c.rx_packets += rxp;
                fed.bytes += tx + rx;
                fed.packets += txp + rxp;
                *left -= 1;
                if *left == 0 {
                    f.state = FlowState::Closed;
                    f.end = Some(rfc3339(now_ns));
                }
                batch.push(f.clone());
            }
            long.retain(|(_, left)| *left > 0);
        }
        if b < batches {
            for k in 0..per_batch {
                let f = storm_flow(next_id, now_ns + k * step_ns / per_batch.max(1) / 2);
                next_id += 1;
                if b.is_multiple_of(STORM_BATCHES_PER_S) && k == 0 {
                    long.push((f.clone(), STORM_LONG_S));
                } else {
                    short.push(f.clone());
                }
                batch.push(f);
            }
        }
        fed.records += batch.len() as u64;
        let (t, c) = (Instant::now(), cpu_s());
        store.write(&batch, now_ns).expect("write a batch");
        in_store += t.elapsed().as_secs_f64();
        in_store_cpu += cpu_s() - c;
        b += 1;
    }
    fed.flows = next_id;
    let all = t0.elapsed().as_secs_f64();
    let all_cpu = cpu_s() - c0;
    println!("feeding took {all:.2} s wall, {all_cpu:.2} s CPU, of which in Store::write:");
    let (ingest, ingest_cpu) = (in_store, in_store_cpu);
    let st = store.stats();
    store.checkpoint().expect("checkpoint");
    let size = std::fs::metadata(db).expect("database size").len();
    drop(store);
    println!(
        "procflow-store storm: {} connections a second to {STORM_REMOTES} remotes from {STORM_PROCESSES} processes for {seconds} s (simulated): {} flows, {} records in batches of 100 ms",
        rate, fed.flows, fed.records
    );
    println!(
        "ingestion: {ingest:.2} s wall, {ingest_cpu:.2} s CPU; {:.0} flows/s ({:.0} per CPU second), {:.0} records/s",
        fed.flows as f64 / ingest,
        fed.flows as f64 / ingest_cpu,
        fed.records as f64 / ingest
    );
    println!(
        "flows kept {} (with a row), folded {}",
        st.flows_kept, st.flows_folded
    );
    println!(
        "database: {:.2} MiB ({size} bytes), {:.1} bytes per simulated second; a day at this rate: {:.1} MiB",
        size as f64 / 1_048_576.0,
        size as f64 / seconds as f64,
        size as f64 / seconds as f64 * DAY as f64 / 1_048_576.0
    );
    table_rows(db);
    let first = END_S - seconds as i64;
    let window = Window {
        // From the hour of the first sample.
        since: first - first.rem_euclid(3_600),
        until: END_S + STORM_LONG_S as i64 + 10,
        now: END_S + STORM_LONG_S as i64 + 60,
    };
    reports(db, Some(&fed), None, &window);
}

/// Rows per table.
fn table_rows(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).expect("open");
    for t in [
        "flows",
        "series",
        "samples",
        "hourly",
        "processes",
        "executables",
    ] {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        println!("  {t}: {n} rows");
    }
}

/// The window of the reports, and the time they are run at.
struct Window {
    since: i64,
    until: i64,
    now: i64,
}

fn main() {
    let mut flows: u64 = 1_000_000;
    let mut storm_mode = false;
    let mut rate: u64 = 10_000;
    let mut seconds: u64 = 600;
    let mut db: Option<PathBuf> = None;
    let mut reports_only = false;
    let mut only: Option<String> = None;
    let mut spread = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--flows" => flows = args.next().and_then(|v| v.parse().ok()).expect("--flows N"),
            "--db" => db = args.next().map(PathBuf::from),
            // Time the reports on the database of an earlier run with --db.
            "--reports-only" => reports_only = true,
            // Time only the reports whose name contains this text.
            "--only" => only = args.next(),
            "--spread" => spread = true,
            "--storm" => storm_mode = true,
            "--rate" => rate = args.next().and_then(|v| v.parse().ok()).expect("--rate N"),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds S")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = db.unwrap_or_else(|| dir.path().join("bench.db"));
    if storm_mode {
        storm(&db, rate, seconds);
        return;
    }
    let day = Window {
        since: END_S - DAY,
        until: END_S + DAY,
        now: END_S + 60,
    };
    if reports_only {
        // The final counters of the flow rows add up to the bytes fed in.
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("--reports-only needs the --db PATH of an earlier run");
        let wire: i64 = c
            .query_row("SELECT sum(tx_bytes + rx_bytes) FROM flows", [], |r| {
                r.get(0)
            })
            .expect("sum of the flows");
        drop(c);
        let fed = Fed {
            bytes: wire as u64,
            ..Default::default()
        };
        reports(&db, Some(&fed), only.as_deref(), &day);
        return;
    }
    let _ = std::fs::remove_file(&db);
    let mut store = Store::open(&db).expect("open the store");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Each step writes one batch: the opening records of this step's new
    // flows (no traffic yet: they were just connected), the records of the
    // long-lived flows still open (one in LONG_LIVED_EVERY flows lives for
    // LONG_LIVED_STEPS steps, with traffic in each), and the closing records
    // of the short flows of the previous step (all their traffic).
    let batches = flows.div_ceil(FLOWS_PER_BATCH as u64);
    let step_ns = (DAY as u64 * 1_000_000_000) / batches.max(1);
    let start_ns = (END_S - DAY) as u64 * 1_000_000_000;
    let mut short: Vec<FlowRecord> = Vec::new();
    let mut long: Vec<(FlowRecord, u64)> = Vec::new();
    let mut records = 0u64;
    let mut wire_bytes = 0u64;
    let t0 = Instant::now();
    let c0 = cpu_s();
    let mut b = 0u64;
    let (mut in_store, mut in_store_cpu) = (0.0, 0.0);
    while b < batches || !short.is_empty() || !long.is_empty() {
        let now_ns = start_ns + b * step_ns;
        let now_s = (now_ns / 1_000_000_000) as i64;
        let mut batch = Vec::with_capacity(2 * FLOWS_PER_BATCH);
        for mut f in short.drain(..) {
            f.state = FlowState::Closed;
            f.end = Some(rfc3339(now_ns));
            f.counters.tx_bytes = 200 + rng.below(2_000);
            f.counters.rx_bytes = 500 + rng.skewed(200_000);
            wire_bytes += f.counters.tx_bytes + f.counters.rx_bytes;
            batch.push(f);
        }
        for (f, left) in long.iter_mut() {
            let (tx, rx) = (1_000 + rng.below(10_000), 10_000 + rng.skewed(1_000_000));
            f.counters.tx_bytes += tx;
            f.counters.rx_bytes += rx;
            wire_bytes += tx + rx;
            *left -= 1;
            if *left == 0 {
                f.state = FlowState::Closed;
                f.end = Some(rfc3339(now_ns));
            }
            batch.push(f.clone());
        }
        long.retain(|(_, left)| *left > 0);
        if b < batches {
            let first = b * FLOWS_PER_BATCH as u64;
            for i in first..(first + FLOWS_PER_BATCH as u64).min(flows) {
                let f = flow(i, &mut rng, now_s, spread);
                if i % LONG_LIVED_EVERY == 0 {
                    long.push((f.clone(), LONG_LIVED_STEPS));
                } else {
                    short.push(f.clone());
                }
                batch.push(f);
            }
        }
        records += batch.len() as u64;
        let (t, c) = (Instant::now(), cpu_s());
        store.write(&batch, now_ns).expect("write a batch");
        in_store += t.elapsed().as_secs_f64();
        in_store_cpu += cpu_s() - c;
        b += 1;
    }
    let all = t0.elapsed().as_secs_f64();
    let all_cpu = cpu_s() - c0;
    println!("feeding took {all:.2} s wall, {all_cpu:.2} s CPU, of which in Store::write:");
    let (ingest, ingest_cpu) = (in_store, in_store_cpu);
    let st = store.stats();
    store.checkpoint().expect("checkpoint");
    let size = std::fs::metadata(&db).expect("database size").len();
    drop(store);

    println!(
        "procflow-store benchmark: {flows} flows over 24 h ({}), {records} records in batches of about {}",
        if spread { "spread evenly over processes and remotes" } else { "skewed to busy processes and remotes" },
        records / batches.max(1)
    );
    println!(
        "ingestion: {ingest:.2} s wall, {ingest_cpu:.2} s CPU; {:.0} flows/s ({:.0} per CPU second), {:.0} records/s",
        flows as f64 / ingest,
        flows as f64 / ingest_cpu,
        records as f64 / ingest
    );
    println!(
        "database: {:.1} MiB, {:.0} bytes per flow, {:.0} MiB per million flows",
        size as f64 / 1_048_576.0,
        size as f64 / flows as f64,
        size as f64 / flows as f64 * 1e6 / 1_048_576.0
    );
    println!(
        "flows kept {} (with a row), folded {}",
        st.flows_kept, st.flows_folded
    );
    table_rows(&db);
    let fed = Fed {
        flows,
        bytes: wire_bytes,
        ..Default::default()
    };
    reports(&db, Some(&fed), only.as_deref(), &day);

    // Three days later the 10-second samples of these flows have aged out;
    // what is left per flow is its row, its series and the hourly totals.
    // Measured on a copy, so that the database stays as the reports saw it.
    let aged = dir.path().join("aged.db");
    std::fs::copy(&db, &aged).expect("copy the database");
    let db = aged;
    let mut store = Store::open(&db).expect("open the store");
    let t = Instant::now();
    let summary = store
        .apply_retention(
            std::time::Duration::from_secs(30 * DAY as u64),
            (END_S + 3 * DAY) as u64 * 1_000_000_000,
        )
        .expect("retention");
    let took = t.elapsed().as_secs_f64();
    store.checkpoint().expect("checkpoint");
    drop(store);
    let c = rusqlite::Connection::open(&db).expect("open");
    let used: i64 = c
        .query_row(
            "SELECT (page_count - freelist_count) * page_size
             FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "after two days (retention pass {took:.2} s, {} samples deleted): {:.1} MiB used, {:.0} bytes per flow, {:.0} MiB per million flows",
        summary.samples_deleted,
        used as f64 / 1_048_576.0,
        used as f64 / flows as f64,
        used as f64 / flows as f64 * 1e6 / 1_048_576.0
    );
}

/// Times reports over the whole database (those whose name contains
/// `only`, when given); checks the totals of the JSON ones when known.
fn reports(db: &std::path::Path, fed: Option<&Fed>, only: Option<&str>, w: &Window) {
    struct Case {
        name: &'static str,
        by: Vec<GroupBy>,
        timeline: bool,
        format: Format,
        top: Option<usize>,
    }
    let case = |name, by: &[GroupBy]| Case {
        name,
        by: by.to_vec(),
        timeline: false,
        format: Format::Json,
        top: None,
    };
    let (exe, remote) = (GroupBy::Exe, GroupBy::Remote);
    let cases = [
        case("by exe", &[exe]),
        case("by remote", &[remote]),
        case("by exe,remote", &[exe, remote]),
        Case {
            top: Some(20),
            ..case("by exe,remote --top 20", &[exe, remote])
        },
        Case {
            format: Format::Table,
            ..case("by exe,remote, table", &[exe, remote])
        },
        case("by port", &[GroupBy::Port]),
        Case {
            timeline: true,
            ..case("timeline 1h by exe", &[exe])
        },
    ];
    for Case {
        name,
        by,
        timeline,
        format,
        top,
    } in cases
    {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let args = ReportArgs {
            db: db.to_path_buf(),
            by,
            format,
            timeline,
            top,
            bucket: timeline.then(|| "1h".to_string()),
            // All of it: the last long-lived flows close after END_S.
            since: procflow_store::timespec::rfc3339_s(w.since),
            until: Some(procflow_store::timespec::rfc3339_s(w.until)),
            ..Default::default()
        };
        let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
        let mut out = Vec::new();
        for _ in 0..3 {
            out.clear();
            let (t, c) = (Instant::now(), cpu_s());
            run_report_at(&args, w.now, &mut out).expect("report");
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_s() - c);
        }
        let rows = if format == Format::Json {
            let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let total = &doc["total"];
            if let Some(f) = fed {
                let n = |k: &str| total[k].as_u64().unwrap_or(0);
                assert_eq!(
                    n("total_bytes"),
                    f.bytes,
                    "report total equals the bytes fed in"
                );
                if f.packets > 0 {
                    assert_eq!(
                        n("tx_packets") + n("rx_packets"),
                        f.packets,
                        "packets fed in"
                    );
                }
                if f.flows > 0 {
                    assert_eq!(n("flows"), f.flows, "report counts every flow fed in");
                }
            }
            doc["rows"].as_array().unwrap().len()
        } else {
            // Caption, header, rows, total.
            out.split(|b| *b == b'\n').count().saturating_sub(4)
        };
        println!("report {name}: {best:.3} s wall, {best_cpu:.3} s CPU (best of 3), {rows} rows");
    }
}
