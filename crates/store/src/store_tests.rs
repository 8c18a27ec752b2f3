//! Tests of the writer: deltas, batches, a full disk, retention.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use procflow_core::flow::{Counters, Direction, FlowRecord, FlowState, Origin, Proto};
use procflow_core::timefmt::rfc3339;
use procflow_core::ProcessIdentity;

use super::*;
use crate::retention::RetentionSummary;

const NOW_S: i64 = 1_795_000_000;

fn ns(s: i64) -> u64 {
    s as u64 * 1_000_000_000
}

fn rec(id: u32, state: FlowState, tx: u64, rx: u64, start_s: i64) -> FlowRecord {
    FlowRecord {
        kind: "flow",
        flow_id: id.to_string(),
        state,
        proto: Proto::Tcp,
        family: 4,
        direction: Direction::Out,
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        local_port: 40_000,
        remote_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, (id % 200) as u8)),
        remote_port: 443,
        remote_name: None,
        process: Some(ProcessIdentity {
            pid: 100 + id % 7,
            ppid: 1,
            uid: 1000,
            user: Some("alice".into()),
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            cmdline: Some("curl https://example.com/".into()),
            cgroup: Some("/user.slice".into()),
            exe_unknown: None,
        }),
        netns: 1,
        start: rfc3339(ns(start_s)),
        end: (state == FlowState::Closed).then(|| rfc3339(ns(start_s + 5))),
        counters: Counters {
            tx_bytes: tx,
            rx_bytes: rx,
            ..Default::default()
        },
        before_start: None,
        origin: Origin::Connect,
        link: None,
        verdict: None,
        rule: None,
    }
}

fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("procflow.db")).unwrap();
    (dir, store)
}

fn sums(store: &Store, table: &str) -> (i64, i64) {
    store
        .conn
        .query_row(
            &format!("SELECT coalesce(sum(tx_bytes), 0), coalesce(sum(rx_bytes), 0) FROM {table}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// (sum of sampled tx, sum of sampled rx); the hourly totals agree.
fn sampled(store: &Store) -> (i64, i64) {
    let s = sums(store, "samples");
    assert_eq!(
        sums(store, "hourly"),
        s,
        "hourly totals differ from the samples"
    );
    s
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .conn
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn samples_are_the_deltas_between_records_even_when_the_cache_is_lost() {
    let (_dir, mut store) = open_store();
    let t = NOW_S - 100;
    store
        .write(&[rec(1, FlowState::Open, 100, 10, t)], ns(t))
        .unwrap();
    store
        .write(&[rec(1, FlowState::Open, 250, 30, t)], ns(t + 10))
        .unwrap();
    assert_eq!(sampled(&store), (250, 30));
    // The writer forgets its live flows: the flow row has the counters.
    store.caches.clear();
    store
        .write(&[rec(1, FlowState::Open, 400, 35, t)], ns(t + 20))
        .unwrap();
    assert_eq!(sampled(&store), (400, 35));
    // Several records of one flow in one batch, then the close, then a
    // repeated close: each byte is counted once.
    store
        .write(
            &[
                rec(1, FlowState::Open, 500, 40, t),
                rec(1, FlowState::Closed, 600, 50, t),
            ],
            ns(t + 30),
        )
        .unwrap();
    store
        .write(&[rec(1, FlowState::Closed, 600, 50, t)], ns(t + 40))
        .unwrap();
    assert_eq!(sampled(&store), (600, 50));
    assert!(store.caches.live.is_empty(), "closed flows are dropped");
    assert_eq!(count(&store, "flows"), 1);
    let (state, end): (String, Option<i64>) = store
        .conn
        .query_row("SELECT state, end_us FROM flows", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((state.as_str(), end), ("closed", Some((t + 5) * 1_000_000)));
    // Executables and processes are stored once.
    store
        .write(&[rec(8, FlowState::Open, 1, 1, t)], ns(t + 50))
        .unwrap();
    assert_eq!(count(&store, "executables"), 1);
    assert_eq!(count(&store, "processes"), 1);
    assert_eq!(store.stats().records_written, 7);
}

#[test]
fn a_full_disk_loses_only_the_failed_batches_and_writing_resumes() {
    let (_dir, mut store) = open_store();
    // Every flow its row, so that rows can be counted (folding with a full
    // disk: `folding_survives_a_full_disk`).
    store.set_fold_policy(FoldPolicy::NEVER);
    let t = NOW_S - 1_000;
    store
        .write(&[rec(1, FlowState::Open, 100, 100, t)], ns(t))
        .unwrap();
    store.checkpoint().unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // No room to grow: the size limit stands in for a full disk.
    store
        .conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .unwrap();

    let big: Vec<FlowRecord> = std::iter::once(rec(1, FlowState::Open, 300, 300, t))
        .chain((1_000..3_000).map(|id| rec(id, FlowState::Closed, 7, 9, t)))
        .collect();
    let err = store.write(&big, ns(t + 10)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(matches!(err, StoreError::Write { records, .. } if records == big.len()));
    assert!(
        err.to_string()
            .contains("could not write 2001 flow records"),
        "{err}"
    );
    let err = store.write(&big, ns(t + 20)).unwrap_err();
    assert!(err.is_disk_full());
    let stats = store.stats();
    assert_eq!(
        (stats.batches_failed, stats.records_failed),
        (2, 2 * big.len() as u64)
    );
    // Nothing of the failed batches is in the store.
    assert_eq!(count(&store, "flows"), 1);
    assert_eq!(sampled(&store), (100, 100));

    // Space comes back: writing resumes, and the flow that was live during
    // the failure is counted from what the store holds.
    store
        .conn
        .query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))
        .unwrap();
    store
        .write(&[rec(1, FlowState::Open, 500, 500, t)], ns(t + 30))
        .unwrap();
    store.write(&big[1..], ns(t + 40)).unwrap();
    assert_eq!(count(&store, "flows"), 2_001);
    assert_eq!(sampled(&store), (500 + 2_000 * 7, 500 + 2_000 * 9));
    assert_eq!(store.stats().records_written, 2_002);
    store.integrity_check().unwrap();
}

#[test]
fn retention_deletes_old_flows_and_rolls_samples_up_to_hours() {
    let (_dir, mut store) = open_store();
    let day = 86_400;
    // One flow every 7 minutes for 10 days, each closing after 5 s.
    let mut total = (0i64, 0i64);
    let mut id = 0;
    let mut t = NOW_S - 10 * day;
    while t < NOW_S {
        id += 1;
        store
            .write(
                &[rec(id, FlowState::Closed, 100 + u64::from(id), 1_000, t)],
                ns(t + 5),
            )
            .unwrap();
        total.0 += 100 + i64::from(id);
        total.1 += 1_000;
        t += 420;
    }
    assert_eq!(sampled(&store), total);
    let flows_before = count(&store, "flows");
    let series_before = count(&store, "series");

    let summary = store
        .apply_retention(Duration::from_secs(30 * day as u64), ns(NOW_S))
        .unwrap();
    assert_eq!((summary.flows_deleted, summary.hours_deleted), (0, 0));
    assert!(summary.samples_deleted > 0);
    assert_eq!(
        sums(&store, "hourly"),
        total,
        "hourly totals keep every byte"
    );
    let fine_from = bucket_start(NOW_S - 2 * day, 3_600);
    let (oldest, fine_tx): (i64, i64) = store
        .conn
        .query_row("SELECT min(bucket), sum(tx_bytes) FROM samples", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(
        oldest >= fine_from,
        "10-second samples older than two days are gone"
    );
    let recent_tx: i64 = store
        .conn
        .query_row(
            "SELECT sum(tx_bytes) FROM flows WHERE end_us >= ?1",
            [fine_from * 1_000_000],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        fine_tx, recent_tx,
        "the last two days keep their 10-second samples"
    );
    // Running it again changes nothing.
    let again = store
        .apply_retention(Duration::from_secs(30 * day as u64), ns(NOW_S))
        .unwrap();
    assert_eq!(again, RetentionSummary::default());

    // Keep 3 days: older flows and samples go.
    let summary = store
        .apply_retention(Duration::from_secs(3 * day as u64), ns(NOW_S))
        .unwrap();
    let keep_from_us = (NOW_S - 3 * day) * 1_000_000;
    let old: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM flows WHERE end_us < ?1",
            [keep_from_us],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0);
    assert_eq!(
        summary.flows_deleted as i64,
        flows_before - count(&store, "flows")
    );
    assert!(summary.hours_deleted > 0);
    let oldest: i64 = store
        .conn
        .query_row("SELECT min(hour) FROM hourly", [], |r| r.get(0))
        .unwrap();
    assert!(oldest + 3_600 > NOW_S - 3 * day, "oldest hour {oldest}");
    // Nothing kept refers to a deleted row, and unused series are gone.
    let dangling: i64 = store
        .conn
        .query_row(
            "SELECT (SELECT count(*) FROM hourly WHERE series_id NOT IN (SELECT series_id FROM series))
                  + (SELECT count(*) FROM samples WHERE series_id NOT IN (SELECT series_id FROM series))
                  + (SELECT count(*) FROM series WHERE process_id NOT IN (SELECT process_id FROM processes))
                  + (SELECT count(*) FROM flows WHERE process_id NOT IN (SELECT process_id FROM processes))
                  + (SELECT count(*) FROM processes WHERE exe_id NOT IN (SELECT exe_id FROM executables))",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dangling, 0);
    assert!(
        count(&store, "series") < series_before,
        "old series are deleted"
    );
    // Writing goes on after retention.
    store
        .write(&[rec(1_000_000, FlowState::Open, 1, 1, NOW_S)], ns(NOW_S))
        .unwrap();
    store.integrity_check().unwrap();
}

#[test]
fn a_remote_name_in_the_records_names_the_flow_and_its_later_traffic() {
    let (_dir, mut store) = open_store();
    let t = NOW_S - 100;
    store
        .write(&[rec(1, FlowState::Open, 100, 0, t)], ns(t))
        .unwrap();
    let mut named = rec(1, FlowState::Open, 300, 0, t);
    named.remote_name = Some("svc.example.test".into());
    store.write(&[named.clone()], ns(t + 10)).unwrap();
    named.state = FlowState::Closed;
    named.counters.tx_bytes = 600;
    store.write(&[named], ns(t + 20)).unwrap();
    let name: Option<String> = store
        .conn
        .query_row("SELECT remote_name FROM flows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name.as_deref(), Some("svc.example.test"));
    // Bytes before the name are under the address, bytes after under the name.
    let mut per_name: Vec<(Option<String>, i64)> = store
        .conn
        .prepare(
            "SELECT s.remote_name, sum(h.tx_bytes) FROM hourly h JOIN series s USING (series_id)
             GROUP BY 1 ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    per_name.sort();
    assert_eq!(
        per_name,
        vec![(None, 100), (Some("svc.example.test".into()), 500)]
    );
}

/// A closed flow `id` that lasted `secs` seconds (ending at `end_s`), with
/// packets, from one of three processes to one of five remotes.
fn short(id: u32, end_s: i64, micros: i64) -> FlowRecord {
    let mut r = rec(id, FlowState::Closed, 100 + u64::from(id % 7), 1_000, end_s);
    r.remote_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (id % 5) as u8));
    if let Some(p) = r.process.as_mut() {
        p.pid = 100 + id % 3;
    }
    let start_us = end_s * 1_000_000 - micros;
    r.start = rfc3339(start_us as u64 * 1_000);
    r.end = Some(rfc3339(ns(end_s)));
    r.counters.tx_packets = 3;
    r.counters.rx_packets = 4 + u64::from(id % 2);
    r
}

fn folded_rows(store: &Store) -> (i64, i64, i64) {
    store
        .conn
        .query_row(
            "SELECT (SELECT count(*) FROM flows), coalesce(sum(flows), 0), coalesce(sum(folded), 0)
             FROM samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// Every report grouping of `db` over the hour before NOW_S, as JSON.
fn all_groupings(db: &std::path::Path) -> Vec<serde_json::Value> {
    use crate::report::{run_report_at, Format, GroupBy, ReportArgs};
    let mut out = Vec::new();
    for by in [
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
    ] {
        for timeline in [false, true] {
            let args = ReportArgs {
                db: db.to_path_buf(),
                by: vec![by],
                format: Format::Json,
                timeline,
                bucket: timeline.then(|| "1m".to_string()),
                since: "2h".into(),
                ..Default::default()
            };
            let mut buf = Vec::new();
            run_report_at(&args, NOW_S, &mut buf).unwrap();
            out.push(serde_json::from_slice(&buf).unwrap());
        }
    }
    out
}

/// Takes the folded counts out of a report, the only thing folding changes.
fn without_folded(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("flows_folded");
        for (_, x) in o.iter_mut() {
            *x = without_folded(x.take());
        }
    } else if let Some(a) = v.as_array_mut() {
        for x in a.iter_mut() {
            *x = without_folded(x.take());
        }
    }
    v
}

#[test]
fn folded_flows_add_up_exactly_in_every_report_grouping() {
    // The same records into a store that folds and one that keeps every row.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("fold.db"), dir.path().join("keep.db"));
    let mut fold = Store::open(&a).unwrap();
    let mut keep = Store::open(&b).unwrap();
    keep.set_fold_policy(FoldPolicy::NEVER);
    let mut want = (0u64, 0u64, 0u64, 0u64);
    let mut id = 0;
    // 30 batches a second apart with 40 new flows each (400 in each
    // 10-second window: more than 20 a second), opened in one batch and
    // closed in the next; one in ten lasts 20 s.
    let t0 = NOW_S - 1_800;
    let mut open: Vec<(FlowRecord, i64)> = Vec::new();
    for step in 0..51 {
        let now = t0 + step;
        let mut batch = Vec::new();
        let mut still = Vec::new();
        for (mut r, close_at) in open.drain(..) {
            if close_at <= now {
                let mut c = short(r.flow_id.parse().unwrap(), now, 0);
                c.start = r.start.clone();
                want.0 += c.counters.tx_bytes;
                want.1 += c.counters.rx_bytes;
                want.2 += c.counters.tx_packets + c.counters.rx_packets;
                batch.push(c);
            } else {
                r.state = FlowState::Open;
                still.push((r, close_at));
            }
        }
        open = still;
        if step < 30 {
            for _ in 0..40 {
                id += 1;
                let mut r = short(id, now, 0);
                r.state = FlowState::Open;
                r.end = None;
                r.counters = Counters::default();
                let lasts = if id % 10 == 0 { 20 } else { 1 };
                batch.push(r.clone());
                open.push((r, now + lasts));
                want.3 += 1;
            }
        }
        fold.write(&batch, ns(now)).unwrap();
        keep.write(&batch, ns(now)).unwrap();
    }
    assert!(open.is_empty());
    let (rows, flows, folded) = folded_rows(&fold);
    assert_eq!(flows as u64, want.3, "every flow is counted once");
    assert!(folded >= 800, "most short flows are folded: {folded}");
    assert_eq!(rows + folded, flows, "each flow has its row or was folded");
    assert_eq!(fold.stats().flows_folded, folded as u64);
    assert_eq!(fold.stats().flows_kept, rows as u64);
    // No long flow was folded: each of them has its row.
    let long: i64 = fold
        .conn
        .query_row(
            "SELECT count(*) FROM flows WHERE end_us - start_us >= 10000000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(long, 120);
    assert_eq!(folded_rows(&keep), (flows, flows, 0));
    drop((fold, keep));

    let (fa, ka) = (all_groupings(&a), all_groupings(&b));
    for (f, k) in fa.iter().zip(&ka) {
        let t = &f["total"];
        assert_eq!(t["tx_bytes"], want.0);
        assert_eq!(t["rx_bytes"], want.1);
        assert_eq!(
            t["tx_packets"].as_u64().unwrap() + t["rx_packets"].as_u64().unwrap(),
            want.2
        );
        assert_eq!(t["flows"], want.3);
        assert_eq!(t["flows_folded"], folded);
        // Group by group, bucket by bucket: what the store that kept every
        // row says, but for the count of folded flows.
        assert_eq!(
            without_folded(f.clone()),
            without_folded(k.clone()),
            "{}",
            f["by"]
        );
    }
    // The table says how many flows were folded.
    let args = crate::report::ReportArgs {
        db: a.clone(),
        since: "2h".into(),
        ..Default::default()
    };
    let mut buf = Vec::new();
    crate::report::run_report_at(&args, NOW_S, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with(&format!("{} flows, {folded} of them folded", want.3)),
        "{text}"
    );
}

#[test]
fn a_blocked_flow_and_a_long_one_are_never_folded() {
    let (_dir, mut store) = open_store();
    let now = NOW_S - 600;
    // Well above the rate: 1,000 short flows.
    let mut batch: Vec<FlowRecord> = (1..=1_000).map(|i| short(i, now, 1_000)).collect();
    let mut blocked = short(5_001, now, 1_000);
    blocked.verdict = Some(Verdict::Block);
    blocked.rule = Some("no-tmp".into());
    batch.push(blocked);
    batch.push(short(5_002, now, 10_000_000));
    store.write(&batch, ns(now)).unwrap();
    let kept: Vec<String> = store
        .conn
        .prepare(
            "SELECT flow_id FROM flows WHERE CAST(flow_id AS INTEGER) > 5000 ORDER BY flow_row",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(kept, ["5001", "5002"]);
    // A block learned only at the close keeps the flow too.
    let mut open = short(6_001, now + 1, 0);
    open.state = FlowState::Open;
    open.end = None;
    store.write(&[open], ns(now + 1)).unwrap();
    let mut close = short(6_001, now + 2, 1_000_000);
    close.verdict = Some(Verdict::Block);
    store.write(&[close], ns(now + 2)).unwrap();
    let n: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM flows WHERE flow_id = '6001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn the_fold_thresholds_hold_at_their_edges() {
    let policy = FoldPolicy {
        shorter_than: Duration::from_secs(2),
        above_rate: 5,
    };
    // At the rate (50 new flows in the window): all kept; one more: that
    // one is folded.
    let (_dir, mut store) = open_store();
    store.set_fold_policy(policy);
    let now = NOW_S - 600;
    let now = now - now.rem_euclid(RATE_WINDOW_SECONDS);
    let batch: Vec<FlowRecord> = (1..=51).map(|i| short(i, now, 1_000)).collect();
    store.write(&batch[..50], ns(now)).unwrap();
    assert_eq!(
        (store.stats().flows_kept, store.stats().flows_folded),
        (50, 0)
    );
    store.write(&batch[50..], ns(now)).unwrap();
    assert_eq!(
        (store.stats().flows_kept, store.stats().flows_folded),
        (50, 1)
    );
    // Still above in the next window (the one before counts), then no
    // longer two windows on.
    let next = now + RATE_WINDOW_SECONDS;
    store.write(&[short(100, next, 1_000)], ns(next)).unwrap();
    assert_eq!(store.stats().flows_folded, 2);
    let later = now + 2 * RATE_WINDOW_SECONDS;
    store.write(&[short(101, later, 1_000)], ns(later)).unwrap();
    assert_eq!(
        (store.stats().flows_kept, store.stats().flows_folded),
        (51, 2)
    );

    // Duration: just under the limit is folded, at the limit kept.
    let (_dir, mut store) = open_store();
    store.set_fold_policy(policy);
    let mut batch: Vec<FlowRecord> = (1..=60).map(|i| short(i, now, 1_000)).collect();
    batch.push(short(200, now, 1_999_999));
    batch.push(short(201, now, 2_000_000));
    store.write(&batch, ns(now)).unwrap();
    let kept: Vec<String> = store
        .conn
        .prepare(
            "SELECT flow_id FROM flows WHERE CAST(flow_id AS INTEGER) >= 200 ORDER BY flow_row",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(kept, ["201"]);

    // A flow still open when it stops being short gets its row, and
    // folding off keeps everything.
    let (_dir, mut store) = open_store();
    store.set_fold_policy(policy);
    let batch: Vec<FlowRecord> = (1..=60).map(|i| short(i, now, 1_000)).collect();
    store.write(&batch, ns(now)).unwrap();
    let mut open = short(300, now, 0);
    open.state = FlowState::Open;
    open.end = None;
    store.write(&[open], ns(now)).unwrap();
    assert_eq!(count(&store, "flows"), 50);
    store.write(&[], ns(now + 1)).unwrap();
    store
        .write(&[short(301, now + 2, 1_000)], ns(now + 2))
        .unwrap();
    assert_eq!(
        count(&store, "flows"),
        51,
        "the open flow has its row at 2 s"
    );
    let (_dir, mut store) = open_store();
    store.set_fold_policy(FoldPolicy::NEVER);
    let batch: Vec<FlowRecord> = (1..=500).map(|i| short(i, now, 1_000)).collect();
    store.write(&batch, ns(now)).unwrap();
    assert_eq!(count(&store, "flows"), 500);
}

#[test]
fn folding_survives_a_full_disk_and_a_repeated_close() {
    let (_dir, mut store) = open_store();
    let now = NOW_S - 600;
    // Above the rate, so that new flows wait for their close.
    let batch: Vec<FlowRecord> = (1..=300).map(|i| short(i, now, 1_000)).collect();
    store.write(&batch, ns(now)).unwrap();
    let mut open = short(1_000, now, 0);
    open.state = FlowState::Open;
    open.end = None;
    open.counters.tx_bytes = 50;
    store.write(&[open.clone()], ns(now)).unwrap();
    store.checkpoint().unwrap();
    let pages: i64 = store
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store
        .conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        .unwrap();
    let before = sampled(&store);
    // The batch with its close (and many new flows) fails.
    let mut close = short(1_000, now + 1, 1_000_000);
    close.counters.tx_bytes = 80;
    // Blocked flows need rows, and rows need room.
    let big: Vec<FlowRecord> = std::iter::once(close.clone())
        .chain((2_000..4_000).map(|i| {
            let mut r = short(i, now + 1, 1_000);
            r.verdict = Some(Verdict::Block);
            r
        }))
        .collect();
    assert!(store.write(&big, ns(now + 1)).unwrap_err().is_disk_full());
    assert_eq!(sampled(&store), before);
    store
        .conn
        .query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))
        .unwrap();
    // The waiting flow is as it was before the failed batch: its close
    // counts only its growth, once, even when repeated.
    store.write(&[close.clone()], ns(now + 2)).unwrap();
    store.write(&[close], ns(now + 3)).unwrap();
    assert_eq!(sampled(&store).0, before.0 + 30);
    let (rows, flows, folded) = folded_rows(&store);
    assert_eq!(flows, 301);
    assert_eq!(rows + folded, flows);
    store.integrity_check().unwrap();
}
