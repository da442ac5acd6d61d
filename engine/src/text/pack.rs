//! `text.bin`: a tantivy index packed into one file of the segment, and the
//! read-only tantivy [`Directory`] that serves it. Spec:
//! `format-spec/text.md`.
//!
//! ```text
//!  ┌─────────────┬───────────────────────────────────────┬───────┬───────┬───┐
//!  │ header 32 B │ table: (name_len u16, name, offset u64, │ file0 │ file1 │ … │
//!  │             │         len u64) × num_files            │       │       │   │
//!  └─────────────┴───────────────────────────────────────┴───────┴───────┴───┘
//! ```
//!
//! Why one file instead of tantivy's own directory: a segment is a flat set
//! of files, each listed in `segment.json` with its size and checksum, pulled
//! by name between nodes and verified byte for byte. One more file keeps all
//! of that unchanged, and a sealed segment is never written to again, which a
//! read-only directory states in code (tantivy would otherwise create lock
//! files beside the index when it opens it).
//!
//! The header's checksum covers the header and the table, so a torn or
//! foreign file is refused at open without reading the whole index; the
//! bytes of the packed files are covered by the manifest (`verify`) and by
//! tantivy's own footers.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, Lock, OwnedBytes, WatchCallback, WatchHandle, WritePtr,
};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FormatError, Result};
use crate::layout::Envelope;

/// Magic bytes of `text.bin`.
pub const TEXT_MAGIC: [u8; 8] = *b"SHRDTEXT";
const MAJOR: u16 = 1;
const MINOR: u16 = 0;
const HEADER: usize = 32;
/// Packed files start at multiples of this (tantivy reads unaligned, but an
/// aligned start keeps each file's words in one cache line more often).
const ALIGN: u64 = 8;
/// Most files a packed index may hold (a merged tantivy index has ~10).
const MAX_FILES: u32 = 4096;
/// Longest name of a packed file.
const MAX_NAME: usize = 255;

const ENVELOPE: Envelope = Envelope {
    what: "text",
    magic: TEXT_MAGIC,
    major: MAJOR,
};

/// The `text.bin` header, exactly as stored (little-endian, no padding).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    num_files: U32,
    table_len: U32,
    reserved: U32,
    /// XXH3-64 of header bytes 0..24 followed by the table.
    checksum: U64,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER);

fn invalid(field: &'static str, value: u64, why: impl Into<String>) -> FormatError {
    FormatError::Invalid {
        field,
        value,
        why: why.into(),
    }
}

/// Packs `files` (name, bytes), sorted by name, into the bytes of a
/// `text.bin`.
pub(crate) fn pack(mut files: Vec<(String, Vec<u8>)>) -> std::result::Result<Vec<u8>, FormatError> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let num_files = u32::try_from(files.len())
        .ok()
        .filter(|&n| n <= MAX_FILES)
        .ok_or_else(|| invalid("file count", files.len() as u64, "too many files"))?;
    let table_len: usize = files.iter().map(|(n, _)| 2 + n.len() + 16).sum();
    let mut offset = align((HEADER + table_len) as u64);
    let mut table = Vec::with_capacity(table_len);
    for (name, bytes) in &files {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(invalid("file name length", name.len() as u64, "1..=255"));
        }
        table.extend_from_slice(&(name.len() as u16).to_le_bytes());
        table.extend_from_slice(name.as_bytes());
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        offset = align(offset + bytes.len() as u64);
    }
    let mut header = RawHeader {
        magic: TEXT_MAGIC,
        major: MAJOR.into(),
        minor: MINOR.into(),
        num_files: num_files.into(),
        table_len: u32::try_from(table_len)
            .map_err(|_| invalid("table length", table_len as u64, "over 4 GiB"))?
            .into(),
        reserved: 0.into(),
        checksum: 0.into(),
    };
    header.checksum = checksum(&header.as_bytes()[..24], &table).into();
    let mut out = Vec::with_capacity(offset as usize);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&table);
    for (_, bytes) in &files {
        out.resize(align(out.len() as u64) as usize, 0);
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

fn checksum(head: &[u8], table: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(head);
    h.update(table);
    h.digest()
}

/// The files of a `text.bin`: name → byte range, checked against the
/// file's length. Never allocates more than the table it has read.
fn unpack(file: &[u8]) -> std::result::Result<Vec<(String, std::ops::Range<usize>)>, FormatError> {
    let (header, rest) = RawHeader::ref_from_prefix(file).map_err(|_| FormatError::Truncated {
        what: "text header",
        offset: 0,
        end: HEADER as u64,
        file_len: file.len() as u64,
    })?;
    ENVELOPE.check_identity(header.magic, header.major.get(), header.minor.get())?;
    let table_len = header.table_len.get() as usize;
    let table = rest.get(..table_len).ok_or(FormatError::Truncated {
        what: "text file table",
        offset: HEADER as u64,
        end: (HEADER + table_len) as u64,
        file_len: file.len() as u64,
    })?;
    let head = file.get(..24).unwrap_or_default();
    ENVELOPE.check_sum(&[head, table].concat(), header.checksum.get())?;
    let num_files = header.num_files.get();
    if num_files > MAX_FILES {
        return Err(invalid("file count", num_files.into(), "more than 4096"));
    }
    let mut files = Vec::with_capacity(num_files as usize);
    let mut at = table;
    let data_start = (HEADER + table_len) as u64;
    for _ in 0..num_files {
        let (len, tail) = split_u16(at)?;
        let name = tail.get(..len as usize).ok_or_else(short_table)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| invalid("file name", len.into(), "not UTF-8"))?
            .to_string();
        let tail = tail.get(len as usize..).unwrap_or_default();
        let (offset, tail) = split_u64(tail)?;
        let (size, tail) = split_u64(tail)?;
        at = tail;
        let end = offset
            .checked_add(size)
            .filter(|&e| offset >= data_start && e <= file.len() as u64)
            .ok_or_else(|| {
                invalid(
                    "packed file range",
                    offset,
                    format!("{name}: {size} bytes at {offset} lie outside the file's data"),
                )
            })?;
        if files.iter().any(|(n, _): &(String, _)| *n == name) {
            return Err(invalid("file name", 0, format!("{name:?} is listed twice")));
        }
        files.push((name, offset as usize..end as usize));
    }
    if !at.is_empty() {
        return Err(invalid(
            "table length",
            table_len as u64,
            "bytes left after the last entry",
        ));
    }
    Ok(files)
}

fn short_table() -> FormatError {
    invalid("table", 0, "an entry runs past the end of the table")
}

fn split_u16(b: &[u8]) -> std::result::Result<(u16, &[u8]), FormatError> {
    let (v, rest) = U16::read_from_prefix(b).map_err(|_| short_table())?;
    Ok((v.get(), rest))
}

fn split_u64(b: &[u8]) -> std::result::Result<(u64, &[u8]), FormatError> {
    let (v, rest) = U64::read_from_prefix(b).map_err(|_| short_table())?;
    Ok((v.get(), rest))
}

/// A `text.bin`, memory-mapped, as a read-only tantivy [`Directory`].
#[derive(Clone)]
pub(crate) struct PackedDirectory {
    path: Arc<PathBuf>,
    files: Arc<HashMap<PathBuf, OwnedBytes>>,
}

impl std::fmt::Debug for PackedDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedDirectory({}, {} files)",
            self.path.display(),
            self.files.len()
        )
    }
}

impl PackedDirectory {
    /// Maps `path` and reads its table; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let (map, _) = crate::data::map_file(path)?;
        let whole = OwnedBytes::new(map);
        let entries = unpack(whole.as_slice()).map_err(|e| Error::format(path, e))?;
        let files = entries
            .into_iter()
            .map(|(name, range)| (PathBuf::from(name), whole.slice(range)))
            .collect();
        Ok(PackedDirectory {
            path: Arc::new(path.to_path_buf()),
            files: Arc::new(files),
        })
    }

    /// The bytes of one packed file, if present.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(Path::new(name)).map(|b| b.as_slice())
    }

    fn read_only(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: a sealed text index is read-only ({what})",
                self.path.display()
            ),
        )
    }
}

impl Directory for PackedDirectory {
    fn get_file_handle(
        &self,
        path: &Path,
    ) -> std::result::Result<Arc<dyn FileHandle>, OpenReadError> {
        match self.files.get(path) {
            Some(bytes) => Ok(Arc::new(bytes.clone())),
            None => Err(OpenReadError::FileDoesNotExist(path.to_path_buf())),
        }
    }

    fn delete(&self, path: &Path) -> std::result::Result<(), DeleteError> {
        Err(DeleteError::IoError {
            io_error: Arc::new(self.read_only("delete")),
            filepath: path.to_path_buf(),
        })
    }

    fn exists(&self, path: &Path) -> std::result::Result<bool, OpenReadError> {
        Ok(self.files.contains_key(path))
    }

    fn open_write(&self, path: &Path) -> std::result::Result<WritePtr, OpenWriteError> {
        Err(OpenWriteError::IoError {
            io_error: Arc::new(self.read_only("write")),
            filepath: path.to_path_buf(),
        })
    }

    fn atomic_read(&self, path: &Path) -> std::result::Result<Vec<u8>, OpenReadError> {
        match self.files.get(path) {
            Some(bytes) => Ok(bytes.as_slice().to_vec()),
            None => Err(OpenReadError::FileDoesNotExist(path.to_path_buf())),
        }
    }

    fn atomic_write(&self, _path: &Path, _data: &[u8]) -> io::Result<()> {
        Err(self.read_only("atomic write"))
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    /// Nothing writes a sealed index, so readers need no lock (and must
    /// not create lock files inside a checksummed segment).
    fn acquire_lock(&self, _lock: &Lock) -> std::result::Result<DirectoryLock, LockError> {
        Ok(DirectoryLock::from(Box::new(())))
    }

    fn watch(&self, _cb: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(WatchHandle::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_and_unpacks() {
        let bytes = pack(vec![
            ("b.idx".into(), vec![1, 2, 3]),
            ("meta.json".into(), b"{}".to_vec()),
            ("a".into(), vec![]),
        ])
        .unwrap();
        let files = unpack(&bytes).unwrap();
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b.idx", "meta.json"]);
        assert_eq!(&bytes[files[1].1.clone()], &[1, 2, 3]);
        assert_eq!(&bytes[files[2].1.clone()], b"{}");
        for (_, r) in &files {
            assert_eq!(r.start as u64 % ALIGN, 0);
        }
    }

    #[test]
    fn damage_is_named() {
        let bytes = pack(vec![("x".into(), vec![7; 100])]).unwrap();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(unpack(&bad), Err(FormatError::BadMagic { .. })));
        let mut bad = bytes.clone();
        bad[HEADER + 3] ^= 1; // inside the table
        assert!(matches!(
            unpack(&bad),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            unpack(&bytes[..20]),
            Err(FormatError::Truncated { .. })
        ));
        // The data cut short: the table points past the end.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(unpack(cut), Err(FormatError::Invalid { .. })));
    }

    proptest! {
        #[test]
        fn any_file_set_round_trips(
            files in proptest::collection::btree_map("[a-z.]{1,12}", proptest::collection::vec(any::<u8>(), 0..64), 0..8)
        ) {
            let list: Vec<_> = files.clone().into_iter().collect();
            let bytes = pack(list).unwrap();
            let got = unpack(&bytes).unwrap();
            prop_assert_eq!(got.len(), files.len());
            for (name, range) in got {
                prop_assert_eq!(&bytes[range], files[&name].as_slice());
            }
        }

        #[test]
        fn any_damage_is_an_error_not_a_panic(
            cut in 0usize..200, flip in 0usize..200, bit in 0u8..8
        ) {
            let bytes = pack(vec![("meta.json".into(), b"{\"a\":1}".to_vec()), ("z".into(), vec![9; 40])]).unwrap();
            let mut b = bytes.clone();
            if flip < b.len() { b[flip] ^= 1 << bit; }
            b.truncate(cut.min(b.len()));
            let _ = unpack(&b);
        }
    }
}
