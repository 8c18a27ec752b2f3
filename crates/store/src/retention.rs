//! Retention: old flows and samples are deleted; hourly totals outlive the
//! fine samples.
//!
//! [`Store::apply_retention`] with `retain` and `now`:
//! - deletes the flows whose last record (their end, or for a flow that never
//!   got a final record, the last time it was written) is older than
//!   `now - retain`, and the hourly totals of hours that ended before that;
//! - deletes the blocked attempts and rules loads older than `now - retain`;
//! - deletes the 10-second samples that started more than [`FINE_FOR`]
//!   before `now` (on the hour): older traffic is kept in the hourly totals
//!   only, which the writer fills beside the samples, so totals never change,
//!   only the time resolution of old data;
//! - deletes the series and processes not used for more than `retain` (and
//!   two or three hours of margin), then the executables and runs nothing
//!   refers to any more (a run's row, with its stats, is kept for `retain`
//!   after it ended).
//!
//! Every step uses an index or a primary-key range, so a pass costs what it
//! deletes, not the size of the store.
//!
//! SQLite reuses the pages freed by deletions, so the file stops growing once
//! the data kept is stable; it does not shrink by itself (`VACUUM` does that).

use std::time::Duration;

use crate::error::StoreError;
use crate::store::{Store, HOUR_SECONDS};
use crate::timespec::bucket_start;

/// How long 10-second samples are kept; hourly totals are kept for the
/// whole retention time.
pub const FINE_FOR: Duration = Duration::from_secs(2 * 86_400);

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSummary {
    pub flows_deleted: usize,
    /// 10-second samples deleted (their traffic stays in the hourly totals
    /// unless those were deleted too).
    pub samples_deleted: usize,
    pub hours_deleted: usize,
    /// Blocked attempts deleted.
    pub verdicts_deleted: usize,
    /// Records of rules loads deleted.
    pub rules_changes_deleted: usize,
}

/// The last flow row that started before `cutoff_us`, found by bisecting
/// the row ids: rows are added when flows first appear, so their start times
/// grow with their ids (nearly: a flow found at start-up starts earlier).
/// Deleting only up to that row keeps a pass from reading the whole table; a
/// row left behind by the "nearly" is deleted by a later pass.
fn rows_started_before(conn: &rusqlite::Connection, cutoff_us: i64) -> rusqlite::Result<i64> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(flow_row), max(flow_row) FROM flows", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(mut hi)) = (lo, hi) else {
        return Ok(0);
    };
    let mut start_at = conn.prepare_cached(
        "SELECT start_us FROM flows WHERE flow_row >= ?1 ORDER BY flow_row LIMIT 1",
    )?;
    let mut start = |row: i64| -> rusqlite::Result<i64> { start_at.query_row([row], |r| r.get(0)) };
    if start(lo)? >= cutoff_us {
        return Ok(lo - 1);
    }
    if start(hi)? < cutoff_us {
        return Ok(hi);
    }
    // start(lo) < cutoff <= start(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if start(mid)? < cutoff_us {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
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
        let fine_from = bucket_start(
            now_s.saturating_sub(FINE_FOR.as_secs() as i64),
            HOUR_SECONDS,
        )
        .max(cutoff_s);
        let current_run = self.run_id().unwrap_or(-1);
        let conn = &self.conn;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let pass = || -> rusqlite::Result<RetentionSummary> {
            let cutoff_us = cutoff_s.saturating_mul(1_000_000);
            let last_row = rows_started_before(conn, cutoff_us)?;
            let sum = RetentionSummary {
                flows_deleted: conn.execute(
                    "DELETE FROM flows WHERE flow_row <= ?2 AND coalesce(end_us, last_us) < ?1",
                    [cutoff_us, last_row],
                )?,
                samples_deleted: conn
                    .execute("DELETE FROM samples WHERE bucket < ?1", [fine_from])?,
                hours_deleted: conn.execute(
                    "DELETE FROM hourly WHERE hour <= ?1",
                    [cutoff_s.saturating_sub(HOUR_SECONDS)],
                )?,
                verdicts_deleted: conn
                    .execute("DELETE FROM verdicts WHERE time_us < ?1", [cutoff_us])?,
                rules_changes_deleted: conn
                    .execute("DELETE FROM rules_changes WHERE time_us < ?1", [cutoff_us])?,
            };
            // Series and processes unused for a while: the writer keeps the
            // last_seen_us of those in use fresh to within minutes, so these
            // margins make sure nothing kept refers to them (a kept hourly row
            // to a series, a kept series or flow to a process).
            conn.execute(
                "DELETE FROM series WHERE last_seen_us < ?1",
                [cutoff_us.saturating_sub(2 * HOUR_SECONDS * 1_000_000)],
            )?;
            let processes = conn.execute(
                "DELETE FROM processes WHERE last_seen_us < ?1",
                [cutoff_us.saturating_sub(3 * HOUR_SECONDS * 1_000_000)],
            )?;
            if processes > 0 {
                conn.execute(
                    "DELETE FROM executables WHERE exe_id NOT IN
                        (SELECT exe_id FROM processes WHERE exe_id IS NOT NULL)",
                    [],
                )?;
            }
            // A run's row (and its stats) is kept for the retention time
            // after it ended, and while anything refers to it. Verdicts
            // need no check of their own: each refers to a process of its
            // run, which outlives it (see above).
            conn.execute(
                "DELETE FROM runs WHERE run_id <> ?1
                   AND coalesce(ended_us, started_us) < ?2
                   AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.run_id = runs.run_id)
                   AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.run_id = runs.run_id)
                   AND NOT EXISTS (SELECT 1 FROM rules_changes c WHERE c.run_id = runs.run_id)",
                [current_run, cutoff_us],
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
