//! The exporter's flows: from procflow's cumulative flow records to IPFIX
//! flows with delta counts, ended by the active timeout, the idle timeout,
//! the socket's close, or procflow's stop. Pure, with times passed in:
//! unit tested with records made by hand.
//!
//! Each socket flow is followed from its first record to its close; what
//! its counters grew since the last export goes into the next export, so
//! the deltas of one flow add up exactly to its totals. An IPFIX flow
//! starts when the socket flow's counters grow and ends at the active
//! timeout (the socket flow goes on in a new IPFIX flow), when they have
//! not grown for the idle timeout (traffic that resumes starts a new IPFIX
//! flow), at close, or at stop. A socket flow whose close record was lost
//! ends its IPFIX flow at the idle timeout; its state stays until the
//! table is full, when the flows idle longest are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use procflow_core::flow::{Counters, FlowState, Proto};
use procflow_core::timefmt::parse_rfc3339;
use procflow_core::FlowRecord;

use super::wire::{DataRecord, EndReason, ProcFields, Way};

/// Socket flows followed at most; past that the flows idle longest are
/// dropped, a sixteenth at a time (their open IPFIX flows end with
/// lackOfResources).
pub const MAX_FLOWS: usize = 262_144;

/// The current IPFIX flow of a socket flow.
#[derive(Debug, Clone, Copy)]
struct Interval {
    /// flowStartMilliseconds, in ns.
    start_ns: u64,
    /// When it began, for the active timeout.
    began_ns: u64,
}

#[derive(Debug)]
struct Tracked {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    protocol: u8,
    process: Arc<ProcFields>,
    seen: Counters,
    exported: Counters,
    interval: Option<Interval>,
    /// Whether an IPFIX flow of it was started before.
    started: bool,
    /// When its counters last grew (or it was first seen).
    last_growth_ns: u64,
}

/// The timeouts, in ns.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub active_ns: u64,
    pub idle_ns: u64,
}

/// The socket flows being followed.
#[derive(Debug)]
pub struct Meter {
    flows: HashMap<String, Tracked>,
    /// One shared copy of each process's fields.
    processes: HashMap<u32, Arc<ProcFields>>,
    timeouts: Timeouts,
    max_flows: usize,
    /// Socket flows dropped because the table was full.
    pub evicted: u64,
    /// The exporter's own flow to the collector (process id, collector
    /// address), never exported.
    pub own: Option<(u32, IpAddr, u16)>,
}

impl Meter {
    pub fn new(timeouts: Timeouts, max_flows: usize) -> Meter {
        Meter {
            flows: HashMap::new(),
            processes: HashMap::new(),
            timeouts,
            max_flows: max_flows.max(1),
            evicted: 0,
            own: None,
        }
    }

    /// Socket flows followed now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// A flow record observed at `now_ns`; `emit` gets the data records
    /// it ends (at close).
    pub fn record(&mut self, r: &FlowRecord, now_ns: u64, emit: &mut dyn FnMut(&DataRecord<'_>)) {
        if !matches!(r.family, 4 | 6) || matches!(r.proto, Proto::Ether(_) | Proto::Packet) {
            return;
        }
        if let (Some((pid, ip, port)), Some(p)) = (self.own, &r.process) {
            if p.pid == pid && r.remote_ip == ip && r.remote_port == port {
                return;
            }
        }
        if !self.flows.contains_key(&r.flow_id) && self.flows.len() >= self.max_flows {
            self.evict(emit);
        }
        let process = ProcFields::of(r.process.as_ref());
        let t = self
            .flows
            .entry(r.flow_id.clone())
            .or_insert_with(|| Tracked {
                local: (r.local_ip, r.local_port),
                remote: (r.remote_ip, r.remote_port),
                protocol: r.proto.number(),
                process: Arc::new(ProcFields::default()),
                seen: Counters::default(),
                exported: Counters::default(),
                interval: None,
                started: false,
                last_growth_ns: now_ns,
            });
        t.local = (r.local_ip, r.local_port);
        t.remote = (r.remote_ip, r.remote_port);
        if *t.process != process {
            let shared = self
                .processes
                .entry(process.pid)
                .or_insert_with(|| Arc::new(process.clone()));
            if **shared != process {
                *shared = Arc::new(process);
            }
            t.process = Arc::clone(shared);
        }
        let now = t.seen.max(r.counters);
        if now != t.seen {
            t.seen = now;
            t.last_growth_ns = now_ns;
            if t.interval.is_none() {
                let start_ns = if t.started {
                    now_ns
                } else {
                    parse_rfc3339(&r.start).map_or(now_ns, |s| s.min(now_ns))
                };
                t.interval = Some(Interval {
                    start_ns,
                    began_ns: now_ns,
                });
                t.started = true;
            }
        }
        if r.state == FlowState::Closed {
            let end = r.end.as_deref().and_then(parse_rfc3339).unwrap_or(now_ns);
            if let Some(t) = self.flows.remove(&r.flow_id) {
                export(&t, EndReason::EndOfFlow, end, emit);
            }
        }
    }

    /// About once a second: ends the IPFIX flows whose active or idle
    /// timeout passed.
    pub fn tick(&mut self, now_ns: u64, emit: &mut dyn FnMut(&DataRecord<'_>)) {
        let to = self.timeouts;
        for t in self.flows.values_mut() {
            let Some(iv) = t.interval else { continue };
            if now_ns.saturating_sub(t.last_growth_ns) >= to.idle_ns {
                export(t, EndReason::IdleTimeout, t.last_growth_ns, emit);
                t.exported = t.seen;
                t.interval = None;
            } else if now_ns.saturating_sub(iv.began_ns) >= to.active_ns {
                export(t, EndReason::ActiveTimeout, t.last_growth_ns, emit);
                t.exported = t.seen;
                t.interval = Some(Interval {
                    start_ns: t.last_growth_ns,
                    began_ns: now_ns,
                });
            }
        }
        if self.processes.len() > 2 * self.flows.len() + 1024 {
            self.processes.retain(|_, p| Arc::strong_count(p) > 1);
        }
    }

    /// At stop: every open IPFIX flow ends as a forced end.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&DataRecord<'_>)) {
        for (_, t) in self.flows.drain() {
            if t.interval.is_some() {
                export(&t, EndReason::ForcedEnd, t.last_growth_ns, emit);
            }
        }
    }

    /// Drops the sixteenth of the flows idle longest.
    fn evict(&mut self, emit: &mut dyn FnMut(&DataRecord<'_>)) {
        let mut by_age: Vec<(u64, String)> = self
            .flows
            .iter()
            .map(|(k, t)| (t.last_growth_ns, k.clone()))
            .collect();
        let n = (self.max_flows / 16).max(1).min(by_age.len());
        if n < by_age.len() {
            by_age.select_nth_unstable(n);
        }
        for (_, k) in by_age.into_iter().take(n) {
            if let Some(t) = self.flows.remove(&k) {
                if t.interval.is_some() {
                    export(&t, EndReason::LackOfResources, t.last_growth_ns, emit);
                }
                self.evicted += 1;
            }
        }
    }
}

/// The records of what `t` grew since its last export: one each way that
/// has traffic.
fn export(t: &Tracked, reason: EndReason, end_ns: u64, emit: &mut dyn FnMut(&DataRecord<'_>)) {
    let Some(iv) = t.interval else { return };
    let d = t.seen.since(t.exported);
    for (way, octets, packets) in [
        (Way::Out, d.tx_bytes, d.tx_packets),
        (Way::In, d.rx_bytes, d.rx_packets),
    ] {
        if packets == 0 && octets == 0 {
            continue;
        }
        emit(&DataRecord {
            way,
            local: t.local,
            remote: t.remote,
            protocol: t.protocol,
            octets,
            packets,
            start_ms: iv.start_ns / 1_000_000,
            end_ms: end_ns.max(iv.start_ns) / 1_000_000,
            reason,
            process: &t.process,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    /// 2026-12-01T00:00:00Z, FlowRecord::example's start.
    const T0: u64 = 1_796_083_200 * S;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Out {
        way: Way,
        octets: u64,
        packets: u64,
        start_ms: u64,
        end_ms: u64,
        reason: EndReason,
        pid: u32,
    }

    fn meter() -> Meter {
        Meter::new(
            Timeouts {
                active_ns: 60 * S,
                idle_ns: 15 * S,
            },
            MAX_FLOWS,
        )
    }

    fn flow(id: &str, tx: u64, rx: u64) -> FlowRecord {
        let mut r = FlowRecord::example(id);
        r.counters.tx_bytes = tx;
        r.counters.rx_bytes = rx;
        r.counters.tx_packets = tx.div_ceil(1000);
        r.counters.rx_packets = rx.div_ceil(1000);
        r
    }

    fn closed(mut r: FlowRecord, end: &str) -> FlowRecord {
        r.state = FlowState::Closed;
        r.end = Some(end.into());
        r
    }

    fn collect(out: &mut Vec<Out>) -> impl FnMut(&DataRecord<'_>) + '_ {
        |d: &DataRecord<'_>| {
            out.push(Out {
                way: d.way,
                octets: d.octets,
                packets: d.packets,
                start_ms: d.start_ms,
                end_ms: d.end_ms,
                reason: d.reason,
                pid: d.process.pid,
            })
        }
    }

    #[test]
    fn a_short_flow_is_one_record_each_way_at_close() {
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("1", 0, 0), T0, &mut collect(&mut out));
        m.record(&flow("1", 3000, 500), T0 + S, &mut collect(&mut out));
        m.tick(T0 + S, &mut collect(&mut out));
        assert!(out.is_empty());
        m.record(
            &closed(flow("1", 3100, 900), "2026-12-01T00:00:01.500Z"),
            T0 + 2 * S,
            &mut collect(&mut out),
        );
        let t0_ms = T0 / 1_000_000;
        assert_eq!(
            out,
            vec![
                Out {
                    way: Way::Out,
                    octets: 3100,
                    packets: 4,
                    start_ms: t0_ms,
                    end_ms: t0_ms + 1500,
                    reason: EndReason::EndOfFlow,
                    pid: 100
                },
                Out {
                    way: Way::In,
                    octets: 900,
                    packets: 1,
                    start_ms: t0_ms,
                    end_ms: t0_ms + 1500,
                    reason: EndReason::EndOfFlow,
                    pid: 100
                },
            ]
        );
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn a_direction_without_packets_is_left_out() {
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("1", 5000, 0), T0 + S, &mut collect(&mut out));
        m.finish(&mut collect(&mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].way, Way::Out);
        assert_eq!(out[0].reason, EndReason::ForcedEnd);
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("2", 0, 0), T0 + S, &mut collect(&mut out));
        m.record(
            &closed(flow("2", 0, 0), "2026-12-01T00:00:02Z"),
            T0 + 2 * S,
            &mut collect(&mut out),
        );
        assert!(out.is_empty(), "no traffic, no record");
    }

    #[test]
    fn a_long_flow_is_cut_at_the_active_timeout_and_its_deltas_sum_to_its_totals() {
        let mut m = meter();
        let mut out = Vec::new();
        let (mut tx, mut rx) = (0, 0);
        for s in 1..=200u64 {
            tx += 1000 + s;
            rx += 7 * s;
            let now = T0 + s * S;
            m.record(&flow("1", tx, rx), now, &mut collect(&mut out));
            m.tick(now, &mut collect(&mut out));
        }
        let active: Vec<&Out> = out
            .iter()
            .filter(|o| o.reason == EndReason::ActiveTimeout)
            .collect();
        assert_eq!(active.len(), 6, "3 intervals of 60 s, both ways: {out:?}");
        m.record(
            &closed(flow("1", tx + 10, rx), "2026-12-01T00:03:21Z"),
            T0 + 201 * S,
            &mut collect(&mut out),
        );
        let sum = |w: Way| -> (u64, u64) {
            out.iter()
                .filter(|o| o.way == w)
                .fold((0, 0), |a, o| (a.0 + o.octets, a.1 + o.packets))
        };
        assert_eq!(
            sum(Way::Out),
            (tx + 10, flow("", tx + 10, 0).counters.tx_packets)
        );
        assert_eq!(sum(Way::In), (rx, flow("", 0, rx).counters.rx_packets));
        let last = out.last().unwrap();
        assert_eq!(last.reason, EndReason::EndOfFlow);
        // Intervals follow one another.
        let outs: Vec<&Out> = out.iter().filter(|o| o.way == Way::Out).collect();
        for w in outs.windows(2) {
            assert_eq!(w[0].end_ms, w[1].start_ms);
            assert!(w[1].end_ms > w[1].start_ms);
        }
    }

    #[test]
    fn an_idle_flow_ends_at_the_idle_timeout_and_resumed_traffic_is_a_new_flow() {
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("1", 1000, 0), T0 + S, &mut collect(&mut out));
        m.tick(T0 + 15 * S, &mut collect(&mut out));
        assert!(out.is_empty(), "14 s idle");
        m.tick(T0 + 16 * S, &mut collect(&mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, EndReason::IdleTimeout);
        assert_eq!(
            out[0].end_ms,
            (T0 + S) / 1_000_000,
            "ends at the last growth"
        );
        m.tick(T0 + 100 * S, &mut collect(&mut out));
        assert_eq!(out.len(), 1, "ended once");
        m.record(&flow("1", 1500, 0), T0 + 120 * S, &mut collect(&mut out));
        m.finish(&mut collect(&mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].octets, 500, "only the growth since");
        assert_eq!(out[1].start_ms, (T0 + 120 * S) / 1_000_000);
        assert_eq!(out[1].reason, EndReason::ForcedEnd);
    }

    #[test]
    fn a_flow_whose_close_was_lost_ends_at_the_idle_timeout() {
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("1", 1000, 1000), T0 + S, &mut collect(&mut out));
        for s in 2..40 {
            m.tick(T0 + s * S, &mut collect(&mut out));
        }
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.reason == EndReason::IdleTimeout));
        m.finish(&mut collect(&mut out));
        assert_eq!(out.len(), 2, "nothing left to force");
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_flows_idle_longest() {
        let mut m = Meter::new(
            Timeouts {
                active_ns: 60 * S,
                idle_ns: 15 * S,
            },
            32,
        );
        let mut out = Vec::new();
        for i in 0..100u64 {
            m.record(
                &flow(&i.to_string(), 100, 0),
                T0 + i * S / 100,
                &mut collect(&mut out),
            );
            assert!(m.len() <= 32);
        }
        assert_eq!(m.evicted, 100 - m.len() as u64);
        assert_eq!(out.len() as u64, m.evicted);
        assert!(out.iter().all(|o| o.reason == EndReason::LackOfResources));
        m.finish(&mut collect(&mut out));
        assert_eq!(
            out.iter().map(|o| o.octets).sum::<u64>(),
            100 * 100,
            "nothing lost"
        );
    }

    #[test]
    fn counters_never_go_back_and_records_carry_the_latest_process() {
        let mut m = meter();
        let mut out = Vec::new();
        m.record(&flow("1", 2000, 0), T0 + S, &mut collect(&mut out));
        m.record(&flow("1", 1000, 0), T0 + 2 * S, &mut collect(&mut out));
        let mut r = flow("1", 2500, 0);
        r.process.as_mut().unwrap().pid = 200;
        m.record(&r, T0 + 3 * S, &mut collect(&mut out));
        m.finish(&mut collect(&mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].octets, 2500);
        assert_eq!(out[0].pid, 200);
    }

    #[test]
    fn the_exporters_own_flow_to_the_collector_is_not_exported() {
        let mut m = meter();
        m.own = Some((100, "10.0.0.1".parse().unwrap(), 443));
        let mut out = Vec::new();
        m.record(&flow("1", 100, 100), T0, &mut collect(&mut out));
        let mut r = flow("2", 100, 100);
        r.process.as_mut().unwrap().pid = 101;
        m.record(&r, T0, &mut collect(&mut out));
        m.finish(&mut collect(&mut out));
        assert_eq!(out.len(), 2, "only the other process's: {out:?}");
        assert!(out.iter().all(|o| o.pid == 101));
    }

    #[test]
    fn frames_that_are_not_ip_are_not_exported() {
        let mut m = meter();
        let mut out = Vec::new();
        let mut r = flow("1", 100, 100);
        r.proto = Proto::Ether(0x0806);
        m.record(&r, T0, &mut collect(&mut out));
        m.finish(&mut collect(&mut out));
        assert!(out.is_empty());
        assert_eq!(m.len(), 0);
    }
}
