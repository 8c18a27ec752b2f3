//! The checked rule set: what a rules file means once it has been parsed and
//! validated, and the plain matching of each condition on its own.
//!
//! Every value here is valid by construction of [`super::parse_rules`]; the
//! matching helpers are the single definition of what a condition means, used
//! by the reference evaluator and by `explain`, and mirrored (by table
//! construction, not by calling these) in the compiled matcher.

use std::fmt;
use std::net::IpAddr;

/// Most rules a rule set may hold: the compiled masks have this many bits.
pub const MAX_RULES: usize = 1024;
/// Longest `exe` pattern, in bytes, as written (with its `*`).
pub const MAX_EXE_PATTERN: usize = 255;
/// Longest `comm`, in bytes (the kernel's `TASK_COMM_LEN` less its NUL).
pub const MAX_COMM: usize = 15;

/// What a rule (or the default) does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Action {
    #[default]
    Allow,
    Block,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Block => "block",
        })
    }
}

/// Direction of a connection as rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This host connects or sends first.
    Out = 0,
    /// A peer connects to (or sends first to) this host.
    In = 1,
}

impl Direction {
    /// Index in [`super::CompiledRules::direction`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Out => "out",
            Direction::In => "in",
        })
    }
}

/// IP protocol numbers rules know by name.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The `proto` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoMatch {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Every protocol, including ones without a name here.
    Any,
}

impl ProtoMatch {
    pub fn matches(self, proto: u8) -> bool {
        match self {
            ProtoMatch::Tcp => proto == IPPROTO_TCP,
            ProtoMatch::Udp => proto == IPPROTO_UDP,
            ProtoMatch::Icmp => proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6,
            ProtoMatch::Any => true,
        }
    }
}

impl fmt::Display for ProtoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtoMatch::Tcp => "tcp",
            ProtoMatch::Udp => "udp",
            ProtoMatch::Icmp => "icmp",
            ProtoMatch::Any => "any",
        })
    }
}

/// The `family` condition: what kind of socket sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FamilyMatch {
    /// IPv4 and IPv6 sockets (TCP, UDP, ICMP, raw IP).
    Ip,
    /// Packet sockets (`AF_PACKET`), which send whole link-layer frames.
    Packet,
}

impl FamilyMatch {
    /// Whether a connection (`packet`: from a packet socket) has it.
    pub fn matches(self, packet: bool) -> bool {
        match self {
            FamilyMatch::Ip => !packet,
            FamilyMatch::Packet => packet,
        }
    }
}

impl fmt::Display for FamilyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FamilyMatch::Ip => "ip",
            FamilyMatch::Packet => "packet",
        })
    }
}

/// An `exe` pattern: one of the three forms the kernel can evaluate with a
/// longest-prefix-match lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExePattern {
    /// `/usr/bin/curl`: this path only.
    Exact(String),
    /// `/opt/app/*`: any path that starts with these bytes, at any depth.
    Prefix(String),
    /// `*/curl`: any path that ends with these bytes.
    Suffix(String),
}

impl ExePattern {
    /// Byte-wise match against the executable's full path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            ExePattern::Exact(p) => path == p,
            ExePattern::Prefix(p) => path.as_bytes().starts_with(p.as_bytes()),
            ExePattern::Suffix(s) => path.as_bytes().ends_with(s.as_bytes()),
        }
    }
}

impl fmt::Display for ExePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExePattern::Exact(p) => f.write_str(p),
            ExePattern::Prefix(p) => write!(f, "{p}*"),
            ExePattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// The `user` condition, resolved to a uid when the file was checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserMatch {
    pub uid: u32,
    /// The name as written, when the file named the user.
    pub name: Option<String>,
}

impl fmt::Display for UserMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// An address prefix (`10.0.0.0/8`, `fd00::/8`; a bare address is a full
/// prefix). Host bits are always zero; IPv4-mapped IPv6 prefixes are refused
/// by the checker (write them as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    /// Whether `addr` lies inside this prefix. Families never mix: an IPv4
    /// prefix does not contain any IPv6 address. Callers normalize
    /// IPv4-mapped IPv6 addresses first (see [`normalize_ip`]).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let m = v4_mask(self.len);
                u32::from(p) & m == u32::from(a) & m
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let m = v6_mask(self.len);
                u128::from(p) & m == u128::from(a) & m
            }
            _ => false,
        }
    }

    /// Whether every address of `other` is inside `self`.
    pub fn covers(&self, other: &IpPrefix) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }

    /// Most prefix bits for this family (32 or 128).
    pub fn max_len(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == self.max_len() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

pub(crate) fn v4_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

pub(crate) fn v6_mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// The address rules see: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what
/// an IPv6 socket uses to reach IPv4) is the IPv4 address it carries.
pub fn normalize_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An inclusive port range (`22` is `22-22`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Whether cgroup `path` is `prefix` or lies below it, comparing whole path
/// components: `/a/b` covers `/a/b` and `/a/b/c` but not `/a/bc`; `/` covers
/// everything. Both are normalized paths (leading `/`, no trailing `/`).
pub fn cgroup_covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The ancestors of cgroup `path` from the root to `path` itself, as
/// [`Query::cgroup_ancestors`] wants them: `/a/b` gives `["/", "/a", "/a/b"]`.
pub fn cgroup_ancestors(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(comp);
        out.push(cur.clone());
    }
    out
}

/// One checked rule. A condition that is `None` (or an empty list) is absent:
/// it holds for every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub exe: Option<ExePattern>,
    pub comm: Option<String>,
    pub user: Option<UserMatch>,
    /// Normalized cgroup path prefix (leading `/`, no trailing `/`).
    pub cgroup: Option<String>,
    pub direction: Option<Direction>,
    pub proto: Option<ProtoMatch>,
    /// `ip` or `packet`: which kind of socket.
    pub family: Option<FamilyMatch>,
    /// Any of these prefixes; empty means any address.
    pub remote: Vec<IpPrefix>,
    /// Any of these ranges; empty means any port.
    pub remote_port: Vec<PortRange>,
    pub local_port: Vec<PortRange>,
    /// Line of the rule's `[[rule]]` header (1-based; 0 when not from a file).
    pub line: usize,
}

impl Rule {
    /// A rule with no conditions.
    pub fn new(name: impl Into<String>, action: Action) -> Self {
        Rule {
            name: name.into(),
            action,
            exe: None,
            comm: None,
            user: None,
            cgroup: None,
            direction: None,
            proto: None,
            family: None,
            remote: Vec::new(),
            remote_port: Vec::new(),
            local_port: Vec::new(),
            line: 0,
        }
    }

    /// The conditions as `key = value` text, in file key order.
    pub fn conditions_text(&self) -> Vec<String> {
        let list = |v: Vec<String>| {
            if v.len() == 1 {
                v[0].clone()
            } else {
                format!("[{}]", v.join(", "))
            }
        };
        let mut out = Vec::new();
        if let Some(e) = &self.exe {
            out.push(format!("exe={e}"));
        }
        if let Some(c) = &self.comm {
            out.push(format!("comm={c}"));
        }
        if let Some(u) = &self.user {
            out.push(format!("user={u}"));
        }
        if let Some(c) = &self.cgroup {
            out.push(format!("cgroup={c}"));
        }
        if let Some(d) = self.direction {
            out.push(format!("direction={d}"));
        }
        if let Some(p) = self.proto {
            out.push(format!("proto={p}"));
        }
        if let Some(f) = self.family {
            out.push(format!("family={f}"));
        }
        if !self.remote.is_empty() {
            out.push(format!(
                "remote={}",
                list(self.remote.iter().map(ToString::to_string).collect())
            ));
        }
        if !self.remote_port.is_empty() {
            out.push(format!(
                "remote_port={}",
                list(self.remote_port.iter().map(ToString::to_string).collect())
            ));
        }
        if !self.local_port.is_empty() {
            out.push(format!(
                "local_port={}",
                list(self.local_port.iter().map(ToString::to_string).collect())
            ));
        }
        out
    }
}

/// A checked rule set: rules in file order (rule `i` is the `i`-th
/// `[[rule]]`), and the action for connections no rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    pub default: Action,
    pub rules: Vec<Rule>,
    /// The file the rules came from, as given to the parser.
    pub source: String,
}

impl Rules {
    /// What `procflow rules check` prints: the rule count, the default, one
    /// line per rule, then a `warning:` line per rule that can never match
    /// (see [`Rules::shadowed`]).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} rule{}, default {}\n",
            if self.source.is_empty() {
                "<rules>"
            } else {
                &self.source
            },
            self.rules.len(),
            if self.rules.len() == 1 { "" } else { "s" },
            self.default
        );
        for (i, r) in self.rules.iter().enumerate() {
            let conds = r.conditions_text();
            let conds = if conds.is_empty() {
                "(every connection)".to_string()
            } else {
                conds.join(" ")
            };
            s.push_str(&format!(
                "  #{i:<4} {:<5} {:<20} {conds}\n",
                r.action.to_string(),
                r.name
            ));
        }
        for w in self.warnings() {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }

    /// The rule with this name.
    pub fn by_name(&self, name: &str) -> Option<(usize, &Rule)> {
        self.rules.iter().enumerate().find(|(_, r)| r.name == name)
    }
}

/// One connection attempt, as the kernel hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// Full canonical path of the process's executable.
    pub exe: &'a str,
    /// Task comm; only its first 15 bytes count, as in the kernel.
    pub comm: &'a str,
    pub uid: u32,
    /// The process's cgroup and its ancestors, from the root (`/`) to the
    /// process's own cgroup, each a normalized path: build it with
    /// [`cgroup_ancestors`]. Empty when the cgroup is unknown, in which case
    /// no rule with a `cgroup` condition matches.
    pub cgroup_ancestors: &'a [String],
    pub direction: Direction,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, ...).
    pub proto: u8,
    /// The remote address; an IPv4-mapped IPv6 address counts as IPv4.
    pub remote: IpAddr,
    pub remote_port: u16,
    pub local_port: u16,
    /// A packet socket's frame (`family = "packet"`): it has no protocol,
    /// remote or ports for rules (`proto`, `remote` and the ports above
    /// are not looked at), and its direction is out.
    pub packet: bool,
}

impl Query<'_> {
    /// The process's own cgroup (the last ancestor), if known.
    pub fn cgroup(&self) -> Option<&str> {
        self.cgroup_ancestors.last().map(String::as_str)
    }

    /// The comm as the kernel holds it (at most 15 bytes).
    pub fn comm_bytes(&self) -> &[u8] {
        let b = self.comm.as_bytes();
        &b[..b.len().min(MAX_COMM)]
    }
}

/// What decides a connection: the first matching rule's index, or none (the
/// default), and the resulting action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rule: Option<usize>,
    pub action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_prefix_is_by_component() {
        assert!(cgroup_covers("/a/b", "/a/b"));
        assert!(cgroup_covers("/a/b", "/a/b/c"));
        assert!(!cgroup_covers("/a/b", "/a/bc"));
        assert!(!cgroup_covers("/a/b", "/a"));
        assert!(cgroup_covers("/", "/a"));
        assert!(cgroup_covers("/", "/"));
        assert_eq!(cgroup_ancestors("/a/b"), ["/", "/a", "/a/b"]);
        assert_eq!(cgroup_ancestors("/"), ["/"]);
    }

    #[test]
    fn prefixes_contain_and_cover() {
        let p = IpPrefix {
            addr: "10.0.0.0".parse().unwrap(),
            len: 8,
        };
        assert!(p.contains("10.255.1.2".parse().unwrap()));
        assert!(!p.contains("11.0.0.0".parse().unwrap()));
        assert!(!p.contains("::a00:1".parse().unwrap()));
        let all = IpPrefix {
            addr: std::net::Ipv6Addr::UNSPECIFIED.into(),
            len: 0,
        };
        assert!(all.contains("fd00::1".parse().unwrap()));
        assert!(all.covers(&IpPrefix {
            addr: "fd00::".parse().unwrap(),
            len: 8
        }));
        assert_eq!(
            normalize_ip("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn exe_patterns_match_bytes() {
        assert!(ExePattern::Exact("/usr/bin/curl".into()).matches("/usr/bin/curl"));
        assert!(!ExePattern::Exact("/usr/bin/curl".into()).matches("/usr/bin/curl2"));
        assert!(ExePattern::Prefix("/opt/app/".into()).matches("/opt/app/x/y"));
        assert!(ExePattern::Suffix("/curl".into()).matches("/usr/bin/curl"));
        assert!(!ExePattern::Suffix("/curl".into()).matches("/usr/bin/xcurl"));
    }
}
