//! `--resolve`: names for remotes that no DNS answer named, from the hosts
//! file and reverse (PTR) lookups.
//!
//! procflow makes no lookup unless asked. When asked, lookups run on their
//! own thread and never hold up recording: the collector hands addresses
//! over without waiting, and names that come back are used in the flows'
//! next records. A flow that opens and closes before its lookup answers is
//! recorded without the name; later flows to the same address get it at
//! once.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use procflow_core::dns::{parse_ptr, ptr_query, PtrAnswer};
use serde_json::json;

#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    /// Name remotes that no DNS answer named: from /etc/hosts, then by
    /// reverse (PTR) lookups. Off by default: without it procflow sends no
    /// queries.
    #[arg(long)]
    resolve: bool,
    /// A name server for --resolve (ADDR or ADDR:PORT; repeat for several).
    /// Default: the nameserver lines of /etc/resolv.conf.
    #[arg(long, value_name = "ADDR", requires = "resolve", value_parser = parse_server)]
    pub(crate) resolver: Vec<SocketAddr>,
}

fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not a name server address (e.g. 192.0.2.53, [2001:db8::53]:53)"
    ))
}

/// The name servers of a resolv.conf text, port 53, in order (glibc uses
/// at most three). Link-local IPv6 servers with a zone are left out.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver").then_some(())?;
            f.next()?.parse::<IpAddr>().ok()
        })
        .take(3)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The first name of every address in a hosts file text.
pub fn hosts_names(text: &str) -> HashMap<IpAddr, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut f = line.split_whitespace();
        let (Some(addr), Some(name)) = (f.next(), f.next()) else {
            continue;
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            m.entry(ip).or_insert_with(|| name.to_ascii_lowercase());
        }
    }
    m
}

/// Whether a PTR answer looks like a host name (letters, digits, '-', '_'
/// and dots), so that what a server sends cannot put control characters or
/// markup into records and reports.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Counters for the stats record.
#[derive(Debug, Default)]
struct Counters {
    asked: AtomicU64,
    from_hosts: AtomicU64,
    named: AtomicU64,
    no_name: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Addresses waiting to be handed to the lookup thread, at most.
const QUEUE: usize = 4096;
/// An address is looked up again after this long.
const REASK_AFTER: Duration = Duration::from_secs(3600);
/// Addresses remembered as asked, before that memory starts over.
const MAX_ASKED: usize = 100_000;

/// The collector's side: hands addresses over, takes names back.
pub struct Resolver {
    requests: SyncSender<IpAddr>,
    names: Receiver<(IpAddr, String)>,
    asked: HashMap<IpAddr, Instant>,
    counters: Arc<Counters>,
    servers: Vec<SocketAddr>,
}

impl Resolver {
    /// Starts the lookup thread, or returns None without `--resolve`.
    pub fn start(args: &ResolveArgs) -> Result<Option<Resolver>> {
        if !args.resolve {
            return Ok(None);
        }
        let servers = if args.resolver.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            nameservers(&text)
        } else {
            args.resolver.clone()
        };
        if servers.is_empty() {
            tracing::warn!(
                "--resolve: no name server in /etc/resolv.conf (and no --resolver); \
                 names come from /etc/hosts only"
            );
        }
        let socket = open_socket(&servers)?;
        let (req_tx, req_rx) = mpsc::sync_channel(QUEUE);
        let (name_tx, name_rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let mut worker = Worker {
            requests: req_rx,
            names: name_tx,
            counters: Arc::clone(&counters),
            servers: servers.clone(),
            socket,
            hosts: Hosts::new(PathBuf::from("/etc/hosts")),
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            rng: Rng::seeded(),
        };
        std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || worker.run())
            .context("starting the lookup thread")?;
        tracing::info!("--resolve: name servers {servers:?}");
        Ok(Some(Resolver {
            requests: req_tx,
            names: name_rx,
            asked: HashMap::new(),
            counters,
            servers,
        }))
    }

    /// Asks for a name for `ip`, unless it was asked recently. Never waits:
    /// when the queue is full the address is dropped (and counted) and asked
    /// again with a later flow.
    pub fn want(&mut self, ip: IpAddr) {
        if ip.is_unspecified() {
            return;
        }
        let now = Instant::now();
        if self
            .asked
            .get(&ip)
            .is_some_and(|t| now.duration_since(*t) < REASK_AFTER)
        {
            return;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.clear();
        }
        match self.requests.try_send(ip) {
            Ok(()) => {
                self.asked.insert(ip, now);
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Names found since the last call.
    pub fn answers(&mut self) -> Vec<(IpAddr, String)> {
        self.names.try_iter().collect()
    }

    pub fn stats(&self) -> serde_json::Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "servers": self.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "asked": get(&c.asked),
            "from_hosts": get(&c.from_hosts),
            "named": get(&c.named),
            "no_name": get(&c.no_name),
            "failed": get(&c.failed),
            "dropped": get(&c.dropped),
        })
    }
}

/// One socket for both families where the machine has IPv6 (servers' IPv4
/// addresses are then written as IPv4-mapped), else an IPv4 socket.
fn open_socket(servers: &[SocketAddr]) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).and_then(|s| {
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
        Ok(s)
    });
    let socket: UdpSocket = match dual {
        Ok(s) => s.into(),
        Err(e) => {
            if servers.iter().any(SocketAddr::is_ipv6) {
                bail!("--resolve: an IPv6 name server is configured but IPv6 sockets fail: {e}");
            }
            UdpSocket::bind("0.0.0.0:0").context("--resolve: opening a UDP socket")?
        }
    };
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(socket)
}

/// The hosts file, read again when it changes.
struct Hosts {
    path: PathBuf,
    names: HashMap<IpAddr, String>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Hosts {
    fn new(path: PathBuf) -> Hosts {
        Hosts {
            path,
            names: HashMap::new(),
            mtime: None,
            checked: None,
        }
    }

    fn lookup(&mut self, ip: &IpAddr) -> Option<String> {
        if self
            .checked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.checked = Some(Instant::now());
            let mtime = mtime(&self.path);
            if mtime != self.mtime {
                self.mtime = mtime;
                let text = std::fs::read_to_string(&self.path).unwrap_or_default();
                self.names = hosts_names(&text);
            }
        }
        self.names.get(ip).cloned()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// xorshift64*, seeded from the kernel: query ids that an off-path sender
/// cannot guess.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut b = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
        Rng(u64::from_ne_bytes(b) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Queries sent and not answered yet, at most.
const IN_FLIGHT: usize = 64;
/// How long a server has to answer one query.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Queries per server for one address before giving up.
const ATTEMPTS: usize = 2;

struct Query {
    ip: IpAddr,
    /// Queries sent so far for this address; the server is `sent % servers`.
    sent: usize,
    deadline: Instant,
}

struct Worker {
    requests: Receiver<IpAddr>,
    names: mpsc::Sender<(IpAddr, String)>,
    counters: Arc<Counters>,
    servers: Vec<SocketAddr>,
    socket: UdpSocket,
    hosts: Hosts,
    waiting: VecDeque<IpAddr>,
    in_flight: HashMap<u16, Query>,
    rng: Rng,
}

impl Worker {
    fn run(&mut self) {
        loop {
            // Idle: wait for work; the collector going away ends the thread.
            if self.waiting.is_empty() && self.in_flight.is_empty() {
                match self.requests.recv_timeout(Duration::from_secs(1)) {
                    Ok(ip) => self.take(ip),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // The queue is bounded here too: past QUEUE waiting addresses
            // the channel fills and the collector drops (and counts) more.
            while self.waiting.len() < QUEUE {
                let Ok(ip) = self.requests.try_recv() else {
                    break;
                };
                self.take(ip);
            }
            while self.in_flight.len() < IN_FLIGHT {
                let Some(ip) = self.waiting.pop_front() else {
                    break;
                };
                self.send(ip, 0);
            }
            if !self.in_flight.is_empty() {
                self.receive();
                self.expire();
            }
        }
    }

    fn take(&mut self, ip: IpAddr) {
        self.counters.asked.fetch_add(1, Ordering::Relaxed);
        if let Some(name) = self.hosts.lookup(&ip) {
            self.counters.from_hosts.fetch_add(1, Ordering::Relaxed);
            let _ = self.names.send((ip, name));
        } else if self.servers.is_empty() {
            self.counters.no_name.fetch_add(1, Ordering::Relaxed);
        } else {
            self.waiting.push_back(ip);
        }
    }

    /// Sends query number `sent` for `ip` (the server rotates), or gives up.
    fn send(&mut self, ip: IpAddr, sent: usize) {
        if sent >= self.servers.len() * ATTEMPTS {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let server = self.servers[sent % self.servers.len()];
        let mut id = self.rng.next() as u16;
        while self.in_flight.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        let to = match (self.socket.local_addr(), server) {
            (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => server,
        };
        if let Err(e) = self.socket.send_to(&ptr_query(id, &ip), to) {
            tracing::debug!("--resolve: sending to {server}: {e}");
        }
        self.in_flight.insert(
            id,
            Query {
                ip,
                sent: sent + 1,
                deadline: Instant::now() + TIMEOUT,
            },
        );
    }

    /// Reads answers for up to 50 ms.
    fn receive(&mut self) {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                return;
            };
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            let msg = &buf[..n];
            let Some(id) = msg.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                continue;
            };
            let Some(q) = self.in_flight.get(&id) else {
                continue;
            };
            let server = self.servers[(q.sent - 1) % self.servers.len()];
            if from != server {
                continue;
            }
            let ip = q.ip;
            match parse_ptr(msg, id, &ip) {
                None => continue,
                Some(PtrAnswer::Name(name)) if plausible_name(&name) => {
                    self.in_flight.remove(&id);
                    self.counters.named.fetch_add(1, Ordering::Relaxed);
                    let _ = self.names.send((ip, name));
                }
                Some(PtrAnswer::Name(_) | PtrAnswer::NoName) => {
                    self.in_flight.remove(&id);
                    self.counters.no_name.fetch_add(1, Ordering::Relaxed);
                }
                Some(PtrAnswer::Failed) => {
                    let sent = q.sent;
                    self.in_flight.remove(&id);
                    self.send(ip, sent);
                }
            }
            if self.in_flight.is_empty() {
                return;
            }
        }
    }

    /// Queries past their deadline go to the next server, or give up.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u16> = self
            .in_flight
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(q) = self.in_flight.remove(&id) {
                self.send(q.ip, q.sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_servers() {
        let text = "# generated\nsearch example.test\nnameserver 192.0.2.53\n\
                    nameserver 2001:db8::53\nnameserver fe80::1%eth0\n\
                    options edns0\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n";
        let s = nameservers(text);
        assert_eq!(
            s,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "192.0.2.54:53".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn hosts_file_first_name_wins() {
        let text = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n\
                    # 192.0.2.9 commented.test\n192.0.2.10 Box.Test box # x\n\
                    192.0.2.10 later.test\nbad line\n";
        let h = hosts_names(text);
        assert_eq!(h[&"127.0.0.1".parse().unwrap()], "localhost");
        assert_eq!(h[&"::1".parse().unwrap()], "localhost");
        assert_eq!(h[&"192.0.2.10".parse().unwrap()], "box.test");
        assert!(!h.contains_key(&"192.0.2.9".parse().unwrap()));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn server_arguments() {
        assert_eq!(
            parse_server("192.0.2.1"),
            Ok("192.0.2.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("[2001:db8::1]"),
            Ok("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("2001:db8::1"),
            Ok("[2001:db8::1]:53".parse().unwrap())
        );
        assert!(parse_server("ns.example.test").is_err());
    }

    #[test]
    fn only_host_names_are_taken() {
        assert!(plausible_name("host-1.example.test"));
        assert!(!plausible_name("evil\n{}.test"));
        assert!(!plausible_name("<b>.test"));
        assert!(!plausible_name(""));
    }
}
