//! Root end-to-end tests of the flow history: real traffic recorded by
//! `procflow run` into its store, then `procflow report`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn report(db: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(PROCFLOW)
        .args(["report", "--db"])
        .arg(db)
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn report_by_exe_and_remote_equals_ground_truth() {
    let p = Pair::new("report", 30);
    // A second executable: the generator copied under another name.
    let dir = std::env::temp_dir().join(format!("pf-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("othergen");
    std::fs::copy(TESTGEN, &other).unwrap();
    let other_s = other.to_str().unwrap().to_string();

    let pf = Procflow::start(&[]);
    let mut truth = Vec::new();
    for (exe, up, down) in [
        (TESTGEN, 300_000u64, 20_000u64),
        (other_s.as_str(), 111_111, 7_777),
    ] {
        for (remote, fam) in [(p.b4, "ip"), (p.b6, "ip6")] {
            let host = if fam == "ip" {
                remote.to_string()
            } else {
                format!("[{remote}]")
            };
            let (server, port) = serve(
                &p.b,
                &[
                    "tcp-serve",
                    "--listen",
                    &format!("{host}:0"),
                    "--download",
                    &down.to_string(),
                ],
            );
            let tag = format!("{port}");
            let tx = nft_counter(
                &p.b,
                "input",
                &format!("tx{tag}"),
                &format!(
                    "{fam} saddr {} tcp dport {port}",
                    if fam == "ip" { p.a4 } else { p.a6 }
                ),
            );
            let rx = nft_counter(
                &p.a,
                "input",
                &format!("rx{tag}"),
                &format!(
                    "{fam} daddr {} tcp sport {port}",
                    if fam == "ip" { p.a4 } else { p.a6 }
                ),
            );
            let out =
                p.a.command(exe)
                    .args([
                        "tcp-send",
                        "--connect",
                        &format!("{host}:{port}"),
                        "--upload",
                        &up.to_string(),
                    ])
                    .output()
                    .unwrap();
            assert!(out.status.success());
            finish(server);
            std::thread::sleep(std::time::Duration::from_millis(150));
            truth.push((
                exe.to_string(),
                remote.to_string(),
                tx.read().1,
                rx.read().1,
            ));
        }
    }
    let (_recs, db) = pf.stop_keep_db();
    let doc = report(&db, &["--by", "exe,remote"]);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = doc["rows"].as_array().unwrap();
    for (exe, remote, tx, rx) in &truth {
        let row = rows
            .iter()
            .find(|r| r["exe"] == exe.as_str() && r["remote"] == remote.as_str())
            .unwrap_or_else(|| panic!("no row for {exe} -> {remote} in {doc:#}"));
        assert_eq!(
            (u(row, "tx_bytes"), u(row, "rx_bytes")),
            (*tx, *rx),
            "{exe} -> {remote}: {row}"
        );
    }
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

#[test]
fn remote_name_from_a_dns_answer_is_on_the_flow_and_in_report_by_host() {
    let p = Pair::new("dns", 31);
    let pf = Procflow::start(&[]);
    let (dns, _) = serve(
        &p.b,
        &[
            "dns-serve",
            "--bind",
            &format!("{}:53", p.b4),
            "--answer",
            &p.b4.to_string(),
        ],
    );
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            "2000",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "dns-connect",
            "--server",
            &format!("{}:53", p.b4),
            "--name",
            "files.example.test",
            "--port",
            &port.to_string(),
            "--upload",
            "50000",
        ],
    );
    assert_eq!(cl["address"], p.b4.to_string());
    finish(server);
    let _ = finish(dns);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (recs, db) = pf.stop_keep_db();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "named", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == port as u64
    });
    assert_eq!(f["remote_name"], "files.example.test", "{f}");
    let doc = report(&db, &["--by", "host", "--host", "files.example.test"]);
    let rows = doc["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["host"] == "files.example.test")
        .unwrap_or_else(|| panic!("{doc:#}"));
    // Every flow to that address carries the name (the lookup itself went
    // to the same host here), and the report adds them all up.
    let named = flows_in(&flows, &p.a, |f| f["remote_name"] == "files.example.test");
    assert_eq!(named.len(), 2, "{named:#?}");
    let tx: u64 = named.iter().map(|f| u(f, "tx_bytes")).sum();
    let rx: u64 = named.iter().map(|f| u(f, "rx_bytes")).sum();
    assert_eq!((u(row, "tx_bytes"), u(row, "rx_bytes")), (tx, rx), "{row}");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// `procflow-testgen ptr-serve` on the host's loopback, answering the
/// given names; returns the child (stdin open), its output and its port.
fn ptr_server(
    names: &[(IpAddr, &str)],
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    u16,
) {
    let mut cmd = Command::new(TESTGEN);
    cmd.args(["ptr-serve", "--bind", "127.0.0.1:0"]);
    for (ip, n) in names {
        cmd.args(["--ptr", &format!("{ip}={n}")]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    (child, out, port)
}

/// One TCP upload from `p.a` to `remote` in `p.b`.
fn upload(p: &Pair, remote: IpAddr, bytes: u64) -> u16 {
    let host = match remote {
        IpAddr::V4(_) => remote.to_string(),
        IpAddr::V6(_) => format!("[{remote}]"),
    };
    let (server, port) = serve(&p.b, &["tcp-serve", "--listen", &format!("{host}:0")]);
    client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{host}:{port}"),
            "--upload",
            &bytes.to_string(),
        ],
    );
    finish(server);
    port
}

#[test]
fn resolve_names_remotes_by_reverse_lookup_only_when_asked() {
    let p = Pair::new("ptr", 33);
    let (mut ptr, mut ptr_out, port) =
        ptr_server(&[(p.b4, "peer4.example.test"), (p.b6, "peer6.example.test")]);
    let server = format!("127.0.0.1:{port}");

    // Without --resolve: no lookup, no socket of procflow's own.
    let pf = Procflow::start(&[]);
    let pid = pf.pid();
    upload(&p, p.b4, 1000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recs = pf.stop();
    let stats = recs.iter().find(|r| r["type"] == "stats").unwrap();
    assert!(stats["resolve"].is_null(), "{stats}");
    let own: Vec<_> = recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["process"]["pid"] == pid)
        .collect();
    assert!(own.is_empty(), "procflow made connections: {own:#?}");

    let pf = Procflow::start(&["--resolve", "--resolver", &server]);
    // The first flow to each address asks; the name arrives within a
    // moment, and flows opened after that carry it from their first record.
    let mut ports = Vec::new();
    for remote in [p.b4, p.b6] {
        upload(&p, remote, 1000);
        std::thread::sleep(std::time::Duration::from_millis(500));
        ports.push((remote, upload(&p, remote, 2000)));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (recs, db) = pf.stop_keep_db();
    drop(ptr.stdin.take());
    let mut line = String::new();
    ptr_out.read_line(&mut line).unwrap();
    assert!(ptr.wait().unwrap().success());
    let served: Value = serde_json::from_str(&line).unwrap();
    // Each address was asked once, however many flows went to it.
    let mut named: Vec<_> = served["named"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    named.sort();
    assert_eq!(
        named,
        ["peer4.example.test", "peer6.example.test"],
        "{served}"
    );

    let flows = final_flows(&recs);
    for (remote, port) in &ports {
        let want = if remote.is_ipv4() {
            "peer4.example.test"
        } else {
            "peer6.example.test"
        };
        let f = one_flow(&flows, &p.a, "second upload", |f| {
            u(f, "remote_port") == u64::from(*port)
        });
        assert_eq!(f["remote_name"], want, "{f}");
        // Already on the flow's first record.
        let first = recs
            .iter()
            .find(|r| r["type"] == "flow" && r["flow_id"] == f["flow_id"])
            .unwrap();
        assert_eq!(first["remote_name"], want, "{first}");
        let doc = report(&db, &["--by", "host", "--host", want]);
        let row = &doc["rows"][0];
        assert_eq!(row["host"], want, "{doc:#}");
        let all = flows_in(&flows, &p.a, |f| f["remote_name"] == want);
        let tx: u64 = all.iter().map(|f| u(f, "tx_bytes")).sum();
        assert_eq!(u(row, "tx_bytes"), tx, "{row}");
    }
    let stats = recs.iter().find(|r| r["type"] == "stats").unwrap();
    assert!(u(&stats["resolve"], "named") >= 2, "{stats}");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = std::env::temp_dir().join(format!("pf-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "pftest",
            dir.to_str().unwrap(),
        ]);
        SmallFs { dir }
    }

    fn resize(&self, size: &str) {
        sh(&[
            "mount",
            "-o",
            &format!("remount,size={size}"),
            self.dir.to_str().unwrap(),
        ]);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_disk_never_stops_monitoring_and_writing_resumes_with_space() {
    let p = Pair::new("diskfull", 32);
    let fs = SmallFs::new("600k");
    let db = fs.dir.join("procflow.db");
    let pf = Procflow::start(&["--db", db.to_str().unwrap()]);
    // Enough flows to fill 600 KiB many times over.
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "4000",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "10",
            "--count",
            "4000",
        ],
    );
    assert_eq!(u(&cl, "connections"), 4000);
    finish(server);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Space returns; new traffic must reach the history.
    fs.resize("64m");
    let (server2, port2) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "3",
            "--download",
            "1000",
        ],
    );
    client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port2}", p.b4),
            "--upload",
            "4000",
            "--count",
            "3",
        ],
    );
    finish(server2);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let recs = pf.stop();
    // Monitoring went on: every connection has its closed record in the log.
    let flows = final_flows(&recs);
    let closed = flows_in(&flows, &p.a, |f| {
        u(f, "remote_port") == port as u64 && f["state"] == "closed"
    });
    assert_eq!(closed.len(), 4000);
    let st = stats(&recs);
    assert!(
        u(&st["store"], "records_failed") > 0,
        "the disk never filled: {st}"
    );
    // Writing resumed: the traffic after the resize is in the database.
    let doc = report(&db, &["--by", "port", "--port", &port2.to_string()]);
    let rows = doc["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["port"] == port2)
        .unwrap_or_else(|| panic!("{doc:#}"));
    // Both ends are on this machine: the clients' flows to the port and the
    // server's flows on it.
    let mut after = flows_in(&flows, &p.a, |f| u(f, "remote_port") == port2 as u64);
    after.extend(flows_in(&flows, &p.b, |f| {
        u(f, "local_port") == port2 as u64
    }));
    assert_eq!(after.len(), 6, "{after:#?}");
    let tx: u64 = after.iter().map(|f| u(f, "tx_bytes")).sum();
    let rx: u64 = after.iter().map(|f| u(f, "rx_bytes")).sum();
    assert_eq!((u(row, "tx_bytes"), u(row, "rx_bytes")), (tx, rx), "{row}");
}
