//! IPFIX on the wire (RFC 7011): the message header, the four templates
//! and their data records, variable-length strings, and messages filled
//! up to a size. Pure: unit tested byte by byte.

use std::net::IpAddr;

/// ntop's Private Enterprise Number: the process elements are nProbe's.
pub const NTOP_PEN: u32 = 35632;
/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Message header: version, length, export time, sequence, domain.
pub const HEADER_LEN: usize = 16;
/// Set header: set id, length.
pub const SET_HEADER_LEN: usize = 4;
/// The template set's id.
pub const TEMPLATE_SET: u16 = 2;
/// Largest message procflow sends (a UDP datagram that fits a 1500-byte
/// MTU with room for IP, UDP and tunnel headers).
pub const MAX_MESSAGE: usize = 1400;

/// Caps, in bytes, of the variable-length strings (longer ones are cut at
/// a character boundary), so the largest record fits one message.
pub const NAME_CAP: usize = 256;
pub const CMDLINE_CAP: usize = 512;
pub const USER_CAP: usize = 32;
pub const CONTAINER_CAP: usize = 64;

/// Standard information elements (IANA IPFIX registry).
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const FLOW_END_REASON: u16 = 136;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
}

/// ntop's elements (PEN 35632): the IPFIX id is nProbe's NetFlow v9 id
/// minus 57472.
pub mod ntop {
    pub const SRC_PROC_PID: u16 = 168;
    pub const SRC_PROC_NAME: u16 = 169;
    pub const SRC_PROC_UID: u16 = 425;
    pub const SRC_PROC_USER_NAME: u16 = 372;
    pub const SRC_PROC_CMDLINE: u16 = 556;
    pub const SRC_PROC_CONTAINER_ID: u16 = 558;
    pub const SRC_FATHER_PROC_PID: u16 = 373;
    pub const DST_PROC_PID: u16 = 375;
    pub const DST_PROC_NAME: u16 = 376;
    pub const DST_PROC_UID: u16 = 426;
    pub const DST_PROC_USER_NAME: u16 = 377;
    pub const DST_PROC_CMDLINE: u16 = 557;
    pub const DST_PROC_CONTAINER_ID: u16 = 559;
    pub const DST_FATHER_PROC_PID: u16 = 378;
}

/// A field's length in a template: fixed, or variable (65535).
const VARLEN: u16 = 65535;

/// flowEndReason values (RFC 7011 / IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    IdleTimeout = 1,
    ActiveTimeout = 2,
    EndOfFlow = 3,
    ForcedEnd = 4,
    LackOfResources = 5,
}

/// Which way a record counts: `Out` what the local socket sent (source =
/// local end, flowDirection egress), `In` what it received (source =
/// remote end, ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Out,
    In,
}

/// The four templates: IPv4 or IPv6, out or in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub v6: bool,
    pub way: Way,
}

impl Template {
    pub const ALL: [Template; 4] = [
        Template {
            v6: false,
            way: Way::Out,
        },
        Template {
            v6: false,
            way: Way::In,
        },
        Template {
            v6: true,
            way: Way::Out,
        },
        Template {
            v6: true,
            way: Way::In,
        },
    ];

    /// 256 v4 out, 257 v4 in, 258 v6 out, 259 v6 in.
    pub fn id(self) -> u16 {
        256 + u16::from(self.v6) * 2 + u16::from(self.way == Way::In)
    }

    /// (element id, enterprise number or 0, length) in record order.
    pub fn fields(self) -> Vec<(u16, u32, u16)> {
        let a = if self.v6 { 16 } else { 4 };
        let (src, dst) = if self.v6 {
            (ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS)
        } else {
            (ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS)
        };
        let mut f = vec![
            (src, 0, a),
            (dst, 0, a),
            (ie::SOURCE_TRANSPORT_PORT, 0, 2),
            (ie::DESTINATION_TRANSPORT_PORT, 0, 2),
            (ie::PROTOCOL_IDENTIFIER, 0, 1),
            (ie::OCTET_DELTA_COUNT, 0, 8),
            (ie::PACKET_DELTA_COUNT, 0, 8),
            (ie::FLOW_START_MILLISECONDS, 0, 8),
            (ie::FLOW_END_MILLISECONDS, 0, 8),
            (ie::FLOW_END_REASON, 0, 1),
            (ie::FLOW_DIRECTION, 0, 1),
        ];
        let p = match self.way {
            Way::Out => [
                ntop::SRC_PROC_PID,
                ntop::SRC_PROC_NAME,
                ntop::SRC_PROC_UID,
                ntop::SRC_PROC_USER_NAME,
                ntop::SRC_PROC_CMDLINE,
                ntop::SRC_PROC_CONTAINER_ID,
                ntop::SRC_FATHER_PROC_PID,
            ],
            Way::In => [
                ntop::DST_PROC_PID,
                ntop::DST_PROC_NAME,
                ntop::DST_PROC_UID,
                ntop::DST_PROC_USER_NAME,
                ntop::DST_PROC_CMDLINE,
                ntop::DST_PROC_CONTAINER_ID,
                ntop::DST_FATHER_PROC_PID,
            ],
        };
        let lens = [4, VARLEN, 4, VARLEN, VARLEN, VARLEN, 4];
        f.extend(p.iter().zip(lens).map(|(&id, len)| (id, NTOP_PEN, len)));
        f
    }

    /// The template record: id, field count, field specifiers (the
    /// enterprise bit set and the number following for ntop's).
    pub fn encode(self, out: &mut Vec<u8>) {
        let fields = self.fields();
        put16(out, self.id());
        put16(out, fields.len() as u16);
        for (id, pen, len) in fields {
            if pen == 0 {
                put16(out, id);
                put16(out, len);
            } else {
                put16(out, id | 0x8000);
                put16(out, len);
                put32(out, pen);
            }
        }
    }
}

/// The process of a flow as the records carry it, strings already cut to
/// their caps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcFields {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The executable's path, `[comm]` when unknown, `[kernel]` for a
    /// flow no process owns.
    pub name: String,
    pub user: String,
    pub cmdline: String,
    pub container: String,
}

impl ProcFields {
    pub fn of(p: Option<&procflow_core::ProcessIdentity>) -> ProcFields {
        match p {
            None => ProcFields {
                uid: u32::MAX,
                name: "[kernel]".into(),
                ..ProcFields::default()
            },
            Some(p) => ProcFields {
                pid: p.pid,
                ppid: p.ppid,
                uid: p.uid,
                name: cap(
                    &p.exe.clone().unwrap_or_else(|| format!("[{}]", p.comm)),
                    NAME_CAP,
                ),
                user: cap(p.user.as_deref().unwrap_or(""), USER_CAP),
                cmdline: cap(p.cmdline.as_deref().unwrap_or(""), CMDLINE_CAP),
                container: cap(
                    &container_id(p.cgroup.as_deref().unwrap_or("")),
                    CONTAINER_CAP,
                ),
            },
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The container id in a cgroup path: docker's (`docker-<id>.scope`,
/// `/docker/<id>`), podman's (`libpod-<id>`), containerd's under
/// Kubernetes (`cri-containerd-<id>`), cri-o's (`crio-<id>`); empty for
/// anything else. The id is the 64 hex digits.
pub fn container_id(cgroup: &str) -> String {
    for part in cgroup.rsplit('/') {
        let p = part.strip_suffix(".scope").unwrap_or(part);
        for prefix in ["docker-", "libpod-", "cri-containerd-", "crio-", ""] {
            if let Some(id) = p.strip_prefix(prefix) {
                if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    if prefix.is_empty() && !cgroup.contains("/docker/") {
                        continue;
                    }
                    return id.to_ascii_lowercase();
                }
            }
        }
    }
    String::new()
}

/// One data record's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord<'a> {
    pub way: Way,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub protocol: u8,
    pub octets: u64,
    pub packets: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub reason: EndReason,
    pub process: &'a ProcFields,
}

impl DataRecord<'_> {
    /// Its template, or `None` when the two ends are of different
    /// families (never for a real socket).
    pub fn template(&self) -> Option<Template> {
        match (self.local.0, self.remote.0) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Some(Template {
                v6: false,
                way: self.way,
            }),
            (IpAddr::V6(_), IpAddr::V6(_)) => Some(Template {
                v6: true,
                way: self.way,
            }),
            _ => None,
        }
    }

    /// The record's bytes, in its template's field order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (src, dst) = match self.way {
            Way::Out => (self.local, self.remote),
            Way::In => (self.remote, self.local),
        };
        for a in [src.0, dst.0] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        put16(out, src.1);
        put16(out, dst.1);
        out.push(self.protocol);
        put64(out, self.octets);
        put64(out, self.packets);
        put64(out, self.start_ms);
        put64(out, self.end_ms);
        out.push(self.reason as u8);
        out.push(match self.way {
            Way::Out => 1,
            Way::In => 0,
        });
        let p = self.process;
        put32(out, p.pid);
        put_varlen(out, p.name.as_bytes());
        put32(out, p.uid);
        put_varlen(out, p.user.as_bytes());
        put_varlen(out, p.cmdline.as_bytes());
        put_varlen(out, p.container.as_bytes());
        put32(out, p.ppid);
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A variable-length field (RFC 7011 §7): one length byte below 255,
/// else 255 and two length bytes. Longer than 65535 is cut.
pub fn put_varlen(out: &mut Vec<u8>, v: &[u8]) {
    let v = &v[..v.len().min(65535)];
    if v.len() < 255 {
        out.push(v.len() as u8);
    } else {
        out.push(255);
        put16(out, v.len() as u16);
    }
    out.extend_from_slice(v);
}

/// A message ready to send: its header's export time and sequence number
/// are written at send time ([`stamp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    /// Data records in it (the sequence number grows by this).
    pub records: u32,
}

/// Writes the header's export time (seconds) and sequence number.
pub fn stamp(msg: &mut [u8], export_secs: u32, sequence: u32) {
    msg[4..8].copy_from_slice(&export_secs.to_be_bytes());
    msg[8..12].copy_from_slice(&sequence.to_be_bytes());
}

fn header(domain: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(MAX_MESSAGE);
    put16(&mut b, VERSION);
    put16(&mut b, 0);
    put32(&mut b, 0);
    put32(&mut b, 0);
    put32(&mut b, domain);
    debug_assert_eq!(b.len(), HEADER_LEN);
    b
}

fn finish_lengths(b: &mut [u8], set_start: Option<usize>) {
    if let Some(s) = set_start {
        let len = (b.len() - s) as u16;
        b[s + 2..s + 4].copy_from_slice(&len.to_be_bytes());
    }
    let len = b.len() as u16;
    b[2..4].copy_from_slice(&len.to_be_bytes());
}

/// The message with the four templates.
pub fn templates_message(domain: u32) -> Message {
    let mut b = header(domain);
    let start = b.len();
    put16(&mut b, TEMPLATE_SET);
    put16(&mut b, 0);
    for t in Template::ALL {
        t.encode(&mut b);
    }
    finish_lengths(&mut b, Some(start));
    Message {
        bytes: b,
        records: 0,
    }
}

/// Data records gathered into messages of at most [`MAX_MESSAGE`] bytes,
/// one set per template.
#[derive(Debug)]
pub struct Builder {
    domain: u32,
    /// The records of each template (in [`Template::ALL`]'s order).
    sets: [Vec<u8>; 4],
    len: usize,
    records: u32,
}

impl Builder {
    pub fn new(domain: u32) -> Builder {
        Builder {
            domain,
            sets: Default::default(),
            len: HEADER_LEN,
            records: 0,
        }
    }

    /// Adds a record; gives back the message it filled, if any.
    pub fn add(&mut self, r: &DataRecord<'_>) -> Option<Message> {
        let t = r.template()?;
        let i = (t.id() - 256) as usize;
        let mut rec = Vec::with_capacity(128);
        r.encode(&mut rec);
        let set_header = |b: &Builder| {
            if b.sets[i].is_empty() {
                SET_HEADER_LEN
            } else {
                0
            }
        };
        let mut full = None;
        if self.len + set_header(self) + rec.len() > MAX_MESSAGE && self.records > 0 {
            full = self.take();
        }
        self.len += set_header(self) + rec.len();
        self.sets[i].extend_from_slice(&rec);
        self.records += 1;
        full
    }

    /// The message gathered so far (`None` when it holds no record).
    pub fn take(&mut self) -> Option<Message> {
        if self.records == 0 {
            return None;
        }
        let mut b = header(self.domain);
        for (t, body) in Template::ALL.iter().zip(self.sets.iter_mut()) {
            if body.is_empty() {
                continue;
            }
            put16(&mut b, t.id());
            put16(&mut b, (SET_HEADER_LEN + body.len()) as u16);
            b.append(body);
        }
        finish_lengths(&mut b, None);
        debug_assert_eq!(b.len(), self.len);
        self.len = HEADER_LEN;
        let records = std::mem::take(&mut self.records);
        Some(Message { bytes: b, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn proc_fields() -> ProcFields {
        ProcFields {
            pid: 100,
            ppid: 1,
            uid: 1000,
            name: "/usr/bin/curl".into(),
            user: "alice".into(),
            cmdline: "curl x".into(),
            container: String::new(),
        }
    }

    fn rec(p: &ProcFields, way: Way) -> DataRecord<'_> {
        DataRecord {
            way,
            local: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000),
            remote: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 443),
            protocol: 6,
            octets: 1500,
            packets: 3,
            start_ms: 1000,
            end_ms: 2000,
            reason: EndReason::ActiveTimeout,
            process: p,
        }
    }

    #[test]
    fn varlen_strings_take_one_or_three_length_bytes() {
        let mut b = Vec::new();
        put_varlen(&mut b, b"abc");
        assert_eq!(b, [3, b'a', b'b', b'c']);
        let mut b = Vec::new();
        put_varlen(&mut b, &[b'x'; 254]);
        assert_eq!(b.len(), 255);
        assert_eq!(b[0], 254);
        let mut b = Vec::new();
        put_varlen(&mut b, &[b'x'; 255]);
        assert_eq!(&b[..3], &[255, 0, 255]);
        assert_eq!(b.len(), 258);
        let mut b = Vec::new();
        put_varlen(&mut b, &[b'x'; 1000]);
        assert_eq!(&b[..3], &[255, 0x03, 0xe8]);
        let mut b = Vec::new();
        put_varlen(&mut b, b"");
        assert_eq!(b, [0]);
    }

    #[test]
    fn strings_are_cut_at_a_character_boundary() {
        assert_eq!(cap("abc", 2), "ab");
        assert_eq!(cap("aé", 2), "a", "é is two bytes");
        assert_eq!(cap("aé", 3), "aé");
    }

    #[test]
    fn container_ids_come_from_the_runtimes_cgroup_names() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for cg in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"),
            format!("/kubepods/crio-{id}.scope"),
        ] {
            assert_eq!(container_id(&cg), id, "{cg}");
        }
        for cg in [
            "/system.slice/ssh.service".to_string(),
            "/user.slice/user-1000.slice/session-2.scope".into(),
            format!("/system.slice/{id}"),
            format!("/docker-{}.scope", &id[1..]),
            "".into(),
        ] {
            assert_eq!(container_id(&cg), "", "{cg}");
        }
    }

    #[test]
    fn the_templates_name_every_field_with_ntops_enterprise_number() {
        let m = templates_message(7);
        let b = &m.bytes;
        assert_eq!(u16::from_be_bytes([b[0], b[1]]), 10);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]) as usize, b.len());
        assert_eq!(&b[12..16], &7u32.to_be_bytes());
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), TEMPLATE_SET);
        assert_eq!(u16::from_be_bytes([b[18], b[19]]) as usize, b.len() - 16);
        // Template 256: 18 fields; the first is sourceIPv4Address, 4 bytes.
        assert_eq!(&b[20..24], &[1, 0, 0, 18]);
        assert_eq!(&b[24..28], &[0, 8, 0, 4]);
        // 11 standard fields of 4 bytes, then SRC_PROC_PID: 168 with the
        // enterprise bit, 4 bytes, PEN 35632; then SRC_PROC_NAME varlen.
        let p = 24 + 11 * 4;
        assert_eq!(&b[p..p + 8], &[0x80, 168, 0, 4, 0, 0, 0x8b, 0x30]);
        assert_eq!(&b[p + 8..p + 12], &[0x80, 169, 0xff, 0xff]);
        // 4 templates: (4 + 11*4 + 7*8) bytes each.
        assert_eq!(b.len(), 16 + 4 + 4 * (4 + 11 * 4 + 7 * 8));
        let in6 = Template {
            v6: true,
            way: Way::In,
        };
        assert_eq!(in6.id(), 259);
        let f = in6.fields();
        assert_eq!(f[0], (27, 0, 16));
        assert_eq!(f[11], (ntop::DST_PROC_PID, NTOP_PEN, 4));
        assert_eq!(f[17], (ntop::DST_FATHER_PROC_PID, NTOP_PEN, 4));
    }

    #[test]
    fn an_out_record_has_the_local_end_as_source_and_an_in_record_the_remote() {
        let p = proc_fields();
        let mut out = Vec::new();
        rec(&p, Way::Out).encode(&mut out);
        assert_eq!(&out[0..4], &[10, 0, 0, 1]);
        assert_eq!(&out[4..8], &[10, 0, 0, 2]);
        assert_eq!(&out[8..12], &[0x9c, 0x40, 1, 0xbb]);
        assert_eq!(out[12], 6);
        assert_eq!(&out[13..21], &1500u64.to_be_bytes());
        assert_eq!(&out[21..29], &3u64.to_be_bytes());
        assert_eq!(&out[29..37], &1000u64.to_be_bytes());
        assert_eq!(&out[37..45], &2000u64.to_be_bytes());
        assert_eq!(out[45], 2, "active timeout");
        assert_eq!(out[46], 1, "egress");
        assert_eq!(&out[47..51], &100u32.to_be_bytes());
        assert_eq!(out[51] as usize, "/usr/bin/curl".len());
        let fixed = 4 + 4 + 2 + 2 + 1 + 8 * 4 + 1 + 1 + 4 * 3;
        assert_eq!(out.len(), fixed + 4 + 13 + 5 + 6);
        assert_eq!(&out[out.len() - 4..], &1u32.to_be_bytes());
        let mut inn = Vec::new();
        rec(&p, Way::In).encode(&mut inn);
        assert_eq!(&inn[0..4], &[10, 0, 0, 2]);
        assert_eq!(&inn[8..12], &[1, 0xbb, 0x9c, 0x40]);
        assert_eq!(inn[46], 0, "ingress");
        let mut r6 = rec(&p, Way::Out);
        r6.local.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(r6.template(), None, "mixed families");
        r6.remote.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(r6.template().unwrap().id(), 258);
        let mut b6 = Vec::new();
        r6.encode(&mut b6);
        assert_eq!(b6.len(), out.len() + 24);
    }

    #[test]
    fn messages_are_filled_up_to_the_limit_with_a_set_per_template() {
        let p = proc_fields();
        let mut one = Vec::new();
        rec(&p, Way::Out).encode(&mut one);
        let mut b = Builder::new(1);
        let mut msgs = Vec::new();
        for i in 0..100 {
            let way = if i % 3 == 0 { Way::In } else { Way::Out };
            msgs.extend(b.add(&rec(&p, way)));
        }
        msgs.extend(b.take());
        assert!(b.take().is_none());
        assert_eq!(msgs.iter().map(|m| m.records).sum::<u32>(), 100);
        for m in &msgs {
            let bytes = &m.bytes;
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(
                u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
                bytes.len()
            );
            // Walk the sets: their lengths add up to the message.
            let mut at = HEADER_LEN;
            let mut n = 0;
            while at < bytes.len() {
                let id = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
                assert!(id == 256 || id == 257);
                assert!(len > SET_HEADER_LEN);
                assert_eq!((len - SET_HEADER_LEN) % one.len(), 0);
                n += (len - SET_HEADER_LEN) / one.len();
                at += len;
            }
            assert_eq!(at, bytes.len());
            assert_eq!(n as u32, m.records);
        }
        assert!(msgs[0].bytes.len() > MAX_MESSAGE - 100, "filled");
    }

    #[test]
    fn the_largest_record_fits_a_message() {
        let p = ProcFields {
            name: "n".repeat(NAME_CAP),
            user: "u".repeat(USER_CAP),
            cmdline: "c".repeat(CMDLINE_CAP),
            container: "0".repeat(CONTAINER_CAP),
            ..proc_fields()
        };
        let mut r = rec(&p, Way::Out);
        r.local.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        r.remote.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut b = Builder::new(1);
        assert!(b.add(&r).is_none());
        let m = b.take().unwrap();
        assert!(m.bytes.len() <= MAX_MESSAGE, "{}", m.bytes.len());
        assert_eq!(m.records, 1);
    }

    #[test]
    fn stamping_writes_time_and_sequence() {
        let mut m = templates_message(1);
        stamp(&mut m.bytes, 0x01020304, 0x0a0b0c0d);
        assert_eq!(&m.bytes[4..12], &[1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    }
}
