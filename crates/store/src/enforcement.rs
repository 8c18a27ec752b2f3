//! The writer side of what the rules did: blocked attempts (`verdicts`)
//! and loads and reloads of the rules file (`rules_changes`), with the
//! attempt's process stored once in `processes` like a flow's owner.
//!
//! Allow decisions are not rows here: they are the `verdict` and `rule` of
//! the flow they let through.

use procflow_core::{RulesRecord, VerdictRecord};
use rusqlite::params;

use crate::error::StoreError;
use crate::store::{db_u64, direction_str, verdict_str, Store};
use crate::timespec;

impl Store {
    /// Writes verdict records and rules records in one transaction and
    /// returns how many were written; on failure nothing of them is kept
    /// (as with [`Store::write`]).
    pub fn write_enforcement(
        &mut self,
        verdicts: &[VerdictRecord],
        rules: &[RulesRecord],
        now_unix_ns: u64,
    ) -> Result<usize, StoreError> {
        let n = verdicts.len() + rules.len();
        if n == 0 {
            return Ok(0);
        }
        self.batch("verdict and rules records", n, |s| {
            let now_us = db_u64(now_unix_ns / 1_000);
            let run_id = s.ensure_run(now_us)?;
            for v in verdicts {
                s.write_verdict(run_id, v, now_us)?;
            }
            for r in rules {
                s.conn
                    .prepare_cached(
                        "INSERT INTO rules_changes (run_id, time_us, generation, outcome, path,
                            rules, error)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        run_id,
                        timespec::parse_rfc3339_us(&r.time).unwrap_or(now_us),
                        db_u64(r.generation),
                        r.outcome.as_str(),
                        r.path,
                        db_u64(r.rules as u64),
                        r.error,
                    ])?;
            }
            Ok(())
        })
    }

    fn write_verdict(
        &mut self,
        run_id: i64,
        v: &VerdictRecord,
        now_us: i64,
    ) -> rusqlite::Result<()> {
        let process_id = self.process_id(run_id, &v.process, now_us)?;
        self.conn
            .prepare_cached(
                "INSERT INTO verdicts (run_id, time_us, process_id, action, rule, rule_index,
                    generation, hook, proto, family, direction, local_ip, local_port,
                    remote_ip, remote_port, netns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                run_id,
                timespec::parse_rfc3339_us(&v.time).unwrap_or(now_us),
                process_id,
                verdict_str(v.verdict),
                v.rule,
                v.rule_index.map(|i| db_u64(i as u64)),
                db_u64(v.generation),
                v.hook,
                v.proto.to_string(),
                v.family,
                direction_str(v.direction),
                v.local_ip.to_string(),
                v.local_port,
                v.remote_ip.to_string(),
                v.remote_port,
                db_u64(v.netns),
            ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use procflow_core::flow::{Direction, Proto, Verdict};
    use procflow_core::{ProcessIdentity, RulesOutcome};

    use super::*;

    fn attempt(i: u16) -> VerdictRecord {
        VerdictRecord {
            kind: VerdictRecord::KIND,
            time: "2026-11-18T11:00:00.5Z".into(),
            verdict: Verdict::Block,
            rule: Some("no-curl".into()),
            rule_index: Some(0),
            generation: 1,
            hook: "connect",
            proto: Proto::Tcp,
            family: 4,
            direction: Direction::Out,
            local_ip: "10.0.0.1".parse().unwrap(),
            local_port: 40_000 + i,
            remote_ip: "10.0.0.2".parse().unwrap(),
            remote_port: 443,
            process: ProcessIdentity {
                pid: 7,
                ppid: 1,
                uid: 0,
                user: Some("root".into()),
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                cmdline: Some("curl https://10.0.0.2/".into()),
                cgroup: None,
                exe_unknown: None,
            },
            netns: 1,
            socket: 99,
        }
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn attempts_that_cannot_be_written_are_counted_and_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("procflow.db")).unwrap();
        let now = 1_795_000_000_000_000_000;
        store.write_enforcement(&[attempt(0)], &[], now).unwrap();
        assert_eq!(count(&store, "processes"), 1);
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
        let big: Vec<VerdictRecord> = (1..=5_000).map(attempt).collect();
        let rules = [RulesRecord {
            kind: RulesRecord::KIND,
            time: "2026-11-18T11:00:01Z".into(),
            generation: 2,
            outcome: RulesOutcome::Accepted,
            path: "rules.toml".into(),
            rules: 1,
            error: None,
        }];
        let err = store.write_enforcement(&big, &rules, now).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(
            err.to_string()
                .contains("could not write 5001 verdict and rules records"),
            "{err}"
        );
        let st = store.stats();
        assert_eq!((st.batches_failed, st.records_failed), (1, 5_001));
        assert_eq!(count(&store, "verdicts"), 1);
        assert_eq!(count(&store, "rules_changes"), 0);
        store
            .conn
            .query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))
            .unwrap();
        store.write_enforcement(&big, &rules, now).unwrap();
        assert_eq!(count(&store, "verdicts"), 5_001);
        assert_eq!(count(&store, "rules_changes"), 1);
        // One process, stored once for all its attempts.
        assert_eq!(count(&store, "processes"), 1);
        assert_eq!(store.stats().records_written, 1 + 5_001);
        store.integrity_check().unwrap();
    }
}
