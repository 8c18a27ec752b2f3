//! Rules that can never decide anything because an earlier rule matches
//! every connection they match. Not an error (a file may keep a rule for
//! later), but `procflow rules check` warns about it.
//!
//! The test is conservative: a reported rule is surely shadowed; a shadowed
//! rule may go unreported when it is covered only by several earlier rules
//! together.

use super::model::{cgroup_covers, ExePattern, IpPrefix, PortRange, ProtoMatch, Rule, Rules};

/// Whether every path `a` matches is matched by `b`.
fn exe_covers(b: &ExePattern, a: &ExePattern) -> bool {
    use ExePattern::*;
    match (b, a) {
        (Exact(x), Exact(y)) => x == y,
        (Prefix(p), Exact(y) | Prefix(y)) => y.starts_with(p.as_str()),
        (Suffix(s), Exact(y) | Suffix(y)) => y.ends_with(s.as_str()),
        (Prefix(p), Suffix(_)) => p.is_empty(),
        (Suffix(s), Prefix(_)) => s.is_empty(),
        (Exact(_), _) => false,
    }
}

fn opt_covers<T>(b: &Option<T>, a: &Option<T>, covers: impl Fn(&T, &T) -> bool) -> bool {
    match (b, a) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => covers(x, y),
    }
}

fn prefixes_cover(b: &[IpPrefix], a: &[IpPrefix]) -> bool {
    b.is_empty() || (!a.is_empty() && a.iter().all(|p| b.iter().any(|q| q.covers(p))))
}

fn ports_cover(b: &[PortRange], a: &[PortRange]) -> bool {
    b.is_empty()
        || (!a.is_empty()
            && a.iter()
                .all(|r| b.iter().any(|s| s.lo <= r.lo && r.hi <= s.hi)))
}

/// Whether every connection `later` matches is matched by `earlier`.
pub fn covers(earlier: &Rule, later: &Rule) -> bool {
    let proto = |p: &Option<ProtoMatch>| p.filter(|p| *p != ProtoMatch::Any);
    opt_covers(&earlier.exe, &later.exe, exe_covers)
        && opt_covers(&earlier.comm, &later.comm, |x, y| x == y)
        && opt_covers(&earlier.user, &later.user, |x, y| x.uid == y.uid)
        && opt_covers(&earlier.cgroup, &later.cgroup, |x, y| cgroup_covers(x, y))
        && opt_covers(&earlier.direction, &later.direction, |x, y| x == y)
        && opt_covers(&proto(&earlier.proto), &proto(&later.proto), |x, y| x == y)
        && opt_covers(&earlier.family, &later.family, |x, y| x == y)
        && prefixes_cover(&earlier.remote, &later.remote)
        && ports_cover(&earlier.remote_port, &later.remote_port)
        && ports_cover(&earlier.local_port, &later.local_port)
}

/// Comparisons the shadowing analysis makes at most (a rule against an
/// earlier one costs one, plus the products of their `remote`, `remote_port`
/// and `local_port` list lengths). Rules are at most 1,024, so only long
/// lists reach it; the analysis then stops and the warnings say so.
pub const SHADOW_BUDGET: u64 = 50_000_000;

fn cost(a: &Rule, b: &Rule) -> u64 {
    let n = |x: usize, y: usize| (x as u64) * (y as u64);
    1 + n(a.remote.len(), b.remote.len())
        + n(a.remote_port.len(), b.remote_port.len())
        + n(a.local_port.len(), b.local_port.len())
}

/// What the shadowing analysis found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shadowing {
    /// `(shadowed, by)` pairs, where rule `by` comes first and matches
    /// everything rule `shadowed` matches.
    pub pairs: Vec<(usize, usize)>,
    /// The first rule not analysed, when the analysis hit its budget.
    pub stopped_at: Option<usize>,
}

impl Rules {
    /// Rules that can never decide: `(shadowed, by)` pairs, where rule
    /// `by` comes first and matches everything rule `shadowed` matches.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        self.shadowing(SHADOW_BUDGET).pairs
    }

    /// The shadowing analysis, making at most `budget` comparisons (see
    /// [`SHADOW_BUDGET`]).
    pub fn shadowing(&self, budget: u64) -> Shadowing {
        let mut out = Shadowing::default();
        let mut spent = 0u64;
        for (j, later) in self.rules.iter().enumerate() {
            let mut by = None;
            for (i, e) in self.rules[..j].iter().enumerate() {
                spent += cost(e, later);
                if spent > budget {
                    out.stopped_at = Some(j);
                    return out;
                }
                if covers(e, later) {
                    by = Some(i);
                    break;
                }
            }
            if let Some(i) = by {
                out.pairs.push((j, i));
            }
        }
        out
    }

    /// Warnings for `procflow rules check`, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings_within(SHADOW_BUDGET)
    }

    pub(crate) fn warnings_within(&self, budget: u64) -> Vec<String> {
        let s = self.shadowing(budget);
        let mut out: Vec<String> = s
            .pairs
            .into_iter()
            .map(|(j, i)| {
                let (a, b) = (&self.rules[j], &self.rules[i]);
                format!(
                    "{}:{}: rule #{j} `{}` can never match: rule #{i} `{}` (line {}) \
                     comes first and matches every connection it would",
                    self.source, a.line, a.name, b.name, b.line
                )
            })
            .collect();
        if let Some(j) = s.stopped_at {
            let r = &self.rules[j];
            out.push(format!(
                "{}:{}: shadowing not checked from rule #{j} `{}` on: the rules' address and \
                 port lists are too long to compare within {budget} comparisons",
                self.source, r.line, r.name
            ));
        }
        out
    }
}
