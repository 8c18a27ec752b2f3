//! IPFIX export (`--ipfix`) read by real collectors: pmacct's nfacctd,
//! nfdump's nfcapd, and Wireshark's decoder (tshark), checked against
//! nftables' counts of the traffic between two namespaces the test makes
//! and the traffic generator's own pids. Each collector is started here,
//! with its own configuration on its own loopback port, and killed at the
//! end.

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A collector process (and anything it forked: nfacctd runs its plugins
/// as children) in a process group of its own, killed when dropped.
struct Daemon {
    child: Option<Child>,
    what: &'static str,
}

impl Daemon {
    fn start(what: &'static str, cmd: &mut Command) -> Daemon {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {what}: {e} (scripts/install-deps.sh installs it)")
            });
        Daemon {
            child: Some(child),
            what,
        }
    }

    /// Sends `signal` to the group and waits for the leader.
    fn stop(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            eprintln!("stopping {} ({})", self.what, c.id());
        }
        self.stop("KILL");
    }
}

/// A loopback UDP port nobody uses now.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of the test's own, removed when dropped (even on failure).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("procflow-ipfix-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// ntop's process elements as nfacctd primitives (PEN 35632).
const PRIMITIVES: &str = "\
name=src_proc_pid field_type=35632:168 len=4 semantics=u_int
name=src_proc_name field_type=35632:169 len=vlen semantics=str
name=src_proc_uid field_type=35632:425 len=4 semantics=u_int
name=src_proc_user field_type=35632:372 len=vlen semantics=str
name=src_proc_cmdline field_type=35632:556 len=vlen semantics=str
name=src_proc_ppid field_type=35632:373 len=4 semantics=u_int
name=dst_proc_pid field_type=35632:375 len=4 semantics=u_int
name=dst_proc_name field_type=35632:376 len=vlen semantics=str
name=dst_proc_uid field_type=35632:426 len=4 semantics=u_int
name=dst_proc_user field_type=35632:377 len=vlen semantics=str
name=dst_proc_cmdline field_type=35632:557 len=vlen semantics=str
name=dst_proc_ppid field_type=35632:378 len=4 semantics=u_int
name=flow_end_reason field_type=136 len=1 semantics=u_int
";

fn nfacctd(dir: &Path, port: u16) -> (Daemon, PathBuf) {
    let prim = dir.join("primitives.lst");
    std::fs::write(&prim, PRIMITIVES).unwrap();
    let out = dir.join("flows.json");
    let conf = dir.join("nfacctd.conf");
    std::fs::write(
        &conf,
        format!(
            "daemonize: false\n\
             nfacctd_ip: 127.0.0.1\n\
             nfacctd_port: {port}\n\
             plugins: print\n\
             print_output: json\n\
             print_output_file: {}\n\
             print_output_file_append: true\n\
             print_refresh_time: 1\n\
             aggregate_primitives: {}\n\
             aggregate: src_host, dst_host, src_port, dst_port, proto, src_proc_pid, \
             src_proc_name, src_proc_uid, src_proc_user, src_proc_cmdline, src_proc_ppid, \
             dst_proc_pid, dst_proc_name, dst_proc_uid, dst_proc_user, dst_proc_cmdline, \
             dst_proc_ppid, flow_end_reason\n",
            out.display(),
            prim.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("nfacctd.log")).unwrap();
    let d = Daemon::start(
        "nfacctd",
        Command::new("nfacctd")
            .arg("-f")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let ready = wait_for(10, || {
        std::fs::read_to_string(dir.join("nfacctd.log"))
            .is_ok_and(|l| l.contains("waiting for NetFlow/IPFIX data"))
    });
    assert!(
        ready,
        "nfacctd did not start: {}",
        std::fs::read_to_string(dir.join("nfacctd.log")).unwrap_or_default()
    );
    (d, out)
}

/// nfacctd's JSON lines so far.
fn nfacctd_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// tshark capturing the export on loopback into a file.
fn tshark(dir: &Path, port: u16) -> (Daemon, PathBuf) {
    let file = dir.join("export.pcap");
    let log = dir.join("tshark.log");
    let d = Daemon::start(
        "tshark",
        Command::new("tshark")
            .args(["-i", "lo", "-f", &format!("udp dst port {port}"), "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let ready = wait_for(15, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Capturing on"))
    });
    assert!(
        ready,
        "tshark did not start capturing: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (d, file)
}

/// A record as tshark decoded it: field name -> value.
type Decoded = HashMap<String, String>;

/// (packets, bytes)
type Count = (u64, u64);

/// Every flow record tshark decodes in the capture: the fields of each
/// (cflow.* names, the "cflow." left out), with the message's length and
/// record count.
fn tshark_records(file: &Path, port: u16) -> (Vec<Decoded>, Vec<(u64, u64)>) {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-d", &format!("udp.port=={port},cflow"), "-T", "json"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "tshark could not read the capture");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut recs = Vec::new();
    let mut msgs = Vec::new();
    for pkt in v.as_array().unwrap() {
        let Some(cf) = pkt["_source"]["layers"].get("cflow") else {
            continue;
        };
        let len: u64 = cf["cflow.len"].as_str().unwrap().parse().unwrap();
        let mut n = 0;
        for (k, set) in cf.as_object().unwrap() {
            if !k.starts_with("Set ") {
                continue;
            }
            for (fk, flow) in set.as_object().unwrap() {
                if !fk.starts_with("Flow ") {
                    continue;
                }
                n += 1;
                let mut m = HashMap::new();
                flatten(flow, &mut m);
                recs.push(m);
            }
        }
        msgs.push((len, n));
    }
    (recs, msgs)
}

fn flatten(v: &Value, m: &mut HashMap<String, String>) {
    for (k, x) in v.as_object().unwrap() {
        match x {
            Value::String(s) => {
                m.insert(k.trim_start_matches("cflow.").to_string(), s.clone());
            }
            Value::Object(_) => flatten(x, m),
            _ => {}
        }
    }
}

/// Sums (packets, bytes) of the records that `pred` picks.
fn sum<T>(recs: &[T], pred: impl Fn(&T) -> bool, pb: impl Fn(&T) -> (u64, u64)) -> (u64, u64) {
    recs.iter()
        .filter(|r| pred(r))
        .map(pb)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("{k} is {other} in {v}"),
    }
}

/// One known connection from a to b and nftables' counts of it, at the
/// receiving end each way.
#[derive(Debug, Clone)]
struct Known {
    client: String,
    server: String,
    cport: u16,
    sport: u16,
    pid: u64,
    server_pid: u64,
    up: Count,
    down: Count,
    /// Cut by active timeouts.
    long: bool,
}

/// The per-port nftables counters of connections from `from` to `to`:port
/// (up, counted in b, down, counted in a), by client port.
fn port_counters(p: &Pair, tag: &str, v6: bool, port: u16) -> (NftPortCounters, NftPortCounters) {
    let (from, to, ip) = if v6 {
        (p.a6, p.b6, "ip6")
    } else {
        (p.a4, p.b4, "ip")
    };
    let up = nft_port_counters(
        &p.b,
        "input",
        &format!("{tag}_up"),
        &format!("{ip} saddr {from} tcp dport {port}"),
        "tcp sport",
    );
    let down = nft_port_counters(
        &p.a,
        "input",
        &format!("{tag}_down"),
        &format!("{ip} saddr {to} tcp sport {port}"),
        "tcp dport",
    );
    (up, down)
}

/// The known traffic: over IPv4 a short upload (closed, one record each
/// way) and a long slow one across several active timeouts; over IPv6 a
/// short one.
fn make_traffic(p: &Pair, pf: &Procflow) -> Vec<Known> {
    let serve_on = |ip: std::net::IpAddr, count: &str| {
        let listen = std::net::SocketAddr::new(ip, 0).to_string();
        serve(
            &p.b,
            &[
                "tcp-serve",
                "--listen",
                &listen,
                "--count",
                count,
                "--download",
                "70001",
            ],
        )
    };
    let (server4, port4) = serve_on(p.b4, "2");
    let (server6, port6) = serve_on(p.b6, "1");
    let c4 = port_counters(p, "ipfix4", false, port4);
    let c6 = port_counters(p, "ipfix6", true, port6);
    let send = |to: std::net::IpAddr, port: u16| {
        let target = std::net::SocketAddr::new(to, port).to_string();
        let l = client_lines(
            &p.a,
            &[
                "tcp-send",
                "--connect",
                &target,
                "--upload",
                "300000",
                "--each",
            ],
        );
        (u(&l[0], "local_port") as u16, u(&l[1], "pid"))
    };
    let short = send(p.b4, port4);
    let v6 = send(p.b6, port6);
    let long =
        p.a.command(TESTGEN)
            .args([
                "tcp-slow",
                "--connect",
                &format!("{}:{port4}", p.b4),
                "--upload",
                "4000000",
                "--secs",
                "7.5",
            ])
            .output()
            .unwrap();
    assert!(long.status.success());
    let long: Value = serde_json::from_slice(&long.stdout).unwrap();
    let long = (u(&long, "local_port") as u16, u(&long, "pid"));
    let (sv4, sv6) = (finish(server4), finish(server6));
    for (n, port) in [(2, port4), (1, port6)] {
        pf.wait_closed(&p.a, n, "client", |f| {
            f["remote_port"].as_u64() == Some(port as u64)
        });
        pf.wait_closed(&p.b, n, "server", |f| {
            f["local_port"].as_u64() == Some(port as u64)
        });
    }
    let (up4, down4) = (c4.0.read(), c4.1.read());
    let (up6, down6) = (c6.0.read(), c6.1.read());
    let known = |(cport, pid): (u16, u64), v6: bool, long: bool| {
        let (client, server, sport, sv, up, down) = if v6 {
            (p.a6, p.b6, port6, &sv6, &up6, &down6)
        } else {
            (p.a4, p.b4, port4, &sv4, &up4, &down4)
        };
        Known {
            client: client.to_string(),
            server: server.to_string(),
            cport,
            sport,
            pid,
            server_pid: u(sv, "pid"),
            up: up[&cport],
            down: down[&cport],
            long,
        }
    };
    vec![
        known(short, false, false),
        known(long, false, true),
        known(v6, true, false),
    ]
}

/// nfacctd's (packets, bytes) from `src` to `dst` with `key` = `pid`,
/// summed over its purges.
fn acct_sum(lines: &[Value], src: (&str, u16), dst: (&str, u16), key: &str, pid: u64) -> Count {
    sum(
        lines,
        |l| {
            s(l, "ip_src") == src.0
                && s(l, "port_src") == src.1.to_string()
                && s(l, "ip_dst") == dst.0
                && s(l, "port_dst") == dst.1.to_string()
                && s(l, key) == pid.to_string()
        },
        |l| (u(l, "packets"), u(l, "bytes")),
    )
}

#[test]
fn nfacctd_nfcapd_and_tshark_read_the_export_with_exact_counts_and_the_process() {
    let p = Pair::new("ipfix", 61);
    let dir = temp_dir("collectors");
    let acct_port = free_udp_port();
    let cap_port = free_udp_port();
    let (mut acct, acct_out) = nfacctd(&dir, acct_port);
    let (mut cap, pcap) = tshark(&dir, cap_port);
    let flows_dir = dir.join("nfcapd");
    std::fs::create_dir_all(&flows_dir).unwrap();
    // nfcapd stores the export and repeats each message to nfacctd.
    let mut nfcapd = Daemon::start(
        "nfcapd",
        Command::new("nfcapd")
            .args(["-b", "127.0.0.1", "-p", &cap_port.to_string(), "-w"])
            .arg(&flows_dir)
            .args(["-R", &format!("127.0.0.1/{acct_port}")])
            .stdout(std::fs::File::create(dir.join("nfcapd.log")).unwrap())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let pf = Procflow::start(&[
        "--ipfix",
        &format!("127.0.0.1:{cap_port}"),
        "--ipfix-active-timeout",
        "2s",
        "--ipfix-domain",
        "42",
    ]);
    let known = make_traffic(&p, &pf);
    let recs = pf.stop();
    let log_flows = final_flows(&recs);

    // nfacctd: by 5-tuple and process, summed over its 1 s purges.
    let complete = |lines: &[Value]| {
        known.iter().all(|k| {
            let (c, sv) = ((k.client.as_str(), k.cport), (k.server.as_str(), k.sport));
            acct_sum(lines, c, sv, "src_proc_pid", k.pid) == k.up
                && acct_sum(lines, sv, c, "dst_proc_pid", k.pid) == k.down
        })
    };
    wait_for(10, || complete(&nfacctd_lines(&acct_out)));
    let lines = nfacctd_lines(&acct_out);
    acct.stop("KILL");
    for k in &known {
        let (c, sv) = ((k.client.as_str(), k.cport), (k.server.as_str(), k.sport));
        let what = format!("{}:{} (pid {})", k.client, k.cport, k.pid);
        assert_eq!(
            acct_sum(&lines, c, sv, "src_proc_pid", k.pid),
            k.up,
            "nfacctd: what {what} sent vs nftables: {lines:#?}"
        );
        assert_eq!(
            acct_sum(&lines, sv, c, "dst_proc_pid", k.pid),
            k.down,
            "nfacctd: what {what} received vs nftables"
        );
        // The server's side of the same connection: its own records.
        assert_eq!(
            acct_sum(&lines, sv, c, "src_proc_pid", k.server_pid),
            k.down,
            "nfacctd: what the server sent to {what}"
        );
        assert_eq!(
            acct_sum(&lines, c, sv, "dst_proc_pid", k.server_pid),
            k.up,
            "nfacctd: what the server received from {what}"
        );
        let logged = log_flows
            .iter()
            .find(|f| {
                f["local_port"].as_u64() == Some(k.cport as u64)
                    && f["process"]["pid"].as_u64() == Some(k.pid)
            })
            .unwrap_or_else(|| panic!("no flow of {what} in the log"));
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| s(l, "src_proc_pid") == k.pid.to_string())
            .collect();
        assert!(!mine.is_empty());
        for l in &mine {
            assert_eq!(s(l, "src_proc_name"), TESTGEN, "{l}");
            assert_eq!(s(l, "src_proc_uid"), "0", "{l}");
            assert_eq!(s(l, "src_proc_user"), "root", "{l}");
            assert_eq!(
                s(l, "src_proc_ppid"),
                logged["process"]["ppid"].to_string(),
                "{l}"
            );
            assert!(s(l, "src_proc_cmdline").contains("--upload"), "{l}");
        }
        for l in lines
            .iter()
            .filter(|l| s(l, "dst_proc_pid") == k.pid.to_string())
        {
            assert_eq!(s(l, "dst_proc_name"), TESTGEN, "{l}");
            assert_eq!(s(l, "dst_proc_uid"), "0", "{l}");
            assert_eq!(s(l, "dst_proc_user"), "root", "{l}");
        }
        let mut reasons: Vec<String> = mine.iter().map(|l| s(l, "flow_end_reason")).collect();
        reasons.sort();
        reasons.dedup();
        if k.long {
            assert_eq!(
                reasons,
                ["2", "3"],
                "{what}: active timeouts, then its close"
            );
        } else {
            assert_eq!(reasons, ["3"], "{what}: ends at its close");
        }
    }

    // tshark: every element decoded by its number.
    nfcapd.stop("TERM");
    std::thread::sleep(Duration::from_millis(500));
    cap.stop("TERM");
    let (records, messages) = tshark_records(&pcap, cap_port);
    let addr = |r: &Decoded, k: &str| r.get(k).or(r.get(&format!("{k}v6"))).cloned();
    let pb = |r: &&Decoded| {
        (
            r["packets"].parse::<u64>().unwrap(),
            r["octets"].parse::<u64>().unwrap(),
        )
    };
    for k in &known {
        let is = |r: &Decoded, src: (&str, u16), dst: (&str, u16), key: &str| {
            addr(r, "srcaddr").as_deref() == Some(src.0)
                && addr(r, "dstaddr").as_deref() == Some(dst.0)
                && r.get("srcport") == Some(&src.1.to_string())
                && r.get("dstport") == Some(&dst.1.to_string())
                && r.get(key) == Some(&k.pid.to_string())
        };
        let (c, sv) = ((k.client.as_str(), k.cport), (k.server.as_str(), k.sport));
        let outs: Vec<&Decoded> = records
            .iter()
            .filter(|r| is(r, c, sv, "pie.ntop.src_proc_id"))
            .collect();
        let ins: Vec<&Decoded> = records
            .iter()
            .filter(|r| is(r, sv, c, "pie.ntop.dst_proc_pid"))
            .collect();
        assert_eq!(sum(&outs, |_| true, pb), k.up, "tshark: {k:?} out");
        assert_eq!(sum(&ins, |_| true, pb), k.down, "tshark: {k:?} in");
        for r in &outs {
            assert_eq!(r["pie.ntop.src_proc_name"], TESTGEN);
            assert_eq!(r["pie.ntop.src_proc_uid"], "0");
            assert_eq!(r["pie.ntop.src_proc_user_name"], "root");
            assert_eq!(r["protocol"], "6");
            assert_eq!(r["direction"], "1", "egress");
            assert!(r.contains_key("pie.ntop.src_father_proc_pid"));
        }
        for r in &ins {
            assert_eq!(r["pie.ntop.dst_proc_name"], TESTGEN);
            assert_eq!(r["pie.ntop.dst_proc_uid"], "0");
            assert_eq!(r["pie.ntop.dst_proc_user_name"], "root");
            assert_eq!(r["direction"], "0", "ingress");
            assert!(r.contains_key("pie.ntop.dst_father_proc_pid"));
        }
        if k.long {
            assert!(
                outs.len() >= 3,
                "7.5 s with a 2 s active timeout: {} records",
                outs.len()
            );
        } else {
            assert_eq!((outs.len(), ins.len()), (1, 1), "{k:?}");
        }
    }
    assert!(!messages.is_empty());
    // Record sizes, from the messages that hold records.
    let data: Vec<&(u64, u64)> = messages.iter().filter(|m| m.1 > 0).collect();
    let (bytes, n) = data.iter().fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1));
    eprintln!(
        "ipfix: {} messages, {n} records, {:.1} bytes a record on average (headers included), largest message {} bytes",
        data.len(),
        bytes as f64 / n as f64,
        messages.iter().map(|m| m.0).max().unwrap()
    );
    assert!(messages.iter().all(|m| m.0 <= 1400));

    // nfdump: the standard fields of what nfcapd stored.
    let out = Command::new("nfdump")
        .arg("-R")
        .arg(&flows_dir)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nf: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nfdump said {}: {e}", String::from_utf8_lossy(&out.stdout)));
    let nf = nf.as_array().unwrap();
    for k in &known {
        let v = if k.client.contains(':') { "6" } else { "4" };
        let pick = |src: (&str, u16), dst: (&str, u16)| {
            sum(
                nf,
                |r| {
                    r[format!("src{v}_addr")].as_str() == Some(src.0)
                        && r["src_port"].as_u64() == Some(src.1 as u64)
                        && r[format!("dst{v}_addr")].as_str() == Some(dst.0)
                        && r["dst_port"].as_u64() == Some(dst.1 as u64)
                        && r["proto"].as_u64() == Some(6)
                },
                |r| (u(r, "in_packets"), u(r, "in_bytes")),
            )
        };
        let (c, sv) = ((k.client.as_str(), k.cport), (k.server.as_str(), k.sport));
        // Each direction twice: the client's record and the server's.
        assert_eq!(pick(c, sv), (2 * k.up.0, 2 * k.up.1), "nfdump: up {k:?}");
        assert_eq!(
            pick(sv, c),
            (2 * k.down.0, 2 * k.down.1),
            "nfdump: down {k:?}"
        );
    }
}

#[test]
fn a_collector_that_is_down_costs_records_not_the_monitor() {
    let p = Pair::new("ipfixdown", 62);
    // Nobody listens: loopback answers with ICMP port unreachable.
    let port = free_udp_port();
    let pf = Procflow::start(&[
        "--ipfix",
        &format!("127.0.0.1:{port}"),
        "--ipfix-idle-timeout",
        "1s",
    ]);
    let (server, sport) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "5",
        ],
    );
    for _ in 0..5 {
        client(
            &p.a,
            &[
                "tcp-send",
                "--connect",
                &format!("{}:{sport}", p.b4),
                "--upload",
                "20000",
            ],
        );
        std::thread::sleep(Duration::from_millis(1200));
    }
    finish(server);
    pf.wait_closed(&p.a, 5, "client", |f| {
        f["remote_port"].as_u64() == Some(sport as u64)
    });
    pf.wait_stderr(10, &["ipfix", "cannot send"]);
    let stderr = std::sync::Arc::clone(&pf.stderr);
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let ours = flows_in(&flows, &p.a, |f| {
        f["remote_port"].as_u64() == Some(sport as u64)
    });
    assert_eq!(ours.len(), 5, "the monitor went on counting");
    for f in ours {
        assert_eq!(u(f, "tx_payload"), 20000, "{f}");
    }
    let err = stderr.lock().unwrap().clone();
    let failures = err.iter().filter(|l| l.contains("cannot send")).count();
    assert_eq!(failures, 1, "the failure is logged once: {err:#?}");
    let last = err
        .iter()
        .find(|l| l.contains("ipfix: to ") && l.contains("dropped"))
        .unwrap_or_else(|| panic!("no ipfix summary at stop: {err:#?}"));
    // "... sent; R records in M messages dropped; ..."
    let dropped = last.split("; ").nth(1).unwrap();
    let words: Vec<&str> = dropped.split_whitespace().collect();
    let (records, messages): (u64, u64) = (words[0].parse().unwrap(), words[3].parse().unwrap());
    assert!(messages > 0 && records >= messages, "{last}");
}

/// An IPFIX record of templates 256 (IPv4 out) and 257 (IPv4 in), decoded
/// by the layout docs/fleet.md gives.
#[derive(Debug)]
struct V4Record {
    template: u16,
    src: (std::net::Ipv4Addr, u16),
    dst: (std::net::Ipv4Addr, u16),
    octets: u64,
    packets: u64,
    pid: u32,
    name: String,
}

/// The messages of a TCP stream: (first set id, sequence, v4 records,
/// data records of any template).
fn decode_stream(b: &[u8]) -> Vec<(u16, u32, Vec<V4Record>, u32)> {
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= b.len() {
        assert_eq!(be16(b, at), 10, "IPFIX version at {at}");
        let len = be16(b, at + 2) as usize;
        let m = &b[at..at + len];
        let seq = be32(m, 8);
        let mut recs = Vec::new();
        let mut all = 0u32;
        let mut first = None;
        let mut s = 16;
        while s < m.len() {
            let (id, slen) = (be16(m, s), be16(m, s + 2) as usize);
            first.get_or_insert(id);
            if (256..=259).contains(&id) {
                let v6 = id >= 258;
                let mut r = s + 4;
                while r < s + slen {
                    all += 1;
                    let ip = |at: usize| std::net::Ipv4Addr::from(be32(m, at));
                    let mut p = r + if v6 { 71 } else { 47 };
                    let pid = be32(m, p);
                    p += 4;
                    let mut strings = Vec::new();
                    for i in 0..5 {
                        if i == 1 {
                            p += 4; // uid
                            continue;
                        }
                        let (n, skip) = if m[p] < 255 {
                            (m[p] as usize, 1)
                        } else {
                            (be16(m, p + 1) as usize, 3)
                        };
                        strings
                            .push(String::from_utf8(m[p + skip..p + skip + n].to_vec()).unwrap());
                        p += skip + n;
                    }
                    p += 4; // ppid
                    if v6 {
                        r = p;
                        continue;
                    }
                    recs.push(V4Record {
                        template: id,
                        src: (ip(r), be16(m, r + 8)),
                        dst: (ip(r + 4), be16(m, r + 10)),
                        octets: be64(m, r + 13),
                        packets: be64(m, r + 21),
                        pid,
                        name: strings[0].clone(),
                    });
                    r = p;
                }
                assert_eq!(r, s + slen, "records fill their set exactly");
            }
            s += slen;
        }
        out.push((first.unwrap_or(0), seq, recs, all));
        at += len;
    }
    assert_eq!(at, b.len(), "whole messages");
    out
}

#[test]
fn over_tcp_procflow_waits_for_the_collector_and_sends_everything_once_it_is_up() {
    let p = Pair::new("ipfixtcp", 63);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pf = Procflow::start(&[
        "--ipfix",
        &format!("127.0.0.1:{port}"),
        "--ipfix-transport",
        "tcp",
    ]);
    pf.wait_stderr(10, &["ipfix", "cannot connect"]);
    let (server, sport) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            "5555",
        ],
    );
    let (up, down) = port_counters(&p, "ipfixtcp", false, sport);
    let l = client_lines(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{sport}", p.b4),
            "--upload",
            "250000",
            "--each",
        ],
    );
    let (cport, pid) = (u(&l[0], "local_port") as u16, u(&l[1], "pid") as u32);
    finish(server);
    pf.wait_closed(&p.a, 1, "client", |f| {
        f["remote_port"].as_u64() == Some(sport as u64)
    });
    let (up, down) = (up.read()[&cport], down.read()[&cport]);
    // The collector comes up; procflow's next attempt finds it.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut all).unwrap();
        all
    });
    pf.wait_stderr(20, &["ipfix", "connected to"]);
    std::thread::sleep(Duration::from_millis(500));
    let stderr = std::sync::Arc::clone(&pf.stderr);
    pf.stop();
    let stream = reader.join().unwrap();
    let msgs = decode_stream(&stream);
    assert_eq!(msgs[0].0, 2, "the templates come first");
    let mut count = 0u32;
    for (_, seq, _, all) in &msgs {
        assert_eq!(*seq, count, "sequence numbers count the records before");
        count += all;
    }
    let records: Vec<&V4Record> = msgs.iter().flat_map(|m| &m.2).collect();
    let a4: std::net::Ipv4Addr = p.a4.to_string().parse().unwrap();
    let b4: std::net::Ipv4Addr = p.b4.to_string().parse().unwrap();
    let sum_of = |template: u16, src, dst| {
        records
            .iter()
            .filter(|r| r.template == template && r.src == src && r.dst == dst && r.pid == pid)
            .fold((0, 0), |a, r| (a.0 + r.packets, a.1 + r.octets))
    };
    assert_eq!(
        sum_of(256, (a4, cport), (b4, sport)),
        up,
        "sent while the collector was down: {records:#?}"
    );
    assert_eq!(sum_of(257, (b4, sport), (a4, cport)), down, "received");
    assert!(records
        .iter()
        .filter(|r| r.pid == pid)
        .all(|r| r.name == TESTGEN));
    let err = stderr.lock().unwrap().clone();
    assert_eq!(
        err.iter().filter(|l| l.contains("cannot connect")).count(),
        1,
        "the failure is logged once: {err:#?}"
    );
}
