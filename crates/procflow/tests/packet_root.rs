//! Packet sockets (AF_PACKET) and raw IP sockets with IP_HDRINCL: their
//! frames are counted for the process that sends them, exactly (checked
//! against nftables in the peer namespace), their flows end with the
//! socket, and rules hold on them.
//!
//! Needs root. Pair numbers 130-139.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Sends frames through a packet socket (or IP packets through a raw
/// socket with IP_HDRINCL) and prints one JSON line: pid, executable, how
/// many sends succeeded and the errno of the first that failed.
const SENDER: &str = r#"
import ctypes, errno, json, os, socket, struct, sys, time
a = dict(x.split("=", 1) for x in sys.argv[1:])
if "comm" in a:
    ctypes.CDLL(None).prctl(15, a["comm"].encode(), 0, 0, 0)
out = {"pid": os.getpid(), "exe": os.readlink("/proc/self/exe"), "sent": 0, "errno": 0}
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
def ip_udp(src, dst, dport, n):
    udp = struct.pack("!HHHH", 40000, dport, 8 + n, 0) + b"x" * n
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp
mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
try:
    if a["kind"] == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        frames = [(ip_udp(a["src"], a["dst"], int(a["dport"]), 100), (a["dst"], 0))]
    else:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((a["dev"], 0))
        src = open("/sys/class/net/%s/address" % a["dev"]).read().strip()
        hdr = mac(a["dmac"]) + mac(src)
        if a["kind"] == "udp":
            f = hdr + b"\x08\x00" + ip_udp(a["src"], a["dst"], int(a["dport"]), 100)
        else:
            f = hdr + b"\x88\xb5" + b"y" * 60
        frames = [(f, None)]
    if a.get("bypass"):
        s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
        out["bypass"] = s.getsockopt(263, 20)
    if "go" in a:
        # Ready (socket made, options set): wait for the go file.
        open(a["ready"], "w").close()
        while not os.path.exists(a["go"]):
            time.sleep(0.05)
    for i in range(int(a["n"])):
        f, to = frames[0]
        s.sendto(f, to) if to else s.send(f)
        out["sent"] += 1
except OSError as e:
    out["errno"] = e.errno
print(json.dumps(out))
"#;

/// Held by the tests that load packet-socket rules and by the one that
/// turns PACKET_QDISC_BYPASS on before procflow starts: rules refuse that
/// option on every packet socket of the machine (the hook is global).
static BYPASS_OR_RULES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bypass_or_rules() -> std::sync::MutexGuard<'static, ()> {
    BYPASS_OR_RULES.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(ns: &Netns, script: &std::path::Path, args: &[String]) -> Value {
    run_json(ns.command("python3").arg(script).args(args))
}

fn script() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sender.py");
    std::fs::write(&p, SENDER).unwrap();
    (dir, p)
}

fn mac_of(ns: &Netns, dev: &str) -> String {
    ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")])
        .trim()
        .to_string()
}

/// An nftables counter on `dev`'s ingress (netdev family), for frames that
/// are not IP: it counts the frame without its 14-byte Ethernet header.
fn netdev_counter(ns: &Netns, dev: &str, expr: &str) -> NftNetdev {
    ns.exec(&["nft", "add", "table", "netdev", "pfpkt"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "netdev",
        "pfpkt",
        "in",
        &format!("{{ type filter hook ingress device {dev} priority 0; policy accept; }}"),
    ]);
    ns.exec(&["nft", "add", "counter", "netdev", "pfpkt", "frames"]);
    ns.exec(&[
        "nft",
        &format!("add rule netdev pfpkt in {expr} counter name frames"),
    ]);
    NftNetdev {
        ns: ns.name.clone(),
    }
}

struct NftNetdev {
    ns: String,
}

impl NftNetdev {
    fn read(&self) -> (u64, u64) {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "-j", "list", "counter", "netdev", "pfpkt",
            "frames",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        for item in v["nftables"].as_array().unwrap() {
            if let Some(c) = item.get("counter") {
                return (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap());
            }
        }
        panic!("no counter: {out}")
    }
}

fn arg(k: &str, v: impl std::fmt::Display) -> String {
    format!("{k}={v}")
}

#[test]
fn packet_socket_frames_are_counted_for_their_process_exactly() {
    let p = Pair::new("pkt", 130);
    let (_d, script) = script();
    let (dev, peer) = ("pfa130", "pfb130");
    let dmac = mac_of(&p.b, peer);
    let udp = nft_counter(
        &p.b,
        "input",
        "pkt_udp",
        "ip saddr 10.199.130.1 udp dport 9999",
    );
    let eth = netdev_counter(&p.b, peer, "ether type 0x88b5");
    let pf = Procflow::start(&[]);

    let common = [arg("dev", dev), arg("dmac", &dmac)];
    let mut a = common.to_vec();
    a.extend([
        arg("kind", "udp"),
        arg("n", 7),
        arg("src", p.a4),
        arg("dst", p.b4),
        arg("dport", 9999),
    ]);
    let s1 = send(&p.a, &script, &a);
    let mut b = common.to_vec();
    b.extend([arg("kind", "eth"), arg("n", 3)]);
    let s2 = send(&p.a, &script, &b);
    assert_eq!(
        (s1["sent"].as_u64(), s2["sent"].as_u64()),
        (Some(7), Some(3))
    );

    // The senders exited: their sockets are gone, and so their flows end.
    let recs = pf.wait_closed(&p.a, 2, "packet socket", |f| f["origin"] == "packet_socket");
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "packet socket udp", |f| {
        f["origin"] == "packet_socket" && f["proto"] == "udp"
    });
    let (np, nb) = udp.read();
    assert_eq!((np, nb), (7, 7 * 128), "nftables in the peer");
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (np, nb), "{f}");
    // What the application wrote: the whole frame.
    assert_eq!(u(f, "tx_payload"), 7 * 142, "{f}");
    assert_eq!(f["family"], 4);
    assert_eq!(f["remote_ip"], p.b4.to_string());
    assert_eq!(
        (f["remote_port"].as_u64(), f["local_port"].as_u64()),
        (Some(9999), Some(40000))
    );
    assert_eq!(f["direction"], "out");
    assert_eq!(f["process"]["pid"], s1["pid"], "{f}");
    assert_eq!(f["process"]["exe"], s1["exe"], "{f}");

    let g = one_flow(&flows, &p.a, "packet socket ethertype 0x88b5", |f| {
        f["origin"] == "packet_socket" && f["proto"] == "eth:0x88b5"
    });
    let (ep, eb) = eth.read();
    assert_eq!(ep, 3, "nftables on the peer's ingress");
    // nftables' netdev ingress counts the frame after its Ethernet header.
    assert_eq!(
        (u(g, "tx_packets"), u(g, "tx_bytes")),
        (ep, eb + 14 * ep),
        "{g}"
    );
    assert_eq!(u(g, "tx_bytes"), 3 * 74);
    assert_eq!(g["family"], 0);
    assert_eq!(g["remote_mac"], dmac.as_str(), "{g}");
    assert_eq!(g["local_mac"], mac_of(&p.a, dev).as_str(), "{g}");
    assert_eq!(g["process"]["pid"], s2["pid"], "{g}");
    assert_eq!(g["state"], "closed");
    pf.stop();
}

fn verdicts(recs: &[Value]) -> Vec<&Value> {
    recs.iter().filter(|r| r["type"] == "verdict").collect()
}

#[test]
fn rules_decide_packet_sockets_by_who_sends() {
    let _only = bypass_or_rules();
    let (dir, script) = script();
    let exe = std::fs::canonicalize(
        sh(&[
            "python3",
            "-c",
            "import os; print(os.readlink('/proc/self/exe'))",
        ])
        .trim(),
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
default = "block"

[[rule]]
name = "ip"
action = "allow"
family = "ip"

[[rule]]
name = "blocked-sender"
action = "block"
family = "packet"
exe = "{}"
comm = "pfpkt-blocked"

[[rule]]
name = "allowed-sender"
action = "allow"
family = "packet"
comm = "pfpkt-allowed"
"#,
            exe.display()
        ),
    )
    .unwrap();
    let pf = Procflow::start(&["--rules", rules.to_str().unwrap()]);
    pf.wait_rules_ack(1);
    // Made after procflow started: its devices are found by the sweep.
    let p = Pair::new("pktr", 131);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (dev, peer) = ("pfa131", "pfb131");
    let dmac = mac_of(&p.b, peer);
    let udp = nft_counter(
        &p.b,
        "input",
        "pkt_rules",
        "ip saddr 10.199.131.1 udp dport 9999",
    );
    let with = |comm: &str, extra: &[String]| {
        let mut a = vec![
            arg("dev", dev),
            arg("dmac", &dmac),
            arg("kind", "udp"),
            arg("n", 5),
            arg("src", p.a4),
            arg("dst", p.b4),
            arg("dport", 9999),
            arg("comm", comm),
        ];
        a.extend_from_slice(extra);
        send(&p.a, &script, &a)
    };

    let blocked = with("pfpkt-blocked", &[]);
    assert_eq!(blocked["sent"], 0, "{blocked}");
    assert_eq!(blocked["errno"], libc::ENOBUFS, "{blocked}");
    assert_eq!(
        udp.read(),
        (0, 0),
        "a blocked sender's frame reached the peer"
    );
    let other = with("pfpkt-other", &[]);
    assert_eq!(
        other["sent"], 0,
        "the default blocks packet sockets: {other}"
    );
    assert_eq!(udp.read(), (0, 0));
    let allowed = with("pfpkt-allowed", &[]);
    assert_eq!(
        (allowed["sent"].as_u64(), allowed["errno"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(udp.read(), (5, 5 * 128));
    // Past tcx egress no rule could hold: refused while rules are loaded.
    let bypass = with("pfpkt-allowed", &[arg("bypass", 1)]);
    assert_eq!(bypass["errno"], libc::EPERM, "{bypass}");
    assert_eq!(udp.read(), (5, 5 * 128));

    let ok = wait_for(10, || {
        verdicts(&pf.records())
            .iter()
            .filter(|v| v["hook"] == "packet")
            .count()
            >= 2
    });
    let recs = pf.records();
    assert!(ok, "two packet verdicts: {:#?}", verdicts(&recs));
    let vs: Vec<_> = verdicts(&recs)
        .into_iter()
        .filter(|v| v["hook"] == "packet")
        .collect();
    let by_pid = |s: &Value| {
        let found: Vec<_> = vs
            .iter()
            .filter(|v| v["process"]["pid"] == s["pid"])
            .collect();
        assert_eq!(found.len(), 1, "one verdict for {s}: {vs:#?}");
        found[0]
    };
    let v = by_pid(&blocked);
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].as_str()),
        (Some("block"), Some("blocked-sender"))
    );
    assert_eq!(v["proto"], "packet");
    assert_eq!(v["process"]["exe"], exe.to_str().unwrap());
    assert_eq!(v["netns"], p.a.inode());
    let v = by_pid(&other);
    assert_eq!(
        (v["verdict"].as_str(), v["rule"].as_str()),
        (Some("block"), None)
    );
    // An allow is no record of its own: the allowed sender's flow is
    // counted and carries its verdict.
    assert!(
        !vs.iter().any(|v| v["process"]["pid"] == allowed["pid"]),
        "{vs:#?}"
    );
    let recs = pf.wait_closed(&p.a, 1, "allowed packet socket", |f| {
        f["process"]["pid"] == allowed["pid"]
    });
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "allowed packet socket", |f| {
        f["process"]["pid"] == allowed["pid"]
    });
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (5, 5 * 128), "{f}");
    assert_eq!(
        (f["verdict"].as_str(), f["rule"].as_str()),
        (Some("allow"), Some("allowed-sender"))
    );
    let st = stats(&pf.stop());
    assert!(u(&st, "packet_devices") >= 2, "{st}");
}

#[test]
fn raw_ip_sockets_with_hdrincl_are_counted_and_decided() {
    let _only = bypass_or_rules();
    let p = Pair::new("pktraw", 132);
    let (dir, script) = script();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[[rule]]\nname = \"no-9997\"\naction = \"block\"\nremote = \"{}\"\nremote_port = 9997\nproto = \"udp\"\n",
            p.b4
        ),
    )
    .unwrap();
    let open = nft_counter(
        &p.b,
        "input",
        "raw_open",
        "ip saddr 10.199.132.1 udp dport 9998",
    );
    let shut = nft_counter(
        &p.b,
        "input",
        "raw_shut",
        "ip saddr 10.199.132.1 udp dport 9997",
    );
    let pf = Procflow::start(&["--rules", rules.to_str().unwrap()]);
    pf.wait_rules_ack(1);
    let raw = |dport: u16, n: u32| {
        send(
            &p.a,
            &script,
            &[
                arg("kind", "raw"),
                arg("n", n),
                arg("src", p.a4),
                arg("dst", p.b4),
                arg("dport", dport),
            ],
        )
    };
    let ok = raw(9998, 6);
    assert_eq!(
        (ok["sent"].as_u64(), ok["errno"].as_i64()),
        (Some(6), Some(0))
    );
    let no = raw(9997, 4);
    assert_eq!(
        (no["sent"].as_u64(), no["errno"].as_i64()),
        (Some(0), Some(libc::EPERM as i64))
    );
    assert_eq!(shut.read(), (0, 0), "a blocked raw packet reached the peer");

    let recs = pf.wait_records(20, "raw verdict and flow", |r| {
        verdicts(r)
            .iter()
            .any(|v| v["verdict"] == "block" && v["remote_port"] == 9997)
            && flows_in(&final_flows(r), &p.a, |f| {
                f["remote_port"] == 9998 && f["state"] == "closed"
            })
            .len()
                == 1
    });
    let v = verdicts(&recs)
        .into_iter()
        .find(|v| v["verdict"] == "block" && v["remote_port"] == 9997)
        .unwrap();
    assert_eq!(
        (v["rule"].as_str(), v["proto"].as_str()),
        (Some("no-9997"), Some("udp"))
    );
    assert_eq!(v["process"]["pid"], no["pid"]);
    assert_eq!(v["remote_ip"], p.b4.to_string());
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "raw hdrincl", |f| f["remote_port"] == 9998);
    let (np, nb) = open.read();
    assert_eq!((np, nb), (6, 6 * 128));
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (np, nb), "{f}");
    assert_eq!(u(f, "tx_payload"), 6 * 100, "the UDP payload: {f}");
    assert_eq!(f["proto"], "udp");
    assert_eq!(f["process"]["pid"], ok["pid"]);
    pf.stop();
}

/// PACKET_QDISC_BYPASS sends frames past dev_queue_xmit, where frames are
/// counted, on a path no hook sees. Set after procflow started, it is
/// turned off (the socket reads back 0) and its frames are counted exactly
/// (against nftables in the peer); a socket that set it before is found by
/// the start-up scan and reported.
#[test]
fn packet_sockets_that_bypass_the_qdisc_are_counted_exactly() {
    let _only = bypass_or_rules();
    let p = Pair::new("pktbyp", 133);
    let (d, script) = script();
    let (dev, peer) = ("pfa133", "pfb133");
    let dmac = mac_of(&p.b, peer);
    let eth = netdev_counter(&p.b, peer, "ether type 0x88b5");
    let frames = |n: u64, extra: &[String]| {
        let mut a = vec![
            arg("dev", dev),
            arg("dmac", &dmac),
            arg("kind", "eth"),
            arg("n", n),
            arg("bypass", 1),
        ];
        a.extend_from_slice(extra);
        a
    };
    // Before procflow: the socket is made and bypasses the qdisc, then
    // waits.
    let ready = d.path().join("ready");
    let go = d.path().join("go");
    let early =
        p.a.command("python3")
            .arg(&script)
            .args(frames(
                1,
                &[arg("ready", ready.display()), arg("go", go.display())],
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    assert!(
        wait_for(10, || ready.exists()),
        "the sender never got ready: {:?}",
        early.wait_with_output()
    );
    let pf = Procflow::start(&[]);
    std::fs::write(&go, "").unwrap();
    let out = early.wait_with_output().unwrap();
    let s1: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s1["sent"].as_u64(), s1["bypass"].as_u64()),
        (Some(1), Some(1)),
        "{s1}"
    );
    let (before, before_bytes) = eth.read();

    let s2 = send(&p.a, &script, &frames(3, &[]));
    assert_eq!(s2["sent"].as_u64(), Some(3), "{s2}");
    assert_eq!(
        s2["bypass"].as_u64(),
        Some(0),
        "turned off while procflow runs: {s2}"
    );

    let recs = pf.wait_closed(&p.a, 1, "packet socket", |f| {
        f["origin"] == "packet_socket" && f["process"]["pid"] == s2["pid"]
    });
    let (ep, eb) = eth.read();
    assert_eq!(ep - before, 3, "nftables on the peer's ingress");
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "packet socket", |f| {
        f["origin"] == "packet_socket" && f["process"]["pid"] == s2["pid"]
    });
    // nftables' netdev ingress counts the frame after its Ethernet header.
    assert_eq!(
        (u(f, "tx_packets"), u(f, "tx_bytes")),
        (3, eb - before_bytes + 14 * 3),
        "{f}"
    );
    let st = stats(&pf.stop());
    assert!(u(&st, "packet_bypass_sockets_at_start") >= 1, "{st}");
}

/// Ids of the BPF maps procflow (`pid`) holds, from its descriptors.
fn map_ids_of(pid: u32) -> std::collections::HashSet<u64> {
    let mut ids = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(info) = std::fs::read_to_string(fd.path()) {
            for l in info.lines() {
                if let Some(id) = l.strip_prefix("map_id:") {
                    ids.insert(id.trim().parse().unwrap());
                }
            }
        }
    }
    ids
}

#[test]
fn a_missing_rule_table_blocks_packet_sockets_fail_closed() {
    let _only = bypass_or_rules();
    let (dir, script) = script();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "default = \"allow\"\n[[rule]]\nname = \"allowed-sender\"\naction = \"allow\"\n\
         family = \"packet\"\ncomm = \"pfpkt-allowed\"\n",
    )
    .unwrap();
    let pf = Procflow::start(&["--rules", rules.to_str().unwrap()]);
    pf.wait_rules_ack(1);
    let p = Pair::new("pktfc", 134);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let dmac = mac_of(&p.b, "pfb134");
    let with = |comm: &str| {
        let a = [
            arg("dev", "pfa134"),
            arg("dmac", &dmac),
            arg("kind", "udp"),
            arg("n", 3),
            arg("src", p.a4),
            arg("dst", p.b4),
            arg("dport", 9999),
            arg("comm", comm),
        ];
        send(&p.a, &script, &a)
    };
    let before = with("pfpkt-other");
    assert_eq!(before["sent"], 3, "the default allows: {before}");
    // Take away the comm table's entry for names no rule has, in the copy
    // that holds it (the rule set in force): the decision cannot be made,
    // and must block.
    let ours = map_ids_of(pf.pid());
    let maps: Value = serde_json::from_str(&sh(&["bpftool", "-j", "map", "show"])).unwrap();
    let deleted = maps
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("pol_comm_"))
                && ours.contains(&m["id"].as_u64().unwrap())
        })
        .filter(|m| {
            let id = m["id"].as_u64().unwrap().to_string();
            let mut cmd = vec!["map", "delete", "id", &id, "key", "hex"];
            cmd.extend(std::iter::repeat_n("ff", 16));
            Command::new("bpftool")
                .args(&cmd)
                .status()
                .unwrap()
                .success()
        })
        .count();
    assert_eq!(deleted, 1, "procflow's comm table of the rule set in force");
    let after = with("pfpkt-other2");
    assert_eq!(after["sent"], 0, "a missing table let frames out: {after}");
    assert_eq!(after["errno"], libc::ENOBUFS, "{after}");
    let recs = pf.stop();
    let st = stats(&recs);
    assert!(u(&st, "fail_closed") >= 1, "{st}");
}
