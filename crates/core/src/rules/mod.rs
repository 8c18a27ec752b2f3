//! The rules language: allow or block connections by process and
//! destination. See `docs/rules.md` at the top of the repository for the language itself.
//!
//! A rules file goes through three stages, each a type:
//!
//! 1. [`parse_rules`] reads the TOML and checks it into [`Rules`], refusing a
//!    bad file with a [`RulesError`] that carries file, line and column for
//!    each problem;
//! 2. [`CompiledRules::compile`] turns it into the bitmask tables the kernel
//!    looks up at connect time, and [`CompiledRules::decide`] runs the
//!    kernel's algorithm over them;
//! 3. [`explain()`] says which rule decides a connection and why.
//!
//! [`reference::decide`] is the plain definition of what the rules mean; a
//! property test holds the compiled matcher to it.
//!
//! Pure logic: no I/O (user names are resolved through a [`UserLookup`] the
//! caller passes in), no `unsafe`.

mod check;
mod compile;
mod diagnostic;
pub mod explain;
mod model;
mod parse;
pub mod reference;
mod render;
mod shadow;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use check::{parse_rules, NoUsers, UserLookup};
pub use compile::{
    comm_key, exe_prefix_key, exe_suffix_key, limits, CgroupTable, CompiledRules, ExactTable,
    LpmEntry, LpmTable, Mask, PortTable, COMM_KEY_BYTES, EXE_KEY_BYTES, MASK_WORDS,
};
pub use diagnostic::{closest, line_col, write_lines, Diagnostic, RulesError};
pub use explain::{explain, Explanation, Mismatch, RuleOutcome};
pub use model::{
    cgroup_ancestors, cgroup_covers, normalize_ip, Action, Decision, Direction, ExePattern,
    FamilyMatch, IpPrefix, PortRange, ProtoMatch, Query, Rule, Rules, UserMatch, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_COMM, MAX_EXE_PATTERN, MAX_RULES,
};
pub use parse::type_name;
pub use reference::Condition;
pub use shadow::{Shadowing, SHADOW_BUDGET};
