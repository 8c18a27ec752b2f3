//! `procflow rules check` and `procflow rules explain`: no privileges needed.

use std::path::PathBuf;
use std::process::Command;

const PROCFLOW: &str = env!("CARGO_BIN_EXE_procflow");

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("pf-cli-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PROCFLOW).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"default = "allow"

[[rule]]
name = "lan-ok"
action = "allow"
remote = "10.1.0.0/16"

[[rule]]
name = "no-curl-to-lan"
action = "block"
exe = "*/curl"
remote = ["10.0.0.0/8", "fd00::/8"]
remote_port = "1-1024"
"#;

#[test]
fn check_prints_a_summary_and_exits_0() {
    let f = TempFile::new("good.toml", GOOD);
    let (code, out, err) = run(&["rules", "check", f.0.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 rules, default allow"), "{out}");
    assert!(out.contains("#0    allow lan-ok"), "{out}");
    assert!(out.contains("#1    block no-curl-to-lan"), "{out}");
}

#[test]
fn check_refuses_a_bad_file_with_file_line_and_column() {
    let f = TempFile::new(
        "bad.toml",
        "[[rule]]\nname = \"a\"\naction = \"block\"\nremote_port = \"8080-8000\"\n\
         [[rule]]\nname = \"b\"\naction = \"allow\"\nremote_prot = 1\n",
    );
    let path = f.0.to_str().unwrap();
    let (code, out, err) = run(&["rules", "check", path]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{path}:4:15: inverted port range")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{path}:8:1: unknown key `remote_prot`")),
        "{err}"
    );
    assert!(err.contains("refused: 2 errors"), "{err}");
}

#[test]
fn explain_names_the_deciding_rule_and_why_earlier_ones_do_not_match() {
    let f = TempFile::new("explain.toml", GOOD);
    let p = f.0.to_str().unwrap();
    let (code, out, err) = run(&[
        "rules",
        "explain",
        p,
        "--exe",
        "/usr/bin/curl",
        "--remote",
        "10.2.3.4:443",
        "--user",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("decision:   block by rule #1 `no-curl-to-lan` (line 8)"),
        "{out}"
    );
    assert!(
        out.contains("remote wants 10.1.0.0/16, connection has 10.2.3.4"),
        "{out}"
    );
    let (_, out, _) = run(&[
        "rules",
        "explain",
        p,
        "--exe",
        "/usr/bin/curl",
        "--remote",
        "[fd00::1]:2000",
    ]);
    assert!(
        out.contains("decision:   allow by default (no rule matches)"),
        "{out}"
    );
    let (_, out, _) = run(&[
        "rules",
        "explain",
        p,
        "--exe",
        "/usr/bin/wget",
        "--remote",
        "10.1.2.3:80",
        "--proto",
        "udp",
        "--direction",
        "in",
    ]);
    assert!(out.contains("allow by rule #0 `lan-ok`"), "{out}");
    let (code, _, err) = run(&["rules", "explain", p, "--exe", "/x", "--remote", "nonsense"]);
    assert_eq!(code, 1);
    assert!(err.contains("--remote nonsense"), "{err}");
}
