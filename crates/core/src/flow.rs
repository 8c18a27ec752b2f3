//! Flow keys, flow metadata, counters and the JSON-lines flow record.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::identity::ProcessIdentity;

/// Identifies one flow within a run.
///
/// A TCP socket is one flow. A datagram socket (UDP, ping, raw) is one flow
/// per remote address and port, so a resolver that asks two servers shows
/// two flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The kernel's socket cookie.
    pub cookie: u64,
    /// The remote, for datagram flows only.
    pub remote: Option<(IpAddr, u16)>,
}

impl FlowKey {
    pub fn socket(cookie: u64) -> Self {
        FlowKey {
            cookie,
            remote: None,
        }
    }

    pub fn datagram(cookie: u64, ip: IpAddr, port: u16) -> Self {
        FlowKey {
            cookie,
            remote: Some((ip, port)),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.remote {
            None => write!(f, "{}", self.cookie),
            Some((IpAddr::V4(ip), port)) => write!(f, "{}/{}:{}", self.cookie, ip, port),
            Some((IpAddr::V6(ip), port)) => write!(f, "{}/[{}]:{}", self.cookie, ip, port),
        }
    }
}

/// IP protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    /// A TCP subflow of a socket the application opened as MPTCP.
    Mptcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
    /// A frame that is not IP, sent through a packet socket: its ethertype.
    Ether(u16),
    /// A packet socket as rules decide it (verdict records): any frame.
    Packet,
}

impl Proto {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => Proto::Icmp,
            58 => Proto::Icmpv6,
            n => Proto::Other(n),
        }
    }

    /// The IP protocol on the wire (MPTCP's subflows are TCP).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp | Proto::Mptcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
            Proto::Other(n) => n,
            Proto::Ether(_) | Proto::Packet => 0,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Mptcp => f.write_str("mptcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Icmpv6 => f.write_str("icmpv6"),
            Proto::Other(136) => f.write_str("udplite"),
            Proto::Other(n) => write!(f, "ip:{n}"),
            Proto::Ether(t) => write!(f, "eth:0x{t:04x}"),
            Proto::Packet => f.write_str("packet"),
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who spoke first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We connected or sent first.
    Out,
    /// We accepted or received first.
    In,
    Unknown,
}

/// The hook that created the flow's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Connect,
    Accept,
    Send,
    Startup,
    Packet,
    /// Frames sent through a packet socket (AF_PACKET).
    #[serde(rename = "packet_socket")]
    PacketSocket,
}

/// What is known of a flow apart from its counters and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub proto: Proto,
    pub family: u8,
    pub direction: Direction,
    pub origin: Origin,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub netns: u64,
    /// The source and destination MAC of a packet socket's frames that are
    /// not IP (family 0).
    pub link: Option<([u8; 6], [u8; 6])>,
}

/// The link-layer addresses of a flow of frames that are not IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkAddrs {
    pub local_mac: String,
    pub remote_mac: String,
}

impl LinkAddrs {
    pub fn new(local: &[u8; 6], remote: &[u8; 6]) -> Self {
        let mac = |m: &[u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        LinkAddrs {
            local_mac: mac(local),
            remote_mac: mac(remote),
        }
    }
}

/// Cumulative counters of one flow.
///
/// `*_bytes` and `*_packets` are IP-level, as on the wire (a GSO/GRO packet
/// counts as the segments it stands for); `*_payload` are transport payload
/// bytes, what the application sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub tx_payload: u64,
    pub rx_payload: u64,
}

impl Counters {
    /// Field-wise maximum: counters only grow, so the larger reading is the
    /// newer one. Used when two readings of one flow meet (a close event and a
    /// map dump), so that neither can move a flow backwards.
    pub fn max(self, o: Counters) -> Counters {
        Counters {
            tx_bytes: self.tx_bytes.max(o.tx_bytes),
            rx_bytes: self.rx_bytes.max(o.rx_bytes),
            tx_packets: self.tx_packets.max(o.tx_packets),
            rx_packets: self.rx_packets.max(o.rx_packets),
            tx_payload: self.tx_payload.max(o.tx_payload),
            rx_payload: self.rx_payload.max(o.rx_payload),
        }
    }

    /// Field-wise growth since `before` (a field read lower than before
    /// grew by 0): what a consumer of cumulative records adds or exports.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            tx_bytes: self.tx_bytes.saturating_sub(before.tx_bytes),
            rx_bytes: self.rx_bytes.saturating_sub(before.rx_bytes),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_payload: self.tx_payload.saturating_sub(before.tx_payload),
            rx_payload: self.rx_payload.saturating_sub(before.rx_payload),
        }
    }

    /// Field-wise sum: one flow counted in two places (a UDP socket's slot
    /// flow and its datagram table entry).
    pub fn plus(self, o: Counters) -> Counters {
        Counters {
            tx_bytes: self.tx_bytes + o.tx_bytes,
            rx_bytes: self.rx_bytes + o.rx_bytes,
            tx_packets: self.tx_packets + o.tx_packets,
            rx_packets: self.rx_packets + o.rx_packets,
            tx_payload: self.tx_payload + o.tx_payload,
            rx_payload: self.rx_payload + o.rx_payload,
        }
    }
}

/// Payload the kernel had counted on a socket before procflow started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BeforeStart {
    pub tx_payload: u64,
    pub rx_payload: u64,
}

/// Open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    Open,
    Closed,
}

/// Allow or block, when rules are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Block,
}

/// One `"type":"flow"` record: a line of the JSON-lines log and a row of
/// the store (README.md, "What the fields mean").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub flow_id: String,
    pub state: FlowState,
    pub proto: Proto,
    pub family: u8,
    pub direction: Direction,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// The remote's name, from a DNS answer this machine received.
    pub remote_name: Option<String>,
    pub process: Option<ProcessIdentity>,
    pub netns: u64,
    pub start: String,
    pub end: Option<String>,
    #[serde(flatten)]
    pub counters: Counters,
    pub before_start: Option<BeforeStart>,
    pub origin: Origin,
    /// `local_mac` and `remote_mac`, for a packet socket's frames that are
    /// not IP.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkAddrs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl FlowRecord {
    /// An open TCP flow from 127.0.0.1:40000 to 10.0.0.1:443 by
    /// `/usr/bin/example` (pid 100, ppid 1, root), no traffic yet: for the
    /// tests of the records' consumers.
    pub fn example(flow_id: &str) -> FlowRecord {
        use std::net::Ipv4Addr;
        FlowRecord {
            kind: "flow",
            flow_id: flow_id.into(),
            state: FlowState::Open,
            proto: Proto::Tcp,
            family: 4,
            direction: Direction::Out,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            remote_port: 443,
            remote_name: None,
            process: Some(ProcessIdentity {
                pid: 100,
                ppid: 1,
                uid: 0,
                user: Some("root".into()),
                comm: "example".into(),
                exe: Some("/usr/bin/example".into()),
                cmdline: Some("example --flag".into()),
                cgroup: Some("/system.slice/example.service".into()),
                ..Default::default()
            }),
            netns: 1,
            start: "2026-12-01T00:00:00.000000000Z".into(),
            end: None,
            counters: Counters::default(),
            before_start: None,
            origin: Origin::Connect,
            link: None,
            verdict: None,
            rule: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn flow_id_names_the_remote_of_datagram_flows() {
        assert_eq!(FlowKey::socket(42).to_string(), "42");
        let v4 = FlowKey::datagram(7, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 53);
        assert_eq!(v4.to_string(), "7/10.0.0.2:53");
        let v6 = FlowKey::datagram(7, IpAddr::V6(Ipv6Addr::LOCALHOST), 53);
        assert_eq!(v6.to_string(), "7/[::1]:53");
    }

    #[test]
    fn proto_names() {
        assert_eq!(Proto::from_number(6).to_string(), "tcp");
        assert_eq!(Proto::from_number(58).to_string(), "icmpv6");
        assert_eq!(Proto::from_number(253).to_string(), "ip:253");
        assert_eq!(Proto::from_number(253).number(), 253);
        assert_eq!(Proto::from_number(136).to_string(), "udplite");
        assert_eq!(Proto::Ether(0x88b5).to_string(), "eth:0x88b5");
        assert_eq!(
            LinkAddrs::new(&[2, 0, 0, 0, 0, 0xab], &[0xff; 6]),
            LinkAddrs {
                local_mac: "02:00:00:00:00:ab".into(),
                remote_mac: "ff:ff:ff:ff:ff:ff".into()
            }
        );
    }

    #[test]
    fn counters_max_never_moves_backwards() {
        let a = Counters {
            tx_bytes: 10,
            rx_bytes: 1,
            ..Default::default()
        };
        let b = Counters {
            tx_bytes: 5,
            rx_bytes: 7,
            ..Default::default()
        };
        let m = a.max(b);
        assert_eq!((m.tx_bytes, m.rx_bytes), (10, 7));
    }
}
