//! The database layout, its version and migrations, and the checks that keep
//! procflow from touching a file that is not its own.
//!
//! A procflow database carries `PRAGMA application_id` = [`APPLICATION_ID`]
//! ("PFLW") and `PRAGMA user_version` = its schema version. A fresh database
//! is created by running every migration from version 0, so the path from an
//! old layout to the current one is the path every database takes.
//! See `crates/store/README.md` for the tables and columns.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;

/// `PRAGMA application_id` of a procflow database: "PFLW".
pub const APPLICATION_ID: i32 = 0x5046_4C57;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i64 = 4;

/// Version 1: runs, executables, processes, flows, series and samples.
///
/// Times are integers: `*_us` columns are microseconds since the Unix epoch,
/// `samples.bucket` and `hourly.hour` are seconds.
const V1: &str = "
CREATE TABLE runs (
    run_id      INTEGER PRIMARY KEY,
    started_us  INTEGER NOT NULL,
    version     TEXT NOT NULL
);
CREATE TABLE executables (
    exe_id  INTEGER PRIMARY KEY,
    path    TEXT NOT NULL UNIQUE
);
CREATE TABLE processes (
    process_id     INTEGER PRIMARY KEY,
    run_id         INTEGER NOT NULL REFERENCES runs(run_id),
    pid            INTEGER NOT NULL,
    ppid           INTEGER NOT NULL,
    uid            INTEGER NOT NULL,
    user           TEXT,
    comm           TEXT NOT NULL,
    exe_id         INTEGER REFERENCES executables(exe_id),
    cmdline        TEXT,
    cgroup         TEXT,
    first_seen_us  INTEGER NOT NULL,
    last_seen_us   INTEGER NOT NULL
);
CREATE INDEX processes_pid ON processes(run_id, pid);
CREATE INDEX processes_seen ON processes(last_seen_us);
CREATE TABLE flows (
    flow_row           INTEGER PRIMARY KEY,
    run_id             INTEGER NOT NULL REFERENCES runs(run_id),
    flow_id            TEXT NOT NULL,
    process_id         INTEGER REFERENCES processes(process_id),
    state              TEXT NOT NULL,
    proto              TEXT NOT NULL,
    family             INTEGER NOT NULL,
    direction          TEXT NOT NULL,
    local_ip           TEXT NOT NULL,
    local_port         INTEGER NOT NULL,
    remote_ip          TEXT NOT NULL,
    remote_port        INTEGER NOT NULL,
    netns              INTEGER NOT NULL,
    start_us           INTEGER NOT NULL,
    end_us             INTEGER,
    last_us            INTEGER NOT NULL,
    tx_bytes           INTEGER NOT NULL,
    rx_bytes           INTEGER NOT NULL,
    tx_packets         INTEGER NOT NULL,
    rx_packets         INTEGER NOT NULL,
    tx_payload         INTEGER NOT NULL,
    rx_payload         INTEGER NOT NULL,
    before_tx_payload  INTEGER,
    before_rx_payload  INTEGER,
    origin             TEXT NOT NULL,
    verdict            TEXT,
    rule               TEXT,
    UNIQUE (run_id, flow_id)
);
CREATE TABLE series (
    series_id   INTEGER PRIMARY KEY,
    process_id  INTEGER REFERENCES processes(process_id),
    remote_ip   TEXT NOT NULL,
    port        INTEGER NOT NULL,
    proto         TEXT NOT NULL,
    direction     TEXT NOT NULL,
    last_seen_us  INTEGER NOT NULL
);
CREATE INDEX series_key ON series(process_id, remote_ip, port);
CREATE INDEX series_seen ON series(last_seen_us);
CREATE TABLE samples (
    bucket     INTEGER NOT NULL,
    series_id  INTEGER NOT NULL REFERENCES series(series_id),
    tx_bytes   INTEGER NOT NULL,
    rx_bytes   INTEGER NOT NULL,
    PRIMARY KEY (bucket, series_id)
) WITHOUT ROWID;
CREATE TABLE hourly (
    hour       INTEGER NOT NULL,
    series_id  INTEGER NOT NULL REFERENCES series(series_id),
    tx_bytes   INTEGER NOT NULL,
    rx_bytes   INTEGER NOT NULL,
    PRIMARY KEY (hour, series_id)
) WITHOUT ROWID;
";

/// Version 2: remote host names (learned from DNS answers) on flows and series.
const V2: &str = "
ALTER TABLE flows ADD COLUMN remote_name TEXT;
ALTER TABLE series ADD COLUMN remote_name TEXT;
";

/// Version 3: what the rules did and how each run ended. Blocked attempts
/// (`verdicts`), loads and reloads of the rules file (`rules_changes`), each
/// run's end and final stats record (`runs.ended_us`, `runs.stats`), the
/// deciding rule of the traffic (`series.verdict`, `series.rule`) and why a
/// process's executable is unknown (`processes.exe_unknown`).
const V3: &str = "
ALTER TABLE runs ADD COLUMN ended_us INTEGER;
ALTER TABLE runs ADD COLUMN stats TEXT;
ALTER TABLE processes ADD COLUMN exe_unknown TEXT;
ALTER TABLE series ADD COLUMN verdict TEXT;
ALTER TABLE series ADD COLUMN rule TEXT;
CREATE TABLE verdicts (
    verdict_id   INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(run_id),
    time_us      INTEGER NOT NULL,
    process_id   INTEGER REFERENCES processes(process_id),
    action       TEXT NOT NULL,
    rule         TEXT,
    rule_index   INTEGER,
    generation   INTEGER NOT NULL,
    hook         TEXT NOT NULL,
    proto        TEXT NOT NULL,
    family       INTEGER NOT NULL,
    direction    TEXT NOT NULL,
    local_ip     TEXT NOT NULL,
    local_port   INTEGER NOT NULL,
    remote_ip    TEXT NOT NULL,
    remote_port  INTEGER NOT NULL,
    netns        INTEGER NOT NULL
);
CREATE INDEX verdicts_time ON verdicts(time_us);
CREATE TABLE rules_changes (
    change_id   INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(run_id),
    time_us     INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    path        TEXT NOT NULL,
    rules       INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX rules_changes_time ON rules_changes(time_us);
";

/// Version 4: packets and connections in the time-bucketed series. Each
/// sample and hourly row also counts the packets of its series in its
/// bucket, the flows first recorded there (`flows`), and of those closed
/// there how many were folded (`folded`: short flows given no row of their
/// own in `flows`, see `crate::store::FoldPolicy`).
const V4: &str = "
ALTER TABLE samples ADD COLUMN tx_packets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE samples ADD COLUMN rx_packets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE samples ADD COLUMN flows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE samples ADD COLUMN folded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hourly ADD COLUMN tx_packets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hourly ADD COLUMN rx_packets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hourly ADD COLUMN flows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hourly ADD COLUMN folded INTEGER NOT NULL DEFAULT 0;
";

/// The tables procflow creates. Each must be an ordinary table without
/// triggers: a view, a virtual table or a trigger in their place could make
/// a report run without end or run SQL that procflow did not write.
const TABLES: [&str; 9] = [
    "runs",
    "executables",
    "processes",
    "flows",
    "series",
    "samples",
    "hourly",
    "verdicts",
    "rules_changes",
];

/// `MIGRATIONS[i]` takes a database from version `i` to version `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1, V2, V3, V4];

/// The 16 bytes every SQLite database file starts with.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What a first look at the file found.
enum FileKind {
    /// Missing or empty: a new database may be created.
    Fresh,
    /// Starts like an SQLite database.
    Sqlite,
}

/// Looks at the first bytes of `path` without letting SQLite near it.
fn file_kind(path: &Path) -> Result<FileKind, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::Fresh),
        Err(e) => return Err(io(e)),
    };
    let mut head = Vec::with_capacity(16);
    f.by_ref().take(16).read_to_end(&mut head).map_err(io)?;
    if head.is_empty() {
        return Ok(FileKind::Fresh);
    }
    if head.as_slice() != SQLITE_MAGIC {
        return Err(StoreError::NotProcflow {
            path: path.to_path_buf(),
            reason: "not an SQLite database".into(),
        });
    }
    Ok(FileKind::Sqlite)
}

/// Creates the directory of a new database and the file itself, readable by
/// its owner only: flow records tell who talked to whom and with which
/// command line. Missing directories are created 0700 and an existing one
/// is left as it is (never loosened). SQLite gives its -wal and -shm files
/// the database file's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    Ok(())
}

/// What the header pragmas say.
struct Header {
    application_id: i32,
    version: i64,
    objects: i64,
}

fn read_header(conn: &Connection) -> rusqlite::Result<Header> {
    Ok(Header {
        application_id: conn.query_row("PRAGMA application_id", [], |r| r.get(0))?,
        version: conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
        objects: conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?,
    })
}

fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            StoreError::NotProcflow {
                path: path.to_path_buf(),
                reason: source.to_string(),
            }
        }
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Refuses a database in which one of procflow's [`TABLES`] is not an
/// ordinary table (a view, a virtual table) or has a trigger, naming the
/// object. procflow never creates either.
fn check_objects(path: &Path, conn: &Connection) -> Result<(), StoreError> {
    let names = TABLES.map(|t| format!("'{t}'")).join(",");
    let sql = format!(
        "SELECT type, name, tbl_name FROM sqlite_schema
         WHERE (name IN ({names}) OR tbl_name IN ({names}))
           AND (type NOT IN ('table', 'index')
                OR (type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'))
         ORDER BY name LIMIT 1"
    );
    let found = conn
        .query_row(&sql, [], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(|e| open_error(path, e))?;
    let Some((kind, name, table)) = found else {
        return Ok(());
    };
    let reason = match kind.as_str() {
        "trigger" => format!("table `{table}` has a trigger, `{name}`"),
        "table" => format!("`{name}` is a virtual table, not an ordinary table"),
        kind => format!("`{name}` is a {kind}, not a table"),
    };
    Err(StoreError::ForeignObject {
        path: path.to_path_buf(),
        reason,
    })
}

/// Checks the header of an SQLite file: `Ok(Some(version))` for a procflow
/// database (whose tables are all tables, see [`check_objects`]),
/// `Ok(None)` for an empty one, an error for anything else.
fn check_header(path: &Path, conn: &Connection) -> Result<Option<i64>, StoreError> {
    let h = read_header(conn).map_err(|e| open_error(path, e))?;
    if h.application_id == APPLICATION_ID {
        check_objects(path, conn)?;
        if h.version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: h.version,
                supported: SCHEMA_VERSION,
            });
        }
        return Ok(Some(h.version));
    }
    if h.application_id == 0 && h.version == 0 && h.objects == 0 {
        return Ok(None);
    }
    let reason = if h.application_id != 0 {
        format!("application id {:#x}", h.application_id)
    } else {
        format!(
            "an SQLite database with {} tables of another kind",
            h.objects
        )
    };
    Err(StoreError::NotProcflow {
        path: path.to_path_buf(),
        reason,
    })
}

/// `PRAGMA trusted_schema = OFF`: SQL functions with side effects, and
/// virtual tables, cannot be used from the file's schema (views, triggers,
/// defaults, generated columns, index expressions), whoever wrote the file.
fn distrust_schema(path: &Path, conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(|e| open_error(path, e))
}

/// Opens (creating if needed) a procflow database for writing, migrating it
/// to [`SCHEMA_VERSION`]. A file that is not a procflow database, or has a
/// newer schema, is refused before anything is written to it.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    if let FileKind::Fresh = file_kind(path)? {
        create_private(path)?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    distrust_schema(path, &conn)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| open_error(path, e))?;
    check_header(path, &conn)?;
    // Only now is the file known to be ours (or empty): writes may begin.
    let setup = || -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 32 MiB of page cache: the indexes that every batch touches stay in memory.
        conn.pragma_update(None, "cache_size", -32_768)?;
        // Checkpoint every ~40 MiB of log rather than 4 MiB: fewer fsyncs.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        migrate(&conn)
    };
    setup().map_err(|e| open_error(path, e))?;
    // Another process may have raced us to create it: check again.
    check_header(path, &conn)?;
    Ok(conn)
}

/// Brings the schema up to [`SCHEMA_VERSION`], one migration per transaction.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = || -> rusqlite::Result<bool> {
            let h = read_header(conn)?;
            let fresh = h.application_id == 0 && h.version == 0 && h.objects == 0;
            if !fresh && (h.application_id != APPLICATION_ID || h.version >= SCHEMA_VERSION) {
                return Ok(false);
            }
            conn.execute_batch(MIGRATIONS[h.version as usize])?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            conn.pragma_update(None, "user_version", h.version + 1)?;
            Ok(true)
        };
        match step() {
            Ok(more) => {
                conn.execute_batch("COMMIT")?;
                if !more {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}

/// Opens a procflow database read-only, for reports. It may be written by a
/// running `procflow run` at the same time (WAL).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    match file_kind(path)? {
        FileKind::Fresh => {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            })
        }
        FileKind::Sqlite => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    distrust_schema(path, &conn)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| open_error(path, e))?;
    // Reports read much of the file: map it rather than copy it page by page.
    conn.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(|e| open_error(path, e))?;
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(|e| open_error(path, e))?;
    match check_header(path, &conn)? {
        None => Err(StoreError::Missing {
            path: path.to_path_buf(),
        }),
        Some(v) if v < SCHEMA_VERSION => Err(StoreError::OlderSchema {
            path: path.to_path_buf(),
            found: v,
            supported: SCHEMA_VERSION,
        }),
        Some(_) => Ok(conn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_the_writer_do_not_trust_the_files_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("procflow.db");
        let trusted = |c: &Connection| -> i64 {
            c.query_row("PRAGMA trusted_schema", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(trusted(&open_writer(&path).unwrap()), 0);
        assert_eq!(trusted(&open_reader(&path).unwrap()), 0);
    }
}
