//! Reading the store for reports: which samples fall in the window, which
//! series pass the filters, and the totals per group (and per time bucket).
//!
//! Traffic is counted from the samples, not from the flow rows: a sample is
//! counted whole in a window when its bucket starts in it (`since <= bucket <
//! until`), so a long-lived flow is split over time at the sample width
//! (10 seconds, or 1 hour for samples rolled up by retention).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use rusqlite::Connection;

use crate::error::StoreError;
use crate::services;
use crate::timespec::bucket_start;

/// What a report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum GroupBy {
    /// Full path of the executable.
    Exe,
    /// One process (pid and command name).
    Process,
    /// User name (or uid when the name is unknown).
    User,
    /// cgroup path (container, service).
    Cgroup,
    /// Remote IP address.
    Remote,
    /// Remote host name (from DNS answers), or the address when unknown.
    Host,
    /// Service port: the remote port of outgoing flows, the local port of incoming ones.
    Port,
    /// tcp, udp, icmp, ...
    Proto,
    /// out, in or unknown.
    Direction,
}

impl GroupBy {
    /// The columns this grouping adds to a report.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            GroupBy::Exe => &["exe"],
            GroupBy::Process => &["pid", "comm"],
            GroupBy::User => &["user"],
            GroupBy::Cgroup => &["cgroup"],
            GroupBy::Remote => &["remote"],
            GroupBy::Host => &["host"],
            GroupBy::Port => &["port", "service"],
            GroupBy::Proto => &["proto"],
            GroupBy::Direction => &["direction"],
        }
    }
}

/// One value of a group key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    fn text(s: Option<&str>) -> Cell {
        s.map_or(Cell::Null, |s| Cell::Text(s.to_string()))
    }
}

/// What a series (process, remote, port, proto, direction) is.
#[derive(Debug, Clone, Default)]
pub struct SeriesInfo {
    pub exe: Option<String>,
    pub pid: Option<i64>,
    pub comm: Option<String>,
    pub uid: Option<i64>,
    pub user: Option<String>,
    pub cgroup: Option<String>,
    pub remote_ip: String,
    pub remote_name: Option<String>,
    pub port: u16,
    pub proto: String,
    pub direction: String,
}

impl SeriesInfo {
    fn user_label(&self) -> Option<String> {
        self.user
            .clone()
            .or_else(|| self.uid.map(|u| u.to_string()))
    }

    /// The group key of this series for `by`.
    pub fn key(&self, by: &[GroupBy]) -> Vec<Cell> {
        let mut k = Vec::with_capacity(by.len() + 1);
        for g in by {
            match g {
                GroupBy::Exe => k.push(Cell::text(self.exe.as_deref())),
                GroupBy::Process => {
                    k.push(self.pid.map_or(Cell::Null, Cell::Int));
                    k.push(Cell::text(self.comm.as_deref()));
                }
                GroupBy::User => k.push(Cell::text(self.user_label().as_deref())),
                GroupBy::Cgroup => k.push(Cell::text(self.cgroup.as_deref())),
                GroupBy::Remote => k.push(Cell::Text(self.remote_ip.clone())),
                GroupBy::Host => k.push(Cell::Text(
                    self.remote_name
                        .clone()
                        .unwrap_or_else(|| self.remote_ip.clone()),
                )),
                GroupBy::Port => {
                    k.push(Cell::Int(i64::from(self.port)));
                    k.push(Cell::text(services::service_name(self.port)));
                }
                GroupBy::Proto => k.push(Cell::Text(self.proto.clone())),
                GroupBy::Direction => k.push(Cell::Text(self.direction.clone())),
            }
        }
        k
    }
}

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
}

impl Filters {
    pub fn matches(&self, s: &SeriesInfo) -> bool {
        if let Some(want) = &self.exe {
            let ok = s.exe.as_deref().is_some_and(|e| {
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
        if let Some(want) = &self.host {
            let want = want.trim_end_matches('.').to_ascii_lowercase();
            let ok = match &s.remote_name {
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
            .is_some_and(|p| !p.eq_ignore_ascii_case(&s.proto))
        {
            return false;
        }
        if let Some(u) = &self.user {
            let by_name = s.user.as_deref() == Some(u.as_str());
            let by_uid = u.parse::<i64>().ok().is_some_and(|n| s.uid == Some(n));
            if !(by_name || by_uid) {
                return false;
            }
        }
        true
    }
}

/// Totals of one group (and one time bucket, in a timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Start of the time bucket (seconds since the epoch), in a timeline.
    pub bucket: Option<i64>,
    pub key: Vec<Cell>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl Row {
    pub fn total(&self) -> u64 {
        self.tx_bytes.saturating_add(self.rx_bytes)
    }
}

/// Loads what the given series are.
fn load_series(
    conn: &Connection,
    ids: &HashSet<i64>,
) -> Result<HashMap<i64, SeriesInfo>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    let sql = "SELECT s.series_id, s.remote_ip, s.remote_name, s.port, s.proto, s.direction,
                      p.pid, p.comm, p.uid, p.user, p.cgroup, e.path
               FROM series s
               LEFT JOIN processes p ON p.process_id = s.process_id
               LEFT JOIN executables e ON e.exe_id = p.exe_id";
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, SeriesInfo)> {
        Ok((
            r.get(0)?,
            SeriesInfo {
                remote_ip: r.get(1)?,
                remote_name: r.get(2)?,
                port: r.get::<_, i64>(3)?.clamp(0, 65_535) as u16,
                proto: r.get(4)?,
                direction: r.get(5)?,
                pid: r.get(6)?,
                comm: r.get(7)?,
                uid: r.get(8)?,
                user: r.get(9)?,
                cgroup: r.get(10)?,
                exe: r.get(11)?,
            },
        ))
    };
    // A few series: look them up one by one; many: read them all once.
    if ids.len() < 2_000 {
        let mut stmt = conn.prepare(&format!("{sql} WHERE s.series_id = ?1"))?;
        for id in ids {
            let mut rows = stmt.query_map([id], read)?;
            if let Some(r) = rows.next() {
                let (id, info) = r?;
                out.insert(id, info);
            }
        }
    } else {
        let mut stmt = conn.prepare(sql)?;
        for r in stmt.query_map([], read)? {
            let (id, info) = r?;
            if ids.contains(&id) {
                out.insert(id, info);
            }
        }
    }
    Ok(out)
}

/// The query of a report.
#[derive(Debug, Clone)]
pub struct Query {
    /// Samples whose bucket starts in `[since, until)` (seconds since the epoch).
    pub since: i64,
    pub until: i64,
    pub by: Vec<GroupBy>,
    pub filters: Filters,
    /// Per time bucket of this many seconds, or totals over the window.
    pub bucket: Option<i64>,
}

/// Runs `q`: one row per group (per time bucket in a timeline), sorted by
/// time, then by total bytes (largest first), then by key.
pub fn run(conn: &Connection, q: &Query) -> Result<Vec<Row>, StoreError> {
    let width = q.bucket.unwrap_or(0).max(0);
    // Sum per (time bucket, series) in SQL, then map series to groups here.
    let mut stmt = conn.prepare_cached(
        "SELECT CASE WHEN ?3 > 0 THEN bucket - (bucket % ?3) ELSE 0 END AS b,
                series_id, sum(tx_bytes), sum(rx_bytes)
         FROM samples WHERE bucket >= ?1 AND bucket < ?2
         GROUP BY b, series_id",
    )?;
    let mut per_series: Vec<(i64, i64, u64, u64)> = Vec::new();
    let mut ids = HashSet::new();
    for r in stmt.query_map([q.since, q.until, width], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get::<_, i64>(3)?.max(0) as u64,
        ))
    })? {
        let r = r?;
        ids.insert(r.1);
        per_series.push(r);
    }
    let series = load_series(conn, &ids)?;
    let mut groups: HashMap<(i64, Vec<Cell>), (u64, u64)> = HashMap::new();
    for (b, id, tx, rx) in per_series {
        let Some(info) = series.get(&id) else {
            continue;
        };
        if !q.filters.matches(info) {
            continue;
        }
        let b = if width > 0 { bucket_start(b, width) } else { 0 };
        let g = groups.entry((b, info.key(&q.by))).or_default();
        g.0 = g.0.saturating_add(tx);
        g.1 = g.1.saturating_add(rx);
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|((b, key), (tx, rx))| Row {
            bucket: (width > 0).then_some(b),
            key,
            tx_bytes: tx,
            rx_bytes: rx,
        })
        .collect();
    rows.sort_by(|a, b| {
        a.bucket
            .cmp(&b.bucket)
            .then(b.total().cmp(&a.total()))
            .then_with(|| a.key.cmp(&b.key))
    });
    Ok(rows)
}

/// Keeps the `n` groups with the most traffic over all rows (all buckets).
pub fn top_groups(rows: &[Row], n: usize) -> Vec<Vec<Cell>> {
    let mut totals: HashMap<&Vec<Cell>, u64> = HashMap::new();
    for r in rows {
        *totals.entry(&r.key).or_default() += r.total();
    }
    let mut v: Vec<(&Vec<Cell>, u64)> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(k, _)| k.clone()).collect()
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
            exe: Some("/usr/bin/curl".into()),
            uid: Some(1000),
            user: Some("alice".into()),
            remote_ip: "93.184.216.34".into(),
            remote_name: Some("www.example.com".into()),
            port: 443,
            proto: "tcp".into(),
            direction: "out".into(),
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
}
