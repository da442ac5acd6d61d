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
//! | `order.rs` | [`FieldOrder`]: a field's documents in value order; [`Span`]: the run of it a filter can match |
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
mod order;
mod parse;
#[cfg(test)]
mod tests;

pub use crate::error::FilterError;
pub use index::{FilterIndex, FilterIndexBuilder, MAX_KEYWORD_BYTES};
pub use order::{FieldOrder, Span};
pub use parse::{Filter, MAX_DEPTH, MAX_TERMS};
pub use roaring::RoaringBitmap;

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

impl FieldKind {
    /// The kind's name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            FieldKind::Keyword => "keyword",
            FieldKind::Numeric => "numeric",
            FieldKind::Empty => "empty",
        }
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
