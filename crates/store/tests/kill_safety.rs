//! `kill -9` during heavy writing loses at most the batch in flight and never
//! corrupts the database.
//!
//! The test runs its own binary again as a child that writes batches in a
//! loop and prints the number of each batch it committed; it is killed with
//! SIGKILL in the middle of it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{ns, synthetic_flows, NOW_S};
use procflow_core::flow::FlowState;
use procflow_store::Store;
use rusqlite::Connection;

const CHILD_ENV: &str = "PROCFLOW_STORE_KILL_CHILD_DB";
const BATCH: usize = 500;

/// The child: write batches of new flows until killed.
fn write_forever(db: &str) -> ! {
    let mut store = Store::open(db).unwrap();
    let template = synthetic_flows();
    let mut out = std::io::stdout();
    for batch in 1u64.. {
        let t = NOW_S - 3_600 + batch as i64;
        let records: Vec<_> = (0..BATCH)
            .map(|i| {
                let mut f = template[i % template.len()].clone();
                f.flow_id = format!("{batch}-{i}");
                f.start_s = t;
                f.record(FlowState::Closed, 1_000, 2_000, Some(t))
            })
            .collect();
        store.write(&records, ns(t)).unwrap();
        writeln!(out, "committed {batch}").unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
fn sigkill_during_heavy_writes_leaves_a_clean_database() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        write_forever(&db);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    // Three rounds: each start must find the database of the killed one clean.
    let mut before = 0u64;
    for round in 1..=3 {
        let committed = run_and_kill(&db);
        let flows = check(&db);
        assert!(
            flows >= before + committed * BATCH as u64,
            "round {round}: {flows} flows, {before} before, {committed} batches committed"
        );
        before = flows;
    }
}

/// Starts a writer, kills it after 30 committed batches; returns how many
/// batches it said it committed.
fn run_and_kill(db: &std::path::Path) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_during_heavy_writes_leaves_a_clean_database",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut committed = 0u64;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while committed < 30 {
        let line = lines
            .next()
            .expect("the writer stopped before it was killed")
            .unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    committed
}

/// Opens the database as the next start would, checks it, returns its flows
/// (those with a row and those folded into their series: at 500 new flows a
/// second most are folded).
fn check(db: &std::path::Path) -> u64 {
    let store = Store::open(db).unwrap();
    store.integrity_check().unwrap();
    drop(store);
    let c = Connection::open(db).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
        .unwrap();
    let (flows, folded): (i64, i64) = c
        .query_row(
            "SELECT coalesce(sum(flows), 0), coalesce(sum(folded), 0) FROM samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows + folded, flows, "each flow has its row or was folded");
    let flows = flows as u64;
    assert_eq!(flows % BATCH as u64, 0, "a batch landed in part");
    let (tx, rx): (i64, i64) = c
        .query_row(
            "SELECT sum(tx_bytes), sum(rx_bytes) FROM samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((tx as u64, rx as u64), (flows * 1_000, flows * 2_000));
    flows
}
