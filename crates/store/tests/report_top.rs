//! `--top N` over many series: the rows kept are exactly the N largest
//! groups (ties broken by key), and the "more" line and the total account
//! for everything else, to the byte, in every format and in timelines.

mod common;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use common::{ns, NOW_S};
use procflow_core::flow::{Counters, Direction, FlowRecord, FlowState, Origin, Proto};
use procflow_core::timefmt::rfc3339;
use procflow_core::ProcessIdentity;
use procflow_store::report::output::human_bytes;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::services::service_name;
use procflow_store::Store;
use serde_json::{json, Value};

/// One flow and the key cells it has for each grouping this test uses.
struct Flow {
    record: FlowRecord,
    exe: String,
    remote: String,
    port: u16,
    /// Start of its 1-hour bucket (its traffic is counted at its end).
    hour: i64,
    tx: u64,
    rx: u64,
}

const EXES: u64 = 37;
const REMOTES: u64 = 401;
const PORTS: [u16; 4] = [443, 80, 22, 8443];
/// Remotes that all get the same, largest traffic: ties at the top.
const TIED: u64 = 6;

fn flows() -> Vec<Flow> {
    let mut out = Vec::new();
    let base = NOW_S - 7 * 3_600;
    let mut flow = |i: u64, exe: u64, remote: Ipv4Addr, port: u16, tx: u64, rx: u64| {
        let start = base + (i % 360) as i64 * 60;
        let end = start + 50;
        let record = FlowRecord {
            kind: "flow",
            flow_id: i.to_string(),
            state: FlowState::Open,
            proto: Proto::Tcp,
            family: 4,
            direction: Direction::Out,
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)),
            local_port: 40_000 + (i % 20_000) as u16,
            remote_ip: IpAddr::V4(remote),
            remote_port: port,
            remote_name: None,
            process: Some(ProcessIdentity {
                pid: 100 + (i % 97) as u32,
                ppid: 1,
                uid: 1000,
                user: Some("alice".into()),
                comm: format!("prog{exe}"),
                exe: Some(format!("/usr/bin/prog{exe}")),
                cmdline: None,
                cgroup: None,
                exe_unknown: None,
            }),
            netns: 4026531840,
            start: rfc3339(ns(start)),
            end: None,
            counters: Counters::default(),
            before_start: None,
            origin: Origin::Connect,
            link: None,
            verdict: None,
            rule: None,
        };
        out.push(Flow {
            record,
            exe: format!("/usr/bin/prog{exe}"),
            remote: remote.to_string(),
            port,
            hour: end - end.rem_euclid(3_600),
            tx,
            rx,
        });
    };
    for i in 0..3_000u64 {
        let r = (i * 7) % REMOTES;
        flow(
            i,
            (i * 13) % EXES,
            Ipv4Addr::new(10, 1, (r / 200) as u8, (r % 200) as u8 + 1),
            PORTS[(i % 4) as usize],
            100 + (i * 7_919) % 5_000,
            1_000 + (i * 104_729) % 90_000,
        );
    }
    // Tied remotes, each with more traffic than any other remote.
    for t in 0..TIED {
        flow(
            10_000 + t,
            t,
            Ipv4Addr::new(10, 200, 0, 1 + t as u8),
            443,
            500_000,
            5_000_000,
        );
    }
    out
}

/// Writes every flow: its opening record at its start, its closing record
/// (all its traffic, ending 50 s after its start) a minute after its start.
fn feed(store: &mut Store, flows: &[Flow]) {
    let mut by_time: HashMap<i64, Vec<FlowRecord>> = HashMap::new();
    for f in flows {
        let start = procflow_store::timespec::parse_time(&f.record.start, NOW_S).unwrap();
        by_time.entry(start).or_default().push(f.record.clone());
        let mut closed = f.record.clone();
        closed.state = FlowState::Closed;
        closed.end = Some(rfc3339(ns(start + 50)));
        closed.counters = Counters {
            tx_bytes: f.tx,
            rx_bytes: f.rx,
            tx_packets: 1,
            rx_packets: 1,
            tx_payload: f.tx,
            rx_payload: f.rx,
        };
        by_time.entry(start + 60).or_default().push(closed);
    }
    let mut times: Vec<i64> = by_time.keys().copied().collect();
    times.sort_unstable();
    for t in times {
        store.write(&by_time[&t], ns(t)).unwrap();
    }
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Vec<Flow>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    (dir, db, flows)
}

/// The key of a flow as the JSON report writes it.
fn key(f: &Flow, by: &[GroupBy]) -> Vec<Value> {
    let mut k = Vec::new();
    for g in by {
        match g {
            GroupBy::Exe => {
                k.push(json!(f.exe));
                k.push(Value::Null); // exe_unknown
            }
            GroupBy::Remote => k.push(json!(f.remote)),
            GroupBy::Port => {
                k.push(json!(f.port));
                k.push(json!(service_name(f.port)));
            }
            other => unreachable!("{other:?}"),
        }
    }
    k
}

/// Orders keys as the report does: missing values, then numbers, then text.
fn key_order(a: &[Value], b: &[Value]) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => (0, 0, String::new()),
        Value::Number(n) => (1, n.as_i64().unwrap(), String::new()),
        Value::String(s) => (2, 0, s.clone()),
        other => panic!("unexpected key cell {other}"),
    };
    a.iter().map(rank).cmp(b.iter().map(rank))
}

/// The groups of `flows` that pass `keep`, largest first, ties by key.
fn ranked(
    flows: &[Flow],
    by: &[GroupBy],
    keep: impl Fn(&Flow) -> bool,
) -> Vec<(Vec<Value>, u64, u64)> {
    let mut m: HashMap<Vec<Value>, (u64, u64)> = HashMap::new();
    for f in flows.iter().filter(|f| keep(f)) {
        let e = m.entry(key(f, by)).or_default();
        e.0 += f.tx;
        e.1 += f.rx;
    }
    let mut v: Vec<(Vec<Value>, u64, u64)> = m.into_iter().map(|(k, t)| (k, t.0, t.1)).collect();
    v.sort_by(|a, b| {
        (b.1 + b.2)
            .cmp(&(a.1 + a.2))
            .then_with(|| key_order(&a.0, &b.0))
    });
    v
}

fn columns(by: &[GroupBy]) -> Vec<&'static str> {
    by.iter()
        .flat_map(|g| g.columns().iter().copied())
        .collect()
}

fn report(db: &Path, tweak: impl FnOnce(&mut ReportArgs)) -> String {
    let mut args = ReportArgs {
        db: db.to_path_buf(),
        ..Default::default()
    };
    tweak(&mut args);
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Splits an aligned table line into cells (separated by two spaces or more).
fn table_cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// Checks the JSON, CSV and table reports of `by` with `--top n` against
/// the groups of the flows that pass `keep`.
fn check_top(
    db: &Path,
    flows: &[Flow],
    by: &[GroupBy],
    n: usize,
    filter: impl Fn(&mut ReportArgs) + Copy,
    keep: impl Fn(&Flow) -> bool,
) {
    let want = ranked(flows, by, keep);
    assert!(
        want.len() > n,
        "by {by:?}: the test needs more groups than {n}"
    );
    let (shown, rest) = want.split_at(n);
    let all = want.iter().fold((0, 0), |a, g| (a.0 + g.1, a.1 + g.2));
    let more = rest.iter().fold((0, 0), |a, g| (a.0 + g.1, a.1 + g.2));
    let cols = columns(by);
    let args = |format: Format| {
        move |a: &mut ReportArgs| {
            a.by = by.to_vec();
            a.top = Some(n);
            a.format = format;
            filter(a);
        }
    };

    let doc: Value = serde_json::from_str(&report(db, args(Format::Json))).unwrap();
    let rows: Vec<(Vec<Value>, u64, u64)> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                cols.iter().map(|c| r[*c].clone()).collect(),
                r["tx_bytes"].as_u64().unwrap(),
                r["rx_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, shown, "json by {by:?} top {n}");
    assert_eq!(doc["total"]["tx_bytes"], json!(all.0));
    assert_eq!(doc["total"]["rx_bytes"], json!(all.1));

    let csv = report(db, args(Format::Csv));
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), n, "csv by {by:?}");
    for (line, (key, tx, rx)) in lines.iter().zip(shown) {
        let mut want: Vec<String> = key
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            })
            .collect();
        want.extend([tx, rx, &(tx + rx)].map(u64::to_string));
        // Then packets, flows and folded flows.
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), want.len() + 4, "csv by {by:?}");
        assert_eq!(cells[..want.len()], want, "csv by {by:?}");
    }

    let table = report(db, args(Format::Table));
    let lines: Vec<&str> = table.lines().collect();
    // Caption, header, n rows, the "more" line, the total.
    assert_eq!(lines.len(), n + 4, "table by {by:?}:\n{table}");
    for (line, (_, tx, rx)) in lines[2..2 + n].iter().zip(shown) {
        let cells = table_cells(line);
        assert_eq!(
            cells[cells.len() - 3..],
            [*tx, *rx, tx + rx].map(human_bytes),
            "table by {by:?}: {line}"
        );
    }
    let mut want = vec![format!("({} more)", rest.len())];
    want.extend([more.0, more.1, more.0 + more.1].map(human_bytes));
    assert_eq!(table_cells(lines[n + 2]), want, "table by {by:?}:\n{table}");
    let mut want = vec!["TOTAL".to_string()];
    want.extend([all.0, all.1, all.0 + all.1].map(human_bytes));
    assert_eq!(table_cells(lines[n + 3]), want, "table by {by:?}:\n{table}");
}

#[test]
fn top_keeps_the_largest_groups_and_accounts_for_the_rest_exactly() {
    let (_dir, db, flows) = setup();
    let everything = |_: &Flow| true;
    let nothing = |_: &mut ReportArgs| {};
    // The tied remotes fill the first places; the cut falls among them.
    check_top(&db, &flows, &[GroupBy::Remote], 4, nothing, everything);
    check_top(&db, &flows, &[GroupBy::Remote], 25, nothing, everything);
    check_top(&db, &flows, &[GroupBy::Exe], 10, nothing, everything);
    check_top(&db, &flows, &[GroupBy::Port], 2, nothing, everything);
    check_top(
        &db,
        &flows,
        &[GroupBy::Exe, GroupBy::Remote],
        50,
        nothing,
        everything,
    );
    check_top(
        &db,
        &flows,
        &[GroupBy::Remote, GroupBy::Port],
        1,
        nothing,
        everything,
    );
    // Filters apply before the cut.
    check_top(
        &db,
        &flows,
        &[GroupBy::Exe],
        5,
        |a| a.port = Some("22".into()),
        |f| f.port == 22,
    );
    check_top(
        &db,
        &flows,
        &[GroupBy::Remote],
        7,
        |a| a.exe = Some("prog3".into()),
        |f| f.exe == "/usr/bin/prog3",
    );
}

#[test]
fn top_zero_and_top_beyond_the_groups() {
    let (_dir, db, flows) = setup();
    let want = ranked(&flows, &[GroupBy::Exe], |_| true);
    let all: u64 = want.iter().map(|g| g.1 + g.2).sum();
    let table = report(&db, |a| a.top = Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert_eq!(
        table_cells(lines[2])[0],
        format!("({} more)", want.len()),
        "{table}"
    );
    // As many groups as there are, or more: no "more" line.
    for n in [want.len(), want.len() + 1] {
        let doc: Value = serde_json::from_str(&report(&db, |a| {
            a.top = Some(n);
            a.format = Format::Json;
        }))
        .unwrap();
        assert_eq!(doc["rows"].as_array().unwrap().len(), want.len());
        assert_eq!(doc["total"]["total_bytes"], json!(all));
        let table = report(&db, |a| a.top = Some(n));
        assert!(!table.contains("more)"), "{table}");
    }
}

#[test]
fn a_timeline_with_top_keeps_every_bucket_of_the_largest_groups() {
    let (_dir, db, flows) = setup();
    let by = [GroupBy::Remote];
    let n = 9;
    let want = ranked(&flows, &by, |_| true);
    let top: Vec<&str> = want[..n].iter().map(|g| g.0[0].as_str().unwrap()).collect();
    let mut per_bucket: HashMap<(i64, &str), (u64, u64)> = HashMap::new();
    for f in flows.iter().filter(|f| top.contains(&f.remote.as_str())) {
        let e = per_bucket.entry((f.hour, f.remote.as_str())).or_default();
        e.0 += f.tx;
        e.1 += f.rx;
    }
    let doc: Value = serde_json::from_str(&report(&db, |a| {
        a.by = by.to_vec();
        a.top = Some(n);
        a.timeline = true;
        a.bucket = Some("1h".into());
        a.format = Format::Json;
    }))
    .unwrap();
    let mut got: HashMap<(i64, &str), (u64, u64)> = HashMap::new();
    let mut last = (i64::MIN, u64::MAX);
    for r in doc["rows"].as_array().unwrap() {
        let b = r["bucket_start"].as_i64().unwrap();
        let t = r["total_bytes"].as_u64().unwrap();
        // By time, then largest first.
        assert!(b > last.0 || (b == last.0 && t <= last.1), "order at {r}");
        last = (b, t);
        let k = (b, r["remote"].as_str().unwrap());
        let v = (
            r["tx_bytes"].as_u64().unwrap(),
            r["rx_bytes"].as_u64().unwrap(),
        );
        assert!(got.insert(k, v).is_none(), "duplicate row {r}");
    }
    assert_eq!(got, per_bucket);
    let all: u64 = want.iter().map(|g| g.1 + g.2).sum();
    assert_eq!(doc["total"]["total_bytes"], json!(all));

    // The table's "more" line holds every bucket of the other groups.
    let table = report(&db, |a| {
        a.by = by.to_vec();
        a.top = Some(n);
        a.timeline = true;
        a.bucket = Some("1h".into());
    });
    let more = want[n..].iter().fold((0, 0), |a, g| (a.0 + g.1, a.1 + g.2));
    let line = table.lines().rev().nth(1).unwrap();
    let mut expect = vec![format!("({} more)", want.len() - n)];
    expect.extend([more.0, more.1, more.0 + more.1].map(human_bytes));
    assert_eq!(table_cells(line), expect, "{table}");
}
