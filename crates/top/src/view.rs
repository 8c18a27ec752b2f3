//! The tables: each view's columns, and its rows built from a snapshot
//! (filtered, folded into a tree, sorted).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use procflow_core::live::{LiveFlow, LiveProcess, Snapshot};

use crate::fmt;

/// The views, in the order Tab cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Processes,
    Connections,
    Remotes,
    Ports,
    Blocked,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Processes,
        View::Connections,
        View::Remotes,
        View::Ports,
        View::Blocked,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            View::Processes => "processes",
            View::Connections => "connections",
            View::Remotes => "remote hosts",
            View::Ports => "ports",
            View::Blocked => "blocked attempts",
        }
    }

    /// What an empty table says.
    pub fn empty(self) -> &'static str {
        match self {
            View::Blocked => "no blocked attempts",
            _ => "no flows yet",
        }
    }

    /// The column a view is sorted by until a key chooses another.
    pub fn default_sort(self) -> ColId {
        match self {
            View::Processes | View::Remotes | View::Ports => ColId::RxRate,
            View::Connections => ColId::Rate,
            View::Blocked => ColId::Time,
        }
    }
}

/// A column, by what it shows (stable across the `a` reordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColId {
    Pid,
    User,
    TxRate,
    RxRate,
    Tx,
    Rx,
    Today,
    Conns,
    Blocked,
    Program,
    Proto,
    LPort,
    Remote,
    RPort,
    Service,
    Dir,
    State,
    Rate,
    Verdict,
    Rule,
    Ip,
    Name,
    Port,
    Flows,
    Time,
    Hook,
}

impl ColId {
    /// The rate column's cumulative twin and back, for `a`.
    pub fn twin(self) -> ColId {
        match self {
            ColId::TxRate => ColId::Tx,
            ColId::RxRate => ColId::Rx,
            ColId::Tx => ColId::TxRate,
            ColId::Rx => ColId::RxRate,
            c => c,
        }
    }
}

/// How a column is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub id: ColId,
    pub title: &'static str,
    pub right: bool,
    /// Width bounds (the content's width, within them).
    pub min: u16,
    pub max: u16,
    /// Takes the width the others leave (at least `min`).
    pub flex: bool,
    /// When the terminal is too narrow, columns with the highest `drop`
    /// go first; 0 is never dropped.
    pub drop: u8,
    /// Sorted largest first until reversed (traffic); else smallest first.
    pub desc: bool,
}

const fn col(id: ColId, title: &'static str, right: bool, min: u16, max: u16, drop: u8) -> Col {
    Col {
        id,
        title,
        right,
        min,
        max,
        flex: false,
        drop,
        desc: right,
    }
}

const fn flex(id: ColId, title: &'static str, min: u16) -> Col {
    Col {
        id,
        title,
        right: false,
        min,
        max: u16::MAX,
        flex: true,
        drop: 0,
        desc: false,
    }
}

const fn asc(mut c: Col) -> Col {
    c.desc = false;
    c
}

const fn desc(mut c: Col) -> Col {
    c.desc = true;
    c
}

/// The rate and total columns: rates first, or totals first (`a`), with
/// the trailing pair dropped first when narrow.
fn traffic_cols(cumulative: bool, lead_drop: u8, trail_drop: u8) -> Vec<Col> {
    let rates = [
        col(ColId::TxRate, "SENT/s", true, 10, 10, 0),
        col(ColId::RxRate, "RECV/s", true, 10, 10, 0),
    ];
    let totals = [
        col(ColId::Tx, "SENT", true, 8, 8, 0),
        col(ColId::Rx, "RECV", true, 8, 8, 0),
    ];
    let (mut lead, mut trail) = if cumulative {
        (totals, rates)
    } else {
        (rates, totals)
    };
    for c in lead.iter_mut() {
        c.drop = lead_drop;
    }
    for c in trail.iter_mut() {
        c.drop = trail_drop;
    }
    lead.into_iter().chain(trail).collect()
}

/// The columns of a view, left to right.
pub fn columns(view: View, cumulative: bool, today: bool) -> Vec<Col> {
    let mut v = Vec::new();
    match view {
        View::Processes => {
            v.push(asc(col(ColId::Pid, "PID", true, 5, 7, 2)));
            v.push(col(ColId::User, "USER", false, 5, 12, 7));
            let t = traffic_cols(cumulative, 0, 5);
            let today_at = if cumulative { 2 } else { 4 };
            v.extend_from_slice(&t[..today_at]);
            if today {
                v.push(col(ColId::Today, "TODAY", true, 8, 8, 8));
            }
            v.extend_from_slice(&t[today_at..]);
            v.push(col(ColId::Conns, "CONN", true, 5, 6, 4));
            v.push(col(ColId::Blocked, "BLK", true, 4, 7, 3));
            v.push(flex(ColId::Program, "PROGRAM", 22));
        }
        View::Connections => {
            v.push(col(ColId::Proto, "PROTO", false, 4, 6, 2));
            v.push(asc(col(ColId::LPort, "LPORT", true, 6, 6, 8)));
            v.push(flex(ColId::Remote, "REMOTE", 20));
            v.push(asc(col(ColId::RPort, "RPORT", true, 6, 6, 7)));
            v.push(col(ColId::Service, "SERVICE", false, 5, 10, 4));
            v.push(col(ColId::Dir, "DIR", false, 4, 4, 10));
            v.push(col(ColId::State, "STATE", false, 5, 7, 9));
            v.push(col(ColId::Tx, "SENT", true, 8, 8, 0));
            v.push(col(ColId::Rx, "RECV", true, 8, 8, 0));
            v.push(col(ColId::Rate, "RATE", true, 10, 10, 3));
            v.push(col(ColId::Verdict, "VERDICT", false, 6, 8, 5));
            v.push(col(ColId::Rule, "RULE", false, 5, 20, 6));
        }
        View::Remotes => {
            v.push(col(ColId::Ip, "IP", false, 8, 39, 0));
            v.extend(traffic_cols(cumulative, 0, 5));
            v.push(col(ColId::Conns, "CONN", true, 5, 6, 3));
            v.push(col(ColId::Flows, "FLOWS", true, 6, 8, 4));
            v.push(flex(ColId::Name, "NAME", 16));
        }
        View::Ports => {
            v.push(col(ColId::Proto, "PROTO", false, 4, 6, 2));
            v.push(asc(col(ColId::Port, "PORT", true, 6, 6, 0)));
            v.extend(traffic_cols(cumulative, 0, 5));
            v.push(col(ColId::Conns, "CONN", true, 5, 6, 3));
            v.push(col(ColId::Flows, "FLOWS", true, 6, 8, 4));
            v.push(flex(ColId::Service, "SERVICE", 8));
        }
        View::Blocked => {
            v.push(desc(col(ColId::Time, "TIME", false, 9, 9, 0)));
            v.push(col(ColId::Rule, "RULE", false, 5, 20, 2));
            v.push(col(ColId::Hook, "HOOK", false, 5, 12, 5));
            v.push(col(ColId::Proto, "PROTO", false, 4, 6, 4));
            v.push(col(ColId::Remote, "REMOTE", false, 8, 47, 1));
            v.push(asc(col(ColId::Pid, "PID", true, 5, 7, 3)));
            v.push(col(ColId::User, "USER", false, 5, 12, 6));
            v.push(flex(ColId::Program, "PROCESS", 20));
        }
    }
    v
}

/// What a row sorts by in one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    N(f64),
    S(String),
    Ip(IpAddr),
}

impl Key {
    pub fn cmp(&self, o: &Key) -> Ordering {
        match (self, o) {
            (Key::N(a), Key::N(b)) => a.total_cmp(b),
            (Key::S(a), Key::S(b)) => a.cmp(b),
            (Key::Ip(a), Key::Ip(b)) => a.cmp(b),
            _ => self.rank().cmp(&o.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Key::N(_) => 0,
            Key::S(_) => 1,
            Key::Ip(_) => 2,
        }
    }
}

fn s(v: &str) -> Key {
    Key::S(v.to_lowercase())
}

/// One row of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Identity kept across updates (selection): pid and label for
    /// processes, flow id, address, proto/port.
    pub id: String,
    /// The text of each column (in `columns` order).
    pub cells: Vec<String>,
    pub keys: Vec<Key>,
    /// Shown before the flex column's text (the tree's `+N`).
    pub prefix: String,
    /// The processes (pid, label) the row stands for (processes view).
    pub members: Vec<(u32, String)>,
}

/// Everything that decides a view's rows.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub today: Option<&'a HashMap<String, (u64, u64)>>,
    /// Lowercase; empty: no filter.
    pub filter: &'a str,
    pub tree: bool,
    /// The processes whose connections the connections view shows.
    pub conn_of: &'a [(u32, String)],
}

impl Ctx<'_> {
    fn matches(&self, hay: &[&str]) -> bool {
        self.filter.is_empty() || hay.iter().any(|h| h.to_lowercase().contains(self.filter))
    }
}

pub fn proc_id(pid: u32, label: &str) -> String {
    format!("{pid} {label}")
}

/// A process row, or a tree of them added together.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    user: String,
    label: String,
    tx: u64,
    rx: u64,
    tx_rate: f64,
    rx_rate: f64,
    today: Option<u64>,
    conns: usize,
    blocked: u64,
    members: Vec<(u32, String)>,
}

fn user_of(p: &LiveProcess) -> String {
    match &p.owner.user {
        Some(u) => u.clone(),
        None if p.owner.pid == 0 && p.owner.exe.is_none() => "-".into(),
        None => p.owner.uid.to_string(),
    }
}

fn today_key(p: &LiveProcess) -> Option<&str> {
    p.owner.exe.as_deref()
}

fn proc_matches(ctx: &Ctx, p: &LiveProcess, label: &str, flows: &[&LiveFlow]) -> bool {
    if ctx.filter.is_empty() {
        return true;
    }
    let pid = p.owner.pid.to_string();
    let user = p.owner.user.clone().unwrap_or_default();
    if ctx.matches(&[label, &p.owner.comm, &user, &pid]) {
        return true;
    }
    flows.iter().any(|f| {
        let ip = f.remote_ip.to_string();
        ctx.matches(&[&ip, f.remote_name.as_deref().unwrap_or("")])
    })
}

/// For each process, the index of the root of its tree: children are
/// folded into the parent when the parent (by ppid) is in the list. A
/// cycle (pid reuse) is cut at its first member.
fn roots(procs: &[&LiveProcess]) -> Vec<usize> {
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        by_pid.entry(p.owner.pid).or_insert(i);
    }
    let mut parent: Vec<Option<usize>> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.owner.ppid == 0 || p.owner.pid == 0 {
                return None;
            }
            by_pid.get(&p.owner.ppid).copied().filter(|&j| j != i)
        })
        .collect();
    // Cut cycles: walk up from each node; a node met twice on one walk
    // closes a cycle, cut above its smallest member.
    for start in 0..procs.len() {
        let mut seen = Vec::new();
        let mut cur = start;
        while let Some(up) = parent[cur] {
            seen.push(cur);
            if let Some(pos) = seen.iter().position(|&k| k == up) {
                let cut = *seen[pos..].iter().min().unwrap_or(&up);
                parent[cut] = None;
                break;
            }
            cur = up;
        }
    }
    (0..procs.len())
        .map(|mut i| {
            while let Some(up) = parent[i] {
                i = up;
            }
            i
        })
        .collect()
}

fn proc_rows(ctx: &Ctx) -> Vec<Proc> {
    let mut flows_of: HashMap<(u32, String), Vec<&LiveFlow>> = HashMap::new();
    for f in &ctx.snap.flows {
        flows_of
            .entry((f.owner.pid, f.owner.label()))
            .or_default()
            .push(f);
    }
    let procs: Vec<(&LiveProcess, String)> = ctx
        .snap
        .processes
        .iter()
        .map(|p| (p, p.owner.label()))
        .filter(|(p, label)| {
            let flows = flows_of
                .get(&(p.owner.pid, label.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            proc_matches(ctx, p, label, flows)
        })
        .collect();
    // Nothing in the history today: 0; no executable to look up: none.
    let today = |p: &LiveProcess| {
        let t = ctx.today?;
        let exe = p.owner.exe.as_deref()?;
        Some(t.get(exe).map(|(tx, rx)| tx + rx).unwrap_or(0))
    };
    let one = |(p, label): &(&LiveProcess, String)| Proc {
        pid: p.owner.pid,
        user: user_of(p),
        label: label.clone(),
        tx: p.traffic.tx_bytes,
        rx: p.traffic.rx_bytes,
        tx_rate: p.rate.tx_1s,
        rx_rate: p.rate.rx_1s,
        today: today(p),
        conns: p.open_flows,
        blocked: p.blocked,
        members: vec![(p.owner.pid, label.clone())],
    };
    if !ctx.tree {
        return procs.iter().map(one).collect();
    }
    let list: Vec<&LiveProcess> = procs.iter().map(|(p, _)| *p).collect();
    let root = roots(&list);
    let mut out: Vec<Proc> = Vec::new();
    let mut at: HashMap<usize, usize> = HashMap::new();
    let mut execs: Vec<HashSet<Option<&str>>> = Vec::new();
    // Rows in the order of their roots.
    for (i, pr) in procs.iter().enumerate() {
        if root[i] == i {
            at.insert(i, out.len());
            out.push(one(pr));
            execs.push(HashSet::from([today_key(pr.0)]));
        }
    }
    for (i, pr) in procs.iter().enumerate() {
        let r = root[i];
        if r == i {
            continue;
        }
        let k = at[&r];
        let (p, label) = pr;
        let row = &mut out[k];
        row.tx += p.traffic.tx_bytes;
        row.rx += p.traffic.rx_bytes;
        row.tx_rate += p.rate.tx_1s;
        row.rx_rate += p.rate.rx_1s;
        row.conns += p.open_flows;
        row.blocked += p.blocked;
        row.members.push((p.owner.pid, label.clone()));
        // Today is per executable: a child running the parent's
        // executable is already in it.
        if execs[k].insert(today_key(p)) {
            if let Some(c) = today(p) {
                row.today = Some(row.today.unwrap_or(0) + c);
            }
        }
    }
    out
}

fn num(n: impl Into<f64>) -> Key {
    Key::N(n.into())
}

fn port_key(p: u16) -> Key {
    Key::N(p as f64)
}

/// The service's name, else its port number.
fn service_text(port: u16) -> String {
    match fmt::service(port) {
        Some(n) => n.to_string(),
        None => port.to_string(),
    }
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}:{port}"),
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
    }
}

/// A view's rows, filtered and (processes) folded, in snapshot order
/// (largest traffic first); `sort` orders them.
pub fn rows(view: View, cols: &[Col], ctx: &Ctx) -> Vec<Row> {
    let snap = ctx.snap;
    let mut out = Vec::new();
    match view {
        View::Processes => {
            for p in proc_rows(ctx) {
                let mut cells = Vec::new();
                let mut keys = Vec::new();
                for c in cols {
                    let (t, k) = match c.id {
                        ColId::Pid => (
                            if p.pid == 0 {
                                "-".into()
                            } else {
                                p.pid.to_string()
                            },
                            num(p.pid),
                        ),
                        ColId::User => (p.user.clone(), s(&p.user)),
                        ColId::TxRate => (fmt::rate(p.tx_rate), num(p.tx_rate)),
                        ColId::RxRate => (fmt::rate(p.rx_rate), num(p.rx_rate)),
                        ColId::Tx => (fmt::bytes(p.tx), num(p.tx as f64)),
                        ColId::Rx => (fmt::bytes(p.rx), num(p.rx as f64)),
                        ColId::Today => match p.today {
                            Some(t) => (fmt::bytes(t), num(t as f64)),
                            None => ("-".into(), num(-1.0)),
                        },
                        ColId::Conns => (p.conns.to_string(), num(p.conns as f64)),
                        ColId::Blocked => (p.blocked.to_string(), num(p.blocked as f64)),
                        _ => (p.label.clone(), s(&p.label)),
                    };
                    cells.push(t);
                    keys.push(k);
                }
                let folded = p.members.len() - 1;
                out.push(Row {
                    id: proc_id(p.pid, &p.label),
                    cells,
                    keys,
                    prefix: if folded > 0 {
                        format!("+{folded} ")
                    } else {
                        String::new()
                    },
                    members: p.members,
                });
            }
        }
        View::Connections => {
            let want: HashSet<(u32, &str)> =
                ctx.conn_of.iter().map(|(p, l)| (*p, l.as_str())).collect();
            for f in &snap.flows {
                let label = f.owner.label();
                if !want.contains(&(f.owner.pid, label.as_str())) {
                    continue;
                }
                let ip = f.remote_ip.to_string();
                let remote = f.remote_name.clone().unwrap_or_else(|| ip.clone());
                let rule = f.rule.clone().unwrap_or_else(|| "-".into());
                let verdict = f.verdict.clone().unwrap_or_else(|| "-".into());
                let svc = service_text(f.service_port());
                if !ctx.matches(&[
                    &ip,
                    &remote,
                    &label,
                    &f.owner.comm,
                    &f.proto,
                    &svc,
                    &rule,
                    &f.remote_port.to_string(),
                ]) {
                    continue;
                }
                let total_rate = f.rate.tx_1s + f.rate.rx_1s;
                let mut cells = Vec::new();
                let mut keys = Vec::new();
                for c in cols {
                    let (t, k) = match c.id {
                        ColId::Proto => (f.proto.to_string(), s(&f.proto)),
                        ColId::LPort => (f.local_port.to_string(), port_key(f.local_port)),
                        ColId::Remote => (
                            remote.clone(),
                            match &f.remote_name {
                                Some(n) => s(n),
                                None => Key::Ip(f.remote_ip),
                            },
                        ),
                        ColId::RPort => (f.remote_port.to_string(), port_key(f.remote_port)),
                        ColId::Service => (svc.clone(), s(&svc)),
                        ColId::Dir => (f.direction.to_string(), s(&f.direction)),
                        ColId::State => (f.state.to_string(), s(&f.state)),
                        ColId::Tx => (
                            fmt::bytes(f.traffic.tx_bytes),
                            num(f.traffic.tx_bytes as f64),
                        ),
                        ColId::Rx => (
                            fmt::bytes(f.traffic.rx_bytes),
                            num(f.traffic.rx_bytes as f64),
                        ),
                        ColId::Rate => (fmt::rate(total_rate), num(total_rate)),
                        ColId::Verdict => (verdict.clone(), s(&verdict)),
                        _ => (rule.clone(), s(&rule)),
                    };
                    cells.push(t);
                    keys.push(k);
                }
                out.push(Row {
                    id: f.flow_id.clone(),
                    cells,
                    keys,
                    prefix: String::new(),
                    members: Vec::new(),
                });
            }
        }
        View::Remotes => {
            for r in &snap.remotes {
                let ip = r.ip.to_string();
                let name = r.name.clone().unwrap_or_else(|| "-".into());
                if !ctx.matches(&[&ip, r.name.as_deref().unwrap_or("")]) {
                    continue;
                }
                let mut cells = Vec::new();
                let mut keys = Vec::new();
                for c in cols {
                    let (t, k) = match c.id {
                        ColId::Ip => (ip.clone(), Key::Ip(r.ip)),
                        ColId::TxRate => (fmt::rate(r.rate.tx_1s), num(r.rate.tx_1s)),
                        ColId::RxRate => (fmt::rate(r.rate.rx_1s), num(r.rate.rx_1s)),
                        ColId::Tx => (
                            fmt::bytes(r.traffic.tx_bytes),
                            num(r.traffic.tx_bytes as f64),
                        ),
                        ColId::Rx => (
                            fmt::bytes(r.traffic.rx_bytes),
                            num(r.traffic.rx_bytes as f64),
                        ),
                        ColId::Conns => (r.open_flows.to_string(), num(r.open_flows as f64)),
                        ColId::Flows => (r.flows.to_string(), num(r.flows as f64)),
                        _ => (name.clone(), s(&name)),
                    };
                    cells.push(t);
                    keys.push(k);
                }
                out.push(Row {
                    id: ip,
                    cells,
                    keys,
                    prefix: String::new(),
                    members: Vec::new(),
                });
            }
        }
        View::Ports => {
            for p in &snap.ports {
                let svc = service_text(p.port);
                let port = p.port.to_string();
                if !ctx.matches(&[&p.proto, &port, &svc]) {
                    continue;
                }
                let mut cells = Vec::new();
                let mut keys = Vec::new();
                for c in cols {
                    let (t, k) = match c.id {
                        ColId::Proto => (p.proto.clone(), s(&p.proto)),
                        ColId::Port => (port.clone(), port_key(p.port)),
                        ColId::TxRate => (fmt::rate(p.rate.tx_1s), num(p.rate.tx_1s)),
                        ColId::RxRate => (fmt::rate(p.rate.rx_1s), num(p.rate.rx_1s)),
                        ColId::Tx => (
                            fmt::bytes(p.traffic.tx_bytes),
                            num(p.traffic.tx_bytes as f64),
                        ),
                        ColId::Rx => (
                            fmt::bytes(p.traffic.rx_bytes),
                            num(p.traffic.rx_bytes as f64),
                        ),
                        ColId::Conns => (p.open_flows.to_string(), num(p.open_flows as f64)),
                        ColId::Flows => (p.flows.to_string(), num(p.flows as f64)),
                        _ => (svc.clone(), s(&svc)),
                    };
                    cells.push(t);
                    keys.push(k);
                }
                out.push(Row {
                    id: format!("{}/{}", p.proto, p.port),
                    cells,
                    keys,
                    prefix: String::new(),
                    members: Vec::new(),
                });
            }
        }
        View::Blocked => {
            for (i, b) in snap.blocked.iter().enumerate() {
                let rule = b.rule.clone().unwrap_or_else(|| "-".into());
                let remote = addr(b.remote_ip, b.remote_port);
                let user = b.user.clone().unwrap_or_else(|| "-".into());
                let process = match &b.exe {
                    Some(e) => e.clone(),
                    None if b.comm.is_empty() => format!("pid {} (no name)", b.pid),
                    None => format!("{} (executable not known)", b.comm),
                };
                let pid = b.pid.to_string();
                if !ctx.matches(&[&rule, &remote, &user, &process, &b.comm, &pid, &b.hook]) {
                    continue;
                }
                let mut cells = Vec::new();
                let mut keys = Vec::new();
                for c in cols {
                    let (t, k) = match c.id {
                        // Oldest first in the snapshot: the index is the order.
                        ColId::Time => (fmt::time_of_day(&b.time), num(i as f64)),
                        ColId::Rule => (rule.clone(), s(&rule)),
                        ColId::Hook => (b.hook.clone(), s(&b.hook)),
                        ColId::Proto => (b.proto.clone(), s(&b.proto)),
                        ColId::Remote => (remote.clone(), Key::Ip(b.remote_ip)),
                        ColId::Pid => (pid.clone(), num(b.pid)),
                        ColId::User => (user.clone(), s(&user)),
                        _ => (process.clone(), s(&process)),
                    };
                    cells.push(t);
                    keys.push(k);
                }
                out.push(Row {
                    id: format!("{i} {}", b.time),
                    cells,
                    keys,
                    prefix: String::new(),
                    members: Vec::new(),
                });
            }
        }
    }
    out
}

/// Sorts rows by column `at` (stable: equal rows keep snapshot order).
pub fn sort(rows: &mut [Row], at: usize, desc: bool) {
    rows.sort_by(|a, b| {
        let o = a.keys[at].cmp(&b.keys[at]);
        if desc {
            o.reverse()
        } else {
            o
        }
    });
}

/// The widths of the columns that fit in `width` (None: dropped), the
/// flex column taking what the others leave (up to its content's width).
/// The `keep` column (the sorted one) is never dropped.
pub fn layout(
    cols: &[Col],
    rows: &[Row],
    width: u16,
    spacing: u16,
    keep: usize,
) -> Vec<Option<u16>> {
    let content = |i: usize| {
        let flex = cols[i].flex;
        rows.iter()
            .map(|r| r.cells[i].chars().count() + if flex { r.prefix.chars().count() } else { 0 })
            .max()
            .unwrap_or(0)
            .min(u16::MAX as usize) as u16
    };
    let mut w: Vec<Option<u16>> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let title = c.title.chars().count() as u16 + 1;
            if c.flex {
                return Some(c.min.max(title));
            }
            Some(content(i).max(title).clamp(c.min, c.max.max(c.min)))
        })
        .collect();
    let total = |w: &[Option<u16>]| -> u32 {
        let n = w.iter().flatten().count() as u32;
        w.iter().flatten().map(|&x| x as u32).sum::<u32>() + n.saturating_sub(1) * spacing as u32
    };
    while total(&w) > width as u32 {
        let victim = cols
            .iter()
            .enumerate()
            .filter(|(i, c)| w[*i].is_some() && c.drop > 0 && *i != keep)
            .max_by_key(|(i, c)| (c.drop, *i));
        match victim {
            Some((i, _)) => w[i] = None,
            None => break,
        }
    }
    if let Some(f) = cols.iter().position(|c| c.flex) {
        if let Some(fw) = w[f] {
            let others = total(&w) - fw as u32;
            let want = content(f).max(fw) as u32;
            w[f] = Some((width as u32).saturating_sub(others).min(want) as u16);
        }
    }
    w
}
