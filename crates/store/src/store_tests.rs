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
