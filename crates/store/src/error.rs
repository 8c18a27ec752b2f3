//! The store crate's error type.

use std::path::PathBuf;

use rusqlite::ErrorCode;

/// Everything that can go wrong in the store, the log writer and reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a procflow database; it was left untouched.
    #[error("{path}: not a procflow database ({reason}); the file was left untouched")]
    NotProcflow { path: PathBuf, reason: String },

    /// A procflow database in which one of procflow's tables is not an
    /// ordinary table (a view, a virtual table) or has a trigger: reading it
    /// could run without end or run SQL that procflow did not write.
    #[error(
        "{path}: {reason}; procflow's tables are ordinary tables without triggers, \
         so the file is refused (it was left untouched)"
    )]
    ForeignObject { path: PathBuf, reason: String },

    /// The database was written by a newer procflow; it was left untouched.
    #[error(
        "{path}: schema version {found} is newer than this procflow supports ({supported}); \
         upgrade procflow to read it (the file was left untouched)"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// A read-only reader met an older schema that only a writer can migrate.
    #[error(
        "{path}: schema version {found} is older than this procflow's ({supported}); \
         start `procflow run` on it once to migrate it"
    )]
    OlderSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// There is no database to read.
    #[error("{path}: no procflow database here (has `procflow run` recorded anything yet?)")]
    Missing { path: PathBuf },

    /// Opening or migrating the database failed.
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A batch could not be written; none of its `records` are in the store.
    /// The store stays usable: later batches are written when the cause
    /// (for example a full disk) goes away.
    #[error("could not write {records} {what} to the store: {source}")]
    Write {
        records: usize,
        /// What kind of records: "flow records", "verdict and rules records".
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    /// Any other database error (queries, retention).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The reader of the output went away (for example `procflow ... | head`).
    /// Not a failure: the caller should stop writing and exit quietly.
    #[error("output closed (broken pipe)")]
    BrokenPipe,

    /// Writing to an output stream failed for another reason.
    #[error("writing output: {0}")]
    Output(std::io::Error),

    /// A record could not be serialized.
    #[error("serializing a record: {0}")]
    Json(#[from] serde_json::Error),

    /// A command-line value was refused.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: String,
    },
}

impl StoreError {
    /// True when the disk (or the size limit of the database) is full.
    pub fn is_disk_full(&self) -> bool {
        let e = match self {
            StoreError::Write { source, .. }
            | StoreError::Open { source, .. }
            | StoreError::Sqlite(source) => source,
            StoreError::Io { source, .. } | StoreError::Output(source) => {
                return source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => return false,
        };
        e.sqlite_error_code() == Some(ErrorCode::DiskFull)
    }

    /// Maps an output error, turning a broken pipe into [`StoreError::BrokenPipe`].
    pub(crate) fn output(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            StoreError::BrokenPipe
        } else {
            StoreError::Output(e)
        }
    }

    pub(crate) fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
