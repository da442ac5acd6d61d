//! # shardann-server
//!
//! Thread-per-core search over a shardann disk index: one executor per
//! core, each running many queries at once, reading node sectors with
//! `O_DIRECT`: through io_uring on glommio, or, where io_uring is not
//! allowed, with `pread` on a thread pool behind epoll executors ([`rt`]).
//!
//! ```text
//!  run_queries ──► LocalExecutorPoolBuilder (MaxSpread: one executor per core)
//!                     │  per executor: an IndexFile + C tasks
//!                     ▼
//!                  shard::search_one ──► engine BeamSearch (sans-IO state machine)
//!                     │   W node ids per round              ▲
//!                     ▼                                     │ records
//!                  IndexFile::read_at_aligned × W ── decode ┘
//! ```
//!
//! Modules, bottom up:
//!
//! * [`error`]: [`ServerError`], which adds the executor, node, sector,
//!   query, path or peer to what went wrong.
//! * [`shard`]: one query driven by async reads; the async twin of the
//!   engine's synchronous `DiskIndex::search`, with identical results.
//! * [`runtime`]: starts the executors, hands out queries through one atomic
//!   counter, gathers results in query order (no HTTP).
//! * [`rt`]: the runtime seam: glommio (io_uring) or epoll (pread on a
//!   thread pool), chosen per process; tasks, timers, deadlines, sockets,
//!   file reads, executor pools, `block_on`, and what hyper needs.
//! * [`config`]: `node.toml`, checked into a [`NodeConfig`] or a `ConfigError`.
//! * [`api`]: the JSON bodies and `ApiError`, the checks that make a 400.
//! * [`metrics`]: relaxed atomic counters, rendered as Prometheus text.
//! * [`http`]: HTTP plumbing (body limits, JSON and error replies, peer
//!   connections and requests, `PeerError`) and the one error → status map.
//! * [`node`]: the node's shared state and one executor's scatter-gather
//!   over local shards and peers.
//! * [`admission`]: search slots and a bounded line per executor (503 with
//!   `Retry-After` beyond), the node's connection cap, connection activity
//!   for idle timeouts; `[admission]` and `[connections]` in `node.toml`.
//! * [`writes`]: upserts and deletes by id into the owning shard's mutable
//!   part (`engine::mutable`): authorization, owner routing, group commit.
//! * [`replication`]: serving segment files to peers, pulling them, and
//!   following newer versions while serving.
//! * [`etcd`]: a blocking etcd v3 client over etcd's JSON gateway.
//! * [`coord`]: the control plane on etcd: registration under a lease,
//!   the watched view of the cluster, published versions.
//! * [`serve`]: starts a node; the route table and the request handlers.
//! * [`client`]: blocking entry points for `bench --server` and tests.
//!
//! The engine knows nothing of glommio: it only names the nodes it needs.
//! No `unsafe` is needed here: glommio's `DmaFile` and the engine's
//! `AlignedBuf` own the aligned buffers.
#![deny(unsafe_code)]

pub mod admission;
pub mod api;
pub mod client;
pub mod config;
pub mod coord;
pub mod error;
pub mod etcd;
pub mod http;
pub mod metrics;
pub mod node;
pub mod primary;
pub mod replication;
pub mod rt;
pub mod runtime;
pub mod serve;
pub mod shard;
pub mod writes;

pub use config::NodeConfig;
pub use error::{Result, ServerError};
pub use runtime::{run_queries, run_queries_on, QueryResult, RuntimeConfig, DEFAULT_IO_MEMORY};
pub use serve::{start, RunningNode};
pub use shard::{open_index_file, search_one, search_one_filtered};
