//! procflow's flow history: the embedded SQLite store, the JSON-lines log,
//! and the report queries behind `procflow report`.
//!
//! This crate consumes the [`FlowRecord`](procflow_core::FlowRecord)s,
//! verdict, rules and stats records that the daemon produces; it never reaches back into the flow table or the kernel
//! side, and depends on no procflow crate but `core`. The schema is described
//! in `crates/store/README.md`.
#![forbid(unsafe_code)]

pub mod enforcement;
pub mod error;
pub mod json_log;
pub mod report;
pub mod retention;
pub mod schema;
pub use procflow_core::services;
pub mod store;
pub mod timespec;

pub use error::StoreError;
pub use json_log::{JsonLog, LogStats};
pub use report::{run_report, ReportArgs, DEFAULT_DB_PATH};
pub use retention::RetentionSummary;
pub use store::{FoldPolicy, Store, WriteStats};
