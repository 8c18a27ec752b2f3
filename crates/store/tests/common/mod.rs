//! Synthetic flow records for the store's tests.
#![allow(dead_code)]

use std::net::IpAddr;

use procflow_core::flow::{Counters, Direction, FlowRecord, FlowState, Origin, Proto};
use procflow_core::timefmt::rfc3339;
use procflow_core::ProcessIdentity;

/// A fixed "now": 2026-11-18T11:06:40Z.
pub const NOW_S: i64 = 1_795_000_000;

/// Why a synthetic flow's executable is unknown (those without `exe`).
pub const UNKNOWN_WHY: &str = "exited before first seen";

pub fn ns(s: i64) -> u64 {
    (s as u64) * 1_000_000_000
}

/// One synthetic flow and what it transferred in total.
#[derive(Debug, Clone)]
pub struct Synth {
    pub flow_id: String,
    pub exe: Option<&'static str>,
    pub pid: u32,
    pub comm: &'static str,
    pub uid: u32,
    pub user: Option<&'static str>,
    pub cgroup: Option<&'static str>,
    /// No owner at all.
    pub unowned: bool,
    pub proto: Proto,
    pub direction: Direction,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub name: Option<&'static str>,
    pub tx: u64,
    pub rx: u64,
    /// Start, seconds since the epoch.
    pub start_s: i64,
}

impl Synth {
    pub fn identity(&self) -> Option<ProcessIdentity> {
        (!self.unowned).then(|| ProcessIdentity {
            pid: self.pid,
            ppid: 1,
            uid: self.uid,
            user: self.user.map(String::from),
            comm: self.comm.to_string(),
            exe: self.exe.map(String::from),
            cmdline: self.exe.map(|e| format!("{e} --flag")),
            cgroup: self.cgroup.map(String::from),
            exe_unknown: self.exe.is_none().then(|| UNKNOWN_WHY.to_string()),
        })
    }

    /// The port that names the service.
    pub fn service_port(&self) -> u16 {
        match self.direction {
            Direction::In => self.local.1,
            _ => self.remote.1,
        }
    }

    /// A record of this flow with cumulative counters `(tx, rx)`.
    pub fn record(&self, state: FlowState, tx: u64, rx: u64, end_s: Option<i64>) -> FlowRecord {
        FlowRecord {
            kind: "flow",
            flow_id: self.flow_id.clone(),
            state,
            proto: self.proto,
            family: if self.remote.0.is_ipv4() { 4 } else { 6 },
            direction: self.direction,
            local_ip: self.local.0,
            local_port: self.local.1,
            remote_ip: self.remote.0,
            remote_port: self.remote.1,
            remote_name: None,
            process: self.identity(),
            netns: 4026531840,
            start: rfc3339(ns(self.start_s)),
            end: end_s.map(|e| rfc3339(ns(e))),
            counters: Counters {
                tx_bytes: tx,
                rx_bytes: rx,
                tx_packets: tx / 100,
                rx_packets: rx / 100,
                tx_payload: tx * 9 / 10,
                rx_payload: rx * 9 / 10,
            },
            before_start: None,
            origin: match self.direction {
                Direction::In => Origin::Accept,
                _ => Origin::Connect,
            },
            link: None,
            verdict: None,
            rule: None,
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A varied set of flows: several executables, processes, users, cgroups,
/// remotes (with and without names), ports, protocols and directions.
pub fn synthetic_flows() -> Vec<Synth> {
    let exes: [(Option<&'static str>, &'static str); 4] = [
        (Some("/usr/bin/curl"), "curl"),
        (Some("/usr/lib/firefox/firefox"), "firefox"),
        (Some("/usr/sbin/sshd"), "sshd"),
        (None, "kworker"),
    ];
    let users: [(u32, Option<&'static str>); 3] =
        [(0, Some("root")), (1000, Some("alice")), (1234, None)];
    let cgroups = [Some("/user.slice"), Some("/system.slice/ssh.service"), None];
    let remotes: [(&str, Option<&'static str>); 5] = [
        ("93.184.216.34", Some("www.example.com")),
        ("192.0.2.10", None),
        ("2001:db8::5", Some("v6.example.net")),
        ("198.51.100.7", Some("cdn.example.com")),
        ("10.0.0.53", None),
    ];
    let ports = [443u16, 53, 22, 8080, 40000];
    let mut out = Vec::new();
    for i in 0..60u32 {
        let (exe, comm) = exes[(i % 4) as usize];
        let (uid, user) = users[(i % 3) as usize];
        let (rip, name) = remotes[(i % 5) as usize];
        let port = ports[((i / 2) % 5) as usize];
        let direction = match i % 7 {
            0 | 3 => Direction::In,
            5 => Direction::Unknown,
            _ => Direction::Out,
        };
        let proto = if port == 53 { Proto::Udp } else { Proto::Tcp };
        let remote_ip = ip(rip);
        let local_ip = if remote_ip.is_ipv4() {
            ip("10.9.9.9")
        } else {
            ip("2001:db8::99")
        };
        let (local, remote) = match direction {
            Direction::In => ((local_ip, port), (remote_ip, 50_000 + i as u16)),
            _ => ((local_ip, 40_000 + i as u16), (remote_ip, port)),
        };
        out.push(Synth {
            flow_id: format!("{}", 1000 + i),
            exe,
            pid: 100 + (i % 6),
            comm,
            uid,
            user,
            cgroup: cgroups[(i % 3) as usize],
            unowned: i == 13,
            proto,
            direction,
            local,
            remote,
            name,
            tx: 1_000 + u64::from(i) * 7_919,
            rx: 50_000 + u64::from(i) * 104_729,
            start_s: NOW_S - 20 * 3_600 + i64::from(i) * 977,
        });
    }
    out
}

/// Writes each flow as an open record without traffic (then its name, as
/// DNS would give it), a half-way record 25 s later and a closing record
/// 60 s after its start.
pub fn feed(store: &mut procflow_store::Store, flows: &[Synth]) {
    for f in flows {
        store
            .write(&[f.record(FlowState::Open, 0, 0, None)], ns(f.start_s))
            .unwrap();
        if let Some(n) = f.name {
            assert!(store.set_remote_name(&f.flow_id, n).unwrap());
        }
        store
            .write(
                &[f.record(FlowState::Open, f.tx / 2, f.rx / 2, None)],
                ns(f.start_s + 25),
            )
            .unwrap();
        store
            .write(
                &[f.record(FlowState::Closed, f.tx, f.rx, Some(f.start_s + 60))],
                ns(f.start_s + 61),
            )
            .unwrap();
    }
}
