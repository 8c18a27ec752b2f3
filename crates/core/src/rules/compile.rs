//! The compiled matcher: a checked rule set turned into the tables the kernel
//! looks up at connect time, and [`CompiledRules::decide`], which runs the
//! kernel's algorithm over them.
//!
//! Every condition dimension maps the connection's value to a [`Mask`] of the
//! rules whose condition on that dimension holds (a rule without the
//! condition is set in every mask of the dimension). The AND of all
//! dimensions' masks holds the rules that match; the lowest set bit decides;
//! none set means the default. All lookups are exact or longest-prefix map
//! lookups, plus one binary search per port, so the kernel's cost does not
//! grow with the number of rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use super::model::{
    normalize_ip, Action, Decision, Direction, ExePattern, PortRange, ProtoMatch, Query, Rule,
    Rules, MAX_COMM, MAX_RULES,
};

/// Words in a [`Mask`].
pub const MASK_WORDS: usize = MAX_RULES / 64;
/// Bytes of path in an exe LPM key (the `data` of the kernel's key).
pub const EXE_KEY_BYTES: usize = 256;
/// Bytes of a comm key (the kernel's `TASK_COMM_LEN`).
pub const COMM_KEY_BYTES: usize = MAX_COMM + 1;

/// What the kernel's rule tables hold (`bpf/policy.h`; the bpf crate checks
/// these against the maps it loads). [`parse_rules`](super::parse_rules)
/// refuses a rule set that does not fit, so a checked rule set always
/// installs.
pub mod limits {
    /// Entries of the comm table; one holds the mask of comms no rule names.
    pub const COMM_ENTRIES: usize = 1024;
    /// Entries of the uid table; one holds the mask of uids no rule names.
    pub const UID_ENTRIES: usize = 1024;
    /// Entries of the cgroup table, one per cgroup a rule names.
    pub const CGROUP_ENTRIES: usize = 1024;
    /// Cgroup levels the kernel looks up: `/` (level 0) to level 15.
    pub const CGROUP_LEVELS: usize = 16;
    /// Entries of each exe LPM table (prefix, suffix); one holds the miss mask.
    pub const EXE_ENTRIES: usize = 2048;
    /// Entries of each remote LPM table (IPv4, IPv6); one holds the miss mask.
    pub const REMOTE_ENTRIES: usize = 16384;
    /// Segments the port conditions may cut the port space into, per
    /// dimension (`remote_port`, `local_port`).
    pub const PORT_SEGMENTS: usize = 4096;
}

/// A set of rules, one bit per rule: rule `i` is bit `i % 64` of word
/// `i / 64`. Laid out as the kernel's `__u64 bits[16]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mask(pub [u64; MASK_WORDS]);

impl Mask {
    pub const EMPTY: Mask = Mask([0; MASK_WORDS]);

    pub fn set(&mut self, rule: usize) {
        self.0[rule / 64] |= 1 << (rule % 64);
    }

    pub fn clear(&mut self, rule: usize) {
        self.0[rule / 64] &= !(1 << (rule % 64));
    }

    pub fn contains(&self, rule: usize) -> bool {
        self.0[rule / 64] & (1 << (rule % 64)) != 0
    }

    /// The lowest rule in the set: the deciding rule.
    pub fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The rules in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_RULES).filter(|i| self.contains(*i))
    }
}

impl BitAnd for Mask {
    type Output = Mask;
    fn bitand(mut self, rhs: Mask) -> Mask {
        for (a, b) in self.0.iter_mut().zip(rhs.0) {
            *a &= b;
        }
        self
    }
}

impl BitOr for Mask {
    type Output = Mask;
    fn bitor(mut self, rhs: Mask) -> Mask {
        self |= rhs;
        self
    }
}

impl BitOrAssign for Mask {
    fn bitor_assign(&mut self, rhs: Mask) {
        for (a, b) in self.0.iter_mut().zip(rhs.0) {
            *a |= b;
        }
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One entry of a longest-prefix-match table: the first `prefix_len` bits of
/// `key` (which is `ceil(prefix_len / 8)` bytes long) map to `mask`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmEntry {
    pub prefix_len: u32,
    pub key: Vec<u8>,
    pub mask: Mask,
}

/// A longest-prefix-match table (`BPF_MAP_TYPE_LPM_TRIE`) and the mask of a
/// lookup that finds no entry.
///
/// Each entry's mask already holds every rule whose own prefix covers the
/// entry, so the one entry a lookup returns says everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmTable {
    /// Size of the key's data in the kernel (4, 16 or [`EXE_KEY_BYTES`]).
    pub key_bytes: usize,
    /// Sorted by key, then prefix length.
    pub entries: Vec<LpmEntry>,
    pub miss: Mask,
}

fn prefix_matches(key: &[u8], pattern: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    let rest = bits % 8;
    if key.len() * 8 < bits as usize {
        return false;
    }
    if key[..full] != pattern[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let m = 0xffu8 << (8 - rest);
    key[full] & m == pattern[full] & m
}

/// The first `bits` bits of `key` (which has at least that many), the
/// bits after them in the last byte cleared.
fn truncate_bits(key: &[u8], bits: u32) -> Vec<u8> {
    let n = (bits as usize).div_ceil(8).min(key.len());
    let mut out = key[..n].to_vec();
    if !bits.is_multiple_of(8) {
        if let Some(last) = out.last_mut() {
            *last &= 0xffu8 << (8 - bits % 8);
        }
    }
    out
}

impl LpmTable {
    /// Builds the table from `(key, prefix_len, rule)` patterns; `wildcard`
    /// is the rules without a condition in this dimension.
    /// Each entry's mask holds the rules of every pattern that is a prefix
    /// of it. Patterns are grouped by length, so an entry costs one map
    /// lookup per distinct pattern length and not one test per pattern.
    fn build(key_bytes: usize, patterns: &[(Vec<u8>, u32, usize)], wildcard: Mask) -> Self {
        let mut by_prefix: HashMap<(Vec<u8>, u32), Mask> = HashMap::new();
        for (k, l, rule) in patterns {
            by_prefix
                .entry((truncate_bits(k, *l), *l))
                .or_default()
                .set(*rule);
        }
        let lens: BTreeSet<u32> = by_prefix.keys().map(|(_, l)| *l).collect();
        let keys: BTreeSet<(Vec<u8>, u32)> =
            patterns.iter().map(|(k, l, _)| (k.clone(), *l)).collect();
        let entries = keys
            .into_iter()
            .map(|(key, prefix_len)| {
                let mut mask = wildcard;
                for &l in lens.range(..=prefix_len) {
                    if key.len() * 8 < l as usize {
                        break;
                    }
                    if let Some(m) = by_prefix.get(&(truncate_bits(&key, l), l)) {
                        mask |= *m;
                    }
                }
                LpmEntry {
                    prefix_len,
                    key,
                    mask,
                }
            })
            .collect();
        LpmTable {
            key_bytes,
            entries,
            miss: wildcard,
        }
    }

    pub fn lookup(&self, key: &[u8]) -> Mask {
        self.entries
            .iter()
            .filter(|e| prefix_matches(key, &e.key, e.prefix_len))
            .max_by_key(|e| e.prefix_len)
            .map_or(self.miss, |e| e.mask)
    }
}

/// An exact-match table (`BPF_MAP_TYPE_HASH`) and the mask for values not in
/// it. Entry masks include the `miss` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactTable<K> {
    /// Sorted by key.
    pub entries: Vec<(K, Mask)>,
    pub miss: Mask,
}

impl<K: Ord + Clone> ExactTable<K> {
    fn build(patterns: &[(K, usize)], wildcard: Mask) -> Self {
        let mut map: BTreeMap<K, Mask> = BTreeMap::new();
        for (k, rule) in patterns {
            map.entry(k.clone()).or_insert(wildcard).set(*rule);
        }
        ExactTable {
            entries: map.into_iter().collect(),
            miss: wildcard,
        }
    }

    pub fn lookup(&self, key: &K) -> Mask {
        match self.entries.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => self.entries[i].1,
            Err(_) => self.miss,
        }
    }
}

/// The port space cut into segments: segment `i` covers `starts[i]` up to
/// `starts[i + 1] - 1` (the last one up to 65535); `starts[0]` is 0. The
/// kernel finds the last start not above the port by binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTable {
    pub starts: Vec<u16>,
    pub masks: Vec<Mask>,
}

impl PortTable {
    fn build(ranges: &[(PortRange, usize)], wildcard: Mask) -> Self {
        let mut cuts: BTreeSet<u16> = BTreeSet::from([0]);
        for (r, _) in ranges {
            cuts.insert(r.lo);
            if let Some(next) = r.hi.checked_add(1) {
                cuts.insert(next);
            }
        }
        let starts: Vec<u16> = cuts.into_iter().collect();
        // One sweep over the port space: a rule enters at the start of each
        // of its ranges and leaves after its end (a count, as a rule's
        // ranges may overlap).
        let mut enter: Vec<(u16, usize)> = ranges.iter().map(|(r, i)| (r.lo, *i)).collect();
        let mut leave: Vec<(u16, usize)> = ranges
            .iter()
            .filter_map(|(r, i)| Some((r.hi.checked_add(1)?, *i)))
            .collect();
        enter.sort_unstable();
        leave.sort_unstable();
        let (mut e, mut l) = (0, 0);
        let mut inside: HashMap<usize, usize> = HashMap::new();
        let mut current = wildcard;
        let mut masks = Vec::with_capacity(starts.len());
        for &s in &starts {
            while l < leave.len() && leave[l].0 <= s {
                let rule = leave[l].1;
                let n = inside.get_mut(&rule).expect("a range ends after it starts");
                *n -= 1;
                if *n == 0 {
                    inside.remove(&rule);
                    if !wildcard.contains(rule) {
                        current.clear(rule);
                    }
                }
                l += 1;
            }
            while e < enter.len() && enter[e].0 <= s {
                let rule = enter[e].1;
                *inside.entry(rule).or_default() += 1;
                current.set(rule);
                e += 1;
            }
            masks.push(current);
        }
        PortTable { starts, masks }
    }

    pub fn lookup(&self, port: u16) -> Mask {
        let i = self.starts.partition_point(|&s| s <= port);
        self.masks[i - 1]
    }
}

/// The cgroup dimension. The kernel walks the connecting process's cgroup
/// ancestors (levels 0 to `max_level`) and ORs the mask of each ancestor
/// found in the table into `wildcard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTable {
    /// Cgroup path (normalized) to the rules naming exactly that path; the
    /// binary resolves each path to its cgroup id. Masks do NOT include
    /// `wildcard`.
    pub entries: Vec<(String, Mask)>,
    /// Rules without a `cgroup` condition.
    pub wildcard: Mask,
    /// Deepest level named by a rule (`/` is level 0, `/a/b` level 2).
    pub max_level: usize,
}

impl CgroupTable {
    pub fn lookup(&self, ancestors: &[String]) -> Mask {
        let mut m = self.wildcard;
        for a in ancestors {
            if let Ok(i) = self.entries.binary_search_by(|(p, _)| p.as_str().cmp(a)) {
                m |= self.entries[i].1;
            }
        }
        m
    }
}

/// The rule set as the kernel holds it. Rule `i` is the `i`-th rule of the
/// file; `actions[i]` is what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRules {
    pub rule_count: usize,
    pub actions: Vec<Action>,
    pub default: Action,
    /// Exact and `PREFIX*` patterns; key: [`exe_prefix_key`].
    pub exe_prefix: LpmTable,
    /// `*SUFFIX` patterns; key: [`exe_suffix_key`].
    pub exe_suffix: LpmTable,
    /// Key: [`comm_key`].
    pub comm: ExactTable<[u8; COMM_KEY_BYTES]>,
    pub uid: ExactTable<u32>,
    pub cgroup: CgroupTable,
    /// Indexed by [`Direction::index`].
    pub direction: [Mask; 2],
    /// Indexed by IP protocol number; 256 entries.
    pub proto: Vec<Mask>,
    /// Key: the address in network byte order (4 bytes).
    pub remote_v4: LpmTable,
    /// Key: the address in network byte order (16 bytes).
    pub remote_v6: LpmTable,
    pub remote_port: PortTable,
    pub local_port: PortTable,
    /// The `family` dimension: index 0 for IP sockets, 1 for packet
    /// sockets.
    pub family: [Mask; 2],
    /// The rules without a condition on the protocol (or `any`), remote,
    /// remote port and local port: what those dimensions give a packet
    /// socket's frame, which has none of them.
    pub unaddressed: [Mask; 4],
}

/// The first byte of the exe key the kernel gives a program it cannot name
/// with trust (`PF_EXE_UNKNOWN` in procflow.h): its path could not be
/// walked, or it runs from a mount namespace of another user namespace
/// (where any user can bind-mount any file over any path), from an internal
/// mount (memfd) or from a deleted file. No path starts with it.
pub const EXE_UNKNOWN: u8 = 1;

/// The dynamic loader's real paths (x86_64 and i386, merged /usr or not).
/// `ld-linux-x86-64.so.2 PROGRAM` runs PROGRAM with the loader as its
/// executable, so the loader counts as an unknown program (and as itself
/// for rules that name it).
pub const LOADERS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/i386-linux-gnu/ld-linux.so.2",
    "/lib/i386-linux-gnu/ld-linux.so.2",
    "/usr/lib/ld-linux.so.2",
    "/lib/ld-linux.so.2",
];

/// Adds to the exe-prefix table the entry of unknown programs and of the
/// loaders: the rules without an exe condition, and every block rule with
/// one, hold for them; no allow rule with an exe condition does (other than
/// one naming the loader itself). Never a silent allow where a block rule
/// would have matched the real program.
fn with_unknown_programs(mut table: LpmTable, rs: &[Rule], exe_wild: Mask) -> LpmTable {
    let mut unknown = exe_wild;
    for (i, r) in rs.iter().enumerate() {
        if r.exe.is_some() && r.action == Action::Block {
            unknown.set(i);
        }
    }
    let mut extra = vec![LpmEntry {
        prefix_len: 8,
        key: vec![EXE_UNKNOWN],
        mask: unknown,
    }];
    for path in LOADERS {
        let key = exe_prefix_key(path);
        let prefix_len = (key.len() * 8) as u32;
        let mask = table.lookup(&key) | unknown;
        extra.push(LpmEntry {
            prefix_len,
            key,
            mask,
        });
    }
    table.entries.retain(|e| {
        !extra
            .iter()
            .any(|x| x.key == e.key && x.prefix_len == e.prefix_len)
    });
    table.entries.extend(extra);
    table
}

/// The exe-prefix lookup key: the path's bytes and its terminating NUL, cut
/// to [`EXE_KEY_BYTES`]. (The kernel's key buffer is zero beyond it.)
pub fn exe_prefix_key(path: &str) -> Vec<u8> {
    let mut k: Vec<u8> = path.as_bytes().to_vec();
    k.push(0);
    k.truncate(EXE_KEY_BYTES);
    k
}

/// The exe-suffix lookup key: the last [`EXE_KEY_BYTES`] bytes of the path,
/// reversed (no NUL; the kernel's key buffer is zero beyond them).
pub fn exe_suffix_key(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let tail = &b[b.len().saturating_sub(EXE_KEY_BYTES)..];
    tail.iter().rev().copied().collect()
}

/// The comm key: the first 15 bytes of the comm, NUL padded to 16.
pub fn comm_key(comm: &str) -> [u8; COMM_KEY_BYTES] {
    let mut k = [0u8; COMM_KEY_BYTES];
    let b = comm.as_bytes();
    let n = b.len().min(MAX_COMM);
    k[..n].copy_from_slice(&b[..n]);
    k
}

fn ip_key(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Rules for which `absent(rule)` holds, i.e. without a condition.
fn wildcard(rules: &[Rule], absent: impl Fn(&Rule) -> bool) -> Mask {
    let mut m = Mask::EMPTY;
    for (i, r) in rules.iter().enumerate() {
        if absent(r) {
            m.set(i);
        }
    }
    m
}

impl CompiledRules {
    /// Compiles a checked rule set.
    ///
    /// # Panics
    /// If it has more than [`MAX_RULES`] rules, which the checker refuses.
    pub fn compile(rules: &Rules) -> CompiledRules {
        let rs = &rules.rules;
        assert!(rs.len() <= MAX_RULES, "more than {MAX_RULES} rules");

        let exe_wild = wildcard(rs, |r| r.exe.is_none());
        let mut prefix_pats = Vec::new();
        let mut suffix_pats = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            match &r.exe {
                Some(ExePattern::Exact(p)) => {
                    let k = exe_prefix_key(p);
                    prefix_pats.push((k.clone(), (k.len() * 8) as u32, i));
                }
                Some(ExePattern::Prefix(p)) => {
                    prefix_pats.push((p.as_bytes().to_vec(), (p.len() * 8) as u32, i));
                }
                Some(ExePattern::Suffix(s)) => {
                    let k: Vec<u8> = s.bytes().rev().collect();
                    suffix_pats.push((k, (s.len() * 8) as u32, i));
                }
                None => {}
            }
        }

        let comm_pats: Vec<_> = rs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.comm.as_deref().map(|c| (comm_key(c), i)))
            .collect();
        let uid_pats: Vec<_> = rs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.user.as_ref().map(|u| (u.uid, i)))
            .collect();

        let mut cg: BTreeMap<String, Mask> = BTreeMap::new();
        let mut max_level = 0;
        for (i, r) in rs.iter().enumerate() {
            if let Some(p) = &r.cgroup {
                cg.entry(p.clone()).or_default().set(i);
                max_level = max_level.max(p.split('/').filter(|c| !c.is_empty()).count());
            }
        }

        let dir_wild = wildcard(rs, |r| r.direction.is_none());
        let mut direction = [dir_wild; 2];
        for (i, r) in rs.iter().enumerate() {
            if let Some(d) = r.direction {
                direction[d.index()].set(i);
            }
        }

        let proto_wild = wildcard(rs, |r| matches!(r.proto, None | Some(ProtoMatch::Any)));
        let proto = (0..=255u8)
            .map(|p| {
                let mut m = proto_wild;
                for (i, r) in rs.iter().enumerate() {
                    if r.proto.is_some_and(|pm| pm.matches(p)) {
                        m.set(i);
                    }
                }
                m
            })
            .collect();

        let remote_wild = wildcard(rs, |r| r.remote.is_empty());
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            for p in &r.remote {
                let entry = (ip_key(p.addr), u32::from(p.len), i);
                match p.addr {
                    IpAddr::V4(_) => v4.push(entry),
                    IpAddr::V6(_) => v6.push(entry),
                }
            }
        }

        let ports = |get: fn(&Rule) -> &Vec<PortRange>| {
            let wild = wildcard(rs, |r| get(r).is_empty());
            let ranges: Vec<_> = rs
                .iter()
                .enumerate()
                .flat_map(|(i, r)| get(r).iter().map(move |p| (*p, i)))
                .collect();
            PortTable::build(&ranges, wild)
        };

        let mut family = [Mask::EMPTY; 2];
        for (i, r) in rs.iter().enumerate() {
            for (f, packet) in family.iter_mut().zip([false, true]) {
                if r.family.is_none_or(|fm| fm.matches(packet)) {
                    f.set(i);
                }
            }
        }
        let unaddressed = [
            proto_wild,
            remote_wild,
            wildcard(rs, |r| r.remote_port.is_empty()),
            wildcard(rs, |r| r.local_port.is_empty()),
        ];

        CompiledRules {
            rule_count: rs.len(),
            actions: rs.iter().map(|r| r.action).collect(),
            default: rules.default,
            exe_prefix: with_unknown_programs(
                LpmTable::build(EXE_KEY_BYTES, &prefix_pats, exe_wild),
                rs,
                exe_wild,
            ),
            exe_suffix: LpmTable::build(EXE_KEY_BYTES, &suffix_pats, exe_wild),
            comm: ExactTable::build(&comm_pats, wildcard(rs, |r| r.comm.is_none())),
            uid: ExactTable::build(&uid_pats, wildcard(rs, |r| r.user.is_none())),
            cgroup: CgroupTable {
                entries: cg.into_iter().collect(),
                wildcard: wildcard(rs, |r| r.cgroup.is_none()),
                max_level,
            },
            direction,
            proto,
            remote_v4: LpmTable::build(4, &v4, remote_wild),
            remote_v6: LpmTable::build(16, &v6, remote_wild),
            remote_port: ports(|r| &r.remote_port),
            local_port: ports(|r| &r.local_port),
            family,
            unaddressed,
        }
    }

    /// The exe dimension for a program the kernel cannot name with trust
    /// (see [`EXE_UNKNOWN`]).
    pub fn exe_unknown_mask(&self) -> Mask {
        self.exe_prefix.lookup(&[EXE_UNKNOWN]) | self.exe_suffix.miss
    }

    /// The kernel's protocol table entry for IP protocol `p`: the `proto`
    /// dimension with the `family` dimension for IP sockets folded in (the
    /// kernel's IP hooks decide only IP sockets).
    pub fn kernel_proto(&self, p: u8) -> Mask {
        self.proto[usize::from(p)] & self.family[0]
    }

    /// The kernel's packet-socket mask: every dimension a packet socket's
    /// frame has no value for (protocol, remote, ports) and `family`,
    /// ANDed; the kernel ANDs it with exe, comm, user, cgroup and
    /// direction.
    pub fn kernel_packet(&self) -> Mask {
        self.unaddressed.iter().fold(self.family[1], |a, m| a & *m)
    }

    /// The exe dimension: prefix-table mask OR suffix-table mask.
    /// An empty `exe` is a program the kernel could not name with trust.
    pub fn exe_mask(&self, exe: &str) -> Mask {
        if exe.is_empty() {
            return self.exe_unknown_mask();
        }
        self.exe_prefix.lookup(&exe_prefix_key(exe)) | self.exe_suffix.lookup(&exe_suffix_key(exe))
    }

    pub fn remote_mask(&self, remote: IpAddr) -> Mask {
        match normalize_ip(remote) {
            a @ IpAddr::V4(_) => self.remote_v4.lookup(&ip_key(a)),
            a @ IpAddr::V6(_) => self.remote_v6.lookup(&ip_key(a)),
        }
    }

    /// Each dimension's mask for `q`, in the order of
    /// [`super::explain::DIMENSIONS`].
    pub fn masks(&self, q: &Query<'_>) -> [Mask; 10] {
        if q.packet {
            return [
                self.exe_mask(q.exe),
                self.comm.lookup(&comm_key(q.comm)),
                self.uid.lookup(&q.uid),
                self.cgroup.lookup(q.cgroup_ancestors),
                self.direction[q.direction.index()],
                self.unaddressed[0],
                self.unaddressed[1],
                self.unaddressed[2],
                self.unaddressed[3],
                self.family[1],
            ];
        }
        [
            self.exe_mask(q.exe),
            self.comm.lookup(&comm_key(q.comm)),
            self.uid.lookup(&q.uid),
            self.cgroup.lookup(q.cgroup_ancestors),
            self.direction[q.direction.index()],
            self.proto[usize::from(q.proto)],
            self.remote_mask(q.remote),
            self.remote_port.lookup(q.remote_port),
            self.local_port.lookup(q.local_port),
            self.family[0],
        ]
    }

    /// Decides `q` exactly as the kernel does: AND of the dimension masks,
    /// lowest set bit, else the default.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        let all = self
            .masks(q)
            .into_iter()
            .fold(Mask([u64::MAX; MASK_WORDS]), |a, m| a & m);
        match all.first() {
            Some(i) => Decision {
                rule: Some(i),
                action: self.actions[i],
            },
            None => Decision {
                rule: None,
                action: self.default,
            },
        }
    }
}

impl Direction {
    /// Both directions, in index order.
    pub const ALL: [Direction; 2] = [Direction::Out, Direction::In];
}
