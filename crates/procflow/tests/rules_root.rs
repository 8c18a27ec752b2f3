//! Root tests for rules enforcement: real connects, sends, pings and
//! inbound connections in network namespaces the tests create, decided by
//! the kernel under `procflow run --rules`.
//!
//! The process that connects is this test binary itself, re-run as a probe
//! (`PF_PROBE=... <test binary> --ignored --exact probe_entry`): a fresh process that
//! does one thing and exits within milliseconds, so every probe is also a
//! short-lived process decided at its first connect. Every rule names the
//! test's own addresses, so tests (and other procflow instances) running at
//! the same time do not disturb each other.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Netns, Pair, Procflow, Reaped};
use procflow_core::rules::{
    cgroup_ancestors, parse_rules, CompiledRules, Direction, NoUsers, Query,
};
use serde_json::Value;

const EPERM: &str = "err 1";
const REFUSED: &str = "err 111";

// ---- the probe ----

/// Not a test: the body of a probe process (see the module comment), run
/// only by the tests themselves (`--ignored --exact probe_entry` with
/// `PF_PROBE` set).
#[test]
#[ignore = "the body of the probe processes the rules tests start, with PF_PROBE set"]
fn probe_entry() {
    let spec = std::env::var("PF_PROBE")
        .expect("probe_entry is not a test: the rules tests run it with PF_PROBE set");
    let words: Vec<&str> = spec.split_whitespace().collect();
    let addr = |ip: &str, port: &str| SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
    let result = match words[0] {
        "tcp" => tcp_connect(addr(words[1], words[2])).1,
        "udpc" => udp(addr(words[1], words[2]), true),
        "udps" => udp(addr(words[1], words[2]), false),
        "ping" => ping(words[1].parse().unwrap()),
        "listen" => listen(words[1].parse().unwrap(), words[2].parse().unwrap()),
        "hold" => hold(addr(words[1], words[2])),
        w => panic!("unknown probe {w}"),
    };
    println!("PFPROBE {result}");
}

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("err {n}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
        None => format!("err {e}"),
    }
}

fn tcp_connect(to: SocketAddr) -> (Option<std::net::TcpStream>, String) {
    match std::net::TcpStream::connect_timeout(&to, Duration::from_millis(1500)) {
        Ok(s) => (Some(s), "ok".into()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => (None, "timeout".into()),
        Err(e) => (None, errno(&e)),
    }
}

fn udp(to: SocketAddr, connected: bool) -> String {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = std::net::UdpSocket::bind(bind).unwrap();
    if connected {
        if let Err(e) = s.connect(to) {
            return errno(&e);
        }
        match s.send(b"x") {
            Ok(_) => "ok".into(),
            Err(e) => errno(&e),
        }
    } else {
        match s.send_to(b"x", to) {
            Ok(_) => "ok".into(),
            Err(e) => errno(&e),
        }
    }
}

fn ping(to: IpAddr) -> String {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, proto, kind) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8),
    };
    let s = Socket::new(domain, Type::DGRAM, Some(proto)).expect("ping socket");
    let pkt = [kind, 0, 0, 0, 0, 0, 0, 1, b'p', b'f'];
    match s.send_to(&pkt, &SocketAddr::new(to, 0).into()) {
        Ok(_) => "ok".into(),
        Err(e) => errno(&e),
    }
}

/// Listens on PORT (IPv4 and IPv6), prints "PFPROBE listening", accepts
/// and holds connections until killed.
fn listen(v6: u8, port: u16) -> String {
    let l = if v6 == 6 {
        std::net::TcpListener::bind(("::", port))
    } else {
        std::net::TcpListener::bind(("0.0.0.0", port))
    }
    .unwrap();
    println!("PFPROBE listening");
    let mut held = Vec::new();
    for s in l.incoming() {
        held.push(s);
    }
    "done".into()
}

/// Connects, prints "PFPROBE connected", then reads until the connection
/// ends; the result says how it ended.
fn hold(to: SocketAddr) -> String {
    let (s, r) = tcp_connect(to);
    let Some(mut s) = s else { return r };
    println!("PFPROBE connected");
    let mut buf = [0u8; 64];
    loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => return "closed eof".into(),
            Ok(_) => {}
            Err(e) => return format!("closed {}", errno(&e)),
        }
    }
}

// ---- running probes ----

fn test_binary() -> PathBuf {
    std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
}

/// The process's comm: the first 15 bytes of its file name.
fn comm_of(exe: &Path) -> String {
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    name[..name.len().min(15)].to_string()
}

/// How a probe runs: which binary, namespace, user and cgroup.
#[derive(Clone)]
struct As<'a> {
    exe: PathBuf,
    ns: &'a Netns,
    uid: Option<u32>,
    cgroup: Option<PathBuf>,
}

impl<'a> As<'a> {
    fn new(ns: &'a Netns) -> Self {
        As {
            exe: test_binary(),
            ns,
            uid: None,
            cgroup: None,
        }
    }

    fn command(&self, spec: &str) -> Command {
        let mut argv: Vec<String> = vec!["ip".into(), "netns".into(), "exec".into()];
        argv.push(self.ns.name.clone());
        if let Some(u) = self.uid {
            argv.extend([
                "setpriv".to_string(),
                format!("--reuid={u}"),
                format!("--regid={u}"),
                "--clear-groups".into(),
            ]);
        }
        argv.push(self.exe.display().to_string());
        argv.extend(
            [
                "--ignored",
                "--exact",
                "probe_entry",
                "--nocapture",
                "--test-threads=1",
            ]
            .map(String::from),
        );
        let mut c = Command::new("sh");
        // Join the cgroup first: `ip netns exec` remounts /sys.
        let join = match &self.cgroup {
            Some(cg) => format!("echo $$ > {}/cgroup.procs && ", cg.display()),
            None => String::new(),
        };
        c.arg("-c")
            .arg(format!("{join}exec \"$@\""))
            .arg("sh")
            .args(&argv)
            .env("PF_PROBE", spec);
        c
    }

    /// Runs a probe to completion: its pid and result.
    fn run(&self, spec: &str) -> (u32, String) {
        let child = self
            .command(spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let r = text
            .lines()
            .find_map(|l| l.split_once("PFPROBE ").map(|x| x.1))
            .unwrap_or_else(|| {
                panic!(
                    "probe {spec:?} printed no result: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string();
        (pid, r)
    }

    fn result(&self, spec: &str) -> String {
        self.run(spec).1
    }

    /// Starts a long-running probe and waits for its first line.
    fn spawn(&self, spec: &str, ready: &str) -> (Child, BufReader<std::process::ChildStdout>) {
        let mut child = self
            .command(spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "probe {spec:?} ended before {ready:?}"
            );
            if line.trim().ends_with(&format!("PFPROBE {ready}")) {
                break;
            }
            assert!(
                !line.contains("PFPROBE"),
                "probe {spec:?} said {line:?}, not {ready:?}"
            );
        }
        (child, out)
    }
}

/// A rules file in a temporary directory, removed on drop.
struct RulesFile {
    dir: PathBuf,
    path: PathBuf,
}

impl RulesFile {
    fn new(tag: &str, text: &str) -> RulesFile {
        let dir = std::env::temp_dir().join(format!("pf-rules-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = RulesFile {
            path: dir.join("rules.toml"),
            dir,
        };
        f.write(text);
        f
    }

    fn write(&self, text: &str) {
        let tmp = self.dir.join("rules.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cgroup v2 directory, removed on drop.
struct Cgroup(PathBuf, String);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
            })
            .expect("no cgroup v2 hierarchy mounted");
        let dir = root.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        Cgroup(dir, format!("/{name}"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A copy of the test binary under another name, removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn new(tag: &str, name: &str) -> Copy {
        let dir = std::env::temp_dir().join(format!("pf-copy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::copy(test_binary(), &p).unwrap();
        Copy(std::fs::canonicalize(p).unwrap())
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

fn start(rules: &RulesFile, extra: &[&str]) -> Procflow {
    let mut args = vec!["--rules", rules.arg()];
    args.extend_from_slice(extra);
    Procflow::start(&args)
}

fn verdicts(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "verdict").collect()
}

fn verdicts_of(records: &[Value], pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "verdict" && r["process"]["pid"].as_u64() == Some(pid.into()))
        .collect()
}

// ---- tests ----

#[test]
fn exe_blocks_the_binary_and_a_renamed_copy_only_by_its_own_path() {
    let p = Pair::new("rexe", 60);
    let copy = Copy::new("rexe", "renamed-probe");
    let me = test_binary();
    let b4 = p.b4.to_string();
    let rules = RulesFile::new(
        "rexe",
        &format!(
            r#"
[[rule]]
name = "block-test-binary"
action = "block"
exe = "{}"
remote = "{b4}"
remote_port = 7001

[[rule]]
name = "block-renamed-copy"
action = "block"
exe = "*/renamed-probe"
remote = "{b4}"
remote_port = 7002

[[rule]]
name = "allow-rest-of-b"
action = "allow"
remote = "{b4}"
"#,
            me.display()
        ),
    );
    let pf = start(&rules, &[]);
    let orig = As::new(&p.a);
    let copied = As {
        exe: copy.0.clone(),
        ..As::new(&p.a)
    };
    let (blocked_pid, r) = orig.run(&format!("tcp {b4} 7001"));
    assert_eq!(r, EPERM, "the test binary to port 7001 is blocked");
    assert_eq!(
        copied.result(&format!("tcp {b4} 7001")),
        REFUSED,
        "the copy lives elsewhere"
    );
    let (copy_pid, r) = copied.run(&format!("tcp {b4} 7002"));
    assert_eq!(r, EPERM, "the copy is blocked by its own path");
    assert_eq!(orig.result(&format!("tcp {b4} 7002")), REFUSED);
    // An allowed connection that completes: its flow carries the rule.
    let (server, _) = As::new(&p.b).spawn("listen 4 7003", "listening");
    let _server = Reaped::new(server);
    let (allowed_pid, r) = orig.run(&format!("tcp {b4} 7003"));
    assert_eq!(r, "ok");
    pf.wait_closed(&p.a, 1, "allowed", |f| {
        f["remote_port"] == 7003 && f["process"]["pid"].as_u64() == Some(allowed_pid.into())
    });
    pf.wait_records(10, "the two blocked attempts' verdicts", |recs| {
        !verdicts_of(recs, blocked_pid).is_empty() && !verdicts_of(recs, copy_pid).is_empty()
    });
    let recs = pf.stop();

    // Verdict records: one per blocked attempt, exact.
    let v = verdicts_of(&recs, blocked_pid);
    assert_eq!(v.len(), 1, "{v:#?}");
    let v = v[0];
    assert_eq!(v["verdict"], "block");
    assert_eq!(v["rule"], "block-test-binary");
    assert_eq!(v["rule_index"], 0);
    assert_eq!(v["hook"], "connect");
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["family"], 4);
    assert_eq!(v["direction"], "out");
    assert_eq!(v["remote_ip"], b4);
    assert_eq!(v["remote_port"], 7001);
    assert_eq!(v["netns"].as_u64(), Some(p.a.inode()));
    assert_eq!(v["process"]["exe"], me.display().to_string());
    assert_eq!(v["process"]["comm"], comm_of(&me));
    assert_eq!(v["process"]["uid"], 0);
    assert_eq!(v["process"]["user"], "root");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    let v = verdicts_of(&recs, copy_pid);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["rule"], "block-renamed-copy");
    assert_eq!(v[0]["process"]["exe"], copy.0.display().to_string());
    // No verdict record for allowed connections.
    assert!(verdicts_of(&recs, allowed_pid).is_empty());
    let flows = common::final_flows(&recs);
    let f = common::one_flow(&flows, &p.a, "allowed", |f| {
        f["remote_port"] == 7003 && f["process"]["pid"].as_u64() == Some(allowed_pid.into())
    });
    assert_eq!(f["verdict"], "allow");
    assert_eq!(f["rule"], "allow-rest-of-b");
}

#[test]
fn user_and_cgroup_conditions() {
    let p = Pair::new("ruser", 61);
    let cg = Cgroup::new("pf-rules-test-61");
    let b4 = p.b4.to_string();
    let rules = RulesFile::new(
        "ruser",
        &format!(
            r#"
[[rule]]
name = "nobody-no-7100"
action = "block"
user = 65534
remote = "{b4}"
remote_port = 7100

[[rule]]
name = "cgroup-no-7101"
action = "block"
cgroup = "{}"
remote = "{b4}"
remote_port = 7101
"#,
            cg.1
        ),
    );
    let pf = start(&rules, &[]);
    let root = As::new(&p.a);
    let nobody = As {
        uid: Some(65534),
        ..As::new(&p.a)
    };
    let inside = As {
        cgroup: Some(cg.0.clone()),
        ..As::new(&p.a)
    };
    let (pid, r) = nobody.run(&format!("tcp {b4} 7100"));
    assert_eq!(r, EPERM);
    assert_eq!(root.result(&format!("tcp {b4} 7100")), REFUSED);
    assert_eq!(nobody.result(&format!("tcp {b4} 7101")), REFUSED);
    let (cpid, r) = inside.run(&format!("tcp {b4} 7101"));
    assert_eq!(r, EPERM);
    assert_eq!(root.result(&format!("tcp {b4} 7101")), REFUSED);
    assert_eq!(inside.result(&format!("tcp {b4} 7100")), REFUSED);
    let recs = pf.stop();
    let v = verdicts_of(&recs, pid);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["rule"], "nobody-no-7100");
    assert_eq!(v[0]["process"]["uid"], 65534);
    assert_eq!(v[0]["process"]["user"], "nobody");
    let v = verdicts_of(&recs, cpid);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["rule"], "cgroup-no-7101");
    assert_eq!(v[0]["process"]["cgroup"], cg.1);
}

#[test]
fn prefixes_port_ranges_udp_and_icmp() {
    let p = Pair::new("rnet", 62);
    let (b4, b6) = (p.b4.to_string(), p.b6.to_string());
    let rules = RulesFile::new(
        "rnet",
        &format!(
            r#"
[[rule]]
name = "v6-prefix"
action = "block"
remote = "fd00:199:62::/64"
remote_port = "7200-7210"

[[rule]]
name = "v4-prefix-range"
action = "block"
remote = "10.199.62.0/24"
proto = "tcp"
remote_port = ["7300-7310", 7400]

[[rule]]
name = "udp-5300"
action = "block"
proto = "udp"
remote = "{b4}"
remote_port = "5300-5301"

[[rule]]
name = "no-ping-b4"
action = "block"
proto = "icmp"
remote = "{b4}"
"#
        ),
    );
    let pf = start(&rules, &[]);
    let a = As::new(&p.a);
    let t6 = |port: u16| a.result(&format!("tcp {b6} {port}"));
    let t4 = |port: u16| a.result(&format!("tcp {b4} {port}"));
    assert_eq!(t6(7200), EPERM);
    assert_eq!(t6(7210), EPERM);
    assert_eq!(t6(7211), REFUSED);
    assert_eq!(t6(7199), REFUSED);
    assert_eq!(t4(7205), REFUSED, "the v6 rule does not match v4");
    assert_eq!(t4(7300), EPERM);
    assert_eq!(t4(7310), EPERM);
    assert_eq!(t4(7311), REFUSED);
    assert_eq!(t4(7400), EPERM);
    assert_eq!(t4(7401), REFUSED);
    assert_eq!(t6(7300), REFUSED, "the v4 rule does not match v6");
    // UDP: connected (at connect) and unconnected (at sendmsg).
    let (upid, r) = a.run(&format!("udpc {b4} 5300"));
    assert_eq!(r, EPERM);
    let (spid, r) = a.run(&format!("udps {b4} 5301"));
    assert_eq!(r, EPERM);
    assert_eq!(a.result(&format!("udps {b4} 5302")), "ok");
    assert_eq!(a.result(&format!("udpc {b4} 5302")), "ok");
    assert_eq!(t4(5300), REFUSED, "the udp rule does not match tcp");
    // ICMP at egress.
    let (ppid, r) = a.run(&format!("ping {b4}"));
    assert_eq!(r, EPERM);
    assert_eq!(a.result(&format!("ping {b6}")), "ok");
    let recs = pf.stop();
    let one = |pid: u32| {
        let v = verdicts_of(&recs, pid);
        assert_eq!(v.len(), 1, "{v:#?}");
        v[0].clone()
    };
    let v = one(upid);
    assert_eq!(
        (v["rule"].as_str(), v["proto"].as_str()),
        (Some("udp-5300"), Some("udp"))
    );
    assert_eq!(v["hook"], "connect");
    let v = one(spid);
    assert_eq!(
        (v["rule"].as_str(), v["hook"].as_str()),
        (Some("udp-5300"), Some("sendmsg"))
    );
    assert_eq!(v["remote_port"], 5301);
    let v = one(ppid);
    assert_eq!(v["rule"], "no-ping-b4");
    assert_eq!(v["proto"], "icmp");
    assert_eq!(v["hook"], "egress");
    assert_eq!(v["remote_ip"], b4);
}

#[test]
fn inbound_connections_refused_at_their_first_packet() {
    let p = Pair::new("rin", 63);
    let copy = Copy::new("rin", "blocked-server");
    let b4 = p.b4.to_string();
    let rules = RulesFile::new(
        "rin",
        &format!(
            r#"
[[rule]]
name = "no-inbound-7501"
action = "block"
direction = "in"
local_port = 7501
remote = "{}"

[[rule]]
name = "blocked-server-process"
action = "block"
direction = "in"
exe = "*/blocked-server"
remote = "{}"
"#,
            p.a4, p.a4
        ),
    );
    let pf = start(&rules, &[]);
    let server = As::new(&p.b);
    let bad_server = As {
        exe: copy.0.clone(),
        ..As::new(&p.b)
    };
    let (s1, _) = server.spawn("listen 4 7500", "listening");
    let (s2, _) = server.spawn("listen 4 7501", "listening");
    let (s3, _) = bad_server.spawn("listen 4 7502", "listening");
    let (_s1, _s2, _s3) = (Reaped::new(s1), Reaped::new(s2), Reaped::new(s3));
    let a = As::new(&p.a);
    assert_eq!(a.result(&format!("tcp {b4} 7500")), "ok");
    assert_eq!(
        a.result(&format!("tcp {b4} 7501")),
        "timeout",
        "SYN dropped"
    );
    assert_eq!(
        a.result(&format!("tcp {b4} 7502")),
        "timeout",
        "SYN dropped"
    );
    let recs = pf.stop();
    let v: Vec<_> = verdicts(&recs)
        .into_iter()
        .filter(|v| v["netns"].as_u64() == Some(p.b.inode()))
        .collect();
    assert!(
        v.iter()
            .any(|v| v["rule"] == "no-inbound-7501" && v["local_port"] == 7501),
        "{v:#?}"
    );
    let bad: Vec<_> = v
        .iter()
        .filter(|v| v["rule"] == "blocked-server-process")
        .collect();
    assert!(!bad.is_empty(), "{v:#?}");
    for v in &v {
        assert_eq!(v["direction"], "in");
        assert_eq!(v["hook"], "ingress");
        assert_eq!(v["remote_ip"], p.a4.to_string());
    }
    assert_eq!(bad[0]["process"]["exe"], copy.0.display().to_string());
    // The allowed connection's accepted socket carries the SYN's verdict.
    let flows = common::final_flows(&recs);
    let f = common::one_flow(&flows, &p.b, "accepted on 7500", |f| {
        f["proto"] == "tcp" && f["local_port"] == 7500 && f["direction"] == "in"
    });
    assert_eq!(f["verdict"], "allow", "{f}");
    assert!(
        f.get("rule").is_none_or(Value::is_null),
        "the default decided: {f}"
    );
}

/// Inbound UDP is decided at a flow's first datagram: a blocked flow's
/// datagrams never reach the socket (one verdict, however many datagrams),
/// while replies to what a socket sent are never taken for inbound flows.
#[test]
fn inbound_udp_decided_at_the_first_datagram_of_a_flow() {
    let p = Pair::new("rudp", 67);
    let (a4, b4) = (p.a4.to_string(), p.b4.to_string());
    let rules = RulesFile::new(
        "rudp",
        &format!(
            r#"
[[rule]]
name = "no-inbound-udp-7711"
action = "block"
direction = "in"
proto = "udp"
local_port = 7711

[[rule]]
name = "nothing-unasked-from-b"
action = "block"
direction = "in"
proto = "udp"
remote = "{b4}"
"#
        ),
    );
    let pf = start(&rules, &[]);
    // Allowed: 7710 answers every datagram; the answers reach the sender,
    // though a rule blocks inbound UDP from b at a, because they are replies.
    let (ok, _) = common::serve(
        &p.b,
        &[
            "udp-recv",
            "--bind",
            &format!("{b4}:7710"),
            "--count",
            "5",
            "--reply",
            "100",
        ],
    );
    let sent = common::client(
        &p.a,
        &[
            "udp-send",
            "--to",
            &format!("{b4}:7710"),
            "--size",
            "200",
            "--count",
            "5",
            "--expect-reply",
        ],
    );
    assert_eq!(common::u(&sent, "reply_bytes"), 500);
    assert_eq!(common::u(&common::finish(ok), "received"), 1000);

    // Blocked: 7711 gets nothing of three datagrams.
    let (mut blocked, _) = common::serve(
        &p.b,
        &["udp-recv", "--bind", &format!("{b4}:7711"), "--count", "1"],
    );
    common::client(
        &p.a,
        &[
            "udp-send",
            "--to",
            &format!("{b4}:7711"),
            "--size",
            "200",
            "--count",
            "3",
        ],
    );
    // Unasked datagrams from b to a are blocked at a.
    let (mut at_a, _) = common::serve(
        &p.a,
        &["udp-recv", "--bind", &format!("{a4}:7712"), "--count", "1"],
    );
    common::client(
        &p.b,
        &[
            "udp-send",
            "--to",
            &format!("{a4}:7712"),
            "--size",
            "200",
            "--count",
            "2",
        ],
    );
    // The decisions are made (their verdicts are logged) when the first
    // datagram arrives; by then a datagram let through would have reached
    // its receiver, which exits at its first.
    pf.wait_records(10, "verdicts for 7711 and 7712", |recs| {
        [7711, 7712].iter().all(|&port| {
            verdicts(recs)
                .iter()
                .any(|v| v["proto"] == "udp" && v["local_port"] == port)
        })
    });
    pf.wait_closed(&p.b, 1, "7710 receiver", |f| {
        f["proto"] == "udp" && f["local_port"] == 7710
    });
    std::thread::sleep(Duration::from_millis(100));
    for (what, child) in [("7711", &mut blocked), ("a:7712", &mut at_a)] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the receiver on {what} got a datagram"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    let recs = pf.stop();
    let v = verdicts(&recs);
    let on = |port: u64| -> Vec<&&Value> {
        v.iter()
            .filter(|v| v["proto"] == "udp" && v["local_port"] == port)
            .collect()
    };
    let v7711 = on(7711);
    assert_eq!(
        v7711.len(),
        1,
        "one verdict for three datagrams: {v7711:#?}"
    );
    assert_eq!(v7711[0]["rule"], "no-inbound-udp-7711");
    assert_eq!(v7711[0]["direction"], "in");
    assert_eq!(v7711[0]["hook"], "ingress");
    assert_eq!(v7711[0]["remote_ip"], a4);
    let v7712 = on(7712);
    assert_eq!(v7712.len(), 1, "{v7712:#?}");
    assert_eq!(v7712[0]["rule"], "nothing-unasked-from-b");
    assert!(on(7710).is_empty(), "7710 was allowed: {v:#?}");

    // The allowed inbound flow carries its verdict; nothing of 7711 counted.
    let flows = common::final_flows(&recs);
    let f = common::one_flow(&flows, &p.b, "7710 receiver", |f| {
        f["proto"] == "udp" && f["local_port"] == 7710
    });
    assert_eq!(f["verdict"], "allow", "{f}");
    assert_eq!(common::u(f, "rx_payload"), 1000, "{f}");
    let none = common::flows_in(&flows, &p.b, |f| f["local_port"] == 7711);
    assert!(none.is_empty(), "{none:#?}");
}

/// SIGHUP reloads: each reload is acknowledged by a `rules` record
/// (accepted: the next generation; refused: the generation in force, and
/// the problem as file:line:column), and a refused file leaves the rules in
/// force untouched.
#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_rules_in_force() {
    let p = Pair::new("rhup", 64);
    let b4 = p.b4.to_string();
    let block = |port: u16| {
        format!(
            "[[rule]]\nname = \"block-{port}\"\naction = \"block\"\nremote = \"{b4}\"\n\
             remote_port = {port}\n"
        )
    };
    let rules = RulesFile::new("rhup", &block(7600));
    let pf = start(&rules, &[]);
    let first = pf.wait_rules_ack(1);
    assert_eq!(
        (&first["outcome"], &first["generation"], &first["rules"]),
        (&"accepted".into(), &1.into(), &1.into()),
        "{first}"
    );
    assert_eq!(first["path"], rules.arg(), "{first}");
    assert!(first["error"].is_null(), "{first}");
    let a = As::new(&p.a);
    let t = |port: u16| a.result(&format!("tcp {b4} {port}"));
    assert_eq!((t(7600), t(7601)), (EPERM.into(), REFUSED.into()));
    rules.write(&block(7601));
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let second = pf.wait_rules_ack(2);
    assert_eq!(
        (&second["outcome"], &second["generation"], &second["rules"]),
        (&"accepted".into(), &2.into(), &1.into()),
        "{second}"
    );
    // Acknowledged means in force.
    assert_eq!((t(7600), t(7601)), (REFUSED.into(), EPERM.into()));
    // A bad file: refused, the rules in force stay.
    rules.write(&format!(
        "{}\n[[rule]]\nname = \"x\"\naction = \"block\"\nremote_prot = 1\n",
        block(7600)
    ));
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let third = pf.wait_rules_ack(3);
    assert_eq!(
        (&third["outcome"], &third["generation"], &third["rules"]),
        (&"refused".into(), &2.into(), &1.into()),
        "the refusal repeats the generation in force: {third}"
    );
    let err = third["error"].as_str().unwrap_or_else(|| panic!("{third}"));
    // Line 10, column 1 of the file: the misspelt key.
    assert!(
        err.starts_with(&format!("{}:10:1: ", rules.arg())) && err.contains("remote_prot"),
        "{err}"
    );
    assert_eq!((t(7600), t(7601)), (REFUSED.into(), EPERM.into()));
    let recs = pf.stop();
    let acks: Vec<&Value> = recs.iter().filter(|r| r["type"] == "rules").collect();
    assert_eq!(acks.len(), 3, "one acknowledgement per load: {acks:#?}");
    let names: Vec<_> = verdicts(&recs)
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(p.a.inode()))
        .map(|v| v["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["block-7600", "block-7601", "block-7601"]);
}

#[test]
fn enforce_existing_closes_a_connection_the_new_rules_block() {
    let p = Pair::new("rex", 65);
    let b4 = p.b4.to_string();
    let rules = RulesFile::new(
        "rex",
        &format!(
            "[[rule]]\nname = \"other\"\naction = \"block\"\nremote = \"{b4}\"\nremote_port = 1\n"
        ),
    );
    let pf = start(&rules, &["--enforce-existing"]);
    let server = As::new(&p.b);
    let (s1, _) = server.spawn("listen 4 7700", "listening");
    let (s2, _) = server.spawn("listen 4 7701", "listening");
    let (_s1, _s2) = (Reaped::new(s1), Reaped::new(s2));
    let a = As::new(&p.a);
    let (victim, vout) = a.spawn(&format!("hold {b4} 7700"), "connected");
    let (keeper, kout) = a.spawn(&format!("hold {b4} 7701"), "connected");
    let (_v, _k) = (Reaped::new(victim), Reaped::new(keeper));
    let next_line = |mut out: BufReader<std::process::ChildStdout>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
        });
        rx
    };
    let (victim_end, keeper_end) = (next_line(vout), next_line(kout));
    rules.write(&format!(
        "[[rule]]\nname = \"close-7700\"\naction = \"block\"\ndirection = \"out\"\n\
         remote = \"{b4}\"\nremote_port = 7700\n"
    ));
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let ack = pf.wait_rules_ack(2);
    assert_eq!(ack["outcome"], "accepted", "{ack}");
    let line = victim_end
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection the new rules block was not closed");
    assert_eq!(
        line.trim().rsplit("PFPROBE ").next().unwrap(),
        "closed err 103",
        "ECONNABORTED in the owner"
    );
    assert!(
        keeper_end.recv_timeout(Duration::from_millis(500)).is_err(),
        "a connection the rules allow was closed"
    );
    // New connections to 7700 are refused at connect.
    assert_eq!(a.result(&format!("tcp {b4} 7700")), EPERM);
    pf.stop();
}

/// The prefixes that cover every address outside `net/len` (its
/// complement), so that rules can leave other traffic alone.
fn complement(net: IpAddr, len: u32) -> Vec<String> {
    let (bits, total) = match net {
        IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    (0..len)
        .map(|i| {
            let flipped = (bits ^ (1u128 << (127 - i))) & (u128::MAX << (127 - i));
            let addr: IpAddr = if total == 32 {
                std::net::Ipv4Addr::from((flipped >> 96) as u32).into()
            } else {
                std::net::Ipv6Addr::from(flipped).into()
            };
            format!("{addr}/{}", i + 1)
        })
        .collect()
}

fn my_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("no cgroup v2 line in /proc/self/cgroup")
}

// ---- the kernel agrees with the compiled matcher ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

#[test]
fn kernel_decisions_equal_compiled_decide_on_random_rule_sets() {
    let p = Pair::new("rprop", 66);
    for extra in ["10.199.66.3/24", "10.199.66.4/24"] {
        let dev = "pfb66";
        p.b.exec(&["ip", "addr", "add", extra, "dev", dev]);
    }
    p.b.exec(&[
        "ip",
        "addr",
        "add",
        "fd00:199:66::3/64",
        "dev",
        "pfb66",
        "nodad",
    ]);
    let copy = Copy::new("rprop", "prop-copy");
    let me = test_binary();
    let cg = Cgroup::new("pf-rules-prop-66");
    let seed = std::env::var("PF_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        },
        |s| s.parse().unwrap(),
    );
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let remotes = [
        "10.199.66.2",
        "10.199.66.3",
        "10.199.66.4",
        "fd00:199:66::2",
        "fd00:199:66::3",
    ];
    let prefixes = [
        "10.199.66.0/24",
        "10.199.66.2",
        "10.199.66.3",
        "10.199.66.0/31",
        "fd00:199:66::/64",
        "fd00:199:66::3",
    ];
    let ports = [7800u16, 7801, 7805, 7810, 7811];
    let exes = [
        me.display().to_string(),
        copy.0.display().to_string(),
        format!("*/{}", me.file_name().unwrap().to_string_lossy()),
        "*/prop-copy".to_string(),
        format!("{}/*", me.parent().unwrap().display()),
    ];
    let mine = my_cgroup();
    let mut checked = 0;
    for round in 0..6 {
        // A random rule set, every rule scoped to this test's addresses.
        let mut text = String::new();
        if rng.chance(30) {
            text.push_str("default = \"block\"\n");
        }
        let n = 1 + rng.next() % 6;
        for i in 0..n {
            let action = if rng.chance(60) { "block" } else { "allow" };
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\naction = \"{action}\"\n"
            ));
            text.push_str(&format!("remote = \"{}\"\n", rng.pick(&prefixes)));
            if rng.chance(40) {
                text.push_str(&format!("exe = \"{}\"\n", rng.pick(&exes)));
            }
            if rng.chance(25) {
                text.push_str(&format!("user = {}\n", rng.pick(&[0, 65534])));
            }
            if rng.chance(20) {
                text.push_str(&format!("cgroup = \"{}\"\n", cg.1));
            }
            if rng.chance(20) {
                text.push_str(&format!("comm = \"{}\"\n", comm_of(&me)));
            }
            if rng.chance(30) {
                text.push_str(&format!(
                    "proto = \"{}\"\n",
                    rng.pick(&["tcp", "udp", "any"])
                ));
            }
            if rng.chance(50) {
                let lo = *rng.pick(&ports);
                let hi = lo + (rng.next() % 8) as u16;
                text.push_str(&format!("remote_port = \"{lo}-{hi}\"\n"));
            }
            if rng.chance(15) {
                text.push_str("direction = \"out\"\n");
            }
        }
        // Every rule names this test's addresses; a last rule allows
        // everything else, so that a default of block touches nothing else.
        let mut outside = complement("10.199.66.0".parse().unwrap(), 24);
        outside.extend(complement("fd00:199:66::".parse().unwrap(), 64));
        let outside: Vec<String> = outside.iter().map(|p| format!("\"{p}\"")).collect();
        let text = format!(
            "{text}\n[[rule]]\nname = \"outside\"\naction = \"allow\"\nremote = [{}]\n",
            outside.join(", ")
        );
        let rules = parse_rules("prop.toml", &text, &NoUsers)
            .unwrap_or_else(|e| panic!("round {round}: generated a bad file:\n{text}\n{e}"));
        let compiled = CompiledRules::compile(&rules);
        let file = RulesFile::new(&format!("rprop{round}"), &text);
        let pf = start(&file, &[]);
        for _ in 0..6 {
            let in_cg = rng.chance(30);
            let uid = *rng.pick(&[0u32, 65534]);
            let exe = if rng.chance(50) {
                me.clone()
            } else {
                copy.0.clone()
            };
            let remote: IpAddr = rng.pick(&remotes).parse().unwrap();
            let port = *rng.pick(&ports) + (rng.next() % 3) as u16;
            let udp = rng.chance(30);
            let how = As {
                exe: exe.clone(),
                ns: &p.a,
                uid: (uid != 0).then_some(uid),
                cgroup: in_cg.then(|| cg.0.clone()),
            };
            let spec = format!("{} {remote} {port}", if udp { "udpc" } else { "tcp" });
            let got = how.result(&spec);
            let exe_s = exe.display().to_string();
            let comm = comm_of(&exe);
            let anc = cgroup_ancestors(if in_cg { &cg.1 } else { &mine });
            let q = Query {
                exe: &exe_s,
                comm: &comm,
                uid,
                cgroup_ancestors: &anc,
                direction: Direction::Out,
                proto: if udp { 17 } else { 6 },
                remote,
                remote_port: port,
                local_port: 0,
            };
            let want = compiled.decide(&q);
            let blocked = got == EPERM;
            assert_eq!(
                blocked,
                want.action == procflow_core::rules::Action::Block,
                "seed {seed} round {round}: {spec} as uid {uid} exe {exe_s} cgroup {in_cg}: \
                 kernel said {got}, compiled decide says {want:?}\nrules:\n{text}"
            );
            checked += 1;
        }
        pf.stop();
    }
    assert_eq!(checked, 36);
}

#[test]
fn complement_covers_everything_but_the_prefix() {
    let c = complement("10.199.66.0".parse().unwrap(), 24);
    assert_eq!(c.len(), 24);
    assert_eq!(c[0], "128.0.0.0/1");
    assert_eq!(c[23], "10.199.67.0/24");
}
