//! procflow's flow history: the embedded SQLite store and report queries.
#![forbid(unsafe_code)]
