//! `procflow run`: the monitor. Kernel records flow one way, through the
//! flow table, into the sinks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use procflow_bpf::{Kernel, Record, ScanReport};
use procflow_core::event::FlowView;
use procflow_core::flow::Counters;
use procflow_core::{FlowEvent, FlowKey, FlowTable};
use serde_json::json;

use crate::sinks::Sinks;
use crate::system::ProcSystem;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    sinks: crate::sinks::SinkArgs,
    /// Also write a cumulative record for every open flow this often:
    /// seconds (10, 0.5) or a duration (30s, 5m).
    #[arg(long, value_name = "TIME", value_parser = procflow_store::timespec::parse_period)]
    interval: Option<Duration>,
    /// Stop by itself after this long: seconds (3600) or a duration (1h);
    /// SIGINT and SIGTERM stop it too.
    #[arg(long, value_name = "TIME", value_parser = procflow_store::timespec::parse_period)]
    duration: Option<Duration>,
    #[command(flatten)]
    rules: crate::enforce::RulesArgs,
    #[command(flatten)]
    resolve: crate::resolve::ResolveArgs,
}

/// The collector: applies kernel records to the flow table and sends the
/// resulting records to the sinks.
struct Collector {
    kernel: Kernel,
    table: FlowTable,
    sys: ProcSystem,
    sinks: Sinks,
    rules: crate::enforce::Enforcer,
    resolver: Option<crate::resolve::Resolver>,
    swept: Swept,
    refreshes: Refreshes,
    last_refresh: Instant,
    last_packet_sweep: Instant,
    /// Rules are loaded: packet sockets are decided at every device.
    rules_on: bool,
    last_device_sweep: Instant,
    /// Device attach failures already logged.
    device_failures: std::collections::HashSet<String>,
}

/// What the periodic sweep ended because a RELEASE record was lost.
#[derive(Debug, Default, serde::Serialize)]
struct Swept {
    /// Flows of UDP sockets that were gone, ended with a closed record.
    flows: u64,
    /// Kernel datagram entries of such sockets, never announced, deleted.
    kernel_entries: u64,
}

/// Readings of the live sockets (`refresh`): how many, and how long the
/// last and the longest took (kernel walk and flow table updates).
#[derive(Debug, Default, serde::Serialize)]
struct Refreshes {
    count: u64,
    last_ms: f64,
    max_ms: f64,
    /// Flows the flow table held after the last one.
    flows: usize,
}

/// How often the live sockets are read even without `--interval`: the
/// sweep of flows whose RELEASE record was lost runs with it.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How often the live packet sockets are listed (only while there are
/// packet-socket flows): their flows end at the first listing without them.
const PACKET_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How often, while rules are loaded, devices are looked for that the
/// packet-socket rules program is not attached to yet.
const DEVICE_SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Collector {
    fn apply(&mut self, rec: Record) -> Result<()> {
        match rec {
            Record::Event(ev) => {
                let out = self.table.ingest(ev, &mut self.sys);
                // A record without a name: no DNS answer (nor an earlier
                // lookup) named its remote.
                if let Some(res) = self.resolver.as_mut() {
                    for r in out.iter().filter(|r| r.remote_name.is_none()) {
                        res.want(r.remote_ip);
                    }
                }
                self.sinks.flows(&out);
                Ok(())
            }
            Record::Release {
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
                    if let Some(r) = self.table.close(&key, end_ns, &mut self.sys) {
                        self.sinks.flows(&[r]);
                    }
                }
                Ok(())
            }
            Record::Verdict(v) => {
                if let Some(r) = self.rules.verdict(&v, &mut self.table, &mut self.sys) {
                    self.sinks.verdict(r);
                }
                Ok(())
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
                .ingest(FlowEvent::Update(v.clone()), &mut self.sys);
        }
    }

    /// Reads the current counters of every live flow from the kernel, and
    /// ends the flows of UDP sockets that are gone although their RELEASE
    /// record never arrived (and deletes such kernel entries).
    fn refresh(&mut self) -> Result<usize> {
        let started = Instant::now();
        let mut dump = self.kernel.dump()?;
        let contexts = dump.contexts;
        for v in std::mem::take(&mut dump.views) {
            self.table.ingest(FlowEvent::Update(v), &mut self.sys);
        }
        let mut slots = std::collections::HashMap::new();
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
        let end = self.kernel.clock.unix_ns(self.kernel.clock.boot_now());
        for key in gone {
            if let Some(c) = self.kernel.datagram_counters(&key, true) {
                self.table.update_counters(&key, c);
            }
            if let Some(r) = self.table.close(&key, end, &mut self.sys) {
                self.swept.flows += 1;
                self.sinks.flows(&[r]);
            }
        }
        self.table.prune_owners(&dump.live);
        let table = &self.table;
        self.swept.kernel_entries +=
            self.kernel
                .sweep_datagram_entries(&dump, &|k| table.contains(k)) as u64;
        self.last_refresh = Instant::now();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let r = &mut self.refreshes;
        r.count += 1;
        r.last_ms = ms;
        r.max_ms = r.max_ms.max(ms);
        r.flows = self.table.len();
        Ok(contexts)
    }

    /// Ends the flows of packet sockets that are gone (their release runs
    /// no hook): every flow of a packet socket the kernel no longer lists.
    fn sweep_packet_sockets(&mut self) -> Result<()> {
        self.last_packet_sweep = Instant::now();
        if !self.table.has_packet_flows() {
            return Ok(());
        }
        let read_at = self.kernel.clock.unix_ns(self.kernel.clock.boot_now());
        let live = self.kernel.live_packet_sockets();
        for key in self.table.packet_flows_gone(&live, read_at) {
            if let Some(c) = self.kernel.datagram_counters(&key, true) {
                self.table.update_counters(&key, c);
            }
            let end = self.kernel.clock.unix_ns(self.kernel.clock.boot_now());
            if let Some(r) = self.table.close(&key, end, &mut self.sys) {
                self.sinks.flows(&[r]);
            }
        }
        Ok(())
    }

    /// While rules are loaded: the packet-socket rules program on every
    /// device of every namespace, new ones included.
    fn sweep_devices(&mut self) {
        self.last_device_sweep = Instant::now();
        if !self.rules_on {
            return;
        }
        let (_, failed) = self.kernel.attach_devices();
        for f in failed {
            if self.device_failures.insert(f.clone()) {
                tracing::warn!("packet-socket rules cannot hold on {f}");
            }
        }
    }

    fn drain(&mut self, timeout: Duration) -> Result<()> {
        for r in self.kernel.poll(timeout) {
            self.apply(r)?;
        }
        if let Some(res) = self.resolver.as_mut() {
            for (ip, name) in res.answers() {
                self.table.learn_reverse(ip, name);
            }
        }
        Ok(())
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let started = Instant::now();
    let kernel = Kernel::open(args.rules.rules.is_some()).context("loading the kernel programs")?;
    let mut sinks = Sinks::open(&args.sinks)?;
    for r in kernel.refused() {
        tracing::warn!("the kernel refused {}: {}", r.name, r.reason);
    }
    let rules = match crate::enforce::Enforcer::start(&args.rules, &kernel, &mut sinks) {
        Ok(r) => r,
        Err(e) => {
            // The refusal is on record (log and store) before procflow ends.
            sinks.flush();
            return Err(e);
        }
    };
    let resolver = crate::resolve::Resolver::start(&args.resolve)?;
    let sys = ProcSystem::new(kernel.cgroup_root.clone());
    let mut c = Collector {
        kernel,
        table: FlowTable::new(),
        sys,
        sinks,
        rules,
        resolver,
        swept: Swept::default(),
        refreshes: Refreshes::default(),
        last_refresh: Instant::now(),
        last_packet_sweep: Instant::now(),
        rules_on: args.rules.rules.is_some(),
        last_device_sweep: Instant::now(),
        device_failures: Default::default(),
    };
    // Before the first frame of any packet socket can pass unchecked.
    c.sweep_devices();

    // Records that arrived while attaching come first, then the scan's.
    c.drain(Duration::ZERO)?;
    let (found, scan) = c.kernel.scan().context("start-up scan")?;
    for e in &scan.failed {
        tracing::warn!("start-up scan: {e}");
    }
    let bypass = c.kernel.stats().bypass_sockets;
    if bypass > 0 {
        tracing::warn!(
            "{bypass} packet socket(s) turned PACKET_QDISC_BYPASS on before procflow started: \
             their frames are not counted (no hook sees that path)"
        );
    }
    for r in found {
        c.apply(r)?;
    }
    let contexts_at_start = c.refresh()?;
    c.rules
        .after_start(&mut c.kernel, &mut c.table, &mut c.sys)?;
    c.sinks.flush();
    tracing::info!(
        "watching: {} namespaces, {} sockets found in {:?}",
        scan.namespaces,
        scan.sockets,
        scan.elapsed
    );

    let interval = args.interval;
    let deadline = args.duration.and_then(|d| started.checked_add(d));
    let mut next_snapshot = interval.map(|i| Instant::now() + i);
    while !stop.load(Ordering::Relaxed) && !c.sinks.broken {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        c.drain(Duration::from_millis(100))?;
        c.rules
            .check_reload(&mut c.kernel, &mut c.table, &mut c.sys, &mut c.sinks)?;
        if let (Some(at), Some(every)) = (next_snapshot, interval) {
            if Instant::now() >= at {
                c.refresh()?;
                let snap = c.table.snapshot(&mut c.sys);
                c.sinks.flows(&snap);
                next_snapshot = Some(at + every);
            }
        }
        if c.last_refresh.elapsed() >= SWEEP_EVERY {
            c.refresh()?;
        }
        if c.last_packet_sweep.elapsed() >= PACKET_SWEEP_EVERY {
            c.sweep_packet_sockets()?;
        }
        if c.last_device_sweep.elapsed() >= DEVICE_SWEEP_EVERY {
            c.sweep_devices();
        }
        c.sinks.flush();
    }

    // Stopping: everything still queued, then a final record for every open flow.
    c.drain(Duration::ZERO)?;
    c.sweep_packet_sockets()?;
    let contexts_at_stop = c.refresh()?;
    let snap = c.table.snapshot(&mut c.sys);
    c.sinks.flows(&snap);
    c.sinks.flush();
    let stats = stats_record(&c, &scan, contexts_at_start, contexts_at_stop);
    c.sinks.finish(&stats);
    Ok(())
}

fn stats_record(
    c: &Collector,
    scan: &ScanReport,
    contexts_at_start: usize,
    contexts_at_stop: usize,
) -> serde_json::Value {
    let k = c.kernel.stats();
    let t = c.table.stats();
    json!({
        "type": "stats",
        "flows_seen": t.flows_seen,
        "flows_closed": t.flows_closed,
        "flows_open": c.table.len(),
        "exe_unknown": t.exe_unknown,
        "owners_dropped": t.owners_dropped,
        "events_lost": k.events_lost,
        "storage_failures": k.no_storage,
        "datagram_table_full": k.dgram_full,
        "verdicts_suppressed": k.verdicts_suppressed,
        "fail_closed": k.fail_closed,
        "unwalkable_dropped": k.unwalkable_dropped,
        "rerouted_dropped": k.rerouted_dropped,
        "datagram_quota": k.datagram_quota,
        "packet_bypass_sockets_at_start": k.bypass_sockets,
        "dns_queries": t.dns.queries,
        "dns_answered": t.dns.answered,
        "dns_rejected": t.dns.rejected,
        "dns_queries_refused": t.dns.queries_refused,
        "dns_queries_expired": t.dns.queries_expired,
        "sock_destroy_replies_ignored": procflow_bpf::sock_destroy::ignored_replies(),
        "packet_devices": c.kernel.devices_attached(),
        "programs_loaded": c.kernel.loaded(),
        "programs_refused": c.kernel.refused().iter()
            .map(|r| json!({"name": r.name, "reason": r.reason}))
            .collect::<Vec<_>>(),
        "scan": {
            "namespaces": scan.namespaces,
            "sockets": scan.sockets,
            "millis": scan.elapsed.as_secs_f64() * 1000.0,
            "failed": scan.failed,
        },
        "socket_contexts_at_start": contexts_at_start,
        "socket_contexts_at_stop": contexts_at_stop,
        "datagram_entries": c.kernel.datagram_entries(),
        "swept": c.swept,
        "refresh": c.refreshes,
        "store": c.sinks.stats(),
        "log": c.sinks.log_stats(),
        "resolve": c.resolver.as_ref().map(crate::resolve::Resolver::stats),
    })
}
