//! # shardann-server
//!
//! Thread-per-core search over a shardann disk index: one glommio executor
//! per core, each running many queries at once, reading node sectors with
//! `O_DIRECT` through io_uring.
//!
//! ```text
//!  run_queries ──► LocalExecutorPoolBuilder (MaxSpread: one executor per core)
//!                     │  per executor: a DmaFile + C tasks
//!                     ▼
//!                  shard::search_one ──► engine BeamSearch (sans-IO state machine)
//!                     │   W node ids per round              ▲
//!                     ▼                                     │ records
//!                  DmaFile::read_at_aligned × W ── decode ──┘
//! ```
//!
//! * [`shard`]: one query driven by async reads; the async twin of the
//!   engine's synchronous `DiskIndex::search`, with identical results.
//! * [`runtime`]: starts the executors, hands out queries through one atomic
//!   counter, gathers results in query order.
//! * [`error`]: [`ServerError`], which adds the executor, node, sector and
//!   query to what went wrong.
//!
//! The engine knows nothing of glommio: it only names the nodes it needs.
//! No `unsafe` is needed here: glommio's `DmaFile` owns the aligned buffers.
#![deny(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod rt;
pub mod runtime;
pub mod serve;
pub mod shard;

pub use config::NodeConfig;
pub use error::{Result, ServerError};
pub use runtime::{run_queries, run_queries_on, QueryResult, RuntimeConfig, DEFAULT_IO_MEMORY};
pub use serve::{start, RunningNode};
pub use shard::{open_index_file, search_one};
