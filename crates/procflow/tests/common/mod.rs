//! Shared harness for procflow's root tests: network namespaces joined by a
//! veth pair (addresses only inside them), nftables counters in the peer
//! namespace for wire-level ground truth, the traffic generator, and a
//! procflow instance whose JSON-lines log is read back.
//!
//! Every test that uses it needs root and a kernel with BPF: without them it
//! fails loudly, it never skips.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROCFLOW: &str = env!("CARGO_BIN_EXE_procflow");
pub const TESTGEN: &str = env!("CARGO_BIN_EXE_procflow-testgen");

pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .unwrap();
    assert_eq!(uid, "0", "procflow's root tests must run as root (they load eBPF programs and create network namespaces)");
}

/// Runs a command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The namespace's inode, as procflow reports it in `netns`.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .unwrap()
            .ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: a (10.199.N.1, fd00:199:N::1) and
/// b (10.199.N.2, fd00:199:N::2), with offloads off so that nftables counts
/// the segments a NIC would send.
#[derive(Debug)]
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a4: IpAddr,
    pub b4: IpAddr,
    pub a6: IpAddr,
    pub b6: IpAddr,
}

impl Pair {
    /// `n` (1..=250) must be unique among tests that run at the same time.
    pub fn new(tag: &str, n: u8) -> Pair {
        require_root();
        let a = Netns::new(&format!("pf-{tag}-a"));
        let b = Netns::new(&format!("pf-{tag}-b"));
        let (va, vb) = (format!("pfa{n}"), format!("pfb{n}"));
        let _ = Command::new("ip").args(["link", "del", &va]).output();
        sh(&[
            "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb,
            "netns", &b.name,
        ]);
        for (ns, dev, last) in [(&a, &va, 1), (&b, &vb, 2)] {
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.199.{n}.{last}/24"),
                "dev",
                dev,
            ]);
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:199:{n}::{last}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
            let _ = ns
                .command("ethtool")
                .args([
                    "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off",
                ])
                .output();
        }
        let pair = Pair {
            a4: format!("10.199.{n}.1").parse().unwrap(),
            b4: format!("10.199.{n}.2").parse().unwrap(),
            a6: format!("fd00:199:{n}::1").parse().unwrap(),
            b6: format!("fd00:199:{n}::2").parse().unwrap(),
            a,
            b,
        };
        // Wait until IPv6 can be used both ways.
        for ip in [pair.b6, pair.b4] {
            let ok = wait_for(5, || {
                pair.a
                    .command(TESTGEN)
                    .args(["ping", "--to", &ip.to_string(), "--size", "8"])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            });
            assert!(ok, "{ip} is not reachable from {}", pair.a.name);
        }
        pair
    }
}

/// An nftables packet/byte counter on one hook of a namespace.
#[derive(Debug)]
pub struct NftCounter {
    ns: String,
    name: String,
}

/// Adds a counter on `hook` ("input" or "output") of `ns` for packets that
/// match `expr` (nft syntax, e.g. "ip saddr 10.199.1.1 tcp dport 5000").
pub fn nft_counter(ns: &Netns, hook: &str, name: &str, expr: &str) -> NftCounter {
    let _ = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "nft", "add", "table", "inet", "pftest",
        ])
        .output();
    let _ = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "nft", "add", "chain", "inet", "pftest", hook,
        ])
        .arg(format!(
            "{{ type filter hook {hook} priority 0; policy accept; }}"
        ))
        .output();
    ns.exec(&["nft", "add", "counter", "inet", "pftest", name]);
    let rule = format!("add rule inet pftest {hook} {expr} counter name {name}");
    ns.exec(&["nft", &rule]);
    NftCounter {
        ns: ns.name.clone(),
        name: name.to_string(),
    }
}

impl NftCounter {
    /// (packets, bytes)
    pub fn read(&self) -> (u64, u64) {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "-j", "list", "counter", "inet", "pftest",
            &self.name,
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        for item in v["nftables"].as_array().unwrap() {
            if let Some(c) = item.get("counter") {
                return (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap());
            }
        }
        panic!("counter {} not found: {out}", self.name)
    }
}

/// A running `procflow run`, stopped (SIGINT) by `stop`.
#[derive(Debug)]
pub struct Procflow {
    child: Option<Child>,
    pub log: PathBuf,
    /// This instance's own flow history.
    pub db: PathBuf,
}

static LOG_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Procflow {
    pub fn start(extra: &[&str]) -> Procflow {
        require_root();
        let seq = LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log =
            std::env::temp_dir().join(format!("procflow-test-{}-{seq}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let db = log.with_extension("db");
        remove_db(&db);
        let mut cmd = Command::new(PROCFLOW);
        cmd.args(["-v", "run", "--log"]).arg(&log);
        if !extra.contains(&"--db") {
            cmd.arg("--db").arg(&db);
        }
        let mut child = cmd
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting procflow");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("watching") {
                    let _ = tx.send(Ok(()));
                    sent = true;
                }
                if line.starts_with("procflow: ") {
                    let _ = tx.send(Err(line.clone()));
                }
                eprintln!("[procflow] {line}");
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("procflow failed to start: {e}"),
            Err(_) => panic!("procflow did not become ready within 30 s"),
        }
        Procflow {
            child: Some(child),
            log,
            db,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGINT, wait for exit 0, return every record of the log.
    pub fn stop(mut self) -> Vec<Value> {
        self.stop_inner()
    }

    /// Stops it and keeps its database (the caller removes it).
    pub fn stop_keep_db(mut self) -> (Vec<Value>, PathBuf) {
        let db = std::mem::take(&mut self.db);
        (self.stop_inner(), db)
    }

    fn stop_inner(&mut self) -> Vec<Value> {
        let mut child = self.child.take().unwrap();
        sh(&["kill", "-INT", &child.id().to_string()]);
        let status = child.wait().unwrap();
        assert!(status.success(), "procflow exited with {status}");
        read_log(&self.log)
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        sh(&["kill", "-9", &child.id().to_string()]);
        let _ = child.wait();
    }
}

impl Drop for Procflow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        remove_db(&self.db);
    }
}

fn remove_db(db: &std::path::Path) {
    for ext in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Every complete record of the log (a line procflow is still writing, not
/// yet ended by its newline, is left for the next read).
pub fn read_log(path: &PathBuf) -> Vec<Value> {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// The last record of each flow (the last record of a flow_id wins).
pub fn final_flows(records: &[Value]) -> Vec<Value> {
    let mut last: HashMap<String, Value> = HashMap::new();
    let mut order = Vec::new();
    for r in records.iter().filter(|r| r["type"] == "flow") {
        let id = r["flow_id"].as_str().unwrap().to_string();
        if !last.contains_key(&id) {
            order.push(id.clone());
        }
        last.insert(id, r.clone());
    }
    order
        .into_iter()
        .map(|id| last.remove(&id).unwrap())
        .collect()
}

pub fn stats(records: &[Value]) -> Value {
    records
        .iter()
        .rev()
        .find(|r| r["type"] == "stats")
        .cloned()
        .expect("no stats record")
}

/// Flows in namespace `ns` that match `pred`.
pub fn flows_in<'a>(
    flows: &'a [Value],
    ns: &Netns,
    pred: impl Fn(&Value) -> bool,
) -> Vec<&'a Value> {
    let ino = ns.inode();
    flows
        .iter()
        .filter(|f| f["netns"].as_u64() == Some(ino) && pred(f))
        .collect()
}

/// Exactly one flow in `ns` matching `pred`.
pub fn one_flow<'a>(
    flows: &'a [Value],
    ns: &Netns,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    let found = flows_in(flows, ns, pred);
    assert_eq!(
        found.len(),
        1,
        "expected one {what} flow in {}, found {}: {found:#?}",
        ns.name,
        found.len()
    );
    found[0]
}

/// A testgen server in `ns`; returns the child and the port it listens on.
pub fn serve(ns: &Netns, args: &[&str]) -> (Child, u16) {
    let mut child = ns
        .command(TESTGEN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting procflow-testgen");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("testgen said {line:?}"))
        .parse()
        .unwrap();
    // Keep reading its output in the background so it never blocks.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let _ = tx.send(rest);
    });
    SERVER_OUT.with(|m| m.borrow_mut().insert(child.id(), rx));
    (child, port)
}

thread_local! {
    static SERVER_OUT: std::cell::RefCell<HashMap<u32, mpsc::Receiver<String>>> = std::cell::RefCell::new(HashMap::new());
}

/// Waits for a server started by `serve` and returns its JSON summary.
pub fn finish(mut child: Child) -> Value {
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "testgen server failed: {status}");
    let text = SERVER_OUT.with(|m| {
        m.borrow_mut()
            .remove(&pid)
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
    });
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// Runs a testgen client in `ns` to completion; returns its last JSON line.
pub fn client(ns: &Netns, args: &[&str]) -> Value {
    let out = ns.command(TESTGEN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "testgen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// Waits until `f` holds or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}
