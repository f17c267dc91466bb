//! Key routing and a circuit breaker per memcached server.
//!
//! Routing must be identical in every node and every build, or nodes stop finding each other's
//! entries: it is rendezvous hashing over FNV-1a (a fixed, documented function), never Rust's
//! `DefaultHasher`, whose output may change between compiler releases.

use crate::metrics;
use memcache::exp::Router;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// SplitMix64's finalizer: FNV's low bits are weak, and rendezvous compares whole scores.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The server for `key`: the highest score of FNV-1a(server identity, 0xff, key). Adding or
/// removing a server moves only that server's keys, and list order does not matter.
pub fn route(key: &[u8], servers: &[String]) -> usize {
    route_where(key, servers, |_| true)
}

/// [`route`] skipping servers that are not `usable`: the first usable server in the key's
/// rendezvous order, so a down server's keys spread over the others as if it had been removed
/// and come back when it is usable again. With none usable, the key's own server.
pub fn route_where(key: &[u8], servers: &[String], usable: impl Fn(usize) -> bool) -> usize {
    let mut best: Option<(usize, u64)> = None;
    let mut best_usable: Option<(usize, u64)> = None;
    for (i, server) in servers.iter().enumerate() {
        let h = fnv1a(fnv1a(FNV_OFFSET, server.as_bytes()), &[0xff]);
        let score = mix(fnv1a(h, key));
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
        if best_usable.is_none_or(|(_, b)| score > b) && usable(i) {
            best_usable = Some((i, score));
        }
    }
    best_usable.or(best).map_or(0, |(i, _)| i)
}

/// [`route_where`] as a memcache client router, over the breakers' view of which servers are
/// usable, so the client and the breaker agree on the server.
pub struct StableRendezvous(pub Arc<Breakers>);

impl Router for StableRendezvous {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        route_where(key, servers, |i| self.0.routable(i))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe was let through at `since`; everyone else still fails fast.
    HalfOpen {
        since: Instant,
    },
}

/// Per-server breaker. Policy: `failures_to_open` consecutive failed exchanges open it; while
/// open every exchange for that server fails at once; after `open_for` one probe exchange is let
/// through (half-open): success closes it, failure reopens it for another `open_for`. A probe
/// that never reports (its future was dropped) is replaced after `open_for`.
pub struct Breakers {
    servers: Vec<(String, Mutex<State>)>,
    /// Per server, when it last answered (nanoseconds since `epoch`).
    answered: Vec<AtomicU64>,
    epoch: Instant,
    failures_to_open: u32,
    open_for: Duration,
}

impl Breakers {
    pub fn new(labels: &[String], failures_to_open: u32, open_for: Duration) -> Self {
        // Every server shows as closed from the start, not only after its first change.
        for l in labels {
            publish(l, State::Closed { failures: 0 });
        }
        Breakers {
            servers: labels
                .iter()
                .map(|l| (l.clone(), Mutex::new(State::Closed { failures: 0 })))
                .collect(),
            answered: labels.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            failures_to_open: failures_to_open.max(1),
            open_for,
        }
    }

    fn set(&self, server: usize, state: State) {
        if let Some((label, cell)) = self.servers.get(server) {
            if let Ok(mut s) = cell.lock() {
                *s = state;
            }
            publish(label, state);
        }
    }

    /// How many servers there are (one breaker each).
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Whether an exchange with `server` may start now.
    pub fn admit(&self, server: usize) -> bool {
        let Some((label, cell)) = self.servers.get(server) else {
            return false;
        };
        let now = Instant::now();
        let Ok(mut s) = cell.lock() else {
            return true;
        };
        let (admit, next) = match *s {
            State::Closed { .. } => (true, None),
            State::Open { until } if now >= until => (true, Some(State::HalfOpen { since: now })),
            State::Open { .. } => (false, None),
            State::HalfOpen { since } if now.duration_since(since) >= self.open_for => {
                (true, Some(State::HalfOpen { since: now }))
            }
            State::HalfOpen { .. } => (false, None),
        };
        if let Some(next) = next {
            *s = next;
            drop(s);
            publish(label, next);
        }
        admit
    }

    /// Whether keys should be routed to `server`: not while its breaker is open, except when a
    /// probe is due or running (so the probe really goes to the server, and its keys come back
    /// when it answers; while it runs, the server's other exchanges fail fast as before).
    /// Side-effect free: [`Breakers::admit`] makes the transition. It must not change between
    /// the breaker's decision and the client's routing, or the probe would go elsewhere.
    pub fn routable(&self, server: usize) -> bool {
        let Some((_, cell)) = self.servers.get(server) else {
            return false;
        };
        let Ok(s) = cell.lock() else { return true };
        let now = Instant::now();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { .. } => true,
        }
    }

    pub fn success(&self, server: usize) {
        if let Some(a) = self.answered.get(server) {
            a.store(self.since_epoch(Instant::now()), Ordering::Relaxed);
        }
        let changed = match self.servers.get(server).and_then(|(_, c)| c.lock().ok()) {
            Some(s) => !matches!(*s, State::Closed { failures: 0 }),
            None => false,
        };
        if changed {
            self.set(server, State::Closed { failures: 0 });
        }
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A timed-out exchange that began at `started`: a failure of the server only if it has not
    /// answered any exchange since. One that answered others meanwhile is up, and the deadline
    /// was spent queueing in this process (a CPU-saturated node); opening the breaker then would
    /// turn local load into seconds of misses for every key of that server.
    pub fn timed_out(&self, server: usize, started: Instant) {
        let answered = self
            .answered
            .get(server)
            .map_or(0, |a| a.load(Ordering::Relaxed));
        if answered <= self.since_epoch(started) {
            self.failure(server);
        }
    }

    pub fn failure(&self, server: usize) {
        let Some((label, cell)) = self.servers.get(server) else {
            return;
        };
        let now = Instant::now();
        let Ok(mut s) = cell.lock() else {
            return;
        };
        let next = match *s {
            State::Closed { failures } if failures + 1 < self.failures_to_open => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } | State::HalfOpen { .. } => {
                log::warn!(
                    "memcached {label}: circuit breaker open for {:?} after failures",
                    self.open_for
                );
                State::Open {
                    until: now + self.open_for,
                }
            }
            open @ State::Open { .. } => open,
        };
        *s = next;
        drop(s);
        publish(label, next);
    }

    pub fn state(&self, server: usize) -> Option<BreakerState> {
        let (_, cell) = self.servers.get(server)?;
        let s = *cell.lock().ok()?;
        Some(match s {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        })
    }
}

fn publish(label: &str, state: State) {
    let v = match state {
        State::Closed { .. } => 0,
        State::Open { .. } => 1,
        State::HalfOpen { .. } => 2,
    };
    metrics::MEMCACHED_BREAKER_STATE
        .with_label_values(&[label])
        .set(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_counts_only_when_the_server_answered_nothing_since() {
        let b = Breakers::new(&["a".to_string()], 2, Duration::from_secs(60));
        // Answers arrive after these exchanges began: the server is up, the node was slow.
        let started = Instant::now();
        b.success(0);
        b.timed_out(0, started);
        b.timed_out(0, started);
        assert_eq!(b.state(0), Some(BreakerState::Closed));
        // Silence since they began: a stalled server.
        let started = Instant::now();
        b.timed_out(0, started);
        b.timed_out(0, started);
        assert_eq!(b.state(0), Some(BreakerState::Open));
    }

    #[test]
    fn routing_is_pinned() {
        // The cross-build contract (cross-checked with an independent Python FNV-1a/SplitMix64
        // implementation): a change here strands every stored entry.
        let servers: Vec<String> = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got: Vec<usize> = (0..12)
            .map(|i| route(format!("shellac1:h:{i:032x}").as_bytes(), &servers))
            .collect();
        assert_eq!(got, PINNED);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    const PINNED: [usize; 12] = [0, 0, 0, 2, 0, 1, 1, 1, 1, 2, 0, 1];

    #[test]
    fn routing_balances_and_ignores_order() {
        let servers: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:11211")).collect();
        let mut reversed = servers.clone();
        reversed.reverse();
        let mut counts = [0; 4];
        for i in 0..4000 {
            let k = format!("shellac1:h:{i:032x}");
            let a = route(k.as_bytes(), &servers);
            counts[a] += 1;
            assert_eq!(servers[a], reversed[route(k.as_bytes(), &reversed)]);
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    fn moved(from: &[String], to: &[String]) -> usize {
        (0..1000)
            .filter(|i| {
                let k = format!("shellac1:h:{i:032x}");
                from[route(k.as_bytes(), from)] != to[route(k.as_bytes(), to)]
            })
            .count()
    }

    #[test]
    fn adding_or_removing_a_server_moves_about_one_nth_of_the_keys() {
        let (three, four) = (servers(3), servers(4));
        let grow = moved(&three, &four);
        assert!(grow <= 300, "3 -> 4 moved {grow} of 1000 keys");
        assert!(grow >= 150, "the new server takes its share: {grow}");
        let shrink = moved(&four, &three);
        assert!(shrink <= 300, "4 -> 3 moved {shrink} of 1000 keys");
        // Removing the second server instead of the last moves only its own keys too.
        let mut others = four.clone();
        others.remove(1);
        let only_its_own = (0..1000).all(|i| {
            let k = format!("shellac1:h:{i:032x}");
            let before = &four[route(k.as_bytes(), &four)];
            before == &four[1] || before == &others[route(k.as_bytes(), &others)]
        });
        assert!(only_its_own);
    }

    #[test]
    fn a_down_servers_keys_go_to_the_next_server_and_come_back() {
        let list = servers(3);
        let mut without_1 = list.clone();
        without_1.remove(1);
        for i in 0..1000 {
            let k = format!("shellac1:h:{i:032x}");
            let home = route(k.as_bytes(), &list);
            let failover = route_where(k.as_bytes(), &list, |s| s != 1);
            // Exactly where the key would live if server 1 had been removed.
            assert_eq!(list[failover], without_1[route(k.as_bytes(), &without_1)]);
            if home != 1 {
                assert_eq!(failover, home, "other servers' keys stay put");
            }
            assert_eq!(route_where(k.as_bytes(), &list, |_| false), home);
        }
        // Through the breaker: open routes away, a due probe routes back, closed stays.
        let b = Breakers::new(&list, 1, Duration::from_millis(40));
        let key = (0..)
            .map(|i| format!("shellac1:h:{i:032x}"))
            .find(|k| route(k.as_bytes(), &list) == 1)
            .unwrap();
        let live = |b: &Breakers| route_where(key.as_bytes(), &list, |s| b.routable(s));
        assert_eq!(live(&b), 1);
        b.failure(1);
        assert_ne!(live(&b), 1, "open: routed to the next server");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(live(&b), 1, "probe due: the server is tried again");
        assert!(b.admit(1));
        assert_eq!(live(&b), 1, "the probe goes to the server itself");
        assert!(!b.admit(1), "and only the probe");
        b.success(1);
        assert_eq!(live(&b), 1, "recovered: its keys are back");
    }

    #[test]
    fn breaker_opens_fails_fast_then_probes_once() {
        let b = Breakers::new(&["s".into()], 3, Duration::from_millis(50));
        for _ in 0..2 {
            b.failure(0);
            assert!(b.admit(0));
        }
        b.failure(0);
        assert_eq!(b.state(0), Some(BreakerState::Open));
        assert!(!b.admit(0));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit(0), "one probe after open_for");
        assert!(!b.admit(0), "only one probe");
        b.failure(0);
        assert!(!b.admit(0), "failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit(0));
        b.success(0);
        assert_eq!(b.state(0), Some(BreakerState::Closed));
        assert!(b.admit(0) && b.admit(0));
    }
}
