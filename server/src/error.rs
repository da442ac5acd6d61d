//! The server's error type.
//!
//! Engine errors already name their file; the variants added here say what
//! only the server knows: which executor, which node and which sectors were
//! being read, and which query was running, so a failure in one of thousands
//! of concurrent searches can be traced to a place on disk.

use std::path::PathBuf;

use shardann_engine::layout::FormatError;

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

    /// glommio could not start its executors (io_uring unavailable, memlock
    /// limit too low, more executors than CPUs, ...).
    #[error("starting {executors} glommio executor(s): {source}")]
    Runtime {
        executors: usize,
        #[source]
        source: std::io::Error,
    },

    /// An executor thread died (a panic) instead of returning its results.
    #[error("glommio executor {executor} failed: {source}")]
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

    /// A node configuration that does not parse or does not make sense.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// The node could not start serving (listen address in use, a shard
    /// missing from the index directory, ...).
    #[error("starting node {node}: {message}")]
    Start { node: String, message: String },

    /// An HTTP exchange with a node failed (connection refused, timed out,
    /// a response that is not what the API promises).
    #[error("{addr}: {message}")]
    Http { addr: String, message: String },
}
