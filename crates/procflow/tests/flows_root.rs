//! Root tests of flow visibility, attribution and exact counting (see
//! ARCHITECTURE.md). Each test runs in network namespaces it creates;
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
    pf.wait_closed(&p.a, 1, "client", |f| port_of(f, "remote_port") == port);
    pf.wait_closed(&p.b, 1, "server", |f| port_of(f, "local_port") == port);
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

#[test]
fn udp_unconnected_two_remotes_connected_and_receiver_are_exact() {
    let p = Pair::new("udp", 3);
    let pf = Procflow::start(&[]);
    let b = p.b4.to_string();
    let (r1, port1) = serve(
        &p.b,
        &[
            "udp-recv",
            "--bind",
            &format!("{b}:0"),
            "--count",
            "10",
            "--reply",
            "100",
        ],
    );
    let (r2, port2) = serve(
        &p.b,
        &[
            "udp-recv",
            "--bind",
            &format!("{b}:0"),
            "--count",
            "10",
            "--reply",
            "100",
        ],
    );
    let (r3, port3) = serve(
        &p.b,
        &["udp-recv", "--bind", &format!("{b}:0"), "--count", "5"],
    );
    let n1 = nft_counter(&p.b, "input", "u1", &format!("udp dport {port1}"));
    let n2 = nft_counter(&p.b, "input", "u2", &format!("udp dport {port2}"));
    let n3 = nft_counter(&p.b, "input", "u3", &format!("udp dport {port3}"));
    let n1r = nft_counter(&p.a, "input", "u1r", &format!("udp sport {port1}"));
    let n2r = nft_counter(&p.a, "input", "u2r", &format!("udp sport {port2}"));
    let n3r = nft_counter(&p.a, "input", "u3r", &format!("udp sport {port3}"));
    let cl = client(
        &p.a,
        &[
            "udp-send",
            "--to",
            &format!("{b}:{port1}"),
            "--to",
            &format!("{b}:{port2}"),
            "--size",
            "300",
            "--count",
            "10",
            "--expect-reply",
        ],
    );
    let cc = client(
        &p.a,
        &[
            "udp-send",
            "--to",
            &format!("{b}:{port3}"),
            "--size",
            "1000",
            "--count",
            "5",
            "--connect",
        ],
    );
    let (s1, s2, s3) = (finish(r1), finish(r2), finish(r3));
    assert_eq!(
        (u(&s1, "received"), u(&s2, "received"), u(&s3, "received")),
        (3000, 3000, 5000)
    );
    let ports = [port1, port2, port3];
    pf.wait_closed(&p.a, 3, "udp sender", |f| {
        f["proto"] == "udp" && ports.contains(&port_of(f, "remote_port"))
    });
    pf.wait_closed(&p.b, 3, "udp receiver", |f| {
        f["proto"] == "udp" && ports.contains(&port_of(f, "local_port"))
    });
    // nftables in b counts what reached each receiver, in a the replies.
    let to_b = [n1.read(), n2.read(), n3.read()];
    let to_a = [n1r.read(), n2r.read(), n3r.read()];
    assert_eq!(to_b.map(|c| c.0), [10, 10, 5], "datagrams on the wire");
    assert_eq!(to_a.map(|c| c.0), [10, 10, 0], "replies on the wire");
    let recs = pf.stop();
    let flows = final_flows(&recs);

    let lport = u(&cl, "local_port");
    for (i, port) in [port1, port2].into_iter().enumerate() {
        let f = one_flow(&flows, &p.a, "udp sender", |f| {
            f["proto"] == "udp" && u(f, "local_port") == lport && port_of(f, "remote_port") == port
        });
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(f["direction"], "out");
        assert_eq!(f["process"]["pid"].as_u64(), cl["pid"].as_u64());
        assert_eq!(
            (u(f, "tx_payload"), u(f, "rx_payload")),
            (3000, 1000),
            "{f}"
        );
        assert_eq!(
            (u(f, "tx_packets"), u(f, "tx_bytes")),
            to_b[i],
            "sender tx vs nftables at the receiver: {f}"
        );
        assert_eq!(
            (u(f, "rx_packets"), u(f, "rx_bytes")),
            to_a[i],
            "sender rx vs nftables at the sender: {f}"
        );
    }

    let c = one_flow(&flows, &p.a, "connected udp", |f| {
        f["proto"] == "udp" && port_of(f, "remote_port") == port3
    });
    assert_eq!(c["state"], "closed", "{c}");
    assert_eq!(c["process"]["pid"].as_u64(), cc["pid"].as_u64());
    assert_eq!((u(c, "tx_payload"), u(c, "rx_payload")), (5000, 0), "{c}");
    assert_eq!((u(c, "tx_packets"), u(c, "tx_bytes")), to_b[2], "{c}");
    assert_eq!((u(c, "rx_packets"), u(c, "rx_bytes")), (0, 0), "{c}");

    for (i, (port, srv, rx, tx)) in [
        (port1, &s1, 3000, 1000),
        (port2, &s2, 3000, 1000),
        (port3, &s3, 5000, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let f = one_flow(&flows, &p.b, "udp receiver", |f| {
            f["proto"] == "udp" && port_of(f, "local_port") == port
        });
        assert_eq!(f["direction"], "in", "{f}");
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(
            f["process"]["pid"].as_u64(),
            srv["pid"].as_u64(),
            "receiver owns it: {f}"
        );
        assert_eq!((u(f, "rx_payload"), u(f, "tx_payload")), (rx, tx), "{f}");
        assert_eq!(
            (u(f, "rx_packets"), u(f, "rx_bytes")),
            to_b[i],
            "receiver rx vs nftables: {f}"
        );
        assert_eq!(
            (u(f, "tx_packets"), u(f, "tx_bytes")),
            to_a[i],
            "receiver tx (replies) vs nftables at the sender: {f}"
        );
    }
}

#[test]
fn icmp_echo_over_a_ping_socket_is_exact() {
    let p = Pair::new("icmp", 4);
    let pf = Procflow::start(&[]);
    let a = p.a4.to_string();
    let req = nft_counter(
        &p.b,
        "input",
        "req",
        &format!("ip saddr {a} icmp type echo-request"),
    );
    let rep = nft_counter(
        &p.a,
        "input",
        "rep",
        &format!("ip daddr {a} icmp type echo-reply"),
    );
    let cl = client(
        &p.a,
        &[
            "ping",
            "--to",
            &p.b4.to_string(),
            "--size",
            "1000",
            "--count",
            "7",
        ],
    );
    pf.wait_closed(&p.a, 1, "ping", |f| {
        f["proto"] == "icmp" && f["process"]["pid"].as_u64() == cl["pid"].as_u64()
    });
    let ((rq_p, rq_b), (rp_p, rp_b)) = (req.read(), rep.read());
    assert_eq!(
        (rq_p, rp_p),
        (7, 7),
        "echo requests and replies on the wire"
    );
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "ping", |f| {
        f["proto"] == "icmp" && f["process"]["pid"].as_u64() == cl["pid"].as_u64()
    });
    assert_eq!(f["remote_ip"], p.b4.to_string());
    assert_eq!(f["process"]["exe"], TESTGEN);
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (rq_p, rq_b), "{f}");
    assert_eq!((u(f, "rx_packets"), u(f, "rx_bytes")), (rp_p, rp_b), "{f}");
    // ICMP payload is what the application wrote and read: the ICMP
    // message, its 8-byte header included (what sendto/recvfrom returned).
    assert_eq!(
        (u(f, "tx_payload"), u(f, "rx_payload")),
        (u(&cl, "sent"), u(&cl, "received")),
        "{f}"
    );
    assert_eq!(u(&cl, "sent"), 7 * 1008);
}

/// Twenty processes, one connection each, each exiting as soon as it is
/// done: one flow per process (pids one to one), every flow with its
/// executable, exact payload both ways, and wire bytes and packets equal to
/// nftables' per-connection counts, at both ends.
#[test]
fn twenty_short_lived_processes_each_get_exe_and_exact_bytes() {
    let p = Pair::new("short", 5);
    let pf = Procflow::start(&[]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "20",
            "--download",
            "4099",
        ],
    );
    // Per client port: what arrived in b (the upload), in a (the download).
    let up = nft_port_counters(
        &p.b,
        "input",
        "up",
        &format!("ip saddr {} tcp dport {port}", p.a4),
        "tcp sport",
    );
    let down = nft_port_counters(
        &p.a,
        "input",
        "down",
        &format!("ip saddr {} tcp sport {port}", p.b4),
        "tcp dport",
    );
    let target = format!("{}:{port}", p.b4);
    // pid -> client port, from the generator.
    let mut clients = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let lines = client_lines(
            &p.a,
            &[
                "tcp-send",
                "--connect",
                &target,
                "--upload",
                "524288",
                "--each",
            ],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (u(&lines[0], "sent"), u(&lines[0], "received")),
            (524_288, 4099)
        );
        clients.insert(u(&lines[1], "pid"), u(&lines[0], "local_port") as u16);
    }
    assert_eq!(clients.len(), 20, "twenty distinct pids: {clients:?}");
    let sv = finish(server);
    assert_eq!(u(&sv, "received"), 20 * 524_288);
    pf.wait_closed(&p.a, 20, "client", |f| port_of(f, "remote_port") == port);
    pf.wait_closed(&p.b, 20, "server", |f| port_of(f, "local_port") == port);
    let (up, down) = (up.read(), down.read());
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let ours = flows_in(&flows, &p.a, |f| {
        f["proto"] == "tcp" && port_of(f, "remote_port") == port
    });
    let got: Vec<u64> = {
        let mut v: Vec<u64> = ours.iter().map(|f| u(&f["process"], "pid")).collect();
        v.sort();
        v
    };
    assert_eq!(
        got,
        clients.keys().copied().collect::<Vec<_>>(),
        "one flow per process: {ours:#?}"
    );
    for f in ours {
        let pid = u(&f["process"], "pid");
        let lport = clients[&pid];
        assert_eq!(port_of(f, "local_port"), lport, "pid {pid}'s port: {f}");
        assert_eq!(f["process"]["exe"], TESTGEN, "{f}");
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(
            (u(f, "tx_payload"), u(f, "rx_payload")),
            (524_288, 4099),
            "{f}"
        );
        let upc = *up
            .get(&lport)
            .unwrap_or_else(|| panic!("nftables saw no upload from port {lport}: {up:?}"));
        let downc = *down
            .get(&lport)
            .unwrap_or_else(|| panic!("nftables saw no download to port {lport}: {down:?}"));
        assert_eq!(
            (u(f, "tx_packets"), u(f, "tx_bytes")),
            upc,
            "tx vs nftables: {f}"
        );
        assert_eq!(
            (u(f, "rx_packets"), u(f, "rx_bytes")),
            downc,
            "rx vs nftables: {f}"
        );
        let s = one_flow(&flows, &p.b, "server", |s| {
            port_of(s, "local_port") == port && port_of(s, "remote_port") == lport
        });
        assert_eq!(s["process"]["pid"], sv["pid"], "{s}");
        assert_eq!(s["state"], "closed", "{s}");
        assert_eq!(
            (u(s, "tx_payload"), u(s, "rx_payload")),
            (4099, 524_288),
            "{s}"
        );
        assert_eq!(
            (u(s, "rx_packets"), u(s, "rx_bytes")),
            upc,
            "server rx: {s}"
        );
        assert_eq!(
            (u(s, "tx_packets"), u(s, "tx_bytes")),
            downc,
            "server tx: {s}"
        );
    }
    assert_eq!(up.len(), 20, "nftables saw twenty connections: {up:?}");
}

/// What one loopback transfer moved: port, client and server summaries, and
/// the nftables counts (packets, bytes) of the upload and the download.
struct LoRun {
    port: u16,
    client: Value,
    server: Value,
    up: (u64, u64),
    down: (u64, u64),
}

#[test]
fn loopback_both_ends_attributed_and_exact() {
    require_root();
    let ns = Netns::new("pf-lo");
    // This kernel lets lo's TSO and GSO be turned off; GRO is not used on
    // loopback. With them on, nftables would count one packet per
    // 64 KiB super-packet.
    offloads_off(&ns, "lo", &["tso", "gso"]);
    let pf = Procflow::start(&[]);
    let mut runs = Vec::new();
    for (listen, fam, host, ver) in [
        ("127.0.0.1:0", "ip", "127.0.0.1", 4),
        ("[::1]:0", "ip6", "[::1]", 6),
    ] {
        let (server, port) = serve(
            &ns,
            &["tcp-serve", "--listen", listen, "--download", "70000"],
        );
        let up = nft_counter(
            &ns,
            "input",
            &format!("up{fam}"),
            &format!("meta l4proto tcp {fam} version {ver} tcp dport {port}"),
        );
        let down = nft_counter(
            &ns,
            "input",
            &format!("down{fam}"),
            &format!("meta l4proto tcp {fam} version {ver} tcp sport {port}"),
        );
        let client = client(
            &ns,
            &[
                "tcp-send",
                "--connect",
                &format!("{host}:{port}"),
                "--upload",
                "200000",
            ],
        );
        let server = finish(server);
        pf.wait_closed(&ns, 1, "lo client", |f| port_of(f, "remote_port") == port);
        pf.wait_closed(&ns, 1, "lo server", |f| port_of(f, "local_port") == port);
        runs.push(LoRun {
            port,
            client,
            server,
            up: up.read(),
            down: down.read(),
        });
    }
    let recs = pf.stop();
    let flows = final_flows(&recs);
    for r in &runs {
        let c = one_flow(&flows, &ns, "lo client", |f| {
            f["proto"] == "tcp" && port_of(f, "remote_port") == r.port
        });
        let s = one_flow(&flows, &ns, "lo server", |f| {
            f["proto"] == "tcp" && port_of(f, "local_port") == r.port
        });
        assert_eq!(c["process"]["pid"].as_u64(), r.client["pid"].as_u64());
        assert_eq!(s["process"]["pid"].as_u64(), r.server["pid"].as_u64());
        assert_eq!(
            (u(c, "tx_payload"), u(c, "rx_payload")),
            (200_000, 70_000),
            "{c}"
        );
        assert_eq!(
            (u(s, "tx_payload"), u(s, "rx_payload")),
            (70_000, 200_000),
            "{s}"
        );
        // Wire counts, both families, both directions. On IPv6 loopback
        // (MTU 65536) TCP sends two-segment GSO packets of more than 64 KiB
        // with a jumbo hop-by-hop header that no segment carries (BIG TCP).
        assert_eq!((u(c, "tx_packets"), u(c, "tx_bytes")), r.up, "{c}");
        assert_eq!((u(s, "rx_packets"), u(s, "rx_bytes")), r.up, "{s}");
        assert_eq!((u(s, "tx_packets"), u(s, "tx_bytes")), r.down, "{s}");
        assert_eq!((u(c, "rx_packets"), u(c, "rx_bytes")), r.down, "{c}");
    }
}

#[test]
fn sendfile_upload_and_splice_download_are_exact() {
    let p = Pair::new("splice", 6);
    let pf = Procflow::start(&[]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            "123457",
            "--splice",
        ],
    );
    let up = nft_counter(
        &p.b,
        "input",
        "up",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let down = nft_counter(
        &p.a,
        "input",
        "down",
        &format!("ip saddr {} tcp sport {port}", p.b4),
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "2000003",
            "--sendfile",
        ],
    );
    assert_eq!(u(&cl, "received"), 123_457);
    let sv = finish(server);
    assert_eq!(u(&sv, "received"), 2_000_003);
    pf.wait_closed(&p.a, 1, "sendfile client", |f| {
        port_of(f, "remote_port") == port
    });
    pf.wait_closed(&p.b, 1, "splice server", |f| {
        port_of(f, "local_port") == port
    });
    let (up, down) = (up.read(), down.read());
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let c = one_flow(&flows, &p.a, "sendfile client", |f| {
        f["proto"] == "tcp" && port_of(f, "remote_port") == port
    });
    let s = one_flow(&flows, &p.b, "splice server", |f| {
        f["proto"] == "tcp" && port_of(f, "local_port") == port
    });
    assert_eq!(
        (u(c, "tx_payload"), u(c, "rx_payload")),
        (2_000_003, 123_457),
        "{c}"
    );
    assert_eq!(
        (u(s, "tx_payload"), u(s, "rx_payload")),
        (123_457, 2_000_003),
        "{s}"
    );
    assert_eq!(c["process"]["pid"].as_u64(), cl["pid"].as_u64());
    assert_eq!(s["process"]["pid"].as_u64(), sv["pid"].as_u64());
    assert_eq!(
        (c["state"].as_str(), s["state"].as_str()),
        (Some("closed"), Some("closed"))
    );
    assert_eq!((u(c, "tx_packets"), u(c, "tx_bytes")), up, "client tx: {c}");
    assert_eq!((u(s, "rx_packets"), u(s, "rx_bytes")), up, "server rx: {s}");
    assert_eq!(
        (u(s, "tx_packets"), u(s, "tx_bytes")),
        down,
        "server tx: {s}"
    );
    assert_eq!(
        (u(c, "rx_packets"), u(c, "rx_bytes")),
        down,
        "client rx: {c}"
    );
}

/// Two namespaces with a server on 127.0.0.1:7777 each and a client to it:
/// four flows, each in its own namespace with its own owner, exact payload
/// and wire counts (nftables on each namespace's loopback) at both ends.
#[test]
fn same_address_and_port_in_two_namespaces_are_two_flows_with_two_owners() {
    require_root();
    let x = Netns::new("pf-samex");
    let y = Netns::new("pf-samey");
    let pf = Procflow::start(&[]);
    let mut runs = Vec::new();
    for (ns, up, down) in [(&x, 1000u64, 10u64), (&y, 3333, 222)] {
        offloads_off(ns, "lo", &["tso", "gso"]);
        let (srv, port) = serve(
            ns,
            &[
                "tcp-serve",
                "--listen",
                "127.0.0.1:7777",
                "--download",
                &down.to_string(),
            ],
        );
        assert_eq!(port, 7777);
        let cup = nft_counter(ns, "input", "up", "ip daddr 127.0.0.1 tcp dport 7777");
        let cdown = nft_counter(ns, "input", "down", "ip saddr 127.0.0.1 tcp sport 7777");
        let cl = client(
            ns,
            &[
                "tcp-send",
                "--connect",
                "127.0.0.1:7777",
                "--upload",
                &up.to_string(),
            ],
        );
        let sv = finish(srv);
        pf.wait_closed(ns, 1, "client", |f| port_of(f, "remote_port") == 7777);
        pf.wait_closed(ns, 1, "server", |f| port_of(f, "local_port") == 7777);
        runs.push((ns, up, down, cl, sv, cup.read(), cdown.read()));
    }
    let recs = pf.stop();
    let flows = final_flows(&recs);
    for (ns, up, down, cl, sv, wup, wdown) in &runs {
        let s = one_flow(&flows, ns, "server", |f| {
            f["proto"] == "tcp" && port_of(f, "local_port") == 7777
        });
        let c = one_flow(&flows, ns, "client", |f| {
            f["proto"] == "tcp" && port_of(f, "remote_port") == 7777
        });
        assert_eq!(s["local_ip"], "127.0.0.1");
        assert_eq!(c["remote_ip"], "127.0.0.1");
        assert_eq!(s["process"]["pid"].as_u64(), sv["pid"].as_u64(), "{s}");
        assert_eq!(c["process"]["pid"].as_u64(), cl["pid"].as_u64(), "{c}");
        assert_eq!(
            (u(s, "rx_payload"), u(s, "tx_payload")),
            (*up, *down),
            "{s}"
        );
        assert_eq!(
            (u(c, "tx_payload"), u(c, "rx_payload")),
            (*up, *down),
            "{c}"
        );
        assert_eq!(
            (u(c, "tx_packets"), u(c, "tx_bytes")),
            *wup,
            "client tx: {c}"
        );
        assert_eq!(
            (u(s, "rx_packets"), u(s, "rx_bytes")),
            *wup,
            "server rx: {s}"
        );
        assert_eq!(
            (u(s, "tx_packets"), u(s, "tx_bytes")),
            *wdown,
            "server tx: {s}"
        );
        assert_eq!(
            (u(c, "rx_packets"), u(c, "rx_bytes")),
            *wdown,
            "client rx: {c}"
        );
    }
    assert_ne!(runs[0].4["pid"], runs[1].4["pid"]);
}

/// Ids of the BPF programs and links whose descriptors process `pid` holds.
fn bpf_ids_of(pid: u32) -> Vec<(String, u64)> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            for key in ["prog_id", "link_id"] {
                if let Some(v) = line.strip_prefix(&format!("{key}:")) {
                    ids.push((key.to_string(), v.trim().parse().unwrap()));
                }
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Which of `ids` still exist in the kernel, per bpftool.
fn still_loaded(ids: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut live = Vec::new();
    for (what, key) in [("prog", "prog_id"), ("link", "link_id")] {
        let out = sh(&["bpftool", "-j", what, "show"]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
        for item in v.as_array().unwrap() {
            let id = item["id"].as_u64().unwrap();
            if ids.contains(&(key.to_string(), id)) {
                live.push((key.to_string(), id));
            }
        }
    }
    live
}

#[test]
fn kill_9_leaves_no_program_or_link_and_traffic_flows() {
    let p = Pair::new("kill", 7);
    let pf = Procflow::start(&[]);
    let pid = pf.pid();
    let ids = bpf_ids_of(pid);
    assert!(
        ids.iter().filter(|(k, _)| k == "link_id").count() >= 10,
        "procflow holds too few links: {ids:?}"
    );
    assert_eq!(
        still_loaded(&ids).len(),
        ids.len(),
        "bpftool does not list procflow's objects"
    );
    pf.kill9();
    assert!(
        wait_for(5, || still_loaded(&ids).is_empty()),
        "left after kill -9: {:?}",
        still_loaded(&ids)
    );
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            "5000",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "100000",
        ],
    );
    assert_eq!((u(&cl, "sent"), u(&cl, "received")), (100_000, 5_000));
    finish(server);
}

#[test]
fn ten_thousand_short_connections_all_closed_none_lost_contexts_freed() {
    let p = Pair::new("many", 8);
    let pf = Procflow::start(&[]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "10000",
            "--download",
            "10",
        ],
    );
    let cl = client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "100",
            "--count",
            "10000",
        ],
    );
    assert_eq!(u(&cl, "connections"), 10_000);
    finish(server);
    pf.wait_closed(&p.a, 10_000, "client", |f| {
        port_of(f, "remote_port") == port
    });
    pf.wait_closed(&p.b, 10_000, "server", |f| port_of(f, "local_port") == port);
    let recs = pf.stop();
    let st = stats(&recs);
    assert_eq!(st["events_lost"], 0, "{st}");
    let flows = final_flows(&recs);
    let clients = flows_in(&flows, &p.a, |f| {
        f["proto"] == "tcp" && port_of(f, "remote_port") == port
    });
    let servers = flows_in(&flows, &p.b, |f| {
        f["proto"] == "tcp" && port_of(f, "local_port") == port
    });
    assert_eq!(clients.len(), 10_000);
    assert_eq!(servers.len(), 10_000);
    for f in clients.iter().chain(servers.iter()) {
        assert_eq!(f["state"], "closed", "{f}");
    }
    assert!(clients
        .iter()
        .all(|f| u(f, "tx_payload") == 100 && u(f, "rx_payload") == 10));
    let (start, stop) = (
        u(&st, "socket_contexts_at_start"),
        u(&st, "socket_contexts_at_stop"),
    );
    assert!(
        stop <= start + 16,
        "socket contexts grew from {start} to {stop}: {st}"
    );
}

#[test]
fn not_root_is_a_one_line_error_and_a_nonzero_exit() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PROCFLOW,
            "run",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("must run as root"), "{err}");
}

#[test]
fn interval_writes_cumulative_records_of_open_flows() {
    let p = Pair::new("interval", 9);
    let pf = Procflow::start(&["--interval", "0.5"]);
    let (server, port) = serve(&p.b, &["tcp-serve", "--listen", &format!("{}:0", p.b4)]);
    let cl =
        p.a.command(TESTGEN)
            .args([
                "tcp-slow",
                "--connect",
                &format!("{}:{port}", p.b4),
                "--upload",
                "3000000",
                "--secs",
                "2.5",
            ])
            .output()
            .unwrap();
    assert!(cl.status.success());
    finish(server);
    pf.wait_closed(&p.a, 1, "client", |f| port_of(f, "remote_port") == port);
    let recs = pf.stop();
    let ino = p.a.inode();
    let mine: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["type"] == "flow"
                && r["netns"].as_u64() == Some(ino)
                && port_of(r, "remote_port") == port
        })
        .collect();
    let open: Vec<u64> = mine
        .iter()
        .filter(|r| r["state"] == "open")
        .map(|r| u(r, "tx_payload"))
        .collect();
    assert!(open.len() >= 4, "expected periodic records, got {open:?}");
    assert!(
        open.windows(2).all(|w| w[0] <= w[1]),
        "cumulative counters went back: {open:?}"
    );
    assert!(
        open.iter().any(|&t| t > 0 && t < 3_000_000),
        "no mid-transfer reading: {open:?}"
    );
    assert_eq!(u(mine.last().unwrap(), "tx_payload"), 3_000_000);
    assert_eq!(mine.last().unwrap()["state"], "closed");
}

/// IPv6 datagrams with an extension header (destination options, set with
/// IPV6_DSTOPTS) between the IPv6 and the UDP header: the flow has its real
/// protocol and ports, the payload excludes every header, and the wire bytes
/// equal nftables'.
#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    let p = Pair::new("ext6", 10);
    let pf = Procflow::start(&[]);
    let b6 = p.b6.to_string();
    let (r, port) = serve(
        &p.b,
        &["udp-recv", "--bind", &format!("[{b6}]:0"), "--count", "7"],
    );
    let n = nft_counter(&p.b, "input", "ext6", &format!("udp dport {port}"));
    // 8 bytes of destination options: next header (filled in by the
    // kernel), length 0 (8 bytes), one PadN option of 4 zero bytes.
    let script = format!(
        "import socket, os, json\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))\n\
         for i in range(7): s.sendto(b'x' * 500, ('{b6}', {port}))\n\
         print(json.dumps({{'pid': os.getpid(), 'port': s.getsockname()[1]}}))\n"
    );
    let cl = run_json(p.a.command("python3").args(["-c", &script]));
    assert_eq!(u(&finish(r), "received"), 3500);
    pf.wait_closed(&p.a, 1, "sender", |f| u(f, "local_port") == u(&cl, "port"));
    pf.wait_closed(&p.b, 1, "receiver", |f| port_of(f, "local_port") == port);
    let (pk, by) = n.read();
    let flows = final_flows(&pf.stop());
    let f = one_flow(&flows, &p.a, "sender", |f| {
        u(f, "local_port") == u(&cl, "port")
    });
    assert_eq!(f["proto"], "udp", "{f}");
    assert_eq!(port_of(f, "remote_port"), port, "{f}");
    assert_eq!(f["process"]["pid"].as_u64(), cl["pid"].as_u64(), "{f}");
    assert_eq!((u(f, "tx_packets"), u(f, "tx_bytes")), (pk, by), "{f}");
    // 40 (IPv6) + 8 (options) + 8 (UDP) + 500 bytes each.
    assert_eq!((pk, by), (7, 7 * 556));
    assert_eq!(u(f, "tx_payload"), 3500, "{f}");
    let g = one_flow(&flows, &p.b, "receiver", |f| {
        f["proto"] == "udp" && port_of(f, "local_port") == port
    });
    assert_eq!((u(g, "rx_payload"), u(g, "rx_bytes")), (3500, by), "{g}");
}

/// A UDP socket's first remote is counted in the socket's own context (its
/// slot), every other remote in the datagram table. One socket sends to r1
/// unconnected, connects to r2 (sends, gets replies), then connects back
/// to r1: both flows are exact against nftables, the periodic record of the
/// slot flow shows what it had sent so far (the reading of live sockets
/// carries the slot's counters), and the closed one what the release
/// record carried.
#[test]
fn a_udp_sockets_first_remote_counts_in_its_context_and_the_others_in_the_table() {
    let p = Pair::new("slot", 11);
    let pf = Procflow::start(&["--interval", "0.3"]);
    let b = p.b4.to_string();
    let (r1, port1) = serve(
        &p.b,
        &["udp-recv", "--bind", &format!("{b}:0"), "--count", "5"],
    );
    let (r2, port2) = serve(
        &p.b,
        &[
            "udp-recv",
            "--bind",
            &format!("{b}:0"),
            "--count",
            "4",
            "--reply",
            "50",
        ],
    );
    let n1 = nft_counter(&p.b, "input", "s1", &format!("udp dport {port1}"));
    let n2 = nft_counter(&p.b, "input", "s2", &format!("udp dport {port2}"));
    let n2r = nft_counter(&p.a, "input", "s2r", &format!("udp sport {port2}"));
    let script = format!(
        "import socket, os, json, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(5)\n\
         r1, r2 = ('{b}', {port1}), ('{b}', {port2})\n\
         for i in range(3): s.sendto(b'x' * 100, r1)\n\
         time.sleep(1.5)\n\
         s.connect(r2)\n\
         for i in range(4): s.send(b'y' * 200)\n\
         for i in range(4): s.recv(2000)\n\
         s.connect(r1)\n\
         for i in range(2): s.send(b'z' * 300)\n\
         print(json.dumps({{'pid': os.getpid(), 'port': s.getsockname()[1]}}))\n"
    );
    let cl = run_json(p.a.command("python3").args(["-c", &script]));
    assert_eq!(u(&finish(r1), "received"), 900);
    assert_eq!(u(&finish(r2), "received"), 800);
    let lport = u(&cl, "port");
    pf.wait_closed(&p.a, 2, "sender", |f| {
        f["proto"] == "udp" && u(f, "local_port") == lport
    });
    let (w1, w2, w2r) = (n1.read(), n2.read(), n2r.read());
    assert_eq!((w1.0, w2.0, w2r.0), (5, 4, 4), "datagrams on the wire");
    let recs = pf.stop();
    let ino = p.a.inode();
    let mine = |port: u16| -> Vec<&Value> {
        recs.iter()
            .filter(|r| {
                r["type"] == "flow"
                    && r["netns"].as_u64() == Some(ino)
                    && r["proto"] == "udp"
                    && u(r, "local_port") == lport
                    && port_of(r, "remote_port") == port
            })
            .collect()
    };
    let first = mine(port1);
    let mid: Vec<u64> = first
        .iter()
        .filter(|r| r["state"] == "open")
        .map(|r| u(r, "tx_payload"))
        .collect();
    assert!(
        mid.contains(&300),
        "a periodic record of the slot flow shows its first 3 datagrams: {mid:?}"
    );
    let flows = final_flows(&recs);
    for (port, wire, payload, rx) in [
        (port1, w1, 900, (0, 0, 0)),
        (port2, w2, 800, (w2r.0, w2r.1, 200)),
    ] {
        let f = one_flow(&flows, &p.a, "sender", |f| {
            f["proto"] == "udp" && u(f, "local_port") == lport && port_of(f, "remote_port") == port
        });
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(f["process"]["pid"].as_u64(), cl["pid"].as_u64(), "{f}");
        assert_eq!(
            (u(f, "tx_packets"), u(f, "tx_bytes"), u(f, "tx_payload")),
            (wire.0, wire.1, payload),
            "{f}"
        );
        assert_eq!(
            (u(f, "rx_packets"), u(f, "rx_bytes"), u(f, "rx_payload")),
            rx,
            "{f}"
        );
    }
}

#[test]
fn records_through_a_small_ring_buffer_that_wraps_many_times_arrive_whole() {
    // 128 KiB of ring buffer and about 800 KB of records (four of 200 bytes
    // per connection, two per socket): the reader goes round it about six
    // times, and
    // records that straddle its end are put together from two pieces. Every
    // record must arrive, and each exactly as written: the counters against
    // nftables, the ports against the generator.
    let p = Pair::new("ring", 192);
    let pf = Procflow::start(&["--ring-buffer", "128K"]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "1000",
            "--download",
            "10",
        ],
    );
    let up = nft_counter(
        &p.b,
        "input",
        "up",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    // In batches of 50 (the generator's start paces them), so that a burst
    // holds about 40 KB of records, within the ring buffer.
    for _ in 0..20 {
        let cl = client(
            &p.a,
            &[
                "tcp-send",
                "--connect",
                &format!("{}:{port}", p.b4),
                "--upload",
                "100",
                "--count",
                "50",
            ],
        );
        assert_eq!(u(&cl, "connections"), 50);
    }
    finish(server);
    pf.wait_closed(&p.a, 1000, "client", |f| port_of(f, "remote_port") == port);
    pf.wait_closed(&p.b, 1000, "server", |f| port_of(f, "local_port") == port);
    let (pk, by) = up.read();
    let recs = pf.stop();
    let st = stats(&recs);
    assert_eq!(st["events_lost"], 0, "{st}");
    assert_eq!(st["ring_buffer_size"], 128 << 10, "{st}");
    let flows = final_flows(&recs);
    let clients = flows_in(&flows, &p.a, |f| {
        f["proto"] == "tcp" && port_of(f, "remote_port") == port
    });
    let servers = flows_in(&flows, &p.b, |f| {
        f["proto"] == "tcp" && port_of(f, "local_port") == port
    });
    assert_eq!((clients.len(), servers.len()), (1000, 1000));
    let mut ports = std::collections::BTreeSet::new();
    for f in &clients {
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!((u(f, "tx_payload"), u(f, "rx_payload")), (100, 10), "{f}");
        assert_eq!(f["process"]["exe"], TESTGEN, "{f}");
        ports.insert(port_of(f, "local_port"));
    }
    assert_eq!(ports.len(), 1000, "a client port twice: a garbled record");
    for f in &servers {
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!((u(f, "tx_payload"), u(f, "rx_payload")), (10, 100), "{f}");
        assert!(ports.contains(&port_of(f, "remote_port")), "{f}");
    }
    let sum = |k: &str| clients.iter().map(|f| u(f, k)).sum::<u64>();
    assert_eq!(
        (sum("tx_packets"), sum("tx_bytes")),
        (pk, by),
        "upload vs nftables"
    );
}
