//! The reference evaluator: rules walked in order, each condition checked
//! directly (string operations for `exe`, arithmetic for prefixes, path
//! components for cgroups). It is the definition the compiled matcher is
//! tested against, and what `explain` uses to say why a rule did not match.

use std::fmt;

use super::model::{cgroup_covers, normalize_ip, Decision, Query, Rule, Rules, MAX_COMM};

/// A condition of a rule, named by its key in the rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    Exe,
    Comm,
    User,
    Cgroup,
    Direction,
    Proto,
    Remote,
    RemotePort,
    LocalPort,
    Family,
}

impl Condition {
    /// Every condition, in the order of [`super::CompiledRules::masks`].
    pub const ALL: [Condition; 10] = [
        Condition::Exe,
        Condition::Comm,
        Condition::User,
        Condition::Cgroup,
        Condition::Direction,
        Condition::Proto,
        Condition::Remote,
        Condition::RemotePort,
        Condition::LocalPort,
        Condition::Family,
    ];

    /// The key in the rules file.
    pub fn key(self) -> &'static str {
        match self {
            Condition::Exe => "exe",
            Condition::Comm => "comm",
            Condition::User => "user",
            Condition::Cgroup => "cgroup",
            Condition::Direction => "direction",
            Condition::Proto => "proto",
            Condition::Remote => "remote",
            Condition::RemotePort => "remote_port",
            Condition::LocalPort => "local_port",
            Condition::Family => "family",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Whether `rule`'s condition `c` holds for `q` (an absent condition holds).
/// A packet socket's frame has no protocol, remote or port: a `proto`
/// (other than `any`), `remote` or port condition never holds for it.
pub fn condition_holds(rule: &Rule, c: Condition, q: &Query<'_>) -> bool {
    if q.packet {
        match c {
            Condition::Proto => {
                return rule
                    .proto
                    .is_none_or(|p| p == super::model::ProtoMatch::Any)
            }
            Condition::Remote => return rule.remote.is_empty(),
            Condition::RemotePort => return rule.remote_port.is_empty(),
            Condition::LocalPort => return rule.local_port.is_empty(),
            _ => {}
        }
    }
    match c {
        // An unknown program (empty exe: the kernel could not name it with
        // trust) or the dynamic loader: every block rule with an exe
        // condition holds; the loader also matches patterns naming it.
        Condition::Exe => rule.exe.as_ref().is_none_or(|p| {
            let unknown = q.exe.is_empty() || super::compile::LOADERS.contains(&q.exe);
            (unknown && rule.action == super::model::Action::Block)
                || (!q.exe.is_empty() && p.matches(q.exe))
        }),
        Condition::Comm => rule.comm.as_ref().is_none_or(|c| {
            let b = q.comm.as_bytes();
            c.as_bytes() == &b[..b.len().min(MAX_COMM)]
        }),
        Condition::User => rule.user.as_ref().is_none_or(|u| u.uid == q.uid),
        Condition::Cgroup => rule
            .cgroup
            .as_ref()
            .is_none_or(|p| q.cgroup().is_some_and(|leaf| cgroup_covers(p, leaf))),
        Condition::Direction => rule.direction.is_none_or(|d| d == q.direction),
        Condition::Proto => rule.proto.is_none_or(|p| p.matches(q.proto)),
        Condition::Remote => {
            let addr = normalize_ip(q.remote);
            rule.remote.is_empty() || rule.remote.iter().any(|p| p.contains(addr))
        }
        Condition::RemotePort => {
            rule.remote_port.is_empty()
                || rule.remote_port.iter().any(|r| r.contains(q.remote_port))
        }
        Condition::LocalPort => {
            rule.local_port.is_empty() || rule.local_port.iter().any(|r| r.contains(q.local_port))
        }
        Condition::Family => rule.family.is_none_or(|f| f.matches(q.packet)),
    }
}

/// The conditions of `rule` that do not hold for `q`; empty when it matches.
pub fn failed_conditions(rule: &Rule, q: &Query<'_>) -> Vec<Condition> {
    Condition::ALL
        .into_iter()
        .filter(|c| !condition_holds(rule, *c, q))
        .collect()
}

/// Whether every condition of `rule` holds for `q`.
pub fn rule_matches(rule: &Rule, q: &Query<'_>) -> bool {
    Condition::ALL
        .into_iter()
        .all(|c| condition_holds(rule, c, q))
}

/// The first rule that matches decides; the default decides the rest.
pub fn decide(rules: &Rules, q: &Query<'_>) -> Decision {
    match rules.rules.iter().position(|r| rule_matches(r, q)) {
        Some(i) => Decision {
            rule: Some(i),
            action: rules.rules[i].action,
        },
        None => Decision {
            rule: None,
            action: rules.default,
        },
    }
}
