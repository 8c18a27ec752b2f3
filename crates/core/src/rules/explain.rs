//! `procflow rules explain`: which rule decides a connection, and for every
//! rule before it, which of its conditions did not hold.
//!
//! The decision shown is the compiled matcher's (what the kernel would do);
//! the reasons come from the reference evaluator. Should the two ever
//! disagree, the explanation says so instead of hiding it.

use std::fmt;
use std::net::IpAddr;

use super::compile::CompiledRules;
use super::model::{
    Action, Decision, Query, Rule, Rules, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use super::reference::{self, Condition};

/// A condition that did not hold: what the rule wants and what the
/// connection has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub condition: Condition,
    pub wanted: String,
    pub got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} wants {}, connection has {}",
            self.condition, self.wanted, self.got
        )
    }
}

/// A rule looked at before the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    pub index: usize,
    pub name: String,
    pub action: Action,
    pub line: usize,
    /// Conditions that did not hold; empty for the deciding rule.
    pub failed: Vec<Mismatch>,
    /// The rule's conditions, as `key=value` text.
    pub conditions: Vec<String>,
}

/// Why a connection gets its verdict. Displayed as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The compiled matcher's decision: what the kernel does.
    pub decision: Decision,
    /// The reference evaluator's decision; equal to `decision` unless there
    /// is a bug.
    pub reference: Decision,
    /// The connection, as text.
    pub query: String,
    /// Every rule before the deciding one, then the deciding one (or every
    /// rule when the default decides).
    pub rules: Vec<RuleOutcome>,
    pub default: Action,
}

impl Explanation {
    pub fn agrees(&self) -> bool {
        self.decision == self.reference
    }

    /// The deciding rule, if a rule decided.
    pub fn deciding_rule(&self) -> Option<&RuleOutcome> {
        let i = self.decision.rule?;
        self.rules.iter().find(|r| r.index == i)
    }
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        n => format!("ip:{n}"),
    }
}

fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(ToString::to_string).collect();
    if v.len() == 1 {
        v[0].clone()
    } else {
        format!("one of [{}]", v.join(", "))
    }
}

/// What `rule` wants for `c` and what `q` has, as text.
fn mismatch(rule: &Rule, c: Condition, q: &Query<'_>) -> Mismatch {
    let (wanted, got) = match c {
        Condition::Exe => (
            rule.exe
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            q.exe.to_string(),
        ),
        Condition::Comm => (rule.comm.clone().unwrap_or_default(), q.comm.to_string()),
        Condition::User => (
            rule.user
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            format!("uid {}", q.uid),
        ),
        Condition::Cgroup => (
            format!("{} or below", rule.cgroup.as_deref().unwrap_or_default()),
            q.cgroup().unwrap_or("(unknown)").to_string(),
        ),
        Condition::Direction => (
            rule.direction.map(|d| d.to_string()).unwrap_or_default(),
            q.direction.to_string(),
        ),
        Condition::Proto => (
            rule.proto.map(|p| p.to_string()).unwrap_or_default(),
            proto_name(q.proto),
        ),
        Condition::Remote => (list(&rule.remote), q.remote.to_string()),
        Condition::RemotePort => (list(&rule.remote_port), q.remote_port.to_string()),
        Condition::LocalPort => (list(&rule.local_port), q.local_port.to_string()),
        Condition::Family => (
            rule.family.map(|f| f.to_string()).unwrap_or_default(),
            if q.packet { "packet" } else { "ip" }.to_string(),
        ),
    };
    // A packet socket's frame has no protocol, remote or port.
    let got = if q.packet
        && matches!(
            c,
            Condition::Proto | Condition::Remote | Condition::RemotePort | Condition::LocalPort
        ) {
        "none (a packet socket)".to_string()
    } else {
        got
    };
    Mismatch {
        condition: c,
        wanted,
        got,
    }
}

/// The connection as one line of `key=value` text.
pub fn query_text(q: &Query<'_>) -> String {
    if q.packet {
        return format!(
            "exe={} comm={} uid={} cgroup={} direction={} family=packet",
            q.exe,
            q.comm,
            q.uid,
            q.cgroup().unwrap_or("(unknown)"),
            q.direction,
        );
    }
    format!(
        "exe={} comm={} uid={} cgroup={} direction={} proto={} remote={} local_port={}",
        q.exe,
        q.comm,
        q.uid,
        q.cgroup().unwrap_or("(unknown)"),
        q.direction,
        proto_name(q.proto),
        socket(q.remote, q.remote_port),
        q.local_port
    )
}

/// Explains the decision for `q`. `compiled` must come from `rules`.
pub fn explain(rules: &Rules, compiled: &CompiledRules, q: &Query<'_>) -> Explanation {
    let decision = compiled.decide(q);
    let reference = reference::decide(rules, q);
    let upto = match (decision.rule, reference.rule) {
        (Some(a), Some(b)) => a.max(b) + 1,
        _ => rules.rules.len(),
    };
    let outcomes = rules
        .rules
        .iter()
        .enumerate()
        .take(upto)
        .map(|(index, r)| RuleOutcome {
            index,
            name: r.name.clone(),
            action: r.action,
            line: r.line,
            failed: reference::failed_conditions(r, q)
                .into_iter()
                .map(|c| mismatch(r, c, q))
                .collect(),
            conditions: r.conditions_text(),
        })
        .collect();
    Explanation {
        decision,
        reference,
        query: query_text(q),
        rules: outcomes,
        default: rules.default,
    }
}

fn describe(d: &Decision, rules: &[RuleOutcome]) -> String {
    match d.rule {
        Some(i) => match rules.iter().find(|r| r.index == i) {
            Some(r) if r.line > 0 => {
                format!("{} by rule #{i} `{}` (line {})", d.action, r.name, r.line)
            }
            Some(r) => format!("{} by rule #{i} `{}`", d.action, r.name),
            None => format!("{} by rule #{i}", d.action),
        },
        None => format!("{} by default (no rule matches)", d.action),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "connection: {}", self.query)?;
        writeln!(f, "decision:   {}", describe(&self.decision, &self.rules))?;
        if !self.agrees() {
            writeln!(
                f,
                "warning:    the reference evaluator decides {} instead; the compiled \
                 matcher disagrees with it, which is a bug in procflow: please report it \
                 with this rules file",
                describe(&self.reference, &self.rules)
            )?;
        }
        if self.rules.is_empty() {
            writeln!(f, "no rules are loaded")?;
        }
        for r in &self.rules {
            let head = format!("  #{:<4} {:<5} `{}`", r.index, r.action.to_string(), r.name);
            if r.failed.is_empty() {
                let conds = if r.conditions.is_empty() {
                    "(no conditions: matches every connection)".to_string()
                } else {
                    r.conditions.join(" ")
                };
                writeln!(f, "{head}: matches: {conds}")?;
            } else {
                writeln!(f, "{head}: does not match:")?;
                for m in &r.failed {
                    writeln!(f, "           {m}")?;
                }
            }
        }
        if self.decision.rule.is_none() && !self.rules.is_empty() {
            writeln!(f, "  default: {}", self.default)?;
        }
        Ok(())
    }
}
