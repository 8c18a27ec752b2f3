//! Rules enforcement: a compiled rule set written into the kernel's rule
//! maps (see `bpf/policy.h`), swapped in atomically, and the verdict records
//! the programs send back.
//!
//! Every table exists for two generations. [`Policy::install`] checks that
//! the rule set fits and resolves its cgroups first (a rule set that does not
//! fit never touches the maps), then clears and fills the generation not in
//! use, and only then flips `pol_state.gen`, one 8-byte array write that the
//! programs read once per decision. The generation in force is never written.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags};
use procflow_core::flow::Direction;
use procflow_core::identity::Owner;
use procflow_core::rules::{
    cgroup_covers, limits, CompiledRules, LpmTable, Mask, PortTable, Rules, EXE_KEY_BYTES,
};

use crate::decode::{self, Clock};
use crate::skel::types::{pf_exe_ident, pf_policy_hdr, pf_task_ident, pf_verdict_event};
use crate::{BpfError, Kernel};

use crate::skel::types::{pf_hook, pf_size};

/// Port segments per dimension (`PF_PORT_SEGS`).
pub const PORT_SEGS: usize = pf_size::PF_SIZE_PORT_SEGS.0 as usize;
/// Cgroup levels the kernel looks up (`PF_CG_LEVELS`): a rule may name a
/// cgroup at most this many components deep, less one.
pub const CG_LEVELS: usize = pf_size::PF_SIZE_CG_LEVELS.0 as usize;
/// Entries of each remote LPM table, one kept for the /0 entry.
pub const REMOTE_ENTRIES: usize = pf_size::PF_SIZE_REMOTE_ENTRIES.0 as usize;
const _: () = assert!(PORT_SEGS == limits::PORT_SEGMENTS);
const _: () = assert!(CG_LEVELS == limits::CGROUP_LEVELS);
const _: () = assert!(REMOTE_ENTRIES == limits::REMOTE_ENTRIES);
/// `PF_UID_MISS`: the uid key that holds the uid table's miss mask.
const UID_MISS: u32 = u32::MAX;
/// The comm key that holds the comm table's miss mask (no NUL in it).
const COMM_MISS: [u8; 16] = [0xff; 16];

pub const PF_EV_VERDICT: u32 = decode::PF_EV_VERDICT;
pub const VERDICT_EVENT_SIZE: usize = 384;
const _: () = assert!(std::mem::size_of::<pf_verdict_event>() == VERDICT_EVENT_SIZE);
const _: () = assert!(std::mem::size_of::<pf_policy_hdr>() == 912);

const TASK_IDENT_SIZE: usize = 40;
const EXE_IDENT_SIZE: usize = 544;
const _: () = assert!(std::mem::size_of::<pf_task_ident>() == TASK_IDENT_SIZE);
const _: () = assert!(std::mem::size_of::<pf_exe_ident>() == EXE_IDENT_SIZE);

/// A process as the rules see it: what its next connect would be decided
/// with (`pf_iter_pol_task`: the executable the kernel resolves and keeps
/// for it, its thread-group leader's comm, its uid and cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIdentity {
    pub pid: u32,
    /// The leader's start time, boot-time ns.
    pub start_ns: u64,
    pub uid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// The executable path, as far as the kernel's exe keys see it: its
    /// first and last [`EXE_KEY_BYTES`] bytes (the bytes between, of a
    /// longer path, are not kept and are `?` here); empty when the kernel
    /// could not resolve it (such a process matches no `exe` condition).
    pub exe: String,
}

/// A path with the same exe keys as the kernel's `fwd` (the first bytes,
/// NUL padded) and `rev` (the last bytes, reversed) of a `len`-byte path.
fn exe_from_keys(fwd: &[u8], rev: &[u8], len: usize) -> Vec<u8> {
    let k = EXE_KEY_BYTES;
    if len <= k {
        return fwd[..len].to_vec();
    }
    let tail: Vec<u8> = rev[..k].iter().rev().copied().collect();
    let mut out = fwd[..k].to_vec();
    if len <= 2 * k {
        out.extend_from_slice(&tail[2 * k - len..]);
    } else {
        out.resize(len - k, b'?');
        out.extend_from_slice(&tail);
    }
    out
}

/// Decodes the records of `pf_iter_pol_task`.
fn decode_identities(bytes: &[u8]) -> Vec<RuleIdentity> {
    bytes
        .chunks_exact(TASK_IDENT_SIZE + EXE_IDENT_SIZE)
        .filter_map(|rec| {
            let t: pf_task_ident = decode::read_struct(rec)?;
            let e: pf_exe_ident = decode::read_struct(&rec[TASK_IDENT_SIZE..])?;
            let len = e.len as usize;
            // The kernel composes at most PF_EXEC_PATH - 1 bytes.
            let exe = if len == 0 || len >= 1024 {
                String::new()
            } else {
                String::from_utf8_lossy(&exe_from_keys(&e.fwd.data, &e.rev.data, len)).into_owned()
            };
            Some(RuleIdentity {
                pid: t.pid,
                start_ns: t.start_ns,
                uid: t.uid,
                cgroup_id: t.cgroup_id,
                comm: decode::c_str(&t.comm),
                exe,
            })
        })
        .collect()
}

impl Kernel {
    /// Every process as the rules see it, by pid. Each process's identity
    /// is resolved (and kept) by the kernel as at its first connect, so a
    /// decision made from it agrees with the connect hook's.
    pub fn rule_identities(
        &mut self,
    ) -> Result<std::collections::HashMap<u32, RuleIdentity>, BpfError> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = self.iter_link("pf_iter_pol_task")?.as_fd().as_raw_fd();
        let bytes = crate::scan::read_iter(fd)?;
        Ok(decode_identities(&bytes)
            .into_iter()
            .map(|i| (i.pid, i))
            .collect())
    }
}

/// The hook that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
    Egress,
    Ingress,
    /// A packet socket's frame, at tcx egress.
    Packet,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Sendmsg => "sendmsg",
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
            Hook::Packet => "packet",
        }
    }
}

/// A decision the kernel made (a `PF_EV_VERDICT` record): every block, and
/// the first allow of each connection.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelVerdict {
    /// Unix ns.
    pub time_ns: u64,
    pub cookie: u64,
    pub block: bool,
    /// Index of the deciding rule in the generation's rule set; `None` for
    /// the default.
    pub rule: Option<usize>,
    /// Generation of the rule set that decided.
    pub generation: u32,
    pub owner: Owner,
    /// The executable path the kernel matched, when it knew it.
    pub exe: Option<String>,
    pub family: u8,
    pub proto: u8,
    pub direction: Direction,
    pub remote: (IpAddr, u16),
    pub local: (IpAddr, u16),
    pub netns: u64,
    pub hook: Hook,
}

/// Decodes a `PF_EV_VERDICT` record.
pub fn decode_verdict(data: &[u8], clock: &Clock) -> Option<KernelVerdict> {
    let e: pf_verdict_event = decode::read_struct(data)?;
    let len = (e.exe_len as usize).min(EXE_KEY_BYTES);
    let exe_bytes: Vec<u8> = e.exe[..len].iter().map(|&c| c as u8).collect();
    let (family, local, remote) = decode::endpoints(e.family, &e.local, &e.remote);
    Some(KernelVerdict {
        time_ns: clock.unix_ns(e.ts_ns),
        cookie: e.cookie,
        block: e.block != 0,
        rule: usize::try_from(e.rule).ok(),
        generation: e.r#gen,
        owner: decode::owner(&e.owner),
        exe: (len > 0).then(|| String::from_utf8_lossy(&exe_bytes).into_owned()),
        family,
        proto: e.proto,
        direction: match decode::direction(e.direction) {
            Direction::In => Direction::In,
            _ => Direction::Out,
        },
        remote: (remote, e.rport),
        local: (local, e.lport),
        netns: u64::from(e.netns),
        hook: match pf_hook(u32::from(e.hook)) {
            pf_hook::PF_HOOK_SENDMSG => Hook::Sendmsg,
            pf_hook::PF_HOOK_EGRESS => Hook::Egress,
            pf_hook::PF_HOOK_INGRESS => Hook::Ingress,
            pf_hook::PF_HOOK_PACKET => Hook::Packet,
            _ => Hook::Connect,
        },
    })
}

fn mask_bytes(m: &Mask) -> Vec<u8> {
    m.0.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn lpm_key(prefix_len: u32, key: &[u8], data_bytes: usize) -> Vec<u8> {
    let mut k = prefix_len.to_ne_bytes().to_vec();
    let mut data = key.to_vec();
    data.resize(data_bytes, 0);
    k.extend_from_slice(&data);
    k
}

/// Everything written for one generation, computed before any map is
/// touched.
struct Tables {
    hdr: Vec<u8>,
    exe_pre: Vec<(Vec<u8>, Vec<u8>)>,
    exe_suf: Vec<(Vec<u8>, Vec<u8>)>,
    r4: Vec<(Vec<u8>, Vec<u8>)>,
    r6: Vec<(Vec<u8>, Vec<u8>)>,
    comm: Vec<(Vec<u8>, Vec<u8>)>,
    uid: Vec<(Vec<u8>, Vec<u8>)>,
    cg: Vec<(Vec<u8>, Vec<u8>)>,
    dir: [Vec<u8>; 2],
    proto: Vec<Vec<u8>>,
    packet: Vec<u8>,
    /// Remote, local: each port's segment (65536 u16) and segment masks.
    ports: [(Vec<u8>, Vec<Vec<u8>>); 2],
}

fn lpm_entries(t: &LpmTable, data_bytes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    // The /0 entry holds the miss mask, so a lookup always finds an entry.
    let mut out = vec![(lpm_key(0, &[], data_bytes), mask_bytes(&t.miss))];
    for e in &t.entries {
        if e.prefix_len == 0 {
            out[0].1 = mask_bytes(&e.mask);
            continue;
        }
        out.push((
            lpm_key(e.prefix_len, &e.key, data_bytes),
            mask_bytes(&e.mask),
        ));
    }
    out
}

fn port_tables(t: &PortTable, what: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>), BpfError> {
    if t.starts.len() > PORT_SEGS {
        return Err(BpfError::Rules(format!(
            "the {what} conditions cut the port space into {} ranges; the kernel holds at most \
             {PORT_SEGS}",
            t.starts.len()
        )));
    }
    let mut idx = Vec::with_capacity(65536 * 2);
    let mut seg: u16 = 0;
    for port in 0..=u16::MAX {
        while (seg as usize + 1) < t.starts.len() && t.starts[seg as usize + 1] <= port {
            seg += 1;
        }
        idx.extend_from_slice(&seg.to_ne_bytes());
    }
    Ok((idx, t.masks.iter().map(mask_bytes).collect()))
}

/// The cgroup v2 id (inode) of `path` under `root`, if it exists.
fn cgroup_id(root: &Path, path: &str) -> Option<u64> {
    let rel = path.trim_start_matches('/');
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// The kernel's rule tables and the entries the rules checker assumes each
/// holds ([`limits`]); [`check_map_sizes`] holds the loaded maps to them.
fn table_sizes(maps: &crate::skel::ProcflowMaps<'_>) -> Vec<(&'static str, u32, usize)> {
    vec![
        (
            "pol_comm_0",
            maps.pol_comm_0.max_entries(),
            limits::COMM_ENTRIES,
        ),
        (
            "pol_comm_1",
            maps.pol_comm_1.max_entries(),
            limits::COMM_ENTRIES,
        ),
        (
            "pol_uid_0",
            maps.pol_uid_0.max_entries(),
            limits::UID_ENTRIES,
        ),
        (
            "pol_uid_1",
            maps.pol_uid_1.max_entries(),
            limits::UID_ENTRIES,
        ),
        (
            "pol_cg_0",
            maps.pol_cg_0.max_entries(),
            limits::CGROUP_ENTRIES,
        ),
        (
            "pol_cg_1",
            maps.pol_cg_1.max_entries(),
            limits::CGROUP_ENTRIES,
        ),
        (
            "pol_exe_pre_0",
            maps.pol_exe_pre_0.max_entries(),
            limits::EXE_ENTRIES,
        ),
        (
            "pol_exe_pre_1",
            maps.pol_exe_pre_1.max_entries(),
            limits::EXE_ENTRIES,
        ),
        (
            "pol_exe_suf_0",
            maps.pol_exe_suf_0.max_entries(),
            limits::EXE_ENTRIES,
        ),
        (
            "pol_exe_suf_1",
            maps.pol_exe_suf_1.max_entries(),
            limits::EXE_ENTRIES,
        ),
        (
            "pol_r4_0",
            maps.pol_r4_0.max_entries(),
            limits::REMOTE_ENTRIES,
        ),
        (
            "pol_r4_1",
            maps.pol_r4_1.max_entries(),
            limits::REMOTE_ENTRIES,
        ),
        (
            "pol_r6_0",
            maps.pol_r6_0.max_entries(),
            limits::REMOTE_ENTRIES,
        ),
        (
            "pol_r6_1",
            maps.pol_r6_1.max_entries(),
            limits::REMOTE_ENTRIES,
        ),
    ]
}

/// Refuses maps smaller than the rules checker assumes, so that a rule set
/// `procflow rules check` accepts always fits.
fn check_map_sizes(maps: &crate::skel::ProcflowMaps<'_>) -> Result<(), BpfError> {
    for (name, have, want) in table_sizes(maps) {
        if (have as usize) < want {
            return Err(BpfError::Rules(format!(
                "the kernel map {name} holds {have} entries, but the rules checker allows \
                 rule sets that need {want}"
            )));
        }
    }
    Ok(())
}

/// Whether a compiled rule set fits the kernel's tables (the rules checker
/// already refuses one that does not; this holds the compiled tables to the
/// same limits).
pub fn check_fits(c: &CompiledRules) -> Result<(), BpfError> {
    let tables = [
        (
            "`comm` values",
            c.comm.entries.len() + 1,
            limits::COMM_ENTRIES,
        ),
        (
            "`user` values",
            c.uid.entries.len() + 1,
            limits::UID_ENTRIES,
        ),
        (
            "`cgroup` values",
            c.cgroup.entries.len(),
            limits::CGROUP_ENTRIES,
        ),
        (
            "`exe` prefixes",
            lpm_len(&c.exe_prefix),
            limits::EXE_ENTRIES,
        ),
        (
            "`exe` suffixes",
            lpm_len(&c.exe_suffix),
            limits::EXE_ENTRIES,
        ),
        (
            "IPv4 `remote` prefixes",
            lpm_len(&c.remote_v4),
            limits::REMOTE_ENTRIES,
        ),
        (
            "IPv6 `remote` prefixes",
            lpm_len(&c.remote_v6),
            limits::REMOTE_ENTRIES,
        ),
    ];
    for (what, need, have) in tables {
        if need > have {
            return Err(BpfError::Rules(format!(
                "the {what} need {need} kernel table entries; it holds {have}"
            )));
        }
    }
    if c.cgroup.max_level >= CG_LEVELS {
        return Err(BpfError::Rules(format!(
            "a `cgroup` condition is {} levels deep; the kernel looks at most {} levels down",
            c.cgroup.max_level,
            CG_LEVELS - 1
        )));
    }
    for (t, what) in [
        (&c.remote_port, "`remote_port`"),
        (&c.local_port, "`local_port`"),
    ] {
        if t.starts.len() > PORT_SEGS {
            return Err(BpfError::Rules(format!(
                "the {what} conditions cut the port space into {} ranges; the kernel holds at \
                 most {PORT_SEGS}",
                t.starts.len()
            )));
        }
    }
    Ok(())
}

/// Entries of an LPM table as written: the /0 entry and the others.
fn lpm_len(t: &LpmTable) -> usize {
    1 + t.entries.iter().filter(|e| e.prefix_len != 0).count()
}

fn build(c: &CompiledRules, cgroup_root: &Path) -> Result<Tables, BpfError> {
    check_fits(c)?;
    let mut block = Mask::EMPTY;
    for (i, a) in c.actions.iter().enumerate() {
        if *a == procflow_core::rules::Action::Block {
            block.set(i);
        }
    }
    let mut hdr = pf_policy_hdr {
        rule_count: c.rule_count as u32,
        default_block: u8::from(c.default == procflow_core::rules::Action::Block),
        cg_levels: if c.cgroup.entries.is_empty() {
            0
        } else {
            (c.cgroup.max_level + 1) as u8
        },
        nseg: [
            c.remote_port.starts.len() as u16,
            c.local_port.starts.len() as u16,
        ],
        ..Default::default()
    };
    let m = |x: &Mask| crate::skel::types::pf_mask { w: x.0 };
    hdr.block = m(&block);
    hdr.exe_miss = m(&c.exe_prefix.miss);
    hdr.comm_miss = m(&c.comm.miss);
    hdr.uid_miss = m(&c.uid.miss);
    hdr.cg_wild = m(&c.cgroup.wildcard);
    hdr.r4_miss = m(&c.remote_v4.miss);
    hdr.r6_miss = m(&c.remote_v6.miss);

    let mut comm: Vec<_> = c
        .comm
        .entries
        .iter()
        .map(|(k, v)| (k.to_vec(), mask_bytes(v)))
        .collect();
    comm.push((COMM_MISS.to_vec(), mask_bytes(&c.comm.miss)));
    let mut uid: Vec<_> = c
        .uid
        .entries
        .iter()
        .filter(|(k, _)| *k != UID_MISS)
        .map(|(k, v)| (k.to_ne_bytes().to_vec(), mask_bytes(v)))
        .collect();
    uid.push((UID_MISS.to_ne_bytes().to_vec(), mask_bytes(&c.uid.miss)));

    // The kernel takes the deepest ancestor it finds: each entry holds the
    // rules of every named cgroup that covers it, and the wildcard rules.
    let mut cg = Vec::new();
    for (path, _) in &c.cgroup.entries {
        let Some(id) = cgroup_id(cgroup_root, path) else {
            continue; // matches nothing until the rules are reloaded
        };
        let mut mask = c.cgroup.wildcard;
        for (q, qm) in &c.cgroup.entries {
            if cgroup_covers(q, path) {
                mask |= *qm;
            }
        }
        cg.push((id.to_ne_bytes().to_vec(), mask_bytes(&mask)));
    }

    Ok(Tables {
        hdr: decode::struct_bytes(&hdr).to_vec(),
        exe_pre: lpm_entries(&c.exe_prefix, EXE_KEY_BYTES),
        exe_suf: lpm_entries(&c.exe_suffix, EXE_KEY_BYTES),
        r4: lpm_entries(&c.remote_v4, 4),
        r6: lpm_entries(&c.remote_v6, 16),
        comm,
        uid,
        cg,
        dir: [mask_bytes(&c.direction[0]), mask_bytes(&c.direction[1])],
        // The IP hooks decide IP sockets only: `family = "packet"` rules
        // are folded out of the protocol table, and packet sockets have a
        // mask of their own.
        proto: (0..=255u8)
            .map(|p| mask_bytes(&c.kernel_proto(p)))
            .collect(),
        packet: mask_bytes(&c.kernel_packet()),
        ports: [
            port_tables(&c.remote_port, "`remote_port`")?,
            port_tables(&c.local_port, "`local_port`")?,
        ],
    })
}

fn map_err(what: &str) -> impl Fn(libbpf_rs::Error) -> BpfError + '_ {
    move |e| BpfError::Load(format!("writing the rule map {what}: {e}"))
}

fn clear(map: &dyn MapCore, what: &str) -> Result<(), BpfError> {
    let keys: Vec<Vec<u8>> = map.keys().collect();
    for k in keys {
        map.delete(&k).map_err(map_err(what))?;
    }
    Ok(())
}

fn fill(map: &dyn MapCore, what: &str, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BpfError> {
    clear(map, what)?;
    for (k, v) in entries {
        map.update(k, v, MapFlags::ANY).map_err(map_err(what))?;
    }
    Ok(())
}

/// A rule set compiled into the entries of the kernel's tables, ready for
/// [`Policy::install_prepared`].
pub struct Prepared {
    rules: Rules,
    tables: Tables,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("rules", &self.rules.rules.len())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Compiles `rules` and resolves their cgroups under `cgroup_root`;
    /// refuses a rule set that does not fit the kernel's tables.
    pub fn new(rules: Rules, cgroup_root: &Path) -> Result<Prepared, BpfError> {
        let compiled = CompiledRules::compile(&rules);
        let tables = build(&compiled, cgroup_root)?;
        Ok(Prepared { rules, tables })
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// The rule sets in the kernel: which generation is in force and the rules
/// of the last two (verdict records name rules by generation and index).
/// Generations count every rule set installed; the low bit is the kernel
/// table slot, so a cached decision of an older generation never matches a
/// newer one.
#[derive(Debug, Default)]
pub struct Policy {
    /// Generation in force, when rules are loaded.
    active: Option<u32>,
    /// The last generation installed (0: none yet).
    last: u32,
    by_gen: [Option<(u32, Rules)>; 2],
}

impl Policy {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule set in force.
    pub fn rules(&self) -> Option<&Rules> {
        self.rules_of(self.active?)
    }

    /// The rule set of a generation (for verdict records), if it is one of
    /// the last two.
    pub fn rules_of(&self, generation: u32) -> Option<&Rules> {
        match &self.by_gen[(generation & 1) as usize] {
            Some((g, r)) if *g == generation => Some(r),
            _ => None,
        }
    }

    /// Writes `rules` into the generation not in use and makes it the one
    /// in force. On error the rules in force stay in force, untouched.
    pub fn install(&mut self, kernel: &Kernel, rules: Rules) -> Result<(), BpfError> {
        let p = Prepared::new(rules, &kernel.cgroup_root)?;
        self.install_prepared(kernel, p)
    }

    /// [`Policy::install`] of a rule set already compiled (by
    /// [`Prepared::new`], which needs no kernel and may run on another
    /// thread). Only the map writes and the flip are left.
    pub fn install_prepared(&mut self, kernel: &Kernel, p: Prepared) -> Result<(), BpfError> {
        check_map_sizes(&kernel.skel().maps)?;
        let Prepared { rules, tables: t } = p;
        // 0 means none; after 2^32 - 1 rule sets, 2 keeps the slots alternating.
        let next = match self.last.wrapping_add(1) {
            0 => 2,
            n => n,
        };
        let maps = &kernel.skel().maps;
        let g = (next & 1) as usize;
        let pick = |a: &'static libbpf_rs::Map<'static>, b: &'static libbpf_rs::Map<'static>| {
            if g == 0 {
                a
            } else {
                b
            }
        };
        fill(
            pick(&maps.pol_exe_pre_0, &maps.pol_exe_pre_1),
            "exe prefix",
            &t.exe_pre,
        )?;
        fill(
            pick(&maps.pol_exe_suf_0, &maps.pol_exe_suf_1),
            "exe suffix",
            &t.exe_suf,
        )?;
        fill(pick(&maps.pol_r4_0, &maps.pol_r4_1), "remote v4", &t.r4)?;
        fill(pick(&maps.pol_r6_0, &maps.pol_r6_1), "remote v6", &t.r6)?;
        fill(pick(&maps.pol_comm_0, &maps.pol_comm_1), "comm", &t.comm)?;
        fill(pick(&maps.pol_uid_0, &maps.pol_uid_1), "uid", &t.uid)?;
        fill(pick(&maps.pol_cg_0, &maps.pol_cg_1), "cgroup", &t.cg)?;
        let put = |map: &libbpf_rs::Map<'_>, what: &str, idx: usize, v: &[u8]| {
            map.update(&(idx as u32).to_ne_bytes(), v, MapFlags::ANY)
                .map_err(map_err(what))
        };
        for (d, v) in t.dir.iter().enumerate() {
            put(&maps.pol_dir, "direction", g * 2 + d, v)?;
        }
        for (p, v) in t.proto.iter().enumerate() {
            put(&maps.pol_proto, "proto", g * 256 + p, v)?;
        }
        for (dim, (idx, masks)) in t.ports.iter().enumerate() {
            let base = (g * 2 + dim) * PORT_SEGS;
            for (i, v) in masks.iter().enumerate() {
                put(&maps.pol_port_mask, "port masks", base + i, v)?;
            }
            put(&maps.pol_port_idx, "port index", g * 2 + dim, idx)?;
        }
        put(&maps.pol_packet, "packet sockets", g, &t.packet)?;
        put(&maps.pol_hdr, "header", g, &t.hdr)?;

        // The flip: from here on, new decisions use generation `next`.
        let mut state = next.to_ne_bytes().to_vec();
        state.extend_from_slice(&1u32.to_ne_bytes());
        put(&maps.pol_state, "state", 0, &state)?;
        self.by_gen[g] = Some((next, rules));
        self.active = Some(next);
        self.last = next;
        Ok(())
    }

    /// Stops enforcing: every connection is allowed again.
    pub fn disable(&mut self, kernel: &Kernel) -> Result<(), BpfError> {
        let mut state = self.active.unwrap_or(self.last).to_ne_bytes().to_vec();
        state.extend_from_slice(&0u32.to_ne_bytes());
        kernel
            .skel()
            .maps
            .pol_state
            .update(&0u32.to_ne_bytes(), &state, MapFlags::ANY)
            .map_err(map_err("state"))?;
        self.active = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use procflow_core::rules::{parse_rules, NoUsers};

    #[test]
    fn port_index_maps_each_port_to_its_segment() {
        let r = parse_rules(
            "t.toml",
            "[[rule]]\nname = \"a\"\naction = \"block\"\nremote_port = \"100-200\"\n",
            &NoUsers,
        )
        .unwrap();
        let c = CompiledRules::compile(&r);
        let (idx, masks) = port_tables(&c.remote_port, "remote_port").unwrap();
        let seg = |p: usize| u16::from_ne_bytes([idx[p * 2], idx[p * 2 + 1]]) as usize;
        assert_eq!(masks.len(), 3);
        assert_eq!(
            (seg(0), seg(99), seg(100), seg(200), seg(201)),
            (0, 0, 1, 1, 2)
        );
        for p in [0u16, 99, 100, 150, 200, 201, 65535] {
            assert_eq!(
                masks[seg(p as usize)],
                mask_bytes(&c.remote_port.lookup(p)),
                "port {p}"
            );
        }
    }

    #[test]
    fn the_rule_maps_hold_what_the_rules_checker_allows() {
        // Opening the object reads the map definitions; nothing is loaded.
        let mut storage = std::mem::MaybeUninit::uninit();
        let open = crate::skel::ProcflowSkelBuilder::default()
            .open(&mut storage)
            .unwrap();
        let sizes: Vec<(String, u32)> = open
            .open_object()
            .maps()
            .map(|m| (m.name().to_string_lossy().into_owned(), m.max_entries()))
            .collect();
        let want = [
            ("pol_comm_", limits::COMM_ENTRIES),
            ("pol_uid_", limits::UID_ENTRIES),
            ("pol_cg_", limits::CGROUP_ENTRIES),
            ("pol_exe_pre_", limits::EXE_ENTRIES),
            ("pol_exe_suf_", limits::EXE_ENTRIES),
            ("pol_r4_", limits::REMOTE_ENTRIES),
            ("pol_r6_", limits::REMOTE_ENTRIES),
        ];
        for (prefix, entries) in want {
            for g in 0..2 {
                let name = format!("{prefix}{g}");
                let have = sizes.iter().find(|(n, _)| *n == name);
                assert_eq!(
                    have.map(|(_, e)| *e as usize),
                    Some(entries),
                    "map {name}: the kernel's size and rules::limits disagree"
                );
            }
        }
        let port_masks = sizes.iter().find(|(n, _)| *n == "pol_port_mask");
        assert_eq!(
            port_masks.map(|(_, e)| *e as usize),
            Some(4 * limits::PORT_SEGMENTS)
        );
    }

    #[test]
    fn check_fits_counts_the_miss_entries() {
        let comms: String = (0..1024)
            .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"block\"\ncomm = \"c{i}\"\n"))
            .collect();
        // The checker refuses it; build the rules by hand to see that the
        // bpf side would too.
        let one = parse_rules(
            "t.toml",
            "[[rule]]\nname = \"r\"\naction = \"block\"\ncomm = \"c\"\n",
            &NoUsers,
        )
        .unwrap();
        let mut r = one.clone();
        r.rules = (0..1024)
            .map(|i| {
                let mut x = one.rules[0].clone();
                x.name = format!("r{i}");
                x.comm = Some(format!("c{i}"));
                x
            })
            .collect();
        let err = check_fits(&CompiledRules::compile(&r)).unwrap_err();
        assert!(err.to_string().contains("`comm` values need 1025"), "{err}");
        r.rules.pop();
        check_fits(&CompiledRules::compile(&r)).unwrap();
        assert!(parse_rules("t.toml", &comms, &NoUsers).is_err());
    }

    #[test]
    fn exe_paths_are_rebuilt_from_the_kernels_keys() {
        let keys = |path: &[u8]| {
            let mut fwd = [0u8; EXE_KEY_BYTES];
            let n = path.len().min(EXE_KEY_BYTES);
            fwd[..n].copy_from_slice(&path[..n]);
            let mut rev = [0u8; EXE_KEY_BYTES];
            for (i, b) in path.iter().rev().take(EXE_KEY_BYTES).enumerate() {
                rev[i] = *b;
            }
            (fwd, rev)
        };
        for len in [1, 10, 255, 256, 257, 300, 511, 512, 513, 1000] {
            let path: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let (fwd, rev) = keys(&path);
            let got = exe_from_keys(&fwd, &rev, len);
            assert_eq!(got.len(), len);
            let s = String::from_utf8(got.clone()).unwrap();
            let want = String::from_utf8(path.clone()).unwrap();
            // The keys the compiled rules look up are the kernel's.
            assert_eq!(
                procflow_core::rules::exe_prefix_key(&s),
                procflow_core::rules::exe_prefix_key(&want)
            );
            assert_eq!(
                procflow_core::rules::exe_suffix_key(&s),
                procflow_core::rules::exe_suffix_key(&want)
            );
            if len <= 2 * EXE_KEY_BYTES {
                assert_eq!(got, path, "len {len}");
            }
        }
    }

    #[test]
    fn lpm_tables_get_a_catch_all_entry_with_the_miss_mask() {
        let r = parse_rules(
            "t.toml",
            "[[rule]]\nname = \"a\"\naction = \"block\"\nremote = \"10.0.0.0/8\"\n\
             [[rule]]\nname = \"b\"\naction = \"allow\"\n",
            &NoUsers,
        )
        .unwrap();
        let c = CompiledRules::compile(&r);
        let e = lpm_entries(&c.remote_v4, 4);
        assert_eq!(e[0].0, lpm_key(0, &[], 4));
        assert_eq!(e[0].1, mask_bytes(&c.remote_v4.miss));
        assert_eq!(e[1].0, [8, 0, 0, 0, 10, 0, 0, 0]);
        assert_eq!(e.len(), 2);
    }
}
