//! Payload filters: a JSON filter language, the per-segment index that
//! turns a filter into the exact set of matching documents, and its file.
//!
//! A search with a filter first evaluates it to a [`RoaringBitmap`] of
//! segment-local document ids (`0..n`), so the planner knows the exact
//! match count before choosing between a filtered graph walk and a scan.
//!
//! ```text
//!  payloads ──► FilterIndexBuilder::add (doc 0, 1, …) ──► finish ──► FilterIndex ──► write ──► filters.bin
//!                                                                        ▲                        │
//!  {"year": {"$gte": 2020}} ──► Filter::parse ──► check(schema)          └──────── read ──────────┘
//!                                     └──────────► FilterIndex::evaluate ──► RoaringBitmap of doc ids
//! ```
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`FilterError`], [`FieldKind`], [`FilterSchema`], the file name and magic |
//! | `parse.rs` | [`Filter`]: JSON → a bounded tree, type checks against a schema |
//! | `index.rs` | [`FilterIndexBuilder`], [`FilterIndex`]: keyword postings, numeric columns, `exists` bitmaps, evaluation |
//! | `file.rs` | `filters.bin` ↔ [`FilterIndex`]; spec: `format-spec/filters.md` |
//! | `tests.rs` | property tests against a naive oracle, error messages, corruption, the golden file |
//!
//! Tier 1: this module uses only [`crate::error`] (for [`FormatError`]
//! and the engine's `Error`), so any layer may use it.
//!
//! Parsers here never panic on corrupt bytes: indexing and unwrap are
//! denied in this module, every read is bounds-checked.
//!
//! [`RoaringBitmap`]: roaring::RoaringBitmap
//! [`FormatError`]: crate::error::FormatError
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt;

mod file;
mod index;
mod parse;
#[cfg(test)]
mod tests;

pub use index::{FilterIndex, FilterIndexBuilder, MAX_KEYWORD_BYTES};
pub use parse::{Filter, MAX_DEPTH, MAX_TERMS};
pub use roaring::RoaringBitmap;

/// The filter index of a segment (`format-spec/filters.md`).
pub const FILTERS_FILE: &str = "filters.bin";

/// The first 8 bytes of `filters.bin`.
pub const FILTERS_MAGIC: [u8; 8] = *b"SHRDFLT\0";

/// What an indexed payload field holds, decided by the documents: a string
/// or an array of strings makes a keyword field, a number a numeric field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldKind {
    /// Strings (or arrays of strings): equality and set membership.
    Keyword,
    /// Numbers, held as `f64`: equality and ranges.
    Numeric,
    /// Indexed, but no document of the segment holds a value, so its kind
    /// is unknown: every comparison is accepted and behaves as on a field
    /// all documents lack (another segment may well hold values).
    Empty,
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldKind::Keyword => "keyword",
            FieldKind::Numeric => "numeric",
            FieldKind::Empty => "empty",
        })
    }
}

/// The indexed fields of a segment and their kinds: what a [`Filter`] is
/// checked against before it is evaluated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSchema {
    fields: BTreeMap<String, FieldKind>,
}

impl FilterSchema {
    /// A schema from (field, kind) pairs, e.g. to check a filter before any
    /// segment is open.
    pub fn new(fields: impl IntoIterator<Item = (String, FieldKind)>) -> Self {
        FilterSchema {
            fields: fields.into_iter().collect(),
        }
    }

    /// The kind of an indexed field, `None` if it is not indexed.
    pub fn get(&self, field: &str) -> Option<FieldKind> {
        self.fields.get(field).copied()
    }

    /// Indexed field names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.fields.keys().map(String::as_str)
    }

    /// (field, kind) pairs, sorted by field.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FieldKind)> + '_ {
        self.fields.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of indexed fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when no field is indexed.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// What can be wrong with a filter or with the payloads being indexed.
/// Every message names the field and the operator (or the document)
/// involved, so it can go back to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The filter, or an element of `$and`/`$or`, or the argument of
    /// `$not`, is not a JSON object.
    #[error("{what} must be a JSON object, got {found}")]
    NotAnObject { what: String, found: &'static str },
    /// A `$`-key that is not an operator (at the top level only `$and`,
    /// `$or` and `$not` are).
    #[error("unknown operator {op:?}{}", on_field(field))]
    UnknownOperator { field: Option<String>, op: String },
    /// An operator's argument has the wrong JSON type (`$gt` with a
    /// string, `$in` without an array, `$exists` with a number, …).
    #[error("{op}{} needs {expected}, got {found}", on_field(field))]
    WrongType {
        field: Option<String>,
        op: String,
        expected: &'static str,
        found: &'static str,
    },
    /// `$and` or `$or` with an empty list: refused rather than guessed.
    #[error("{op} needs at least one filter, got an empty list")]
    EmptyList { op: String },
    /// `{"field": {}}`.
    #[error(
        "field {field:?}: empty operator object (use {{\"$exists\": true}} to ask for the field)"
    )]
    NoOperators { field: String },
    /// Nesting beyond [`MAX_DEPTH`].
    #[error("filter nests deeper than {max} levels")]
    TooDeep { max: usize },
    /// More than [`MAX_TERMS`] operators and list values.
    #[error("filter has more than {max} terms (operators and $in/$nin values)")]
    TooManyTerms { max: usize },
    /// The filter names a field the segment does not index.
    #[error(
        "field {field:?} is not indexed (indexed fields: {indexed}); index it with --filter-fields"
    )]
    NotIndexed { field: String, indexed: String },
    /// A keyword field compared with a number, a numeric field with a
    /// string, or a range on a keyword field.
    #[error("field {field:?} is a {kind} field; {op} compares it with a {found}")]
    KindMismatch {
        field: String,
        kind: FieldKind,
        op: &'static str,
        found: &'static str,
    },
    /// A field name that cannot be indexed.
    #[error("cannot index field {field:?}: {why}")]
    BadFieldName { field: String, why: &'static str },
    /// The same field named twice in the list of fields to index.
    #[error("field {field:?} is listed twice")]
    DuplicateField { field: String },
    /// Documents must be added in order `0, 1, 2, …`.
    #[error("document {doc} added out of order: the next document is {expected}")]
    DocOutOfOrder { doc: u32, expected: u32 },
    /// Document ids are `u32` and `u32::MAX` documents fill them.
    #[error("a segment holds at most {max} documents")]
    TooManyDocs { max: u32 },
    /// A document of a type an indexed field cannot hold.
    #[error("document {doc}: field {field:?} holds {found}; an indexed field holds a string, an array of strings or a number")]
    UnsupportedValue {
        doc: u32,
        field: String,
        found: &'static str,
    },
    /// A field holding strings in one document and numbers in another.
    #[error("document {doc}: field {field:?} holds {found}, but document {first_doc} made it a {kind} field; a field must hold one type in every document")]
    MixedTypes {
        doc: u32,
        field: String,
        found: &'static str,
        kind: FieldKind,
        first_doc: u32,
    },
    /// A keyword longer than [`MAX_KEYWORD_BYTES`].
    #[error("document {doc}: field {field:?} holds a string of {len} bytes; keywords are at most {max} bytes")]
    KeywordTooLong {
        doc: u32,
        field: String,
        len: usize,
        max: usize,
    },
}

fn on_field(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(" on field {f:?}"),
        None => String::new(),
    }
}
