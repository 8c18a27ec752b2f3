//! Prometheus metrics: an observer of the hub's records ([`Hub::observe`])
//! that serves `/metrics` over HTTP, in Prometheus's text format or in
//! OpenMetrics when the scraper asks for it.
//!
//! The counters of open flows are read from the kernel when a scrape asks
//! (a scrape shows the reading the previous one asked for, and
//! `procflow_counters_read_timestamp_seconds` says when it was made), so
//! the cost follows the scrape interval; closed flows count at once.
//!
//! Traffic is counted from the flow records: each flow's counters are
//! cumulative, so the growth since its previous record goes to its
//! executable's series (and its cgroup's). The top `--metrics-top`
//! executables get series of their own, the rest are summed into
//! `exe="other"`, so the sum over the series is the machine's total
//! exactly and the number of series stays bounded whatever runs. No
//! counter ever goes down: an executable gets its own series while a place
//! is free or when it clearly outgrows the smallest one; counting in its
//! series starts then (what it did before stays in `other`), and one that
//! loses its place goes into `other` with all it had and stays there until
//! procflow restarts (coming back would take its bytes out of `other`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use procflow_core::flow::FlowState;
use procflow_core::live::Record;
use procflow_core::{Counters, FlowRecord};

use crate::hub::{Hub, Observed};

#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (for example
    /// 127.0.0.1:9464; docs/fleet.md). Anyone who can reach ADDR sees
    /// which programs use the network: keep it on loopback or a management
    /// network.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    /// How many executables (and cgroups) get series of their own; the
    /// rest are summed into exe="other" (cgroup="other").
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        requires = "metrics",
        value_parser = clap::value_parser!(u32).range(1..=10000)
    )]
    pub(crate) metrics_top: u32,
}

/// Scrapes served at once; more get 503.
const MAX_CONNECTIONS: usize = 16;
/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 16 * 1024;
/// Candidates ranked for a series per `top` place; executables past that
/// go straight into `other` (unprivileged users can make any number of
/// distinct executables).
const CANDIDATES_PER_PLACE: usize = 20;
/// A candidate takes the smallest series' place when it has more than this
/// many times its bytes (so two similar executables do not take turns).
const OUTGROW: u64 = 2;

/// Bytes of both ways, for ranking.
fn bytes(t: &Counters) -> u64 {
    t.tx_bytes + t.rx_bytes
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Has its own series.
    Own,
    /// Counted in `other`, ranked for a place.
    Candidate,
    /// Lost its place: in `other` for good.
    Out,
}

#[derive(Debug)]
struct Entry {
    place: Place,
    /// Counted in its own series (while it had one).
    own: Counters,
    /// Bytes counted in `other` (for ranking).
    in_other: u64,
}

impl Entry {
    fn rank(&self) -> u64 {
        bytes(&self.own) + self.in_other
    }
}

/// Series keyed by `K` of which at most `top` are shown, the rest summed
/// into `other`.
#[derive(Debug)]
pub struct TopN<K> {
    top: usize,
    entries: HashMap<K, Entry>,
    own: usize,
    other: Counters,
    /// Keys never ranked because the candidates were full.
    pub untracked: u64,
}

impl<K: std::hash::Hash + Eq + Clone + Ord> TopN<K> {
    pub fn new(top: usize) -> TopN<K> {
        TopN {
            top: top.max(1),
            entries: HashMap::new(),
            own: 0,
            other: Counters::default(),
            untracked: 0,
        }
    }

    pub fn add(&mut self, key: &K, t: &Counters) {
        let limit = self.top * (CANDIDATES_PER_PLACE + 1);
        if !self.entries.contains_key(key) {
            if self.entries.len() >= limit {
                self.untracked += 1;
                self.other = self.other.plus(*t);
                return;
            }
            let place = if self.own < self.top {
                self.own += 1;
                Place::Own
            } else {
                Place::Candidate
            };
            self.entries.insert(
                key.clone(),
                Entry {
                    place,
                    own: Counters::default(),
                    in_other: 0,
                },
            );
        }
        let e = self.entries.get_mut(key).expect("inserted above");
        if e.place == Place::Own {
            e.own = e.own.plus(*t);
        } else {
            e.in_other += bytes(t);
            self.other = self.other.plus(*t);
        }
    }

    /// Gives the smallest series' places to the largest candidates while
    /// one has more than [`OUTGROW`] times the smallest's bytes.
    pub fn rebalance(&mut self) {
        for _ in 0..self.top {
            if !self.swap_once() {
                break;
            }
        }
    }

    /// One such change; whether there was one.
    fn swap_once(&mut self) -> bool {
        let best = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Candidate)
            .max_by(|a, b| a.1.rank().cmp(&b.1.rank()).then(b.0.cmp(a.0)))
            .map(|(k, e)| (k.clone(), e.rank()));
        let Some((best, best_rank)) = best else {
            return false;
        };
        let weakest = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Own)
            .min_by(|a, b| a.1.rank().cmp(&b.1.rank()).then(a.0.cmp(b.0)))
            .map(|(k, e)| (k.clone(), e.rank()));
        match weakest {
            Some((weak, weak_rank)) if best_rank > weak_rank.saturating_mul(OUTGROW) => {
                let w = self.entries.get_mut(&weak).expect("found above");
                w.place = Place::Out;
                let own = w.own;
                self.other = self.other.plus(own);
                self.entries.get_mut(&best).expect("found above").place = Place::Own;
                true
            }
            _ => false,
        }
    }

    /// The series shown: each key with a place, sorted, then `other`
    /// (`None`).
    pub fn series(&self) -> Vec<(Option<&K>, Counters)> {
        let mut v: Vec<(Option<&K>, Counters)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Own)
            .map(|(k, e)| (Some(k), e.own))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.push((None, self.other));
        v
    }
}

#[derive(Debug)]
struct Seen {
    program: (String, String),
    cgroup: String,
    proto: String,
    last: Counters,
}

/// Everything `/metrics` shows, from the records (pure: unit tested with
/// records made by hand).
#[derive(Debug)]
pub struct Metrics {
    flows: HashMap<String, Seen>,
    programs: TopN<(String, String)>,
    cgroups: TopN<String>,
    total: Counters,
    opened: HashMap<String, u64>,
    blocked: HashMap<(String, String), u64>,
    stats: serde_json::Value,
    /// Records the observer queue could not take.
    pub lost: u64,
    pub scrapes: u64,
    /// When the kernel's counters were last read (Unix ns).
    read_at_ns: u64,
    /// The IPFIX exporter's counters, when it runs.
    pub ipfix: Option<Arc<crate::ipfix::IpfixStats>>,
}

/// The executable of a flow's process, as its `exe` label.
fn exe_label(r: &FlowRecord) -> (String, String) {
    match &r.process {
        None => ("[kernel]".into(), String::new()),
        Some(p) => (
            p.exe.clone().unwrap_or_else(|| format!("[{}]", p.comm)),
            p.user.clone().unwrap_or_else(|| p.uid.to_string()),
        ),
    }
}

impl Metrics {
    pub fn new(top: usize) -> Metrics {
        Metrics {
            flows: HashMap::new(),
            programs: TopN::new(top),
            cgroups: TopN::new(top),
            total: Counters::default(),
            opened: HashMap::new(),
            blocked: HashMap::new(),
            stats: serde_json::Value::Null,
            lost: 0,
            scrapes: 0,
            read_at_ns: 0,
            ipfix: None,
        }
    }

    pub fn record(&mut self, rec: &Record) {
        match rec {
            Record::Flow(r) => self.flow(r),
            Record::Verdict(v) => {
                let rule = v.rule.clone().unwrap_or_else(|| "(default)".into());
                *self.blocked.entry((rule, v.hook.to_string())).or_default() += 1;
            }
            Record::Stats(s) => self.stats = s.clone(),
            Record::Rules(_) => {}
        }
    }

    fn flow(&mut self, r: &FlowRecord) {
        let now = r.counters;
        let seen = self.flows.entry(r.flow_id.clone()).or_insert_with(|| {
            let proto = r.proto.to_string();
            *self.opened.entry(proto.clone()).or_default() += 1;
            Seen {
                program: exe_label(r),
                cgroup: r
                    .process
                    .as_ref()
                    .and_then(|p| p.cgroup.clone())
                    .unwrap_or_default(),
                proto,
                last: Counters::default(),
            }
        });
        let growth = now.since(seen.last);
        seen.last = seen.last.max(now);
        if growth != Counters::default() {
            self.programs.add(&seen.program, &growth);
            self.cgroups.add(&seen.cgroup, &growth);
            self.total = self.total.plus(growth);
        }
        if r.state == FlowState::Closed {
            self.flows.remove(&r.flow_id);
        }
    }

    /// A tick of the live state (after a reading when `fresh`).
    pub fn tick(&mut self, now_ns: u64, fresh: bool) {
        if fresh {
            self.read_at_ns = now_ns;
        }
    }

    /// Before each scrape: series places change here, never mid-scrape.
    pub fn rebalance(&mut self) {
        self.programs.rebalance();
        self.cgroups.rebalance();
    }

    /// `/metrics` now, as Prometheus text (`open_metrics` false) or
    /// OpenMetrics.
    pub fn render(&self, open_metrics: bool) -> String {
        let mut o = Out {
            s: String::with_capacity(16 * 1024),
            om: open_metrics,
        };
        o.family(
            "procflow_network_bytes",
            "counter",
            "IP bytes (headers included) sent and received, by executable and user",
        );
        for (k, t) in self.programs.series() {
            let (exe, user) = k.map_or(("other", "other"), |(e, u)| (e.as_str(), u.as_str()));
            for (dir, v) in [("sent", t.tx_bytes), ("received", t.rx_bytes)] {
                o.sample(
                    "procflow_network_bytes_total",
                    &[("exe", exe), ("user", user), ("direction", dir)],
                    v,
                );
            }
        }
        o.family(
            "procflow_network_packets",
            "counter",
            "IP packets sent and received, by executable and user",
        );
        for (k, t) in self.programs.series() {
            let (exe, user) = k.map_or(("other", "other"), |(e, u)| (e.as_str(), u.as_str()));
            for (dir, v) in [("sent", t.tx_packets), ("received", t.rx_packets)] {
                o.sample(
                    "procflow_network_packets_total",
                    &[("exe", exe), ("user", user), ("direction", dir)],
                    v,
                );
            }
        }
        o.family(
            "procflow_cgroup_network_bytes",
            "counter",
            "IP bytes sent and received, by cgroup (container, systemd unit)",
        );
        for (k, t) in self.cgroups.series() {
            let cg = k.map_or("other", |c| c.as_str());
            for (dir, v) in [("sent", t.tx_bytes), ("received", t.rx_bytes)] {
                o.sample(
                    "procflow_cgroup_network_bytes_total",
                    &[("cgroup", cg), ("direction", dir)],
                    v,
                );
            }
        }
        o.family(
            "procflow_cgroup_network_packets",
            "counter",
            "IP packets sent and received, by cgroup",
        );
        for (k, t) in self.cgroups.series() {
            let cg = k.map_or("other", |c| c.as_str());
            for (dir, v) in [("sent", t.tx_packets), ("received", t.rx_packets)] {
                o.sample(
                    "procflow_cgroup_network_packets_total",
                    &[("cgroup", cg), ("direction", dir)],
                    v,
                );
            }
        }
        o.family(
            "procflow_machine_network_bytes",
            "counter",
            "IP bytes sent and received by the whole machine (the sum of the series above)",
        );
        for (dir, v) in [
            ("sent", self.total.tx_bytes),
            ("received", self.total.rx_bytes),
        ] {
            o.sample(
                "procflow_machine_network_bytes_total",
                &[("direction", dir)],
                v,
            );
        }
        o.family(
            "procflow_machine_network_packets",
            "counter",
            "IP packets sent and received by the whole machine",
        );
        for (dir, v) in [
            ("sent", self.total.tx_packets),
            ("received", self.total.rx_packets),
        ] {
            o.sample(
                "procflow_machine_network_packets_total",
                &[("direction", dir)],
                v,
            );
        }

        o.family(
            "procflow_flows_opened",
            "counter",
            "Flows seen, by protocol",
        );
        let mut opened: Vec<_> = self.opened.iter().collect();
        opened.sort();
        for (p, n) in &opened {
            o.sample("procflow_flows_opened_total", &[("proto", p)], **n);
        }
        o.family(
            "procflow_flows_open",
            "gauge",
            "Flows open now, by protocol",
        );
        let mut open: HashMap<&str, u64> = opened.iter().map(|(p, _)| (p.as_str(), 0)).collect();
        for s in self.flows.values() {
            *open.entry(&s.proto).or_default() += 1;
        }
        let mut open: Vec<_> = open.into_iter().collect();
        open.sort();
        for (p, n) in open {
            o.sample("procflow_flows_open", &[("proto", p)], n);
        }
        o.family(
            "procflow_blocked",
            "counter",
            "Attempts the rules blocked, by deciding rule and the hook that blocked",
        );
        let mut blocked: Vec<_> = self.blocked.iter().collect();
        blocked.sort();
        for ((rule, hook), n) in blocked {
            o.sample(
                "procflow_blocked_total",
                &[("rule", rule), ("hook", hook)],
                *n,
            );
        }
        self.render_health(&mut o);
        for (name, help, v) in self.ipfix.iter().flat_map(|x| x.counters()) {
            o.family(name, "counter", help);
            o.sample(&format!("{name}_total"), &[], v);
        }
        if o.om {
            o.s.push_str("# EOF\n");
        }
        o.s
    }

    fn render_health(&self, o: &mut Out) {
        let s = &self.stats;
        let n = |path: &[&str]| -> Option<f64> {
            let mut v = s;
            for p in path {
                v = v.get(p)?;
            }
            v.as_f64()
        };
        let counters: [(&str, &str, &[&str]); 9] = [
            (
                "procflow_kernel_events_lost",
                "Kernel records lost because the ring buffer was full (counters are not affected)",
                &["events_lost"],
            ),
            (
                "procflow_verdicts_suppressed",
                "Blocked attempts not recorded one by one (rate limit)",
                &["verdicts_suppressed"],
            ),
            (
                "procflow_socket_storage_failures",
                "Sockets the kernel could not give a context",
                &["storage_failures"],
            ),
            (
                "procflow_datagram_table_full",
                "Datagram flows not counted because the datagram table was full",
                &["datagram_table_full"],
            ),
            (
                "procflow_store_records_written",
                "Records written to the flow history",
                &["store", "records_written"],
            ),
            (
                "procflow_store_records_failed",
                "Records the flow history could not write",
                &["store", "records_failed"],
            ),
            (
                "procflow_store_batches_failed",
                "Batches the flow history could not write",
                &["store", "batches_failed"],
            ),
            (
                "procflow_log_records_failed",
                "Log lines not written (dropped or still waiting)",
                &["log", "records_failed"],
            ),
            (
                "procflow_api_subscribers_dropped",
                "API subscribers dropped because they did not keep up",
                &["api", "subscribers_dropped"],
            ),
        ];
        for (name, help, path) in counters {
            if let Some(v) = n(path) {
                o.family(name, "counter", help);
                o.sample(&format!("{name}_total"), &[], v as u64);
            }
        }
        let gauges: [(&str, &str, &[&str], f64); 7] = [
            (
                "procflow_ring_buffer_peak_bytes",
                "The most bytes seen waiting in the kernel's ring buffer of records",
                &["ring_buffer_peak"],
                1.0,
            ),
            (
                "procflow_ring_buffer_size_bytes",
                "The size of the kernel's ring buffer of records",
                &["ring_buffer_size"],
                1.0,
            ),
            (
                "procflow_socket_contexts",
                "Sockets with a context in the kernel",
                &["refresh", "socket_contexts"],
                1.0,
            ),
            (
                "procflow_datagram_table_entries",
                "Entries in the kernel's datagram table",
                &["refresh", "datagram_entries"],
                1.0,
            ),
            (
                "procflow_datagram_table_capacity",
                "Entries the kernel's datagram table can hold",
                &["datagram_capacity"],
                1.0,
            ),
            (
                "procflow_startup_scan_seconds",
                "How long the start-up scan of existing sockets took",
                &["scan_ms"],
                1e-3,
            ),
            (
                "procflow_store_write_seconds",
                "How long the flow history's last write took (records wait that long)",
                &["store", "last_write_ms"],
                1e-3,
            ),
        ];
        for (name, help, path, scale) in gauges {
            if let Some(v) = n(path) {
                o.family(name, "gauge", help);
                o.sample_f(name, &[], v * scale);
            }
        }
        o.family(
            "procflow_refresh_seconds",
            "gauge",
            "How long the last reading of the live sockets' counters took",
        );
        o.sample_f(
            "procflow_refresh_seconds",
            &[],
            n(&["refresh", "last_ms"]).unwrap_or(0.0) * 1e-3,
        );
        o.family(
            "procflow_counters_read_timestamp_seconds",
            "gauge",
            "When the live flows' counters were last read from the kernel (the traffic above is as of then)",
        );
        o.sample_f(
            "procflow_counters_read_timestamp_seconds",
            &[],
            self.read_at_ns as f64 / 1e9,
        );
        o.family(
            "procflow_metrics_records_lost",
            "counter",
            "Records the metrics exporter could not take in time (later records of the same flows make up for them)",
        );
        o.sample("procflow_metrics_records_lost_total", &[], self.lost);
        o.family(
            "procflow_metrics_series_untracked",
            "counter",
            "Executables and cgroups counted in other without ever being ranked (too many distinct ones)",
        );
        o.sample(
            "procflow_metrics_series_untracked_total",
            &[],
            self.programs.untracked + self.cgroups.untracked,
        );
        o.family("procflow_build", "info", "procflow's version");
        o.sample(
            "procflow_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
    }
}

/// The text being written, in either format.
struct Out {
    s: String,
    om: bool,
}

fn escape(v: &str) -> String {
    let mut e = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => e.push_str("\\\\"),
            '"' => e.push_str("\\\""),
            '\n' => e.push_str("\\n"),
            c => e.push(c),
        }
    }
    e
}

impl Out {
    /// HELP and TYPE of a family; `name` without `_total` (OpenMetrics
    /// names counter families so; Prometheus's text format names them
    /// with it).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let (name, kind) = match (self.om, kind) {
            (false, "counter") => (format!("{name}_total"), "counter"),
            (false, "info") => (format!("{name}_info"), "gauge"),
            (true, _) | (false, _) => (name.to_string(), kind),
        };
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                let _ = write!(self.s, "{k}=\"{}\"", escape(v));
            }
            self.s.push('}');
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.s, " {v}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.s, " {v}");
    }
}

/// The exporter's address, bound before anything else starts (a taken
/// address stops procflow at once), not yet serving.
pub struct Bound {
    listener: TcpListener,
    top: usize,
}

/// Binds `--metrics`' address, when it is given.
pub fn bind(args: &MetricsArgs) -> Result<Option<Bound>> {
    let Some(addr) = args.metrics else {
        return Ok(None);
    };
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    Ok(Some(Bound {
        listener,
        top: args.metrics_top as usize,
    }))
}

/// The running exporter: a thread that takes the records, and the HTTP
/// server's.
pub struct Exporter;

impl Exporter {
    /// Starts serving on the bound address.
    pub fn start(
        bound: Option<Bound>,
        hub: &Arc<Hub>,
        ipfix: Option<Arc<crate::ipfix::IpfixStats>>,
    ) -> Result<Option<Exporter>> {
        let Some(Bound { listener, top }) = bound else {
            return Ok(None);
        };
        let addr = listener.local_addr()?;
        let mut m = Metrics::new(top);
        m.ipfix = ipfix;
        let metrics = Arc::new(Mutex::new(m));
        let obs = hub.observe();
        let m = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for item in obs.rx.iter() {
                    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                    match item {
                        Observed::Record(r) => g.record(&r),
                        Observed::Tick { now_ns, fresh } => g.tick(now_ns, fresh),
                    }
                    g.lost = obs.lost.load(Ordering::Relaxed);
                }
            })?;
        let busy = Arc::new(AtomicUsize::new(0));
        let hub = Arc::clone(hub);
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        let _ = reply(&conn, "503 Service Unavailable", "text/plain", "busy\n");
                        continue;
                    }
                    let m = Arc::clone(&metrics);
                    let b = Arc::clone(&busy);
                    let h = Arc::clone(&hub);
                    let spawned = std::thread::Builder::new()
                        .name("metrics-conn".into())
                        .spawn(move || {
                            serve(conn, &m, &h);
                            b.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        tracing::info!("metrics: http://{addr}/metrics");
        Ok(Some(Exporter))
    }
}

fn reply(mut conn: &TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// The request line and whether the scraper accepts OpenMetrics.
fn read_request(conn: &TcpStream) -> Option<(String, String, bool)> {
    let mut r = BufReader::new(conn).take(MAX_REQUEST as u64);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut om = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("accept") {
                om = accepts_open_metrics(v);
            }
        }
    }
    Some((method, target, om))
}

/// Whether an Accept header prefers OpenMetrics to the text format.
pub fn accepts_open_metrics(accept: &str) -> bool {
    let q = |kind: &str| -> f64 {
        accept
            .split(',')
            .filter(|part| part.trim().starts_with(kind))
            .map(|part| {
                part.split(';')
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .filter_map(|v| v.parse::<f64>().ok())
                    .next()
                    .unwrap_or(1.0)
            })
            .fold(0.0, f64::max)
    };
    let om = q("application/openmetrics-text");
    om > 0.0 && om >= q("text/plain")
}

fn serve(conn: TcpStream, m: &Mutex<Metrics>, hub: &Hub) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let Some((method, target, om)) = read_request(&conn) else {
        let _ = reply(&conn, "400 Bad Request", "text/plain", "bad request\n");
        return;
    };
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        let _ = reply(
            &conn,
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n",
        );
        return;
    }
    if method != "GET" && method != "HEAD" {
        let _ = reply(
            &conn,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        );
        return;
    }
    let body = {
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        g.scrapes += 1;
        g.rebalance();
        g.render(om)
    };
    // The next scrape sees the counters of a reading made after this one.
    hub.want_reading();
    let kind = if om {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let _ = reply(
        &conn,
        "200 OK",
        kind,
        if method == "HEAD" { "" } else { &body },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(b: u64) -> Counters {
        Counters {
            tx_bytes: b,
            tx_packets: 1,
            ..Default::default()
        }
    }

    fn sum(top: &TopN<String>) -> u64 {
        top.series().iter().map(|(_, t)| bytes(t)).sum()
    }

    fn value(top: &TopN<String>, k: &str) -> Option<u64> {
        top.series()
            .iter()
            .find(|(key, _)| key.map(String::as_str) == Some(k))
            .map(|(_, t)| bytes(t))
    }

    #[test]
    fn the_first_n_get_series_the_rest_go_to_other_and_the_sum_is_exact() {
        let mut top = TopN::new(2);
        let mut total = 0;
        for (i, b) in [10u64, 20, 30, 40].iter().enumerate() {
            top.add(&format!("e{i}"), &t(*b));
            total += b;
        }
        let s = top.series();
        assert_eq!(s.len(), 3);
        assert_eq!(value(&top, "e0"), Some(10));
        assert_eq!(value(&top, "e1"), Some(20));
        assert_eq!(bytes(&s[2].1), 70, "other");
        assert_eq!(sum(&top), total);
    }

    #[test]
    fn a_series_that_loses_its_place_never_goes_down_and_nothing_is_lost() {
        let mut top = TopN::new(1);
        top.add(&"small".to_string(), &t(10));
        top.add(&"big".to_string(), &t(15));
        top.rebalance();
        assert_eq!(value(&top, "small"), Some(10), "not outgrown yet");
        assert_eq!(value(&top, "big"), None);
        top.add(&"big".to_string(), &t(10));
        top.rebalance();
        // big (25) > 2 x small (10): small goes into other with all it had.
        assert_eq!(value(&top, "small"), None);
        assert_eq!(
            value(&top, "big"),
            Some(0),
            "counts from when it got a place"
        );
        let other = bytes(&top.series().last().unwrap().1);
        assert_eq!(other, 35);
        top.add(&"small".to_string(), &t(1000));
        top.rebalance();
        top.rebalance();
        assert_eq!(
            value(&top, "small"),
            None,
            "out for good: other never goes down"
        );
        assert_eq!(bytes(&top.series().last().unwrap().1), 1035);
        assert_eq!(sum(&top), 1035);
        // Every shown value only grew across all the steps above.
    }

    #[test]
    fn many_distinct_keys_keep_the_series_bounded_and_the_sum_exact() {
        let mut top = TopN::new(5);
        let mut total = 0;
        let mut last: HashMap<Option<String>, u64> = HashMap::new();
        for i in 0..5000u64 {
            top.add(&format!("exe{i}"), &t(i % 97 + 1));
            total += i % 97 + 1;
            top.rebalance();
            let s = top.series();
            assert!(s.len() <= 6);
            for (k, v) in &s {
                let k = k.cloned();
                let before = last.insert(k.clone(), bytes(v)).unwrap_or(0);
                assert!(bytes(v) >= before, "{k:?} went down");
            }
        }
        assert_eq!(sum(&top), total);
        assert!(top.untracked > 0);
    }

    fn flow(id: &str, exe: &str, tx: u64, rx: u64, closed: bool) -> Record {
        let mut r = FlowRecord::example(id);
        r.process.as_mut().unwrap().exe = Some(exe.into());
        r.counters.tx_bytes = tx;
        r.counters.rx_bytes = rx;
        r.counters.tx_packets = tx / 100;
        r.counters.rx_packets = rx / 100;
        if closed {
            r.state = FlowState::Closed;
        }
        Record::Flow(r)
    }

    #[test]
    fn flow_records_count_their_growth_once_and_close() {
        let mut m = Metrics::new(50);
        m.record(&flow("1", "/usr/bin/a", 100, 0, false));
        m.record(&flow("1", "/usr/bin/a", 300, 200, false));
        m.record(&flow("1", "/usr/bin/a", 300, 200, false));
        m.record(&flow("2", "/usr/bin/b", 500, 0, true));
        let text = m.render(false);
        assert!(
            text.contains(
                r#"procflow_network_bytes_total{exe="/usr/bin/a",user="root",direction="sent"} 300"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"procflow_network_bytes_total{exe="/usr/bin/a",user="root",direction="received"} 200"#
        ));
        assert!(text.contains(
            r#"procflow_network_bytes_total{exe="/usr/bin/b",user="root",direction="sent"} 500"#
        ));
        assert!(text.contains(r#"procflow_machine_network_bytes_total{direction="sent"} 800"#));
        assert!(text.contains(r#"procflow_flows_opened_total{proto="tcp"} 2"#));
        assert!(text.contains(r#"procflow_flows_open{proto="tcp"} 1"#));
        assert!(text.contains("# TYPE procflow_network_bytes_total counter"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn open_metrics_names_counter_families_without_total_and_ends_with_eof() {
        let mut m = Metrics::new(50);
        m.record(&flow("1", "/usr/bin/a\"q", 100, 0, false));
        let text = m.render(true);
        assert!(text.contains("# TYPE procflow_network_bytes counter"));
        assert!(
            text.contains(r#"exe="/usr/bin/a\"q""#),
            "labels are escaped"
        );
        assert!(text.contains("# TYPE procflow_build info"));
        assert!(text.ends_with("# EOF\n"));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, _) = l.split_once(['{', ' ']).unwrap();
            assert!(name.starts_with("procflow_"), "{l}");
        }
    }

    #[test]
    fn blocked_attempts_count_by_rule_and_hook() {
        let mut m = Metrics::new(50);
        let r = FlowRecord::example("9");
        let v = |rule: Option<&str>, hook: &'static str| {
            Record::Verdict(procflow_core::VerdictRecord {
                kind: procflow_core::VerdictRecord::KIND,
                time: r.start.clone(),
                verdict: procflow_core::flow::Verdict::Block,
                rule: rule.map(String::from),
                rule_index: rule.map(|_| 0),
                generation: 1,
                hook,
                proto: r.proto,
                family: 4,
                direction: r.direction,
                local_ip: r.local_ip,
                local_port: r.local_port,
                remote_ip: r.remote_ip,
                remote_port: r.remote_port,
                process: r.process.clone().unwrap(),
                netns: 1,
                socket: 9,
            })
        };
        m.record(&v(Some("no-curl"), "connect"));
        m.record(&v(Some("no-curl"), "connect"));
        m.record(&v(None, "sendmsg"));
        let text = m.render(false);
        assert!(text.contains(r#"procflow_blocked_total{rule="no-curl",hook="connect"} 2"#));
        assert!(text.contains(r#"procflow_blocked_total{rule="(default)",hook="sendmsg"} 1"#));
    }

    #[test]
    fn the_ipfix_exporters_counters_are_shown_when_it_runs() {
        let mut m = Metrics::new(50);
        assert!(!m.render(false).contains("procflow_ipfix"));
        let x = Arc::new(crate::ipfix::IpfixStats::default());
        x.records_dropped.store(7, Ordering::Relaxed);
        m.ipfix = Some(x);
        let text = m.render(false);
        assert!(
            text.contains("# TYPE procflow_ipfix_records_sent_total counter"),
            "{text}"
        );
        assert!(
            text.contains("procflow_ipfix_records_dropped_total 7"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_accept_headers_are_told_apart() {
        assert!(accepts_open_metrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!accepts_open_metrics("text/plain;version=0.0.4"));
        assert!(!accepts_open_metrics("*/*"));
        assert!(!accepts_open_metrics(
            "text/plain,application/openmetrics-text;q=0.5"
        ));
    }
}
