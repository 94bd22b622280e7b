//! In-memory event fan-out: one bounded ring per topic.
//!
//! Publishers append to a topic's ring under a short lock and never wait for
//! subscribers: when the ring is full the oldest event falls off. Each
//! subscription is just a cursor (the next seq it wants); reading copies
//! nothing but handles. A subscriber whose cursor fell off the ring is told it
//! lagged and from which seq to catch up elsewhere (the control plane replays
//! from Postgres). A subscriber with nothing to read parks a [`Wake`] handle
//! on the topic; publishing hands the handles their tokens, so waiting costs
//! no thread.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use rustc_hash::FxHashMap;

/// Default number of events a topic keeps for subscribers that read late.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Something that can be told a parked subscription has news.
pub trait Wake: Send + Sync {
    fn wake(&self, token: u64);
}

/// What reading a subscription found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// This many events were visited (at least one).
    Events(usize),
    /// Nothing new yet.
    Empty,
    /// The subscriber's next event fell off the ring. It has seen everything
    /// up to `after_seq`; the ring now starts at `oldest_seq`.
    Lagged { after_seq: u64, oldest_seq: u64 },
    /// The topic was closed and everything before the close was read.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// The ring capacity must be at least one event.
    ZeroCapacity,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::ZeroCapacity => write!(f, "ring capacity must be at least 1"),
        }
    }
}

impl std::error::Error for BusError {}

struct Ring<T> {
    events: VecDeque<T>,
    /// Seq of the newest event ever published (0: none yet).
    last_seq: u64,
    closed: bool,
    parked: Vec<(Arc<dyn Wake>, u64)>,
    blocking_readers: usize,
}

impl<T> Ring<T> {
    /// Seq of the oldest event still held (last_seq + 1 when empty).
    fn oldest_seq(&self) -> u64 {
        self.last_seq + 1 - self.events.len() as u64
    }
}

/// One stream of events with gap-free seqs.
pub struct Topic<T> {
    name: String,
    capacity: usize,
    ring: Mutex<Ring<T>>,
    readable: Condvar,
}

impl<T> Topic<T> {
    fn new(name: String, capacity: usize, last_seq: u64) -> Self {
        Topic {
            name,
            capacity,
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                last_seq,
                closed: false,
                parked: Vec::new(),
                blocking_readers: 0,
            }),
            readable: Condvar::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn last_seq(&self) -> u64 {
        self.ring.lock().last_seq
    }

    pub fn len(&self) -> usize {
        self.ring.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_closed(&self) -> bool {
        self.ring.lock().closed
    }

    /// Appends events built from their seqs; returns the last seq. Never
    /// waits for a reader: old events fall off a full ring.
    pub fn publish_with(&self, count: usize, mut make: impl FnMut(u64) -> T) -> u64 {
        let (last_seq, parked) = {
            let mut ring = self.ring.lock();
            for _ in 0..count {
                ring.last_seq += 1;
                let seq = ring.last_seq;
                if ring.events.len() == self.capacity {
                    ring.events.pop_front();
                }
                ring.events.push_back(make(seq));
            }
            if ring.blocking_readers > 0 {
                self.readable.notify_all();
            }
            (ring.last_seq, std::mem::take(&mut ring.parked))
        };
        // Wake outside the lock: a waker may take other locks.
        for (waker, token) in parked {
            waker.wake(token);
        }
        last_seq
    }

    /// Moves the topic forward to `last_seq` if it is behind (events were
    /// published elsewhere, e.g. before a restart). Readers still behind it
    /// will be told they lagged.
    fn advance_to(&self, last_seq: u64) -> u64 {
        let parked = {
            let mut ring = self.ring.lock();
            if last_seq <= ring.last_seq {
                return ring.last_seq;
            }
            ring.events.clear();
            ring.last_seq = last_seq;
            self.readable.notify_all();
            std::mem::take(&mut ring.parked)
        };
        for (waker, token) in parked {
            waker.wake(token);
        }
        last_seq
    }

    fn close(&self) {
        let parked = {
            let mut ring = self.ring.lock();
            ring.closed = true;
            self.readable.notify_all();
            std::mem::take(&mut ring.parked)
        };
        for (waker, token) in parked {
            waker.wake(token);
        }
    }

    fn read(ring: &Ring<T>, cursor: &mut u64, max: usize, visit: &mut impl FnMut(u64, &T)) -> Poll {
        let oldest = ring.oldest_seq();
        if *cursor < oldest {
            return Poll::Lagged {
                after_seq: *cursor - 1,
                oldest_seq: oldest,
            };
        }
        if *cursor > ring.last_seq {
            return if ring.closed { Poll::Closed } else { Poll::Empty };
        }
        let start = (*cursor - oldest) as usize;
        let end = ring.events.len().min(start.saturating_add(max));
        for (i, event) in ring.events.range(start..end).enumerate() {
            visit(*cursor + i as u64, event);
        }
        let n = end - start;
        *cursor += n as u64;
        Poll::Events(n)
    }
}

/// A reader's position on a topic.
pub struct Subscription<T> {
    topic: Arc<Topic<T>>,
    /// The next seq this subscriber wants.
    cursor: u64,
}

impl<T> Subscription<T> {
    pub fn topic(&self) -> &Arc<Topic<T>> {
        &self.topic
    }

    /// The last seq delivered (or skipped over by `seek`).
    pub fn position(&self) -> u64 {
        self.cursor - 1
    }

    /// Continue after `after_seq` (e.g. once a lag was replayed elsewhere).
    pub fn seek(&mut self, after_seq: u64) {
        self.cursor = after_seq + 1;
    }

    /// Visits up to `max` new events without waiting.
    pub fn poll(&mut self, max: usize, mut visit: impl FnMut(u64, &T)) -> Poll {
        let ring = self.topic.ring.lock();
        Topic::read(&ring, &mut self.cursor, max, &mut visit)
    }

    /// Like [`Subscription::poll`], but when there is nothing to read, parks
    /// `waker` on the topic under the same lock (so no publish slips between
    /// the check and the parking): it is woken with `token` exactly once, on
    /// the next publish or close.
    pub fn poll_or_park(
        &mut self,
        max: usize,
        mut visit: impl FnMut(u64, &T),
        waker: &Arc<dyn Wake>,
        token: u64,
    ) -> Poll {
        let mut ring = self.topic.ring.lock();
        let poll = Topic::read(&ring, &mut self.cursor, max, &mut visit);
        if poll == Poll::Empty {
            ring.parked.push((Arc::clone(waker), token));
        }
        poll
    }

    /// Withdraws a parking made with `token` (its waiter gave up).
    pub fn unpark(&self, waker: &Arc<dyn Wake>, token: u64) {
        self.topic
            .ring
            .lock()
            .parked
            .retain(|(w, t)| !(*t == token && Arc::ptr_eq(w, waker)));
    }

    /// Blocks the calling thread until there is something to read (events,
    /// a lag or the close), or until `timeout` passes; returns whether there is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ring = self.topic.ring.lock();
        loop {
            if self.cursor <= ring.last_seq || ring.closed || self.cursor < ring.oldest_seq() {
                return true;
            }
            ring.blocking_readers += 1;
            let timed_out = self.topic.readable.wait_until(&mut ring, deadline).timed_out();
            ring.blocking_readers -= 1;
            if timed_out {
                return false;
            }
        }
    }
}

/// Named topics, each with its own ring of `capacity` events.
pub struct Bus<T> {
    capacity: usize,
    topics: RwLock<FxHashMap<String, Arc<Topic<T>>>>,
}

impl<T> Bus<T> {
    pub fn new(capacity: usize) -> Result<Self, BusError> {
        if capacity == 0 {
            return Err(BusError::ZeroCapacity);
        }
        Ok(Bus {
            capacity,
            topics: RwLock::new(FxHashMap::default()),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The topic, created (continuing after seq 0) if it does not exist.
    pub fn topic(&self, name: &str) -> Arc<Topic<T>> {
        if let Some(topic) = self.topics.read().get(name) {
            return Arc::clone(topic);
        }
        let mut topics = self.topics.write();
        Arc::clone(
            topics
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Topic::new(name.to_owned(), self.capacity, 0))),
        )
    }

    /// Opens a topic whose seqs continue after `last_seq` (e.g. the last seq
    /// stored in the database). An existing topic that is behind moves
    /// forward; one that is ahead keeps its seqs. Returns the topic's last seq.
    pub fn open(&self, name: &str, last_seq: u64) -> u64 {
        self.topic(name).advance_to(last_seq)
    }

    /// Publishes one event; returns its seq.
    pub fn publish(&self, name: &str, event: T) -> u64 {
        let mut event = Some(event);
        self.topic(name)
            .publish_with(1, |_| event.take().expect("one event"))
    }

    /// A subscription that starts with the event after `after_seq`.
    pub fn subscribe(&self, name: &str, after_seq: u64) -> Subscription<T> {
        Subscription {
            topic: self.topic(name),
            cursor: after_seq + 1,
        }
    }

    /// Closes a topic: its subscriptions read what is left, then end. The
    /// name is free again afterwards. Returns whether the topic existed.
    pub fn close(&self, name: &str) -> bool {
        let topic = self.topics.write().remove(name);
        match topic {
            Some(topic) => {
                topic.close();
                true
            }
            None => false,
        }
    }

    pub fn last_seq(&self, name: &str) -> Option<u64> {
        self.topics.read().get(name).map(|topic| topic.last_seq())
    }

    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.read().keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Events held across all rings.
    pub fn buffered(&self) -> usize {
        self.topics.read().values().map(|topic| topic.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    fn drain(sub: &mut Subscription<u64>, max: usize) -> (Poll, Vec<(u64, u64)>) {
        let mut got = Vec::new();
        let poll = sub.poll(max, |seq, &v| got.push((seq, v)));
        (poll, got)
    }

    #[test]
    fn seqs_are_gap_free_and_continue_from_a_given_seq() {
        let bus = Bus::new(8).unwrap();
        assert_eq!(bus.open("run", 41), 41);
        assert_eq!(bus.publish("run", 1), 42);
        assert_eq!(bus.publish("run", 2), 43);
        let mut sub = bus.subscribe("run", 41);
        assert_eq!(drain(&mut sub, 10), (Poll::Events(2), vec![(42, 1), (43, 2)]));
        assert_eq!(drain(&mut sub, 10).0, Poll::Empty);
        // Opening behind the current seq changes nothing.
        assert_eq!(bus.open("run", 10), 43);
    }

    #[test]
    fn batches_respect_max() {
        let bus = Bus::new(100).unwrap();
        for i in 0..10 {
            bus.publish("t", i);
        }
        let mut sub = bus.subscribe("t", 0);
        assert_eq!(drain(&mut sub, 4).1.len(), 4);
        assert_eq!(drain(&mut sub, 4).1, vec![(5, 4), (6, 5), (7, 6), (8, 7)]);
        assert_eq!(drain(&mut sub, 4).0, Poll::Events(2));
        assert_eq!(sub.position(), 10);
    }

    #[test]
    fn a_slow_subscriber_is_told_it_lagged_and_can_catch_up() {
        let bus = Bus::new(4).unwrap();
        let mut slow = bus.subscribe("t", 0);
        for i in 1..=10 {
            bus.publish("t", i);
        }
        assert_eq!(drain(&mut slow, 100).0, Poll::Lagged { after_seq: 0, oldest_seq: 7 });
        // Still lagged until it says where it caught up to.
        assert!(matches!(drain(&mut slow, 100).0, Poll::Lagged { .. }));
        slow.seek(6);
        assert_eq!(drain(&mut slow, 100).1, vec![(7, 7), (8, 8), (9, 9), (10, 10)]);
        assert_eq!(bus.buffered(), 4);
    }

    #[test]
    fn a_subscriber_before_the_ring_start_lags_after_open() {
        let bus: Bus<u64> = Bus::new(4).unwrap();
        let mut early = bus.subscribe("run", 0);
        bus.open("run", 100);
        assert_eq!(drain(&mut early, 10).0, Poll::Lagged { after_seq: 0, oldest_seq: 101 });
    }

    #[test]
    fn close_ends_subscriptions_after_the_last_events() {
        let bus = Bus::new(8).unwrap();
        let mut sub = bus.subscribe("t", 0);
        bus.publish("t", 7);
        assert!(bus.close("t"));
        assert!(!bus.close("t"));
        assert_eq!(drain(&mut sub, 10), (Poll::Events(1), vec![(1, 7)]));
        assert_eq!(drain(&mut sub, 10).0, Poll::Closed);
        assert!(bus.topic_names().is_empty());
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(&self, _token: u64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn parked_subscribers_are_woken_once_per_park() {
        let bus = Bus::new(8).unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker: Arc<dyn Wake> = count.clone();
        let mut subs: Vec<_> = (0..1000).map(|_| bus.subscribe("t", 0)).collect();
        for sub in &mut subs {
            assert_eq!(sub.poll_or_park(10, |_, _| {}, &waker, 1), Poll::Empty);
        }
        bus.publish("t", 1);
        bus.publish("t", 2);
        assert_eq!(count.0.load(Ordering::SeqCst), 1000);
        // A withdrawn parking is not woken.
        assert_eq!(subs[1].poll_or_park(10, |_, _| {}, &waker, 2), Poll::Events(2));
        assert_eq!(subs[2].poll_or_park(10, |_, _| {}, &waker, 3), Poll::Events(2));
        assert_eq!(subs[2].poll_or_park(10, |_, _| {}, &waker, 3), Poll::Empty);
        subs[2].unpark(&waker, 3);
        bus.publish("t", 3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1000);
        // Data is there: nothing parks.
        assert_eq!(subs[0].poll_or_park(10, |_, _| {}, &waker, 1), Poll::Events(3));
        bus.close("t");
        assert_eq!(count.0.load(Ordering::SeqCst), 1000);
    }

    #[test]
    fn concurrent_publishers_get_distinct_gap_free_seqs() {
        let bus = Arc::new(Bus::new(1 << 16).unwrap());
        let publishers = 4;
        let per = 5000u64;
        let handles: Vec<_> = (0..publishers)
            .map(|p| {
                let bus = Arc::clone(&bus);
                thread::spawn(move || (0..per).map(|i| bus.publish("t", p * per + i)).collect::<Vec<_>>())
            })
            .collect();
        let mut seqs: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=publishers * per).collect::<Vec<_>>());
        let mut sub = bus.subscribe("t", 0);
        let (_, got) = drain(&mut sub, usize::MAX);
        assert_eq!(got.len() as u64, publishers * per);
        // Each publisher's own events keep their order.
        for p in 0..publishers {
            let mine: Vec<u64> = got.iter().map(|&(_, v)| v).filter(|v| v / per == p).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn blocking_reader_sees_every_event_from_another_thread() {
        let bus = Arc::new(Bus::new(1 << 12).unwrap());
        let mut sub = bus.subscribe("t", 0);
        let publisher = {
            let bus = Arc::clone(&bus);
            thread::spawn(move || {
                for i in 1..=1000u64 {
                    bus.publish("t", i);
                }
                bus.close("t");
            })
        };
        let mut seen = Vec::new();
        loop {
            assert!(sub.wait(Duration::from_secs(5)));
            match sub.poll(64, |seq, &v| seen.push((seq, v))) {
                Poll::Events(_) => {}
                Poll::Closed => break,
                other => panic!("{other:?}"),
            }
        }
        publisher.join().unwrap();
        assert_eq!(seen, (1..=1000).map(|i| (i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn zero_capacity_is_refused() {
        assert_eq!(Bus::<u8>::new(0).err(), Some(BusError::ZeroCapacity));
    }
}
