//! procflow's pure logic: flow keys and records, process identity, and the
//! flow table that turns kernel events into flow records.
//!
//! This crate does no I/O and depends on no other crate of procflow. Time is
//! passed in by the caller; the kernel is reached only through the events that
//! the `bpf` crate decodes into [`event::FlowEvent`].
#![forbid(unsafe_code)]

pub mod dns;
pub mod enforcement;
pub mod event;
pub mod flow;
pub mod flow_table;
pub mod identity;
pub mod live;
pub mod rules;
pub mod services;
pub mod timefmt;

pub use enforcement::{RulesOutcome, RulesRecord, VerdictRecord};
pub use event::FlowEvent;
pub use flow::{Counters, Direction, FlowInfo, FlowKey, FlowRecord, Origin, Proto};
pub use flow_table::FlowTable;
pub use identity::{Owner, ProcessIdentity};
