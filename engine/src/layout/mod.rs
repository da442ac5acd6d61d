//! The on-disk formats: bytes ↔ structs. The normative text is
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
//! | `order.rs` | version 2: [`locality_order`], the slot table |
//! | `pqfile.rs` | `pq.bin`: [`write_pq`], [`read_pq`] |
//! | `ids.rs` | `ids.bin` of a shard: [`write_ids`], [`read_ids`] |
//! | `manifest.rs` | `segment.json`: [`Manifest`], version directory names |
//! | `envelope.rs` | magic, major version and XXH3-64 checks shared by the binary files |
//!
//! The names of every file and directory entry the layout defines are the
//! constants below: one place to look them up.
//!
//! Parsers here must never panic on corrupt bytes: indexing and unwrap are
//! denied in this module, every read is bounds-checked.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

mod envelope;
mod header;
mod ids;
mod manifest;
mod node;
mod order;
mod pqfile;
mod writer;

pub(crate) use envelope::{append_footer, Envelope, FOOTER_BYTES};
pub use header::{IndexHeader, NodeOrder, HEADER_BYTES, INDEX_MAGIC, MAJOR_VERSION, MINOR_VERSION};
pub use ids::{read_ids, write_ids, IDS_MAGIC};
pub use manifest::{
    hex64, is_plain_name, parse_version_dir_name, version_dir_name, BuildInfo, FileEntry, Manifest,
    FORMAT as MANIFEST_FORMAT, FORMAT_VERSION as MANIFEST_FORMAT_VERSION, MAX_MANIFEST_BYTES,
    MAX_VERSION,
};
pub use node::{NodeLocation, NodeRecord, SectorGeometry};
pub(crate) use order::slot_table_bytes;
pub use order::{locality_order, parse_slot_table, read_slot_table, sector_overlap};
pub use pqfile::{read_pq, write_pq, PqFile, PQ_MAGIC};
pub use writer::write_index;
pub(crate) use writer::{write_records, Records};

/// Every file's unit of IO and alignment.
pub const SECTOR: usize = 4096;

/// Header sector and node records (`format-spec/index.md`).
pub const INDEX_FILE: &str = "disk.index";
/// PQ codebook and codes (`format-spec/pq.md`).
pub const PQ_FILE: &str = "pq.bin";
/// Global ids of a shard's nodes (`format-spec/cluster.md`).
pub const IDS_FILE: &str = "ids.bin";
/// The build report; informational, never read by search.
pub const BUILD_INFO_FILE: &str = "build.json";
/// A segment's manifest, written last (`format-spec/segment-v1.md`).
pub const MANIFEST_FILE: &str = "segment.json";
/// A shard directory's pointer to its current version.
pub const CURRENT_FILE: &str = "CURRENT";
/// Documents' user ids, in segment order (`format-spec/documents.md`).
pub const KEYS_FILE: &str = "keys.bin";
/// Documents' payloads in zstd blocks (`format-spec/documents.md`).
pub const DOCS_FILE: &str = "docs.bin";
/// The filter index over payload fields (`format-spec/filters.md`).
pub const FILTERS_FILE: &str = "filters.bin";
/// The BM25 text index over payload fields (`format-spec/text.md`).
pub const TEXT_FILE: &str = "text.bin";
/// A sharded index's description of its shards (`format-spec/cluster.md`).
pub const CLUSTER_FILE: &str = "cluster.json";

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
