//! Report figures equal the sums of the synthetic flows fed in, for every
//! grouping and every output format.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{feed, ns, synthetic_flows, Synth, NOW_S, UNKNOWN_WHY};
use procflow_core::flow::{Direction, FlowState, Proto};
use procflow_store::report::output::human_bytes;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::Store;
use serde_json::{json, Value};

const ALL: [GroupBy; 10] = [
    GroupBy::Exe,
    GroupBy::Process,
    GroupBy::User,
    GroupBy::Cgroup,
    GroupBy::Remote,
    GroupBy::Host,
    GroupBy::Port,
    GroupBy::Proto,
    GroupBy::Direction,
    GroupBy::Rule,
];

fn service(port: u16) -> Value {
    match port {
        443 => json!("https"),
        53 => json!("domain"),
        22 => json!("ssh"),
        8080 => json!("http-alt"),
        _ => Value::Null,
    }
}

/// The key of a flow for one grouping, as the JSON report writes it.
fn truth_key(f: &Synth, g: GroupBy) -> Vec<Value> {
    let owned = !f.unowned;
    let opt = |v: Option<&str>| if owned { json!(v) } else { Value::Null };
    match g {
        // An owned flow without an executable says why.
        GroupBy::Exe => vec![
            opt(f.exe),
            if owned && f.exe.is_none() {
                json!(UNKNOWN_WHY)
            } else {
                Value::Null
            },
        ],
        GroupBy::Process if owned => vec![json!(f.pid), json!(f.comm)],
        GroupBy::Process => vec![Value::Null, Value::Null],
        GroupBy::User if owned => vec![json!(f.user.map_or(f.uid.to_string(), String::from))],
        GroupBy::User => vec![Value::Null],
        GroupBy::Cgroup => vec![opt(f.cgroup)],
        GroupBy::Remote => vec![json!(f.remote.0.to_string())],
        GroupBy::Host => vec![json!(f.name.map_or(f.remote.0.to_string(), String::from))],
        GroupBy::Port => vec![json!(f.service_port()), service(f.service_port())],
        GroupBy::Proto => vec![json!(match f.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            _ => unreachable!(),
        })],
        GroupBy::Direction => vec![json!(match f.direction {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Unknown => "unknown",
        })],
        // No rules decided the synthetic flows.
        GroupBy::Rule => vec![Value::Null, Value::Null],
    }
}

fn truth(flows: &[Synth], by: &[GroupBy]) -> HashMap<Vec<Value>, (u64, u64)> {
    let mut m: HashMap<Vec<Value>, (u64, u64)> = HashMap::new();
    for f in flows {
        let key: Vec<Value> = by.iter().flat_map(|g| truth_key(f, *g)).collect();
        let e = m.entry(key).or_default();
        e.0 += f.tx;
        e.1 += f.rx;
    }
    m
}

fn columns(by: &[GroupBy]) -> Vec<&'static str> {
    by.iter()
        .flat_map(|g| g.columns().iter().copied())
        .collect()
}

fn report(
    db: &Path,
    by: &[GroupBy],
    format: Format,
    tweak: impl FnOnce(&mut ReportArgs),
) -> String {
    let mut args = ReportArgs {
        db: db.to_path_buf(),
        by: by.to_vec(),
        format,
        ..Default::default()
    };
    tweak(&mut args);
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Vec<Synth>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let flows = synthetic_flows();
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &flows);
    (dir, db, flows)
}

fn groupings() -> Vec<Vec<GroupBy>> {
    let mut v: Vec<Vec<GroupBy>> = ALL.iter().map(|g| vec![*g]).collect();
    v.push(vec![GroupBy::Exe, GroupBy::Remote]);
    v.push(vec![GroupBy::User, GroupBy::Proto, GroupBy::Direction]);
    v.push(vec![GroupBy::Process, GroupBy::Port]);
    v.push(vec![GroupBy::Host, GroupBy::Cgroup]);
    v.push(ALL.to_vec());
    v
}

fn json_rows(doc: &Value, by: &[GroupBy]) -> HashMap<Vec<Value>, (u64, u64)> {
    let cols = columns(by);
    let mut m = HashMap::new();
    for r in doc["rows"].as_array().unwrap() {
        let key: Vec<Value> = cols.iter().map(|c| r[*c].clone()).collect();
        let (tx, rx) = (
            r["tx_bytes"].as_u64().unwrap(),
            r["rx_bytes"].as_u64().unwrap(),
        );
        assert_eq!(r["total_bytes"].as_u64().unwrap(), tx + rx);
        assert!(m.insert(key, (tx, rx)).is_none(), "duplicate group in {r}");
    }
    m
}

#[test]
fn json_totals_equal_the_synthetic_flows_for_every_grouping() {
    let (_dir, db, flows) = setup();
    let (all_tx, all_rx) = flows.iter().fold((0, 0), |a, f| (a.0 + f.tx, a.1 + f.rx));
    for by in groupings() {
        let doc: Value = serde_json::from_str(&report(&db, &by, Format::Json, |_| {})).unwrap();
        assert_eq!(json_rows(&doc, &by), truth(&flows, &by), "by {by:?}");
        assert_eq!(doc["total"]["tx_bytes"], json!(all_tx));
        assert_eq!(doc["total"]["rx_bytes"], json!(all_rx));
    }
}

/// Splits a CSV line (the test data has no quoted fields).
fn csv_cells(line: &str) -> Vec<String> {
    line.split(',').map(String::from).collect()
}

#[test]
fn csv_totals_equal_the_synthetic_flows_for_every_grouping() {
    let (_dir, db, flows) = setup();
    for by in groupings() {
        let text = report(&db, &by, Format::Csv, |_| {});
        let mut lines = text.lines();
        let mut header = columns(&by);
        header.extend([
            "tx_bytes",
            "rx_bytes",
            "total_bytes",
            "tx_packets",
            "rx_packets",
            "flows",
            "flows_folded",
        ]);
        assert_eq!(lines.next().unwrap(), header.join(","));
        let mut got = HashMap::new();
        let cols = columns(&by).len();
        for l in lines {
            let c = csv_cells(l);
            assert_eq!(c.len(), cols + 7, "{l}");
            let key: Vec<String> = c[..cols].to_vec();
            let n: Vec<u64> = c[cols..].iter().map(|v| v.parse().unwrap()).collect();
            assert_eq!(n[2], n[0] + n[1]);
            got.insert(key, (n[0], n[1]));
        }
        let want: HashMap<Vec<String>, (u64, u64)> = truth(&flows, &by)
            .into_iter()
            .map(|(k, v)| {
                let k = k
                    .into_iter()
                    .map(|c| match c {
                        Value::Null => String::new(),
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                (k, v)
            })
            .collect();
        assert_eq!(got, want, "by {by:?}");
    }
}

/// Splits an aligned table line into cells (cells are separated by at least
/// two spaces and never contain two).
fn table_cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// The table cell(s) of a JSON key.
fn table_key(by: &[GroupBy], key: &[Value]) -> Vec<String> {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        o => o.to_string(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    for g in by {
        match g {
            GroupBy::Process => {
                out.push(format!("{} [{}]", s(&key[i + 1]), s(&key[i])));
                i += 2;
            }
            GroupBy::Port => {
                out.push(match &key[i + 1] {
                    Value::String(n) => format!("{} ({n})", key[i]),
                    _ => key[i].to_string(),
                });
                i += 2;
            }
            GroupBy::Exe => {
                out.push(match (&key[i], &key[i + 1]) {
                    (Value::Null, Value::String(why)) => format!("(unknown: {why})"),
                    (exe, _) => s(exe),
                });
                i += 2;
            }
            GroupBy::Rule => {
                out.push(match (&key[i], &key[i + 1]) {
                    (Value::Null, Value::String(_)) => "(default)".to_string(),
                    (rule, _) => s(rule),
                });
                i += 2;
            }
            _ => {
                out.push(s(&key[i]));
                i += 1;
            }
        }
    }
    out
}

#[test]
fn table_totals_equal_the_synthetic_flows_for_every_grouping() {
    let (_dir, db, flows) = setup();
    let (all_tx, all_rx) = flows.iter().fold((0, 0), |a, f| (a.0 + f.tx, a.1 + f.rx));
    for by in groupings() {
        let text = report(&db, &by, Format::Table, |_| {});
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("traffic from "), "{}", lines[0]);
        let header = table_cells(lines[1]);
        let mut want_header: Vec<String> =
            by.iter().map(|g| format!("{g:?}").to_uppercase()).collect();
        want_header.extend(["SENT", "RECEIVED", "TOTAL"].map(String::from));
        assert_eq!(header, want_header);
        let body: Vec<Vec<String>> = lines[2..lines.len() - 1]
            .iter()
            .map(|l| table_cells(l))
            .collect();
        let truth = truth(&flows, &by);
        assert_eq!(body.len(), truth.len(), "by {by:?}");
        for (k, (tx, rx)) in &truth {
            let mut want = table_key(&by, k);
            want.extend([*tx, *rx, tx + rx].map(human_bytes));
            assert!(
                body.contains(&want),
                "by {by:?}: missing row {want:?} in\n{text}"
            );
        }
        let total = table_cells(lines[lines.len() - 1]);
        let mut want = vec!["TOTAL".to_string()];
        want.extend([all_tx, all_rx, all_tx + all_rx].map(human_bytes));
        assert_eq!(total, want);
    }
}

#[test]
fn rows_are_sorted_by_total_and_top_keeps_the_largest() {
    let (_dir, db, flows) = setup();
    let by = [GroupBy::Remote];
    let doc: Value =
        serde_json::from_str(&report(&db, &by, Format::Json, |a| a.top = Some(2))).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let mut t: Vec<(Vec<Value>, u64)> = truth(&flows, &by)
        .into_iter()
        .map(|(k, v)| (k, v.0 + v.1))
        .collect();
    t.sort_by_key(|b| std::cmp::Reverse(b.1));
    for (row, (key, total)) in rows.iter().zip(&t) {
        assert_eq!(row["remote"], key[0]);
        assert_eq!(row["total_bytes"], json!(total));
    }
    // The total still counts everything, and the table names what was left out.
    let all: u64 = flows.iter().map(|f| f.tx + f.rx).sum();
    assert_eq!(doc["total"]["total_bytes"], json!(all));
    let table = report(&db, &by, Format::Table, |a| a.top = Some(2));
    assert!(table.contains("(3 more)"), "{table}");
}

#[test]
fn filters_select_the_matching_flows() {
    let (_dir, db, flows) = setup();
    let sum = |pred: &dyn Fn(&Synth) -> bool| -> u64 {
        flows.iter().filter(|f| pred(f)).map(|f| f.tx + f.rx).sum()
    };
    let total = |tweak: &dyn Fn(&mut ReportArgs)| -> u64 {
        let doc: Value =
            serde_json::from_str(&report(&db, &[GroupBy::Exe], Format::Json, |a| tweak(a)))
                .unwrap();
        doc["total"]["total_bytes"].as_u64().unwrap()
    };
    let owned = |f: &Synth| !f.unowned;
    assert_eq!(
        total(&|a| a.exe = Some("curl".into())),
        sum(&|f| owned(f) && f.exe == Some("/usr/bin/curl"))
    );
    assert_eq!(
        total(&|a| a.exe = Some("/usr/sbin/sshd".into())),
        sum(&|f| owned(f) && f.exe == Some("/usr/sbin/sshd"))
    );
    assert_eq!(
        total(&|a| a.host = Some("example.com".into())),
        sum(&|f| f.name.is_some_and(|n| n.ends_with(".example.com")))
    );
    assert_eq!(
        total(&|a| a.remote = Some("192.0.2.0/24".into())),
        sum(&|f| f.remote.0.to_string().starts_with("192.0.2."))
    );
    assert_eq!(
        total(&|a| a.port = Some("https".into())),
        sum(&|f| f.service_port() == 443)
    );
    assert_eq!(
        total(&|a| a.port = Some("22".into())),
        sum(&|f| f.service_port() == 22)
    );
    assert_eq!(
        total(&|a| a.proto = Some("udp".into())),
        sum(&|f| f.proto == Proto::Udp)
    );
    assert_eq!(
        total(&|a| a.user = Some("alice".into())),
        sum(&|f| owned(f) && f.user == Some("alice"))
    );
    assert_eq!(
        total(&|a| a.user = Some("1234".into())),
        sum(&|f| owned(f) && f.uid == 1234)
    );
    assert_eq!(
        total(&|a| {
            a.exe = Some("firefox".into());
            a.proto = Some("tcp".into());
        }),
        sum(&|f| owned(f) && f.exe == Some("/usr/lib/firefox/firefox") && f.proto == Proto::Tcp)
    );
}

#[test]
fn the_window_splits_a_long_lived_flow_by_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut flows = synthetic_flows();
    let f = flows.remove(0);
    let mut store = Store::open(&db).unwrap();
    // 12 records, 10 minutes apart, each adding `i * 1000` bytes sent.
    let start = NOW_S - 4 * 3_600;
    let (mut tx, mut rx) = (0, 0);
    for i in 1..=12u64 {
        tx += i * 1_000;
        rx += 1;
        let t = start + i as i64 * 600;
        store
            .write(&[f.record(FlowState::Open, tx, rx, None)], ns(t))
            .unwrap();
    }
    let since = start + 6 * 600; // the 6th record's sample starts here
    let until = start + 10 * 600;
    let doc: Value = serde_json::from_str(&report(&db, &[GroupBy::Exe], Format::Json, |a| {
        a.since = procflow_store::timespec::rfc3339_s(since);
        a.until = Some(procflow_store::timespec::rfc3339_s(until));
    }))
    .unwrap();
    assert_eq!(
        doc["total"]["tx_bytes"],
        json!((6..10).map(|i| i * 1_000).sum::<u64>())
    );
    assert_eq!(doc["total"]["rx_bytes"], json!(4));
    // A window before the flow started is empty.
    let doc: Value = serde_json::from_str(&report(&db, &[GroupBy::Exe], Format::Json, |a| {
        a.since = "2d".into();
        a.until = Some(procflow_store::timespec::rfc3339_s(start));
    }))
    .unwrap();
    assert_eq!(doc["rows"], json!([]));
    assert_eq!(doc["total"]["total_bytes"], json!(0));
}

#[test]
#[ignore = "prints sample output for a person to read"]
fn print_sample_output() {
    let (_dir, db, _flows) = setup();
    for by in [
        vec![GroupBy::Exe],
        vec![GroupBy::Process, GroupBy::Port],
        vec![GroupBy::Host],
    ] {
        print!("{}", report(&db, &by, Format::Table, |_| {}));
    }
    print!(
        "{}",
        report(&db, &[GroupBy::Proto], Format::Table, |a| {
            a.timeline = true;
            a.bucket = Some("4h".into());
        })
    );
    print!("{}", report(&db, &[GroupBy::Exe], Format::Csv, |_| {}));
    print!(
        "{}",
        report(&db, &[GroupBy::Port], Format::Json, |a| a.top = Some(2))
    );
    let chart = std::env::var("CHART_OUT").unwrap_or_else(|_| "/tmp/procflow-chart.svg".into());
    print!(
        "{}",
        report(&db, &[GroupBy::Exe], Format::Table, |a| a.chart =
            Some(chart.into()))
    );
}
