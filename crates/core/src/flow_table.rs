//! The flow table: live flows, their owners and counters, and the records
//! they produce.
//!
//! Fed with [`FlowEvent`]s and the current time; returns the records to write.
//! A flow is kept from its first event to its close, so memory follows the
//! number of live flows.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::event::{FlowEvent, FlowView};
use crate::flow::{FlowKey, FlowRecord, FlowState, Verdict};
use crate::identity::{IdentityResolver, Owner, ProcessIdentity, SystemLookup};
use crate::timefmt::rfc3339;

#[derive(Debug)]
struct Entry {
    view: FlowView,
    /// The remote's name, once learned (it then stays for the flow's life).
    remote_name: Option<String>,
    /// The flow was counted in `TableStats::exe_unknown`.
    unknown_counted: bool,
}

/// Totals kept over a run, for the stats record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableStats {
    /// Distinct flows seen.
    pub flows_seen: u64,
    pub flows_closed: u64,
    /// Flows whose owner's executable could not be known, by reason (each
    /// flow counted once).
    pub exe_unknown: BTreeMap<String, u64>,
    /// Owners remembered for sockets that never carried a flow, forgotten
    /// when the socket was gone or the table was full.
    pub owners_dropped: u64,
    /// DNS queries and responses, for remote names.
    pub dns: crate::dns::DnsStats,
}

/// Whether socket `cookie` has a flow in `flows`.
fn has_flows(flows: &BTreeMap<FlowKey, Entry>, cookie: u64) -> bool {
    flows
        .range(FlowKey::socket(cookie)..)
        .next()
        .is_some_and(|(k, _)| k.cookie == cookie)
}

/// Owners remembered for sockets without an announced flow, at most.
pub const MAX_PENDING_OWNERS: usize = 65536;

#[derive(Debug, Default)]
pub struct FlowTable {
    flows: BTreeMap<FlowKey, Entry>,
    /// Owner by socket cookie, when it changed after the flow opened.
    owners: HashMap<u64, Owner>,
    identities: IdentityResolver,
    names: crate::dns::NameTable,
    queries: crate::dns::QueryTable,
    stats: TableStats,
    /// Rules' decisions by flow, for flows decided while rules are loaded
    /// (possibly before the flow is announced).
    verdicts: HashMap<FlowKey, (Verdict, Option<String>)>,
    /// Decisions on inbound TCP connections, made at their SYN on the
    /// listener, by (netns, local, remote) until the accepted socket's flow
    /// appears.
    inbound: HashMap<InboundKey, (Verdict, Option<String>)>,
    /// Live flows whose counters, owner, addresses or verdict changed
    /// since [`FlowTable::changed_records`] last took them.
    changed: std::collections::HashSet<FlowKey>,
    /// Live flows of packet sockets (a flow's origin never changes), so
    /// that the packet-socket sweep need not look through every flow.
    packet_flows: usize,
}

fn is_packet(e: &Entry) -> bool {
    e.view.info.origin == crate::flow::Origin::PacketSocket
}

type InboundKey = (u64, (IpAddr, u16), (IpAddr, u16));

/// IPv4-mapped IPv6 addresses as IPv4, so that both sides of a match agree.
fn canonical((ip, port): (IpAddr, u16)) -> (IpAddr, u16) {
    (ip.to_canonical(), port)
}

impl FlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            dns: self.queries.stats(),
            ..self.stats.clone()
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Keys of the live flows on socket `cookie` (several for a datagram socket).
    pub fn keys_of_socket(&self, cookie: u64) -> Vec<FlowKey> {
        let lo = FlowKey::socket(cookie);
        self.flows
            .range(lo..)
            .take_while(|(k, _)| k.cookie == cookie)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Keys of all live flows.
    pub fn keys(&self) -> Vec<FlowKey> {
        self.flows.keys().copied().collect()
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// UDP flows whose socket is gone although its RELEASE record never
    /// came (it was lost): in a namespace that a reading of the live
    /// sockets covered (`namespaces`), started before that reading began
    /// (`read_at_ns`, Unix ns), and whose socket it did not list (`live`).
    /// Other datagram protocols (ping, raw, UDP-Lite) are not in that
    /// reading and are never chosen.
    pub fn udp_flows_gone(
        &self,
        live: &std::collections::HashSet<u64>,
        namespaces: &std::collections::HashSet<u64>,
        read_at_ns: u64,
    ) -> Vec<FlowKey> {
        self.flows
            .iter()
            .filter(|(k, e)| {
                let i = &e.view.info;
                k.remote.is_some()
                    && i.proto == crate::flow::Proto::Udp
                    && namespaces.contains(&i.netns)
                    && e.view.start_ns < read_at_ns
                    && !live.contains(&k.cookie)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// The verdict of a flow: its own, or its packet socket's.
    fn verdict_of(&self, key: &FlowKey) -> Option<&(Verdict, Option<String>)> {
        self.verdicts
            .get(key)
            .or_else(|| self.verdicts.get(&FlowKey::socket(key.cookie)))
    }

    /// Whether any flow is a packet socket's.
    pub fn has_packet_flows(&self) -> bool {
        self.packet_flows > 0
    }

    /// The flows of packet sockets that are gone: not in `live` (the
    /// cookies of the packet sockets alive when the kernel was read, at
    /// `read_at_ns`) and started before that reading. A packet socket's
    /// release runs no hook, so this is how its flows end.
    pub fn packet_flows_gone(
        &self,
        live: &std::collections::HashSet<u64>,
        read_at_ns: u64,
    ) -> Vec<FlowKey> {
        self.flows
            .iter()
            .filter(|(k, e)| {
                is_packet(e) && e.view.start_ns < read_at_ns && !live.contains(&k.cookie)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// A name for `ip` from a reverse lookup; flows to `ip` without a name
    /// from a DNS answer carry it in their next records.
    pub fn learn_reverse(&mut self, ip: std::net::IpAddr, name: String) {
        self.names.learn_reverse(ip, name);
    }

    /// Applies one event; returns the records it produces.
    pub fn ingest(&mut self, ev: FlowEvent, sys: &mut dyn SystemLookup) -> Vec<FlowRecord> {
        match ev {
            FlowEvent::Dns(message) => {
                if let Some((owner, netns, answer)) = self.queries.message(&message) {
                    self.names.learn(owner.process, netns, &answer);
                }
                Vec::new()
            }
            FlowEvent::Decision(d) => {
                match d.target {
                    crate::event::DecisionTarget::Flow(key) => {
                        self.set_verdict(key, d.verdict, d.rule)
                    }
                    crate::event::DecisionTarget::Inbound {
                        netns,
                        local,
                        remote,
                    } => self.set_inbound_verdict(netns, local, remote, d.verdict, d.rule),
                }
                Vec::new()
            }
            FlowEvent::Exec { process, info } => {
                self.identities.exec(process, info, sys);
                Vec::new()
            }
            FlowEvent::Fork { child, parent } => {
                self.identities.fork(child, parent, sys);
                Vec::new()
            }
            FlowEvent::Owner { cookie, owner } => {
                if self.keys_of_socket(cookie).is_empty() {
                    // Not announced yet: remember for when it is (bounded:
                    // sockets that never carry a flow are dropped first).
                    if self.owners.len() >= MAX_PENDING_OWNERS {
                        let flows = &self.flows;
                        let before = self.owners.len();
                        self.owners.retain(|c, _| has_flows(flows, *c));
                        if self.owners.len() >= MAX_PENDING_OWNERS {
                            self.owners.clear();
                        }
                        self.stats.owners_dropped += (before - self.owners.len()) as u64;
                    }
                    self.owners.insert(cookie, owner);
                } else {
                    for k in self.keys_of_socket(cookie) {
                        if let Some(e) = self.flows.get_mut(&k) {
                            e.view.owner = Some(owner.clone());
                            self.changed.insert(k);
                        }
                    }
                }
                Vec::new()
            }
            FlowEvent::Open(view) => {
                if self.flows.contains_key(&view.key) {
                    self.merge(view);
                    return Vec::new();
                }
                self.stats.flows_seen += 1;
                let key = view.key;
                self.insert(view);
                vec![self.record(&key, FlowState::Open, None, sys)]
            }
            FlowEvent::Update(view) => {
                if self.flows.contains_key(&view.key) {
                    self.merge(view);
                } else {
                    self.stats.flows_seen += 1;
                    self.changed.insert(view.key);
                    self.insert(view);
                }
                Vec::new()
            }
            FlowEvent::Close { view, end_ns } => {
                let key = view.key;
                if self.flows.contains_key(&key) {
                    self.merge(view);
                } else {
                    self.stats.flows_seen += 1;
                    self.insert(view);
                }
                self.close(&key, end_ns, sys).into_iter().collect()
            }
        }
    }

    /// Forgets the owners remembered for sockets that are not `live` (by a
    /// fresh reading of the kernel's sockets) and carry no flow: sockets
    /// that closed without a flow.
    pub fn prune_owners(&mut self, live: &std::collections::HashSet<u64>) {
        let flows = &self.flows;
        let before = self.owners.len();
        self.owners
            .retain(|c, _| live.contains(c) || has_flows(flows, *c));
        self.stats.owners_dropped += (before - self.owners.len()) as u64;
    }

    /// Owners remembered for sockets without an announced flow.
    pub fn pending_owners(&self) -> usize {
        self.owners.len()
    }

    /// Sets a live flow's counters from a fresh kernel reading (never backwards).
    pub fn update_counters(&mut self, key: &FlowKey, counters: crate::flow::Counters) {
        if let Some(e) = self.flows.get_mut(key) {
            let newer = e.view.counters.max(counters);
            if newer != e.view.counters {
                e.view.counters = newer;
                self.changed.insert(*key);
            }
        }
    }

    /// Ends a live flow; returns its closed record.
    pub fn close(
        &mut self,
        key: &FlowKey,
        end_ns: u64,
        sys: &mut dyn SystemLookup,
    ) -> Option<FlowRecord> {
        if !self.flows.contains_key(key) {
            return None;
        }
        self.stats.flows_closed += 1;
        let rec = self.record(key, FlowState::Closed, Some(end_ns), sys);
        if self.flows.remove(key).as_ref().is_some_and(is_packet) {
            self.packet_flows -= 1;
        }
        self.verdicts.remove(key);
        self.changed.remove(key);
        if self.keys_of_socket(key.cookie).is_empty() {
            self.owners.remove(&key.cookie);
        }
        Some(rec)
    }

    /// Records the rules' decision for a flow, live or not yet announced:
    /// its records carry `verdict` and `rule` from now on.
    fn set_verdict(&mut self, key: FlowKey, verdict: Verdict, rule: Option<String>) {
        if self.verdicts.len() >= 65536 {
            // Decisions for flows that never opened: keep the live ones.
            let flows = &self.flows;
            self.verdicts.retain(|k, _| flows.contains_key(k));
        }
        self.verdicts.insert(key, (verdict, rule));
        if self.flows.contains_key(&key) {
            self.changed.insert(key);
        }
    }

    /// Records the rules' decision on an inbound TCP connection, made at its
    /// SYN: the accepted socket's flow (same namespace and endpoints)
    /// carries it when it appears.
    fn set_inbound_verdict(
        &mut self,
        netns: u64,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        verdict: Verdict,
        rule: Option<String>,
    ) {
        if self.inbound.len() >= 65536 {
            // Handshakes that never completed.
            self.inbound.clear();
        }
        self.inbound.insert(
            (netns, canonical(local), canonical(remote)),
            (verdict, rule),
        );
    }

    /// A process's identity as flow records give it.
    pub fn identity(&mut self, owner: &Owner, sys: &mut dyn SystemLookup) -> ProcessIdentity {
        self.identities.resolve(owner, sys)
    }

    /// Cumulative records of the open flows that changed since the last
    /// call (for live viewers: the cost follows activity, not the number
    /// of flows).
    pub fn changed_records(&mut self, sys: &mut dyn SystemLookup) -> Vec<FlowRecord> {
        let flows = &self.flows;
        let mut keys: Vec<FlowKey> = self
            .changed
            .drain()
            .filter(|k| flows.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.iter()
            .map(|k| self.record(k, FlowState::Open, None, sys))
            .collect()
    }

    /// Cumulative records of every open flow (for `--interval` and at stop).
    pub fn snapshot(&mut self, sys: &mut dyn SystemLookup) -> Vec<FlowRecord> {
        let keys = self.keys();
        keys.iter()
            .map(|k| self.record(k, FlowState::Open, None, sys))
            .collect()
    }

    fn insert(&mut self, mut view: FlowView) {
        if let Some(o) = self.owners.get(&view.key.cookie) {
            view.owner = Some(o.clone());
        }
        if !self.inbound.is_empty() {
            let i = &view.info;
            let t = (i.netns, canonical(i.local), canonical(i.remote));
            if let Some(v) = self.inbound.remove(&t) {
                self.verdicts.insert(view.key, v);
            }
        }
        let entry = Entry {
            view,
            remote_name: None,
            unknown_counted: false,
        };
        self.packet_flows += usize::from(is_packet(&entry));
        if let Some(old) = self.flows.insert(entry.view.key, entry) {
            self.packet_flows -= usize::from(is_packet(&old));
        }
    }

    /// Folds a newer reading into a known flow: counters never go back, the
    /// first start and origin stay, an owner is never forgotten.
    fn merge(&mut self, newer: FlowView) {
        let Some(e) = self.flows.get_mut(&newer.key) else {
            return;
        };
        let v = &mut e.view;
        let mut changed = false;
        let counters = v.counters.max(newer.counters);
        if counters != v.counters {
            v.counters = counters;
            changed = true;
        }
        if let Some(o) = newer.owner {
            if v.owner.as_ref() != Some(&o) {
                v.owner = Some(o);
                changed = true;
            }
        }
        if v.before_start.is_none() {
            v.before_start = newer.before_start;
        }
        // Addresses can be learned late (a local port assigned at connect).
        if (newer.info.local.1 != 0 || v.info.local.1 == 0) && v.info.local != newer.info.local {
            v.info.local = newer.info.local;
            changed = true;
        }
        if !newer.info.remote.0.is_unspecified() && v.info.remote != newer.info.remote {
            v.info.remote = newer.info.remote;
            changed = true;
        }
        if changed {
            self.changed.insert(newer.key);
        }
    }

    fn record(
        &mut self,
        key: &FlowKey,
        state: FlowState,
        end_ns: Option<u64>,
        sys: &mut dyn SystemLookup,
    ) -> FlowRecord {
        let names = &self.names;
        let Some(entry) = self.flows.get_mut(key) else {
            unreachable!("record() is called for live flows only")
        };
        if entry.remote_name.is_none() {
            let process = entry.view.owner.as_ref().map(Owner::key);
            let info = &entry.view.info;
            entry.remote_name = names
                .lookup(process, info.netns, &info.remote.0)
                .map(str::to_string);
        }
        let remote_name = entry.remote_name.clone();
        let v = &entry.view;
        let owner = v.owner.clone();
        let info = v.info.clone();
        let (counters, before_start, start_ns) = (v.counters, v.before_start, v.start_ns);
        let process: Option<ProcessIdentity> = owner.map(|o| self.identities.resolve(&o, sys));
        if let Some(why) = process.as_ref().and_then(|p| p.exe_unknown.as_ref()) {
            if let Some(e) = self.flows.get_mut(key).filter(|e| !e.unknown_counted) {
                e.unknown_counted = true;
                *self.stats.exe_unknown.entry(why.clone()).or_default() += 1;
            }
        }
        FlowRecord {
            kind: "flow",
            flow_id: key.to_string(),
            state,
            proto: info.proto,
            family: info.family,
            direction: info.direction,
            local_ip: info.local.0,
            local_port: info.local.1,
            remote_ip: info.remote.0,
            remote_port: info.remote.1,
            remote_name,
            process,
            netns: info.netns,
            start: rfc3339(start_ns),
            end: end_ns.map(rfc3339),
            counters,
            before_start,
            origin: info.origin,
            link: info.link.map(|(l, r)| crate::flow::LinkAddrs::new(&l, &r)),
            verdict: self.verdict_of(key).map(|v| v.0),
            rule: self.verdict_of(key).and_then(|v| v.1.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Counters, Direction, FlowInfo, Origin, Proto};
    use crate::identity::tests::FakeSystem;
    use crate::identity::ExecInfo;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn view(key: FlowKey, pid: Option<u32>, tx: u64) -> FlowView {
        FlowView {
            key,
            info: FlowInfo {
                proto: Proto::Udp,
                family: 4,
                direction: Direction::Out,
                origin: Origin::Send,
                local: (ip(1), 5000),
                remote: (ip(2), 53),
                netns: 4026531840,
                link: None,
            },
            owner: pid.map(|pid| Owner {
                pid,
                ppid: 1,
                uid: 0,
                comm: "dig".into(),
                cgroup_id: 1,
                start_ns: 0,
            }),
            counters: Counters {
                tx_payload: tx,
                ..Default::default()
            },
            before_start: None,
            start_ns: 1_000_000_000,
        }
    }

    #[test]
    fn the_table_knows_whether_it_holds_packet_socket_flows() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let packet = |cookie: u64, remote: u8| {
            let mut v = view(FlowKey::datagram(cookie, ip(remote), 0), Some(7), 0);
            v.info.origin = Origin::PacketSocket;
            v
        };
        t.ingest(
            FlowEvent::Open(view(FlowKey::socket(1), Some(7), 0)),
            &mut sys,
        );
        assert!(!t.has_packet_flows());
        t.ingest(FlowEvent::Open(packet(2, 3)), &mut sys);
        t.ingest(FlowEvent::Update(packet(2, 4)), &mut sys);
        t.ingest(FlowEvent::Open(packet(2, 3)), &mut sys); // merged, not counted again
        assert!(t.has_packet_flows());
        let gone = t.packet_flows_gone(&Default::default(), u64::MAX);
        assert_eq!(gone.len(), 2);
        t.close(&gone[0], 2_000_000_000, &mut sys);
        assert!(t.has_packet_flows());
        t.close(&gone[1], 2_000_000_000, &mut sys);
        assert!(!t.has_packet_flows());
        t.close(&FlowKey::socket(1), 2_000_000_000, &mut sys);
        assert!(t.is_empty() && !t.has_packet_flows());
    }

    #[test]
    fn open_then_close_gives_two_records_and_frees_the_entry() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let k = FlowKey::socket(9);
        let open = t.ingest(FlowEvent::Open(view(k, Some(100), 0)), &mut sys);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].state, FlowState::Open);
        assert_eq!(open[0].end, None);
        let closed = t.ingest(
            FlowEvent::Close {
                view: view(k, Some(100), 512),
                end_ns: 2_000_000_000,
            },
            &mut sys,
        );
        assert_eq!(closed[0].state, FlowState::Closed);
        assert_eq!(closed[0].counters.tx_payload, 512);
        assert_eq!(closed[0].end.as_deref(), Some("1970-01-01T00:00:02Z"));
        assert!(t.is_empty());
        assert_eq!(t.stats().flows_seen, 1);
        assert_eq!(t.stats().flows_closed, 1);
    }

    #[test]
    fn second_open_of_same_flow_is_merged_not_counted_twice() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let k = FlowKey::socket(9);
        t.ingest(FlowEvent::Open(view(k, None, 10)), &mut sys);
        let again = t.ingest(FlowEvent::Open(view(k, Some(100), 5)), &mut sys);
        assert!(again.is_empty());
        let snap = t.snapshot(&mut sys);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].counters.tx_payload, 10, "counters never go back");
        assert_eq!(snap[0].process.as_ref().unwrap().pid, 100);
        assert_eq!(t.stats().flows_seen, 1);
    }

    #[test]
    fn owner_change_applies_to_every_datagram_flow_of_the_socket() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let a = FlowKey::datagram(5, ip(2), 53);
        let b = FlowKey::datagram(5, ip(3), 53);
        let other = FlowKey::socket(6);
        for k in [a, b, other] {
            t.ingest(FlowEvent::Open(view(k, Some(100), 0)), &mut sys);
        }
        assert_eq!(t.keys_of_socket(5), vec![a, b]);
        t.ingest(
            FlowEvent::Owner {
                cookie: 5,
                owner: Owner {
                    pid: 200,
                    comm: "child".into(),
                    ..Default::default()
                },
            },
            &mut sys,
        );
        let snap = t.snapshot(&mut sys);
        let pids: Vec<u32> = snap
            .iter()
            .map(|r| r.process.as_ref().unwrap().pid)
            .collect();
        assert_eq!(pids, vec![200, 200, 100]);
    }

    #[test]
    fn owners_of_sockets_without_flows_are_bounded_and_pruned() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let owner = |pid| Owner {
            pid,
            ..Default::default()
        };
        for c in 0..(MAX_PENDING_OWNERS as u64 + 10) {
            t.ingest(
                FlowEvent::Owner {
                    cookie: 1_000_000 + c,
                    owner: owner(7),
                },
                &mut sys,
            );
        }
        assert!(t.pending_owners() <= MAX_PENDING_OWNERS);
        assert!(t.stats().owners_dropped >= 10);
        let live: std::collections::HashSet<u64> =
            [1_000_000 + MAX_PENDING_OWNERS as u64 + 9].into();
        t.prune_owners(&live);
        assert_eq!(t.pending_owners(), 1);
    }

    #[test]
    fn owner_seen_before_open_is_applied_at_open() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        t.ingest(
            FlowEvent::Owner {
                cookie: 9,
                owner: Owner {
                    pid: 300,
                    ..Default::default()
                },
            },
            &mut sys,
        );
        let r = t.ingest(FlowEvent::Open(view(FlowKey::socket(9), None, 0)), &mut sys);
        assert_eq!(r[0].process.as_ref().unwrap().pid, 300);
    }

    #[test]
    fn exec_capture_names_a_process_that_is_gone() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        t.ingest(
            FlowEvent::Exec {
                process: crate::identity::ProcessKey {
                    pid: 777,
                    start_ns: 0,
                },
                info: ExecInfo {
                    exe: "/tmp/short-lived".into(),
                    cmdline: "short-lived 1".into(),
                    comm: "short-lived".into(),
                },
            },
            &mut sys,
        );
        let r = t.ingest(
            FlowEvent::Close {
                view: view(FlowKey::socket(1), Some(777), 524_288),
                end_ns: 2,
            },
            &mut sys,
        );
        let p = r[0].process.as_ref().unwrap();
        assert_eq!(p.exe.as_deref(), Some("/tmp/short-lived"));
        assert_eq!(p.cmdline.as_deref(), Some("short-lived 1"));
    }

    #[test]
    fn forked_child_that_is_gone_names_its_parent_and_unknowns_are_counted_by_reason() {
        use crate::identity::{reason, ProcessKey};
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let parent = ProcessKey {
            pid: 100,
            start_ns: 0,
        };
        let child = ProcessKey {
            pid: 778,
            start_ns: 0,
        };
        t.ingest(FlowEvent::Fork { child, parent }, &mut sys);
        sys.gone = true;
        let r = t.ingest(
            FlowEvent::Close {
                view: view(FlowKey::socket(1), Some(778), 10),
                end_ns: 2,
            },
            &mut sys,
        );
        let p = r[0].process.as_ref().unwrap();
        assert_eq!(p.exe.as_deref(), Some("/usr/bin/old"));
        assert_eq!(p.exe_unknown, None);
        // A process nobody saw: the reason, counted once per flow.
        let k = FlowKey::socket(2);
        t.ingest(FlowEvent::Open(view(k, Some(555), 1)), &mut sys);
        t.snapshot(&mut sys);
        let r = t.close(&k, 3, &mut sys).unwrap();
        assert_eq!(
            r.process.unwrap().exe_unknown.as_deref(),
            Some(reason::EXITED)
        );
        assert_eq!(t.stats().exe_unknown.get(reason::EXITED), Some(&1));
        assert_eq!(t.stats().exe_unknown.len(), 1);
    }

    #[test]
    fn udp_flows_of_sockets_that_are_gone_are_found_and_no_others() {
        use std::collections::HashSet;
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let at = |cookie: u64, start_ns: u64, proto: Proto, netns: u64| {
            let mut v = view(FlowKey::datagram(cookie, ip(2), 53), Some(100), 1);
            v.start_ns = start_ns;
            v.info.proto = proto;
            v.info.netns = netns;
            v
        };
        let ns: HashSet<u64> = [7].into();
        let live: HashSet<u64> = [1].into();
        for v in [
            at(1, 10, Proto::Udp, 7),  // alive
            at(2, 10, Proto::Udp, 7),  // gone: chosen
            at(3, 500, Proto::Udp, 7), // started after the reading
            at(4, 10, Proto::Udp, 8),  // namespace not read
            at(5, 10, Proto::Icmp, 7), // ping: not in the reading
        ] {
            t.ingest(FlowEvent::Open(v), &mut sys);
        }
        assert_eq!(
            t.udp_flows_gone(&live, &ns, 100),
            vec![FlowKey::datagram(2, ip(2), 53)]
        );
    }

    #[test]
    fn remote_name_comes_from_the_owners_answered_query_in_its_namespace() {
        use crate::dns::tests::{query_msg, response_msg};
        use crate::dns::{DnsMessage, DnsOwner};
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let netns = 4026531840;
        let dns = |query: bool, payload: Vec<u8>| {
            FlowEvent::Dns(DnsMessage {
                query,
                cookie: 50,
                netns,
                owner: Some(DnsOwner {
                    process: crate::identity::ProcessKey {
                        pid: 100,
                        start_ns: 0,
                    },
                    uid: 0,
                }),
                server: (ip(53), 53),
                lport: 40000,
                proto: 17,
                ts_ns: 1,
                payload,
            })
        };
        // An answer to no query names nothing.
        t.ingest(dns(false, response_msg(9, "forged.test", ip(2))), &mut sys);
        let r = t.ingest(
            FlowEvent::Open(view(FlowKey::socket(2), Some(100), 0)),
            &mut sys,
        );
        assert_eq!(r[0].remote_name, None);
        t.ingest(dns(true, query_msg(7, "svc.example.test")), &mut sys);
        t.ingest(
            dns(false, response_msg(7, "svc.example.test", ip(2))),
            &mut sys,
        );
        let r = t.ingest(
            FlowEvent::Open(view(FlowKey::socket(3), Some(100), 0)),
            &mut sys,
        );
        assert_eq!(r[0].remote_name.as_deref(), Some("svc.example.test"));
        // Another remote, another process, another namespace: unnamed.
        let mut v = view(FlowKey::datagram(4, ip(9), 53), Some(100), 0);
        v.info.remote = (ip(9), 53);
        let r = t.ingest(FlowEvent::Open(v), &mut sys);
        assert_eq!(r[0].remote_name, None);
        let r = t.ingest(
            FlowEvent::Open(view(FlowKey::socket(5), Some(200), 0)),
            &mut sys,
        );
        assert_eq!(r[0].remote_name, None);
        let mut v = view(FlowKey::socket(6), Some(100), 0);
        v.info.netns = netns + 1;
        let r = t.ingest(FlowEvent::Open(v), &mut sys);
        assert_eq!(r[0].remote_name, None);
        let s = t.stats().dns;
        assert_eq!((s.queries, s.answered, s.rejected), (1, 1, 1), "{s:?}");
    }

    #[test]
    fn record_serializes_to_the_design_contract() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let r = t.ingest(
            FlowEvent::Open(view(FlowKey::socket(3), Some(100), 0)),
            &mut sys,
        );
        let json = serde_json::to_value(&r[0]).unwrap();
        for key in [
            "type",
            "flow_id",
            "state",
            "proto",
            "family",
            "direction",
            "local_ip",
            "local_port",
            "remote_ip",
            "remote_port",
            "process",
            "netns",
            "start",
            "end",
            "tx_bytes",
            "rx_bytes",
            "tx_packets",
            "rx_packets",
            "tx_payload",
            "rx_payload",
            "before_start",
            "origin",
        ] {
            assert!(json.get(key).is_some(), "missing key {key}: {json}");
        }
        assert_eq!(json["type"], "flow");
        assert_eq!(json["proto"], "udp");
        assert_eq!(json["process"]["exe"], "/usr/bin/old");
        assert_eq!(json["process"]["user"], "root");
    }

    #[test]
    fn only_flows_that_changed_are_given_again() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        let (a, b) = (FlowKey::socket(1), FlowKey::socket(2));
        t.ingest(FlowEvent::Open(view(a, Some(100), 0)), &mut sys);
        t.ingest(FlowEvent::Open(view(b, Some(100), 0)), &mut sys);
        let _ = t.changed_records(&mut sys);
        // The same reading again changes nothing.
        t.ingest(FlowEvent::Update(view(a, Some(100), 0)), &mut sys);
        assert!(t.changed_records(&mut sys).is_empty());
        t.ingest(FlowEvent::Update(view(b, Some(100), 64)), &mut sys);
        t.update_counters(&a, Counters::default());
        let c = t.changed_records(&mut sys);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].flow_id.as_str(), c[0].counters.tx_payload), ("2", 64));
        assert!(t.changed_records(&mut sys).is_empty());
        // A flow that closed is not given.
        t.update_counters(
            &a,
            Counters {
                tx_payload: 9,
                ..Default::default()
            },
        );
        t.close(&a, 5, &mut sys);
        assert!(t.changed_records(&mut sys).is_empty());
    }

    #[test]
    fn an_inbound_verdict_goes_to_the_accepted_flow() {
        let mut t = FlowTable::new();
        let mut sys = FakeSystem::default();
        // Decided at the SYN, with IPv4 addresses; the accepted socket of a
        // dual-stack listener shows them IPv4-mapped.
        let decided = t.ingest(
            FlowEvent::Decision(crate::event::Decision {
                target: crate::event::DecisionTarget::Inbound {
                    netns: 4026531840,
                    local: (ip(1), 5000),
                    remote: (ip(2), 53),
                },
                verdict: Verdict::Allow,
                rule: Some("web".into()),
            }),
            &mut sys,
        );
        assert!(decided.is_empty());
        let mut v = view(FlowKey::socket(7), Some(100), 0);
        let mapped = |a: IpAddr| match a {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            other => other,
        };
        v.info.local.0 = mapped(v.info.local.0);
        v.info.remote.0 = mapped(v.info.remote.0);
        let r = t.ingest(FlowEvent::Open(v), &mut sys);
        assert_eq!(r[0].verdict, Some(Verdict::Allow));
        assert_eq!(r[0].rule.as_deref(), Some("web"));
        // Another connection between other endpoints gets nothing.
        let r = t.ingest(
            FlowEvent::Open(view(FlowKey::socket(8), Some(100), 0)),
            &mut sys,
        );
        assert_eq!(r[0].verdict, None);
    }
}
