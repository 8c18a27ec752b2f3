//! Remote names from the DNS answers the machine's processes actually
//! received.
//!
//! The kernel hands over the DNS messages that sockets send to port 53
//! (queries) and receive from port 53 (responses), with the socket, its
//! network namespace and owner, and the server. [`QueryTable`] takes a
//! response only when it answers a query the same socket sent to the same
//! server (same id and question) that has not been answered yet, so nobody
//! can plant names by sending datagrams from port 53; [`parse_answer`] takes
//! the name that was asked and the addresses answered, and [`NameTable`]
//! remembers them per process and network namespace, so a flow's remote
//! gets only the name its own process looked up there. No lookup is ever
//! made here.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::identity::ProcessKey;

/// The name asked in a DNS response and the addresses given for it
/// (following CNAME chains: every A/AAAA record in the answer counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Reads a (possibly compressed) domain name at `pos`; returns it and the
/// position after it in the original stream.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos)? as usize;
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            jumps += 1;
            if jumps > 32 || ptr >= msg.len() {
                return None;
            }
            pos = ptr;
            continue;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        if len == 0 {
            let after = end.unwrap_or(pos + 1);
            let name = labels.join(".").to_ascii_lowercase();
            return Some((name, after));
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        if labels.len() > 127 {
            return None;
        }
        pos += 1 + len;
    }
}

/// The (first) question of a DNS message: its name, lowercased, and the
/// position after its type and class.
pub fn question(msg: &[u8]) -> Option<(String, usize)> {
    let (name, after) = read_name(msg, 12)?;
    Some((name, after + 4))
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// Parses a DNS response; None for queries, errors and anything malformed.
pub fn parse_answer(msg: &[u8]) -> Option<DnsAnswer> {
    let flags = u16_at(msg, 2)?;
    let is_response = flags & 0x8000 != 0;
    let rcode = flags & 0x000f;
    if !is_response || rcode != 0 {
        return None;
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    if qd == 0 {
        return None;
    }
    let mut pos = 12;
    let mut asked = None;
    for _ in 0..qd {
        let (name, after) = read_name(msg, pos)?;
        asked.get_or_insert(name);
        pos = after + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        let (_owner, after) = read_name(msg, pos)?;
        let rtype = u16_at(msg, after)?;
        let rdlen = u16_at(msg, after + 8)? as usize;
        let rdata = msg.get(after + 10..after + 10 + rdlen)?;
        match (rtype, rdlen) {
            (1, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (28, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                addrs.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        pos = after + 10 + rdlen;
    }
    if addrs.is_empty() {
        return None;
    }
    Some(DnsAnswer {
        name: asked?,
        addrs,
    })
}

/// The name a reverse (PTR) lookup of `ip` asks for:
/// `4.3.2.1.in-addr.arpa` or the 32 nibbles of an IPv6 address under
/// `ip6.arpa`.
pub fn reverse_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v) => {
            let mut s = String::with_capacity(72);
            for b in v.octets().iter().rev() {
                s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// A recursive PTR query for `ip` with message id `id`.
pub fn ptr_query(id: u16, ip: &IpAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(90);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in reverse_name(ip).split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 12, 0, 1]);
    m
}

/// What a PTR response says about the address asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtrAnswer {
    /// The address's name.
    Name(String),
    /// The server answered that there is none (NXDOMAIN, or no PTR record).
    NoName,
    /// The server failed (SERVFAIL, REFUSED...): worth asking another.
    Failed,
}

/// Reads the response to [`ptr_query`]`(id, ip)`. None when `msg` is not
/// that response (another id or question, a query, or malformed), so that
/// stray or forged packets are ignored.
pub fn parse_ptr(msg: &[u8], id: u16, ip: &IpAddr) -> Option<PtrAnswer> {
    if u16_at(msg, 0)? != id {
        return None;
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 || u16_at(msg, 4)? != 1 {
        return None;
    }
    let asked = reverse_name(ip);
    let (qname, after) = read_name(msg, 12)?;
    if qname != asked || u16_at(msg, after)? != 12 {
        return None;
    }
    match flags & 0x000f {
        0 => {}
        3 => return Some(PtrAnswer::NoName),
        _ => return Some(PtrAnswer::Failed),
    }
    let an = u16_at(msg, 6)?;
    let mut pos = after + 4;
    for _ in 0..an {
        let (_owner, after) = read_name(msg, pos)?;
        let rtype = u16_at(msg, after)?;
        let rdlen = u16_at(msg, after + 8)? as usize;
        let start = after + 10;
        msg.get(start..start + rdlen)?;
        if rtype == 12 {
            let (name, _) = read_name(msg, start)?;
            let name = name.trim_end_matches('.').to_string();
            if !name.is_empty() {
                return Some(PtrAnswer::Name(name));
            }
        }
        pos = start + rdlen;
    }
    Some(PtrAnswer::NoName)
}

/// A name server's answer to a PTR `query` (a whole query message): the
/// response code, then one PTR record per name, owned by the question's
/// name through a compression pointer. `query` holds one question and no
/// other records (as [`ptr_query`] makes it). For tests and test servers.
pub fn ptr_response(query: &[u8], rcode: u8, names: &[&str]) -> Vec<u8> {
    if query.len() < 12 {
        return Vec::new();
    }
    let mut m = query.to_vec();
    m[2] = 0x81;
    m[3] = 0x80 | rcode;
    m[6..8].copy_from_slice(&(names.len() as u16).to_be_bytes());
    for n in names {
        let mut rdata = Vec::new();
        for label in n.split('.') {
            rdata.push(label.len() as u8);
            rdata.extend_from_slice(label.as_bytes());
        }
        rdata.push(0);
        m.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

/// The process a DNS message was sent or received for: the socket's owner
/// at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DnsOwner {
    pub process: ProcessKey,
    pub uid: u32,
}

/// A DNS message on port 53 as the kernel saw it pass a socket: over UDP a
/// datagram, over TCP the first segment of a message (after its length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    /// Sent by the socket (a query); false: received by it (a response).
    pub query: bool,
    /// The socket.
    pub cookie: u64,
    /// The socket's network namespace (inode).
    pub netns: u64,
    /// The socket's owner; None while it is not known.
    pub owner: Option<DnsOwner>,
    /// The server: where a query went, where a response came from.
    pub server: (IpAddr, u16),
    /// The socket's own port.
    pub lport: u16,
    /// IPPROTO_UDP or IPPROTO_TCP.
    pub proto: u8,
    /// When it passed, boot-time nanoseconds.
    pub ts_ns: u64,
    pub payload: Vec<u8>,
}

/// How long a query waits for its response.
pub const QUERY_TTL_NS: u64 = 30_000_000_000;
/// Queries waiting for a response, at most: in all, per uid (the owner's;
/// sockets without a known owner share one allowance) and per socket.
pub const MAX_PENDING: usize = 16_384;
pub const MAX_PENDING_PER_UID: u32 = 1024;
pub const MAX_PENDING_PER_SOCKET: u32 = 128;

/// What [`QueryTable`] did, for the stats record.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsStats {
    /// Queries remembered until their response.
    pub queries: u64,
    /// Responses that answered a remembered query.
    pub answered: u64,
    /// Messages from port 53 that answered no query of the socket (none
    /// sent, another id, question or server, answered already, or late),
    /// and anything else received from port 53 that is not such a response
    /// (including the later segments of a long TCP message).
    pub rejected: u64,
    /// Queries not remembered: over the allowance of their uid or socket,
    /// or the table was full (their responses are then rejected).
    pub queries_refused: u64,
    /// Queries that got no response within [`QUERY_TTL_NS`].
    pub queries_expired: u64,
}

/// The socket, server and local port, transport and id a response must
/// match.
type PendingKey = (u64, IpAddr, u16, u16, u8, u16);

#[derive(Debug)]
struct Pending {
    /// The question section's bytes, exactly as sent (name case included).
    question: Vec<u8>,
    netns: u64,
    owner: Option<DnsOwner>,
    /// The allowance it counts against (the first query's owner's uid).
    bucket: u32,
    at_ns: u64,
    seq: u64,
}

/// The id and the question section of a message with one question; None
/// when it is malformed or has another number of questions.
fn id_and_question(msg: &[u8]) -> Option<(u16, &[u8])> {
    if u16_at(msg, 4)? != 1 {
        return None;
    }
    let (_, after) = question(msg)?;
    Some((u16_at(msg, 0)?, msg.get(12..after)?))
}

fn owner_bucket(o: Option<DnsOwner>) -> u32 {
    o.map_or(u32::MAX, |o| o.uid)
}

/// The queries sockets sent and that wait for their response. A response
/// is accepted only from the server the query went to, on the socket that
/// sent it, with its id and question, once, within [`QUERY_TTL_NS`].
#[derive(Debug, Default)]
pub struct QueryTable {
    pending: HashMap<PendingKey, Pending>,
    /// (at_ns, seq, key) in arrival order; entries whose seq no longer
    /// matches were answered or replaced.
    order: VecDeque<(u64, u64, PendingKey)>,
    per_socket: HashMap<u64, u32>,
    per_uid: HashMap<u32, u32>,
    seq: u64,
    stats: DnsStats,
}

impl QueryTable {
    pub fn stats(&self) -> DnsStats {
        self.stats.clone()
    }

    /// Queries waiting for a response.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn key(m: &DnsMessage, id: u16) -> PendingKey {
        let (ip, port) = m.server;
        (m.cookie, ip.to_canonical(), port, m.lport, m.proto, id)
    }

    /// Takes one message: remembers a query, or checks a response against
    /// the queries. Returns the name and addresses of an accepted response,
    /// with the process it names them for (the receiving socket's owner,
    /// else the one that sent the query) and its namespace.
    pub fn message(&mut self, m: &DnsMessage) -> Option<(DnsOwner, u64, DnsAnswer)> {
        self.expire(m.ts_ns);
        let flags = u16_at(&m.payload, 2);
        if m.query {
            // Only what a query looks like: QR clear, one question.
            if flags.is_some_and(|f| f & 0x8000 == 0) {
                if let Some((id, q)) = id_and_question(&m.payload) {
                    self.remember(m, id, q.to_vec());
                }
            }
            return None;
        }
        let matched = flags
            .filter(|f| f & 0x8000 != 0)
            .and_then(|_| id_and_question(&m.payload))
            .and_then(|(id, q)| {
                let key = Self::key(m, id);
                let p = self.pending.get(&key)?;
                (p.question == q && p.netns == m.netns && m.ts_ns < p.at_ns + QUERY_TTL_NS)
                    .then_some(key)
            });
        let Some(key) = matched else {
            self.stats.rejected += 1;
            return None;
        };
        let p = self.remove(&key)?;
        self.stats.answered += 1;
        let owner = m.owner.or(p.owner)?;
        let answer = parse_answer(&m.payload)?;
        Some((owner, m.netns, answer))
    }

    fn remember(&mut self, m: &DnsMessage, id: u16, question: Vec<u8>) {
        let key = Self::key(m, id);
        self.seq += 1;
        let seq = self.seq;
        if let Some(p) = self.pending.get_mut(&key) {
            // The same query again (a retry): it waits anew.
            *p = Pending {
                question,
                netns: m.netns,
                owner: m.owner.or(p.owner),
                bucket: p.bucket,
                at_ns: m.ts_ns,
                seq,
            };
        } else {
            let bucket = owner_bucket(m.owner);
            if self.pending.len() >= MAX_PENDING
                || self.per_uid.get(&bucket).copied().unwrap_or(0) >= MAX_PENDING_PER_UID
                || self.per_socket.get(&m.cookie).copied().unwrap_or(0) >= MAX_PENDING_PER_SOCKET
            {
                self.stats.queries_refused += 1;
                return;
            }
            *self.per_uid.entry(bucket).or_default() += 1;
            *self.per_socket.entry(m.cookie).or_default() += 1;
            self.pending.insert(
                key,
                Pending {
                    question,
                    netns: m.netns,
                    owner: m.owner,
                    bucket,
                    at_ns: m.ts_ns,
                    seq,
                },
            );
        }
        self.stats.queries += 1;
        self.order.push_back((m.ts_ns, seq, key));
        if self.order.len() > 2 * self.pending.len() + 1024 {
            // Mostly answered queries: keep the waiting ones only.
            let pending = &self.pending;
            self.order
                .retain(|(_, seq, k)| pending.get(k).is_some_and(|p| p.seq == *seq));
        }
    }

    fn remove(&mut self, key: &PendingKey) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        decrement(&mut self.per_uid, p.bucket);
        decrement(&mut self.per_socket, key.0);
        Some(p)
    }

    /// Forgets the queries older than [`QUERY_TTL_NS`] at `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, seq, key)) = self.order.front() {
            if now_ns < at.saturating_add(QUERY_TTL_NS) {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|p| p.seq == seq) {
                self.remove(&key);
                self.stats.queries_expired += 1;
            }
        }
    }
}

/// Lowers a count; a count that reaches zero goes.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = map.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            map.remove(&k);
        }
    }
}

/// How many (process, namespace, address) names are kept before the table
/// starts over.
const MAX_NAMES: usize = 200_000;

/// Names learned from accepted DNS answers, per process and network
/// namespace; then (with `--resolve`) from procflow's own reverse lookups.
#[derive(Debug, Default)]
pub struct NameTable {
    by_process: HashMap<(ProcessKey, u64, IpAddr), String>,
    reverse: HashMap<IpAddr, String>,
}

impl NameTable {
    /// Remembers the names `answer` gives, for flows of `process` in
    /// network namespace `netns`.
    pub fn learn(&mut self, process: ProcessKey, netns: u64, answer: &DnsAnswer) {
        if self.by_process.len() >= MAX_NAMES {
            self.by_process.clear();
        }
        for &ip in &answer.addrs {
            self.by_process
                .insert((process, netns, ip.to_canonical()), answer.name.clone());
        }
    }

    /// Remembers the name a reverse lookup (or the hosts file) gave `ip`.
    /// It is used only where no DNS answer named the address.
    pub fn learn_reverse(&mut self, ip: IpAddr, name: String) {
        if self.reverse.len() >= MAX_NAMES {
            self.reverse.clear();
        }
        self.reverse.insert(ip, name);
    }

    /// The name `process` looked up for `ip` in namespace `netns`, else
    /// the reverse lookup's.
    pub fn lookup(&self, process: Option<ProcessKey>, netns: u64, ip: &IpAddr) -> Option<&str> {
        process
            .and_then(|p| self.by_process.get(&(p, netns, ip.to_canonical())))
            .or_else(|| self.reverse.get(ip))
            .map(String::as_str)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response to `name` with one CNAME and the given A/AAAA answers,
    /// using name compression as servers do.
    pub fn response(name: &str, addrs: &[IpAddr]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1];
        m.extend_from_slice(&(addrs.len() as u16 + 1).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        // CNAME: name -> "cdn" + pointer to the question name.
        m.extend_from_slice(&[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, b'c', b'd', b'n', 0xc0, 12,
        ]);
        for a in addrs {
            let (t, data) = match a {
                IpAddr::V4(v) => (1u16, v.octets().to_vec()),
                IpAddr::V6(v) => (28u16, v.octets().to_vec()),
            };
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(&data);
        }
        m
    }

    #[test]
    fn parses_the_asked_name_and_every_address() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        let msg = response("WWW.Example.test", &[a, b]);
        let ans = parse_answer(&msg).unwrap();
        assert_eq!(ans.name, "www.example.test");
        assert_eq!(ans.addrs, vec![a, b]);
    }

    #[test]
    fn queries_errors_and_garbage_are_ignored() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let mut q = response("x.test", &[a]);
        q[2] &= 0x7f; // a query, not a response
        assert_eq!(parse_answer(&q), None);
        let mut nx = response("x.test", &[a]);
        nx[3] |= 3; // NXDOMAIN
        assert_eq!(parse_answer(&nx), None);
        assert_eq!(parse_answer(&[0xff; 5]), None);
        let msg = response("x.test", &[a]);
        for cut in 0..msg.len() {
            let _ = parse_answer(&msg[..cut]); // never panics
        }
        // A compression loop.
        let mut looped = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12]);
        assert_eq!(parse_answer(&looped), None);
    }

    fn pk(pid: u32) -> ProcessKey {
        ProcessKey {
            pid,
            start_ns: u64::from(pid) * 1000,
        }
    }

    fn answer(name: &str, ip: IpAddr) -> DnsAnswer {
        DnsAnswer {
            name: name.into(),
            addrs: vec![ip],
        }
    }

    #[test]
    fn names_are_per_process_and_namespace_only() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t = NameTable::default();
        t.learn(pk(10), 1, &answer("a.test", ip));
        t.learn(pk(20), 1, &answer("b.test", ip));
        assert_eq!(t.lookup(Some(pk(10)), 1, &ip), Some("a.test"));
        assert_eq!(t.lookup(Some(pk(20)), 1, &ip), Some("b.test"));
        // Nobody else's: another process, the same pid started at another
        // time (a reused pid), another namespace, or no owner.
        assert_eq!(t.lookup(Some(pk(30)), 1, &ip), None);
        let reused = ProcessKey {
            pid: 10,
            start_ns: 1,
        };
        assert_eq!(t.lookup(Some(reused), 1, &ip), None);
        assert_eq!(t.lookup(Some(pk(10)), 2, &ip), None);
        assert_eq!(t.lookup(None, 1, &ip), None);
        // An IPv4-mapped remote is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(t.lookup(Some(pk(10)), 1, &mapped), Some("a.test"));
    }

    const SERVER: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 53);
    const SECOND: u64 = 1_000_000_000;

    /// A query for `name` (type A) with id `id`.
    pub fn query_msg(id: u16, name: &str) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    /// The response to `query_msg(id, name)` giving `ip`.
    pub fn response_msg(id: u16, name: &str, ip: IpAddr) -> Vec<u8> {
        let mut m = response(name, &[ip]);
        m[..2].copy_from_slice(&id.to_be_bytes());
        m
    }

    fn msg(query: bool, cookie: u64, owner: u32, payload: Vec<u8>, ts_ns: u64) -> DnsMessage {
        DnsMessage {
            query,
            cookie,
            netns: 7,
            owner: Some(DnsOwner {
                process: pk(owner),
                uid: owner,
            }),
            server: SERVER,
            lport: 40000,
            proto: 17,
            ts_ns,
            payload,
        }
    }

    #[test]
    fn a_response_is_taken_only_for_the_query_its_socket_sent() {
        let ip: IpAddr = "192.0.2.80".parse().unwrap();
        let mut t = QueryTable::default();
        // No query at all.
        assert!(t
            .message(&msg(false, 1, 10, response_msg(5, "w.test", ip), 0))
            .is_none());
        t.message(&msg(true, 1, 10, query_msg(5, "w.test"), SECOND));
        assert_eq!(t.len(), 1);
        // Another socket (cookie), id, question, server, server port,
        // local port, transport or namespace: rejected, the query waits on.
        let mut forged = vec![
            msg(false, 2, 20, response_msg(5, "w.test", ip), SECOND),
            msg(false, 1, 10, response_msg(6, "w.test", ip), SECOND),
            msg(false, 1, 10, response_msg(5, "x.test", ip), SECOND),
            msg(false, 1, 10, response_msg(5, "W.test", ip), SECOND),
        ];
        let mut m = msg(false, 1, 10, response_msg(5, "w.test", ip), SECOND);
        m.server.0 = "192.0.2.54".parse().unwrap();
        forged.push(m.clone());
        m.server = (SERVER.0, 5353);
        forged.push(m.clone());
        m.server = SERVER;
        m.lport = 40001;
        forged.push(m.clone());
        m.lport = 40000;
        m.proto = 6;
        forged.push(m.clone());
        m.proto = 17;
        m.netns = 8;
        forged.push(m.clone());
        // A query, not a response, with the right id and question.
        let mut q = msg(false, 1, 10, query_msg(5, "w.test"), SECOND);
        forged.push(q.clone());
        q.payload = vec![0xff; 3];
        forged.push(q);
        for f in &forged {
            assert!(t.message(f).is_none(), "{f:?}");
        }
        assert_eq!(t.len(), 1);
        // The real one.
        let got = t.message(&msg(
            false,
            1,
            10,
            response_msg(5, "w.test", ip),
            2 * SECOND,
        ));
        let (owner, netns, ans) = got.expect("the genuine response");
        assert_eq!((owner.process, netns), (pk(10), 7));
        assert_eq!(
            (ans.name.as_str(), ans.addrs.as_slice()),
            ("w.test", &[ip][..])
        );
        // Once only: a second copy is rejected.
        assert!(t
            .message(&msg(
                false,
                1,
                10,
                response_msg(5, "w.test", ip),
                2 * SECOND
            ))
            .is_none());
        assert!(t.is_empty());
        let s = t.stats();
        assert_eq!(
            (s.queries, s.answered, s.rejected),
            (1, 1, forged.len() as u64 + 2),
            "{s:?}"
        );
    }

    #[test]
    fn queries_expire_and_a_retry_waits_anew() {
        let ip: IpAddr = "192.0.2.80".parse().unwrap();
        let mut t = QueryTable::default();
        t.message(&msg(true, 1, 10, query_msg(5, "w.test"), 0));
        // Late: 30 s after the query.
        let late = msg(false, 1, 10, response_msg(5, "w.test", ip), QUERY_TTL_NS);
        assert!(t.message(&late).is_none());
        assert!(t.is_empty());
        assert_eq!(t.stats().queries_expired, 1);
        // A retry of the query 20 s after the first waits 30 s from itself.
        t.message(&msg(true, 1, 10, query_msg(6, "w.test"), 0));
        t.message(&msg(true, 1, 10, query_msg(6, "w.test"), 20 * SECOND));
        let r = msg(false, 1, 10, response_msg(6, "w.test", ip), 40 * SECOND);
        assert!(t.message(&r).is_some());
        assert_eq!(t.stats().queries_expired, 1);
        // A retry once the owner is known counts against the first
        // query's allowance, and gives it back when answered.
        let mut q = msg(true, 4, 10, query_msg(8, "r.test"), 41 * SECOND);
        q.owner = None;
        t.message(&q);
        t.message(&msg(true, 4, 10, query_msg(8, "r.test"), 41 * SECOND));
        let r = msg(false, 4, 10, response_msg(8, "r.test", ip), 41 * SECOND);
        assert!(t.message(&r).is_some());
        assert!(t.per_uid.is_empty() && t.per_socket.is_empty(), "{t:?}");
        // An answer without the socket's owner names the querier's process.
        t.message(&msg(true, 3, 10, query_msg(7, "v.test"), 41 * SECOND));
        let mut r = msg(false, 3, 10, response_msg(7, "v.test", ip), 41 * SECOND);
        r.owner = None;
        assert_eq!(t.message(&r).map(|(o, _, _)| o.process), Some(pk(10)));
    }

    #[test]
    fn one_uid_or_socket_cannot_fill_the_query_table() {
        let ip: IpAddr = "192.0.2.80".parse().unwrap();
        let mut t = QueryTable::default();
        // One socket: its allowance, then refused.
        for id in 0..MAX_PENDING_PER_SOCKET as u16 + 10 {
            t.message(&msg(true, 1, 10, query_msg(id, "s.test"), 0));
        }
        assert_eq!(t.len(), MAX_PENDING_PER_SOCKET as usize);
        assert_eq!(t.stats().queries_refused, 10);
        // One uid over many sockets.
        for cookie in 2..100u64 {
            for id in 0..MAX_PENDING_PER_SOCKET as u16 {
                let mut m = msg(true, cookie, 10, query_msg(id, "u.test"), 0);
                m.owner = Some(DnsOwner {
                    process: pk(cookie as u32 + 1000),
                    uid: 10,
                });
                t.message(&m);
            }
        }
        assert_eq!(t.len(), MAX_PENDING_PER_UID as usize);
        // Another uid still gets its queries answered.
        t.message(&msg(true, 500, 20, query_msg(1, "other.test"), 0));
        let r = msg(false, 500, 20, response_msg(1, "other.test", ip), SECOND);
        assert!(t.message(&r).is_some());
        // An answered query gives its allowance back.
        let r = msg(false, 1, 10, response_msg(0, "s.test", ip), SECOND);
        assert!(t.message(&r).is_some());
        t.message(&msg(true, 1, 10, query_msg(9999, "s.test"), SECOND));
        let r = msg(false, 1, 10, response_msg(9999, "s.test", ip), SECOND);
        assert!(t.message(&r).is_some());
        // The whole table: many uids, never more than its size.
        for uid in 100..200u32 {
            for id in 0..200u16 {
                let mut m = msg(
                    true,
                    u64::from(uid) * 1000 + u64::from(id / 100),
                    uid,
                    query_msg(id, "m.test"),
                    2 * SECOND,
                );
                m.owner = Some(DnsOwner {
                    process: pk(uid),
                    uid,
                });
                t.message(&m);
            }
        }
        assert_eq!(t.len(), MAX_PENDING);
        // Expiry empties it, and the bookkeeping with it.
        t.message(&msg(true, 1, 10, query_msg(1, "late.test"), 40 * SECOND));
        assert_eq!(t.len(), 1);
        assert!(t.per_uid.len() == 1 && t.per_socket.len() == 1);
        assert!(t.order.len() <= 2 * t.len() + 1024 + 1);
    }

    #[test]
    fn reverse_names_of_both_families() {
        assert_eq!(
            reverse_name(&"192.0.2.7".parse().unwrap()),
            "7.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name(&"2001:db8::567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn ptr_answers_are_matched_to_their_query() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let q = ptr_query(0x4242, &ip);
        // The query itself is not an answer.
        assert_eq!(parse_ptr(&q, 0x4242, &ip), None);
        let r = ptr_response(&q, 0, &["Host.Example.test"]);
        assert_eq!(
            parse_ptr(&r, 0x4242, &ip),
            Some(PtrAnswer::Name("host.example.test".into()))
        );
        // Another id or another address: not ours.
        assert_eq!(parse_ptr(&r, 0x4243, &ip), None);
        assert_eq!(parse_ptr(&r, 0x4242, &"2001:db8::2".parse().unwrap()), None);
        assert_eq!(
            parse_ptr(&ptr_response(&q, 3, &[]), 0x4242, &ip),
            Some(PtrAnswer::NoName)
        );
        assert_eq!(
            parse_ptr(&ptr_response(&q, 0, &[]), 0x4242, &ip),
            Some(PtrAnswer::NoName)
        );
        assert_eq!(
            parse_ptr(&ptr_response(&q, 2, &[]), 0x4242, &ip),
            Some(PtrAnswer::Failed)
        );
        for cut in 0..r.len() {
            let _ = parse_ptr(&r[..cut], 0x4242, &ip); // never panics
        }
    }

    #[test]
    fn reverse_names_come_last() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t = NameTable::default();
        t.learn_reverse(ip, "ptr.test".into());
        assert_eq!(t.lookup(Some(pk(1)), 1, &ip), Some("ptr.test"));
        t.learn(pk(1), 1, &answer("asked.test", ip));
        assert_eq!(t.lookup(Some(pk(1)), 1, &ip), Some("asked.test"));
        assert_eq!(t.lookup(Some(pk(2)), 1, &ip), Some("ptr.test"));
    }
}
