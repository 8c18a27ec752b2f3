//! Root tests of flows that were open before procflow started, the start-up
//! scan, late sockets and restarts (issue: "Flows that were open before
//! procflow started"). Each runs in network namespaces it creates.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::Value;

fn bs(f: &Value) -> (u64, u64) {
    let b = &f["before_start"];
    assert!(b.is_object(), "no before_start: {f}");
    (u(b, "tx_payload"), u(b, "rx_payload"))
}

fn before_and_after(tag: &str, n: u8, v6: bool) {
    let p = Pair::new(tag, n);
    let (a, b) = (1_234_567u64, 345_678u64);
    let bip = if v6 {
        format!("[{}]", p.b6)
    } else {
        p.b4.to_string()
    };
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-phased-serve",
            "--listen",
            &format!("{bip}:0"),
            "--before",
            &a.to_string(),
            "--after",
            &b.to_string(),
        ],
    );
    let cl = Phased::testgen(
        &p.a,
        &[
            "tcp-phased",
            "--connect",
            &format!("{bip}:{port}"),
            "--before",
            &a.to_string(),
            "--after",
            &b.to_string(),
        ],
    );
    assert!(cl.first.starts_with("phase1"), "{}", cl.first);
    let client_pid = cl.child.id();
    let pf = Procflow::start(&[]);
    let cj = cl.go();
    let sj = finish(server);
    pf.wait_closed(&p.a, 1, "client", |f| u(f, "remote_port") == port as u64);
    pf.wait_closed(&p.b, 1, "server", |f| u(f, "local_port") == port as u64);
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let c = one_flow(&flows, &p.a, "client", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == port as u64
    });
    let s = one_flow(&flows, &p.b, "server", |f| {
        f["proto"] == "tcp" && u(f, "local_port") == port as u64
    });
    for (f, pid) in [
        (c, cj["pid"].as_u64().unwrap()),
        (s, sj["pid"].as_u64().unwrap()),
    ] {
        assert_eq!(f["origin"], "startup", "{f}");
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(bs(f), (a, a), "before_start: {f}");
        assert_eq!(
            (u(f, "tx_payload"), u(f, "rx_payload")),
            (b, b),
            "after start: {f}"
        );
        assert_eq!(f["process"]["pid"].as_u64(), Some(pid), "owner: {f}");
        assert_eq!(f["process"]["exe"], TESTGEN);
    }
    let _ = client_pid;
    let st = stats(&recs);
    assert!(u(&st["scan"], "namespaces") >= 3, "{st}");
    assert!(u(&st["scan"], "sockets") >= 3, "{st}");
}

#[test]
fn tcp_flow_open_before_start_counts_before_and_after_exactly_ipv4() {
    before_and_after("pre4", 20, false);
}

#[test]
fn tcp_flow_open_before_start_counts_before_and_after_exactly_ipv6() {
    before_and_after("pre6", 21, true);
}

#[test]
fn udp_socket_used_before_and_after_start_counts_after_exactly() {
    let p = Pair::new("preudp", 22);
    let (server, port) = serve(
        &p.b,
        &["udp-recv", "--bind", &format!("{}:0", p.b4), "--count", "8"],
    );
    let target = format!("{}:{port}", p.b4);
    client(
        &p.a,
        &["udp-send", "--to", &target, "--size", "500", "--count", "3"],
    );
    let pf = Procflow::start(&[]);
    client(
        &p.a,
        &["udp-send", "--to", &target, "--size", "700", "--count", "5"],
    );
    let sv = finish(server);
    pf.wait_closed(&p.b, 1, "receiver", |f| {
        f["proto"] == "udp" && u(f, "local_port") == port as u64
    });
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let got = flows_in(&flows, &p.b, |f| {
        f["proto"] == "udp" && u(f, "local_port") == port as u64
    });
    let rx: u64 = got.iter().map(|f| u(f, "rx_payload")).sum();
    assert_eq!(rx, 5 * 700, "{got:#?}");
    for f in &got {
        assert_eq!(f["process"]["pid"].as_u64(), sv["pid"].as_u64(), "{f}");
        assert!(
            f["before_start"].is_null(),
            "UDP has no lifetime counters: {f}"
        );
    }
}

/// The flows of one connection of `tcp-many`, found by the client's port:
/// the client's in `p.a`, the server's accepted one in `p.b`.
fn both_ends<'a>(
    flows: &'a [Value],
    p: &Pair,
    port: u16,
    client_port: u64,
) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let c = flows_in(flows, &p.a, |f| {
        f["proto"] == "tcp"
            && u(f, "local_port") == client_port
            && u(f, "remote_port") == port as u64
    });
    let s = flows_in(flows, &p.b, |f| {
        f["proto"] == "tcp"
            && u(f, "local_port") == port as u64
            && u(f, "remote_port") == client_port
    });
    (c, s)
}

/// Lifetime payload of a flow: `before_start` (if any) plus what procflow
/// counted after its start.
fn lifetime(f: &Value) -> (u64, u64) {
    let (btx, brx) = if f["before_start"].is_object() {
        bs(f)
    } else {
        (0, 0)
    };
    (u(f, "tx_payload") + btx, u(f, "rx_payload") + brx)
}

/// 200 connections spread over 5 s, procflow started in the middle. From
/// the generator's timestamps of each connection (connected, shutting
/// down, closed) and the times procflow was started and said "watching":
/// every connection not yet shut down when procflow was watching must be
/// reported at both ends, closed, with exact lifetime payload; one closed
/// before procflow was started may be missing; one closed in between (while
/// procflow attached and scanned) may be missing, but if it is reported its
/// bytes are exact too. No flow is reported that the generator did not make.
#[test]
fn two_hundred_connections_racing_the_start_are_exact() {
    for round in 0..3u8 {
        let p = Pair::new(&format!("race{round}"), 23 + round);
        let (server, port) = serve(
            &p.b,
            &[
                "tcp-serve",
                "--listen",
                &format!("{}:0", p.b4),
                "--count",
                "200",
                "--download",
                "777",
                "--parallel",
            ],
        );
        let mut cl = Reaped::new(
            p.a.command(TESTGEN)
                .args([
                    "tcp-many",
                    "--connect",
                    &format!("{}:{port}", p.b4),
                    "--count",
                    "200",
                    "--max-upload",
                    "300000",
                    "--spread-ms",
                    "5000",
                    // A quarter stay open for 3 s more: across the start.
                    "--hold-ms",
                    "3000",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // Start procflow inside the spread, at a different point each round.
        std::thread::sleep(std::time::Duration::from_millis(300 + 200 * round as u64));
        let pf = Procflow::start(&[]);
        let mut text = String::new();
        std::io::Read::read_to_string(cl.stdout.as_mut().unwrap(), &mut text).unwrap();
        assert!(cl.wait().unwrap().success(), "tcp-many failed: {text}");
        let sv = finish(server);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary = lines.last().unwrap();
        assert_eq!(u(summary, "connections"), 200, "{summary}");
        let client_pid = u(summary, "pid");
        let truth: Vec<&Value> = lines
            .iter()
            .filter(|t| t.get("local_port").is_some())
            .collect();
        assert_eq!(truth.len(), 200);
        let (spawned, watching) = (pf.spawned_ns, pf.watching_ns);
        // Open when procflow was watching (or opened later): must be there.
        let must: Vec<&Value> = truth
            .iter()
            .copied()
            .filter(|t| u(t, "shutdown_ns") > watching)
            .collect();
        let early = truth.iter().filter(|t| u(t, "closed_ns") < spawned).count();
        // Connected before procflow was started, still open when it watched:
        // found by the start-up scan, or at their first packet after it.
        let straddling = must.iter().filter(|t| u(t, "opened_ns") < spawned).count();
        let between = truth.len() - must.len() - early;
        assert!(
            must.len() >= 100,
            "round {round}: only {} of 200 connections were open after procflow started \
             watching; the test no longer races the start",
            must.len()
        );
        let missing = |recs: &[Value]| -> Vec<u64> {
            let flows = final_flows(recs);
            must.iter()
                .map(|t| u(t, "local_port"))
                .filter(|&lp| {
                    let (c, s) = both_ends(&flows, &p, port, lp);
                    !(c.iter().any(|f| f["state"] == "closed")
                        && s.iter().any(|f| f["state"] == "closed"))
                })
                .collect()
        };
        let ok = wait_for(20, || missing(&pf.records()).is_empty());
        let recs = pf.stop();
        assert!(
            ok,
            "round {round}: connections open while procflow was watching have no closed \
             record at both ends after 20 s (client ports): {:?}",
            missing(&recs)
        );
        let flows = final_flows(&recs);
        let (mut seen_early, mut seen_between) = (0, 0);
        for t in &truth {
            let lp = u(t, "local_port");
            let (c, s) = both_ends(&flows, &p, port, lp);
            assert!(c.len() <= 1 && s.len() <= 1, "round {round}: {c:#?} {s:#?}");
            let is_must = u(t, "shutdown_ns") > watching;
            let when = if is_must {
                "open while procflow watched"
            } else if u(t, "closed_ns") < spawned {
                "closed before procflow started"
            } else {
                "closed while procflow attached"
            };
            if is_must {
                assert_eq!(
                    (c.len(), s.len()),
                    (1, 1),
                    "round {round}: connection {t} ({when}) is missing"
                );
            } else if !c.is_empty() || !s.is_empty() {
                if u(t, "closed_ns") < spawned {
                    seen_early += 1;
                } else {
                    seen_between += 1;
                }
            }
            let want = (u(t, "sent"), u(t, "received"));
            for f in c {
                assert_eq!(f["state"], "closed", "round {round} ({when}): {f}");
                assert_eq!(
                    lifetime(f),
                    want,
                    "round {round} client ({when}): {f} vs {t}"
                );
                assert_eq!(u(&f["process"], "pid"), client_pid, "{f}");
            }
            for f in s {
                assert_eq!(f["state"], "closed", "round {round} ({when}): {f}");
                assert_eq!(
                    lifetime(f),
                    (want.1, want.0),
                    "round {round} server ({when}): {f} vs {t}"
                );
                assert_eq!(f["process"]["pid"], sv["pid"], "{f}");
            }
        }
        // Nothing that the generator did not make.
        let clients = flows_in(&flows, &p.a, |f| {
            f["proto"] == "tcp" && u(f, "remote_port") == port as u64
        });
        for f in &clients {
            assert!(
                truth
                    .iter()
                    .any(|t| u(t, "local_port") == u(f, "local_port")),
                "round {round}: a flow the generator never made: {f}"
            );
        }
        eprintln!(
            "round {round}: procflow watched {} ms after it was started",
            (watching - spawned) / 1_000_000
        );
        eprintln!(
            "round {round}: {} open while watching (all reported; {straddling} of them \
             connected before the start), {between} closed while attaching ({seen_between} \
             reported), {early} closed before the start ({seen_early} reported)",
            must.len()
        );
        assert!(
            straddling > 0,
            "round {round}: no connection straddled procflow's start"
        );
        assert_eq!(stats(&recs)["events_lost"], 0);
    }
}

#[test]
fn restart_during_a_transfer_keeps_lifetime_totals_exact() {
    let p = Pair::new("restart", 26);
    let (server, port) = serve(&p.b, &["tcp-serve", "--listen", &format!("{}:0", p.b4)]);
    let first = Procflow::start(&[]);
    let total = 6_000_000u64;
    let cl =
        p.a.command(TESTGEN)
            .args([
                "tcp-slow",
                "--connect",
                &format!("{}:{port}", p.b4),
                "--upload",
                &total.to_string(),
                "--secs",
                "8",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let recs1 = first.stop();
    let second = Procflow::start(&[]);
    let out = cl.wait_with_output().unwrap();
    assert!(out.status.success());
    let sv = finish(server);
    assert_eq!(u(&sv, "received"), total);
    second.wait_closed(&p.a, 1, "client", |f| u(f, "remote_port") == port as u64);
    let recs2 = second.stop();
    let f1 = final_flows(&recs1);
    let f2 = final_flows(&recs2);
    let pick = |flows: &[Value]| -> Value {
        one_flow(flows, &p.a, "client", |f| {
            f["proto"] == "tcp" && u(f, "remote_port") == port as u64
        })
        .clone()
    };
    let (r1, r2) = (pick(&f1), pick(&f2));
    assert_eq!(r1["state"], "open", "run 1 stopped mid-transfer: {r1}");
    let part1 = u(&r1, "tx_payload");
    assert!(part1 > 0 && part1 < total, "{r1}");
    assert_eq!(r2["state"], "closed");
    let (before, _) = bs(&r2);
    assert!(
        before >= part1,
        "run 2 before_start {before} < run 1 total {part1}"
    );
    assert_eq!(
        before + u(&r2, "tx_payload"),
        total,
        "lifetime total across restart: {r2}"
    );
}

#[test]
fn listener_from_before_start_owns_connections_accepted_after() {
    let p = Pair::new("prelisten", 27);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            "4321",
        ],
    );
    let pf = Procflow::start(&[]);
    client(
        &p.a,
        &[
            "tcp-send",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "54321",
        ],
    );
    let sv = finish(server);
    pf.wait_closed(&p.b, 1, "accepted", |f| u(f, "local_port") == port as u64);
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let s = one_flow(&flows, &p.b, "accepted", |f| {
        f["proto"] == "tcp" && u(f, "local_port") == port as u64
    });
    assert_eq!(s["direction"], "in");
    assert_eq!(s["process"]["pid"].as_u64(), sv["pid"].as_u64(), "{s}");
    assert_eq!((u(s, "tx_payload"), u(s, "rx_payload")), (4321, 54321));
}

#[test]
fn socket_made_by_parent_and_used_by_forked_child_belongs_to_the_child() {
    let p = Pair::new("handoff", 28);
    let (server, port) = serve(&p.b, &["tcp-serve", "--listen", &format!("{}:0", p.b4)]);
    let h = Phased::testgen(
        &p.a,
        &[
            "handoff",
            "--connect",
            &format!("{}:{port}", p.b4),
            "--upload",
            "99999",
        ],
    );
    assert!(h.first.starts_with("connected"), "{}", h.first);
    let parent = h.child.id();
    let pf = Procflow::start(&[]);
    let out = h.go();
    finish(server);
    pf.wait_closed(&p.a, 1, "handed-off", |f| {
        u(f, "remote_port") == port as u64
    });
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "handed-off", |f| {
        f["proto"] == "tcp" && u(f, "remote_port") == port as u64
    });
    assert_eq!(
        f["process"]["pid"].as_u64(),
        out["child_pid"].as_u64(),
        "owner is the child, not the parent {parent}: {f}"
    );
    assert_eq!(u(f, "tx_payload"), 99_999);
}
