//! The systemd unit (packaging/procflow.service): `systemd-analyze verify`
//! and `security` accept it, and procflow does its work with only the
//! unit's capabilities, its supplementary group and NoNewPrivileges (the
//! parts of the unit that apply outside systemd), parsed from the unit so
//! that the two cannot drift. docs/service.md explains the unit.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/procflow.service")
}

/// The values of `key=` in the unit (every line that sets it, in order).
fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn unit_value(key: &str) -> String {
    let v = unit_values(key);
    assert_eq!(
        v.len(),
        1,
        "packaging/procflow.service sets {key}= {} times",
        v.len()
    );
    v.into_iter().next().unwrap()
}

/// The unit's capabilities as setpriv names them ("sys_admin" ...); the
/// bounding and ambient sets must be the same.
fn unit_caps() -> Vec<String> {
    let bounding = unit_value("CapabilityBoundingSet");
    assert_eq!(
        bounding,
        unit_value("AmbientCapabilities"),
        "the unit's bounding and ambient capability sets differ"
    );
    bounding
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("capability {c} in the unit has no CAP_ prefix"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// setpriv with the unit's capabilities (inheritable, ambient, bounding),
/// supplementary groups and no_new_privs: what systemd applies.
fn setpriv_prefix() -> Vec<String> {
    assert_eq!(unit_value("NoNewPrivileges"), "yes");
    let caps: String = std::iter::once("-all".to_string())
        .chain(unit_caps().iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let groups = unit_value("SupplementaryGroups");
    for g in groups.split_whitespace() {
        // The package creates the group; by hand, docs/service.md says to.
        let known = Command::new("getent")
            .args(["group", g])
            .output()
            .is_ok_and(|o| o.status.success());
        if !known {
            sh(&["groupadd", "--system", g]);
        }
    }
    vec![
        "setpriv".into(),
        format!(
            "--groups={}",
            groups.split_whitespace().collect::<Vec<_>>().join(",")
        ),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
        "--no-new-privs".into(),
    ]
}

/// The unit with ExecStart pointing at the built binary, in a temporary
/// directory (systemd-analyze checks that the command exists).
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let exec = "ExecStart=/usr/bin/procflow ";
    assert!(text.contains(exec), "the unit does not start {exec}");
    let p = dir.join("procflow.service");
    std::fs::write(&p, text.replace(exec, &format!("ExecStart={PROCFLOW} "))).unwrap();
    p
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze is needed (scripts/install-deps.sh installs systemd): {e}")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn systemd_analyze_verifies_the_unit_and_scores_it_3_or_lower() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(tmp.path());
    let (ok, out, err) = analyze(&["verify", "--man=no"], &unit);
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    // A unit error is caught: an unknown key is only a warning, but one.
    let mut bad = std::fs::read_to_string(&unit).unwrap();
    bad = bad.replace("ProtectClock=yes", "ProtectClok=yes");
    let bad_unit = tmp.path().join("bad").join("procflow.service");
    std::fs::create_dir_all(bad_unit.parent().unwrap()).unwrap();
    std::fs::write(&bad_unit, bad).unwrap();
    let (_, out, err) = analyze(&["verify", "--man=no"], &bad_unit);
    assert!(
        err.contains("Unknown key") && err.contains("ProtectClok"),
        "verify did not report a misspelt key: {out}{err}"
    );

    let (ok, out, err) = analyze(&["security", "--offline=true", "--no-pager"], &unit);
    assert!(ok, "systemd-analyze security: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure score in: {out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    eprintln!("systemd-analyze security --offline=true: exposure {score}");
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{out}");
}

/// A Python process in `ns` running `script`, once it printed its first
/// line; the receiver gets its next line.
fn python(ns: &Netns, script: &str) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    let mut child = Reaped::new(
        ns.command("python3")
            .args(["-u", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(
        !first.is_empty(),
        "the Python process in {} printed nothing",
        ns.name
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
    });
    (child, rx)
}

/// connect() from `ns` to ip:port; "ok" or the errno's name.
fn connect_result(ns: &Netns, ip: &str, port: u16) -> String {
    let script = format!(
        "import socket, errno\ns = socket.socket()\ns.settimeout(5)\n\
         try:\n    s.connect(('{ip}', {port})); print('ok')\n\
         except OSError as e:\n    print(errno.errorcode.get(e.errno, e))"
    );
    let out = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn procflow_with_only_the_units_capabilities_tracks_scans_enforces_and_serves() {
    let p = Pair::new("svc", 170);
    let prefix = setpriv_prefix();
    eprintln!("running procflow under: {}", prefix.join(" "));
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let (b4, blocked_port) = (p.b4.to_string(), 7170u16);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[[rule]]\nname = \"block-{blocked_port}\"\naction = \"block\"\nproto = \"tcp\"\n\
             remote_port = {blocked_port}\n"
        ),
    )
    .unwrap();

    // A connection open before procflow starts, in namespaces of its own.
    let (before, after) = (123_456u64, 65_432u64);
    let (pre_server, pre_port) = serve(
        &p.b,
        &[
            "tcp-phased-serve",
            "--listen",
            &format!("{b4}:0"),
            "--before",
            &before.to_string(),
            "--after",
            &after.to_string(),
        ],
    );
    let pre = Phased::start(
        p.a.command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", TESTGEN])
            .args([
                "tcp-phased",
                "--connect",
                &format!("{b4}:{pre_port}"),
                "--before",
                &before.to_string(),
                "--after",
                &after.to_string(),
            ]),
    );
    assert!(pre.first.starts_with("phase1"), "{}", pre.first);

    // An established connection the rules block, closed by
    // --enforce-existing (sock_diag SOCK_DESTROY: CAP_NET_ADMIN).
    let (_listener, _) = python(
        &p.b,
        &format!(
            "import socket, time\nl = socket.socket()\nl.bind(('{b4}', {blocked_port}))\n\
             l.listen()\nprint('listening')\nc, _ = l.accept()\ntime.sleep(60)"
        ),
    );
    let (_victim, victim_end) = python(
        &p.a,
        &format!(
            "import socket, errno\ns = socket.create_connection(('{b4}', {blocked_port}))\n\
             print('connected')\ntry:\n    s.recv(1); print('eof')\n\
             except OSError as e:\n    print(errno.errorcode.get(e.errno, e))"
        ),
    );

    let pf = Procflow::start_with_prefix(
        &prefix,
        &["--rules", rules.to_str().unwrap(), "--enforce-existing"],
    );
    pf.wait_rules_ack(1);
    let closed = victim_end
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the established connection the rules block was not closed");
    assert_eq!(closed.trim(), "ECONNABORTED", "its owner sees it aborted");

    // Exact counts of a new TCP connection, against nftables.
    let (up, down) = (1_000_000u64, 300_000u64);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{b4}:0"),
            "--download",
            &down.to_string(),
        ],
    );
    let c_in = nft_counter(
        &p.b,
        "input",
        "cin",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let c_out = nft_counter(
        &p.a,
        "input",
        "cout",
        &format!("ip saddr {b4} tcp sport {port}"),
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{b4}:{port}"),
            "--upload",
            &up.to_string(),
        ],
    );
    finish(server);
    assert_eq!((u(&cl, "sent"), u(&cl, "received")), (up, down));

    // The connection from before the start finishes.
    let pre_client = pre.go();
    let pre_server = finish(pre_server);

    // A blocked connect: EPERM, and a verdict record.
    assert_eq!(connect_result(&p.a, &b4, blocked_port), "EPERM");
    pf.wait_records(10, "the verdict of the blocked connect", |recs| {
        recs.iter()
            .any(|r| r["type"] == "verdict" && r["remote_port"] == blocked_port)
    });

    // The API answers a member of its group (not root, so `ps` cannot fall
    // back to loading the programs itself): the chown of the socket
    // worked without CAP_CHOWN.
    let ps = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--groups=procflow",
            PROCFLOW,
        ])
        .args(["ps", "--json", "--api"])
        .arg(&pf.api)
        .output()
        .unwrap();
    assert!(
        ps.status.success(),
        "procflow ps as a member of group procflow: {}",
        String::from_utf8_lossy(&ps.stderr)
    );
    let ps: Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(ps.is_array(), "procflow ps --json: {ps}");

    pf.wait_closed(&p.a, 1, "client", |f| u(f, "remote_port") == port as u64);
    pf.wait_closed(&p.a, 1, "startup client", |f| {
        u(f, "remote_port") == pre_port as u64
    });
    let (in_pk, in_by) = c_in.read();
    let (out_pk, out_by) = c_out.read();

    // SIGTERM, as systemd stops it: final records, stats, exit 0, quickly.
    let (recs, took) = pf.stop_with("TERM");
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(
        took.as_secs_f64() < 5.0,
        "procflow took {took:?} to stop on SIGTERM"
    );
    assert_eq!(
        recs.last().unwrap()["type"],
        "stats",
        "the last record is the stats"
    );

    let flows = final_flows(&recs);
    let c = one_flow(&flows, &p.a, "client", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == port as u64
    });
    assert_eq!(
        (c["state"].as_str(), c["origin"].as_str()),
        (Some("closed"), Some("connect"))
    );
    assert_eq!(c["process"]["pid"].as_u64(), cl["pid"].as_u64());
    assert_eq!(c["process"]["exe"], TESTGEN);
    assert_eq!((u(c, "tx_payload"), u(c, "rx_payload")), (up, down), "{c}");
    assert_eq!(
        (u(c, "tx_packets"), u(c, "tx_bytes")),
        (in_pk, in_by),
        "tx vs nftables: {c}"
    );
    assert_eq!(
        (u(c, "rx_packets"), u(c, "rx_bytes")),
        (out_pk, out_by),
        "rx vs nftables: {c}"
    );

    for (ns, key, pid, uid) in [
        (&p.a, "remote_port", &pre_client, 65534),
        (&p.b, "local_port", &pre_server, 0),
    ] {
        let f = one_flow(&flows, ns, "startup", |f| {
            f["proto"] == "tcp" && u(f, key) == pre_port as u64
        });
        assert_eq!(f["origin"], "startup", "{f}");
        assert_eq!(f["process"]["pid"].as_u64(), pid["pid"].as_u64(), "{f}");
        assert_eq!(f["process"]["uid"], uid, "{f}");
        assert_eq!(f["process"]["exe"], TESTGEN, "{f}");
        let b = &f["before_start"];
        assert_eq!(
            (u(b, "tx_payload"), u(b, "rx_payload")),
            (before, before),
            "{f}"
        );
        assert_eq!(
            (u(f, "tx_payload"), u(f, "rx_payload")),
            (after, after),
            "{f}"
        );
    }

    let v: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["remote_port"] == blocked_port)
        .collect();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["rule"], format!("block-{blocked_port}"));
    assert_eq!(v[0]["netns"].as_u64(), Some(p.a.inode()));

    let st = stats(&recs);
    assert_eq!(st["scan"]["failed"], serde_json::json!([]), "{st}");
    assert_eq!(st["programs_refused"], serde_json::json!([]), "{st}");
    assert_eq!(st["events_lost"], 0, "{st}");
    assert!(u(&st["api"], "snapshots_served") >= 1, "{st}");
}
