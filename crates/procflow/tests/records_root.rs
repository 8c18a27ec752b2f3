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
