//! Rendering snapshots (TestBackend + insta) and the state machine's
//! behaviour, on a hand-made snapshot with known numbers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use procflow_core::live::{
    Blocked, LiveFlow, LiveOwner, LivePort, LiveProcess, LiveRemote, Rates, RulesInForce, Snapshot,
    Totals, Traffic, FOUND_AT_START, KERNEL_SOCKET,
};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use crate::view::{proc_id, View};
use crate::App;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// 2026-11-18 11:06:40 UTC.
const NOW: u64 = 1_795_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

const FIREFOX: &str = "/usr/lib/firefox/firefox";
const CRASH: &str = "/usr/lib/firefox/crashreporter";
const CURL: &str = "/usr/bin/curl";
const TELNET: &str = "/usr/bin/telnet";
const AGENT: &str =
    "/opt/vendor/very-long-product-name/lib/x86_64-linux-gnu/helpers/sync-agent-daemon";

fn owner(pid: u32, ppid: u32, user: &str, exe: Option<&str>, comm: &str) -> LiveOwner {
    LiveOwner {
        pid,
        ppid,
        uid: match user {
            "root" => 0,
            "alice" => 1000,
            _ => 1001,
        },
        user: Some(user.into()),
        comm: comm.into(),
        exe: exe.map(Into::into),
        cmdline: None,
        cgroup: None,
        unknown: None,
    }
}

fn traffic(tx: u64, rx: u64) -> Traffic {
    Traffic {
        tx_bytes: tx,
        rx_bytes: rx,
        tx_packets: tx / 1000 + 1,
        rx_packets: rx / 1000 + 1,
        tx_payload: tx / 2,
        rx_payload: rx / 2,
    }
}

fn rate(tx: f64, rx: f64) -> Rates {
    Rates {
        tx_1s: tx,
        rx_1s: rx,
        tx_10s: tx / 2.0,
        rx_10s: rx / 2.0,
    }
}

fn process(o: LiveOwner, t: Traffic, r: Rates, open: usize, blocked: u64) -> LiveProcess {
    LiveProcess {
        owner: o,
        traffic: t,
        rate: r,
        open_flows: open,
        flows: open as u64 + 2,
        blocked,
    }
}

#[allow(clippy::too_many_arguments)]
fn flow(
    id: &str,
    o: &LiveOwner,
    proto: &str,
    dir: &str,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
    name: Option<&str>,
    t: Traffic,
    r: Rates,
) -> LiveFlow {
    LiveFlow {
        flow_id: id.into(),
        state: "open".into(),
        proto: proto.to_string().into(),
        family: if remote.is_ipv4() { 4 } else { 6 },
        direction: dir.to_string().into(),
        local_ip: if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20))
        } else {
            IpAddr::V6("2001:db8::20".parse().unwrap())
        },
        local_port,
        remote_ip: remote,
        remote_port,
        remote_name: name.map(Into::into),
        netns: 4026531840,
        owner: o.clone().into(),
        start: "2026-11-18T10:00:00Z".into(),
        end: None,
        traffic: t,
        rate: r,
        verdict: Some("allow".into()),
        rule: None,
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn blocked(
    time: &str,
    rule: &str,
    hook: &str,
    o: &LiveOwner,
    remote: IpAddr,
    port: u16,
) -> Blocked {
    Blocked {
        time: time.into(),
        rule: Some(rule.into()),
        hook: hook.into(),
        proto: "tcp".into(),
        direction: "out".into(),
        local_ip: v4(0, 0, 0, 0),
        local_port: 0,
        remote_ip: remote,
        remote_port: port,
        pid: o.pid,
        comm: o.comm.clone(),
        exe: o.exe.clone(),
        user: o.user.clone(),
    }
}

struct Owners {
    firefox: LiveOwner,
    content: LiveOwner,
    crash: LiveOwner,
    curl: LiveOwner,
    kernel: LiveOwner,
    agent: LiveOwner,
    sshd: LiveOwner,
    telnet: LiveOwner,
}

fn owners() -> Owners {
    let mut sshd = owner(4000, 1, "root", None, "sshd");
    sshd.unknown = Some(FOUND_AT_START.into());
    Owners {
        firefox: owner(1200, 1, "alice", Some(FIREFOX), "firefox"),
        content: owner(1300, 1200, "alice", Some(FIREFOX), "Web Content"),
        crash: owner(1301, 1200, "alice", Some(CRASH), "crashreporter"),
        curl: owner(2200, 2100, "bob", Some(CURL), "curl"),
        kernel: LiveOwner {
            comm: "[kernel]".into(),
            unknown: Some(KERNEL_SOCKET.into()),
            ..Default::default()
        },
        agent: owner(3100, 1, "root", Some(AGENT), "sync-agent-daem"),
        sshd,
        telnet: owner(4100, 2100, "bob", Some(TELNET), "telnet"),
    }
}

/// The fixture: a browser with two children, curl, a kernel socket, an
/// agent with a long path, an sshd found at start, a blocked telnet.
fn snapshot() -> Snapshot {
    let o = owners();
    let processes = vec![
        process(
            o.firefox.clone(),
            traffic(5 * MIB, 120 * MIB),
            rate(2048.0, 512_000.0),
            3,
            0,
        ),
        process(
            o.content.clone(),
            traffic(MIB, 30 * MIB),
            rate(1024.0, 100_000.0),
            1,
            0,
        ),
        process(
            o.curl.clone(),
            traffic(800, 3 * MIB),
            rate(0.0, 1_048_576.0),
            1,
            0,
        ),
        process(
            o.agent.clone(),
            traffic(700 * KIB, 90 * KIB),
            rate(300.0, 20.0),
            1,
            0,
        ),
        process(
            o.sshd.clone(),
            traffic(40 * KIB, 12 * KIB),
            rate(150.0, 90.0),
            1,
            0,
        ),
        process(o.kernel.clone(), traffic(200, 300), rate(0.0, 0.0), 1, 0),
        process(o.crash.clone(), traffic(100, 50), rate(0.0, 0.0), 0, 2),
        process(o.telnet.clone(), traffic(0, 0), rate(0.0, 0.0), 0, 3),
    ];
    let moz = v4(34, 107, 221, 82);
    let goog = v4(142, 250, 74, 110);
    let cdn = IpAddr::V6(
        "2600:9000:2147:ba00:1b:5ad:7a40:93a1"
            .parse::<Ipv6Addr>()
            .unwrap(),
    );
    let example = v4(93, 184, 215, 14);
    let ntp = v4(162, 159, 200, 1);
    let admin = v4(192, 168, 1, 7);
    let agent_srv = IpAddr::V6("2001:db8:100::443".parse().unwrap());
    let flows = vec![
        flow(
            "f1",
            &o.firefox,
            "tcp",
            "out",
            51000,
            moz,
            443,
            Some("push.services.mozilla.com"),
            traffic(3 * MIB, 80 * MIB),
            rate(1024.0, 400_000.0),
        ),
        flow(
            "f2",
            &o.firefox,
            "tcp",
            "out",
            51002,
            goog,
            443,
            Some("www.google.com"),
            traffic(MIB, 30 * MIB),
            rate(1024.0, 112_000.0),
        ),
        flow(
            "f3",
            &o.firefox,
            "udp",
            "out",
            51003,
            cdn,
            443,
            None,
            traffic(MIB, 10 * MIB),
            rate(0.0, 0.0),
        ),
        flow(
            "f4",
            &o.content,
            "tcp",
            "out",
            51004,
            cdn,
            443,
            Some("d1234abcd.cloudfront.net"),
            traffic(MIB, 30 * MIB),
            rate(1024.0, 100_000.0),
        ),
        flow(
            "f5",
            &o.curl,
            "tcp",
            "out",
            52000,
            example,
            80,
            Some("example.com"),
            traffic(800, 3 * MIB),
            rate(0.0, 1_048_576.0),
        ),
        flow(
            "f6",
            &o.agent,
            "tcp",
            "out",
            53000,
            agent_srv,
            8443,
            None,
            traffic(700 * KIB, 90 * KIB),
            rate(300.0, 20.0),
        ),
        flow(
            "f7",
            &o.sshd,
            "tcp",
            "in",
            22,
            admin,
            50122,
            None,
            traffic(40 * KIB, 12 * KIB),
            rate(150.0, 90.0),
        ),
        flow(
            "f8",
            &o.kernel,
            "udp",
            "out",
            123,
            ntp,
            123,
            Some("time.cloudflare.com"),
            traffic(200, 300),
            rate(0.0, 0.0),
        ),
    ];
    let mut flows = flows;
    flows[0].rule = Some("browsers-out".into());
    let remote = |ip: IpAddr, name: Option<&str>, t: Traffic, r: Rates, open: usize| LiveRemote {
        ip,
        name: name.map(Into::into),
        traffic: t,
        rate: r,
        open_flows: open,
        flows: open as u64 + 1,
    };
    let remotes = vec![
        remote(
            moz,
            Some("push.services.mozilla.com"),
            traffic(3 * MIB, 80 * MIB),
            rate(1024.0, 400_000.0),
            1,
        ),
        remote(
            cdn,
            Some("d1234abcd.cloudfront.net"),
            traffic(2 * MIB, 40 * MIB),
            rate(1024.0, 100_000.0),
            2,
        ),
        remote(
            goog,
            Some("www.google.com"),
            traffic(MIB, 30 * MIB),
            rate(1024.0, 112_000.0),
            1,
        ),
        remote(
            example,
            Some("example.com"),
            traffic(800, 3 * MIB),
            rate(0.0, 1_048_576.0),
            1,
        ),
        remote(
            agent_srv,
            None,
            traffic(700 * KIB, 90 * KIB),
            rate(300.0, 20.0),
            1,
        ),
        remote(
            admin,
            None,
            traffic(40 * KIB, 12 * KIB),
            rate(150.0, 90.0),
            1,
        ),
        remote(
            ntp,
            Some("time.cloudflare.com"),
            traffic(200, 300),
            rate(0.0, 0.0),
            1,
        ),
    ];
    let port = |proto: &str, port: u16, t: Traffic, r: Rates, open: usize| LivePort {
        proto: proto.into(),
        port,
        traffic: t,
        rate: r,
        open_flows: open,
        flows: open as u64 * 3,
    };
    let ports = vec![
        port(
            "tcp",
            443,
            traffic(5 * MIB, 140 * MIB),
            rate(3072.0, 612_000.0),
            3,
        ),
        port("udp", 443, traffic(MIB, 10 * MIB), rate(0.0, 0.0), 1),
        port("tcp", 80, traffic(800, 3 * MIB), rate(0.0, 1_048_576.0), 1),
        port(
            "tcp",
            8443,
            traffic(700 * KIB, 90 * KIB),
            rate(300.0, 20.0),
            1,
        ),
        port("tcp", 22, traffic(40 * KIB, 12 * KIB), rate(150.0, 90.0), 1),
        port("udp", 123, traffic(200, 300), rate(0.0, 0.0), 1),
        port("udp", 53, traffic(4 * KIB, 9 * KIB), rate(0.0, 0.0), 0),
    ];
    let blocked = vec![
        blocked(
            "2026-11-18T11:01:02.000100Z",
            "no-telnet",
            "connect",
            &o.telnet,
            v4(10, 0, 0, 5),
            23,
        ),
        blocked(
            "2026-11-18T11:01:03.500000Z",
            "no-telnet",
            "connect",
            &o.telnet,
            v4(10, 0, 0, 5),
            23,
        ),
        blocked(
            "2026-11-18T11:04:10.000000Z",
            "no-crash-reports",
            "connect",
            &o.crash,
            v4(35, 244, 181, 201),
            443,
        ),
        blocked(
            "2026-11-18T11:05:00.250000Z",
            "no-crash-reports",
            "sendmsg",
            &o.crash,
            v4(35, 244, 181, 201),
            443,
        ),
        blocked(
            "2026-11-18T11:06:30.000000Z",
            "no-telnet",
            "connect",
            &o.telnet,
            v4(10, 0, 0, 6),
            23,
        ),
    ];
    let total_tx: u64 = processes.iter().map(|p| p.traffic.tx_bytes).sum();
    let total_rx: u64 = processes.iter().map(|p| p.traffic.rx_bytes).sum();
    Snapshot {
        seq: 4242,
        time_ns: NOW,
        started_ns: NOW - 3725 * SEC,
        totals: Totals {
            traffic: traffic(total_tx, total_rx),
            rate: Rates {
                tx_1s: 3522.0,
                rx_1s: 1_660_686.0,
                tx_10s: 2900.0,
                rx_10s: 1_500_000.0,
            },
            open_flows: flows.len(),
            flows: 31,
            blocked: 5,
        },
        processes,
        flows,
        remotes,
        ports,
        blocked,
        rules: Some(RulesInForce {
            path: "/etc/procflow/rules.toml".into(),
            generation: 4,
            rules: 7,
            last_outcome: "accepted".into(),
            last_time: "2026-11-18T10:00:00Z".into(),
            last_error: None,
        }),
        stats: serde_json::json!({"type": "stats", "events_lost": 0, "flows_seen": 31}),
    }
}

fn today() -> HashMap<String, (u64, u64)> {
    HashMap::from([
        (FIREFOX.to_string(), (10 * MIB, 400 * MIB)),
        (CRASH.to_string(), (100, 200)),
        (CURL.to_string(), (1000, 5 * MIB)),
    ])
}

fn empty() -> Snapshot {
    Snapshot {
        seq: 0,
        time_ns: NOW,
        started_ns: NOW - 2 * SEC,
        totals: Totals::default(),
        processes: vec![],
        flows: vec![],
        remotes: vec![],
        ports: vec![],
        blocked: vec![],
        rules: None,
        stats: serde_json::json!({}),
    }
}

const DESCRIBE: &str = "daemon /run/procflow/api.sock";

fn app() -> App {
    let mut a = App::new(DESCRIBE.into());
    a.update(snapshot(), None);
    a
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

fn keys(a: &mut App, s: &str) {
    for c in s.chars() {
        assert!(a.key(ch(c)), "{c} quit");
    }
}

fn draw(a: &mut App, w: u16, h: u16) -> String {
    render(a, w, h).backend().to_string()
}

fn render(a: &mut App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| a.render(f)).unwrap();
    t
}

/// The cells of one column (by title) in a view, in row order.
fn column(a: &App, v: View, title: &str) -> Vec<String> {
    let (cols, rows) = a.rows(v);
    let i = cols.iter().position(|c| c.title == title).unwrap();
    rows.iter().map(|r| r.cells[i].clone()).collect()
}

fn ids(a: &App, v: View) -> Vec<String> {
    a.rows(v).1.into_iter().map(|r| r.id).collect()
}

// ---- rendering snapshots ----

macro_rules! shot {
    ($name:literal, $app:expr, $w:expr, $h:expr) => {
        insta::assert_snapshot!($name, draw(&mut $app, $w, $h));
    };
}

#[test]
fn snap_processes() {
    let mut a = app();
    shot!("processes_80x24", a, 80, 24);
    shot!("processes_200x50", a, 200, 50);
    // With today's totals from the history: the TODAY column.
    a.update(snapshot(), Some(today()));
    shot!("processes_today_200x50", a, 200, 50);
    shot!("processes_today_80x24", a, 80, 24);
}

#[test]
fn snap_processes_cumulative() {
    let mut a = app();
    keys(&mut a, "a");
    shot!("processes_cumulative_80x24", a, 80, 24);
}

#[test]
fn snap_connections() {
    let mut a = app();
    // firefox: names, an address without one, IPv6.
    assert!(a.key(key(KeyCode::Down)));
    assert!(a.key(key(KeyCode::Enter)));
    assert_eq!(a.view(), View::Connections);
    shot!("connections_80x24", a, 80, 24);
    shot!("connections_200x50", a, 200, 50);
}

#[test]
fn snap_remotes() {
    let mut a = app();
    keys(&mut a, "r");
    shot!("remotes_80x24", a, 80, 24);
    shot!("remotes_200x50", a, 200, 50);
}

#[test]
fn snap_ports() {
    let mut a = app();
    keys(&mut a, "p");
    shot!("ports_80x24", a, 80, 24);
    shot!("ports_200x50", a, 200, 50);
}

#[test]
fn snap_blocked() {
    let mut a = app();
    keys(&mut a, "b");
    shot!("blocked_80x24", a, 80, 24);
    shot!("blocked_200x50", a, 200, 50);
}

#[test]
fn snap_help() {
    let mut a = app();
    keys(&mut a, "?");
    shot!("help_80x24", a, 80, 24);
    shot!("help_200x50", a, 200, 50);
}

#[test]
fn snap_filter() {
    let mut a = app();
    keys(&mut a, "/fire");
    shot!("filter_typing_80x24", a, 80, 24);
    assert!(a.key(key(KeyCode::Enter)));
    shot!("filter_kept_200x50", a, 200, 50);
}

#[test]
fn snap_tree() {
    let mut a = app();
    a.update(snapshot(), Some(today()));
    keys(&mut a, "t");
    shot!("tree_80x24", a, 80, 24);
    shot!("tree_200x50", a, 200, 50);
}

#[test]
fn snap_empty_and_waiting() {
    let mut a = App::new("standalone: kernel programs loaded by top (no daemon running)".into());
    shot!("waiting_80x24", a, 80, 24);
    a.update(empty(), None);
    shot!("empty_80x24", a, 80, 24);
    keys(&mut a, "b");
    shot!("empty_blocked_80x24", a, 80, 24);
}

#[test]
fn snap_paused_with_error() {
    let mut a = app();
    keys(&mut a, " ");
    a.set_error(Some(
        "snapshot: connect /run/procflow/api.sock: connection refused".into(),
    ));
    shot!("paused_error_80x24", a, 80, 24);
}

#[test]
fn tiny_and_odd_sizes_do_not_panic() {
    for (setup, snap) in [
        ("", true),
        ("?", true),
        ("b", true),
        ("r", false),
        ("t/x", true),
    ] {
        let mut a = App::new(DESCRIBE.into());
        if snap {
            a.update(snapshot(), Some(today()));
        }
        keys(&mut a, setup);
        for w in 0..=14 {
            for h in 0..=6 {
                render(&mut a, w, h);
            }
        }
        render(&mut a, 10, 3);
        render(&mut a, 300, 2);
        render(&mut a, 2, 300);
    }
    // Resizing the same terminal: drawn from the current size each time.
    let mut a = app();
    let mut t = Terminal::new(TestBackend::new(200, 50)).unwrap();
    t.draw(|f| a.render(f)).unwrap();
    t.backend_mut().resize(80, 24);
    t.resize(ratatui::layout::Rect::new(0, 0, 80, 24)).unwrap();
    t.draw(|f| a.render(f)).unwrap();
    assert_eq!(t.backend().to_string(), draw(&mut app(), 80, 24));
}

// ---- behaviour ----

#[test]
fn processes_are_sorted_by_receive_rate_by_default() {
    let a = app();
    assert_eq!(
        column(&a, View::Processes, "PID"),
        ["2200", "1200", "1300", "4000", "3100", "-", "1301", "4100"]
    );
}

#[test]
fn every_column_of_every_view_sorts() {
    for (v, k) in [
        (View::Processes, ""),
        (View::Connections, "\n"),
        (View::Remotes, "r"),
        (View::Ports, "p"),
        (View::Blocked, "b"),
    ] {
        let mut a = app();
        if k == "\n" {
            a.key(key(KeyCode::Down));
            a.key(key(KeyCode::Enter));
        } else {
            keys(&mut a, k);
        }
        let (cols, _) = a.rows(v);
        let mut seen = Vec::new();
        for _ in 0..cols.len() {
            keys(&mut a, "s");
            let (at, desc) = a.sort_of(v, &cols);
            seen.push(cols[at].id);
            for reversed in [false, true] {
                let (_, rows) = a.rows(v);
                let d = desc != reversed;
                for w in rows.windows(2) {
                    let o = w[0].keys[at].cmp(&w[1].keys[at]);
                    let ok = if d { o.is_ge() } else { o.is_le() };
                    assert!(
                        ok,
                        "{v:?} {:?} desc={d}: {:?} then {:?}",
                        cols[at].id, w[0].cells, w[1].cells
                    );
                }
                keys(&mut a, "i");
            }
        }
        let mut uniq = seen.clone();
        uniq.sort_by_key(|c| format!("{c:?}"));
        uniq.dedup();
        assert_eq!(
            uniq.len(),
            cols.len(),
            "{v:?}: s visits every column: {seen:?}"
        );
    }
}

#[test]
fn sorting_by_named_columns() {
    let mut a = app();
    // Right, Right: SENT/s (largest first), then RECV/s... PID first.
    a.key(key(KeyCode::Left));
    a.key(key(KeyCode::Left));
    a.key(key(KeyCode::Left));
    // PID ascending.
    assert_eq!(
        column(&a, View::Processes, "PID"),
        ["-", "1200", "1300", "1301", "2200", "3100", "4000", "4100"]
    );
    keys(&mut a, "i");
    assert_eq!(column(&a, View::Processes, "PID")[0], "4100");
    // USER: alphabetical, ties in snapshot order.
    keys(&mut a, "s");
    assert_eq!(
        column(&a, View::Processes, "USER"),
        ["-", "alice", "alice", "alice", "bob", "bob", "root", "root"]
    );
    // SENT/s: largest first.
    keys(&mut a, "s");
    assert_eq!(
        column(&a, View::Processes, "SENT/s"),
        [
            "2.0 KiB/s",
            "1.0 KiB/s",
            "300 B/s",
            "150 B/s",
            "0 B/s",
            "0 B/s",
            "0 B/s",
            "0 B/s"
        ]
    );
    // SENT (totals).
    keys(&mut a, "ss");
    assert_eq!(
        column(&a, View::Processes, "SENT"),
        ["5.0 MiB", "1.0 MiB", "700 KiB", "40.0 KiB", "800 B", "200 B", "100 B", "0 B"]
    );
    // BLK, then PROGRAM alphabetical.
    keys(&mut a, "sss");
    assert_eq!(column(&a, View::Processes, "BLK")[..2], ["3", "2"]);
    keys(&mut a, "s");
    let prog = column(&a, View::Processes, "PROGRAM");
    assert_eq!(prog[0], AGENT);
    assert_eq!(prog[6], format!("[{KERNEL_SOCKET}]"));
    assert_eq!(prog[7], format!("sshd ({FOUND_AT_START})"));
    // Blocked attempts: newest first, then oldest first.
    let mut b = app();
    keys(&mut b, "b");
    let times = column(&b, View::Blocked, "TIME");
    assert_eq!(
        times,
        ["11:06:30", "11:05:00", "11:04:10", "11:01:03", "11:01:02"]
    );
    keys(&mut b, "i");
    assert_eq!(column(&b, View::Blocked, "TIME")[0], "11:01:02");
}

#[test]
fn cumulative_toggle_leads_with_totals_and_moves_the_sort() {
    let mut a = app();
    let titles = |a: &App| {
        a.rows(View::Processes)
            .0
            .iter()
            .map(|c| c.title)
            .collect::<Vec<_>>()
    };
    assert_eq!(titles(&a)[2..6], ["SENT/s", "RECV/s", "SENT", "RECV"]);
    keys(&mut a, "a");
    assert_eq!(titles(&a)[2..6], ["SENT", "RECV", "SENT/s", "RECV/s"]);
    let (cols, _) = a.rows(View::Processes);
    let (at, desc) = a.sort_of(View::Processes, &cols);
    assert_eq!((cols[at].title, desc), ("RECV", true));
    assert_eq!(column(&a, View::Processes, "PID")[0], "1200");
    keys(&mut a, "a");
    assert_eq!(column(&a, View::Processes, "PID")[0], "2200");
}

#[test]
fn the_filter_matches_program_comm_user_pid_and_remote() {
    let mut a = app();
    let pids = |a: &App| column(a, View::Processes, "PID");
    keys(&mut a, "/curl");
    assert_eq!(pids(&a), ["2200"]);
    // Typing goes on while editing: q is text, not quit.
    keys(&mut a, "q");
    assert!(pids(&a).is_empty());
    a.key(key(KeyCode::Backspace));
    a.key(key(KeyCode::Enter));
    assert_eq!(pids(&a), ["2200"]);
    // Esc while editing clears.
    keys(&mut a, "/");
    a.key(key(KeyCode::Esc));
    assert_eq!(pids(&a).len(), 8);
    // comm, user, pid, remote name, remote address.
    for (f, want) in [
        ("/web content", vec!["1300"]),
        ("/ROOT", vec!["4000", "3100"]),
        ("/4100", vec!["4100"]),
        ("/mozilla", vec!["1200"]),
        ("/192.168.1.7", vec!["4000"]),
        ("/cloudfront", vec!["1300"]),
    ] {
        keys(&mut a, f);
        a.key(key(KeyCode::Enter));
        assert_eq!(pids(&a), want, "{f}");
        a.key(key(KeyCode::Esc));
        assert_eq!(pids(&a).len(), 8);
    }
    // The filter applies to the other views too.
    keys(&mut a, "/google");
    a.key(key(KeyCode::Enter));
    assert_eq!(column(&a, View::Remotes, "IP"), ["142.250.74.110"]);
}

#[test]
fn the_tree_adds_children_into_their_parent_exactly() {
    let mut a = app();
    a.update(snapshot(), Some(today()));
    keys(&mut a, "t");
    let (cols, rows) = a.rows(View::Processes);
    let at = |t: &str| cols.iter().position(|c| c.title == t).unwrap();
    let ff = rows
        .iter()
        .find(|r| r.id == proc_id(1200, FIREFOX))
        .unwrap();
    assert_eq!(ff.prefix, "+2 ");
    assert_eq!(
        ff.members,
        [
            (1200, FIREFOX.to_string()),
            (1300, FIREFOX.to_string()),
            (1301, CRASH.to_string())
        ]
    );
    // 5 MiB + 1 MiB + 100 B sent; 120 MiB + 30 MiB + 50 B received.
    use crate::view::Key;
    assert_eq!(ff.keys[at("SENT")], Key::N((6 * MIB + 100) as f64));
    assert_eq!(ff.keys[at("RECV")], Key::N((150 * MIB + 50) as f64));
    assert_eq!(ff.keys[at("SENT/s")], Key::N(3072.0));
    assert_eq!(ff.keys[at("RECV/s")], Key::N(612_000.0));
    assert_eq!(ff.keys[at("CONN")], Key::N(4.0));
    assert_eq!(ff.keys[at("BLK")], Key::N(2.0));
    // Today by executable: firefox once (Web Content runs it too) and
    // the crash reporter.
    assert_eq!(ff.keys[at("TODAY")], Key::N((410 * MIB + 300) as f64));
    // The children are gone as rows; the others stay (curl's parent is
    // not listed).
    assert_eq!(rows.len(), 6);
    assert!(rows
        .iter()
        .any(|r| r.id == proc_id(2200, CURL) && r.prefix.is_empty()));
    // The machine's totals are the same folded or not.
    let sum = |rows: &[crate::view::Row]| -> f64 {
        rows.iter()
            .map(|r| match r.keys[at("SENT")] {
                Key::N(n) => n,
                _ => 0.0,
            })
            .sum()
    };
    let folded = sum(&rows);
    keys(&mut a, "t");
    assert_eq!(folded, sum(&a.rows(View::Processes).1));
    // Enter on the folded row: the connections of the whole tree.
    keys(&mut a, "t");
    while a.selected().unwrap().id != proc_id(1200, FIREFOX) {
        a.key(key(KeyCode::Down));
    }
    a.key(key(KeyCode::Enter));
    let mut f = ids(&a, View::Connections);
    f.sort();
    assert_eq!(f, ["f1", "f2", "f3", "f4"]);
}

#[test]
fn a_ppid_cycle_does_not_hang_or_lose_rows() {
    let mut s = snapshot();
    // 1200's parent is 1300, 1300's is 1200 (pid reuse).
    s.processes[0].owner.ppid = 1300;
    let mut a = App::new(DESCRIBE.into());
    a.update(s, None);
    keys(&mut a, "t");
    let (_, rows) = a.rows(View::Processes);
    let members: usize = rows.iter().map(|r| r.members.len()).sum();
    assert_eq!(members, 8, "every process in exactly one row");
}

#[test]
fn the_selection_stays_on_the_same_process_across_updates() {
    let mut a = app();
    // Select sshd (4000), fourth by receive rate.
    a.key(key(KeyCode::Down));
    a.key(key(KeyCode::Down));
    a.key(key(KeyCode::Down));
    let sshd = proc_id(4000, &format!("sshd ({FOUND_AT_START})"));
    assert_eq!(a.selected().unwrap().id, sshd);
    // sshd now receives the most: it moves to the top, still selected.
    let mut s = snapshot();
    s.processes[4].rate.rx_1s = 9e9;
    a.update(s, None);
    assert_eq!(ids(&a, View::Processes)[0], sshd);
    assert_eq!(a.selected().unwrap().id, sshd);
    // When it is gone, the selection stays at its place.
    let mut s = snapshot();
    s.processes.remove(4);
    a.update(s, None);
    assert_eq!(a.selected().unwrap().id, ids(&a, View::Processes)[0]);
    // Home/End/PgDn/PgUp move within bounds.
    a.key(key(KeyCode::End));
    assert_eq!(a.selected().unwrap().id, ids(&a, View::Processes)[6]);
    a.key(key(KeyCode::PageDown));
    assert_eq!(a.selected().unwrap().id, ids(&a, View::Processes)[6]);
    a.key(key(KeyCode::PageUp));
    assert_eq!(a.selected().unwrap().id, ids(&a, View::Processes)[0]);
}

#[test]
fn enter_on_a_process_shows_exactly_its_connections() {
    let mut a = app();
    // curl first, firefox second.
    assert!(a.key(key(KeyCode::Down)));
    assert!(a.key(key(KeyCode::Enter)));
    assert_eq!(a.view(), View::Connections);
    let mut f = ids(&a, View::Connections);
    f.sort();
    assert_eq!(
        f,
        ["f1", "f2", "f3"],
        "firefox's own flows, not its child's"
    );
    assert_eq!(
        column(&a, View::Connections, "REMOTE"),
        [
            "push.services.mozilla.com",
            "www.google.com",
            "2600:9000:2147:ba00:1b:5ad:7a40:93a1"
        ]
    );
    assert_eq!(
        column(&a, View::Connections, "SERVICE"),
        ["https", "https", "https"]
    );
    // Back, then c on the kernel socket.
    assert!(a.key(key(KeyCode::Esc)));
    assert_eq!(a.view(), View::Processes);
    a.key(key(KeyCode::Home));
    for _ in 0..5 {
        a.key(key(KeyCode::Down));
    }
    keys(&mut a, "c");
    assert_eq!(ids(&a, View::Connections), ["f8"]);
    assert_eq!(column(&a, View::Connections, "SERVICE"), ["ntp"]);
    // An incoming flow's service is its local port.
    a.key(key(KeyCode::Backspace));
    a.key(key(KeyCode::Up));
    a.key(key(KeyCode::Up));
    a.key(key(KeyCode::Enter));
    assert_eq!(ids(&a, View::Connections), ["f7"]);
    assert_eq!(column(&a, View::Connections, "SERVICE"), ["ssh"]);
    // c from another view: the last process's connections.
    keys(&mut a, "rc");
    assert_eq!(ids(&a, View::Connections), ["f7"]);
    // The first time: the process selected in the processes view.
    let mut a = app();
    keys(&mut a, "bc");
    assert_eq!(a.view(), View::Connections);
    assert_eq!(ids(&a, View::Connections), ["f5"]);
}

#[test]
fn pause_keeps_updates_and_shows_them_on_resume() {
    let mut a = app();
    keys(&mut a, " ");
    a.update(empty(), None);
    assert_eq!(ids(&a, View::Processes).len(), 8, "paused: not shown");
    assert!(draw(&mut a, 80, 24).contains("PAUSED"));
    keys(&mut a, " ");
    assert!(ids(&a, View::Processes).is_empty());
    assert!(!draw(&mut a, 80, 24).contains("PAUSED"));
}

#[test]
fn quit_keys() {
    let mut a = app();
    assert!(!a.key(ch('q')));
    assert!(!a.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    // Ctrl-C quits while typing a filter too.
    keys(&mut a, "/");
    assert!(!a.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    // The help popup: a key closes it.
    let mut a = app();
    keys(&mut a, "?");
    assert!(draw(&mut a, 80, 24).contains("keys"));
    keys(&mut a, "x");
    assert!(!draw(&mut a, 80, 24).contains("procflow top: keys"));
}

#[test]
fn no_row_is_a_bare_unknown() {
    let a = app();
    for p in column(&a, View::Processes, "PROGRAM") {
        assert!(
            !p.trim().is_empty() && p != "<unknown>" && p != "unknown",
            "{p}"
        );
    }
    let prog = column(&a, View::Processes, "PROGRAM");
    assert!(prog.contains(&format!("sshd ({FOUND_AT_START})")));
}

#[test]
fn narrow_terminals_drop_columns_but_never_the_sorted_one() {
    let mut a = app();
    let wide = draw(&mut a, 200, 50);
    assert!(wide.contains(" USER "));
    let narrow = draw(&mut a, 80, 24);
    assert!(!narrow.contains("USER"), "USER goes first at 80 columns");
    // Sorting by it brings it back.
    a.key(key(KeyCode::Left));
    a.key(key(KeyCode::Left));
    let narrow = draw(&mut a, 80, 24);
    assert!(narrow.contains("USER▲"), "{narrow}");
    // Every line fits.
    for l in narrow.lines() {
        assert_eq!(l.chars().count(), 82, "{l}");
    }
}

/// A source that fails when told to, and counts the history queries.
struct Fake {
    fail: bool,
    snaps: usize,
    todays: usize,
    /// The flows each snapshot was asked for.
    asked: Vec<Option<Vec<u32>>>,
}

impl crate::Source for Fake {
    fn snapshot(&mut self, flows_of: Option<&[u32]>) -> Result<Snapshot, String> {
        self.snaps += 1;
        self.asked.push(flows_of.map(<[u32]>::to_vec));
        if self.fail {
            Err("connect /run/procflow/api.sock: connection refused".into())
        } else {
            let mut s = snapshot();
            s.seq = self.snaps as u64;
            Ok(s)
        }
    }
    fn today(&mut self) -> Option<HashMap<String, (u64, u64)>> {
        self.todays += 1;
        Some(today())
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

#[test]
fn a_failed_snapshot_is_shown_and_the_last_data_stays() {
    use std::time::{Duration, Instant};
    let mut src = Fake {
        fail: false,
        snaps: 0,
        todays: 0,
        asked: Vec::new(),
    };
    let mut a = App::new("fake".into());
    let mut f = crate::Fetcher::default();
    let t0 = Instant::now();
    f.fetch(&mut src, &mut a, t0);
    assert_eq!(ids(&a, View::Processes).len(), 8);
    src.fail = true;
    f.fetch(&mut src, &mut a, t0 + Duration::from_secs(1));
    let screen = draw(&mut a, 120, 24);
    assert!(
        screen.contains("! connect /run/procflow/api.sock: connection refused"),
        "{screen}"
    );
    assert_eq!(
        ids(&a, View::Processes).len(),
        8,
        "the last good data stays"
    );
    assert!(screen.contains("TODAY"));
    // Retried at the next interval: the error goes.
    src.fail = false;
    f.fetch(&mut src, &mut a, t0 + Duration::from_secs(2));
    assert!(!draw(&mut a, 120, 24).contains("connection refused"));
    assert_eq!(src.snaps, 3);
    // Today's totals are asked for at most every 10 s.
    assert_eq!(src.todays, 1);
    f.fetch(&mut src, &mut a, t0 + Duration::from_secs(10));
    assert_eq!(src.todays, 2);
}

#[test]
fn only_the_connections_view_asks_for_flows_and_only_its_processes() {
    use std::time::Instant;
    let mut src = Fake {
        fail: false,
        snaps: 0,
        todays: 0,
        asked: Vec::new(),
    };
    let mut a = App::new("fake".into());
    let mut f = crate::Fetcher::default();
    f.fetch(&mut src, &mut a, Instant::now());
    assert_eq!(a.flows_wanted(), None);
    let first = a.selected().unwrap();
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let want: Vec<u32> = first.members.iter().map(|(p, _)| *p).collect();
    assert_eq!(a.flows_wanted(), Some(want.clone()));
    f.fetch(&mut src, &mut a, Instant::now());
    assert_eq!(src.asked, vec![None, Some(want)]);
    a.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert_eq!(a.flows_wanted(), None);
}
