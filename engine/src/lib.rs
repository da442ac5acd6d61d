//! # shardann-engine
//!
//! The library half of shardann: everything needed to turn a vector file
//! into a disk-resident index and to search it, with no opinion about
//! threads or async runtimes.
//!
//! ```text
//!  base.u8bin ──► data ──► pq (train, encode) ──┐
//!                     └──► vamana (graph build) ─┴─► layout (writer) ──► disk.index + pq.bin
//!                                                              index ──► segment (sealed) ──► shard (CURRENT)
//!
//!  query ──► pq::QueryTable ──► search::BeamSearch ──(sector ids)──► io::SectorReader
//!                                   ▲                                    │
//!                                   └──────────(sector bytes)────────────┘
//! ```
//!
//! Modules, in tiers; a module uses only modules of its own or lower tiers,
//! and there are no cycles (`ARCHITECTURE.md` says how that is checked):
//!
//! | tier | module | what |
//! |---|---|---|
//! | 0 | [`element`] | [`ElemType`]: `u8`, `i8`, `f32` |
//! | 0 | [`error`] | one error enum per concern, and [`Error`], which names the file |
//! | 0 | [`progress`] | the [`progress::Progress`] trait long operations report to |
//! | 0 | `visited` | a reusable visited bitset (internal) |
//! | 1 | [`metric`] | [`Metric`], [`Element`]: distances; the only module that calls simsimd |
//! | 1 | [`fs`] | atomic file replacement, fsync, whole-file hashing |
//! | 1 | [`fusion`] | fusing a dense and a text ranked list: RRF, weighted (min-max, z-score, DBSF) |
//! | 2 | [`data`] | reading and writing `.u8bin`/`.i8bin`/`.fbin` and ground truth |
//! | 2 | `kmeans` | k-means++ and Lloyd (PQ training and the k-means partition; internal) |
//! | 3 | [`synth`] | reproducible synthetic data sets |
//! | 3 | [`groundtruth`] | exact k-NN by brute force |
//! | 3 | [`embed`] | sentence embeddings: a BERT encoder from a local folder (candle), the resumable `embed` batch job |
//! | 3 | [`eval`] | relevance judgments, nDCG/recall/MRR as pytrec_eval computes them, BEIR data sets |
//! | 3 | [`pq`] | product quantization: training, encoding, ADC tables |
//! | 3 | [`vamana`] | the DiskANN graph build (greedy search + RobustPrune) |
//! | 2 | [`wal`] | the write-ahead log of a shard's mutable part: checksummed records, group commit |
//! | 3 | [`partition`] | assigning points to shards (k-means cells or random) |
//! | 4 | [`layout`] | the on-disk format (see `format-spec/`), bytes ↔ structs; every file name |
//! | 5 | [`filter`] | payload filters: the JSON filter language, its index (roaring bitmaps) and `filters.bin` |
//! | 5 | [`text`] | BM25 text search with tantivy: analyzers, global statistics, `text.bin` |
//! | 6 | [`docs`] | documents: user ids (`keys.bin`), payloads (`docs.bin`), JSON Lines input |
//! | 5 | [`io`] | the [`io::SectorReader`] trait, io_uring and `pread` readers |
//! | 5 | [`search`] | beam search as a state machine that asks for sectors and is fed them; filtered plans |
//! | 6 | [`cache`] | node records near the entry point, held in RAM |
//! | 6 | [`navigation`] | entry points from RAM: a small graph over a sample of the points, built at open |
//! | 6 | [`clustered`] | copies of the PQ codes in a filter field's value order (opt-in) |
//! | 7 | [`index`] | one index directory: build it, open it, search it |
//! | 8 | [`budget`] | a build under a memory budget: cells, one graph each, merged on disk |
//! | 8 | [`mutable`] | a shard's mutable part: logged writes, a growing graph, the delete set |
//! | 8 | [`segment`] | an immutable, sealed, checksummed index directory |
//! | 9 | [`shard`] | a shard directory: versions and `CURRENT`; the layer that will hold a shard's other parts |
//! | 10 | [`cluster`] | a sharded index: `cluster.json`, sharded builds, in-process sharded search |
//!
//! The engine never depends on an async runtime: the server implements
//! [`io::SectorReader`] (or drives [`search::BeamSearch`]) with its own IO.
#![deny(unsafe_code)]

// The on-disk format is little-endian and vectors are written and read as
// raw bytes: refuse to build where that would silently be wrong.
#[cfg(not(target_endian = "little"))]
compile_error!("shardann's on-disk format is little-endian; big-endian targets are not supported");

pub mod budget;
pub mod cache;
pub mod capacity;
pub mod cluster;
pub mod clustered;
pub mod data;
pub mod docs;
pub mod element;
pub mod embed;
pub mod error;
pub mod eval;
pub mod filter;
pub mod fs;
pub mod fusion;
pub mod groundtruth;
pub mod index;
pub mod io;
mod kmeans;
pub mod layout;
pub mod merge;
pub mod metric;
pub mod mutable;
pub mod navigation;
pub mod partition;
pub mod pq;
pub mod progress;
pub mod search;
pub mod segment;
pub mod shard;
pub mod shard_plan;
pub mod synth;
pub mod text;
pub mod vamana;
mod visited;
pub mod wal;

pub use element::ElemType;
pub use error::{
    BeirError, ClusterFileError, DataError, DocsError, EmbedError, Error, FormatError, FusionError,
    ManifestError, PlanError, Result, SegmentError, TextError, WalError, WriteError,
};
pub use metric::{Element, Metric};
