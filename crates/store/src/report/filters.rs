//! The filters of a report (`--exe`, `--host`, `--remote`, `--port`,
//! `--proto`, `--user`, `--rule`, `--action`): which series of traffic, and
//! which blocked attempts, a report counts.

use std::net::IpAddr;

use crate::error::StoreError;
use crate::report::query::SeriesInfo;

/// `allow` or `block`: the verdict of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Action {
    Allow,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
        }
    }
}

/// What `--rule` takes, and reports show, for decisions made by the rules'
/// default rather than by a rule.
pub const DEFAULT_RULE: &str = "(default)";

/// An address or a network (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, StoreError> {
        let bad = |r: &str| StoreError::invalid("address", s, r);
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad("bad prefix length"))?,
            None => max,
        };
        if prefix > max {
            return Err(bad("prefix length too long"));
        }
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - u32::from(prefix))
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                masked(u32::from(a).into(), 32, self.prefix)
                    == masked(u32::from(*b).into(), 32, self.prefix)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                masked(u128::from(a), 128, self.prefix) == masked(u128::from(*b), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Filters of a report; each one that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// A full path, or a file name matched against the last component.
    pub exe: Option<String>,
    /// A host name; also matches its subdomains (`example.com` matches
    /// `www.example.com`). An address matches flows without a name.
    pub host: Option<String>,
    pub remote: Option<Net>,
    pub port: Option<u16>,
    pub proto: Option<String>,
    /// A user name or a uid.
    pub user: Option<String>,
    /// The deciding rule's name, or [`DEFAULT_RULE`].
    pub rule: Option<String>,
    pub action: Option<Action>,
}

impl Filters {
    pub fn matches(&self, s: &SeriesInfo) -> bool {
        self.matches_process(s) && self.matches_series(s)
    }

    /// True when a filter looks at more than the process of a series.
    pub(crate) fn on_series(&self) -> bool {
        self.host.is_some()
            || self.remote.is_some()
            || self.port.is_some()
            || self.proto.is_some()
            || self.rule.is_some()
            || self.action.is_some()
    }

    /// The filters on what the process row says (exe, user).
    pub(crate) fn matches_process(&self, s: &SeriesInfo) -> bool {
        if let Some(want) = &self.exe {
            let ok = s.exe.is_some_and(|e| {
                if want.contains('/') {
                    e == want
                } else {
                    e.rsplit('/').next() == Some(want.as_str())
                }
            });
            if !ok {
                return false;
            }
        }
        if let Some(u) = &self.user {
            let by_name = s.user == Some(u.as_str());
            let by_uid = u.parse::<i64>().ok().is_some_and(|n| s.uid == Some(n));
            if !(by_name || by_uid) {
                return false;
            }
        }
        true
    }

    /// The filters on what the series row says (remote, port, proto, rule,
    /// action).
    pub(crate) fn matches_series(&self, s: &SeriesInfo) -> bool {
        if let Some(want) = &self.host {
            let want = want.trim_end_matches('.').to_ascii_lowercase();
            let ok = match s.remote_name {
                Some(n) => {
                    let n = n.trim_end_matches('.').to_ascii_lowercase();
                    n == want || n.ends_with(&format!(".{want}"))
                }
                None => s.remote_ip == want,
            };
            if !ok {
                return false;
            }
        }
        if let Some(net) = &self.remote {
            match s.remote_ip.parse::<IpAddr>() {
                Ok(ip) if net.contains(&ip) => {}
                _ => return false,
            }
        }
        if self.port.is_some_and(|p| p != s.port) {
            return false;
        }
        if self
            .proto
            .as_ref()
            .is_some_and(|p| !p.eq_ignore_ascii_case(s.proto))
        {
            return false;
        }
        if let Some(want) = &self.rule {
            let ok = if want == DEFAULT_RULE {
                s.verdict.is_some() && s.rule.is_none()
            } else {
                s.rule == Some(want.as_str())
            };
            if !ok {
                return false;
            }
        }
        if self.action.is_some_and(|a| s.verdict != Some(a.as_str())) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Net::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!n.contains(&"10.2.0.1".parse().unwrap()));
        assert!(!n.contains(&"::1".parse().unwrap()));
        let one = Net::parse("2001:db8::1").unwrap();
        assert!(one.contains(&"2001:db8::1".parse().unwrap()));
        assert!(!one.contains(&"2001:db8::2".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"1.2.3.4".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("example.com").is_err());
    }

    #[test]
    fn filters_match_names_paths_and_users() {
        let s = SeriesInfo {
            exe: Some("/usr/bin/curl"),
            uid: Some(1000),
            user: Some("alice"),
            remote_ip: "93.184.216.34",
            remote_name: Some("www.example.com"),
            port: 443,
            proto: "tcp",
            direction: "out",
            ..Default::default()
        };
        let f = |f: Filters| f.matches(&s);
        assert!(f(Filters {
            exe: Some("curl".into()),
            ..Default::default()
        }));
        assert!(f(Filters {
            exe: Some("/usr/bin/curl".into()),
            ..Default::default()
        }));
        assert!(!f(Filters {
            exe: Some("/bin/curl".into()),
            ..Default::default()
        }));
        assert!(f(Filters {
            host: Some("example.com".into()),
            ..Default::default()
        }));
        assert!(!f(Filters {
            host: Some("ample.com".into()),
            ..Default::default()
        }));
        assert!(f(Filters {
            user: Some("1000".into()),
            ..Default::default()
        }));
        assert!(f(Filters {
            user: Some("alice".into()),
            ..Default::default()
        }));
        assert!(!f(Filters {
            user: Some("root".into()),
            ..Default::default()
        }));
        assert!(f(Filters {
            proto: Some("TCP".into()),
            port: Some(443),
            ..Default::default()
        }));
        assert!(!f(Filters {
            port: Some(80),
            ..Default::default()
        }));
    }

    #[test]
    fn rule_and_action_filters() {
        let by_rule = SeriesInfo {
            verdict: Some("allow"),
            rule: Some("lan-ok"),
            ..Default::default()
        };
        let by_default = SeriesInfo {
            verdict: Some("block"),
            ..Default::default()
        };
        let undecided = SeriesInfo::default();
        let f = |rule: Option<&str>, action: Option<Action>| Filters {
            rule: rule.map(String::from),
            action,
            ..Default::default()
        };
        let all = [&by_rule, &by_default, &undecided];
        let hits = |f: Filters| all.iter().map(|s| f.matches(s)).collect::<Vec<_>>();
        assert_eq!(hits(f(Some("lan-ok"), None)), [true, false, false]);
        assert_eq!(hits(f(Some(DEFAULT_RULE), None)), [false, true, false]);
        assert_eq!(hits(f(None, Some(Action::Block))), [false, true, false]);
        assert_eq!(hits(f(None, Some(Action::Allow))), [true, false, false]);
        assert_eq!(
            hits(f(Some("lan-ok"), Some(Action::Block))),
            [false, false, false]
        );
    }
}
