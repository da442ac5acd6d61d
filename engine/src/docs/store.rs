//! `docs.bin`: every document's payload, in zstd-compressed blocks.
//! Spec: `format-spec/documents.md`.
//!
//! ```text
//!  ┌────────────┬─────────┬─────────┬───┬────────────────────┬──────────┐
//!  │ header 16 B│ block 0 │ block 1 │ … │ table: 32 B/block  │trailer 32│
//!  └────────────┴─────────┴─────────┴───┴────────────────────┴──────────┘
//!   block = zstd( u32 count │ count × u32 length │ payload bytes )
//! ```
//!
//! The table (offset, sizes, first document, XXH3-64 of each block) is what
//! the store keeps in RAM; fetching a document is one read of one block, its
//! checksum, and a decompression. Blocks hold whole documents and close once
//! they pass a target size, so a fetch never reads two blocks.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FormatError, Result};
use crate::layout::Envelope;

pub const DOCS_MAGIC: [u8; 8] = *b"SHRDDOC\0";
const MAJOR: u16 = 1;
const MINOR: u16 = 0;
const HEADER: usize = 16;
const ENTRY: usize = 32;
const TRAILER: usize = 32;
/// Uncompressed bytes after which a block is closed. Measured on the
/// manpages-dev passages (13,796, 278 B mean; `examples/doc_blocks.rs`,
/// 2,000 fetches of 10 documents, quiet machine), block 4/8/16/32 KiB:
/// zstd ratio 2.18/2.37/2.53/2.70, µs per fetch warm 138/204/283/581,
/// cold 1346/1435/1549/2001. A fetch decompresses whole blocks, so small
/// ones win on latency; the 14 % more bytes of 4 KiB than 16 KiB are
/// small beside the vectors and the graph (1.8 MB of docs.bin in a
/// 474 MiB index there).
pub const DEFAULT_BLOCK_BYTES: usize = 4 << 10;
/// The largest uncompressed block a reader accepts: one document may be
/// larger than the target, never larger than this.
const MAX_RAW_BLOCK: u64 = 64 << 20;
const ZSTD_LEVEL: i32 = 3;
const ENVELOPE: Envelope = Envelope {
    what: "docs file",
    magic: DOCS_MAGIC,
    major: MAJOR,
};

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    reserved: U32,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER);

/// One block's entry in the table.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
struct RawEntry {
    offset: U64,
    len: U32,
    raw_len: U32,
    first_doc: U32,
    reserved: U32,
    xxh3: U64,
}
const _: () = assert!(std::mem::size_of::<RawEntry>() == ENTRY);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawTrailer {
    table_offset: U64,
    num_blocks: U64,
    num_docs: U64,
    checksum: U64,
}
const _: () = assert!(std::mem::size_of::<RawTrailer>() == TRAILER);

/// Writes `docs.bin` one document at a time, in segment-local id order.
pub struct DocStoreWriter {
    path: PathBuf,
    out: BufWriter<File>,
    block_bytes: usize,
    offset: u64,
    lengths: Vec<u32>,
    bytes: Vec<u8>,
    first_doc: u32,
    docs: u64,
    table: Vec<RawEntry>,
}

impl DocStoreWriter {
    /// Creates `path`; blocks close once they hold `block_bytes` bytes.
    pub fn create(path: &Path, block_bytes: usize) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = RawHeader {
            magic: DOCS_MAGIC,
            major: MAJOR.into(),
            minor: MINOR.into(),
            reserved: 0.into(),
        };
        out.write_all(header.as_bytes())
            .map_err(|e| Error::io(path, e))?;
        Ok(DocStoreWriter {
            path: path.to_path_buf(),
            out,
            block_bytes: block_bytes.max(1),
            offset: HEADER as u64,
            lengths: Vec::new(),
            bytes: Vec::new(),
            first_doc: 0,
            docs: 0,
            table: Vec::new(),
        })
    }

    /// Appends the next document's payload (its JSON text).
    pub fn add(&mut self, payload: &[u8]) -> Result<()> {
        let too_big = || {
            Error::InvalidParameter(format!(
                "{}: document {} has a payload of {} bytes; the limit is {} bytes",
                self.path.display(),
                self.docs,
                payload.len(),
                MAX_RAW_BLOCK / 2
            ))
        };
        if payload.len() as u64 > MAX_RAW_BLOCK / 2 {
            return Err(too_big());
        }
        if self.docs >= u32::MAX as u64 {
            return Err(Error::InvalidParameter(format!(
                "{}: more than {} documents",
                self.path.display(),
                u32::MAX
            )));
        }
        self.lengths.push(payload.len() as u32);
        self.bytes.extend_from_slice(payload);
        self.docs += 1;
        if self.bytes.len() >= self.block_bytes {
            self.close_block()?;
        }
        Ok(())
    }

    fn close_block(&mut self) -> Result<()> {
        if self.lengths.is_empty() {
            return Ok(());
        }
        let mut raw = Vec::with_capacity(4 + 4 * self.lengths.len() + self.bytes.len());
        raw.extend_from_slice(&(self.lengths.len() as u32).to_le_bytes());
        for l in &self.lengths {
            raw.extend_from_slice(&l.to_le_bytes());
        }
        raw.extend_from_slice(&self.bytes);
        let packed =
            zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| Error::io(&self.path, e))?;
        self.out
            .write_all(&packed)
            .map_err(|e| Error::io(&self.path, e))?;
        self.table.push(RawEntry {
            offset: self.offset.into(),
            len: (packed.len() as u32).into(),
            raw_len: (raw.len() as u32).into(),
            first_doc: self.first_doc.into(),
            reserved: 0.into(),
            xxh3: xxhash_rust::xxh3::xxh3_64(&packed).into(),
        });
        self.offset += packed.len() as u64;
        self.first_doc += self.lengths.len() as u32;
        self.lengths.clear();
        self.bytes.clear();
        Ok(())
    }

    /// Writes the last block, the table and the trailer, and fsyncs.
    /// Returns the file's size.
    pub fn finish(mut self) -> Result<u64> {
        self.close_block()?;
        let mut tail = Vec::with_capacity(self.table.len() * ENTRY + TRAILER);
        for e in &self.table {
            tail.extend_from_slice(e.as_bytes());
        }
        let mut trailer = RawTrailer {
            table_offset: self.offset.into(),
            num_blocks: (self.table.len() as u64).into(),
            num_docs: self.docs.into(),
            checksum: 0.into(),
        };
        tail.extend_from_slice(trailer.as_bytes().get(..TRAILER - 8).unwrap_or(&[]));
        trailer.checksum = xxhash_rust::xxh3::xxh3_64(&tail).into();
        tail.extend_from_slice(&trailer.checksum.get().to_le_bytes());
        let io = |e| Error::io(&self.path, e);
        self.out.write_all(&tail).map_err(io)?;
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        Ok(self.offset + tail.len() as u64)
    }
}

/// An open `docs.bin`: the block table in RAM, blocks read on demand.
#[derive(Debug)]
pub struct DocStore {
    path: PathBuf,
    file: File,
    table: Vec<RawEntry>,
    num_docs: u64,
}

impl DocStore {
    /// Opens and checks `path`: header, trailer, table and its checksum.
    /// Blocks are checked (XXH3-64) each time one is read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let fmt = |e| Error::format(path, e);
        let read = |offset: u64, len: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io(path, e))?;
            Ok(buf)
        };
        if file_len < (HEADER + TRAILER) as u64 {
            return Err(fmt(FormatError::Truncated {
                what: "docs header and trailer",
                offset: 0,
                end: (HEADER + TRAILER) as u64,
                file_len,
            }));
        }
        let head = read(0, HEADER)?;
        let header = RawHeader::read_from_bytes(&head).map_err(|_| {
            fmt(FormatError::Truncated {
                what: "docs header",
                offset: 0,
                end: HEADER as u64,
                file_len,
            })
        })?;
        ENVELOPE
            .check_identity(header.magic, header.major.get(), header.minor.get())
            .map_err(fmt)?;
        let tail = read(file_len - TRAILER as u64, TRAILER)?;
        let trailer = RawTrailer::read_from_bytes(&tail).map_err(|_| {
            fmt(FormatError::Truncated {
                what: "docs trailer",
                offset: file_len - TRAILER as u64,
                end: file_len,
                file_len,
            })
        })?;
        let (table_offset, blocks, docs) = (
            trailer.table_offset.get(),
            trailer.num_blocks.get(),
            trailer.num_docs.get(),
        );
        let invalid = |field: &'static str, value: u64, why: String| {
            fmt(FormatError::Invalid { field, value, why })
        };
        // The sizes must add up before anything is allocated from them.
        let table_len = blocks.checked_mul(ENTRY as u64);
        let expected = table_len
            .and_then(|t| t.checked_add(table_offset))
            .and_then(|t| t.checked_add(TRAILER as u64));
        if table_offset < HEADER as u64 || expected != Some(file_len) {
            return Err(invalid(
                "table offset",
                table_offset,
                format!("with {blocks} blocks the file would not be {file_len} bytes"),
            ));
        }
        if docs > u32::MAX as u64 {
            return Err(invalid("document count", docs, "ids are u32".into()));
        }
        let covered = read(table_offset, (file_len - 8 - table_offset) as usize)?;
        ENVELOPE
            .check_sum(&covered, trailer.checksum.get())
            .map_err(fmt)?;
        let table: Vec<RawEntry> = covered
            .chunks_exact(ENTRY)
            .take(blocks as usize)
            .filter_map(|c| RawEntry::read_from_bytes(c).ok())
            .collect();
        let mut next_offset = HEADER as u64;
        let mut next_doc = 0u64;
        for (i, e) in table.iter().enumerate() {
            let why = |w: &str| format!("block {i}: {w}");
            if e.offset.get() != next_offset {
                return Err(invalid(
                    "block offset",
                    e.offset.get(),
                    why(&format!("expected {next_offset} (blocks are contiguous)")),
                ));
            }
            if e.first_doc.get() as u64 != next_doc {
                return Err(invalid(
                    "first document",
                    e.first_doc.get().into(),
                    why(&format!("expected {next_doc}")),
                ));
            }
            if e.raw_len.get() as u64 > MAX_RAW_BLOCK || e.raw_len.get() < 4 {
                return Err(invalid(
                    "block size",
                    e.raw_len.get().into(),
                    why(&format!("must be in 4..={MAX_RAW_BLOCK}")),
                ));
            }
            next_offset = e.offset.get() + e.len.get() as u64;
            let following = table.get(i + 1).map_or(docs, |n| n.first_doc.get() as u64);
            if following <= e.first_doc.get() as u64 {
                return Err(invalid(
                    "first document",
                    following,
                    why("blocks must hold at least one document each, in order"),
                ));
            }
            next_doc = following;
        }
        if next_offset != table_offset || (blocks == 0) != (docs == 0) {
            return Err(invalid(
                "block count",
                blocks,
                format!("blocks end at {next_offset}, the table starts at {table_offset}"),
            ));
        }
        Ok(DocStore {
            path: path.to_path_buf(),
            file,
            table,
            num_docs: docs,
        })
    }

    /// The file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Documents in the store.
    pub fn len(&self) -> usize {
        self.num_docs as usize
    }

    pub fn is_empty(&self) -> bool {
        self.num_docs == 0
    }

    /// Bytes of RAM held (the block table).
    pub fn memory_bytes(&self) -> usize {
        self.table.len() * ENTRY
    }

    /// Blocks in the file.
    pub fn num_blocks(&self) -> usize {
        self.table.len()
    }

    /// How many blocks a [`get_many`](Self::get_many) of `docs` reads (each
    /// distinct block once).
    pub fn blocks_of(&self, docs: &[u32]) -> usize {
        let mut blocks: Vec<usize> = docs
            .iter()
            .map(|&d| {
                self.table
                    .partition_point(|e| e.first_doc.get() <= d)
                    .saturating_sub(1)
            })
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks.len()
    }

    /// The payload (JSON text) of document `doc`: one block read.
    pub fn get(&self, doc: u32) -> Result<Vec<u8>> {
        let mut out = self.get_many(&[doc])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// The payloads of `docs`, in the order asked; each block is read once.
    pub fn get_many(&self, docs: &[u32]) -> Result<Vec<Vec<u8>>> {
        let mut out = vec![Vec::new(); docs.len()];
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.sort_by_key(|&i| docs.get(i).copied().unwrap_or(0));
        let mut current: Option<(usize, Vec<u8>)> = None;
        for i in order {
            let doc = docs.get(i).copied().unwrap_or(0);
            if doc as u64 >= self.num_docs {
                return Err(Error::InvalidParameter(format!(
                    "{}: no document {doc}; the store holds {}",
                    self.path.display(),
                    self.num_docs
                )));
            }
            let b = self.table.partition_point(|e| e.first_doc.get() <= doc) - 1;
            if current.as_ref().map(|c| c.0) != Some(b) {
                current = Some((b, self.read_block(b)?));
            }
            let (_, raw) = current.as_ref().ok_or_else(|| self.corrupt(b, "unread"))?;
            let first = self.table.get(b).map_or(0, |e| e.first_doc.get());
            let payload = self.slice(b, raw, (doc - first) as usize)?;
            if let Some(slot) = out.get_mut(i) {
                *slot = payload.to_vec();
            }
        }
        Ok(out)
    }

    fn corrupt(&self, block: usize, why: &str) -> Error {
        Error::format(
            &self.path,
            FormatError::Invalid {
                field: "block",
                value: block as u64,
                why: why.to_string(),
            },
        )
    }

    fn read_block(&self, b: usize) -> Result<Vec<u8>> {
        let e = self
            .table
            .get(b)
            .ok_or_else(|| self.corrupt(b, "no such block"))?;
        let mut packed = vec![0u8; e.len.get() as usize];
        self.file
            .read_exact_at(&mut packed, e.offset.get())
            .map_err(|err| Error::io(&self.path, err))?;
        ENVELOPE
            .check_sum(&packed, e.xxh3.get())
            .map_err(|err| Error::format(&self.path, err))?;
        let raw = decompress(&packed, e.raw_len.get() as usize)
            .map_err(|err| self.corrupt(b, &format!("does not decompress: {err}")))?;
        if raw.len() != e.raw_len.get() as usize {
            return Err(self.corrupt(b, "decompresses to another size than the table says"));
        }
        Ok(raw)
    }

    /// Document `k` of a decompressed block.
    fn slice<'a>(&self, b: usize, raw: &'a [u8], k: usize) -> Result<&'a [u8]> {
        let word = |at: usize| -> Option<usize> {
            let bytes: [u8; 4] = raw.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(bytes) as usize)
        };
        let count = word(0).ok_or_else(|| self.corrupt(b, "no document count"))?;
        let lens_end = count
            .checked_mul(4)
            .and_then(|x| x.checked_add(4))
            .filter(|&end| end <= raw.len() && k < count)
            .ok_or_else(|| self.corrupt(b, "document count does not fit the block"))?;
        let mut start = lens_end;
        for j in 0..k {
            start += word(4 + 4 * j).ok_or_else(|| self.corrupt(b, "bad lengths"))?;
        }
        let len = word(4 + 4 * k).ok_or_else(|| self.corrupt(b, "bad lengths"))?;
        raw.get(start..start.saturating_add(len))
            .ok_or_else(|| self.corrupt(b, "a document runs past the block"))
    }
}

thread_local! {
    /// One zstd decompression context per thread, kept between fetches:
    /// creating one per block cost more than decompressing a 4–16 KiB block.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one block into a buffer of exactly `capacity` bytes at most.
fn decompress(packed: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(packed, capacity)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn write(path: &Path, docs: &[Vec<u8>], block: usize) -> u64 {
        let mut w = DocStoreWriter::create(path, block).unwrap();
        for d in docs {
            w.add(d).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn blocks_of_counts_distinct_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.bin");
        let docs: Vec<Vec<u8>> = (0..100).map(|i| vec![b'a' + (i % 26) as u8; 100]).collect();
        write(&p, &docs, 1000);
        let s = DocStore::open(&p).unwrap();
        assert!(s.num_blocks() > 5);
        assert_eq!(s.blocks_of(&[]), 0);
        assert_eq!(s.blocks_of(&[0, 1, 0]), 1);
        assert_eq!(s.blocks_of(&[99, 0]), 2);
        let all: Vec<u32> = (0..100).collect();
        assert_eq!(s.blocks_of(&all), s.num_blocks());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn round_trip_and_damage(
            docs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..60),
            block in 1usize..2000,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("docs.bin");
            let size = write(&p, &docs, block);
            prop_assert_eq!(size, std::fs::metadata(&p).unwrap().len());
            let store = DocStore::open(&p).unwrap();
            prop_assert_eq!(store.len(), docs.len());
            for (i, d) in docs.iter().enumerate() {
                prop_assert_eq!(&store.get(i as u32).unwrap(), d);
            }
            let ids: Vec<u32> = (0..docs.len() as u32).rev().collect();
            let many = store.get_many(&ids).unwrap();
            for (k, &i) in ids.iter().enumerate() {
                prop_assert_eq!(&many[k], &docs[i as usize]);
            }
            prop_assert!(store.get(docs.len() as u32).is_err());

            // Any flipped bit is caught at open or when its block is read;
            // any truncation at open. Never a panic.
            let bytes = std::fs::read(&p).unwrap();
            let i = at.index(bytes.len());
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            // Bytes 10..16 are the minor version, which any reader of this
            // major accepts by design (format-spec/documents.md), and the
            // reserved bytes: a flip there is a valid file of a newer minor.
            let reserved = (10..16).contains(&i);
            std::fs::write(&p, &bad).unwrap();
            let caught = match DocStore::open(&p) {
                Err(_) => true,
                Ok(s) => (0..docs.len() as u32).any(|d| s.get(d).is_err()),
            };
            prop_assert!(caught || reserved, "flip at {} of {} not caught", i, bytes.len());
            std::fs::write(&p, &bytes[..i]).unwrap();
            prop_assert!(DocStore::open(&p).is_err());
        }
    }

    #[test]
    fn blocks_close_at_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("docs.bin");
        let docs: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        write(&p, &docs, 64);
        let store = DocStore::open(&p).unwrap();
        assert!(store.num_blocks() > 10, "{}", store.num_blocks());
        assert_eq!(store.get(57).unwrap(), b"{\"n\":57}");
    }

    /// The golden file, written once if missing and never regenerated.
    #[test]
    fn golden_docs_v1_still_reads() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/docs-v1")
            .join(crate::layout::DOCS_FILE);
        let docs: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"text\":\"passage {i} {}\"}}",
                    "x".repeat(i * 7)
                )
                .into_bytes()
            })
            .chain([Vec::new()])
            .collect();
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write(&path, &docs, 256);
            eprintln!("wrote the golden docs file {}: commit it", path.display());
        }
        let store = DocStore::open(&path).unwrap();
        assert_eq!(store.len(), docs.len());
        assert!(store.num_blocks() > 3, "{}", store.num_blocks());
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(&store.get(i as u32).unwrap(), d);
        }
    }
}
