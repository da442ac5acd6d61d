//! The on-disk format, version 1: bytes ↔ structs. The normative text is
//! `format-spec/`; every struct here links to its page.
//!
//! ```text
//!  disk.index                                   pq.bin
//!  ┌──────────────┐ sector 0                    ┌────────────────────┐
//!  │ IndexHeader  │ (128 B used, rest zero)     │ PqHeader (64 B)    │
//!  ├──────────────┤ sector 1                    │ chunk offsets      │
//!  │ rec 0 │ rec 1 │ … │ pad │                  │ centre (dim f32)   │
//!  ├──────────────┤ sector 2                    │ pivots (256×dim)   │
//!  │ rec k │ …         │ pad │                  │ codes (n×M u8)     │
//!  └──────────────┘                             │ xxh3-64 footer     │
//!   rec = vector │ u32 degree │ R × u32 ids     └────────────────────┘
//! ```
//!
//! | file | what |
//! |---|---|
//! | `header.rs` | [`IndexHeader`]: sector 0 of `disk.index`, its checks |
//! | `node.rs` | [`NodeLocation`], [`NodeRecord`]: where a node lives, decoding it |
//! | `writer.rs` | [`write_index`]: vectors + graph → `disk.index` |
//! | `pqfile.rs` | `pq.bin`: [`write_pq`], [`read_pq`] |
//! | `ids.rs` | `ids.bin` of a shard: [`write_ids`], [`read_ids`] |
//!
//! Parsers here must never panic on corrupt bytes: indexing and unwrap are
//! denied in this module, every read is bounds-checked.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

mod header;
mod ids;
mod node;
mod pqfile;
mod writer;

pub use header::{IndexHeader, HEADER_BYTES, INDEX_MAGIC, MAJOR_VERSION, MINOR_VERSION};
pub use ids::{read_ids, write_ids, IDS_MAGIC};
pub use node::{NodeLocation, NodeRecord, SectorGeometry};
pub use pqfile::{read_pq, write_pq, PqFile, PQ_MAGIC};
pub use writer::write_index;

/// Every file's unit of IO and alignment.
pub const SECTOR: usize = 4096;

/// What can be wrong with the bytes of an index file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("bad magic bytes {found:02x?}: not a shardann {what} file")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("format version {major}.{minor} is not supported (this build reads {supported}.x)")]
    UnsupportedVersion {
        major: u16,
        minor: u16,
        supported: u16,
    },
    #[error("{what} checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        what: &'static str,
        stored: u64,
        computed: u64,
    },
    #[error("truncated: {what} needs bytes {offset}..{end}, but the file has {file_len}")]
    Truncated {
        what: &'static str,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("invalid {field} = {value}: {why}")]
    Invalid {
        field: &'static str,
        value: u64,
        why: String,
    },
    #[error("node {node} (sector {sector}): {why}")]
    CorruptNode { node: u64, sector: u64, why: String },
}

/// Little-endian u32s of `bytes` (a trailing partial word is ignored).
pub(crate) fn le_u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
}

/// Little-endian f32s of `bytes` (a trailing partial word is ignored).
pub(crate) fn le_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    le_u32s(bytes).map(f32::from_bits)
}
