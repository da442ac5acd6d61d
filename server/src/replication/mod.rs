//! Copying shard versions between nodes over HTTP/2.
//!
//! ```text
//!  puller (pull.rs)                          source node (serve.rs)
//!  GET /v1/cluster ───────────────────────► cluster.json bytes (≤ 64 MiB)
//!  GET /v1/shards/S/manifest ─────────────► segment.json of S's current version (≤ 1 MiB)
//!  check both, the manifest against the local cluster.json, file sizes
//!  against pull_max_file_bytes and free space ─► only then write anything
//!  for each listed file not yet complete (each within its deadline):
//!  GET /v1/shards/S/segments/V/files/F?offset=N ► zstd chunks from byte N
//!  verify every file ─► segment.json ─► rename staging ─► open, fits
//!  cluster.json ─► publish (CURRENT)
//!
//!  follow.rs: every follow_ms, ask each replica's manifest ─► pull a newer
//!             version ─► Node::swap ─► remove retired versions once unused
//! ```
//!
//! | file | what |
//! |---|---|
//! | [`serve`] | the source side: the three `GET` endpoints, the cluster token, the chunk stream |
//! | [`pull`](mod@pull) | the puller: staging, resume, verify, seal, rename, switch `CURRENT` |
//! | [`follow`](mod@follow) | the follower loop: newer versions from peers or local builds, swapped in while serving |
//!
//! Files are staged in `shard-S/vV.partial/`, which no reader opens; an
//! interrupted pull resumes from what is there (`offset` = bytes already
//! written). Only after every file's size and XXH3-64 match the manifest is
//! the staging directory sealed with the source's manifest, renamed to
//! `vV/`, verified again, and made current atomically: a crash at any point
//! leaves the old version or the new one current, never a mixture.
//!
//! Wire format of a file body (`application/x-shardann-zstd-chunks`): a
//! sequence of chunks, each `u32 compressed length, u32 raw length`
//! (little-endian) followed by one zstd frame holding `raw length` bytes of
//! the file. Spec: `format-spec/replication.md`.

pub mod follow;
pub mod pull;
pub mod serve;

pub use follow::{follow, remote_version};
pub use pull::PullError;
pub use pull::{
    pull, pull_blocking, PullLimits, PullReport, DEFAULT_PULL_MAX_FILE_BYTES,
    DEFAULT_PULL_MIN_BYTES_PER_SEC,
};
pub use serve::{
    authorize, cluster_file, file_body, manifest_file, parse_shard, FileRequest, Refusal,
};

/// Raw bytes per chunk of a file transfer.
pub const CHUNK: usize = 1 << 20;
/// zstd level for transfers: the library's default, about 300–500 MB/s a core.
pub(crate) const LEVEL: i32 = 3;
/// How long a replication exchange may go without progress (an answer, or
/// the next part of a file) before it is abandoned and retried.
pub(crate) const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the follower waits for a peer's manifest.
pub const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest segment version (the engine's: a version directory name has
/// room for no more). Versions in URLs and versions a peer announces are
/// refused above it.
pub(crate) use shardann_engine::layout::MAX_VERSION;
/// The content type of a file transfer.
pub const CHUNKS_CONTENT_TYPE: &str = "application/x-shardann-zstd-chunks";
