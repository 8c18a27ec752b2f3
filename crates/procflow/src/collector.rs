//! The collector: applies kernel records to the flow table and publishes
//! the records that result, one [`Record`] at a time, to the sinks (log,
//! store) and to the hub (live state, API). Nothing it publishes to reaches
//! back.
//!
//! The kernel is behind [`KernelSource`], so the loop, the live state and
//! its rates are unit tested with a scripted kernel whose clock the test
//! sets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use procflow_bpf::{DatagramSweep, Dump, Kernel, KernelStats, Record as KernelRecord};
use procflow_core::event::FlowView;
use procflow_core::flow::Counters;
use procflow_core::identity::SystemLookup;
use procflow_core::live::Record;
use procflow_core::{FlowEvent, FlowKey, FlowTable};
use serde_json::json;

use crate::hub::Hub;
use crate::sinks::Sinks;

/// What the collector needs of the kernel side.
pub trait KernelSource {
    /// Waits up to `timeout` for records and returns what arrived.
    fn poll(&mut self, timeout: Duration) -> Vec<KernelRecord>;
    /// Reads the live sockets' counters.
    fn dump(&mut self) -> Result<Dump>;
    /// A datagram flow's counters in the kernel's table (deleting the
    /// entry with `remove`).
    fn datagram_counters(&self, key: &FlowKey, remove: bool) -> Option<Counters>;
    /// Deletes kernel datagram entries of sockets `dump` found gone that
    /// `known` does not know; returns how many.
    fn sweep_datagram_entries(
        &self,
        dump: &Dump,
        known: &dyn Fn(&FlowKey) -> bool,
    ) -> DatagramSweep;
    /// Ids of the live packet sockets.
    fn live_packet_sockets(&mut self) -> HashSet<u64>;
    /// Attaches the packet-socket rules program to devices that lack it;
    /// returns the devices it failed on.
    fn attach_devices(&mut self) -> Vec<String>;
    fn stats(&self) -> KernelStats;
    /// Now, Unix nanoseconds.
    fn now_unix_ns(&self) -> u64;
}

impl KernelSource for Kernel {
    fn poll(&mut self, timeout: Duration) -> Vec<KernelRecord> {
        Kernel::poll(self, timeout)
    }
    fn dump(&mut self) -> Result<Dump> {
        Ok(Kernel::dump(self)?)
    }
    fn datagram_counters(&self, key: &FlowKey, remove: bool) -> Option<Counters> {
        Kernel::datagram_counters(self, key, remove)
    }
    fn sweep_datagram_entries(
        &self,
        dump: &Dump,
        known: &dyn Fn(&FlowKey) -> bool,
    ) -> DatagramSweep {
        Kernel::sweep_datagram_entries(self, dump, known)
    }
    fn live_packet_sockets(&mut self) -> HashSet<u64> {
        Kernel::live_packet_sockets(self)
    }
    fn attach_devices(&mut self) -> Vec<String> {
        Kernel::attach_devices(self).1
    }
    fn stats(&self) -> KernelStats {
        Kernel::stats(self)
    }
    fn now_unix_ns(&self) -> u64 {
        self.clock.unix_ns(self.clock.boot_now())
    }
}

/// What the periodic sweep ended because a RELEASE record was lost.
#[derive(Debug, Default, serde::Serialize)]
pub struct Swept {
    /// Flows of UDP sockets that were gone, ended with a closed record.
    pub flows: u64,
    /// Kernel datagram entries of such sockets, never announced, deleted.
    pub kernel_entries: u64,
}

/// Readings of the live sockets (`refresh`): how many, and how long the
/// last and the longest took (kernel walk and flow table updates).
#[derive(Debug, Default, serde::Serialize)]
pub struct Refreshes {
    pub count: u64,
    pub last_ms: f64,
    pub max_ms: f64,
    /// Flows the flow table held after the last one.
    pub flows: usize,
    /// Sockets with a context, and entries in the datagram table, after
    /// the last one.
    pub socket_contexts: usize,
    pub datagram_entries: usize,
}

/// How often the live sockets are read even without `--interval` or a
/// viewer: the sweep of flows whose RELEASE record was lost runs with it.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How often the live packet sockets are listed (only while there are
/// packet-socket flows): their flows end at the first listing without them.
pub const PACKET_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How often, while rules are loaded, devices are looked for that the
/// packet-socket rules program is not attached to yet.
pub const DEVICE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long records may wait for the log and the store while they come
/// in: a busy machine's records go in batches of this span (one write and
/// one transaction each), not one per poll of the ring buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The pause after a poll that found records (see `drain`).
pub const POLL_PAUSE: Duration = Duration::from_millis(5);

/// Records that are written at once, however short the wait.
pub const FLUSH_RECORDS: usize = 16384;

/// How often the live state is ticked (rates computed; with a viewer, the
/// kernel's counters read first).
pub const TICK_EVERY: Duration = Duration::from_secs(1);

pub struct Collector<K> {
    pub kernel: K,
    pub table: FlowTable,
    pub sys: Box<dyn SystemLookup>,
    /// The log and the store (none in `procflow top` and `ps` standalone).
    pub sinks: Option<Sinks>,
    pub hub: Arc<Hub>,
    /// Names the rules' decisions (none without rules).
    pub rules: Option<crate::enforce::Enforcer>,
    pub resolver: Option<crate::resolve::Resolver>,
    pub swept: Swept,
    pub refreshes: Refreshes,
    /// How long the start-up scan took (milliseconds), once it ran.
    pub scan_ms: Option<f64>,
    last_refresh: Instant,
    last_packet_sweep: Instant,
    last_tick: Option<Instant>,
    /// Rules are loaded: packet sockets are decided at every device.
    pub rules_on: bool,
    last_device_sweep: Instant,
    last_flush: Instant,
    /// Device attach failures already logged.
    device_failures: HashSet<String>,
}

impl<K: KernelSource> Collector<K> {
    pub fn new(kernel: K, sys: Box<dyn SystemLookup>, hub: Arc<Hub>) -> Collector<K> {
        Collector {
            kernel,
            table: FlowTable::new(),
            sys,
            sinks: None,
            hub,
            rules: None,
            resolver: None,
            swept: Swept::default(),
            refreshes: Refreshes::default(),
            scan_ms: None,
            last_refresh: Instant::now(),
            last_packet_sweep: Instant::now(),
            last_tick: None,
            rules_on: false,
            last_device_sweep: Instant::now(),
            last_flush: Instant::now(),
            device_failures: HashSet::new(),
        }
    }

    /// A record to every consumer.
    pub fn emit(&mut self, r: Record) {
        if let Some(s) = self.sinks.as_mut() {
            s.record(&r);
        }
        self.hub.apply(&r);
    }

    fn emit_flows(&mut self, recs: Vec<procflow_core::FlowRecord>) {
        for r in recs {
            self.emit(Record::Flow(r));
        }
    }

    pub fn apply(&mut self, rec: KernelRecord) {
        match rec {
            KernelRecord::Event(ev) => {
                let out = self.table.ingest(ev, &mut *self.sys);
                // A record without a name: no DNS answer (nor an earlier
                // lookup) named its remote.
                if let Some(res) = self.resolver.as_mut() {
                    for r in out.iter().filter(|r| r.remote_name.is_none()) {
                        res.want(r.remote_ip);
                    }
                }
                self.emit_flows(out);
            }
            KernelRecord::Release {
                cookie,
                end_ns,
                slot,
            } => {
                if let Some(v) = slot.as_ref() {
                    self.announce_slot(v);
                }
                for key in self.table.keys_of_socket(cookie) {
                    if let Some(c) = self.datagram_total(&key, true, slot.as_ref()) {
                        self.table.update_counters(&key, c);
                    }
                    if let Some(r) = self.table.close(&key, end_ns, &mut *self.sys) {
                        self.emit(Record::Flow(r));
                    }
                }
            }
            KernelRecord::Verdict(v) => {
                let Some(rules) = self.rules.as_ref() else {
                    return;
                };
                let (decision, rule) = rules.decision(&v);
                self.table.ingest(decision, &mut *self.sys);
                if v.block {
                    let process = self.table.identity(&v.owner, &mut *self.sys);
                    let rec = rules.verdict_record(&v, rule, process);
                    self.emit(Record::Verdict(rec));
                }
            }
        }
    }

    /// A datagram flow's counters: its table entry's (deleted with
    /// `remove`), plus those of its socket's slot flow when it is that one.
    fn datagram_total(
        &self,
        key: &FlowKey,
        remove: bool,
        slot: Option<&FlowView>,
    ) -> Option<Counters> {
        let table = self.kernel.datagram_counters(key, remove);
        let slot = slot.filter(|v| v.key == *key).map(|v| v.counters);
        match (table, slot) {
            (Some(t), Some(s)) => Some(t.plus(s)),
            (t, s) => t.or(s),
        }
    }

    /// A slot flow whose OPEN record was lost (the ring buffer was full)
    /// becomes known from a reading or the release record.
    fn announce_slot(&mut self, v: &FlowView) {
        if !self.table.contains(&v.key) {
            self.table
                .ingest(FlowEvent::Update(v.clone()), &mut *self.sys);
        }
    }

    /// Reads the current counters of every live flow from the kernel, and
    /// ends the flows of UDP sockets that are gone although their RELEASE
    /// record never arrived (and deletes such kernel entries). Returns the
    /// number of socket contexts.
    pub fn refresh(&mut self) -> Result<usize> {
        let started = Instant::now();
        let mut dump = self.kernel.dump()?;
        let contexts = dump.contexts;
        for v in std::mem::take(&mut dump.views) {
            self.table.ingest(FlowEvent::Update(v), &mut *self.sys);
        }
        let mut slots = HashMap::new();
        for v in std::mem::take(&mut dump.slots) {
            self.announce_slot(&v);
            slots.insert(v.key, v);
        }
        for key in self.table.keys() {
            if key.remote.is_some() {
                if let Some(c) = self.datagram_total(&key, false, slots.get(&key)) {
                    self.table.update_counters(&key, c);
                }
            }
        }
        let gone =
            self.table
                .udp_flows_gone(&dump.live_udp, &dump.namespaces, dump.started_unix_ns);
        let end = self.kernel.now_unix_ns();
        for key in gone {
            if let Some(c) = self.kernel.datagram_counters(&key, true) {
                self.table.update_counters(&key, c);
            }
            if let Some(r) = self.table.close(&key, end, &mut *self.sys) {
                self.swept.flows += 1;
                self.emit(Record::Flow(r));
            }
        }
        self.table.prune_owners(&dump.live);
        let table = &self.table;
        let sweep = self
            .kernel
            .sweep_datagram_entries(&dump, &|k| table.contains(k));
        self.swept.kernel_entries += sweep.deleted as u64;
        self.last_refresh = Instant::now();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let r = &mut self.refreshes;
        r.count += 1;
        r.last_ms = ms;
        r.max_ms = r.max_ms.max(ms);
        r.flows = self.table.len();
        r.socket_contexts = contexts;
        r.datagram_entries = sweep.entries;
        Ok(contexts)
    }

    /// Cumulative records of every open flow to every consumer (for
    /// `--interval` and at stop).
    pub fn snapshot_records(&mut self) {
        let snap = self.table.snapshot(&mut *self.sys);
        self.emit_flows(snap);
    }

    /// Ends the flows of packet sockets that are gone (their release runs
    /// no hook): every flow of a packet socket the kernel no longer lists.
    pub fn sweep_packet_sockets(&mut self) {
        self.last_packet_sweep = Instant::now();
        if !self.table.has_packet_flows() {
            return;
        }
        let read_at = self.kernel.now_unix_ns();
        let live = self.kernel.live_packet_sockets();
        for key in self.table.packet_flows_gone(&live, read_at) {
            if let Some(c) = self.kernel.datagram_counters(&key, true) {
                self.table.update_counters(&key, c);
            }
            let end = self.kernel.now_unix_ns();
            if let Some(r) = self.table.close(&key, end, &mut *self.sys) {
                self.emit(Record::Flow(r));
            }
        }
    }

    /// While rules are loaded: the packet-socket rules program on every
    /// device of every namespace, new ones included.
    pub fn sweep_devices(&mut self) {
        self.last_device_sweep = Instant::now();
        if !self.rules_on {
            return;
        }
        for f in self.kernel.attach_devices() {
            if self.device_failures.insert(f.clone()) {
                tracing::warn!("packet-socket rules cannot hold on {f}");
            }
        }
    }

    /// Reads what the kernel sent within `timeout`, and the names the
    /// lookup thread found.
    pub fn drain(&mut self, timeout: Duration) {
        let records = self.kernel.poll(timeout);
        let busy = !records.is_empty();
        for r in records {
            self.apply(r);
        }
        // The ring buffer wakes its reader only for a record submitted
        // when the reader had caught up: a short pause after records lets
        // the next ones gather, so that a storm costs a wake-up every few
        // milliseconds rather than one per record.
        if busy && !timeout.is_zero() {
            std::thread::sleep(POLL_PAUSE);
        }
        if let Some(res) = self.resolver.as_mut() {
            for (ip, name) in res.answers() {
                self.table.learn_reverse(ip, name);
            }
        }
    }

    /// The stats viewers see between ticks (the final stats record has
    /// more).
    pub fn live_stats(&self) -> serde_json::Value {
        let k = self.kernel.stats();
        let t = self.table.stats();
        json!({
            "flows_seen": t.flows_seen,
            "flows_closed": t.flows_closed,
            "flows_open": self.table.len(),
            "events_lost": k.events_lost,
            "storage_failures": k.no_storage,
            "datagram_table_full": k.dgram_full,
            "verdicts_suppressed": k.verdicts_suppressed,
            "ring_buffer_peak": k.ring_buffer_peak,
            "ring_buffer_size": k.ring_buffer_size,
            "exe_unknown": t.exe_unknown,
            "refresh": self.refreshes,
            "datagram_capacity": procflow_bpf::DATAGRAM_TABLE_CAPACITY,
            "scan_ms": self.scan_ms,
            "api": self.hub.stats(),
            "store": self.sinks.as_ref().map(Sinks::stats),
            "log": self.sinks.as_ref().map(Sinks::log_stats),
        })
    }

    /// Ticks the live state: with a viewer, the kernel's counters are read
    /// first, so that viewers see every flow's bytes of this moment.
    ///
    /// Without a viewer nothing is done: the live state keeps every record
    /// (totals since start stay exact), and rates start again when someone
    /// watches.
    pub fn tick(&mut self) -> Result<()> {
        self.last_tick = Some(Instant::now());
        if !self.hub.watched() {
            return Ok(());
        }
        self.refresh()?;
        // Only the flows the reading changed: idle flows cost nothing.
        let changed = self.table.changed_records(&mut *self.sys);
        for r in changed {
            self.hub.apply(&Record::Flow(r));
        }
        let stats = self.live_stats();
        self.hub.apply(&Record::Stats(stats));
        self.hub.tick(self.kernel.now_unix_ns(), true);
        Ok(())
    }

    /// The periodic work that is due: the tick, the sweeps.
    pub fn due(&mut self) -> Result<()> {
        if self.last_tick.is_none_or(|t| t.elapsed() >= TICK_EVERY) {
            self.tick()?;
        }
        if self.last_refresh.elapsed() >= SWEEP_EVERY {
            self.refresh()?;
        }
        if self.last_packet_sweep.elapsed() >= PACKET_SWEEP_EVERY {
            self.sweep_packet_sockets();
        }
        if self.last_device_sweep.elapsed() >= DEVICE_SWEEP_EVERY {
            self.sweep_devices();
        }
        Ok(())
    }

    /// Flushes the sinks.
    pub fn flush(&mut self) {
        self.last_flush = Instant::now();
        if let Some(s) = self.sinks.as_mut() {
            s.flush();
        }
    }

    /// Flushes the sinks when their records have waited FLUSH_EVERY, or
    /// FLUSH_RECORDS of them are waiting.
    pub fn flush_due(&mut self) {
        let many = self
            .sinks
            .as_ref()
            .is_some_and(|s| s.waiting() >= FLUSH_RECORDS);
        if many || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procflow_core::flow::{Direction, FlowInfo, Origin, Proto};
    use procflow_core::identity::{Owner, RunningProcess};
    use procflow_core::live::{Delta, DeltaMsg};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::net::{IpAddr, Ipv4Addr};
    use std::rc::Rc;

    const S: u64 = 1_000_000_000;

    /// A kernel that gives what the test scripted, at the time it set.
    #[derive(Default)]
    struct Script {
        now: u64,
        batches: VecDeque<Vec<KernelRecord>>,
        /// Live TCP counters by cookie, for dumps.
        tcp: HashMap<u64, FlowView>,
        dgram: HashMap<FlowKey, Counters>,
    }

    #[derive(Clone, Default)]
    struct Scripted(Rc<RefCell<Script>>);

    impl KernelSource for Scripted {
        fn poll(&mut self, _: Duration) -> Vec<KernelRecord> {
            self.0.borrow_mut().batches.pop_front().unwrap_or_default()
        }
        fn dump(&mut self) -> Result<Dump> {
            let s = self.0.borrow();
            Ok(Dump {
                views: s.tcp.values().cloned().collect(),
                slots: Vec::new(),
                contexts: s.tcp.len(),
                live_udp: HashSet::new(),
                live: s.tcp.keys().copied().collect(),
                namespaces: HashSet::new(),
                started_boot_ns: s.now,
                started_unix_ns: s.now,
            })
        }
        fn datagram_counters(&self, key: &FlowKey, remove: bool) -> Option<Counters> {
            let mut s = self.0.borrow_mut();
            if remove {
                s.dgram.remove(key)
            } else {
                s.dgram.get(key).copied()
            }
        }
        fn sweep_datagram_entries(&self, _: &Dump, _: &dyn Fn(&FlowKey) -> bool) -> DatagramSweep {
            DatagramSweep::default()
        }
        fn live_packet_sockets(&mut self) -> HashSet<u64> {
            HashSet::new()
        }
        fn attach_devices(&mut self) -> Vec<String> {
            Vec::new()
        }
        fn stats(&self) -> KernelStats {
            KernelStats::default()
        }
        fn now_unix_ns(&self) -> u64 {
            self.0.borrow().now
        }
    }

    struct NoSystem;
    impl SystemLookup for NoSystem {
        fn process(&mut self, _: u32) -> Result<Option<RunningProcess>, &'static str> {
            Ok(None)
        }
        fn user_name(&mut self, _: u32) -> Option<String> {
            None
        }
        fn cgroup_path(&mut self, _: u64) -> Option<String> {
            None
        }
    }

    fn view(cookie: u64, proto: Proto, remote: Option<u16>, tx: u64, rx: u64) -> FlowView {
        FlowView {
            key: match remote {
                None => FlowKey::socket(cookie),
                Some(p) => FlowKey::datagram(cookie, IpAddr::V4(Ipv4Addr::LOCALHOST), p),
            },
            info: FlowInfo {
                proto,
                family: 4,
                direction: Direction::Out,
                origin: Origin::Connect,
                local: (IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + cookie as u16),
                remote: (IpAddr::V4(Ipv4Addr::LOCALHOST), remote.unwrap_or(443)),
                netns: 1,
                link: None,
            },
            owner: Some(Owner {
                pid: 100 + cookie as u32,
                comm: format!("app{cookie}"),
                ..Default::default()
            }),
            counters: Counters {
                tx_bytes: tx,
                rx_bytes: rx,
                tx_packets: u64::from(tx > 0),
                rx_packets: u64::from(rx > 0),
                ..Default::default()
            },
            before_start: None,
            start_ns: S,
        }
    }

    fn collector() -> (Collector<Scripted>, Scripted) {
        let k = Scripted::default();
        let c = Collector::new(k.clone(), Box::new(NoSystem), Hub::new(0));
        (c, k)
    }

    fn deltas(s: &crate::hub::Subscription) -> Vec<DeltaMsg> {
        s.rx.try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    }

    #[test]
    fn a_viewer_sees_kernel_counters_read_at_each_tick_with_rates() {
        let (mut c, k) = collector();
        let sub = c.hub.subscribe(None).unwrap();
        let tcp = view(1, Proto::Tcp, None, 0, 0);
        k.0.borrow_mut().tcp.insert(1, tcp.clone());
        k.0.borrow_mut()
            .batches
            .push_back(vec![KernelRecord::Event(FlowEvent::Open(tcp))]);
        c.drain(Duration::ZERO);
        k.0.borrow_mut().now = 10 * S;
        c.tick().unwrap();
        // One second later the kernel's counters have grown.
        {
            let mut s = k.0.borrow_mut();
            s.now = 11 * S;
            s.tcp.get_mut(&1).unwrap().counters.tx_bytes = 5000;
            s.tcp.get_mut(&1).unwrap().counters.rx_bytes = 700;
        }
        c.tick().unwrap();
        let snap = c.hub.snapshot(None);
        assert_eq!(snap.time_ns, 11 * S);
        let p = &snap.processes[0];
        assert_eq!(
            (p.owner.pid, p.traffic.tx_bytes, p.traffic.rx_bytes),
            (101, 5000, 700)
        );
        assert_eq!((p.rate.tx_1s, p.rate.rx_1s), (5000.0, 700.0));
        assert_eq!(snap.flows[0].traffic.tx_bytes, 5000);
        // The subscriber saw the open, the growth and both ticks, in order.
        let d = deltas(&sub);
        let seqs: Vec<u64> = d.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(d
            .iter()
            .any(|m| matches!(&m.delta, Delta::Flow(f) if f.traffic.tx_bytes == 5000)));
        assert_eq!(
            d.iter()
                .filter(|m| matches!(m.delta, Delta::Tick { .. }))
                .count(),
            2
        );
        assert_eq!(snap.seq, d.last().unwrap().seq);
    }

    #[test]
    fn a_datagram_flow_that_closes_between_snapshots_keeps_its_final_count() {
        let (mut c, k) = collector();
        let _ = c.hub.snapshot(None);
        let udp = view(2, Proto::Udp, Some(53), 64, 0);
        let key = udp.key;
        k.0.borrow_mut().dgram.insert(
            key,
            Counters {
                tx_bytes: 640,
                rx_bytes: 1280,
                tx_packets: 10,
                rx_packets: 10,
                ..Default::default()
            },
        );
        k.0.borrow_mut().batches.push_back(vec![
            KernelRecord::Event(FlowEvent::Open(udp)),
            KernelRecord::Release {
                cookie: 2,
                end_ns: 3 * S,
                slot: None,
            },
        ]);
        c.drain(Duration::ZERO);
        k.0.borrow_mut().now = 4 * S;
        c.tick().unwrap();
        let snap = c.hub.snapshot(None);
        assert!(snap.flows.is_empty(), "closed flows leave the live list");
        let p = &snap.processes[0];
        assert_eq!((p.traffic.tx_bytes, p.traffic.rx_bytes), (640, 1280));
        assert_eq!((p.open_flows, p.flows), (0, 1));
        assert_eq!(snap.totals.traffic.rx_packets, 10);
        assert!(
            k.0.borrow().dgram.is_empty(),
            "the kernel entry was deleted"
        );
    }

    #[test]
    fn without_a_viewer_ticks_do_not_read_the_kernel() {
        let (mut c, k) = collector();
        k.0.borrow_mut()
            .tcp
            .insert(1, view(1, Proto::Tcp, None, 9, 9));
        c.tick().unwrap();
        assert_eq!(c.refreshes.count, 0);
        let _ = c.hub.snapshot(None);
        c.tick().unwrap();
        assert_eq!(c.refreshes.count, 1);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_the_collector_goes_on() {
        let (mut c, k) = collector();
        let stuck = c.hub.subscribe(None).unwrap();
        let n = crate::hub::SUBSCRIBER_QUEUE as u64 + 100;
        let batch: Vec<KernelRecord> = (1..=n)
            .map(|i| KernelRecord::Event(FlowEvent::Open(view(i, Proto::Tcp, None, 0, 0))))
            .collect();
        k.0.borrow_mut().batches.push_back(batch);
        c.drain(Duration::ZERO);
        assert_eq!(c.table.len() as u64, n);
        assert_eq!(c.hub.stats().subscribers_dropped, 1);
        assert_eq!(stuck.rx.try_iter().count(), crate::hub::SUBSCRIBER_QUEUE);
        assert_eq!(c.hub.snapshot(None).totals.open_flows as u64, n);
    }
}
