//! Retention: old flows are deleted, old samples rolled up into hourly buckets.
//!
//! [`Store::apply_retention`] with `retain` and `now`:
//! - deletes the flows whose last record (their end, or for a flow that never
//!   got a final record, the last time it was written) is older than
//!   `now - retain`, and the samples whose bucket ended before that;
//! - merges 10-second samples that started more than [`ROLLUP_AFTER`] before
//!   `now` into 1-hour samples ([`ROLLUP_WIDTH`]) of the same series, summing
//!   their bytes: totals never change, only the time resolution of old data;
//! - deletes the series, processes, executables and runs nothing refers to
//!   any more.
//!
//! SQLite reuses the pages freed by deletions, so the file stops growing once
//! the data kept is stable; it does not shrink by itself (`VACUUM` does that).

use std::time::Duration;

use crate::error::StoreError;
use crate::store::Store;
use crate::timespec::bucket_start;

/// Samples older than this are rolled up.
pub const ROLLUP_AFTER: Duration = Duration::from_secs(2 * 86_400);

/// Width of rolled-up samples, in seconds.
pub const ROLLUP_WIDTH: i64 = 3_600;

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSummary {
    pub flows_deleted: usize,
    pub samples_deleted: usize,
    /// Fine samples merged into hourly ones.
    pub samples_rolled_up: usize,
}

impl Store {
    /// Applies the retention policy described in this module's header.
    pub fn apply_retention(
        &mut self,
        retain: Duration,
        now_unix_ns: u64,
    ) -> Result<RetentionSummary, StoreError> {
        let now_s = i64::try_from(now_unix_ns / 1_000_000_000).unwrap_or(i64::MAX);
        let retain_s = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
        let cutoff_s = now_s.saturating_sub(retain_s);
        let rollup_before = bucket_start(
            now_s.saturating_sub(ROLLUP_AFTER.as_secs() as i64),
            ROLLUP_WIDTH,
        );
        let current_run = self.run_id().unwrap_or(-1);
        let conn = &self.conn;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let pass = || -> rusqlite::Result<RetentionSummary> {
            let mut sum = RetentionSummary {
                flows_deleted: conn.execute(
                    "DELETE FROM flows WHERE coalesce(end_us, last_us) < ?1",
                    [cutoff_s.saturating_mul(1_000_000)],
                )?,
                samples_deleted: conn
                    .execute("DELETE FROM samples WHERE bucket + width <= ?1", [cutoff_s])?,
                samples_rolled_up: 0,
            };
            conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS rollup (
                    bucket INTEGER, series_id INTEGER, tx_bytes INTEGER, rx_bytes INTEGER);
                 DELETE FROM temp.rollup;",
            )?;
            conn.execute(
                "INSERT INTO temp.rollup
                 SELECT bucket - bucket % ?2, series_id, sum(tx_bytes), sum(rx_bytes)
                 FROM samples WHERE bucket < ?1 AND width < ?2
                 GROUP BY 1, 2",
                [rollup_before, ROLLUP_WIDTH],
            )?;
            sum.samples_rolled_up = conn.execute(
                "DELETE FROM samples WHERE bucket < ?1 AND width < ?2",
                [rollup_before, ROLLUP_WIDTH],
            )?;
            conn.execute(
                "INSERT INTO samples (bucket, series_id, width, tx_bytes, rx_bytes)
                 SELECT bucket, series_id, ?1, tx_bytes, rx_bytes FROM temp.rollup WHERE true
                 ON CONFLICT (bucket, series_id) DO UPDATE SET
                    tx_bytes = tx_bytes + excluded.tx_bytes,
                    rx_bytes = rx_bytes + excluded.rx_bytes,
                    width = max(width, excluded.width)",
                [ROLLUP_WIDTH],
            )?;
            conn.execute_batch(
                "DELETE FROM temp.rollup;
                 DELETE FROM series WHERE series_id NOT IN (SELECT series_id FROM samples);
                 DELETE FROM processes
                  WHERE process_id NOT IN
                        (SELECT process_id FROM flows WHERE process_id IS NOT NULL)
                    AND process_id NOT IN
                        (SELECT process_id FROM series WHERE process_id IS NOT NULL);
                 DELETE FROM executables
                  WHERE exe_id NOT IN (SELECT exe_id FROM processes WHERE exe_id IS NOT NULL);",
            )?;
            conn.execute(
                "DELETE FROM runs WHERE run_id <> ?1
                   AND run_id NOT IN (SELECT run_id FROM flows)
                   AND run_id NOT IN (SELECT run_id FROM processes)",
                [current_run],
            )?;
            Ok(sum)
        };
        let result = pass().and_then(|s| conn.execute_batch("COMMIT").map(|()| s));
        // Rows may be gone: the writer must look its ids up again.
        self.caches.clear_ids();
        match result {
            Ok(s) => Ok(s),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e.into())
            }
        }
    }
}
