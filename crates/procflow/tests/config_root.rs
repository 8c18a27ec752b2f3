//! SIGHUP and the configuration file, on a running procflow: the settings
//! that can change while running change, the others are named as waiting
//! for a restart, and a refused file changes nothing (the monitor keeps
//! running with the settings in force, and says where the file is wrong).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn port_of(r: &Value, key: &str) -> u16 {
    r[key].as_u64().unwrap_or(0) as u16
}

#[test]
fn sighup_takes_the_configuration_file_and_a_refused_one_changes_nothing() {
    let p = Pair::new("cfghup", 175);
    let dir = tempfile::tempdir().unwrap();
    // Rules that no test traffic meets (TEST-NET-1, discard ports): the
    // point is which file is in force.
    let r1 = dir.path().join("first.rules.toml");
    let r2 = dir.path().join("second.rules.toml");
    for (f, port) in [(&r1, 9), (&r2, 19)] {
        std::fs::write(
            f,
            format!(
                "[[rule]]\nname = \"not-{port}\"\naction = \"block\"\nremote = \"192.0.2.1\"\n\
                 remote_port = {port}\n"
            ),
        )
        .unwrap();
    }
    let cfg = dir.path().join("procflow.toml");
    let elsewhere = dir.path().join("elsewhere.db");
    std::fs::write(
        &cfg,
        format!("interval = 60\nrules = {:?}\n", r1.to_str().unwrap()),
    )
    .unwrap();
    let pf = Procflow::start(&["--config", cfg.to_str().unwrap()]);
    pf.wait_stderr(5, &["settings: ", cfg.to_str().unwrap()]);
    let first = pf.wait_rules_ack(1);
    assert_eq!(first["path"], r1.to_str().unwrap(), "{first}");

    // A connection that stays open for the whole test.
    let (server, port) = serve(&p.b, &["tcp-serve", "--listen", &format!("{}:0", p.b4)]);
    let client = Reaped::new(
        p.a.command(TESTGEN)
            .args([
                "tcp-slow",
                "--connect",
                &format!("{}:{port}", p.b4),
                "--upload",
                "4000000",
                "--secs",
                "8",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ino = p.a.inode();
    let open_records = |recs: &[Value]| {
        recs.iter()
            .filter(|r| {
                r["type"] == "flow"
                    && r["state"] == "open"
                    && r["netns"].as_u64() == Some(ino)
                    && port_of(r, "remote_port") == port
            })
            .count()
    };
    // The flow's first record, then nothing for 1.5 s: interval = 60.
    let at_open =
        open_records(&pf.wait_records(5, "the flow's first record", |r| open_records(r) >= 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        open_records(&pf.records()),
        at_open,
        "interval = 60 wrote a periodic record within 1.5 s"
    );

    // interval and rules change at once; resolve waits for a restart; db
    // is the command line's (the harness gives --db), which overrides it.
    std::fs::write(
        &cfg,
        format!(
            "interval = 0.5\nrules = {:?}\nresolve = true\ndb = {:?}\n",
            r2.to_str().unwrap(),
            elsewhere.to_str().unwrap()
        ),
    )
    .unwrap();
    sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let second = pf.wait_rules_ack(2);
    assert_eq!(
        (&second["path"], &second["outcome"], &second["generation"]),
        (&r2.to_str().unwrap().into(), &"accepted".into(), &2.into()),
        "{second}"
    );
    pf.wait_stderr(5, &["SIGHUP: now in force: ", "interval", "rules"]);
    pf.wait_stderr(
        5,
        &[
            "SIGHUP: `resolve` changed to true",
            "takes effect when procflow restarts; until then false stays in force",
        ],
    );
    assert!(
        !pf.stderr.lock().unwrap().iter().any(|l| l.contains("`db`")),
        "the command line's --db overrides the file's"
    );
    let recs = pf.wait_records(5, "open records every 0.5 s", |r| {
        open_records(r) >= at_open + 3
    });
    let before = open_records(&recs);

    // A refused file: said where, and nothing changes.
    std::fs::write(&cfg, "interval = \"soon\"\nlog-kep = 2\n").unwrap();
    sh(&["kill", "-HUP", &pf.pid().to_string()]);
    pf.wait_stderr(
        5,
        &["SIGHUP: configuration refused, the settings in force stay in force"],
    );
    pf.wait_stderr(5, &[&format!("{}:1:12: `interval`", cfg.display())]);
    pf.wait_stderr(
        5,
        &[&format!("{}:2:1: unknown key `log-kep`", cfg.display())],
    );
    // The rules file in force is read again, as SIGHUP always does.
    let third = pf.wait_rules_ack(3);
    assert_eq!(
        (&third["path"], &third["outcome"]),
        (&r2.to_str().unwrap().into(), &"accepted".into()),
        "{third}"
    );
    pf.wait_records(5, "open records still every 0.5 s", |r| {
        open_records(r) >= before + 3
    });

    let out = client.take().wait_with_output().unwrap();
    assert!(out.status.success());
    finish(server);
    pf.wait_closed(&p.a, 1, "client", |f| port_of(f, "remote_port") == port);
    let recs = pf.stop();
    let last = recs
        .iter()
        .rfind(|r| {
            r["type"] == "flow"
                && r["netns"].as_u64() == Some(ino)
                && port_of(r, "remote_port") == port
        })
        .unwrap();
    assert_eq!(last["state"], "closed", "{last}");
    assert_eq!(u(last, "tx_payload"), 4_000_000, "{last}");
    assert!(!elsewhere.exists(), "the file's db was used over --db");
}

/// procflow, as root, takes settings and rules only from files that only
/// root can change: a configuration or rules file that its group or
/// others may write, or that another user owns, is refused at start and at
/// SIGHUP (the settings and rules in force stay).
#[test]
fn files_that_others_could_change_are_refused_at_start_and_at_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"not-9\"\naction = \"block\"\nremote = \"192.0.2.1\"\nremote_port = 9\n",
    )
    .unwrap();
    let cfg = dir.path().join("procflow.toml");
    std::fs::write(&cfg, format!("rules = {:?}\n", rules.to_str().unwrap())).unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let db = dir.path().join("never.db");
    let start = |extra: &[&str]| {
        let out = std::process::Command::new(PROCFLOW)
            .args(["run", "--db", db.to_str().unwrap(), "--no-api"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    require_root();
    mode(&cfg, 0o666);
    let (code, err) = start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:1:1: refused: the file's mode 0666",
            cfg.display()
        )),
        "{err}"
    );
    mode(&cfg, 0o644);
    sh(&["chown", "65534", cfg.to_str().unwrap()]);
    let (code, err) = start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");
    sh(&["chown", "0", cfg.to_str().unwrap()]);
    mode(&rules, 0o620);
    let (code, err) = start(&["--no-config", "--rules", rules.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused: the file's mode 0620"), "{err}");

    // Running: both are refused at SIGHUP and what is in force stays.
    mode(&rules, 0o644);
    let pf = Procflow::start(&["--config", cfg.to_str().unwrap()]);
    let first = pf.wait_rules_ack(1);
    assert_eq!(first["outcome"], "accepted", "{first}");
    std::fs::write(&cfg, "interval = 1\n").unwrap();
    mode(&cfg, 0o646);
    sh(&["kill", "-HUP", &pf.pid().to_string()]);
    pf.wait_stderr(5, &["SIGHUP: configuration refused"]);
    pf.wait_stderr(5, &["refused: the file's mode 0646"]);
    let second = pf.wait_rules_ack(2);
    assert_eq!(
        second["outcome"], "accepted",
        "the rules in force are read again: {second}"
    );
    mode(&rules, 0o666);
    sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let third = pf.wait_rules_ack(3);
    assert_eq!(
        (&third["outcome"], &third["generation"]),
        (&"refused".into(), &2.into()),
        "{third}"
    );
    assert!(
        third["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused: the file's mode 0666"),
        "{third}"
    );
    pf.stop();
}
