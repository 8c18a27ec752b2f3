//! Root tests that attack procflow's rules as unprivileged local users
//! (`runuser -u nobody`, `-u daemon`): an address family the rules would not look at
//! must not walk around a block, and a flood of blocked connects must
//! neither stop procflow nor its counting and enforcing for anyone else.
//! Ground truth: nftables counters in the peer namespace and the
//! generator's own byte counts.
mod common;

use std::process::Stdio;

use common::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// A rules file in a temporary directory, removed on drop.
struct Rules(tempfile::TempDir);

impl Rules {
    fn new(text: &str) -> Rules {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("rules.toml"), text).unwrap();
        Rules(d)
    }
    fn path(&self) -> String {
        self.0
            .path()
            .join("rules.toml")
            .to_string_lossy()
            .into_owned()
    }
}

/// Writes a script where `nobody` can read it.
fn script(text: &str) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("attack.py");
    std::fs::write(&p, text).unwrap();
    sh(&["chmod", "0755", &d.path().to_string_lossy()]);
    sh(&["chmod", "0644", &p.to_string_lossy()]);
    (d, p.to_string_lossy().into_owned())
}

/// sendto() with sin_family = AF_UNSPEC (the kernel sends to sin_addr),
/// then AF_INET; prints the errno of each (0 = sent).
const UNSPEC: &str = r#"
import ctypes, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out = []
for family in (0, socket.AF_INET):
    sa = struct.pack("=HH4s8x", family, socket.htons(port), socket.inet_aton(host))
    buf = ctypes.create_string_buffer(b"x" * 100)
    n = libc.sendto(s.fileno(), buf, 100, 0, ctypes.c_char_p(sa), len(sa))
    out.append(0 if n == 100 else ctypes.get_errno())
print(" ".join(map(str, out)), flush=True)
"#;

#[test]
fn sendto_with_af_unspec_does_not_walk_around_a_udp_block() {
    let p = Pair::new("unspec", 46);
    let rules = Rules::new(&format!(
        "default = \"allow\"\n[[rule]]\nname = \"no-udp-to-b\"\naction = \"block\"\nproto = \"udp\"\nremote = \"{}\"\n",
        p.b4
    ));
    let got = nft_counter(
        &p.b,
        "input",
        "unspec",
        &format!("ip saddr {} udp dport 7777", p.a4),
    );
    let pf = Procflow::start(&["--rules", &rules.path()]);
    let (_d, path) = script(UNSPEC);
    let out =
        p.a.command("runuser")
            .args([
                "-u",
                "daemon",
                "--",
                PYTHON,
                &path,
                &p.b4.to_string(),
                "7777",
            ])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
    assert!(out.status.success(), "the attack script failed");
    let errnos = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // EPERM (1) for both: AF_UNSPEC is decided as AF_INET.
    assert_eq!(errnos, "1 1", "sendto errnos (AF_UNSPEC, AF_INET)");
    let (packets, _) = got.read();
    assert_eq!(packets, 0, "a blocked datagram reached the peer");
    let recs = pf.stop();
    let blocks: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["verdict"] == "block" && r["rule"] == "no-udp-to-b")
        .collect();
    assert!(
        !blocks.is_empty(),
        "no verdict record for the blocked sends"
    );
    assert!(
        blocks.iter().all(|v| v["process"]["uid"] == 1),
        "{blocks:?}"
    );
}

/// As many blocked connects as possible for SECS seconds; prints how many.
const FLOOD: &str = r#"
import socket, sys, time
host, secs = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + secs
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.connect((host, 9))
        except PermissionError:
            n += 1
print(n, flush=True)
"#;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_blocked_connects_stops_neither_procflow_nor_another_users_transfer() {
    let p = Pair::new("flood", 47);
    let rules = Rules::new(&format!(
        "default = \"allow\"\n[[rule]]\nname = \"nobody-not-to-b\"\naction = \"block\"\nuser = \"nobody\"\nremote = \"{}\"\n",
        p.b4
    ));
    let up = nft_counter(
        &p.b,
        "input",
        "xfer",
        &format!("ip saddr {} meta l4proto tcp", p.a4),
    );
    let pf = Procflow::start(&["--rules", &rules.path()]);
    let rss_before = rss_kib(pf.pid());
    let (_d, path) = script(FLOOD);
    let flood =
        p.a.command("runuser")
            .args(["-u", "nobody", "--", PYTHON, &path, &p.b4.to_string(), "5"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    // Root's transfer, during the flood.
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "1",
            "--download",
            "200000",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "tcp-slow",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "2000000",
            "--secs",
            "3",
        ],
    );
    let served = finish(server);
    assert_eq!(served["received"], 2_000_000);
    let out = flood.wait_with_output().unwrap();
    assert!(out.status.success());
    let attempts: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    pf.wait_closed(&p.a, 1, "transfer", |f| {
        f["process"]["pid"] == cl["pid"] && f["remote_port"].as_u64() == Some(u64::from(port))
    });
    let rss_after = rss_kib(pf.pid());
    let (pk, by) = up.read();
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "transfer", |f| {
        f["process"]["pid"] == cl["pid"] && f["remote_port"].as_u64() == Some(u64::from(port))
    });
    assert_eq!(u(f, "tx_payload"), 2_000_000, "{f}");
    assert_eq!(u(f, "rx_payload"), 200_000, "{f}");
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (pk, by), "{f}");
    let st = stats(&recs);
    let recorded = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["rule"] == "nobody-not-to-b")
        .count() as u64;
    let suppressed = st["verdicts_suppressed"].as_u64().unwrap();
    eprintln!(
        "flood: {attempts} blocked connects, {recorded} verdict records, {suppressed} suppressed, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(attempts > 50_000, "the flood made only {attempts} attempts");
    assert!(suppressed > 0, "{st}");
    // Every attempt was decided; each one is recorded or counted as
    // suppressed (suppressed also counts other processes' records).
    assert!(recorded + suppressed >= attempts, "{st}");
    // nobody's records stay within its budget (1024 a second, over the
    // flood's 5 s and the windows it straddles).
    assert!(
        recorded <= 7 * 1024,
        "{recorded} verdict records for one uid"
    );
    assert_eq!(st["events_lost"], 0, "{st}");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Sends one UDP datagram of 20 bytes from SRC to DST:PORT as an Ethernet
/// frame on DEV to DSTMAC (a packet socket: as it would arrive from the
/// wire), with N destination-options headers before the UDP header.
const EXT_SEND: &str = r#"
import socket, struct, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dev, dstmac = sys.argv[5], bytes.fromhex(sys.argv[6].replace(":", ""))
srcmac = bytes.fromhex(open(f"/sys/class/net/{dev}/address").read().strip().replace(":", ""))
sb, db = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
payload = b"z" * 20
ulen = 8 + len(payload)
def csum(data):
    t = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff or 0xffff
c = csum(sb + db + struct.pack("!I3xB", ulen, 17) + struct.pack("!HHHH", 40000, port, ulen, 0) + payload)
udp = struct.pack("!HHHH", 40000, port, ulen, c) + payload
exts = b"".join(bytes([60 if i < n - 1 else 17, 0, 1, 4, 0, 0, 0, 0]) for i in range(n))
ip6 = struct.pack("!IHBB", 6 << 28, len(exts) + len(udp), 60 if n else 17, 64) + sb + db
eth = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
eth.bind((dev, 0))
eth.send(dstmac + srcmac + struct.pack("!H", 0x86DD) + ip6 + exts + udp)
"#;

/// Binds ADDR:PORT, prints "ready", counts datagrams until 1.5 s pass
/// without one, prints the count.
const EXT_RECV: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.5)
print("ready", flush=True)
n = 0
try:
    while True:
        s.recv(100)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"#;

/// How many of the datagrams with `headers` extension headers, sent from
/// b to a's `port`, a's socket received.
fn ext_datagrams_received(p: &Pair, port: u16, headers: &[u32]) -> u64 {
    use std::io::BufRead;
    let (_d, recv) = script(EXT_RECV);
    let (_e, send) = script(EXT_SEND);
    let mut r =
        p.a.command(PYTHON)
            .args([recv.as_str(), &p.a6.to_string(), &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = std::io::BufReader::new(r.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The pair's veth devices: pfa<N> in a, pfb<N> in b (N from 10.199.N.1).
    let pair_n = match p.a4 {
        std::net::IpAddr::V4(v) => v.octets()[2],
        _ => unreachable!(),
    };
    let a_mac =
        p.a.exec(&["cat", &format!("/sys/class/net/pfa{pair_n}/address")])
            .trim()
            .to_string();
    let b_dev = format!("pfb{pair_n}");
    for n in headers {
        let st =
            p.b.command(PYTHON)
                .args([
                    send.as_str(),
                    &p.b6.to_string(),
                    &p.a6.to_string(),
                    &port.to_string(),
                    &n.to_string(),
                    &b_dev,
                    &a_mac,
                ])
                .status()
                .unwrap();
        assert!(
            st.success(),
            "sending a datagram with {n} extension headers failed"
        );
    }
    line.clear();
    out.read_line(&mut line).unwrap();
    r.wait().unwrap();
    line.trim().parse().unwrap()
}

#[test]
fn a_remote_sender_cannot_hide_a_datagram_behind_nine_extension_headers() {
    let p = Pair::new("ext9", 48);
    let port = 7788;
    // Ground truth first: without procflow the crafted datagrams arrive.
    assert_eq!(
        without_procflow(|| ext_datagrams_received(&p, port, &[2, 9, 12])),
        3,
        "the crafted datagrams do not arrive even without procflow"
    );
    let rules = Rules::new(&format!(
        "default = \"allow\"\n[[rule]]\nname = \"no-udp-in\"\naction = \"block\"\ndirection = \"in\"\nproto = \"udp\"\nlocal_port = {port}\n"
    ));
    let pf = Procflow::start(&["--rules", &rules.path()]);
    assert_eq!(
        ext_datagrams_received(&p, port, &[2, 9, 12]),
        0,
        "a blocked inbound datagram reached its socket"
    );
    let recs = pf.stop();
    let st = stats(&recs);
    // The 9- and 12-header datagrams cannot be walked: dropped and counted.
    assert!(st["unwalkable_dropped"].as_u64().unwrap() >= 2, "{st}");
}

/// One UDP socket in b: sends a datagram to DST:PORT each time a line
/// arrives on standard input, answering "sent".
const ONE_SOCKET: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in sys.stdin:
    s.sendto(b"g" * 10, (sys.argv[1], int(sys.argv[2])))
    print("sent", flush=True)
"#;

/// Waits for procflow's acknowledgement of rule set generation `g` (the
/// `g`th rules record) and checks that it was accepted.
fn wait_rules_ack(pf: &Procflow, g: u64) {
    let ack = pf.wait_rules_ack(g as usize);
    assert_eq!(
        (&ack["generation"], &ack["outcome"]),
        (&Value::from(g), &Value::from("accepted")),
        "{ack}"
    );
}

#[test]
fn an_inbound_udp_decision_two_reloads_old_is_never_taken_for_a_fresh_one() {
    use std::io::{BufRead, Write};
    let p = Pair::new("gens", 49);
    let port = 7799u16;
    let block = format!(
        "default = \"allow\"\n[[rule]]\nname = \"no-udp-in\"\naction = \"block\"\ndirection = \"in\"\nproto = \"udp\"\nlocal_port = {port}\n"
    );
    let allow = "default = \"allow\"\n";
    let rules = Rules::new(&block);
    let pf = Procflow::start(&["--rules", &rules.path()]);
    wait_rules_ack(&pf, 1);
    let (_d, rx) = script(
        "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], int(sys.argv[2])))\ns.settimeout(float(sys.argv[3]))\nprint('ready', flush=True)\nn = 0\ntry:\n    while True:\n        s.recv(100)\n        n += 1\n        print('got', flush=True)\nexcept socket.timeout:\n    pass\n",
    );
    let mut receiver =
        p.a.command(PYTHON)
            .args([rx.as_str(), &p.a4.to_string(), &port.to_string(), "30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let rout = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let (tx_line, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in rout.lines().map_while(Result::ok) {
            let _ = tx_line.send(l);
        }
    });
    let wait = std::time::Duration::from_secs(5);
    assert_eq!(arrived.recv_timeout(wait).unwrap(), "ready");
    let (_e, tx) = script(ONE_SOCKET);
    let mut sender =
        p.b.command(PYTHON)
            .args([tx.as_str(), &p.a4.to_string(), &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut sin = sender.stdin.take().unwrap();
    let mut sout = std::io::BufReader::new(sender.stdout.take().unwrap());
    let mut send = || {
        writeln!(sin).unwrap();
        let mut l = String::new();
        sout.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "sent");
    };
    // Generation 1 blocks the flow (the decision is cached for it).
    send();
    assert!(
        arrived
            .recv_timeout(std::time::Duration::from_secs(1))
            .is_err(),
        "a datagram the rules block arrived"
    );
    // Two reloads that allow it; the flow sends nothing in between.
    for g in [2, 3] {
        std::fs::write(rules.path(), allow).unwrap();
        sh(&["kill", "-HUP", &pf.pid().to_string()]);
        wait_rules_ack(&pf, g);
    }
    // Generation 3 allows: the datagram must arrive (generation 1's cached
    // block, two reloads old, is not fresh).
    send();
    let got = arrived.recv_timeout(wait);
    let _ = receiver.kill();
    let _ = sender.kill();
    let _ = receiver.wait();
    let _ = sender.wait();
    drop(pf);
    assert_eq!(
        got.ok().as_deref(),
        Some("got"),
        "the datagram sent under generation 3 (allow) did not arrive"
    );
}

/// Connects and sends to the unspecified address (and, bound to A4, to
/// 0.0.0.0 again); prints the errno of each (0 = connected or sent).
const UNSPECIFIED: &str = r#"
import socket, sys
a4, port = sys.argv[1], int(sys.argv[2])
def attempt(family, kind, dst, bind=None):
    s = socket.socket(family, kind)
    try:
        if bind:
            s.bind((bind, 0))
        if kind == socket.SOCK_STREAM:
            s.connect((dst, port))
        else:
            s.sendto(b"x" * 10, (dst, port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()
I4, I6, T, U = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
print(attempt(I4, T, "0.0.0.0"), attempt(I4, U, "0.0.0.0"),
      attempt(I6, T, "::"), attempt(I6, U, "::"),
      attempt(I6, T, "::ffff:0.0.0.0"), attempt(I4, T, "0.0.0.0", bind=a4), flush=True)
"#;

#[test]
fn the_unspecified_address_is_decided_as_the_address_it_reaches() {
    let p = Pair::new("anyaddr", 68);
    let port = 7811;
    let rules = Rules::new(&format!(
        "default = \"allow\"\n\
         [[rule]]\nname = \"no-loopback\"\naction = \"block\"\nremote = [\"127.0.0.1\", \"::1\"]\nremote_port = {port}\n\
         [[rule]]\nname = \"no-a\"\naction = \"block\"\nremote = \"{}\"\nremote_port = {port}\n",
        p.a4
    ));
    let pf = Procflow::start(&["--rules", &rules.path()]);
    let (_d, path) = script(UNSPECIFIED);
    let out =
        p.a.command("runuser")
            .args([
                "-u",
                "daemon",
                "--",
                PYTHON,
                &path,
                &p.a4.to_string(),
                &port.to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
    assert!(out.status.success(), "the attack script failed");
    // EPERM (1) for every one: 0.0.0.0 and :: reach this machine (without
    // the rules, the connects would be refused by the kernel, 111, and the
    // datagrams sent, 0).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 1 1 1 1 1",
        "errnos of connect/sendto to 0.0.0.0, ::, ::ffff:0.0.0.0 and bound 0.0.0.0"
    );
    let recs = pf.stop();
    let mut decided: Vec<(String, String)> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["verdict"] == "block")
        .map(|r| {
            (
                r["rule"].as_str().unwrap_or("").to_string(),
                r["remote_ip"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    decided.sort();
    decided.dedup();
    let a4 = p.a4.to_string();
    let want: Vec<(String, String)> = vec![
        ("no-a".into(), a4),
        ("no-loopback".into(), "127.0.0.1".into()),
        ("no-loopback".into(), "::1".into()),
    ];
    assert_eq!(decided, want, "what the blocked attempts were decided as");
}

/// Sends N datagrams to DST:PORT (allowed) with a loose source route
/// through HOP (IP_OPTIONS, which needs no privilege), or, for IPv6, with a
/// segment routing header through HOP (IPV6_RTHDR); prints the errnos.
const SOURCE_ROUTE: &str = r#"
import socket, struct, sys
family, dst, hop, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if family == "4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsrr = bytes([131, 7, 4]) + socket.inet_aton(hop) + bytes([0])
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    # SRH: next header (filled by the kernel), length 4 (two segments),
    # type 4, segments left 1, last entry 1; segments[1] is the first hop.
    srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + bytes(16) + socket.inet_pton(socket.AF_INET6, hop)
    s.setsockopt(socket.IPPROTO_IPV6, 57, srh)  # IPV6_RTHDR
out = []
for _ in range(n):
    try:
        s.sendto(b"r" * 20, (dst, port))
        out.append(0)
    except OSError as e:
        out.append(e.errno)
print(" ".join(map(str, sorted(set(out)))), flush=True)
"#;

/// Sends 3 source-routed datagrams from a (as uid 1) to an allowed
/// address with the blocked peer b as first hop; returns what b's
/// prerouting hook saw from a and the script's errnos.
fn source_routed(p: &Pair, family: &str, tag: &str) -> (u64, String) {
    let (dst, hop, src) = if family == "4" {
        (
            "10.200.68.9".to_string(),
            p.b4.to_string(),
            p.a4.to_string(),
        )
    } else {
        (
            "fd00:200:68::9".to_string(),
            p.b6.to_string(),
            p.a6.to_string(),
        )
    };
    let fam = if family == "4" { "ip" } else { "ip6" };
    let seen = nft_counter(&p.b, "prerouting", tag, &format!("{fam} saddr {src}"));
    let (_d, path) = script(SOURCE_ROUTE);
    let args = [PYTHON, &path, family, &dst, &hop, "7812", "3"];
    // An IPv6 routing header needs no privilege; IPv4 source-route options
    // need CAP_NET_RAW (given to `daemon` alone).
    let out = if family == "4" {
        p.a.command("setpriv")
            .args(["--reuid=1", "--regid=1", "--clear-groups"])
            .args(["--inh-caps=+net_raw", "--ambient-caps=+net_raw"])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap()
    } else {
        p.a.command("runuser")
            .args(["-u", "daemon", "--"])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap()
    };
    assert!(out.status.success(), "the source-route script failed");
    std::thread::sleep(std::time::Duration::from_millis(300));
    (
        seen.read().0,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn a_source_route_cannot_carry_a_datagram_to_a_blocked_address() {
    let p = Pair::new("srcroute", 69);
    // The allowed destinations are reached through b, the blocked peer.
    p.a.exec(&[
        "ip",
        "route",
        "add",
        "10.200.68.0/24",
        "via",
        &p.b4.to_string(),
    ]);
    p.a.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:200:68::/64",
        "via",
        &p.b6.to_string(),
    ]);
    // Ground truth first: without procflow, the source-routed datagrams are
    // sent to b (the first hop), not to the address they were sent to.
    for (family, tag) in [("4", "sr4pre"), ("6", "sr6pre")] {
        let (seen, errnos) = without_procflow(|| source_routed(&p, family, tag));
        assert_eq!(
            errnos, "0",
            "IPv{family}: the source-routed sends failed without procflow"
        );
        assert!(
            seen >= 3,
            "IPv{family}: b saw {seen} of the 3 source-routed datagrams without procflow"
        );
    }
    let rules = Rules::new(&format!(
        "default = \"allow\"\n[[rule]]\nname = \"no-b\"\naction = \"block\"\nremote = [\"{}\", \"{}\"]\n",
        p.b4, p.b6
    ));
    let pf = Procflow::start(&["--rules", &rules.path()]);
    for (family, tag) in [("4", "sr4"), ("6", "sr6")] {
        let (seen, _) = source_routed(&p, family, tag);
        assert_eq!(
            seen, 0,
            "IPv{family}: a source route carried datagrams to the blocked b"
        );
    }
    let recs = pf.stop();
    let st = stats(&recs);
    assert!(st["rerouted_dropped"].as_u64().unwrap() >= 6, "{st}");
}

/// UDP-Lite (136) and raw protocol-253 datagrams: `recv PROTO ADDR PORT`
/// binds, prints "ready" and, after 1.5 s without a datagram, the count;
/// `send PROTO DST PORT N` sends N; `echo ADDR PORT` answers one datagram;
/// `ask DST PORT` sends one UDP-Lite datagram and prints "reply" or "none".
const DATAGRAMS: &str = r#"
import socket, sys
def sock(proto):
    if proto == "udplite":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
cmd = sys.argv[1]
if cmd == "recv":
    s = sock(sys.argv[2])
    s.bind((sys.argv[3], int(sys.argv[4]) if sys.argv[2] == "udplite" else 0))
    s.settimeout(1.5)
    print("ready", flush=True)
    n = 0
    try:
        while True:
            s.recv(2000)
            n += 1
    except socket.timeout:
        pass
    print(n, flush=True)
elif cmd == "send":
    s = sock(sys.argv[2])
    for _ in range(int(sys.argv[5])):
        s.sendto(b"L" * 30, (sys.argv[3], int(sys.argv[4])))
elif cmd == "echo":
    s = sock("udplite")
    s.bind((sys.argv[2], int(sys.argv[3])))
    print("ready", flush=True)
    data, peer = s.recvfrom(2000)
    s.sendto(data, peer)
elif cmd == "ask":
    s = sock("udplite")
    s.settimeout(2)
    s.sendto(b"q" * 30, (sys.argv[2], int(sys.argv[3])))
    try:
        s.recv(2000)
        print("reply", flush=True)
    except socket.timeout:
        print("none", flush=True)
"#;

/// How many of 3 `proto` datagrams from b reach a socket bound in a.
fn datagrams_from_b(p: &Pair, path: &str, proto: &str, port: u16) -> u64 {
    use std::io::BufRead;
    let mut r = Reaped::new(
        p.a.command(PYTHON)
            .args([path, "recv", proto, &p.a4.to_string(), &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(r.0.as_mut().unwrap().stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let st =
        p.b.command(PYTHON)
            .args([
                path,
                "send",
                proto,
                &p.a4.to_string(),
                &port.to_string(),
                "3",
            ])
            .status()
            .unwrap();
    assert!(st.success(), "sending {proto} datagrams failed");
    line.clear();
    out.read_line(&mut line).unwrap();
    r.take().wait().unwrap();
    line.trim().parse().unwrap()
}

#[test]
fn inbound_rules_hold_for_udp_lite_and_raw_protocols() {
    use std::io::BufRead;
    let p = Pair::new("otherin", 70);
    let (_d, path) = script(DATAGRAMS);
    // Ground truth first: without procflow both kinds arrive.
    for proto in ["udplite", "raw"] {
        assert_eq!(
            without_procflow(|| datagrams_from_b(&p, &path, proto, 7821)),
            3,
            "{proto} datagrams from b do not arrive even without procflow"
        );
    }
    let rules = Rules::new(&format!(
        "default = \"allow\"\n[[rule]]\nname = \"nothing-in-from-b\"\naction = \"block\"\ndirection = \"in\"\nremote = \"{}\"\n",
        p.b4
    ));
    let pf = Procflow::start(&["--rules", &rules.path()]);
    for proto in ["udplite", "raw"] {
        assert_eq!(
            datagrams_from_b(&p, &path, proto, 7821),
            0,
            "a blocked inbound {proto} datagram reached its socket"
        );
    }
    // A reply to what a's socket sent is no inbound flow: it arrives.
    let mut echo = Reaped::new(
        p.b.command(PYTHON)
            .args([path.as_str(), "echo", &p.b4.to_string(), "7822"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(echo.0.as_mut().unwrap().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let ask =
        p.a.command(PYTHON)
            .args([path.as_str(), "ask", &p.b4.to_string(), "7822"])
            .output()
            .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ask.stdout).trim(),
        "reply",
        "the reply to a UDP-Lite datagram a sent was dropped"
    );
    let _ = echo.take().wait();
    let recs = pf.stop();
    let blocked: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["verdict"] == "block")
        .collect();
    for proto in ["udplite", "ip:253"] {
        assert!(
            blocked
                .iter()
                .any(|r| r["hook"] == "ingress" && r["direction"] == "in" && r["proto"] == proto),
            "no inbound block record for {proto}: {blocked:?}"
        );
    }
    // UDP-Lite flows carry their ports.
    let udplite: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "flow" && r["local_port"] == 7822)
        .collect();
    assert!(
        !udplite.is_empty(),
        "no flow for the UDP-Lite echo with its port"
    );
}

/// Datagram table quotas: SOCKETS UDP sockets, each sending one datagram to
/// each of REMOTES loopback addresses (127.1.x.y, port 9), paced so that no
/// record is lost; prints the total sent.
const MANY_REMOTES: &str = r#"
import socket, sys, time
sockets, remotes = int(sys.argv[1]), int(sys.argv[2])
sent, keep = 0, []
for s_i in range(sockets):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for r in range(remotes):
        s.sendto(b"q" * 8, ("127.%d.%d.%d" % (1 + s_i, r // 250, 1 + r % 250), 9))
        sent += 1
        if sent % 200 == 0:
            time.sleep(0.01)
    keep.append(s)
print(sent, flush=True)
"#;

#[test]
fn one_user_cannot_take_the_datagram_table_and_counting_stays_exact() {
    let ns = Netns::new("pf-quota");
    let pf = Procflow::start(&[]);
    let (_d, path) = script(MANY_REMOTES);
    // 9 sockets of 4,500 remotes: each over its quota of 4,096, and the
    // ninth over its uid's quota of 32,768 entries.
    let out = ns
        .command("runuser")
        .args(["-u", "daemon", "--", PYTHON, &path, "9", "4500"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the sender failed");
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(sent, 9 * 4500);
    // Another user's flow afterwards still gets its own entry, exact.
    let victim = ns
        .command(PYTHON)
        .args([
            "-c",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(7): s.sendto(b'v' * 100, ('127.0.0.1', 9))",
        ])
        .status()
        .unwrap();
    assert!(victim.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let recs = pf.stop();
    let st = stats(&recs);
    assert_eq!(st["events_lost"], 0, "{st}");
    let flows = final_flows(&recs);
    let mine = flows_in(&flows, &ns, |f| {
        f["process"]["uid"] == 1 && f["proto"] == "udp"
    });
    let total: u64 = mine.iter().map(|f| u(f, "tx_packets")).sum();
    let mut by_socket: std::collections::BTreeMap<String, (usize, u64, u64)> = Default::default();
    for f in &mine {
        let e = by_socket
            .entry(
                f["flow_id"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string(),
            )
            .or_default();
        e.0 += 1;
        e.1 += u(f, "tx_packets");
        if f["remote_ip"] == "0.0.0.0" {
            e.2 += u(f, "tx_packets");
        }
    }
    // Every datagram is counted: when the kernel's allocator for new
    // entries runs dry in the burst, in the socket's overflow flow through
    // the preallocated spill table (`datagram_spilled`).
    let lost = u(&st, "datagram_table_full");
    assert!(
        total == sent && lost == 0,
        "the user's datagrams, summed over its flows: {total} of {sent} (per socket: flows, packets, in overflow): {by_socket:?} {st}"
    );
    let overflow: Vec<&&Value> = mine
        .iter()
        .filter(|f| f["remote_ip"] == "0.0.0.0" && f["remote_port"] == 0)
        .collect();
    // Each socket's first remote is its slot flow, counted in the socket
    // itself: it takes no table entry.
    let regular = mine.len() - overflow.len();
    assert!(
        regular <= 32768 + 9,
        "{regular} entries for one uid (quota 32,768, and 9 slot flows)"
    );
    assert!(
        !overflow.is_empty() && overflow.len() <= 9,
        "{} overflow flows",
        overflow.len()
    );
    // The first socket: 4,096 remotes of its own, 404 in its overflow flow.
    let first_cookie = |f: &Value| {
        f["flow_id"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let per_socket: std::collections::HashMap<String, usize> =
        mine.iter().fold(Default::default(), |mut m, f| {
            *m.entry(first_cookie(f)).or_default() += 1;
            m
        });
    assert!(
        per_socket.values().all(|&n| n <= 4096 + 2),
        "a socket made more than 4,096 entries (besides its slot and overflow flows): {:?}",
        per_socket.values().max()
    );
    // All but the 9 slot flows' datagrams went to the table: to 32,768
    // entries of their own, else to overflow flows (over the quota, or
    // through the spill table when the allocator ran dry).
    assert!(
        u(&st, "datagram_quota") + u(&st, "datagram_spilled") + lost >= sent - 9 - 32768,
        "{st}"
    );
    let theirs = flows_in(&flows, &ns, |f| {
        f["process"]["uid"] == 0 && f["remote_ip"] == "127.0.0.1" && f["remote_port"] == 9
    });
    assert_eq!(theirs.len(), 1, "the other user's flow");
    assert_eq!(
        (u(theirs[0], "tx_packets"), u(theirs[0], "tx_payload")),
        (7, 700),
        "the other user's flow is exact"
    );
}

/// DNS messages for the tests' Python processes.
const DNS_PY: &str = r#"
import json, os, random, socket, struct, sys

def qname(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"

def query(qid, name):
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname(name) + b"\0\x01\0\x01"

def response(qid, name, ip):
    return (struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + qname(name) + b"\0\x01\0\x01"
            + b"\xc0\x0c\0\x01\0\x01\0\0\0\x3c\0\x04" + socket.inet_aton(ip))

def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(10)
    return s

def connect_and_send(host):
    l = socket.socket()
    l.bind((host, 0))
    l.listen(1)
    port = l.getsockname()[1]
    c = socket.create_connection((host, port))
    a, _ = l.accept()
    c.sendall(b"x" * 1000)
    c.close()
    while a.recv(4096):
        pass
    a.close()
    l.close()
    return port
"#;

/// The attacker (an unprivileged user holding port 53 of 127.0.0.1, and
/// 127.0.0.2:53 and 127.0.0.1:5353): a response to its own socket that
/// asked nothing, then, to the victim's query, responses with another id,
/// another question, from another server port and address, to another
/// socket of the victim that asked nothing, then the right one, then a
/// second copy. Every forged one gives 127.0.0.3 (or a "planted" name).
const DNS_ATTACK: &str = r#"
victim_idle = int(sys.argv[1])
srv, alt_port, alt_addr = udp(("127.0.0.1", 53)), udp(("127.0.0.1", 5353)), udp(("127.0.0.2", 53))
own = udp(("127.0.0.1", 0))
srv.sendto(response(7, "planted-own.test", "127.0.0.1"), own.getsockname())
own.recv(512)
own.sendto(b"x" * 10, ("127.0.0.1", 9))
print("ready 53", flush=True)
msg, victim = srv.recvfrom(512)
qid = struct.unpack(">H", msg[:2])[0]
labels, i = [], 12
while msg[i]:
    labels.append(msg[i + 1:i + 1 + msg[i]].decode())
    i += 1 + msg[i]
asked = ".".join(labels)
srv.sendto(response(qid ^ 1, asked, "127.0.0.3"), victim)
srv.sendto(response(qid, "planted-question.test", "127.0.0.3"), victim)
alt_port.sendto(response(qid, asked, "127.0.0.3"), victim)
alt_addr.sendto(response(qid, asked, "127.0.0.3"), victim)
srv.sendto(response(qid, asked, "127.0.0.3"), ("127.0.0.1", victim_idle))
srv.sendto(response(qid, asked, "127.0.0.1"), victim)
srv.sendto(response(qid, asked, "127.0.0.3"), victim)
print(json.dumps({"asked": asked}), flush=True)
"#;

/// The victim: asks 127.0.0.1:53 for www.victim.test on one socket, holds
/// another that asks nothing, reads the forged responses and the real one,
/// then connects to 127.0.0.1 and to 127.0.0.3.
const DNS_VICTIM: &str = r#"
idle = udp(("127.0.0.1", int(sys.argv[1])))
s = udp(("127.0.0.1", 0))
qid = random.randrange(65536)
s.sendto(query(qid, "www.victim.test"), ("127.0.0.1", 53))
seen = 0
while True:
    m, frm = s.recvfrom(512)
    seen += 1
    if frm == ("127.0.0.1", 53) and m[:2] == struct.pack(">H", qid) and b"victim" in m and m[-4:] == socket.inet_aton("127.0.0.1"):
        break
idle.recv(512)
s.settimeout(2)
try:
    s.recv(512)
    seen += 1
except socket.timeout:
    pass
ports = [connect_and_send(h) for h in ("127.0.0.1", "127.0.0.3")]
print(json.dumps({"ports": ports, "seen": seen}), flush=True)
"#;

/// In its own user and network namespace (root there): a response from
/// its own port 53 to its own socket, which never asked; then a connection
/// to the address it gave.
const DNS_USERNS: &str = r#"
srv, own = udp(("127.0.0.1", 53)), udp(("127.0.0.1", 0))
srv.sendto(response(9, "planted-userns.test", "127.0.0.1"), own.getsockname())
own.recv(512)
port = connect_and_send("127.0.0.1")
print(json.dumps({"port": port, "netns": os.stat("/proc/self/ns/net").st_ino}), flush=True)
"#;

#[test]
fn a_local_user_cannot_plant_remote_names_with_datagrams_from_port_53() {
    let ns = Netns::new("pf-dns120");
    // Ports below 1024 for everyone in this namespace: the attacker holds
    // port 53 here without any privilege.
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
    let pf = Procflow::start(&[]);

    // In a user and network namespace of its own.
    let (_u, userns_py) = script(&format!("{DNS_PY}{DNS_USERNS}"));
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "unshare", "-Urn", "sh", "-c"])
        .arg(format!("ip link set lo up && exec {PYTHON} {userns_py}"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the user namespace attack failed");
    let userns: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Here, against another user's process.
    let (_a, attack_py) = script(&format!("{DNS_PY}{DNS_ATTACK}"));
    let (attacker, _) = serve_program(
        &ns,
        "runuser",
        &["-u", "nobody", "--", PYTHON, &attack_py, "40053"],
    );
    let (_v, victim_py) = script(&format!("{DNS_PY}{DNS_VICTIM}"));
    let out = ns
        .command("runuser")
        .args(["-u", "daemon", "--", PYTHON, &victim_py, "40053"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the victim failed");
    let victim: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(finish(attacker)["asked"], "www.victim.test");
    assert!(
        u(&victim, "seen") >= 6,
        "the forged responses arrived: {victim}"
    );
    let ports: Vec<u64> = victim["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();

    // A bystander that looked nothing up.
    let (server, bport) = serve(&ns, &["tcp-serve", "--listen", "127.0.0.1:0"]);
    client(
        &ns,
        &[
            "tcp-send",
            "--connect",
            &format!("127.0.0.1:{bport}"),
            "--upload",
            "1000",
        ],
    );
    finish(server);

    for port in ports.iter().copied().chain([u64::from(bport)]) {
        pf.wait_closed(&ns, 1, "tcp", |f| {
            f["proto"] == "tcp" && u(f, "remote_port") == port
        });
    }
    let (recs, db) = pf.stop_keep_db();
    let flows = final_flows(&recs);
    // Not one record (open, closed, any process, any namespace) carries a
    // name from a forged response.
    let planted: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["type"] == "flow"
                && (r["remote_name"]
                    .as_str()
                    .is_some_and(|n| n.contains("planted"))
                    || (r["remote_ip"] == "127.0.0.3" && !r["remote_name"].is_null()))
        })
        .collect();
    assert!(planted.is_empty(), "planted names: {planted:#?}");
    // The victim's own lookup, answered by the server it asked, names its
    // connection to 127.0.0.1 (so names do work here); its connection to
    // 127.0.0.3 has none.
    let named = one_flow(&flows, &ns, "victim to 127.0.0.1", |f| {
        f["remote_ip"] == "127.0.0.1" && u(f, "remote_port") == ports[0]
    });
    assert_eq!(named["remote_name"], "www.victim.test", "{named}");
    assert_eq!(named["process"]["uid"], 1, "{named}");
    let forged = one_flow(&flows, &ns, "victim to 127.0.0.3", |f| {
        f["remote_ip"] == "127.0.0.3" && u(f, "remote_port") == ports[1]
    });
    assert!(forged["remote_name"].is_null(), "{forged}");
    // The attacker's own datagram and the bystander's connection: unnamed.
    let own = one_flow(&flows, &ns, "attacker's datagram", |f| {
        f["proto"] == "udp" && u(f, "remote_port") == 9
    });
    assert!(own["remote_name"].is_null(), "{own}");
    let by = one_flow(&flows, &ns, "bystander", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == u64::from(bport)
    });
    assert!(by["remote_name"].is_null(), "{by}");
    let in_userns: Vec<&Value> = flows
        .iter()
        .filter(|f| f["netns"] == userns["netns"] && f["proto"] == "tcp")
        .collect();
    assert!(!in_userns.is_empty(), "no flow of the user namespace");
    assert!(
        in_userns.iter().all(|f| f["remote_name"].is_null()),
        "{in_userns:#?}"
    );
    // Rejected: the user namespace's and the attacker's own, another id,
    // another question, another server address, the socket that asked
    // nothing, the second copy (the one from port 5353 is no DNS message).
    let s = stats(&recs);
    assert!(u(&s, "dns_rejected") >= 7, "{s}");
    assert!(u(&s, "dns_answered") >= 1, "{s}");
    // Nor does the report.
    for by in ["host", "remote"] {
        let doc = report(&db, &["--by", by]).to_string();
        assert!(!doc.contains("planted"), "{doc}");
        assert!(doc.contains("www.victim.test") || by == "remote", "{doc}");
    }
    remove_db(&db);
}

/// Asks 127.0.0.1:53 for lo.example.test, connects to 127.0.0.1:PORT_A in
/// this namespace, then enters namespace NS_C and connects to
/// 127.0.0.1:PORT_C there.
const DNS_TWO_NAMESPACES: &str = r#"
import ctypes
port_a, port_c, ns_c = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = udp(("127.0.0.1", 0))
qid = random.randrange(65536)
s.sendto(query(qid, "lo.example.test"), ("127.0.0.1", 53))
m = s.recv(512)
assert m[:2] == struct.pack(">H", qid) and m[-4:] == socket.inet_aton("127.0.0.1"), m
def upload(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"x" * 1000)
    c.shutdown(socket.SHUT_WR)
    while c.recv(4096):
        pass
    c.close()
upload(port_a)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(ns_c, os.O_RDONLY)
assert libc.setns(fd, 0x40000000) == 0, ctypes.get_errno()
upload(port_c)
print(json.dumps({"pid": os.getpid()}), flush=True)
"#;

#[test]
fn a_genuine_answer_names_only_its_own_process_flows_in_its_own_namespace() {
    let a = Netns::new("pf-dns121-a");
    let c = Netns::new("pf-dns121-c");
    let pf = Procflow::start(&[]);
    let (dns, _) = serve(
        &a,
        &[
            "dns-serve",
            "--bind",
            "127.0.0.1:53",
            "--answer",
            "127.0.0.1",
        ],
    );
    let (sa, port_a) = serve(&a, &["tcp-serve", "--listen", "127.0.0.1:0"]);
    let (sc, port_c) = serve(&c, &["tcp-serve", "--listen", "127.0.0.1:0"]);
    let (_d, py) = script(&format!("{DNS_PY}{DNS_TWO_NAMESPACES}"));
    let out = a
        .command(PYTHON)
        .args([
            py.as_str(),
            &port_a.to_string(),
            &port_c.to_string(),
            &format!("/run/netns/{}", c.name),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the client failed");
    let looked_up: Value = serde_json::from_slice(&out.stdout).unwrap();
    finish(sa);
    finish(sc);
    let _ = finish(dns);
    // Another process in the same namespace, to the same address.
    let (sb, port_b) = serve(&a, &["tcp-serve", "--listen", "127.0.0.1:0"]);
    client(
        &a,
        &[
            "tcp-send",
            "--connect",
            &format!("127.0.0.1:{port_b}"),
            "--upload",
            "1000",
        ],
    );
    finish(sb);
    for (ns, port) in [(&a, port_a), (&c, port_c), (&a, port_b)] {
        pf.wait_closed(ns, 1, "tcp", |f| {
            f["proto"] == "tcp" && u(f, "remote_port") == u64::from(port)
        });
    }
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let to = |ns: &Netns, port: u16| {
        one_flow(&flows, ns, "client", |f| {
            f["proto"] == "tcp" && u(f, "remote_port") == u64::from(port)
        })
        .clone()
    };
    // The process that asked, in the namespace it asked in: named.
    let named = to(&a, port_a);
    assert_eq!(named["remote_name"], "lo.example.test", "{named}");
    assert_eq!(named["process"]["pid"], looked_up["pid"], "{named}");
    // The same process and address in another namespace: not named.
    let other_ns = to(&c, port_c);
    assert_eq!(other_ns["process"]["pid"], looked_up["pid"], "{other_ns}");
    assert!(other_ns["remote_name"].is_null(), "{other_ns}");
    // Another process in the same namespace: not named.
    let other = to(&a, port_b);
    assert_ne!(other["process"]["pid"], looked_up["pid"], "{other}");
    assert!(other["remote_name"].is_null(), "{other}");
}

const PY_CONNECT: &str =
    "import socket, sys\ns = socket.socket()\ntry:\n    s.connect((sys.argv[1], int(sys.argv[2])))\n    print(0)\nexcept OSError as e:\n    print(e.errno)\n";
const PERL_CONNECT: &str = "use IO::Socket::INET; my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Proto => 'tcp'); print $s ? 0 : ($! + 0), \"\\n\";";

#[test]
fn a_program_cannot_take_an_allowed_programs_path_nor_hide_behind_the_loader() {
    let p = Pair::new("exeid", 71);
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let python = python.to_string_lossy().to_string();
    let perl = std::fs::canonicalize("/usr/bin/perl").unwrap();
    let perl = perl.to_string_lossy().to_string();
    let b4 = p.b4.to_string();
    let rules = Rules::new(&format!(
        "default = \"allow\"\n\
         [[rule]]\nname = \"perl-may\"\naction = \"allow\"\nexe = \"{perl}\"\nuser = \"daemon\"\nremote = \"{b4}\"\nremote_port = 7831\n\
         [[rule]]\nname = \"only-perl\"\naction = \"block\"\nuser = \"daemon\"\nremote = \"{b4}\"\nremote_port = 7831\n\
         [[rule]]\nname = \"no-python\"\naction = \"block\"\nexe = \"{python}\"\nremote = \"{b4}\"\nremote_port = 7832\n"
    ));
    let pf = Procflow::start(&["--rules", &rules.path()]);
    let run = |args: &[&str]| -> String {
        let out =
            p.a.command("runuser")
                .args(["-u", "daemon", "--"])
                .args(args)
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The real programs: perl may reach 7831 (refused by b: 111), python
    // may not reach 7832 (EPERM: 1), perl may reach 7832.
    assert_eq!(
        run(&[&perl, "-e", PERL_CONNECT, &b4, "7831"]),
        "111",
        "perl to 7831"
    );
    assert_eq!(
        run(&[&python, "-c", PY_CONNECT, &b4, "7832"]),
        "1",
        "python to 7832"
    );
    assert_eq!(
        run(&[&perl, "-e", PERL_CONNECT, &b4, "7832"]),
        "111",
        "perl to 7832"
    );
    // Python bind-mounted over perl's path in a user and mount namespace of
    // its own: the path says perl, the file is not; the allow rule must not
    // hold for it.
    let forged = format!("mount --bind {python} {perl} && exec {perl} -c \"$0\" \"$@\"");
    assert_eq!(
        run(&["unshare", "-Urm", "sh", "-c", &forged, PY_CONNECT, &b4, "7831"]),
        "1",
        "python under perl's path in a user namespace reached 7831"
    );
    // Python started through the dynamic loader: the block rule for python
    // must still hold.
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    assert_eq!(
        run(&[
            &loader.to_string_lossy(),
            &python,
            "-c",
            PY_CONNECT,
            &b4,
            "7832"
        ]),
        "1",
        "python through the loader reached 7832"
    );
    let recs = pf.stop();
    let forged_verdicts: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "verdict" && r["rule"] == "only-perl")
        .collect();
    assert!(
        forged_verdicts.iter().any(|r| r["process"]["uid"] == 1),
        "no block verdict for the forged perl: {forged_verdicts:?}"
    );
    assert!(
        !recs
            .iter()
            .any(|r| r["type"] == "verdict" && r["rule"] == "perl-may" && r["verdict"] == "block"),
        "the allow rule decided a blocked attempt"
    );
}
