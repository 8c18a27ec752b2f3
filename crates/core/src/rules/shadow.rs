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

impl Rules {
    /// Rules that can never decide: `(shadowed, by)` pairs, where rule
    /// `by` comes first and matches everything rule `shadowed` matches.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (j, later) in self.rules.iter().enumerate() {
            if let Some(i) = self.rules[..j].iter().position(|e| covers(e, later)) {
                out.push((j, i));
            }
        }
        out
    }

    /// Warnings for `procflow rules check`, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.shadowed()
            .into_iter()
            .map(|(j, i)| {
                let (a, b) = (&self.rules[j], &self.rules[i]);
                format!(
                    "{}:{}: rule #{j} `{}` can never match: rule #{i} `{}` (line {}) \
                     comes first and matches every connection it would",
                    self.source, a.line, a.name, b.name, b.line
                )
            })
            .collect()
    }
}
