//! Second stage of reading a rules file: turn the raw, spanned values into a
//! checked [`Rules`], refusing anything that is impossible, ambiguous or that
//! the kernel cannot evaluate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::ops::Range;

use super::compile::{comm_key, exe_prefix_key, limits};
use super::diagnostic::{Diags, RulesError};
use super::model::{
    Action, Direction, ExePattern, FamilyMatch, IpPrefix, PortRange, ProtoMatch, Rule, Rules,
    UserMatch, MAX_COMM, MAX_EXE_PATTERN, MAX_RULES,
};
use super::parse::{parse_raw, At, RawRule, Scalar};

/// Resolves user names to uids while a rules file is checked (the binary
/// reads the user database; tests pass a closure).
pub trait UserLookup {
    fn uid_of(&self, name: &str) -> Option<u32>;
}

impl<F: Fn(&str) -> Option<u32>> UserLookup for F {
    fn uid_of(&self, name: &str) -> Option<u32> {
        self(name)
    }
}

/// A lookup that knows no names: only numeric `user` values are accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUsers;

impl UserLookup for NoUsers {
    fn uid_of(&self, _name: &str) -> Option<u32> {
        None
    }
}

/// What the `exe` forms are, for messages.
pub(crate) const EXE_FORMS: &str = "supported forms are an absolute path (`/usr/bin/curl`), \
     a prefix with one trailing `*` (`/opt/app/*`, matching at any depth) \
     or a suffix with one leading `*` (`*/curl`)";

/// Parses and checks a rules file. `file` is used in messages only.
///
/// On error every problem found is reported, in file order; nothing of a
/// refused file is kept.
pub fn parse_rules(file: &str, text: &str, users: &dyn UserLookup) -> Result<Rules, RulesError> {
    let mut diags = Diags::new(file, text);
    let raw = parse_raw(&mut diags, text);
    let default = match &raw.default {
        Some(d) => action(&mut diags, "default", d).unwrap_or_default(),
        None => Action::Allow,
    };
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.rules.iter().enumerate() {
        if let Some(rule) = check_rule(&mut diags, users, r) {
            if let Some(first) = names.get(&rule.name) {
                let span = r.name.as_ref().map_or(r.span.clone(), |n| n.span.clone());
                diags.error(
                    &span,
                    format!(
                        "duplicate rule name `{}`: rule #{i} repeats the name of the rule \
                         at line {first}; rule names must be unique",
                        rule.name
                    ),
                );
            } else {
                names.insert(rule.name.clone(), rule.line);
            }
            rules.push(rule);
        }
    }
    if raw.total > MAX_RULES {
        let r = &raw.rules[MAX_RULES];
        diags.error(
            &r.span,
            format!(
                "too many rules: {} (at most {MAX_RULES}); this is rule #{MAX_RULES}, and the \
                 rules from here on are not checked",
                raw.total
            ),
        );
    }
    if diags.is_empty() && rules.len() <= MAX_RULES {
        check_limits(&mut diags, &raw.rules, &rules);
    }
    if !diags.is_empty() {
        return Err(diags.into_error());
    }
    Ok(Rules {
        default,
        rules,
        source: file.to_string(),
    })
}

impl Rules {
    /// See [`parse_rules`].
    pub fn parse(file: &str, text: &str, users: &dyn UserLookup) -> Result<Rules, RulesError> {
        parse_rules(file, text, users)
    }
}

/// Distinct values of one condition, counted against what the kernel's table
/// for it holds; remembers where the first value over the limit is.
struct Distinct<'s, K> {
    what: &'static str,
    table: &'static str,
    limit: usize,
    seen: HashSet<K>,
    over: Option<&'s Range<usize>>,
}

impl<'s, K: Hash + Eq> Distinct<'s, K> {
    fn new(what: &'static str, table: &'static str, limit: usize) -> Self {
        Distinct {
            what,
            table,
            limit,
            seen: HashSet::new(),
            over: None,
        }
    }

    fn add(&mut self, key: K, span: &'s Range<usize>) {
        if self.seen.insert(key) && self.seen.len() > self.limit && self.over.is_none() {
            self.over = Some(span);
        }
    }

    fn report(&self, diags: &mut Diags<'_>) {
        if let Some(span) = self.over {
            diags.error(
                span,
                format!(
                    "too many distinct {}: {} in the file, but the kernel's {} holds at most \
                     {}; this is the first one over the limit",
                    self.what,
                    self.seen.len(),
                    self.table,
                    self.limit
                ),
            );
        }
    }
}

/// The port space cut by the ranges of one port condition, counted against
/// the kernel's segments for it.
struct Segments<'s> {
    what: &'static str,
    cuts: BTreeSet<u16>,
    over: Option<&'s Range<usize>>,
}

impl<'s> Segments<'s> {
    fn new(what: &'static str) -> Self {
        Segments {
            what,
            cuts: BTreeSet::from([0]),
            over: None,
        }
    }

    fn add(&mut self, r: &PortRange, span: &'s Range<usize>) {
        self.cuts.insert(r.lo);
        if let Some(next) = r.hi.checked_add(1) {
            self.cuts.insert(next);
        }
        if self.cuts.len() > limits::PORT_SEGMENTS && self.over.is_none() {
            self.over = Some(span);
        }
    }

    fn report(&self, diags: &mut Diags<'_>) {
        if let Some(span) = self.over {
            diags.error(
                span,
                format!(
                    "the `{}` ranges cut the port space into {} segments, but the kernel \
                     holds at most {}; this is the first range over the limit",
                    self.what,
                    self.cuts.len(),
                    limits::PORT_SEGMENTS
                ),
            );
        }
    }
}

/// Refuses a rule set whose conditions need more entries than the kernel's
/// tables hold (see [`limits`]), at the first value over each limit. `raw`
/// and `rules` are the same rules, all checked.
fn check_limits(diags: &mut Diags<'_>, raw: &[RawRule], rules: &[Rule]) {
    let mut comm = Distinct::new("`comm` values", "comm table", limits::COMM_ENTRIES - 1);
    let mut user = Distinct::new("`user` values (uids)", "uid table", limits::UID_ENTRIES - 1);
    let mut cgroup = Distinct::new("`cgroup` values", "cgroup table", limits::CGROUP_ENTRIES);
    // The prefix table also holds the unknown programs' entry and the
    // loaders' (compile.rs `with_unknown_programs`).
    let mut exe_pre = Distinct::new(
        "`exe` paths and `PREFIX*` patterns",
        "exe prefix table",
        limits::EXE_ENTRIES - 2 - super::compile::LOADERS.len(),
    );
    let mut exe_suf = Distinct::new(
        "`exe` `*SUFFIX` patterns",
        "exe suffix table",
        limits::EXE_ENTRIES - 1,
    );
    let mut v4 = Distinct::new(
        "IPv4 `remote` prefixes",
        "IPv4 remote table",
        limits::REMOTE_ENTRIES - 1,
    );
    let mut v6 = Distinct::new(
        "IPv6 `remote` prefixes",
        "IPv6 remote table",
        limits::REMOTE_ENTRIES - 1,
    );
    let mut rport = Segments::new("remote_port");
    let mut lport = Segments::new("local_port");
    for (raw, rule) in raw.iter().zip(rules) {
        if let (Some(at), Some(e)) = (&raw.exe, &rule.exe) {
            // Keys as compile.rs makes them; a zero-length one (`*`) is the
            // table's catch-all entry.
            match e {
                ExePattern::Exact(p) => exe_pre.add(exe_prefix_key(p), &at.span),
                ExePattern::Prefix(p) if !p.is_empty() => {
                    exe_pre.add(p.as_bytes().to_vec(), &at.span)
                }
                ExePattern::Suffix(p) if !p.is_empty() => {
                    exe_suf.add(p.as_bytes().to_vec(), &at.span)
                }
                _ => {}
            }
        }
        if let (Some(at), Some(c)) = (&raw.comm, &rule.comm) {
            comm.add(comm_key(c), &at.span);
        }
        if let (Some(at), Some(u)) = (&raw.user, &rule.user) {
            user.add(u.uid, &at.span);
        }
        if let (Some(at), Some(c)) = (&raw.cgroup, &rule.cgroup) {
            cgroup.add(c.clone(), &at.span);
        }
        if let Some(at) = &raw.remote {
            for (a, p) in at.value.iter().zip(&rule.remote) {
                if p.len == 0 {
                    continue;
                }
                match p.addr {
                    IpAddr::V4(_) => v4.add((p.addr, p.len), &a.span),
                    IpAddr::V6(_) => v6.add((p.addr, p.len), &a.span),
                }
            }
        }
        for (at, ranges, segs) in [
            (&raw.remote_port, &rule.remote_port, &mut rport),
            (&raw.local_port, &rule.local_port, &mut lport),
        ] {
            if let Some(at) = at {
                for (a, r) in at.value.iter().zip(ranges) {
                    segs.add(r, &a.span);
                }
            }
        }
    }
    exe_pre.report(diags);
    exe_suf.report(diags);
    comm.report(diags);
    user.report(diags);
    cgroup.report(diags);
    v4.report(diags);
    v6.report(diags);
    rport.report(diags);
    lport.report(diags);
}

fn check_rule(diags: &mut Diags<'_>, users: &dyn UserLookup, r: &RawRule) -> Option<Rule> {
    let before = diags.len();
    let line = diags.line_of(&r.span);
    let name = match &r.name {
        None => {
            diags.error(&r.span, "rule has no `name`; add `name = \"...\"`");
            None
        }
        Some(n) if n.value.trim().is_empty() => {
            diags.error(&n.span, "rule `name` is empty; give the rule a name");
            None
        }
        Some(n) => Some(n.value.clone()),
    };
    let act = match &r.action {
        None => {
            diags.error(
                &r.span,
                "rule has no `action`; add `action = \"allow\"` or `action = \"block\"`",
            );
            None
        }
        Some(a) => action(diags, "action", a),
    };
    let mut rule = Rule::new(name.unwrap_or_default(), act.unwrap_or_default());
    rule.line = line;
    if let Some(e) = &r.exe {
        rule.exe = report(diags, &e.span, exe_pattern(&e.value));
    }
    if let Some(c) = &r.comm {
        rule.comm = report(diags, &c.span, comm(&c.value));
    }
    if let Some(u) = &r.user {
        rule.user = report(diags, &u.span, user(users, &u.value));
    }
    if let Some(c) = &r.cgroup {
        rule.cgroup = report(diags, &c.span, cgroup(&c.value));
    }
    if let Some(d) = &r.direction {
        rule.direction = report(
            diags,
            &d.span,
            match d.value.as_str() {
                "out" => Ok(Direction::Out),
                "in" => Ok(Direction::In),
                other => Err(format!(
                    "`direction` must be \"out\" or \"in\", not {other:?}"
                )),
            },
        );
    }
    if let Some(p) = &r.proto {
        rule.proto = report(
            diags,
            &p.span,
            match p.value.as_str() {
                "tcp" => Ok(ProtoMatch::Tcp),
                "udp" => Ok(ProtoMatch::Udp),
                "icmp" => Ok(ProtoMatch::Icmp),
                "any" => Ok(ProtoMatch::Any),
                "icmpv6" | "icmp6" => {
                    Err("write `proto = \"icmp\"`: it matches ICMP and ICMPv6 alike".to_string())
                }
                other => Err(format!(
                    "`proto` must be \"tcp\", \"udp\", \"icmp\" or \"any\", not {other:?}"
                )),
            },
        );
    }
    if let Some(list) = &r.remote {
        rule.remote = list
            .value
            .iter()
            .filter_map(|a| report(diags, &a.span, ip_prefix(&a.value)))
            .collect();
    }
    rule.remote_port = ports(diags, &r.remote_port);
    rule.local_port = ports(diags, &r.local_port);
    if let Some(f) = &r.family {
        rule.family = report(diags, &f.span, family(&f.value, &rule));
    }
    (diags.len() == before).then_some(rule)
}

/// The `family` condition; a packet socket's frame has no protocol, remote
/// or port, so `family = "packet"` with any of them could never match.
fn family(v: &str, rule: &Rule) -> Result<FamilyMatch, String> {
    match v {
        "ip" => Ok(FamilyMatch::Ip),
        "packet" => {
            let addressed = [
                (rule.proto.is_some_and(|p| p != ProtoMatch::Any), "proto"),
                (!rule.remote.is_empty(), "remote"),
                (!rule.remote_port.is_empty(), "remote_port"),
                (!rule.local_port.is_empty(), "local_port"),
            ];
            match addressed.iter().find(|(has, _)| *has) {
                Some((_, key)) => Err(format!(
                    "`family = \"packet\"` with `{key}` can never match: packet sockets \
                     are decided by who sends (exe, comm, user, cgroup), they have no \
                     protocol, remote or port for rules; leave `{key}` out"
                )),
                None => Ok(FamilyMatch::Packet),
            }
        }
        other => Err(format!(
            "`family` must be \"ip\" (IPv4 and IPv6 sockets) or \"packet\" (packet \
             sockets, AF_PACKET), not {other:?}"
        )),
    }
}

fn report<T>(diags: &mut Diags<'_>, span: &Range<usize>, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(msg) => {
            diags.error(span, msg);
            None
        }
    }
}

fn action(diags: &mut Diags<'_>, key: &str, a: &At<String>) -> Option<Action> {
    match a.value.as_str() {
        "allow" => Some(Action::Allow),
        "block" => Some(Action::Block),
        other => {
            let hint = match other.to_ascii_lowercase().as_str() {
                "deny" | "drop" | "reject" | "refuse" | "blocked" => " (did you mean \"block\"?)",
                "accept" | "permit" | "pass" | "allowed" => " (did you mean \"allow\"?)",
                _ => "",
            };
            diags.error(
                &a.span,
                format!("`{key}` must be \"allow\" or \"block\", not {other:?}{hint}"),
            );
            None
        }
    }
}

/// Whether `path` contains a component the kernel never reports in an
/// executable's path (`//`, `.` or `..`).
fn non_canonical(path: &str) -> bool {
    path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..")
}

const CANONICAL: &str = "the kernel reports an executable's canonical path \
     (no `//`, `.` or `..` components, symbolic links resolved), so this can never match";

pub(crate) fn exe_pattern(s: &str) -> Result<ExePattern, String> {
    if s.is_empty() {
        return Err(format!("`exe` is empty; {EXE_FORMS}"));
    }
    if s.len() > MAX_EXE_PATTERN {
        return Err(format!(
            "`exe` pattern is {} bytes long; the kernel matches at most {MAX_EXE_PATTERN}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err("`exe` contains a NUL byte".to_string());
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '?' | '[' | ']' | '{' | '}')) {
        return Err(format!(
            "`exe` pattern {s:?} uses `{c}`, which is not supported: \
             the kernel matches by prefix or suffix only; {EXE_FORMS}"
        ));
    }
    let stars = s.matches('*').count();
    if stars > 1 {
        return Err(format!(
            "`exe` pattern {s:?} has {stars} `*`; only one is allowed, at the start or \
             the end (`**` is not supported either); {EXE_FORMS}"
        ));
    }
    if stars == 0 {
        if !s.starts_with('/') {
            return Err(format!(
                "`exe` {s:?} is not an absolute path, and an executable's path always is; \
                 to match by file name write `exe = \"*/{s}\"`, or use `comm = {s:?}`"
            ));
        }
        if s.ends_with('/') {
            return Err(format!(
                "`exe` {s:?} is a directory and can never be an executable; \
                 to match everything under it write `exe = \"{s}*\"`"
            ));
        }
        if non_canonical(s) {
            return Err(format!("`exe` {s:?}: {CANONICAL}"));
        }
        return Ok(ExePattern::Exact(s.to_string()));
    }
    if s == "*" {
        return Ok(ExePattern::Prefix(String::new()));
    }
    if let Some(prefix) = s.strip_suffix('*') {
        if !prefix.starts_with('/') {
            return Err(format!(
                "`exe` pattern {s:?} can never match: an executable's path starts with `/`; \
                 {EXE_FORMS}"
            ));
        }
        if prefix.contains("//") || prefix.contains("/./") || prefix.contains("/../") {
            return Err(format!("`exe` pattern {s:?}: {CANONICAL}"));
        }
        return Ok(ExePattern::Prefix(prefix.to_string()));
    }
    if let Some(suffix) = s.strip_prefix('*') {
        if suffix.ends_with('/') {
            return Err(format!(
                "`exe` pattern {s:?} can never match: an executable's path does not end \
                 with `/`"
            ));
        }
        if non_canonical(suffix) {
            return Err(format!("`exe` pattern {s:?}: {CANONICAL}"));
        }
        return Ok(ExePattern::Suffix(suffix.to_string()));
    }
    Err(format!(
        "`exe` pattern {s:?} has a `*` in the middle, which the kernel cannot evaluate; \
         {EXE_FORMS}"
    ))
}

fn comm(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("`comm` is empty; a task's comm never is".to_string());
    }
    if s.contains('\0') {
        return Err("`comm` contains a NUL byte".to_string());
    }
    if s.len() > MAX_COMM {
        let mut cut = MAX_COMM;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(format!(
            "`comm` {s:?} is {} bytes, but the kernel keeps only the first {MAX_COMM} \
             bytes of a task's name, so it can never match; write {:?}, or match the \
             executable with `exe`",
            s.len(),
            &s[..cut]
        ));
    }
    Ok(s.to_string())
}

fn uid(n: i128) -> Result<u32, String> {
    if (0..i128::from(u32::MAX)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(format!("uid {n} is out of range (0 to {})", u32::MAX - 1))
    }
}

fn user(users: &dyn UserLookup, v: &Scalar) -> Result<UserMatch, String> {
    match v {
        Scalar::Int(n) => Ok(UserMatch {
            uid: uid(*n)?,
            name: None,
        }),
        Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let n: i128 = s.parse().map_err(|_| format!("uid {s} is out of range"))?;
            Ok(UserMatch {
                uid: uid(n)?,
                name: None,
            })
        }
        Scalar::Str(s) if s.is_empty() => Err("`user` is empty; give a user name or a uid".into()),
        Scalar::Str(s) => match users.uid_of(s) {
            Some(uid) => Ok(UserMatch {
                uid,
                name: Some(s.clone()),
            }),
            None => Err(format!(
                "unknown user {s:?}: no such user on this system; \
                 write the numeric uid if the user exists only elsewhere (in a container)"
            )),
        },
    }
}

fn cgroup(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "`cgroup` {s:?} must be an absolute path in the cgroup v2 hierarchy, \
             like \"/system.slice/ssh.service\""
        ));
    }
    if s.contains('\0') {
        return Err("`cgroup` contains a NUL byte".to_string());
    }
    let trimmed = s.trim_end_matches('/');
    let path = if trimmed.is_empty() { "/" } else { trimmed };
    if path != "/"
        && path[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`cgroup` {s:?} has an empty, `.` or `..` component; write the plain path"
        ));
    }
    let depth = path.split('/').filter(|c| !c.is_empty()).count();
    if depth >= limits::CGROUP_LEVELS {
        return Err(format!(
            "`cgroup` {s:?} is {depth} levels deep; the kernel looks at most {} levels down",
            limits::CGROUP_LEVELS - 1
        ));
    }
    Ok(path.to_string())
}

pub(crate) fn ip_prefix(s: &str) -> Result<IpPrefix, String> {
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not an IP address or CIDR prefix (like \"192.0.2.1\", \
             \"10.0.0.0/8\" or \"fd00::/8\")"
        )
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => match l.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "{s:?}: prefix length {l:?} is not a number from 0 to {max}"
                ))
            }
        },
    };
    let p = IpPrefix { addr, len };
    let net = match addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & super::model::v4_mask(len)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & super::model::v6_mask(len)).into()),
    };
    if net != addr {
        return Err(format!(
            "{s:?} has host bits set: the network is {net}/{len}; write that, \
             or {addr} alone for the single address"
        ));
    }
    if let IpAddr::V6(a) = addr {
        if len >= 96 {
            if let Some(v4) = a.to_ipv4_mapped() {
                return Err(format!(
                    "{s:?} is an IPv4-mapped IPv6 prefix; connections to such addresses \
                     are matched as IPv4, so write \"{v4}/{}\"",
                    len - 96
                ));
            }
        }
    }
    Ok(p)
}

fn port_number(n: i128) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("port {n} is out of range (0-65535)"))
}

pub(crate) fn port_range(v: &Scalar) -> Result<PortRange, String> {
    match v {
        Scalar::Int(n) => {
            let p = port_number(*n)?;
            Ok(PortRange { lo: p, hi: p })
        }
        Scalar::Str(s) => {
            let bad =
                || format!("{s:?} is not a port or a \"low-high\" range (like \"8000-8080\")");
            let num = |t: &str| -> Result<u16, String> {
                let t = t.trim();
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                port_number(t.parse::<i128>().map_err(|_| bad())?)
            };
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let p = num(s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!(
                    "inverted port range \"{lo}-{hi}\": the low end comes first; \
                     write \"{hi}-{lo}\""
                ));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

fn ports(diags: &mut Diags<'_>, v: &Option<At<Vec<At<Scalar>>>>) -> Vec<PortRange> {
    let Some(list) = v else {
        return Vec::new();
    };
    list.value
        .iter()
        .filter_map(|p| report(diags, &p.span, port_range(&p.value)))
        .collect()
}
