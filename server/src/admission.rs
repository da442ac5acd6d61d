//! Admission: what a node takes on from its clients' connections, so that
//! slow, idle or too many clients cannot hold it.
//!
//! ```text
//!  accept ─► ConnectionSlot::take ──(connections.max_connections, node-wide)──► over: 503, close
//!    │        header, body and idle bounds, HTTP/2 pings (serve.rs, [connections])
//!    ▼
//!  request ─► body (within body_timeout_ms, else 408) ─► handler
//! ```
//!
//! Why: a body trickled at a byte a second and an idle HTTP/2 connection
//! were still open after 70 s, and a node accepted 18,561 idle connections
//! (its open-file limit was 20,000).
//!
//! | item | what |
//! |---|---|
//! | [`ConnectionConfig`] | `[connections]` in `node.toml` |
//! | [`ConnectionSlot`] | one open connection, counted against the node's cap |
//! | [`Activity`], [`Busy`] | an HTTP/2 connection's requests in flight, for its idle bound |

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::Node;

/// HTTP/2 streams one connection may have open, by default (hyper's is 200;
/// this node's was 1,024).
pub const DEFAULT_MAX_STREAMS: u32 = 128;
/// The most connections a node accepts by default, whatever the file limit.
pub const DEFAULT_MAX_CONNECTIONS_CAP: usize = 4096;

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

    /// Every key is optional; 0 connections means "from the file limit".
    #[test]
    fn connection_defaults() {
        let t: ConnectionConfig = toml::from_str("max_connections = 9").unwrap();
        assert_eq!(t.max_connections(), 9);
        assert_eq!(t.max_streams, DEFAULT_MAX_STREAMS);
        let derived = ConnectionConfig::default().max_connections();
        assert!((16..=DEFAULT_MAX_CONNECTIONS_CAP).contains(&derived));
        assert!(toml::from_str::<ConnectionConfig>("max_conections = 9").is_err());
    }
}
