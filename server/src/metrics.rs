//! Counters for `GET /metrics`, in Prometheus' text format.
//!
//! Plain atomics shared by every executor: one relaxed `fetch_add` per event
//! is cheap next to a disk read, and a scrape reads them without stopping
//! anything. Values seen together in one scrape may be a few events apart.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The endpoints counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Search = 0,
    Batch = 1,
    Shards = 2,
    Health = 3,
    Metrics = 4,
    Replication = 5,
    Other = 6,
    Write = 7,
}

const ENDPOINTS: [&str; 8] = [
    "search",
    "batch",
    "shards",
    "healthz",
    "metrics",
    "replication",
    "other",
    "write",
];

/// Why a search request was refused before it ran (a 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The executor's line was full (`admission.max_queued`).
    QueueFull = 0,
    /// The line ahead would take longer than the request may wait.
    Busy = 1,
    /// It waited as long as it may without getting a slot.
    WaitTimeout = 2,
}

const SHED_REASONS: [&str; 3] = ["queue_full", "busy", "wait_timeout"];

/// Why the node closed a client's connection (or one of its requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Headers (or a new connection's first bytes) not sent in time.
    HeaderTimeout = 0,
    /// A request body not sent in time (the request gets a 408).
    BodyTimeout = 1,
    /// An HTTP/2 connection without a request for `idle_timeout_ms`.
    Idle = 2,
}

const CLOSE_REASONS: [&str; 3] = ["header_timeout", "body_timeout", "idle"];

/// Every counter of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; 8],
    /// Responses with status 4xx, by endpoint.
    client_errors: [AtomicU64; 8],
    /// Responses with status 5xx, by endpoint.
    server_errors: [AtomicU64; 8],
    /// Search and batch latency: bucket counts (not cumulative here), sum.
    latency_buckets: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Vectors searched (a batch counts each of its vectors).
    pub queries: AtomicU64,
    pub partial_responses: AtomicU64,
    /// Local shard searches, their sectors read and node-cache hits.
    pub shard_searches: AtomicU64,
    /// Local shard BM25 searches.
    pub text_searches: AtomicU64,
    /// Query texts embedded with the node's model, and the wall time the
    /// embedding took (a batch's texts share one pass).
    pub embedded_texts: AtomicU64,
    pub embed_us: AtomicU64,
    pub sectors_read: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Local shard searches that failed (IO error, deadline).
    pub shard_failures: AtomicU64,
    /// Of those, the ones that missed the deadline.
    pub shard_timeouts: AtomicU64,
    /// Search requests given slots ([`crate::admission::Gate`]), the time
    /// those that waited spent in line, and the ones refused, by reason.
    pub admitted: AtomicU64,
    admission_wait_us: AtomicU64,
    admission_waits: AtomicU64,
    shed: [AtomicU64; 3],
    /// Refusals to clients held back to `admission.refusals_per_sec`.
    pub refusals_paced: AtomicU64,
    /// Gauges: search slots taken and requests waiting, all executors.
    pub searches_running: AtomicU64,
    pub searches_queued: AtomicU64,
    /// Gauge: client connections open (the node's cap counts these).
    pub connections_open: AtomicU64,
    /// Connections refused at the cap, and those closed for slowness.
    pub connections_refused: AtomicU64,
    closed: [AtomicU64; 3],
    /// Shard pulls from peers (at startup or `replicate`), and failed ones.
    pub pulls: AtomicU64,
    pub pull_failures: AtomicU64,
    /// Local shards switched to a newer version while serving.
    pub version_switches: AtomicU64,
    /// Documents upserted and deleted by acknowledged writes.
    pub documents_upserted: AtomicU64,
    pub documents_deleted: AtomicU64,
    /// Merges of a shard's writes into a new version, and failed ones.
    pub merges: AtomicU64,
    pub merge_failures: AtomicU64,
    /// Write records a primary did not apply on a replica it could not
    /// reach (that replica catches up from the log when back), and
    /// records a replica applied from its primary.
    pub replica_push_skipped: AtomicU64,
    pub records_replicated: AtomicU64,
    /// Per peer, in the order peers were first seen (the routing's peer
    /// index): requests sent, requests failed. Grows as peers join.
    peer_counts: std::sync::Mutex<Vec<[u64; 2]>>,
    /// Gauge: 1 when the control plane can be reached (always, in static
    /// mode), 0 while etcd cannot.
    pub coordination_available: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn new(peers: usize) -> Self {
        Metrics {
            peer_counts: std::sync::Mutex::new(vec![[0; 2]; peers]),
            coordination_available: AtomicU64::new(1),
            ..Default::default()
        }
    }

    /// One response sent.
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        let e = endpoint as usize;
        if let Some(c) = self.requests.get(e) {
            inc(c);
        }
        let errors = match status {
            400..=499 => &self.client_errors,
            500..=599 => &self.server_errors,
            _ => return,
        };
        if let Some(c) = errors.get(e) {
            inc(c);
        }
    }

    /// One search or batch request's latency.
    pub fn latency(&self, micros: u64) {
        let secs = micros as f64 / 1e6;
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.latency_buckets.get(b) {
            inc(c);
        }
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn peer_call(&self, peer: usize, failed: bool) {
        let mut counts = self.peer_counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() <= peer {
            counts.resize(peer + 1, [0; 2]);
        }
        counts[peer][0] += 1;
        counts[peer][1] += u64::from(failed);
    }

    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge_add(&self, gauge: &AtomicU64, n: u64) {
        gauge.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge_sub(&self, gauge: &AtomicU64, n: u64) {
        gauge.fetch_sub(n, Ordering::Relaxed);
    }

    /// A search request refused before it ran.
    pub fn shed(&self, why: Shed) {
        if let Some(c) = self.shed.get(why as usize) {
            inc(c);
        }
    }

    /// A request that waited `waited` in line got its slots.
    pub fn admission_wait(&self, waited: std::time::Duration) {
        inc(&self.admission_waits);
        self.admission_wait_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// A connection (or a request on it) cut for slowness.
    pub fn closed(&self, why: Closed) {
        if let Some(c) = self.closed.get(why as usize) {
            inc(c);
        }
    }

    /// Requests refused for `why` so far.
    pub fn shed_count(&self, why: Shed) -> u64 {
        self.shed.get(why as usize).map_or(0, get)
    }

    /// The Prometheus text exposition (format 0.0.4). `peers` names the
    /// peers in configuration order, each with whether it is up (answered
    /// its last call).
    pub fn render(&self, node_id: &str, peers: &[(String, bool)]) -> String {
        let mut out = String::with_capacity(4096);
        let node = escape(node_id);
        let _ = writeln!(
            out,
            "# HELP shardann_requests_total HTTP requests answered, by endpoint.\n# TYPE shardann_requests_total counter"
        );
        for (i, name) in ENDPOINTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardann_requests_total{{node=\"{node}\",endpoint=\"{name}\"}} {}",
                get(&self.requests[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardann_request_errors_total Responses with an error status, by endpoint and class.\n# TYPE shardann_request_errors_total counter"
        );
        for (i, name) in ENDPOINTS.iter().enumerate() {
            for (class, counters) in [("4xx", &self.client_errors), ("5xx", &self.server_errors)] {
                let _ = writeln!(
                    out,
                    "shardann_request_errors_total{{node=\"{node}\",endpoint=\"{name}\",class=\"{class}\"}} {}",
                    get(&counters[i])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP shardann_request_duration_seconds Latency of search and batch requests.\n# TYPE shardann_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency_buckets[i]);
            let _ = writeln!(
                out,
                "shardann_request_duration_seconds_bucket{{node=\"{node}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.latency_buckets[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "shardann_request_duration_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {cumulative}\n\
             shardann_request_duration_seconds_sum{{node=\"{node}\"}} {}\n\
             shardann_request_duration_seconds_count{{node=\"{node}\"}} {cumulative}",
            get(&self.latency_sum_us) as f64 / 1e6
        );
        for (name, help, c) in [
            (
                "shardann_queries_total",
                "Vectors searched (batch vectors counted one by one).",
                &self.queries,
            ),
            (
                "shardann_partial_responses_total",
                "Responses that lacked a shard (partial: true).",
                &self.partial_responses,
            ),
            (
                "shardann_shard_searches_total",
                "Searches of a local shard.",
                &self.shard_searches,
            ),
            (
                "shardann_text_searches_total",
                "BM25 searches of a local shard's text index.",
                &self.text_searches,
            ),
            (
                "shardann_embedded_texts_total",
                "Query texts embedded with the node's model.",
                &self.embedded_texts,
            ),
            (
                "shardann_documents_upserted_total",
                "Documents inserted or replaced by acknowledged writes.",
                &self.documents_upserted,
            ),
            (
                "shardann_documents_deleted_total",
                "Documents deleted by acknowledged writes.",
                &self.documents_deleted,
            ),
            (
                "shardann_merges_total",
                "Merges of a shard's logged writes into a new segment version.",
                &self.merges,
            ),
            (
                "shardann_merge_failures_total",
                "Merges that failed (the shard kept its version and its log).",
                &self.merge_failures,
            ),
            (
                "shardann_replica_pushes_skipped_total",
                "Write records this primary acknowledged without a replica it could not reach.",
                &self.replica_push_skipped,
            ),
            (
                "shardann_records_replicated_total",
                "Write records this replica applied from its primary (pushed or caught up).",
                &self.records_replicated,
            ),
            (
                "shardann_shard_failures_total",
                "Local shard searches that failed or missed the deadline.",
                &self.shard_failures,
            ),
            (
                "shardann_shard_timeouts_total",
                "Local shard searches that missed the deadline (also counted as failures).",
                &self.shard_timeouts,
            ),
            (
                "shardann_admitted_total",
                "Search requests given search slots (admission).",
                &self.admitted,
            ),
            (
                "shardann_admission_waits_total",
                "Admitted search requests that waited in line for a slot.",
                &self.admission_waits,
            ),
            (
                "shardann_refusals_paced_total",
                "503s to clients held back to admission.refusals_per_sec.",
                &self.refusals_paced,
            ),
            (
                "shardann_connections_refused_total",
                "Connections refused at connections.max_connections.",
                &self.connections_refused,
            ),
            (
                "shardann_sectors_read_total",
                "4 KiB sectors read from local shards.",
                &self.sectors_read,
            ),
            (
                "shardann_cache_hits_total",
                "Graph nodes served from a node cache instead of disk.",
                &self.cache_hits,
            ),
            (
                "shardann_pulls_total",
                "Shard versions pulled from peers.",
                &self.pulls,
            ),
            (
                "shardann_version_switches_total",
                "Local shards switched to a newer version while serving.",
                &self.version_switches,
            ),
            (
                "shardann_pull_failures_total",
                "Attempts to pull a shard that failed (retried, or given up).",
                &self.pull_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardann_admission_wait_seconds_total Time admitted search requests waited in line.\n# TYPE shardann_admission_wait_seconds_total counter\nshardann_admission_wait_seconds_total{{node=\"{node}\"}} {}",
            get(&self.admission_wait_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP shardann_embed_seconds_total Time spent embedding query texts with the node's model.\n# TYPE shardann_embed_seconds_total counter\nshardann_embed_seconds_total{{node=\"{node}\"}} {}",
            get(&self.embed_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP shardann_shed_total Search requests refused with a 503 before they ran, by reason.\n# TYPE shardann_shed_total counter"
        );
        for (i, reason) in SHED_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardann_shed_total{{node=\"{node}\",reason=\"{reason}\"}} {}",
                get(&self.shed[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardann_connections_closed_total Client connections (body_timeout: requests) cut for slowness or idleness, by reason.\n# TYPE shardann_connections_closed_total counter"
        );
        for (i, reason) in CLOSE_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardann_connections_closed_total{{node=\"{node}\",reason=\"{reason}\"}} {}",
                get(&self.closed[i])
            );
        }
        for (name, help, g) in [
            (
                "shardann_searches_running",
                "Search slots taken, all executors.",
                &self.searches_running,
            ),
            (
                "shardann_searches_queued",
                "Search requests waiting for a slot, all executors.",
                &self.searches_queued,
            ),
            (
                "shardann_connections_open",
                "Client connections open.",
                &self.connections_open,
            ),
            (
                "shardann_coordination_available",
                "1 while the control plane (etcd) can be reached, or in static mode; 0 while it cannot (the node serves with the last known routing).",
                &self.coordination_available,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {}",
                get(g)
            );
        }
        let counts = self
            .peer_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, help, which) in [
            (
                "shardann_peer_calls_total",
                "Requests sent to a peer, retries included.",
                0,
            ),
            (
                "shardann_peer_failures_total",
                "Requests to a peer that failed or timed out.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, (id, _)) in peers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",peer=\"{}\"}} {}",
                    escape(id),
                    counts.get(i).map_or(0, |c| c[which])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP shardann_peer_up 1 if the peer answered this node's last call to it (or was not called yet), 0 if that call failed.\n# TYPE shardann_peer_up gauge"
        );
        for (id, up) in peers {
            let _ = writeln!(
                out,
                "shardann_peer_up{{node=\"{node}\",peer=\"{}\"}} {}",
                escape(id),
                u8::from(*up)
            );
        }
        out
    }
}

/// A label value as Prometheus wants it quoted.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::new(2);
        m.request(Endpoint::Search, 200);
        m.request(Endpoint::Search, 400);
        m.latency(300);
        m.latency(3_000);
        m.latency(10_000_000);
        m.peer_call(1, true);
        m.shed(Shed::QueueFull);
        m.shed(Shed::Busy);
        m.shed(Shed::Busy);
        m.closed(Closed::Idle);
        m.gauge_add(&m.connections_open, 3);
        m.gauge_sub(&m.connections_open, 1);
        m.admission_wait(std::time::Duration::from_millis(250));
        let text = m.render("n\"1", &[("a".into(), true), ("b".into(), false)]);
        assert!(text.contains("shardann_shed_total{node=\"n\\\"1\",reason=\"busy\"} 2\n"));
        assert!(text.contains("reason=\"queue_full\"} 1\n"));
        assert!(text.contains("reason=\"wait_timeout\"} 0\n"));
        assert!(
            text.contains("shardann_connections_closed_total{node=\"n\\\"1\",reason=\"idle\"} 1\n")
        );
        assert!(text.contains("shardann_connections_open{node=\"n\\\"1\"} 2\n"));
        assert!(text.contains("shardann_admission_wait_seconds_total{node=\"n\\\"1\"} 0.25\n"));
        assert!(text.contains("# TYPE shardann_searches_queued gauge"));
        assert!(
            text.contains("shardann_requests_total{node=\"n\\\"1\",endpoint=\"search\"} 2"),
            "{text}"
        );
        assert!(text.contains("endpoint=\"search\",class=\"4xx\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 1\n"));
        assert!(text.contains("le=\"0.005\"} 2\n"));
        assert!(text.contains("le=\"5\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains("shardann_request_duration_seconds_count{node=\"n\\\"1\"} 3"));
        assert!(text.contains("shardann_peer_failures_total{node=\"n\\\"1\",peer=\"b\"} 1"));
        assert!(text.contains("shardann_peer_calls_total{node=\"n\\\"1\",peer=\"a\"} 0"));
        assert!(text.contains("shardann_peer_up{node=\"n\\\"1\",peer=\"a\"} 1"));
        assert!(text.contains("shardann_peer_up{node=\"n\\\"1\",peer=\"b\"} 0"));
    }
}
