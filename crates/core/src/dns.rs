//! Remote names from the DNS answers the machine actually received.
//!
//! The kernel hands over the payload of DNS responses (UDP and TCP source
//! port 53) with the process that owns the receiving socket; [`parse_answer`]
//! takes the name that was asked and the addresses answered, and
//! [`NameTable`] remembers them per process, so a flow's remote gets the name
//! its own process looked up. No lookup is ever made here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// How many (process, address) names are kept before the table starts over.
const MAX_NAMES: usize = 200_000;

/// Names learned from DNS answers: per process first, then machine-wide,
/// then (with `--resolve`) from reverse lookups.
#[derive(Debug, Default)]
pub struct NameTable {
    by_process: HashMap<(u32, IpAddr), String>,
    any: HashMap<IpAddr, String>,
    reverse: HashMap<IpAddr, String>,
}

impl NameTable {
    pub fn learn(&mut self, pid: u32, answer: &DnsAnswer) {
        if self.by_process.len() >= MAX_NAMES {
            self.by_process.clear();
            self.any.clear();
        }

        for &ip in &answer.addrs {
            self.by_process.insert((pid, ip), answer.name.clone());
            self.any.insert(ip, answer.name.clone());
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

    /// The name `pid` looked up for `ip`, else the last name any process
    /// got for it, else the reverse lookup's.
    pub fn lookup(&self, pid: Option<u32>, ip: &IpAddr) -> Option<&str> {
        pid.and_then(|p| self.by_process.get(&(p, *ip)))
            .or_else(|| self.any.get(ip))
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

    #[test]
    fn names_are_per_process_first() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t = NameTable::default();
        t.learn(
            10,
            &DnsAnswer {
                name: "a.test".into(),
                addrs: vec![ip],
            },
        );
        t.learn(
            20,
            &DnsAnswer {
                name: "b.test".into(),
                addrs: vec![ip],
            },
        );
        assert_eq!(t.lookup(Some(10), &ip), Some("a.test"));
        assert_eq!(t.lookup(Some(20), &ip), Some("b.test"));
        assert_eq!(t.lookup(Some(30), &ip), Some("b.test"));
        assert_eq!(t.lookup(None, &"192.0.2.2".parse().unwrap()), None);
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
        assert_eq!(t.lookup(Some(1), &ip), Some("ptr.test"));
        t.learn(
            1,
            &DnsAnswer {
                name: "asked.test".into(),
                addrs: vec![ip],
            },
        );
        assert_eq!(t.lookup(Some(2), &ip), Some("asked.test"));
    }
}
