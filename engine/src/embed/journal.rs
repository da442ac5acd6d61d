//! The checkpoint of an embed run: a journal of finished batches, so that a
//! run killed at any moment (kill -9, power cut) continues where its last
//! durable batch ended. Spec: `format-spec/embed.md`.
//!
//! ```text
//!  ┌──────────────────────────┐
//!  │ header (104 B, XXH3)     │  written whole by temp file + fsync + rename
//!  ├──────────────────────────┤
//!  │ record: batch 17         │  appended, then fdatasync: durable or torn
//!  │ record: batch 18         │
//!  │ … torn tail? dropped     │  a record whose checksum fails ends the journal
//!  └──────────────────────────┘
//! ```
//!
//! A record is a batch number, its rows and their vectors, and an XXH3-64
//! of all that. Opening a journal keeps the records that check, cuts off
//! anything after the first that does not (a record cut short by a kill),
//! and refuses a header made by another run (other model, input, fields,
//! batch size, part…): vectors of two runs are never mixed.

#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{EmbedError, Error, Result};

/// The journal's magic bytes.
pub const MAGIC: [u8; 8] = *b"SHEMBJNL";
/// Format version: a major bump means older readers must refuse the file.
pub const MAJOR: u16 = 1;
pub const MINOR: u16 = 0;
/// Header length in bytes, checksum included.
pub const HEADER_LEN: usize = 104;

/// What identifies a run: everything that decides which vectors it writes
/// and where. Two runs with the same key write the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunKey {
    pub dim: u32,
    pub model: u64,
    pub input_xxh3: u64,
    pub input_len: u64,
    /// Documents in the whole input.
    pub total: u64,
    /// Rows of this run (a part's, or all).
    pub start: u64,
    pub end: u64,
    pub batch: u32,
    pub window: u32,
    pub max_tokens: u32,
    pub part: u32,
    pub parts: u32,
    /// XXH3-64 of the `--field` names joined by NUL.
    pub fields: u64,
}

impl RunKey {
    /// The header bytes: fields in the order of the spec, then their XXH3.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&MAJOR.to_le_bytes());
        b.extend_from_slice(&MINOR.to_le_bytes());
        b.extend_from_slice(&self.dim.to_le_bytes());
        for v in [
            self.model,
            self.input_xxh3,
            self.input_len,
            self.total,
            self.start,
            self.end,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.batch,
            self.window,
            self.max_tokens,
            self.part,
            self.parts,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.fields.to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_64(&b);
        b.extend_from_slice(&h.to_le_bytes());
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&b);
        out
    }

    /// Parses a header, checking magic, version and checksum.
    pub fn from_bytes(b: &[u8]) -> std::result::Result<RunKey, EmbedError> {
        let corrupt = |why: String| EmbedError::Corrupt { why };
        let head = b
            .get(..HEADER_LEN)
            .ok_or_else(|| corrupt(format!("{} bytes, shorter than the header", b.len())))?;
        if head.get(..8) != Some(&MAGIC[..]) {
            return Err(corrupt("bad magic: not an embed journal".into()));
        }
        let u16_at = |o: usize| -> u16 {
            let mut a = [0u8; 2];
            a.copy_from_slice(head.get(o..o + 2).unwrap_or(&[0, 0]));
            u16::from_le_bytes(a)
        };
        let u32_at = |o: usize| -> u32 {
            let mut a = [0u8; 4];
            a.copy_from_slice(head.get(o..o + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(a)
        };
        let u64_at = |o: usize| -> u64 {
            let mut a = [0u8; 8];
            a.copy_from_slice(head.get(o..o + 8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(a)
        };
        let (major, minor) = (u16_at(8), u16_at(10));
        if major != MAJOR {
            return Err(corrupt(format!(
                "journal version {major}.{minor}; this build reads {MAJOR}.x"
            )));
        }
        let stored = u64_at(96);
        let computed = xxhash_rust::xxh3::xxh3_64(head.get(..96).unwrap_or(&[]));
        if stored != computed {
            return Err(corrupt(format!(
                "header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
            )));
        }
        Ok(RunKey {
            dim: u32_at(12),
            model: u64_at(16),
            input_xxh3: u64_at(24),
            input_len: u64_at(32),
            total: u64_at(40),
            start: u64_at(48),
            end: u64_at(56),
            batch: u32_at(64),
            window: u32_at(68),
            max_tokens: u32_at(72),
            part: u32_at(76),
            parts: u32_at(80),
            fields: u64_at(88),
        })
    }

    /// The first field in which `self` (found on disk) differs from `want`,
    /// as an error that names it.
    pub fn check_same(&self, want: &RunKey) -> std::result::Result<(), EmbedError> {
        let fields: [(&str, u64, u64); 13] = [
            ("model fingerprint", self.model, want.model),
            ("input checksum", self.input_xxh3, want.input_xxh3),
            ("input length", self.input_len, want.input_len),
            ("documents", self.total, want.total),
            ("dimension", self.dim.into(), want.dim.into()),
            ("fields checksum", self.fields, want.fields),
            ("batch size", self.batch.into(), want.batch.into()),
            ("window", self.window.into(), want.window.into()),
            ("max tokens", self.max_tokens.into(), want.max_tokens.into()),
            ("part", self.part.into(), want.part.into()),
            ("parts", self.parts.into(), want.parts.into()),
            ("first row", self.start, want.start),
            ("end row", self.end, want.end),
        ];
        for (field, found, expected) in fields {
            if found != expected {
                return Err(EmbedError::OtherRun {
                    field: field.into(),
                    found: found.to_string(),
                    expected: expected.to_string(),
                    hint: "the folder holds another run (of other input or settings); remove the folder, or write to another one",
                });
            }
        }
        Ok(())
    }
}

/// One finished batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub batch: u32,
    pub rows: Vec<u32>,
    /// `rows.len() × dim` floats.
    pub vectors: Vec<f32>,
}

/// Bytes of a record with `rows` rows of width `dim`.
fn record_len(rows: usize, dim: usize) -> usize {
    8 + 4 * rows + 4 * rows * dim + 8
}

fn encode(r: &Record) -> Vec<u8> {
    let mut b = Vec::with_capacity(record_len(
        r.rows.len(),
        r.vectors.len() / r.rows.len().max(1),
    ));
    b.extend_from_slice(&r.batch.to_le_bytes());
    b.extend_from_slice(&(r.rows.len() as u32).to_le_bytes());
    for row in &r.rows {
        b.extend_from_slice(&row.to_le_bytes());
    }
    for v in &r.vectors {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let h = xxhash_rust::xxh3::xxh3_64(&b);
    b.extend_from_slice(&h.to_le_bytes());
    b
}

/// Parses the record at the start of `b`; `None` when it is cut short or
/// its checksum fails (the torn tail of a killed run).
fn decode(b: &[u8], dim: usize) -> Option<(Record, usize)> {
    let word = |o: usize| -> Option<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(b.get(o..o + 4)?);
        Some(u32::from_le_bytes(a))
    };
    let batch = word(0)?;
    let n = word(4)? as usize;
    let len = record_len(n, dim);
    let body = b.get(..len - 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(len - 8..len)?);
    if u64::from_le_bytes(a) != xxhash_rust::xxh3::xxh3_64(body) {
        return None;
    }
    let rows = (0..n)
        .map(|i| word(8 + 4 * i))
        .collect::<Option<Vec<u32>>>()?;
    let vectors = body
        .get(8 + 4 * n..)?
        .chunks_exact(4)
        .map(|c| {
            let mut a = [0u8; 4];
            a.copy_from_slice(c);
            f32::from_le_bytes(a)
        })
        .collect();
    Some((
        Record {
            batch,
            rows,
            vectors,
        },
        len,
    ))
}

/// An open journal, positioned after its last good record.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    dim: usize,
}

impl Journal {
    /// Opens the journal at `path` for the run `key`, creating it when
    /// absent. Returns the journal and the records already in it (in file
    /// order). A torn tail is cut off (and the cut made durable).
    pub fn open(path: &Path, key: &RunKey) -> Result<(Journal, Vec<Record>)> {
        let dim = key.dim as usize;
        if !path.exists() {
            crate::fs::write_atomic(path, &key.to_bytes())?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        let found = RunKey::from_bytes(&bytes).map_err(|e| Error::embed(path, e))?;
        found.check_same(key).map_err(|e| Error::embed(path, e))?;
        let mut records = Vec::new();
        let mut at = HEADER_LEN;
        while let Some((r, len)) = bytes.get(at..).and_then(|b| decode(b, dim)) {
            records.push(r);
            at += len;
        }
        if at < bytes.len() {
            file.set_len(at as u64).map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        file.seek(SeekFrom::Start(at as u64))
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                dim,
            },
            records,
        ))
    }

    /// Appends a finished batch and makes it durable before returning.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        debug_assert_eq!(r.vectors.len(), r.rows.len() * self.dim);
        self.file
            .write_all(&encode(r))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key() -> RunKey {
        RunKey {
            dim: 2,
            model: 1,
            input_xxh3: 2,
            input_len: 3,
            total: 10,
            start: 0,
            end: 10,
            batch: 4,
            window: 8,
            max_tokens: 256,
            part: 0,
            parts: 1,
            fields: 9,
        }
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let k = key();
        let b = k.to_bytes();
        assert_eq!(RunKey::from_bytes(&b).unwrap(), k);
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 1;
            assert!(RunKey::from_bytes(&d).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_good_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, recs) = Journal::open(&path, &key()).unwrap();
        assert!(recs.is_empty());
        let r0 = Record {
            batch: 0,
            rows: vec![3, 1],
            vectors: vec![1.0, 2.0, 3.0, 4.0],
        };
        let r1 = Record {
            batch: 1,
            rows: vec![0],
            vectors: vec![5.0, 6.0],
        };
        j.append(&r0).unwrap();
        j.append(&r1).unwrap();
        drop(j);
        let full = std::fs::read(&path).unwrap().len();
        // Every cut inside the second record keeps the first one only.
        for cut in HEADER_LEN + record_len(2, 2)..full {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut as u64).unwrap();
            drop(f);
            let (mut j, recs) = Journal::open(&path, &key()).unwrap();
            assert_eq!(recs, vec![r0.clone()], "cut at {cut}");
            j.append(&r1).unwrap();
        }
        let (_, recs) = Journal::open(&path, &key()).unwrap();
        assert_eq!(recs, vec![r0, r1]);
        // Another run's key is refused, naming the field.
        let mut other = key();
        other.batch = 64;
        let e = Journal::open(&path, &other).unwrap_err().to_string();
        assert!(e.contains("batch size is 4 here, but 64"), "{e}");
    }
}
