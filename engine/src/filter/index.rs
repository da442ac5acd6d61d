//! The filter index of one segment: per field an `exists` bitmap, and
//! either keyword postings (value → bitmap) or a numeric column sorted by
//! value, so that any filter becomes a bitmap by lookups, binary searches
//! and bitmap algebra, never by reading payloads.

use std::collections::BTreeMap;

use roaring::{MultiOps, RoaringBitmap};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

use super::parse::{json_type, normalize, CmpOp, Cond, Node, Scalar};
use super::{FieldKind, Filter, FilterError, FilterSchema};

/// Longest keyword a document may hold, in bytes. Keywords are tags,
/// categories, ids; a longer string is almost surely text that belongs in
/// a text index, and the bound keeps `filters.bin`'s lengths small.
pub const MAX_KEYWORD_BYTES: usize = 64 * 1024;

/// One field's index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FieldIndex {
    /// Documents that hold the field (any value, including an empty array).
    pub exists: RoaringBitmap,
    pub values: FieldValues,
}

/// One field's values.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum FieldValues {
    /// No document holds the field.
    Empty,
    /// Keyword → documents holding it (alone or in an array). Sorted by
    /// byte order (the file's order); every bitmap non-empty.
    Keyword(BTreeMap<String, RoaringBitmap>),
    /// One entry per document holding the field, sorted by (value, doc);
    /// values finite, never `-0.0`.
    Numeric(NumericColumn),
}

/// A numeric field as two parallel columns sorted by (value, doc), and
/// the documents of each run of `bin_len` entries as a bitmap.
///
/// A range is a slice of the columns, but its documents come in value
/// order: made into a bitmap they must be sorted first. At 1M points that
/// took ~4 ms for a 10 % range and ~8 ms for 30 %, more than the search
/// (`bench --filter '{"ts": {"$lt": 300000}}'`). With the bins, a range is
/// the union of the whole bins inside it plus the sorted entries of at
/// most two part bins. The bins are built when the column is (at open, in
/// RAM: nothing on disk changes) and hold each entry once: about 2 bytes
/// per entry beside the columns' 12.
#[derive(Debug, Clone, Default)]
pub(super) struct NumericColumn {
    pub values: Vec<f64>,
    pub docs: Vec<u32>,
    bin_len: usize,
    bins: Vec<RoaringBitmap>,
}

impl PartialEq for NumericColumn {
    /// The bins follow from the columns.
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values && self.docs == other.docs
    }
}

/// Entries per bin: at least `MIN_BIN_LEN` (smaller ones save little
/// sorting), and at most `MAX_BINS` bins (a range then unions at most
/// that many bitmaps).
const MIN_BIN_LEN: usize = 16_384;
const MAX_BINS: usize = 64;

impl FieldValues {
    pub(super) fn kind(&self) -> FieldKind {
        match self {
            FieldValues::Empty => FieldKind::Empty,
            FieldValues::Keyword(_) => FieldKind::Keyword,
            FieldValues::Numeric(_) => FieldKind::Numeric,
        }
    }
}

/// The filter index of a segment, held in RAM: build it with
/// [`FilterIndexBuilder`], store it with [`FilterIndex::write`], load it
/// with [`FilterIndex::read`], and turn filters into matching documents
/// with [`FilterIndex::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct FilterIndex {
    num_docs: u32,
    /// Every document, `0..num_docs` (run-compressed: a few bytes): the
    /// universe of `$not`, `$ne`, `$nin` and `$exists: false`.
    all: RoaringBitmap,
    pub(super) fields: BTreeMap<String, FieldIndex>,
}

impl FilterIndex {
    pub(super) fn new(num_docs: u32, fields: BTreeMap<String, FieldIndex>) -> Self {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..num_docs);
        all.optimize();
        FilterIndex {
            num_docs,
            all,
            fields,
        }
    }

    /// Documents in the segment: ids are `0..num_docs`.
    pub fn num_docs(&self) -> u32 {
        self.num_docs
    }

    /// The indexed fields and their kinds.
    pub fn schema(&self) -> FilterSchema {
        FilterSchema::new(
            self.fields
                .iter()
                .map(|(name, f)| (name.clone(), f.values.kind())),
        )
    }

    /// An estimate of the RAM this index holds, in bytes (bitmaps at their
    /// serialized size, which tracks their heap size closely; strings and
    /// columns at their lengths; map nodes at a fixed overhead), for
    /// `inspect` reports and cache budgets.
    pub fn memory_bytes(&self) -> u64 {
        const ENTRY: u64 = 64; // a map entry: key and value headers, node share
        let mut total = std::mem::size_of::<Self>() as u64;
        for (name, f) in &self.fields {
            total += ENTRY + name.len() as u64 + f.exists.serialized_size() as u64;
            match &f.values {
                FieldValues::Empty => {}
                FieldValues::Keyword(map) => {
                    for (value, docs) in map {
                        total += ENTRY + value.len() as u64 + docs.serialized_size() as u64;
                    }
                }
                FieldValues::Numeric(col) => {
                    total += 12 * col.values.len() as u64
                        + col
                            .bins
                            .iter()
                            .map(|b| b.serialized_size() as u64)
                            .sum::<u64>()
                }
            }
        }
        total
    }

    /// The documents that match `filter`, as segment-local ids. Checks the
    /// filter against [`FilterIndex::schema`] first, so a field that is not
    /// indexed, or an operator that does not suit a field's kind, is an
    /// error rather than an empty result.
    pub fn evaluate(&self, filter: &Filter) -> Result<RoaringBitmap, FilterError> {
        filter.check_with(&|f| self.fields.get(f).map(|x| x.values.kind()), &|| {
            self.fields.keys().cloned().collect::<Vec<_>>().join(", ")
        })?;
        Ok(self.eval(&filter.root, &self.all))
    }

    fn eval(&self, node: &Node, all: &RoaringBitmap) -> RoaringBitmap {
        match node {
            Node::All => all.clone(),
            Node::And(children) => {
                // Comparisons on one numeric field (`{"ts": {"$gte": a,
                // "$lt": b}}`) become one interval of its sorted column: each
                // alone would build a bitmap of up to half the documents
                // (measured at 1M points: a 1 % range took 6× the time of a
                // 1 % label before this).
                let mut ranges: Vec<(&str, &NumericColumn, &RoaringBitmap, usize, usize)> =
                    Vec::new();
                let mut rest: Vec<&Node> = Vec::new();
                for child in children {
                    let numeric = match child {
                        Node::Cond {
                            field,
                            cond: Cond::Cmp(op, x),
                        } => match self.fields.get(field) {
                            Some(FieldIndex {
                                exists,
                                values: FieldValues::Numeric(col),
                            }) => Some((field.as_str(), col, exists, col.interval(*op, x))),
                            _ => None,
                        },
                        _ => None,
                    };
                    match numeric {
                        Some((name, col, exists, (lo, hi))) => {
                            match ranges.iter_mut().find(|r| r.0 == name) {
                                Some(r) => {
                                    r.3 = r.3.max(lo);
                                    r.4 = r.4.min(hi);
                                }
                                None => ranges.push((name, col, exists, lo, hi)),
                            }
                        }
                        None => rest.push(child),
                    }
                }
                let mut parts = ranges
                    .into_iter()
                    .map(|(_, col, exists, lo, hi)| col.bitmap(lo, hi, exists));
                let mut acc = match parts.next() {
                    Some(first) => first,
                    None => match rest.first() {
                        Some(first) => self.eval(first, all),
                        None => return all.clone(),
                    },
                };
                for b in parts {
                    acc &= b;
                }
                let skip = usize::from(rest.len() == children.len());
                for child in rest.into_iter().skip(skip) {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= self.eval(child, all);
                }
                acc
            }
            Node::Or(children) => {
                let mut acc = RoaringBitmap::new();
                for child in children {
                    acc |= self.eval(child, all);
                }
                acc
            }
            Node::Not(inner) => all - self.eval(inner, all),
            Node::Cond { field, cond } => match self.fields.get(field) {
                Some(f) => eval_cond(f, cond, all),
                // `check` refuses unindexed fields; treat one as absent.
                None => eval_cond(
                    &FieldIndex {
                        exists: RoaringBitmap::new(),
                        values: FieldValues::Empty,
                    },
                    cond,
                    all,
                ),
            },
        }
    }
}

fn eval_cond(f: &FieldIndex, cond: &Cond, all: &RoaringBitmap) -> RoaringBitmap {
    match cond {
        Cond::Eq(s) => eq(f, s),
        Cond::Ne(s) => all - eq(f, s),
        Cond::In(values) => any_of(f, values),
        Cond::Nin(values) => all - any_of(f, values),
        Cond::Cmp(op, x) => match &f.values {
            FieldValues::Numeric(col) => {
                let (lo, hi) = col.interval(*op, x);
                col.bitmap(lo, hi, &f.exists)
            }
            // Ranges are for numbers; `check` refuses them on keyword fields.
            _ => RoaringBitmap::new(),
        },
        Cond::Exists(true) => f.exists.clone(),
        Cond::Exists(false) => all - &f.exists,
    }
}

fn any_of(f: &FieldIndex, values: &[Scalar]) -> RoaringBitmap {
    let mut acc = RoaringBitmap::new();
    for s in values {
        acc |= eq(f, s);
    }
    acc
}

fn eq(f: &FieldIndex, s: &Scalar) -> RoaringBitmap {
    match (&f.values, s) {
        (FieldValues::Keyword(map), Scalar::Str(s)) => map.get(s).cloned().unwrap_or_default(),
        (FieldValues::Numeric(col), Scalar::Num(x)) => {
            let lo = col.values.partition_point(|v| v < x);
            let hi = col.values.partition_point(|v| v <= x);
            col.bitmap(lo, hi, &f.exists)
        }
        // A string never equals a number (and `check` refuses the mix).
        _ => RoaringBitmap::new(),
    }
}

impl NumericColumn {
    /// The column of `values` and `docs` (sorted by (value, doc)), binned.
    pub(super) fn new(values: Vec<f64>, docs: Vec<u32>) -> Self {
        let bin_len = MIN_BIN_LEN.max(docs.len().div_ceil(MAX_BINS));
        Self::with_bin_len(values, docs, bin_len)
    }

    fn with_bin_len(values: Vec<f64>, docs: Vec<u32>, bin_len: usize) -> Self {
        let bin_len = bin_len.max(1);
        // A column of one bin or less is sorted whole, as before.
        let bins = if docs.len() > bin_len {
            docs.chunks(bin_len).map(sorted_bitmap).collect()
        } else {
            Vec::new()
        };
        NumericColumn {
            values,
            docs,
            bin_len,
            bins,
        }
    }

    /// The entries `lo..hi` of the sorted column that satisfy `op x`.
    pub(super) fn interval(&self, op: CmpOp, x: &f64) -> (usize, usize) {
        let v = &self.values;
        match op {
            CmpOp::Gt => (v.partition_point(|y| y <= x), v.len()),
            CmpOp::Gte => (v.partition_point(|y| y < x), v.len()),
            CmpOp::Lt => (0, v.partition_point(|y| y < x)),
            CmpOp::Lte => (0, v.partition_point(|y| y <= x)),
        }
    }

    /// The documents of entries `lo..hi`: the union of the bins wholly
    /// inside, plus the part bins at either end, sorted. Without bins (a
    /// short column), a range wider than half the column is built as
    /// `exists` minus the entries outside it, so at most half the column
    /// is ever sorted.
    fn bitmap(&self, lo: usize, hi: usize, exists: &RoaringBitmap) -> RoaringBitmap {
        let hi = hi.min(self.docs.len());
        let lo = lo.min(hi);
        let part = |a: usize, b: usize| self.docs.get(a..b).unwrap_or(&[]);
        let (first, end) = (lo.div_ceil(self.bin_len), hi / self.bin_len);
        if let Some(whole) = self.bins.get(first..end).filter(|w| !w.is_empty()) {
            let mut docs = whole.union();
            docs |= sorted_bitmap(part(lo, first * self.bin_len));
            docs |= sorted_bitmap(part(end * self.bin_len, hi));
            return docs;
        }
        if 2 * (hi - lo) <= self.docs.len() {
            sorted_bitmap(part(lo, hi))
        } else {
            let mut outside = part(0, lo).to_vec();
            outside.extend_from_slice(part(hi, self.docs.len()));
            exists - sorted_bitmap(&outside)
        }
    }
}

/// The bitmap of `docs`, given in any order.
fn sorted_bitmap(docs: &[u32]) -> RoaringBitmap {
    let mut docs = docs.to_vec();
    docs.sort_unstable();
    RoaringBitmap::from_sorted_iter(docs.iter().copied())
        .unwrap_or_else(|_| docs.iter().copied().collect())
}

/// Builds a [`FilterIndex`] from payloads, one document at a time, in
/// document order (`0, 1, 2, …`: the segment-local ids).
///
/// Each named field takes its kind from the first document that holds it
/// (a string or an array of strings: keyword; a number: numeric). `null`
/// counts as absent. A document holding another type, or a type other than
/// the field's, is an error that names the document and the field (the
/// caller maps the document to its input line); the builder is then
/// unchanged, and as ids stay dense the caller stops or adds the same
/// document again with a corrected payload.
#[derive(Debug, Clone)]
pub struct FilterIndexBuilder {
    num_docs: u32,
    fields: Vec<FieldBuilder>,
}

#[derive(Debug, Clone)]
struct FieldBuilder {
    name: String,
    /// The kind and the first document that set it.
    kind: Option<(FieldKind, u32)>,
    exists: RoaringBitmap,
    keywords: FxHashMap<String, RoaringBitmap>,
    numbers: Vec<(f64, u32)>,
}

/// A document's value for one field, validated but not yet added.
enum Parsed<'a> {
    Absent,
    Keywords(Vec<&'a str>),
    Number(f64),
}

impl FilterIndexBuilder {
    /// A builder indexing the named payload fields (top-level keys of each
    /// payload object). Names must be non-empty, distinct and must not
    /// start with `$` (a filter could not name them).
    pub fn new(fields: &[String]) -> Result<Self, FilterError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(fields.len());
        for name in fields {
            if name.is_empty() {
                return Err(FilterError::BadFieldName {
                    field: name.clone(),
                    why: "the name is empty",
                });
            }
            if name.starts_with('$') {
                return Err(FilterError::BadFieldName {
                    field: name.clone(),
                    why: "names starting with '$' are filter operators",
                });
            }
            if !seen.insert(name.as_str()) {
                return Err(FilterError::DuplicateField {
                    field: name.clone(),
                });
            }
            out.push(FieldBuilder {
                name: name.clone(),
                kind: None,
                exists: RoaringBitmap::new(),
                keywords: FxHashMap::default(),
                numbers: Vec::new(),
            });
        }
        Ok(FilterIndexBuilder {
            num_docs: 0,
            fields: out,
        })
    }

    /// A builder that checks payloads against a segment's `schema`
    /// ([`FilterIndexBuilder::check_payload`]): a field the segment made a
    /// keyword field must stay one, and so on. Fields of kind
    /// [`FieldKind::Empty`] take the kind of the first value checked.
    pub fn checker(schema: &FilterSchema) -> Self {
        let fields = schema.names().map(str::to_string).collect::<Vec<_>>();
        // The schema's names are valid field names already.
        let mut b = FilterIndexBuilder::new(&fields).unwrap_or(FilterIndexBuilder {
            num_docs: 0,
            fields: Vec::new(),
        });
        for f in &mut b.fields {
            f.kind = match schema.get(&f.name) {
                Some(k @ (FieldKind::Keyword | FieldKind::Numeric)) => Some((k, 0)),
                _ => None,
            };
        }
        b
    }

    /// Checks `payload`'s indexed fields as [`FilterIndexBuilder::add`]
    /// would for document `doc`, without adding it; a field whose kind was
    /// open takes the kind of its value here.
    pub fn check_payload(
        &mut self,
        doc: u32,
        payload: &Map<String, Value>,
    ) -> Result<(), FilterError> {
        let parsed = self.parse_all(doc, payload)?;
        for (f, p) in self.fields.iter_mut().zip(parsed) {
            let kind = match p {
                Parsed::Absent => continue,
                Parsed::Keywords(_) => FieldKind::Keyword,
                Parsed::Number(_) => FieldKind::Numeric,
            };
            f.kind.get_or_insert((kind, doc));
        }
        Ok(())
    }

    /// Every indexed field of `payload`, validated, in field order.
    fn parse_all<'a>(
        &self,
        doc: u32,
        payload: &'a Map<String, Value>,
    ) -> Result<Vec<Parsed<'a>>, FilterError> {
        self.fields
            .iter()
            .map(|f| f.parse(doc, payload.get(&f.name)))
            .collect()
    }

    /// Documents added so far (the next document's id).
    pub fn num_docs(&self) -> u32 {
        self.num_docs
    }

    /// Adds document `doc`'s payload; `doc` must be [`Self::num_docs`]. A
    /// document without a payload is an empty map. Fields not named at
    /// [`FilterIndexBuilder::new`] are ignored. On error nothing of the
    /// document is added.
    pub fn add(&mut self, doc: u32, payload: &Map<String, Value>) -> Result<(), FilterError> {
        if doc == u32::MAX {
            return Err(FilterError::TooManyDocs { max: u32::MAX });
        }
        if doc != self.num_docs {
            return Err(FilterError::DocOutOfOrder {
                doc,
                expected: self.num_docs,
            });
        }
        // Validate every field first, so an error leaves the builder as it was.
        let parsed = self.parse_all(doc, payload)?;
        for (f, p) in self.fields.iter_mut().zip(parsed) {
            f.apply(doc, p);
        }
        self.num_docs = doc + 1;
        Ok(())
    }

    /// The finished index.
    pub fn finish(self) -> FilterIndex {
        let fields = self
            .fields
            .into_iter()
            .map(|f| (f.name.clone(), f.finish()))
            .collect();
        FilterIndex::new(self.num_docs, fields)
    }
}

impl FieldBuilder {
    fn parse<'a>(&self, doc: u32, value: Option<&'a Value>) -> Result<Parsed<'a>, FilterError> {
        let (parsed, kind) = match value {
            None | Some(Value::Null) => return Ok(Parsed::Absent),
            Some(Value::String(s)) => (Parsed::Keywords(vec![s.as_str()]), FieldKind::Keyword),
            Some(Value::Array(items)) => {
                let mut words = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => words.push(s.as_str()),
                        other => {
                            return Err(FilterError::UnsupportedValue {
                                doc,
                                field: self.name.clone(),
                                found: match other {
                                    Value::Number(_) => "an array holding a number",
                                    Value::Null => "an array holding null",
                                    Value::Bool(_) => "an array holding a boolean",
                                    Value::Array(_) => "an array holding an array",
                                    _ => "an array holding an object",
                                },
                            })
                        }
                    }
                }
                (Parsed::Keywords(words), FieldKind::Keyword)
            }
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => (Parsed::Number(normalize(x)), FieldKind::Numeric),
                _ => {
                    return Err(FilterError::UnsupportedValue {
                        doc,
                        field: self.name.clone(),
                        found: "a number that is not a finite f64",
                    })
                }
            },
            Some(other) => {
                return Err(FilterError::UnsupportedValue {
                    doc,
                    field: self.name.clone(),
                    found: match json_type(other) {
                        "boolean" => "a boolean",
                        _ => "an object",
                    },
                })
            }
        };
        if let Some((have, first_doc)) = self.kind {
            if have != kind {
                return Err(FilterError::MixedTypes {
                    doc,
                    field: self.name.clone(),
                    found: match kind {
                        FieldKind::Numeric => "a number",
                        _ => "a string or an array of strings",
                    },
                    kind: have.name(),
                    first_doc,
                });
            }
        }
        if let Parsed::Keywords(words) = &parsed {
            if let Some(long) = words.iter().find(|w| w.len() > MAX_KEYWORD_BYTES) {
                return Err(FilterError::KeywordTooLong {
                    doc,
                    field: self.name.clone(),
                    len: long.len(),
                    max: MAX_KEYWORD_BYTES,
                });
            }
        }
        Ok(parsed)
    }

    fn apply(&mut self, doc: u32, parsed: Parsed<'_>) {
        let kind = match parsed {
            Parsed::Absent => return,
            Parsed::Keywords(words) => {
                for w in words {
                    match self.keywords.get_mut(w) {
                        Some(docs) => {
                            docs.insert(doc);
                        }
                        None => {
                            let mut docs = RoaringBitmap::new();
                            docs.insert(doc);
                            self.keywords.insert(w.to_string(), docs);
                        }
                    }
                }
                FieldKind::Keyword
            }
            Parsed::Number(x) => {
                self.numbers.push((x, doc));
                FieldKind::Numeric
            }
        };
        self.kind.get_or_insert((kind, doc));
        self.exists.insert(doc);
    }

    fn finish(self) -> FieldIndex {
        let mut exists = self.exists;
        exists.optimize();
        let values = match self.kind {
            None => FieldValues::Empty,
            Some((FieldKind::Numeric, _)) => {
                let mut entries = self.numbers;
                entries.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                FieldValues::Numeric(NumericColumn::new(
                    entries.iter().map(|e| e.0).collect(),
                    entries.iter().map(|e| e.1).collect(),
                ))
            }
            Some(_) => FieldValues::Keyword(
                self.keywords
                    .into_iter()
                    .map(|(k, mut docs)| {
                        docs.optimize();
                        (k, docs)
                    })
                    .collect(),
            ),
        };
        FieldIndex { exists, values }
    }
}

#[cfg(test)]
mod bin_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A range's bitmap, from bins or sorted entries, holds exactly
        /// the documents of its entries, for every bin length.
        #[test]
        fn binned_ranges_hold_exactly_their_entries(
            mut entries in proptest::collection::vec((0u8..50, 0u32..5_000), 0..600),
            bin_len in 1usize..80,
            a in 0usize..700,
            b in 0usize..700,
        ) {
            // One value per document, as the builder and the reader require.
            let mut seen = std::collections::HashSet::new();
            entries.retain(|e| seen.insert(e.1));
            entries.sort_unstable_by_key(|&(v, d)| (v, d));
            let values: Vec<f64> = entries.iter().map(|e| f64::from(e.0)).collect();
            let docs: Vec<u32> = entries.iter().map(|e| e.1).collect();
            let exists: RoaringBitmap = docs.iter().copied().collect();
            let col = NumericColumn::with_bin_len(values, docs.clone(), bin_len);
            let (lo, hi) = (a.min(b), a.max(b));
            let want: RoaringBitmap = docs
                .get(lo.min(docs.len())..hi.min(docs.len()))
                .unwrap_or(&[])
                .iter()
                .copied()
                .collect();
            prop_assert_eq!(col.bitmap(lo, hi, &exists), want);
        }
    }
}
