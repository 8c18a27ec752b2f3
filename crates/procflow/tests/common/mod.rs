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

/// Runs a command that prints one JSON value (a test's Python script, say)
/// and returns it; panics with its error output if it fails.
pub fn run_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
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
            offloads_off(ns, dev, &["tso", "gso", "gro", "tx", "rx"]);
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

/// The table `inet pftest` and its base chain on `hook` in `ns` (`nft add`
/// is idempotent). Fails the test when nft is missing or refuses.
fn nft_chain(ns: &Netns, hook: &str) {
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "nft is not installed: the wire-level ground truth of this test comes from \
         nftables counters (scripts/install-deps.sh installs nftables)"
    );
    ns.exec(&["nft", "add", "table", "inet", "pftest"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "pftest",
        hook,
        &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
    ]);
}

/// Turns the named offloads (ethtool -K short names: tso, gso, gro, tx, rx)
/// off on `dev` in `ns` and checks that they are off: the wire counts the
/// tests compare with nftables are only exact when every packet nftables
/// sees is one segment. Fails the test, with ethtool's answer, otherwise.
pub fn offloads_off(ns: &Netns, dev: &str, features: &[&str]) {
    let mut args = vec!["-K", dev];
    for f in features {
        args.extend([*f, "off"]);
    }
    let out = ns
        .command("ethtool")
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("ethtool is needed to turn offloads off on {dev}: {e}"));
    assert!(
        out.status.success(),
        "ethtool {args:?} in {} failed, so nftables would count GSO/GRO packets, not \
         segments, and the wire counts could not be compared exactly: {}{}",
        ns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = ns.exec(&["ethtool", "-k", dev]);
    for f in features {
        let long = match *f {
            "tso" => "tcp-segmentation-offload",
            "gso" => "generic-segmentation-offload",
            "gro" => "generic-receive-offload",
            "tx" => "tx-checksumming",
            "rx" => "rx-checksumming",
            other => panic!("offloads_off: unknown feature {other}"),
        };
        let line = shown
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{long}:")))
            .unwrap_or_else(|| panic!("ethtool -k {dev} does not show {long}: {shown}"));
        assert!(
            line.contains(": off"),
            "{f} ({long}) is still on for {dev} in {} after ethtool -K: {line}",
            ns.name
        );
    }
}

/// Per-port nftables counters: a dynamic set that counts, for every value
/// of `key` (e.g. "tcp sport"), the packets on `hook` of `ns` that match
/// `expr`: wire-level ground truth for each of many connections.
#[derive(Debug)]
pub struct NftPortCounters {
    ns: String,
    name: String,
}

pub fn nft_port_counters(
    ns: &Netns,
    hook: &str,
    name: &str,
    expr: &str,
    key: &str,
) -> NftPortCounters {
    nft_chain(ns, hook);
    ns.exec(&[
        "nft",
        "add",
        "set",
        "inet",
        "pftest",
        name,
        "{ type inet_service; flags dynamic; counter; size 65535; }",
    ]);
    let rule = format!("add rule inet pftest {hook} {expr} add @{name} {{ {key} }}");
    ns.exec(&["nft", &rule]);
    NftPortCounters {
        ns: ns.name.clone(),
        name: name.to_string(),
    }
}

impl NftPortCounters {
    /// port -> (packets, bytes)
    pub fn read(&self) -> HashMap<u16, (u64, u64)> {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "-j", "list", "set", "inet", "pftest",
            &self.name,
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut m = HashMap::new();
        for item in v["nftables"].as_array().unwrap() {
            let Some(set) = item.get("set") else { continue };
            for e in set["elem"].as_array().into_iter().flatten() {
                let e = &e["elem"];
                let c = &e["counter"];
                m.insert(
                    e["val"].as_u64().unwrap() as u16,
                    (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap()),
                );
            }
        }
        m
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
    nft_chain(ns, hook);
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

/// Now on CLOCK_REALTIME, in nanoseconds since the epoch: the clock
/// `procflow-testgen` stamps connections with, so the tests can order them
/// against procflow's start.
pub fn clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A running `procflow run`, stopped (SIGINT) by `stop`.
#[derive(Debug)]
pub struct Procflow {
    child: Option<Child>,
    pub log: PathBuf,
    /// This instance's own flow history.
    pub db: PathBuf,
    /// This instance's own API socket.
    pub api: PathBuf,
    /// CLOCK_REALTIME (ns) just before procflow was started: nothing of
    /// this instance was attached yet.
    pub spawned_ns: u64,
    /// CLOCK_REALTIME (ns) when its "watching" line was read: its programs
    /// were attached and the start-up scan had finished.
    pub watching_ns: u64,
    /// What it wrote to standard error so far, line by line.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _running: std::sync::RwLockReadGuard<'static, ()>,
}

static LOG_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Held (shared) by every running procflow of this test binary, and
/// exclusively by `without_procflow`.
static GROUND: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs `f` while no procflow of this test binary runs: for a ground truth
/// that another test's rules (which apply machine-wide) would change.
pub fn without_procflow<T>(f: impl FnOnce() -> T) -> T {
    let _only = GROUND.write().unwrap_or_else(|e| e.into_inner());
    f()
}

impl Procflow {
    pub fn start(extra: &[&str]) -> Procflow {
        Procflow::start_with_prefix(&[], extra)
    }

    /// As `start`, with procflow run by `prefix` (e.g. `setpriv` and its
    /// options, which then exec procflow with the same pid).
    pub fn start_with_prefix(prefix: &[&str], extra: &[&str]) -> Procflow {
        require_root();
        let seq = LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log =
            std::env::temp_dir().join(format!("procflow-test-{}-{seq}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let db = log.with_extension("db");
        remove_db(&db);
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(PROCFLOW);
                c
            }
            None => Command::new(PROCFLOW),
        };
        cmd.args(["-v", "run", "--log"]).arg(&log);
        if !extra.contains(&"--db") {
            cmd.arg("--db").arg(&db);
        }
        let api = log.with_extension("sock");
        if !extra.contains(&"--api") && !extra.contains(&"--no-api") {
            cmd.arg("--api").arg(&api);
        }
        // The machine's /etc/procflow/procflow.toml is not the test's.
        if !extra.contains(&"--config") {
            cmd.arg("--no-config");
        }
        let running = GROUND.read().unwrap_or_else(|e| e.into_inner());
        let spawned_ns = clock_ns();
        let child = cmd
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting procflow");
        // Killed if it never becomes ready (or this test fails later).
        let mut pf = Procflow {
            child: Some(child),
            log,
            db,
            api,
            spawned_ns,
            watching_ns: 0,
            stderr: Default::default(),
            _running: running,
        };
        let stderr = pf.child.as_mut().unwrap().stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::clone(&pf.stderr);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("watching") {
                    let _ = tx.send(Ok(clock_ns()));
                    sent = true;
                }
                if line.starts_with("procflow: ") {
                    let _ = tx.send(Err(line.clone()));
                }
                eprintln!("[procflow] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(t)) => pf.watching_ns = t,
            Ok(Err(e)) => panic!("procflow failed to start: {e}"),
            Err(_) => panic!("procflow did not become ready within 30 s"),
        }
        pf
    }

    /// The records in its log so far (whole lines only: the log may be
    /// being written).
    pub fn records(&self) -> Vec<Value> {
        if self.log.exists() {
            read_log(&self.log)
        } else {
            Vec::new()
        }
    }

    /// Waits (at most `secs`) until `done` holds for the records in the log,
    /// and returns them; fails the test with `what` and the records of the
    /// test's interest (`show`) otherwise.
    pub fn wait_records(
        &self,
        secs: u64,
        what: &str,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut recs = Vec::new();
        let ok = wait_for(secs, || {
            recs = self.records();
            done(&recs)
        });
        assert!(
            ok,
            "waited {secs} s for {what} in procflow's log; it has {} records, the last: {:#?}",
            recs.len(),
            &recs[recs.len().saturating_sub(5)..]
        );
        recs
    }

    /// Waits until the log has `n` flow records (last record of each flow)
    /// in `ns` that match `pred` and are closed.
    pub fn wait_closed(
        &self,
        ns: &Netns,
        n: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_records(
            20,
            &format!("{n} closed {what} flows in {}", ns.name),
            |recs| {
                let flows = final_flows(recs);
                flows_in(&flows, ns, |f| f["state"] == "closed" && pred(f)).len() >= n
            },
        )
    }

    /// Waits for the `n`th (from 1) `"type":"rules"` record: procflow's
    /// acknowledgement of the first load (1) and of each SIGHUP after it.
    pub fn wait_rules_ack(&self, n: usize) -> Value {
        let recs = self.wait_records(20, &format!("rules acknowledgement #{n}"), |recs| {
            recs.iter().filter(|r| r["type"] == "rules").count() >= n
        });
        recs.into_iter()
            .filter(|r| r["type"] == "rules")
            .nth(n - 1)
            .unwrap()
    }

    /// Waits (at most `secs`) for a line of its standard error that holds
    /// every one of `parts`, and returns it.
    pub fn wait_stderr(&self, secs: u64, parts: &[&str]) -> String {
        let find = || {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .cloned()
        };
        wait_for(secs, || find().is_some());
        find().unwrap_or_else(|| {
            panic!(
                "procflow wrote no line with {parts:?}; its standard error:\n{}",
                self.stderr.lock().unwrap().join("\n")
            )
        })
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
        self.stop_by("INT").0
    }

    /// Sends `signal` (a `kill -SIGNAL` name), waits for exit 0 and returns
    /// every record of the log and how long the exit took.
    pub fn stop_with(mut self, signal: &str) -> (Vec<Value>, Duration) {
        self.stop_by(signal)
    }

    fn stop_by(&mut self, signal: &str) -> (Vec<Value>, Duration) {
        let mut child = self.child.take().unwrap();
        let sent = Instant::now();
        sh(&["kill", &format!("-{signal}"), &child.id().to_string()]);
        let status = child.wait().unwrap();
        let took = sent.elapsed();
        assert!(
            status.success(),
            "procflow exited with {status} after SIG{signal}"
        );
        (read_log(&self.log), took)
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

pub fn remove_db(db: &std::path::Path) {
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

/// A child process that is killed (and reaped) when dropped, so that a test
/// that fails leaves none of its servers or clients running.
#[derive(Debug)]
pub struct Reaped(pub Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    /// The child, no longer killed on drop.
    pub fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A testgen server started by `serve`: killed if dropped before `finish`.
#[derive(Debug)]
pub struct Server {
    child: Reaped,
    out: mpsc::Receiver<String>,
}

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// A testgen server in `ns`; returns it and the port it listens on.
pub fn serve(ns: &Netns, args: &[&str]) -> (Server, u16) {
    serve_program(ns, TESTGEN, args)
}

/// A server `program` in `ns` that prints "ready PORT" first and a JSON
/// summary last (testgen's servers, the tests' Python servers).
pub fn serve_program(ns: &Netns, program: &str, args: &[&str]) -> (Server, u16) {
    let mut child = Reaped::new(
        ns.command(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}")),
    );
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
    (Server { child, out: rx }, port)
}

/// Waits for a server started by `serve` and returns its JSON summary.
pub fn finish(server: Server) -> Value {
    let Server { child, out } = server;
    let mut child = child.take();
    let status = child.wait().unwrap();
    assert!(status.success(), "the server failed: {status}");
    let text = out
        .recv_timeout(Duration::from_secs(10))
        .expect("the server's output");
    serde_json::from_str(text.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("the server said {text:?}: {e}"))
}

/// Runs a testgen client in `ns` to completion; returns its last JSON line.
pub fn client(ns: &Netns, args: &[&str]) -> Value {
    client_lines(ns, args).pop().unwrap()
}

/// Runs a testgen client in `ns` to completion; returns every JSON line it
/// printed (with `--each`, one per connection, then the summary).
pub fn client_lines(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let out = ns.command(TESTGEN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "testgen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("testgen said {l:?}: {e}")))
        .collect()
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

/// `procflow report --db DB ARGS --format json`, parsed.
pub fn report(db: &std::path::Path, args: &[&str]) -> Value {
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

/// A process that prints one line (`first`), then waits for a line on
/// standard input (testgen's `tcp-phased`, `handoff`, ...).
#[derive(Debug)]
pub struct Phased {
    pub child: Reaped,
    pub out: BufReader<std::process::ChildStdout>,
    pub first: String,
}

impl Phased {
    /// Starts `cmd` and reads its first line.
    pub fn start(cmd: &mut Command) -> Phased {
        let mut child = Reaped::new(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        Phased { child, out, first }
    }

    /// testgen in `ns` with `args`.
    pub fn testgen(ns: &Netns, args: &[&str]) -> Phased {
        Phased::start(ns.command(TESTGEN).args(args))
    }

    /// Sends the line, waits for the process to finish; its last JSON line.
    pub fn go(mut self) -> Value {
        use std::io::Write;
        writeln!(self.child.stdin.take().unwrap(), "go").unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "testgen failed: {rest}"
        );
        serde_json::from_str(rest.lines().last().unwrap()).unwrap()
    }
}

/// A tcp-phased-serve server in `p.b`: it and its port.
pub fn phased_server(p: &Pair, before: u64, after: u64) -> (Server, u16) {
    let (before, after) = (before.to_string(), after.to_string());
    let listen = format!("{}:0", p.b4);
    serve(
        &p.b,
        &[
            "tcp-phased-serve",
            "--listen",
            &listen,
            "--before",
            &before,
            "--after",
            &after,
        ],
    )
}

/// A tcp-phased client in `p.a`, run as `exe`, that exchanged `before`
/// bytes each way with the server at `port` and waits.
pub fn phased_client(
    p: &Pair,
    exe: &std::path::Path,
    port: u16,
    before: u64,
    after: u64,
) -> Phased {
    let (before, after) = (before.to_string(), after.to_string());
    let to = format!("{}:{port}", p.b4);
    let cl = Phased::start(p.a.command(exe.to_str().unwrap()).args([
        "tcp-phased",
        "--connect",
        &to,
        "--before",
        &before,
        "--after",
        &after,
    ]));
    assert!(cl.first.starts_with("phase1"), "{}", cl.first);
    cl
}
