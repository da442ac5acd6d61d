//! A field's documents in value order, and the run of that order a filter
//! can match: what lets a filtered search read the matches' PQ codes as one
//! contiguous slice instead of gathering them from all over the code array.
//!
//! A keyword field's order is its posting lists one after another (values
//! in byte order); a document holding several keywords appears once per
//! keyword. A numeric field's order is its sorted column. A filter that is
//! one keyword, one range, or an `$and` holding one of those, matches only
//! documents inside one run of the order: [`FilterIndex::span`] finds it.

use rustc_hash::FxHashMap;

use super::index::FieldValues;
use super::parse::{Cond, Node, Scalar};
use super::{Filter, FilterError, FilterIndex};

/// One indexed field's documents in value order (see the module docs).
#[derive(Debug, Clone)]
pub struct FieldOrder {
    field: String,
    docs: Vec<u32>,
    /// Keyword fields: each value's run `lo..hi` of `docs`.
    runs: FxHashMap<String, (usize, usize)>,
}

impl FieldOrder {
    /// The field this is the order of.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Segment-local document ids in the field's value order.
    pub fn docs(&self) -> &[u32] {
        &self.docs
    }

    /// RAM held, in bytes (ids and the keyword runs).
    pub fn memory_bytes(&self) -> usize {
        const ENTRY: usize = 48; // a map slot: key header, run, control byte
        4 * self.docs.len() + self.runs.keys().map(|k| ENTRY + k.len()).sum::<usize>()
    }
}

/// The entries `lo..hi` of a [`FieldOrder`] that hold every match of a
/// filter. `exact`: they hold nothing else (each document at most once),
/// so no entry needs checking against the filter's bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub lo: usize,
    pub hi: usize,
    pub exact: bool,
}

impl Span {
    /// Entries in the span.
    pub fn len(&self) -> usize {
        self.hi - self.lo
    }

    /// True when the span holds no entry (the filter matches nothing).
    pub fn is_empty(&self) -> bool {
        self.hi == self.lo
    }
}

impl FilterIndex {
    /// The value order of indexed field `field`. A field that is not
    /// indexed, or that no document holds, is an error naming it.
    pub fn field_order(&self, field: &str) -> Result<FieldOrder, FilterError> {
        let not_indexed = || FilterError::NotIndexed {
            field: field.to_string(),
            indexed: self.fields.keys().cloned().collect::<Vec<_>>().join(", "),
        };
        let f = self.fields.get(field).ok_or_else(not_indexed)?;
        let mut runs = FxHashMap::default();
        let docs = match &f.values {
            FieldValues::Empty => return Err(not_indexed()),
            FieldValues::Numeric(col) => col.docs.clone(),
            FieldValues::Keyword(map) => {
                let total = map.values().map(|b| b.len() as usize).sum();
                let mut docs = Vec::with_capacity(total);
                for (value, bitmap) in map {
                    let lo = docs.len();
                    docs.extend(bitmap.iter());
                    runs.insert(value.clone(), (lo, docs.len()));
                }
                docs
            }
        };
        Ok(FieldOrder {
            field: field.to_string(),
            docs,
            runs,
        })
    }

    /// The run of `order` that holds every match of `filter`, when the
    /// filter confines its matches to one: a keyword equality or a range
    /// on the order's field (exact), or an `$and` with such a child (the
    /// narrowest one; exact only when every child is a range on the field).
    /// `None` for any other shape. `order` must come from this index.
    pub fn span(&self, order: &FieldOrder, filter: &Filter) -> Option<Span> {
        let field = self.fields.get(&order.field)?;
        let mut conds = Vec::new();
        flatten_and(&filter.root, &mut conds);
        let mut on_field = Vec::new();
        let mut others = 0usize;
        for node in conds {
            match node {
                Node::Cond { field: f, cond } if *f == order.field => on_field.push(cond),
                _ => others += 1,
            }
        }
        match &field.values {
            FieldValues::Numeric(col) => {
                // A document holds one number: every range on the field
                // narrows the same interval of the column.
                let (mut lo, mut hi) = (0, col.docs.len());
                let mut narrowed = false;
                for cond in &on_field {
                    let (a, b) = match cond {
                        Cond::Cmp(op, x) => col.interval(*op, x),
                        Cond::Eq(Scalar::Num(x)) => (
                            col.values.partition_point(|v| v < x),
                            col.values.partition_point(|v| v <= x),
                        ),
                        _ => {
                            others += 1;
                            continue;
                        }
                    };
                    lo = lo.max(a);
                    hi = hi.min(b);
                    narrowed = true;
                }
                narrowed.then(|| Span {
                    lo,
                    hi: hi.max(lo),
                    exact: others == 0,
                })
            }
            FieldValues::Keyword(_) => {
                // A document may hold several keywords: runs of different
                // values do not intersect the way their matches do, so one
                // equality gives the span and any other child is checked.
                let runs: Vec<(usize, usize)> = on_field
                    .iter()
                    .filter_map(|cond| match cond {
                        Cond::Eq(Scalar::Str(s)) => {
                            Some(order.runs.get(s).copied().unwrap_or((0, 0)))
                        }
                        _ => None,
                    })
                    .collect();
                let (lo, hi) = runs.iter().copied().min_by_key(|(lo, hi)| hi - lo)?;
                Some(Span {
                    lo,
                    hi,
                    exact: others == 0 && on_field.len() == 1,
                })
            }
            FieldValues::Empty => None,
        }
    }
}

/// The conjuncts of `node`: its children if it is an `$and` (nested ones
/// flattened), else itself.
fn flatten_and<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match node {
        Node::And(children) => {
            for c in children {
                flatten_and(c, out);
            }
        }
        other => out.push(other),
    }
}
