//! Root tests of flow visibility, attribution and exact counting (see
//! DESIGN.md, "Testing"). Each test runs in network namespaces it creates;
//! ground truth is the traffic generator's byte counts and nftables counters
//! in the peer namespace.

mod common;

use common::*;
use serde_json::Value;

fn port_of(f: &Value, key: &str) -> u16 {
    f[key].as_u64().unwrap() as u16
}

/// Client in a uploads U and downloads D from a server in b.
fn tcp_exact(tag: &str, n: u8, v6: bool) {
    let p = Pair::new(tag, n);
    let (a_ip, b_ip) = if v6 { (p.a6, p.b6) } else { (p.a4, p.b4) };
    let pf = Procflow::start(&[]);
    let (up, down) = (1_000_000u64, 300_000u64);
    let listen = if v6 {
        format!("[{b_ip}]:0")
    } else {
        format!("{b_ip}:0")
    };
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &listen,
            "--download",
            &down.to_string(),
        ],
    );
    let fam = if v6 { "ip6" } else { "ip" };
    let c_in = nft_counter(
        &p.b,
        "input",
        "cin",
        &format!("{fam} saddr {a_ip} tcp dport {port}"),
    );
    // Ground truth is counted where packets arrive (after segmentation):
    // the upload in b, the download in a.
    let c_out = nft_counter(
        &p.a,
        "input",
        "cout",
        &format!("{fam} saddr {b_ip} tcp sport {port}"),
    );
    let target = if v6 {
        format!("[{b_ip}]:{port}")
    } else {
        format!("{b_ip}:{port}")
    };
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &target,
            "--upload",
            &up.to_string(),
        ],
    );
    let sv = finish(server);
    assert_eq!((u(&cl, "sent"), u(&cl, "received")), (up, down));
    assert_eq!(u(&sv, "received"), up);
    // Let the closes reach procflow.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (in_pk, in_by) = c_in.read();
    let (out_pk, out_by) = c_out.read();
    let recs = pf.stop();
    let flows = final_flows(&recs);

    let c = one_flow(&flows, &p.a, "client", |f| {
        f["proto"] == "tcp" && port_of(f, "remote_port") == port
    });
    assert_eq!(c["state"], "closed");
    assert_eq!(c["direction"], "out");
    assert_eq!(c["origin"], "connect");
    assert_eq!(c["family"], if v6 { 6 } else { 4 });
    assert_eq!(c["remote_ip"], b_ip.to_string());
    assert_eq!(c["process"]["pid"].as_u64(), cl["pid"].as_u64());
    assert_eq!(c["process"]["exe"], TESTGEN);
    assert_eq!(
        (u(c, "tx_payload"), u(c, "rx_payload")),
        (up, down),
        "client payload: {c}"
    );
    assert_eq!(
        (u(c, "tx_packets"), u(c, "tx_bytes")),
        (in_pk, in_by),
        "client tx vs nftables: {c}"
    );
    assert_eq!(
        (u(c, "rx_packets"), u(c, "rx_bytes")),
        (out_pk, out_by),
        "client rx vs nftables: {c}"
    );

    let s = one_flow(&flows, &p.b, "server", |f| {
        f["proto"] == "tcp" && port_of(f, "local_port") == port
    });
    assert_eq!(s["state"], "closed");
    assert_eq!(s["direction"], "in");
    assert_eq!(s["origin"], "accept");
    assert_eq!(
        s["process"]["pid"].as_u64(),
        sv["pid"].as_u64(),
        "accepted flow owned by the server: {s}"
    );
    assert_eq!(s["process"]["exe"], TESTGEN);
    assert_eq!(
        (u(s, "tx_payload"), u(s, "rx_payload")),
        (down, up),
        "server payload: {s}"
    );
    assert_eq!(
        (u(s, "rx_packets"), u(s, "rx_bytes")),
        (in_pk, in_by),
        "server rx vs nftables: {s}"
    );
    assert_eq!(
        (u(s, "tx_packets"), u(s, "tx_bytes")),
        (out_pk, out_by),
        "server tx vs nftables: {s}"
    );
    assert_eq!(stats(&recs)["events_lost"], 0);
}

#[test]
fn tcp_over_veth_ipv4_is_exact() {
    tcp_exact("tcp4", 1, false);
}

#[test]
fn tcp_over_veth_ipv6_is_exact() {
    tcp_exact("tcp6", 2, true);
}
