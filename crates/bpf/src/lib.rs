//! procflow's kernel side: the eBPF programs (C, in `bpf/`), their loader,
//! feature probing, the start-up scan and event decoding.
//!
//! This is the only crate with C, clang, libbpf or `unsafe`. It hands the
//! rest of procflow kernel-free [`procflow_core::FlowEvent`]s.

pub mod cgroup;
pub mod decode;
pub mod loader;
pub mod policy;
mod ring;
pub mod scan;
pub mod sock_destroy;

#[allow(
    clippy::all,
    unsafe_op_in_unsafe_fn,
    missing_debug_implementations,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/procflow.skel.rs"));
}

pub use loader::{
    DatagramSweep, Dump, Kernel, KernelStats, Refused, DATAGRAM_TABLE_CAPACITY, RING_BUFFER_SIZE,
};
pub use scan::ScanReport;

/// One record from the kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(procflow_core::FlowEvent),
    /// A datagram socket was released: its flows end; their final counters
    /// are read from the datagram table, and a UDP socket's first remote's
    /// (its slot flow, counted in the socket's context) come with it.
    Release {
        cookie: u64,
        end_ns: u64,
        slot: Option<procflow_core::event::FlowView>,
    },
    /// A rule (or the default) decided a connection (see [`policy`]).
    Verdict(policy::KernelVerdict),
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("procflow must run as root (it loads eBPF programs); try: sudo procflow ...")]
    NotRoot,
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing); procflow needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("cgroup v2: {0}")]
    Cgroup(String),
    #[error("{0}")]
    Load(String),
    #[error("start-up scan: {0}")]
    Scan(String),
    /// A rule set that does not fit the kernel's tables.
    #[error("rules: {0}")]
    Rules(String),
}
