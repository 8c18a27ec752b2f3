//! Loading and attaching procflow's programs, with feature probing: a
//! program this kernel refuses is left out with its reason, and the others
//! still load.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};
use procflow_core::flow::{Counters, FlowKey};

use crate::cgroup::cgroup2_root;
use crate::decode::{self, Clock};
use crate::ring::Ring;
use crate::skel::types::{pf_dgram_key, pf_dgram_val, pf_flow_event, pf_origin, pf_stat};
use crate::skel::{ProcflowSkel, ProcflowSkelBuilder};
use crate::{BpfError, Record};

/// How a program is attached, from its ELF section: every program in the
/// object has one, or procflow refuses to start (a program nobody attaches
/// would load and silently do nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttachKind {
    /// Attached to the root cgroup (`cgroup/*`, `cgroup_skb/*`, `sockops`).
    Cgroup,
    /// Attached to its tracepoint (`tp_btf/*`).
    Tracepoint,
    /// An iterator, attached when used (`iter/*`).
    Iterator,
    /// Attached to network devices by [`Kernel::attach_devices`] (`tcx/*`).
    Device,
}

fn attach_kind(section: &str) -> Option<AttachKind> {
    if section.starts_with("cgroup/") || section.starts_with("cgroup_skb/") || section == "sockops"
    {
        Some(AttachKind::Cgroup)
    } else if section.starts_with("tp_btf/") {
        Some(AttachKind::Tracepoint)
    } else if section.starts_with("iter/") {
        Some(AttachKind::Iterator)
    } else if section.starts_with("tcx/") {
        Some(AttachKind::Device)
    } else {
        None
    }
}

/// One reading of every namespace's TCP and UDP sockets.
#[derive(Debug, Default)]
pub struct Dump {
    /// Current counters of the live TCP flows.
    pub views: Vec<procflow_core::event::FlowView>,
    /// Current counters of the UDP sockets' slot flows (a socket's first
    /// remote, counted in its context; the datagram table may hold more of
    /// the same flow, which adds to them).
    pub slots: Vec<procflow_core::event::FlowView>,
    /// Sockets with a context.
    pub contexts: usize,
    /// Cookies of the UDP sockets alive during the reading.
    pub live_udp: std::collections::HashSet<u64>,
    /// Cookies of every TCP and UDP socket alive during the reading.
    pub live: std::collections::HashSet<u64>,
    /// The namespaces read (inode numbers).
    pub namespaces: std::collections::HashSet<u64>,
    /// When the reading started, boot-time and Unix nanoseconds.
    pub started_boot_ns: u64,
    pub started_unix_ns: u64,
}

/// What [`Kernel::sweep_datagram_entries`] did: entries deleted, and the
/// entries the datagram table holds after it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DatagramSweep {
    pub deleted: usize,
    pub entries: usize,
}

/// Bytes of the ring buffer (`events`) the programs' records go through,
/// unless `procflow run --ring-buffer` says otherwise (see BENCHMARKS.md,
/// "The ring buffer's fill").
pub const RING_BUFFER_SIZE: usize = 4 << 20;

/// Entries the datagram table (`dgram_flows`) can hold.
pub const DATAGRAM_TABLE_CAPACITY: usize = 262144;

/// A program the kernel would not load, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

/// Counters the programs keep for the stats record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Ring buffer full: events dropped (counters are not affected).
    pub events_lost: u64,
    /// Socket storage could not be created.
    pub no_storage: u64,
    /// Datagram flow table full: packets not counted.
    pub dgram_full: u64,
    /// Verdict records left out by the kernel's rate limit (the decisions
    /// were made all the same).
    pub verdicts_suppressed: u64,
    /// Connections and datagrams refused because their address family is
    /// not one the rules know.
    pub fail_closed: u64,
    /// Inbound packets dropped while rules are loaded because their headers
    /// could not be walked to the transport header.
    pub unwalkable_dropped: u64,
    /// Egress packets dropped for a source route (IPv4 options, IPv6
    /// routing header) that sends them elsewhere than decided.
    pub rerouted_dropped: u64,
    /// Datagrams counted in their socket's overflow flow because the
    /// socket or its uid was over its datagram table quota.
    pub datagram_quota: u64,
    /// Packet sockets the start-up scan found with PACKET_QDISC_BYPASS on.
    pub bypass_sockets: u64,
    /// The most bytes seen waiting in the ring buffer when a record was
    /// about to be reserved (of `ring_buffer_size`).
    pub ring_buffer_peak: u64,
    /// Bytes of the ring buffer.
    pub ring_buffer_size: u64,
    /// Datagrams that got no entry in the datagram table (full, or its
    /// allocator dry in a burst), counted in their socket's overflow flow
    /// through the preallocated spill table.
    pub datagram_spilled: u64,
}

/// procflow's programs, loaded and attached.
pub struct Kernel {
    skel: &'static ProcflowSkel<'static>,
    /// Held, not read: dropping a link detaches its program.
    _links: Vec<Link>,
    iter_links: Vec<(String, Link)>,
    ring: Ring,
    pub clock: Clock,
    pub cgroup_root: PathBuf,
    loaded: Vec<String>,
    refused: Vec<Refused>,
    /// tcx egress links of the packet-socket rules program, by namespace
    /// inode and device index; closing one detaches it.
    devices: HashMap<(u64, u32), OwnedFd>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("loaded", &self.loaded)
            .field("refused", &self.refused)
            .finish()
    }
}

/// Opens the object; `only` keeps a single program (probing), `skip` leaves
/// out programs found refused.
fn open(
    only: Option<&str>,
    skip: &[Refused],
    rules: bool,
    ring: usize,
) -> Result<crate::skel::OpenProcflowSkel<'static>, BpfError> {
    // The object lives as long as the process: procflow loads it once (a
    // probe that fails leaks one small allocation).
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = ProcflowSkelBuilder::default()
        .open(storage)
        .map_err(|e| BpfError::Load(format!("opening the eBPF object: {e}")))?;
    for mut p in open.open_object_mut().progs_mut() {
        let name = p.name().to_string_lossy().into_owned();
        let section = p.section().to_string_lossy().into_owned();
        if attach_kind(&section).is_none() {
            return Err(BpfError::Load(format!(
                "program {name} (section {section}) has no attach kind the loader knows"
            )));
        }
        let keep = match only {
            Some(o) => o == name,
            None => !skip.iter().any(|r| r.name == name),
        };
        p.set_autoload(keep);
        // The verifier's statistics per program (time, instructions), in
        // the debug log (`-vv`): PROCFLOW_VERIFIER_STATS=1. With
        // PROCFLOW_VERIFIER_LOG=1 as well, its whole log (every instruction
        // it walked, with the registers: large).
        if std::env::var_os("PROCFLOW_VERIFIER_STATS").is_some() {
            let whole = std::env::var_os("PROCFLOW_VERIFIER_LOG").is_some();
            p.set_log_level(if whole { 6 } else { 4 });
        }
    }
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.pf_rules_on = u32::from(rules);
    }
    let ring = u32::try_from(ring)
        .map_err(|_| BpfError::Load(format!("a ring buffer of {ring} bytes is too large")))?;
    open.maps
        .events
        .set_max_entries(ring)
        .map_err(|e| BpfError::Load(format!("sizing the ring buffer: {e}")))?;
    Ok(open)
}

/// Routes libbpf's messages into procflow's log (its debug output shows
/// with `-vv`).
fn libbpf_to_tracing(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Info => tracing::info!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Debug => tracing::debug!(target: "libbpf", "{msg}"),
    }
}

impl Kernel {
    /// Loads every program this kernel accepts and attaches it. `rules`
    /// keeps the rules paths in the programs (`procflow run --rules`);
    /// without it the verifier drops them and the programs load faster.
    /// `ring` is the ring buffer's size in bytes: a power of two pages.
    pub fn open(rules: bool, ring: usize) -> Result<Kernel, BpfError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BpfError::NotRoot);
        }
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(BpfError::NoBtf);
        }
        let cgroup_root = cgroup2_root()?;
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_to_tracing)));

        let mut refused = Vec::new();
        let skel = match open(None, &[], rules, ring)?.load() {
            Ok(s) => s,
            Err(first) => {
                // Find which programs the kernel refuses, one at a time.
                let names: Vec<String> = open(None, &[], rules, ring)?
                    .open_object()
                    .progs()
                    .map(|p| p.name().to_string_lossy().into_owned())
                    .collect();
                for name in &names {
                    if let Err(e) = open(Some(name), &[], rules, ring)?.load() {
                        refused.push(Refused {
                            name: name.to_string(),
                            reason: format!("{e}"),
                        });
                    }
                }
                if refused.is_empty() {
                    return Err(BpfError::Load(format!(
                        "loading the eBPF programs: {first}"
                    )));
                }
                open(None, &refused, rules, ring)?
                    .load()
                    .map_err(|e| BpfError::Load(format!("loading the eBPF programs: {e}")))?
            }
        };
        let essential = ["pf_egress", "pf_ingress", "pf_sock_create"];
        if let Some(r) = refused
            .iter()
            .find(|r| essential.contains(&r.name.as_str()))
        {
            return Err(BpfError::Load(format!(
                "this kernel refused {}, which procflow cannot work without: {}",
                r.name, r.reason
            )));
        }

        // Leaked like its object: the ring buffer's reader needs its map
        // for the life of the process.
        let skel: &'static ProcflowSkel<'static> = Box::leak(Box::new(skel));
        let cg = File::open(&cgroup_root)
            .map_err(|e| BpfError::Cgroup(format!("opening {}: {e}", cgroup_root.display())))?;
        let mut links = Vec::new();
        let mut loaded = Vec::new();
        for p in skel.object().progs() {
            let name = p.name().to_string_lossy().into_owned();
            if refused.iter().any(|r| r.name == name) {
                continue;
            }
            loaded.push(name.clone());
        }
        {
            let progs = skel.object().progs_mut();
            for p in progs {
                let name = p.name().to_string_lossy().into_owned();
                if !loaded.contains(&name) {
                    continue;
                }
                let link = match attach_kind(&p.section().to_string_lossy()) {
                    Some(AttachKind::Cgroup) => p.attach_cgroup(cg.as_raw_fd()),
                    Some(AttachKind::Tracepoint) => p.attach(),
                    Some(AttachKind::Iterator) | Some(AttachKind::Device) | None => continue,
                };
                match link {
                    Ok(l) => links.push(l),
                    Err(e) => refused.push(Refused {
                        name: name.clone(),
                        reason: format!("attach: {e}"),
                    }),
                }
            }
        }
        loaded.retain(|n| !refused.iter().any(|r| &r.name == n));

        let ring = Ring::new(skel.maps.events.as_fd(), ring)
            .map_err(|e| BpfError::Load(format!("mapping the ring buffer: {e}")))?;
        Ok(Kernel {
            skel,
            _links: links,
            iter_links: Vec::new(),
            ring,
            clock: Clock::now(),
            cgroup_root,
            loaded,
            refused,
            devices: HashMap::new(),
        })
    }

    /// Waits up to `timeout` for kernel records and returns what arrived.
    pub fn poll(&mut self, timeout: Duration) -> Vec<Record> {
        let clock = self.clock;
        let mut out = Vec::new();
        let mut take = |data: &[u8]| {
            if let Some(r) = decode::decode_record(data, &clock) {
                out.push(r);
            }
        };
        if self.ring.consume(&mut take) == 0 && !timeout.is_zero() {
            self.ring.wait(timeout);
            self.ring.consume(&mut take);
        }
        out
    }

    /// The loaded object (for the rule maps, see [`crate::policy`]).
    pub(crate) fn skel(&self) -> &'static ProcflowSkel<'static> {
        self.skel
    }

    /// Names of the programs loaded and attached.
    pub fn loaded(&self) -> &[String] {
        &self.loaded
    }

    /// Programs this kernel refused, with the reason.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    pub fn stats(&self) -> KernelStats {
        let mut out = [0u64; pf_stat::PF_STAT_MAX.0 as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Ok(Some(per_cpu)) = self.skel.maps.stats.lookup_percpu(&key, MapFlags::ANY) {
                let values = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8))
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()));
                // The peak is a maximum per CPU; the others are counts.
                *slot = if i == pf_stat::PF_STAT_RB_PEAK.0 as usize {
                    values.max().unwrap_or(0)
                } else {
                    values.sum()
                };
            }
        }
        KernelStats {
            events_lost: out[pf_stat::PF_STAT_RB_LOST.0 as usize],
            no_storage: out[pf_stat::PF_STAT_NO_STORAGE.0 as usize],
            dgram_full: out[pf_stat::PF_STAT_DGRAM_FULL.0 as usize],
            verdicts_suppressed: out[pf_stat::PF_STAT_VERDICT_SUPPRESSED.0 as usize],
            fail_closed: out[pf_stat::PF_STAT_FAIL_CLOSED.0 as usize],
            unwalkable_dropped: out[pf_stat::PF_STAT_UNWALKABLE.0 as usize],
            rerouted_dropped: out[pf_stat::PF_STAT_REROUTED.0 as usize],
            datagram_quota: out[pf_stat::PF_STAT_DGRAM_QUOTA.0 as usize],
            bypass_sockets: out[pf_stat::PF_STAT_BYPASS_FOUND.0 as usize],
            ring_buffer_peak: out[pf_stat::PF_STAT_RB_PEAK.0 as usize],
            datagram_spilled: out[pf_stat::PF_STAT_DGRAM_SPILL.0 as usize],
            ring_buffer_size: self.ring.size() as u64,
        }
    }

    pub(crate) fn iter_link(&mut self, name: &str) -> Result<&Link, BpfError> {
        if let Some(i) = self.iter_links.iter().position(|(n, _)| n == name) {
            return Ok(&self.iter_links[i].1);
        }
        let prog = self
            .skel
            .object()
            .progs_mut()
            .find(|p| p.name() == name)
            .ok_or_else(|| BpfError::Load(format!("program {name} is not loaded")))?;
        let link = prog
            .attach()
            .map_err(|e| BpfError::Load(format!("attaching iterator {name}: {e}")))?;
        self.iter_links.push((name.to_string(), link));
        Ok(&self.iter_links.last().expect("just pushed").1)
    }

    /// The ids of the live packet sockets of every namespace (their inode
    /// with the top bit set, as packet.bpf.c keys them), from each
    /// namespace's /proc/net/packet.
    pub fn live_packet_sockets(&mut self) -> HashSet<u64> {
        let mut live = HashSet::new();
        for (_, path) in crate::scan::namespaces() {
            let Ok(text) = crate::scan::in_netns(&path, || {
                std::fs::read_to_string("/proc/thread-self/net/packet")
                    .map_err(|e| BpfError::Scan(format!("/proc/net/packet: {e}")))
            }) else {
                continue; // the namespace is gone
            };
            live.extend(packet_inodes(&text).map(|ino| (1 << 63) | ino));
        }
        live
    }

    /// Attaches the packet-socket rules program (tcx egress, `pf_packet_tc`)
    /// to every network device of every namespace that does not have it
    /// yet, and forgets the devices that are gone. Returns how many
    /// devices it attached to, and the failures (device, reason).
    pub fn attach_devices(&mut self) -> (usize, Vec<String>) {
        let Some(prog_fd) = self
            .skel
            .object()
            .progs()
            .find(|p| p.name() == "pf_packet_tc" && self.loaded.iter().any(|n| n == "pf_packet_tc"))
            .map(|p| p.as_fd().as_raw_fd())
        else {
            return (0, Vec::new());
        };
        let mut attached = 0;
        let mut failed = Vec::new();
        let mut live = HashSet::new();
        for (ino, path) in crate::scan::namespaces() {
            // A link whose device is gone reports ifindex 0: its index may
            // belong to a new device now.
            self.devices
                .retain(|(n, _), fd| *n != ino || tcx_ifindex(fd) != 0);
            let have: Vec<u32> = self
                .devices
                .keys()
                .filter(|(n, _)| *n == ino)
                .map(|(_, i)| *i)
                .collect();
            let Ok(found) = crate::scan::in_netns(&path, move || {
                let mut out = Vec::new();
                for idx in ifindexes() {
                    if have.contains(&idx) {
                        out.push((idx, Ok(None)));
                        continue;
                    }
                    // SAFETY: a zeroed opts struct with its size set is
                    // what libbpf expects; the call keeps no pointer.
                    let lfd = unsafe {
                        let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts =
                            std::mem::zeroed();
                        opts.sz = std::mem::size_of_val(&opts) as _;
                        libbpf_rs::libbpf_sys::bpf_link_create(
                            prog_fd,
                            idx as i32,
                            libbpf_rs::libbpf_sys::BPF_TCX_EGRESS,
                            &opts,
                        )
                    };
                    out.push((
                        idx,
                        if lfd >= 0 {
                            // SAFETY: a new link fd that nothing else owns.
                            Ok(Some(unsafe { OwnedFd::from_raw_fd(lfd) }))
                        } else {
                            Err(std::io::Error::from_raw_os_error(-lfd).to_string())
                        },
                    ));
                }
                Ok(out)
            }) else {
                continue; // the namespace is gone
            };
            for (idx, link) in found {
                live.insert((ino, idx));
                match link {
                    Ok(Some(fd)) => {
                        self.devices.insert((ino, idx), fd);
                        attached += 1;
                    }
                    Ok(None) => {}
                    Err(e) => failed.push(format!("netns {ino} device {idx}: {e}")),
                }
            }
        }
        self.devices.retain(|k, _| live.contains(k));
        (attached, failed)
    }

    /// Devices the packet-socket rules program is attached to.
    pub fn devices_attached(&self) -> usize {
        self.devices.len()
    }

    /// Current counters of every live TCP flow and UDP slot flow, in every
    /// network namespace, how many TCP and UDP sockets have a context, and which
    /// UDP sockets are alive.
    pub fn dump(&mut self) -> Result<Dump, BpfError> {
        let clock = self.clock;
        let tcp_fd = self.iter_link("pf_dump_tcp")?.as_fd().as_raw_fd();
        let udp_fd = self.iter_link("pf_dump_udp")?.as_fd().as_raw_fd();
        let mut d = Dump {
            started_boot_ns: clock.boot_now(),
            ..Dump::default()
        };
        d.started_unix_ns = clock.unix_ns(d.started_boot_ns);
        for (ino, path) in crate::scan::namespaces() {
            let Ok((tcp, udp)) = crate::scan::in_netns(&path, || {
                Ok((
                    crate::scan::read_iter(tcp_fd)?,
                    crate::scan::read_iter(udp_fd)?,
                ))
            }) else {
                continue; // the namespace is gone
            };
            d.namespaces.insert(ino);
            d.contexts += (tcp.len() + udp.len()) / decode::FLOW_EVENT_SIZE;
            for rec in tcp.chunks_exact(decode::FLOW_EVENT_SIZE) {
                if decode::record_kind(rec) != Some(decode::PF_EV_DUMP) {
                    continue;
                }
                if let Some(e) = decode::read_struct::<pf_flow_event>(rec) {
                    d.live.insert(e.cookie);
                    d.views.push(decode::flow_view(&e, &clock));
                }
            }
            for rec in udp.chunks_exact(decode::FLOW_EVENT_SIZE) {
                if let Some(e) = decode::read_struct::<pf_flow_event>(rec) {
                    d.live_udp.insert(e.cookie);
                    d.live.insert(e.cookie);
                    if e.kind == decode::PF_EV_DUMP && e.flags & decode::PF_F_SLOT != 0 {
                        d.slots.push(decode::flow_view(&e, &clock));
                    }
                }
            }
        }
        Ok(d)
    }

    /// Deletes the kernel's datagram entries of UDP sockets that are gone
    /// (their RELEASE record was lost) and that user space never announced:
    /// entries whose socket `dump` did not list, older than the dump.
    /// Returns how many were deleted.
    pub fn sweep_datagram_entries(
        &self,
        d: &Dump,
        known: &dyn Fn(&FlowKey) -> bool,
    ) -> DatagramSweep {
        let map = &self.skel.maps.dgram_flows;
        let spill = &self.skel.maps.dgram_spill;
        let keys: Vec<(bool, Vec<u8>)> = map
            .keys()
            .map(|k| (false, k))
            .chain(spill.keys().map(|k| (true, k)))
            .collect();
        let entries = keys.len();
        let mut deleted = 0;
        for (spilled, kb) in keys {
            let Some(k) = decode::read_struct::<pf_dgram_key>(&kb) else {
                continue;
            };
            if d.live_udp.contains(&k.cookie) {
                continue;
            }
            let (map, per_cpu) = if spilled {
                (
                    spill,
                    spill
                        .lookup(&kb, MapFlags::ANY)
                        .ok()
                        .flatten()
                        .map(|v| vec![v]),
                )
            } else {
                (map, map.lookup_percpu(&kb, MapFlags::ANY).ok().flatten())
            };
            let Some(per_cpu) = per_cpu else {
                continue;
            };
            let vals: Vec<pf_dgram_val> = per_cpu
                .iter()
                .filter_map(|b| decode::read_struct::<pf_dgram_val>(b))
                .collect();
            // Packet sockets' entries end with their socket's walk
            // (`live_packet_sockets`), not with the UDP sockets'.
            let udp = vals.iter().any(|v| v.proto == 17)
                && !vals
                    .iter()
                    .any(|v| u32::from(v.origin) == pf_origin::PF_ORIGIN_PACKET_SOCKET.0);
            let start = vals.iter().map(|v| v.start_ns).filter(|&s| s > 0).min();
            let old = start.is_some_and(|s| s < d.started_boot_ns);
            let key = FlowKey::datagram(k.cookie, decode::ip(k.family, &k.remote), k.rport);
            if udp && old && !known(&key) && map.delete(&kb).is_ok() {
                deleted += 1;
            }
        }
        DatagramSweep {
            deleted,
            entries: entries - deleted,
        }
    }

    fn dgram_key(key: &FlowKey) -> Option<pf_dgram_key> {
        let (ip, port) = key.remote?;
        let mut k = pf_dgram_key {
            cookie: key.cookie,
            rport: port,
            ..Default::default()
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                k.remote[..4].copy_from_slice(&v4.octets());
                k.family = 4;
            }
            std::net::IpAddr::V6(v6) => {
                k.remote = v6.octets();
                k.family = 6;
            }
        }
        Some(k)
    }

    /// Counters of a datagram flow; `remove` also deletes its entry (the
    /// socket was released). A socket's overflow flow (remote all zeros,
    /// port 0) adds what `dgram_spill` counted for it.
    pub fn datagram_counters(&self, key: &FlowKey, remove: bool) -> Option<Counters> {
        let k = Self::dgram_key(key)?;
        let kb = decode::struct_bytes(&k);
        let map = &self.skel.maps.dgram_flows;
        let table = map.lookup_percpu(kb, MapFlags::ANY).ok().flatten();
        if remove && table.is_some() {
            let _ = map.delete(kb);
        }
        let overflow = k.rport == 0 && k.remote == [0; 16];
        let spill = if overflow {
            let spill = &self.skel.maps.dgram_spill;
            let v = spill.lookup(kb, MapFlags::ANY).ok().flatten();
            if remove && v.is_some() {
                let _ = spill.delete(kb);
            }
            v
        } else {
            None
        };
        if table.is_none() && spill.is_none() {
            return None;
        }
        // One value per CPU in the table, one in all in the spill: the
        // counters are their sum.
        let mut total = Counters::default();
        for bytes in table.iter().flatten().chain(spill.iter()) {
            let v: pf_dgram_val = decode::read_struct(bytes)?;
            total = total.plus(decode::counters(&v.c));
        }
        Some(total)
    }

    /// Empties the start-up scan's owner table (sockets the TCP and UDP
    /// walks did not meet: raw and ping sockets, closed since).
    pub(crate) fn clear_scan_owners(&self) {
        let map = &self.skel.maps.scan_owner;
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for k in keys {
            let _ = map.delete(&k);
        }
    }
}

/// The inodes in a /proc/net/packet text (its last column).
fn packet_inodes(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(8)?.parse().ok())
}

/// The device index a tcx link is attached to; 0 once its device is gone.
fn tcx_ifindex(link: &OwnedFd) -> u32 {
    // SAFETY: a zeroed bpf_link_info and its length, filled by the kernel.
    unsafe {
        let mut info: libbpf_rs::libbpf_sys::bpf_link_info = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&info) as u32;
        if libbpf_rs::libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len)
            != 0
        {
            return 0;
        }
        info.__bindgen_anon_1.tcx.ifindex
    }
}

/// The index of every network device of the calling thread's namespace.
fn ifindexes() -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, or null;
    // it is freed with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            out.push((*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_inodes_are_the_last_column() {
        let t = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                 ffff8881a2b3c000 3      3    0003   2     1 0      0      123456\n";
        assert_eq!(packet_inodes(t).collect::<Vec<_>>(), [123456]);
    }

    #[test]
    fn the_ring_buffer_size_is_the_maps_own() {
        let h = include_str!("../bpf/common.h");
        let def = &h[..h.find("} events SEC").unwrap()];
        let def = &def[def.rfind("PF_MAP struct").unwrap()..];
        let n: usize = def
            .split("__uint(max_entries, ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .map(|e| {
                let mut it = e.split("<<").map(|x| x.trim().parse::<usize>().unwrap());
                let a = it.next().unwrap();
                it.next().map_or(a, |b| a << b)
            })
            .unwrap();
        assert_eq!(n, RING_BUFFER_SIZE, "{def}");
    }

    #[test]
    fn the_datagram_capacity_is_the_maps_own() {
        let h = include_str!("../bpf/common.h");
        let def = &h[..h.find("} dgram_flows SEC").unwrap()];
        let def = &def[def.rfind("PF_MAP struct").unwrap()..];
        assert!(
            def.contains(&format!("__uint(max_entries, {DATAGRAM_TABLE_CAPACITY});")),
            "{def}"
        );
    }
}
