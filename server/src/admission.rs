//! Admission: how much a node takes on, so that what it takes finishes
//! within its deadline and the rest is refused at once.
//!
//! ```text
//!  accept ─► ConnectionSlot::take ──(connections.max_connections, node-wide)──► over: 503, close
//!    │        header, body and idle bounds, HTTP/2 pings (serve.rs, [connections])
//!    ▼
//!  request ─► body, parse, checks (400s) ─► Gate::admit (one Gate per executor, [admission])
//!                                             ├─ a slot free, nobody waiting ─────► run now
//!                                             ├─ queue full, or the expected wait
//!                                             │  is longer than it may wait ──────► 503 + Retry-After
//!                                             └─ wait in line (FIFO) ─► slot ─────► run, deadline left
//!                                                                  └─ no slot in time ► 503 + Retry-After
//! ```
//!
//! Why: an executor that starts every search it is sent shares its core and
//! disk among all of them, so under a flood every search slows down alike
//! and all of them miss the deadline together (1,000 streams on one
//! executor: 996 of 1,000 answers were empty). A [`Gate`] runs at most
//! `max_running` searches at once and lets at most `max_queued` requests wait
//! for a slot, each at most `max_wait_ms` and at most half of what is left of
//! its deadline, so an admitted search keeps time to run. It also keeps
//! the time a query holds a slot (a moving average), and refuses a request
//! at once when the line ahead of it would take longer than it may wait,
//! instead of letting it wait in vain. Heavy requests (a `list` above
//! `heavy_list`) share at most `max_running_heavy` of the slots: a few
//! searches of `list` 2,000 ran seconds each and, taking every slot, made
//! ordinary searches wait behind them (issue 10, item 2).
//!
//! | item | what |
//! |---|---|
//! | [`AdmissionConfig`] | `[admission]` in `node.toml` |
//! | [`ConnectionConfig`] | `[connections]` in `node.toml` |
//! | [`Gate`], [`Permit`] | one executor's search slots and its line of waiting requests |
//! | [`Overload`] | why a request was refused: a 503 with `Retry-After` |
//! | [`ConnectionSlot`] | one open connection, counted against the node's cap |

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, Shed};
use crate::node::Node;
use crate::rt::until;

/// Local shard searches one executor runs at once, by default: a request
/// searches every local shard together, so the default `max_running` is
/// this divided by the node's local shards (within 4..=128). Measured on a
/// 2-core VM with the 100K demo set in 2 shards, 128 requests in flight on
/// one executor: 64 running at once answered 626-693 a second, 32 running
/// 559-600 (and every request running, the old way, 495-548).
pub const TARGET_SHARD_SEARCHES: usize = 128;
/// Requests that may wait for a slot, per executor, by default.
pub const DEFAULT_MAX_QUEUED: usize = 512;
/// A request is heavy, by default, when one of its queries has a list
/// longer than this (8 times the default list of 64; `limits.max_list`
/// allows 2,000).
pub const DEFAULT_HEAVY_LIST: usize = 512;
/// Refusals sent at once per executor and second, by default. A client
/// that retries every 503 at once (h2load, 1,000 streams on 8 connections)
/// had an executor send 25,000 of them a second, and the searches it had
/// admitted ran at a third to a half of their rate (200-300 answers a
/// second against 550-600 at the best concurrency); paced, the answer rate
/// under that flood is the best-concurrency rate.
pub const DEFAULT_REFUSALS_PER_SEC: u64 = 1000;
/// HTTP/2 streams one connection may have open, by default (hyper's is 200;
/// this node's was 1,024).
pub const DEFAULT_MAX_STREAMS: u32 = 128;
/// The most connections a node accepts by default, whatever the file limit.
pub const DEFAULT_MAX_CONNECTIONS_CAP: usize = 4096;

/// `[admission]`: how many searches each executor runs and lets wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Searches one executor runs at once; a batch takes as many slots as
    /// it runs queries in parallel (at most 32). 0: 128 divided by the
    /// node's local shards, within 4..=128.
    pub max_running: usize,
    /// Requests (a search or a batch) waiting for a slot, per executor;
    /// beyond it a 503.
    pub max_queued: usize,
    /// Longest wait for a slot, in ms; 0: a quarter of `deadline_ms`. A
    /// request never waits more than half of what is left of its own
    /// deadline either.
    pub max_wait_ms: u64,
    /// Refusals (503s) a client gets at once, per executor and second;
    /// beyond, a refusal is sent when its turn comes, at most its
    /// `Retry-After` later. A peer's request is always refused at once (it
    /// tries another replica). 0: every refusal at once.
    pub refusals_per_sec: u64,
    /// A request with a query whose list (or hybrid candidates) is longer
    /// than this is heavy; 0: [`DEFAULT_HEAVY_LIST`].
    pub heavy_list: usize,
    /// Slots heavy requests may hold together; 0: half of `max_running`
    /// (at least 1). Light requests always have the rest: a few searches
    /// of `list` 2,000 hold an executor for long, and without a share of
    /// their own they could take every slot while ordinary searches wait.
    /// Measured (debug build, 30K points in 2 shards, one executor,
    /// `max_running` 8, 12 clients looping `k` 1,000 / `list` 2,000
    /// searches, one client of ordinary ones, 20 s, two rounds each):
    /// ordinary searches' p50 34-40 ms with the share, 1.6-2.0 s without;
    /// the heavy ones answered 84-92 times against 84-108.
    pub max_running_heavy: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_running: 0,
            max_queued: DEFAULT_MAX_QUEUED,
            max_wait_ms: 0,
            refusals_per_sec: DEFAULT_REFUSALS_PER_SEC,
            heavy_list: 0,
            max_running_heavy: 0,
        }
    }
}

impl AdmissionConfig {
    /// `max_running`, or its default for a node serving `local_shards`.
    pub fn max_running(&self, local_shards: usize) -> usize {
        match self.max_running {
            0 => (TARGET_SHARD_SEARCHES / local_shards.max(1)).clamp(4, 128),
            n => n,
        }
    }

    /// `max_running_heavy`, or its default: half of `max_running`.
    pub fn max_running_heavy(&self, max_running: usize) -> usize {
        match self.max_running_heavy {
            0 => (max_running / 2).max(1),
            n => n.min(max_running),
        }
    }

    /// Whether a request whose longest list is `list` is heavy
    /// (`heavy_list`).
    pub fn is_heavy(&self, list: usize) -> bool {
        list > match self.heavy_list {
            0 => DEFAULT_HEAVY_LIST,
            n => n,
        }
    }

    /// `max_wait_ms`, or its default for a node whose deadline is
    /// `deadline_ms`.
    pub fn max_wait(&self, deadline_ms: u64) -> Duration {
        Duration::from_millis(match self.max_wait_ms {
            0 => (deadline_ms / 4).max(1),
            ms => ms,
        })
    }
}

/// `[connections]`: what a node accepts from clients' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Open connections the node accepts (all executors); a connection
    /// beyond it is answered 503 and closed at once. 0: three quarters of
    /// the open-file limit, at most 4,096.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams: u32,
    /// A client must send a request's headers (and a new connection its
    /// first bytes) within this many ms. On HTTP/1.1 it also bounds the
    /// idle time between two requests of a kept-alive connection.
    pub header_timeout_ms: u64,
    /// A request body must arrive whole within this many ms of the start
    /// of its reading; else a 408 (HTTP/1.1: and the connection closes).
    pub body_timeout_ms: u64,
    /// An HTTP/2 connection without a request in flight for this long is
    /// closed (GOAWAY, then close).
    pub idle_timeout_ms: u64,
    /// HTTP/2 keep-alive: a PING after this many ms without a frame from
    /// the client; 0 turns pings off.
    pub keepalive_ms: u64,
    /// A PING not acknowledged within this many ms closes the connection.
    pub keepalive_timeout_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_connections: 0,
            max_streams: DEFAULT_MAX_STREAMS,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            keepalive_ms: 20_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

impl ConnectionConfig {
    /// `max_connections`, or its default from the process's open-file
    /// limit: three quarters of it (the rest is left for shard files, peer
    /// connections and io_uring), at most [`DEFAULT_MAX_CONNECTIONS_CAP`].
    pub fn max_connections(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        (soft / 4 * 3).clamp(16, DEFAULT_MAX_CONNECTIONS_CAP)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The HTTP/2 ping interval (`None`: no pings).
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_ms > 0).then(|| Duration::from_millis(self.keepalive_ms))
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }
}

/// Why a request was not searched: the body of a 503 with `Retry-After`.
/// Each message names the limit (`limit()`) that refused it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Overload {
    #[error("overloaded: {queued} requests already wait for this executor's {running} search slots (admission.max_queued = {max}); retry after {retry_after_s} s")]
    QueueFull {
        queued: usize,
        max: usize,
        running: usize,
        retry_after_s: u64,
    },
    #[error("overloaded: a search slot would come free in about {expected_ms} ms, later than this request may wait ({bound_ms} ms: admission.max_wait_ms = {max_wait_ms}, and at most half of what is left of its deadline); retry after {retry_after_s} s")]
    Busy {
        expected_ms: u64,
        bound_ms: u64,
        max_wait_ms: u64,
        retry_after_s: u64,
    },
    #[error("overloaded: no search slot came free within {waited_ms} ms (admission.max_wait_ms = {max_wait_ms}, and at most half of what is left of the deadline); retry after {retry_after_s} s")]
    WaitTimeout {
        waited_ms: u64,
        max_wait_ms: u64,
        retry_after_s: u64,
    },
    /// Local shards that did not finish in time: the node is overloaded
    /// (or its disk stalls), which a shorter or empty list must not hide.
    #[error("overloaded: local shard(s) {shards:?} did not finish within the request's deadline of {timeout_ms} ms (timeout_ms); retry after {retry_after_s} s")]
    TimedOut {
        shards: Vec<u32>,
        timeout_ms: u64,
        retry_after_s: u64,
    },
    /// Embedding the query's text with the node's model left nothing of
    /// the deadline for the search: not searched at all.
    #[error("overloaded: embedding the query text took {embed_ms} ms of the request's deadline of {timeout_ms} ms (timeout_ms), leaving no time to search; retry after {retry_after_s} s")]
    EmbedTimedOut {
        embed_ms: u64,
        timeout_ms: u64,
        retry_after_s: u64,
    },
}

impl Overload {
    /// The setting that refused the request, as named in `node.toml` (or
    /// the request's own `timeout_ms`).
    pub fn limit(&self) -> &'static str {
        match self {
            Overload::QueueFull { .. } => "admission.max_queued",
            Overload::Busy { .. } | Overload::WaitTimeout { .. } => "admission.max_wait_ms",
            Overload::TimedOut { .. } | Overload::EmbedTimedOut { .. } => "timeout_ms",
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Overload::QueueFull { retry_after_s, .. }
            | Overload::Busy { retry_after_s, .. }
            | Overload::WaitTimeout { retry_after_s, .. }
            | Overload::TimedOut { retry_after_s, .. }
            | Overload::EmbedTimedOut { retry_after_s, .. } => *retry_after_s,
        }
    }

    /// The shards that timed out, for [`Overload::TimedOut`].
    pub fn timed_out_shards(&self) -> &[u32] {
        match self {
            Overload::TimedOut { shards, .. } => shards,
            _ => &[],
        }
    }
}

/// A request waiting in line for slots.
#[derive(Debug)]
struct Ticket {
    weight: usize,
    queries: usize,
    heavy: bool,
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// One executor's search slots and the line of requests waiting for them.
/// Not `Sync`: each executor has its own, so no lock is ever taken.
#[derive(Debug)]
pub struct Gate {
    max_running: usize,
    /// Slots heavy requests may hold together (`max_running_heavy`).
    max_heavy: usize,
    max_queued: usize,
    max_wait: Duration,
    /// Slots taken.
    running: Cell<usize>,
    /// Slots taken by heavy requests (also counted in `running`).
    heavy_running: Cell<usize>,
    /// Waiting requests, first come first served: a request that needs
    /// more slots than are free holds back those behind it, so a batch is
    /// not starved by single searches. A heavy request held back only by
    /// the heavy share holds back the heavy ones behind it, not the light
    /// ones.
    queue: RefCell<VecDeque<Rc<Ticket>>>,
    /// Queries of the waiting requests.
    queued_queries: Cell<usize>,
    /// How long one query holds one slot, in µs (a moving average; 0 until
    /// the first search ends).
    slot_us: Cell<f64>,
    /// Refusals sent at once per second (0: no pacing), and the bucket of
    /// those left: tokens (negative: owed by refusals waiting their turn)
    /// as of `paced_at`.
    refusals_per_sec: f64,
    tokens: Cell<f64>,
    paced_at: Cell<Instant>,
}

/// The weight of a new sample in the moving average of slot time.
const SLOT_EWMA: f64 = 0.1;

impl Gate {
    /// A gate for an executor of a node that serves `local_shards` and
    /// whose default deadline is `deadline_ms`.
    pub fn new(config: &AdmissionConfig, local_shards: usize, deadline_ms: u64) -> Self {
        let max_running = config.max_running(local_shards).max(1);
        Gate {
            max_running,
            max_heavy: config.max_running_heavy(max_running),
            heavy_running: Cell::new(0),
            max_queued: config.max_queued,
            max_wait: config.max_wait(deadline_ms),
            running: Cell::new(0),
            queue: RefCell::new(VecDeque::new()),
            queued_queries: Cell::new(0),
            slot_us: Cell::new(0.0),
            refusals_per_sec: config.refusals_per_sec as f64,
            tokens: Cell::new(Self::refusal_burst(config.refusals_per_sec as f64)),
            paced_at: Cell::new(Instant::now()),
        }
    }

    /// Refusals that may go out at once after a calm spell: a tenth of a
    /// second's worth.
    fn refusal_burst(per_sec: f64) -> f64 {
        (per_sec / 10.0).max(1.0)
    }

    /// Waits until a client's refusal may be sent: at once while refusals
    /// stay within `refusals_per_sec`, else when its turn comes, at most
    /// `retry_after_s` later. Counted in `shardann_refusals_paced_total`
    /// when it had to wait.
    pub async fn pace(&self, m: &Metrics, retry_after_s: u64) {
        if self.refusals_per_sec <= 0.0 {
            return;
        }
        let now = Instant::now();
        let burst = Self::refusal_burst(self.refusals_per_sec);
        let refilled = self.tokens.get()
            + now.duration_since(self.paced_at.get()).as_secs_f64() * self.refusals_per_sec;
        self.paced_at.set(now);
        let most = Duration::from_secs(retry_after_s.max(1));
        // Never owe more than the longest wait's worth of refusals.
        let floor = -(most.as_secs_f64() * self.refusals_per_sec);
        let tokens = refilled.min(burst) - 1.0;
        self.tokens.set(tokens.max(floor));
        if tokens >= 0.0 {
            return;
        }
        m.add(&m.refusals_paced, 1);
        let wait = Duration::from_secs_f64(-tokens / self.refusals_per_sec).min(most);
        crate::rt::sleep(wait).await;
    }

    /// The most slots one request can take.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// A 503 for a request that would be refused whatever its deadline:
    /// the line is full, or the line ahead would take longer than
    /// `max_wait`. Cheap, so it runs before the request body is parsed: a
    /// flood of refused requests then costs little more than reading them.
    pub fn precheck(&self, m: &Metrics) -> Result<(), Overload> {
        if self.running.get() < self.max_running && !self.waits_for_slots() {
            return Ok(());
        }
        let queued = self.queue.borrow().len();
        if queued >= self.max_queued {
            m.shed(Shed::QueueFull);
            return Err(self.queue_full(queued));
        }
        let expected = self.expected_wait();
        if expected > self.max_wait {
            m.shed(Shed::Busy);
            return Err(self.busy(expected, self.max_wait));
        }
        Ok(())
    }

    fn queue_full(&self, queued: usize) -> Overload {
        Overload::QueueFull {
            queued,
            max: self.max_queued,
            running: self.max_running,
            retry_after_s: self.retry_after(),
        }
    }

    fn busy(&self, expected: Duration, bound: Duration) -> Overload {
        Overload::Busy {
            expected_ms: expected.as_millis() as u64,
            bound_ms: bound.as_millis() as u64,
            max_wait_ms: self.max_wait.as_millis() as u64,
            retry_after_s: self.retry_after(),
        }
    }

    /// Slots for a request of `queries` queries run `weight` at a time (at
    /// most `max_running`), to be held until the [`Permit`] drops; or a 503
    /// if it cannot have them in time: the line is full, the line ahead
    /// would take longer than it may wait, or no slot came free in that
    /// time. It may wait at most `max_wait` and half of what is left until
    /// `deadline`.
    pub async fn admit<'a>(
        &'a self,
        m: &'a Metrics,
        weight: usize,
        queries: usize,
        deadline: Instant,
    ) -> Result<Permit<'a>, Overload> {
        self.admit_as(m, weight, queries, deadline, false).await
    }

    /// [`Gate::admit`] for a request that is `heavy` or not: heavy
    /// requests hold at most `max_running_heavy` slots together, so light
    /// ones always find the rest.
    pub async fn admit_as<'a>(
        &'a self,
        m: &'a Metrics,
        weight: usize,
        queries: usize,
        deadline: Instant,
        heavy: bool,
    ) -> Result<Permit<'a>, Overload> {
        let cap = if heavy {
            self.max_heavy
        } else {
            self.max_running
        };
        let weight = weight.clamp(1, cap);
        let queries = queries.max(1);
        let arrived = Instant::now();
        if self.may_pass(weight, heavy) {
            self.take(m, weight, heavy);
            return Ok(self.permit(m, weight, queries, heavy, arrived));
        }
        let queued = self.queue.borrow().len();
        if queued >= self.max_queued {
            m.shed(Shed::QueueFull);
            return Err(self.queue_full(queued));
        }
        let left = deadline.saturating_duration_since(arrived);
        let own = self.run_time(weight, queries);
        let bound = self
            .max_wait
            .min(left / 2)
            .min(left.saturating_sub(own.saturating_mul(2)));
        let expected = self.expected_wait();
        if expected > bound {
            m.shed(Shed::Busy);
            return Err(self.busy(expected, bound));
        }
        let ticket = Rc::new(Ticket {
            weight,
            queries,
            heavy,
            granted: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.queue.borrow_mut().push_back(Rc::clone(&ticket));
        self.queued_queries.set(self.queued_queries.get() + queries);
        m.gauge_add(&m.searches_queued, 1);
        // Leaves the line (or gives the slots back) however the wait ends:
        // granted, timed out, or the request dropped (the client went away).
        let mut waiting = Waiting {
            gate: self,
            m,
            ticket: Rc::clone(&ticket),
            armed: true,
        };
        match until(arrived + bound, Granted(&ticket)).await {
            Some(()) => {
                waiting.armed = false;
                m.admission_wait(arrived.elapsed());
                // The searches ahead may have run slower than the gate
                // expected: one left without the time to run is refused
                // rather than started to miss its deadline.
                let now = Instant::now();
                let own = self.run_time(weight, queries);
                if deadline.saturating_duration_since(now) < own + own / 2 {
                    self.release(m, weight, heavy);
                    m.shed(Shed::WaitTimeout);
                    return Err(Overload::WaitTimeout {
                        waited_ms: arrived.elapsed().as_millis() as u64,
                        max_wait_ms: self.max_wait.as_millis() as u64,
                        retry_after_s: self.retry_after(),
                    });
                }
                Ok(self.permit(m, weight, queries, heavy, now))
            }
            None => {
                drop(waiting);
                m.shed(Shed::WaitTimeout);
                Err(Overload::WaitTimeout {
                    waited_ms: arrived.elapsed().as_millis() as u64,
                    max_wait_ms: self.max_wait.as_millis() as u64,
                    retry_after_s: self.retry_after(),
                })
            }
        }
    }

    fn permit<'a>(
        &'a self,
        m: &'a Metrics,
        weight: usize,
        queries: usize,
        heavy: bool,
        start: Instant,
    ) -> Permit<'a> {
        m.add(&m.admitted, 1);
        Permit {
            gate: self,
            m,
            weight,
            queries,
            heavy,
            start,
        }
    }

    /// Whether `weight` slots are free for a request, within the heavy
    /// share if it is `heavy`.
    fn fits(&self, weight: usize, heavy: bool) -> bool {
        self.running.get() + weight <= self.max_running
            && (!heavy || self.heavy_running.get() + weight <= self.max_heavy)
    }

    /// Whether a request in line waits for slots to come free (not only
    /// for the heavy share): then whoever comes later waits behind it.
    fn waits_for_slots(&self) -> bool {
        self.queue
            .borrow()
            .iter()
            .any(|t| self.running.get() + t.weight > self.max_running)
    }

    /// Whether a new request may take its slots now: they are free, and
    /// nobody in line comes first (a light request passes heavy ones held
    /// back by their share; a heavy one passes nobody).
    fn may_pass(&self, weight: usize, heavy: bool) -> bool {
        self.fits(weight, heavy)
            && !self.waits_for_slots()
            && !(heavy && self.queue.borrow().iter().any(|t| t.heavy))
    }

    fn take(&self, m: &Metrics, weight: usize, heavy: bool) {
        self.running.set(self.running.get() + weight);
        if heavy {
            self.heavy_running.set(self.heavy_running.get() + weight);
        }
        m.gauge_add(&m.searches_running, weight as u64);
    }

    /// Gives `weight` slots back and hands free slots to the line, in
    /// order; heavy requests held back by their share let light ones
    /// behind them pass.
    fn release(&self, m: &Metrics, weight: usize, heavy: bool) {
        self.running.set(self.running.get().saturating_sub(weight));
        if heavy {
            self.heavy_running
                .set(self.heavy_running.get().saturating_sub(weight));
        }
        m.gauge_sub(&m.searches_running, weight as u64);
        let mut at = 0;
        let mut heavy_held = false;
        loop {
            let next = {
                let mut q = self.queue.borrow_mut();
                let Some(t) = q.get(at) else { break };
                if self.running.get() + t.weight > self.max_running {
                    break;
                }
                if t.heavy && (heavy_held || !self.fits(t.weight, true)) {
                    heavy_held = true;
                    at += 1;
                    continue;
                }
                q.remove(at)
            };
            let Some(t) = next else { break };
            self.queued_queries
                .set(self.queued_queries.get().saturating_sub(t.queries));
            m.gauge_sub(&m.searches_queued, 1);
            self.take(m, t.weight, t.heavy);
            t.granted.set(true);
            let waker = t.waker.borrow_mut().take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Takes `ticket` out of the line (its request gave up waiting).
    fn leave(&self, m: &Metrics, ticket: &Rc<Ticket>) {
        let mut q = self.queue.borrow_mut();
        if let Some(i) = q.iter().position(|t| Rc::ptr_eq(t, ticket)) {
            q.remove(i);
            self.queued_queries
                .set(self.queued_queries.get().saturating_sub(ticket.queries));
            m.gauge_sub(&m.searches_queued, 1);
        }
    }

    /// A request of `queries` queries on `weight` slots ended after
    /// `held`: feeds the moving average of slot time per query.
    fn record(&self, held: Duration, weight: usize, queries: usize) {
        let sample = held.as_micros() as f64 * weight as f64 / queries as f64;
        let old = self.slot_us.get();
        self.slot_us.set(if old == 0.0 {
            sample
        } else {
            old + SLOT_EWMA * (sample - old)
        });
    }

    /// How long a request of `queries` queries would run on `weight` slots.
    fn run_time(&self, weight: usize, queries: usize) -> Duration {
        Duration::from_micros((self.slot_us.get() * queries as f64 / weight as f64) as u64)
    }

    /// How long a request joining the line now would wait: the queries
    /// ahead of it (and one running) through `max_running` slots.
    pub fn expected_wait(&self) -> Duration {
        let ahead = (self.queued_queries.get() + 1) as f64;
        Duration::from_micros((ahead * self.slot_us.get() / self.max_running as f64) as u64)
    }

    /// Whole seconds until the line has drained, at least 1 (`Retry-After`).
    pub fn retry_after(&self) -> u64 {
        self.expected_wait().as_secs_f64().ceil().clamp(1.0, 60.0) as u64
    }

    /// Slots taken and requests waiting.
    pub fn load(&self) -> (usize, usize) {
        (self.running.get(), self.queue.borrow().len())
    }
}

/// Slots held by one request; given back (and handed to the line) on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    gate: &'a Gate,
    m: &'a Metrics,
    weight: usize,
    queries: usize,
    heavy: bool,
    start: Instant,
}

impl Permit<'_> {
    /// Slots held: how many of the request's queries may run at once.
    pub fn weight(&self) -> usize {
        self.weight
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate
            .record(self.start.elapsed(), self.weight, self.queries);
        self.gate.release(self.m, self.weight, self.heavy);
    }
}

/// A place in line; see [`Gate::admit`].
struct Waiting<'a> {
    gate: &'a Gate,
    m: &'a Metrics,
    ticket: Rc<Ticket>,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.ticket.granted.get() {
            // Granted just as the wait ended: the slots were taken for it.
            self.gate
                .release(self.m, self.ticket.weight, self.ticket.heavy);
        } else {
            self.gate.leave(self.m, &self.ticket);
        }
    }
}

/// Ready once the ticket's slots were granted.
struct Granted<'a>(&'a Ticket);

impl Future for Granted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.granted.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One open connection, counted in `shardann_connections_open` and against
/// `connections.max_connections` until it drops.
pub struct ConnectionSlot {
    node: Arc<Node>,
}

impl ConnectionSlot {
    /// A slot, or `None` when the node already holds `max` connections.
    pub fn take(node: &Arc<Node>, max: usize) -> Option<Self> {
        let open = &node.metrics.connections_open;
        let before = open.fetch_add(1, Ordering::Relaxed);
        if before >= max as u64 {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot {
            node: Arc::clone(node),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.node
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an HTTP/2 connection is doing: requests in flight and when the
/// last one started or ended, for its idle timeout.
#[derive(Debug)]
pub struct Activity {
    in_flight: Cell<usize>,
    requests: Cell<u64>,
    last: Cell<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: Cell::new(0),
            requests: Cell::new(0),
            last: Cell::new(Instant::now()),
        }
    }
}

impl Activity {
    /// A request started; it counts as in flight until the guard drops.
    pub fn begin(self: &Rc<Self>) -> Busy {
        self.in_flight.set(self.in_flight.get() + 1);
        self.requests.set(self.requests.get() + 1);
        self.last.set(Instant::now());
        Busy(Rc::clone(self))
    }

    /// Requests started on the connection so far.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// When the connection counts as idle if nothing starts before:
    /// `None` while a request is in flight. Before its first request a
    /// connection gets `first` (the header bound), afterwards `idle`.
    pub fn idle_at(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.get() > 0 {
            return None;
        }
        let bound = if self.requests.get() == 0 {
            first
        } else {
            idle
        };
        Some(self.last.get() + bound)
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct Busy(Rc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.in_flight.set(a.in_flight.get().saturating_sub(1));
        a.last.set(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    fn gate(max_running: usize, max_queued: usize, max_wait_ms: u64) -> Rc<Gate> {
        Rc::new(Gate::new(
            &AdmissionConfig {
                max_running,
                max_queued,
                max_wait_ms,
                refusals_per_sec: 0,
                ..AdmissionConfig::default()
            },
            1,
            2000,
        ))
    }

    /// The defaults follow the node: slots from its local shards, the
    /// wait from its deadline.
    #[test]
    fn defaults_derive_from_the_node() {
        let c = AdmissionConfig::default();
        assert_eq!(c.max_running(1), 128);
        assert_eq!(c.max_running(2), 64);
        assert_eq!(c.max_running(6), 21);
        assert_eq!(c.max_running(100), 4);
        assert_eq!(c.max_wait(2000), Duration::from_millis(500));
        let set = AdmissionConfig {
            max_running: 3,
            max_wait_ms: 70,
            ..c
        };
        assert_eq!(set.max_running(2), 3);
        assert_eq!(set.max_wait(2000), Duration::from_millis(70));
        let t: ConnectionConfig = toml::from_str("max_connections = 9").unwrap();
        assert_eq!(t.max_connections(), 9);
        assert_eq!(t.max_streams, DEFAULT_MAX_STREAMS);
        let derived = ConnectionConfig::default().max_connections();
        assert!((16..=DEFAULT_MAX_CONNECTIONS_CAP).contains(&derived));
        assert!(toml::from_str::<ConnectionConfig>("max_conections = 9").is_err());
    }

    /// Slots are handed out up to `max_running`, then requests wait in
    /// line and get the slots in order as they come free; beyond
    /// `max_queued` a request is refused at once, naming the limit.
    #[test]
    fn slots_then_a_bounded_line_then_refusals() {
        run(|| async {
            let m = Rc::new(Metrics::new(0));
            let g = gate(2, 2, 1000);
            let far = Instant::now() + Duration::from_secs(10);
            let a = g.admit(&m, 1, 1, far).await.unwrap();
            let b = g.admit(&m, 1, 1, far).await.unwrap();
            assert_eq!(g.load(), (2, 0));
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut waiters = Vec::new();
            for i in 0..2 {
                let (g, m, order) = (Rc::clone(&g), Rc::clone(&m), Rc::clone(&order));
                waiters.push(glommio::spawn_local(async move {
                    let p = g.admit(&m, 1, 1, far).await.unwrap();
                    order.borrow_mut().push(i);
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    drop(p);
                }));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!(g.load(), (2, 2));
            let e = g.admit(&m, 1, 1, far).await.unwrap_err();
            assert_eq!(e.limit(), "admission.max_queued");
            assert!(e.to_string().contains("admission.max_queued"), "{e}");
            assert!(e.retry_after_s() >= 1);
            drop(a);
            drop(b);
            for w in waiters {
                w.await;
            }
            assert_eq!(*order.borrow(), vec![0, 1]);
            assert_eq!(g.load(), (0, 0));
            assert_eq!(m.searches_running.load(Ordering::Relaxed), 0);
            assert_eq!(m.searches_queued.load(Ordering::Relaxed), 0);
        });
    }

    /// A request waits at most `max_wait_ms` (and half its deadline), then
    /// gets a 503; it leaves the line, and the slot it never got stays with
    /// whoever holds it.
    #[test]
    fn a_wait_is_bounded_by_max_wait_and_the_deadline() {
        run(|| async {
            let m = Metrics::new(0);
            let g = gate(1, 10, 100);
            let held = g.admit(&m, 1, 1, Instant::now()).await.unwrap();
            let t = Instant::now();
            let e = g
                .admit(&m, 1, 1, Instant::now() + Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(matches!(e, Overload::WaitTimeout { .. }), "{e}");
            let waited = t.elapsed();
            assert!(
                waited >= Duration::from_millis(100) && waited < Duration::from_millis(500),
                "{waited:?}"
            );
            // Half of a 60 ms deadline: 30 ms.
            let t = Instant::now();
            let e = g
                .admit(&m, 1, 1, Instant::now() + Duration::from_millis(60))
                .await
                .unwrap_err();
            assert_eq!(e.limit(), "admission.max_wait_ms");
            assert!(t.elapsed() < Duration::from_millis(90), "{:?}", t.elapsed());
            assert_eq!(g.load(), (1, 0));
            drop(held);
            assert_eq!(g.load(), (0, 0));
        });
    }

    /// Once the gate knows how long a query holds a slot, a request that
    /// would wait longer than it may is refused at once instead of waiting
    /// in vain.
    #[test]
    fn a_hopeless_wait_is_refused_at_once() {
        run(|| async {
            let m = Rc::new(Metrics::new(0));
            let g = gate(1, 100, 1000);
            // One query holding the slot for 50 ms teaches the gate.
            let p = g.admit(&m, 1, 1, Instant::now()).await.unwrap();
            glommio::timer::sleep(Duration::from_millis(50)).await;
            drop(p);
            let held = g.admit(&m, 1, 1, Instant::now()).await.unwrap();
            let far = Instant::now() + Duration::from_secs(10);
            let mut waiters = Vec::new();
            for _ in 0..10 {
                let (g, m) = (Rc::clone(&g), Rc::clone(&m));
                waiters.push(glommio::spawn_local(async move {
                    g.admit(&m, 1, 1, far).await.map(|_| ()).is_ok()
                }));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
            // 10 ahead at ~50 ms each: ~550 ms, more than 300 / 2 ms.
            let t = Instant::now();
            let e = g
                .admit(&m, 1, 1, Instant::now() + Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(matches!(e, Overload::Busy { .. }), "{e}");
            assert!(t.elapsed() < Duration::from_millis(20));
            // Over max_wait whatever the deadline: refused before parsing.
            for _ in 0..20 {
                let (g, m) = (Rc::clone(&g), Rc::clone(&m));
                waiters.push(glommio::spawn_local(async move {
                    g.admit(&m, 1, 1, far).await.map(|_| ()).is_ok()
                }));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
            let e = g.precheck(&m).unwrap_err();
            assert_eq!(e.limit(), "admission.max_wait_ms");
            drop(held);
            // The first 10 had room; of the 20 after them, those whose wait
            // would pass max_wait (1 s at ~50 ms each) were refused.
            let mut admitted = 0;
            for w in waiters {
                admitted += usize::from(w.await);
            }
            assert!((10..30).contains(&admitted), "{admitted}");
        });
    }

    /// Refusals go out at once up to the burst, then at the configured
    /// rate: a client retrying every 503 at once is slowed to that rate.
    #[test]
    fn refusals_beyond_the_rate_wait_their_turn() {
        run(|| async {
            let m = Metrics::new(0);
            let g = Gate::new(
                &AdmissionConfig {
                    refusals_per_sec: 100,
                    ..AdmissionConfig::default()
                },
                1,
                2000,
            );
            let t = Instant::now();
            // The burst: 10 at once.
            for _ in 0..10 {
                g.pace(&m, 1).await;
            }
            assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
            // The next 10 at 100 a second: about 100 ms.
            for _ in 0..10 {
                g.pace(&m, 1).await;
            }
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(80) && took < Duration::from_millis(400),
                "{took:?}"
            );
            assert!(m.refusals_paced.load(Ordering::Relaxed) >= 9);
        });
    }

    /// Issue 10, item 2: heavy requests (`list` 2,000 searches, big
    /// batches) hold at most their share of the slots, so light ones never
    /// wait behind them: with 4 slots and a heavy share of 2, a flood of
    /// heavy searches gets 2 and waits for the rest, and light searches
    /// take the other 2 at once, passing the heavy ones in line. Heavy ones
    /// keep their order among themselves.
    #[test]
    fn heavy_requests_leave_light_ones_their_slots() {
        run(|| async {
            let m = Rc::new(Metrics::new(0));
            let g = Rc::new(Gate::new(
                &AdmissionConfig {
                    max_running: 4,
                    max_queued: 10,
                    max_wait_ms: 1000,
                    refusals_per_sec: 0,
                    ..AdmissionConfig::default()
                },
                1,
                2000,
            ));
            let far = Instant::now() + Duration::from_secs(10);
            let h1 = g.admit_as(&m, 1, 1, far, true).await.unwrap();
            let h2 = g.admit_as(&m, 1, 1, far, true).await.unwrap();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut heavy = Vec::new();
            for i in 0..2 {
                let (g, m, order) = (Rc::clone(&g), Rc::clone(&m), Rc::clone(&order));
                heavy.push(glommio::spawn_local(async move {
                    let p = g.admit_as(&m, 1, 1, far, true).await.unwrap();
                    order.borrow_mut().push(i);
                    drop(p);
                }));
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
            assert_eq!(g.load(), (2, 2), "heavy searches beyond their share wait");
            // Light searches pass the heavy ones in line.
            assert!(g.precheck(&m).is_ok());
            let l1 = g.admit(&m, 1, 1, far).await.unwrap();
            let l2 = g.admit(&m, 1, 1, far).await.unwrap();
            assert_eq!(g.load(), (4, 2));
            drop(l1);
            drop(l2);
            // Light slots coming free do not go to heavy ones beyond their share.
            assert_eq!(g.load(), (2, 2));
            drop(h1);
            drop(h2);
            for h in heavy {
                h.await;
            }
            assert_eq!(*order.borrow(), vec![0, 1]);
            assert_eq!(g.load(), (0, 0));
            assert_eq!(m.searches_running.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn heavy_defaults() {
        let c = AdmissionConfig::default();
        assert_eq!(c.max_running_heavy(64), 32);
        assert_eq!(c.max_running_heavy(1), 1);
        assert!(!c.is_heavy(512) && c.is_heavy(513));
        let set: AdmissionConfig =
            toml::from_str("heavy_list = 100\nmax_running_heavy = 9").unwrap();
        assert!(set.is_heavy(101));
        assert_eq!(set.max_running_heavy(4), 4);
        assert_eq!(set.max_running_heavy(64), 9);
    }

    /// A batch takes several slots; it waits in line for all of them, and
    /// what comes after it waits behind it.
    #[test]
    fn a_batch_takes_its_slots_in_turn() {
        run(|| async {
            let m = Rc::new(Metrics::new(0));
            let g = gate(4, 10, 1000);
            let far = Instant::now() + Duration::from_secs(10);
            let one = g.admit(&m, 1, 1, far).await.unwrap();
            let (g2, m2) = (Rc::clone(&g), Rc::clone(&m));
            let batch = glommio::spawn_local(async move {
                let p = g2.admit(&m2, 8, 100, far).await.unwrap();
                p.weight()
            });
            glommio::timer::sleep(Duration::from_millis(2)).await;
            // 3 slots free, but the batch (4) is first in line.
            assert_eq!(g.load(), (1, 1));
            drop(one);
            assert_eq!(batch.await, 4);
            assert_eq!(g.load(), (0, 0));
        });
    }
}
