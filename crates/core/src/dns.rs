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

/// How many (process, address) names are kept before the table starts over.
const MAX_NAMES: usize = 200_000;

/// Names learned from DNS answers: per process first, then machine-wide.
#[derive(Debug, Default)]
pub struct NameTable {
    by_process: HashMap<(u32, IpAddr), String>,
    any: HashMap<IpAddr, String>,
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

    /// The name `pid` looked up for `ip`, else the last name any process
    /// got for it.
    pub fn lookup(&self, pid: Option<u32>, ip: &IpAddr) -> Option<&str> {
        pid.and_then(|p| self.by_process.get(&(p, *ip)))
            .or_else(|| self.any.get(ip))
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
}
