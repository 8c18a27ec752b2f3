//! Root end-to-end tests of the live view and the local API: `procflow ps`
//! and `flows` against known traffic, access by peer credentials, and
//! subscribers that do not keep up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pf-live-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `procflow ARGS --json` as root; its JSON.
fn procflow_json(args: &[&str]) -> Value {
    run_json(Command::new(PROCFLOW).args(args).arg("--json"))
}

fn api(pf: &Procflow) -> &str {
    pf.api.to_str().unwrap()
}

#[test]
fn ps_and_flows_report_a_uniquely_named_program_exactly() {
    let p = Pair::new("live", 160);
    let dir = scratch("ps");
    let exe = dir.join("pf-live-uniq-gen");
    std::fs::copy(TESTGEN, &exe).unwrap();
    let exe_s = exe.to_str().unwrap();
    let (before, after) = (123_457u64, 4_321u64);

    let pf = Procflow::start(&[]);
    let (server, port) = phased_server(&p, before, after);
    let up = nft_counter(
        &p.b,
        "input",
        "liveup",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let down = nft_counter(
        &p.a,
        "input",
        "livedown",
        &format!("ip saddr {} tcp sport {port}", p.b4),
    );
    let cl = phased_client(&p, &exe, port, before, after);
    let client_pid = cl.child.id() as u64;

    // Open: the flow, and its process, with the bytes the wire carried.
    let mut last = Value::Null;
    let exact = wait_for(10, || {
        let flows = procflow_json(&["flows", "--api", api(&pf), "--exe", exe_s]);
        let (tx, rx) = (up.read().1, down.read().1);
        last = flows.clone();
        let f = &flows[0];
        flows.as_array().unwrap().len() == 1
            && u(f, "tx_payload") == before
            && u(f, "rx_payload") == before
            && u(f, "tx_bytes") == tx
            && u(f, "rx_bytes") == rx
    });
    assert!(
        exact,
        "flows: {last:#}\nwire: up {:?} down {:?}",
        up.read(),
        down.read()
    );
    let f = &last[0];
    assert_eq!(f["state"], "open");
    assert_eq!(u(&f["owner"], "pid"), client_pid, "{f}");
    assert_eq!(f["remote_port"], port as u64);
    // --pid selects the same flow; another pid none.
    let by_pid = procflow_json(&["flows", "--api", api(&pf), "--pid", &client_pid.to_string()]);
    assert_eq!(by_pid.as_array().unwrap().len(), 1, "{by_pid}");
    assert_eq!(by_pid[0]["flow_id"], f["flow_id"]);

    let ps = procflow_json(&["ps", "--api", api(&pf)]);
    let mine: Vec<&Value> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["exe"] == exe_s)
        .collect();
    assert_eq!(mine.len(), 1, "{ps:#}");
    let me = mine[0];
    assert_eq!(u(me, "pid"), client_pid);
    assert_eq!((u(me, "tx_payload"), u(me, "rx_payload")), (before, before));
    assert_eq!(
        (u(me, "tx_bytes"), u(me, "rx_bytes")),
        (up.read().1, down.read().1)
    );
    assert_eq!((u(me, "open_flows"), u(me, "flows")), (1, 1), "{me}");

    // Closed: the totals since start keep it, whole.
    cl.go();
    finish(server);
    pf.wait_closed(&p.a, 1, "client", |f| u(f, "remote_port") == port as u64);
    let mut me = Value::Null;
    let closed = wait_for(10, || {
        let ps = procflow_json(&["ps", "--api", api(&pf)]);
        me = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["exe"] == exe_s)
            .cloned()
            .unwrap_or(Value::Null);
        u(&me, "open_flows") == 0
    });
    assert!(closed, "{me}");
    let total = before + after;
    assert_eq!(
        (u(&me, "tx_payload"), u(&me, "rx_payload")),
        (total, total),
        "{me}"
    );
    assert_eq!(
        (u(&me, "tx_bytes"), u(&me, "rx_bytes")),
        (up.read().1, down.read().1)
    );
    assert_eq!(u(&me, "flows"), 1);
    // The log's final record agrees with the live view.
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let rec = one_flow(&flows, &p.a, "client", |f| {
        u(f, "remote_port") == port as u64
    });
    assert_eq!(u(rec, "tx_bytes"), u(&me, "tx_bytes"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw HTTP exchange with the API, as the caller's uid; returns the
/// status line and body.
fn http_as(uid_args: &[&str], sock: &Path, request: &str) -> (String, String) {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT-ERROR", e.errno); sys.exit(0)
s.sendall(sys.argv[2].encode())
data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
sys.stdout.write(data.decode())
"#;
    let mut cmd = Command::new("setpriv");
    cmd.args(uid_args)
        // Debian's python3, which any user can run.
        .args(["/usr/bin/python3", "-c", script])
        .arg(sock)
        .arg(request);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn the_api_serves_root_and_the_procflow_group_and_refuses_everyone_else() {
    let created = !std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("procflow:"));
    if created {
        sh(&["groupadd", "--system", "procflow"]);
    }
    let gid: u32 = sh(&["getent", "group", "procflow"])
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Unprivileged callers need a binary they can run.
    let dir = scratch("access");
    let bin = dir.join("procflow");
    std::fs::copy(PROCFLOW, &bin).unwrap();
    let pf = Procflow::start(&[]);
    let sock = pf.api.clone();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, gid), "socket owner");

    let member = [
        "--reuid=65534".to_string(),
        "--regid=65534".to_string(),
        format!("--groups={gid}"),
    ];
    let member: Vec<&str> = member.iter().map(String::as_str).collect();
    let stranger = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let ps_as = |who: &[&str]| {
        Command::new("setpriv")
            .args(who)
            .arg(&bin)
            .args(["ps", "--json", "--api"])
            .arg(&sock)
            .output()
            .unwrap()
    };
    // Root and a member of the group are served.
    let root = procflow_json(&["ps", "--api", api(&pf)]);
    assert!(root.is_array(), "{root}");
    let out = ps_as(&member);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(served.is_array(), "{served}");
    // Anyone else: the socket's mode refuses the connection, and the
    // message says why (never standalone: not root).
    let out = ps_as(&stranger);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    // With the file opened to everyone, procflow itself still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let get = "GET /v1/snapshot HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, body) = http_as(&stranger, &sock, get);
    assert!(status.contains(" 403 "), "{status} {body}");
    assert!(body.contains("permission denied"), "{body}");
    let (status, _) = http_as(&member, &sock, get);
    assert!(status.contains(" 200 "), "{status}");
    // Only root may change anything.
    let post = "POST /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let (status, body) = http_as(&member, &sock, post);
    assert!(status.contains(" 403 "), "{status} {body}");
    assert!(body.contains("only root"), "{body}");
    let (status, body) = http_as(&[], &sock, post);
    assert!(status.contains(" 405 "), "{status} {body}");
    // Malformed requests get a clear error, and the daemon serves on.
    let (status, body) = http_as(&[], &sock, "GARBAGE\r\n\r\n");
    assert!(status.contains(" 400 "), "{status} {body}");
    assert!(body.contains("bad request line"), "{body}");
    let (status, _) = http_as(&[], &sock, get);
    assert!(status.contains(" 200 "), "{status}");
    drop(pf);
    if created {
        sh(&["groupdel", "procflow"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens a subscription; returns the stream after the response head.
fn subscribe(sock: &Path, after: Option<u64>) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(sock).unwrap();
    let target = match after {
        Some(a) => format!("/v1/subscribe?after={a}"),
        None => "/v1/subscribe".to_string(),
    };
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    r
}

#[test]
fn a_stuck_subscriber_is_dropped_and_64_others_see_every_delta_in_order() {
    let pf = Procflow::start(&[]);
    let sock = pf.api.clone();
    let snap = run_json(
        Command::new(PROCFLOW)
            .args(["flows", "--json", "--api"])
            .arg(&sock),
    );
    assert!(snap.is_array());
    // One subscriber that never reads, with the smallest receive buffer.
    let stuck = UnixStream::connect(&sock).unwrap();
    socket2::SockRef::from(&stuck)
        .set_recv_buffer_size(4096)
        .unwrap();
    (&stuck)
        .write_all(b"GET /v1/subscribe HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // 64 that read everything, each on a thread: the sequence numbers they
    // see have no gap, and each sees the end of every connection below.
    const N: u64 = 8_000;
    let lo = Netns::new("pf-live-sub");
    let (server, port) = serve(
        &lo,
        &[
            "tcp-serve",
            "--listen",
            "127.0.0.1:0",
            "--count",
            &N.to_string(),
        ],
    );
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let r = subscribe(&sock, None);
            std::thread::spawn(move || {
                let (mut seq, mut ends, mut gaps, mut dropped) = (0u64, 0u64, 0u64, false);
                let until = Instant::now() + Duration::from_secs(120);
                for line in r.lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if v["type"] == "dropped" {
                        dropped = true;
                        break;
                    }
                    if let Some(s) = v["seq"].as_u64() {
                        if seq != 0 && s != seq + 1 {
                            gaps += 1;
                        }
                        seq = s;
                    }
                    if v["type"] == "end" && v["remote_port"] == port as u64 {
                        ends += 1;
                    }
                    if ends == N || Instant::now() > until {
                        break;
                    }
                }
                (ends, gaps, dropped)
            })
        })
        .collect();
    // N short connections: an open and an end delta for each side.
    client(
        &lo,
        &[
            "tcp-send",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--count",
            &N.to_string(),
        ],
    );
    finish(server);
    for r in readers {
        let (ends, gaps, dropped) = r.join().unwrap();
        assert!(!dropped, "a reading subscriber was dropped");
        assert_eq!(gaps, 0, "gaps in the sequence");
        assert_eq!(ends, N, "ends of the connections' client flows");
    }
    // The stuck one was dropped: the daemon ends its connection (a kept one
    // would go on getting ticks and never end).
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 65536];
    loop {
        match (&stuck).read(&mut buf) {
            Ok(0) => break,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the stuck subscriber's connection is still served after 30 s"
            ),
            Err(e) => panic!("the stuck subscriber's connection stays open: {e}"),
        }
    }
    let recs = pf.stop();
    let st = stats(&recs);
    // The stuck one, and possibly a reader slowed down after its last end
    // (its queue filled with later ticks before it closed).
    assert!(u(&st["api"], "subscribers_dropped") >= 1, "{st}");
    assert_eq!(u(&st, "events_lost"), 0, "{st}");
    let client_flows = final_flows(&recs)
        .into_iter()
        .filter(|f| f["proto"] == "tcp" && u(f, "remote_port") == port as u64)
        .count() as u64;
    assert_eq!(client_flows, N, "the daemon kept its pace");
}

/// A tmux session running `procflow top`, killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, cols: u16, rows: u16, cmd: &str) -> Tmux {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        sh(&[
            "tmux",
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            cmd,
        ]);
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        sh(&["tmux", "capture-pane", "-p", "-t", &self.0])
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            sh(&["tmux", "send-keys", "-t", &self.0, k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until the screen holds what `f` looks for; the last screen.
    fn wait(&self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let seen = wait_for(secs, || {
            last = self.screen();
            f(&last)
        });
        assert!(seen, "top never showed {what}; its screen:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn top_shows_the_program_and_its_connection_with_its_exact_bytes() {
    let p = Pair::new("livetop", 161);
    let dir = scratch("top");
    let exe = dir.join("pf-top-uniq-gen");
    std::fs::copy(TESTGEN, &exe).unwrap();
    // Small enough that top shows the wire bytes unrounded ("NNN B").
    let before = 300u64;
    let pf = Procflow::start(&[]);
    let (server, port) = phased_server(&p, before, 0);
    let up = nft_counter(
        &p.b,
        "input",
        "topup",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let cl = phased_client(&p, &exe, port, before, 0);
    let pid = cl.child.id().to_string();
    // The flow as the API has it, with the wire's bytes.
    let mut flow = Value::Null;
    assert!(wait_for(10, || {
        let f = procflow_json(&["flows", "--api", api(&pf), "--pid", &pid]);
        flow = f[0].clone();
        u(&flow, "tx_payload") == before && u(&flow, "tx_bytes") == up.read().1
    }));
    let sent = u(&flow, "tx_bytes");
    assert!(sent < 1024, "{flow}");

    let cmd = format!("{PROCFLOW} top --api {}", api(&pf));
    let top = Tmux::start("pf-live-top", 200, 50, &cmd);
    let screen = top.wait(15, "the program's row", |s| s.contains("pf-top-uniq-gen"));
    let row = screen
        .lines()
        .find(|l| l.contains("pf-top-uniq-gen"))
        .unwrap();
    assert!(row.contains(&pid), "{row}");
    assert!(
        screen.contains("daemon "),
        "the status line names the source:\n{screen}"
    );
    // Its connections: filter to it, then Enter.
    top.keys(&["/"]);
    top.keys(&["pf-top-uniq-gen", "Enter", "Enter"]);
    let want = format!("{sent} B");
    let screen = top.wait(10, "the connection with its bytes", |s| {
        s.contains("connections of") && s.lines().any(|l| l.contains("tcp") && l.contains(&want))
    });
    let conn = screen
        .lines()
        .find(|l| l.contains("tcp") && l.contains(&want))
        .unwrap();
    assert!(
        conn.contains(&port.to_string()) || conn.contains(&p.b4.to_string()),
        "{conn}"
    );
    // The 80x24 screen shows the row too, and q quits with the terminal
    // given back.
    drop(top);
    let small = Tmux::start("pf-live-top80", 80, 24, &cmd);
    small.wait(15, "the row at 80x24", |s| s.contains(&pid));
    small.keys(&["q"]);
    assert!(
        wait_for(5, || Command::new("tmux")
            .args(["has-session", "-t", "pf-live-top80"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)),
        "top did not quit on q"
    );
    cl.go();
    finish(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn blocked_attempts_reach_the_snapshot_and_the_stream_with_their_rule() {
    let p = Pair::new("liveblock", 162);
    let dir = scratch("block");
    let exe = dir.join("pf-live-blocked-gen");
    std::fs::copy(TESTGEN, &exe).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "default = \"allow\"\n[[rule]]\nname = \"no-uniq-gen\"\naction = \"block\"\n\
             exe = \"{}\"\nremote = \"{}\"\n",
            exe.display(),
            p.b4
        ),
    )
    .unwrap();
    let pf = Procflow::start(&["--rules", rules.to_str().unwrap()]);
    pf.wait_rules_ack(1);
    let mut sub = subscribe(&pf.api, None);
    let out =
        p.a.command(exe.to_str().unwrap())
            .args(["tcp-send", "--connect", &format!("{}:5", p.b4)])
            .output()
            .unwrap();
    assert!(!out.status.success(), "the connect was not blocked");
    // The stream tells of it.
    let mut line = String::new();
    let mut verdict = Value::Null;
    while verdict.is_null() {
        line.clear();
        assert!(sub.read_line(&mut line).unwrap() > 0, "the stream ended");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "verdict" {
            verdict = v;
        }
    }
    assert_eq!(verdict["rule"], "no-uniq-gen", "{verdict}");
    assert_eq!(verdict["exe"], exe.to_str().unwrap(), "{verdict}");
    assert_eq!(verdict["remote_port"], 5);
    // The snapshot has it, the process counts it, the rules are in force.
    let snap = run_json(
        Command::new(PROCFLOW)
            .args(["ps", "--json", "--api"])
            .arg(&pf.api),
    );
    let me = snap
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["exe"] == exe.to_str().unwrap())
        .unwrap_or_else(|| panic!("no process: {snap:#}"));
    assert_eq!(u(me, "blocked"), 1, "{me}");
    let (status, body) = http_as(&[], &pf.api, "GET /v1/snapshot HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.contains(" 200 "), "{status}");
    let snap: Value = serde_json::from_str(&body).unwrap();
    let blocked = snap["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0]["hook"], "connect");
    assert_eq!(snap["rules"]["generation"], 1);
    assert_eq!(snap["rules"]["last_outcome"], "accepted");
    assert_eq!(u(&snap["totals"], "blocked"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ps_as_root_without_a_daemon_loads_the_kernel_programs_itself() {
    let p = Pair::new("livesolo", 163);
    let dir = scratch("solo");
    let exe = dir.join("pf-live-solo-gen");
    std::fs::copy(TESTGEN, &exe).unwrap();
    let (server, port) = phased_server(&p, 1000, 0);
    let cl = phased_client(&p, &exe, port, 1000, 0);
    let pid = cl.child.id() as u64;
    // No daemon at this socket: ps finds the connection by the start-up scan.
    let none = dir.join("no-daemon.sock");
    let out = Command::new(PROCFLOW)
        .args(["flows", "--json", "--api"])
        .arg(&none)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine: Vec<&Value> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| u(&f["owner"], "pid") == pid)
        .collect();
    assert_eq!(mine.len(), 1, "{flows:#}");
    assert_eq!(mine[0]["owner"]["exe"], exe.to_str().unwrap());
    assert_eq!(mine[0]["remote_port"], port as u64);
    // As another user, no daemon is an error that says what to do.
    let bin = dir.join("procflow");
    std::fs::copy(PROCFLOW, &bin).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["ps", "--api"])
        .arg(&none)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no procflow daemon answers") && err.contains("as root"),
        "{err}"
    );
    cl.go();
    finish(server);
    let _ = std::fs::remove_dir_all(&dir);
}
