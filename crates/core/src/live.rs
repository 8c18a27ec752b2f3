//! Live state: what `procflow run` publishes to its viewers.
//!
//! The collector turns kernel records into [`Record`]s, the one record
//! model every consumer takes (the log, the store, the API, exporters).
//! [`LiveState`] is one consumer: it keeps the open flows, totals since
//! start by process, remote host and service port, the last blocked
//! attempts and the rules in force, and gives a [`Snapshot`] of all of it,
//! or the [`Delta`]s that changed it, each with a sequence number.
//!
//! Rates are computed at [`LiveState::tick`], which the collector calls
//! about once a second with the time (Unix nanoseconds): a tick keeps the
//! totals of that moment, and a rate is the growth since the tick at least
//! 1 s (or 10 s) before, over the time between them. Time is passed in, so
//! rates are unit tested at known times.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::enforcement::{RulesOutcome, RulesRecord, VerdictRecord};
use crate::flow::{Direction, FlowRecord, FlowState, Origin, Proto};
use crate::identity::reason;

/// Every record the collector produces, for every consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Flow(FlowRecord),
    Verdict(VerdictRecord),
    Rules(RulesRecord),
    /// The stats record (procflow's own health), periodic and final.
    Stats(serde_json::Value),
}

/// Bytes per second sent and received, over the last second and the last
/// ten seconds (0 until two ticks are that far apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub tx_1s: f64,
    pub rx_1s: f64,
    pub tx_10s: f64,
    pub rx_10s: f64,
}

/// Bytes and packets, both ways: IP level, as on the wire, and the
/// transport payload (what the applications sent and received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    #[serde(default)]
    pub tx_payload: u64,
    #[serde(default)]
    pub rx_payload: u64,
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_packets += o.rx_packets;
        self.tx_payload += o.tx_payload;
        self.rx_payload += o.rx_payload;
    }
}

/// The owner of a flow, as the API shows it. `unknown` says why a field
/// is missing, so no row is ever just "unknown".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LiveOwner {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// Why the executable (or the whole owner) is not known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unknown: Option<String>,
}

/// Why a flow without a process record has none.
pub const KERNEL_SOCKET: &str = "kernel socket (no process has used it)";
/// A flow found by the start-up scan whose owner exited before it was named.
pub const FOUND_AT_START: &str = "found at start, owner exited";

impl LiveOwner {
    fn of(r: &FlowRecord) -> LiveOwner {
        match &r.process {
            None => LiveOwner {
                comm: "[kernel]".into(),
                unknown: Some(KERNEL_SOCKET.into()),
                ..Default::default()
            },
            Some(p) => {
                let mut o = LiveOwner::of_identity(p);
                if r.origin == Origin::Startup && o.unknown.as_deref() == Some(reason::EXITED) {
                    o.unknown = Some(FOUND_AT_START.to_string());
                }
                o
            }
        }
    }

    fn of_identity(p: &crate::identity::ProcessIdentity) -> LiveOwner {
        LiveOwner {
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            user: p.user.clone(),
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            cgroup: p.cgroup.clone(),
            unknown: p.exe_unknown.clone(),
        }
    }

    /// A short name for a row: the executable, else the comm with the
    /// reason.
    pub fn label(&self) -> String {
        match (&self.exe, &self.unknown) {
            (Some(e), _) => e.clone(),
            // No process at all: the reason is the name.
            (None, Some(why)) if self.pid == 0 => format!("[{why}]"),
            (None, Some(why)) => format!("{} ({why})", self.comm),
            (None, None) => self.comm.clone(),
        }
    }
}

/// One flow as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveFlow {
    pub flow_id: String,
    /// `open` or `closed`. (These three words are static strings: no
    /// allocation per flow.)
    pub state: Cow<'static, str>,
    pub proto: Cow<'static, str>,
    pub family: u8,
    /// `out`, `in` or `unknown`.
    pub direction: Cow<'static, str>,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub remote_name: Option<String>,
    pub netns: u64,
    /// Shared with the process's other flows in the live state (one copy
    /// of its names per process, not per flow).
    pub owner: Arc<LiveOwner>,
    pub start: String,
    pub end: Option<String>,
    #[serde(flatten)]
    pub traffic: Traffic,
    #[serde(default)]
    pub rate: Rates,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule: Option<String>,
}

impl LiveFlow {
    pub fn of(r: &FlowRecord) -> LiveFlow {
        let c = &r.counters;
        LiveFlow {
            flow_id: r.flow_id.clone(),
            state: match r.state {
                FlowState::Open => "open".into(),
                FlowState::Closed => "closed".into(),
            },
            proto: match r.proto {
                Proto::Tcp => "tcp".into(),
                Proto::Mptcp => "mptcp".into(),
                Proto::Udp => "udp".into(),
                Proto::Icmp => "icmp".into(),
                Proto::Icmpv6 => "icmpv6".into(),
                p => p.to_string().into(),
            },
            family: r.family,
            direction: direction_name(r.direction).into(),
            local_ip: r.local_ip,
            local_port: r.local_port,
            remote_ip: r.remote_ip,
            remote_port: r.remote_port,
            remote_name: r.remote_name.clone(),
            netns: r.netns,
            owner: Arc::new(LiveOwner::of(r)),
            start: r.start.clone(),
            end: r.end.clone(),
            traffic: Traffic {
                tx_bytes: c.tx_bytes,
                rx_bytes: c.rx_bytes,
                tx_packets: c.tx_packets,
                rx_packets: c.rx_packets,
                tx_payload: c.tx_payload,
                rx_payload: c.rx_payload,
            },
            rate: Rates::default(),
            verdict: r.verdict.map(|v| {
                match v {
                    crate::flow::Verdict::Allow => "allow",
                    crate::flow::Verdict::Block => "block",
                }
                .into()
            }),
            rule: r.rule.clone(),
        }
    }

    /// The port that names the service: the remote port of outgoing flows,
    /// the local port of incoming ones.
    pub fn service_port(&self) -> u16 {
        if self.direction == "in" {
            self.local_port
        } else {
            self.remote_port
        }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Out => "out",
        Direction::In => "in",
        Direction::Unknown => "unknown",
    }
}

/// One process: totals since procflow started (its open flows and the
/// ones that closed), rates, open flows and blocked attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveProcess {
    #[serde(flatten)]
    pub owner: LiveOwner,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub rate: Rates,
    pub open_flows: usize,
    /// Flows seen since start (open and closed).
    pub flows: u64,
    pub blocked: u64,
}

/// One remote host: totals since start over all processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRemote {
    pub ip: IpAddr,
    pub name: Option<String>,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub rate: Rates,
    pub open_flows: usize,
    pub flows: u64,
}

/// One service port and protocol: totals since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivePort {
    pub proto: String,
    pub port: u16,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub rate: Rates,
    pub open_flows: usize,
    pub flows: u64,
}

/// A blocked attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub time: String,
    pub rule: Option<String>,
    pub hook: String,
    pub proto: String,
    pub direction: String,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub user: Option<String>,
}

impl Blocked {
    pub fn of(v: &VerdictRecord) -> Blocked {
        Blocked {
            time: v.time.clone(),
            rule: v.rule.clone(),
            hook: v.hook.into(),
            proto: v.proto.to_string(),
            direction: direction_name(v.direction).into(),
            local_ip: v.local_ip,
            local_port: v.local_port,
            remote_ip: v.remote_ip,
            remote_port: v.remote_port,
            pid: v.process.pid,
            comm: v.process.comm.clone(),
            exe: v.process.exe.clone(),
            user: v.process.user.clone(),
        }
    }
}

/// The rules in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesInForce {
    pub path: String,
    pub generation: u64,
    pub rules: usize,
    /// The last load or reload: `accepted` or `refused`.
    pub last_outcome: String,
    pub last_time: String,
    /// Why the last reload was refused.
    pub last_error: Option<String>,
}

/// Totals over the machine since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(flatten)]
    pub traffic: Traffic,
    pub rate: Rates,
    pub open_flows: usize,
    pub flows: u64,
    pub blocked: u64,
}

/// Everything live at one moment (`GET /v1/snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The sequence number of the last delta this snapshot includes: a
    /// subscription `after` it continues exactly from here.
    pub seq: u64,
    /// When the snapshot's rates were computed (the last tick), Unix ns.
    pub time_ns: u64,
    /// When the collector started, Unix ns.
    pub started_ns: u64,
    pub totals: Totals,
    pub processes: Vec<LiveProcess>,
    pub flows: Vec<LiveFlow>,
    pub remotes: Vec<LiveRemote>,
    pub ports: Vec<LivePort>,
    /// The last blocked attempts, oldest first.
    pub blocked: Vec<Blocked>,
    pub rules: Option<RulesInForce>,
    pub stats: serde_json::Value,
}

/// One change of the live state, with its sequence number
/// (`GET /v1/subscribe`, one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaMsg {
    pub seq: u64,
    #[serde(flatten)]
    pub delta: Delta,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Delta {
    /// A flow opened or its counters changed: its whole current state.
    Flow(LiveFlow),
    /// A flow ended: its final state.
    End(LiveFlow),
    Verdict(Blocked),
    Rules(RulesInForce),
    Stats {
        stats: serde_json::Value,
    },
    /// A tick: rates were computed at `time_ns` (totals and rates of the
    /// whole machine; per-process rates are in snapshots).
    Tick {
        time_ns: u64,
        totals: Totals,
    },
}

/// Blocked attempts kept for snapshots.
pub const BLOCKED_KEPT: usize = 200;
/// Processes, remotes and ports without open flows kept (the oldest are
/// forgotten past this).
pub const IDLE_KEPT: usize = 4096;

#[derive(Debug, Default, Clone)]
struct Acc {
    /// Counters of closed flows.
    closed: Traffic,
    flows: u64,
    blocked: u64,
    /// The last tick at which it had a new flow (for forgetting the idle).
    last_seen_tick: u64,
    rate: Rates,
    /// Totals (closed and open) at the recent ticks, oldest first.
    hist: VecDeque<(u64, Traffic)>,
}

/// A process, as a number: its pid, executable and comm hashed once per
/// flow record (never per tick).
type ProcKey = u64;
/// A protocol and service port, hashed likewise.
type PortKey = u64;

fn hash_of(v: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(v)
}

fn proc_key(o: &LiveOwner) -> ProcKey {
    hash_of(&(o.pid, &o.exe, &o.comm))
}

#[derive(Debug)]
struct FlowEntry {
    flow: LiveFlow,
    proc: ProcKey,
    port: PortKey,
    /// Its traffic at the recent ticks, oldest first.
    hist: VecDeque<(u64, Traffic)>,
}

/// The live state: see the module documentation.
#[derive(Debug, Default)]
pub struct LiveState {
    seq: u64,
    started_ns: u64,
    flows: HashMap<String, FlowEntry>,
    procs: HashMap<ProcKey, (Arc<LiveOwner>, Acc)>,
    remotes: HashMap<IpAddr, (Option<String>, Acc)>,
    ports: HashMap<PortKey, ((String, u16), Acc)>,
    totals: Acc,
    blocked: VecDeque<Blocked>,
    rules: Option<RulesInForce>,
    stats: serde_json::Value,
    tick_count: u64,
    last_tick_ns: u64,
}

/// Growth over the last second and the last ten from `hist` (oldest
/// first) to `now`, unless ticks stopped (nobody watched) long enough that
/// it would average over much more than the window.
fn rates(now: &Traffic, now_ns: u64, hist: &VecDeque<(u64, Traffic)>) -> Rates {
    let over = |secs: u64| -> (f64, f64) {
        let Some((t, then)) = hist
            .iter()
            .rev()
            .find(|(t, _)| now_ns.saturating_sub(*t) >= secs * 1_000_000_000)
            .filter(|(t, _)| now_ns - t <= (2 * secs + 1) * 1_000_000_000)
        else {
            return (0.0, 0.0);
        };
        let dt = (now_ns - t) as f64 / 1e9;
        (
            now.tx_bytes.saturating_sub(then.tx_bytes) as f64 / dt,
            now.rx_bytes.saturating_sub(then.rx_bytes) as f64 / dt,
        )
    };
    let (tx_1s, rx_1s) = over(1);
    let (tx_10s, rx_10s) = over(10);
    Rates {
        tx_1s,
        rx_1s,
        tx_10s,
        rx_10s,
    }
}

/// Keeps `now` in `hist`, and ticks back to 10 s before it and one older.
fn remember(hist: &mut VecDeque<(u64, Traffic)>, now_ns: u64, now: Traffic) {
    hist.push_back((now_ns, now));
    while hist.len() > 2 && now_ns.saturating_sub(hist[1].0) >= 10_000_000_000 {
        hist.pop_front();
    }
}

/// Past [`IDLE_KEPT`] entries, forgets those longest without a new flow,
/// except the ones `open` flows use.
fn forget_oldest<K: std::hash::Hash + Eq + Copy + Ord, V>(
    map: &mut HashMap<K, (V, Acc)>,
    open: impl Iterator<Item = K>,
) {
    if map.len() <= IDLE_KEPT {
        return;
    }
    let open: std::collections::HashSet<K> = open.collect();
    let mut idle: Vec<(u64, K)> = map
        .iter()
        .filter(|(k, _)| !open.contains(*k))
        .map(|(k, (_, a))| (a.last_seen_tick, *k))
        .collect();
    idle.sort_unstable();
    let excess = idle.len().saturating_sub(IDLE_KEPT);
    for (_, k) in idle.into_iter().take(excess) {
        map.remove(&k);
    }
}

/// Totals now (closed flows plus open ones) by process, remote and port.
#[derive(Debug, Default)]
struct Current {
    procs: HashMap<ProcKey, Traffic>,
    remotes: HashMap<IpAddr, Traffic>,
    ports: HashMap<PortKey, Traffic>,
    machine: Traffic,
}

impl LiveState {
    pub fn new(started_ns: u64) -> LiveState {
        LiveState {
            started_ns,
            stats: serde_json::Value::Null,
            ..Default::default()
        }
    }

    /// The sequence number of the last delta.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    fn delta(&mut self, d: Delta) -> DeltaMsg {
        self.seq += 1;
        DeltaMsg {
            seq: self.seq,
            delta: d,
        }
    }

    /// Applies one record; returns the deltas it made (none when nothing
    /// visible changed).
    pub fn apply(&mut self, rec: &Record) -> Vec<DeltaMsg> {
        match rec {
            Record::Flow(r) => self.flow(r).into_iter().collect(),
            Record::Verdict(v) => {
                use crate::flow::Verdict;
                if v.verdict != Verdict::Block {
                    return Vec::new();
                }
                let b = Blocked::of(v);
                let p = &v.process;
                let owner = LiveOwner::of_identity(p);
                let tick = self.tick_count;
                let (_, acc) = self
                    .procs
                    .entry(proc_key(&owner))
                    .or_insert_with(|| (owner.into(), Acc::default()));
                acc.blocked += 1;
                acc.last_seen_tick = tick;
                self.totals.blocked += 1;
                if self.blocked.len() >= BLOCKED_KEPT {
                    self.blocked.pop_front();
                }
                self.blocked.push_back(b.clone());
                vec![self.delta(Delta::Verdict(b))]
            }
            Record::Rules(r) => {
                let prev = self.rules.take();
                let in_force = RulesInForce {
                    path: r.path.clone(),
                    generation: r.generation,
                    rules: r.rules,
                    last_outcome: r.outcome.as_str().into(),
                    last_time: r.time.clone(),
                    last_error: r.error.clone(),
                };
                // A refusal leaves the set in force; say so with its count.
                let in_force = match (r.outcome, prev) {
                    (RulesOutcome::Refused, Some(p)) => RulesInForce {
                        rules: p.rules,
                        ..in_force
                    },
                    _ => in_force,
                };
                self.rules = Some(in_force.clone());
                vec![self.delta(Delta::Rules(in_force))]
            }
            Record::Stats(s) => {
                self.stats = s.clone();
                vec![self.delta(Delta::Stats { stats: s.clone() })]
            }
        }
    }

    fn flow(&mut self, r: &FlowRecord) -> Option<DeltaMsg> {
        let mut f = LiveFlow::of(r);
        let closed = r.state == FlowState::Closed;
        let proc = proc_key(&f.owner);
        let port = hash_of(&(&f.proto, f.service_port()));
        let tick = self.tick_count;
        let prev = self.flows.get_mut(&f.flow_id);
        let known = prev.is_some();
        if let Some(e) = prev {
            f.rate = e.flow.rate;
            if !closed && e.flow == f {
                return None; // nothing changed
            }
            if e.proc != proc {
                // Another owner (a socket passed on): the new one's from now.
                e.proc = proc;
                e.hist.clear();
            }
        } else {
            // A new flow (or one whose first record is its last).
            let entry = self
                .procs
                .entry(proc)
                .or_insert_with(|| (Arc::clone(&f.owner), Acc::default()));
            entry.1.flows += 1;
            entry.1.last_seen_tick = tick;
            let re = self
                .remotes
                .entry(f.remote_ip)
                .or_insert_with(|| (None, Acc::default()));
            re.1.flows += 1;
            re.1.last_seen_tick = tick;
            let pe = self
                .ports
                .entry(port)
                .or_insert_with(|| ((f.proto.to_string(), f.service_port()), Acc::default()));
            pe.1.flows += 1;
            pe.1.last_seen_tick = tick;
            self.totals.flows += 1;
        }
        if let Some((o, _)) = self.procs.get_mut(&proc) {
            if **o != *f.owner {
                *o = Arc::clone(&f.owner); // a name or cgroup learned late
            } else {
                f.owner = Arc::clone(o); // one copy of the names per process
            }
        }
        if f.remote_name.is_some() {
            if let Some(re) = self.remotes.get_mut(&f.remote_ip) {
                re.0.clone_from(&f.remote_name);
            }
        }
        if closed {
            self.flows.remove(&f.flow_id);
            let t = f.traffic;
            if let Some((_, a)) = self.procs.get_mut(&proc) {
                a.closed.add(&t);
            }
            if let Some((_, a)) = self.remotes.get_mut(&f.remote_ip) {
                a.closed.add(&t);
            }
            if let Some((_, a)) = self.ports.get_mut(&port) {
                a.closed.add(&t);
            }
            self.totals.closed.add(&t);
            Some(self.delta(Delta::End(f)))
        } else {
            match self.flows.get_mut(&f.flow_id) {
                Some(e) => e.flow.clone_from(&f),
                None if !known => {
                    self.flows.insert(
                        f.flow_id.clone(),
                        FlowEntry {
                            flow: f.clone(),
                            proc,
                            port,
                            hist: VecDeque::new(),
                        },
                    );
                }
                None => {}
            }
            Some(self.delta(Delta::Flow(f)))
        }
    }

    /// Totals now: closed flows plus open ones.
    fn current(&self) -> Current {
        let mut t = Current {
            machine: self.totals.closed,
            ..Default::default()
        };
        t.procs.reserve(self.procs.len());
        for (k, (_, a)) in &self.procs {
            t.procs.insert(*k, a.closed);
        }
        for (k, (_, a)) in &self.remotes {
            t.remotes.insert(*k, a.closed);
        }
        for (k, (_, a)) in &self.ports {
            t.ports.insert(*k, a.closed);
        }
        for e in self.flows.values() {
            let x = &e.flow.traffic;
            t.procs.entry(e.proc).or_default().add(x);
            t.remotes.entry(e.flow.remote_ip).or_default().add(x);
            t.ports.entry(e.port).or_default().add(x);
            t.machine.add(x);
        }
        t
    }

    /// Computes rates at `now_ns` and keeps this moment's totals for the
    /// next ticks; forgets the oldest idle processes, remotes and ports
    /// past [`IDLE_KEPT`]. Returns the tick's delta.
    pub fn tick(&mut self, now_ns: u64) -> DeltaMsg {
        let cur = self.current();
        let last = self.last_tick_ns;
        // What appeared after the last tick had nothing then.
        let step = |hist: &mut VecDeque<(u64, Traffic)>, now: Traffic| {
            if hist.is_empty() && last > 0 {
                hist.push_back((last, Traffic::default()));
            }
            let r = rates(&now, now_ns, hist);
            remember(hist, now_ns, now);
            r
        };
        self.totals.rate = step(&mut self.totals.hist, cur.machine);
        for (k, (_, a)) in self.procs.iter_mut() {
            a.rate = step(&mut a.hist, cur.procs.get(k).copied().unwrap_or_default());
        }
        for (k, (_, a)) in self.remotes.iter_mut() {
            a.rate = step(&mut a.hist, cur.remotes.get(k).copied().unwrap_or_default());
        }
        for (k, (_, a)) in self.ports.iter_mut() {
            a.rate = step(&mut a.hist, cur.ports.get(k).copied().unwrap_or_default());
        }
        for e in self.flows.values_mut() {
            e.flow.rate = step(&mut e.hist, e.flow.traffic);
        }
        self.tick_count += 1;
        self.last_tick_ns = now_ns;
        self.forget_idle();
        let totals = self.totals();
        self.delta(Delta::Tick {
            time_ns: now_ns,
            totals,
        })
    }

    fn forget_idle(&mut self) {
        let flows = &self.flows;
        forget_oldest(&mut self.procs, flows.values().map(|e| e.proc));
        forget_oldest(&mut self.remotes, flows.values().map(|e| e.flow.remote_ip));
        forget_oldest(&mut self.ports, flows.values().map(|e| e.port));
    }

    fn totals(&self) -> Totals {
        let mut traffic = self.totals.closed;
        for e in self.flows.values() {
            traffic.add(&e.flow.traffic);
        }
        Totals {
            traffic,
            rate: self.totals.rate,
            open_flows: self.flows.len(),
            flows: self.totals.flows,
            blocked: self.totals.blocked,
        }
    }

    /// Everything live now, sorted by traffic (largest first).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_with(&|_| true)
    }

    /// [`LiveState::snapshot`] with only the flows `keep` keeps (the
    /// aggregates still count every flow).
    pub fn snapshot_with(&self, keep: &dyn Fn(&LiveFlow) -> bool) -> Snapshot {
        let cur = self.current();
        let mut open_by_proc: HashMap<ProcKey, usize> = HashMap::new();
        let mut open_by_remote: HashMap<IpAddr, usize> = HashMap::new();
        let mut open_by_port: HashMap<PortKey, usize> = HashMap::new();
        for e in self.flows.values() {
            *open_by_proc.entry(e.proc).or_default() += 1;
            *open_by_remote.entry(e.flow.remote_ip).or_default() += 1;
            *open_by_port.entry(e.port).or_default() += 1;
        }
        let bytes = |t: &Traffic| t.tx_bytes + t.rx_bytes;
        let mut processes: Vec<LiveProcess> = self
            .procs
            .iter()
            .map(|(k, (o, a))| LiveProcess {
                owner: LiveOwner::clone(o),
                traffic: cur.procs.get(k).copied().unwrap_or_default(),
                rate: a.rate,
                open_flows: open_by_proc.get(k).copied().unwrap_or(0),
                flows: a.flows,
                blocked: a.blocked,
            })
            .collect();
        processes.sort_by(|a, b| {
            bytes(&b.traffic)
                .cmp(&bytes(&a.traffic))
                .then(a.owner.pid.cmp(&b.owner.pid))
                .then(a.owner.exe.cmp(&b.owner.exe))
        });
        let mut remotes: Vec<LiveRemote> = self
            .remotes
            .iter()
            .map(|(ip, (name, a))| LiveRemote {
                ip: *ip,
                name: name.clone(),
                traffic: cur.remotes.get(ip).copied().unwrap_or_default(),
                rate: a.rate,
                open_flows: open_by_remote.get(ip).copied().unwrap_or(0),
                flows: a.flows,
            })
            .collect();
        remotes.sort_by(|a, b| {
            bytes(&b.traffic)
                .cmp(&bytes(&a.traffic))
                .then(a.ip.cmp(&b.ip))
        });
        let mut ports: Vec<LivePort> = self
            .ports
            .iter()
            .map(|(k, ((proto, port), a))| LivePort {
                proto: proto.clone(),
                port: *port,
                traffic: cur.ports.get(k).copied().unwrap_or_default(),
                rate: a.rate,
                open_flows: open_by_port.get(k).copied().unwrap_or(0),
                flows: a.flows,
            })
            .collect();
        ports.sort_by(|a, b| {
            bytes(&b.traffic)
                .cmp(&bytes(&a.traffic))
                .then((&a.proto, a.port).cmp(&(&b.proto, b.port)))
        });
        let mut flows: Vec<LiveFlow> = self
            .flows
            .values()
            .filter(|e| keep(&e.flow))
            .map(|e| e.flow.clone())
            .collect();
        flows.sort_by(|a, b| {
            bytes(&b.traffic)
                .cmp(&bytes(&a.traffic))
                .then(a.flow_id.cmp(&b.flow_id))
        });
        Snapshot {
            seq: self.seq,
            time_ns: self.last_tick_ns,
            started_ns: self.started_ns,
            totals: self.totals(),
            processes,
            flows,
            remotes,
            ports,
            blocked: self.blocked.iter().cloned().collect(),
            rules: self.rules.clone(),
            stats: self.stats.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Counters, Proto, Verdict};
    use crate::identity::ProcessIdentity;
    use std::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn flow(id: &str, pid: u32, exe: &str, remote: u8, tx: u64, rx: u64) -> FlowRecord {
        FlowRecord {
            kind: "flow",
            flow_id: id.into(),
            state: FlowState::Open,
            proto: Proto::Tcp,
            family: 4,
            direction: Direction::Out,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, remote)),
            remote_port: 443,
            remote_name: None,
            process: Some(ProcessIdentity {
                pid,
                comm: exe.rsplit('/').next().unwrap().into(),
                exe: Some(exe.into()),
                ..Default::default()
            }),
            netns: 1,
            start: "2026-12-01T00:00:00Z".into(),
            end: None,
            counters: Counters {
                tx_bytes: tx,
                rx_bytes: rx,
                tx_packets: 1,
                rx_packets: 1,
                ..Default::default()
            },
            before_start: None,
            origin: Origin::Connect,
            link: None,
            verdict: None,
            rule: None,
        }
    }

    fn closed(mut r: FlowRecord) -> FlowRecord {
        r.state = FlowState::Closed;
        r.end = Some("2026-12-01T00:00:05Z".into());
        r
    }

    fn proc_of(s: &Snapshot, pid: u32) -> &LiveProcess {
        s.processes.iter().find(|p| p.owner.pid == pid).unwrap()
    }

    #[test]
    fn the_flows_of_one_process_share_one_copy_of_its_names() {
        let mut l = LiveState::new(0);
        for id in ["1", "2", "3"] {
            l.apply(&Record::Flow(flow(id, 10, "/usr/bin/curl", 1, 1, 1)));
        }
        l.apply(&Record::Flow(flow("4", 11, "/usr/bin/ssh", 1, 1, 1)));
        let owner = |l: &LiveState, id: &str| Arc::clone(&l.flows[id].flow.owner);
        assert!(Arc::ptr_eq(&owner(&l, "1"), &owner(&l, "2")));
        assert!(Arc::ptr_eq(&owner(&l, "1"), &owner(&l, "3")));
        assert!(!Arc::ptr_eq(&owner(&l, "1"), &owner(&l, "4")));
        let curl = owner(&l, "1");
        assert!(Arc::ptr_eq(&curl, &l.procs[&proc_key(&curl)].0));
        // A name learned late is the process's from then on.
        let mut later = flow("5", 10, "/usr/bin/curl", 1, 1, 1);
        later.process.as_mut().unwrap().user = Some("alice".into());
        l.apply(&Record::Flow(later));
        let alice = owner(&l, "5");
        assert_eq!(alice.user.as_deref(), Some("alice"));
        assert!(Arc::ptr_eq(&alice, &l.procs[&proc_key(&alice)].0));
    }

    #[test]
    fn totals_since_start_add_closed_and_open_flows() {
        let mut l = LiveState::new(0);
        l.apply(&Record::Flow(flow("1", 10, "/usr/bin/curl", 1, 100, 1000)));
        l.apply(&Record::Flow(closed(flow(
            "1",
            10,
            "/usr/bin/curl",
            1,
            150,
            2000,
        ))));
        l.apply(&Record::Flow(flow("2", 10, "/usr/bin/curl", 2, 10, 20)));
        l.apply(&Record::Flow(flow("3", 11, "/usr/bin/ssh", 1, 5, 5)));
        let s = l.snapshot();
        let curl = proc_of(&s, 10);
        assert_eq!((curl.traffic.tx_bytes, curl.traffic.rx_bytes), (160, 2020));
        assert_eq!((curl.open_flows, curl.flows), (1, 2));
        assert_eq!(s.totals.traffic.tx_bytes, 165);
        assert_eq!(s.totals.open_flows, 2);
        assert_eq!(s.flows.len(), 2);
        let r1 = s
            .remotes
            .iter()
            .find(|r| r.ip.to_string() == "10.0.0.1")
            .unwrap();
        assert_eq!((r1.traffic.rx_bytes, r1.flows, r1.open_flows), (2005, 2, 1));
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.ports[0].traffic.tx_bytes, 165);
        // Largest first.
        assert_eq!(s.processes[0].owner.pid, 10);
    }

    #[test]
    fn rates_are_growth_over_the_time_between_ticks() {
        let mut l = LiveState::new(0);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 0, 0)));
        l.tick(100 * S);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 4000, 1000)));
        l.tick(102 * S); // 2 s later: 2,000 B/s out, 500 in
        let s = l.snapshot();
        let a = proc_of(&s, 10);
        assert_eq!((a.rate.tx_1s, a.rate.rx_1s), (2000.0, 500.0));
        assert_eq!(a.rate.tx_10s, 0.0, "no tick 10 s back yet");
        assert_eq!(s.flows[0].rate.tx_1s, 2000.0);
        assert_eq!(s.totals.rate.tx_1s, 2000.0);
        // Ten more ticks a second apart, 1,000 B more each.
        for i in 1..=10 {
            l.apply(&Record::Flow(flow(
                "1",
                10,
                "/bin/a",
                1,
                4000 + i * 1000,
                1000,
            )));
            l.tick((102 + i) * S);
        }
        let s = l.snapshot();
        let a = proc_of(&s, 10);
        assert_eq!(a.rate.tx_1s, 1000.0);
        assert_eq!(a.rate.tx_10s, 1000.0);
        assert_eq!(a.rate.rx_10s, 0.0);
    }

    #[test]
    fn rates_do_not_average_over_a_time_nobody_watched() {
        let mut l = LiveState::new(0);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 0, 0)));
        l.tick(100 * S);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 600_000, 0)));
        l.tick(400 * S); // five minutes without ticks
        assert_eq!(proc_of(&l.snapshot(), 10).rate.tx_1s, 0.0);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 601_000, 0)));
        l.tick(401 * S);
        assert_eq!(proc_of(&l.snapshot(), 10).rate.tx_1s, 1000.0);
    }

    #[test]
    fn a_snapshot_may_leave_flows_out_but_counts_them() {
        let mut l = LiveState::new(0);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 5, 5)));
        l.apply(&Record::Flow(flow("2", 11, "/bin/b", 1, 5, 5)));
        let s = l.snapshot_with(&|f| f.owner.pid == 11);
        assert_eq!(s.flows.len(), 1);
        assert_eq!(s.totals.open_flows, 2);
        assert_eq!(proc_of(&s, 10).open_flows, 1);
    }

    #[test]
    fn a_flow_that_closes_between_ticks_keeps_its_bytes_in_the_rate() {
        let mut l = LiveState::new(0);
        l.tick(10 * S);
        l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 100, 0)));
        l.apply(&Record::Flow(closed(flow("1", 10, "/bin/a", 1, 3000, 0))));
        l.tick(11 * S);
        let s = l.snapshot();
        assert!(s.flows.is_empty());
        assert_eq!(proc_of(&s, 10).rate.tx_1s, 3000.0);
        assert_eq!(proc_of(&s, 10).traffic.tx_bytes, 3000);
        assert_eq!(s.totals.rate.tx_1s, 3000.0);
    }

    #[test]
    fn deltas_are_numbered_and_unchanged_flows_make_none() {
        let mut l = LiveState::new(0);
        let d1 = l.apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 1, 1)));
        assert_eq!(d1.len(), 1);
        assert_eq!(d1[0].seq, 1);
        assert!(matches!(d1[0].delta, Delta::Flow(_)));
        assert!(l
            .apply(&Record::Flow(flow("1", 10, "/bin/a", 1, 1, 1)))
            .is_empty());
        let d2 = l.apply(&Record::Flow(closed(flow("1", 10, "/bin/a", 1, 2, 1))));
        assert_eq!(d2[0].seq, 2);
        assert!(matches!(&d2[0].delta, Delta::End(f) if f.traffic.tx_bytes == 2));
        assert_eq!(l.snapshot().seq, 2);
        let t = l.tick(S);
        assert_eq!(t.seq, 3);
        let line = serde_json::to_string(&d2[0]).unwrap();
        assert!(line.contains("\"type\":\"end\""), "{line}");
        let back: DeltaMsg = serde_json::from_str(&line).unwrap();
        assert_eq!(back, d2[0]);
    }

    #[test]
    fn blocked_attempts_count_per_process_and_keep_the_last() {
        let mut l = LiveState::new(0);
        let v = VerdictRecord {
            kind: VerdictRecord::KIND,
            time: "2026-12-01T00:00:00Z".into(),
            verdict: Verdict::Block,
            rule: Some("no-telnet".into()),
            rule_index: Some(0),
            generation: 1,
            hook: "connect",
            proto: Proto::Tcp,
            family: 4,
            direction: Direction::Out,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 0,
            remote_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 23,
            process: ProcessIdentity {
                pid: 77,
                comm: "telnet".into(),
                exe: Some("/usr/bin/telnet".into()),
                ..Default::default()
            },
            netns: 1,
            socket: 5,
        };
        for _ in 0..(BLOCKED_KEPT + 5) {
            l.apply(&Record::Verdict(v.clone()));
        }
        let s = l.snapshot();
        assert_eq!(s.blocked.len(), BLOCKED_KEPT);
        assert_eq!(s.totals.blocked, (BLOCKED_KEPT + 5) as u64);
        assert_eq!(proc_of(&s, 77).blocked, (BLOCKED_KEPT + 5) as u64);
        assert_eq!(s.blocked[0].rule.as_deref(), Some("no-telnet"));
    }

    #[test]
    fn a_flow_without_a_process_says_why() {
        let mut l = LiveState::new(0);
        let mut r = flow("9", 0, "/x", 1, 1, 1);
        r.process = None;
        l.apply(&Record::Flow(r));
        let mut r = flow("10", 5, "/x", 1, 1, 1);
        r.origin = Origin::Startup;
        let p = r.process.as_mut().unwrap();
        p.exe = None;
        p.exe_unknown = Some(reason::EXITED.into());
        l.apply(&Record::Flow(r));
        let s = l.snapshot();
        let k = s.flows.iter().find(|f| f.flow_id == "9").unwrap();
        assert_eq!(k.owner.unknown.as_deref(), Some(KERNEL_SOCKET));
        let st = s.flows.iter().find(|f| f.flow_id == "10").unwrap();
        assert_eq!(st.owner.unknown.as_deref(), Some(FOUND_AT_START));
        assert!(st.owner.label().contains(FOUND_AT_START));
        assert_eq!(k.owner.label(), format!("[{KERNEL_SOCKET}]"));
    }

    #[test]
    fn a_refused_reload_keeps_the_count_in_force() {
        let mut l = LiveState::new(0);
        let ok = RulesRecord {
            kind: RulesRecord::KIND,
            time: "t1".into(),
            generation: 1,
            outcome: RulesOutcome::Accepted,
            path: "/etc/procflow/rules.toml".into(),
            rules: 3,
            error: None,
        };
        l.apply(&Record::Rules(ok.clone()));
        l.apply(&Record::Rules(RulesRecord {
            time: "t2".into(),
            outcome: RulesOutcome::Refused,
            rules: 3,
            error: Some("rules.toml:2:1: bad".into()),
            ..ok
        }));
        let r = l.snapshot().rules.unwrap();
        assert_eq!(
            (r.generation, r.rules, r.last_outcome.as_str()),
            (1, 3, "refused")
        );
    }

    #[test]
    fn idle_processes_are_forgotten_past_the_bound() {
        let mut l = LiveState::new(0);
        for pid in 0..(IDLE_KEPT as u32 + 100) {
            let id = pid.to_string();
            l.apply(&Record::Flow(closed(flow(&id, pid, "/bin/a", 1, 1, 1))));
        }
        l.tick(S);
        let s = l.snapshot();
        assert_eq!(s.processes.len(), IDLE_KEPT);
        assert_eq!(
            s.totals.flows,
            IDLE_KEPT as u64 + 100,
            "totals keep everything"
        );
    }
}
