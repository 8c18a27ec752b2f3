//! Text that any local user chooses (process names, command lines,
//! executable paths) in every report output: escaped on the terminal, never
//! a formula in CSV, intact in JSON, valid XML in a chart; and charts that
//! no planted link can redirect.

mod common;

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{feed, ns, Synth, NOW_S};
use procflow_core::flow::{Direction, Proto, Verdict};
use procflow_core::timefmt::rfc3339;
use procflow_core::{ProcessIdentity, VerdictRecord};
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::{Store, StoreError};
use rusqlite::Connection;
use serde_json::Value;

/// An executable path that clears the screen and starts a forged line.
const EVIL_EXE: &str = "/tmp/\x1b[2J\x1b[H\nTOTAL 0 B";
/// A comm that sets the terminal's title and rings its bell.
const EVIL_COMM: &str = "\x1b]0;pwn\x07";
/// A name that would be a formula in a spreadsheet.
const FORMULA_EXE: &str = "=HYPERLINK(\"http://x\",\"y\")";
/// A series name made to break an SVG.
const SVG_BREAKER: &str = "/tmp/\x1b[2J<script>&\"'";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn flow(i: u32, exe: &'static str, comm: &'static str, tx: u64, rx: u64) -> Synth {
    Synth {
        flow_id: format!("{}", 10 + i),
        exe: Some(exe),
        pid: 700 + i,
        comm,
        uid: 1000,
        user: Some("mallory"),
        cgroup: Some("/user.slice"),
        unowned: false,
        proto: Proto::Tcp,
        direction: Direction::Out,
        local: (ip("10.9.9.9"), 40_000 + i as u16),
        remote: (ip("192.0.2.10"), 443),
        name: None,
        tx,
        rx,
        start_s: NOW_S - 3_600 + i64::from(i) * 60,
    }
}

fn store_with(flows: &[Synth]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, flows);
    (dir, db)
}

fn report(db: &Path, format: Format, tweak: impl FnOnce(&mut ReportArgs)) -> String {
    let mut args = ReportArgs {
        db: db.to_path_buf(),
        since: "2h".into(),
        format,
        ..Default::default()
    };
    tweak(&mut args);
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn verdict(i: u32, exe: &str, comm: &str, cmdline: &str) -> VerdictRecord {
    VerdictRecord {
        kind: VerdictRecord::KIND,
        time: rfc3339(ns(NOW_S - 1_800 + i64::from(i) * 60)),
        verdict: Verdict::Block,
        rule: Some("no-tmp".into()),
        rule_index: Some(0),
        generation: 1,
        hook: "connect",
        proto: Proto::Tcp,
        family: 4,
        direction: Direction::Out,
        local_ip: ip("10.9.9.9"),
        local_port: 40_000,
        remote_ip: ip("192.0.2.10"),
        remote_port: 443,
        process: ProcessIdentity {
            pid: 800 + i,
            ppid: 1,
            uid: 1000,
            user: Some("mallory".into()),
            comm: comm.into(),
            exe: Some(exe.into()),
            cmdline: Some(cmdline.into()),
            cgroup: Some("/user.slice".into()),
            exe_unknown: None,
        },
        netns: 4026531840,
        socket: 77,
    }
}

fn store_with_verdicts(verdicts: &[VerdictRecord]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    store.start_run(ns(NOW_S - 7_000)).unwrap();
    store
        .write_enforcement(verdicts, &[], ns(NOW_S - 60))
        .unwrap();
    (dir, db)
}

/// No byte that a terminal acts on: only printable text and line ends.
fn assert_no_control_bytes(out: &str) {
    for (i, c) in out.char_indices() {
        let control = (c < ' ' && c != '\n') || ('\x7f'..='\u{9f}').contains(&c);
        assert!(!control, "control character {c:?} at byte {i} of\n{out}");
    }
}

#[test]
fn a_name_with_an_escape_sequence_is_shown_escaped_in_the_table() {
    let (_d, db) = store_with(&[
        flow(0, EVIL_EXE, EVIL_COMM, 1_000, 2_000),
        flow(1, "/usr/bin/curl", "curl", 100, 200),
    ]);
    let out = report(&db, Format::Table, |a| {
        a.by = vec![GroupBy::Exe, GroupBy::Process]
    });
    assert_no_control_bytes(&out);
    // The escaped cells are as wide as they are shown: columns stay aligned.
    assert_eq!(
        out,
        r"traffic from 2026-11-18 09:06:40 to 2026-11-18 11:06:41 UTC, by exe, process
EXE                            PROCESS                  SENT  RECEIVED    TOTAL
/tmp/\x1b[2J\x1b[H\nTOTAL 0 B  \x1b]0;pwn\x07 [700]   1000 B   2.0 KiB  2.9 KiB
/usr/bin/curl                  curl [701]              100 B     200 B    300 B
TOTAL                                                1.1 KiB   2.1 KiB  3.2 KiB
"
    );
}

#[test]
fn names_with_control_characters_are_shown_escaped_in_the_verdict_tables() {
    let v = [
        verdict(0, EVIL_EXE, EVIL_COMM, "x"),
        verdict(1, "/usr/bin/curl", "\u{9b}2J\u{202e}gnp", "curl"),
    ];
    let (_d, db) = store_with_verdicts(&v);
    let list = report(&db, Format::Table, |a| a.verdicts = true);
    assert_no_control_bytes(&list);
    assert_eq!(
        list,
        r"blocked attempts from 2026-11-18 09:06:40 to 2026-11-18 11:06:41 UTC
TIME (UTC)           PROCESS                    EXE                            USER     PROTO  DIRECTION  REMOTE          LOCAL PORT    RULE
2026-11-18 10:36:40  \x1b]0;pwn\x07 [800]       /tmp/\x1b[2J\x1b[H\nTOTAL 0 B  mallory  tcp    out        192.0.2.10:443       40000  no-tmp
2026-11-18 10:37:40  \u{9b}2J\u{202e}gnp [801]  /usr/bin/curl                  mallory  tcp    out        192.0.2.10:443       40000  no-tmp
2 attempts
"
    );
    let counts = report(&db, Format::Table, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Exe, GroupBy::Process];
    });
    assert_no_control_bytes(&counts);
    assert_eq!(
        counts,
        r"blocked attempts from 2026-11-18 09:06:40 to 2026-11-18 11:06:41 UTC, by exe, process
EXE                            PROCESS                    ATTEMPTS                FIRST                 LAST
/tmp/\x1b[2J\x1b[H\nTOTAL 0 B  \x1b]0;pwn\x07 [800]              1  2026-11-18 10:36:40  2026-11-18 10:36:40
/usr/bin/curl                  \u{9b}2J\u{202e}gnp [801]         1  2026-11-18 10:37:40  2026-11-18 10:37:40
TOTAL                                                            2
"
    );
}

#[test]
fn a_rules_file_path_and_error_with_control_characters_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    store.start_run(ns(NOW_S - 7_000)).unwrap();
    let record = procflow_core::RulesRecord {
        kind: procflow_core::RulesRecord::KIND,
        time: rfc3339(ns(NOW_S - 600)),
        generation: 0,
        outcome: procflow_core::RulesOutcome::Refused,
        path: "/tmp/r\x1b[2J.toml".into(),
        rules: 0,
        error: Some("/tmp/r.toml:1:1: bad \x1b[31mkey\r\n/tmp/r.toml:2:1: fake\rline".into()),
    };
    store
        .write_enforcement(&[], &[record], ns(NOW_S - 599))
        .unwrap();
    drop(store);
    let out = report(&db, Format::Table, |a| a.rules_changes = true);
    assert_no_control_bytes(&out);
    // One line per problem, under its load; a lone CR cannot start a line.
    assert_eq!(
        out,
        r"rules loads from 2026-11-18 09:06:40 to 2026-11-18 11:06:41 UTC
TIME (UTC)           OUTCOME  PATH                GENERATION  RULES
2026-11-18 10:56:40  refused  /tmp/r\x1b[2J.toml           0      0
    /tmp/r.toml:1:1: bad \x1b[31mkey
    /tmp/r.toml:2:1: fake\rline
"
    );
}

#[test]
fn csv_cells_that_start_a_formula_get_a_quote_and_numbers_stay_numbers() {
    let (_d, db) = store_with(&[
        flow(0, FORMULA_EXE, "-bash", 1_000, 2_000),
        flow(1, "/usr/bin/curl", "curl", 100, 200),
        flow(2, "@evil", "+x", 10, 20),
    ]);
    // A uid with no name is shown in the user column: a negative one too.
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE processes SET user = NULL, uid = -2 WHERE comm = 'curl'")
        .unwrap();
    let out = report(&db, Format::Csv, |a| {
        a.by = vec![GroupBy::Exe, GroupBy::Process, GroupBy::User, GroupBy::Port]
    });
    assert_eq!(
        out,
        r#"exe,exe_unknown,pid,comm,user,port,service,tx_bytes,rx_bytes,total_bytes,tx_packets,rx_packets,flows,flows_folded
"'=HYPERLINK(""http://x"",""y"")",,700,'-bash,mallory,443,https,1000,2000,3000,10,20,1,0
/usr/bin/curl,,701,curl,-2,443,https,100,200,300,1,2,1,0
'@evil,,702,'+x,mallory,443,https,10,20,30,0,0,1,0
"#
    );
}

#[test]
fn verdict_csv_cells_that_start_a_formula_get_a_quote_and_numbers_stay_numbers() {
    let v = [
        verdict(0, FORMULA_EXE, "-bash", "@SUM(1+1)*cmd|' /C calc'!A0"),
        verdict(1, "/usr/bin/curl", "\tx", "\r=1"),
    ];
    let (_d, db) = store_with_verdicts(&v);
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE processes SET uid = -2 WHERE comm = '-bash'")
        .unwrap();
    let out = report(&db, Format::Csv, |a| a.verdicts = true);
    assert_eq!(
        out,
        "time,pid,comm,uid,user,exe,exe_unknown,cmdline,cgroup,proto,family,direction,\
         local_ip,local_port,remote_ip,remote_port,rule,action,hook\n\
         2026-11-18T10:36:40Z,800,'-bash,-2,mallory,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",,\
         '@SUM(1+1)*cmd|' /C calc'!A0,/user.slice,tcp,4,out,10.9.9.9,40000,192.0.2.10,443,\
         no-tmp,block,connect\n\
         2026-11-18T10:37:40Z,801,'\tx,1000,mallory,/usr/bin/curl,,\"'\r=1\",/user.slice,tcp,4,\
         out,10.9.9.9,40000,192.0.2.10,443,no-tmp,block,connect\n"
    );
    let counts = report(&db, Format::Csv, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Process];
        a.timeline = true;
        a.bucket = Some("1h".into());
    });
    assert_eq!(
        counts,
        "bucket_start,time,pid,comm,attempts,first,last\n\
         1794996000,2026-11-18T10:00:00Z,800,'-bash,1,2026-11-18T10:36:40Z,2026-11-18T10:36:40Z\n\
         1794996000,2026-11-18T10:00:00Z,801,'\tx,1,2026-11-18T10:37:40Z,2026-11-18T10:37:40Z\n"
    );
}

#[test]
fn a_control_character_in_a_name_round_trips_through_json() {
    let (_d, db) = store_with(&[flow(0, EVIL_EXE, EVIL_COMM, 1_000, 2_000)]);
    let out = report(&db, Format::Json, |a| {
        a.by = vec![GroupBy::Exe, GroupBy::Process]
    });
    assert_no_control_bytes(&out);
    assert!(out.contains(r#""comm": "\u001b]0;pwn\u0007""#), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["rows"][0]["exe"], EVIL_EXE);
    assert_eq!(doc["rows"][0]["comm"], EVIL_COMM);
}

fn chart(db: &Path, path: &Path) -> Result<String, StoreError> {
    let args = ReportArgs {
        db: db.to_path_buf(),
        since: "2h".into(),
        chart: Some(path.to_path_buf()),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn a_series_name_with_markup_and_an_escape_gives_a_valid_svg_and_a_png() {
    let (dir, db) = store_with(&[
        flow(0, SVG_BREAKER, "x", 5_000, 9_000),
        flow(1, "/usr/bin/curl", "curl", 100, 200),
    ]);
    let svg_path = dir.path().join("chart.svg");
    chart(&db, &svg_path).unwrap();
    let svg = fs::read_to_string(&svg_path).unwrap();
    let doc = resvg::usvg::roxmltree::Document::parse(&svg)
        .unwrap_or_else(|e| panic!("the chart is not valid XML: {e}\n{svg}"));
    // The legend shows the name as a table would: escape visible, markup as text.
    let legend: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .filter(|t| t.starts_with('/'))
        .collect();
    // (Top of the stack first: the smaller group.)
    assert_eq!(legend, ["/usr/bin/curl", r#"/tmp/\x1b[2J<script>&"'"#]);
    assert!(!doc.descendants().any(|n| n.has_tag_name("script")));

    let png_path = dir.path().join("chart.png");
    chart(&db, &png_path).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&png_path).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (2000, 1120));
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_chart_replaces_a_planted_symlink_instead_of_writing_through_it() {
    let (dir, db) = store_with(&[flow(0, "/usr/bin/curl", "curl", 100, 200)]);
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let chart_path = dir.path().join("chart.svg");
    std::os::unix::fs::symlink(&victim, &chart_path).unwrap();
    assert_eq!(
        chart(&db, &chart_path).unwrap(),
        format!("wrote {}\n", chart_path.display())
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let meta = fs::symlink_metadata(&chart_path).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert!(fs::read_to_string(&chart_path)
        .unwrap()
        .starts_with("<svg "));
    assert_eq!(mode(&chart_path), 0o600);
    // No temporary file is left behind.
    let mut charts: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("chart"))
        .collect();
    charts.sort();
    assert_eq!(charts, ["chart.svg"]);
}

#[test]
fn a_chart_in_a_directory_that_cannot_be_written_says_where() {
    let (dir, db) = store_with(&[flow(0, "/usr/bin/curl", "curl", 100, 200)]);
    let missing = dir.path().join("no-such-dir").join("chart.svg");
    let e = chart(&db, &missing).unwrap_err().to_string();
    let tmp_dir = dir.path().join("no-such-dir").display().to_string();
    assert!(e.starts_with(&format!("{tmp_dir}/.chart.svg.")), "{e}");
    assert!(
        e.ends_with(".tmp: No such file or directory (os error 2)"),
        "{e}"
    );
}
