//! The write-ahead log of a shard's mutable part: every acknowledged write
//! is in it before it is acknowledged. Spec: `format-spec/wal.md`.
//!
//! ```text
//!  ┌────────────────────────────┐
//!  │ header (48 B, XXH3)        │  magic, version, dim, element type, base LSN
//!  ├────────────────────────────┤
//!  │ record: LSN 1 (a batch)    │  len · LSN · ops · XXH3-64
//!  │ record: LSN 2              │  appended; durable once `sync` covers it
//!  │ … torn tail? dropped       │  a record that does not check ends the log
//!  └────────────────────────────┘
//! ```
//!
//! A record is one request's batch, so a batch is durable whole or not at
//! all. **Group commit**: writers append under a short lock and then call
//! [`Wal::sync`]; one `fdatasync` covers every record appended before it
//! started, so writers that arrive while a sync runs share the next one
//! (counted in [`WalStats`]). The engine starts no threads: callers sync
//! from their own (the server from an executor's blocking thread).
//!
//! Opening a log reads every record that checks and cuts the file after the
//! last one: a record cut short by a kill, or whose checksum fails, is
//! dropped, never applied, and never followed by new records.

#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::docs::UserId;
use crate::element::ElemType;
use crate::error::{Error, Result, WalError};
use crate::metric::Element;

/// The log's magic bytes.
pub const MAGIC: [u8; 8] = *b"SHARDWAL";
pub const MAJOR: u16 = 1;
pub const MINOR: u16 = 0;
/// Header length in bytes, checksum included.
pub const HEADER_LEN: usize = 48;
/// Bytes of a record around its ops: length (4), LSN (8), checksum (8).
pub const RECORD_OVERHEAD: usize = 20;
/// The largest ops section of one record. A request body is bounded well
/// below this by the server; the bound keeps a corrupt length from making
/// recovery allocate gigabytes.
pub const MAX_RECORD: usize = 256 << 20;

/// How a write becomes durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fdatasync` before the acknowledgement (shared by concurrent
    /// writers): an acknowledged write survives a crash of the machine.
    #[default]
    Fsync,
    /// Written to the OS, not synced: an acknowledged write survives a crash
    /// of the process, not of the machine.
    Buffered,
}

/// One change to a shard's documents.
#[derive(Debug, Clone, PartialEq)]
pub enum Op<T> {
    /// Insert, or replace the document with this id.
    Upsert {
        id: UserId,
        vector: Vec<T>,
        payload: Map<String, Value>,
    },
    Delete {
        id: UserId,
    },
}

impl<T> Op<T> {
    pub fn id(&self) -> &UserId {
        match self {
            Op::Upsert { id, .. } | Op::Delete { id } => id,
        }
    }
}

/// What the log has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    pub bytes: u64,
    /// `fdatasync` calls: fewer than records when writers shared them.
    pub syncs: u64,
}

/// What opening a log found.
#[derive(Debug)]
pub struct Recovered<T> {
    /// The records that checked, in LSN order.
    pub records: Vec<(u64, Vec<Op<T>>)>,
    /// Bytes cut from the end (a torn or corrupt tail); 0 after a clean stop.
    pub dropped_bytes: u64,
}

struct Appender {
    file: File,
    next_lsn: u64,
    len: u64,
    buf: Vec<u8>,
}

/// An open write-ahead log. Shared by reference among writers.
pub struct Wal {
    path: PathBuf,
    durability: Durability,
    appender: Mutex<Appender>,
    /// A second handle for `fdatasync`, so that appends go on while a sync
    /// runs; the lock orders syncs (and is taken after `appender` when the
    /// log is cut, never before it).
    sync_file: Mutex<File>,
    /// The last LSN written to the file, and the last one known durable.
    written: AtomicU64,
    synced: AtomicU64,
    base_lsn: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("synced", &self.synced)
            .finish()
    }
}

fn header_bytes(dim: u32, elem: ElemType, base_lsn: u64) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    let mut w = Vec::with_capacity(HEADER_LEN);
    w.extend_from_slice(&MAGIC);
    w.extend_from_slice(&MAJOR.to_le_bytes());
    w.extend_from_slice(&MINOR.to_le_bytes());
    w.extend_from_slice(&dim.to_le_bytes());
    w.push(elem.code());
    w.extend_from_slice(&[0u8; 7]);
    w.extend_from_slice(&base_lsn.to_le_bytes());
    w.extend_from_slice(&[0u8; 8]);
    let sum = xxhash_rust::xxh3::xxh3_64(&w);
    w.extend_from_slice(&sum.to_le_bytes());
    b.copy_from_slice(&w);
    b
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(b.get(at..at + 2).unwrap_or(&[0, 0]));
    u16::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(at..at + 4)?);
    Some(u32::from_le_bytes(a))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(at..at + 8)?);
    Some(u64::from_le_bytes(a))
}

/// Parses a header: (dim, element type code, base LSN).
fn parse_header(b: &[u8]) -> std::result::Result<(u32, u8, u64), WalError> {
    let mut magic = [0u8; 8];
    magic.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
    if magic != MAGIC {
        return Err(WalError::BadMagic { found: magic });
    }
    let (major, minor) = (le_u16(b, 8), le_u16(b, 10));
    if major != MAJOR {
        return Err(WalError::Version { major, minor });
    }
    let stored = le_u64(b, 40).unwrap_or(0);
    let computed = xxhash_rust::xxh3::xxh3_64(b.get(..40).unwrap_or(&[]));
    if stored != computed {
        return Err(WalError::HeaderChecksum { stored, computed });
    }
    let dim = le_u32(b, 12).unwrap_or(0);
    let elem = b.get(16).copied().unwrap_or(0);
    Ok((dim, elem, le_u64(b, 24).unwrap_or(0)))
}

/// Appends one op's bytes (see the spec's "Ops").
fn encode_op<T: Element>(op: &Op<T>, out: &mut Vec<u8>) {
    let (kind, id) = match op {
        Op::Upsert { id, .. } => (1u8, id),
        Op::Delete { id } => (2u8, id),
    };
    out.push(kind);
    match id {
        UserId::Int(i) => {
            out.push(0);
            out.extend_from_slice(&i.to_le_bytes());
        }
        UserId::Str(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    if let Op::Upsert {
        vector, payload, ..
    } = op
    {
        out.extend_from_slice(bytemuck::cast_slice(vector));
        // A map of JSON values always serializes.
        let json = serde_json::to_vec(payload).unwrap_or_default();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
    }
}

/// Decodes a record's ops; `None` if they do not parse (then the record is
/// treated as corrupt, although its checksum held: written by another
/// build, say).
fn decode_ops<T: Element>(b: &[u8], dim: usize) -> Option<Vec<Op<T>>> {
    let count = le_u32(b, 0)? as usize;
    let mut at = 4;
    let mut ops = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let kind = *b.get(at)?;
        let id = match *b.get(at + 1)? {
            0 => {
                let i = le_u64(b, at + 2)?;
                at += 10;
                UserId::Int(i)
            }
            1 => {
                let n = le_u32(b, at + 2)? as usize;
                let s = std::str::from_utf8(b.get(at + 6..at + 6 + n)?).ok()?;
                at += 6 + n;
                UserId::Str(s.to_string())
            }
            _ => return None,
        };
        match kind {
            1 => {
                let vb = dim * std::mem::size_of::<T>();
                let raw = b.get(at..at + vb)?;
                let mut vector = vec![T::zeroed(); dim];
                bytemuck::cast_slice_mut::<T, u8>(&mut vector).copy_from_slice(raw);
                at += vb;
                let n = le_u32(b, at)? as usize;
                let payload: Map<String, Value> =
                    serde_json::from_slice(b.get(at + 4..at + 4 + n)?).ok()?;
                at += 4 + n;
                ops.push(Op::Upsert {
                    id,
                    vector,
                    payload,
                });
            }
            2 => ops.push(Op::Delete { id }),
            _ => return None,
        }
    }
    (at == b.len()).then_some(ops)
}

impl Wal {
    /// Opens the log at `path`, creating it (empty, base LSN 0) if it does
    /// not exist, and returns the records that check. A log made for
    /// another dimension or element type is refused.
    pub fn open<T: Element>(
        path: &Path,
        dim: usize,
        durability: Durability,
    ) -> Result<(Wal, Recovered<T>)> {
        Self::open_after(path, dim, durability, 0)
    }

    /// [`Wal::open`] for a shard whose segment holds every write up to
    /// `applied` (a merged version): records up to it are not returned,
    /// and a log that ends before it (lost, or cut by hand) starts again
    /// after it, so that a new write never gets an LSN the segment claims.
    pub fn open_after<T: Element>(
        path: &Path,
        dim: usize,
        durability: Durability,
        applied: u64,
    ) -> Result<(Wal, Recovered<T>)> {
        let io = |e| Error::io(path, e);
        let wal_err = |source| Error::Wal {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let exists = path.exists();
        if !exists {
            // Header first, to a temporary name, so a log that exists has a
            // whole header.
            crate::fs::write_atomic(path, &header_bytes(dim as u32, T::TYPE, 0))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
            wal_err(WalError::BadMagic {
                found: {
                    let mut m = [0u8; 8];
                    for (d, s) in m.iter_mut().zip(&bytes) {
                        *d = *s;
                    }
                    m
                },
            })
        })?;
        let (log_dim, elem, base_lsn) = parse_header(header).map_err(wal_err)?;
        if log_dim as usize != dim {
            return Err(wal_err(WalError::Mismatch {
                what: "dimension",
                log: log_dim.to_string(),
                index: dim.to_string(),
            }));
        }
        if elem != T::TYPE.code() {
            return Err(wal_err(WalError::Mismatch {
                what: "element type code",
                log: elem.to_string(),
                index: format!("{} ({})", T::TYPE.code(), T::TYPE.name()),
            }));
        }
        let (mut records, at) = read_records::<T>(&bytes, dim, base_lsn);
        let lsn = records.last().map_or(base_lsn, |r| r.0);
        let dropped = bytes.len() as u64 - at as u64;
        if lsn < applied {
            // Every record here is in the segment already: start a fresh
            // log after `applied` (the old one stays until the rename).
            drop(file);
            crate::fs::write_atomic(path, &header_bytes(dim as u32, T::TYPE, applied))?;
            let (wal, _) = Self::open_after::<T>(path, dim, durability, applied)?;
            return Ok((
                wal,
                Recovered {
                    records: Vec::new(),
                    dropped_bytes: dropped,
                },
            ));
        }
        records.retain(|r| r.0 > applied);
        if dropped > 0 {
            file.set_len(at as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::Start(at as u64)).map_err(io)?;
        let sync_file = Mutex::new(file.try_clone().map_err(io)?);
        let wal = Wal {
            path: path.to_path_buf(),
            durability,
            appender: Mutex::new(Appender {
                file,
                next_lsn: lsn + 1,
                len: at as u64,
                buf: Vec::new(),
            }),
            sync_file,
            written: AtomicU64::new(lsn),
            synced: AtomicU64::new(lsn),
            base_lsn: AtomicU64::new(base_lsn),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        };
        Ok((
            wal,
            Recovered {
                records,
                dropped_bytes: dropped,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The LSN before this log's first record (records up to it were folded
    /// into a segment and cut from the log).
    pub fn base_lsn(&self) -> u64 {
        self.base_lsn.load(Ordering::Acquire)
    }

    /// The last LSN appended.
    pub fn last_lsn(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The log's size in bytes.
    pub fn len(&self) -> u64 {
        self.appender.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.last_lsn() == self.base_lsn()
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }

    /// Appends `ops` as one record and returns its LSN. Written to the OS,
    /// not yet durable: call [`Wal::sync`] with the LSN before
    /// acknowledging. On an error the log is cut back to where it was, so
    /// a half-written record never precedes the next one.
    pub fn append<T: Element>(&self, ops: &[Op<T>]) -> Result<u64> {
        let mut a = self.appender.lock();
        let a = &mut *a;
        let lsn = a.next_lsn;
        a.buf.clear();
        a.buf.extend_from_slice(&[0u8; 12]);
        a.buf.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for op in ops {
            encode_op(op, &mut a.buf);
        }
        let len = a.buf.len() - 12;
        if len > MAX_RECORD {
            return Err(Error::Wal {
                path: self.path.clone(),
                source: Box::new(WalError::RecordTooLarge {
                    len,
                    max: MAX_RECORD,
                }),
            });
        }
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4..].copy_from_slice(&lsn.to_le_bytes());
        a.buf.splice(..12, head);
        let sum = xxhash_rust::xxh3::xxh3_64(&a.buf);
        a.buf.extend_from_slice(&sum.to_le_bytes());
        if let Err(e) = a.file.write_all(&a.buf) {
            // Cut back: the next record must follow the last whole one.
            let _ = a.file.set_len(a.len);
            let _ = a.file.seek(SeekFrom::Start(a.len));
            return Err(Error::io(&self.path, e));
        }
        a.len += a.buf.len() as u64;
        a.next_lsn += 1;
        self.written.store(lsn, Ordering::Release);
        self.records.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(a.buf.len() as u64, Ordering::Relaxed);
        Ok(lsn)
    }

    /// Returns once the record `lsn` (and every one before it) is durable
    /// as [`Durability`] says. Blocks for an `fdatasync`, which it shares:
    /// a caller that finds a sync running waits for it and is done if that
    /// covered its LSN, and otherwise runs one sync for everyone waiting.
    pub fn sync(&self, lsn: u64) -> Result<()> {
        if self.durability == Durability::Buffered || self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let file = self.sync_file.lock();
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let upto = self.written.load(Ordering::Acquire);
        file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        self.synced.fetch_max(upto, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Wal {
    /// Cuts the records up to `applied` (now held by a published segment
    /// version) from the log: the records after it are copied to a new
    /// file with base LSN `applied`, which replaces the log by rename
    /// (fsynced first, so a crash leaves the old log or the new one, and
    /// either replays to the same state). Appends wait meanwhile; the copy
    /// is only the records written since `applied`. Returns the bytes cut.
    pub fn truncate_through<T: Element>(&self, dim: usize, applied: u64) -> Result<u64> {
        let io = |e| Error::io(&self.path, e);
        let mut a = self.appender.lock();
        if applied <= self.base_lsn() {
            return Ok(0);
        }
        let last = a.next_lsn - 1;
        if applied > last {
            // A replica's log behind the version it pulled: every record is
            // in the version, and the next one logged follows `applied`.
            let out = header_bytes(dim as u32, T::TYPE, applied);
            crate::fs::write_atomic(&self.path, &out)?;
            let cut = self.reopen_after_cut(&mut a, out.len() as u64)?;
            a.next_lsn = applied + 1;
            self.written.store(applied, Ordering::Release);
            self.base_lsn.store(applied, Ordering::Release);
            self.synced.fetch_max(applied, Ordering::AcqRel);
            return Ok(cut);
        }
        let file_bytes = std::fs::read(&self.path).map_err(io)?;
        let bytes = file_bytes
            .get(..a.len as usize)
            .unwrap_or(file_bytes.as_slice());
        // Offset of the first record after `applied`.
        let mut at = HEADER_LEN;
        let mut lsn = self.base_lsn();
        while lsn < applied {
            let Some(len) = le_u32(bytes, at) else { break };
            at += 12 + len as usize + 8;
            lsn += 1;
        }
        let kept = bytes.get(at..).unwrap_or(&[]);
        // The records kept are copied as they are, so they must check,
        // starting right after `applied`.
        let mut probe = header_bytes(dim as u32, T::TYPE, applied).to_vec();
        probe.extend_from_slice(kept);
        let (records, end) = read_records::<T>(&probe, dim, applied);
        if lsn < applied || end != probe.len() {
            return Err(Error::Wal {
                path: self.path.clone(),
                source: Box::new(WalError::CutMismatch {
                    applied,
                    last: a.next_lsn - 1,
                    checked: records.len() as u64,
                }),
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + kept.len());
        out.extend_from_slice(&header_bytes(dim as u32, T::TYPE, applied));
        out.extend_from_slice(kept);
        crate::fs::write_atomic(&self.path, &out)?;
        let cut = self.reopen_after_cut(&mut a, out.len() as u64)?;
        self.base_lsn.store(applied, Ordering::Release);
        // The new file was fsynced whole before the rename.
        self.synced
            .fetch_max(self.written.load(Ordering::Acquire), Ordering::AcqRel);
        Ok(cut)
    }
}

impl Wal {
    /// After the log file was replaced by one of `len` bytes: appends and
    /// syncs go to the new file. Returns the bytes cut.
    fn reopen_after_cut(&self, a: &mut Appender, len: u64) -> Result<u64> {
        let io = |e| Error::io(&self.path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let sync = file.try_clone().map_err(io)?;
        let mut sync_file = self.sync_file.lock();
        *sync_file = sync;
        a.file = file;
        let cut = a.len.saturating_sub(len);
        a.len = len;
        Ok(cut)
    }
}

/// The log at `path`, read whole without changing it, and its header's
/// dim, element code and base LSN (refused as [`Wal::open`] refuses it).
fn read_whole(path: &Path) -> Result<(Vec<u8>, (u32, u8, u64))> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let wal_err = |source| Error::Wal {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
        let mut found = [0u8; 8];
        for (d, s) in found.iter_mut().zip(&bytes) {
            *d = *s;
        }
        wal_err(WalError::BadMagic { found })
    })?;
    let parsed = parse_header(header).map_err(wal_err)?;
    Ok((bytes, parsed))
}

/// The records of the log at `path` that check, in LSN order, read
/// without changing the file (a merge reads what it folds in this way
/// while writes go on being appended).
pub fn read_log<T: Element>(path: &Path, dim: usize) -> Result<Vec<(u64, Vec<Op<T>>)>> {
    let (bytes, (log_dim, elem, base)) = read_whole(path)?;
    let wal_err = |source| Error::Wal {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    if log_dim as usize != dim || elem != T::TYPE.code() {
        return Err(wal_err(WalError::Mismatch {
            what: "dimension or element type",
            log: format!("{log_dim}, code {elem}"),
            index: format!("{dim}, code {}", T::TYPE.code()),
        }));
    }
    Ok(read_records::<T>(&bytes, dim, base).0)
}

/// The records of a log's bytes that check, in order, and the offset where
/// the good ones end (see the spec's "Reading: where the log ends").
#[allow(clippy::type_complexity)]
fn read_records<T: Element>(
    bytes: &[u8],
    dim: usize,
    base_lsn: u64,
) -> (Vec<(u64, Vec<Op<T>>)>, usize) {
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let mut lsn = base_lsn;
    while let Some(len) = le_u32(bytes, at) {
        let len = len as usize;
        if len > MAX_RECORD {
            break;
        }
        let end = at + 12 + len + 8;
        let (Some(rec_lsn), Some(body), Some(stored)) = (
            le_u64(bytes, at + 4),
            bytes.get(at + 12..at + 12 + len),
            le_u64(bytes, at + 12 + len),
        ) else {
            break;
        };
        let computed = xxhash_rust::xxh3::xxh3_64(bytes.get(at..at + 12 + len).unwrap_or(&[]));
        if stored != computed || rec_lsn != lsn + 1 {
            break;
        }
        let Some(ops) = decode_ops::<T>(body, dim) else {
            break;
        };
        records.push((rec_lsn, ops));
        lsn = rec_lsn;
        at = end;
    }
    (records, at)
}

/// What a log holds, read without changing it (`shardann verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSummary {
    pub dim: u32,
    pub elem: u8,
    pub base_lsn: u64,
    pub records: u64,
    pub upserts: u64,
    pub deletes: u64,
    /// Bytes of the whole records.
    pub bytes: u64,
    /// Bytes after the last whole record: a write cut short by a crash
    /// (never acknowledged), which a node drops when it opens the log.
    pub torn_bytes: u64,
}

/// Reads the log at `path` without changing it: its header (refused as
/// [`Wal::open`] refuses it) and what its records hold.
pub fn scan(path: &Path) -> Result<LogSummary> {
    let (bytes, (dim, elem, base_lsn)) = read_whole(path)?;
    let wal_err = |source| Error::Wal {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    fn count<T: Element>(bytes: &[u8], dim: usize, base: u64) -> (u64, u64, u64, usize) {
        let (records, at) = read_records::<T>(bytes, dim, base);
        let upserts = records
            .iter()
            .flat_map(|r| &r.1)
            .filter(|op| matches!(op, Op::Upsert { .. }))
            .count() as u64;
        let ops = records.iter().map(|r| r.1.len() as u64).sum::<u64>();
        (records.len() as u64, upserts, ops - upserts, at)
    }
    let (records, upserts, deletes, at) = match ElemType::from_code(elem) {
        Some(ElemType::U8) => count::<u8>(&bytes, dim as usize, base_lsn),
        Some(ElemType::I8) => count::<i8>(&bytes, dim as usize, base_lsn),
        Some(ElemType::F32) => count::<f32>(&bytes, dim as usize, base_lsn),
        None => {
            return Err(wal_err(WalError::Mismatch {
                what: "element type code",
                log: elem.to_string(),
                index: "0, 1 or 2".into(),
            }))
        }
    };
    Ok(LogSummary {
        dim,
        elem,
        base_lsn,
        records,
        upserts,
        deletes,
        bytes: (at - HEADER_LEN) as u64,
        torn_bytes: (bytes.len() - at) as u64,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upsert(id: u64, v: [f32; 3], tag: &str) -> Op<f32> {
        let mut payload = Map::new();
        payload.insert("tag".into(), Value::from(tag));
        Op::Upsert {
            id: UserId::Int(id),
            vector: v.to_vec(),
            payload,
        }
    }

    #[test]
    fn a_cut_keeps_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, _) = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap();
        for i in 1..=5u64 {
            assert_eq!(wal.append(&[upsert(i, [i as f32; 3], "t")]).unwrap(), i);
        }
        wal.sync(5).unwrap();
        let before = wal.len();
        let cut = wal.truncate_through::<f32>(3, 3).unwrap();
        assert!(cut > 0 && wal.len() == before - cut);
        assert_eq!(wal.base_lsn(), 3);
        // Appends follow the kept records, in the new file.
        assert_eq!(wal.append(&[upsert(6, [6.0; 3], "t")]).unwrap(), 6);
        wal.sync(6).unwrap();
        assert_eq!(wal.truncate_through::<f32>(3, 2).unwrap(), 0, "already cut");
        drop(wal);
        assert_eq!(lsns_in(&path), vec![4, 5, 6]);
        // A segment holding up to 5 replays only 6; one holding up to 9
        // (the log lost its tail) makes the next write 10.
        let (_, rec) = Wal::open_after::<f32>(&path, 3, Durability::Fsync, 5).unwrap();
        assert_eq!(rec.records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![6]);
        let (wal, rec) = Wal::open_after::<f32>(&path, 3, Durability::Fsync, 9).unwrap();
        assert!(rec.records.is_empty());
        assert_eq!(wal.append(&[upsert(7, [7.0; 3], "t")]).unwrap(), 10);
        // A cut beyond the log's end (a replica that pulled a version
        // holding records it never got) empties the log, and the next
        // write follows the version.
        assert!(wal.truncate_through::<f32>(3, 12).unwrap() > 0);
        assert_eq!((wal.base_lsn(), wal.last_lsn()), (12, 12));
        assert_eq!(wal.append(&[upsert(8, [8.0; 3], "t")]).unwrap(), 13);
        wal.sync(13).unwrap();
        drop(wal);
        assert_eq!(lsns_in(&path), vec![13]);
    }

    /// The LSNs of the records of a 3-wide f32 log.
    fn lsns_in(path: &Path) -> Vec<u64> {
        read_log::<f32>(path, 3)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect()
    }

    #[test]
    fn records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (wal, rec) = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap();
        assert!(rec.records.is_empty() && wal.is_empty());
        let a = vec![upsert(1, [1.0, 2.0, 3.0], "x"), upsert(2, [0.0; 3], "y")];
        let b = vec![
            Op::Delete { id: UserId::Int(1) },
            Op::Upsert {
                id: UserId::Int(9),
                vector: vec![0.5; 3],
                payload: Map::new(),
            },
        ];
        assert_eq!(wal.append(&a).unwrap(), 1);
        assert_eq!(wal.append(&b).unwrap(), 2);
        wal.sync(2).unwrap();
        wal.sync(1).unwrap();
        assert_eq!(wal.stats().syncs, 1, "one sync covered both records");
        drop(wal);
        let (wal, rec) = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap();
        assert_eq!(rec.records, vec![(1, a), (2, b)]);
        assert_eq!(rec.dropped_bytes, 0);
        assert_eq!(wal.last_lsn(), 2);
        assert_eq!(wal.append::<f32>(&[upsert(3, [1.0; 3], "z")]).unwrap(), 3);
    }

    #[test]
    fn refuses_another_index_s_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        drop(Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap());
        let e = Wal::open::<f32>(&path, 4, Durability::Fsync).unwrap_err();
        assert!(e.to_string().contains("dimension 3"), "{e}");
        let e = Wal::open::<u8>(&path, 3, Durability::Fsync).unwrap_err();
        assert!(e.to_string().contains("element type"), "{e}");
        std::fs::write(&path, b"not a log at all, not at all, no no no no no no no").unwrap();
        let e = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }

    #[test]
    fn golden_log_reads() {
        // tests/golden/wal-v1: written by this format's first version; a
        // change that cannot read it breaks the format.
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/wal-v1/wal.log");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        std::fs::copy(&golden, &path).unwrap();
        let (_, rec) = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap();
        assert_eq!(rec.dropped_bytes, 0);
        assert_eq!(rec.records, golden_records());
        // And this build writes the same bytes.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("wal.log");
        let (wal, _) = Wal::open::<f32>(&path2, 3, Durability::Fsync).unwrap();
        for (_, ops) in golden_records() {
            wal.append(&ops).unwrap();
        }
        drop(wal);
        assert_eq!(
            std::fs::read(&path2).unwrap(),
            std::fs::read(&golden).unwrap()
        );
    }

    pub(crate) fn golden_records() -> Vec<(u64, Vec<Op<f32>>)> {
        let mut p = Map::new();
        p.insert("lang".into(), Value::from("en"));
        p.insert("year".into(), Value::from(2024));
        vec![
            (
                1,
                vec![
                    Op::Upsert {
                        id: UserId::Str("doc-1".into()),
                        vector: vec![1.0, 0.0, -1.0],
                        payload: p,
                    },
                    Op::Upsert {
                        id: UserId::Str("doc-2".into()),
                        vector: vec![0.25, 0.5, 0.75],
                        payload: Map::new(),
                    },
                ],
            ),
            (
                2,
                vec![Op::Delete {
                    id: UserId::Str("doc-1".into()),
                }],
            ),
        ]
    }

    /// Writes the golden file (run by hand when the format changes
    /// version: `cargo test -p shardann-engine wal::tests::write_golden -- --ignored`).
    #[test]
    #[ignore]
    fn write_golden() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/wal-v1");
        std::fs::create_dir_all(&golden).unwrap();
        let path = golden.join("wal.log");
        let _ = std::fs::remove_file(&path);
        let (wal, _) = Wal::open::<f32>(&path, 3, Durability::Fsync).unwrap();
        for (_, ops) in golden_records() {
            wal.append(&ops).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any cut or any flipped byte after the header loses only a tail:
        /// the records before the damage come back, none after it, and no
        /// damaged record is ever returned.
        #[test]
        fn damage_drops_only_the_tail(cut in 0usize..400, flip in proptest::option::of((0usize..400, 1u8..=255))) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal.log");
            let (wal, _) = Wal::open::<f32>(&path, 3, Durability::Buffered).unwrap();
            let batches: Vec<Vec<Op<f32>>> = (0..6u64)
                .map(|i| vec![upsert(i, [i as f32; 3], &"t".repeat(i as usize))])
                .collect();
            let mut ends = Vec::new();
            for b in &batches {
                wal.append(b).unwrap();
                ends.push(wal.len() as usize);
            }
            drop(wal);
            let mut bytes = std::fs::read(&path).unwrap();
            let full = bytes.len();
            let mut damaged_at = full;
            if let Some((at, x)) = flip {
                let at = HEADER_LEN + at % (full - HEADER_LEN);
                bytes[at] ^= x;
                damaged_at = at;
            }
            let keep = (HEADER_LEN + cut).min(full);
            bytes.truncate(keep);
            damaged_at = damaged_at.min(keep);
            std::fs::write(&path, &bytes).unwrap();
            let (wal, rec) = Wal::open::<f32>(&path, 3, Durability::Buffered).unwrap();
            let whole = ends.iter().filter(|&&e| e <= damaged_at).count();
            prop_assert_eq!(rec.records.len(), whole);
            for (i, (lsn, ops)) in rec.records.iter().enumerate() {
                prop_assert_eq!(*lsn, i as u64 + 1);
                prop_assert_eq!(ops, &batches[i]);
            }
            // The next append follows the last whole record.
            prop_assert_eq!(wal.append(&batches[0]).unwrap(), whole as u64 + 1);
            drop(wal);
            let (_, again) = Wal::open::<f32>(&path, 3, Durability::Buffered).unwrap();
            prop_assert_eq!(again.records.len(), whole + 1);
            prop_assert_eq!(again.dropped_bytes, 0);
        }
    }
}
