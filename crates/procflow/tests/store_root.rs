//! Root end-to-end tests of the flow history: real traffic recorded by
//! `procflow run` into its store, then `procflow report`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

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
            pf.wait_closed(&p.a, 1, "client", |f| u(f, "remote_port") == port as u64);
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
    pf.wait_closed(&p.a, 1, "tcp", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == port as u64
    });
    pf.wait_closed(&p.a, 1, "dns", |f| {
        f["proto"] == "udp" && u(f, "remote_port") == 53
    });
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
    let port = upload(&p, p.b4, 1000);
    pf.wait_closed(&p.a, 1, "upload", |f| {
        u(f, "remote_port") == u64::from(port)
    });
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
    for (_, port) in &ports {
        pf.wait_closed(&p.a, 1, "second upload", |f| {
            u(f, "remote_port") == u64::from(*port)
        });
    }
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
    fn new(tag: &str, size: &str) -> SmallFs {
        let dir = std::env::temp_dir().join(format!("pf-full-{tag}-{}", std::process::id()));
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
    let fs = SmallFs::new("db", "600k");
    let db = fs.dir.join("procflow.db");
    // Every flow keeps its row (--fold-under 0s), so that the flows fill
    // the disk rather than fold into their series.
    let pf = Procflow::start(&["--db", db.to_str().unwrap(), "--fold-under", "0s"]);
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
    pf.wait_closed(&p.a, 3, "client", |f| u(f, "remote_port") == port2 as u64);
    pf.wait_closed(&p.b, 3, "server", |f| u(f, "local_port") == port2 as u64);
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

/// `procflow run` with exactly the given arguments (the harness's
/// `Procflow` always adds a log), its stderr kept for `wait_stderr`;
/// killed on drop.
struct Run {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        require_root();
        let mut child = Command::new(PROCFLOW)
            .args(["-v", "run"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting procflow");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[procflow] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let run = Run {
            child: Some(child),
            stderr,
        };
        run.wait_stderr("watching", 30);
        run
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits until a line of stderr contains `what`.
    fn wait_stderr(&self, what: &str, secs: u64) {
        let ok = wait_for(secs, || {
            self.stderr.lock().unwrap().iter().any(|l| l.contains(what))
        });
        assert!(ok, "procflow never said {what:?} within {secs} s");
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGINT, and exit 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        sh(&["kill", "-INT", &child.id().to_string()]);
        let status = child.wait().unwrap();
        assert!(status.success(), "procflow exited with {status}");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory of files for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pf-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The generator's real path: what procflow reports as its exe.
fn testgen() -> String {
    std::fs::canonicalize(TESTGEN)
        .unwrap()
        .display()
        .to_string()
}

/// A rules file that blocks the generator's connections to `remote:port`.
fn block_testgen(path: &Path, rule: &str, remote: IpAddr, port: u16) {
    std::fs::write(
        path,
        format!(
            "default = \"allow\"\n\n[[rule]]\nname = \"{rule}\"\naction = \"block\"\n\
             exe = \"{}\"\nremote = \"{remote}\"\nremote_port = {port}\n",
            testgen()
        ),
    )
    .unwrap();
}

/// A TCP connect by the generator from `p.a` that the rules block: its pid.
fn blocked_connect(p: &Pair, remote: IpAddr, port: u16) -> u32 {
    let child =
        p.a.command(TESTGEN)
            .args([
                "tcp-send",
                "--connect",
                &format!("{remote}:{port}"),
                "--upload",
                "10",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "the connect to {remote}:{port} was not blocked: {err}"
    );
    pid
}

/// The stats record of the last run in the store.
fn stored_stats(db: &Path) -> Value {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let text: String = c
        .query_row(
            "SELECT stats FROM runs ORDER BY run_id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A report of the verdicts table, polled until `want` rows are there.
fn wait_verdicts(db: &Path, args: &[&str], want: usize) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(10, || {
        let mut a = vec!["--verdicts"];
        a.extend_from_slice(args);
        last = report(db, &a);
        last["rows"].as_array().unwrap().len() >= want
    });
    assert!(
        ok,
        "fewer than {want} attempts in the store after 10 s: {last:#}"
    );
    last
}

#[test]
fn a_blocked_connect_without_a_log_is_in_the_store_with_its_exe_and_rule() {
    let p = Pair::new("vstore", 34);
    let dir = Scratch::new("vstore");
    let rules = dir.path("rules.toml");
    let db = dir.path("procflow.db");
    block_testgen(&rules, "no-testgen-7101", p.b4, 7101);
    let run = Run::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    let pid = blocked_connect(&p, p.b4, 7101);
    let doc = wait_verdicts(&db, &[], 1);
    let rows = doc["rows"].as_array().unwrap();
    let mine: Vec<&Value> = rows.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "{doc:#}");
    let v = mine[0];
    assert_eq!(v["exe"], testgen(), "{v}");
    assert_eq!(v["rule"], "no-testgen-7101", "{v}");
    assert_eq!(v["action"], "block", "{v}");
    assert_eq!(v["hook"], "connect", "{v}");
    assert_eq!(v["proto"], "tcp", "{v}");
    assert_eq!(v["direction"], "out", "{v}");
    assert_eq!(v["remote_ip"], p.b4.to_string(), "{v}");
    assert_eq!(v["remote_port"], 7101, "{v}");
    assert_eq!(v["uid"], 0, "{v}");
    assert_eq!(v["comm"], "procflow-testge", "{v}");

    // A bad file on SIGHUP: refused, acknowledged in the store, and the
    // rules in force still block.
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"x\"\naction = \"block\"\nremote_port = \"9-1\"\n",
    )
    .unwrap();
    sh(&["kill", "-HUP", &run.pid().to_string()]);
    let mut changes = Value::Null;
    let ok = wait_for(10, || {
        changes = report(&db, &["--rules-changes"]);
        changes["rows"].as_array().unwrap().len() >= 2
    });
    assert!(ok, "the reload was not acknowledged: {changes:#}");
    let second = blocked_connect(&p, p.b4, 7101);
    let doc = wait_verdicts(&db, &["--rule", "no-testgen-7101"], 2);
    assert_eq!(doc["rows"][1]["pid"], second, "{doc:#}");
    run.stop();

    let changes = report(&db, &["--rules-changes"]);
    let rows = changes["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{changes:#}");
    assert_eq!(
        (
            &rows[0]["outcome"],
            &rows[0]["generation"],
            &rows[0]["rules"],
            &rows[0]["error"]
        ),
        (&json!("accepted"), &json!(1), &json!(1), &Value::Null),
        "{changes:#}"
    );
    assert_eq!(rows[0]["path"], rules.to_str().unwrap());
    assert_eq!(
        (
            &rows[1]["outcome"],
            &rows[1]["generation"],
            &rows[1]["rules"]
        ),
        (&json!("refused"), &json!(1), &json!(1)),
        "{changes:#}"
    );
    let err = rows[1]["error"].as_str().unwrap();
    assert!(
        err.starts_with(&format!("{}:4:15: ", rules.display())),
        "{err}"
    );
    // Counted per rule: the two attempts, and nothing by the default.
    let doc = report(&db, &["--verdicts", "--by", "exe,rule"]);
    let rows = doc["rows"].as_array().unwrap();
    let ours: Vec<&Value> = rows.iter().filter(|r| r["exe"] == testgen()).collect();
    assert_eq!(ours.len(), 1, "{doc:#}");
    assert_eq!(ours[0]["rule"], "no-testgen-7101");
    assert_eq!(ours[0]["attempts"], 2);
    // The run's stats record is in the store, with no log.
    let st = stored_stats(&db);
    assert_eq!(st["type"], "stats", "{st}");
    assert!(st["log"].is_null(), "{st}");
    assert_eq!(st["store"]["records_failed"], 0, "{st}");
}

/// The records of a log that may be being written: whole lines only.
fn log_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

#[test]
fn a_full_log_file_system_never_stops_monitoring_or_enforcing() {
    let p = Pair::new("logfull", 35);
    let dir = Scratch::new("logfull");
    let fs = SmallFs::new("log", "256k");
    let rules = dir.path("rules.toml");
    let db = dir.path("procflow.db");
    let log = fs.dir.join("flows.jsonl");
    block_testgen(&rules, "no-testgen-7102", p.b4, 7102);
    let mut run = Run::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ]);
    // Far more records than 256 KiB hold.
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "3000",
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
            "3000",
        ],
    );
    assert_eq!(u(&cl, "connections"), 3000);
    finish(server);
    run.wait_stderr("flow log: ", 20);
    // Full: still running, still enforcing.
    assert!(run.running(), "procflow stopped when its log filled");
    let blocked = blocked_connect(&p, p.b4, 7102);
    wait_verdicts(&db, &["--rule", "no-testgen-7102"], 1);
    assert!(run.running());

    // Space returns: everything queued reaches the log, then new records.
    fs.resize("64m");
    let (server, port2) = serve(&p.b, &["tcp-serve", "--listen", &format!("{}:0", p.b4)]);
    client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port2}", p.b4),
            "--upload",
            "1234",
        ],
    );
    finish(server);
    let mut recs = Vec::new();
    let ok = wait_for(20, || {
        recs = log_records(&log);
        recs.iter().any(|r| {
            r["type"] == "flow" && r["state"] == "closed" && u(r, "remote_port") == port2 as u64
        })
    });
    assert!(ok, "the log did not resume: {} records", recs.len());
    run.wait_stderr("flow log: writing again", 5);
    run.stop();

    // Every line is whole (read_log panics on a torn one), and nothing
    // was lost: every connection has its closed record, the attempt made
    // while the disk was full has its verdict record.
    let recs = read_log(&log);
    let flows = final_flows(&recs);
    let closed = flows_in(&flows, &p.a, |f| {
        u(f, "remote_port") == port as u64 && f["state"] == "closed"
    });
    assert_eq!(closed.len(), 3000);
    let v: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["process"]["pid"] == blocked)
        .collect();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["rule"], "no-testgen-7102");
    let acks: Vec<&Value> = recs.iter().filter(|r| r["type"] == "rules").collect();
    assert_eq!(acks.len(), 1, "{acks:#?}");
    assert_eq!(acks[0]["outcome"], "accepted");
    assert_eq!(acks[0]["generation"], 1);
    let st = stats(&recs);
    assert_eq!(
        recs.last().unwrap()["type"],
        "stats",
        "the stats record comes last"
    );
    // The stats record counts every line before it, and the failures.
    assert_eq!(
        u(&st["log"], "records_written"),
        recs.len() as u64 - 1,
        "{st}"
    );
    assert_eq!(u(&st["log"], "records_failed"), 0, "{st}");
    assert!(
        u(&st["log"], "write_errors") > 0,
        "the log never failed: {st}"
    );
    // The store has the same stats record.
    assert_eq!(stored_stats(&db), st);
}
