//! Root tests of the Prometheus metrics (`--metrics`, docs/fleet.md): a
//! real Prometheus server (Debian's `prometheus`) scrapes procflow every
//! second and the values read back through its query API are compared with
//! nftables' counts; a thousand distinct executables keep the series at
//! `--metrics-top` + 1 with sums that stay exact.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every procflow sees the whole machine's traffic: the thousand
/// executables of one test would take the places the other test's two need.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free port on loopback (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from `addr`: (status line, headers, body).
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (head, body) = get(addr, "/metrics", None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

/// Samples of `name` in a text exposition: labels -> value.
fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    let mut v = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (labels, value) = r.rsplit_once("} ").unwrap();
                (labels, value)
            }
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let mut m = HashMap::new();
        // Label values here hold no `",` sequence.
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, val) = kv.split_once("=\"").unwrap();
            m.insert(k.to_string(), val.trim_end_matches('"').to_string());
        }
        v.push((m, value.trim().parse().unwrap()));
    }
    v
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Prometheus server on loopback scraping `target` every second, with
/// its own configuration and storage in a temporary folder.
struct Prometheus {
    child: Reaped,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("procflow-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: procflow\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let bin = ["/usr/bin/prometheus", "/usr/sbin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("prometheus is not installed (scripts/install-deps.sh installs it)");
        let child = Reaped::new(
            Command::new(bin)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let p = Prometheus { child, addr, dir };
        let up = wait_for(30, || {
            TcpStream::connect(addr).is_ok() && p.query("up").is_some_and(|r| !r.is_empty())
        });
        assert!(up, "prometheus did not come up: {}", p.log());
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector, or None while Prometheus cannot
    /// answer.
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let (head, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", percent(q)),
            None,
        );
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// The single value of `q`, if it has one.
    fn value(&self, q: &str) -> Option<u64> {
        let r = self.query(q)?;
        let [one] = r.as_slice() else { return None };
        one["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A copy of procflow-testgen under a name of its own (a hard link where
/// the file system allows), so its flows carry that executable.
fn named_testgen(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    if std::fs::hard_link(TESTGEN, &p).is_err() {
        std::fs::copy(TESTGEN, &p).unwrap();
    }
    p.display().to_string()
}

#[test]
fn prometheus_reads_the_exact_traffic_of_two_named_executables() {
    let _alone = alone();
    let p = Pair::new("prom", 190);
    let dir = std::env::temp_dir().join(format!("procflow-prom-exe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server_exe = named_testgen(&dir, "pf-prom-server");
    let client_exe = named_testgen(&dir, "pf-prom-client");
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pf = Procflow::start(&["--metrics", &maddr.to_string()]);
    let prom = Prometheus::start(maddr);
    assert!(
        wait_for(20, || prom.value("up{job=\"procflow\"}") == Some(1)),
        "prometheus cannot scrape procflow: {}",
        prom.log()
    );

    let (up, down) = (700_000u64, 250_000u64);
    let (server, port) = serve_program(
        &p.b,
        &server_exe,
        &[
            "tcp-serve",
            "--listen",
            &format!("{}:0", p.b4),
            "--download",
            &down.to_string(),
        ],
    );
    let to_b = nft_counter(
        &p.b,
        "input",
        "tob",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let to_a = nft_counter(
        &p.a,
        "input",
        "toa",
        &format!("ip saddr {} tcp sport {port}", p.b4),
    );
    let out =
        p.a.command(&client_exe)
            .args([
                "tcp-send",
                "--connect",
                &format!("{}:{port}", p.b4),
                "--upload",
                &up.to_string(),
            ])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sv = finish(server);
    assert_eq!(u(&sv, "received"), up);
    pf.wait_closed(&p.a, 1, "client", |f| f["remote_port"] == port);
    pf.wait_closed(&p.b, 1, "server", |f| f["local_port"] == port);
    let (a_to_b_pk, a_to_b) = to_b.read();
    let (b_to_a_pk, b_to_a) = to_a.read();
    assert!(a_to_b > up && b_to_a > down);

    let want = [
        (&client_exe, "sent", "bytes", a_to_b),
        (&client_exe, "received", "bytes", b_to_a),
        (&server_exe, "sent", "bytes", b_to_a),
        (&server_exe, "received", "bytes", a_to_b),
        (&client_exe, "sent", "packets", a_to_b_pk),
        (&client_exe, "received", "packets", b_to_a_pk),
        (&server_exe, "sent", "packets", b_to_a_pk),
        (&server_exe, "received", "packets", a_to_b_pk),
    ];
    for (exe, dir, what, truth) in want {
        let q = format!(
            "procflow_network_{what}_total{{exe=\"{exe}\",user=\"root\",direction=\"{dir}\"}}"
        );
        let mut got = None;
        wait_for(20, || {
            got = prom.value(&q);
            got == Some(truth)
        });
        assert_eq!(
            got,
            Some(truth),
            "{q} in Prometheus; nftables counted {truth}"
        );
    }
    // The same through the cgroup series' sum and the machine's total: the
    // series of one scrape add up to the total.
    let text = scrape(maddr);
    for name in [
        "procflow_network_bytes_total",
        "procflow_cgroup_network_bytes_total",
    ] {
        for dir in ["sent", "received"] {
            let sum: f64 = samples(&text, name)
                .iter()
                .filter(|(l, _)| l["direction"] == dir)
                .map(|(_, v)| v)
                .sum();
            let total = samples(&text, "procflow_machine_network_bytes_total")
                .iter()
                .find(|(l, _)| l["direction"] == dir)
                .unwrap()
                .1;
            assert_eq!(sum, total, "{name} {dir}");
        }
    }
    let health = samples(&text, "procflow_kernel_events_lost_total");
    assert_eq!(health.len(), 1, "health metrics are served");
    drop(prom);
    pf.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_thousand_executables_keep_the_series_at_top_plus_one_and_the_sums_exact() {
    let _alone = alone();
    const N: usize = 50;
    const EXES: usize = 1000;
    const SIZE: u64 = 100;
    let ns = Netns::new("pf-prom-many");
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("procflow-prom-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pf = Procflow::start(&["--metrics", &maddr.to_string()]);
    let recv_port = 47311;
    // A receiver, so that no datagram makes an ICMP error; what it gets is
    // not checked (the senders' flows are).
    let recv = Reaped::new(
        ns.command(TESTGEN)
            .args([
                "udp-recv",
                "--bind",
                &format!("127.0.0.1:{recv_port}"),
                "--count",
                "1000000",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut exes = Vec::new();
    for i in 0..EXES {
        let exe = named_testgen(&dir, &format!("pf-many-{i:04}"));
        let out = ns
            .command(&exe)
            .args([
                "udp-send",
                "--to",
                &format!("127.0.0.1:{recv_port}"),
                "--size",
                &SIZE.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        exes.push(exe);
    }
    drop(recv);
    // Every sender's flow is closed and recorded; a reading later the
    // metrics have taken them in.
    let datagram = SIZE + 28;
    pf.wait_closed(&ns, EXES, "sender", |f| {
        f["remote_port"] == recv_port && f["direction"] == "out"
    });
    std::thread::sleep(Duration::from_secs(3));
    let text = scrape(maddr);
    for what in ["bytes", "packets"] {
        let name = format!("procflow_network_{what}_total");
        for dir in ["sent", "received"] {
            let series: Vec<_> = samples(&text, &name)
                .into_iter()
                .filter(|(l, _)| l["direction"] == dir)
                .collect();
            assert_eq!(
                series.len(),
                N + 1,
                "{name} {dir}: {N} executables and other"
            );
            assert_eq!(
                series.iter().filter(|(l, _)| l["exe"] == "other").count(),
                1
            );
            let sum: f64 = series.iter().map(|(_, v)| v).sum();
            let total = samples(&text, &format!("procflow_machine_network_{what}_total"))
                .into_iter()
                .find(|(l, _)| l["direction"] == dir)
                .unwrap()
                .1;
            assert_eq!(sum, total, "{name} {dir}: the series add up to the machine");
        }
    }
    // A sender that had a series of its own when it sent shows exactly its
    // one datagram (one that got it later counts from then: 0).
    let own: Vec<_> = samples(&text, "procflow_network_bytes_total")
        .into_iter()
        .filter(|(l, v)| l["direction"] == "sent" && l["exe"].contains("/pf-many-") && *v > 0.0)
        .collect();
    assert!(!own.is_empty() && own.len() <= N, "{own:?}");
    for (l, v) in &own {
        assert_eq!(*v, datagram as f64, "{}", l["exe"]);
    }
    // The thousand are in the machine's total; what has no series is in
    // other.
    let other = samples(&text, "procflow_network_bytes_total")
        .into_iter()
        .find(|(l, _)| l["direction"] == "sent" && l["exe"] == "other")
        .unwrap()
        .1;
    assert!(other >= ((EXES - own.len()) as u64 * datagram) as f64);
    pf.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_endpoint_answers_only_metrics_and_open_metrics_when_asked() {
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pf = Procflow::start(&["--metrics", &maddr.to_string()]);
    let (head, body) = get(maddr, "/metrics", None);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE procflow_network_bytes_total counter"));
    assert!(!body.contains("# EOF"));
    let (head, body) = get(
        maddr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.contains("# TYPE procflow_network_bytes counter"));
    assert!(body.ends_with("# EOF\n"));
    let (head, _) = get(maddr, "/v1/snapshot", None);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A client that sends nothing does not hold the endpoint: others are
    // served meanwhile, up to the limit of connections at once.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(maddr).unwrap()).collect();
    let (head, _) = get(maddr, "/metrics", None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(idle);
    // An address already taken is a clear error at start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let db = std::env::temp_dir().join(format!("procflow-prom-taken-{}.db", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_procflow"))
        .args(["run", "--no-config", "--no-api", "--duration", "5", "--db"])
        .arg(&db)
        .arg("--metrics")
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics") && err.contains("cannot listen"),
        "{err}"
    );
    assert!(
        !db.exists(),
        "nothing was started before the address was refused"
    );
    pf.stop();
}

#[test]
fn an_open_flow_counts_exactly_as_of_the_reading_a_scrape_asked_for() {
    let _alone = alone();
    let p = Pair::new("promopen", 191);
    let dir = std::env::temp_dir().join(format!("procflow-prom-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = named_testgen(&dir, "pf-prom-open");
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pf = Procflow::start(&["--metrics", &maddr.to_string()]);
    let (before, after) = (300_000u64, 5_000u64);
    let (server, port) = phased_server(&p, before, after);
    let sent = nft_counter(
        &p.b,
        "input",
        "opensent",
        &format!("ip saddr {} tcp dport {port}", p.a4),
    );
    let received = nft_counter(
        &p.a,
        "input",
        "openrecv",
        &format!("ip saddr {} tcp sport {port}", p.b4),
    );
    let cl = phased_client(&p, Path::new(&exe), port, before, after);
    // The connection is open and quiet: the first scrape asks for a
    // reading, a later one serves it.
    std::thread::sleep(Duration::from_millis(300));
    let (truth_sent, truth_received) = (sent.read().1, received.read().1);
    let value = |text: &str, dir: &str| {
        samples(text, "procflow_network_bytes_total")
            .into_iter()
            .find(|(l, _)| l["exe"] == exe && l["direction"] == dir)
            .map(|(_, v)| v as u64)
    };
    let mut text = scrape(maddr);
    let read = wait_for(10, || {
        std::thread::sleep(Duration::from_millis(500));
        text = scrape(maddr);
        value(&text, "sent") == Some(truth_sent)
    });
    assert!(
        read,
        "sent {:?}, nftables {truth_sent}:\n{text}",
        value(&text, "sent")
    );
    assert_eq!(value(&text, "received"), Some(truth_received));
    let opened = samples(&text, "procflow_flows_open")
        .into_iter()
        .find(|(l, _)| l["proto"] == "tcp")
        .unwrap()
        .1;
    assert!(opened >= 2.0, "both ends are open flows: {opened}");
    let stamp = samples(&text, "procflow_counters_read_timestamp_seconds")[0].1;
    assert!(
        stamp * 1e9 >= pf.watching_ns as f64,
        "the reading is this run's"
    );
    cl.go();
    finish(server);
    pf.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
