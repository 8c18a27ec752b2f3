//! Opening databases: migration from schema version 1, and files that are
//! not procflow databases (or are too new) refused without being touched.

mod common;

use std::fs;
use std::path::Path;

use common::{ns, synthetic_flows, NOW_S};
use procflow_core::flow::FlowState;
use procflow_store::report::{run_report_at, Format, GroupBy, ReportArgs};
use procflow_store::schema::{APPLICATION_ID, SCHEMA_VERSION};
use procflow_store::{Store, StoreError};
use rusqlite::Connection;
use serde_json::{json, Value};

/// The version 1 layout, as procflow 0.1 created it.
const V1_LAYOUT: &str = "
CREATE TABLE runs (run_id INTEGER PRIMARY KEY, started_us INTEGER NOT NULL, version TEXT NOT NULL);
CREATE TABLE executables (exe_id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE processes (
    process_id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(run_id),
    pid INTEGER NOT NULL, ppid INTEGER NOT NULL, uid INTEGER NOT NULL, user TEXT,
    comm TEXT NOT NULL, exe_id INTEGER REFERENCES executables(exe_id), cmdline TEXT,
    cgroup TEXT, first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL);
CREATE INDEX processes_pid ON processes(run_id, pid);
CREATE INDEX processes_seen ON processes(last_seen_us);
CREATE TABLE flows (
    flow_row INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(run_id),
    flow_id TEXT NOT NULL, process_id INTEGER REFERENCES processes(process_id),
    state TEXT NOT NULL, proto TEXT NOT NULL, family INTEGER NOT NULL, direction TEXT NOT NULL,
    local_ip TEXT NOT NULL, local_port INTEGER NOT NULL, remote_ip TEXT NOT NULL,
    remote_port INTEGER NOT NULL, netns INTEGER NOT NULL, start_us INTEGER NOT NULL,
    end_us INTEGER, last_us INTEGER NOT NULL, tx_bytes INTEGER NOT NULL,
    rx_bytes INTEGER NOT NULL, tx_packets INTEGER NOT NULL, rx_packets INTEGER NOT NULL,
    tx_payload INTEGER NOT NULL, rx_payload INTEGER NOT NULL, before_tx_payload INTEGER,
    before_rx_payload INTEGER, origin TEXT NOT NULL, verdict TEXT, rule TEXT,
    UNIQUE (run_id, flow_id));
CREATE TABLE series (
    series_id INTEGER PRIMARY KEY, process_id INTEGER REFERENCES processes(process_id),
    remote_ip TEXT NOT NULL, port INTEGER NOT NULL, proto TEXT NOT NULL, direction TEXT NOT NULL,
    last_seen_us INTEGER NOT NULL);
CREATE INDEX series_key ON series(process_id, remote_ip, port);
CREATE INDEX series_seen ON series(last_seen_us);
CREATE TABLE samples (
    bucket INTEGER NOT NULL, series_id INTEGER NOT NULL REFERENCES series(series_id),
    tx_bytes INTEGER NOT NULL, rx_bytes INTEGER NOT NULL,
    PRIMARY KEY (bucket, series_id)) WITHOUT ROWID;
CREATE TABLE hourly (
    hour INTEGER NOT NULL, series_id INTEGER NOT NULL REFERENCES series(series_id),
    tx_bytes INTEGER NOT NULL, rx_bytes INTEGER NOT NULL,
    PRIMARY KEY (hour, series_id)) WITHOUT ROWID;
";

fn json_report(db: &Path, by: &[GroupBy]) -> Value {
    let args = ReportArgs {
        db: db.to_path_buf(),
        by: by.to_vec(),
        format: Format::Json,
        ..Default::default()
    };
    let mut out = Vec::new();
    run_report_at(&args, NOW_S, &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_version_1_database_is_migrated_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(V1_LAYOUT).unwrap();
        let t = NOW_S - 3_600;
        c.execute_batch(&format!(
            "INSERT INTO runs VALUES (1, {us}, '0.1.0');
             INSERT INTO executables VALUES (1, '/usr/bin/wget');
             INSERT INTO processes VALUES (1, 1, 42, 1, 1000, 'alice', 'wget', 1, 'wget x', '/', {us}, {us});
             INSERT INTO flows (run_id, flow_id, process_id, state, proto, family, direction,
                 local_ip, local_port, remote_ip, remote_port, netns, start_us, end_us, last_us,
                 tx_bytes, rx_bytes, tx_packets, rx_packets, tx_payload, rx_payload, origin)
               VALUES (1, '7', 1, 'closed', 'tcp', 4, 'out', '10.0.0.1', 40000, '192.0.2.1', 443,
                 1, {us}, {us}, {us}, 300, 7000, 3, 7, 200, 6900, 'connect');
             INSERT INTO series VALUES (1, 1, '192.0.2.1', 443, 'tcp', 'out', {us});
             INSERT INTO samples VALUES ({t}, 1, 300, 7000);
             INSERT INTO hourly VALUES ({h}, 1, 300, 7000);",
            us = t * 1_000_000,
            h = t - t % 3_600,
        ))
        .unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }

    // A reader does not migrate: it says what to do.
    let args = ReportArgs {
        db: db.clone(),
        ..Default::default()
    };
    match run_report_at(&args, NOW_S, &mut Vec::new()) {
        Err(StoreError::OlderSchema { found: 1, .. }) => {}
        other => panic!("expected OlderSchema, got {other:?}"),
    }

    let mut store = Store::open(&db).unwrap();
    let c = Connection::open(&db).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let name: Option<String> = c
        .query_row(
            "SELECT remote_name FROM flows WHERE flow_id = '7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, None);

    // Old data is still reported, and new data is written beside it.
    let doc = json_report(&db, &[GroupBy::Exe]);
    assert_eq!(doc["rows"][0]["exe"], json!("/usr/bin/wget"));
    assert_eq!(doc["rows"][0]["total_bytes"], json!(7_300));
    let f = synthetic_flows().remove(0);
    store
        .write(
            &[f.record(FlowState::Closed, 10, 20, Some(NOW_S - 60))],
            ns(NOW_S - 59),
        )
        .unwrap();
    assert!(store.set_remote_name(&f.flow_id, "example.org").unwrap());
    let doc = json_report(&db, &[GroupBy::Exe]);
    assert_eq!(doc["total"]["total_bytes"], json!(7_330));
    assert_eq!(store.run_id(), Some(2), "a new run beside the old one");
    store.integrity_check().unwrap();
}

/// Opens `path` with the store and with a report, expects both to refuse,
/// and checks that the file's bytes did not change.
fn assert_refused(path: &Path, check: impl Fn(&StoreError) -> bool) {
    let before = fs::read(path).unwrap();
    match Store::open(path) {
        Err(e) => assert!(check(&e), "unexpected error: {e}"),
        Ok(_) => panic!("{} was opened", path.display()),
    }
    let args = ReportArgs {
        db: path.to_path_buf(),
        ..Default::default()
    };
    match run_report_at(&args, NOW_S, &mut Vec::new()) {
        Err(e) => assert!(check(&e), "unexpected error: {e}"),
        Ok(()) => panic!("{} was reported on", path.display()),
    }
    assert_eq!(fs::read(path).unwrap(), before, "the file was changed");
}

#[test]
fn a_text_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    fs::write(
        &p,
        "these are not the flows you are looking for\n".repeat(100),
    )
    .unwrap();
    assert_refused(&p, |e| {
        matches!(e, StoreError::NotProcflow { .. })
            && e.to_string().contains("not an SQLite database")
    });
    assert!(!dir.path().join("notes.txt-wal").exists());
}

#[test]
fn another_applications_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.db");
    {
        let c = Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    assert_refused(&p, |e| {
        matches!(e, StoreError::NotProcflow { .. }) && e.to_string().contains("another kind")
    });
    let c = Connection::open(&p).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "journal mode was not switched to WAL");
}

#[test]
fn a_database_with_another_application_id_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.db");
    {
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "application_id", 1234).unwrap();
    }
    assert_refused(&p, |e| e.to_string().contains("application id 0x4d2"));
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("procflow.db");
    drop(Store::open(&p).unwrap());
    {
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    assert_refused(&p, |e| {
        matches!(e, StoreError::NewerSchema { found, .. } if *found == SCHEMA_VERSION + 1)
            && e.to_string().contains("upgrade procflow")
    });
}

#[test]
fn a_corrupt_file_with_an_sqlite_header_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("corrupt.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8_192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    fs::write(&p, &bytes).unwrap();
    assert_refused(&p, |e| {
        matches!(e, StoreError::NotProcflow { .. } | StoreError::Open { .. })
    });
}

#[test]
fn a_missing_database_is_created_by_the_store_but_not_by_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("procflow.db");
    let args = ReportArgs {
        db: p.clone(),
        ..Default::default()
    };
    match run_report_at(&args, NOW_S, &mut Vec::new()) {
        Err(StoreError::Missing { .. }) => {}
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(!p.exists());
    let store = Store::open(&p).unwrap();
    let mode: String = store_pragma(&p, "journal_mode");
    assert_eq!(mode, "wal");
    drop(store);
    // An empty database reports nothing, without error.
    let doc = json_report(&p, &[GroupBy::Exe]);
    assert_eq!(doc["rows"], json!([]));
}

fn store_pragma(p: &Path, name: &str) -> String {
    let c = Connection::open(p).unwrap();
    c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_new_database_gets_its_directory_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("var/lib/procflow/procflow.db");
    drop(Store::open(&p).unwrap());
    let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An existing file keeps the mode its owner gave it.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    drop(Store::open(&p).unwrap());
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn a_report_reads_while_a_writer_holds_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    let f = synthetic_flows().remove(0);
    store
        .write(
            &[f.record(FlowState::Closed, 100, 200, Some(NOW_S - 60))],
            ns(NOW_S - 59),
        )
        .unwrap();
    // Another writer is in the middle of a batch.
    let other = Connection::open(&db).unwrap();
    other
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO hourly (hour, series_id, tx_bytes, rx_bytes) VALUES (0, 1, 5, 5);",
        )
        .unwrap();
    let doc = json_report(&db, &[GroupBy::Exe]);
    assert_eq!(
        doc["total"]["total_bytes"],
        json!(300),
        "committed data only"
    );
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn a_version_2_database_is_migrated_to_the_current_schema_and_keeps_its_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v2.db");
    let t = NOW_S - 3_600;
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(V1_LAYOUT).unwrap();
        c.execute_batch(
            "ALTER TABLE flows ADD COLUMN remote_name TEXT;
             ALTER TABLE series ADD COLUMN remote_name TEXT;",
        )
        .unwrap();
        c.execute_batch(&format!(
            "INSERT INTO runs VALUES (1, {us}, '0.1.0');
             INSERT INTO executables VALUES (1, '/usr/bin/wget');
             INSERT INTO processes VALUES (1, 1, 42, 1, 1000, 'alice', 'wget', 1, 'wget x', '/', {us}, {us});
             INSERT INTO series VALUES (1, 1, '192.0.2.1', 443, 'tcp', 'out', {us}, 'example.org');
             INSERT INTO samples VALUES ({t}, 1, 300, 7000);
             INSERT INTO hourly VALUES ({h}, 1, 300, 7000);",
            us = t * 1_000_000,
            h = t - t % 3_600,
        ))
        .unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
    }
    let args = ReportArgs {
        db: db.clone(),
        ..Default::default()
    };
    match run_report_at(&args, NOW_S, &mut Vec::new()) {
        Err(StoreError::OlderSchema { found: 2, .. }) => {}
        other => panic!("expected OlderSchema, got {other:?}"),
    }
    let mut store = Store::open(&db).unwrap();
    let c = Connection::open(&db).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    // The new columns are there, empty for the old rows.
    let (verdict, rule, unknown, stats): (Option<String>, Option<String>, Option<String>, Option<String>) = c
        .query_row(
            "SELECT s.verdict, s.rule, p.exe_unknown, r.stats
             FROM series s, processes p, runs r WHERE s.series_id = 1 AND p.process_id = 1 AND r.run_id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((verdict, rule, unknown, stats), (None, None, None, None));
    for table in ["verdicts", "rules_changes"] {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let doc = json_report(&db, &[GroupBy::Exe, GroupBy::Rule]);
    assert_eq!(doc["rows"][0]["exe"], json!("/usr/bin/wget"));
    assert_eq!(doc["rows"][0]["rule"], Value::Null);
    assert_eq!(doc["rows"][0]["total_bytes"], json!(7_300));
    store.end_run(&json!({"type": "stats"}), ns(NOW_S)).unwrap();
    assert_eq!(store.run_id(), Some(2), "a new run beside the old one");
    store.integrity_check().unwrap();
}
