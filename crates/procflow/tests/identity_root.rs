//! Root tests: every flow names its program. Forked children (pre-forking
//! servers, worker pools) carry their parent's executable and command line
//! even when they exit within milliseconds and the parent started before
//! procflow; a reused pid never inherits a dead process's identity; exec
//! changes every identity field at once. Ground truth: the programs' own
//! pids and byte counts, and the path of the interpreter that runs them.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// The real executable of the interpreter (what /proc and the kernel name).
fn python_exe() -> String {
    std::fs::canonicalize(PYTHON)
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (scripts/install-deps.sh installs python3)"))
        .to_string_lossy()
        .into_owned()
}

/// Writes a test script into a temporary directory of its own.
fn script(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A pre-forking server: accepts COUNT connections; for each, forks a child
/// that reads to EOF, sends DOWNLOAD bytes, waits for the peer's close and
/// exits at once. Prints "ready PORT", and at the end the children's pids.
const PREFORK: &str = r#"
import json, os, socket, sys
host, count, download = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
l = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
l.bind((host, 0))
l.listen(64)
print("ready", l.getsockname()[1], flush=True)
children = []
for _ in range(count):
    c, _ = l.accept()
    pid = os.fork()
    if pid == 0:
        l.close()
        got = 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            got += len(b)
        c.sendall(b"d" * download)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
        os._exit(0 if got else 3)
    c.close()
    children.append(pid)
ok = all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in children)
print(json.dumps({"children": children, "pid": os.getpid(), "ok": ok}), flush=True)
"#;

/// A parent that forks COUNT workers without exec; each connects, sends
/// UPLOAD bytes, reads to EOF and exits.
const FORKERS: &str = r#"
import json, os, socket, sys
host, port, count, upload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
children = []
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        s = socket.create_connection((host, port))
        s.sendall(b"u" * upload)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        os._exit(0)
    children.append(pid)
ok = all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in children)
print(json.dumps({"children": children, "ok": ok}), flush=True)
"#;

/// Pid reuse: program A (testgen) connects and exits; then this script
/// forks (no exec) until its child gets A's pid (ns_last_pid), and the child
/// connects. Prints the pid both had.
const REUSE: &str = r#"
import json, os, socket, subprocess, sys
testgen, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
for attempt in range(200):
    a = subprocess.run([testgen, "tcp-send", "--connect", f"{host}:{port}", "--upload", "1000"],
                       check=True, capture_output=True, text=True)
    pa = json.loads(a.stdout.splitlines()[-1])["pid"]
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pa - 1))
    pid = os.fork()
    if pid == 0:
        if os.getpid() != pa:
            os._exit(7)
        s = socket.create_connection((host, port))
        s.sendall(b"b" * 2000)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0:
        print(json.dumps({"pid": pa, "attempts": attempt + 1}), flush=True)
        sys.exit(0)
sys.exit("no child got the pid of the exited program")
"#;

/// Exec without a new pid: connect, send BEFORE bytes, then exec testgen on
/// the same socket (as its standard input), which sends AFTER bytes.
const EXECS: &str = r#"
import os, socket, sys
testgen, host, port, before, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = socket.create_connection((host, port))
s.sendall(b"e" * before)
print(os.getpid(), flush=True)
os.dup2(s.fileno(), 0)
os.execv(testgen, [testgen, "stdin-send", "--bytes", after])
"#;

/// A Python server started in `ns`; returns it and its port.
fn python_server(ns: &Netns, script: &Path, args: &[&str]) -> (Server, u16) {
    let script = script.to_string_lossy();
    let all: Vec<&str> = std::iter::once(script.as_ref())
        .chain(args.iter().copied())
        .collect();
    serve_program(ns, PYTHON, &all)
}

/// Its summary, once every child it forked has succeeded.
fn python_finish(server: Server) -> Value {
    let v = finish(server);
    assert_eq!(v["ok"], true, "a child failed: {v}");
    v
}

fn pids(v: &Value) -> Vec<u64> {
    let mut p: Vec<u64> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    p.sort();
    p
}

/// Every flow record with an owner names its executable, or says why not.
fn assert_every_flow_names_its_program(recs: &[Value], ns: &[&Netns]) {
    let inodes: Vec<u64> = ns.iter().map(|n| n.inode()).collect();
    for r in recs.iter().filter(|r| r["type"] == "flow") {
        if !inodes.contains(&r["netns"].as_u64().unwrap()) || r["process"].is_null() {
            continue;
        }
        assert!(
            r["process"]["exe"].is_string(),
            "a flow without its executable: {r}"
        );
        assert!(
            r["process"]["cmdline"].is_string(),
            "a flow without its command line: {r}"
        );
    }
}

/// The flows a pre-forking server in b accepted on `port`: 20, one per
/// child, each with the server's executable and command line, exact bytes.
fn check_prefork_flows(flows: &[Value], p: &Pair, port: u16, server: &Value, script: &str) {
    let accepted = flows_in(flows, &p.b, |f| {
        f["proto"] == "tcp" && f["local_port"].as_u64() == Some(u64::from(port))
    });
    let mut got: Vec<u64> = accepted
        .iter()
        .map(|f| f["process"]["pid"].as_u64().unwrap_or(0))
        .collect();
    got.sort();
    assert_eq!(
        got,
        pids(server),
        "one accepted flow per child: {accepted:#?}"
    );
    for f in accepted {
        let proc_ = &f["process"];
        assert_eq!(proc_["exe"], python_exe(), "{f}");
        let cmd = proc_["cmdline"]
            .as_str()
            .unwrap_or_else(|| panic!("no cmdline: {f}"));
        assert!(cmd.contains(script), "{cmd} does not name {script}: {f}");
        assert_eq!(proc_["ppid"], server["pid"], "{f}");
        assert_eq!(f["state"], "closed", "{f}");
        assert_eq!(f["direction"], "in", "{f}");
        assert_eq!(u(f, "rx_payload"), 3000, "{f}");
        assert_eq!(u(f, "tx_payload"), 7000, "{f}");
    }
}

#[test]
fn pre_forking_servers_children_carry_the_servers_exe_and_cmdline() {
    let p = Pair::new("prefork", 40);
    let (_d, path) = script("prefork.py", PREFORK);
    let host = p.b4.to_string();
    let args = [host.as_str(), "20", "7000"];
    // One server from before procflow started, one from after.
    let (before, port_before) = python_server(&p.b, &path, &args);
    let pf = Procflow::start(&[]);
    let (after, port_after) = python_server(&p.b, &path, &args);
    for port in [port_before, port_after] {
        let c = client(
            &p.a,
            &[
                "tcp-send",
                "--connect",
                &format!("{host}:{port}"),
                "--upload",
                "3000",
                "--count",
                "20",
            ],
        );
        assert_eq!(c["received"], 20 * 7000, "{c}");
    }
    let server_before = python_finish(before);
    let server_after = python_finish(after);
    let ports = [port_before, port_after];
    pf.wait_closed(&p.b, 40, "accepted", |f| {
        ports
            .iter()
            .any(|&pt| f["local_port"].as_u64() == Some(u64::from(pt)))
    });
    let (recs, db) = pf.stop_keep_db();
    let flows = final_flows(&recs);
    let name = path.to_string_lossy().into_owned();
    check_prefork_flows(&flows, &p, port_before, &server_before, &name);
    check_prefork_flows(&flows, &p, port_after, &server_after, &name);
    assert_every_flow_names_its_program(&recs, &[&p.a, &p.b]);
    assert_report_has_no_row_without_exe(&db, "10.199.40.0/24");
}

/// `procflow report --by exe` over the test's flows (remotes in `net`):
/// every row names an executable.
fn assert_report_has_no_row_without_exe(db: &PathBuf, net: &str) {
    let out = Command::new(PROCFLOW)
        .args([
            "report", "--by", "exe", "--since", "1h", "--format", "json", "--remote", net, "--db",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let rows = v["rows"]
        .as_array()
        .or(v.as_array())
        .unwrap_or_else(|| panic!("no rows: {v}"));
    assert!(!rows.is_empty(), "{v}");
    for r in rows {
        assert!(
            r["exe"].is_string(),
            "a report row without an executable: {r}"
        );
    }
    let py = python_exe();
    assert!(rows.iter().any(|r| r["exe"] == py.as_str()), "{v}");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

#[test]
fn workers_forked_without_exec_carry_the_parents_exe() {
    let p = Pair::new("forkers", 41);
    let pf = Procflow::start(&[]);
    let (server, port) = serve(
        &p.b,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--count",
            "20",
        ],
    );
    let (_d, path) = script("forkers.py", FORKERS);
    let workers = run_json(p.a.command(PYTHON).arg(&path).args([
        &p.b4.to_string(),
        &port.to_string(),
        "20",
        "65536",
    ]));
    assert_eq!(workers["ok"], true);
    let served = finish(server);
    assert_eq!(served["received"], 20 * 65536);
    pf.wait_closed(&p.a, 20, "worker", |f| {
        f["remote_port"].as_u64() == Some(u64::from(port))
    });
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let ours = flows_in(&flows, &p.a, |f| {
        f["proto"] == "tcp" && f["remote_port"].as_u64() == Some(u64::from(port))
    });
    let mut got: Vec<u64> = ours
        .iter()
        .map(|f| f["process"]["pid"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, pids(&workers), "{ours:#?}");
    for f in ours {
        assert_eq!(f["process"]["exe"], python_exe(), "{f}");
        assert!(
            f["process"]["cmdline"]
                .as_str()
                .unwrap()
                .contains("forkers.py"),
            "{f}"
        );
        assert_eq!(u(f, "tx_payload"), 65536, "{f}");
        assert_eq!(f["state"], "closed");
    }
    assert_every_flow_names_its_program(&recs, &[&p.a, &p.b]);
}

#[test]
fn a_reused_pid_never_inherits_the_dead_programs_identity() {
    let p = Pair::new("pidreuse", 42);
    let pf = Procflow::start(&[]);
    let (server, port) = serve(&p.b, &["sink", "--listen", &format!("{}:0", p.b4)]);
    let (_d, path) = script("reuse.py", REUSE);
    let out =
        p.a.command(PYTHON)
            .arg(&path)
            .args([TESTGEN, &p.b4.to_string(), &port.to_string()])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["pid"].as_u64().unwrap();
    eprintln!("pid {pid} reused after {} attempts", v["attempts"]);
    pf.wait_closed(&p.a, 2, &format!("pid {pid}'s"), |f| {
        f["process"]["pid"].as_u64() == Some(pid)
    });
    let recs = pf.stop();
    let mut server = server;
    let _ = server.kill();
    let _ = server.wait();
    let flows = final_flows(&recs);
    let of_pid = flows_in(&flows, &p.a, |f| {
        f["process"]["pid"].as_u64() == Some(pid)
            && f["remote_port"].as_u64() == Some(u64::from(port))
    });
    assert_eq!(of_pid.len(), 2, "program A's flow and B's: {of_pid:#?}");
    let a = of_pid
        .iter()
        .find(|f| u(f, "tx_payload") == 1000)
        .expect("A's flow");
    let b = of_pid
        .iter()
        .find(|f| u(f, "tx_payload") == 2000)
        .expect("B's flow");
    assert_eq!(a["process"]["exe"], TESTGEN, "{a}");
    assert_eq!(
        b["process"]["exe"],
        python_exe(),
        "the reused pid named the dead program: {b}"
    );
    assert!(
        b["process"]["cmdline"]
            .as_str()
            .unwrap()
            .contains("reuse.py"),
        "{b}"
    );
    assert_eq!(b["process"]["comm"], "python3", "{b}");
}

#[test]
fn exec_changes_every_identity_field_at_once() {
    let p = Pair::new("execid", 43);
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
    let (_d, path) = script("execs.py", EXECS);
    let mut child = Reaped::new(
        p.a.command(PYTHON)
            .arg(&path)
            .args([
                TESTGEN,
                &p.b4.to_string(),
                &port.to_string(),
                "1000",
                "3000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u64 = line.trim().parse().unwrap();
    assert!(child.wait().unwrap().success());
    let served = finish(server);
    assert_eq!(served["received"], 4000);
    pf.wait_closed(&p.a, 1, "exec", |f| {
        f["remote_port"].as_u64() == Some(u64::from(port))
    });
    let recs = pf.stop();
    let flows = final_flows(&recs);
    let f = one_flow(&flows, &p.a, "exec", |f| {
        f["remote_port"].as_u64() == Some(u64::from(port))
    });
    let id = &f["process"];
    assert_eq!(id["pid"], pid, "{f}");
    assert_eq!(id["exe"], TESTGEN, "{f}");
    assert_eq!(
        id["comm"], "procflow-testge",
        "exe and comm name the same program: {f}"
    );
    assert!(
        id["cmdline"]
            .as_str()
            .unwrap()
            .contains("stdin-send --bytes 3000"),
        "{f}"
    );
    assert_eq!(u(f, "tx_payload"), 4000, "{f}");
}
