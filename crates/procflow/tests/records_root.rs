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
    pf.wait_closed(&p.a, 1, "client", |f| {
        f["process"]["pid"] == cl["pid"] && f["remote_port"].as_u64() == Some(u64::from(port))
    });
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
    let p = Pair::new("mptcp", 50);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mptcp.py");
    std::fs::write(&script, MPTCP).unwrap();
    let pf = Procflow::start(&[]);
    let script = script.to_string_lossy();
    let b4 = p.b4.to_string();
    let (server, port) = serve_program(&p.b, "/usr/bin/python3", &[&script, "serve", &b4, "0"]);
    let cl =
        p.a.command("/usr/bin/python3")
            .args([&*script, "connect", &b4, &port.to_string()])
            .output()
            .unwrap();
    assert!(
        cl.status.success(),
        "{}",
        String::from_utf8_lossy(&cl.stderr)
    );
    let cl: serde_json::Value = serde_json::from_slice(&cl.stdout).unwrap();
    let srv = finish(server);
    assert_eq!(
        (srv["received"].as_u64(), cl["received"].as_u64()),
        (Some(100_000), Some(5000))
    );
    pf.wait_closed(&p.a, 1, "mptcp client", |f| f["remote_port"] == port);
    pf.wait_closed(&p.b, 1, "mptcp server", |f| f["local_port"] == port);
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
