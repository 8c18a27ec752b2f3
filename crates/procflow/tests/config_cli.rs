//! The configuration file from the command line: `procflow config check`
//! and `show`, and `procflow run` refusing a bad file before it loads or
//! creates anything. No privileges needed.

use std::path::Path;
use std::process::Command;

const PROCFLOW: &str = env!("CARGO_BIN_EXE_procflow");

fn procflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PROCFLOW).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/procflow.toml")
}

#[test]
fn check_reports_every_problem_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("procflow.toml");
    std::fs::write(
        &f,
        "# settings\nlog = \"/tmp/x.jsonl\"\nlog-kep = 3\n\ninterval = \"soon\"\nno-db = 1\n",
    )
    .unwrap();
    let (code, out, err) = procflow(&["config", "check", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let name = f.display();
    for want in [
        format!("{name}:3:1: unknown key `log-kep`; did you mean `log-keep`?"),
        format!("{name}:5:12: `interval`: \"soon\" is not a number of seconds"),
        format!("{name}:6:9: `no-db` must be true or false, found an integer"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(out.is_empty(), "a refused file prints no settings: {out}");
}

#[test]
fn run_refuses_a_bad_file_before_it_creates_or_loads_anything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        format!("db = {:?}\nretain = \"forever\"\n", db.to_str().unwrap()),
    )
    .unwrap();
    let (code, _, err) = procflow(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 2, "refused settings are a usage error: {err}");
    assert!(
        err.contains(&format!("{}:2:10: `retain`", f.display())),
        "{err}"
    );
    assert!(
        !db.exists(),
        "a refused configuration created {}",
        db.display()
    );
    let (code, _, err) = procflow(&["run", "--config", "/nonexistent/procflow.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/nonexistent/procflow.toml:1:1: cannot read"),
        "{err}"
    );
    let (code, _, err) = procflow(&["run", "--config", f.to_str().unwrap(), "--no-config"]);
    assert_eq!(code, 2, "--config with --no-config is a usage error: {err}");
}

#[test]
fn the_command_line_overrides_the_file_and_show_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("procflow.toml");
    std::fs::write(
        &f,
        "log = \"/tmp/a.jsonl\"\nlog-keep = 3\ndb = \"/tmp/a.db\"\n",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let (code, out, err) = procflow(&["config", "show", file, "--", "--log-keep", "8", "--no-db"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("log = \"/tmp/a.jsonl\"  # {file}:1:1")),
        "{out}"
    );
    assert!(out.contains("log-keep = 8  # command line"), "{out}");
    assert!(out.contains("no-db = true  # command line"), "{out}");
    assert!(
        out.contains(
            "# db = \"/var/lib/procflow/procflow.db\"  # default, not in force: `no-db` is set"
        ),
        "{out}"
    );
    let shown = dir.path().join("shown.toml");
    std::fs::write(&shown, &out).unwrap();
    let (code, again, err) = procflow(&["config", "show", shown.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let values = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  #").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        values(&out),
        values(&again),
        "show's output read back differs:\n{again}"
    );
    let (code, table, err) = procflow(&["config", "check", shown.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is valid"), "{err}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("log-keep") && l.contains(" 8 ")),
        "{table}"
    );
    // Options after -- are run's and are checked like them.
    let (code, _, err) = procflow(&["config", "check", file, "--", "--log-keep", "many"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--log-keep"), "{err}");
}

#[test]
fn the_packaged_example_is_valid_and_changes_no_default() {
    let (code, table, err) = procflow(&["config", "check", example().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = table.lines().collect();
    let (_, help, _) = procflow(&["run", "--help"]);
    let options = help.matches("\n      --").count();
    // Every option of run but --config and --no-config, each at its default.
    assert_eq!(rows.len(), options - 2, "{table}\n{help}");
    for r in rows {
        assert!(r.ends_with("default"), "the example sets {r}");
    }
}
