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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_for, Netns, Pair, Procflow, Reaped};
use procflow_core::rules::{cgroup_ancestors, parse_rules, Direction, NoUsers, Query};
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
        "multi" => spec["multi".len()..]
            .split(';')
            .map(|op| outbound_op(op.trim()))
            .collect::<Vec<_>>()
            .join(";"),
        "listen2" => listen2(words[1].parse().unwrap()),
        "udprecv2" => udp_recv2(words[1].parse().unwrap()),
        "connmany" => conn_many(&spec["connmany".len()..]),
        "udpmany" => udp_many(&spec["udpmany".len()..]),
        w => panic!("unknown probe {w}"),
    };
    println!("PFPROBE {result}");
}

/// One outbound attempt, `KIND IP PORT LPORT` (KIND tcp, udpc, udps; LPORT
/// 0: not bound, the kernel picks the port after the decision) or
/// `ping IP`: its result as `tcp_connect` and `udp` give it.
fn outbound_op(op: &str) -> String {
    use socket2::{Domain, Socket, Type};
    let w: Vec<&str> = op.split_whitespace().collect();
    if w[0] == "ping" {
        return ping_reply(w[1].parse().unwrap());
    }
    let to = SocketAddr::new(w[1].parse().unwrap(), w[2].parse().unwrap());
    let lport: u16 = w[3].parse().unwrap();
    let ty = if w[0] == "tcp" {
        Type::STREAM
    } else {
        Type::DGRAM
    };
    let s = Socket::new(Domain::for_address(to), ty, None).unwrap();
    if lport != 0 {
        let any: IpAddr = if to.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        s.set_reuse_address(true).unwrap();
        if let Err(e) = s.bind(&SocketAddr::new(any, lport).into()) {
            return format!("bind {}", errno(&e));
        }
    }
    let r = match w[0] {
        "tcp" => s.connect_timeout(&to.into(), Duration::from_millis(1500)),
        "udpc" => s
            .connect(&to.into())
            .and_then(|()| s.send(b"x").map(|_| ())),
        "udps" => s.send_to(b"x", &to.into()).map(|_| ()),
        k => panic!("unknown outbound op {k}"),
    };
    match r {
        Ok(()) => "ok".into(),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
        Err(e) => errno(&e),
    }
}

/// A socket of `ty` bound to `local` (IPv6 sockets IPv6 only, so that an
/// IPv4 and an IPv6 socket can share a port).
fn bound(ty: socket2::Type, local: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(local), ty, None)?;
    s.set_reuse_address(true)?;
    if local.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&local.into())?;
    Ok(s)
}

fn any_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new("0.0.0.0".parse().unwrap(), port),
        SocketAddr::new("::".parse().unwrap(), port),
    ]
}

/// Listens on PORT, IPv4 and IPv6, prints "PFPROBE listening", accepts and
/// drops connections until killed.
fn listen2(port: u16) -> String {
    let ls: Vec<std::net::TcpListener> = any_addrs(port)
        .into_iter()
        .map(|a| {
            let s = bound(socket2::Type::STREAM, a).unwrap();
            s.listen(128).unwrap();
            s.into()
        })
        .collect();
    println!("PFPROBE listening");
    let hs: Vec<_> = ls
        .into_iter()
        .map(|l| std::thread::spawn(move || for _ in l.incoming() {}))
        .collect();
    for h in hs {
        let _ = h.join();
    }
    "done".into()
}

/// Receives on PORT, IPv4 and IPv6, after printing "PFPROBE listening";
/// prints "PFPROBE got SRC_IP SRC_PORT PORT" for each datagram, until killed.
fn udp_recv2(port: u16) -> String {
    let ss: Vec<std::net::UdpSocket> = any_addrs(port)
        .into_iter()
        .map(|a| bound(socket2::Type::DGRAM, a).unwrap().into())
        .collect();
    println!("PFPROBE listening");
    let hs: Vec<_> = ss
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = s.recv_from(&mut buf) {
                    println!("PFPROBE got {} {} {port}", from.ip(), from.port());
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    "done".into()
}

/// `SRC SPORT DST DPORT;...`: the attempts of `connmany` and `udpmany`.
fn attempts(list: &str) -> Vec<(SocketAddr, SocketAddr)> {
    list.split(';')
        .map(|a| {
            let w: Vec<&str> = a.split_whitespace().collect();
            let at = |i: usize| SocketAddr::new(w[i].parse().unwrap(), w[i + 1].parse().unwrap());
            (at(0), at(2))
        })
        .collect()
}

/// TCP connects, all at once, each from its own bound source address and
/// port (0: any) with a 1 s timeout; each result is "ok", "timeout" or
/// "err N", then the source port. Connections are reset at once (linger 0),
/// so no TIME_WAIT keeps a source port.
fn conn_many(list: &str) -> String {
    let hs: Vec<_> = attempts(list)
        .into_iter()
        .map(|(src, dst)| {
            std::thread::spawn(move || {
                let s = match bound(socket2::Type::STREAM, src) {
                    Ok(s) => s,
                    Err(e) => return format!("bind {} 0", errno(&e)),
                };
                let port = s.local_addr().unwrap().as_socket().unwrap().port();
                let r = match s.connect_timeout(&dst.into(), Duration::from_millis(1000)) {
                    Ok(()) => {
                        s.set_linger(Some(Duration::ZERO)).unwrap();
                        "ok".to_string()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
                    Err(e) => errno(&e),
                };
                format!("{r} {port}")
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap())
        .collect::<Vec<_>>()
        .join(";")
}

/// One datagram per attempt, each from its own socket bound to the source
/// address and port (0: any); each result is "ok" or "err N", then the
/// source port.
fn udp_many(list: &str) -> String {
    attempts(list)
        .into_iter()
        .map(|(src, dst)| {
            let s = match bound(socket2::Type::DGRAM, src) {
                Ok(s) => s,
                Err(e) => return format!("bind {} 0", errno(&e)),
            };
            let port = s.local_addr().unwrap().as_socket().unwrap().port();
            let r = match s.send_to(b"x", &dst.into()) {
                Ok(_) => "ok".to_string(),
                Err(e) => errno(&e),
            };
            format!("{r} {port}")
        })
        .collect::<Vec<_>>()
        .join(";")
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

/// One echo request over a ping socket, then its reply: "ok" when the
/// reply came within a second, "no reply", or the error of `sendto`. (A
/// dropped ICMPv6 request is not reported to the sender: IPv6 ping
/// sockets do not return the egress drop from `sendto`, IPv4 ones do.)
fn ping_reply(to: IpAddr) -> String {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, proto, kind) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8),
    };
    let s = Socket::new(domain, Type::DGRAM, Some(proto)).expect("ping socket");
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let pkt = [kind, 0, 0, 0, 0, 0, 0, 1, b'p', b'f'];
    if let Err(e) = s.send_to(&pkt, &SocketAddr::new(to, 0).into()) {
        return errno(&e);
    }
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    match s.recv(&mut buf) {
        Ok(_) => "ok".into(),
        Err(_) => "no reply".into(),
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

/// Reads the next line of a held probe's output on a thread of its own.
fn next_line(mut out: BufReader<std::process::ChildStdout>) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
    });
    rx
}

#[test]
fn enforce_existing_decides_by_the_leaders_comm_as_the_connect_hook_does() {
    // Probes connect from a thread named after the test (`probe_entry`);
    // the process's comm (its leader's) is the binary's name. The kernel
    // decides by the latter; so must --enforce-existing.
    let p = Pair::new("rexc", 110);
    let b4 = p.b4.to_string();
    let copy = Copy::new("rexc", "pf-exc-probe");
    let comm = comm_of(&copy.0);
    let rules = RulesFile::new(
        "rexc",
        "[[rule]]\nname = \"x\"\naction = \"block\"\nremote_port = 1\n",
    );
    let pf = start(&rules, &["--enforce-existing"]);
    let server = As::new(&p.b);
    let (s1, _) = server.spawn("listen 4 7710", "listening");
    let (s2, _) = server.spawn("listen 4 7711", "listening");
    let (_s1, _s2) = (Reaped::new(s1), Reaped::new(s2));
    let a = As {
        exe: copy.0.clone(),
        ..As::new(&p.a)
    };
    let (victim, vout) = a.spawn(&format!("hold {b4} 7710"), "connected");
    let other = As::new(&p.a);
    let (keeper, kout) = other.spawn(&format!("hold {b4} 7710"), "connected");
    let (_v, _k) = (Reaped::new(victim), Reaped::new(keeper));
    let (victim_end, keeper_end) = (next_line(vout), next_line(kout));
    // The thread that connected is not named `comm`: a rule on the thread's
    // name would not match at connect, and must not here either.
    rules.write(&format!(
        "[[rule]]\nname = \"by-comm\"\naction = \"block\"\ncomm = \"{comm}\"\n\
         remote = \"{b4}\"\n\n[[rule]]\nname = \"by-thread\"\naction = \"block\"\n\
         comm = \"probe_entry\"\nremote = \"{b4}\"\n"
    ));
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    assert_eq!(pf.wait_rules_ack(2)["outcome"], "accepted");
    let line = victim_end
        .recv_timeout(Duration::from_secs(5))
        .expect("--enforce-existing did not close the connection of the process named {comm}");
    assert_eq!(
        line.trim().rsplit("PFPROBE ").next().unwrap(),
        "closed err 103"
    );
    assert!(
        keeper_end.recv_timeout(Duration::from_millis(500)).is_err(),
        "a connection was closed by the name of the thread that made it"
    );
    // The kernel hook decides a new connect of each the same way.
    assert_eq!(a.result(&format!("tcp {b4} 7711")), EPERM);
    assert_eq!(other.result(&format!("tcp {b4} 7711")), "ok");
    pf.stop();
}

#[test]
fn enforce_existing_sees_the_executable_as_the_kernel_resolves_it() {
    // Two processes connected before procflow starts. One runs from a path
    // too deep for the kernel's walk (more than 80 components): the kernel
    // resolves no executable for it, so it is an unknown program, for which
    // every block rule with an exe condition holds (its /proc path would
    // match only the `deep` rule; --enforce-existing must decide as the
    // kernel does, by the unknown program). The other runs from a plain
    // path that the rule names.
    let p = Pair::new("rdeep", 111);
    let b4 = p.b4.to_string();
    let base = std::env::temp_dir().join(format!("pf-deep-{}", std::process::id()));
    let deep_dir = (0..100).fold(base.clone(), |d, _| d.join("d"));
    std::fs::create_dir_all(&deep_dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(base.clone());
    let deep_exe = deep_dir.join("pf-deep-probe");
    std::fs::copy(test_binary(), &deep_exe).unwrap();
    let plain = Copy::new("rdeep", "pf-plain-probe");
    let server = As::new(&p.b);
    let (s1, _) = server.spawn("listen 4 7720", "listening");
    let (_s1,) = (Reaped::new(s1),);
    let deep = As {
        exe: deep_exe.clone(),
        ..As::new(&p.a)
    };
    let flat = As {
        exe: plain.0.clone(),
        ..As::new(&p.a)
    };
    let (d, dout) = deep.spawn(&format!("hold {b4} 7720"), "connected");
    let (f, fout) = flat.spawn(&format!("hold {b4} 7720"), "connected");
    let (_d, _f) = (Reaped::new(d), Reaped::new(f));
    let (deep_end, flat_end) = (next_line(dout), next_line(fout));
    let rules = RulesFile::new(
        "rdeep",
        &format!(
            "[[rule]]\nname = \"deep\"\naction = \"block\"\nexe = \"{}/*\"\n\
             remote = \"{b4}\"\n\n[[rule]]\nname = \"plain\"\naction = \"block\"\n\
             exe = \"{}\"\nremote = \"{b4}\"\n",
            base.display(),
            plain.0.display()
        ),
    );
    let pf = start(&rules, &["--enforce-existing"]);
    assert_eq!(pf.wait_rules_ack(1)["outcome"], "accepted");
    let line = flat_end
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection of the executable the rule names was not closed");
    assert_eq!(
        line.trim().rsplit("PFPROBE ").next().unwrap(),
        "closed err 103"
    );
    let line = deep_end
        .recv_timeout(Duration::from_secs(5))
        .expect("the unknown program's connection was not closed");
    assert_eq!(
        line.trim().rsplit("PFPROBE ").next().unwrap(),
        "closed err 103"
    );
    assert_eq!(flat.result(&format!("tcp {b4} 7720")), EPERM);
    assert_eq!(deep.result(&format!("tcp {b4} 7720")), EPERM);
    pf.stop();
}

#[test]
fn a_reload_being_checked_keeps_records_flowing_and_the_old_rules_in_force() {
    // The rules file becomes a FIFO: reading it for the reload waits until
    // the test writes the new rules, however long. Meanwhile the kernel's
    // records must keep being read, and the rules in force keep deciding.
    let p = Pair::new("rslow", 112);
    let b4 = p.b4.to_string();
    let block = |port: u16| {
        format!(
            "[[rule]]\nname = \"block-{port}\"\naction = \"block\"\nremote = \"{b4}\"\n\
             remote_port = {port}\n"
        )
    };
    let rules = RulesFile::new("rslow", &block(7730));
    let pf = start(&rules, &[]);
    assert_eq!(pf.wait_rules_ack(1)["outcome"], "accepted");
    let server = As::new(&p.b);
    let (s1, _) = server.spawn("listen 4 7731", "listening");
    let (_s1,) = (Reaped::new(s1),);
    std::fs::remove_file(&rules.path).unwrap();
    let fifo = std::ffi::CString::new(rules.arg()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let a = As::new(&p.a);
    let (pid, r) = a.run(&format!("tcp {b4} 7730"));
    assert_eq!(r, EPERM, "the rules in force while the reload is read");
    let (pid2, r) = a.run(&format!("tcp {b4} 7731"));
    assert_eq!(r, "ok");
    let recs = pf.wait_records(
        10,
        "records of connections made during the reload",
        |recs| {
            let verdict = recs.iter().any(|r| {
                r["type"] == "verdict" && r["process"]["pid"].as_u64() == Some(pid.into())
            });
            let flow = recs.iter().any(|r| {
                r["type"] == "flow"
                    && r["state"] == "closed"
                    && r["process"]["pid"].as_u64() == Some(pid2.into())
            });
            verdict && flow
        },
    );
    assert_eq!(
        recs.iter().filter(|r| r["type"] == "rules").count(),
        1,
        "the reload is not done yet"
    );
    // The new rules arrive.
    std::fs::write(&rules.path, block(7731)).unwrap();
    let ack = pf.wait_rules_ack(2);
    assert_eq!(
        (&ack["outcome"], &ack["generation"]),
        (&"accepted".into(), &2.into()),
        "{ack}"
    );
    assert_eq!(a.result(&format!("tcp {b4} 7731")), EPERM);
    assert_eq!(a.result(&format!("tcp {b4} 7730")), REFUSED);

    // A rule set the kernel's tables cannot hold is refused on reload, and
    // the rules in force stay.
    std::fs::remove_file(&rules.path).unwrap();
    let comms: String = (0..1024)
        .map(|i| format!("[[rule]]\nname = \"c{i}\"\naction = \"block\"\ncomm = \"c{i}\"\n"))
        .collect();
    rules.write(&comms);
    common::sh(&["kill", "-HUP", &pf.pid().to_string()]);
    let ack = pf.wait_rules_ack(3);
    assert_eq!(
        (&ack["outcome"], &ack["generation"]),
        (&"refused".into(), &2.into()),
        "{ack}"
    );
    let err = ack["error"].as_str().unwrap();
    assert!(
        err.starts_with(&format!(
            "{}:4096:8: too many distinct `comm` values: 1024",
            rules.arg()
        )) && err.contains("at most 1023"),
        "{err}"
    );
    assert_eq!(a.result(&format!("tcp {b4} 7731")), EPERM);
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

// ---- the kernel agrees with the reference evaluator ----

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

/// Who a probe process is: what the rules' process conditions see.
#[derive(Clone, Debug)]
struct Who {
    exe: PathBuf,
    uid: u32,
    in_cg: bool,
}

impl Who {
    fn random(rng: &mut Rng, me: &Path, copy: &Path) -> Who {
        Who {
            exe: if rng.chance(50) {
                me.to_path_buf()
            } else {
                copy.to_path_buf()
            },
            uid: *rng.pick(&[0u32, 65534]),
            in_cg: rng.chance(30),
        }
    }

    fn runs_as<'a>(&self, ns: &'a Netns, cg: &Cgroup) -> As<'a> {
        As {
            exe: self.exe.clone(),
            ns,
            uid: (self.uid != 0).then_some(self.uid),
            cgroup: self.in_cg.then(|| cg.0.clone()),
        }
    }
}

/// What the reference evaluator (rules walked in order, conditions checked
/// directly; not the compiled tables that fill the kernel's maps) decides
/// for `who` making this connection or datagram.
#[expect(clippy::too_many_arguments, reason = "one argument per query field")]
fn reference(
    rules: &procflow_core::rules::Rules,
    who: &Who,
    cg: &Cgroup,
    mine: &str,
    direction: Direction,
    proto: u8,
    remote: IpAddr,
    remote_port: u16,
    local_port: u16,
) -> procflow_core::rules::Decision {
    let exe = who.exe.display().to_string();
    let comm = comm_of(&who.exe);
    let anc = cgroup_ancestors(if who.in_cg { &cg.1 } else { mine });
    let q = Query {
        exe: &exe,
        comm: &comm,
        uid: who.uid,
        cgroup_ancestors: &anc,
        direction,
        proto,
        remote,
        remote_port,
        local_port,
        packet: false,
    };
    procflow_core::rules::reference::decide(rules, &q)
}

fn blocks(d: &procflow_core::rules::Decision) -> bool {
    d.action == procflow_core::rules::Action::Block
}

/// What a long-running probe has said so far.
type Lines = Arc<Mutex<Vec<String>>>;

/// Reads a long-running probe's "PFPROBE ..." lines in the background.
fn collect_lines(mut out: BufReader<std::process::ChildStdout>) -> Lines {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&lines);
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some((_, r)) = line.trim().split_once("PFPROBE ") {
                l.lock().unwrap().push(r.to_string());
            }
            line.clear();
        }
    });
    lines
}

/// Random rule sets, each loaded into the kernel, and random connections
/// and datagrams decided by it: outbound TCP, connected and unconnected UDP
/// and ICMP (IPv4 and IPv6) from random processes (executable, user,
/// cgroup), bound to chosen local ports or not; inbound TCP to listeners
/// and inbound UDP to receivers of random processes, from chosen source
/// addresses and ports. What happened (EPERM, a timeout, a datagram that
/// never arrived) must be what the reference evaluator decides. The seed
/// is printed; `PF_SEED=N` repeats a run.
#[test]
fn kernel_decisions_equal_the_reference_evaluator_on_random_rule_sets() {
    let p = Pair::new("rprop", 66);
    for extra in ["10.199.66.3/24", "10.199.66.4/24"] {
        p.b.exec(&["ip", "addr", "add", extra, "dev", "pfb66"]);
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
        |s| s.parse().expect("PF_SEED must be a number"),
    );
    eprintln!("kernel vs reference: seed {seed} (PF_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let (a4, a6): (IpAddr, IpAddr) = (p.a4, p.a6);
    let b_v4: Vec<IpAddr> = ["10.199.66.2", "10.199.66.3", "10.199.66.4"]
        .map(|s| s.parse().unwrap())
        .to_vec();
    let b_v6: Vec<IpAddr> = ["fd00:199:66::2", "fd00:199:66::3"]
        .map(|s| s.parse().unwrap())
        .to_vec();
    let prefixes = [
        "10.199.66.0/24",
        "10.199.66.1",
        "10.199.66.2",
        "10.199.66.3",
        "10.199.66.0/31",
        "10.199.66.0/30",
        "fd00:199:66::/64",
        "fd00:199:66::1",
        "fd00:199:66::3",
    ];
    // Ports b's side uses (targets of outbound attempts, listeners and
    // receivers in a), and source ports bound by the probes.
    let ports = [7800u16, 7801, 7805, 7810, 7811];
    let sources = [7820u16, 7821, 7825, 7830];
    let exes = [
        me.display().to_string(),
        copy.0.display().to_string(),
        format!("*/{}", me.file_name().unwrap().to_string_lossy()),
        "*/prop-copy".to_string(),
        format!("{}/*", me.parent().unwrap().display()),
    ];
    let mine = my_cgroup();
    let connector = Who {
        exe: me.clone(),
        uid: 0,
        in_cg: false,
    };
    let mut checked = 0;
    let mut kinds: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
    let rounds = 7;
    for round in 0..rounds {
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
            if rng.chance(35) {
                text.push_str(&format!(
                    "proto = \"{}\"\n",
                    rng.pick(&["tcp", "udp", "icmp", "any"])
                ));
            }
            let range = |rng: &mut Rng| {
                let lo = if rng.chance(50) {
                    *rng.pick(&ports)
                } else {
                    *rng.pick(&sources)
                };
                format!("\"{lo}-{}\"", lo + (rng.next() % 8) as u16)
            };
            if rng.chance(40) {
                text.push_str(&format!("remote_port = {}\n", range(&mut rng)));
            }
            if rng.chance(30) {
                text.push_str(&format!("local_port = {}\n", range(&mut rng)));
            }
            // Inbound more often: an inbound attempt is only decided at the
            // listener when the connector's own connect was allowed.
            if rng.chance(30) {
                let d = rng.pick(&["out", "in", "in"]);
                text.push_str(&format!("direction = \"{d}\"\n"));
            }
        }
        // A last rule allows everything outside this test's addresses, so
        // that a default of block touches nothing else.
        let mut outside = complement("10.199.66.0".parse().unwrap(), 24);
        outside.extend(complement("fd00:199:66::".parse().unwrap(), 64));
        let outside: Vec<String> = outside.iter().map(|p| format!("\"{p}\"")).collect();
        let text = format!(
            "{text}\n[[rule]]\nname = \"outside\"\naction = \"allow\"\nremote = [{}]\n",
            outside.join(", ")
        );
        let rules = parse_rules("prop.toml", &text, &NoUsers)
            .unwrap_or_else(|e| panic!("round {round}: generated a bad file:\n{text}\n{e}"));
        let file = RulesFile::new(&format!("rprop{round}"), &text);
        let pf = start(&file, &[]);
        let ack = pf.wait_rules_ack(1);
        assert_eq!(ack["outcome"], "accepted", "{ack}");
        let fail = |what: String| -> ! {
            panic!("seed {seed} round {round}: {what}\nrules:\n{text}");
        };
        let mut tally = |kind: &'static str, blocked: bool| {
            let e = kinds.entry(kind).or_default();
            if blocked {
                e.0 += 1
            } else {
                e.1 += 1
            }
        };

        // Outbound, from a to b: processes of random identities, eight
        // attempts each.
        for _ in 0..6 {
            let who = Who::random(&mut rng, &me, &copy.0);
            let mut ops = Vec::new();
            let mut want = Vec::new();
            for _ in 0..8 {
                let fam = if rng.chance(60) { &b_v4 } else { &b_v6 };
                let remote = *rng.pick(fam);
                let kind = *rng.pick(&["tcp", "tcp", "udpc", "udps", "ping"]);
                let (op, proto, rport, lport) = if kind == "ping" {
                    let proto = if remote.is_ipv4() { 1 } else { 58 };
                    (format!("ping {remote}"), proto, 0, 0)
                } else {
                    let rport = *rng.pick(&ports) + (rng.next() % 3) as u16;
                    let lport = if rng.chance(50) {
                        *rng.pick(&sources) + (rng.next() % 3) as u16
                    } else {
                        0
                    };
                    let proto = if kind == "tcp" { 6 } else { 17 };
                    (
                        format!("{kind} {remote} {rport} {lport}"),
                        proto,
                        rport,
                        lport,
                    )
                };
                let d = reference(
                    &rules,
                    &who,
                    &cg,
                    &mine,
                    Direction::Out,
                    proto,
                    remote,
                    rport,
                    lport,
                );
                ops.push(op);
                want.push((kind, d));
            }
            let spec = format!("multi {}", ops.join(";"));
            let got = who.runs_as(&p.a, &cg).result(&spec);
            let got: Vec<&str> = got.split(';').collect();
            assert_eq!(got.len(), ops.len(), "{spec}: {got:?}");
            for ((op, (kind, d)), got) in ops.iter().zip(&want).zip(&got) {
                let expect = if blocks(d) {
                    EPERM
                } else if *kind == "tcp" {
                    REFUSED
                } else {
                    "ok"
                };
                // A blocked ICMPv6 request is dropped without an error.
                let blocked_ping = *kind == "ping" && blocks(d) && *got == "no reply";
                if *got != expect && !blocked_ping {
                    fail(format!(
                        "outbound `{op}` by {who:?}: the kernel gave {got}, the reference \
                         evaluator decides {d:?} (expected {expect})"
                    ));
                }
                tally(kind, blocks(d));
                checked += 1;
            }
        }

        // Inbound TCP, from b to listeners of random identities in a. The
        // connector's own connect is decided too (outbound, in b).
        let mut lports: Vec<u16> = ports.to_vec();
        let listeners: Vec<(u16, Who, Reaped)> = (0..3)
            .map(|_| {
                let i = (rng.next() % lports.len() as u64) as usize;
                let port = lports.remove(i);
                let who = Who::random(&mut rng, &me, &copy.0);
                let (child, _) = who
                    .runs_as(&p.a, &cg)
                    .spawn(&format!("listen2 {port}"), "listening");
                (port, who, Reaped::new(child))
            })
            .collect();
        let mut tries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while tries.len() < 12 {
            let (port, who, _) = rng.pick(&listeners);
            let v6 = rng.chance(40);
            let (src, dst) = if v6 {
                (*rng.pick(&b_v6), a6)
            } else {
                (*rng.pick(&b_v4), a4)
            };
            let sport = if rng.chance(50) {
                *rng.pick(&sources) + (rng.next() % 3) as u16
            } else {
                0
            };
            if sport != 0 && !seen.insert((src, sport, dst, *port)) {
                continue;
            }
            tries.push((src, sport, dst, *port, who.clone()));
        }
        let spec = format!(
            "connmany {}",
            tries
                .iter()
                .map(|(s, sp, d, dp, _)| format!("{s} {sp} {d} {dp}"))
                .collect::<Vec<_>>()
                .join(";")
        );
        let got = connector.runs_as(&p.b, &cg).result(&spec);
        let got: Vec<&str> = got.split(';').collect();
        assert_eq!(got.len(), tries.len(), "{spec}: {got:?}");
        for ((src, _, dst, dport, who), got) in tries.iter().zip(&got) {
            let (res, sport) = got.rsplit_once(' ').unwrap();
            let sport: u16 = sport.parse().unwrap();
            let out = reference(
                &rules,
                &connector,
                &cg,
                &mine,
                Direction::Out,
                6,
                *dst,
                *dport,
                sport,
            );
            let inb = reference(
                &rules,
                who,
                &cg,
                &mine,
                Direction::In,
                6,
                *src,
                sport,
                *dport,
            );
            let expect = if blocks(&out) {
                EPERM
            } else if blocks(&inb) {
                "timeout"
            } else {
                "ok"
            };
            if res != expect {
                fail(format!(
                    "inbound TCP {src}:{sport} -> {dst}:{dport}, listener {who:?}: the kernel \
                     gave {res}; the reference evaluator decides {out:?} for the connector's \
                     connect and {inb:?} for the listener (expected {expect})"
                ));
            }
            if !blocks(&out) {
                tally("tcp in", blocks(&inb));
                checked += 1;
            }
            tally("tcp out (connector)", blocks(&out));
            checked += 1;
        }
        drop(listeners);

        // Inbound UDP, from b to receivers of random identities in a.
        let mut rports: Vec<u16> = ports.to_vec();
        let receivers: Vec<(u16, Who, Reaped, Lines)> = (0..3)
            .map(|_| {
                let i = (rng.next() % rports.len() as u64) as usize;
                let port = rports.remove(i);
                let who = Who::random(&mut rng, &me, &copy.0);
                let (child, out) = who
                    .runs_as(&p.a, &cg)
                    .spawn(&format!("udprecv2 {port}"), "listening");
                (port, who, Reaped::new(child), collect_lines(out))
            })
            .collect();
        let mut tries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while tries.len() < 12 {
            let (port, who, _, _) = rng.pick(&receivers);
            let v6 = rng.chance(40);
            let (src, dst) = if v6 {
                (*rng.pick(&b_v6), a6)
            } else {
                (*rng.pick(&b_v4), a4)
            };
            let sport = if rng.chance(50) {
                *rng.pick(&sources) + (rng.next() % 3) as u16
            } else {
                0
            };
            if sport != 0 && !seen.insert((src, sport, dst, *port)) {
                continue;
            }
            tries.push((src, sport, dst, *port, who.clone()));
        }
        let spec = format!(
            "udpmany {}",
            tries
                .iter()
                .map(|(s, sp, d, dp, _)| format!("{s} {sp} {d} {dp}"))
                .collect::<Vec<_>>()
                .join(";")
        );
        let got = connector.runs_as(&p.b, &cg).result(&spec);
        let got: Vec<&str> = got.split(';').collect();
        assert_eq!(got.len(), tries.len(), "{spec}: {got:?}");
        let mut expected = Vec::new();
        for ((src, _, dst, dport, who), got) in tries.iter().zip(&got) {
            let (res, sport) = got.rsplit_once(' ').unwrap();
            let sport: u16 = sport.parse().unwrap();
            let out = reference(
                &rules,
                &connector,
                &cg,
                &mine,
                Direction::Out,
                17,
                *dst,
                *dport,
                sport,
            );
            let want = if blocks(&out) { EPERM } else { "ok" };
            if res != want {
                fail(format!(
                    "UDP {src}:{sport} -> {dst}:{dport} from b: the kernel gave {res} at \
                     sendmsg, the reference evaluator decides {out:?}"
                ));
            }
            tally("udp out (sender)", blocks(&out));
            checked += 1;
            if !blocks(&out) {
                let inb = reference(
                    &rules,
                    who,
                    &cg,
                    &mine,
                    Direction::In,
                    17,
                    *src,
                    sport,
                    *dport,
                );
                expected.push((*src, sport, *dport, who.clone(), inb));
            }
        }
        let arrived = |src: IpAddr, sport: u16, dport: u16| {
            receivers.iter().any(|(_, _, _, lines)| {
                lines.lock().unwrap().iter().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() == 4
                        && w[0] == "got"
                        && w[1].parse::<IpAddr>().ok() == Some(src)
                        && w[2] == sport.to_string()
                        && w[3] == dport.to_string()
                })
            })
        };
        // Wait for every datagram that should arrive; then a moment more
        // for any that should not.
        wait_for(5, || {
            expected
                .iter()
                .all(|(s, sp, dp, _, d)| blocks(d) || arrived(*s, *sp, *dp))
        });
        std::thread::sleep(Duration::from_millis(200));
        for (src, sport, dport, who, d) in &expected {
            if arrived(*src, *sport, *dport) == blocks(d) {
                fail(format!(
                    "inbound UDP {src}:{sport} -> :{dport}, receiver {who:?}: the datagram {} \
                     the receiver; the reference evaluator decides {d:?}",
                    if blocks(d) {
                        "reached"
                    } else {
                        "never reached"
                    }
                ));
            }
            tally("udp in", blocks(d));
            checked += 1;
        }
        drop(receivers);
        pf.stop();
    }
    eprintln!(
        "kernel vs reference: seed {seed}: {checked} decisions (blocked, allowed): {kinds:?}"
    );
    assert!(checked >= 500, "only {checked} decisions checked");
    for kind in ["tcp", "udpc", "udps", "ping", "tcp in", "udp in"] {
        let (b, a) = kinds.get(kind).copied().unwrap_or_default();
        assert!(
            b + a > 0,
            "seed {seed}: no {kind} decision was checked: {kinds:?}"
        );
    }
}

#[test]
fn complement_covers_everything_but_the_prefix() {
    let c = complement("10.199.66.0".parse().unwrap(), 24);
    assert_eq!(c.len(), 24);
    assert_eq!(c[0], "128.0.0.0/1");
    assert_eq!(c[23], "10.199.67.0/24");
}
