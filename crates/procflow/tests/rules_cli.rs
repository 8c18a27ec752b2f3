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

/// `n` rules, rule `i` with the condition `cond(i)` on line `4 * i + 4`.
fn many(n: usize, cond: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\naction = \"block\"\n{}\n",
                cond(i)
            )
        })
        .collect()
}

#[test]
fn check_refuses_more_distinct_values_than_the_kernel_tables_hold() {
    // 1,024 distinct comms are 1,025 entries of the kernel's 1,024-entry
    // comm table (one entry is the mask of comms no rule names); likewise
    // users. 1,025 cgroups: one more than the cgroup table.
    for (what, n, cond, limit) in [
        (
            "`comm` values",
            1024,
            &(|i| format!("comm = \"c{i}\"")) as &dyn Fn(usize) -> String,
            1023,
        ),
        (
            "`user` values (uids)",
            1024,
            &|i| format!("user = {}", 20000 + i),
            1023,
        ),
    ] {
        let f = TempFile::new("limit.toml", &many(n, cond));
        let (code, _, err) = run(&["rules", "check", f.0.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        let line = 4 * (n - 1) + 4;
        assert!(
            err.contains(&format!(
                "limit.toml:{line}:8: too many distinct {what}: {n} in the file, but the \
                 kernel's"
            )) && err.contains(&format!(
                "holds at most {limit}; this is the first one over"
            )),
            "{err}"
        );
        let ok = TempFile::new("fits.toml", &many(n - 1, cond));
        let (code, _, err) = run(&["rules", "check", ok.0.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    // More than 1,024 rules are refused before anything else.
    let f = TempFile::new("cg.toml", &many(1025, |i| format!("cgroup = \"/c{i}\"")));
    let (code, _, err) = run(&["rules", "check", f.0.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("too many rules: 1025 (at most 1024)"), "{err}");
    let f = TempFile::new("cg.toml", &many(1024, |i| format!("cgroup = \"/c{i}\"")));
    let (code, _, err) = run(&["rules", "check", f.0.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_of_200000_rules_takes_seconds() {
    let f = TempFile::new(
        "big.toml",
        &many(200_000, |i| {
            format!("remote = \"10.{}.{}.0/24\"", i / 256 % 256, i % 256)
        }),
    );
    let t = std::time::Instant::now();
    let (code, _, err) = run(&["rules", "check", f.0.to_str().unwrap()]);
    let took = t.elapsed();
    assert_eq!(code, 1);
    assert!(
        err.contains("big.toml:4097:1: too many rules: 200000"),
        "{err}"
    );
    assert!(took.as_secs() < 15, "took {took:?}");
}
