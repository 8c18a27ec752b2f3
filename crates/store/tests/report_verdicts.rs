//! What the rules did, in the store and in reports: blocked attempts
//! (`--verdicts`, `--by rule`, `--rule`, `--action`), loads of the rules
//! file (`--rules-changes`), traffic by deciding rule, a run's final stats,
//! and their retention. Every count is compared with what the test wrote.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::{ns, NOW_S};
use procflow_core::flow::{Direction, Proto, Verdict};
use procflow_core::timefmt::rfc3339;
use procflow_core::{ProcessIdentity, RulesOutcome, RulesRecord, VerdictRecord};
use procflow_store::report::filters::Action;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::Store;
use rusqlite::Connection;
use serde_json::{json, Value};

/// The processes that make attempts: (pid, exe, comm, user).
const PROCS: [(u32, Option<&str>, &str, &str); 3] = [
    (500, Some("/usr/bin/curl"), "curl", "alice"),
    (501, Some("/usr/bin/nc.openbsd"), "nc", "root"),
    (502, None, "shortlived", "root"),
];

fn identity(i: usize) -> ProcessIdentity {
    let (pid, exe, comm, user) = PROCS[i];
    ProcessIdentity {
        pid,
        ppid: 1,
        uid: if user == "root" { 0 } else { 1000 },
        user: Some(user.into()),
        comm: comm.into(),
        exe: exe.map(String::from),
        cmdline: exe.map(|e| format!("{e} 10.1.2.3")),
        cgroup: Some("/user.slice".into()),
        exe_unknown: None,
    }
}

/// One synthetic attempt: which process, rule, remote, port, direction, when.
#[derive(Debug, Clone)]
struct Synth {
    proc: usize,
    rule: Option<&'static str>,
    remote: IpAddr,
    port: u16,
    direction: Direction,
    time_s: i64,
}

fn verdict(s: &Synth) -> VerdictRecord {
    let local: IpAddr = if s.remote.is_ipv4() {
        "10.9.9.9".parse().unwrap()
    } else {
        "fd00::9".parse().unwrap()
    };
    let (local_port, remote_port) = match s.direction {
        Direction::In => (s.port, 41_000),
        _ => (40_000, s.port),
    };
    VerdictRecord {
        kind: VerdictRecord::KIND,
        time: rfc3339(ns(s.time_s) + 123_000),
        verdict: Verdict::Block,
        rule: s.rule.map(String::from),
        rule_index: s.rule.map(|r| if r == "no-curl" { 0 } else { 1 }),
        generation: 1,
        hook: if s.direction == Direction::In {
            "ingress"
        } else {
            "connect"
        },
        proto: Proto::Tcp,
        family: if s.remote.is_ipv4() { 4 } else { 6 },
        direction: s.direction,
        local_ip: local,
        local_port,
        remote_ip: s.remote,
        remote_port,
        process: identity(s.proc),
        netns: 4026531840,
        socket: 77,
    }
}

/// 30 attempts over the last 10 hours: curl blocked by `no-curl`, nc by
/// `no-nc` or the default, the short-lived process by the default.
fn synthetic() -> Vec<Synth> {
    let remotes: [IpAddr; 3] = [
        "10.1.2.3".parse().unwrap(),
        "192.0.2.7".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
    ];
    (0..30)
        .map(|i: usize| {
            let proc = i % 3;
            let rule = match (proc, i % 2) {
                (0, _) => Some("no-curl"),
                (1, 0) => Some("no-nc"),
                _ => None,
            };
            Synth {
                proc,
                rule,
                remote: remotes[i % 3],
                port: [443, 22, 8080][(i / 3) % 3],
                direction: if i % 5 == 4 {
                    Direction::In
                } else {
                    Direction::Out
                },
                time_s: NOW_S - 36_000 + i as i64 * 1_200,
            }
        })
        .collect()
}

fn rules_record(
    t: i64,
    generation: u64,
    outcome: RulesOutcome,
    error: Option<&str>,
) -> RulesRecord {
    RulesRecord {
        kind: RulesRecord::KIND,
        time: rfc3339(ns(t)),
        generation,
        outcome,
        path: "/etc/procflow/rules.toml".into(),
        rules: 2,
        error: error.map(String::from),
    }
}

const BAD: &str = "/etc/procflow/rules.toml:4:15: inverted port range\n\
                   /etc/procflow/rules.toml:8:1: unknown key `remote_prot`";

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Vec<Synth>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    store.start_run(ns(NOW_S - 40_000)).unwrap();
    let all = synthetic();
    // In three batches, as the daemon's flushes would write them.
    for chunk in all.chunks(10) {
        let recs: Vec<VerdictRecord> = chunk.iter().map(verdict).collect();
        let rules = if chunk[0].time_s == all[0].time_s {
            vec![rules_record(
                NOW_S - 39_000,
                1,
                RulesOutcome::Accepted,
                None,
            )]
        } else {
            Vec::new()
        };
        let n = store
            .write_enforcement(&recs, &rules, ns(chunk[9].time_s + 1))
            .unwrap();
        assert_eq!(n, recs.len() + rules.len());
    }
    store
        .write_enforcement(
            &[],
            &[rules_record(
                NOW_S - 600,
                1,
                RulesOutcome::Refused,
                Some(BAD),
            )],
            ns(NOW_S - 599),
        )
        .unwrap();
    assert_eq!(store.stats().records_written, 32);
    (dir, db, all)
}

fn report(db: &Path, format: Format, tweak: impl FnOnce(&mut ReportArgs)) -> String {
    let mut args = ReportArgs {
        db: db.to_path_buf(),
        format,
        ..Default::default()
    };
    tweak(&mut args);
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn json_report(db: &Path, tweak: impl FnOnce(&mut ReportArgs)) -> Value {
    serde_json::from_str(&report(db, Format::Json, tweak)).unwrap()
}

#[test]
fn every_blocked_attempt_is_listed_with_its_process_and_rule() {
    let (_dir, db, all) = setup();
    let doc = json_report(&db, |a| a.verdicts = true);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), all.len());
    assert_eq!(doc["total"]["attempts"], json!(30));
    for (row, s) in rows.iter().zip(&all) {
        let (pid, exe, comm, user) = PROCS[s.proc];
        assert_eq!(row["time"], json!(rfc3339(ns(s.time_s) + 123_000)));
        assert_eq!(row["pid"], json!(pid));
        assert_eq!(row["exe"], json!(exe));
        assert_eq!(row["comm"], json!(comm));
        assert_eq!(row["user"], json!(user));
        assert_eq!(row["rule"], json!(s.rule));
        assert_eq!(row["action"], json!("block"));
        assert_eq!(row["remote_ip"], json!(s.remote.to_string()));
        assert_eq!(
            row["direction"],
            json!(if s.direction == Direction::In {
                "in"
            } else {
                "out"
            })
        );
        let service = if s.direction == Direction::In {
            row["local_port"].clone()
        } else {
            row["remote_port"].clone()
        };
        assert_eq!(service, json!(s.port));
    }
    // --top keeps the most recent attempts.
    let doc = json_report(&db, |a| {
        a.verdicts = true;
        a.top = Some(2);
    });
    let times: Vec<&Value> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["time"])
        .collect();
    assert_eq!(
        times,
        [28, 29]
            .map(|i| json!(rfc3339(ns(all[i].time_s) + 123_000)))
            .iter()
            .collect::<Vec<_>>()
    );
    // The window: only the attempts of the last 2 hours (one every 20
    // minutes, the last 20 minutes ago).
    let doc = json_report(&db, |a| {
        a.verdicts = true;
        a.since = "2h".into();
    });
    assert_eq!(doc["rows"].as_array().unwrap().len(), 6);

    let csv = report(&db, Format::Csv, |a| a.verdicts = true);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "time,pid,comm,uid,user,exe,exe_unknown,cmdline,cgroup,proto,family,direction,\
         local_ip,local_port,remote_ip,remote_port,rule,action,hook"
    );
    assert_eq!(lines.count(), 30);

    let table = report(&db, Format::Table, |a| a.verdicts = true);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("blocked attempts from "), "{table}");
    assert!(lines[1].starts_with("TIME (UTC)"), "{table}");
    assert_eq!(lines.len(), 30 + 3, "{table}");
    assert_eq!(*lines.last().unwrap(), "30 attempts");
    // The default shows as such, an unknown executable as `-`.
    let short = lines
        .iter()
        .find(|l| l.contains("shortlived [502]"))
        .unwrap();
    assert!(short.contains("(default)"), "{short}");
    assert!(short.contains("  -  "), "{short}");
}

/// Attempts per group, counted from what was written.
fn truth(all: &[Synth], key: impl Fn(&Synth) -> Vec<Value>) -> HashMap<Vec<Value>, u64> {
    let mut m = HashMap::new();
    for s in all {
        *m.entry(key(s)).or_default() += 1;
    }
    m
}

fn counted(doc: &Value, cols: &[&str]) -> HashMap<Vec<Value>, u64> {
    let mut m = HashMap::new();
    for r in doc["rows"].as_array().unwrap() {
        let key = cols.iter().map(|c| r[*c].clone()).collect();
        assert!(
            m.insert(key, r["attempts"].as_u64().unwrap()).is_none(),
            "{r}"
        );
    }
    m
}

#[test]
fn attempts_are_counted_per_rule_and_per_exe() {
    let (_dir, db, all) = setup();
    let doc = json_report(&db, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Rule];
    });
    let want = truth(&all, |s| vec![json!(s.rule), json!("block")]);
    assert_eq!(counted(&doc, &["rule", "action"]), want);
    assert_eq!(want[&vec![json!("no-curl"), json!("block")]], 10);
    assert_eq!(want[&vec![json!("no-nc"), json!("block")]], 5);
    assert_eq!(want[&vec![Value::Null, json!("block")]], 15);
    // Largest first.
    assert_eq!(doc["rows"][0]["rule"], Value::Null);
    assert_eq!(doc["rows"][0]["attempts"], json!(15));
    assert_eq!(
        doc["rows"][0]["first"],
        json!(rfc3339(ns(all[1].time_s) + 123_000))
    );
    assert_eq!(
        doc["rows"][0]["last"],
        json!(rfc3339(ns(all[29].time_s) + 123_000))
    );

    let doc = json_report(&db, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Exe, GroupBy::Port];
    });
    let want = truth(&all, |s| {
        let port = s.port;
        let service = match port {
            443 => json!("https"),
            22 => json!("ssh"),
            _ => json!("http-alt"),
        };
        vec![json!(PROCS[s.proc].1), Value::Null, json!(port), service]
    });
    assert_eq!(
        counted(&doc, &["exe", "exe_unknown", "port", "service"]),
        want
    );

    // --top: the groups with the most attempts, the rest counted.
    let table = report(&db, Format::Table, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Rule];
        a.top = Some(1);
    });
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].ends_with("by rule"), "{table}");
    assert!(lines[2].starts_with("(default)"), "{table}");
    assert!(
        lines[3].starts_with("(2 more)") && lines[3].contains(" 15"),
        "{table}"
    );
    assert!(
        lines[4].starts_with("TOTAL") && lines[4].ends_with(" 30"),
        "{table}"
    );

    let csv = report(&db, Format::Csv, |a| {
        a.verdicts = true;
        a.by = vec![GroupBy::Rule];
    });
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "rule,action,attempts,first,last");
    assert!(lines[1].starts_with(",block,15,"), "{csv}");
    assert_eq!(lines.len(), 4);
}

#[test]
fn rule_and_action_filters_pick_the_attempts() {
    let (_dir, db, all) = setup();
    let n = |tweak: &dyn Fn(&mut ReportArgs)| {
        let doc = json_report(&db, |a| {
            a.verdicts = true;
            tweak(a);
        });
        doc["rows"].as_array().unwrap().len()
    };
    assert_eq!(n(&|a| a.rule = Some("no-nc".into())), 5);
    assert_eq!(n(&|a| a.rule = Some("(default)".into())), 15);
    assert_eq!(n(&|a| a.rule = Some("no-such-rule".into())), 0);
    assert_eq!(n(&|a| a.action = Some(Action::Block)), 30);
    // Allow decisions are flows' verdicts, not attempts.
    assert_eq!(n(&|a| a.action = Some(Action::Allow)), 0);
    // Filters of traffic reports apply too.
    let curl_https = all.iter().filter(|s| s.proc == 0 && s.port == 443).count();
    assert_eq!(
        n(&|a| {
            a.exe = Some("curl".into());
            a.port = Some("https".into());
        }),
        curl_https
    );
    let v6 = all.iter().filter(|s| s.remote.is_ipv6()).count();
    assert_eq!(n(&|a| a.remote = Some("2001:db8::/32".into())), v6);
    assert_eq!(n(&|a| a.user = Some("alice".into())), 10);
}

#[test]
fn a_timeline_of_attempts_adds_up_to_the_counts() {
    let (_dir, db, all) = setup();
    let doc = json_report(&db, |a| {
        a.verdicts = true;
        a.timeline = true;
        a.bucket = Some("2h".into());
        a.by = vec![GroupBy::Rule];
    });
    assert_eq!(doc["bucket_seconds"], json!(7_200));
    let mut want: HashMap<(i64, Value), u64> = HashMap::new();
    for s in &all {
        *want
            .entry((s.time_s - s.time_s.rem_euclid(7_200), json!(s.rule)))
            .or_default() += 1;
    }
    let mut got = HashMap::new();
    for r in doc["rows"].as_array().unwrap() {
        got.insert(
            (r["bucket_start"].as_i64().unwrap(), r["rule"].clone()),
            r["attempts"].as_u64().unwrap(),
        );
    }
    assert_eq!(got, want);
}

#[test]
fn rules_loads_are_listed_with_their_outcome_and_error() {
    let (_dir, db, _) = setup();
    let doc = json_report(&db, |a| a.rules_changes = true);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{doc:#}");
    assert_eq!(rows[0]["outcome"], "accepted");
    assert_eq!(rows[0]["generation"], 1);
    assert_eq!(rows[0]["rules"], 2);
    assert_eq!(rows[0]["error"], Value::Null);
    assert_eq!(rows[0]["time"], json!(rfc3339(ns(NOW_S - 39_000))));
    assert_eq!(rows[1]["outcome"], "refused");
    assert_eq!(rows[1]["error"], BAD);
    assert_eq!(rows[1]["path"], "/etc/procflow/rules.toml");

    let table = report(&db, Format::Table, |a| a.rules_changes = true);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("rules loads from "), "{table}");
    assert!(lines[2].contains("accepted"), "{table}");
    assert!(lines[3].contains("refused"), "{table}");
    assert_eq!(
        lines[4..],
        [
            "    /etc/procflow/rules.toml:4:15: inverted port range",
            "    /etc/procflow/rules.toml:8:1: unknown key `remote_prot`",
        ]
    );
    let csv = report(&db, Format::Csv, |a| a.rules_changes = true);
    assert_eq!(
        csv.lines().next().unwrap(),
        "time,run,generation,outcome,path,rules,error"
    );
    // The CSV field with the two lines is quoted whole.
    assert_eq!(csv.lines().count(), 1 + 1 + 2);
}

#[test]
fn traffic_is_grouped_and_filtered_by_its_deciding_rule() {
    use procflow_core::flow::{Counters, FlowRecord, FlowState, Origin};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    let t = NOW_S - 3_600;
    let flow = |id: u32, verdict: Option<Verdict>, rule: Option<&str>, tx: u64| FlowRecord {
        kind: "flow",
        flow_id: id.to_string(),
        state: FlowState::Closed,
        proto: Proto::Tcp,
        family: 4,
        direction: Direction::Out,
        local_ip: "10.9.9.9".parse().unwrap(),
        local_port: 40_000 + id as u16,
        remote_ip: "192.0.2.1".parse().unwrap(),
        remote_port: 443,
        remote_name: None,
        process: Some(identity(0)),
        netns: 1,
        start: rfc3339(ns(t)),
        end: Some(rfc3339(ns(t + 5))),
        counters: Counters {
            tx_bytes: tx,
            rx_bytes: 2 * tx,
            ..Default::default()
        },
        before_start: None,
        origin: Origin::Connect,
        link: None,
        verdict,
        rule: rule.map(String::from),
    };
    let allow = Some(Verdict::Allow);
    store
        .write(
            &[
                flow(1, allow, Some("lan-ok"), 1_000),
                flow(2, allow, Some("lan-ok"), 2_000),
                flow(3, allow, None, 40),
                flow(4, None, None, 7),
            ],
            ns(t + 6),
        )
        .unwrap();
    let doc = json_report(&db, |a| a.by = vec![GroupBy::Rule]);
    let rows: Vec<(Value, Value, u64)> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].clone(),
                r["action"].clone(),
                r["tx_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!("lan-ok"), json!("allow"), 3_000),
            (Value::Null, json!("allow"), 40),
            (Value::Null, Value::Null, 7),
        ]
    );
    let tx = |tweak: &dyn Fn(&mut ReportArgs)| {
        json_report(&db, |a| tweak(a))["total"]["tx_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(tx(&|a| a.rule = Some("lan-ok".into())), 3_000);
    assert_eq!(tx(&|a| a.rule = Some("(default)".into())), 40);
    assert_eq!(tx(&|a| a.action = Some(Action::Allow)), 3_040);
    assert_eq!(tx(&|a| a.action = Some(Action::Block)), 0);
    let table = report(&db, Format::Table, |a| a.by = vec![GroupBy::Rule]);
    let firsts: Vec<&str> = table
        .lines()
        .skip(2)
        .map(|l| l.split("  ").next().unwrap())
        .collect();
    assert_eq!(firsts, ["lan-ok", "(default)", "-", "TOTAL"], "{table}");
}

#[test]
fn a_runs_stats_are_kept_and_old_attempts_age_out() {
    let (_dir, db, all) = setup();
    let mut store = Store::open(&db).unwrap();
    let stats = json!({"type": "stats", "flows_seen": 12, "log": {"write_errors": 3}});
    store.end_run(&stats, ns(NOW_S)).unwrap();
    let c = Connection::open(&db).unwrap();
    let (ended, text): (i64, String) = c
        .query_row(
            "SELECT ended_us, stats FROM runs WHERE run_id = ?1",
            [store.run_id().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(ended, NOW_S * 1_000_000);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), stats);

    // Keep 5 hours: the attempts and the rules load before go.
    let old = all.iter().filter(|s| s.time_s < NOW_S - 5 * 3_600).count();
    let sum = store
        .apply_retention(Duration::from_secs(5 * 3_600), ns(NOW_S))
        .unwrap();
    assert_eq!(sum.verdicts_deleted, old);
    assert_eq!(sum.rules_changes_deleted, 1);
    let left: i64 = c
        .query_row("SELECT count(*) FROM verdicts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left as usize, all.len() - old);
    // The run that ended now keeps its row and its stats.
    let runs: i64 = c
        .query_row(
            "SELECT count(*) FROM runs WHERE stats IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 1);
    store.integrity_check().unwrap();
}
