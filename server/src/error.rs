//! The server's error type.
//!
//! Engine errors already name their file; the variants added here say what
//! only the server knows: which executor, which node and which sectors were
//! being read, and which query was running, so a failure in one of thousands
//! of concurrent searches can be traced to a place on disk.

use std::net::SocketAddr;
use std::path::PathBuf;

use shardann_engine::FormatError;

use crate::admission::Overload;
use crate::api::ApiError;
use crate::config::{AddrError, ConfigError};
use crate::http::PeerError;
use crate::replication::{PullError, Refusal};

/// Result alias used across the server.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Every error the server returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Opening the index, or a query or parameter the engine rejected.
    #[error(transparent)]
    Engine(#[from] shardann_engine::Error),

    /// A run configuration the server cannot honour (zero executors, a query
    /// set whose dimension differs from the index, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// The runtime could not start its executors (glommio: io_uring unavailable, memlock
    /// limit too low, more executors than CPUs, ...).
    #[error("starting {executors} executor(s): {source}")]
    Runtime {
        executors: usize,
        #[source]
        source: std::io::Error,
    },

    /// An executor thread died (a panic) instead of returning its results.
    #[error("executor {executor} failed: {source}")]
    Executor {
        executor: usize,
        #[source]
        source: std::io::Error,
    },

    /// The index file could not be opened for `O_DIRECT` reads on an executor.
    #[error("{}: opening for O_DIRECT reads: {source}", path.display())]
    OpenDma {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A node read failed.
    #[error("{}: reading node {node} ({sectors} sector(s) from sector {sector}): {source}", path.display())]
    Read {
        path: PathBuf,
        node: u32,
        sector: u64,
        sectors: usize,
        #[source]
        source: std::io::Error,
    },

    /// A node read returned fewer bytes than its sectors hold: the file is
    /// shorter than its header claims.
    #[error("{}: short read of node {node} at sector {sector}: got {got} of {want} bytes", path.display())]
    ShortRead {
        path: PathBuf,
        node: u32,
        sector: u64,
        got: usize,
        want: usize,
    },

    /// A node's sectors were read but its record is not valid.
    #[error("{}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: FormatError,
    },

    /// A search failed; `source` says how.
    #[error("query {query}: {source}")]
    Query {
        query: usize,
        #[source]
        source: Box<ServerError>,
    },

    /// A filesystem operation on `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Local shard `shard` was asked for, but this node does not serve it.
    #[error("shard {shard} is not local")]
    NotLocal { shard: u32 },

    /// A node configuration that does not parse or does not make sense.
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },

    /// The node could not start serving (listen address in use, a shard
    /// missing from the index directory, ...).
    #[error("starting node {node}: {source}")]
    Start {
        node: String,
        #[source]
        source: StartError,
    },

    /// A node address given by a user that is not one.
    #[error("{url}: {source}")]
    Url {
        url: String,
        #[source]
        source: UrlError,
    },

    /// A request this node refuses as asked (a 4xx): what is wrong with it.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// A replication request this node refuses.
    #[error(transparent)]
    Refused(#[from] Refusal),

    /// A search this node has no room for now (a 503 with `Retry-After`).
    #[error(transparent)]
    Overloaded(#[from] Overload),

    #[error(transparent)]
    Write(#[from] crate::writes::WriteRefusal),

    /// An HTTP exchange with another node failed (connection refused, timed
    /// out, a status or body that is not what the API promises).
    #[error("{addr}: {source}")]
    Peer {
        addr: SocketAddr,
        #[source]
        source: PeerError,
    },

    /// A peer's answers while pulling a shard were wrong (a version out of
    /// range, a file that does not hash to its manifest, a cut transfer).
    #[error("{addr}: {source}")]
    Pull {
        addr: SocketAddr,
        #[source]
        source: PullError,
    },
}

impl ServerError {
    /// An IO error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServerError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// etcd: the cluster is not there, or not this index's, or etcd is not
    /// reachable at start.
    #[error("etcd: {0}")]
    Coordination(#[from] crate::coord::CoordError),
    #[error("shards lists shard {shard}, but {} has {shards} shard(s)", dir.display())]
    NoSuchShard {
        shard: u32,
        dir: PathBuf,
        shards: usize,
    },
    #[error("peer {peer:?} serves shard {shard}, but the cluster has {shards} shard(s)")]
    PeerShard {
        peer: String,
        shard: u32,
        shards: usize,
    },
    #[error("peer {peer:?}: address {address:?}: {source}")]
    PeerAddress {
        peer: String,
        address: String,
        #[source]
        source: AddrError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another process (often another node) listens on the address.
    #[error("listen {addr}: address already in use (is another node running there?)")]
    AddrInUse { addr: SocketAddr },
    #[error("an executor did not start within 60 s")]
    ExecutorTimeout,
    /// `model_dir` names a model that cannot embed queries for this index.
    #[error("model {}: {why}", dir.display())]
    Model { dir: PathBuf, why: String },
    /// An executor failed to open its shard files.
    #[error(transparent)]
    Executor(Box<ServerError>),
}

/// What is wrong with a node URL (`http://host:port`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    #[error("only http:// (cleartext HTTP/2) is supported")]
    NotHttp,
    #[error("give the node's address without a path, e.g. http://127.0.0.1:7001")]
    HasPath,
    #[error(transparent)]
    Address(#[from] AddrError),
}
