//! The sender's side of the exporter: a bounded queue of messages, and
//! the transport that sends them (UDP, or TCP reconnected with backoff),
//! with the templates, the export time and the sequence numbers.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::wire::{self, Message};
use super::{IpfixStats, Transport};

/// Messages waiting for the sender at most (about 350 KiB); past that the
/// oldest are dropped and counted.
pub const QUEUE_MESSAGES: usize = 256;
/// How long the sender may go on sending what is left at stop.
const FINISH_WITHIN: Duration = Duration::from_secs(3);
/// TCP: first and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP: errors stop for this long before the collector counts as back.
const RECOVERED_AFTER: Duration = Duration::from_secs(30);

/// Messages between the meter and the sender: bounded, the oldest dropped
/// when full.
#[derive(Debug)]
pub struct SendQueue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    cap: usize,
}

#[derive(Debug, Default)]
struct QueueInner {
    items: VecDeque<Message>,
    closed: bool,
}

/// What [`SendQueue::pop`] gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    Message(Message),
    Timeout,
    /// Closed and empty.
    Closed,
}

impl SendQueue {
    pub fn new(cap: usize) -> SendQueue {
        SendQueue {
            inner: Mutex::new(QueueInner::default()),
            ready: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `m`; gives back the message dropped to make room, if any.
    pub fn push(&self, m: Message) -> Option<Message> {
        let mut g = self.lock();
        let dropped = if g.items.len() >= self.cap {
            g.items.pop_front()
        } else {
            None
        };
        g.items.push_back(m);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// The oldest message, waiting until `deadline` at most.
    pub fn pop(&self, deadline: Instant) -> Pop {
        let mut g = self.lock();
        loop {
            if let Some(m) = g.items.pop_front() {
                return Pop::Message(m);
            }
            if g.closed {
                return Pop::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Pop::Timeout;
            }
            g = self
                .ready
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// No more messages will come; what is queued can still be taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes everything queued.
    pub fn drain(&self) -> Vec<Message> {
        self.lock().items.drain(..).collect()
    }
}

/// The sequence numbers of one stream (RFC 7011 §3.1): the data records
/// sent in it before each message, modulo 2^32.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sequence(u32);

impl Sequence {
    /// The number for `m`, which then counts its records.
    pub fn next(&mut self, m: &Message) -> u32 {
        let n = self.0;
        self.0 = self.0.wrapping_add(m.records);
        n
    }
}

fn unix_secs() -> u32 {
    (crate::sinks::now_ns() / 1_000_000_000) as u32
}

/// The sender's end of the transport.
pub struct Sender {
    target: String,
    transport: Transport,
    domain: u32,
    refresh: Duration,
    queue: Arc<SendQueue>,
    stats: Arc<IpfixStats>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    seq: Sequence,
    next_templates: Instant,
    next_connect: Instant,
    backoff: Duration,
    /// A failure was logged and nothing succeeded since.
    failing: bool,
    dropped_at_failure: u64,
    last_error: Instant,
    /// Set at stop: when what is still queued is dropped.
    stop_by: Option<Instant>,
}

impl Sender {
    /// Sends what `queue` gives to `target`, over `udp` (connected) or,
    /// without it, over TCP.
    pub fn new(
        target: String,
        domain: u32,
        refresh: Duration,
        queue: Arc<SendQueue>,
        stats: Arc<IpfixStats>,
        udp: Option<UdpSocket>,
    ) -> Sender {
        let now = Instant::now();
        Sender {
            target,
            transport: if udp.is_some() {
                Transport::Udp
            } else {
                Transport::Tcp
            },
            domain,
            refresh,
            queue,
            stats,
            udp,
            tcp: None,
            seq: Sequence::default(),
            next_templates: now,
            next_connect: now,
            backoff: BACKOFF_MIN,
            failing: false,
            dropped_at_failure: 0,
            stop_by: None,
            last_error: now,
        }
    }

    /// Until the queue is closed and empty (or the time at stop is up).
    pub fn run(mut self) {
        loop {
            let now = Instant::now();
            if self.stop_by.is_none() && self.queue.is_closed() {
                // Stopping: what is queued gets a few seconds at most.
                self.stop_by = Some(now + FINISH_WITHIN);
                if let Some(t) = &self.tcp {
                    let _ = t.set_write_timeout(Some(FINISH_WITHIN));
                }
            }
            if self.stop_by.is_some_and(|d| now >= d) {
                for m in self.queue.drain() {
                    self.dropped(&m);
                }
                break;
            }
            if self.transport == Transport::Tcp && self.tcp.is_none() {
                // Disconnected: messages wait in the queue (the oldest
                // dropped when it is full) until a connection takes them.
                self.connect();
                if self.tcp.is_none() {
                    let until = self
                        .stop_by
                        .map_or(self.next_connect, |s| s.min(self.next_connect));
                    std::thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(200)),
                    );
                    continue;
                }
            }
            let deadline = match self.transport {
                Transport::Udp => self.next_templates,
                Transport::Tcp => now + Duration::from_secs(1),
            };
            let deadline = self.stop_by.map_or(deadline, |s| s.min(deadline));
            match self.queue.pop(deadline.max(now)) {
                Pop::Message(m) => self.send(m),
                Pop::Timeout => {
                    if self.transport == Transport::Udp && Instant::now() >= self.next_templates {
                        self.templates();
                    }
                }
                Pop::Closed => break,
            }
        }
        if let Some(s) = self.tcp.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn connect(&mut self) {
        if Instant::now() < self.next_connect {
            return;
        }
        let r = self
            .target
            .to_socket_addrs()
            .map_err(anyhow::Error::from)
            .and_then(|mut a| a.next().context("no address"))
            .and_then(|a| {
                let within = self.stop_by.map_or(CONNECT_TIMEOUT, |d| {
                    d.saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(10), CONNECT_TIMEOUT)
                });
                Ok(TcpStream::connect_timeout(&a, within)?)
            });
        match r {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = s.set_nodelay(true);
                self.tcp = Some(s);
                self.seq = Sequence::default();
                self.backoff = BACKOFF_MIN;
                IpfixStats::add(&self.stats.connections, 1);
                tracing::info!("ipfix: connected to {} (tcp)", self.target);
                self.templates();
            }
            Err(e) => {
                self.failed(&format!("cannot connect: {e:#}"));
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn templates(&mut self) {
        let m = wire::templates_message(self.domain);
        if self.write(m, true) {
            IpfixStats::add(&self.stats.templates_sent, 1);
        }
        self.next_templates = Instant::now() + self.refresh;
    }

    fn send(&mut self, m: Message) {
        if self.transport == Transport::Udp && Instant::now() >= self.next_templates {
            self.templates();
        }
        self.write(m, false);
    }

    /// Sends one message; false when it could not.
    fn write(&mut self, mut m: Message, template: bool) -> bool {
        let seq = self.seq.next(&m);
        wire::stamp(&mut m.bytes, unix_secs(), seq);
        let r = match (self.udp.as_ref(), self.tcp.as_mut()) {
            (Some(u), _) => u.send(&m.bytes).map(|_| ()),
            (None, Some(t)) => t.write_all(&m.bytes),
            (None, None) => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match r {
            Ok(()) => {
                IpfixStats::add(&self.stats.messages_sent, 1);
                IpfixStats::add(&self.stats.records_sent, u64::from(m.records));
                IpfixStats::add(&self.stats.bytes_sent, m.bytes.len() as u64);
                // Over UDP a send that succeeds proves little (the
                // kernel reports a collector's ICMP errors on the next
                // send): recovered only after a quiet while.
                let quiet = match self.transport {
                    Transport::Udp => RECOVERED_AFTER,
                    Transport::Tcp => Duration::ZERO,
                };
                if self.failing && self.last_error.elapsed() >= quiet {
                    self.failing = false;
                    let now = IpfixStats::get(&self.stats.messages_dropped);
                    tracing::info!(
                        "ipfix: sending to {} again ({} messages dropped meanwhile)",
                        self.target,
                        now - self.dropped_at_failure
                    );
                }
                true
            }
            Err(e) => {
                if !template {
                    self.dropped(&m);
                }
                self.failed(&format!("cannot send: {e}"));
                if self.tcp.take().is_some() {
                    self.next_connect = Instant::now() + self.backoff;
                }
                false
            }
        }
    }

    fn dropped(&self, m: &Message) {
        IpfixStats::add(&self.stats.messages_dropped, 1);
        IpfixStats::add(&self.stats.records_dropped, u64::from(m.records));
    }

    /// Logs the first failure of a run of them.
    fn failed(&mut self, what: &str) {
        self.last_error = Instant::now();
        if !self.failing {
            self.failing = true;
            self.dropped_at_failure = IpfixStats::get(&self.stats.messages_dropped);
            tracing::warn!(
                "ipfix: {}: {what}; procflow goes on, and counts the records it cannot send \
                 until the collector takes them again",
                self.target
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A message of `records` records (its bytes a bare header).
    pub(in crate::ipfix) fn msg(records: u32) -> Message {
        Message {
            bytes: vec![0; 16],
            records,
        }
    }

    #[test]
    fn the_send_queue_is_bounded_and_drops_the_oldest() {
        let q = SendQueue::new(3);
        for i in 1..=3 {
            assert_eq!(q.push(msg(i)), None);
        }
        assert_eq!(q.push(msg(4)), Some(msg(1)), "full: the oldest goes");
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(q.pop(soon), Pop::Message(msg(2)));
        q.close();
        assert_eq!(q.pop(soon), Pop::Message(msg(3)), "closed, still drained");
        assert_eq!(q.pop(soon), Pop::Message(msg(4)));
        assert_eq!(q.pop(soon), Pop::Closed);
        let q = SendQueue::new(3);
        let t = Instant::now();
        assert_eq!(q.pop(t + Duration::from_millis(30)), Pop::Timeout);
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn sequence_numbers_count_the_data_records_before_each_message() {
        let mut s = Sequence::default();
        assert_eq!(s.next(&msg(0)), 0, "templates count nothing");
        assert_eq!(s.next(&msg(5)), 0);
        assert_eq!(s.next(&msg(3)), 5);
        assert_eq!(s.next(&msg(0)), 8);
        assert_eq!(s.next(&msg(1)), 8);
        let mut s = Sequence(u32::MAX - 1);
        assert_eq!(s.next(&msg(4)), u32::MAX - 1);
        assert_eq!(s.next(&msg(1)), 2, "modulo 2^32");
    }

    /// One message from a TCP stream: (set id of its first set, sequence).
    fn read_message(s: &mut TcpStream) -> (u16, u32) {
        try_read_message(s).expect("a message")
    }

    fn try_read_message(s: &mut TcpStream) -> Option<(u16, u32)> {
        use std::io::Read;
        let mut h = [0u8; 16];
        s.read_exact(&mut h).ok()?;
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        let mut rest = vec![0u8; len - 16];
        s.read_exact(&mut rest).unwrap();
        let set = if rest.len() >= 2 {
            u16::from_be_bytes([rest[0], rest[1]])
        } else {
            0
        };
        Some((set, u32::from_be_bytes([h[8], h[9], h[10], h[11]])))
    }

    fn data(records: u32) -> Message {
        let mut m = wire::Builder::new(1);
        let p = wire::ProcFields::default();
        for _ in 0..records {
            let out = m.add(&wire::DataRecord {
                way: wire::Way::Out,
                local: ("10.0.0.1".parse().unwrap(), 1),
                remote: ("10.0.0.2".parse().unwrap(), 2),
                protocol: 6,
                octets: 1,
                packets: 1,
                start_ms: 0,
                end_ms: 0,
                reason: wire::EndReason::EndOfFlow,
                process: &p,
            });
            assert!(out.is_none());
        }
        m.take().unwrap()
    }

    #[test]
    fn over_tcp_each_connection_starts_with_the_templates_and_its_own_sequence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let queue = Arc::new(SendQueue::new(8));
        let stats = Arc::new(IpfixStats::default());
        let sender = Sender::new(
            listener.local_addr().unwrap().to_string(),
            1,
            Duration::from_secs(60),
            Arc::clone(&queue),
            Arc::clone(&stats),
            None,
        );
        let t = std::thread::spawn(move || sender.run());
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_message(&mut c), (wire::TEMPLATE_SET, 0));
        crate::ipfix::enqueue(&queue, &stats, data(3));
        crate::ipfix::enqueue(&queue, &stats, data(2));
        assert_eq!(read_message(&mut c), (256, 0));
        assert_eq!(read_message(&mut c), (256, 3));
        drop(c);
        // The sender finds the stream broken and reconnects after its
        // backoff; what it is given meanwhile waits in the queue.
        let mut pushed = 5;
        let (mut c, _) = loop {
            crate::ipfix::enqueue(&queue, &stats, data(1));
            pushed += 1;
            std::thread::sleep(Duration::from_millis(100));
            listener.set_nonblocking(true).unwrap();
            if let Ok(x) = listener.accept() {
                break x;
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            read_message(&mut c),
            (wire::TEMPLATE_SET, 0),
            "templates first on the new connection"
        );
        crate::ipfix::enqueue(&queue, &stats, data(4));
        pushed += 4;
        // Every message of the new stream: the ones that waited (one
        // record each), then the last (four).
        c.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut seqs = Vec::new();
        while let Some((set, seq)) = try_read_message(&mut c) {
            assert_eq!(set, 256);
            seqs.push(seq);
        }
        assert!(seqs.len() >= 2, "{seqs:?}");
        assert_eq!(
            seqs,
            (0..seqs.len() as u32).collect::<Vec<_>>(),
            "a new stream counts from 0"
        );
        queue.close();
        t.join().unwrap();
        assert_eq!(IpfixStats::get(&stats.connections), 2);
        assert_eq!(
            IpfixStats::get(&stats.records_sent) + IpfixStats::get(&stats.records_dropped),
            pushed,
            "every record sent or counted as dropped"
        );
    }

    #[test]
    fn a_udp_collector_gets_templates_then_data_with_sequence_numbers() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(collector.local_addr().unwrap()).unwrap();
        let queue = Arc::new(SendQueue::new(8));
        let stats = Arc::new(IpfixStats::default());
        let sender = Sender::new(
            collector.local_addr().unwrap().to_string(),
            9,
            Duration::from_secs(60),
            Arc::clone(&queue),
            Arc::clone(&stats),
            Some(udp),
        );
        let mut m = wire::templates_message(9);
        m.records = 2;
        queue.push(m.clone());
        queue.push(m.clone());
        queue.close();
        let t = std::thread::spawn(move || sender.run());
        let mut buf = [0u8; 2048];
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let n = collector.recv(&mut buf).unwrap();
            assert_eq!(n, m.bytes.len());
            assert_eq!(&buf[12..16], &9u32.to_be_bytes());
            seqs.push(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]));
        }
        t.join().unwrap();
        assert_eq!(seqs, [0, 0, 2]);
        assert_eq!(IpfixStats::get(&stats.records_sent), 4);
        assert_eq!(IpfixStats::get(&stats.templates_sent), 1);
        assert_eq!(IpfixStats::get(&stats.messages_sent), 3);
    }
}
