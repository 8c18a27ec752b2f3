//! The records of what the rules did: a `"type":"verdict"` line for every
//! blocked attempt, a `"type":"rules"` line for every load and reload of the
//! rules file. The JSON-lines log and the store carry the same fields.

use std::net::IpAddr;

use serde::Serialize;

use crate::flow::{Direction, Proto, Verdict};
use crate::identity::ProcessIdentity;

/// One `"type":"verdict"` line: a connection (or datagram, or inbound
/// packet) the kernel decided, with the process that made it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339, when the kernel decided.
    pub time: String,
    pub verdict: Verdict,
    /// The deciding rule's name; `None` when the default decided.
    pub rule: Option<String>,
    /// The deciding rule's index in its rule set.
    pub rule_index: Option<usize>,
    /// The rule set that decided (see [`RulesRecord::generation`]).
    pub generation: u64,
    /// The hook that decided: `connect`, `sendmsg`, `egress`, `ingress`.
    pub hook: &'static str,
    pub proto: Proto,
    pub family: u8,
    /// `out` or `in`.
    pub direction: Direction,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub process: ProcessIdentity,
    pub netns: u64,
    /// The socket's cookie (the `flow_id` of its TCP flow).
    pub socket: u64,
}

impl VerdictRecord {
    pub const KIND: &'static str = "verdict";

    /// The port that names the service: the remote port of outgoing
    /// attempts, the local port of incoming ones.
    pub fn service_port(&self) -> u16 {
        match self.direction {
            Direction::In => self.local_port,
            Direction::Out | Direction::Unknown => self.remote_port,
        }
    }
}

/// Whether a rules file was put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesOutcome {
    /// The file's rules are in force from this record on.
    Accepted,
    /// The file was refused; the rules in force before stay in force.
    Refused,
}

impl RulesOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RulesOutcome::Accepted => "accepted",
            RulesOutcome::Refused => "refused",
        }
    }
}

/// One `"type":"rules"` line: the acknowledgement of a load (at start) or
/// reload (SIGHUP) of the rules file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RulesRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339.
    pub time: String,
    /// The rule set in force after this record: 1 for the first set
    /// accepted in a run, one more for every set accepted after it; a
    /// refusal repeats the generation that stays in force (0: none).
    pub generation: u64,
    pub outcome: RulesOutcome,
    /// The rules file.
    pub path: String,
    /// How many rules the set in force after this record has.
    pub rules: usize,
    /// Why the file was refused: `file:line:column: message`, one line per
    /// problem; `None` when accepted.
    pub error: Option<String>,
}

impl RulesRecord {
    pub const KIND: &'static str = "rules";
}
