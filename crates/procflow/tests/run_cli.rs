//! `procflow run` and `procflow report` refuse bad flags with a usage error
//! (exit 2, clap's message naming the flag) before anything is loaded or
//! created: no privileges needed.

use std::process::Command;

const PROCFLOW: &str = env!("CARGO_BIN_EXE_procflow");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(PROCFLOW).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A database path that must never be created by a refused command line.
fn untouched_db(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("pf-cli-{}-{tag}.db", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn interval_and_duration_refuse_nan_infinity_negative_and_zero() {
    let db = untouched_db("periods");
    let db = db.to_str().unwrap();
    for flag in ["--interval", "--duration"] {
        for bad in [
            "NaN", "inf", "-inf", "infinity", "-1", "-0.5", "0", "0.0", "0s", "1e3", "10x", "",
        ] {
            let arg = format!("{flag}={bad}");
            let (code, err) = run(&["run", "--db", db, &arg]);
            assert_eq!(code, 2, "{arg}: {err}");
            assert!(err.contains(flag), "{arg}: {err}");
            assert!(err.contains("invalid value"), "{arg}: {err}");
        }
    }
    assert!(
        !std::path::Path::new(db).exists(),
        "a refused run created {db}"
    );
}

#[test]
fn interval_and_duration_take_seconds_and_durations() {
    // `--help` after the flags: clap checks every value before it prints
    // the help (a bad value before it exits 2), and nothing runs.
    for good in ["0.5", "10", "30s", "1h30m", "2d"] {
        let db = untouched_db("good");
        let (code, err) = run(&[
            "run",
            "--db",
            db.to_str().unwrap(),
            "--interval",
            good,
            "--duration",
            good,
            "--help",
        ]);
        assert_eq!(code, 0, "{good}: {err}");
    }
}

#[test]
fn log_max_size_refuses_sizes_that_overflow() {
    for bad in [
        "18446744073709551616",
        "17179869184G",
        "99999999999999999999M",
        "5X",
        "M",
    ] {
        let (code, err) = run(&["run", "--log", "-", "--log-max-size", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--log-max-size"), "{bad}: {err}");
    }
    let (code, err) = run(&["run", "--log", "-", "--log-max-size", "17179869184G"]);
    assert_eq!(code, 2);
    assert!(err.contains("too large"), "{err}");
}

#[test]
fn log_options_without_a_log_are_usage_errors() {
    for args in [
        &["run", "--log-max-size", "10M"][..],
        &["run", "--log-keep", "3"][..],
        &["run", "--log-max-size", "0", "--log-keep", "1"][..],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--log <FILE>"), "{args:?}: {err}");
    }
}

#[test]
fn db_options_with_no_db_are_usage_errors() {
    for (args, flag) in [
        (&["run", "--no-db", "--db", "/tmp/x.db"][..], "--db"),
        (&["run", "--no-db", "--retain", "7d"][..], "--retain"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains("--no-db"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn report_refuses_rules_changes_with_traffic_options() {
    let db = untouched_db("report");
    let db = db.to_str().unwrap();
    for args in [
        &["report", "--db", db, "--rules-changes", "--verdicts"][..],
        &["report", "--db", db, "--rules-changes", "--by", "exe"][..],
        &["report", "--db", db, "--verdicts", "--chart", "x.svg"][..],
        &["report", "--db", db, "--action", "maybe"][..],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
