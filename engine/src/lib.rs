//! # shardann-engine
//!
//! The library half of shardann: everything needed to turn a Big-ANN vector
//! file into a disk-resident index and to search it, with no opinion about
//! threads or async runtimes.
//!
//! ```text
//!  base.u8bin ──► data ──► pq (train, encode) ──┐
//!                     └──► vamana (graph build) ─┴─► layout (writer) ──► disk.index + pq.bin
//!
//!  query ──► pq::QueryTable ──► search::BeamSearch ──(sector ids)──► io::SectorReader
//!                                   ▲                                    │
//!                                   └──────────(sector bytes)────────────┘
//! ```
//!
//! * [`data`]: reading and writing `.u8bin`/`.i8bin`/`.fbin` and ground truth.
//! * [`metric`]: the distance functions; the only module that calls simsimd.
//! * [`pq`]: product quantization: k-means training, encoding, ADC tables.
//! * [`vamana`]: the DiskANN graph build (greedy search + RobustPrune).
//! * [`layout`]: the on-disk format (see `format-spec/`), bytes ↔ structs.
//! * [`io`]: the [`io::SectorReader`] trait and a `pread` implementation.
//! * [`search`]: beam search, written as a state machine that asks for sectors
//!   and is fed their bytes, so a synchronous loop and an async runtime can
//!   both drive it.
//! * [`index`]: the glue: build an index directory, open one for search.
//!
//! The engine never depends on an async runtime: the server implements
//! [`io::SectorReader`] (or drives [`search::BeamSearch`]) with its own IO.
#![deny(unsafe_code)]

// The on-disk format is little-endian and vectors are written and read as
// raw bytes: refuse to build where that would silently be wrong.
#[cfg(not(target_endian = "little"))]
compile_error!("shardann's on-disk format is little-endian; big-endian targets are not supported");

pub mod cache;
pub mod cluster;
pub mod data;
pub mod error;
pub mod groundtruth;
pub mod index;
pub mod io;
pub mod layout;
pub mod metric;
pub mod partition;
pub mod pq;
pub mod progress;
pub mod search;
pub mod segment;
pub mod synth;
pub mod vamana;
mod visited;

pub use error::{Error, Result};
pub use metric::{Element, Metric};
