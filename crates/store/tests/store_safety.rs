//! The store's files: private directories and databases, and databases
//! changed behind procflow's back (a view, a virtual table or a trigger in
//! place of its tables) refused by the writer and by reports.

mod common;

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{feed, Synth, NOW_S};
use procflow_core::flow::{Direction, Proto};
use procflow_store::report::{run_report_at, ReportArgs};
use procflow_store::{Store, StoreError};
use rusqlite::Connection;

fn flow() -> Synth {
    Synth {
        flow_id: "10".into(),
        exe: Some("/usr/bin/curl"),
        pid: 700,
        comm: "curl",
        uid: 1000,
        user: Some("alice"),
        cgroup: Some("/user.slice"),
        unowned: false,
        proto: Proto::Tcp,
        direction: Direction::Out,
        local: ("10.9.9.9".parse::<IpAddr>().unwrap(), 40_000),
        remote: ("192.0.2.10".parse::<IpAddr>().unwrap(), 443),
        name: None,
        tx: 100,
        rx: 200,
        start_s: NOW_S - 3_600,
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_new_database_gets_private_directories_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    fs::create_dir(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o755)).unwrap();
    let db = existing.join("state").join("procflow").join("procflow.db");
    let mut store = Store::open(&db).unwrap();
    feed(&mut store, &[flow()]);
    // While the writer is open its -wal and -shm files exist.
    let wal = db.with_file_name("procflow.db-wal");
    let shm = db.with_file_name("procflow.db-shm");
    assert_eq!(
        [&db, &wal, &shm].map(|p| mode(p)),
        [0o600, 0o600, 0o600],
        "database, -wal, -shm"
    );
    assert_eq!(mode(&existing.join("state")), 0o700);
    assert_eq!(mode(&existing.join("state").join("procflow")), 0o700);
    // An existing directory is never loosened, nor changed at all.
    assert_eq!(mode(&existing), 0o755);
}

/// A real procflow database, then `sql` run on it behind procflow's back.
fn tampered(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("procflow.db");
    feed(&mut Store::open(&db).unwrap(), &[flow()]);
    Connection::open(&db).unwrap().execute_batch(sql).unwrap();
    (dir, db)
}

#[test]
fn a_database_whose_samples_table_is_an_endless_view_is_refused() {
    let (_d, db) = tampered(
        "DROP TABLE samples;
         CREATE VIEW samples AS
           WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n)
           SELECT i AS bucket, 1 AS series_id, 1 AS tx_bytes, 1 AS rx_bytes FROM n;",
    );
    let args = ReportArgs {
        db: db.clone(),
        ..Default::default()
    };
    let e = run_report_at(&args, NOW_S, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, StoreError::ForeignObject { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: `samples` is a view, not a table; procflow's tables are ordinary tables \
             without triggers, so the file is refused (it was left untouched)",
            db.display()
        )
    );
    // The writer refuses it too, before writing anything.
    let e = Store::open(&db).unwrap_err();
    assert!(
        e.to_string().contains("`samples` is a view, not a table"),
        "{e}"
    );
}

#[test]
fn a_database_with_a_trigger_on_a_procflow_table_is_refused() {
    let (_d, db) =
        tampered("CREATE TRIGGER wipe AFTER INSERT ON flows BEGIN DELETE FROM runs; END;");
    let e = Store::open(&db).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: table `flows` has a trigger, `wipe`; procflow's tables are ordinary tables \
             without triggers, so the file is refused (it was left untouched)",
            db.display()
        )
    );
    let args = ReportArgs {
        db: db.clone(),
        ..Default::default()
    };
    let e = run_report_at(&args, NOW_S, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("table `flows` has a trigger, `wipe`"), "{e}");
}

#[test]
fn a_database_whose_flows_table_is_a_virtual_table_is_refused() {
    let (_d, db) = tampered(
        "DROP TABLE flows;
         CREATE VIRTUAL TABLE flows USING rtree(id, a, b);",
    );
    let args = ReportArgs {
        db: db.clone(),
        ..Default::default()
    };
    let e = run_report_at(&args, NOW_S, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{}: `flows` is a virtual table, not an ordinary table;",
            db.display()
        )),
        "{e}"
    );
}
