//! Root test: a lost RELEASE record never leaves a datagram flow open for
//! ever. procflow is stopped (SIGSTOP) while a flood of short-lived UDP
//! sockets fills its ring buffer, so the RELEASE records of those sockets,
//! and of a socket that had carried known traffic, are lost; the periodic
//! reading of live sockets ends every such flow with a closed record whose
//! counters are exact, and deletes the kernel entries.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// Sends 3 datagrams of 100 bytes from one socket, prints its pid, closes
/// the socket when told (a line on standard input) and exits.
const VICTIM: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"v" * 100, (sys.argv[1], 9))
print(os.getpid(), flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
sys.stdin.readline()
"#;

/// N sockets, each sends one datagram and closes.
const FLOOD: &str = r#"
import socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"f", (sys.argv[1], 9))
    s.close()
"#;

fn signal(pid: u32, sig: &str) {
    sh(&["kill", sig, &pid.to_string()]);
}

#[test]
fn flows_whose_release_record_was_lost_are_swept_with_exact_counters() {
    let p = Pair::new("sweep", 44);
    let dir = tempfile::tempdir().unwrap();
    let (victim_py, flood_py) = (dir.path().join("victim.py"), dir.path().join("flood.py"));
    std::fs::write(&victim_py, VICTIM).unwrap();
    std::fs::write(&flood_py, FLOOD).unwrap();
    let pf = Procflow::start(&["--interval", "1"]);
    let target = p.b4.to_string();

    let mut victim =
        p.a.command(PYTHON)
            .arg(&victim_py)
            .arg(&target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = BufReader::new(victim.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: u64 = line.trim().parse().unwrap();
    let victim_flow = |recs: &[Value]| -> Option<Value> {
        final_flows(recs)
            .into_iter()
            .find(|f| f["proto"] == "udp" && f["process"]["pid"].as_u64() == Some(pid))
    };
    assert!(
        wait_for(10, || victim_flow(&read_log(&pf.log)).is_some()),
        "the victim's flow was not recorded within 10 s"
    );

    // Stop procflow's reading; fill its 4 MiB ring buffer (two records of
    // 192 bytes per socket); then close the victim's socket: its RELEASE
    // record cannot be written.
    signal(pf.pid(), "-STOP");
    let flood =
        p.a.command(PYTHON)
            .arg(&flood_py)
            .args([&target, "120000"])
            .status()
            .unwrap();
    let mut stdin = victim.stdin.take().unwrap();
    writeln!(stdin).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    signal(pf.pid(), "-CONT");
    assert!(flood.success());

    let closed = |recs: &[Value]| victim_flow(recs).is_some_and(|f| f["state"] == "closed");
    assert!(
        wait_for(20, || closed(&read_log(&pf.log))),
        "the victim's flow was not ended within 20 s of its RELEASE record being lost"
    );
    writeln!(stdin).unwrap();
    assert!(victim.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500)); // one more reading: --interval 1
    let recs = pf.stop();
    let f = victim_flow(&recs).unwrap();
    assert_eq!(f["state"], "closed", "{f}");
    assert_eq!((u(&f, "tx_packets"), u(&f, "tx_payload")), (3, 300), "{f}");
    let st = stats(&recs);
    assert!(
        st["events_lost"].as_u64().unwrap() > 0,
        "the flood lost no record: {st}"
    );
    assert!(st["swept"]["flows"].as_u64().unwrap() >= 1, "{st}");
    // No flood flow was left open: every one that was announced is closed.
    let finals = final_flows(&recs);
    let open = flows_in(&finals, &p.a, |f| {
        f["proto"] == "udp" && f["state"] != "closed"
    });
    assert!(
        open.is_empty(),
        "{} UDP flows left open, e.g. {}",
        open.len(),
        open[0]
    );
    // And the kernel's table holds none of the 120,000 sockets' entries.
    let left = st["datagram_entries"].as_u64().unwrap();
    assert!(
        left < 1000,
        "{left} datagram entries left in the kernel: {st}"
    );
}
