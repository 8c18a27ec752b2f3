//! The hub: the live state and its subscribers, between the collector and
//! the API.
//!
//! The collector puts every record in ([`Hub::apply`]) and ticks it about
//! once a second; API connections take snapshots and subscriptions out.
//! Nothing taken out reaches back: a subscriber has a bounded queue, and one
//! that does not keep up is dropped (told why, counted), so a slow or stuck
//! client never slows the collector.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use procflow_core::live::{DeltaMsg, LiveState, Record, Snapshot};

/// Lines a subscriber may have waiting before it is dropped.
pub const SUBSCRIBER_QUEUE: usize = 16384;
/// Deltas kept for subscriptions that start from an earlier sequence
/// number (a snapshot just taken); fewer than a subscriber's queue holds.
pub const BACKLOG: usize = SUBSCRIBER_QUEUE / 2;
/// A viewer that asked within this long keeps the live state fresh (the
/// collector reads the kernel's counters at every tick).
const WATCHED_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct HubStats {
    pub subscribers: usize,
    pub subscribers_total: u64,
    /// Subscribers dropped because their queue was full or their
    /// connection took no line for 10 s.
    pub subscribers_dropped: u64,
    pub snapshots_served: u64,
}

#[derive(Debug)]
struct Subscriber {
    tx: SyncSender<Arc<str>>,
    /// Set when the hub drops it (its queue was full).
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

/// What an in-process consumer (an exporter) is given: every record the
/// hub applies, and every tick.
#[derive(Debug, Clone)]
pub enum Observed {
    Record(Arc<Record>),
    /// The live state was ticked at this time (Unix ns); `fresh` when the
    /// kernel's counters were read just before.
    Tick {
        now_ns: u64,
        fresh: bool,
    },
}

/// Items an observer may have waiting; past that, what it misses is
/// counted in [`Observation::lost`] (flow records are cumulative, so a
/// later record of the same flow makes up for a lost one).
pub const OBSERVER_QUEUE: usize = 65536;

#[derive(Debug)]
struct Observer {
    tx: SyncSender<Observed>,
    lost: Arc<std::sync::atomic::AtomicU64>,
}

/// An in-process consumer's side: the records and ticks, oldest first.
#[derive(Debug)]
pub struct Observation {
    pub rx: Receiver<Observed>,
    /// Items not given because the queue was full.
    pub lost: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    state: LiveState,
    observers: Vec<Observer>,
    /// Recent deltas, serialized, with their sequence numbers; kept only
    /// while someone watches.
    backlog: VecDeque<(u64, Arc<str>)>,
    subs: Vec<Subscriber>,
    stats: HubStats,
    last_asked: Option<Instant>,
    /// Ticks that read the kernel's counters (fresh snapshots).
    fresh_ticks: u64,
    want_fresh: bool,
}

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    ticked: Condvar,
}

/// A subscription: the lines to send, oldest first; the sender is dropped
/// (the channel disconnects) when the subscriber fell behind.
#[derive(Debug)]
pub struct Subscription {
    pub rx: Receiver<Arc<str>>,
    /// The hub dropped this subscriber (and counted it).
    pub dropped: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a subscription from a sequence number cannot start.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    /// The oldest sequence number that can still be sent (after - 1).
    pub oldest: u64,
    pub current: u64,
}

impl Hub {
    pub fn new(started_ns: u64) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                state: LiveState::new(started_ns),
                observers: Vec::new(),
                backlog: VecDeque::new(),
                subs: Vec::new(),
                stats: HubStats::default(),
                last_asked: None,
                fresh_ticks: 0,
                want_fresh: false,
            }),
            ticked: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; go on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a viewer asked recently or is subscribed: then the collector
    /// reads the kernel's counters at every tick.
    pub fn watched(&self) -> bool {
        let g = self.lock();
        !g.subs.is_empty()
            || g.want_fresh
            || g.last_asked.is_some_and(|t| t.elapsed() < WATCHED_FOR)
    }

    fn publish(g: &mut Inner, deltas: Vec<DeltaMsg>) {
        let watched = !g.subs.is_empty() || g.last_asked.is_some_and(|t| t.elapsed() < WATCHED_FOR);
        if deltas.is_empty() || !watched {
            if !watched {
                g.backlog.clear();
            }
            return;
        }
        for d in deltas {
            let mut line = serde_json::to_string(&d).unwrap_or_default();
            line.push('\n');
            let line: Arc<str> = line.into();
            let mut dropped = 0;
            g.subs.retain(|s| match s.tx.try_send(Arc::clone(&line)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.dropped.store(true, std::sync::atomic::Ordering::Relaxed);
                    dropped += 1;
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
            g.stats.subscribers_dropped += dropped;
            if g.backlog.len() >= BACKLOG {
                g.backlog.pop_front();
            }
            g.backlog.push_back((d.seq, line));
        }
        g.stats.subscribers = g.subs.len();
    }

    fn observe_item(g: &mut Inner, item: Observed) {
        g.observers.retain(|o| match o.tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                o.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// A record from the collector.
    pub fn apply(&self, rec: &Record) {
        let mut g = self.lock();
        let deltas = g.state.apply(rec);
        Self::publish(&mut g, deltas);
        if !g.observers.is_empty() {
            Self::observe_item(&mut g, Observed::Record(Arc::new(rec.clone())));
        }
    }

    /// An in-process consumer of every record from now on, and of the
    /// ticks made while someone watches. It does not make the hub watched:
    /// it asks for the readings it needs ([`Hub::want_reading`]).
    pub fn observe(&self) -> Observation {
        let (tx, rx) = sync_channel(OBSERVER_QUEUE);
        let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.lock().observers.push(Observer {
            tx,
            lost: Arc::clone(&lost),
        });
        Observation { rx, lost }
    }

    /// Asks for one reading of the kernel's counters at the collector's
    /// next tick (without waiting for it).
    pub fn want_reading(&self) {
        self.lock().want_fresh = true;
    }

    /// A tick at `now_ns`; `fresh` when the kernel's counters were read
    /// just before.
    pub fn tick(&self, now_ns: u64, fresh: bool) {
        let mut g = self.lock();
        let d = g.state.tick(now_ns);
        Self::publish(&mut g, vec![d]);
        if !g.observers.is_empty() {
            Self::observe_item(&mut g, Observed::Tick { now_ns, fresh });
        }
        if fresh {
            g.fresh_ticks += 1;
            g.want_fresh = false;
        }
        drop(g);
        self.ticked.notify_all();
    }

    /// The live state now. With `fresh_within`, waits (at most that long)
    /// for the collector's next tick that reads the kernel's counters, when
    /// none did since the last ask.
    pub fn snapshot(&self, fresh_within: Option<Duration>) -> Snapshot {
        self.snapshot_with(fresh_within, &|_| true)
    }

    /// [`Hub::snapshot`] with only the flows `keep` keeps.
    pub fn snapshot_with(
        &self,
        fresh_within: Option<Duration>,
        keep: &dyn Fn(&procflow_core::live::LiveFlow) -> bool,
    ) -> Snapshot {
        let mut g = self.lock();
        let stale = g
            .last_asked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        g.last_asked = Some(Instant::now());
        g.stats.snapshots_served += 1;
        if let (Some(wait), true) = (fresh_within, stale) {
            g.want_fresh = true;
            let seen = g.fresh_ticks;
            let deadline = Instant::now() + wait;
            while g.fresh_ticks == seen {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = self
                    .ticked
                    .wait_timeout(g, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        g.state.snapshot_with(keep)
    }

    /// Subscribes to the deltas after sequence number `after` (None: from
    /// now on).
    pub fn subscribe(&self, after: Option<u64>) -> Result<Subscription, Gap> {
        let mut g = self.lock();
        g.last_asked = Some(Instant::now());
        let current = g.state.seq();
        let (tx, rx) = sync_channel(SUBSCRIBER_QUEUE);
        if let Some(after) = after.filter(|a| *a < current) {
            let oldest = g.backlog.front().map_or(current + 1, |(s, _)| *s);
            if after + 1 < oldest {
                return Err(Gap {
                    oldest: oldest.saturating_sub(1),
                    current,
                });
            }
            for (_, line) in g.backlog.iter().filter(|(s, _)| *s > after) {
                if tx.try_send(Arc::clone(line)).is_err() {
                    return Err(Gap { oldest, current });
                }
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        g.subs.push(Subscriber {
            tx,
            dropped: Arc::clone(&dropped),
        });
        g.stats.subscribers = g.subs.len();
        g.stats.subscribers_total += 1;
        Ok(Subscription { rx, dropped })
    }

    /// A subscriber whose connection stopped taking lines (its write timed
    /// out) was dropped; counted unless the hub already dropped it.
    pub fn note_dropped(&self, sub: &Subscription) {
        if !sub.dropped.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.lock().stats.subscribers_dropped += 1;
        }
    }

    pub fn stats(&self) -> HubStats {
        let g = self.lock();
        HubStats {
            subscribers: g.subs.len(),
            ..g.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procflow_core::live::DeltaMsg;

    fn stats(n: u64) -> Record {
        Record::Stats(serde_json::json!({ "n": n }))
    }

    fn seqs(s: &Subscription) -> Vec<u64> {
        s.rx.try_iter()
            .map(|l| serde_json::from_str::<DeltaMsg>(&l).unwrap().seq)
            .collect()
    }

    #[test]
    fn a_subscription_after_a_snapshot_continues_exactly_from_it() {
        let hub = Hub::new(0);
        let _ = hub.snapshot(None); // a viewer: deltas are kept from now
        hub.apply(&stats(1));
        let snap = hub.snapshot(None);
        assert_eq!(snap.seq, 1);
        hub.apply(&stats(2));
        hub.apply(&stats(3));
        let sub = hub.subscribe(Some(snap.seq)).unwrap();
        hub.apply(&stats(4));
        assert_eq!(seqs(&sub), vec![2, 3, 4]);
    }

    #[test]
    fn a_subscription_from_before_the_backlog_is_told_of_the_gap() {
        let hub = Hub::new(0);
        let _ = hub.snapshot(None);
        for i in 0..(BACKLOG as u64 + 10) {
            hub.apply(&stats(i));
        }
        let gap = hub.subscribe(Some(3)).unwrap_err();
        assert_eq!(gap.current, BACKLOG as u64 + 10);
        assert!(gap.oldest > 3);
        assert!(hub.subscribe(Some(gap.oldest)).is_ok());
    }

    #[test]
    fn a_subscriber_that_never_reads_is_dropped_and_the_others_keep_everything() {
        let hub = Hub::new(0);
        let stuck = hub.subscribe(None).unwrap();
        let reader = hub.subscribe(None).unwrap();
        let mut got = 0usize;
        for i in 0..(SUBSCRIBER_QUEUE as u64 * 2) {
            hub.apply(&stats(i));
            got += reader.rx.try_iter().count();
        }
        assert_eq!(got, SUBSCRIBER_QUEUE * 2);
        assert_eq!(hub.stats().subscribers_dropped, 1);
        assert_eq!(hub.stats().subscribers, 1);
        // The stuck one gets what was queued, then the end.
        assert_eq!(stuck.rx.try_iter().count(), SUBSCRIBER_QUEUE);
        assert!(matches!(
            stuck.rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn an_observer_gets_every_record_and_tick_and_counts_what_it_missed() {
        let hub = Hub::new(0);
        assert!(!hub.watched());
        let obs = hub.observe();
        assert!(!hub.watched(), "an observer asks for readings");
        hub.want_reading();
        assert!(hub.watched());
        hub.apply(&stats(1));
        hub.tick(7, true);
        let got: Vec<Observed> = obs.rx.try_iter().collect();
        assert!(matches!(&got[0], Observed::Record(r) if **r == stats(1)));
        assert!(matches!(
            got[1],
            Observed::Tick {
                now_ns: 7,
                fresh: true
            }
        ));
        for i in 0..(OBSERVER_QUEUE as u64 + 5) {
            hub.apply(&stats(i));
        }
        assert_eq!(obs.lost.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert_eq!(obs.rx.try_iter().count(), OBSERVER_QUEUE);
        assert!(!hub.watched(), "one reading was asked for");
        let other = hub.observe();
        drop(obs);
        hub.apply(&stats(0));
        assert_eq!(
            hub.lock().observers.len(),
            1,
            "a dropped observer is forgotten"
        );
        assert_eq!(other.rx.try_iter().count(), 1, "only what came after it");
    }

    #[test]
    fn a_fresh_snapshot_waits_for_the_next_reading_tick() {
        let hub = Hub::new(0);
        let h = Arc::clone(&hub);
        let ticker = std::thread::spawn(move || {
            while !h.watched() {
                std::thread::sleep(Duration::from_millis(5));
            }
            h.apply(&stats(1));
            h.tick(5, true);
        });
        let snap = hub.snapshot(Some(Duration::from_secs(10)));
        ticker.join().unwrap();
        assert_eq!(snap.time_ns, 5, "the snapshot is from after the tick");
        assert_eq!(snap.stats["n"], 1);
    }
}
