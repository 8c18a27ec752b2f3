//! Decoding the records that the eBPF programs write (ring buffer and
//! iterators) into the kernel-free types of `procflow-core`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use procflow_core::dns::{DnsMessage, DnsOwner};
use procflow_core::event::FlowView;
use procflow_core::flow::{BeforeStart, Counters, Direction, FlowInfo, FlowKey, Origin, Proto};
use procflow_core::identity::{ExecInfo, Owner, ProcessKey};
use procflow_core::FlowEvent;

use crate::skel::types::{
    pf_counters, pf_dns_event, pf_exec_event, pf_flow_event, pf_fork_event, pf_owner,
};

use crate::skel::types::{pf_direction, pf_flag, pf_kind, pf_origin};
use crate::Record;

// Record kinds and flags, from procflow.h through the skeleton's types.
pub const PF_EV_OPEN: u32 = pf_kind::PF_EV_OPEN.0;
pub const PF_EV_CLOSE: u32 = pf_kind::PF_EV_CLOSE.0;
pub const PF_EV_OWNER: u32 = pf_kind::PF_EV_OWNER.0;
pub const PF_EV_RELEASE: u32 = pf_kind::PF_EV_RELEASE.0;
pub const PF_EV_EXEC: u32 = pf_kind::PF_EV_EXEC.0;
pub const PF_EV_DUMP: u32 = pf_kind::PF_EV_DUMP.0;
pub const PF_EV_VERDICT: u32 = pf_kind::PF_EV_VERDICT.0;
pub const PF_EV_DNS: u32 = pf_kind::PF_EV_DNS.0;
pub const PF_EV_FORK: u32 = pf_kind::PF_EV_FORK.0;

pub const PF_F_OWNER: u32 = pf_flag::PF_F_OWNER.0;
pub const PF_F_BEFORE: u32 = pf_flag::PF_F_BEFORE.0;
pub const PF_F_MPTCP: u32 = pf_flag::PF_F_MPTCP.0;
pub const PF_F_SLOT: u32 = pf_flag::PF_F_SLOT.0;
pub const PF_F_PACKET: u32 = pf_flag::PF_F_PACKET.0;

pub const FLOW_EVENT_SIZE: usize = 192;
const _: () = assert!(std::mem::size_of::<pf_flow_event>() == FLOW_EVENT_SIZE);
const _: () = assert!(std::mem::size_of::<pf_owner>() == 48);
const _: () = assert!(std::mem::size_of::<pf_fork_event>() == 32);
const _: () = assert!(std::mem::size_of::<pf_counters>() == 48);
const _: () = assert!(std::mem::size_of::<pf_exec_event>() == 1584);
const _: () = assert!(std::mem::size_of::<pf_dns_event>() == 584);
const _: () = assert!(std::mem::size_of::<crate::skel::types::pf_dgram_key>() == 32);
const _: () = assert!(std::mem::size_of::<crate::skel::types::pf_dgram_val>() == 80);
const _: () = assert!(std::mem::size_of::<crate::skel::types::pf_sock_ctx>() == 376);

/// A type that crosses the kernel boundary as bytes: one of the skeleton's
/// `repr(C)` types made only of integers and integer arrays, with every
/// padding byte spelled out as a field (libbpf-cargo generates them so), so
/// that every bit pattern is a valid value and every byte is initialised.
///
/// # Safety
///
/// Implement it only for such types; `read_struct` and `struct_bytes` rely
/// on it.
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: each is a skeleton type generated from procflow.h, integers and
// integer arrays only, padding as explicit fields (the size asserts above
// and in policy.rs pin their layout).
unsafe impl Plain for pf_flow_event {}
// SAFETY: as above.
unsafe impl Plain for pf_exec_event {}
// SAFETY: as above.
unsafe impl Plain for pf_fork_event {}
// SAFETY: as above.
unsafe impl Plain for pf_dns_event {}
// SAFETY: as above.
unsafe impl Plain for crate::skel::types::pf_dgram_key {}
// SAFETY: as above.
unsafe impl Plain for crate::skel::types::pf_dgram_val {}
// SAFETY: as above.
unsafe impl Plain for crate::skel::types::pf_verdict_event {}
// SAFETY: as above.
unsafe impl Plain for crate::skel::types::pf_policy_hdr {}
// SAFETY: as above (sizes pinned in policy.rs).
unsafe impl Plain for crate::skel::types::pf_task_ident {}
// SAFETY: as above.
unsafe impl Plain for crate::skel::types::pf_exe_ident {}

/// Reads a `T` from the start of `bytes`, if it is long enough.
pub(crate) fn read_struct<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above; T: Plain makes every bit
    // pattern valid; read_unaligned copes with any alignment of the ring
    // buffer or iterator bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a plain type, for map keys and values.
pub(crate) fn struct_bytes<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: T: Plain has no uninitialised (padding) bytes; the slice
    // borrows v for its lifetime.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The kind of a record (its first u32).
pub fn record_kind(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Converts boot-time nanoseconds (bpf_ktime_get_boot_ns) to Unix time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real as i128 - boot as i128,
        }
    }

    /// A clock whose Unix time is boot time plus `offset_ns`, for decoding
    /// records without reading the machine's clocks (tests, fuzzing).
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn boot_now(&self) -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME)
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn ip(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

pub fn c_str(raw: &[i8]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn owner(o: &pf_owner) -> Owner {
    Owner {
        pid: o.pid,
        ppid: o.ppid,
        uid: o.uid,
        comm: c_str(&o.comm),
        cgroup_id: o.cgroup_id,
        start_ns: o.start_ns,
    }
}

/// A fork record: the child runs what its parent ran.
pub fn fork(e: &pf_fork_event) -> FlowEvent {
    FlowEvent::Fork {
        child: ProcessKey {
            pid: e.pid,
            start_ns: e.start_ns,
        },
        parent: ProcessKey {
            pid: e.ppid,
            start_ns: e.parent_start_ns,
        },
    }
}

pub fn counters(c: &pf_counters) -> Counters {
    Counters {
        tx_bytes: c.tx_bytes,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        rx_packets: c.rx_packets,
        tx_payload: c.tx_payload,
        rx_payload: c.rx_payload,
    }
}

fn origin(o: u8) -> Origin {
    match pf_origin(u32::from(o)) {
        pf_origin::PF_ORIGIN_CONNECT => Origin::Connect,
        pf_origin::PF_ORIGIN_ACCEPT => Origin::Accept,
        pf_origin::PF_ORIGIN_SEND => Origin::Send,
        pf_origin::PF_ORIGIN_STARTUP => Origin::Startup,
        pf_origin::PF_ORIGIN_PACKET_SOCKET => Origin::PacketSocket,
        _ => Origin::Packet,
    }
}

pub(crate) fn direction(d: u8) -> Direction {
    match pf_direction(u32::from(d)) {
        pf_direction::PF_DIR_OUT => Direction::Out,
        pf_direction::PF_DIR_IN => Direction::In,
        _ => Direction::Unknown,
    }
}

/// A flow's family and addresses as they are on the wire: a dual-stack
/// IPv6 socket talking to an IPv4 peer (`::ffff:a.b.c.d`) sends IPv4, so
/// its flow is family 4 with IPv4 addresses, one remote with the flows of
/// IPv4 sockets to the same peer.
pub fn endpoints(family: u8, local: &[u8; 16], remote: &[u8; 16]) -> (u8, IpAddr, IpAddr) {
    let (l, r) = (ip(family, local), ip(family, remote));
    match (l, r) {
        (IpAddr::V6(lv), IpAddr::V6(rv)) if rv.to_ipv4_mapped().is_some() => {
            let l4 = lv
                .to_ipv4_mapped()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4);
            (4, l4, r.to_canonical())
        }
        _ => (family, l, r),
    }
}

/// Whether a record describes a datagram flow (keyed by socket and remote):
/// every flow but a TCP socket's; a packet socket's frames are datagram
/// flows whatever they carry.
pub fn is_datagram(e: &pf_flow_event) -> bool {
    e.addr.proto != 6 || e.flags & PF_F_PACKET != 0
}

/// The view of a flow that a record carries. `e.owner` counts only when the
/// socket's owner is known.
pub fn flow_view(e: &pf_flow_event, clock: &Clock) -> FlowView {
    let a = &e.addr;
    if a.family == 0 {
        return frame_view(e, clock);
    }
    let (family, local, remote) = endpoints(a.family, &a.local, &a.remote);
    let key = if is_datagram(e) {
        FlowKey::datagram(e.cookie, remote, a.rport)
    } else {
        FlowKey::socket(e.cookie)
    };
    FlowView {
        key,
        info: FlowInfo {
            proto: match Proto::from_number(a.proto) {
                Proto::Tcp if e.flags & PF_F_MPTCP != 0 => Proto::Mptcp,
                p => p,
            },
            family,
            direction: direction(a.direction),
            origin: origin(a.origin),
            local: (local, a.lport),
            remote: (remote, a.rport),
            netns: e.netns as u64,
            link: None,
        },
        owner: (e.flags & PF_F_OWNER != 0).then(|| owner(&e.owner)),
        counters: counters(&e.c),
        before_start: (e.flags & PF_F_BEFORE != 0).then_some(BeforeStart {
            tx_payload: e.before_tx,
            rx_payload: e.before_rx,
        }),
        start_ns: clock.unix_ns(e.start_ns),
    }
}

/// A DNS message a socket sent or received, with the socket, its
/// namespace and owner, and the server.
pub fn dns_message(e: &pf_dns_event) -> DnsMessage {
    let n = (e.len as usize).min(e.data.len());
    DnsMessage {
        query: e.query != 0,
        cookie: e.cookie,
        netns: u64::from(e.netns),
        owner: (e.pid != 0).then_some(DnsOwner {
            process: ProcessKey {
                pid: e.pid,
                start_ns: e.start_ns,
            },
            uid: e.uid,
        }),
        server: (ip(e.family, &e.remote), e.rport),
        lport: e.lport,
        proto: e.proto,
        ts_ns: e.ts_ns,
        payload: e.data[..n].to_vec(),
    }
}

/// A packet socket's flow of frames that are not IP (family 0): the remote
/// is the destination MAC (`remote[0..6]`) and the ethertype (`rport`). Its
/// key is the one the kernel uses (the 16 remote bytes as an IPv6 address,
/// see packet.bpf.c); the record shows no IP addresses but the MACs.
fn frame_view(e: &pf_flow_event, clock: &Clock) -> FlowView {
    let a = &e.addr;
    let mac = |b: &[u8; 16]| -> [u8; 6] { b[..6].try_into().unwrap_or_default() };
    let none = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    FlowView {
        key: FlowKey::datagram(e.cookie, IpAddr::V6(Ipv6Addr::from(a.remote)), a.rport),
        info: FlowInfo {
            proto: Proto::Ether(a.rport),
            family: 0,
            direction: direction(a.direction),
            origin: origin(a.origin),
            local: (none, 0),
            remote: (none, 0),
            netns: e.netns as u64,
            link: Some((mac(&a.local), mac(&a.remote))),
        },
        owner: (e.flags & PF_F_OWNER != 0).then(|| owner(&e.owner)),
        counters: counters(&e.c),
        before_start: None,
        start_ns: clock.unix_ns(e.start_ns),
    }
}

/// The absolute executable path and command line of an exec record.
pub fn exec_info(e: &pf_exec_event) -> (ProcessKey, ExecInfo) {
    // Empty when the kernel could not walk the path: the name given to
    // exec (`fname`) is the caller's choice and is never taken for it.
    let n = (e.path_len as usize).min(e.path.len());
    let exe: String =
        String::from_utf8_lossy(&e.path[..n].iter().map(|&c| c as u8).collect::<Vec<u8>>())
            .into_owned();
    let args_len = (e.args_len as usize).min(e.args.len());
    let args: Vec<u8> = e.args[..args_len].iter().map(|&c| c as u8).collect();
    let cmdline = args
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let key = ProcessKey {
        pid: e.pid,
        start_ns: e.start_ns,
    };
    let comm = c_str(&e.comm);
    (key, ExecInfo { exe, cmdline, comm })
}

/// Decodes one ring-buffer record (its bytes exactly as the kernel wrote
/// them) into a [`Record`]. None for a record too short for its kind, a
/// kind that never travels on the ring buffer, or an unknown kind. Pure: no
/// kernel is needed, so it is what the fuzz target `kernel_record` runs.
pub fn decode_record(data: &[u8], clock: &Clock) -> Option<Record> {
    let kind = record_kind(data)?;
    if kind == PF_EV_VERDICT {
        return crate::policy::decode_verdict(data, clock).map(Record::Verdict);
    }
    if kind == PF_EV_DNS {
        let e: crate::skel::types::pf_dns_event = read_struct(data)?;
        return Some(Record::Event(FlowEvent::Dns(dns_message(&e))));
    }
    if kind == PF_EV_EXEC {
        let e: pf_exec_event = read_struct(data)?;
        let (process, info) = exec_info(&e);
        return Some(Record::Event(FlowEvent::Exec { process, info }));
    }
    if kind == PF_EV_FORK {
        let e: pf_fork_event = read_struct(data)?;
        return Some(Record::Event(fork(&e)));
    }
    let e: pf_flow_event = read_struct(data)?;
    Some(match kind {
        PF_EV_OPEN => Record::Event(FlowEvent::Open(flow_view(&e, clock))),
        PF_EV_CLOSE => Record::Event(FlowEvent::Close {
            view: flow_view(&e, clock),
            end_ns: clock.unix_ns(e.ts_ns),
        }),
        PF_EV_OWNER => Record::Event(FlowEvent::Owner {
            cookie: e.cookie,
            owner: owner(&e.owner),
        }),
        PF_EV_RELEASE => Record::Release {
            cookie: e.cookie,
            end_ns: clock.unix_ns(e.ts_ns),
            slot: (e.flags & PF_F_SLOT != 0).then(|| flow_view(&e, clock)),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_path_and_arguments() {
        let mut e = pf_exec_event {
            pid: 42,
            ..Default::default()
        };
        let path = b"/usr/bin/curl";
        for (i, b) in path.iter().enumerate() {
            e.path[i] = *b as i8;
        }
        e.path_len = path.len() as u16;
        let args = b"curl\0-s\0http://x\0";
        for (i, b) in args.iter().enumerate() {
            e.args[i] = *b as i8;
        }
        e.args_len = args.len() as u16;
        let (key, info) = exec_info(&e);
        assert_eq!(key.pid, 42);
        assert_eq!(info.exe, "/usr/bin/curl");
        assert_eq!(info.cmdline, "curl -s http://x");
    }

    #[test]
    fn a_dual_stack_socket_talking_to_ipv4_is_an_ipv4_flow() {
        let mapped = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[10] = 0xff;
            b[11] = 0xff;
            b[12..].copy_from_slice(&a);
            b
        };
        let (f, l, r) = endpoints(6, &mapped([10, 0, 0, 1]), &mapped([10, 0, 0, 2]));
        assert_eq!(
            (f, l.to_string(), r.to_string()),
            (4, "10.0.0.1".into(), "10.0.0.2".into())
        );
        let v6: [u8; 16] = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let (f, _, r) = endpoints(6, &[0; 16], &v6);
        assert_eq!((f, r.to_string()), (6, "fd00::2".into()));
    }

    #[test]
    fn v4_addresses_use_the_first_four_bytes() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(ip(4, &raw).to_string(), "10.0.0.2");
        assert_eq!(ip(6, &[0; 16]).to_string(), "::");
    }

    #[test]
    fn ring_records_decode_without_a_kernel() {
        let clock = Clock::with_offset_ns(1_000);
        let mut e = pf_flow_event {
            kind: PF_EV_CLOSE,
            flags: PF_F_OWNER,
            cookie: 7,
            ts_ns: 5_000,
            ..Default::default()
        };
        e.addr.family = 4;
        e.addr.proto = 6;
        e.addr.remote[..4].copy_from_slice(&[192, 0, 2, 1]);
        e.addr.rport = 443;
        e.owner.pid = 42;
        let bytes = struct_bytes(&e).to_vec();
        match decode_record(&bytes, &clock) {
            Some(Record::Event(FlowEvent::Close { view, end_ns })) => {
                assert_eq!(end_ns, 6_000);
                assert_eq!(view.key, FlowKey::socket(7));
                assert_eq!(view.info.remote.1, 443);
                assert_eq!(view.owner.map(|o| o.pid), Some(42));
            }
            other => panic!("decoded {other:?}"),
        }
        // Too short for its kind, an unknown kind, nothing at all: no record.
        for cut in 0..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut], &clock), None, "{cut} bytes");
        }
        let mut unknown = bytes.clone();
        unknown[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode_record(&unknown, &clock), None);
        // A DNS record's length is capped at its buffer.
        let mut dns = crate::skel::types::pf_dns_event {
            kind: PF_EV_DNS,
            pid: 3,
            len: u32::MAX,
            ..Default::default()
        };
        dns.data[0] = 0x12;
        match decode_record(struct_bytes(&dns), &clock) {
            Some(Record::Event(FlowEvent::Dns(m))) => {
                let pid = m.owner.map(|o| o.process.pid);
                assert_eq!((pid, m.payload.len(), m.payload[0]), (Some(3), 512, 0x12));
            }
            other => panic!("decoded {other:?}"),
        }
    }
}
