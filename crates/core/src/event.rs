//! Events from the kernel side, decoded and free of any kernel type.
//!
//! The `bpf` crate produces them from the ring buffer and from map dumps; the
//! flow table consumes them. Unit tests drive the flow table with scripted
//! events instead of a kernel.

use crate::flow::{BeforeStart, Counters, FlowInfo, FlowKey};
use crate::identity::{ExecInfo, Owner, ProcessKey};

/// Everything the kernel knows of one flow at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowView {
    pub key: FlowKey,
    pub info: FlowInfo,
    /// None while only softirq hooks have met the socket.
    pub owner: Option<Owner>,
    pub counters: Counters,
    pub before_start: Option<BeforeStart>,
    /// When the flow was first met, nanoseconds since the Unix epoch.
    pub start_ns: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// A flow was met for the first time.
    Open(FlowView),
    /// A fresh reading of a flow that is still open (periodic map dump).
    Update(FlowView),
    /// A flow ended; `end_ns` is when, in nanoseconds since the Unix epoch.
    Close { view: FlowView, end_ns: u64 },
    /// A process other than the recorded owner used the socket `cookie`.
    Owner { cookie: u64, owner: Owner },
    /// A process called exec; captured in the kernel at that moment.
    Exec { process: ProcessKey, info: ExecInfo },
    /// A new process (not a thread) was created by fork or clone from
    /// `parent`; captured in the kernel at that moment.
    Fork {
        child: ProcessKey,
        parent: ProcessKey,
    },
    /// A DNS query a socket sent to port 53 or a response it received
    /// from there.
    Dns(crate::dns::DnsMessage),
    /// The rules decided a flow (possibly before it is announced): its
    /// records carry `verdict` and `rule` from now on.
    Decision(Decision),
}

/// A decision of the rules, as the flow table takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub target: DecisionTarget,
    pub verdict: crate::flow::Verdict,
    /// The deciding rule's name; `None` when the default decided.
    pub rule: Option<String>,
}

/// What a decision is about.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionTarget {
    /// A flow, announced or not yet.
    Flow(FlowKey),
    /// An inbound TCP connection, decided at its SYN on the listener: the
    /// socket it is accepted on (same namespace and endpoints) carries it.
    Inbound {
        netns: u64,
        local: (std::net::IpAddr, u16),
        remote: (std::net::IpAddr, u16),
    },
}
