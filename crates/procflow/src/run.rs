//! `procflow run`: the monitor. Kernel records flow one way, through the
//! flow table, into the sinks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use procflow_bpf::{Kernel, ScanReport};
use procflow_core::live::Record;
use serde_json::json;

use crate::collector::Collector;
use crate::hub::Hub;
use crate::sinks::Sinks;
use crate::system::ProcSystem;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) sinks: crate::sinks::SinkArgs,
    /// Also write a cumulative record for every open flow this often:
    /// seconds (10, 0.5) or a duration (30s, 5m).
    #[arg(long, value_name = "TIME", value_parser = procflow_store::timespec::parse_period)]
    pub(crate) interval: Option<Duration>,
    /// Stop by itself after this long: seconds (3600) or a duration (1h);
    /// SIGINT and SIGTERM stop it too.
    #[arg(long, value_name = "TIME", value_parser = procflow_store::timespec::parse_period)]
    pub(crate) duration: Option<Duration>,
    /// Size of the ring buffer the kernel's records come through: a power
    /// of two from 64K to 1G. Records that find it full are lost and
    /// counted (events_lost); counters are not.
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size, default_value = "4M")]
    pub(crate) ring_buffer: usize,
    #[command(flatten)]
    pub(crate) rules: crate::enforce::RulesArgs,
    #[command(flatten)]
    pub(crate) resolve: crate::resolve::ResolveArgs,
    #[command(flatten)]
    pub(crate) api: crate::api::ApiArgs,
    #[command(flatten)]
    pub(crate) metrics: crate::metrics::MetricsArgs,
    #[command(flatten)]
    pub(crate) ipfix: crate::ipfix::IpfixArgs,
    #[command(flatten)]
    pub(crate) config: crate::config::ConfigArgs,
}

/// `--ring-buffer`: a size the kernel takes for a ring buffer (a power of
/// two pages), within bounds that keep it useful and its memory sane.
fn parse_ring_size(s: &str) -> Result<usize, String> {
    let n = procflow_store::timespec::parse_size(s)?;
    if !n.is_power_of_two() || !(64 << 10..=1 << 30).contains(&n) {
        return Err(format!(
            "{s:?}: the ring buffer's size must be a power of two from 64K to 1G (e.g. 4M)"
        ));
    }
    Ok(n as usize)
}

pub fn run(matches: &clap::ArgMatches) -> Result<()> {
    let initial = crate::config::Settings::load(matches).map_err(crate::config::Refused)?;
    if let Some(f) = &initial.file {
        tracing::info!("settings: {}", f.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .context("installing the SIGHUP handler")?;
    let args = &initial.args;
    let started = Instant::now();
    let metrics = crate::metrics::bind(&args.metrics)?;
    let kernel = Kernel::open(args.rules.rules.is_some(), args.ring_buffer)
        .context("loading the kernel programs")?;
    let mut sinks = Sinks::open(&args.sinks)?;
    for r in kernel.refused() {
        tracing::warn!("the kernel refused {}: {}", r.name, r.reason);
    }
    let mut rules_records = Vec::new();
    let rules = match crate::enforce::Enforcer::start(&args.rules, &kernel, &mut rules_records) {
        Ok(r) => r,
        Err(e) => {
            // The refusal is on record (log and store) before procflow ends.
            for r in rules_records {
                sinks.record(&Record::Rules(r));
            }
            sinks.flush();
            return Err(e);
        }
    };
    let resolver = crate::resolve::Resolver::start(&args.resolve)?;
    let sys = ProcSystem::new(kernel.cgroup_root.clone());
    let hub = Hub::new(crate::sinks::now_ns());
    let _server = crate::api::Server::start(&args.api, &hub, args.sinks.db())?;
    let ipfix = crate::ipfix::Exporter::start(&args.ipfix, &hub)?;
    let ipfix_stats = ipfix.as_ref().map(|x| x.stats());
    let _metrics = crate::metrics::Exporter::start(metrics, &hub, ipfix_stats)?;
    let mut c = Collector::new(kernel, Box::new(sys), hub);
    c.sinks = Some(sinks);
    c.rules = Some(rules);
    c.resolver = resolver;
    c.rules_on = args.rules.rules.is_some();
    for r in rules_records {
        c.emit(Record::Rules(r));
    }
    // Before the first frame of any packet socket can pass unchecked.
    c.sweep_devices();

    let (scan, contexts_at_start) = start_up(&mut c)?;
    enforce(&mut c, |e, k, t, s, _| e.after_start(k, t, s))?;
    c.flush();
    tracing::info!(
        "watching: {} namespaces, {} sockets found in {:?}",
        scan.namespaces,
        scan.sockets,
        scan.elapsed
    );

    let mut current = initial.clone();
    let mut interval = args.interval;
    let deadline = args.duration.and_then(|d| started.checked_add(d));
    let mut next_snapshot = interval.map(|i| Instant::now() + i);
    while !stop.load(Ordering::Relaxed) && !c.sinks.as_ref().is_some_and(|s| s.broken) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        c.drain(Duration::from_millis(100));
        if hup.swap(false, Ordering::Relaxed) {
            reload(&initial, &mut current, &mut c);
            if interval != current.args.interval {
                interval = current.args.interval;
                next_snapshot = interval.map(|i| Instant::now() + i);
            }
        }
        enforce(&mut c, |e, k, t, s, out| e.check_reload(k, t, s, out))?;
        if let (Some(at), Some(every)) = (next_snapshot, interval) {
            if Instant::now() >= at {
                c.refresh()?;
                c.snapshot_records();
                next_snapshot = Some(at + every);
            }
        }
        c.due()?;
        c.flush_due();
    }

    // Stopping: everything still queued, then a final record for every open flow.
    c.drain(Duration::ZERO);
    c.sweep_packet_sockets();
    let contexts_at_stop = c.refresh()?;
    c.snapshot_records();
    c.flush();
    let stats = stats_record(&c, &scan, contexts_at_start, contexts_at_stop);
    c.hub.apply(&Record::Stats(stats.clone()));
    if let Some(s) = c.sinks.as_mut() {
        s.finish(&stats);
    }
    if let Some(x) = ipfix {
        x.finish();
    }
    Ok(())
}

/// SIGHUP: reads the configuration file again and takes over what can
/// change while running; says which changes wait for a restart (against
/// the settings procflow `started` with). A refused file changes nothing.
/// The rules file is read again in any case.
fn reload(
    started: &crate::config::Settings,
    current: &mut crate::config::Settings,
    c: &mut Collector<Kernel>,
) {
    match current.reload() {
        Err(e) => tracing::error!(
            "SIGHUP: configuration refused, the settings in force stay in force:\n{e:#}"
        ),
        Ok(newer) => {
            let rules_toggled =
                started.args.rules.rules.is_some() != newer.args.rules.rules.is_some();
            for k in started.changed(&newer) {
                if !crate::config::RELOADABLE.contains(&k.as_str())
                    || (k == "rules" && rules_toggled)
                {
                    tracing::warn!(
                        "SIGHUP: `{k}` changed to {}: it takes effect when procflow \
                         restarts; until then {} stays in force",
                        newer.shown(&k),
                        started.shown(&k)
                    );
                }
            }
            let taken: Vec<String> = current
                .changed(&newer)
                .into_iter()
                .filter(|k| {
                    crate::config::RELOADABLE.contains(&k.as_str())
                        && !(k == "rules" && rules_toggled)
                })
                .collect();
            if let Some(s) = c.sinks.as_mut() {
                if let Err(e) = s.reconfigure(&newer.args.sinks, &taken) {
                    tracing::error!("SIGHUP: {e:#}; the log in use stays in use");
                }
            }
            if !taken.is_empty() {
                tracing::info!("SIGHUP: now in force: {}", taken.join(", "));
            }
            *current = newer;
        }
    }
    if let Some(e) = c.rules.as_mut() {
        e.request_reload(&current.args.rules);
    }
}

/// Records that arrived while attaching, then the start-up scan's, then a
/// first reading of the live sockets. Returns the scan's report and the
/// socket contexts after it.
pub fn start_up(c: &mut Collector<Kernel>) -> Result<(ScanReport, usize)> {
    c.drain(Duration::ZERO);
    let (found, scan) = c.kernel.scan().context("start-up scan")?;
    c.scan_ms = Some(scan.elapsed.as_secs_f64() * 1000.0);
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
        c.apply(r);
    }
    let contexts = c.refresh()?;
    Ok((scan, contexts))
}

type EnforceStep = fn(
    &mut crate::enforce::Enforcer,
    &mut Kernel,
    &mut procflow_core::FlowTable,
    &mut dyn procflow_core::identity::SystemLookup,
    &mut Vec<procflow_core::RulesRecord>,
) -> Result<()>;

/// Runs a step of the enforcer (which needs the kernel itself), and
/// publishes the rules records it made.
fn enforce(c: &mut Collector<Kernel>, step: EnforceStep) -> Result<()> {
    let Some(mut e) = c.rules.take() else {
        return Ok(());
    };
    let mut out = Vec::new();
    let r = step(&mut e, &mut c.kernel, &mut c.table, &mut *c.sys, &mut out);
    c.rules = Some(e);
    for rec in out {
        c.emit(Record::Rules(rec));
    }
    r
}

fn stats_record(
    c: &Collector<Kernel>,
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
        "ring_buffer_peak": k.ring_buffer_peak,
        "ring_buffer_size": k.ring_buffer_size,
        "fail_closed": k.fail_closed,
        "unwalkable_dropped": k.unwalkable_dropped,
        "rerouted_dropped": k.rerouted_dropped,
        "datagram_quota": k.datagram_quota,
        "datagram_spilled": k.datagram_spilled,
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
        "datagram_entries": c.refreshes.datagram_entries,
        "swept": c.swept,
        "refresh": c.refreshes,
        "store": c.sinks.as_ref().map(Sinks::stats),
        "log": c.sinks.as_ref().map(Sinks::log_stats),
        "api": c.hub.stats(),
        "resolve": c.resolver.as_ref().map(crate::resolve::Resolver::stats),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_ring_size;

    #[test]
    fn the_ring_buffer_size_is_a_power_of_two_within_bounds() {
        assert_eq!(parse_ring_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_size("64K"), Ok(64 << 10));
        assert_eq!(parse_ring_size("1G"), Ok(1 << 30));
        for bad in ["3M", "32K", "2G", "0", "x"] {
            assert!(parse_ring_size(bad).is_err(), "{bad}");
        }
        assert!(parse_ring_size("3M").unwrap_err().contains("power of two"));
    }

    #[test]
    fn the_ring_buffer_option_defaults_to_the_kernel_sides_size() {
        let cmd = <super::RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "ring_buffer")
            .unwrap();
        let default = arg.get_default_values()[0].to_str().unwrap();
        assert_eq!(parse_ring_size(default), Ok(procflow_bpf::RING_BUFFER_SIZE));
    }
}
