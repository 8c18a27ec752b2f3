//! IPFIX flow export (RFC 7011): an observer of the hub's records that
//! sends flow records with the process that made them to a collector
//! (docs/fleet.md, "IPFIX flow records").
//!
//! Two threads: the meter's ([`meter`]), which turns the hub's cumulative
//! flow records into IPFIX records with delta counts and gathers them into
//! messages ([`wire`]), and the sender's ([`send`]), which takes the
//! messages from a bounded queue and sends them over UDP or TCP with the
//! templates, the export time and the sequence numbers. Neither reaches
//! back into the collector; a collector that is down or slow costs the messages the
//! queue cannot hold (counted), never the monitor.

mod meter;
mod send;
mod wire;

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use procflow_core::live::Record;

use crate::hub::{Hub, Observed};
use meter::{Meter, Timeouts, MAX_FLOWS};
use send::{SendQueue, Sender, QUEUE_MESSAGES};
use wire::{Builder, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// One message a datagram (RFC 7011 §10.3).
    #[default]
    Udp,
    /// A stream to the collector, reconnected when it breaks (§10.4).
    Tcp,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IpfixArgs {
    /// Export flow records over IPFIX (RFC 7011) to this collector
    /// (HOST:PORT), with the process of each flow (docs/fleet.md). The
    /// records carry command lines and user names in clear text: send them
    /// only over a network you trust.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_target)]
    pub(crate) ipfix: Option<String>,
    /// How IPFIX messages travel to the collector.
    #[arg(
        long,
        value_name = "PROTO",
        value_enum,
        default_value_t = Transport::Udp,
        requires = "ipfix"
    )]
    pub(crate) ipfix_transport: Transport,
    /// The IPFIX observation domain id in every message header.
    #[arg(long, value_name = "ID", default_value_t = 1, requires = "ipfix")]
    pub(crate) ipfix_domain: u32,
    /// Send the IPFIX templates again this often over UDP (over TCP they
    /// go once per connection): seconds or a duration.
    #[arg(
        long,
        value_name = "TIME",
        default_value = "60s",
        value_parser = procflow_store::timespec::parse_period,
        requires = "ipfix"
    )]
    pub(crate) ipfix_template_refresh: Duration,
    /// A flow still active after this long is exported with what it did
    /// since its last export, and goes on in a new IPFIX flow.
    #[arg(
        long,
        value_name = "TIME",
        default_value = "60s",
        value_parser = procflow_store::timespec::parse_period,
        requires = "ipfix"
    )]
    pub(crate) ipfix_active_timeout: Duration,
    /// A flow whose counters did not grow for this long ends its IPFIX
    /// flow; traffic that resumes starts a new one.
    #[arg(
        long,
        value_name = "TIME",
        default_value = "15s",
        value_parser = procflow_store::timespec::parse_period,
        requires = "ipfix"
    )]
    pub(crate) ipfix_idle_timeout: Duration,
}

/// A collector's HOST:PORT (a name, an IPv4 address or a bracketed IPv6
/// one, and a port from 1 to 65535); resolved when the exporter starts.
pub fn parse_target(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "{s:?} is not HOST:PORT (192.0.2.10:4739, [2001:db8::10]:4739, collector.example:4739)"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if !ok {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// What the exporter did, for its log line at stop and for `/metrics`.
#[derive(Debug, Default)]
pub struct IpfixStats {
    pub records_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Bytes of the messages sent (templates included).
    pub bytes_sent: AtomicU64,
    pub templates_sent: AtomicU64,
    pub records_dropped: AtomicU64,
    pub messages_dropped: AtomicU64,
    /// Hub records the exporter's queue could not take.
    pub observer_lost: AtomicU64,
    /// Flows dropped from the exporter's table because it was full.
    pub flows_evicted: AtomicU64,
    pub connections: AtomicU64,
}

impl IpfixStats {
    /// (name, help, value) of each counter, as `/metrics` shows them.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 6] {
        let g = Self::get;
        [
            (
                "procflow_ipfix_records_sent",
                "IPFIX data records sent",
                g(&self.records_sent),
            ),
            (
                "procflow_ipfix_messages_sent",
                "IPFIX messages sent (templates included)",
                g(&self.messages_sent),
            ),
            (
                "procflow_ipfix_bytes_sent",
                "Bytes of the IPFIX messages sent",
                g(&self.bytes_sent),
            ),
            (
                "procflow_ipfix_records_dropped",
                "IPFIX data records not sent (collector down, queue full)",
                g(&self.records_dropped),
            ),
            (
                "procflow_ipfix_observer_lost",
                "Flow records the IPFIX exporter missed because its queue was full",
                g(&self.observer_lost),
            ),
            (
                "procflow_ipfix_flows_evicted",
                "Flows the IPFIX exporter stopped following because its table was full",
                g(&self.flows_evicted),
            ),
        ]
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The running exporter: the meter's thread and the sender's.
#[derive(Debug)]
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    stats: Arc<IpfixStats>,
    target: String,
}

impl Exporter {
    /// Starts exporting when `--ipfix` is given.
    pub fn start(args: &IpfixArgs, hub: &Arc<Hub>) -> Result<Option<Exporter>> {
        let Some(target) = args.ipfix.clone() else {
            return Ok(None);
        };
        let addr: SocketAddr = target
            .to_socket_addrs()
            .with_context(|| format!("--ipfix {target}: not a HOST:PORT procflow can resolve"))?
            .next()
            .with_context(|| format!("--ipfix {target}: the name has no address"))?;
        let udp = match args.ipfix_transport {
            Transport::Udp => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                let s = UdpSocket::bind(bind).context("--ipfix: opening a UDP socket")?;
                s.connect(addr)
                    .with_context(|| format!("--ipfix {target}: cannot send there"))?;
                Some(s)
            }
            Transport::Tcp => None,
        };
        let stats = Arc::new(IpfixStats::default());
        let queue = Arc::new(SendQueue::new(QUEUE_MESSAGES));
        let sender = Sender::new(
            target.clone(),
            args.ipfix_domain,
            args.ipfix_template_refresh,
            Arc::clone(&queue),
            Arc::clone(&stats),
            udp,
        );
        let sending = std::thread::Builder::new()
            .name("ipfix-send".into())
            .spawn(move || sender.run())?;
        // The live flows' counters are read when the timers need them, not
        // every second: often enough to see a flow grow well within its
        // idle timeout and to export its active intervals on time.
        let obs = hub.observe();
        let read_every = (args.ipfix_idle_timeout / 3)
            .min(args.ipfix_active_timeout / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        let hub = Arc::clone(hub);
        let stop = Arc::new(AtomicBool::new(false));
        let timeouts = Timeouts {
            active_ns: args.ipfix_active_timeout.as_nanos() as u64,
            idle_ns: args.ipfix_idle_timeout.as_nanos() as u64,
        };
        let (s, st, domain) = (Arc::clone(&stop), Arc::clone(&stats), args.ipfix_domain);
        let thread = std::thread::Builder::new()
            .name("ipfix".into())
            .spawn(move || {
                let mut meter = Meter::new(timeouts, MAX_FLOWS);
                meter.own = Some((std::process::id(), addr.ip(), addr.port()));
                let mut m = Metering {
                    meter,
                    builder: Builder::new(domain),
                    queue,
                    stats: st,
                };
                let mut last_timer = Instant::now();
                let mut last_read = Instant::now();
                loop {
                    if last_read.elapsed() >= read_every {
                        hub.want_reading();
                        last_read = Instant::now();
                    }
                    // The timers run on the exporter's own clock: the hub
                    // ticks only while someone watches.
                    if last_timer.elapsed() >= Duration::from_secs(1) {
                        m.observed(Observed::Tick {
                            now_ns: crate::sinks::now_ns(),
                            fresh: false,
                        });
                        last_timer = Instant::now();
                    }
                    let stopping = s.load(Ordering::Relaxed);
                    let item = if stopping {
                        match obs.rx.try_recv() {
                            Ok(i) => i,
                            Err(_) => break,
                        }
                    } else {
                        match obs.rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(i) => i,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    };
                    m.observed(item);
                    m.stats
                        .observer_lost
                        .store(obs.lost.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                m.finish();
                let _ = sending.join();
            })?;
        tracing::info!(
            "ipfix: exporting flow records to {target} ({}, domain {})",
            match args.ipfix_transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
            },
            args.ipfix_domain
        );
        Ok(Some(Exporter {
            stop,
            thread,
            stats,
            target,
        }))
    }

    /// The exporter's counters, shared.
    pub fn stats(&self) -> Arc<IpfixStats> {
        Arc::clone(&self.stats)
    }

    /// At stop: exports what is left (open flows end as forced ends) and
    /// waits for the thread.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let s = &self.stats;
        let g = IpfixStats::get;
        tracing::info!(
            "ipfix: to {}: {} records in {} messages ({} bytes, {} template messages) sent; \
             {} records in {} messages dropped; {} hub records lost; {} flows evicted",
            self.target,
            g(&s.records_sent),
            g(&s.messages_sent),
            g(&s.bytes_sent),
            g(&s.templates_sent),
            g(&s.records_dropped),
            g(&s.messages_dropped),
            g(&s.observer_lost),
            g(&s.flows_evicted),
        );
    }
}

/// The meter's thread: records in, messages out.
struct Metering {
    meter: Meter,
    builder: Builder,
    queue: Arc<SendQueue>,
    stats: Arc<IpfixStats>,
}

impl Metering {
    fn observed(&mut self, item: Observed) {
        let (b, q, st) = (&mut self.builder, &self.queue, &self.stats);
        let mut emit = |r: &wire::DataRecord<'_>| {
            if let Some(m) = b.add(r) {
                enqueue(q, st, m);
            }
        };
        match item {
            Observed::Record(r) => {
                if let Record::Flow(f) = &*r {
                    self.meter.record(f, crate::sinks::now_ns(), &mut emit);
                }
            }
            Observed::Tick { now_ns, .. } => {
                self.meter.tick(now_ns, &mut emit);
                if let Some(m) = self.builder.take() {
                    enqueue(&self.queue, &self.stats, m);
                }
            }
        }
        self.stats
            .flows_evicted
            .store(self.meter.evicted, Ordering::Relaxed);
    }

    fn finish(&mut self) {
        let (b, q, st) = (&mut self.builder, &self.queue, &self.stats);
        self.meter.finish(&mut |r| {
            if let Some(m) = b.add(r) {
                enqueue(q, st, m);
            }
        });
        if let Some(m) = self.builder.take() {
            enqueue(&self.queue, &self.stats, m);
        }
        self.queue.close();
    }
}

fn enqueue(q: &SendQueue, stats: &IpfixStats, m: Message) {
    if let Some(old) = q.push(m) {
        IpfixStats::add(&stats.messages_dropped, 1);
        IpfixStats::add(&stats.records_dropped, u64::from(old.records));
    }
}

#[cfg(test)]
mod tests {
    use super::send::tests::msg;
    use super::*;

    #[test]
    fn collector_addresses_are_checked_before_anything_starts() {
        for good in [
            "192.0.2.10:4739",
            "[2001:db8::10]:4739",
            "collector.example:2055",
            "localhost:1",
        ] {
            assert_eq!(parse_target(good).as_deref(), Ok(good));
        }
        for bad in [
            "192.0.2.10",
            "2001:db8::10:4739",
            "[2001:db8::10]",
            ":4739",
            "host:0",
            "host:70000",
            "a b:1",
            "[x]:1",
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.contains("is not HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn dropped_messages_are_counted_with_their_records() {
        let q = SendQueue::new(2);
        let stats = IpfixStats::default();
        for _ in 0..5 {
            enqueue(&q, &stats, msg(10));
        }
        assert_eq!(IpfixStats::get(&stats.messages_dropped), 3);
        assert_eq!(IpfixStats::get(&stats.records_dropped), 30);
        assert_eq!(q.drain().len(), 2);
    }
}
