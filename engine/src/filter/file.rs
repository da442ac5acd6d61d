//! `filters.bin`: a [`FilterIndex`] as bytes. Spec: `format-spec/filters.md`.
//!
//! ```text
//!  ┌─────────────┬──────────────────────────────────────────────┬────────────────┐
//!  │ header 24 B │ field 0 │ field 1 │ … (sorted by name)         │ XXH3-64 footer │
//!  └─────────────┴──────────────────────────────────────────────┴────────────────┘
//!  field = header 12 B │ name │ exists bitmap │ keyword entries | numeric columns
//! ```
//!
//! The reader checks magic, major version and checksum first (as every
//! shardann binary file does), then parses with bounds-checked reads,
//! never allocating more than the bytes it has already seen, and checks
//! every invariant the evaluator relies on (sorted, in range, consistent),
//! so a file that parses is one [`FilterIndex::write`] could have written.

use std::collections::BTreeMap;
use std::path::Path;

use roaring::RoaringBitmap;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::index::{FieldIndex, FieldValues, NumericColumn, MAX_KEYWORD_BYTES};
use super::{FilterIndex, FILTERS_MAGIC};
use crate::error::{Error, FormatError, Result};
use crate::layout::{append_footer, Envelope, FOOTER_BYTES};

const MAJOR: u16 = 1;
const MINOR: u16 = 0;
const HEADER: usize = 24;
const FIELD_HEADER: usize = 12;
const ENVELOPE: Envelope = Envelope {
    what: "filters",
    magic: FILTERS_MAGIC,
    major: MAJOR,
};

const KIND_EMPTY: u8 = 0;
const KIND_KEYWORD: u8 = 1;
const KIND_NUMERIC: u8 = 2;

/// The `filters.bin` header, exactly as stored (little-endian, no padding).
/// Spec: `format-spec/filters.md`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    major: U16,
    minor: U16,
    num_docs: U32,
    num_fields: U32,
    reserved: U32,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER);

/// The fixed part of one field section, exactly as stored.
/// Spec: `format-spec/filters.md`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawFieldHeader {
    name_len: U32,
    kind: u8,
    reserved: [u8; 3],
    exists_len: U32,
}
const _: () = assert!(std::mem::size_of::<RawFieldHeader>() == FIELD_HEADER);

fn too_large(field: &'static str, value: usize) -> FormatError {
    FormatError::Invalid {
        field,
        value: value as u64,
        why: "does not fit the file's u32 length fields".into(),
    }
}

fn len32(field: &'static str, value: usize) -> std::result::Result<u32, FormatError> {
    u32::try_from(value).map_err(|_| too_large(field, value))
}

fn bitmap_bytes(b: &RoaringBitmap) -> std::result::Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .map_err(|e| FormatError::Invalid {
            field: "bitmap",
            value: b.len(),
            why: format!("cannot serialize: {e}"),
        })?;
    Ok(out)
}

impl FilterIndex {
    /// The bytes of `filters.bin` for this index. Fails only when a count
    /// or length does not fit the format's `u32` fields.
    pub fn to_bytes(&self) -> std::result::Result<Vec<u8>, FormatError> {
        let header = RawHeader {
            magic: FILTERS_MAGIC,
            major: MAJOR.into(),
            minor: MINOR.into(),
            num_docs: self.num_docs().into(),
            num_fields: len32("field count", self.fields.len())?.into(),
            reserved: 0.into(),
        };
        let mut out = Vec::new();
        out.extend_from_slice(header.as_bytes());
        for (name, field) in &self.fields {
            let exists = bitmap_bytes(&field.exists)?;
            let kind = match field.values {
                FieldValues::Empty => KIND_EMPTY,
                FieldValues::Keyword(_) => KIND_KEYWORD,
                FieldValues::Numeric(_) => KIND_NUMERIC,
            };
            let fh = RawFieldHeader {
                name_len: len32("field name length", name.len())?.into(),
                kind,
                reserved: [0; 3],
                exists_len: len32("exists bitmap length", exists.len())?.into(),
            };
            out.extend_from_slice(fh.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&exists);
            match &field.values {
                FieldValues::Empty => {}
                FieldValues::Keyword(map) => {
                    out.extend_from_slice(&len32("keyword count", map.len())?.to_le_bytes());
                    for (value, docs) in map {
                        let docs = bitmap_bytes(docs)?;
                        out.extend_from_slice(&len32("keyword length", value.len())?.to_le_bytes());
                        out.extend_from_slice(&len32("posting length", docs.len())?.to_le_bytes());
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(&docs);
                    }
                }
                FieldValues::Numeric(col) => {
                    out.extend_from_slice(&len32("numeric count", col.values.len())?.to_le_bytes());
                    for v in &col.values {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    for d in &col.docs {
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                }
            }
        }
        append_footer(&mut out);
        Ok(out)
    }

    /// Writes `filters.bin`; returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes().map_err(|e| Error::format(path, e))?;
        std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
        Ok(bytes.len() as u64)
    }

    /// Reads and validates `filters.bin` (one sequential read; the index
    /// then lives in RAM, about the file's size).
    pub fn read(path: &Path) -> Result<FilterIndex> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        FilterIndex::from_bytes(&bytes).map_err(|e| Error::format(path, e))
    }

    /// Parses and validates the bytes of a `filters.bin` file. Never
    /// panics, and allocates no more than the input's size, whatever the
    /// bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<FilterIndex, FormatError> {
        let file_len = bytes.len() as u64;
        let (header, _) =
            RawHeader::read_from_prefix(bytes).map_err(|_| FormatError::Truncated {
                what: "filters header",
                offset: 0,
                end: HEADER as u64,
                file_len,
            })?;
        ENVELOPE.check_identity(header.magic, header.major.get(), header.minor.get())?;
        if bytes.len() < HEADER + FOOTER_BYTES {
            return Err(FormatError::Truncated {
                what: "checksum footer",
                offset: HEADER as u64,
                end: (HEADER + FOOTER_BYTES) as u64,
                file_len,
            });
        }
        let body = ENVELOPE.check_footer(bytes)?;
        let num_docs = header.num_docs.get();
        let mut cur = Cursor {
            bytes: body,
            at: HEADER,
            file_len,
        };
        let mut fields = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..header.num_fields.get() {
            let (name, field) = read_field(&mut cur, num_docs)?;
            if last.as_ref().is_some_and(|l| l.as_str() >= name.as_str()) {
                return Err(invalid(
                    "field order",
                    cur.at,
                    format!("field {name:?} is not after the previous field by name"),
                ));
            }
            last = Some(name.clone());
            fields.insert(name, field);
        }
        if cur.at != body.len() {
            return Err(invalid(
                "trailing bytes",
                (body.len() - cur.at) as u64,
                "bytes between the last field and the footer".into(),
            ));
        }
        Ok(FilterIndex::new(num_docs, fields))
    }
}

fn invalid(field: &'static str, value: impl TryInto<u64>, why: String) -> FormatError {
    FormatError::Invalid {
        field,
        value: value.try_into().unwrap_or(u64::MAX),
        why,
    }
}

/// Bounds-checked reads from the checksummed body.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> std::result::Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.at..end)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => Err(FormatError::Truncated {
                what,
                offset: self.at as u64,
                end: (self.at as u64).saturating_add(n as u64),
                file_len: self.file_len,
            }),
        }
    }

    fn u32(&mut self, what: &'static str) -> std::result::Result<u32, FormatError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(w))
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> std::result::Result<String, FormatError> {
        let at = self.at;
        let raw = self.take(n, what)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|e| invalid(what, at, format!("not UTF-8: {e}")))
    }

    /// A portable RoaringBitmap of exactly `n` bytes, all ids `< num_docs`.
    fn bitmap(
        &mut self,
        n: usize,
        num_docs: u32,
        what: &'static str,
    ) -> std::result::Result<RoaringBitmap, FormatError> {
        let at = self.at;
        let mut raw = self.take(n, what)?;
        let b = RoaringBitmap::deserialize_from(&mut raw)
            .map_err(|e| invalid(what, at, format!("not a portable RoaringBitmap: {e}")))?;
        if !raw.is_empty() {
            return Err(invalid(
                what,
                at,
                format!("{} bytes after the bitmap's end", raw.len()),
            ));
        }
        if let Some(max) = b.max() {
            if max >= num_docs {
                return Err(invalid(
                    what,
                    at,
                    format!("holds document {max}, but the segment has {num_docs} documents"),
                ));
            }
        }
        Ok(b)
    }
}

fn read_field(
    cur: &mut Cursor<'_>,
    num_docs: u32,
) -> std::result::Result<(String, FieldIndex), FormatError> {
    let start = cur.at;
    let raw = cur.take(FIELD_HEADER, "field header")?;
    let fh = RawFieldHeader::read_from_bytes(raw).map_err(|_| FormatError::Truncated {
        what: "field header",
        offset: start as u64,
        end: (start + FIELD_HEADER) as u64,
        file_len: cur.file_len,
    })?;
    let name = cur.utf8(fh.name_len.get() as usize, "field name")?;
    if name.is_empty() || name.starts_with('$') {
        return Err(invalid(
            "field name",
            start,
            format!("{name:?} is empty or starts with '$'"),
        ));
    }
    let exists = cur.bitmap(fh.exists_len.get() as usize, num_docs, "exists bitmap")?;
    let values = match fh.kind {
        KIND_EMPTY => {
            if !exists.is_empty() {
                return Err(invalid(
                    "exists bitmap",
                    start,
                    format!(
                        "field {name:?} has no values, but {} documents hold it",
                        exists.len()
                    ),
                ));
            }
            FieldValues::Empty
        }
        KIND_KEYWORD => FieldValues::Keyword(read_keywords(cur, num_docs, &name, &exists)?),
        KIND_NUMERIC => FieldValues::Numeric(read_numeric(cur, &name, &exists)?),
        other => {
            return Err(invalid(
                "field kind",
                other,
                format!("field {name:?}: kinds are 0 (empty), 1 (keyword), 2 (numeric)"),
            ))
        }
    };
    Ok((name, FieldIndex { exists, values }))
}

fn read_keywords(
    cur: &mut Cursor<'_>,
    num_docs: u32,
    name: &str,
    exists: &RoaringBitmap,
) -> std::result::Result<BTreeMap<String, RoaringBitmap>, FormatError> {
    let count = cur.u32("keyword count")?;
    let mut map = BTreeMap::new();
    let mut last: Option<String> = None;
    // No allocation from `count`: each entry consumes bytes, so a corrupt
    // count runs out of file after at most len/8 entries.
    for _ in 0..count {
        let at = cur.at;
        let value_len = cur.u32("keyword length")? as usize;
        let docs_len = cur.u32("posting length")? as usize;
        if value_len > MAX_KEYWORD_BYTES {
            return Err(invalid(
                "keyword length",
                value_len,
                format!("field {name:?}: keywords are at most {MAX_KEYWORD_BYTES} bytes"),
            ));
        }
        let value = cur.utf8(value_len, "keyword")?;
        let docs = cur.bitmap(docs_len, num_docs, "posting bitmap")?;
        if last.as_ref().is_some_and(|l| l.as_str() >= value.as_str()) {
            return Err(invalid(
                "keyword order",
                at,
                format!("field {name:?}: keyword {value:?} is not after the previous one"),
            ));
        }
        if docs.is_empty() || !docs.is_subset(exists) {
            return Err(invalid(
                "posting bitmap",
                at,
                format!("field {name:?}: keyword {value:?} has no documents, or documents that do not hold the field"),
            ));
        }
        last = Some(value.clone());
        map.insert(value, docs);
    }
    Ok(map)
}

fn read_numeric(
    cur: &mut Cursor<'_>,
    name: &str,
    exists: &RoaringBitmap,
) -> std::result::Result<NumericColumn, FormatError> {
    let at = cur.at;
    let count = cur.u32("numeric count")?;
    if u64::from(count) != exists.len() {
        return Err(invalid(
            "numeric count",
            count,
            format!(
                "field {name:?}: {} documents hold the field, one value each",
                exists.len()
            ),
        ));
    }
    let n = count as usize;
    // Both slices are taken (bounds-checked) before anything is allocated.
    let values_raw = cur.take(n.saturating_mul(8), "numeric values")?;
    let docs_raw = cur.take(n.saturating_mul(4), "numeric documents")?;
    let values: Vec<f64> = values_raw
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let docs: Vec<u32> = docs_raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
        .collect();
    let mut prev: Option<(f64, u32)> = None;
    for (&v, &d) in values.iter().zip(&docs) {
        if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
            return Err(invalid(
                "numeric value",
                v.to_bits(),
                format!("field {name:?}: values are finite and never -0.0"),
            ));
        }
        if !exists.contains(d) {
            return Err(invalid(
                "numeric document",
                d,
                format!("field {name:?}: the document does not hold the field"),
            ));
        }
        if let Some((pv, pd)) = prev {
            if pv.total_cmp(&v).then(pd.cmp(&d)) != std::cmp::Ordering::Less {
                return Err(invalid(
                    "numeric order",
                    at,
                    format!("field {name:?}: entries are not sorted by (value, document)"),
                ));
            }
        }
        prev = Some((v, d));
    }
    // `count` entries, all in `exists`, and |exists| = count: every document
    // that holds the field appears exactly once unless one appears twice,
    // which a second pass rules out.
    let distinct: RoaringBitmap = docs.iter().copied().collect();
    if distinct.len() != exists.len() {
        return Err(invalid(
            "numeric document",
            at,
            format!("field {name:?}: a document has two values"),
        ));
    }
    Ok(NumericColumn::new(values, docs))
}
