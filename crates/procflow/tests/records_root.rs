//! Root tests: records say what really happened on the wire. A dual-stack
//! IPv6 socket talking to an IPv4 peer sends IPv4, so its flow is family 4
//! with IPv4 addresses, the same remote as an IPv4 socket's flow; bytes are
//! compared with the generator's counts and nftables.
mod common;

use common::*;

#[test]
fn a_dual_stack_socket_to_an_ipv4_peer_is_recorded_as_ipv4() {
    let p = Pair::new("dualstack", 45);
    let up = nft_counter(
        &p.b,
        "input",
        "up",
        &format!("ip saddr {} ip daddr {} meta l4proto tcp", p.a4, p.b4),
    );
    let pf = Procflow::start(&[]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "1",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("[::ffff:{}]:{port}", p.b4),
            "--upload",
            "123456",
        ],
    );
    finish(server);
    let done = |recs: &[serde_json::Value]| {
        final_flows(recs).iter().any(|f| {
            f["state"] == "closed"
                && f["process"]["pid"] == cl["pid"]
                && f["remote_port"].as_u64() == Some(u64::from(port))
        })
    };
    assert!(
        wait_for(10, || done(&read_log(&pf.log))),
        "the client's flow closed"
    );
    let (pk, by) = up.read();
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "dual-stack", |f| {
        f["process"]["pid"] == cl["pid"] && f["remote_port"].as_u64() == Some(u64::from(port))
    });
    assert_eq!(f["family"], 4, "{f}");
    assert_eq!(f["remote_ip"], p.b4.to_string(), "{f}");
    assert_eq!(f["local_ip"], p.a4.to_string(), "{f}");
    assert_eq!(u(f, "tx_payload"), 123_456, "{f}");
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (pk, by), "{f}");
}

/// An MPTCP client and server (IPPROTO_MPTCP sockets) between a and b:
/// the client uploads UP bytes, the server answers DOWN bytes.
const MPTCP: &str = r#"
import json, os, socket, sys
IPPROTO_MPTCP = 262
role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if role == "serve":
    l = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    l.bind((host, 0)); l.listen(1)
    print("ready", l.getsockname()[1], flush=True)
    c, _ = l.accept()
    got = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += len(b)
    c.sendall(b"d" * 5000); c.close()
    print(json.dumps({"received": got, "pid": os.getpid()}), flush=True)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.connect((host, port)); s.sendall(b"u" * 100000); s.shutdown(socket.SHUT_WR)
    r = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        r += len(b)
    s.close()
    print(json.dumps({"received": r, "pid": os.getpid()}), flush=True)
"#;

#[test]
fn an_mptcp_connection_says_mptcp_and_counts_exactly() {
    use std::io::{BufRead, BufReader, Read};
    let p = Pair::new("mptcp", 50);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mptcp.py");
    std::fs::write(&script, MPTCP).unwrap();
    let pf = Procflow::start(&[]);
    let mut server =
        p.b.command("/usr/bin/python3")
            .arg(&script)
            .args(["serve", &p.b4.to_string(), "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    let cl =
        p.a.command("/usr/bin/python3")
            .arg(&script)
            .args(["connect", &p.b4.to_string(), &port.to_string()])
            .output()
            .unwrap();
    assert!(
        cl.status.success(),
        "{}",
        String::from_utf8_lossy(&cl.stderr)
    );
    let cl: serde_json::Value = serde_json::from_slice(&cl.stdout).unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(server.wait().unwrap().success());
    let srv: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(
        (srv["received"].as_u64(), cl["received"].as_u64()),
        (Some(100_000), Some(5000))
    );
    let closed = |recs: &[serde_json::Value]| {
        final_flows(recs)
            .iter()
            .filter(|f| {
                f["state"] == "closed" && (f["remote_port"] == port || f["local_port"] == port)
            })
            .count()
    };
    assert!(
        wait_for(10, || closed(&read_log(&pf.log)) >= 2),
        "both ends closed"
    );
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let c = one_flow(&flows, &p.a, "mptcp client", |f| f["remote_port"] == port);
    let s = one_flow(&flows, &p.b, "mptcp server", |f| f["local_port"] == port);
    for (f, tx, rx, who) in [(c, 100_000, 5000, &cl), (s, 5000, 100_000, &srv)] {
        assert_eq!(f["proto"], "mptcp", "{f}");
        assert_eq!(f["process"]["pid"], who["pid"], "{f}");
        assert_eq!((u(f, "tx_payload"), u(f, "rx_payload")), (tx, rx), "{f}");
    }
}
